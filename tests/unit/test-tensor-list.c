/* SPDX-License-Identifier: MIT */
/* The lister of safetensors tensors: what it makes of the fixtures'
 * files (the same as the cJSON reader of the tests makes), names with
 * escapes, headers refused, and a header changed under the mapping. */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "bert-fixture.h"

#include "macro.h"
#include "tensor-list.h"

/* The lister's entry i against the reference reader's. */
static void assert_same_tensor(const BertTensor *got, const BertTensor *want, bool with_data) {
        assert_string_equal(got->name, want->name);
        assert_string_equal(got->dtype, want->dtype);
        assert_int_equal(got->n_dims, want->n_dims);
        for (size_t d = 0; d < got->n_dims; d++)
                assert_int_equal(got->shape[d], want->shape[d]);
        assert_int_equal(got->length, want->length);
        if (with_data)
                assert_ptr_equal(got->data, want->data);
        else
                assert_null(got->data);
}

static void test_fixtures(void **state) {
        TensorList all = {};
        size_t before = 0;

        /* All the fixtures into one list, as a sharded model's files are:
         * earlier entries stay valid while later files are added. */
        FixtureTensors reference[ELEMENTSOF(fixtures)];

        for (size_t k = 0; k < ELEMENTSOF(fixtures); k++) {
                _cleanup_free_ char *path = NULL, *error = NULL;
                TensorList from_fd = {};
                int fd;

                assert_true(asprintf(&path, BERT_FIXTURES "/%s/model.safetensors", fixtures[k]) > 0);
                assert_int_equal(fixture_tensors_load(path, &reference[k]), 0);

                assert_int_equal(tensor_list_add_mapped(&all, reference[k].map, reference[k].map_length, path, NULL,
                                                        NULL, &error), 0);
                assert_null(error);
                assert_int_equal(all.n_tensors, before + reference[k].n_tensors);

                fd = open(path, O_RDONLY | O_CLOEXEC);
                assert_true(fd >= 0);
                assert_int_equal(tensor_list_add_fd(&from_fd, fd, path, NULL, NULL, &error), 0);
                close(fd);
                assert_int_equal(from_fd.n_tensors, reference[k].n_tensors);

                for (size_t i = 0; i < reference[k].n_tensors; i++) {
                        /* Header order in both. */
                        assert_same_tensor(&all.tensors[before + i], &reference[k].tensors[i], true);
                        assert_same_tensor(&from_fd.tensors[i], &reference[k].tensors[i], false);
                        assert_int_equal(from_fd.file_offsets[i],
                                         (const uint8_t *) reference[k].tensors[i].data -
                                         (const uint8_t *) reference[k].map);
                        assert_int_equal(all.file_offsets[before + i], from_fd.file_offsets[i]);
                }
                tensor_list_done(&from_fd);
                before = all.n_tensors;
        }

        for (size_t k = 0, at = 0; k < ELEMENTSOF(fixtures); k++) {
                for (size_t i = 0; i < reference[k].n_tensors; i++)
                        assert_same_tensor(&all.tensors[at + i], &reference[k].tensors[i], true);
                at += reference[k].n_tensors;
                fixture_tensors_done(&reference[k]);
        }
        tensor_list_done(&all);
        assert_int_equal(all.n_tensors, 0);
}

/* A file of one header (padded to 8) and data bytes, in memory. */
static char *file_of(const char *header, size_t data_length, size_t *ret_length) {
        size_t n = strlen(header), padded = (n + 7) / 8 * 8;
        uint64_t le = htole64(padded);
        char *f = calloc(1, 8 + padded + data_length + 1);

        assert_non_null(f);
        memcpy(f, &le, 8);
        memcpy(f + 8, header, n);
        memset(f + 8 + n, ' ', padded - n);
        for (size_t i = 0; i < data_length; i++)
                f[8 + padded + i] = (char) i;
        *ret_length = 8 + padded + data_length;
        return f;
}

static void test_escapes(void **state) {
        /* Escaped names, in any order of members, with metadata and a
         * member the validator ignores. */
        const char *header =
                "{\"__metadata__\":{\"format\":\"pt\"},"
                "\"bert.\\u0065mbeddings\":{\"shape\":[2,2],\"extra\":[1,{\"a\":null}],\"dtype\":\"F32\","
                "\"data_offsets\":[0,16]},"
                "\"q\\\"\\\\\\/\\u00e9\\ud83d\\ude00\\n\":{\"data_offsets\":[16,20],\"dtype\":\"F16\",\"shape\":[2]},"
                "\"scalar\":{\"dtype\":\"I8\",\"shape\":[],\"data_offsets\":[20,21]},"
                "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[21,21]}}";
        _cleanup_free_ char *file = NULL, *error = NULL;
        TensorList l = {};
        size_t length, data_at;

        file = file_of(header, 21, &length);
        data_at = length - 21;
        assert_int_equal(tensor_list_add_mapped(&l, file, length, "escapes.safetensors", NULL, NULL, &error), 0);
        assert_int_equal(l.n_tensors, 4);

        assert_string_equal(l.tensors[0].name, "bert.embeddings");
        assert_string_equal(l.tensors[0].dtype, "F32");
        assert_int_equal(l.tensors[0].n_dims, 2);
        assert_int_equal(l.tensors[0].shape[0], 2);
        assert_int_equal(l.tensors[0].shape[1], 2);
        assert_ptr_equal(l.tensors[0].data, file + data_at);
        assert_int_equal(l.tensors[0].length, 16);

        assert_string_equal(l.tensors[1].name, "q\"\\/\xc3\xa9\xf0\x9f\x98\x80\n");
        assert_string_equal(l.tensors[1].dtype, "F16");
        assert_ptr_equal(l.tensors[1].data, file + data_at + 16);
        assert_int_equal(l.tensors[1].length, 4);
        assert_int_equal(l.file_offsets[1], data_at + 16);

        assert_string_equal(l.tensors[2].name, "scalar");
        assert_int_equal(l.tensors[2].n_dims, 0);
        assert_null(l.tensors[2].shape);
        assert_int_equal(l.tensors[2].length, 1);

        assert_int_equal(l.tensors[3].length, 0);
        assert_int_equal(l.tensors[3].shape[0], 0);

        /* The list holds its own copies: the mapping's header may change
         * (a file rewritten in place) without changing what was read. */
        memset(file + 8, 'x', length - 8 - 21);
        assert_string_equal(l.tensors[1].name, "q\"\\/\xc3\xa9\xf0\x9f\x98\x80\n");
        assert_string_equal(l.tensors[0].dtype, "F32");
        tensor_list_done(&l);
}

/* Refused with -EBADMSG, a message naming the file, and the list as it was. */
static void assert_refused(const char *file, size_t length, const char *fact) {
        _cleanup_free_ char *error = NULL;
        TensorList l = {};
        size_t n_ok;
        char *ok;

        /* A valid file first, which must stay. */
        ok = file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &n_ok);
        assert_int_equal(tensor_list_add_mapped(&l, ok, n_ok, "ok.safetensors", NULL, NULL, NULL), 0);

        assert_int_equal(tensor_list_add_mapped(&l, file, length, "bad.safetensors", NULL, NULL, &error), -EBADMSG);
        assert_contains(error, "bad.safetensors: ");
        assert_contains(error, fact);
        assert_int_equal(l.n_tensors, 1);
        assert_string_equal(l.tensors[0].name, "a");
        tensor_list_done(&l);
        free(ok);
}

static void test_refused(void **state) {
        uint64_t huge = htole64(UINT64_C(1) << 40);
        char short_file[7] = {}, *f;
        size_t n;

        assert_refused(short_file, sizeof short_file, "shorter than the 8 bytes");
        f = file_of("{}", 0, &n);
        memcpy(f, &huge, 8);
        assert_refused(f, n, "beyond the file");
        free(f);

        f = file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, &n);
        assert_refused(f, n, "tensor 0");
        free(f);
        /* The data section is longer than the tensors. */
        f = file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, &n);
        assert_refused(f, n, "");
        free(f);
        f = file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, &n);
        assert_refused(f, n, "");
        free(f);
        f = file_of("{\"a\":{\"dtype\":\"X32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &n);
        assert_refused(f, n, "not a known dtype");
        free(f);
        f = file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, &n);
        assert_refused(f, n, "");
        free(f);
        f = file_of("{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, &n);
        assert_refused(f, n, "");
        free(f);
        f = file_of("[]", 0, &n);
        assert_refused(f, n, "");
        free(f);

        /* The header is all that is read: a file of nothing but zeros after
         * a valid header is fine. */
}

static void test_fd_refused(void **state) {
        _cleanup_free_ char *error = NULL, *file = NULL;
        char path[] = "/tmp/test-tensor-list-XXXXXX";
        TensorList l = {};
        size_t n;
        int fd;

        fd = mkstemp(path);
        assert_true(fd >= 0);
        unlink(path);
        file = file_of("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &n);
        assert_int_equal(write(fd, file, n - 1), (ssize_t) n - 1);
        assert_int_equal(tensor_list_add_fd(&l, fd, "cut.safetensors", NULL, NULL, &error), -EBADMSG);
        assert_contains(error, "cut.safetensors: ");
        assert_int_equal(l.n_tensors, 0);

        assert_int_equal(write(fd, file + n - 1, 1), 1);
        free(error);
        error = NULL;
        assert_int_equal(tensor_list_add_fd(&l, fd, "whole.safetensors", NULL, NULL, &error), 0);
        assert_int_equal(l.n_tensors, 1);
        assert_null(l.tensors[0].data);
        assert_int_equal(l.tensors[0].length, 8);
        close(fd);
        tensor_list_done(&l);
}

static bool cancel_always(void *userdata) {
        return true;
}

static void test_cancel(void **state) {
        /* A header of more than a MiB, so that the validator asks. */
        size_t n_tensors = 40000, size = n_tensors * 80 + 64, k = 0, length;
        _cleanup_free_ char *header = malloc(size), *file = NULL;
        TensorList l = {};

        assert_non_null(header);
        k += (size_t) snprintf(header + k, size - k, "{");
        for (size_t i = 0; i < n_tensors; i++)
                k += (size_t) snprintf(header + k, size - k,
                                       "%s\"tensor-%zu\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}",
                                       i ? "," : "", i, i, i + 1);
        snprintf(header + k, size - k, "}");
        file = file_of(header, n_tensors, &length);

        assert_int_equal(tensor_list_add_mapped(&l, file, length, "big.safetensors", cancel_always, NULL, NULL),
                         -ECANCELED);
        assert_int_equal(l.n_tensors, 0);
        assert_int_equal(tensor_list_add_mapped(&l, file, length, "big.safetensors", NULL, NULL, NULL), 0);
        assert_int_equal(l.n_tensors, n_tensors);
        assert_string_equal(l.tensors[n_tensors - 1].name, "tensor-39999");
        tensor_list_done(&l);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fixtures),
                cmocka_unit_test(test_escapes),
                cmocka_unit_test(test_refused),
                cmocka_unit_test(test_fd_refused),
                cmocka_unit_test(test_cancel),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
