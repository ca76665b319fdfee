/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inspect.h"
#include "json-scan.h"
#include "safetensors.h"

int inspect_header_length(const uint8_t prefix[static 8], uint64_t file_size, const char *name,
                          uint64_t *ret_length, PullError *e) {
        uint64_t n = 0;

        for (unsigned i = 0; i < 8; i++)
                n |= (uint64_t) prefix[i] << (8 * i);
        if (n > SAFETENSORS_HEADER_MAX || file_size < SAFETENSORS_PREFIX_SIZE ||
            n > file_size - SAFETENSORS_PREFIX_SIZE)
                return pull_error(e, PULL_PROTOCOL, -EBADMSG,
                                  "%s is not a valid safetensors file: its header length %" PRIu64
                                  " is beyond the file or the format's limit.",
                                  name, n);
        *ret_length = n;
        return 0;
}

static int add_dtype(InspectTotals *t, const char *dtype, uint64_t parameters) {
        for (size_t i = 0; i < t->n_dtypes; i++)
                if (strcmp(t->dtypes[i].name, dtype) == 0) {
                        t->dtypes[i].parameters += parameters;
                        return 0;
                }
        if (t->n_dtypes >= INSPECT_DTYPES_MAX)
                return -E2BIG;
        snprintf(t->dtypes[t->n_dtypes].name, sizeof t->dtypes[t->n_dtypes].name, "%s", dtype);
        t->dtypes[t->n_dtypes++].parameters = parameters;
        return 0;
}

/* One tensor of a header already validated: its dtype and element count. */
static int read_tensor(JsonScan *s, char dtype[static 16], uint64_t *ret_elements) {
        uint64_t elements = 1;
        JsonString key, string;
        size_t n = 0;
        int r;

        dtype[0] = '\0';
        r = json_enter(s);
        while (r >= 0 && (r = json_object_next(s, &n, &key)) > 0) {
                if (json_string_equal(s, &key, "dtype")) {
                        r = json_read_value(s, NULL, NULL, &string);
                        if (r >= 0 && json_string_decode(s, &string, dtype, 16) >= 16)
                                return -EBADMSG;
                } else if (json_string_equal(s, &key, "shape")) {
                        size_t k = 0;

                        r = json_enter(s);
                        while (r >= 0 && (r = json_array_next(s, &k)) > 0) {
                                uint64_t dim;

                                r = json_read_value(s, NULL, &dim, NULL);
                                if (r >= 0 && __builtin_mul_overflow(elements, dim, &elements))
                                        return -EOVERFLOW;
                        }
                } else
                        r = json_read_value(s, NULL, NULL, NULL);
        }
        if (r < 0)
                return r;
        *ret_elements = elements;
        return 0;
}

static int count(InspectTotals *t, const char *json, size_t length) {
        JsonScan s = { .text = (const uint8_t *) json, .length = length };
        JsonString key;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(&s);
        if (r < 0)
                return r;
        r = json_enter(&s);
        while (r >= 0 && (r = json_object_next(&s, &n, &key)) > 0) {
                char dtype[16];
                uint64_t elements;

                if (json_string_equal(&s, &key, "__metadata__")) {
                        r = json_read_value(&s, NULL, NULL, NULL);
                        continue;
                }
                r = read_tensor(&s, dtype, &elements);
                if (r < 0)
                        return r;
                if (safetensors_dtype_bits(dtype) == 0)
                        return -EBADMSG;
                if (__builtin_add_overflow(t->parameters, elements, &t->parameters))
                        return -EOVERFLOW;
                t->tensors++;
                r = add_dtype(t, dtype, elements);
        }
        return r;
}

static uint64_t page_align(uint64_t length) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (length + page - 1) / page * page;
}

int inspect_add_file(InspectTotals *t, const char *json, size_t length, uint64_t file_size, const char *name,
                     PullError *e) {
        _cleanup_free_ char *error = NULL;
        int r;

        r = safetensors_validate_header(json, length, file_size, NULL, NULL, NULL, &error);
        if (r == -EBADMSG)
                return pull_error(e, PULL_PROTOCOL, r, "%s is not a valid safetensors file: %s", name,
                                  strempty(error));
        if (r < 0)
                return pull_error(e, PULL_INTERNAL, r, "Cannot validate the header of %s: %m", name);

        r = count(t, json, length);
        if (r < 0)
                return pull_error(e, PULL_PROTOCOL, r, "Cannot count the tensors of %s: %m", name);
        t->memory_bytes += page_align(file_size);
        return 0;
}

static int compare_dtypes(const void *a, const void *b) {
        return strcmp(((const InspectDtype *) a)->name, ((const InspectDtype *) b)->name);
}

int inspect_print(InspectTotals *t) {
        int r;

        qsort(t->dtypes, t->n_dtypes, sizeof *t->dtypes, compare_dtypes);
        r = protocol_line("TENSORS %" PRIu64, t->tensors);
        if (r >= 0)
                r = protocol_line("PARAMETERS %" PRIu64, t->parameters);
        for (size_t i = 0; r >= 0 && i < t->n_dtypes; i++)
                r = protocol_line("DTYPE %s %" PRIu64, t->dtypes[i].name, t->dtypes[i].parameters);
        if (r >= 0)
                r = protocol_line("MEMORY %" PRIu64, t->memory_bytes);
        return r;
}
