/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* JSON read in place, in one pass, for the files of the store that the
 * daemon must read (safetensors headers, sharded models' indexes). Nothing
 * is allocated for what is read: a caller steps through the document with
 * json_enter(), json_object_next() and json_array_next(), reads the values
 * it wants with json_read_value() and skips the others with the same call,
 * and keeps of a string only where it is in the text (JsonString). Memory
 * therefore does not grow with the number of values, however large the
 * document, and a long read asks a cancellation callback as it goes.
 *
 * The text is checked against RFC 8259 as it is read, with two bounds of
 * our own: arrays and objects nest at most JSON_DEPTH_MAX deep, and strings
 * hold no NUL character (\u0000), which C strings elsewhere would cut. A
 * syntax error is reported by what was found (a fixed phrase that never
 * quotes the text, which may be readable by its owner only while messages
 * are shown to every local user) and the byte offset where it was found. */

/* Whole numbers are taken up to 2^53, where the doubles many JSON tools
 * read numbers into stop being exact. */
#define JSON_EXACT_INTEGER_MAX UINT64_C(9007199254740992)

/* serde_json's default, which the safetensors reference reader uses: 127
 * nested arrays and objects, not 128. Also keeps the recursion small. */
#define JSON_DEPTH_MAX 127

/* How many bytes of text are gone through between two questions to the
 * cancellation callback: at a few hundred MB/s, a few milliseconds. */
#define JSON_CANCEL_CHECK_BYTES (UINT64_C(1) << 20)

/* Asked about once per JSON_CANCEL_CHECK_BYTES of text; returning true
 * stops the read, which then returns -ECANCELED. */
typedef bool (*json_cancel_t)(void *userdata);

/* What a value is, as far as readers' rules care. */
typedef enum JsonKind {
        JSON_OBJECT,
        JSON_ARRAY,
        JSON_STRING,
        JSON_WHOLE,             /* digits only, at most 2^53 */
        JSON_HUGE,              /* digits only, above 2^53 */
        JSON_NEGATIVE,          /* with a minus sign (-0 too: a float to serde_json) */
        JSON_FRACTIONAL,        /* with a fraction or an exponent */
        JSON_BOOLEAN,
        JSON_NULL,
} JsonKind;

/* A string as it stands in the text: the bytes between its quotes, escapes
 * not yet decoded. Only strings the scanner has checked are made. */
typedef struct JsonString {
        size_t begin;           /* offset of the first byte after the opening quote */
        size_t end;             /* offset of the closing quote */
        bool escaped;           /* holds a backslash escape */
} JsonString;

typedef struct JsonScan {
        const uint8_t *text;
        size_t length;
        size_t pos;
        unsigned depth;         /* arrays and objects open around pos */

        json_cancel_t cancel;   /* may be NULL */
        void *userdata;
        size_t next_poll;       /* offset at which to ask cancel next */

        /* The phrase for text that ends where a value must be ("the end of
         * the header where a value must be"); NULL for a generic one. */
        const char *end_of_text;

        /* Set with each syntax error: what was found, and where. */
        const char *syntax_error;
        size_t syntax_error_at;
} JsonScan;

/* The functions below return 0 (or 1, as said) on success, -EBADMSG on a
 * syntax error (with syntax_error and syntax_error_at set), -ECANCELED when
 * the callback said so. */

/* Asks the callback if at least JSON_CANCEL_CHECK_BYTES of text have gone
 * by since it was last asked (or it never was). Cheap enough for every loop
 * that moves through the text. */
int json_poll_cancel(JsonScan *s, size_t pos);

/* Records a syntax error and returns -EBADMSG. */
int json_syntax_error_at(JsonScan *s, size_t at, const char *what);

/* The byte at pos, or -1 at the end of the text. */
int json_peek(const JsonScan *s);

int json_skip_whitespace(JsonScan *s);

/* Opens the array or object at pos. */
int json_enter(JsonScan *s);

/* Moves to the next element of the array opened by json_enter(): returns 1
 * with pos at the element, 0 once the closing bracket is consumed. *n counts
 * the elements gone through (0 before the first). */
int json_array_next(JsonScan *s, size_t *n);

/* The same for objects: returns 1 with the member's name in *ret_key (may
 * be NULL) and pos at its value, 0 once the closing brace is consumed. */
int json_object_next(JsonScan *s, size_t *n, JsonString *ret_key);

/* Reads any value at pos, keeping nothing of it but its kind, its number if
 * it is a whole one, and where it is if it is a string. Each of ret_kind,
 * ret_number and ret_string may be NULL. Recursion is bounded by
 * JSON_DEPTH_MAX. */
int json_read_value(JsonScan *s, JsonKind *ret_kind, uint64_t *ret_number, JsonString *ret_string);

/* "an object", "a number", "null"... for messages. */
const char *json_kind_to_string(JsonKind kind);

/* Strings the scanner returned, compared and measured as what they stand
 * for (escapes decoded to UTF-8). */

/* Compares like strcmp(). Each string is given by where its bytes begin in
 * the text, how many there are (escapes not decoded) and whether it holds
 * an escape. */
int json_string_compare(const JsonScan *s, size_t a_begin, size_t a_length, bool a_escaped, size_t b_begin,
                        size_t b_length, bool b_escaped);

bool json_string_equal(const JsonScan *s, const JsonString *string, const char *word);

/* Bytes of the string once decoded: no more than it takes in the text. */
size_t json_string_length(const JsonScan *s, const JsonString *string);

/* Decodes the string into buffer (size > 0): at most size - 1 bytes, then a
 * NUL. Returns the decoded length, or size when the string was cut. */
size_t json_string_decode(const JsonScan *s, const JsonString *string, char *buffer, size_t size);

/* Bytes of the UTF-8 sequence at s (n bytes available), or 0 when it is
 * not a valid one: overlong, a surrogate, beyond U+10FFFF, or cut. */
size_t json_utf8_sequence_length(const uint8_t *s, size_t n);

/* Memory for what may be large when a document is read: the text itself,
 * what a reader keeps per entry. It is mapped for itself rather than
 * malloc'd, so that it goes back to the kernel the moment it is freed.
 * glibc keeps freed blocks in the arena they came from: the loader
 * threads' arenas keep their free top up to the trim threshold, which grows
 * with the largest block freed (to 64 MiB), and malloc_trim() does not
 * release the top of a thread's arena at all. Every probe would leave its
 * peak resident in the daemon for good. */
typedef struct JsonBuffer {
        void *data;
        size_t size;
} JsonBuffer;

/* Grows (or shrinks) the buffer to size > 0 bytes, keeping its contents;
 * new bytes are zero. -ENOMEM when that cannot be done, the buffer then
 * unchanged. */
int json_buffer_resize(JsonBuffer *b, size_t size);

void json_buffer_free(JsonBuffer *b);
