/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdint.h>

#include "bus-metrics.h"
#include "macro.h"
#include "manager.h"
#include "metrics.h"
#include "model-compute.h"
#include "model-lifecycle.h"
#include "time-util.h"

/* Opens the entry key of an a{sv} and its variant of signature. */
static int open_entry(sd_bus_message *reply, const char *key, const char *signature) {
        int r;

        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', signature);
        return r;
}

static int close_entry(sd_bus_message *reply) {
        int r;

        r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int append_u64_array(sd_bus_message *reply, const char *key, const uint64_t *v, size_t n) {
        int r;

        r = open_entry(reply, key, "at");
        if (r >= 0)
                r = sd_bus_message_append_array(reply, 't', v, n * sizeof *v);
        if (r >= 0)
                r = close_entry(reply);
        return r;
}

/* A histogram as four entries: "PREFIX_bounds_usec" (at: upper bounds),
 * "PREFIX_buckets" (at: cumulative counts, one more than the bounds, the
 * last for +Inf), "PREFIX_sum_usec" (t) and "PREFIX_count" (t). */
static int append_histogram(sd_bus_message *reply, const char *prefix, const Histogram *h) {
        uint64_t cumulative[HISTOGRAM_BOUNDS_MAX + 1];
        char key[64];
        int r;

        histogram_cumulative(h, cumulative);

        snprintf(key, sizeof key, "%s_bounds_usec", prefix);
        r = append_u64_array(reply, key, h->bounds_usec, h->n_bounds);
        if (r < 0)
                return r;
        snprintf(key, sizeof key, "%s_buckets", prefix);
        r = append_u64_array(reply, key, cumulative, h->n_bounds + 1);
        if (r < 0)
                return r;
        snprintf(key, sizeof key, "%s_sum_usec", prefix);
        r = sd_bus_message_append(reply, "{sv}", key, "t", h->sum_usec);
        if (r < 0)
                return r;
        snprintf(key, sizeof key, "%s_count", prefix);
        return sd_bus_message_append(reply, "{sv}", key, "t", h->count);
}

static int append_unloads(sd_bus_message *reply, const Metrics *metrics) {
        int r;

        r = open_entry(reply, "unloads_total", "a{st}");
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{st}");
        /* Every reason, zeros included: a series that appears only at its
         * first event hides the rise from 0 to 1 from rate(). */
        for (MetricsUnloadReason i = 0; r >= 0 && i < _METRICS_UNLOAD_REASON_MAX; i++)
                r = sd_bus_message_append(reply, "{st}", metrics_unload_reason_to_string(i), metrics->unloads_total[i]);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = close_entry(reply);
        return r;
}

static int append_models(sd_bus_message *reply, Manager *m) {
        int r;

        r = open_entry(reply, "models", "a{sa{sv}}");
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sa{sv}}");
        if (r < 0)
                return r;
        POOL_FOREACH(model, &m->pool) {
                ComputeCounts compute;

                /* As in Status: a name not yet found in the store is no model. */
                if (!model_is_announced(model))
                        continue;
                model_compute_counts(model, &compute);
                r = sd_bus_message_open_container(reply, 'e', "sa{sv}");
                if (r < 0)
                        return r;
                r = sd_bus_message_append(
                                reply, "sa{sv}", model->name, 9,
                                "state", "s", model_state_to_string(model->state),
                                "memory_bytes", "t", model->memory_bytes,
                                "pinned", "b", model->pinned,
                                "holds", "u", model->holds,
                                "requests_total", "t", model->requests_total,
                                "tokens_total", "t", model->tokens_total,
                                "workers", "u", compute.workers,
                                "active_requests", "u", compute.active,
                                "queued_requests", "u", compute.queued);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(reply);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = close_entry(reply);
        return r;
}

int bus_method_metrics(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        const Metrics *metrics = &m->metrics;
        MemoryInfo memory;
        int r;

        /* Fresh figures for the scraper; the monitor's last ones if /proc fails. */
        if (memory_info_read(&memory) >= 0)
                m->memory.available = memory.available;

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_append(
                        reply, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}",
                        "memory_total", "t", m->memory.total,
                        "memory_available", "t", m->memory.available,
                        "memory_limit", "t", m->pool.memory_limit,
                        "memory_used", "t", pool_memory_used(&m->pool),
                        "models_loaded", "u", pool_models_loaded(&m->pool),
                        "uptime_usec", "t", now_monotonic_usec() - m->started_monotonic,
                        "loads_total", "t", metrics->loads_total,
                        "load_failures_total", "t", metrics->load_failures_total,
                        "loads_cancelled_total", "t", metrics->loads_cancelled_total,
                        "memory_pressure_events_total", "t", metrics->memory_pressure_events_total,
                        "embed_requests_total", "t", metrics->embed_requests_total,
                        "embed_request_failures_total", "t", metrics->embed_request_failures_total);
        if (r < 0)
                return r;
        r = append_unloads(reply, metrics);
        if (r < 0)
                return r;
        r = append_histogram(reply, "load_duration", &metrics->load_duration);
        if (r < 0)
                return r;
        r = append_histogram(reply, "embed_duration", &metrics->embed_duration);
        if (r < 0)
                return r;
        r = append_models(reply, m);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;

        return sd_bus_message_send(reply);
}
