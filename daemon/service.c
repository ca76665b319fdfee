/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "model-compute.h"
#include "model-lifecycle.h"
#include "service.h"
#include "catalog.h"
#include "download.h"
#include "inspection.h"
#include "mpool-bus.h"
#include "store.h"
#include "store-watch.h"
#include "strv.h"
#include "time-util.h"

/* MemAvailable has no event of its own; this often is cheap (one read of
 * /proc/meminfo) and quick enough to act before the kernel's OOM killer. */
#define MEMORY_CHECK_INTERVAL_USEC (2 * USEC_PER_SEC)
/* Idle unloads happen within this of their deadline. */
#define IDLE_TIMER_ACCURACY_USEC (10 * USEC_PER_MSEC)

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        downloads_stop_all(m);
        model_compute_free_released(m);
        catalog_free(m->catalog);
        inspections_stop_all(m);
        downloads_free(m);
        store_watch_free(m->store_watch);
        sd_event_source_disable_unref(m->forget_source);
        polkit_registry_free(m->polkit);
        peers_done(&m->peers);
        POOL_FOREACH(model, &m->pool) {
                model_runtime_free(model->userdata);
                model->userdata = NULL;
        }
        pool_done(&m->pool);
        memory_monitor_free(m->memory_monitor);
        workpool_free(m->loaders);
        workpool_free(m->releaser);
        sd_event_source_disable_unref(m->idle_timer);
        sd_bus_slot_unref(m->object_manager_slot);
        sd_bus_slot_unref(m->peer_left_slot);
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        config_done(&m->config);
        free(m);
        return NULL;
}

int manager_configure(Manager *m, const Config *config) {
        uint64_t limit;
        int r;

        assert(m);
        assert(config);

        r = memory_info_read(&m->memory);
        if (r < 0)
                return log_error_errno(r, "Cannot read the host's memory figures: %m");

        limit = MIN(size_or_percent_resolve(&config->memory_limit, m->memory.total), m->memory.total);
        m->memory_available_min = size_or_percent_resolve(&config->memory_available_min, m->memory.total);
        pool_init(&m->pool, limit, config->max_loaded_models, config->idle_timeout_sec,
                  config->idle_policy == IDLE_POLICY_GLOBAL ? POOL_IDLE_GLOBAL : POOL_IDLE_PER_MODEL);

        log_info("Memory: %" PRIu64 " MiB total, limit %" PRIu64 " MiB, unloading idle models below %" PRIu64
                 " MiB available.", m->memory.total >> 20, limit >> 20, m->memory_available_min >> 20);
        return 0;
}

/* Runs once before the loop starts serving, so reading the store's
 * directories here delays start-up but never a caller. */
int manager_scan_store(Manager *m) {
        _cleanup_(strv_freep) char **names = NULL;
        int r;

        r = store_list(m->config.model_dir, m->config.huggingface_cache, &names);
        if (r < 0)
                return log_error_errno(r, "Cannot list the models in %s: %m", m->config.model_dir);

        for (char **name = names; name && *name; name++) {
                _cleanup_free_ char *error = NULL, *revision = NULL;
                _cleanup_(model_profile_done) ModelProfile profile = MODEL_PROFILE_NULL;
                ModelSource source = MODEL_SOURCE_STORE;
                uint64_t size_bytes = 0;

                r = store_measure(m->config.model_dir, m->config.huggingface_cache, *name, &size_bytes, &source,
                                  &revision, &profile, &error);
                r = model_found(m, *name, r, size_bytes, source, revision, error, &profile);
                if (r < 0)
                        return r;
        }

        log_info("Found %zu model(s) in %s%s%s.", pool_size(&m->pool), m->config.model_dir,
                 m->config.huggingface_cache ? " and " : "", strempty(m->config.huggingface_cache));
        return 0;
}

static bool names_contain(char **sorted, size_t n, const char *name) {
        size_t lo = 0, hi = n;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(sorted[mid], name);

                if (c == 0)
                        return true;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

/* The store was looked at again: models that left go (or go once they let
 * go), new names are resolved off the loop and announced when they come
 * back (on_store_resolved). */
static void on_store_listed(char **names, void *userdata) {
        Manager *m = userdata;
        _cleanup_(strv_freep) char **left = NULL;
        size_t n = strv_length(names);
        int r;

        if (m->shutting_down)
                return;

        /* Names first: forgetting a model changes the pool. */
        POOL_FOREACH(model, &m->pool) {
                const ModelRuntime *rt = model->userdata;

                /* A model being pulled for the first time is not in the
                 * store yet: it has not left it. */
                if (!model_is_announced(model) || rt->left_store || model->state == MODEL_DOWNLOADING ||
                    names_contain(names, n, model->name))
                        continue;
                r = strv_extend(&left, model->name);
                if (r < 0) {
                        log_oom();
                        break;
                }
        }
        for (char **name = left; name && *name; name++) {
                PoolModel *model = pool_find(&m->pool, *name);

                if (model)
                        model_left_store(m, model);
        }

        for (char **name = names; name && *name; name++) {
                PoolModel *model = pool_find(&m->pool, *name);

                if (model && model_is_announced(model)) {
                        /* Back before it was forgotten. */
                        model_announce(m, model);
                        continue;
                }
                r = store_watch_resolve(m->store_watch, *name);
                if (r < 0)
                        log_warning_errno(r, "Cannot look into model %s, found in the store: %m", *name);
        }
}

static void on_store_resolved(const char *name, int r, uint64_t size_bytes, ModelSource source, const char *revision,
                              const char *error, ModelProfile *profile, void *userdata) {
        Manager *m = userdata;

        if (r != -ECANCELED && !m->shutting_down)
                (void) model_found(m, name, r, size_bytes, source, revision, error, profile);   /* logged */
        manager_work_done(m);
}

static const StoreWatchCallbacks store_watch_callbacks = {
        .listed = on_store_listed,
        .resolved = on_store_resolved,
};

/* Unloads the victims (a list from the pool's policy) for the reason. */
static void unload_victims(Manager *m, PoolModel **victims, size_t n, const char *reason) {
        for (size_t i = 0; i < n; i++)
                model_unload(m, victims[i], reason);
        if (n > 0)
                manager_reschedule_idle(m);
}

static int on_idle_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ PoolModel **victims = pool_victims_new(&m->pool);

        if (!victims) {
                /* The timer fires again: nothing is lost but a little time. */
                log_oom();
                return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        }
        unload_victims(m, victims, pool_collect_expired(&m->pool, now_monotonic_usec(), victims, pool_size(&m->pool)),
                       MPOOL_REASON_IDLE);
        manager_reschedule_idle(m);
        return 0;
}

void manager_enforce_limit(Manager *m, const char *reason) {
        _cleanup_free_ PoolModel **victims = pool_victims_new(&m->pool);

        if (!victims) {
                log_oom();
                return;
        }
        unload_victims(m, victims, pool_collect_over_limit(&m->pool, victims, pool_size(&m->pool)), reason);
        if (pool_memory_committed(&m->pool) > m->pool.memory_limit)
                log_notice("The pool holds %" PRIu64 " bytes, over its limit of %" PRIu64 " bytes: held or busy "
                           "models stay until they are idle.", pool_memory_committed(&m->pool), m->pool.memory_limit);
}

/* A percentage MemoryLimit= follows the host's (or cgroup's) memory. */
static void follow_memory_total(Manager *m) {
        uint64_t old = m->pool.memory_limit;

        if (!pool_follow_memory_total(&m->pool, &m->config.memory_limit, m->memory.total))
                return;
        log_info("The memory total changed to %" PRIu64 " MiB: the memory limit follows, from %" PRIu64
                 " to %" PRIu64 " MiB.", m->memory.total >> 20, old >> 20, m->pool.memory_limit >> 20);
        manager_emit_changed(m, MANAGER_CHANGED_MEMORY_LIMIT);
        manager_enforce_limit(m, MPOOL_REASON_MEMORY_LIMIT);
        manager_update_status(m);
}

static void on_memory(MemoryMonitor *monitor, const MemoryInfo *info, bool stalled, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ PoolModel **victims = NULL;
        uint64_t to_free = 0;
        size_t n;

        models_measure_resident(m);

        if (info->total != m->memory.total) {
                m->memory.total = info->total;
                manager_emit_changed(m, MANAGER_CHANGED_MEMORY_TOTAL);
                follow_memory_total(m);
        }
        m->memory.available = info->available;

        if (info->available < m->memory_available_min)
                to_free = m->memory_available_min - info->available;
        else if (stalled)
                to_free = 1;   /* stalls with memory to spare: give back one model at a time */
        if (to_free == 0)
                return;
        /* Counted whether or not an idle model can go: pressure with nothing
         * to give back is what an operator most needs to see. */
        metrics_memory_pressure(&m->metrics);

        victims = pool_victims_new(&m->pool);
        if (!victims) {
                log_oom();
                return;
        }
        n = pool_collect_pressure_victims(&m->pool, to_free, victims, pool_size(&m->pool));
        if (n == 0)
                return;

        log_notice("Memory pressure (%" PRIu64 " MiB available, minimum %" PRIu64 " MiB%s): unloading %zu idle model(s).",
                   info->available >> 20, m->memory_available_min >> 20, stalled ? ", tasks stalled" : "", n);
        unload_victims(m, victims, n, MPOOL_REASON_MEMORY_PRESSURE);
}

static void maybe_exit(Manager *m) {
        int r;

        if (!m->shutting_down || !models_settled(m) || store_watch_busy(m->store_watch) || catalog_busy(m->catalog) ||
            downloads_busy(m))
                return;
        r = sd_event_exit(m->event, 0);
        if (r < 0)
                log_error_errno(r, "Cannot stop the event loop: %m");
}

static void on_work_done(Manager *m) {
        if (m->shutting_down)
                maybe_exit(m);
        else
                manager_preload(m);
}

int manager_start(Manager *m) {
        int r;

        assert(m);
        assert(m->event);

        m->on_work_done = on_work_done;
        model_compute_setup(m);
        downloads_clean_staging(m);

        r = workpool_new(m->event, "loader", m->config.max_concurrent_loads, m->config.max_queued_loads,
                         &m->loaders);
        if (r < 0)
                return log_error_errno(r, "Cannot start the loading workers: %m");

        r = workpool_new(m->event, "release", 1, POOL_MODELS_MAX, &m->releaser);
        if (r < 0)
                return log_error_errno(r, "Cannot start the worker that unmaps unloaded models: %m");

        r = sd_event_add_time(m->event, &m->idle_timer, CLOCK_MONOTONIC, UINT64_MAX,
                              IDLE_TIMER_ACCURACY_USEC, on_idle_timer, m);
        if (r < 0)
                return log_error_errno(r, "Cannot create the idle timer: %m");
        r = sd_event_source_set_enabled(m->idle_timer, SD_EVENT_OFF);
        if (r < 0)
                return log_error_errno(r, "Cannot create the idle timer: %m");

        r = memory_monitor_new(m->event, MEMORY_CHECK_INTERVAL_USEC, on_memory, m, &m->memory_monitor);
        if (r < 0)
                return log_error_errno(r, "Cannot watch memory pressure: %m");

        r = store_watch_new(m->event, m->config.model_dir, m->config.huggingface_cache, &store_watch_callbacks, m,
                            &m->store_watch);
        if (r < 0)
                return log_error_errno(r, "Cannot watch the store for models added by hand: %m");

        r = catalog_new(m, &m->catalog);
        if (r < 0)
                return log_error_errno(r, "Cannot start the worker of Register and Remove: %m");

        return 0;
}

static void on_preload_done(Request *req, void *userdata) {
        if (req->error < 0)
                log_error_errno(req->error, "Cannot preload %s: %s", req->model,
                                req->error_message ?: "out of memory");
}

void manager_preload(Manager *m) {
        char **preload = m->config.preload;

        /* No more than there are workers: Preload must not fill the queue
         * that callers' loads wait in. */
        while (preload && preload[m->preload_next] && !m->shutting_down &&
               workpool_in_flight(m->loaders) < workpool_threads(m->loaders)) {
                _cleanup_(request_unrefp) Request *req = NULL;
                const char *name = preload[m->preload_next++];
                int r;

                r = request_new(REQUEST_LOAD, name, NULL, on_preload_done, m, &req);
                if (r < 0) {
                        log_error_errno(r, "Cannot preload %s: %m", name);
                        continue;
                }
                req->pin = true;
                manager_submit(m, req);
        }
}

static void on_hold_dropped(const char *model_name, unsigned count, void *userdata) {
        model_drop_holds(userdata, model_name, count);
}

void manager_peer_left(Manager *m, const char *name) {
        unsigned n;

        /* Nobody is left to answer; the loads themselves go on, but what
         * only this peer asked of the hub stops. */
        inspections_drop_owner(m, name);
        models_drop_requests_of(m, name);
        n = peers_drop(&m->peers, name, on_hold_dropped, m);
        if (n > 0)
                log_info("Peer %s left the bus; dropped its %u hold(s).", name, n);
}

void manager_bus_lost(Manager *m) {
        if (m->bus_lost)
                return;
        m->bus_lost = true;
        log_error("The connection to the bus is gone; unloading every model and stopping.");
        manager_begin_shutdown(m);
}


void manager_begin_shutdown(Manager *m) {
        int r;

        if (m->shutting_down)
                return;
        m->shutting_down = true;
        r = sd_notify(false, "STOPPING=1\nSTATUS=Unloading every model.");
        if (r < 0)
                log_debug_errno(r, "Cannot tell the service manager we stop: %m");
        log_info("Shutting down: unloading every model.");

        store_watch_stop(m->store_watch);
        catalog_stop(m->catalog);
        downloads_stop_all(m);
        inspections_stop_all(m);
        models_stop_all(m);
        maybe_exit(m);
}

int manager_set_memory_limit(Manager *m, uint64_t limit, uint64_t *ret_needed) {
        uint64_t old = m->pool.memory_limit;
        int r;

        r = pool_set_memory_limit(&m->pool, limit, ret_needed);
        if (r < 0)
                return r;

        log_info("Memory limit changed from %" PRIu64 " to %" PRIu64 " bytes.", old, limit);
        manager_emit_changed(m, MANAGER_CHANGED_MEMORY_LIMIT);
        manager_enforce_limit(m, MPOOL_REASON_MEMORY_LIMIT);
        manager_update_status(m);
        return 0;
}

void manager_set_idle_timeout(Manager *m, int64_t idle_timeout_sec) {
        log_info("Idle timeout changed from %" PRIi64 " to %" PRIi64 " seconds.", m->pool.idle_timeout_sec,
                 idle_timeout_sec);
        m->pool.idle_timeout_sec = idle_timeout_sec;
        manager_emit_changed(m, MANAGER_CHANGED_IDLE_TIMEOUT);
        POOL_FOREACH(model, &m->pool)
                if (model->state == MODEL_LOADED)
                        manager_emit_model_changed(m, model, MODEL_CHANGED_EXPIRES);
        manager_reschedule_idle(m);
}
