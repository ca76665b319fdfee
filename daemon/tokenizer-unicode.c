/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>
#include <unicode/utf8.h>

#include "macro.h"
#include "tokenizer-unicode.h"

/* The Unicode versions of the reference's crates (see the header). */
#define CATEGORIES_UNICODE_MAJOR 8
#define NORMALIZATION_UNICODE_MAJOR 9

/* Whether c was assigned by the given major version of Unicode. ICU says
 * 0.0 for what it does not know. */
static bool assigned_by(int32_t c, unsigned major) {
        UVersionInfo age;

        u_charAge(c, age);
        return (age[0] > 0 || age[1] > 0) && age[0] <= major;
}

/* The characters whose category changed between the reference's
 * versions and ICU's, as the exhaustive test against the reference found
 * them: assigned early, so their age does not tell. */
static const struct {
        int32_t c;
        uint32_t unicode8;      /* the category in Unicode 8.0 */
        uint32_t unicode9;      /* and in 9.0 */
} category_changes[] = {
        { 0x1734, U_GC_MN_MASK, U_GC_MN_MASK },         /* Mc since 14.0 */
        { 0x1885, U_GC_LO_MASK, U_GC_MN_MASK },         /* Mn since 9.0 */
        { 0x1886, U_GC_LO_MASK, U_GC_MN_MASK },
        { 0x166D, U_GC_PO_MASK, U_GC_PO_MASK },         /* So since 12.0 */
        { 0x1CF2, U_GC_MC_MASK, U_GC_MC_MASK },         /* Lo since 10.0 */
        { 0x1CF3, U_GC_MC_MASK, U_GC_MC_MASK },
        { 0xA9BD, U_GC_MC_MASK, U_GC_MC_MASK },         /* Mn since 12.0 */
        { 0x111C9, U_GC_PO_MASK, U_GC_PO_MASK },        /* Mn since 11.0 */
};

/* The category mask of c in the given major version of Unicode (8 or 9). */
static uint32_t category_mask(int32_t c, unsigned major) {
        if (c < 0x80)
                return U_GET_GC_MASK(c);
        if (!assigned_by(c, major))
                return U_GC_CN_MASK;
        for (size_t i = 0; i < ELEMENTSOF(category_changes); i++)
                if (category_changes[i].c == c)
                        return major == 8 ? category_changes[i].unicode8 : category_changes[i].unicode9;
        return U_GET_GC_MASK(c);
}

/* The category mask of c as the unicode_categories crate knows it. */
static uint32_t old_category_mask(int32_t c) {
        return category_mask(c, CATEGORIES_UNICODE_MAJOR);
}

bool tu_is_whitespace(int32_t c) {
        if (c < 0x80)
                return c == ' ' || (c >= '\t' && c <= '\r');
        return u_hasBinaryProperty(c, UCHAR_WHITE_SPACE);
}

bool tu_is_other(int32_t c) {
        return old_category_mask(c) & (U_GC_CC_MASK | U_GC_CF_MASK | U_GC_CO_MASK);
}

bool tu_is_punctuation(int32_t c) {
        /* Rust's char::is_ascii_punctuation() counts the ASCII symbols too. */
        if (c < 0x80)
                return (c >= 0x21 && c <= 0x2f) || (c >= 0x3a && c <= 0x40) || (c >= 0x5b && c <= 0x60) ||
                        (c >= 0x7b && c <= 0x7e);
        return old_category_mask(c) & U_GC_P_MASK;
}

bool tu_is_nonspacing_mark(int32_t c) {
        return c >= 0x300 && (old_category_mask(c) & U_GC_MN_MASK);
}

bool tu_is_combining_mark(int32_t c) {
        return c >= 0x300 && (category_mask(c, NORMALIZATION_UNICODE_MAJOR) & U_GC_M_MASK);
}

bool tu_is_chinese(int32_t c) {
        /* BERT's own list, which is not all of Unicode's CJK blocks. */
        return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) || (c >= 0x20000 && c <= 0x2a6df) ||
                (c >= 0x2a700 && c <= 0x2b73f) || (c >= 0x2b740 && c <= 0x2b81f) ||
                (c >= 0x2b920 && c <= 0x2ceaf) || (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

bool tu_is_word(int32_t c) {
        if (c < 0x80)
                return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) ||
                (U_GET_GC_MASK(c) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
                u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

uint8_t tu_combining_class(int32_t c) {
        if (c < 0x300 || !assigned_by(c, NORMALIZATION_UNICODE_MAJOR))
                return 0;
        return u_getCombiningClass(c);
}

size_t tu_decompose(int32_t c, int32_t out[static TU_DECOMPOSITION_MAX]) {
        UErrorCode error = U_ZERO_ERROR;
        const UNormalizer2 *nfd;
        UChar buffer[2 * TU_DECOMPOSITION_MAX];
        int32_t length, i = 0;
        size_t n = 0;

        /* Nothing below U+00C0 decomposes. */
        if (c < 0xc0 || !assigned_by(c, NORMALIZATION_UNICODE_MAJOR))
                goto itself;

        nfd = unorm2_getNFDInstance(&error);
        if (U_FAILURE(error))
                goto itself;
        length = unorm2_getDecomposition(nfd, c, buffer, ELEMENTSOF(buffer), &error);
        if (U_FAILURE(error) || length <= 0)
                goto itself;

        while (i < length && n < TU_DECOMPOSITION_MAX) {
                UChar32 d;

                U16_NEXT(buffer, i, length, d);
                out[n++] = d;
        }
        return n;

itself:
        out[0] = c;
        return 1;
}

size_t tu_lowercase(int32_t c, int32_t out[static TU_LOWERCASE_MAX]) {
        UErrorCode error = U_ZERO_ERROR;
        UChar source[2], lower[2 * TU_LOWERCASE_MAX];
        int32_t source_length = 0, length, i = 0;
        size_t n = 0;

        if (c < 0x80) {
                out[0] = c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
                return 1;
        }
        if (!u_hasBinaryProperty(c, UCHAR_CHANGES_WHEN_LOWERCASED)) {
                out[0] = c;
                return 1;
        }

        /* One character alone, so that no context applies (final sigma):
         * Rust maps characters one by one. The root locale, as Rust has
         * none. */
        U16_APPEND_UNSAFE(source, source_length, c);
        length = u_strToLower(lower, ELEMENTSOF(lower), source, source_length, "", &error);
        if (U_FAILURE(error) || length <= 0) {
                out[0] = c;
                return 1;
        }
        while (i < length && n < TU_LOWERCASE_MAX) {
                UChar32 d;

                U16_NEXT(lower, i, length, d);
                out[n++] = d;
        }
        return n;
}

int32_t tu_utf8_next(const uint8_t *s, size_t *i, size_t n) {
        int32_t offset = 0, c;

        assert(*i < n);

        /* No sequence is longer than 4 bytes: ICU's int32_t lengths see
         * only what it needs. */
        U8_NEXT_OR_FFFD(s + *i, offset, (int32_t) MIN(n - *i, (size_t) 4), c);
        *i += (size_t) offset;
        return c;
}

size_t tu_utf8_put(int32_t c, uint8_t out[static 4]) {
        int32_t n = 0;

        U8_APPEND_UNSAFE(out, n, c);
        return (size_t) n;
}

/* Python's str.isspace(): bidirectional class WS, B or S, or category Zs. */
static bool python_whitespace(int32_t c) {
        return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
                (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
                c == 0x3000;
}

int tu_python_strip_lower(const uint8_t *s, size_t n, bool lower, char **ret, size_t *ret_n) {
        size_t begin = n, end = 0;
        bool ascii = true;
        UChar *source = NULL, *lowered = NULL;
        int32_t source_length = 0, length;
        UErrorCode error = U_ZERO_ERROR;
        char *out;
        size_t k = 0;

        assert(s || n == 0);
        assert(ret);
        assert(ret_n);

        if (n >= ((size_t) 1 << 28))
                return -EFBIG;

        /* The first and the last character that is no whitespace. */
        for (size_t i = 0; i < n;) {
                size_t at = i;
                int32_t c = tu_utf8_next(s, &i, n);

                if (c >= 0x80)
                        ascii = false;
                if (python_whitespace(c))
                        continue;
                if (begin == n)
                        begin = at;
                end = i;
        }
        if (begin == n)
                begin = end = 0;

        if (!lower || ascii) {
                out = malloc(end - begin + 1);
                if (!out)
                        return -ENOMEM;
                for (size_t i = begin; i < end; i++)
                        out[k++] = (char) (lower && s[i] >= 'A' && s[i] <= 'Z' ? s[i] + ('a' - 'A') : s[i]);
                out[k] = 0;
                *ret = out;
                *ret_n = k;
                return 0;
        }

        /* The whole text at once, so that context applies (final sigma),
         * in the root locale, as Python has none. At most two UTF-16 units
         * a byte: fits an int32_t below 2^28 bytes. */
        source = malloc((end - begin) * 2 * sizeof *source + sizeof *source);
        if (!source)
                return -ENOMEM;
        for (size_t i = begin; i < end;) {
                int32_t c = tu_utf8_next(s, &i, end);

                U16_APPEND_UNSAFE(source, source_length, c);
        }
        length = u_strToLower(NULL, 0, source, source_length, "", &error);
        if (error != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(error)) {
                free(source);
                return -ENOMEM;
        }
        error = U_ZERO_ERROR;
        lowered = malloc(((size_t) length + 1) * sizeof *lowered);
        /* Three bytes of UTF-8 at most per UTF-16 unit. */
        out = malloc((size_t) length * 3 + 1);
        if (!lowered || !out) {
                free(source);
                free(lowered);
                free(out);
                return -ENOMEM;
        }
        length = u_strToLower(lowered, length + 1, source, source_length, "", &error);
        free(source);
        if (U_FAILURE(error)) {
                free(lowered);
                free(out);
                return -ENOMEM;
        }
        for (int32_t i = 0; i < length;) {
                UChar32 c;

                U16_NEXT(lowered, i, length, c);
                k += tu_utf8_put(c, (uint8_t *) out + k);
        }
        free(lowered);
        out[k] = 0;
        *ret = out;
        *ret_n = k;
        return 0;
}
