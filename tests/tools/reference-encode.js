#!/usr/bin/env node
// SPDX-License-Identifier: MIT
//
// The reference's token ids, for tests/tools/make-embed-fixtures.py: the
// Hugging Face tokenizers library's Rust core (0.22), as the npm package
// @anush008/tokenizers ships it (install it as make-tokenizer-fixtures.js
// says). Reads one JSON object on stdin:
//
//   {"tokenizers": {"NAME": "<tokenizer.json text>", ...},
//    "requests": [["NAME", "text", max_length or null, "right" | "left"], ...]}
//
// and writes {"ids": [[...], ...]} on stdout, one list per request: the
// text encoded with its special tokens, truncated to max_length ids from
// that side as sentence-transformers asks the library to
// (truncation=True, max_length=max_seq_length), or not at all for null.

'use strict';

const tk = require('@anush008/tokenizers');

async function main() {
    const chunks = [];
    for await (const chunk of process.stdin)
        chunks.push(chunk);
    const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));

    const ids = [];
    for (const [name, text, maxLength, direction] of input.requests) {
        // A fresh tokenizer per request: truncation is a setting of the object.
        const t = tk.Tokenizer.fromString(input.tokenizers[name]);
        if (maxLength !== null)
            t.setTruncation(maxLength, {direction});
        ids.push((await t.encode(text)).getIds());
    }
    process.stdout.write(JSON.stringify({ids}) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
