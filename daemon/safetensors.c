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

#include "json-scan.h"
#include "macro.h"
#include "safetensors.h"

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

typedef struct Parser {
        JsonScan json;          /* the header, and where the parse is in it */

        char **ret_error;
        /* The first violation of the rules (not of JSON) found. Parsing goes
         * on to the end, so that broken JSON is what gets reported when the
         * header is broken too, and nothing more is recorded. */
        bool failed;
        char *failure;

        /* Mapped, not malloc'd: see JsonBuffer. */
        JsonBuffer ranges;      /* TensorRange[] */
        size_t n_ranges;
        size_t n_tensors;       /* all of them, beyond SAFETENSORS_TENSORS_MAX too */
        bool have_metadata;
} Parser;

static void parser_done(Parser *p) {
        json_buffer_free(&p->ranges);
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
        json_buffer_free(&p->ranges);
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

/* Broken JSON: reported with where, but not what is there. */
static int syntax_error_reported(Parser *p) {
        assert(p->json.syntax_error);
        return bad(p->ret_error, "the header is not valid JSON: %s at header byte %zu", p->json.syntax_error,
                   p->json.syntax_error_at);
}

static int ask_cancel(safetensors_cancel_t cancel, void *userdata) {
        return cancel && cancel(userdata) ? -ECANCELED : 0;
}

/* For where a whole number was expected: what kind of number it was not. */
static const char *describe_number(JsonKind kind) {
        switch (kind) {
        case JSON_HUGE:
                return "a whole number above 2^53";
        case JSON_NEGATIVE:
                return "a negative number";
        case JSON_FRACTIONAL:
                return "a number with a fraction or an exponent";
        default:
                return json_kind_to_string(kind);
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
        const uint8_t *s = p->json.text;
        size_t length = p->json.length;
        bool in_string = false;
        int r;

        if (length >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
                return bad(p->ret_error, "the header starts with a UTF-8 byte order mark, which JSON does not allow");

        for (size_t i = 0; i < length;) {
                uint8_t c = s[i];

                r = json_poll_cancel(&p->json, i);
                if (r < 0)
                        return r;

                if (c >= 0x80) {
                        size_t k = json_utf8_sequence_length(s + i, length - i);

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

        p->json.next_poll = 0;
        return 0;
}

/* ---- the safetensors structure ---- */

/* An array of whole numbers ("shape", "data_offsets") as read, with the
 * first thing wrong in it, in order: an element that is not a whole number,
 * or one more element than max. */
typedef struct NumberList {
        JsonKind kind;         /* of the member's value */
        uint64_t *values;
        size_t max;
        size_t n;
        bool too_many;
        bool bad;
        size_t bad_index;
        JsonKind bad_kind;
} NumberList;

static int parse_number_list(Parser *p, NumberList *l) {
        size_t n = 0;
        int r;

        if (json_peek(&p->json) != '[')
                return json_read_value(&p->json, &l->kind, NULL, NULL);

        l->kind = JSON_ARRAY;
        r = json_enter(&p->json);
        if (r < 0)
                return r;
        while ((r = json_array_next(&p->json, &n)) > 0) {
                JsonKind kind;
                uint64_t value;

                r = json_read_value(&p->json, &kind, &value, NULL);
                if (r < 0)
                        return r;
                if (l->bad || l->too_many)
                        continue;
                if (l->n >= l->max)
                        l->too_many = true;
                else if (kind != JSON_WHOLE) {
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
        JsonKind dtype_kind;
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

        r = json_read_value(&p->json, &f->dtype_kind, NULL, &s);
        if (r < 0 || f->dtype_kind != JSON_STRING)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(dtypes); i++)
                if (json_string_equal(&p->json, &s, dtypes[i].name)) {
                        f->dtype = dtypes[i].name;
                        f->element_bits = dtypes[i].bits;
                }
        return 0;
}

/* The rules for one tensor, in a fixed order: the first one broken is the
 * one reported. */
static int check_tensor(Parser *p, const TensorRange *t, size_t name_length, JsonKind kind, TensorFields *f) {
        uint64_t elements, bytes;
        int r;

        if (name_length > SAFETENSORS_NAME_MAX)
                return violation(p, TENSOR_FMT ": its name is %zu bytes long, more than the limit of %d",
                                 TENSOR_ARGS(t), name_length, SAFETENSORS_NAME_MAX);
        if (kind != JSON_OBJECT)
                return violation(p, TENSOR_FMT " is %s, not an object with dtype, shape and data_offsets",
                                 TENSOR_ARGS(t), json_kind_to_string(kind));
        if (f->duplicate)
                return violation(p, TENSOR_FMT " has \"%s\" more than once", TENSOR_ARGS(t), f->duplicate);

        if (!f->have_dtype)
                return violation(p, TENSOR_FMT " has no \"dtype\"", TENSOR_ARGS(t));
        if (f->dtype_kind != JSON_STRING)
                return violation(p, TENSOR_FMT ": \"dtype\" is %s, not a string", TENSOR_ARGS(t),
                                 json_kind_to_string(f->dtype_kind));
        if (!f->dtype)
                return violation(p, TENSOR_FMT ": \"dtype\" is not a known dtype", TENSOR_ARGS(t));

        if (!f->have_shape)
                return violation(p, TENSOR_FMT " has no \"shape\"", TENSOR_ARGS(t));
        if (f->shape.kind != JSON_ARRAY)
                return violation(p, TENSOR_FMT ": \"shape\" is %s, not an array of dimensions", TENSOR_ARGS(t),
                                 json_kind_to_string(f->shape.kind));
        if (f->shape.too_many)
                return violation(p, TENSOR_FMT ": \"shape\" has more than %d dimensions", TENSOR_ARGS(t),
                                 SAFETENSORS_DIMS_MAX);
        if (f->shape.bad)
                return violation(p, TENSOR_FMT ": shape dimension %zu is %s, not a whole number from 0 to 2^53",
                                 TENSOR_ARGS(t), f->shape.bad_index, describe_number(f->shape.bad_kind));

        if (!f->have_offsets)
                return violation(p, TENSOR_FMT " has no \"data_offsets\"", TENSOR_ARGS(t));
        if (f->offsets.kind != JSON_ARRAY)
                return violation(p, TENSOR_FMT ": \"data_offsets\" is %s, not an array [begin, end]",
                                 TENSOR_ARGS(t), json_kind_to_string(f->offsets.kind));
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
                r = json_buffer_resize(&p->ranges, MIN(MAX(p->ranges.size * 2, (size_t) 4096),
                                                  (size_t) SAFETENSORS_TENSORS_MAX * sizeof(TensorRange)));
                if (r < 0)
                        return r;
        }
        ranges_of(p)[p->n_ranges++] = *t;
        return 0;
}

/* A tensor's value, p->json.pos at it; name is its member name. */
static int parse_tensor(Parser *p, const JsonString *name) {
        TensorFields f = {};
        TensorRange t = {
                .index = (uint32_t) p->n_tensors,
                .name_at = (uint32_t) name->begin,
                .name_length = (uint32_t) (name->end - name->begin),
                .name_escaped = name->escaped,
        };
        JsonKind kind;
        JsonString key;
        size_t n = 0;
        int r;

        /* Counted on beyond the limit, for the message; nothing is kept. */
        p->n_tensors++;

        f.shape = (NumberList) { .values = f.dims, .max = SAFETENSORS_DIMS_MAX };
        f.offsets = (NumberList) { .values = f.bounds, .max = 2 };

        if (json_peek(&p->json) != '{') {
                r = json_read_value(&p->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
        } else {
                kind = JSON_OBJECT;
                r = json_enter(&p->json);
                while (r >= 0 && (r = json_object_next(&p->json, &n, &key)) > 0) {
                        bool *have;

                        if (json_string_equal(&p->json, &key, "dtype"))
                                have = &f.have_dtype;
                        else if (json_string_equal(&p->json, &key, "shape"))
                                have = &f.have_shape;
                        else if (json_string_equal(&p->json, &key, "data_offsets"))
                                have = &f.have_offsets;
                        else {
                                /* Ignored, as by the reference, and read
                                 * without keeping anything of it. */
                                r = json_read_value(&p->json, NULL, NULL, NULL);
                                continue;
                        }

                        if (*have) {
                                if (!f.duplicate)
                                        f.duplicate = have == &f.have_dtype ? "dtype" :
                                                      have == &f.have_shape ? "shape" : "data_offsets";
                                r = json_read_value(&p->json, NULL, NULL, NULL);
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

        r = check_tensor(p, &t, json_string_length(&p->json, name), kind, &f);
        if (r < 0 || p->failed)
                return r;

        t.begin = f.bounds[0];
        t.end = f.bounds[1];
        return add_range(p, &t);
}

/* The value of "__metadata__", p->json.pos at it: null, or strings by name. */
static int parse_metadata(Parser *p) {
        JsonKind kind;
        JsonString key;
        size_t n = 0;
        int r;

        if (p->have_metadata) {
                r = violation(p, "the header has \"__metadata__\" more than once");
                if (r < 0)
                        return r;
        }
        p->have_metadata = true;

        if (json_peek(&p->json) != '{') {
                r = json_read_value(&p->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                /* The reference reads the member as an optional map, so
                 * null is the same as leaving it out. */
                if (kind == JSON_NULL)
                        return 0;
                return violation(p, "\"__metadata__\" is %s, not an object of strings", json_kind_to_string(kind));
        }

        r = json_enter(&p->json);
        while (r >= 0 && (r = json_object_next(&p->json, &n, &key)) > 0) {
                r = json_read_value(&p->json, &kind, NULL, NULL);
                if (r >= 0 && kind != JSON_STRING)
                        r = violation(p, "\"__metadata__\" entry %zu (at header byte %zu) is %s, not a string",
                                      n - 1, key.begin - 1, json_kind_to_string(kind));
        }
        return r;
}

static int parse_header(Parser *p) {
        JsonKind kind;
        JsonString key;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(&p->json);
        if (r < 0)
                return r;

        if (json_peek(&p->json) != '{') {
                r = json_read_value(&p->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                r = violation(p, "the header is %s, not a JSON object", json_kind_to_string(kind));
        } else {
                r = json_enter(&p->json);
                while (r >= 0 && (r = json_object_next(&p->json, &n, &key)) > 0) {
                        if (json_string_equal(&p->json, &key, "__metadata__"))
                                r = parse_metadata(p);
                        else
                                r = parse_tensor(p, &key);
                }
        }
        if (r < 0)
                return r;

        /* The reference writer pads with spaces; JSON allows any whitespace. */
        r = json_skip_whitespace(&p->json);
        if (r < 0)
                return r;
        if (p->json.pos < p->json.length)
                return bad(p->ret_error, "the header has more than whitespace after its JSON value, from header byte %zu",
                           p->json.pos);
        return 0;
}

static int range_compare_names(const Parser *p, const TensorRange *x, const TensorRange *y) {
        return json_string_compare(&p->json, x->name_at, x->name_length, x->name_escaped, y->name_at,
                                   y->name_length, y->name_escaped);
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
                if (++steps % CANCEL_CHECK_STEPS == 0 && ask_cancel(p->json.cancel, p->json.userdata) < 0)
                        return -ECANCELED;
                sift_down(p, a, i, n, compare);
        }
        for (size_t end = n - 1; end > 0; end--) {
                TensorRange t = a[0];

                if (++steps % CANCEL_CHECK_STEPS == 0 && ask_cancel(p->json.cancel, p->json.userdata) < 0)
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
                .json = {
                        .text = (const uint8_t *) json,
                        .length = json_length,
                        .cancel = cancel,
                        .userdata = userdata,
                        .end_of_text = "the end of the header where a value must be",
                },
                .ret_error = ret_error,
        };

        r = check_header_text(&p);
        if (r < 0)
                return r;
        r = parse_header(&p);
        if (r == -EBADMSG && p.json.syntax_error)
                return syntax_error_reported(&p);
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
        _cleanup_(json_buffer_free) JsonBuffer header = {};
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

        if (json_buffer_resize(&header, header_length > 0 ? header_length : 1) < 0)
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
