/* SPDX-License-Identifier: MIT */
#pragma once

/* A tokenizer.json that turns the fixtures' id sequences into text and
 * back, so that what runs on texts can be checked against the embeddings
 * tests/fixtures/bert holds for ids: the word "t<id>" is token <id> for
 * every id below vocab_size - 1, and the last id is [UNK], which any
 * other word ("zzz") makes. No normalizer, and no post-processor, so that
 * no [CLS] or [SEP] is added: "t2 t17 t5" is exactly [2, 17, 5]. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID_TOKENIZER_UNKNOWN_WORD "zzz"

/* The file's text (malloc'd, NUL-terminated). NULL on OOM. */
static inline char *id_tokenizer_json(unsigned vocab_size) {
        size_t size = 512 + (size_t) vocab_size * 24, n = 0;
        char *s = malloc(size);

        if (!s)
                return NULL;
        n += (size_t) snprintf(s + n, size - n,
                               "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
                               "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
                               "\"post_processor\":null,\"decoder\":null,\"model\":{\"type\":\"WordPiece\","
                               "\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
                               "\"max_input_chars_per_word\":100,\"vocab\":{");
        for (unsigned i = 0; i + 1 < vocab_size; i++)
                n += (size_t) snprintf(s + n, size - n, "\"t%u\":%u,", i, i);
        n += (size_t) snprintf(s + n, size - n, "\"[UNK]\":%u}}}", vocab_size - 1);
        return s;
}

/* The text for an id sequence: "t<id>" words separated by single spaces,
 * the last id as ID_TOKENIZER_UNKNOWN_WORD. malloc'd. */
static inline char *id_tokenizer_text(const uint32_t *ids, size_t n, unsigned vocab_size) {
        size_t size = 1 + n * 12, k = 0;
        char *s = malloc(size);

        if (!s)
                return NULL;
        s[0] = 0;
        for (size_t i = 0; i < n; i++) {
                if (ids[i] + 1 == (uint32_t) vocab_size)
                        k += (size_t) snprintf(s + k, size - k, "%s" ID_TOKENIZER_UNKNOWN_WORD, i ? " " : "");
                else
                        k += (size_t) snprintf(s + k, size - k, "%st%u", i ? " " : "", ids[i]);
        }
        return s;
}
