/* SPDX-License-Identifier: MIT */

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-memory.h"

#include "macro.h"
#include "safetensors.h"

static char temp_dir[] = "/tmp/test-safetensors-XXXXXX";

/* Validates json as the header of a file with data_length data bytes. */
static int validate(const char *json, uint64_t data_length, SafetensorsInfo *ret_info, char **ret_error) {
        size_t n = strlen(json);

        return safetensors_validate_header(json, n, SAFETENSORS_PREFIX_SIZE + n + data_length, NULL, NULL, ret_info,
                                           ret_error);
}

static void assert_contains(const char *message, const char *fact) {
        if (!strstr(message, fact))
                fail_msg("message \"%s\" does not contain \"%s\"", message, fact);
}

/* The header must be refused with -EBADMSG and a message naming each fact
 * (the second may be NULL). */
static void assert_invalid(const char *json, uint64_t data_length, const char *fact, const char *other_fact) {
        _cleanup_free_ char *error = NULL;
        SafetensorsInfo info = { .n_tensors = 12345 };

        assert_int_equal(validate(json, data_length, &info, &error), -EBADMSG);
        assert_non_null(error);
        assert_contains(error, fact);
        if (other_fact)
                assert_contains(error, other_fact);
        /* Output parameters are left alone on failure. */
        assert_int_equal(info.n_tensors, 12345);

        /* Without a place for the message, the verdict is the same. */
        assert_int_equal(validate(json, data_length, NULL, NULL), -EBADMSG);
}

static void assert_valid(const char *json, uint64_t data_length, size_t n_tensors) {
        _cleanup_free_ char *error = NULL;
        SafetensorsInfo info = {};
        size_t n = strlen(json);
        int r;

        r = validate(json, data_length, &info, &error);
        if (r != 0)
                fail_msg("header %s refused (%d): %s", json, r, strempty(error));
        assert_null(error);
        assert_int_equal(info.header_length, n);
        assert_int_equal(info.data_offset, SAFETENSORS_PREFIX_SIZE + n);
        assert_int_equal(info.data_length, data_length);
        assert_int_equal(info.n_tensors, n_tensors);

        assert_int_equal(validate(json, data_length, NULL, NULL), 0);
}

/* Writes prefix, header and data_length zero bytes to name in temp_dir and
 * returns it opened for reading. */
static int write_file(const char *name, uint64_t prefix, const char *header, size_t header_length,
                      uint64_t data_length) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int write_fd = -1;
        uint64_t le = htole64(prefix);
        int fd;

        assert_true(asprintf(&path, "%s/%s", temp_dir, name) >= 0);

        write_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(write_fd >= 0);
        assert_int_equal(write(write_fd, &le, sizeof le), (ssize_t) sizeof le);
        if (header_length > 0)
                assert_int_equal(write(write_fd, header, header_length), (ssize_t) header_length);
        if (data_length > 0)
                assert_int_equal(ftruncate(write_fd, (off_t) (sizeof le + header_length + data_length)), 0);

        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        return fd;
}

/* A file whose prefix states the header's true length. */
static int write_model(const char *name, const char *header, uint64_t data_length) {
        return write_file(name, strlen(header), header, strlen(header), data_length);
}

static int setup_temp_dir(void **state) {
        return mkdtemp(temp_dir) ? 0 : -1;
}

static int remove_temp_dir(void **state) {
        DIR *d = opendir(temp_dir);
        struct dirent *de;

        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
        return rmdir(temp_dir);
}

/* ---- valid headers ---- */

static void test_one_tensor(void **state) {
        assert_valid("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, 1);
        /* A scalar: no dimensions, one element. */
        assert_valid("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, 1);
        /* Member order inside a tensor does not matter. */
        assert_valid("{\"w\":{\"data_offsets\":[0,4],\"shape\":[2],\"dtype\":\"BF16\"}}", 4, 1);
}

static void test_many_tensors(void **state) {
        /* Key order need not follow the offsets: the reference sorts. */
        assert_valid("{\"c\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[12,15]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                     "\"b\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[8,12]}}",
                     15, 3);

        /* Zero-sized tensors may share an offset with each other and with
         * the next tensor. */
        assert_valid("{\"e1\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[0,0]},"
                     "\"e2\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[0,0]},"
                     "\"x\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                     "\"e3\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[8,8]}}",
                     8, 4);
}

static void test_many_tensors_built(void **state) {
        static const char *const dtype_names[] = {
                "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
                "I32", "U32", "F32", "F64", "I64", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2",
        };
        enum { N = 1000 };
        SafetensorsTensorSpec specs[N];
        uint64_t shapes[N][3], expected_data = 0, data_length = 0;
        char names[N][32];
        _cleanup_free_ char *json = NULL, *error = NULL;
        SafetensorsInfo info = {};
        _cleanup_close_ int fd = -1;

        for (size_t i = 0; i < N; i++) {
                const char *dtype = dtype_names[i % ELEMENTSOF(dtype_names)];

                snprintf(names[i], sizeof names[i], "model.layers.%zu.weight", i);
                /* 4 × 2 × k elements: whole bytes even for 4- and 6-bit types. */
                shapes[i][0] = 4;
                shapes[i][1] = 2;
                shapes[i][2] = i % 7;
                specs[i] = (SafetensorsTensorSpec) {
                        .name = names[i],
                        .dtype = dtype,
                        .shape = shapes[i],
                        .n_dims = 3,
                };
                expected_data += 8 * (i % 7) * safetensors_dtype_bits(dtype) / 8;
        }

        assert_int_equal(safetensors_build_header(specs, N, &json, &data_length), 0);
        assert_int_equal(data_length, expected_data);
        assert_int_equal(strlen(json) % 8, 0);

        assert_valid(json, data_length, N);

        fd = write_model("many.safetensors", json, data_length);
        assert_int_equal(safetensors_validate_fd(fd, NULL, NULL, &info, &error), 0);
        assert_null(error);
        assert_int_equal(info.n_tensors, N);
        assert_int_equal(info.header_length, strlen(json));
        assert_int_equal(info.data_offset, 8 + strlen(json));
        assert_int_equal(info.data_length, data_length);
}

static void test_zero_tensors(void **state) {
        assert_valid("{}", 0, 0);
        /* Padding as the reference writer leaves it, and other whitespace. */
        assert_valid("{}      ", 0, 0);
        assert_valid(" \n{ }\t\r\n ", 0, 0);
        assert_valid("{\"__metadata__\":{\"format\":\"pt\"}}", 0, 0);
}

static void test_metadata(void **state) {
        assert_valid("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"h\\u00e9llo \\\"q\\\"\"},"
                     "\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
                     4, 1);
        assert_valid("{\"__metadata__\":{},\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 1);
        /* The reference reads null as no metadata. */
        assert_valid("{\"__metadata__\":null}", 0, 0);
}

static void test_sub_byte_dtypes(void **state) {
        /* 6 elements of 4 bits = 3 bytes. */
        assert_valid("{\"q\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[0,3]}}", 3, 1);
        /* 4 elements of 6 bits = 3 bytes. */
        assert_valid("{\"q\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[0,3]}}", 3, 1);
        assert_valid("{\"q\":{\"dtype\":\"F6_E3M2\",\"shape\":[2,2],\"data_offsets\":[0,3]}}", 3, 1);
}

static void test_unknown_tensor_fields_ignored(void **state) {
        /* The reference's TensorInfo does not deny unknown fields. */
        assert_valid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[{\"x\":1}]}}", 1, 1);
}

static void test_dtype_bits(void **state) {
        assert_int_equal(safetensors_dtype_bits("F32"), 32);
        assert_int_equal(safetensors_dtype_bits("C64"), 64);
        assert_int_equal(safetensors_dtype_bits("F8_E8M0"), 8);
        assert_int_equal(safetensors_dtype_bits("F6_E3M2"), 6);
        assert_int_equal(safetensors_dtype_bits("F4"), 4);
        assert_int_equal(safetensors_dtype_bits("f32"), 0);
        assert_int_equal(safetensors_dtype_bits("F17"), 0);
        assert_int_equal(safetensors_dtype_bits(NULL), 0);
}

/* ---- malformed headers ---- */

static void test_header_length_bounds(void **state) {
        _cleanup_free_ char *error = NULL;
        char *error2 = NULL;

        /* The length must fit in the file after the 8-byte prefix. */
        assert_int_equal(safetensors_validate_header("{}", 2, 9, NULL, NULL, NULL, &error), -EBADMSG);
        assert_string_equal(error, "header length 2 exceeds the file size 9");
        assert_int_equal(safetensors_validate_header("{}", 2, 4, NULL, NULL, NULL, &error2), -EBADMSG);
        assert_contains(error2, "exceeds the file size 4");
        free(error2);
        error2 = NULL;

        assert_int_equal(safetensors_validate_header("", 0, 8, NULL, NULL, NULL, &error2), -EBADMSG);
        assert_contains(error2, "the header is empty");
        free(error2);
}

static void test_not_json(void **state) {
        assert_invalid("{\"a\": ", 0, "not valid JSON: the end of the header where a value must be at header byte 6",
                       NULL);
        assert_invalid("{\"a\":{\"dtype\":\"U8\",}}", 0,
                       "not valid JSON: something other than a member name in an object at header byte 19", NULL);
        assert_invalid("nonsense", 0, "not valid JSON: something other than a JSON value at header byte 0", NULL);
        /* Something after the object other than whitespace. */
        assert_invalid("{} x", 0, "more than whitespace after its JSON value, from header byte 3", NULL);
        assert_invalid("{}{}", 0, "after its JSON value", NULL);
        /* What JSON does not allow, though some parsers let it through. */
        assert_invalid("{}\v", 0, "control character at header byte 2", NULL);
        assert_invalid("\x01{}", 0, "control character at header byte 0", NULL);
        assert_invalid("{\"a\tb\":{}}", 0, "raw control character inside a string at header byte 3", NULL);
        assert_invalid("{\"\xff\":{}}", 0, "not valid UTF-8", "header byte 2");
        assert_invalid("{\"\xc0\x80\":{}}", 0, "not valid UTF-8", NULL);
        assert_invalid("{\"\xed\xa0\x80\":{}}", 0, "not valid UTF-8", NULL);
        assert_invalid("\xef\xbb\xbf{}", 0, "byte order mark", NULL);
        assert_invalid("{\"a\\u0000b\":{}}", 0, "NUL character", "header byte 3");
}

static void test_not_object(void **state) {
        assert_invalid("[1, 2]", 0, "the header is an array, not a JSON object", NULL);
        assert_invalid("\"x\"", 0, "the header is a string, not a JSON object", NULL);
        assert_invalid("42", 0, "the header is a number, not a JSON object", NULL);
        assert_invalid("null", 0, "the header is null, not a JSON object", NULL);
}

static void test_json_syntax(void **state) {
        char deep[512];
        size_t n = 0;

        assert_invalid("{\"a", 0, "not valid JSON: a string that is not closed begins at header byte 1", NULL);
        assert_invalid("{\"a\":\"x\\q\"}", 0, "an invalid escape sequence in a string at header byte 7", NULL);
        assert_invalid("{\"a\\u12\":1}", 0, "invalid escape sequence", NULL);
        assert_invalid("{\"\\ud800\":1}", 0, "an unpaired UTF-16 surrogate escape", NULL);
        assert_invalid("{\"\\udc00\\ud800\":1}", 0, "an unpaired UTF-16 surrogate escape", NULL);
        assert_invalid("{\"\\ud800\\u0041\":1}", 0, "an unpaired UTF-16 surrogate escape", NULL);
        assert_invalid("{\"a\":01}", 0, "a missing ',' or '}' in an object at header byte 6", NULL);
        assert_invalid("{\"a\":1.}", 0, "without digits after its decimal point", NULL);
        assert_invalid("{\"a\":-}", 0, "a number without digits at header byte 6", NULL);
        assert_invalid("{\"a\":1e}", 0, "without digits in its exponent", NULL);
        assert_invalid("{\"a\":+1}", 0, "something other than a JSON value at header byte 5", NULL);
        assert_invalid("{\"a\":.5}", 0, "something other than a JSON value", NULL);
        assert_invalid("{\"a\":tru}", 0, "something other than a JSON value", NULL);
        assert_invalid("{\"a\":nul}", 0, "something other than a JSON value", NULL);
        assert_invalid("{\"a\":[1,]}", 0, "something other than a JSON value at header byte 8", NULL);
        assert_invalid("{\"a\":[1 2]}", 0, "a missing ',' or ']' in an array at header byte 8", NULL);
        assert_invalid("{\"a\" 1}", 0, "a missing ':' after a member name at header byte 5", NULL);
        assert_invalid("{,}", 0, "something other than a member name", NULL);
        assert_invalid("{\"a\":1,}", 0, "something other than a member name in an object at header byte 7", NULL);
        assert_invalid("{\"a\":{}", 0, "a missing ',' or '}' in an object at header byte 7", NULL);
        assert_invalid("[", 0, "the end of the header where a value must be", NULL);
        assert_invalid("   ", 0, "the end of the header where a value must be at header byte 3", NULL);
        /* Broken JSON is reported before what is wrong with the tensors. */
        assert_invalid("{\"w\":5,", 0, "not valid JSON", NULL);
        assert_invalid("{\"w\":5} x", 0, "after its JSON value", NULL);

        /* 127 arrays and objects nested are taken, as by the reference; a
         * 128th is not. The tensor is 2 deep: the ignored value may add 125. */
        n += (size_t) snprintf(deep + n, sizeof deep - n, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":");
        for (int i = 0; i < 125; i++)
                deep[n++] = '[';
        for (int i = 0; i < 125; i++)
                deep[n++] = ']';
        snprintf(deep + n, sizeof deep - n, "}}");
        assert_valid(deep, 1, 1);
        n -= 125;
        memmove(deep + n + 1, deep + n, 125);
        deep[n] = '[';
        n += 126;
        deep[n++] = ']';
        snprintf(deep + n, sizeof deep - n, "}}");
        assert_invalid(deep, 1, "arrays and objects nested more than 127 deep at header byte 181", NULL);
}

static void test_escapes_and_whitespace(void **state) {
        /* Every escape JSON has, in a name and in metadata. */
        assert_valid("{\"__metadata__\":{\"k\\n\\u00e9\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"},"
                     "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                     1, 1);
        /* Member names and dtypes mean what they decode to. */
        assert_valid("{\"w\":{\"d\\u0074ype\":\"F\\u00332\",\"sh\\u0061pe\":[1],\"data_\\u006fffsets\":[0,4]}}", 4, 1);
        assert_valid("{\"__m\\u0065tadata__\":{\"a\":\"b\"}}", 0, 0);
        assert_valid("{\"__metadata__\":null,\"a\\u00e9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"a\\u00e8\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                     2, 2);
        /* Whitespace wherever JSON allows it. */
        assert_valid(" {\n\t\"w\" :\r{ \"dtype\" : \"U8\" , \"shape\" : [ 1 , 2 ] , \"data_offsets\" : [ 0 , 2 ] } } \n", 2, 1);
        /* Ignored members of any kind, numbers of any form included. */
        assert_valid("{\"w\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],"
                     "\"x\":{\"a\":[true,false,null,-0,-1.5e-3,1E+2,0.0e-0,\"s\",{},[]]}}}",
                     1, 1);
}

static void test_tensor_not_object(void **state) {
        assert_invalid("{\"w\":5}", 0, "tensor 0 (at header byte 1) is a number, not an object", NULL);
        assert_invalid("{\"w\":[0,4]}", 4, "tensor 0 (at header byte 1) is an array, not an object", NULL);
        assert_invalid("{\"w\":\"F32\"}", 0, "tensor 0 (at header byte 1) is a string, not an object", NULL);
        /* Counted in header order, __metadata__ aside. */
        assert_invalid("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"__metadata__\":{},\"b\":null}",
                       1, "tensor 1 (at header byte 71) is null, not an object", NULL);
}

static void test_dtype(void **state) {
        assert_invalid("{\"w\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                       "tensor 0 (at header byte 1): \"dtype\" is not a known dtype", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not a known dtype",
                       NULL);
        assert_invalid("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                       "tensor 0 (at header byte 1): \"dtype\" is a number, not a string", NULL);
        assert_invalid("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 0 (at header byte 1) has no \"dtype\"",
                       NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                       "tensor 0 (at header byte 1) has \"dtype\" more than once", NULL);
        /* Member names are compared as JSON means them, escapes decoded. */
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"dty\\u0070e\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                       "has \"dtype\" more than once", NULL);
}

static void test_shape(void **state) {
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "tensor 0 (at header byte 1) has no \"shape\"",
                       NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":\"1\",\"data_offsets\":[0,1]}}", 1,
                       "\"shape\" is a string, not an array", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":{},\"data_offsets\":[0,1]}}", 1,
                       "\"shape\" is an object, not an array", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1,\"2\"],\"data_offsets\":[0,2]}}", 2,
                       "tensor 0 (at header byte 1): shape dimension 1 is a string, not a whole number", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[null],\"data_offsets\":[0,1]}}", 1,
                       "shape dimension 0 is null", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}", 0,
                       "tensor 0 (at header byte 1): shape dimension 1 is a negative number, not a whole number from 0 "
                       "to 2^53", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[2.5],\"data_offsets\":[0,2]}}", 2,
                       "shape dimension 0 is a number with a fraction or an exponent, not a whole number", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,2]}}", 2,
                       "shape dimension 0 is a number with a fraction or an exponent", NULL);
        /* The reference reads these as floats, and refuses them too. */
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 2,
                       "shape dimension 0 is a number with a fraction or an exponent", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[2E0],\"data_offsets\":[0,2]}}", 2,
                       "shape dimension 0 is a number with a fraction or an exponent", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[-0],\"data_offsets\":[0,1]}}", 1,
                       "shape dimension 0 is a negative number", NULL);
        /* Beyond 2^53, which no file needs. */
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0,9007199254740993],\"data_offsets\":[0,0]}}", 0,
                       "shape dimension 1 is a whole number above 2^53", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0,123456789012345678901234567890],\"data_offsets\":[0,0]}}",
                       0, "shape dimension 1 is a whole number above 2^53", NULL);
        assert_valid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0,9007199254740992],\"data_offsets\":[0,0]}}", 0, 1);
}

static void test_too_many_dims(void **state) {
        char json[512];
        int n;

        n = snprintf(json, sizeof json, "{\"w\":{\"dtype\":\"U8\",\"shape\":[");
        for (int i = 0; i < SAFETENSORS_DIMS_MAX; i++)
                n += snprintf(json + n, sizeof json - (size_t) n, "1,");
        snprintf(json + n, sizeof json - (size_t) n, "1],\"data_offsets\":[0,1]}}");
        assert_invalid(json, 1, "\"shape\" has more than 64 dimensions", NULL);

        /* Exactly 64 is fine. */
        n = snprintf(json, sizeof json, "{\"w\":{\"dtype\":\"U8\",\"shape\":[");
        for (int i = 0; i < SAFETENSORS_DIMS_MAX - 1; i++)
                n += snprintf(json + n, sizeof json - (size_t) n, "1,");
        snprintf(json + n, sizeof json - (size_t) n, "1],\"data_offsets\":[0,1]}}");
        assert_valid(json, 1, 1);
}

static void test_data_offsets(void **state) {
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "tensor 0 (at header byte 1) has no \"data_offsets\"",
                       NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":1}}", 1,
                       "\"data_offsets\" is a number, not an array [begin, end]", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
                       "\"data_offsets\" has 1 element, not 2", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[]}}", 1,
                       "\"data_offsets\" has 0 elements, not 2", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 2,
                       "\"data_offsets\" has more than 2 elements", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
                       "data_offsets begin is a negative number, not a whole number", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,0.5]}}", 1,
                       "data_offsets end is a number with a fraction or an exponent, not a whole number", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,\"1\"]}}", 1,
                       "data_offsets end is a string", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,18446744073709551615]}}", 0,
                       "data_offsets end is a whole number above 2^53, not a whole number from 0 to 2^53", NULL);
}

static void test_begin_after_end(void **state) {
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                       "tensor 0 (at header byte 1): data_offsets [8, 4] end before they begin", NULL);
}

static void test_size_mismatch(void **state) {
        _cleanup_free_ char *error = NULL;

        assert_int_equal(validate("{\"layer.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}",
                                  20, NULL, &error),
                         -EBADMSG);
        assert_string_equal(error,
                            "tensor 0 (at header byte 1): shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20");

        assert_invalid("{\"w\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
                       "shape [] of F16 needs 2 bytes but data_offsets [0, 4] span 4", NULL);
        assert_invalid("{\"w\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
                       "shape [4] of F4 needs 2 bytes", NULL);
}

static void test_sub_byte_not_whole_bytes(void **state) {
        assert_invalid("{\"q\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2,
                       "tensor 0 (at header byte 1): shape [3] of F4 is 3 elements of 4 bits, not a whole number of bytes",
                       NULL);
        assert_invalid("{\"q\":{\"dtype\":\"F6_E2M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                       "shape [2] of F6_E2M3 is 2 elements of 6 bits", NULL);
}

static void test_shape_overflow(void **state) {
        /* 2^40 × 2^30 elements overflow before any byte count. */
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1073741824],\"data_offsets\":[0,0]}}", 0,
                       "tensor 0 (at header byte 1): shape [1099511627776, 1073741824] of U8 has more bits than fit in 64 "
                       "bits",
                       NULL);
        /* 2^62 elements fit, their 2^68 bits do not. */
        assert_invalid("{\"w\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,0]}}", 0,
                       "shape [2147483648, 2147483648] of F64 has more bits than fit in 64 bits", NULL);
        /* As in the reference, overflow is checked in shape order, so a
         * zero dimension after the overflow does not save it... */
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[1099511627776,1073741824,0],\"data_offsets\":[0,0]}}", 0,
                       "more bits than fit in 64 bits", NULL);
        /* ...but one before it does. */
        assert_valid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0,1099511627776,1073741824],\"data_offsets\":[0,0]}}", 0, 1);
}

static void test_gap(void **state) {
        assert_invalid("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                       12, "data section bytes [4, 8) belong to no tensor",
                       "between tensor 0 (at header byte 1) at data_offsets [0, 4] and tensor 1 (at header byte 54) at "
                       "data_offsets [8, 12]");
}

static void test_overlap(void **state) {
        assert_invalid("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                       12,
                       "tensor 1 (at header byte 54) at data_offsets [4, 12] overlaps tensor 0 (at header byte 1) at "
                       "data_offsets [0, 8]",
                       NULL);
        /* The same range twice. */
        assert_invalid("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}",
                       8, "overlaps tensor", NULL);
}

static void test_not_starting_at_zero(void **state) {
        assert_invalid("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                       "data section bytes [0, 4) belong to no tensor",
                       "tensor 0 (at header byte 1), the first in the data, has data_offsets [4, 8], but data must start "
                       "at 0");
}

static void test_data_not_ending_at_eof(void **state) {
        const char *json = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";

        assert_invalid(json, 15, "the file is truncated: tensor 0 (at header byte 1) ends at data offset 16",
                       "holds only 15 bytes");
        assert_invalid(json, 0, "truncated", "holds only 0 bytes");
        assert_invalid(json, 20, "4 trailing bytes after the last tensor in the data, tensor 0 (at header byte 1)",
                       "end at data offset 16 but the data section after the header holds 20 bytes");
        assert_invalid("{}", 16, "the header describes no tensors but 16 data bytes follow it", NULL);
        assert_invalid("{\"__metadata__\":{\"a\":\"b\"}}", 1, "describes no tensors but 1 data bytes", NULL);
}

static void test_metadata_not_string_map(void **state) {
        assert_invalid("{\"__metadata__\":{\"format\":1}}", 0,
                       "\"__metadata__\" entry 0 (at header byte 17) is a number, not a string", NULL);
        assert_invalid("{\"__metadata__\":{\"a\":\"b\",\"nested\":{\"x\":\"y\"}}}", 0,
                       "entry 1 (at header byte 25) is an object, not a string", NULL);
        assert_invalid("{\"__metadata__\":{},\"__meta\\u0064ata__\":{}}", 0, "\"__metadata__\" more than once", NULL);
        assert_invalid("{\"__metadata__\":[\"a\"]}", 0, "\"__metadata__\" is an array, not an object of strings",
                       NULL);
        assert_invalid("{\"__metadata__\":\"pt\"}", 0, "\"__metadata__\" is a string", NULL);
        assert_invalid("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "\"__metadata__\" more than once", NULL);
}

static void test_duplicate_tensor(void **state) {
        assert_invalid("{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                       "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                       1, "tensor 1 (at header byte 53) has the same name as tensor 0 (at header byte 1)", NULL);
        /* Names are compared as JSON means them, escapes decoded. */
        assert_invalid("{\"w\\u00e9\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                       "\"w\u00e9\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                       1, "tensor 1 (at header byte 59) has the same name as tensor 0 (at header byte 1)", NULL);
        assert_invalid("{\"\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                       "\"\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                       1, "has the same name as tensor 0", NULL);
        assert_invalid("{\"\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                       "\"\xf0\x9f\x98\x80\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                       1, "has the same name as tensor 0", NULL);
        assert_invalid("{\"a\\/b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                       "\"a/b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                       1, "has the same name as tensor 0", NULL);
}

/* Messages are shown to every local user; model files may be private. So
 * no message may hold a byte of the header: planted in every place a reader
 * might quote from, this string must never come back. */
#define SECRET "s3cr3t-Planted"

static void assert_invalid_without_secret(const char *json, uint64_t data_length, const char *fact) {
        _cleanup_free_ char *error = NULL;

        assert_int_equal(validate(json, data_length, NULL, &error), -EBADMSG);
        assert_non_null(error);
        assert_contains(error, fact);
        if (strstr(error, SECRET) || strstr(error, "s3cr3t") || strstr(error, "Planted"))
                fail_msg("message \"%s\" quotes the header", error);
}

static void test_messages_never_quote_the_header(void **state) {
        _cleanup_free_ char *json = NULL, *long_name = NULL;

        /* Tensor names, in every message that names a tensor. */
        assert_invalid_without_secret("{\"" SECRET "\":5}", 0, "tensor 0 (at header byte 1) is a number");
        assert_invalid_without_secret("{\"" SECRET "\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "has no \"dtype\"");
        assert_invalid_without_secret("{\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
                                      "needs 1 bytes");
        assert_invalid_without_secret("{\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 2,
                                      "trailing bytes");
        assert_invalid_without_secret("{\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 0,
                                      "truncated");
        assert_invalid_without_secret("{\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                                      "belong to no tensor");
        assert_invalid_without_secret("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                      "\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
                                      3, "gap between");
        assert_invalid_without_secret("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                                      "\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                                      2, "overlaps");
        assert_invalid_without_secret("{\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                                      "\"" SECRET "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                                      1, "the same name");
        /* Quotes and control characters in a name, which a message quoting
         * it would have to escape. */
        assert_invalid_without_secret("{\"" SECRET "\\\"\\n\":5}", 0, "tensor 0 (at header byte 1) is a number");

        /* A name over the limit: not even its start. */
        long_name = malloc(SAFETENSORS_NAME_MAX + 2);
        assert_non_null(long_name);
        memset(long_name, 'n', SAFETENSORS_NAME_MAX + 1);
        memcpy(long_name, SECRET, strlen(SECRET));
        long_name[SAFETENSORS_NAME_MAX + 1] = '\0';
        assert_true(asprintf(&json, "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", long_name) >= 0);
        assert_invalid_without_secret(json, 1, "its name is 4097 bytes long, more than the limit of 4096");

        /* Strings where a dtype should be. */
        assert_invalid_without_secret("{\"w\":{\"dtype\":\"" SECRET "\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                                      "\"dtype\" is not a known dtype");

        /* Metadata: names and values. */
        assert_invalid_without_secret("{\"__metadata__\":{\"" SECRET "\":1}}", 0, "entry 0 (at header byte 17)");
        assert_invalid_without_secret("{\"__metadata__\":{\"a\":\"" SECRET "\",\"b\":[]}}", 0, "entry 1");

        /* Text around broken JSON, and after the object. */
        assert_invalid_without_secret("{\"w\": " SECRET "}", 0, "not valid JSON");
        assert_invalid_without_secret("{\"" SECRET "\" 1}", 0, "not valid JSON");
        assert_invalid_without_secret("{} " SECRET, 0, "after its JSON value");
        assert_invalid_without_secret("{\"" SECRET "\\x\":1}", 0, "invalid escape");
        assert_invalid_without_secret("{\"" SECRET "\xff\":1}", 0, "not valid UTF-8");
        assert_invalid_without_secret("{\"" SECRET "\x01\":1}", 0, "control character");
}

/* ---- the fd variant ---- */

static void test_fd_valid(void **state) {
        const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                             "\"w\":{\"dtype\":\"BF16\",\"shape\":[3,5],\"data_offsets\":[0,30]}}  ";
        _cleanup_free_ char *error = NULL;
        _cleanup_close_ int fd = -1;
        SafetensorsInfo info = {};

        fd = write_model("good.safetensors", header, 30);
        assert_int_equal(safetensors_validate_fd(fd, NULL, NULL, &info, &error), 0);
        assert_null(error);
        assert_int_equal(info.header_length, strlen(header));
        assert_int_equal(info.data_offset, 8 + strlen(header));
        assert_int_equal(info.data_length, 30);
        assert_int_equal(info.n_tensors, 1);

        /* The file offset plays no part. */
        assert_int_equal(lseek(fd, 17, SEEK_SET), 17);
        assert_int_equal(safetensors_validate_fd(fd, NULL, NULL, NULL, NULL), 0);
        assert_int_equal(lseek(fd, 0, SEEK_CUR), 17);
}

static void assert_fd_invalid(int fd, int expected, const char *fact, const char *other_fact) {
        _cleanup_free_ char *error = NULL;
        SafetensorsInfo info = { .n_tensors = 777 };

        assert_int_equal(safetensors_validate_fd(fd, NULL, NULL, &info, &error), expected);
        assert_non_null(error);
        assert_contains(error, fact);
        if (other_fact)
                assert_contains(error, other_fact);
        assert_int_equal(info.n_tensors, 777);
}

static void test_fd_too_short(void **state) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int wfd = -1;

        assert_true(asprintf(&path, "%s/short.safetensors", temp_dir) >= 0);
        wfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(wfd >= 0);
        assert_int_equal(write(wfd, "\x02\0\0\0\0", 5), 5);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);

        assert_fd_invalid(fd, -EBADMSG, "the file is 5 bytes, too short for the 8-byte header length", NULL);

        /* Empty, too. */
        assert_int_equal(ftruncate(wfd, 0), 0);
        assert_fd_invalid(fd, -EBADMSG, "the file is 0 bytes", NULL);
}

static void test_fd_header_beyond_file(void **state) {
        _cleanup_close_ int fd = -1;

        /* 8 + 2 + 90 = 100 bytes, claiming a header of 4096. */
        fd = write_file("beyond.safetensors", 4096, "{}", 2, 90);
        assert_fd_invalid(fd, -EBADMSG, "header length 4096 exceeds the file size 100", NULL);
}

static void test_fd_header_over_limit(void **state) {
        _cleanup_close_ int fd = -1, fd_max = -1;

        /* Refused before any allocation, whatever the file size. */
        fd = write_file("huge.safetensors", 100000001, "{}", 2, 0);
        assert_fd_invalid(fd, -EBADMSG, "header length 100000001 exceeds the limit of 100000000 bytes", NULL);

        fd_max = write_file("max.safetensors", UINT64_MAX, "{}", 2, 0);
        assert_fd_invalid(fd_max, -EBADMSG, "header length 18446744073709551615 exceeds the limit", NULL);
}

static void test_fd_data_not_ending_at_eof(void **state) {
        const char *header = "{\"w\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
        _cleanup_close_ int fd_short = -1, fd_long = -1, fd_ok = -1;

        fd_short = write_model("truncated.safetensors", header, 12);
        assert_fd_invalid(fd_short, -EBADMSG, "the file is truncated: tensor 0 (at header byte 1) ends at data offset 16",
                          "holds only 12 bytes");

        fd_long = write_model("trailing.safetensors", header, 17);
        assert_fd_invalid(fd_long, -EBADMSG, "1 trailing bytes after the last tensor in the data", NULL);

        fd_ok = write_model("exact.safetensors", header, 16);
        assert_int_equal(safetensors_validate_fd(fd_ok, NULL, NULL, NULL, NULL), 0);
}

static void test_fd_bad_header(void **state) {
        _cleanup_close_ int fd_json = -1, fd_size = -1, fd_cut = -1;

        fd_json = write_model("notjson.safetensors", "{\"w\":", 0);
        assert_fd_invalid(fd_json, -EBADMSG, "not valid JSON", NULL);

        fd_size = write_model("size.safetensors",
                              "{\"layer.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 20);
        assert_fd_invalid(fd_size, -EBADMSG,
                          "tensor 0 (at header byte 1): shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] span 20",
                          NULL);

        /* The prefix says the header is shorter than the JSON: the rest is
         * then data, and the JSON is cut. */
        fd_cut = write_file("cut.safetensors", 1, "{}  ", 4, 0);
        assert_fd_invalid(fd_cut, -EBADMSG, "not valid JSON", NULL);
}

static void test_fd_not_regular(void **state) {
        _cleanup_close_ int dir_fd = -1;
        int pipe_fds[2];

        dir_fd = open(temp_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dir_fd >= 0);
        assert_fd_invalid(dir_fd, -EBADMSG, "not a regular file", NULL);

        assert_int_equal(pipe2(pipe_fds, O_CLOEXEC), 0);
        assert_fd_invalid(pipe_fds[0], -EBADMSG, "not a regular file", NULL);
        close(pipe_fds[0]);
        close(pipe_fds[1]);
}

static void test_fd_read_error(void **state) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -1;

        /* Opened for writing only: fstat() works, pread() fails. */
        assert_true(asprintf(&path, "%s/writeonly.safetensors", temp_dir) >= 0);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "\x02\0\0\0\0\0\0\0{}", 10), 10);

        assert_fd_invalid(fd, -EBADF, "cannot read the header length", NULL);
}

/* ---- the largest headers ---- */

#define MiB (UINT64_C(1) << 20)

/* A valid file whose header is as long as allowed, nearly all of it one
 * array of 50 million zeros under a member the reader ignores. Written once,
 * opened anew for each caller. */
static int open_huge_header_model(void) {
        static const char head[] = "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"ignored\":[";
        static const char tail[] = "0]}}";
        _cleanup_free_ char *path = NULL, *chunk = NULL;
        _cleanup_close_ int write_fd = -1;
        uint64_t le = htole64(SAFETENSORS_HEADER_MAX), left;
        static bool written = false;
        int fd;

        assert_true(asprintf(&path, "%s/huge.safetensors", temp_dir) >= 0);
        if (written)
                goto open;
        chunk = malloc(MiB);
        assert_non_null(chunk);
        for (size_t i = 0; i < MiB; i += 2)
                memcpy(chunk + i, "0,", 2);

        write_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(write_fd >= 0);
        assert_int_equal(write(write_fd, &le, sizeof le), (ssize_t) sizeof le);
        assert_int_equal(write(write_fd, head, strlen(head)), (ssize_t) strlen(head));
        left = SAFETENSORS_HEADER_MAX - strlen(head) - strlen(tail);
        left -= left % 2;
        while (left > 0) {
                size_t n = (size_t) MIN(left, MiB);

                assert_int_equal(write(write_fd, chunk, n), (ssize_t) n);
                left -= n;
        }
        assert_int_equal(write(write_fd, tail, strlen(tail)), (ssize_t) strlen(tail));
        /* Padding to the exact length, then the one data byte. */
        while ((uint64_t) lseek(write_fd, 0, SEEK_CUR) < SAFETENSORS_PREFIX_SIZE + SAFETENSORS_HEADER_MAX)
                assert_int_equal(write(write_fd, " ", 1), 1);
        assert_int_equal(write(write_fd, "\1", 1), 1);
        written = true;

open:
        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        return fd;
}

/* In a child, so that its peak memory is its own and a limit on its address
 * space stops a reader that would take gigabytes before it takes them. */
static void test_huge_header_bounded_memory(void **state) {
        _cleanup_close_ int fd = -1;
        int status;
        pid_t pid;

        fd = open_huge_header_model();

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                uint64_t before, peak;
                struct rlimit limit;
                SafetensorsInfo info = {};
                char *error = NULL;
                int r;

                /* The header itself, and 256 MiB for all the rest. */
                limit.rlim_cur = limit.rlim_max = proc_status_bytes("VmSize") + SAFETENSORS_HEADER_MAX + 256 * MiB;
                if (setrlimit(RLIMIT_AS, &limit) < 0)
                        _exit(10);

                before = proc_status_bytes("VmRSS");
                r = safetensors_validate_fd(fd, NULL, NULL, &info, &error);
                peak = proc_status_bytes("VmHWM");
                if (r != 0) {
                        fprintf(stderr, "the header was refused (%d): %s\n", r, error ?: "-");
                        _exit(11);
                }
                if (info.n_tensors != 1 || info.header_length != SAFETENSORS_HEADER_MAX) {
                        fprintf(stderr, "wrong info: %zu tensors, header %" PRIu64 "\n", info.n_tensors,
                                info.header_length);
                        _exit(12);
                }
                /* Beyond the header's own bytes, nothing that grows with
                 * the 50 million values. */
                if (peak > before + SAFETENSORS_HEADER_MAX + 16 * MiB) {
                        fprintf(stderr, "peak RSS rose by %" PRIu64 " MiB for a %" PRIu64 " MiB header\n",
                                (peak - before) / MiB, SAFETENSORS_HEADER_MAX / MiB);
                        _exit(13);
                }
                _exit(0);
        }

        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail_msg("the child failed (status 0x%x); see its message above", status);
}

typedef struct CancelCounter {
        unsigned calls;
        unsigned cancel_at;     /* 0: never */
} CancelCounter;

static bool count_and_cancel(void *userdata) {
        CancelCounter *c = userdata;

        c->calls++;
        return c->cancel_at > 0 && c->calls >= c->cancel_at;
}

static void test_huge_header_cancellable(void **state) {
        _cleanup_close_ int fd = -1;
        CancelCounter all = {};
        unsigned total;

        fd = open_huge_header_model();

        /* Asked all along: at least once per MiB of header, in both the
         * text check and the parse. */
        assert_int_equal(safetensors_validate_fd(fd, count_and_cancel, &all, NULL, NULL), 0);
        total = all.calls;
        assert_true(total >= 2 * (SAFETENSORS_HEADER_MAX / MiB));

        /* Stopped as soon as asked: while reading, checking the text,
         * parsing, or at the last question, just before the end. */
        const unsigned points[] = { 1, total / 2, total * 3 / 4, total };
        for (size_t i = 0; i < ELEMENTSOF(points); i++) {
                CancelCounter c = { .cancel_at = points[i] };
                SafetensorsInfo info = { .n_tensors = 4242 };
                char *error = NULL;

                assert_int_equal(safetensors_validate_fd(fd, count_and_cancel, &c, &info, &error), -ECANCELED);
                assert_int_equal(c.calls, points[i]);
                assert_null(error);
                assert_int_equal(info.n_tensors, 4242);
        }
}

static void test_cancel_small_header(void **state) {
        const char *json = "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
        CancelCounter now = { .cancel_at = 1 }, never = {};
        char *error = NULL;

        /* Even a small header is asked about at least once. */
        assert_int_equal(safetensors_validate_header(json, strlen(json), SAFETENSORS_PREFIX_SIZE + strlen(json) + 1,
                                                     count_and_cancel, &now, NULL, &error),
                         -ECANCELED);
        assert_null(error);
        assert_int_equal(safetensors_validate_header(json, strlen(json), SAFETENSORS_PREFIX_SIZE + strlen(json) + 1,
                                                     count_and_cancel, &never, NULL, &error),
                         0);
        assert_true(never.calls >= 1);
}

/* The most tensors a header may describe, and one more. */
static void test_tensor_limit(void **state) {
        const size_t n = SAFETENSORS_TENSORS_MAX;
        _cleanup_free_ char *json = NULL, *error = NULL;
        SafetensorsInfo info = {};
        size_t size = (n + 1) * 96 + 16, at = 0;
        char last[32];

        json = malloc(size);
        assert_non_null(json);
        json[at++] = '{';
        for (size_t i = 0; i < n + 1; i++)
                at += (size_t) snprintf(json + at, size - at,
                                        "%s\"t%zu\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}",
                                        i > 0 ? "," : "", i, i, i + 1);
        json[at++] = '}';
        json[at] = '\0';

        assert_int_equal(validate(json, n + 1, NULL, &error), -EBADMSG);
        assert_string_equal(error, "the header describes 1000001 tensors, more than the limit of 1000000");

        /* Without the last one. */
        snprintf(last, sizeof last, ",\"t%zu\":", n);
        assert_non_null(strstr(json, last));
        at = (size_t) (strstr(json, last) - json);
        json[at++] = '}';
        json[at] = '\0';
        free(error);
        error = NULL;
        if (validate(json, n, &info, &error) != 0)
                fail_msg("refused: %s", strempty(error));
        assert_int_equal(info.n_tensors, n);
}

/* ---- the writer ---- */

static void test_build_header_exact(void **state) {
        static const uint64_t shape[] = { 2, 3 };
        const SafetensorsTensorSpec spec = { .name = "a", .dtype = "F32", .shape = shape, .n_dims = 2 };
        const char *expected = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}";
        _cleanup_free_ char *json = NULL;
        uint64_t data_length = 0;
        size_t n = strlen(expected);

        assert_int_equal(safetensors_build_header(&spec, 1, &json, &data_length), 0);
        assert_int_equal(data_length, 24);
        assert_int_equal(strlen(json), (n + 7) / 8 * 8);
        assert_memory_equal(json, expected, n);
        for (size_t i = n; json[i]; i++)
                assert_int_equal(json[i], ' ');
}

static void test_build_header_layout(void **state) {
        static const uint64_t big[] = { UINT64_C(4503599627370496) };   /* 2^52 */
        static const uint64_t small[] = { 3 };
        const SafetensorsTensorSpec specs[] = {
                { .name = "first", .dtype = "U8", .shape = small, .n_dims = 1 },
                { .name = "scalar", .dtype = "F64", .shape = NULL, .n_dims = 0 },
                { .name = "big", .dtype = "U8", .shape = big, .n_dims = 1 },
        };
        _cleanup_free_ char *json = NULL, *empty = NULL;
        uint64_t data_length = 0;

        assert_int_equal(safetensors_build_header(specs, ELEMENTSOF(specs), &json, &data_length), 0);
        assert_int_equal(data_length, 3 + 8 + UINT64_C(4503599627370496));
        /* In the order given, contiguous, and as plain integers. */
        assert_non_null(strstr(json, "\"first\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}"));
        assert_non_null(strstr(json, "\"scalar\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[3,11]}"));
        assert_non_null(strstr(json, "\"shape\":[4503599627370496],\"data_offsets\":[11,4503599627370507]}"));
        assert_true(strstr(json, "\"first\"") < strstr(json, "\"scalar\""));
        assert_true(strstr(json, "\"scalar\"") < strstr(json, "\"big\""));
        assert_valid(json, data_length, 3);

        assert_int_equal(safetensors_build_header(NULL, 0, &empty, NULL), 0);
        assert_string_equal(empty, "{}      ");
        assert_valid(empty, 0, 0);
}

static void test_build_header_refuses(void **state) {
        static const uint64_t odd[] = { 3 }, huge[] = { UINT64_C(1) << 40, UINT64_C(1) << 30 },
                              over_2_53[] = { UINT64_C(9007199254740993) };
        static const uint64_t many[SAFETENSORS_DIMS_MAX + 1] = {};
        char *json = NULL;
        uint64_t data_length = 99;

#define REFUSES(expected, ...)                                                                          \
        do {                                                                                            \
                const SafetensorsTensorSpec s[] = { __VA_ARGS__ };                                      \
                assert_int_equal(safetensors_build_header(s, ELEMENTSOF(s), &json, &data_length), expected); \
                assert_null(json);                                                                      \
                assert_int_equal(data_length, 99);                                                      \
        } while (0)

        REFUSES(-EINVAL, { .name = "a", .dtype = "F17", .shape = odd, .n_dims = 1 });
        REFUSES(-EINVAL, { .name = NULL, .dtype = "U8", .shape = odd, .n_dims = 1 });
        REFUSES(-EINVAL, { .name = "__metadata__", .dtype = "U8", .shape = odd, .n_dims = 1 });
        REFUSES(-EINVAL, { .name = "a", .dtype = "U8", .shape = odd, .n_dims = 1 },
                         { .name = "a", .dtype = "U8", .shape = odd, .n_dims = 1 });
        REFUSES(-EINVAL, { .name = "a", .dtype = "F4", .shape = odd, .n_dims = 1 });
        REFUSES(-EINVAL, { .name = "a", .dtype = "U8", .shape = many, .n_dims = ELEMENTSOF(many) });
        REFUSES(-EINVAL, { .name = "a", .dtype = "U8", .shape = NULL, .n_dims = 1 });
        REFUSES(-EOVERFLOW, { .name = "a", .dtype = "U8", .shape = huge, .n_dims = 2 });
        REFUSES(-EOVERFLOW, { .name = "a", .dtype = "U8", .shape = over_2_53, .n_dims = 1 });
#undef REFUSES
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_one_tensor),
                cmocka_unit_test(test_many_tensors),
                cmocka_unit_test(test_many_tensors_built),
                cmocka_unit_test(test_zero_tensors),
                cmocka_unit_test(test_metadata),
                cmocka_unit_test(test_sub_byte_dtypes),
                cmocka_unit_test(test_unknown_tensor_fields_ignored),
                cmocka_unit_test(test_dtype_bits),
                cmocka_unit_test(test_header_length_bounds),
                cmocka_unit_test(test_not_json),
                cmocka_unit_test(test_not_object),
                cmocka_unit_test(test_json_syntax),
                cmocka_unit_test(test_escapes_and_whitespace),
                cmocka_unit_test(test_tensor_not_object),
                cmocka_unit_test(test_dtype),
                cmocka_unit_test(test_shape),
                cmocka_unit_test(test_too_many_dims),
                cmocka_unit_test(test_data_offsets),
                cmocka_unit_test(test_begin_after_end),
                cmocka_unit_test(test_size_mismatch),
                cmocka_unit_test(test_sub_byte_not_whole_bytes),
                cmocka_unit_test(test_shape_overflow),
                cmocka_unit_test(test_gap),
                cmocka_unit_test(test_overlap),
                cmocka_unit_test(test_not_starting_at_zero),
                cmocka_unit_test(test_data_not_ending_at_eof),
                cmocka_unit_test(test_metadata_not_string_map),
                cmocka_unit_test(test_duplicate_tensor),
                cmocka_unit_test(test_messages_never_quote_the_header),
                cmocka_unit_test(test_fd_valid),
                cmocka_unit_test(test_fd_too_short),
                cmocka_unit_test(test_fd_header_beyond_file),
                cmocka_unit_test(test_fd_header_over_limit),
                cmocka_unit_test(test_fd_data_not_ending_at_eof),
                cmocka_unit_test(test_fd_bad_header),
                cmocka_unit_test(test_fd_not_regular),
                cmocka_unit_test(test_fd_read_error),
                cmocka_unit_test(test_huge_header_bounded_memory),
                cmocka_unit_test(test_huge_header_cancellable),
                cmocka_unit_test(test_cancel_small_header),
                cmocka_unit_test(test_tensor_limit),
                cmocka_unit_test(test_build_header_exact),
                cmocka_unit_test(test_build_header_layout),
                cmocka_unit_test(test_build_header_refuses),
        };

        return cmocka_run_group_tests(tests, setup_temp_dir, remove_temp_dir);
}
