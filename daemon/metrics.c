/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <string.h>

#include "macro.h"
#include "metrics.h"
#include "mpool-bus.h"

/* Loads take from milliseconds (a small model from the page cache) to
 * minutes (gigabytes from a slow disk). */
static const uint64_t load_bounds_usec[] = {
        10 * USEC_PER_MSEC, 50 * USEC_PER_MSEC, 100 * USEC_PER_MSEC, 250 * USEC_PER_MSEC,
        500 * USEC_PER_MSEC, 1 * USEC_PER_SEC, 2500 * USEC_PER_MSEC, 5 * USEC_PER_SEC,
        10 * USEC_PER_SEC, 30 * USEC_PER_SEC, 60 * USEC_PER_SEC, 120 * USEC_PER_SEC, 300 * USEC_PER_SEC,
};

/* An embedding of a short text takes about a millisecond; a full batch of
 * long texts, or a call that waits for its model's load, seconds. */
static const uint64_t embed_bounds_usec[] = {
        1 * USEC_PER_MSEC, 5 * USEC_PER_MSEC, 10 * USEC_PER_MSEC, 25 * USEC_PER_MSEC, 50 * USEC_PER_MSEC,
        100 * USEC_PER_MSEC, 250 * USEC_PER_MSEC, 500 * USEC_PER_MSEC, 1 * USEC_PER_SEC,
        2500 * USEC_PER_MSEC, 5 * USEC_PER_SEC, 10 * USEC_PER_SEC, 30 * USEC_PER_SEC,
};

void histogram_init(Histogram *h, const uint64_t *bounds_usec, size_t n_bounds) {
        assert(h);
        assert(n_bounds <= HISTOGRAM_BOUNDS_MAX);
        for (size_t i = 1; i < n_bounds; i++)
                assert(bounds_usec[i - 1] < bounds_usec[i]);

        *h = (Histogram) {
                .bounds_usec = bounds_usec,
                .n_bounds = n_bounds,
        };
}

void histogram_observe(Histogram *h, uint64_t usec) {
        size_t i = 0;

        /* A dozen bounds: a linear search is as fast as any. */
        while (i < h->n_bounds && usec > h->bounds_usec[i])
                i++;
        h->counts[i]++;
        h->count++;
        h->sum_usec = usec > UINT64_MAX - h->sum_usec ? UINT64_MAX : h->sum_usec + usec;
}

void histogram_cumulative(const Histogram *h, uint64_t *ret) {
        uint64_t sum = 0;

        for (size_t i = 0; i <= h->n_bounds; i++) {
                sum += h->counts[i];
                ret[i] = sum;
        }
}

static const char *const unload_reasons[_METRICS_UNLOAD_REASON_MAX] = {
        [METRICS_UNLOAD_REQUEST] = MPOOL_REASON_REQUEST,
        [METRICS_UNLOAD_IDLE] = MPOOL_REASON_IDLE,
        [METRICS_UNLOAD_MEMORY_LIMIT] = MPOOL_REASON_MEMORY_LIMIT,
        [METRICS_UNLOAD_MEMORY_PRESSURE] = MPOOL_REASON_MEMORY_PRESSURE,
        [METRICS_UNLOAD_SHUTDOWN] = MPOOL_REASON_SHUTDOWN,
        [METRICS_UNLOAD_OTHER] = "other",
};

const char *metrics_unload_reason_to_string(MetricsUnloadReason r) {
        assert(r >= 0 && r < _METRICS_UNLOAD_REASON_MAX);
        return unload_reasons[r];
}

MetricsUnloadReason metrics_unload_reason_from_string(const char *s) {
        for (MetricsUnloadReason r = 0; r < METRICS_UNLOAD_OTHER; r++)
                if (s && strcmp(s, unload_reasons[r]) == 0)
                        return r;
        return METRICS_UNLOAD_OTHER;
}

void metrics_init(Metrics *m) {
        *m = (Metrics) {};
        histogram_init(&m->load_duration, load_bounds_usec, ELEMENTSOF(load_bounds_usec));
        histogram_init(&m->embed_duration, embed_bounds_usec, ELEMENTSOF(embed_bounds_usec));
}

void metrics_load_finished(Metrics *m, int error, uint64_t duration_usec) {
        /* Only completed loads are timed: a failure's time says little
         * (a missing file fails at once), and would blur the histogram. */
        if (error == 0) {
                m->loads_total++;
                histogram_observe(&m->load_duration, duration_usec);
        } else if (error == -ECANCELED)
                m->loads_cancelled_total++;
        else
                m->load_failures_total++;
}

void metrics_unloaded(Metrics *m, const char *reason) {
        m->unloads_total[metrics_unload_reason_from_string(reason)]++;
}

void metrics_memory_pressure(Metrics *m) {
        m->memory_pressure_events_total++;
}

void metrics_embed_finished(Metrics *m, int error, uint64_t duration_usec) {
        m->embed_requests_total++;
        if (error < 0)
                m->embed_request_failures_total++;
        histogram_observe(&m->embed_duration, duration_usec);
}
