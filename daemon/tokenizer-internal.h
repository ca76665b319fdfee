/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "token-set.h"
#include "tokenizer.h"

/* What tokenizer.c (encoding) and tokenizer-json.c (reading the file)
 * share. */

typedef enum Step {
        STEP_CLEAN,             /* BertNormalizer's clean_text */
        STEP_CHINESE,           /* handle_chinese_chars */
        STEP_NFD,
        STEP_STRIP_NONSPACING,  /* BertNormalizer's accent stripping, after NFD */
        STEP_STRIP_MARKS,       /* the StripAccents normalizer */
        STEP_LOWERCASE,
} Step;

#define STEPS_MAX (5 * TOKENIZER_NORMALIZERS_MAX)

typedef struct AddedToken {
        uint32_t id;
        bool single_word;
        bool lstrip;
        bool rstrip;
} AddedToken;

struct Tokenizer {
        Step steps[STEPS_MAX];
        size_t n_steps;
        bool split_words;               /* BertPreTokenizer */
        bool chunked;                   /* text may be normalized in pieces (chunk_end()) */

        TokenSet vocab;                 /* WordPiece: entry -> id */
        size_t subword_lo, subword_hi;  /* the entries that begin with continuing_subword_prefix */
        size_t subword_depth;           /* its length */
        uint32_t unk_id;
        uint64_t max_chars_per_word;

        AddedToken *added;
        size_t n_added;
        TokenSet added_contents;        /* content -> id */
        TokenSet added_raw;             /* content -> index in added, for those matched before normalizing */
        TokenSet added_normalized;      /* normalized content -> index in added, for the others */

        uint32_t before[TOKENIZER_SPECIAL_IDS_MAX];
        uint32_t after[TOKENIZER_SPECIAL_IDS_MAX];
        size_t n_before, n_after;

        uint32_t id_limit;
};

typedef struct CharBuffer {
        int32_t *c;
        size_t n;
        size_t allocated;
} CharBuffer;

/* What one encoding (or one normalization at load) works in. */
typedef struct Scratch {
        CharBuffer a, b, sort;
        uint8_t *utf8;
        size_t utf8_allocated;
        uint32_t *pieces;
        size_t pieces_allocated;
} Scratch;

void scratch_done(Scratch *s);

/* Normalizes text (valid UTF-8) with the tokenizer's steps into s->utf8,
 * its length returned in *ret_length. */
int tokenizer_normalize(const Tokenizer *t, Scratch *s, const uint8_t *text, size_t length, size_t *ret_length);
