/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Unicode as the Hugging Face tokenizers library sees it, for the BERT
 * tokenizer (tokenizer.c). The reference takes its character data from
 * three places of three ages, and ids only match if each is followed:
 *
 *   - general categories (control, format, private use, punctuation,
 *     marks) from the unicode_categories crate, whose tables are those of
 *     Unicode 8.0: a character assigned later is unassigned to it, so it is
 *     neither removed as a control character nor split off as punctuation;
 *   - canonical decomposition and combining classes (NFD) from
 *     unicode-normalization-alignments, Unicode 9.0;
 *   - White_Space, lowercase mappings and the regex classes \w and \s from
 *     Rust's standard library and regex crate, which follow the current
 *     Unicode.
 *
 * The data is ICU's, and its u_charAge() gives each character's Unicode
 * version, which is how the first two are held at their versions; the
 * eight characters whose category changed since are corrected by hand.
 * What remains different is the lowercase mappings of characters newer
 * than ICU's Unicode (15.0), which ICU leaves as they are: the exhaustive
 * test against the reference in tests/unit/test-tokenizer.c checks every
 * code point.
 *
 * Characters are Unicode scalar values (int32_t, no surrogates). */

/* The most characters one character decomposes to (NFD). */
#define TU_DECOMPOSITION_MAX 8
/* The most characters one character lowercases to. */
#define TU_LOWERCASE_MAX 4

/* Rust's char::is_whitespace: White_Space. */
bool tu_is_whitespace(int32_t c);

/* unicode_categories' is_other(): Cc, Cf or Co. */
bool tu_is_other(int32_t c);

/* BERT's punctuation: ASCII punctuation, or any P* category. */
bool tu_is_punctuation(int32_t c);

/* unicode_categories' is_mark_nonspacing(): Mn. */
bool tu_is_nonspacing_mark(int32_t c);

/* unicode-normalization's is_combining_mark(): Mn, Mc or Me. */
bool tu_is_combining_mark(int32_t c);

/* BERT's "Chinese character": the CJK ideograph blocks it lists. */
bool tu_is_chinese(int32_t c);

/* The regex class \w: Alphabetic, marks, decimal digits, connector
 * punctuation, Join_Control. */
bool tu_is_word(int32_t c);

/* The canonical combining class. */
uint8_t tu_combining_class(int32_t c);

/* The full canonical decomposition of c into out, its length returned
 * (1 and c itself when it has none). */
size_t tu_decompose(int32_t c, int32_t out[static TU_DECOMPOSITION_MAX]);

/* Rust's char::to_lowercase(): the full mapping, without context (so a
 * capital sigma is always a small sigma). Returns the length. */
size_t tu_lowercase(int32_t c, int32_t out[static TU_LOWERCASE_MAX]);

/* Decodes one character of valid or invalid UTF-8 at s[*i] (n bytes in
 * all), advancing *i. A maximal ill-formed subsequence is one U+FFFD, as
 * Rust's String::from_utf8_lossy() and the WHATWG decoder make it. */
int32_t tu_utf8_next(const uint8_t *s, size_t *i, size_t n);

/* Encodes c (a scalar value) as UTF-8 into out, returning its length. */
size_t tu_utf8_put(int32_t c, uint8_t out[static 4]);

/* What sentence-transformers does to a text before its tokenizer sees it:
 * Python's str.strip() (whitespace as str.isspace() has it), then, when
 * lower is true, Python's str.lower() (the full mappings with their
 * context, so a final capital sigma becomes a final small sigma). The text
 * (n bytes) is decoded as tu_utf8_next() decodes it; when nothing is
 * lowercased the bytes kept are the text's own. Returns 0 with a new
 * buffer in *ret (NUL-terminated, *ret_n bytes before the NUL), -ENOMEM,
 * or -EFBIG for a text of 2^28 bytes or more. */
int tu_python_strip_lower(const uint8_t *s, size_t n, bool lower, char **ret, size_t *ret_n);
