/* SPDX-License-Identifier: MIT */
/* `mpool-client metrics`: Metrics() in Prometheus' text exposition format
 * (version 0.0.4), for node_exporter's textfile collector. Everything is
 * fetched and checked before the first line is written, so that a failure
 * leaves no half-written file behind a redirection. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "json-out.h"
#include "log.h"
#include "macro.h"
#include "mpool-bus.h"

/* What the daemon may send in one histogram: more would be a daemon bug or
 * not mpoold; a bound keeps the output bounded too. */
#define BUCKETS_MAX 64

static const char *const model_states[] = { "available", "loading", "loaded", "unloading", "error" };

/* An unsigned integer of a JSON array (as json-out.h stores them). */
static bool item_u64(const cJSON *j, uint64_t *ret) {
        char *end;

        if (!cJSON_IsRaw(j) || !j->valuestring || j->valuestring[0] == '-')
                return false;
        errno = 0;
        *ret = strtoull(j->valuestring, &end, 10);
        return errno == 0 && end != j->valuestring && *end == 0;
}

/* Microseconds as seconds, exact and without trailing zeros: "0.005", "2.5", "60". */
static void print_seconds(FILE *f, uint64_t usec) {
        uint64_t frac = usec % USEC_PER_SEC;
        char digits[8];
        size_t n;

        fprintf(f, "%" PRIu64, usec / USEC_PER_SEC);
        if (frac == 0)
                return;
        n = (size_t) snprintf(digits, sizeof digits, "%06" PRIu64, frac);
        while (n > 0 && digits[n - 1] == '0')
                digits[--n] = 0;
        fprintf(f, ".%s", digits);
}

/* A label value as the format wants it: backslash, double quote and line
 * feed escaped, everything else (UTF-8 included) as it is. */
static void print_label_value(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++)
                switch (*s) {
                case '\\':
                        fputs("\\\\", f);
                        break;
                case '"':
                        fputs("\\\"", f);
                        break;
                case '\n':
                        fputs("\\n", f);
                        break;
                default:
                        fputc(*s, f);
                }
        fputc('"', f);
}

static void print_family(FILE *f, const char *name, const char *type, const char *help) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void print_pool_value(FILE *f, const cJSON *metrics, const char *key, const char *name, const char *type,
                             const char *help) {
        print_family(f, name, type, help);
        fprintf(f, "%s %" PRIu64 "\n", name, json_get_u64(metrics, key, 0));
}

typedef struct HistogramData {
        uint64_t bounds[BUCKETS_MAX];
        uint64_t buckets[BUCKETS_MAX + 1];
        size_t n_bounds;
        uint64_t sum_usec;
        uint64_t count;
} HistogramData;

/* Reads PREFIX_bounds_usec, PREFIX_buckets, PREFIX_sum_usec and
 * PREFIX_count, and checks that they make a histogram. */
static int histogram_read(const cJSON *metrics, const char *prefix, HistogramData *ret) {
        const cJSON *bounds, *buckets, *j;
        char key[64];
        size_t i;

        snprintf(key, sizeof key, "%s_bounds_usec", prefix);
        bounds = cJSON_GetObjectItemCaseSensitive(metrics, key);
        snprintf(key, sizeof key, "%s_buckets", prefix);
        buckets = cJSON_GetObjectItemCaseSensitive(metrics, key);
        if (!cJSON_IsArray(bounds) || !cJSON_IsArray(buckets))
                return -EBADMSG;
        ret->n_bounds = (size_t) cJSON_GetArraySize(bounds);
        if (ret->n_bounds > BUCKETS_MAX || (size_t) cJSON_GetArraySize(buckets) != ret->n_bounds + 1)
                return -EBADMSG;

        i = 0;
        cJSON_ArrayForEach(j, bounds) {
                if (!item_u64(j, &ret->bounds[i]) || (i > 0 && ret->bounds[i] <= ret->bounds[i - 1]))
                        return -EBADMSG;
                i++;
        }
        i = 0;
        cJSON_ArrayForEach(j, buckets) {
                if (!item_u64(j, &ret->buckets[i]) || (i > 0 && ret->buckets[i] < ret->buckets[i - 1]))
                        return -EBADMSG;
                i++;
        }
        snprintf(key, sizeof key, "%s_sum_usec", prefix);
        ret->sum_usec = json_get_u64(metrics, key, 0);
        snprintf(key, sizeof key, "%s_count", prefix);
        ret->count = json_get_u64(metrics, key, UINT64_MAX);
        if (ret->count != ret->buckets[ret->n_bounds])
                return -EBADMSG;
        return 0;
}

static void print_histogram(FILE *f, const HistogramData *h, const char *name, const char *help) {
        print_family(f, name, "histogram", help);
        for (size_t i = 0; i < h->n_bounds; i++) {
                fprintf(f, "%s_bucket{le=\"", name);
                print_seconds(f, h->bounds[i]);
                fprintf(f, "\"} %" PRIu64 "\n", h->buckets[i]);
        }
        fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, h->buckets[h->n_bounds]);
        fprintf(f, "%s_sum ", name);
        print_seconds(f, h->sum_usec);
        fprintf(f, "\n%s_count %" PRIu64 "\n", name, h->count);
}

static void print_model_values(FILE *f, const cJSON *models, const char *key, const char *name, const char *type,
                               const char *help) {
        const cJSON *model;

        print_family(f, name, type, help);
        cJSON_ArrayForEach(model, models) {
                fprintf(f, "%s{model=", name);
                print_label_value(f, model->string);
                fprintf(f, "} %" PRIu64 "\n", cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(model, key))
                                ? (uint64_t) json_get_bool(model, key, false)
                                : json_get_u64(model, key, 0));
        }
}

static void print_metrics(FILE *f, const cJSON *metrics, const HistogramData *loads, const HistogramData *embeds) {
        const cJSON *unloads = cJSON_GetObjectItemCaseSensitive(metrics, "unloads_total");
        const cJSON *models = cJSON_GetObjectItemCaseSensitive(metrics, "models");
        const cJSON *j;

        print_pool_value(f, metrics, "memory_total", "mpool_memory_total_bytes", "gauge",
                         "Memory of the host, or of mpoold's cgroup if lower.");
        print_pool_value(f, metrics, "memory_available", "mpool_memory_available_bytes", "gauge",
                         "MemAvailable as mpoold last read it.");
        print_pool_value(f, metrics, "memory_limit", "mpool_memory_limit_bytes", "gauge",
                         "The pool's memory limit (MemoryLimit=).");
        print_pool_value(f, metrics, "memory_used", "mpool_memory_used_bytes", "gauge",
                         "Memory the models hold.");
        print_pool_value(f, metrics, "models_loaded", "mpool_models_loaded", "gauge", "Models loaded.");
        print_family(f, "mpool_uptime_seconds", "gauge", "Time since mpoold started.");
        fputs("mpool_uptime_seconds ", f);
        print_seconds(f, json_get_u64(metrics, "uptime_usec", 0));
        fputc('\n', f);

        print_pool_value(f, metrics, "loads_total", "mpool_loads_total", "counter", "Loads that completed.");
        print_pool_value(f, metrics, "load_failures_total", "mpool_load_failures_total", "counter",
                         "Load requests that failed, cancellations apart.");
        print_pool_value(f, metrics, "loads_cancelled_total", "mpool_loads_cancelled_total", "counter",
                         "Loads cancelled before they completed.");
        print_family(f, "mpool_unloads_total", "counter",
                     "Unloads that completed, by reason (request, idle, memory-limit, memory-pressure, shutdown).");
        cJSON_ArrayForEach(j, unloads) {
                uint64_t v;

                if (!item_u64(j, &v))
                        continue;
                fputs("mpool_unloads_total{reason=", f);
                print_label_value(f, j->string);
                fprintf(f, "} %" PRIu64 "\n", v);
        }
        print_pool_value(f, metrics, "memory_pressure_events_total", "mpool_memory_pressure_events_total", "counter",
                         "Memory checks that found the host short of memory or tasks stalled on it.");
        print_pool_value(f, metrics, "embed_requests_total", "mpool_embed_requests_total", "counter",
                         "Embed calls answered.");
        print_pool_value(f, metrics, "embed_request_failures_total", "mpool_embed_request_failures_total", "counter",
                         "Embed calls answered with an error.");
        print_histogram(f, loads, "mpool_load_duration_seconds", "Time completed loads took, from start to loaded.");
        print_histogram(f, embeds, "mpool_embed_request_duration_seconds",
                        "Time Embed calls took, from arrival to answer, a load they waited for included.");

        print_family(f, "mpool_model_state", "gauge", "1 for the model's state, 0 for the others.");
        cJSON_ArrayForEach(j, models) {
                const char *state = json_get_string(j, "state", "");

                for (size_t i = 0; i < ELEMENTSOF(model_states); i++) {
                        fputs("mpool_model_state{model=", f);
                        print_label_value(f, j->string);
                        fprintf(f, ",state=\"%s\"} %d\n", model_states[i], strcmp(state, model_states[i]) == 0);
                }
        }
        print_model_values(f, models, "memory_bytes", "mpool_model_memory_bytes", "gauge",
                           "Memory the model holds (0 when not loaded).");
        print_model_values(f, models, "pinned", "mpool_model_pinned", "gauge", "1 if the model is pinned.");
        print_model_values(f, models, "holds", "mpool_model_holds", "gauge", "Holds on the model (Acquire).");
        print_model_values(f, models, "requests_total", "mpool_model_requests_total", "counter",
                           "Uses of the model since mpoold started.");
        print_model_values(f, models, "tokens_total", "mpool_model_tokens_total", "counter",
                           "Tokens the model computed since mpoold started.");
        print_model_values(f, models, "workers", "mpool_model_workers", "gauge", "Threads computing for the model.");
        print_model_values(f, models, "active_requests", "mpool_model_active_requests", "gauge",
                           "Embed calls the model's workers run.");
        print_model_values(f, models, "queued_requests", "mpool_model_queued_requests", "gauge",
                           "Embed calls waiting for a worker of the model.");
}

int verb_metrics(int argc, char *argv[]) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_json_ cJSON *metrics = NULL;
        HistogramData loads, embeds;
        int r;

        r = client_connect(&bus);
        if (r != 0)
                return r;
        r = sd_bus_call_method(bus, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "Metrics", &error,
                               &reply, NULL);
        if (r < 0)
                return report_bus_error(&error, r, "query mpoold", NULL);
        r = sd_bus_message_has_signature(reply, "a{sv}") ? bus_message_read_json(reply, &metrics) : -EBADMSG;
        if (r < 0 || !cJSON_IsObject(metrics)) {
                log_error("mpoold's answer to Metrics is not what this client understands.");
                return MPOOL_EXIT_FAILURE;
        }

        if (arg_json != JSON_OFF)
                return json_print(metrics, stdout);

        if (histogram_read(metrics, "load_duration", &loads) < 0 ||
            histogram_read(metrics, "embed_duration", &embeds) < 0 ||
            !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(metrics, "unloads_total")) ||
            !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(metrics, "models"))) {
                log_error("mpoold sent metrics that do not add up; nothing written.");
                return MPOOL_EXIT_FAILURE;
        }

        print_metrics(stdout, metrics, &loads, &embeds);
        if (fflush(stdout) != 0 || ferror(stdout)) {
                r = errno > 0 ? -errno : -EIO;
                if (r == -EPIPE)
                        return MPOOL_EXIT_FAILURE;
                return log_error_errno(r, "Cannot write the metrics: %m");
        }
        return 0;
}
