/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "memory-monitor.h"

static void test_meminfo_parse(void **state) {
        uint64_t total = 1, available = 1;

        assert_int_equal(meminfo_parse("MemTotal:       16384 kB\n"
                                       "MemFree:         1024 kB\n"
                                       "MemAvailable:    8192 kB\n"
                                       "Buffers:           12 kB\n", &total, &available), 0);
        assert_int_equal(total, UINT64_C(16384) * 1024);
        assert_int_equal(available, UINT64_C(8192) * 1024);
}

static void test_meminfo_parse_missing_fields(void **state) {
        uint64_t total = 7, available = 7;

        /* Kernels before 3.14 have no MemAvailable: refuse rather than guess. */
        assert_int_equal(meminfo_parse("MemTotal: 16384 kB\nMemFree: 1024 kB\n", &total, &available), -EBADMSG);
        assert_int_equal(meminfo_parse("", &total, &available), -EBADMSG);
        assert_int_equal(total, 7);
        assert_int_equal(available, 7);
}

static void test_memory_info_read_is_sane(void **state) {
        MemoryInfo info;

        assert_int_equal(memory_info_read(&info), 0);
        assert_true(info.total > 0);
        assert_true(info.available <= info.total);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_meminfo_parse),
                cmocka_unit_test(test_meminfo_parse_missing_fields),
                cmocka_unit_test(test_memory_info_read_is_sane),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
