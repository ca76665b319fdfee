/* SPDX-License-Identifier: MIT */
/* The monitoring counters and fixed-bucket histograms: bucket edges,
 * cumulative counts as the exposition format has them, saturation, and the
 * counters' reasons and outcomes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "macro.h"
#include "metrics.h"
#include "mpool-bus.h"

static const uint64_t bounds[] = { 10, 100, 1000 };

static void test_bucket_edges(void **state) {
        Histogram h;
        uint64_t cum[ELEMENTSOF(bounds) + 1];

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        histogram_cumulative(&h, cum);
        for (size_t i = 0; i < ELEMENTSOF(cum); i++)
                assert_int_equal(cum[i], 0);

        /* A bound is inclusive ("le"), one above it goes to the next bucket. */
        histogram_observe(&h, 0);
        histogram_observe(&h, 10);
        histogram_observe(&h, 11);
        histogram_observe(&h, 100);
        histogram_observe(&h, 1000);
        histogram_observe(&h, 1001);
        histogram_observe(&h, 5000);

        assert_int_equal(h.counts[0], 2);
        assert_int_equal(h.counts[1], 2);
        assert_int_equal(h.counts[2], 1);
        assert_int_equal(h.counts[3], 2);
        assert_int_equal(h.count, 7);
        assert_int_equal(h.sum_usec, 0 + 10 + 11 + 100 + 1000 + 1001 + 5000);

        histogram_cumulative(&h, cum);
        assert_int_equal(cum[0], 2);
        assert_int_equal(cum[1], 4);
        assert_int_equal(cum[2], 5);
        assert_int_equal(cum[3], 7);   /* +Inf is the count */
}

static void test_cumulative_never_decreases(void **state) {
        Histogram h;
        uint64_t cum[ELEMENTSOF(bounds) + 1];

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        for (uint64_t v = 0; v < 3000; v += 7)
                histogram_observe(&h, v);
        histogram_cumulative(&h, cum);
        for (size_t i = 1; i < ELEMENTSOF(cum); i++)
                assert_true(cum[i - 1] <= cum[i]);
        assert_int_equal(cum[ELEMENTSOF(bounds)], h.count);
}

static void test_sum_saturates(void **state) {
        Histogram h;

        histogram_init(&h, bounds, ELEMENTSOF(bounds));
        histogram_observe(&h, UINT64_MAX - 1);
        histogram_observe(&h, 5);
        assert_true(h.sum_usec == UINT64_MAX);
        assert_int_equal(h.count, 2);
        assert_int_equal(h.counts[3], 1);
        assert_int_equal(h.counts[0], 1);
}

static void test_no_bounds(void **state) {
        Histogram h;
        uint64_t cum[1];

        /* Only +Inf: every observation is counted there. */
        histogram_init(&h, NULL, 0);
        histogram_observe(&h, 3);
        histogram_cumulative(&h, cum);
        assert_int_equal(cum[0], 1);
}

static void test_counters(void **state) {
        Metrics m;

        metrics_init(&m);
        assert_true(m.load_duration.n_bounds > 0 && m.load_duration.n_bounds <= HISTOGRAM_BOUNDS_MAX);
        assert_true(m.embed_duration.n_bounds > 0 && m.embed_duration.n_bounds <= HISTOGRAM_BOUNDS_MAX);

        /* Only completed loads are timed; failures and cancellations counted apart. */
        metrics_load_finished(&m, 0, 20 * USEC_PER_MSEC);
        metrics_load_finished(&m, 0, 400 * USEC_PER_SEC);
        metrics_load_finished(&m, -EBADMSG, 1);
        metrics_load_finished(&m, -ECANCELED, 1);
        assert_int_equal(m.loads_total, 2);
        assert_int_equal(m.load_failures_total, 1);
        assert_int_equal(m.loads_cancelled_total, 1);
        assert_int_equal(m.load_duration.count, 2);
        assert_int_equal(m.load_duration.counts[m.load_duration.n_bounds], 1);  /* 400 s is past every bound */

        metrics_unloaded(&m, MPOOL_REASON_IDLE);
        metrics_unloaded(&m, MPOOL_REASON_IDLE);
        metrics_unloaded(&m, MPOOL_REASON_MEMORY_LIMIT);
        metrics_unloaded(&m, MPOOL_REASON_MEMORY_PRESSURE);
        metrics_unloaded(&m, MPOOL_REASON_REQUEST);
        metrics_unloaded(&m, MPOOL_REASON_SHUTDOWN);
        metrics_unloaded(&m, "something-new");
        metrics_unloaded(&m, NULL);
        assert_int_equal(m.unloads_total[METRICS_UNLOAD_IDLE], 2);
        assert_int_equal(m.unloads_total[METRICS_UNLOAD_MEMORY_LIMIT], 1);
        assert_int_equal(m.unloads_total[METRICS_UNLOAD_MEMORY_PRESSURE], 1);
        assert_int_equal(m.unloads_total[METRICS_UNLOAD_REQUEST], 1);
        assert_int_equal(m.unloads_total[METRICS_UNLOAD_SHUTDOWN], 1);
        assert_int_equal(m.unloads_total[METRICS_UNLOAD_OTHER], 2);

        for (MetricsUnloadReason r = 0; r < _METRICS_UNLOAD_REASON_MAX; r++)
                assert_int_equal(metrics_unload_reason_from_string(metrics_unload_reason_to_string(r)), r);

        metrics_memory_pressure(&m);
        assert_int_equal(m.memory_pressure_events_total, 1);

        /* Every Embed answered is timed, failed or not. */
        metrics_embed_finished(&m, 0, 2 * USEC_PER_MSEC);
        metrics_embed_finished(&m, -EINVAL, 1);
        assert_int_equal(m.embed_requests_total, 2);
        assert_int_equal(m.embed_request_failures_total, 1);
        assert_int_equal(m.embed_duration.count, 2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bucket_edges),
                cmocka_unit_test(test_cumulative_never_decreases),
                cmocka_unit_test(test_sum_saturates),
                cmocka_unit_test(test_no_bounds),
                cmocka_unit_test(test_counters),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
