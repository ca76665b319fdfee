/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "manager.h"
#include "memory-monitor.h"
#include "time-util.h"

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

/* Status shares a reading among the calls of 100 ms; older ones are read
 * again. A byte of MemAvailable is what no real reading returns. */
static void test_manager_refresh_memory_available(void **state) {
        Manager m = {};
        uint64_t before;

        m.memory.available = 1;
        manager_refresh_memory_available(&m);
        assert_true(m.memory.available > 1);
        assert_true(m.memory_read_usec > 0);

        before = now_monotonic_usec();
        m.memory_read_usec = before;
        m.memory.available = 1;
        manager_refresh_memory_available(&m);
        /* Unless this very machine stalled us past the window. */
        if (now_monotonic_usec() - before < 100 * USEC_PER_MSEC)
                assert_int_equal(m.memory.available, 1);

        m.memory_read_usec = now_monotonic_usec() - 200 * USEC_PER_MSEC;
        m.memory.available = 1;
        manager_refresh_memory_available(&m);
        assert_true(m.memory.available > 1);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_meminfo_parse),
                cmocka_unit_test(test_meminfo_parse_missing_fields),
                cmocka_unit_test(test_memory_info_read_is_sane),
                cmocka_unit_test(test_manager_refresh_memory_available),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
