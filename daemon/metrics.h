/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The daemon's counters for monitoring (Metrics() on the bus, `mpool-client
 * metrics`): monotonic since start, never reset by an unload or a reload,
 * so that a scraper's rate() sees only growth. Pure: no I/O, no clock; the
 * callers pass durations. */

/* Fixed buckets, as Prometheus' histograms have them: a scraper can only
 * aggregate histograms whose bounds agree, so the bounds are constants of
 * the daemon, not configuration. */
#define HISTOGRAM_BOUNDS_MAX 16U

typedef struct Histogram {
        const uint64_t *bounds_usec;  /* upper bounds, strictly ascending */
        size_t n_bounds;              /* ≤ HISTOGRAM_BOUNDS_MAX; +Inf is implicit */
        uint64_t counts[HISTOGRAM_BOUNDS_MAX + 1]; /* per bucket, not cumulative; the last is above every bound */
        uint64_t count;
        uint64_t sum_usec;            /* saturates rather than wraps */
} Histogram;

void histogram_init(Histogram *h, const uint64_t *bounds_usec, size_t n_bounds);
void histogram_observe(Histogram *h, uint64_t usec);
/* Cumulative counts as the exposition format has them: ret[i] observations
 * ≤ bounds_usec[i], ret[n_bounds] = count (+Inf). ret has n_bounds + 1 entries. */
void histogram_cumulative(const Histogram *h, uint64_t *ret);

/* Why models were unloaded (include/mpool-bus.h's MPOOL_REASON_…), with a
 * catch-all so that a new reason is counted before it is named here. */
typedef enum MetricsUnloadReason {
        METRICS_UNLOAD_REQUEST,
        METRICS_UNLOAD_IDLE,
        METRICS_UNLOAD_MEMORY_LIMIT,
        METRICS_UNLOAD_MEMORY_PRESSURE,
        METRICS_UNLOAD_SHUTDOWN,
        METRICS_UNLOAD_OTHER,
        _METRICS_UNLOAD_REASON_MAX,
} MetricsUnloadReason;

const char *metrics_unload_reason_to_string(MetricsUnloadReason r);
MetricsUnloadReason metrics_unload_reason_from_string(const char *s);

typedef struct Metrics {
        uint64_t loads_total;             /* loads that completed */
        uint64_t load_failures_total;     /* loads that failed (not cancelled) */
        uint64_t loads_cancelled_total;
        uint64_t unloads_total[_METRICS_UNLOAD_REASON_MAX];
        uint64_t memory_pressure_events_total; /* checks that found the host short of memory */
        uint64_t embed_requests_total;    /* Embed calls answered, whatever the answer */
        uint64_t embed_request_failures_total;
        Histogram load_duration;          /* completed loads, from start to loaded */
        Histogram embed_duration;         /* Embed calls, from arrival to answer (a load included) */
} Metrics;

void metrics_init(Metrics *m);
void metrics_load_finished(Metrics *m, int error, uint64_t duration_usec);
void metrics_unloaded(Metrics *m, const char *reason);
void metrics_memory_pressure(Metrics *m);
void metrics_embed_finished(Metrics *m, int error, uint64_t duration_usec);
