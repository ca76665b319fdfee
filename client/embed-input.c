/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "embed-input.h"
#include "macro.h"
#include "terminal.h"

void embed_texts_done(EmbedTexts *t) {
        free(t->buffer);
        free(t->texts);
        *t = (EmbedTexts) {};
}

/* The length of the UTF-8 sequence that starts with byte c and the bits of
 * its first byte, or 0 for a byte that starts none. */
static size_t sequence_length(uint8_t c, unsigned *ret_bits) {
        if (c < 0x80) {
                *ret_bits = c;
                return 1;
        }
        if (c >= 0xc2 && c <= 0xdf) {   /* 0xc0 and 0xc1 only start overlong forms */
                *ret_bits = c & 0x1f;
                return 2;
        }
        if (c >= 0xe0 && c <= 0xef) {
                *ret_bits = c & 0x0f;
                return 3;
        }
        if (c >= 0xf0 && c <= 0xf4) {
                *ret_bits = c & 0x07;
                return 4;
        }
        return 0;
}

EmbedTextFault embed_text_check(const char *text, size_t length, size_t *ret_offset, unsigned *ret_code_point) {
        static const unsigned smallest[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        const uint8_t *p = (const uint8_t *) text;

        for (size_t i = 0; i < length;) {
                unsigned cp;
                size_t n = sequence_length(p[i], &cp);

                if (p[i] == 0) {
                        *ret_offset = i;
                        return EMBED_TEXT_NUL;
                }
                if (n == 0 || n > length - i)
                        goto malformed;
                for (size_t k = 1; k < n; k++) {
                        if ((p[i + k] & 0xc0) != 0x80)
                                goto malformed;
                        cp = (cp << 6) | (p[i + k] & 0x3f);
                }
                if (cp < smallest[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        goto malformed;
                /* sd-bus refuses these in strings, valid UTF-8 as they are. */
                if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe) {
                        *ret_offset = i;
                        *ret_code_point = cp;
                        return EMBED_TEXT_NONCHARACTER;
                }
                i += n;
                continue;
        malformed:
                *ret_offset = i;
                return EMBED_TEXT_MALFORMED;
        }
        return EMBED_TEXT_OK;
}

/* Says what is wrong with text number index (0-based, as mpoold counts
 * them); line is its line (1-based) when it came from standard input, 0
 * otherwise. Returns MPOOL_EXIT_USAGE, or 0 for a good text. */
static int check_text(const char *text, size_t length, size_t index, size_t line, bool null_separated) {
        char where[64] = "";
        size_t offset = 0;
        unsigned cp = 0;

        if (line > 0)
                snprintf(where, sizeof where, " (%s %zu of the input)", null_separated ? "record" : "line", line);
        switch (embed_text_check(text, length, &offset, &cp)) {
        case EMBED_TEXT_OK:
                return 0;
        case EMBED_TEXT_NUL:
                print_error("Text %zu%s holds a NUL byte at byte %zu, which D-Bus cannot carry; "
                            "use --null to separate texts with NUL bytes.", index, where, offset);
                break;
        case EMBED_TEXT_NONCHARACTER:
                print_error("Text %zu%s holds the noncharacter U+%04X at byte %zu, which D-Bus cannot carry.",
                            index, where, cp, offset);
                break;
        case EMBED_TEXT_MALFORMED:
        default:
                print_error("Text %zu%s is not valid UTF-8 at byte %zu.", index, where, offset);
                break;
        }
        return MPOOL_EXIT_USAGE;
}

static int too_many_texts(void) {
        print_error("Too many texts: at most %u at once.", EMBED_TEXTS_MAX);
        return MPOOL_EXIT_USAGE;
}

int embed_texts_from_args(char **args, size_t n, EmbedTexts *ret) {
        EmbedTexts t = {};
        int r;

        if (n > EMBED_TEXTS_MAX)
                return too_many_texts();
        for (size_t i = 0; i < n; i++) {
                r = check_text(args[i], strlen(args[i]), i, 0, false);
                if (r != 0)
                        return r;
        }
        t.texts = calloc(MAX(n, (size_t) 1), sizeof *t.texts);
        if (!t.texts)
                return print_oom();
        for (size_t i = 0; i < n; i++)
                t.texts[i] = args[i];
        t.n = n;
        *ret = t;
        return 0;
}

/* All of fd, up to EMBED_INPUT_BYTES_MAX bytes, NUL-terminated. */
static int read_all(int fd, char **ret, size_t *ret_length) {
        _cleanup_free_ char *buffer = NULL;
        size_t length = 0, allocated = 0;

        for (;;) {
                ssize_t k;

                /* Room for one byte more than the bound, which tells that
                 * there is more, and the NUL: never full once that large. */
                if (allocated - length <= 1) {
                        size_t more = MIN(MAX(allocated * 2, (size_t) 65536), (size_t) EMBED_INPUT_BYTES_MAX + 2);
                        char *p;

                        p = realloc(buffer, more);
                        if (!p)
                                return print_oom();
                        buffer = p;
                        allocated = more;
                }
                k = read(fd, buffer + length, allocated - length - 1);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return print_error_errno(-errno, "Cannot read the texts from standard input: %m");
                }
                if (k == 0)
                        break;
                length += (size_t) k;
                if (length > EMBED_INPUT_BYTES_MAX) {
                        print_error("Too much input: at most %u MiB of texts at once.",
                                    EMBED_INPUT_BYTES_MAX / 1024 / 1024);
                        return MPOOL_EXIT_USAGE;
                }
        }
        if (!buffer) {
                buffer = malloc(1);
                if (!buffer)
                        return print_oom();
        }
        buffer[length] = '\0';
        *ret = TAKE_PTR(buffer);
        *ret_length = length;
        return 0;
}

int embed_texts_read(int fd, bool null_separated, EmbedTexts *ret) {
        _cleanup_free_ char *buffer = NULL;
        _cleanup_free_ const char **texts = NULL;
        char separator = null_separated ? '\0' : '\n';
        size_t length = 0, n = 0, allocated = 0;
        int r;

        r = read_all(fd, &buffer, &length);
        if (r != 0)
                return r < 0 ? MPOOL_EXIT_FAILURE : r;

        for (size_t start = 0; start < length;) {
                char *end = memchr(buffer + start, separator, length - start);
                size_t text_length = end ? (size_t) (end - (buffer + start)) : length - start;

                if (n >= EMBED_TEXTS_MAX)
                        return too_many_texts();
                r = check_text(buffer + start, text_length, n, n + 1, null_separated);
                if (r != 0)
                        return r;
                if (n == allocated) {
                        size_t more = MAX(allocated * 2, (size_t) 64);
                        const char **p = reallocarray(texts, more, sizeof *texts);

                        if (!p)
                                return print_oom();
                        texts = p;
                        allocated = more;
                }
                buffer[start + text_length] = '\0';
                texts[n++] = buffer + start;
                start += text_length + 1;
        }

        *ret = (EmbedTexts) { .buffer = TAKE_PTR(buffer), .texts = TAKE_PTR(texts), .n = n };
        return 0;
}
