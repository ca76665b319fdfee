#!/usr/bin/env node
// SPDX-License-Identifier: MIT
//
// Writes the fixtures of tests/unit/test-tokenizer.c from the reference:
// the Hugging Face tokenizers library's Rust core (0.22), as the npm
// package @anush008/tokenizers ships it. From the top of the tree:
//
//   npm install --prefix tests/tools --no-save @anush008/tokenizers@0.6.0
//   node tests/tools/make-tokenizer-fixtures.js
//
// It writes into tests/unit/tokenizer/:
//   *.tokenizer.json  tokenizers made here: one vocabulary for the texts
//                     below, with variants of the normalizer, added tokens
//                     and post-processors;
//   cases.json        the ids the reference gives for each text (its UTF-8
//                     bytes in hexadecimal) with each tokenizer, whole and
//                     truncated;
//   unicode.txt       what the reference does with every code point, one
//                     property or mapping at a time.
// The output is deterministic: running it again changes nothing.

'use strict';

const fs = require('fs');
const path = require('path');
const tk = require('@anush008/tokenizers');

const out = path.join(__dirname, '..', 'unit', 'tokenizer');

// ---- the texts ----

const longText =
    'The history of natural language processing generally started in the 1950s, although work can be ' +
    'found from earlier periods. In 1950, Alan Turing published an article titled "Computing Machinery ' +
    'and Intelligence" which proposed what is now called the Turing test as a criterion of intelligence.';

// [name, text] or [name, {bytes: [...]}] for text that is not valid UTF-8.
const texts = [
    ['empty', ''],
    ['spaces', '   \t\n  '],
    ['ascii', 'Hello, world! The quick brown fox jumps over the lazy dog.'],
    ['ascii-cased', 'HELLO World hello wORLD'],
    ['punctuation', 'Wait... what?! (yes) [no] {maybe} a-b_c d/e "quoted" \'single\' #hash @at $5 100% ^caret~ `tick` |pipe| <lt> =eq+ ;:'],
    ['unicode-punctuation', '«Bonjour» — dit-il… ¿Qué? ¡Sí! “quotes” ‘single’ 、。「テスト」・'],
    ['numbers', '3.14 1,000,000 2024-01-01 12:30 ½ ² ٣'],
    ['accents-composed', 'Café naïve résumé Ångström Øre façade Über straße Crème brûlée'],
    ['accents-decomposed', 'Cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m'],
    ['marks-order', 'a\u0301\u0316 e\u0323\u0302 o\u031b\u0301\u0323 q\u0307\u0323\u0307'],
    ['case-special', 'İstanbul ΣΟΦΙΑ ΟΔΟΣ ǅemal ß ẞ Ω K Å ﬁ'],
    ['greek', 'Ελληνικά άέή ΐ'],
    ['cjk', '我喜欢自然语言处理。北京大学'],
    ['cjk-mixed', '東京tokyo大阪osaka 漢字かな交じり文'],
    ['cjk-compat', '豈更車 丽丸'],
    ['cjk-extensions', '\u{20000}\u{2A700}\u{2B740}\u{2B820}\u{2B920}\u{30000}'],
    ['hangul', '한국어 텍스트 안녕하세요'],
    ['japanese', 'ひらがなカタカナ ｶﾀｶﾅ'],
    ['arabic', 'مَرْحَبًا بالعالم'],
    ['hebrew', 'שָׁלוֹם עולם'],
    ['devanagari', 'नमस्ते दुनिया'],
    ['thai', 'สวัสดีชาวโลก'],
    ['emoji', 'I love 🍕 and 🤖! 👍🏽 👨‍👩‍👧 ❤️ 🥲'],
    ['unknown', 'xyzzy qwertyuiop floccinaucinihilipilification'],
    ['partial-unknown', 'playing played player unplayable replaying'],
    ['long-word', 'a'.repeat(101) + ' ' + 'b'.repeat(100) + ' ' + 'un' + 'able'.repeat(30)],
    ['long-word-cjk', 'x' + '字'.repeat(150) + 'y'],
    ['controls', 'tab\there\nnew\rline\u000bvt\u000cff\u0085nel\u0000nul\u0007bell\u001funit\u007fdel'],
    ['odd-whitespace', 'nb\u00a0sp ideo\u3000graphic em\u2003space thin\u2009space ogham\u1680mark line\u2028para\u2029end nnb\u202fsp mm\u205fsp'],
    ['zero-width', 'zero\u200bwidth non\u200cjoiner joiner\u200dhere bom\ufeffhere word\u2060joiner soft\u00adhyphen lrm\u200emark'],
    ['format-and-private', 'alm\u061cmark pua\ue000here pua\u{f0000}too repl\ufffdchar'],
    ['unicode-versions', 'a\u08d4b c\u2e43d e\u1885f g\u166dh i\u0c84j k\u{1e95e}l m\u0890n o\u{11938}p'],
    ['special-tokens-in-text', 'hello [MASK] world [CLS]x[SEP]y [mask] [UNK][PAD]'],
    ['long', longText],
    ['invalid-byte', {bytes: [0x61, 0x62, 0xff, 0x63, 0x64]}],
    ['invalid-truncated', {bytes: [0x61, 0xe2, 0x82, 0x20, 0x62, 0xf0, 0x9f, 0x98]}],
    ['invalid-overlong', {bytes: [0x61, 0xc0, 0xaf, 0x62, 0xe0, 0x80, 0xaf, 0x63]}],
    ['invalid-surrogate', {bytes: [0x61, 0xed, 0xa0, 0x80, 0x62, 0xf4, 0x90, 0x80, 0x80, 0x63]}],
    ['invalid-continuation', {bytes: [0x80, 0x80, 0x61, 0xbf, 0x62, 0xc3]}],
];

// ---- the vocabulary ----

const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];

const words = [
    'the', 'quick', 'brown', 'fox', 'jump', '##s', 'over', 'lazy', 'dog', 'hello', 'world', 'wait', 'what',
    'yes', 'no', 'may', '##be', 'quote', '##d', 'single', 'hash', 'at', 'care', '##t', 'tick', 'pipe', 'eq',
    'bon', '##jou', '##r', 'dit', 'il', 'que', 'si', 'quo', '##tes', 'cafe', 'caf', '##e', '##é', 'café',
    'naive', 'na', '##ive', '##ïve', 'resume', 'res', '##ume', 'résumé', 'ang', '##strom', '##ström',
    'angstrom', 'ore', 'øre', 'facade', 'façade', 'uber', 'über', 'strasse', 'straße', 'creme', 'crème',
    'brulee', 'brûlée', 'play', '##ing', '##ed', '##er', 'un', '##play', '##able', 're', '##play', '##ing',
    'istanbul', 'i̇stanbul', 'σοφια', 'οδοσ', 'οδος', 'dzemal', 'ǆemal', 'ss', 'ω', 'k', 'å', 'fi', 'ﬁ',
    'ελληνικα', 'ελληνικά', 'ανε', 'tab', 'here', 'new', 'line', 'vt', 'ff', 'nel', 'nul', 'bell', 'unit',
    'del', 'nb', 'sp', 'ideo', 'graphic', 'em', 'space', 'thin', 'ogham', 'mark', 'para', 'end', 'nnb',
    'mm', 'zero', 'width', 'non', 'joiner', 'bom', 'word', 'soft', 'hyphen', 'lrm', 'alm', 'pua', 'too',
    'repl', 'char', 'natural', 'language', 'processing', 'history', 'of', 'generally', 'started', 'in',
    '1950', '##s', 'although', 'work', 'can', 'be', 'found', 'from', 'earlier', 'periods', 'alan', 'turing',
    'published', 'an', 'article', 'titled', 'computing', 'machinery', 'and', 'intelligence', 'which',
    'proposed', 'is', 'now', 'called', 'test', 'as', 'a', 'criterion', 'love', 'tokyo', 'osaka', 'x', 'y',
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't',
    '3', '14', '1', '000', '2024', '01', '12', '30', 'hello', 'mask', 'cls', 'sep', 'unk', 'pad',
];

function buildVocab() {
    const seen = new Map();
    const add = (token) => { if (!seen.has(token)) seen.set(token, seen.size); };
    specials.forEach(add);
    for (let i = 0; i < 20; i++) add(`[unused${i}]`);
    // Every character of every text, as a first piece and as a later one,
    // with the case and accents each variant may leave.
    const chars = new Set();
    for (const [, text] of texts) {
        if (typeof text !== 'string') continue;
        for (const form of [text, text.toLowerCase(), text.normalize('NFD'), text.toLowerCase().normalize('NFD')])
            for (const c of form) chars.add(c);
    }
    for (const c of [...chars].sort()) {
        // Whitespace is never a word, and control characters are not in
        // real vocabularies (the NUL character cannot be in ours).
        if (/[\s\p{Cc}]/u.test(c)) continue;
        add(c);
        add('##' + c);
    }
    words.forEach(add);
    for (let c = 0x21; c < 0x7f; c++) { add(String.fromCharCode(c)); add('##' + String.fromCharCode(c)); }
    return Object.fromEntries(seen);
}

const vocab = buildVocab();

function addedToken(id, content, extra = {}) {
    return Object.assign({id, content, single_word: false, lstrip: false, rstrip: false, normalized: false,
                          special: true}, extra);
}

function template(cls = '[CLS]', sep = '[SEP]') {
    return {
        type: 'TemplateProcessing',
        single: [{SpecialToken: {id: cls, type_id: 0}}, {Sequence: {id: 'A', type_id: 0}},
                 {SpecialToken: {id: sep, type_id: 0}}],
        pair: [{SpecialToken: {id: cls, type_id: 0}}, {Sequence: {id: 'A', type_id: 0}},
               {SpecialToken: {id: sep, type_id: 0}}, {Sequence: {id: 'B', type_id: 1}},
               {SpecialToken: {id: sep, type_id: 1}}],
        special_tokens: {
            [cls]: {id: cls, ids: [vocab[cls]], tokens: [cls]},
            [sep]: {id: sep, ids: [vocab[sep]], tokens: [sep]},
        },
    };
}

function bertNormalizer(o = {}) {
    return Object.assign({type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true,
                          strip_accents: null, lowercase: true}, o);
}

function tokenizerJson(o = {}) {
    return {
        version: '1.0',
        truncation: null,
        padding: null,
        added_tokens: o.added_tokens ?? specials.map((s) => addedToken(vocab[s], s)),
        normalizer: o.normalizer === undefined ? bertNormalizer() : o.normalizer,
        pre_tokenizer: o.pre_tokenizer === undefined ? {type: 'BertPreTokenizer'} : o.pre_tokenizer,
        post_processor: o.post_processor === undefined ? template() : o.post_processor,
        decoder: {type: 'WordPiece', prefix: '##', cleanup: true},
        model: {
            type: 'WordPiece',
            unk_token: '[UNK]',
            continuing_subword_prefix: o.prefix ?? '##',
            max_input_chars_per_word: o.max_chars ?? 100,
            vocab: o.vocab ?? vocab,
        },
    };
}

// The variants: what an uncased and a cased BERT ship, and each option of
// the normalizer, added tokens and post-processors besides.
const variants = {
    'uncased': tokenizerJson(),
    'cased': tokenizerJson({normalizer: bertNormalizer({lowercase: false})}),
    'cased-strip': tokenizerJson({normalizer: bertNormalizer({lowercase: false, strip_accents: true})}),
    'uncased-nostrip': tokenizerJson({normalizer: bertNormalizer({strip_accents: false})}),
    'no-chinese': tokenizerJson({normalizer: bertNormalizer({handle_chinese_chars: false})}),
    'no-clean': tokenizerJson({normalizer: bertNormalizer({clean_text: false})}),
    'no-normalizer': tokenizerJson({normalizer: null}),
    'sequence': tokenizerJson({
        normalizer: {type: 'Sequence', normalizers: [{type: 'NFD'}, {type: 'Lowercase'}, {type: 'StripAccents'}]},
        post_processor: {type: 'BertProcessing', sep: ['[SEP]', vocab['[SEP]']], cls: ['[CLS]', vocab['[CLS]']]},
    }),
    'short-words': tokenizerJson({max_chars: 5}),
    'no-pre-tokenizer': tokenizerJson({pre_tokenizer: null, max_chars: 1000}),
    'no-post-processor': tokenizerJson({post_processor: null}),
    'prefix': tokenizerJson({prefix: '',
        vocab: Object.fromEntries(Object.entries(vocab).filter(([t]) => !t.startsWith('##')))}),
    'added-tokens': tokenizerJson({
        added_tokens: [
            ...specials.map((s) => addedToken(vocab[s], s)),
            addedToken(0, '<new>'),
            addedToken(0, 'New York', {normalized: true, special: false}),
            addedToken(0, 'lazy', {single_word: true, normalized: true, special: false}),
            addedToken(0, '[L]', {lstrip: true}),
            addedToken(0, '[R]', {rstrip: true}),
            addedToken(0, '[W]', {single_word: true}),
            addedToken(0, 'brown', {normalized: false, special: false}),
            addedToken(0, '', {}),
        ],
    }),
};

// Longer than the pieces the text is normalized in (4 KiB), with words
// that clean_text joins across vertical tabs and form feeds.
const mixed = texts.filter(([, t]) => typeof t === 'string').map(([, t]) => t);
const longTexts = [
    ['long-mixed', (mixed.join(' \u000b ') + ' a\u000bb c\u000cd e\u0085f ').repeat(3)],
    ['long-vertical', ('word\u000bword\u000c' + 'x'.repeat(50) + '\u0085').repeat(200)],
];

// Texts for the added tokens: their edges and their flags.
const addedTexts = [
    ['added-1', 'I <new> love new york and NEW YORK, newyork'],
    ['added-2', 'a lazy dog, lazydog, xlazy lazy! [lazy]'],
    ['added-3', 'x   [L]   y   [R]   z [W] a[W]b _[W]_ ([W])'],
    ['added-4', 'The quick Brown brown fox<new><new>'],
];

// ---- the reference's ids ----

function textOf(t) {
    return typeof t === 'string' ? t : new TextDecoder('utf-8').decode(Buffer.from(t.bytes));
}

// The text's bytes, in hexadecimal: JSON readers in C stop strings at a NUL.
function hexOf(t) {
    return Buffer.from(typeof t === 'string' ? Buffer.from(t, 'utf8') : t.bytes).toString('hex');
}

async function encode(json, text, truncation) {
    const t = tk.Tokenizer.fromString(JSON.stringify(json));
    if (truncation)
        t.setTruncation(truncation.max, {direction: truncation.direction});
    return (await t.encode(text)).getIds();
}

async function main() {
    fs.mkdirSync(out, {recursive: true});
    const cases = [];
    for (const [name, json] of Object.entries(variants)) {
        fs.writeFileSync(path.join(out, `${name}.tokenizer.json`), JSON.stringify(json, null, 1) + '\n');
        let list = name === 'added-tokens' ? texts.concat(addedTexts) : texts;
        if (['uncased', 'cased', 'no-clean', 'added-tokens', 'no-pre-tokenizer'].includes(name))
            list = list.concat(longTexts);
        for (const [textName, text] of list) {
            cases.push({tokenizer: name, text: textName, hex: hexOf(text), ids: await encode(json, textOf(text))});
        }
    }
    // Truncation, from either side, down to nothing but the special tokens.
    for (const name of ['uncased', 'cased', 'added-tokens'])
        for (const [textName, text] of texts.filter(([n]) => ['long', 'ascii', 'special-tokens-in-text', 'cjk'].includes(n)))
            for (const max of [2, 3, 7, 16])
                for (const direction of ['right', 'left']) {
                    const json = variants[name];
                    cases.push({tokenizer: name, text: textName, hex: hexOf(text), max_length: max, direction,
                                ids: await encode(json, text, {max, direction})});
                }
    fs.writeFileSync(path.join(out, 'cases.json'),
                     '[\n' + cases.map((c) => JSON.stringify(c)).join(',\n') + '\n]\n');
    fs.writeFileSync(path.join(out, 'unicode.txt'), unicodeTable());
}

// ---- every code point ----

// Ranges of the code points for which f is true, as "XXXX-YYYY" words.
function ranges(f) {
    const list = [];
    let start = -1;
    for (let c = 0; c <= 0x110000; c++) {
        const yes = c <= 0x10ffff && !(c >= 0xd800 && c <= 0xdfff) && f(c);
        if (yes && start < 0) start = c;
        if (!yes && start >= 0) {
            list.push(start === c - 1 ? hex(start) : `${hex(start)}-${hex(c - 1)}`);
            start = -1;
        }
    }
    return list;
}

function hex(c) {
    return c.toString(16).toUpperCase().padStart(4, '0');
}

function codes(s) {
    return Array.from(s).map((c) => hex(c.codePointAt(0))).join(' ');
}

function unicodeTable() {
    const clean = tk.bertNormalizer({cleanText: true, handleChineseChars: false, stripAccents: false, lowercase: false});
    const strip = tk.bertNormalizer({cleanText: false, handleChineseChars: false, stripAccents: true, lowercase: false});
    const marks = tk.stripAccentsNormalizer();
    const lower = tk.lowercase();
    const pre = tk.bertPreTokenizer();
    const ch = (c) => String.fromCodePoint(c);
    const lines = [
        '# What the reference (tokenizers 0.22) does with each code point, written by',
        '# tests/tools/make-tokenizer-fixtures.js. Sets are ranges; mappings are',
        '# "CODE -> CODES", for the code points that a step changes.',
    ];
    const set = (name, f) => lines.push(`${name} ${ranges(f).join(' ')}`);
    // clean_text removes these (besides U+0000 and U+FFFD) ...
    set('removed', (c) => clean.normalizeString(ch(c)) === '');
    // ... and makes these a space.
    set('space', (c) => c !== 0x20 && clean.normalizeString(ch(c)) === ' ');
    set('whitespace', (c) => pre.preTokenizeString('a' + ch(c) + 'a').length === 2);
    set('punctuation', (c) => pre.preTokenizeString('a' + ch(c) + 'a').length === 3);
    set('combining', (c) => marks.normalizeString(ch(c)) === '');
    // NFD then without non-spacing marks; Hangul syllables, which decompose
    // by arithmetic, are left to the texts.
    for (let c = 0; c <= 0x10ffff; c++) {
        if ((c >= 0xd800 && c <= 0xdfff) || (c >= 0xac00 && c <= 0xd7a3)) continue;
        const r = strip.normalizeString(ch(c));
        if (r !== ch(c)) lines.push(`strip ${hex(c)} -> ${codes(r)}`);
    }
    for (let c = 0; c <= 0x10ffff; c++) {
        if (c >= 0xd800 && c <= 0xdfff) continue;
        const r = lower.normalizeString(ch(c));
        if (r !== ch(c)) lines.push(`lower ${hex(c)} -> ${codes(r)}`);
    }
    return lines.join('\n') + '\n';
}

main().catch((e) => { console.error(e); process.exit(1); });
