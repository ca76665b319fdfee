/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json-scan.h"
#include "macro.h"
#include "safetensors.h"
#include "tensor-list.h"

/* Longer than any dtype name the validator knows ("F8_E4M3" and the like). */
#define DTYPE_NAME_MAX 16U

_printf_(3, 4) static int set_error(char **ret_error, int error, const char *format, ...) {
        char *message;
        va_list ap;

        if (!ret_error)
                return error;
        errno = -error;
        va_start(ap, format);
        if (vasprintf(&message, format, ap) < 0)
                message = NULL;
        va_end(ap);
        free(*ret_error);
        *ret_error = message;
        return error;
}

void tensor_list_done(TensorList *l) {
        for (size_t i = 0; i < l->n_blocks; i++)
                free(l->blocks[i]);
        free(l->blocks);
        free(l->tensors);
        free(l->file_offsets);
        *l = (TensorList) {};
}

/* What one header adds, before it is joined to the list. */
typedef struct Added {
        BertTensor *tensors;
        uint64_t *file_offsets;
        size_t n;
        char *strings;            /* names and dtypes, NUL-terminated */
        size_t strings_size, strings_used;
        uint64_t *dims;
        size_t dims_allocated, dims_used;
        /* Offsets into strings and dims, turned into pointers at the end:
         * dims may move while it grows. */
        size_t *name_at, *dtype_at, *shape_at;
} Added;

static void added_done(Added *a) {
        free(a->tensors);
        free(a->file_offsets);
        free(a->strings);
        free(a->dims);
        free(a->name_at);
        free(a->dtype_at);
        free(a->shape_at);
        *a = (Added) {};
}

static int added_string(Added *a, const JsonScan *json, const JsonString *s, size_t max, size_t *ret_at) {
        size_t room = a->strings_size - a->strings_used, n;

        /* The decoded string is never longer than it is in the text, and
         * the block has room for every string of the header. */
        n = json_string_decode(json, s, a->strings + a->strings_used, MIN(room, max + 1));
        if (n > max || n >= room)
                return -EBADMSG;
        *ret_at = a->strings_used;
        a->strings_used += n + 1;
        return 0;
}

static int added_dim(Added *a, uint64_t d) {
        if (a->dims_used == a->dims_allocated) {
                size_t n = MAX(a->dims_allocated * 2, (size_t) 64);
                uint64_t *p = reallocarray(a->dims, n, sizeof *p);

                if (!p)
                        return -ENOMEM;
                a->dims = p;
                a->dims_allocated = n;
        }
        a->dims[a->dims_used++] = d;
        return 0;
}

/* One tensor's object: its dtype, shape and data_offsets, the others
 * skipped as the validator ignores them. What the validator checked is
 * checked again only as far as memory safety needs. */
static int read_tensor(Added *a, JsonScan *json, size_t i, uint64_t data_offset, uint64_t data_length,
                       const void *data) {
        uint64_t offsets[2] = {};
        size_t n = 0, n_offsets = 0;
        bool have_dtype = false, have_shape = false;
        JsonString key, value;
        JsonKind kind;
        uint64_t number;
        int r;

        if (json_peek(json) != '{')
                return -EBADMSG;
        r = json_enter(json);
        while (r >= 0 && (r = json_object_next(json, &n, &key)) > 0) {
                if (json_string_equal(json, &key, "dtype")) {
                        r = json_read_value(json, &kind, NULL, &value);
                        if (r < 0)
                                return r;
                        if (kind != JSON_STRING || have_dtype)
                                return -EBADMSG;
                        r = added_string(a, json, &value, DTYPE_NAME_MAX, &a->dtype_at[i]);
                        have_dtype = true;
                } else if (json_string_equal(json, &key, "shape") ||
                           json_string_equal(json, &key, "data_offsets")) {
                        bool shape = json_string_equal(json, &key, "shape");
                        size_t k = 0;

                        if (json_peek(json) != '[' || (shape ? have_shape : n_offsets > 0))
                                return -EBADMSG;
                        if (shape) {
                                a->shape_at[i] = a->dims_used;
                                have_shape = true;
                        }
                        r = json_enter(json);
                        while (r >= 0 && (r = json_array_next(json, &k)) > 0) {
                                r = json_read_value(json, &kind, &number, NULL);
                                if (r < 0)
                                        return r;
                                if (kind != JSON_WHOLE)
                                        return -EBADMSG;
                                if (shape) {
                                        if (k > SAFETENSORS_DIMS_MAX)
                                                return -EBADMSG;
                                        r = added_dim(a, number);
                                } else {
                                        if (k > 2)
                                                return -EBADMSG;
                                        offsets[k - 1] = number;
                                }
                        }
                        if (r < 0)
                                return r;
                        if (shape)
                                a->tensors[i].n_dims = k;
                        else
                                n_offsets = k;
                } else
                        r = json_read_value(json, NULL, NULL, NULL);
        }
        if (r < 0)
                return r;

        if (!have_dtype || !have_shape || n_offsets != 2 || offsets[0] > offsets[1] || offsets[1] > data_length)
                return -EBADMSG;
        a->tensors[i].length = offsets[1] - offsets[0];
        a->tensors[i].data = data ? (const uint8_t *) data + data_offset + offsets[0] : NULL;
        a->file_offsets[i] = data_offset + offsets[0];
        return 0;
}

static int read_header(Added *a, JsonScan *json, size_t n_tensors, uint64_t data_offset, uint64_t data_length,
                       const void *data) {
        JsonString key;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(json);
        if (r < 0)
                return r;
        if (json_peek(json) != '{')
                return -EBADMSG;
        r = json_enter(json);
        while (r >= 0 && (r = json_object_next(json, &n, &key)) > 0) {
                if (json_string_equal(json, &key, "__metadata__")) {
                        r = json_read_value(json, NULL, NULL, NULL);
                        continue;
                }
                if (a->n >= n_tensors)
                        return -EBADMSG;
                r = added_string(a, json, &key, SAFETENSORS_NAME_MAX, &a->name_at[a->n]);
                if (r < 0)
                        return r;
                r = read_tensor(a, json, a->n, data_offset, data_length, data);
                if (r < 0)
                        return r;
                a->n++;
        }
        if (r < 0)
                return r;
        return a->n == n_tensors ? 0 : -EBADMSG;
}

/* Appends what a header added to the list: cannot fail once the arrays
 * have grown. */
static int list_join(TensorList *l, Added *a) {
        size_t n = l->n_tensors + a->n;
        BertTensor *tensors;
        uint64_t *offsets;
        void **blocks;

        tensors = reallocarray(l->tensors, MAX(n, (size_t) 1), sizeof *tensors);
        if (!tensors)
                return -ENOMEM;
        l->tensors = tensors;
        offsets = reallocarray(l->file_offsets, MAX(n, (size_t) 1), sizeof *offsets);
        if (!offsets)
                return -ENOMEM;
        l->file_offsets = offsets;
        blocks = reallocarray(l->blocks, l->n_blocks + 2, sizeof *blocks);
        if (!blocks)
                return -ENOMEM;
        l->blocks = blocks;

        for (size_t i = 0; i < a->n; i++) {
                BertTensor *t = &a->tensors[i];

                t->name = a->strings + a->name_at[i];
                t->dtype = a->strings + a->dtype_at[i];
                t->shape = t->n_dims > 0 ? a->dims + a->shape_at[i] : NULL;
                l->tensors[l->n_tensors + i] = *t;
                l->file_offsets[l->n_tensors + i] = a->file_offsets[i];
        }
        l->n_tensors = n;
        l->blocks[l->n_blocks++] = TAKE_PTR(a->strings);
        l->blocks[l->n_blocks++] = TAKE_PTR(a->dims);
        return 0;
}

int tensor_list_add_header(TensorList *l, const char *header, size_t length, uint64_t file_size, const void *data,
                           tensor_list_cancel_t cancel, void *userdata, char **ret_error) {
        _cleanup_(added_done) Added a = {};
        _cleanup_free_ char *detail = NULL;
        SafetensorsInfo info;
        JsonScan json;
        int r;

        assert(l);
        assert(header || length == 0);

        r = safetensors_validate_header(header, length, file_size, cancel, userdata, &info, &detail);
        if (r == -EBADMSG)
                return set_error(ret_error, r, "%s", detail ?: "not a valid safetensors file");
        if (r < 0)
                return r;

        /* Every name and dtype fits in the header's own length, plus a NUL
         * each; the validator bounded the count. */
        a.strings_size = length + info.n_tensors * (DTYPE_NAME_MAX + 2) + 1;
        a.strings = malloc(a.strings_size);
        a.tensors = calloc(MAX(info.n_tensors, (size_t) 1), sizeof *a.tensors);
        a.file_offsets = calloc(MAX(info.n_tensors, (size_t) 1), sizeof *a.file_offsets);
        a.name_at = calloc(MAX(info.n_tensors, (size_t) 1), sizeof *a.name_at);
        a.dtype_at = calloc(MAX(info.n_tensors, (size_t) 1), sizeof *a.dtype_at);
        a.shape_at = calloc(MAX(info.n_tensors, (size_t) 1), sizeof *a.shape_at);
        if (!a.strings || !a.tensors || !a.file_offsets || !a.name_at || !a.dtype_at || !a.shape_at)
                return -ENOMEM;

        json = (JsonScan) {
                .text = (const uint8_t *) header,
                .length = length,
                .cancel = cancel,
                .userdata = userdata,
        };
        r = read_header(&a, &json, info.n_tensors, info.data_offset, info.data_length, data);
        if (r == -ECANCELED || r == -ENOMEM)
                return r;
        if (r < 0)
                /* The validator accepted this very text: a reader that
                 * disagrees with it is a bug, said rather than trusted. */
                return set_error(ret_error, -EBADMSG, "the header was accepted by the validator but not by the "
                                 "tensor reader (at byte %zu)", json.pos);
        return list_join(l, &a);
}

static int fail_file(char **ret_error, int r, const char *file) {
        _cleanup_free_ char *detail = NULL;

        if (!ret_error || !*ret_error)
                return r;
        detail = TAKE_PTR(*ret_error);
        return set_error(ret_error, r, "%s: %s", file, detail);
}

int tensor_list_add_mapped(TensorList *l, const void *data, uint64_t length, const char *file,
                           tensor_list_cancel_t cancel, void *userdata, char **ret_error) {
        _cleanup_(json_buffer_free) JsonBuffer copy = {};
        uint64_t n;
        int r;

        assert(l);
        assert(data || length == 0);
        assert(file);

        if (length < SAFETENSORS_PREFIX_SIZE)
                return set_error(ret_error, -EBADMSG, "%s: the file is shorter than the 8 bytes of its header's "
                                 "length.", file);
        memcpy(&n, data, sizeof n);
        n = le64toh(n);
        if (n > SAFETENSORS_HEADER_MAX || n > length - SAFETENSORS_PREFIX_SIZE)
                return set_error(ret_error, -EBADMSG, "%s: the header's length %" PRIu64 " is beyond the file or "
                                 "the limit of %" PRIu64 " bytes.", file, n, SAFETENSORS_HEADER_MAX);

        /* Read from a copy: the mapping is the file's, which may change. */
        if (n > 0) {
                r = json_buffer_resize(&copy, n);
                if (r < 0)
                        return r;
                memcpy(copy.data, (const uint8_t *) data + SAFETENSORS_PREFIX_SIZE, n);
        }
        r = tensor_list_add_header(l, copy.data, n, length, data, cancel, userdata, ret_error);
        if (r == -EBADMSG)
                return fail_file(ret_error, r, file);
        return r;
}

static int pread_full(int fd, void *buffer, size_t n, uint64_t offset) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = pread(fd, (uint8_t *) buffer + done, n - done, (off_t) (offset + done));

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (k == 0)
                        return -EIO;   /* it shrank while it was read */
                done += (size_t) k;
        }
        return 0;
}

int tensor_list_add_fd(TensorList *l, int fd, const char *file, tensor_list_cancel_t cancel, void *userdata,
                       char **ret_error) {
        _cleanup_(json_buffer_free) JsonBuffer copy = {};
        struct stat st;
        uint64_t n, size;
        int r;

        assert(l);
        assert(fd >= 0);
        assert(file);

        if (fstat(fd, &st) < 0)
                return set_error(ret_error, negative_errno(), "Cannot stat %s: %m", file);
        size = (uint64_t) st.st_size;
        if (size < SAFETENSORS_PREFIX_SIZE)
                return set_error(ret_error, -EBADMSG, "%s: the file is shorter than the 8 bytes of its header's "
                                 "length.", file);
        r = pread_full(fd, &n, sizeof n, 0);
        if (r < 0)
                return set_error(ret_error, r, "Cannot read %s: %m", file);
        n = le64toh(n);
        if (n > SAFETENSORS_HEADER_MAX || n > size - SAFETENSORS_PREFIX_SIZE)
                return set_error(ret_error, -EBADMSG, "%s: the header's length %" PRIu64 " is beyond the file or "
                                 "the limit of %" PRIu64 " bytes.", file, n, SAFETENSORS_HEADER_MAX);
        if (n > 0) {
                r = json_buffer_resize(&copy, n);
                if (r < 0)
                        return r;
                r = pread_full(fd, copy.data, n, SAFETENSORS_PREFIX_SIZE);
                if (r < 0)
                        return set_error(ret_error, r, "Cannot read the header of %s: %m", file);
        }

        r = tensor_list_add_header(l, copy.data, n, size, NULL, cancel, userdata, ret_error);
        if (r == -EBADMSG)
                return fail_file(ret_error, r, file);
        return r;
}
