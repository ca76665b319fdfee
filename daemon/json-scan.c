/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "json-scan.h"
#include "macro.h"

int json_buffer_resize(JsonBuffer *b, size_t size) {
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

void json_buffer_free(JsonBuffer *b) {
        if (b->data)
                (void) munmap(b->data, b->size);
        *b = (JsonBuffer) {};
}

int json_poll_cancel(JsonScan *s, size_t pos) {
        if (pos < s->next_poll)
                return 0;
        s->next_poll = pos + JSON_CANCEL_CHECK_BYTES;
        if (s->cancel && s->cancel(s->userdata))
                return -ECANCELED;
        return 0;
}

int json_syntax_error_at(JsonScan *s, size_t at, const char *what) {
        s->syntax_error = what;
        s->syntax_error_at = at;
        return -EBADMSG;
}

static int syntax_error(JsonScan *s, const char *what) {
        return json_syntax_error_at(s, s->pos, what);
}

const char *json_kind_to_string(JsonKind kind) {
        switch (kind) {
        case JSON_OBJECT:
                return "an object";
        case JSON_ARRAY:
                return "an array";
        case JSON_STRING:
                return "a string";
        case JSON_WHOLE:
        case JSON_HUGE:
        case JSON_NEGATIVE:
        case JSON_FRACTIONAL:
                return "a number";
        case JSON_BOOLEAN:
                return "a boolean";
        case JSON_NULL:
                return "null";
        }
        return "an unknown value";
}

size_t json_utf8_sequence_length(const uint8_t *s, size_t n) {
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

/* ---- the scanner ---- */

int json_peek(const JsonScan *s) {
        return s->pos < s->length ? s->text[s->pos] : -1;
}

int json_skip_whitespace(JsonScan *s) {
        for (;;) {
                int r = json_poll_cancel(s, s->pos);
                if (r < 0)
                        return r;
                if (s->pos >= s->length)
                        return 0;
                uint8_t c = s->text[s->pos];
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
                        return 0;
                s->pos++;
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

/* A string from its opening quote at s->pos; ret may be NULL. */
static int parse_string(JsonScan *s, JsonString *ret) {
        size_t start = s->pos, continuation = 0;
        bool escaped = false;
        int r;

        assert(json_peek(s) == '"');
        s->pos++;

        for (;;) {
                uint8_t c;

                r = json_poll_cancel(s, s->pos);
                if (r < 0)
                        return r;
                if (s->pos >= s->length)
                        return json_syntax_error_at(s, start, "a string that is not closed begins");

                c = s->text[s->pos];
                if (c == '"')
                        break;
                if (c < 0x20)
                        return syntax_error(s, "a raw control character in a string");
                if (c >= 0x80) {
                        /* Byte by byte all the same, so that the callback
                         * is asked at the same places whatever the text. */
                        if (continuation > 0)
                                continuation--;
                        else {
                                size_t k = json_utf8_sequence_length(s->text + s->pos, s->length - s->pos);

                                if (k == 0)
                                        return syntax_error(s, "a string that is not valid UTF-8");
                                continuation = k - 1;
                        }
                        s->pos++;
                        continue;
                }
                if (c != '\\') {
                        s->pos++;
                        continue;
                }

                escaped = true;
                if (s->pos + 1 < s->length && s->text[s->pos + 1] != '\0' &&
                    strchr("\"\\/bfnrt", s->text[s->pos + 1])) {
                        s->pos += 2;
                        continue;
                }

                int32_t unit = read_unicode_escape(s->text, s->length, s->pos);
                if (unit < 0)
                        return syntax_error(s, "an invalid escape sequence in a string");
                if (unit == 0)
                        return syntax_error(s, "a NUL character (\\u0000) in a string");
                if (unit >= 0xdc00 && unit <= 0xdfff)
                        return syntax_error(s, "an unpaired UTF-16 surrogate escape in a string");
                if (unit >= 0xd800 && unit <= 0xdbff) {
                        int32_t low = read_unicode_escape(s->text, s->length, s->pos + 6);
                        if (low < 0xdc00 || low > 0xdfff)
                                return syntax_error(s, "an unpaired UTF-16 surrogate escape in a string");
                        s->pos += 6;
                }
                s->pos += 6;
        }

        if (ret)
                *ret = (JsonString) {
                        .begin = start + 1,
                        .end = s->pos,
                        .escaped = escaped,
                };
        s->pos++;
        return 0;
}

static int skip_digits(JsonScan *s, uint64_t *value, bool *huge) {
        size_t start = s->pos;

        for (;;) {
                int r = json_poll_cancel(s, s->pos);
                if (r < 0)
                        return r;
                if (s->pos >= s->length || s->text[s->pos] < '0' || s->text[s->pos] > '9')
                        break;
                if (value && !*huge) {
                        *value = *value * 10 + (uint64_t) (s->text[s->pos] - '0');
                        if (*value > JSON_EXACT_INTEGER_MAX)
                                *huge = true;
                }
                s->pos++;
        }
        return s->pos > start ? 1 : 0;
}

/* A number as JSON writes it: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int parse_number(JsonScan *s, JsonKind *ret_kind, uint64_t *ret_value) {
        uint64_t value = 0;
        bool negative = false, huge = false, fractional = false;
        int r;

        if (json_peek(s) == '-') {
                negative = true;
                s->pos++;
        }
        if (json_peek(s) == '0')
                s->pos++;
        else {
                r = skip_digits(s, &value, &huge);
                if (r < 0)
                        return r;
                if (r == 0)
                        return syntax_error(s, "a number without digits");
        }

        if (json_peek(s) == '.') {
                fractional = true;
                s->pos++;
                r = skip_digits(s, NULL, NULL);
                if (r < 0)
                        return r;
                if (r == 0)
                        return syntax_error(s, "a number without digits after its decimal point");
        }
        if (json_peek(s) == 'e' || json_peek(s) == 'E') {
                fractional = true;
                s->pos++;
                if (json_peek(s) == '+' || json_peek(s) == '-')
                        s->pos++;
                r = skip_digits(s, NULL, NULL);
                if (r < 0)
                        return r;
                if (r == 0)
                        return syntax_error(s, "a number without digits in its exponent");
        }

        *ret_kind = negative ? JSON_NEGATIVE : fractional ? JSON_FRACTIONAL : huge ? JSON_HUGE : JSON_WHOLE;
        *ret_value = value;
        return 0;
}

static int parse_literal(JsonScan *s, const char *word) {
        size_t n = strlen(word);

        if (s->length - s->pos < n || memcmp(s->text + s->pos, word, n) != 0)
                return syntax_error(s, "something other than a JSON value");
        s->pos += n;
        return 0;
}

int json_enter(JsonScan *s) {
        if (s->depth >= JSON_DEPTH_MAX)
                return syntax_error(s, "arrays and objects nested more than 127 deep");
        s->depth++;
        s->pos++;
        return 0;
}

/* Past the separator before the next member of an array or object: 1 with
 * s->pos at it, 0 once the closer is consumed. */
static int container_next(JsonScan *s, size_t *n, char closer, const char *missing_separator) {
        int r;

        r = json_skip_whitespace(s);
        if (r < 0)
                return r;
        if (json_peek(s) == closer) {
                s->pos++;
                s->depth--;
                return 0;
        }
        if (*n > 0) {
                if (json_peek(s) != ',')
                        return syntax_error(s, missing_separator);
                s->pos++;
                r = json_skip_whitespace(s);
                if (r < 0)
                        return r;
        }
        (*n)++;
        return 1;
}

int json_array_next(JsonScan *s, size_t *n) {
        return container_next(s, n, ']', "a missing ',' or ']' in an array");
}

int json_object_next(JsonScan *s, size_t *n, JsonString *ret_key) {
        int r;

        r = container_next(s, n, '}', "a missing ',' or '}' in an object");
        if (r <= 0)
                return r;
        if (json_peek(s) != '"')
                return syntax_error(s, "something other than a member name in an object");
        r = parse_string(s, ret_key);
        if (r < 0)
                return r;
        r = json_skip_whitespace(s);
        if (r < 0)
                return r;
        if (json_peek(s) != ':')
                return syntax_error(s, "a missing ':' after a member name");
        s->pos++;
        r = json_skip_whitespace(s);
        if (r < 0)
                return r;
        return 1;
}

int json_read_value(JsonScan *s, JsonKind *ret_kind, uint64_t *ret_number, JsonString *ret_string) {
        JsonKind kind = JSON_NULL;
        uint64_t number = 0;
        JsonString key;
        size_t n = 0;
        int c = json_peek(s), r;

        switch (c) {
        case '{':
                kind = JSON_OBJECT;
                r = json_enter(s);
                while (r >= 0 && (r = json_object_next(s, &n, &key)) > 0)
                        r = json_read_value(s, NULL, NULL, NULL);
                break;
        case '[':
                kind = JSON_ARRAY;
                r = json_enter(s);
                while (r >= 0 && (r = json_array_next(s, &n)) > 0)
                        r = json_read_value(s, NULL, NULL, NULL);
                break;
        case '"':
                kind = JSON_STRING;
                r = parse_string(s, ret_string);
                break;
        case 't':
                kind = JSON_BOOLEAN;
                r = parse_literal(s, "true");
                break;
        case 'f':
                kind = JSON_BOOLEAN;
                r = parse_literal(s, "false");
                break;
        case 'n':
                kind = JSON_NULL;
                r = parse_literal(s, "null");
                break;
        case -1:
                return syntax_error(s, s->end_of_text ?: "the end of the text where a value must be");
        default:
                if (c != '-' && (c < '0' || c > '9'))
                        return syntax_error(s, "something other than a JSON value");
                r = parse_number(s, &kind, &number);
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

static StringReader string_reader(const JsonScan *s, size_t begin, size_t end) {
        return (StringReader) { .text = s->text, .pos = begin, .end = end };
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

int json_string_compare(const JsonScan *s, size_t a_begin, size_t a_length, bool a_escaped, size_t b_begin,
                        size_t b_length, bool b_escaped) {
        StringReader a, b;

        if (!a_escaped && !b_escaped) {
                int r = memcmp(s->text + a_begin, s->text + b_begin, MIN(a_length, b_length));
                if (r != 0)
                        return r;
                return a_length < b_length ? -1 : a_length > b_length ? 1 : 0;
        }

        a = string_reader(s, a_begin, a_begin + a_length);
        b = string_reader(s, b_begin, b_begin + b_length);
        for (;;) {
                int x = string_reader_next(&a), y = string_reader_next(&b);

                if (x != y)
                        return x < y ? -1 : 1;
                if (x < 0)
                        return 0;
        }
}

bool json_string_equal(const JsonScan *s, const JsonString *string, const char *word) {
        StringReader r;
        size_t i = 0;
        int c;

        if (!string->escaped)
                return string->end - string->begin == strlen(word) &&
                        memcmp(s->text + string->begin, word, strlen(word)) == 0;

        r = string_reader(s, string->begin, string->end);
        while ((c = string_reader_next(&r)) >= 0)
                if (word[i] == '\0' || (uint8_t) word[i++] != c)
                        return false;
        return word[i] == '\0';
}

size_t json_string_length(const JsonScan *s, const JsonString *string) {
        StringReader r;
        size_t n = 0;

        if (!string->escaped)
                return string->end - string->begin;
        r = string_reader(s, string->begin, string->end);
        while (string_reader_next(&r) >= 0)
                n++;
        return n;
}

size_t json_string_decode(const JsonScan *s, const JsonString *string, char *buffer, size_t size) {
        StringReader r;
        size_t n = 0;
        int c;

        assert(size > 0);

        /* Stops at size: a string may be as long as the text. */
        r = string_reader(s, string->begin, string->end);
        while (n < size && (c = string_reader_next(&r)) >= 0) {
                if (n < size - 1)
                        buffer[n] = (char) c;
                n++;
        }
        buffer[MIN(n, size - 1)] = '\0';
        return n;
}

