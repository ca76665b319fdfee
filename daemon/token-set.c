/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macro.h"
#include "token-set.h"

void token_set_done(TokenSet *s) {
        json_buffer_free(&s->bytes);
        json_buffer_free(&s->entries);
}

static uint64_t pages(uint64_t n) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (n + page - 1) / page * page;
}

uint64_t token_set_memory_bytes(const TokenSet *s) {
        /* The buffers grow by doubling; only the pages written are held. */
        return pages(s->n_bytes) + pages((uint64_t) s->n * sizeof(TokenEntry));
}

/* Makes room for size bytes, doubling from a page. */
static int buffer_reserve(JsonBuffer *b, size_t size) {
        if (size <= b->size)
                return 0;
        return json_buffer_resize(b, MAX(size, MAX(b->size * 2, (size_t) 4096)));
}

int token_set_add(TokenSet *s, const void *bytes, size_t length, uint32_t id) {
        int r;

        /* The arena is bounded by the file's size, so offsets fit 32 bits. */
        if (length > UINT32_MAX || s->n_bytes > UINT32_MAX - length)
                return -E2BIG;
        r = buffer_reserve(&s->bytes, s->n_bytes + length + 1);
        if (r < 0)
                return r;
        r = buffer_reserve(&s->entries, (s->n + 1) * sizeof(TokenEntry));
        if (r < 0)
                return r;

        memcpy((uint8_t *) s->bytes.data + s->n_bytes, bytes, length);
        token_set_entries(s)[s->n++] = (TokenEntry) {
                .offset = (uint32_t) s->n_bytes,
                .length = (uint32_t) length,
                .id = id,
        };
        s->n_bytes += length;
        return 0;
}

static int compare_entries(const void *a, const void *b, void *userdata) {
        const TokenEntry *x = a, *y = b;
        const uint8_t *bytes = userdata;
        int c;

        c = memcmp(bytes + x->offset, bytes + y->offset, MIN(x->length, y->length));
        if (c != 0)
                return c;
        return x->length < y->length ? -1 : x->length > y->length ? 1 : 0;
}

size_t token_set_build(TokenSet *s, uint32_t *duplicate_a) {
        TokenEntry *e = token_set_entries(s);
        size_t b = 0;

        if (s->n > 1)
                qsort_r(e, s->n, sizeof *e, compare_entries, s->bytes.data);

        for (size_t i = 0; i < s->n; i++) {
                unsigned first = e[i].length > 0 ? token_set_bytes(s, i)[0] : 0;

                if (e[i].length > 0)
                        while (b <= first)
                                s->first[b++] = (uint32_t) i;
        }
        while (b <= 256)
                s->first[b++] = (uint32_t) s->n;

        for (size_t i = 1; i < s->n; i++)
                if (compare_entries(&e[i - 1], &e[i], s->bytes.data) == 0) {
                        *duplicate_a = e[i - 1].id;
                        return i;
                }
        return SIZE_MAX;
}

/* The byte at depth of entry i, or -1 if it is no longer than depth. */
static int entry_key(const TokenSet *s, size_t i, size_t depth) {
        return token_set_entries(s)[i].length > depth ? token_set_bytes(s, i)[depth] : -1;
}

void token_set_narrow(const TokenSet *s, size_t *lo, size_t *hi, size_t depth, uint8_t c) {
        size_t a = *lo, b = *hi, start;

        while (a < b) {
                size_t m = a + (b - a) / 2;
                if (entry_key(s, m, depth) < c)
                        a = m + 1;
                else
                        b = m;
        }
        start = a;
        b = *hi;
        while (a < b) {
                size_t m = a + (b - a) / 2;
                if (entry_key(s, m, depth) <= c)
                        a = m + 1;
                else
                        b = m;
        }
        *lo = start;
        *hi = a;
}

bool token_set_longest(const TokenSet *s, size_t lo, size_t hi, size_t depth, const uint8_t *text, size_t n,
                              size_t *ret_length, size_t *ret_index) {
        bool found = false;

        for (size_t k = 0; k < n && lo < hi; k++) {
                if (depth + k == 0) {
                        lo = s->first[text[0]];
                        hi = s->first[text[0] + 1];
                } else
                        token_set_narrow(s, &lo, &hi, depth + k, text[k]);
                if (lo < hi && token_set_entries(s)[lo].length == depth + k + 1) {
                        found = true;
                        *ret_length = k + 1;
                        *ret_index = lo;
                }
        }
        return found;
}

size_t token_set_find(const TokenSet *s, const void *text, size_t n) {
        size_t lo = 0, hi = s->n;

        for (size_t k = 0; k < n && lo < hi; k++)
                token_set_narrow(s, &lo, &hi, k, ((const uint8_t *) text)[k]);
        if (lo < hi && token_set_entries(s)[lo].length == n)
                return lo;
        return SIZE_MAX;
}
