/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The texts of `mpool-client embed`: from the command line, or read from a
 * descriptor one per line (or NUL-separated), and each checked to be what
 * a D-Bus string can carry before anything is sent, so that a bad text is
 * named by its index rather than failing the whole call. */

/* What is read from standard input at most: the system bus's default
 * maximum message size, beyond which the call could not be sent anyway. */
#define EMBED_INPUT_BYTES_MAX (32U * 1024 * 1024)
/* Texts per call at most, whatever their source (mpoold's own limit is
 * lower and is reported by it). */
#define EMBED_TEXTS_MAX (1U << 20)

typedef struct EmbedTexts {
        char *buffer;           /* the bytes read, separators made NULs; NULL for argv */
        const char **texts;     /* n of them, pointing into buffer or argv */
        size_t n;
} EmbedTexts;

void embed_texts_done(EmbedTexts *t);

/* The texts of the command line. Returns 0, or MPOOL_EXIT_USAGE after
 * saying which text is not valid UTF-8. */
int embed_texts_from_args(char **args, size_t n, EmbedTexts *ret);

/* Reads fd to its end: one text per line ('\n' ends a text; a last line
 * without one counts, an empty line is an empty text), or with
 * null_separated one per NUL-terminated record, so that texts may hold
 * newlines. Returns 0, or an exit status after saying what is wrong
 * (MPOOL_EXIT_USAGE for input beyond the bounds above or a text D-Bus
 * cannot carry, naming its index and line; MPOOL_EXIT_FAILURE when fd
 * cannot be read). */
int embed_texts_read(int fd, bool null_separated, EmbedTexts *ret);

typedef enum EmbedTextFault {
        EMBED_TEXT_OK,
        EMBED_TEXT_NUL,               /* a NUL byte */
        EMBED_TEXT_MALFORMED,         /* not UTF-8: a bad sequence, an overlong form, a surrogate */
        EMBED_TEXT_NONCHARACTER,      /* U+FDD0…U+FDEF, U+xxFFFE, U+xxFFFF */
} EmbedTextFault;

/* Whether the length bytes at text are a string D-Bus carries, by sd-bus's
 * rules; if not, the offset of the first byte at fault in *ret_offset and,
 * for a noncharacter, the code point in *ret_code_point. */
EmbedTextFault embed_text_check(const char *text, size_t length, size_t *ret_offset, unsigned *ret_code_point);
