/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

static void test_parse_size_good(void **state) {
        static const struct {
                const char *text;
                uint64_t bytes;
        } cases[] = {
                { "0",                    0 },
                { "512",                  512 },
                { "512B",                 512 },
                { "4K",                   4 * KiB },
                { "4KiB",                 4 * KiB },
                { "4 K",                  4 * KiB },
                { "3M",                   3 * MiB },
                { "3MiB",                 3 * MiB },
                { "2G",                   2 * GiB },
                { "2GiB",                 2 * GiB },
                { "1.5G",                 GiB + GiB / 2 },
                { "0.5K",                 512 },
                { "1.25M",                MiB + MiB / 4 },
                { "1.1K",                 1126 },  /* 1126.4, rounded down */
                { "007K",                 7 * KiB },
                { "7T",                   7 * TiB },
                { "7TiB",                 7 * TiB },
                { "18446744073709551615", UINT64_MAX },
                { "16777215T",            16777215 * TiB },
                { "16777215.5T",          16777215 * TiB + TiB / 2 },
                { "16777215.99999999999T", 16777215 * TiB + UINT64_C(1099511626676) }, /* 9 decimals used */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t bytes = 0;

                if (parse_size(cases[i].text, &bytes) != 0)
                        fail_msg("parse_size(\"%s\") failed", cases[i].text);
                if (bytes != cases[i].bytes)
                        fail_msg("parse_size(\"%s\") = %ju, expected %ju", cases[i].text,
                                 (uintmax_t) bytes, (uintmax_t) cases[i].bytes);
        }
}

static void test_parse_size_bad(void **state) {
        static const struct {
                const char *text;
                int error;
        } cases[] = {
                { "",                     -EINVAL },
                { "-1",                   -EINVAL },
                { "+1",                   -EINVAL },
                { " 1",                   -EINVAL },
                { "1 ",                   -EINVAL },
                { "1..5G",                -EINVAL },
                { "1.G",                  -EINVAL },
                { ".5G",                  -EINVAL },
                { "1.5",                  -EINVAL },   /* a fraction of a byte */
                { "1.5B",                 -EINVAL },
                { "G",                    -EINVAL },
                { "4X",                   -EINVAL },
                { "4KB",                  -EINVAL },
                { "4k",                   -EINVAL },
                { "4GG",                  -EINVAL },
                { "4G4",                  -EINVAL },
                { "4 G B",                -EINVAL },
                { "0x10",                 -EINVAL },
                { "1e9",                  -EINVAL },
                { "50%",                  -EINVAL },
                { "18446744073709551616", -ERANGE },
                { "99999999999999999999999", -ERANGE },
                { "16777216T",            -ERANGE },   /* exactly 2^64 */
                { "16777216.0T",          -ERANGE },
                { "17179869184G",         -ERANGE },
                { "99999999999999999999999X", -EINVAL }, /* junk wins over range */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t bytes = 4242;
                int r = parse_size(cases[i].text, &bytes);

                if (r != cases[i].error)
                        fail_msg("parse_size(\"%s\") = %d, expected %d", cases[i].text, r, cases[i].error);
                assert_int_equal(bytes, 4242);   /* untouched on failure */
        }
}

static void test_parse_size_or_percent(void **state) {
        SizeOrPercent v;

        assert_int_equal(parse_size_or_percent("50%", &v), 0);
        assert_true(v.is_percent);
        assert_int_equal(v.permyriad, 5000);

        assert_int_equal(parse_size_or_percent("12.5%", &v), 0);
        assert_true(v.is_percent);
        assert_int_equal(v.permyriad, 1250);

        assert_int_equal(parse_size_or_percent("0.25%", &v), 0);
        assert_int_equal(v.permyriad, 25);

        assert_int_equal(parse_size_or_percent("100%", &v), 0);
        assert_int_equal(v.permyriad, 10000);

        assert_int_equal(parse_size_or_percent("100.00%", &v), 0);
        assert_int_equal(v.permyriad, 10000);

        assert_int_equal(parse_size_or_percent("0%", &v), 0);
        assert_true(v.is_percent);
        assert_int_equal(v.permyriad, 0);

        assert_int_equal(parse_size_or_percent("5 %", &v), 0);
        assert_int_equal(v.permyriad, 500);

        assert_int_equal(parse_size_or_percent("4G", &v), 0);
        assert_false(v.is_percent);
        assert_int_equal(v.bytes, 4 * GiB);

        v = (SizeOrPercent) { .is_percent = true, .permyriad = 7 };
        assert_int_equal(parse_size_or_percent("101%", &v), -ERANGE);
        assert_int_equal(parse_size_or_percent("100.01%", &v), -ERANGE);
        assert_int_equal(parse_size_or_percent("99999999999999999999999%", &v), -ERANGE);
        assert_int_equal(parse_size_or_percent("12.345%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("-5%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("5%%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent(" 5%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("5.%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("5x%", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("1..5G", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("-1", &v), -EINVAL);
        assert_int_equal(parse_size_or_percent("18446744073709551616", &v), -ERANGE);
        /* untouched by all of the above */
        assert_true(v.is_percent);
        assert_int_equal(v.permyriad, 7);
}

static void test_size_or_percent_resolve(void **state) {
        SizeOrPercent v;

        v = (SizeOrPercent) { .is_percent = false, .bytes = 12345 };
        assert_int_equal(size_or_percent_resolve(&v, 1000), 12345);

        v = (SizeOrPercent) { .is_percent = true, .permyriad = 5000 };
        assert_int_equal(size_or_percent_resolve(&v, 16 * GiB), 8 * GiB);
        assert_int_equal(size_or_percent_resolve(&v, 3), 1);
        assert_int_equal(size_or_percent_resolve(&v, 0), 0);

        v.permyriad = 1250;
        assert_int_equal(size_or_percent_resolve(&v, 8 * GiB), GiB);

        v.permyriad = 10000;
        assert_int_equal(size_or_percent_resolve(&v, UINT64_MAX), UINT64_MAX);

        /* No overflow of total * permyriad. */
        v.permyriad = 5000;
        assert_int_equal(size_or_percent_resolve(&v, UINT64_MAX), UINT64_MAX / 2);

        v.permyriad = 0;
        assert_int_equal(size_or_percent_resolve(&v, UINT64_MAX), 0);
}

static void test_parse_duration_good(void **state) {
        static const struct {
                const char *text;
                int64_t sec;
        } cases[] = {
                { "1",          1 },
                { "300",        300 },
                { "90s",        90 },
                { "90sec",      90 },
                { "90 seconds", 90 },
                { "5min",       300 },
                { "5 min",      300 },
                { "5m",         300 },
                { "5minutes",   300 },
                { "1h 30min",   5400 },
                { "1h30min",    5400 },
                { "1h  30min 15s", 5415 },
                { "1h 30",      3630 },   /* a bare number is seconds */
                { "2h",         7200 },
                { "2 hours",    7200 },
                { "1hr",        3600 },
                { "1d",         86400 },
                { "2days",      172800 },
                { "1w",         604800 },
                { "1w 1d",      691200 },
                { "0s 1s",      1 },
                { "infinity",   -1 },
                { "9223372036854", DURATION_SEC_MAX },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int64_t sec = 0;

                if (parse_duration_sec(cases[i].text, &sec) != 0)
                        fail_msg("parse_duration_sec(\"%s\") failed", cases[i].text);
                if (sec != cases[i].sec)
                        fail_msg("parse_duration_sec(\"%s\") = %jd, expected %jd", cases[i].text,
                                 (intmax_t) sec, (intmax_t) cases[i].sec);
        }
}

static void test_parse_duration_bad(void **state) {
        static const struct {
                const char *text;
                int error;
        } cases[] = {
                { "",               -EINVAL },
                { "-1",             -EINVAL },
                { "-5min",          -EINVAL },
                { " 5min",          -EINVAL },
                { "5min ",          -EINVAL },
                { "min",            -EINVAL },
                { "5 minx",         -EINVAL },
                { "5ms",            -EINVAL },  /* no sub-second units */
                { "5us",            -EINVAL },
                { "5M",             -EINVAL },  /* months: no */
                { "5y",             -EINVAL },
                { "1.5h",           -EINVAL },
                { "5min,",          -EINVAL },
                { "1h-30min",       -EINVAL },
                { "Infinity",       -EINVAL },
                { "infinity ",      -EINVAL },
                { "never",          -EINVAL },
                { "0",              -ERANGE },
                { "0s",             -ERANGE },
                { "0h 0min",        -ERANGE },
                { "9223372036855",  -ERANGE },
                { "99999999999999999999999", -ERANGE },
                { "15250284452w",   -ERANGE },
                { "9223372036854 1", -ERANGE },
                { "99999999999999999999999 x", -EINVAL },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int64_t sec = 4242;
                int r = parse_duration_sec(cases[i].text, &sec);

                if (r != cases[i].error)
                        fail_msg("parse_duration_sec(\"%s\") = %d, expected %d", cases[i].text, r, cases[i].error);
                assert_int_equal(sec, 4242);
        }
}

static void test_parse_unsigned(void **state) {
        unsigned u = 77;

        assert_int_equal(parse_unsigned("0", 0, 10, &u), 0);
        assert_int_equal(u, 0);
        assert_int_equal(parse_unsigned("10", 0, 10, &u), 0);
        assert_int_equal(u, 10);
        assert_int_equal(parse_unsigned("4294967295", 0, UINT32_MAX, &u), 0);
        assert_int_equal(u, UINT32_MAX);

        u = 77;
        assert_int_equal(parse_unsigned("11", 0, 10, &u), -ERANGE);
        assert_int_equal(parse_unsigned("0", 1, 64, &u), -ERANGE);
        assert_int_equal(parse_unsigned("65", 1, 64, &u), -ERANGE);
        assert_int_equal(parse_unsigned("4294967296", 0, UINT32_MAX, &u), -ERANGE);
        assert_int_equal(parse_unsigned("99999999999999999999999", 0, UINT32_MAX, &u), -ERANGE);
        assert_int_equal(parse_unsigned("", 0, 10, &u), -EINVAL);
        assert_int_equal(parse_unsigned("-1", 0, 10, &u), -EINVAL);
        assert_int_equal(parse_unsigned("+1", 0, 10, &u), -EINVAL);
        assert_int_equal(parse_unsigned(" 1", 0, 10, &u), -EINVAL);
        assert_int_equal(parse_unsigned("1 ", 0, 10, &u), -EINVAL);
        assert_int_equal(parse_unsigned("0x1", 0, 10, &u), -EINVAL);
        assert_int_equal(parse_unsigned("1.0", 0, 10, &u), -EINVAL);
        assert_int_equal(u, 77);
}

static void test_parse_boolean(void **state) {
        static const char *const yes[] = { "1", "yes", "YES", "true", "True", "on", "ON" };
        static const char *const no[] = { "0", "no", "No", "false", "FALSE", "off", "Off" };
        static const char *const bad[] = { "", "2", "y", "n", "t", "yess", " yes", "enable", "-1" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                assert_int_equal(parse_boolean(yes[i]), 1);
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                assert_int_equal(parse_boolean(no[i]), 0);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(parse_boolean(bad[i]), -EINVAL);
}

static void test_model_name_good(void **state) {
        char segment[MPOOL_NAME_SEGMENT_MAX + 1], longest[MPOOL_NAME_MAX + 1];
        static const char *const good[] = {
                "a", "A", "0", "llama", "meta-llama/Llama-3.2-1B", "org/name", "Qwen2.5_7B", "a.b/c.d",
                "x_/y_", "9/9", "a-b.c_d/e.-f_-g", "a.-b", "a-.b",
        };
        char *error = NULL;

        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                if (model_name_validate(good[i], &error) != 0)
                        fail_msg("'%s' refused: %s", good[i], strempty(error));
                assert_null(error);
        }

        memset(segment, 'a', MPOOL_NAME_SEGMENT_MAX);
        segment[MPOOL_NAME_SEGMENT_MAX] = '\0';
        assert_int_equal(model_name_validate(segment, NULL), 0);

        snprintf(longest, sizeof longest, "%s/%s", segment, segment);
        assert_int_equal(strlen(longest), MPOOL_NAME_MAX);
        assert_int_equal(model_name_validate(longest, &error), 0);
        assert_null(error);
}

static void check_bad_name(const char *name, const char *expected) {
        char *error = NULL;
        int r;

        r = model_name_validate(name, &error);
        if (r != -EINVAL)
                fail_msg("model_name_validate(\"%s\") = %d, expected -EINVAL", name, r);
        assert_non_null(error);
        if (strcmp(error, expected) != 0)
                fail_msg("model_name_validate(\"%s\"): \"%s\", expected \"%s\"", name, error, expected);
        free(error);

        /* Without a message, the verdict is the same. */
        assert_int_equal(model_name_validate(name, NULL), -EINVAL);
}

static void test_model_name_bad(void **state) {
        char long_segment[MPOOL_NAME_SEGMENT_MAX + 2], name[MPOOL_NAME_MAX + 2], expected[512];

        check_bad_name("", "model name is empty");
        check_bad_name("x y", "'x y': character ' ' at position 2 is not allowed");
        check_bad_name("a/b/c", "segment 3 of 'a/b/c': at most two segments are allowed");
        check_bad_name("/a", "'/a': must not start with '/'");
        check_bad_name("/", "'/': must not start with '/'");
        check_bad_name("a/", "'a/': must not end with '/'");
        check_bad_name("a//b", "segment 2 of 'a//b': must not be empty");
        check_bad_name("..", "'..': '..' is not allowed");
        check_bad_name(".", "'.': '.' is not allowed");
        check_bad_name("a/..", "segment 2 of 'a/..': '..' is not allowed");
        check_bad_name("../a", "segment 1 of '../a': '..' is not allowed");
        check_bad_name(".hidden", "'.hidden': must start with a letter or a digit");
        check_bad_name("org/-x", "segment 2 of 'org/-x': must start with a letter or a digit");
        check_bad_name("_x", "'_x': must start with a letter or a digit");
        check_bad_name("org/a:b", "'org/a:b': character ':' at position 6 is not allowed");
        check_bad_name("a\\b", "'a\\x5cb': character '\\x5c' at position 2 is not allowed");
        check_bad_name("it's", "'it\\x27s': character '\\x27' at position 3 is not allowed");
        check_bad_name("tab\there", "'tab\\x09here': character '\\x09' at position 4 is not allowed");
        check_bad_name("caf\xc3\xa9", "'caf\\xc3\\xa9': character '\\xc3' at position 4 is not allowed");

        /* The Hugging Face hub's rules: no ".." or "--", no '.' or '-' at the end. */
        check_bad_name("a..b", "'a..b': must not contain '..'");
        check_bad_name("org/a..b", "segment 2 of 'org/a..b': must not contain '..'");
        check_bad_name("a..b/c", "segment 1 of 'a..b/c': must not contain '..'");
        check_bad_name("a...", "'a...': must not contain '..'");
        check_bad_name("a--b", "'a--b': must not contain '--'");
        check_bad_name("org--x/name", "segment 1 of 'org--x/name': must not contain '--'");
        check_bad_name("org/x---y", "segment 2 of 'org/x---y': must not contain '--'");
        check_bad_name("a-", "'a-': must not end with '-'");
        check_bad_name("a.", "'a.': must not end with '.'");
        check_bad_name("x-/y", "segment 1 of 'x-/y': must not end with '-'");
        check_bad_name("org/name.", "segment 2 of 'org/name.': must not end with '.'");

        memset(long_segment, 'b', MPOOL_NAME_SEGMENT_MAX + 1);
        long_segment[MPOOL_NAME_SEGMENT_MAX + 1] = '\0';
        snprintf(name, sizeof name, "org/%s", long_segment);
        snprintf(expected, sizeof expected, "segment 2 of '%s': 97 characters long, at most 96 are allowed", name);
        check_bad_name(name, expected);
        snprintf(expected, sizeof expected, "'%s': 97 characters long, at most 96 are allowed", long_segment);
        check_bad_name(long_segment, expected);

        memset(name, 'c', MPOOL_NAME_MAX + 1);
        name[MPOOL_NAME_MAX + 1] = '\0';
        check_bad_name(name, "model name is longer than 193 characters");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_size_good),
                cmocka_unit_test(test_parse_size_bad),
                cmocka_unit_test(test_parse_size_or_percent),
                cmocka_unit_test(test_size_or_percent_resolve),
                cmocka_unit_test(test_parse_duration_good),
                cmocka_unit_test(test_parse_duration_bad),
                cmocka_unit_test(test_parse_unsigned),
                cmocka_unit_test(test_parse_boolean),
                cmocka_unit_test(test_model_name_good),
                cmocka_unit_test(test_model_name_bad),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
