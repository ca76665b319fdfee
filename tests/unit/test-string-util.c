/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "macro.h"
#include "string-util.h"

static void test_fits_unchanged(void **state) {
        static const char *cases[] = { "", "a", "abc", "héllo", "exactly10!" };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *s = strdup_bounded(cases[i], 10);

                assert_non_null(s);
                assert_string_equal(s, cases[i]);
                free(s);
        }
}

static void test_cut_with_ellipsis(void **state) {
        char *s = strdup_bounded("abcdefghijk", 10);

        /* 7 bytes of text and the 3 of the ellipsis. */
        assert_non_null(s);
        assert_string_equal(s, "abcdefg" ELLIPSIS);
        assert_int_equal(strlen(s), 10);
        free(s);

        s = strdup_bounded("abcd", 3);
        assert_non_null(s);
        assert_string_equal(s, ELLIPSIS);
        free(s);
}

static void test_cut_at_character_boundary(void **state) {
        /* "aaaaaa" then U+20AC (3 bytes) then more: a cut at 7 would fall
         * inside the euro sign, so the whole of it goes. */
        char *s = strdup_bounded("aaaaaa\xe2\x82\xac" "bbbb", 10);

        assert_non_null(s);
        assert_string_equal(s, "aaaaaa" ELLIPSIS);
        free(s);

        /* A 4-byte character right at the cut. */
        s = strdup_bounded("aaaaa\xf0\x9f\x98\x80" "bbbb", 10);
        assert_non_null(s);
        assert_string_equal(s, "aaaaa" ELLIPSIS);
        free(s);

        /* The character ending exactly at the cut stays. */
        s = strdup_bounded("aaaa\xe2\x82\xac" "bbbb", 10);
        assert_non_null(s);
        assert_string_equal(s, "aaaa\xe2\x82\xac" ELLIPSIS);
        free(s);
}

static void test_long_input(void **state) {
        size_t n = 1 << 20;
        char *big = malloc(n + 1), *s;

        assert_non_null(big);
        memset(big, 'x', n);
        big[n] = 0;
        s = strdup_bounded(big, 1024);
        assert_non_null(s);
        assert_int_equal(strlen(s), 1024);
        assert_memory_equal(s + 1024 - strlen(ELLIPSIS), ELLIPSIS, strlen(ELLIPSIS));
        free(s);
        free(big);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_fits_unchanged),
                cmocka_unit_test(test_cut_with_ellipsis),
                cmocka_unit_test(test_cut_at_character_boundary),
                cmocka_unit_test(test_long_input),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
