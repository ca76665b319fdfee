/* SPDX-License-Identifier: MIT */
#pragma once

/* The BERT fixtures of tests/fixtures/bert/ (written by
 * tests/tools/make-bert-fixtures.py), read for the unit tests: a model
 * folder's files, its safetensors file as the (name, dtype, shape, data)
 * entries bert_model_new() takes, and the expected embeddings. */

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bert.h"
#include "macro.h"
#include "safetensors.h"

#ifndef MPOOL_TESTS_DIR
#error "MPOOL_TESTS_DIR must name the tests/ folder of the source tree"
#endif
#define BERT_FIXTURES MPOOL_TESTS_DIR "/fixtures/bert"

/* The match required of every vector against the reference. */
#define COSINE_MIN 0.99999
#define ABS_ERROR_MAX 1e-4

/* The model folders of BERT_FIXTURES. */
static const char *const fixtures[] _unused_ = {
        "f32-bare",
        "f16-prefix-cls-normalize",
        "bf16-mean-normalize-prompts",
        "f32-prefix-mean",
        "f32-moderate-mean-normalize",
};

static inline void assert_contains(const char *message, const char *fact) {
        if (!message || !strstr(message, fact))
                fail_msg("message \"%s\" does not contain \"%s\"", message ?: "(null)", fact);
}

/* The whole file, NUL-terminated besides its length; -EFBIG beyond max. */
static inline int read_whole_file(const char *path, uint64_t max, char **ret, size_t *ret_length) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        _cleanup_free_ char *text = NULL;
        struct stat st;
        ssize_t n;

        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if ((uint64_t) st.st_size > max)
                return -EFBIG;
        text = malloc(st.st_size + 1);
        if (!text)
                return -ENOMEM;
        n = read(fd, text, st.st_size);
        if (n != st.st_size)
                return n < 0 ? negative_errno() : -EIO;
        text[n] = '\0';
        *ret = TAKE_PTR(text);
        *ret_length = (size_t) n;
        return 0;
}

/* An st_read_file_t for the folder named by userdata. */
static inline int read_folder_file(const char *path, uint64_t max_size, char **ret_text, size_t *ret_length,
                                   void *userdata, char **ret_error) {
        _cleanup_free_ char *full = NULL;

        if (asprintf(&full, "%s/%s", (const char *) userdata, path) < 0)
                return -ENOMEM;
        return read_whole_file(full, max_size, ret_text, ret_length);
}

/* A safetensors file mapped, with its tensors as entries. */
typedef struct FixtureTensors {
        void *map;
        size_t map_length;
        BertTensor *tensors;
        size_t n_tensors;
} FixtureTensors;

static inline void fixture_tensors_done(FixtureTensors *t) {
        for (size_t i = 0; i < t->n_tensors; i++) {
                free((char *) t->tensors[i].name);
                free((char *) t->tensors[i].dtype);
                free((uint64_t *) t->tensors[i].shape);
        }
        free(t->tensors);
        if (t->map)
                munmap(t->map, t->map_length);
        *t = (FixtureTensors) {};
}

/* Maps the file, validates its header with the daemon's validator, then
 * reads the (valid, small) header with cJSON into entries. */
static inline int fixture_tensors_load(const char *path, FixtureTensors *ret) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        FixtureTensors t = {};
        struct stat st;
        uint64_t header_length;
        const uint8_t *data;
        cJSON *header, *entry;
        int r;

        if (fd < 0 || fstat(fd, &st) < 0)
                return negative_errno();
        r = safetensors_validate_fd(fd, NULL, NULL, NULL, NULL);
        if (r < 0)
                return r;
        t.map_length = st.st_size;
        t.map = mmap(NULL, t.map_length, PROT_READ, MAP_PRIVATE, fd, 0);
        if (t.map == MAP_FAILED)
                return negative_errno();

        memcpy(&header_length, t.map, sizeof header_length);
        header_length = le64toh(header_length);
        data = (const uint8_t *) t.map + SAFETENSORS_PREFIX_SIZE + header_length;
        header = cJSON_ParseWithLength((const char *) t.map + SAFETENSORS_PREFIX_SIZE, header_length);
        if (!header) {
                munmap(t.map, t.map_length);
                return -EBADMSG;
        }

        t.tensors = calloc(cJSON_GetArraySize(header) + 1, sizeof *t.tensors);
        cJSON_ArrayForEach(entry, header) {
                BertTensor *b = &t.tensors[t.n_tensors];
                const cJSON *shape = cJSON_GetObjectItem(entry, "shape");
                const cJSON *offsets = cJSON_GetObjectItem(entry, "data_offsets");
                uint64_t *dims, begin, end;
                size_t n = 0;
                const cJSON *d;

                if (strcmp(entry->string, "__metadata__") == 0)
                        continue;
                dims = calloc(cJSON_GetArraySize(shape) + 1, sizeof *dims);
                cJSON_ArrayForEach(d, shape)
                        dims[n++] = (uint64_t) d->valuedouble;
                begin = (uint64_t) cJSON_GetArrayItem(offsets, 0)->valuedouble;
                end = (uint64_t) cJSON_GetArrayItem(offsets, 1)->valuedouble;
                *b = (BertTensor) {
                        .name = strdup(entry->string),
                        .dtype = strdup(cJSON_GetObjectItem(entry, "dtype")->valuestring),
                        .shape = dims,
                        .n_dims = n,
                        .data = data + begin,
                        .length = end - begin,
                };
                t.n_tensors++;
        }
        cJSON_Delete(header);
        *ret = t;
        return 0;
}

/* The index of the tensor of that name, or -1. */
static inline ssize_t fixture_tensor_find(const FixtureTensors *t, const char *name) {
        for (size_t i = 0; i < t->n_tensors; i++)
                if (strcmp(t->tensors[i].name, name) == 0)
                        return (ssize_t) i;
        return -1;
}
