/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <cjson/cJSON.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "safetensors.h"

/* Whole numbers are taken up to 2^53, where the doubles many JSON tools read
 * numbers into (cJSON, which the writer below uses, among them) stop being
 * exact. No real file comes near: 2^53 bytes are 9 PB. */
#define JSON_EXACT_INTEGER_MAX UINT64_C(9007199254740992)

/* The reference (serde_json's default) takes 127 nested arrays and objects
 * and refuses a 128th; the bound also keeps this parser's recursion small. */
#define JSON_DEPTH_MAX 127

/* How many header bytes are gone through between two questions to the
 * cancellation callback: at a few hundred MB/s, a few milliseconds. */
#define CANCEL_CHECK_BYTES (UINT64_C(1) << 20)

/* Reads of the header are split in chunks of this size, with a question
 * to the cancellation callback between two: a slow disk must not keep a
 * cancelled probe waiting for all of 100 MB. */
#define READ_CHUNK_BYTES (UINT64_C(8) << 20)

/* Sorting asks the cancellation callback after this many steps. */
#define CANCEL_CHECK_STEPS 65536

/* Messages name a tensor by its place, never by its name: a name is bytes of
 * the file, and messages are shown to every local user. */
#define TENSOR_FMT "tensor %zu (at header byte %zu)"
#define TENSOR_ARGS(t) (size_t) (t)->index, (size_t) (t)->name_at - 1

/* "[" + up to 64 × (20 digits + ", ") + "]" */
#define SHAPE_BUFFER_SIZE (2 + SAFETENSORS_DIMS_MAX * 22 + 1)

static const struct {
        const char *name;
        unsigned bits;
} dtypes[] = {
        { "BOOL",    8  },
        { "U8",      8  },
        { "I8",      8  },
        { "F8_E5M2", 8  },
        { "F8_E4M3", 8  },
        { "F8_E8M0", 8  },
        { "I16",     16 },
        { "U16",     16 },
        { "F16",     16 },
        { "BF16",    16 },
        { "I32",     32 },
        { "U32",     32 },
        { "F32",     32 },
        { "F64",     64 },
        { "I64",     64 },
        { "U64",     64 },
        { "C64",     64 },
        { "F4",      4  },
        { "F6_E2M3", 6  },
        { "F6_E3M2", 6  },
};

/* What a JSON value is, as far as the messages and the rules care. */
typedef enum ValueKind {
        VALUE_OBJECT,
        VALUE_ARRAY,
        VALUE_STRING,
        VALUE_WHOLE,            /* digits only, at most 2^53 */
        VALUE_HUGE,             /* digits only, above 2^53 */
        VALUE_NEGATIVE,         /* with a minus sign (-0 too: the reference reads it as a float) */
        VALUE_FRACTIONAL,       /* with a fraction or an exponent: a float to the reference */
        VALUE_BOOLEAN,
        VALUE_NULL,
} ValueKind;

/* A string as it stands in the header: the bytes between its quotes,
 * escapes not yet decoded. Only strings the parser has checked are made. */
typedef struct JsonString {
        size_t begin;           /* header offset of the first byte after the opening quote */
        size_t end;             /* header offset of the closing quote */
        bool escaped;           /* holds a backslash escape */
} JsonString;

/* Header offsets fit in 32 bits (the header is at most 10^8 bytes), which
 * keeps a million of these at 32 MB. */
typedef struct TensorRange {
        uint64_t begin;
        uint64_t end;
        uint32_t index;         /* among the header's tensors, from 0, in header order */
        uint32_t name_at;       /* header offset of the name's first byte after the quote */
        uint32_t name_length;   /* bytes in the header, escapes not decoded */
        bool name_escaped;
} TensorRange;

/* What may be large (the header, the tensors' ranges) is mapped for itself
 * rather than malloc'd, so that it goes back to the kernel the moment it is
 * freed. glibc keeps freed blocks in the arena they came from: the loader
 * threads' arenas keep their free top up to the trim threshold, which grows
 * with the largest block freed (to 64 MiB), and malloc_trim() does not
 * release the top of a thread's arena at all. Every probe would leave its
 * peak resident in the daemon for good. */
typedef struct Buffer {
        void *data;
        size_t size;
} Buffer;

static int buffer_resize(Buffer *b, size_t size) {
        void *p;

        assert(size > 0);
        if (b->data)
                p = mremap(b->data, b->size, size, MREMAP_MAYMOVE);
        else
                p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
                return -ENOMEM;
        b->data = p;
        b->size = size;
        return 0;
}

static void buffer_free(Buffer *b) {
        if (b->data)
                (void) munmap(b->data, b->size);
        *b = (Buffer) {};
}

typedef struct Parser {
        const uint8_t *text;
        size_t length;
        size_t pos;
        unsigned depth;         /* arrays and objects open around pos */

        safetensors_cancel_t cancel;
        void *userdata;
        size_t next_poll;       /* header offset at which to ask cancel next */

        char **ret_error;
        /* The first violation of the rules (not of JSON) found. Parsing goes
         * on to the end, so that broken JSON is what gets reported when the
         * header is broken too, and nothing more is recorded. */
        bool failed;
        char *failure;

        Buffer ranges;          /* TensorRange[] */
        size_t n_ranges;
        size_t n_tensors;       /* all of them, beyond SAFETENSORS_TENSORS_MAX too */
        bool have_metadata;
} Parser;

static void parser_done(Parser *p) {
        buffer_free(&p->ranges);
        free(p->failure);
}

unsigned safetensors_dtype_bits(const char *dtype) {
        if (!dtype)
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(dtypes); i++)
                if (strcmp(dtypes[i].name, dtype) == 0)
                        return dtypes[i].bits;
        return 0;
}

/* Sets *ret_error, if wanted, and returns -EBADMSG: the one way a violation
 * of the format is reported. */
static int bad(char **ret_error, const char *format, ...) _printf_(2, 3);
static int bad(char **ret_error, const char *format, ...) {
        char *message;
        va_list ap;
        int r;

        if (!ret_error)
                return -EBADMSG;

        va_start(ap, format);
        r = vasprintf(&message, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        *ret_error = message;
        return -EBADMSG;
}

/* For system errors: "%m" in the format names `error`. The error is returned
 * even when the message cannot be allocated, since it is the more useful of
 * the two. */
static int fail_errno(char **ret_error, int error, const char *format, ...) _printf_(3, 4);
static int fail_errno(char **ret_error, int error, const char *format, ...) {
        char *message;
        va_list ap;
        int r;

        assert(error > 0);

        if (ret_error) {
                errno = error;
                va_start(ap, format);
                r = vasprintf(&message, format, ap);
                va_end(ap);
                if (r >= 0)
                        *ret_error = message;
        }
        return -error;
}

/* Records a violation of the rules; the first one is what gets reported. */
static int violation(Parser *p, const char *format, ...) _printf_(2, 3);
static int violation(Parser *p, const char *format, ...) {
        va_list ap;
        int r;

        if (p->failed)
                return 0;
        p->failed = true;
        /* Neither are the ranges needed any more. */
        buffer_free(&p->ranges);
        p->n_ranges = 0;

        if (!p->ret_error)
                return 0;
        va_start(ap, format);
        r = vasprintf(&p->failure, format, ap);
        va_end(ap);
        if (r < 0) {
                p->failure = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* Broken JSON: reported at once, with where, but not what is there. */
static int syntax_error_at(Parser *p, size_t at, const char *what) {
        return bad(p->ret_error, "the header is not valid JSON: %s at header byte %zu", what, at);
}

static int syntax_error(Parser *p, const char *what) {
        return syntax_error_at(p, p->pos, what);
}

/* Asks the callback, once every CANCEL_CHECK_BYTES of header. Cheap enough
 * for every loop that moves through the header. */
static int poll_cancel(Parser *p, size_t pos) {
        if (pos < p->next_poll)
                return 0;
        p->next_poll = pos + CANCEL_CHECK_BYTES;
        if (p->cancel && p->cancel(p->userdata))
                return -ECANCELED;
        return 0;
}

static int ask_cancel(safetensors_cancel_t cancel, void *userdata) {
        return cancel && cancel(userdata) ? -ECANCELED : 0;
}

static size_t utf8_sequence_length(const uint8_t *s, size_t n) {
        uint8_t lead = s[0], low = 0x80, high = 0xbf;
        size_t length;

        if (lead < 0x80)
                return 1;
        if (lead >= 0xc2 && lead <= 0xdf)
                length = 2;
        else if (lead >= 0xe0 && lead <= 0xef) {
                length = 3;
                if (lead == 0xe0)
                        low = 0xa0;        /* overlong */
                else if (lead == 0xed)
                        high = 0x9f;       /* UTF-16 surrogates */
        } else if (lead >= 0xf0 && lead <= 0xf4) {
                length = 4;
                if (lead == 0xf0)
                        low = 0x90;        /* overlong */
                else if (lead == 0xf4)
                        high = 0x8f;       /* beyond U+10FFFF */
        } else
                return 0;

        if (n < length || s[1] < low || s[1] > high)
                return 0;
        for (size_t i = 2; i < length; i++)
                if (s[i] < 0x80 || s[i] > 0xbf)
                        return 0;
        return length;
}

static const char *describe(ValueKind kind) {
        switch (kind) {
        case VALUE_OBJECT:
                return "an object";
        case VALUE_ARRAY:
                return "an array";
        case VALUE_STRING:
                return "a string";
        case VALUE_WHOLE:
        case VALUE_HUGE:
        case VALUE_NEGATIVE:
        case VALUE_FRACTIONAL:
                return "a number";
        case VALUE_BOOLEAN:
                return "a boolean";
        case VALUE_NULL:
                return "null";
        }
        return "an unknown value";
}

/* For where a whole number was expected: what kind of number it was not. */
static const char *describe_number(ValueKind kind) {
        switch (kind) {
        case VALUE_HUGE:
                return "a whole number above 2^53";
        case VALUE_NEGATIVE:
                return "a negative number";
        case VALUE_FRACTIONAL:
                return "a number with a fraction or an exponent";
        default:
                return describe(kind);
        }
}

static const char *format_shape(const uint64_t *dims, size_t n_dims, char buffer[static SHAPE_BUFFER_SIZE]) {
        size_t out = 0;

        assert(n_dims <= SAFETENSORS_DIMS_MAX);

        buffer[out++] = '[';
        for (size_t i = 0; i < n_dims; i++)
                out += (size_t) snprintf(buffer + out, SHAPE_BUFFER_SIZE - out, "%s%" PRIu64,
                                         i > 0 ? ", " : "", dims[i]);
        buffer[out++] = ']';
        buffer[out] = '\0';
        return buffer;
}

#define SHAPE(dims, n) format_shape((dims), (n), (char[SHAPE_BUFFER_SIZE]) {})

/* Multiplies in the order of the shape, as the reference does, so that a
 * product which overflows before reaching a zero dimension is refused by
 * both. -EOVERFLOW when the element or bit count overflows 64 bits, -EDOM
 * when the bits are not a whole number of bytes. */
static int tensor_byte_size(const uint64_t *dims, size_t n_dims, unsigned element_bits,
                            uint64_t *ret_elements, uint64_t *ret_bytes) {
        uint64_t elements = 1, bits;

        for (size_t i = 0; i < n_dims; i++)
                if (__builtin_mul_overflow(elements, dims[i], &elements))
                        return -EOVERFLOW;
        if (__builtin_mul_overflow(elements, (uint64_t) element_bits, &bits))
                return -EOVERFLOW;

        *ret_elements = elements;
        if (bits % 8 != 0)
                return -EDOM;
        *ret_bytes = bits / 8;
        return 0;
}

/* What JSON syntax alone does not say but the reference checks: the header
 * is UTF-8, has no raw control characters, and no byte order mark. NUL
 * escapes are refused too: C strings elsewhere would cut a name there. The
 * parser below can then take every string byte as it is. */
static int check_header_text(Parser *p) {
        const uint8_t *s = p->text;
        size_t length = p->length;
        bool in_string = false;
        int r;

        if (length >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
                return bad(p->ret_error, "the header starts with a UTF-8 byte order mark, which JSON does not allow");

        for (size_t i = 0; i < length;) {
                uint8_t c = s[i];

                r = poll_cancel(p, i);
                if (r < 0)
                        return r;

                if (c >= 0x80) {
                        size_t k = utf8_sequence_length(s + i, length - i);

                        if (k == 0)
                                return bad(p->ret_error, "the header is not valid UTF-8 at header byte %zu", i);
                        i += k;
                        continue;
                }

                if (in_string) {
                        if (c < 0x20)
                                return bad(p->ret_error,
                                           "the header has a raw control character inside a string at header byte %zu",
                                           i);
                        if (c == '\\') {
                                if (length - i >= 6 && memcmp(s + i + 1, "u0000", 5) == 0)
                                        return bad(p->ret_error,
                                                   "the header has a NUL character (\\u0000) in a string at header byte %zu",
                                                   i);
                                /* Skips the escaped character so that \" does
                                 * not end the string; anything but ASCII
                                 * after a backslash is invalid JSON, left to
                                 * the UTF-8 check and the parser. */
                                i += (i + 1 < length && s[i + 1] < 0x80) ? 2 : 1;
                                continue;
                        }
                        if (c == '"')
                                in_string = false;
                } else {
                        if (c == '"')
                                in_string = true;
                        else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
                                return bad(p->ret_error, "the header has a control character at header byte %zu", i);
                }
                i++;
        }

        p->next_poll = 0;
        return 0;
}

/* ---- JSON, read in place: nothing is allocated for what is read ---- */

static int peek(const Parser *p) {
        return p->pos < p->length ? p->text[p->pos] : -1;
}

static int skip_whitespace(Parser *p) {
        for (;;) {
                int r = poll_cancel(p, p->pos);
                if (r < 0)
                        return r;
                if (p->pos >= p->length)
                        return 0;
                uint8_t c = p->text[p->pos];
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
                        return 0;
                p->pos++;
        }
}

static int hex_digit(uint8_t c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* The code unit of the \uXXXX at `at`, or -1 when there is none. */
static int32_t read_unicode_escape(const uint8_t *text, size_t length, size_t at) {
        int32_t unit = 0;

        if (at > length || length - at < 6 || text[at] != '\\' || text[at + 1] != 'u')
                return -1;
        for (size_t i = at + 2; i < at + 6; i++) {
                int d = hex_digit(text[i]);
                if (d < 0)
                        return -1;
                unit = unit * 16 + d;
        }
        return unit;
}

/* A string from its opening quote at p->pos; ret may be NULL. */
static int parse_string(Parser *p, JsonString *ret) {
        size_t start = p->pos;
        bool escaped = false;
        int r;

        assert(peek(p) == '"');
        p->pos++;

        for (;;) {
                uint8_t c;

                r = poll_cancel(p, p->pos);
                if (r < 0)
                        return r;
                if (p->pos >= p->length)
                        return syntax_error_at(p, start, "a string that is not closed begins");

                c = p->text[p->pos];
                if (c == '"')
                        break;
                if (c < 0x20)
                        return syntax_error(p, "a raw control character in a string");
                if (c != '\\') {
                        p->pos++;
                        continue;
                }

                escaped = true;
                if (p->pos + 1 < p->length && p->text[p->pos + 1] != '\0' &&
                    strchr("\"\\/bfnrt", p->text[p->pos + 1])) {
                        p->pos += 2;
                        continue;
                }

                int32_t unit = read_unicode_escape(p->text, p->length, p->pos);
                if (unit < 0)
                        return syntax_error(p, "an invalid escape sequence in a string");
                if (unit == 0)
                        return syntax_error(p, "a NUL character (\\u0000) in a string");
                if (unit >= 0xdc00 && unit <= 0xdfff)
                        return syntax_error(p, "an unpaired UTF-16 surrogate escape in a string");
                if (unit >= 0xd800 && unit <= 0xdbff) {
                        int32_t low = read_unicode_escape(p->text, p->length, p->pos + 6);
                        if (low < 0xdc00 || low > 0xdfff)
                                return syntax_error(p, "an unpaired UTF-16 surrogate escape in a string");
                        p->pos += 6;
                }
                p->pos += 6;
        }

        if (ret)
                *ret = (JsonString) {
                        .begin = start + 1,
                        .end = p->pos,
                        .escaped = escaped,
                };
        p->pos++;
        return 0;
}

static int skip_digits(Parser *p, uint64_t *value, bool *huge) {
        size_t start = p->pos;

        for (;;) {
                int r = poll_cancel(p, p->pos);
                if (r < 0)
                        return r;
                if (p->pos >= p->length || p->text[p->pos] < '0' || p->text[p->pos] > '9')
                        break;
                if (value && !*huge) {
                        *value = *value * 10 + (uint64_t) (p->text[p->pos] - '0');
                        if (*value > JSON_EXACT_INTEGER_MAX)
                                *huge = true;
                }
                p->pos++;
        }
        return p->pos > start ? 1 : 0;
}

/* A number as JSON writes it: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int parse_number(Parser *p, ValueKind *ret_kind, uint64_t *ret_value) {
        uint64_t value = 0;
        bool negative = false, huge = false, fractional = false;
        int r;

        if (peek(p) == '-') {
                negative = true;
                p->pos++;
        }
        if (peek(p) == '0')
                p->pos++;
        else {
                r = skip_digits(p, &value, &huge);
                if (r < 0)
                        return r;
                if (r == 0)
                        return syntax_error(p, "a number without digits");
        }

        if (peek(p) == '.') {
                fractional = true;
                p->pos++;
                r = skip_digits(p, NULL, NULL);
                if (r < 0)
                        return r;
                if (r == 0)
                        return syntax_error(p, "a number without digits after its decimal point");
        }
        if (peek(p) == 'e' || peek(p) == 'E') {
                fractional = true;
                p->pos++;
                if (peek(p) == '+' || peek(p) == '-')
                        p->pos++;
                r = skip_digits(p, NULL, NULL);
                if (r < 0)
                        return r;
                if (r == 0)
                        return syntax_error(p, "a number without digits in its exponent");
        }

        *ret_kind = negative ? VALUE_NEGATIVE : fractional ? VALUE_FRACTIONAL : huge ? VALUE_HUGE : VALUE_WHOLE;
        *ret_value = value;
        return 0;
}

static int parse_literal(Parser *p, const char *word) {
        size_t n = strlen(word);

        if (p->length - p->pos < n || memcmp(p->text + p->pos, word, n) != 0)
                return syntax_error(p, "something other than a JSON value");
        p->pos += n;
        return 0;
}

/* Opens the array or object at p->pos. */
static int enter(Parser *p) {
        if (p->depth >= JSON_DEPTH_MAX)
                return syntax_error(p, "arrays and objects nested more than 127 deep");
        p->depth++;
        p->pos++;
        return 0;
}

/* Moves to the next element of the array opened by enter(): returns 1 with
 * p->pos at the element, 0 once the closing bracket is consumed. *n counts
 * the elements gone through (0 before the first). */
static int array_next(Parser *p, size_t *n) {
        int r;

        r = skip_whitespace(p);
        if (r < 0)
                return r;
        if (peek(p) == ']') {
                p->pos++;
                p->depth--;
                return 0;
        }
        if (*n > 0) {
                if (peek(p) != ',')
                        return syntax_error(p, "a missing ',' or ']' in an array");
                p->pos++;
                r = skip_whitespace(p);
                if (r < 0)
                        return r;
        }
        (*n)++;
        return 1;
}

/* The same for objects: returns 1 with the member's name in *ret_key and
 * p->pos at its value, 0 once the closing brace is consumed. */
static int object_next(Parser *p, size_t *n, JsonString *ret_key) {
        int r;

        r = skip_whitespace(p);
        if (r < 0)
                return r;
        if (peek(p) == '}') {
                p->pos++;
                p->depth--;
                return 0;
        }
        if (*n > 0) {
                if (peek(p) != ',')
                        return syntax_error(p, "a missing ',' or '}' in an object");
                p->pos++;
                r = skip_whitespace(p);
                if (r < 0)
                        return r;
        }
        if (peek(p) != '"')
                return syntax_error(p, "something other than a member name in an object");
        r = parse_string(p, ret_key);
        if (r < 0)
                return r;
        r = skip_whitespace(p);
        if (r < 0)
                return r;
        if (peek(p) != ':')
                return syntax_error(p, "a missing ':' after a member name");
        p->pos++;
        r = skip_whitespace(p);
        if (r < 0)
                return r;
        (*n)++;
        return 1;
}

/* Reads any value at p->pos (after whitespace), keeping nothing of it but
 * its kind, its number if it is a whole one, and where it is if it is a
 * string. Recursion is bounded by JSON_DEPTH_MAX. */
static int read_value(Parser *p, ValueKind *ret_kind, uint64_t *ret_number, JsonString *ret_string) {
        ValueKind kind = VALUE_NULL;
        uint64_t number = 0;
        JsonString key;
        size_t n = 0;
        int c = peek(p), r;

        switch (c) {
        case '{':
                kind = VALUE_OBJECT;
                r = enter(p);
                while (r >= 0 && (r = object_next(p, &n, &key)) > 0)
                        r = read_value(p, NULL, NULL, NULL);
                break;
        case '[':
                kind = VALUE_ARRAY;
                r = enter(p);
                while (r >= 0 && (r = array_next(p, &n)) > 0)
                        r = read_value(p, NULL, NULL, NULL);
                break;
        case '"':
                kind = VALUE_STRING;
                r = parse_string(p, ret_string);
                break;
        case 't':
                kind = VALUE_BOOLEAN;
                r = parse_literal(p, "true");
                break;
        case 'f':
                kind = VALUE_BOOLEAN;
                r = parse_literal(p, "false");
                break;
        case 'n':
                kind = VALUE_NULL;
                r = parse_literal(p, "null");
                break;
        case -1:
                return syntax_error(p, "the end of the header where a value must be");
        default:
                if (c != '-' && (c < '0' || c > '9'))
                        return syntax_error(p, "something other than a JSON value");
                r = parse_number(p, &kind, &number);
        }
        if (r < 0)
                return r;

        if (ret_kind)
                *ret_kind = kind;
        if (ret_number)
                *ret_number = number;
        return 0;
}

/* ---- strings, decoded on the fly ---- */

/* Yields the bytes a checked string stands for, one at a time, with its
 * escapes decoded to UTF-8. */
typedef struct StringReader {
        const uint8_t *text;
        size_t pos;
        size_t end;
        uint8_t pending[4];
        unsigned n_pending;
        unsigned next_pending;
} StringReader;

static StringReader string_reader(const Parser *p, size_t begin, size_t end) {
        return (StringReader) { .text = p->text, .pos = begin, .end = end };
}

static int string_reader_next(StringReader *s) {
        uint32_t code;
        uint8_t c;

        if (s->next_pending < s->n_pending)
                return s->pending[s->next_pending++];
        if (s->pos >= s->end)
                return -1;

        c = s->text[s->pos];
        if (c != '\\') {
                s->pos++;
                return c;
        }

        c = s->text[s->pos + 1];
        if (c != 'u') {
                s->pos += 2;
                switch (c) {
                case 'b':
                        return '\b';
                case 'f':
                        return '\f';
                case 'n':
                        return '\n';
                case 'r':
                        return '\r';
                case 't':
                        return '\t';
                default:
                        return c;       /* " \ / */
                }
        }

        /* parse_string() checked the escapes and their pairing. */
        code = (uint32_t) read_unicode_escape(s->text, s->end, s->pos);
        s->pos += 6;
        if (code >= 0xd800 && code <= 0xdbff) {
                uint32_t low = (uint32_t) read_unicode_escape(s->text, s->end, s->pos);
                s->pos += 6;
                code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        }

        s->next_pending = 1;
        if (code < 0x80) {
                s->n_pending = 0;
                return (int) code;
        }
        if (code < 0x800) {
                s->pending[0] = (uint8_t) (0xc0 | (code >> 6));
                s->pending[1] = (uint8_t) (0x80 | (code & 0x3f));
                s->n_pending = 2;
        } else if (code < 0x10000) {
                s->pending[0] = (uint8_t) (0xe0 | (code >> 12));
                s->pending[1] = (uint8_t) (0x80 | ((code >> 6) & 0x3f));
                s->pending[2] = (uint8_t) (0x80 | (code & 0x3f));
                s->n_pending = 3;
        } else {
                s->pending[0] = (uint8_t) (0xf0 | (code >> 18));
                s->pending[1] = (uint8_t) (0x80 | ((code >> 12) & 0x3f));
                s->pending[2] = (uint8_t) (0x80 | ((code >> 6) & 0x3f));
                s->pending[3] = (uint8_t) (0x80 | (code & 0x3f));
                s->n_pending = 4;
        }
        return s->pending[0];
}

/* Compares what two strings stand for, byte by byte as strcmp() would. */
static int string_compare(const Parser *p, size_t a_begin, size_t a_length, bool a_escaped, size_t b_begin,
                          size_t b_length, bool b_escaped) {
        StringReader a, b;

        if (!a_escaped && !b_escaped) {
                int r = memcmp(p->text + a_begin, p->text + b_begin, MIN(a_length, b_length));
                if (r != 0)
                        return r;
                return a_length < b_length ? -1 : a_length > b_length ? 1 : 0;
        }

        a = string_reader(p, a_begin, a_begin + a_length);
        b = string_reader(p, b_begin, b_begin + b_length);
        for (;;) {
                int x = string_reader_next(&a), y = string_reader_next(&b);

                if (x != y)
                        return x < y ? -1 : 1;
                if (x < 0)
                        return 0;
        }
}

static bool string_equal(const Parser *p, const JsonString *s, const char *word) {
        StringReader r;
        size_t i = 0;
        int c;

        if (!s->escaped)
                return s->end - s->begin == strlen(word) && memcmp(p->text + s->begin, word, strlen(word)) == 0;

        r = string_reader(p, s->begin, s->end);
        while ((c = string_reader_next(&r)) >= 0)
                if (word[i] == '\0' || (uint8_t) word[i++] != c)
                        return false;
        return word[i] == '\0';
}

/* Bytes of the string once decoded: no more than it takes in the header. */
static size_t string_length(const Parser *p, const JsonString *s) {
        StringReader r;
        size_t n = 0;

        if (!s->escaped)
                return s->end - s->begin;
        r = string_reader(p, s->begin, s->end);
        while (string_reader_next(&r) >= 0)
                n++;
        return n;
}

/* ---- the safetensors structure ---- */

/* An array of whole numbers ("shape", "data_offsets") as read, with the
 * first thing wrong in it, in order: an element that is not a whole number,
 * or one more element than max. */
typedef struct NumberList {
        ValueKind kind;         /* of the member's value */
        uint64_t *values;
        size_t max;
        size_t n;
        bool too_many;
        bool bad;
        size_t bad_index;
        ValueKind bad_kind;
} NumberList;

static int parse_number_list(Parser *p, NumberList *l) {
        size_t n = 0;
        int r;

        if (peek(p) != '[')
                return read_value(p, &l->kind, NULL, NULL);

        l->kind = VALUE_ARRAY;
        r = enter(p);
        if (r < 0)
                return r;
        while ((r = array_next(p, &n)) > 0) {
                ValueKind kind;
                uint64_t value;

                r = read_value(p, &kind, &value, NULL);
                if (r < 0)
                        return r;
                if (l->bad || l->too_many)
                        continue;
                if (l->n >= l->max)
                        l->too_many = true;
                else if (kind != VALUE_WHOLE) {
                        l->bad = true;
                        l->bad_index = l->n;
                        l->bad_kind = kind;
                } else
                        l->values[l->n++] = value;
        }
        return r;
}

typedef struct TensorFields {
        bool have_dtype, have_shape, have_offsets;
        const char *duplicate;          /* the first member given twice */
        ValueKind dtype_kind;
        const char *dtype;              /* our name for a known dtype, else NULL */
        unsigned element_bits;
        NumberList shape;
        NumberList offsets;
        uint64_t dims[SAFETENSORS_DIMS_MAX];
        uint64_t bounds[2];
} TensorFields;

static int parse_dtype(Parser *p, TensorFields *f) {
        JsonString s;
        int r;

        r = read_value(p, &f->dtype_kind, NULL, &s);
        if (r < 0 || f->dtype_kind != VALUE_STRING)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(dtypes); i++)
                if (string_equal(p, &s, dtypes[i].name)) {
                        f->dtype = dtypes[i].name;
                        f->element_bits = dtypes[i].bits;
                }
        return 0;
}

/* The rules for one tensor, in a fixed order: the first one broken is the
 * one reported. */
static int check_tensor(Parser *p, const TensorRange *t, size_t name_length, ValueKind kind, TensorFields *f) {
        uint64_t elements, bytes;
        int r;

        if (name_length > SAFETENSORS_NAME_MAX)
                return violation(p, TENSOR_FMT ": its name is %zu bytes long, more than the limit of %d",
                                 TENSOR_ARGS(t), name_length, SAFETENSORS_NAME_MAX);
        if (kind != VALUE_OBJECT)
                return violation(p, TENSOR_FMT " is %s, not an object with dtype, shape and data_offsets",
                                 TENSOR_ARGS(t), describe(kind));
        if (f->duplicate)
                return violation(p, TENSOR_FMT " has \"%s\" more than once", TENSOR_ARGS(t), f->duplicate);

        if (!f->have_dtype)
                return violation(p, TENSOR_FMT " has no \"dtype\"", TENSOR_ARGS(t));
        if (f->dtype_kind != VALUE_STRING)
                return violation(p, TENSOR_FMT ": \"dtype\" is %s, not a string", TENSOR_ARGS(t),
                                 describe(f->dtype_kind));
        if (!f->dtype)
                return violation(p, TENSOR_FMT ": \"dtype\" is not a known dtype", TENSOR_ARGS(t));

        if (!f->have_shape)
                return violation(p, TENSOR_FMT " has no \"shape\"", TENSOR_ARGS(t));
        if (f->shape.kind != VALUE_ARRAY)
                return violation(p, TENSOR_FMT ": \"shape\" is %s, not an array of dimensions", TENSOR_ARGS(t),
                                 describe(f->shape.kind));
        if (f->shape.too_many)
                return violation(p, TENSOR_FMT ": \"shape\" has more than %d dimensions", TENSOR_ARGS(t),
                                 SAFETENSORS_DIMS_MAX);
        if (f->shape.bad)
                return violation(p, TENSOR_FMT ": shape dimension %zu is %s, not a whole number from 0 to 2^53",
                                 TENSOR_ARGS(t), f->shape.bad_index, describe_number(f->shape.bad_kind));

        if (!f->have_offsets)
                return violation(p, TENSOR_FMT " has no \"data_offsets\"", TENSOR_ARGS(t));
        if (f->offsets.kind != VALUE_ARRAY)
                return violation(p, TENSOR_FMT ": \"data_offsets\" is %s, not an array [begin, end]",
                                 TENSOR_ARGS(t), describe(f->offsets.kind));
        if (f->offsets.too_many)
                return violation(p, TENSOR_FMT ": \"data_offsets\" has more than 2 elements, not [begin, end]",
                                 TENSOR_ARGS(t));
        if (f->offsets.bad)
                return violation(p, TENSOR_FMT ": data_offsets %s is %s, not a whole number from 0 to 2^53",
                                 TENSOR_ARGS(t), f->offsets.bad_index == 0 ? "begin" : "end",
                                 describe_number(f->offsets.bad_kind));
        if (f->offsets.n != 2)
                return violation(p, TENSOR_FMT ": \"data_offsets\" has %zu element%s, not 2 ([begin, end])",
                                 TENSOR_ARGS(t), f->offsets.n, f->offsets.n == 1 ? "" : "s");
        if (f->bounds[0] > f->bounds[1])
                return violation(p, TENSOR_FMT ": data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                                 TENSOR_ARGS(t), f->bounds[0], f->bounds[1]);

        r = tensor_byte_size(f->dims, f->shape.n, f->element_bits, &elements, &bytes);
        if (r == -EOVERFLOW)
                return violation(p, TENSOR_FMT ": shape %s of %s has more bits than fit in 64 bits", TENSOR_ARGS(t),
                                 SHAPE(f->dims, f->shape.n), f->dtype);
        if (r == -EDOM)
                return violation(p,
                                 TENSOR_FMT ": shape %s of %s is %" PRIu64 " elements of %u bits, not a whole "
                                 "number of bytes",
                                 TENSOR_ARGS(t), SHAPE(f->dims, f->shape.n), f->dtype, elements, f->element_bits);
        assert(r == 0);

        if (f->bounds[1] - f->bounds[0] != bytes)
                return violation(p,
                                 TENSOR_FMT ": shape %s of %s needs %" PRIu64 " bytes but data_offsets [%" PRIu64
                                 ", %" PRIu64 "] span %" PRIu64,
                                 TENSOR_ARGS(t), SHAPE(f->dims, f->shape.n), f->dtype, bytes, f->bounds[0],
                                 f->bounds[1], f->bounds[1] - f->bounds[0]);
        return 0;
}

static TensorRange *ranges_of(const Parser *p) {
        return p->ranges.data;
}

static int add_range(Parser *p, const TensorRange *t) {
        int r;

        assert(p->n_ranges < SAFETENSORS_TENSORS_MAX);
        if ((p->n_ranges + 1) * sizeof(TensorRange) > p->ranges.size) {
                /* From a page, doubling, up to what the limit needs. */
                r = buffer_resize(&p->ranges, MIN(MAX(p->ranges.size * 2, (size_t) 4096),
                                                  (size_t) SAFETENSORS_TENSORS_MAX * sizeof(TensorRange)));
                if (r < 0)
                        return r;
        }
        ranges_of(p)[p->n_ranges++] = *t;
        return 0;
}

/* A tensor's value, p->pos at it; name is its member name. */
static int parse_tensor(Parser *p, const JsonString *name) {
        TensorFields f = {};
        TensorRange t = {
                .index = (uint32_t) p->n_tensors,
                .name_at = (uint32_t) name->begin,
                .name_length = (uint32_t) (name->end - name->begin),
                .name_escaped = name->escaped,
        };
        ValueKind kind;
        JsonString key;
        size_t n = 0;
        int r;

        /* Counted on beyond the limit, for the message; nothing is kept. */
        p->n_tensors++;

        f.shape = (NumberList) { .values = f.dims, .max = SAFETENSORS_DIMS_MAX };
        f.offsets = (NumberList) { .values = f.bounds, .max = 2 };

        if (peek(p) != '{') {
                r = read_value(p, &kind, NULL, NULL);
                if (r < 0)
                        return r;
        } else {
                kind = VALUE_OBJECT;
                r = enter(p);
                while (r >= 0 && (r = object_next(p, &n, &key)) > 0) {
                        bool *have;

                        if (string_equal(p, &key, "dtype"))
                                have = &f.have_dtype;
                        else if (string_equal(p, &key, "shape"))
                                have = &f.have_shape;
                        else if (string_equal(p, &key, "data_offsets"))
                                have = &f.have_offsets;
                        else {
                                /* Ignored, as by the reference, and read
                                 * without keeping anything of it. */
                                r = read_value(p, NULL, NULL, NULL);
                                continue;
                        }

                        if (*have) {
                                if (!f.duplicate)
                                        f.duplicate = have == &f.have_dtype ? "dtype" :
                                                      have == &f.have_shape ? "shape" : "data_offsets";
                                r = read_value(p, NULL, NULL, NULL);
                                continue;
                        }
                        *have = true;

                        if (have == &f.have_dtype)
                                r = parse_dtype(p, &f);
                        else
                                r = parse_number_list(p, have == &f.have_shape ? &f.shape : &f.offsets);
                }
                if (r < 0)
                        return r;
        }

        if (p->failed || p->n_tensors > SAFETENSORS_TENSORS_MAX)
                return 0;

        r = check_tensor(p, &t, string_length(p, name), kind, &f);
        if (r < 0 || p->failed)
                return r;

        t.begin = f.bounds[0];
        t.end = f.bounds[1];
        return add_range(p, &t);
}

/* The value of "__metadata__", p->pos at it: null, or strings by name. */
static int parse_metadata(Parser *p) {
        ValueKind kind;
        JsonString key;
        size_t n = 0;
        int r;

        if (p->have_metadata) {
                r = violation(p, "the header has \"__metadata__\" more than once");
                if (r < 0)
                        return r;
        }
        p->have_metadata = true;

        if (peek(p) != '{') {
                r = read_value(p, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                /* The reference reads the member as an optional map, so
                 * null is the same as leaving it out. */
                if (kind == VALUE_NULL)
                        return 0;
                return violation(p, "\"__metadata__\" is %s, not an object of strings", describe(kind));
        }

        r = enter(p);
        while (r >= 0 && (r = object_next(p, &n, &key)) > 0) {
                r = read_value(p, &kind, NULL, NULL);
                if (r >= 0 && kind != VALUE_STRING)
                        r = violation(p, "\"__metadata__\" entry %zu (at header byte %zu) is %s, not a string",
                                      n - 1, key.begin - 1, describe(kind));
        }
        return r;
}

static int parse_header(Parser *p) {
        ValueKind kind;
        JsonString key;
        size_t n = 0;
        int r;

        r = skip_whitespace(p);
        if (r < 0)
                return r;

        if (peek(p) != '{') {
                r = read_value(p, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                r = violation(p, "the header is %s, not a JSON object", describe(kind));
        } else {
                r = enter(p);
                while (r >= 0 && (r = object_next(p, &n, &key)) > 0) {
                        if (string_equal(p, &key, "__metadata__"))
                                r = parse_metadata(p);
                        else
                                r = parse_tensor(p, &key);
                }
        }
        if (r < 0)
                return r;

        /* The reference writer pads with spaces; JSON allows any whitespace. */
        r = skip_whitespace(p);
        if (r < 0)
                return r;
        if (p->pos < p->length)
                return bad(p->ret_error, "the header has more than whitespace after its JSON value, from header byte %zu",
                           p->pos);
        return 0;
}

static int range_compare_names(const Parser *p, const TensorRange *x, const TensorRange *y) {
        return string_compare(p, x->name_at, x->name_length, x->name_escaped, y->name_at, y->name_length,
                              y->name_escaped);
}

/* Ties are broken by index, so that messages do not depend on the sort. */
static int range_compare_by_name(const Parser *p, const TensorRange *x, const TensorRange *y) {
        int r = range_compare_names(p, x, y);
        if (r != 0)
                return r;
        return x->index < y->index ? -1 : x->index > y->index ? 1 : 0;
}

static int range_compare_by_offsets(const Parser *p, const TensorRange *x, const TensorRange *y) {
        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        if (x->end != y->end)
                return x->end < y->end ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index ? 1 : 0;
}

typedef int (*range_compare_t)(const Parser *p, const TensorRange *x, const TensorRange *y);

static void sift_down(const Parser *p, TensorRange *a, size_t root, size_t n, range_compare_t compare) {
        for (;;) {
                size_t child = 2 * root + 1;
                TensorRange t;

                if (child >= n)
                        return;
                if (child + 1 < n && compare(p, a + child, a + child + 1) < 0)
                        child++;
                if (compare(p, a + root, a + child) >= 0)
                        return;
                t = a[root];
                a[root] = a[child];
                a[child] = t;
                root = child;
        }
}

/* A heapsort: in place, where qsort() would malloc a copy of the array,
 * and asking the cancellation callback as it goes. */
static int sort_ranges(Parser *p, range_compare_t compare) {
        TensorRange *a = ranges_of(p);
        size_t n = p->n_ranges, steps = 0;

        if (n < 2)
                return 0;
        for (size_t i = n / 2; i-- > 0;) {
                if (++steps % CANCEL_CHECK_STEPS == 0 && ask_cancel(p->cancel, p->userdata) < 0)
                        return -ECANCELED;
                sift_down(p, a, i, n, compare);
        }
        for (size_t end = n - 1; end > 0; end--) {
                TensorRange t = a[0];

                if (++steps % CANCEL_CHECK_STEPS == 0 && ask_cancel(p->cancel, p->userdata) < 0)
                        return -ECANCELED;
                a[0] = a[end];
                a[end] = t;
                sift_down(p, a, 0, end, compare);
        }
        return 0;
}

/* The reference keeps the last of two equal names; which one a reader sees
 * should not depend on such a detail, so neither is accepted. */
static int check_names(Parser *p) {
        TensorRange *ranges = ranges_of(p);
        size_t n = p->n_ranges;
        int r;

        r = sort_ranges(p, range_compare_by_name);
        if (r < 0)
                return r;
        for (size_t i = 1; i < n; i++)
                if (range_compare_names(p, ranges + i - 1, ranges + i) == 0)
                        return bad(p->ret_error, TENSOR_FMT " has the same name as " TENSOR_FMT,
                                   TENSOR_ARGS(ranges + i), TENSOR_ARGS(ranges + i - 1));
        return 0;
}

/* The reference sorts the tensors by (begin, end) and requires each to start
 * where the one before ends; zero-sized tensors may therefore share an
 * offset. */
static int check_layout(Parser *p, uint64_t data_length) {
        TensorRange *ranges = ranges_of(p);
        size_t n = p->n_ranges;
        uint64_t expected = 0;
        int r;

        r = sort_ranges(p, range_compare_by_offsets);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n; i++) {
                const TensorRange *t = ranges + i;

                if (t->begin > expected) {
                        if (i == 0)
                                return bad(p->ret_error,
                                           "data section bytes [0, %" PRIu64 ") belong to no tensor: " TENSOR_FMT
                                           ", the first in the data, has data_offsets [%" PRIu64 ", %" PRIu64 "], "
                                           "but data must start at 0",
                                           t->begin, TENSOR_ARGS(t), t->begin, t->end);
                        return bad(p->ret_error,
                                   "data section bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor: gap between "
                                   TENSOR_FMT " at data_offsets [%" PRIu64 ", %" PRIu64 "] and " TENSOR_FMT " at "
                                   "data_offsets [%" PRIu64 ", %" PRIu64 "]",
                                   expected, t->begin, TENSOR_ARGS(t - 1), t[-1].begin, t[-1].end, TENSOR_ARGS(t),
                                   t->begin, t->end);
                }
                if (t->begin < expected)
                        return bad(p->ret_error,
                                   TENSOR_FMT " at data_offsets [%" PRIu64 ", %" PRIu64 "] overlaps " TENSOR_FMT
                                   " at data_offsets [%" PRIu64 ", %" PRIu64 "]",
                                   TENSOR_ARGS(t), t->begin, t->end, TENSOR_ARGS(t - 1), t[-1].begin, t[-1].end);
                expected = t->end;
        }

        if (expected > data_length)
                return bad(p->ret_error,
                           "the file is truncated: " TENSOR_FMT " ends at data offset %" PRIu64 " but the data "
                           "section after the header holds only %" PRIu64 " bytes",
                           TENSOR_ARGS(ranges + n - 1), expected, data_length);
        if (expected < data_length) {
                if (n == 0)
                        return bad(p->ret_error, "the header describes no tensors but %" PRIu64 " data bytes follow it",
                                   data_length);
                return bad(p->ret_error,
                           "%" PRIu64 " trailing bytes after the last tensor in the data, " TENSOR_FMT ": the tensors end at data "
                           "offset %" PRIu64 " but the data section after the header holds %" PRIu64 " bytes",
                           data_length - expected, TENSOR_ARGS(ranges + n - 1), expected, data_length);
        }
        return 0;
}

int safetensors_validate_header(const char *json, size_t json_length, uint64_t file_size,
                                safetensors_cancel_t cancel, void *userdata, SafetensorsInfo *ret_info,
                                char **ret_error) {
        uint64_t data_length;
        int r;

        assert(json || json_length == 0);

        if (json_length > SAFETENSORS_HEADER_MAX)
                return bad(ret_error, "header length %zu exceeds the limit of %" PRIu64 " bytes", json_length,
                           SAFETENSORS_HEADER_MAX);
        if (file_size < SAFETENSORS_PREFIX_SIZE || json_length > file_size - SAFETENSORS_PREFIX_SIZE)
                return bad(ret_error, "header length %zu exceeds the file size %" PRIu64, json_length, file_size);
        data_length = file_size - SAFETENSORS_PREFIX_SIZE - json_length;

        if (json_length == 0)
                return bad(ret_error, "the header is empty; it must be a JSON object");

        _cleanup_(parser_done) Parser p = {
                .text = (const uint8_t *) json,
                .length = json_length,
                .cancel = cancel,
                .userdata = userdata,
                .ret_error = ret_error,
        };

        r = check_header_text(&p);
        if (r < 0)
                return r;
        r = parse_header(&p);
        if (r < 0)
                return r;

        if (p.n_tensors > SAFETENSORS_TENSORS_MAX)
                return bad(ret_error, "the header describes %zu tensors, more than the limit of %d", p.n_tensors,
                           SAFETENSORS_TENSORS_MAX);
        if (p.failed) {
                if (ret_error)
                        *ret_error = TAKE_PTR(p.failure);
                return -EBADMSG;
        }
        assert(p.n_ranges == p.n_tensors);

        r = check_names(&p);
        if (r < 0)
                return r;
        r = check_layout(&p, data_length);
        if (r < 0)
                return r;

        if (ret_info)
                *ret_info = (SafetensorsInfo) {
                        .header_length = json_length,
                        .data_offset = SAFETENSORS_PREFIX_SIZE + json_length,
                        .data_length = data_length,
                        .n_tensors = p.n_tensors,
                };
        return 0;
}

/* Reads up to n bytes at offset, retrying short reads, in chunks between
 * which cancel is asked: returns how many bytes were read (fewer than n only
 * at end of file) or negative errno. */
static ssize_t pread_full(int fd, void *buffer, size_t n, uint64_t offset, safetensors_cancel_t cancel,
                          void *userdata) {
        size_t done = 0;

        assert(n <= SSIZE_MAX);

        while (done < n) {
                ssize_t k;
                int r;

                r = ask_cancel(cancel, userdata);
                if (r < 0)
                        return r;
                if (offset + done > INT64_MAX)
                        return -EOVERFLOW;
                k = pread(fd, (uint8_t *) buffer + done, MIN(n - done, (size_t) READ_CHUNK_BYTES),
                          (off_t) (offset + done));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                done += (size_t) k;
        }
        return (ssize_t) done;
}

int safetensors_validate_fd(int fd, safetensors_cancel_t cancel, void *userdata, SafetensorsInfo *ret_info,
                            char **ret_error) {
        _cleanup_(buffer_free) Buffer header = {};
        uint8_t prefix[SAFETENSORS_PREFIX_SIZE];
        uint64_t file_size, header_length;
        struct stat st;
        ssize_t n;

        assert(fd >= 0);

        if (fstat(fd, &st) < 0)
                return fail_errno(ret_error, errno, "cannot stat the file: %m");
        if (!S_ISREG(st.st_mode))
                return bad(ret_error, "not a regular file; a safetensors file must be one");
        file_size = (uint64_t) st.st_size;

        if (file_size < SAFETENSORS_PREFIX_SIZE)
                return bad(ret_error,
                           "the file is %" PRIu64 " bytes, too short for the 8-byte header length at its start",
                           file_size);

        n = pread_full(fd, prefix, sizeof prefix, 0, NULL, NULL);
        if (n < 0)
                return fail_errno(ret_error, (int) -n, "cannot read the header length: %m");
        if ((size_t) n < sizeof prefix)
                return fail_errno(ret_error, EIO, "the file shrank to %zd bytes while its header length was read",
                                  n);

        memcpy(&header_length, prefix, sizeof header_length);
        header_length = le64toh(header_length);

        /* Both bounds before the allocation: the length is whatever the
         * file says. */
        if (header_length > SAFETENSORS_HEADER_MAX)
                return bad(ret_error, "header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes",
                           header_length, SAFETENSORS_HEADER_MAX);
        if (header_length > file_size - SAFETENSORS_PREFIX_SIZE)
                return bad(ret_error, "header length %" PRIu64 " exceeds the file size %" PRIu64, header_length,
                           file_size);

        if (buffer_resize(&header, header_length > 0 ? header_length : 1) < 0)
                return fail_errno(ret_error, ENOMEM, "cannot allocate %" PRIu64 " bytes for the header",
                                  header_length);

        n = pread_full(fd, header.data, header_length, SAFETENSORS_PREFIX_SIZE, cancel, userdata);
        if (n == -ECANCELED)
                return -ECANCELED;
        if (n < 0)
                return fail_errno(ret_error, (int) -n, "cannot read the %" PRIu64 "-byte header: %m", header_length);
        if ((uint64_t) n < header_length)
                return fail_errno(ret_error, EIO,
                                  "the file shrank while its header was read: %zd of %" PRIu64 " header bytes",
                                  n, header_length);

        return safetensors_validate_header(header.data, header_length, file_size, cancel, userdata, ret_info,
                                           ret_error);
}

/* ---- the writer ---- */

static inline void cjson_deletep(cJSON **p) {
        if (*p)
                cJSON_Delete(*p);
}
#define _cleanup_cjson_ _cleanup_(cjson_deletep)

/* Numbers are written as raw decimal text: cJSON would print a double, in
 * exponent notation from 10^15 on, which the reference reader refuses for
 * integers. */
static int add_integer(cJSON *array, uint64_t value) {
        char text[sizeof("18446744073709551615")];
        cJSON *item;

        snprintf(text, sizeof text, "%" PRIu64, value);
        item = cJSON_CreateRaw(text);
        if (!item)
                return -ENOMEM;
        if (!cJSON_AddItemToArray(array, item)) {
                cJSON_Delete(item);
                return -ENOMEM;
        }
        return 0;
}

static int string_pointer_compare(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static int check_spec_names(const SafetensorsTensorSpec *tensors, size_t n_tensors) {
        _cleanup_free_ const char **names = NULL;

        if (n_tensors == 0)
                return 0;

        names = calloc(n_tensors, sizeof *names);
        if (!names)
                return -ENOMEM;

        for (size_t i = 0; i < n_tensors; i++) {
                const char *name = tensors[i].name;

                if (!name || strlen(name) > SAFETENSORS_NAME_MAX || strcmp(name, "__metadata__") == 0)
                        return -EINVAL;
                names[i] = name;
        }

        qsort(names, n_tensors, sizeof *names, string_pointer_compare);
        for (size_t i = 1; i < n_tensors; i++)
                if (strcmp(names[i - 1], names[i]) == 0)
                        return -EINVAL;
        return 0;
}

static int add_tensor(cJSON *root, const SafetensorsTensorSpec *spec, uint64_t *offset) {
        uint64_t elements, bytes, end;
        cJSON *entry, *shape, *offsets;
        unsigned element_bits;
        int r;

        element_bits = safetensors_dtype_bits(spec->dtype);
        if (element_bits == 0)
                return -EINVAL;
        if (spec->n_dims > SAFETENSORS_DIMS_MAX || (spec->n_dims > 0 && !spec->shape))
                return -EINVAL;
        for (size_t i = 0; i < spec->n_dims; i++)
                if (spec->shape[i] > JSON_EXACT_INTEGER_MAX)
                        return -EOVERFLOW;

        r = tensor_byte_size(spec->shape, spec->n_dims, element_bits, &elements, &bytes);
        if (r == -EDOM)
                return -EINVAL;
        if (r < 0)
                return r;
        /* The validator takes no offset beyond 2^53; neither is one written. */
        if (__builtin_add_overflow(*offset, bytes, &end) || end > JSON_EXACT_INTEGER_MAX)
                return -EOVERFLOW;

        entry = cJSON_CreateObject();
        if (!entry)
                return -ENOMEM;
        if (!cJSON_AddItemToObject(root, spec->name, entry)) {
                cJSON_Delete(entry);
                return -ENOMEM;
        }
        /* From here on root owns entry and all that is added to it. */

        if (!cJSON_AddStringToObject(entry, "dtype", spec->dtype))
                return -ENOMEM;

        shape = cJSON_AddArrayToObject(entry, "shape");
        if (!shape)
                return -ENOMEM;
        for (size_t i = 0; i < spec->n_dims; i++) {
                r = add_integer(shape, spec->shape[i]);
                if (r < 0)
                        return r;
        }

        offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        if (!offsets)
                return -ENOMEM;
        r = add_integer(offsets, *offset);
        if (r < 0)
                return r;
        r = add_integer(offsets, end);
        if (r < 0)
                return r;

        *offset = end;
        return 0;
}

int safetensors_build_header(const SafetensorsTensorSpec *tensors, size_t n_tensors, char **ret_json,
                             uint64_t *ret_data_length) {
        _cleanup_cjson_ cJSON *root = NULL;
        _cleanup_free_ char *printed = NULL;
        uint64_t data_length = 0;
        size_t length, padded;
        char *json;
        int r;

        assert(tensors || n_tensors == 0);
        assert(ret_json);

        if (n_tensors > SAFETENSORS_TENSORS_MAX)
                return -EINVAL;

        r = check_spec_names(tensors, n_tensors);
        if (r < 0)
                return r;

        root = cJSON_CreateObject();
        if (!root)
                return -ENOMEM;

        for (size_t i = 0; i < n_tensors; i++) {
                r = add_tensor(root, tensors + i, &data_length);
                if (r < 0)
                        return r;
        }

        printed = cJSON_PrintUnformatted(root);
        if (!printed)
                return -ENOMEM;

        length = strlen(printed);
        padded = (length + 7) / 8 * 8;
        if (padded > SAFETENSORS_HEADER_MAX)
                return -E2BIG;

        json = malloc(padded + 1);
        if (!json)
                return -ENOMEM;
        memcpy(json, printed, length);
        memset(json + length, ' ', padded - length);
        json[padded] = '\0';

        *ret_json = json;
        if (ret_data_length)
                *ret_data_length = data_length;
        return 0;
}
