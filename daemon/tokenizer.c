/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "json-scan.h"
#include "macro.h"
#include "tokenizer-internal.h"
#include "tokenizer-unicode.h"
#include "tokenizer.h"

/* Text is normalized a piece at a time, each piece at least this long and
 * ending just after a character where cutting changes nothing (see
 * chunk_end()), so that memory follows the pieces, not the text. */
#define CHUNK_MIN 4096U

Tokenizer *tokenizer_free(Tokenizer *t) {
        if (!t)
                return NULL;
        token_set_done(&t->vocab);
        token_set_done(&t->added_contents);
        token_set_done(&t->added_raw);
        token_set_done(&t->added_normalized);
        free(t->added);
        free(t);
        return NULL;
}

uint64_t tokenizer_bytes(const Tokenizer *t) {
        return sizeof *t + t->n_added * sizeof *t->added + token_set_memory_bytes(&t->vocab) +
                token_set_memory_bytes(&t->added_contents) + token_set_memory_bytes(&t->added_raw) +
                token_set_memory_bytes(&t->added_normalized);
}

size_t tokenizer_n_special_ids(const Tokenizer *t) {
        return t->n_before + t->n_after;
}

uint32_t tokenizer_id_limit(const Tokenizer *t) {
        return t->id_limit;
}

int64_t tokenizer_token_to_id(const Tokenizer *t, const char *token) {
        size_t i;

        /* Added tokens first, as the reference looks them up. */
        i = token_set_find(&t->added_contents, token, strlen(token));
        if (i != SIZE_MAX)
                return token_set_entries(&t->added_contents)[i].id;
        i = token_set_find(&t->vocab, token, strlen(token));
        if (i != SIZE_MAX)
                return token_set_entries(&t->vocab)[i].id;
        return -ENOENT;
}
/* ---- normalization ---- */


static int char_buffer_reserve(CharBuffer *b, size_t extra) {
        int32_t *c;
        size_t want;

        if (extra <= b->allocated - b->n)
                return 0;
        if (extra > SIZE_MAX / 2 - b->n)
                return -ENOMEM;
        want = MAX(b->n + extra, MAX(b->allocated * 2, (size_t) 256));
        c = reallocarray(b->c, want, sizeof *c);
        if (!c)
                return -ENOMEM;
        b->c = c;
        b->allocated = want;
        return 0;
}

static void char_buffer_done(CharBuffer *b) {
        free(b->c);
        *b = (CharBuffer) {};
}


void scratch_done(Scratch *s) {
        char_buffer_done(&s->a);
        char_buffer_done(&s->b);
        char_buffer_done(&s->sort);
        free(s->utf8);
        free(s->pieces);
}
static bool is_bert_whitespace(int32_t c) {
        return c == '\t' || c == '\n' || c == '\r' || tu_is_whitespace(c);
}

static bool is_bert_control(int32_t c) {
        return c != '\t' && c != '\n' && c != '\r' && tu_is_other(c);
}

/* Canonical ordering: each run of characters with a non-zero combining
 * class sorted by class, stably. Counting sort for long runs, so that a
 * text of nothing but marks stays linear. */
static int sort_marks(Scratch *s, int32_t *run, size_t n) {
        size_t count[257] = {};
        int r;

        if (n <= 16) {
                for (size_t i = 1; i < n; i++) {
                        int32_t c = run[i];
                        uint8_t k = tu_combining_class(c);
                        size_t j = i;

                        for (; j > 0 && tu_combining_class(run[j - 1]) > k; j--)
                                run[j] = run[j - 1];
                        run[j] = c;
                }
                return 0;
        }

        s->sort.n = 0;
        r = char_buffer_reserve(&s->sort, n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                count[tu_combining_class(run[i]) + 1]++;
        for (size_t k = 1; k < ELEMENTSOF(count); k++)
                count[k] += count[k - 1];
        for (size_t i = 0; i < n; i++)
                s->sort.c[count[tu_combining_class(run[i])]++] = run[i];
        memcpy(run, s->sort.c, n * sizeof *run);
        return 0;
}

static int reorder_marks(Scratch *s, CharBuffer *b) {
        size_t i = 0;
        int r;

        while (i < b->n) {
                size_t j = i;

                while (j < b->n && tu_combining_class(b->c[j]) != 0)
                        j++;
                if (j - i > 1) {
                        r = sort_marks(s, b->c + i, j - i);
                        if (r < 0)
                                return r;
                }
                i = j + 1;
        }
        return 0;
}

static int apply_step(Scratch *s, Step step, const CharBuffer *in, CharBuffer *out) {
        int r;

        out->n = 0;
        for (size_t i = 0; i < in->n; i++) {
                int32_t c = in->c[i], more[MAX(TU_DECOMPOSITION_MAX, TU_LOWERCASE_MAX)];
                size_t n;

                r = char_buffer_reserve(out, ELEMENTSOF(more));
                if (r < 0)
                        return r;

                switch (step) {
                case STEP_CLEAN:
                        if (c == 0 || c == 0xfffd || is_bert_control(c))
                                break;
                        out->c[out->n++] = is_bert_whitespace(c) ? ' ' : c;
                        break;
                case STEP_CHINESE:
                        if (tu_is_chinese(c)) {
                                out->c[out->n++] = ' ';
                                out->c[out->n++] = c;
                                out->c[out->n++] = ' ';
                        } else
                                out->c[out->n++] = c;
                        break;
                case STEP_NFD:
                        n = tu_decompose(c, more);
                        memcpy(out->c + out->n, more, n * sizeof *more);
                        out->n += n;
                        break;
                case STEP_STRIP_NONSPACING:
                        if (!tu_is_nonspacing_mark(c))
                                out->c[out->n++] = c;
                        break;
                case STEP_STRIP_MARKS:
                        if (!tu_is_combining_mark(c))
                                out->c[out->n++] = c;
                        break;
                case STEP_LOWERCASE:
                        n = tu_lowercase(c, more);
                        memcpy(out->c + out->n, more, n * sizeof *more);
                        out->n += n;
                        break;
                }
        }

        if (step == STEP_NFD)
                return reorder_marks(s, out);
        return 0;
}

int tokenizer_normalize(const Tokenizer *t, Scratch *s, const uint8_t *text, size_t length, size_t *ret_length) {
        CharBuffer *in = &s->a, *out = &s->b;
        size_t i = 0, n = 0;
        int r;

        in->n = 0;
        r = char_buffer_reserve(in, length);
        if (r < 0)
                return r;
        while (i < length)
                in->c[in->n++] = tu_utf8_next(text, &i, length);

        for (size_t k = 0; k < t->n_steps; k++) {
                CharBuffer *swap;

                r = apply_step(s, t->steps[k], in, out);
                if (r < 0)
                        return r;
                swap = in;
                in = out;
                out = swap;
        }

        if (in->n > SIZE_MAX / 4)
                return -ENOMEM;
        if (s->utf8_allocated < in->n * 4) {
                uint8_t *p = realloc(s->utf8, MAX(in->n * 4, (size_t) 1));
                if (!p)
                        return -ENOMEM;
                s->utf8 = p;
                s->utf8_allocated = MAX(in->n * 4, (size_t) 1);
        }
        for (size_t k = 0; k < in->n; k++)
                n += tu_utf8_put(in->c[k], s->utf8 + n);
        *ret_length = n;
        return 0;
}
/* ---- encoding ---- */

typedef struct Encoder {
        const Tokenizer *t;
        TokenizerTruncation truncation;
        int32_t *ids;           /* where the ids between the special ones go */
        size_t capacity;        /* how many fit */
        size_t n;               /* how many were made (for TRUNCATE_LEFT, a ring of capacity) */
        bool done;              /* nothing more can change the result */
        Scratch scratch;
} Encoder;

static int emit(Encoder *e, uint32_t id) {
        switch (e->truncation) {
        case TOKENIZER_TRUNCATE_NONE:
                if (e->n >= e->capacity)
                        return -E2BIG;
                e->ids[e->n++] = (int32_t) id;
                break;
        case TOKENIZER_TRUNCATE_RIGHT:
                if (e->n < e->capacity)
                        e->ids[e->n++] = (int32_t) id;
                e->done = e->n >= e->capacity;
                break;
        case TOKENIZER_TRUNCATE_LEFT:
                if (e->capacity > 0)
                        e->ids[e->n % e->capacity] = (int32_t) id;
                e->n++;
                break;
        }
        return 0;
}

/* One word of normalized text (n bytes, n_chars characters) in WordPiece
 * pieces. */
static int encode_word(Encoder *e, const uint8_t *word, size_t n, size_t n_chars) {
        const Tokenizer *t = e->t;
        Scratch *s = &e->scratch;
        size_t start = 0, n_pieces = 0;
        int r;

        if (n_chars > t->max_chars_per_word)
                return emit(e, t->unk_id);

        if (s->pieces_allocated < n) {
                uint32_t *p = reallocarray(s->pieces, n, sizeof *p);
                if (!p)
                        return -ENOMEM;
                s->pieces = p;
                s->pieces_allocated = n;
        }

        while (start < n) {
                size_t length, index;
                bool found;

                if (start == 0)
                        found = token_set_longest(&t->vocab, 0, t->vocab.n, 0, word, n, &length, &index);
                else
                        found = token_set_longest(&t->vocab, t->subword_lo, t->subword_hi, t->subword_depth,
                                                  word + start, n - start, &length, &index);
                if (!found)
                        return emit(e, t->unk_id);
                s->pieces[n_pieces++] = token_set_entries(&t->vocab)[index].id;
                start += length;
        }

        for (size_t i = 0; i < n_pieces && !e->done; i++) {
                r = emit(e, s->pieces[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Normalized text without added tokens: split into words. */
static int encode_words(Encoder *e, const uint8_t *text, size_t n) {
        size_t i = 0, word = SIZE_MAX, n_chars = 0;
        int r;

        if (!e->t->split_words) {
                while (i < n) {
                        (void) tu_utf8_next(text, &i, n);
                        n_chars++;
                }
                return encode_word(e, text, n, n_chars);
        }

        while (i < n && !e->done) {
                size_t at = i;
                int32_t c = tu_utf8_next(text, &i, n);
                bool space = tu_is_whitespace(c), punctuation = !space && tu_is_punctuation(c);

                if (!space && !punctuation) {
                        if (word == SIZE_MAX) {
                                word = at;
                                n_chars = 0;
                        }
                        n_chars++;
                        continue;
                }
                if (word != SIZE_MAX) {
                        r = encode_word(e, text + word, at - word, n_chars);
                        if (r < 0)
                                return r;
                        word = SIZE_MAX;
                }
                if (punctuation && !e->done) {
                        r = encode_word(e, text + at, i - at, 1);
                        if (r < 0)
                                return r;
                }
        }
        if (word != SIZE_MAX && !e->done)
                return encode_word(e, text + word, n - word, n_chars);
        return 0;
}

/* Whether the character before at (in text) is a word character. */
static bool word_before(const uint8_t *text, size_t at) {
        size_t i;

        if (at == 0)
                return false;
        i = at - 1;
        while (i > 0 && (text[i] & 0xc0) == 0x80)
                i--;
        return tu_is_word(tu_utf8_next(text, &i, at));
}

static bool word_after(const uint8_t *text, size_t at, size_t n) {
        return at < n && tu_is_word(tu_utf8_next(text, &at, n));
}

static size_t whitespace_before(const uint8_t *text, size_t at) {
        while (at > 0) {
                size_t i = at - 1;

                while (i > 0 && (text[i] & 0xc0) == 0x80)
                        i--;
                size_t j = i;
                if (!tu_is_whitespace(tu_utf8_next(text, &j, at)))
                        break;
                at = i;
        }
        return at;
}

static size_t whitespace_after(const uint8_t *text, size_t at, size_t n) {
        while (at < n) {
                size_t i = at;

                if (!tu_is_whitespace(tu_utf8_next(text, &i, n)))
                        break;
                at = i;
        }
        return at;
}

typedef int (*segment_t)(Encoder *e, const uint8_t *text, size_t n);

/* Finds the added tokens of a set in text (valid UTF-8) as the reference's
 * Aho-Corasick automaton does (leftmost, then longest; the search goes on
 * after a match even when single_word then rejects it), emits their ids
 * and hands what lies between them to segment. */
static int split_added(Encoder *e, const TokenSet *set, const uint8_t *text, size_t n, segment_t segment) {
        size_t pos = 0, done_to = 0;
        int r;

        while (pos < n && !e->done) {
                const AddedToken *a;
                size_t length, index, start, stop;

                if (set->first[text[pos]] == set->first[text[pos] + 1] ||
                    !token_set_longest(set, 0, set->n, 0, text + pos, n - pos, &length, &index)) {
                        pos++;
                        continue;
                }
                a = &e->t->added[token_set_entries(set)[index].id];
                start = pos;
                stop = pos = pos + length;

                if (a->single_word && (word_before(text, start) || word_after(text, stop, n)))
                        continue;
                if (a->lstrip)
                        start = MAX(whitespace_before(text, start), done_to);
                if (a->rstrip)
                        stop = whitespace_after(text, stop, n);

                if (done_to < start) {
                        r = segment(e, text + done_to, start - done_to);
                        if (r < 0)
                                return r;
                        if (e->done)
                                return 0;
                }
                r = emit(e, a->id);
                if (r < 0)
                        return r;
                done_to = stop;
        }

        if (done_to < n && !e->done)
                return segment(e, text + done_to, n - done_to);
        return 0;
}

/* Where a piece of raw text that begins at start may end: after a
 * character that every step leaves a word boundary of the same kind and
 * that no combining mark is reordered across: whitespace that clean_text
 * does not remove (it removes vertical tabs, form feeds and U+0085, which
 * then join the words around them), ASCII punctuation. Words and ids then
 * come out as from the whole text. */
static size_t chunk_end(const Tokenizer *t, const uint8_t *text, size_t n, size_t start) {
        size_t i = start;

        if (!t->chunked)
                return n;
        while (i < n) {
                int32_t c = tu_utf8_next(text, &i, n);

                if (i - start < CHUNK_MIN)
                        continue;
                if ((tu_is_whitespace(c) && !is_bert_control(c)) || (c < 0x80 && tu_is_punctuation(c)))
                        return i;
        }
        return n;
}

/* Raw text between added tokens: normalized (a piece at a time where
 * allowed), then split at the added tokens matched after normalizing. */
static int encode_segment(Encoder *e, const uint8_t *text, size_t n) {
        size_t start = 0;
        int r;

        while (start < n && !e->done) {
                size_t end = chunk_end(e->t, text, n, start), length;

                r = tokenizer_normalize(e->t, &e->scratch, text + start, end - start, &length);
                if (r < 0)
                        return r;
                r = split_added(e, &e->t->added_normalized, e->scratch.utf8, length, encode_words);
                if (r < 0)
                        return r;
                start = end;
        }
        return 0;
}

static bool utf8_valid(const uint8_t *text, size_t n) {
        for (size_t i = 0; i < n;) {
                size_t k;

                if (text[i] < 0x80) {
                        i++;
                        continue;
                }
                k = json_utf8_sequence_length(text + i, n - i);
                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}

/* Rust's String::from_utf8_lossy(). */
static uint8_t *utf8_lossy(const uint8_t *text, size_t n, size_t *ret_length) {
        _cleanup_free_ uint8_t *copy = NULL;
        size_t i = 0, k = 0;

        /* U+FFFD takes 3 bytes where one bad byte stood. */
        if (n > SIZE_MAX / 3)
                return NULL;
        copy = malloc(MAX(n * 3, (size_t) 1));
        if (!copy)
                return NULL;
        while (i < n)
                k += tu_utf8_put(tu_utf8_next(text, &i, n), copy + k);
        *ret_length = k;
        return TAKE_PTR(copy);
}

static void reverse(int32_t *ids, size_t n) {
        for (size_t i = 0; i < n / 2; i++) {
                int32_t x = ids[i];
                ids[i] = ids[n - 1 - i];
                ids[n - 1 - i] = x;
        }
}

/* Turns the ring of the last ids around so that the oldest, at first,
 * comes first. */
static void rotate(int32_t *ids, size_t n, size_t first) {
        reverse(ids, first);
        reverse(ids + first, n - first);
        reverse(ids, n);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t length, TokenizerTruncation truncation,
                     int32_t *ids, size_t max_ids, size_t *ret_n_ids) {
        _cleanup_free_ uint8_t *lossy = NULL;
        const uint8_t *s = (const uint8_t *) text;
        size_t n_content;
        Encoder e;
        int r;

        assert(t);
        assert(text || length == 0);
        assert(ids || max_ids == 0);
        assert(truncation >= TOKENIZER_TRUNCATE_NONE && truncation <= TOKENIZER_TRUNCATE_LEFT);
        assert(ret_n_ids);

        if (max_ids < tokenizer_n_special_ids(t))
                return -EINVAL;

        if (!utf8_valid(s, length)) {
                lossy = utf8_lossy(s, length, &length);
                if (!lossy)
                        return -ENOMEM;
                s = lossy;
        }

        e = (Encoder) {
                .t = t,
                .truncation = truncation,
                .ids = ids + t->n_before,
                .capacity = max_ids - tokenizer_n_special_ids(t),
        };
        e.done = truncation == TOKENIZER_TRUNCATE_RIGHT && e.capacity == 0;
        r = split_added(&e, &t->added_raw, s, length, encode_segment);
        scratch_done(&e.scratch);
        if (r < 0)
                return r;

        n_content = MIN(e.n, e.capacity);
        if (truncation == TOKENIZER_TRUNCATE_LEFT && e.n > e.capacity && e.capacity > 0)
                rotate(e.ids, e.capacity, e.n % e.capacity);

        for (size_t i = 0; i < t->n_before; i++)
                ids[i] = (int32_t) t->before[i];
        for (size_t i = 0; i < t->n_after; i++)
                ids[t->n_before + n_content + i] = (int32_t) t->after[i];
        *ret_n_ids = t->n_before + n_content + t->n_after;
        return 0;
}
