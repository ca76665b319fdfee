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
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "safetensors.h"

/* cJSON holds numbers as doubles: whole numbers up to 2^53 are exact, larger
 * ones may have been rounded, so they are refused rather than guessed at. No
 * real file comes near: 2^53 bytes are 9 PB. */
#define JSON_EXACT_INTEGER_MAX UINT64_C(9007199254740992)

/* How much of a name or of the text around a syntax error goes into a
 * message: enough to find it, not so much that one message floods a log. */
#define QUOTE_CHARS_MAX 160
#define QUOTE_BUFFER_SIZE (QUOTE_CHARS_MAX * 4 + 8)
#define DESCRIBE_BUFFER_SIZE 64
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

typedef struct TensorRange {
        const char *name;   /* borrowed from the parsed JSON */
        uint64_t begin;
        uint64_t end;
} TensorRange;

static inline void cjson_deletep(cJSON **p) {
        if (*p)
                cJSON_Delete(*p);
}
#define _cleanup_cjson_ _cleanup_(cjson_deletep)

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

/* Quotes at most n bytes of s (which is valid UTF-8) for a message: within
 * double quotes, with quotes, backslashes and control characters escaped,
 * and cut short with "..." after QUOTE_CHARS_MAX characters. */
static const char *quote_bytes(const char *s, size_t n, char buffer[static QUOTE_BUFFER_SIZE]) {
        size_t i = 0, out = 0, chars = 0;

        buffer[out++] = '"';
        while (i < n && s[i] != '\0') {
                uint8_t c = (uint8_t) s[i];

                if (chars >= QUOTE_CHARS_MAX) {
                        memcpy(buffer + out, "...", 3);
                        out += 3;
                        break;
                }

                if (c == '"' || c == '\\') {
                        buffer[out++] = '\\';
                        buffer[out++] = (char) c;
                        i++;
                } else if (c < 0x20 || c == 0x7f) {
                        out += (size_t) snprintf(buffer + out, 5, "\\x%02x", c);
                        i++;
                } else {
                        size_t length = utf8_sequence_length((const uint8_t *) s + i, n - i);

                        if (length == 0) {
                                /* Only reachable for text around a syntax
                                 * error, which is not checked for UTF-8
                                 * when cJSON finds the error first. */
                                out += (size_t) snprintf(buffer + out, 5, "\\x%02x", c);
                                i++;
                        } else {
                                memcpy(buffer + out, s + i, length);
                                out += length;
                                i += length;
                        }
                }
                chars++;
        }
        buffer[out++] = '"';
        buffer[out] = '\0';
        return buffer;
}

#define QUOTE(s) quote_bytes((s), SIZE_MAX, (char[QUOTE_BUFFER_SIZE]) {})
#define QUOTE_BYTES(s, n) quote_bytes((s), (n), (char[QUOTE_BUFFER_SIZE]) {})

/* Names a JSON value that is not what was expected: its number, or its kind. */
static const char *describe(const cJSON *item, char buffer[static DESCRIBE_BUFFER_SIZE]) {
        if (cJSON_IsNumber(item)) {
                snprintf(buffer, DESCRIBE_BUFFER_SIZE, "%.15g", item->valuedouble);
                return buffer;
        }
        if (cJSON_IsString(item))
                return "a string";
        if (cJSON_IsArray(item))
                return "an array";
        if (cJSON_IsObject(item))
                return "an object";
        if (cJSON_IsBool(item))
                return "a boolean";
        if (cJSON_IsNull(item))
                return "null";
        return "an unknown value";
}

#define DESCRIBE(item) describe((item), (char[DESCRIBE_BUFFER_SIZE]) {})

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

static bool json_whole_number(const cJSON *item, uint64_t *ret) {
        double d;

        if (!cJSON_IsNumber(item))
                return false;
        d = item->valuedouble;
        /* The comparisons are false for NaN, so it is refused too. */
        if (!(d >= 0 && d <= (double) JSON_EXACT_INTEGER_MAX))
                return false;
        if ((double) (uint64_t) d != d)
                return false;

        *ret = (uint64_t) d;
        return true;
}

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

/* What cJSON does not check but the reference does: the header is UTF-8,
 * has no raw control characters (cJSON skips any byte up to 0x20 as
 * whitespace and takes them inside strings), and no byte order mark. NUL
 * escapes are refused too: cJSON would silently cut the string there,
 * making a name mean something else than what the file says. */
static int check_header_text(const char *json, size_t length, char **ret_error) {
        const uint8_t *s = (const uint8_t *) json;
        bool in_string = false;

        if (length >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
                return bad(ret_error, "the header starts with a UTF-8 byte order mark, which JSON does not allow");

        for (size_t i = 0; i < length;) {
                uint8_t c = s[i];

                if (c >= 0x80) {
                        size_t k = utf8_sequence_length(s + i, length - i);

                        if (k == 0)
                                return bad(ret_error, "the header is not valid UTF-8: bad byte 0x%02x at header byte %zu",
                                           c, i);
                        i += k;
                        continue;
                }

                if (in_string) {
                        if (c < 0x20)
                                return bad(ret_error,
                                           "the header has a raw control character 0x%02x inside a string at header byte %zu",
                                           c, i);
                        if (c == '\\') {
                                if (length - i >= 6 && memcmp(s + i + 1, "u0000", 5) == 0)
                                        return bad(ret_error,
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
                                return bad(ret_error, "the header has a control character 0x%02x at header byte %zu",
                                           c, i);
                }
                i++;
        }
        return 0;
}

static int validate_metadata(const cJSON *metadata, char **ret_error) {
        const cJSON *entry;

        /* The reference reads the member as an optional map, so null is
         * the same as leaving it out. */
        if (cJSON_IsNull(metadata))
                return 0;
        if (!cJSON_IsObject(metadata))
                return bad(ret_error, "\"__metadata__\" is %s, not an object of strings", DESCRIBE(metadata));

        cJSON_ArrayForEach(entry, metadata)
                if (!cJSON_IsString(entry))
                        return bad(ret_error, "\"__metadata__\" entry %s is %s, not a string", QUOTE(entry->string),
                                   DESCRIBE(entry));
        return 0;
}

static int validate_tensor(const cJSON *tensor, TensorRange *ret_range, char **ret_error) {
        const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL, *member, *item;
        uint64_t dims[SAFETENSORS_DIMS_MAX], bounds[2], elements, bytes;
        const char *name = tensor->string;
        size_t n_dims = 0, n_bounds = 0, name_length;
        unsigned element_bits;
        int r;

        name_length = strlen(name);
        if (name_length > SAFETENSORS_NAME_MAX)
                return bad(ret_error, "tensor name %s is %zu bytes long, more than the limit of %d", QUOTE(name),
                           name_length, SAFETENSORS_NAME_MAX);

        if (!cJSON_IsObject(tensor))
                return bad(ret_error, "tensor %s is %s, not an object with dtype, shape and data_offsets", QUOTE(name),
                           DESCRIBE(tensor));

        cJSON_ArrayForEach(member, tensor) {
                const cJSON **field;

                if (strcmp(member->string, "dtype") == 0)
                        field = &dtype;
                else if (strcmp(member->string, "shape") == 0)
                        field = &shape;
                else if (strcmp(member->string, "data_offsets") == 0)
                        field = &offsets;
                else
                        continue;   /* ignored, as by the reference */

                if (*field)
                        return bad(ret_error, "tensor %s has \"%s\" more than once", QUOTE(name), member->string);
                *field = member;
        }

        if (!dtype)
                return bad(ret_error, "tensor %s has no \"dtype\"", QUOTE(name));
        if (!cJSON_IsString(dtype))
                return bad(ret_error, "tensor %s: \"dtype\" is %s, not a string", QUOTE(name), DESCRIBE(dtype));
        element_bits = safetensors_dtype_bits(dtype->valuestring);
        if (element_bits == 0)
                return bad(ret_error, "tensor %s: unknown dtype %s", QUOTE(name), QUOTE(dtype->valuestring));

        if (!shape)
                return bad(ret_error, "tensor %s has no \"shape\"", QUOTE(name));
        if (!cJSON_IsArray(shape))
                return bad(ret_error, "tensor %s: \"shape\" is %s, not an array of dimensions", QUOTE(name),
                           DESCRIBE(shape));
        cJSON_ArrayForEach(item, shape) {
                if (n_dims >= SAFETENSORS_DIMS_MAX)
                        return bad(ret_error, "tensor %s: \"shape\" has more than %d dimensions", QUOTE(name),
                                   SAFETENSORS_DIMS_MAX);
                if (!json_whole_number(item, &dims[n_dims]))
                        return bad(ret_error,
                                   "tensor %s: shape dimension %zu is %s, not a whole number from 0 to 2^53",
                                   QUOTE(name), n_dims, DESCRIBE(item));
                n_dims++;
        }

        if (!offsets)
                return bad(ret_error, "tensor %s has no \"data_offsets\"", QUOTE(name));
        if (!cJSON_IsArray(offsets))
                return bad(ret_error, "tensor %s: \"data_offsets\" is %s, not an array [begin, end]", QUOTE(name),
                           DESCRIBE(offsets));
        cJSON_ArrayForEach(item, offsets) {
                if (n_bounds >= 2)
                        return bad(ret_error, "tensor %s: \"data_offsets\" has more than 2 elements, not [begin, end]",
                                   QUOTE(name));
                if (!json_whole_number(item, &bounds[n_bounds]))
                        return bad(ret_error,
                                   "tensor %s: data_offsets %s is %s, not a whole number from 0 to 2^53",
                                   QUOTE(name), n_bounds == 0 ? "begin" : "end", DESCRIBE(item));
                n_bounds++;
        }
        if (n_bounds != 2)
                return bad(ret_error, "tensor %s: \"data_offsets\" has %zu element%s, not 2 ([begin, end])",
                           QUOTE(name), n_bounds, n_bounds == 1 ? "" : "s");
        if (bounds[0] > bounds[1])
                return bad(ret_error, "tensor %s: data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                           QUOTE(name), bounds[0], bounds[1]);

        r = tensor_byte_size(dims, n_dims, element_bits, &elements, &bytes);
        if (r == -EOVERFLOW)
                return bad(ret_error, "tensor %s: shape %s of %s has more bits than fit in 64 bits", QUOTE(name),
                           SHAPE(dims, n_dims), dtype->valuestring);
        if (r == -EDOM)
                return bad(ret_error,
                           "tensor %s: shape %s of %s is %" PRIu64 " elements of %u bits, not a whole number of bytes",
                           QUOTE(name), SHAPE(dims, n_dims), dtype->valuestring, elements, element_bits);
        assert(r == 0);

        if (bounds[1] - bounds[0] != bytes)
                return bad(ret_error,
                           "tensor %s: shape %s of %s needs %" PRIu64 " bytes but data_offsets [%" PRIu64 ", %" PRIu64
                           "] span %" PRIu64,
                           QUOTE(name), SHAPE(dims, n_dims), dtype->valuestring, bytes, bounds[0], bounds[1],
                           bounds[1] - bounds[0]);

        *ret_range = (TensorRange) {
                .name = name,
                .begin = bounds[0],
                .end = bounds[1],
        };
        return 0;
}

static int range_compare_by_name(const void *a, const void *b) {
        const TensorRange *x = a, *y = b;

        return strcmp(x->name, y->name);
}

static int range_compare_by_offsets(const void *a, const void *b) {
        const TensorRange *x = a, *y = b;

        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        if (x->end != y->end)
                return x->end < y->end ? -1 : 1;
        return 0;
}

/* The reference sorts the tensors by (begin, end) and requires each to start
 * where the one before ends; zero-sized tensors may therefore share an
 * offset. */
static int check_layout(TensorRange *ranges, size_t n, uint64_t data_length, char **ret_error) {
        uint64_t expected = 0;

        if (n > 0)
                qsort(ranges, n, sizeof *ranges, range_compare_by_offsets);

        for (size_t i = 0; i < n; i++) {
                const TensorRange *t = ranges + i;

                if (t->begin > expected) {
                        if (i == 0)
                                return bad(ret_error,
                                           "data section bytes [0, %" PRIu64 ") belong to no tensor: the first tensor %s "
                                           "has data_offsets [%" PRIu64 ", %" PRIu64 "], but data must start at 0",
                                           t->begin, QUOTE(t->name), t->begin, t->end);
                        return bad(ret_error,
                                   "data section bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor: gap between "
                                   "tensor %s at data_offsets [%" PRIu64 ", %" PRIu64 "] and tensor %s at "
                                   "data_offsets [%" PRIu64 ", %" PRIu64 "]",
                                   expected, t->begin, QUOTE(t[-1].name), t[-1].begin, t[-1].end, QUOTE(t->name),
                                   t->begin, t->end);
                }
                if (t->begin < expected)
                        return bad(ret_error,
                                   "tensor %s at data_offsets [%" PRIu64 ", %" PRIu64 "] overlaps tensor %s at "
                                   "data_offsets [%" PRIu64 ", %" PRIu64 "]",
                                   QUOTE(t->name), t->begin, t->end, QUOTE(t[-1].name), t[-1].begin, t[-1].end);
                expected = t->end;
        }

        if (expected > data_length)
                return bad(ret_error,
                           "the file is truncated: tensor %s ends at data offset %" PRIu64 " but the data section "
                           "after the header holds only %" PRIu64 " bytes",
                           QUOTE(ranges[n - 1].name), expected, data_length);
        if (expected < data_length) {
                if (n == 0)
                        return bad(ret_error, "the header describes no tensors but %" PRIu64 " data bytes follow it",
                                   data_length);
                return bad(ret_error,
                           "%" PRIu64 " trailing bytes after the last tensor %s: the tensors end at data offset %" PRIu64
                           " but the data section after the header holds %" PRIu64 " bytes",
                           data_length - expected, QUOTE(ranges[n - 1].name), expected, data_length);
        }
        return 0;
}

int safetensors_validate_header(const char *json, size_t json_length, uint64_t file_size,
                                SafetensorsInfo *ret_info, char **ret_error) {
        _cleanup_cjson_ cJSON *root = NULL;
        _cleanup_free_ TensorRange *ranges = NULL;
        const cJSON *member;
        const char *parse_end = NULL;
        uint64_t data_length;
        size_t n_tensors = 0, i = 0;
        bool have_metadata = false;
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

        r = check_header_text(json, json_length, ret_error);
        if (r < 0)
                return r;

        /* cJSON cannot tell running out of memory from bad syntax; at the
         * sizes allowed here a syntax error is by far the likelier. The
         * position comes from parse_end, not cJSON_GetErrorPtr(), which is
         * global and so wrong when loader threads parse at once. */
        root = cJSON_ParseWithLengthOpts(json, json_length, &parse_end, false);
        if (!root) {
                size_t at = json_length;

                if (parse_end && parse_end >= json && parse_end <= json + json_length)
                        at = (size_t) (parse_end - json);
                return bad(ret_error, "the header is not valid JSON: syntax error near header byte %zu, at %s", at,
                           QUOTE_BYTES(json + at, MIN(json_length - at, (size_t) 32)));
        }

        /* The reference writer pads with spaces; JSON allows any whitespace. */
        assert(parse_end && parse_end >= json && parse_end <= json + json_length);
        for (const char *p = parse_end; p < json + json_length; p++)
                if (!strchr(" \t\n\r", *p))
                        return bad(ret_error, "the header has %s after its JSON value, at header byte %zu",
                                   QUOTE_BYTES(p, MIN((size_t) (json + json_length - p), (size_t) 32)),
                                   (size_t) (p - json));

        if (!cJSON_IsObject(root))
                return bad(ret_error, "the header is %s, not a JSON object", DESCRIBE(root));

        cJSON_ArrayForEach(member, root)
                if (strcmp(member->string, "__metadata__") != 0)
                        n_tensors++;
        if (n_tensors > SAFETENSORS_TENSORS_MAX)
                return bad(ret_error, "the header describes %zu tensors, more than the limit of %d", n_tensors,
                           SAFETENSORS_TENSORS_MAX);

        if (n_tensors > 0) {
                ranges = calloc(n_tensors, sizeof *ranges);
                if (!ranges)
                        return -ENOMEM;
        }

        cJSON_ArrayForEach(member, root) {
                if (strcmp(member->string, "__metadata__") == 0) {
                        if (have_metadata)
                                return bad(ret_error, "the header has \"__metadata__\" more than once");
                        have_metadata = true;

                        r = validate_metadata(member, ret_error);
                        if (r < 0)
                                return r;
                        continue;
                }

                assert(i < n_tensors);
                r = validate_tensor(member, ranges + i, ret_error);
                if (r < 0)
                        return r;
                i++;
        }

        /* The reference keeps the last of two equal names; which one a
         * reader sees should not depend on such a detail, so neither is
         * accepted. */
        if (n_tensors > 0)
                qsort(ranges, n_tensors, sizeof *ranges, range_compare_by_name);
        for (i = 1; i < n_tensors; i++)
                if (strcmp(ranges[i - 1].name, ranges[i].name) == 0)
                        return bad(ret_error, "tensor %s appears more than once in the header",
                                   QUOTE(ranges[i].name));

        r = check_layout(ranges, n_tensors, data_length, ret_error);
        if (r < 0)
                return r;

        if (ret_info)
                *ret_info = (SafetensorsInfo) {
                        .header_length = json_length,
                        .data_offset = SAFETENSORS_PREFIX_SIZE + json_length,
                        .data_length = data_length,
                        .n_tensors = n_tensors,
                };
        return 0;
}

/* Reads up to n bytes at offset, retrying short reads: returns how many bytes
 * were read (fewer than n only at end of file) or negative errno. */
static ssize_t pread_full(int fd, void *buffer, size_t n, uint64_t offset) {
        size_t done = 0;

        assert(n <= SSIZE_MAX);

        while (done < n) {
                ssize_t k;

                if (offset + done > INT64_MAX)
                        return -EOVERFLOW;
                k = pread(fd, (uint8_t *) buffer + done, n - done, (off_t) (offset + done));
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

int safetensors_validate_fd(int fd, SafetensorsInfo *ret_info, char **ret_error) {
        _cleanup_free_ char *header = NULL;
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

        n = pread_full(fd, prefix, sizeof prefix, 0);
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

        header = malloc(header_length > 0 ? header_length : 1);
        if (!header)
                return fail_errno(ret_error, ENOMEM, "cannot allocate %" PRIu64 " bytes for the header",
                                  header_length);

        n = pread_full(fd, header, header_length, SAFETENSORS_PREFIX_SIZE);
        if (n < 0)
                return fail_errno(ret_error, (int) -n, "cannot read the %" PRIu64 "-byte header: %m", header_length);
        if ((uint64_t) n < header_length)
                return fail_errno(ret_error, EIO,
                                  "the file shrank while its header was read: %zd of %" PRIu64 " header bytes",
                                  n, header_length);

        return safetensors_validate_header(header, header_length, file_size, ret_info, ret_error);
}

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
