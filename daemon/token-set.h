/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "json-scan.h"

/* Sets of byte strings, each mapped to a number, sorted so that the longest
 * member that begins a text is found in a few steps per byte of it: the
 * tokenizer's vocabulary and its added tokens. Built once, then read by any
 * number of threads. */

typedef struct TokenEntry {
        uint32_t offset;        /* of its bytes in the set's arena */
        uint32_t length;
        uint32_t id;            /* what the set maps it to */
} TokenEntry;

/* Mapped rather than malloc'd, as json-scan.h explains for JsonBuffer. */
typedef struct TokenSet {
        JsonBuffer bytes;
        size_t n_bytes;
        JsonBuffer entries;     /* TokenEntry, sorted by their bytes once built */
        size_t n;
        /* Entries of at least one byte whose first byte is b are
         * [first[b], first[b + 1]). */
        uint32_t first[257];
} TokenSet;

static inline TokenEntry *token_set_entries(const TokenSet *s) {
        return s->entries.data;
}

static inline const uint8_t *token_set_bytes(const TokenSet *s, size_t i) {
        return (const uint8_t *) s->bytes.data + token_set_entries(s)[i].offset;
}

void token_set_done(TokenSet *s);

/* Memory the set holds: the pages its members and entries take. */
uint64_t token_set_memory_bytes(const TokenSet *s);

/* Adds a member (not yet sorted); -E2BIG past 4 GiB of members. */
int token_set_add(TokenSet *s, const void *bytes, size_t length, uint32_t id);

/* Sorts the members and indexes them by first byte. Returns the index of
 * a member equal to the one before it, or SIZE_MAX if there is none;
 * duplicate_a receives the number of the one before it. */
size_t token_set_build(TokenSet *s, uint32_t *duplicate_a);

/* Narrows [*lo, *hi), members that share their first depth bytes, to those
 * whose next byte is c. */
void token_set_narrow(const TokenSet *s, size_t *lo, size_t *hi, size_t depth, uint8_t c);

/* The longest member of [lo, hi) (members that share their first depth
 * bytes) whose bytes from depth on begin text: true, with how much of
 * text it covers and its index. From the whole set, lo = 0, hi = n and
 * depth = 0. */
bool token_set_longest(const TokenSet *s, size_t lo, size_t hi, size_t depth, const uint8_t *text, size_t n,
                       size_t *ret_length, size_t *ret_index);

/* The index of the member equal to text, or SIZE_MAX. */
size_t token_set_find(const TokenSet *s, const void *text, size_t n);
