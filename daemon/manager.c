/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "bus-manager.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "mpool-bus.h"
#include "parse-util.h"
#include "peer.h"
#include "store.h"
#include "time-util.h"

/* MemAvailable has no event of its own; this often is cheap (one read of
 * /proc/meminfo) and quick enough to act before the kernel's OOM killer. */
#define MEMORY_CHECK_INTERVAL_USEC (2 * USEC_PER_SEC)
/* LoadProgress: at most 20 a second for each model. */
#define PROGRESS_SIGNAL_INTERVAL_USEC (50 * USEC_PER_MSEC)
/* Idle unloads happen within this of their deadline. */
#define IDLE_TIMER_ACCURACY_USEC (10 * USEC_PER_MSEC)

uint64_t manager_realtime(const Manager *m, uint64_t monotonic) {
        if (monotonic == 0 || monotonic == UINT64_MAX)
                return 0;
        return m->started_realtime + (monotonic - m->started_monotonic);
}

static ModelRuntime *runtime_of(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        if (!rt) {
                rt = calloc(1, sizeof *rt);
                if (!rt)
                        return NULL;
                rt->manager = m;
                model->userdata = rt;
        }
        return rt;
}

static UnloadBatch *new0_batch(sd_bus_message *reply) {
        UnloadBatch *batch = calloc(1, sizeof *batch);

        if (!batch)
                return NULL;
        batch->reply = sd_bus_message_ref(reply);
        batch->n_pending = 1;
        return batch;
}

static void batch_unref(UnloadBatch *batch, bool send) {
        if (--batch->n_pending > 0)
                return;
        if (send) {
                int r = sd_bus_message_send(batch->reply);
                if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                        log_warning_errno(r, "Cannot send the reply to UnloadAll: %m");
        }
        sd_bus_message_unref(batch->reply);
        free(batch);
}

static void runtime_free(ModelRuntime *rt) {
        if (!rt)
                return;
        assert(!rt->job);
        for (size_t i = 0; i < rt->n_waiters; i++) {
                if (rt->waiters[i].batch)
                        batch_unref(rt->waiters[i].batch, false);
                sd_bus_message_unref(rt->waiters[i].call);
        }
        free(rt->waiters);
        loader_mappings_release(rt->mappings, rt->n_mappings);
        free(rt);
}

int manager_new(Manager **ret) {
        _cleanup_free_ Manager *m = NULL;

        assert(ret);

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->started_realtime = now_realtime_usec();
        m->started_monotonic = now_monotonic_usec();

        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        polkit_registry_free(m->polkit);
        peers_free(m);
        for (PoolModel *model = m->pool.models; model; model = model->next) {
                runtime_free(model->userdata);
                model->userdata = NULL;
        }
        pool_done(&m->pool);
        memory_monitor_free(m->memory_monitor);
        loader_free(m->loader);
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

static uint64_t files_size(const ModelLocation *location) {
        uint64_t total = 0;

        for (size_t i = 0; i < location->n_weights; i++) {
                struct stat st;

                if (fstat(location->weight_fds[i], &st) >= 0)
                        total += (uint64_t) st.st_size;
        }
        return total;
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
                _cleanup_(model_location_freep) ModelLocation *location = NULL;
                _cleanup_free_ char *error = NULL;
                PoolModel *model;

                r = pool_add(&m->pool, *name, &model);
                if (r < 0)
                        return log_error_errno(r, "Cannot add model %s to the pool: %m", *name);
                if (!runtime_of(m, model))
                        return log_oom();
                ((ModelRuntime *) model->userdata)->announced = true;

                r = store_resolve(m->config.model_dir, m->config.huggingface_cache, *name, &location, &error);
                if (r < 0) {
                        log_warning("Model %s is not usable: %s", *name, strempty(error));
                        model->state = MODEL_ERROR;
                        model->error = TAKE_PTR(error);
                        continue;
                }
                model->size_bytes = files_size(location);
        }

        log_info("Found %zu model(s) in %s%s%s.", m->pool.n_models, m->config.model_dir,
                 m->config.huggingface_cache ? " and " : "", strempty(m->config.huggingface_cache));
        return 0;
}

void manager_update_status(Manager *m) {
        if (!m->bus)
                return;
        (void) sd_notifyf(false, "STATUS=%u model(s) loaded, %" PRIu64 " of %" PRIu64 " MiB in use.",
                          pool_models_loaded(&m->pool), pool_memory_used(&m->pool) >> 20,
                          m->pool.memory_limit >> 20);
}

static void model_changed(Manager *m, PoolModel *model) {
        bus_emit_model_changed(m, model, "State", "MemoryBytes", "Holds", "ExpiresAt", NULL);
}

static void pool_changed(Manager *m) {
        bus_emit_manager_changed(m, "MemoryUsed", "LoadedModels", NULL);
        manager_update_status(m);
}

static int on_idle_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        PoolModel *victims[POOL_MODELS_MAX];
        size_t n;

        n = pool_collect_expired(&m->pool, now_monotonic_usec(), victims, ELEMENTSOF(victims));
        for (size_t i = 0; i < n; i++)
                manager_unload(m, victims[i], MPOOL_REASON_IDLE);

        manager_reschedule_idle(m);
        return 0;
}

void manager_reschedule_idle(Manager *m) {
        uint64_t next = pool_next_deadline(&m->pool);
        int r;

        if (!m->idle_timer)
                return;

        if (next == UINT64_MAX) {
                r = sd_event_source_set_enabled(m->idle_timer, SD_EVENT_OFF);
                if (r < 0)
                        log_error_errno(r, "Cannot disable the idle timer: %m");
                return;
        }

        r = sd_event_source_set_time(m->idle_timer, next);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->idle_timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Cannot arm the idle timer, idle models stay loaded: %m");
}

/* Calls of this peer that wait for a load, over every model. */
static unsigned pending_calls_of(Manager *m, const char *sender) {
        unsigned n = 0;

        if (!sender)
                return 0;
        for (PoolModel *model = m->pool.models; model; model = model->next) {
                ModelRuntime *rt = model->userdata;

                for (size_t i = 0; rt && i < rt->n_waiters; i++)
                        if (strcmp(strempty(sd_bus_message_get_sender(rt->waiters[i].call)), sender) == 0)
                                n++;
        }
        return n;
}

/* -EBUSY: too many callers wait for this model; -EUSERS: this caller has too
 * many calls waiting already. */
static int waiter_add_full(Manager *m, PoolModel *model, sd_bus_message *call, WaiterKind kind,
                           UnloadBatch *batch) {
        ModelRuntime *rt = model->userdata;
        Waiter *w;

        if (rt->n_waiters >= WAITERS_PER_MODEL_MAX)
                return -EBUSY;
        if (pending_calls_of(m, sd_bus_message_get_sender(call)) >= PENDING_CALLS_PER_PEER_MAX)
                return -EUSERS;
        w = reallocarray(rt->waiters, rt->n_waiters + 1, sizeof *w);
        if (!w)
                return -ENOMEM;
        rt->waiters = w;
        rt->waiters[rt->n_waiters++] = (Waiter) {
                .call = sd_bus_message_ref(call),
                .kind = kind,
                .batch = batch,
        };
        if (batch)
                batch->n_pending++;
        return 0;
}

static int waiter_add(Manager *m, PoolModel *model, sd_bus_message *call, WaiterKind kind) {
        return waiter_add_full(m, model, call, kind, NULL);
}

static int waiter_error(int r, const char *name, sd_bus_error *error) {
        if (r == -EBUSY)
                return sd_bus_error_setf(error, MPOOL_ERROR_BUSY, "Too many callers are waiting for %s.", name);
        if (r == -EUSERS)
                return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                         "You have %u calls waiting already; wait for one to finish.",
                                         PENDING_CALLS_PER_PEER_MAX);
        return r;
}

static void reply_or_log(int r, const char *model_name) {
        /* A caller that went away cannot be answered; that is no failure of ours. */
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot send the reply about %s: %m", model_name);
}

/* Gives a caller of Load or Acquire what it asked for from a loaded model. */
static int serve(Manager *m, PoolModel *model, sd_bus_message *call, WaiterKind kind) {
        _cleanup_free_ char *path = NULL;
        int r;

        assert(model->state == MODEL_LOADED);

        if (kind == WAITER_ACQUIRE) {
                r = manager_hold(m, model, sd_bus_message_get_sender(call));
                if (r == -EBUSY)
                        return sd_bus_reply_method_errorf(call, MPOOL_ERROR_LIMITS_EXCEEDED,
                                                          "Too many holds: at most %u per peer.",
                                                          HOLDS_PER_PEER_MAX);
                if (r == -EUSERS)
                        return sd_bus_reply_method_errorf(call, MPOOL_ERROR_LIMITS_EXCEEDED,
                                                          "Too many peers hold models (at most %u).", PEERS_MAX);
                if (r < 0)
                        return sd_bus_reply_method_errnof(call, r, "Cannot hold model %s: %m", model->name);
        }

        pool_model_use(&m->pool, model, now_monotonic_usec());

        if (kind == WAITER_ACQUIRE)
                return sd_bus_reply_method_return(call, NULL);

        r = bus_model_path(model->name, &path);
        if (r < 0)
                return sd_bus_reply_method_errnof(call, r, "Cannot name the object of %s: %m", model->name);
        return sd_bus_reply_method_return(call, "o", path);
}

/* Answers every waiter: the model is loaded, or its load ended with r. */
static void complete_waiters(Manager *m, PoolModel *model, int r, const char *message) {
        ModelRuntime *rt = model->userdata;
        Waiter *waiters = TAKE_PTR(rt->waiters);
        size_t n = rt->n_waiters;

        rt->n_waiters = 0;
        for (size_t i = 0; i < n; i++) {
                Waiter *w = &waiters[i];
                int q;

                if (w->batch) {
                        batch_unref(w->batch, true);
                        q = 0;
                } else if (w->kind == WAITER_UNLOAD)
                        q = sd_bus_reply_method_return(w->call, "b", false);
                else if (r >= 0)
                        q = serve(m, model, w->call, w->kind);
                else
                        q = sd_bus_reply_method_errorf(w->call, bus_load_error_name(r), "%s", message);
                reply_or_log(q, model->name);
                sd_bus_message_unref(w->call);
        }
        free(waiters);
}

/* Answers one side of the waiters and keeps the other. With unloads, the
 * Unload and UnloadAll callers, once a cancelled load has let go of its
 * memory (Load and Acquire callers that came after the cancellation stay,
 * for the load to start again). Otherwise the Load and Acquire callers of a
 * load being cancelled, with Cancelled and message (Unload callers stay
 * until the memory is back). */
static void answer_waiters(PoolModel *model, bool unloads, bool was_loaded, const char *message) {
        ModelRuntime *rt = model->userdata;
        size_t kept = 0;

        for (size_t i = 0; i < rt->n_waiters; i++) {
                Waiter *w = &rt->waiters[i];

                if ((w->kind == WAITER_UNLOAD) != unloads) {
                        rt->waiters[kept++] = *w;
                        continue;
                }
                if (w->batch)
                        batch_unref(w->batch, true);
                else if (unloads)
                        reply_or_log(sd_bus_reply_method_return(w->call, "b", was_loaded), model->name);
                else
                        reply_or_log(sd_bus_reply_method_errorf(w->call, MPOOL_ERROR_CANCELLED, "%s", message),
                                     model->name);
                sd_bus_message_unref(w->call);
        }
        rt->n_waiters = kept;
}

/* Forgets a model the bus never heard of (a name that turned out not to
 * exist, or a load refused before it started), so that callers cannot fill
 * the pool with names. Returns true when it did. */
static bool forget_if_unannounced(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        if ((rt && (rt->announced || rt->job || rt->n_waiters > 0)) || model->holds > 0)
                return false;
        runtime_free(rt);
        model->userdata = NULL;
        if (pool_remove(&m->pool, model) < 0) {
                log_error("Cannot forget the unknown model %s.", model->name);
                return false;
        }
        return true;
}

static bool has_load_waiters(const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        for (size_t i = 0; i < rt->n_waiters; i++)
                if (rt->waiters[i].kind != WAITER_UNLOAD)
                        return true;
        return false;
}

/* Returns true when the model was forgotten (a name that never existed). */
static bool load_failed(Manager *m, PoolModel *model, int r, const char *message) {
        ModelRuntime *rt = model->userdata;
        const char *error_name = bus_load_error_name(r);

        model->reserved_bytes = 0;
        model->state = r == -ECANCELED ? MODEL_AVAILABLE : MODEL_ERROR;
        if (r != -ECANCELED) {
                free(model->error);
                model->error = strdup(message);
        }

        log_model_event(r == -ECANCELED ? LOG_INFO : LOG_WARNING, model->name, "load-failed", error_name,
                        UINT64_MAX, rt->load_started_usec ? now_monotonic_usec() - rt->load_started_usec : UINT64_MAX,
                        "Loading %s failed: %s", model->name, message);
        /* A cancelled load told its callers and the bus already, when it was cancelled. */
        if (!rt->cancel_requested)
                bus_emit_load_failed(m, model->name, error_name, message);

        if (r == -ECANCELED && rt->cancel_requested && !m->shutting_down)
                /* Callers who asked since the cancellation keep their pin
                 * and keep-alive requests for the load that starts again. */
                answer_waiters(model, true, false, NULL);
        else {
                rt->pin_requested = false;
                rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
                complete_waiters(m, model, r, message);
        }
        rt->cancel_requested = false;

        if (forget_if_unannounced(m, model))
                return true;
        model_changed(m, model);
        return false;
}

static int start_probe(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        LoaderJob *job;
        int r;

        r = loader_job_new_probe(model->name, m->config.model_dir, m->config.huggingface_cache, model, &job);
        if (r < 0)
                return r;
        r = loader_start(m->loader, job);
        if (r < 0) {
                loader_job_free(job);
                return r;
        }

        rt->job = job;
        rt->load_started_usec = now_monotonic_usec();
        rt->progress_started = false;
        rt->progress_emitted_bytes = 0;
        model->state = MODEL_LOADING;
        log_model_event(LOG_INFO, model->name, "load-started", NULL, UINT64_MAX, UINT64_MAX,
                        "Loading %s.", model->name);
        model_changed(m, model);
        return 0;
}

static void record_requests(ModelRuntime *rt, int64_t keep_alive_sec, bool pin) {
        if (keep_alive_sec != KEEP_ALIVE_DEFAULT)
                rt->keep_alive_requested = keep_alive_sec;
        if (pin)
                rt->pin_requested = true;
}

static void apply_requests(PoolModel *model, ModelRuntime *rt) {
        if (rt->keep_alive_requested != KEEP_ALIVE_DEFAULT)
                model->keep_alive_sec = rt->keep_alive_requested;
        if (rt->pin_requested)
                model->pinned = true;
        rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
        rt->pin_requested = false;
}

static bool load_slot_free(const Manager *m) {
        return loader_running(m->loader) < m->config.max_concurrent_loads;
}

int manager_request_load(Manager *m, const char *name, int64_t keep_alive_sec, bool pin,
                         sd_bus_message *call, WaiterKind kind, sd_bus_error *error) {
        PoolModel *model;
        ModelRuntime *rt;
        int r;

        assert(m);
        assert(name);
        assert(kind != WAITER_UNLOAD);

        if (m->shutting_down)
                return sd_bus_error_set(error, MPOOL_ERROR_BUSY, "mpoold is shutting down.");

        /* Refused before the name is added, so refusals leave nothing behind. */
        model = pool_find(&m->pool, name);
        if ((!model || model->state == MODEL_AVAILABLE || model->state == MODEL_ERROR) && !load_slot_free(m))
                return sd_bus_error_setf(error, MPOOL_ERROR_BUSY,
                                         "%u loads are under way already; try again when one is done.",
                                         m->config.max_concurrent_loads);

        r = pool_add(&m->pool, name, &model);
        if (r == -E2BIG)
                return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                         "The pool already knows %u models.", POOL_MODELS_MAX);
        if (r < 0)
                return r;
        rt = runtime_of(m, model);
        if (!rt) {
                (void) forget_if_unannounced(m, model);
                return -ENOMEM;
        }

        switch (model->state) {

        case MODEL_LOADED:
                record_requests(rt, keep_alive_sec, pin);
                apply_requests(model, rt);
                if (call)
                        reply_or_log(serve(m, model, call, kind), model->name);
                model_changed(m, model);
                manager_reschedule_idle(m);
                return 1;

        case MODEL_LOADING:
        case MODEL_UNLOADING:
                if (call) {
                        r = waiter_add(m, model, call, kind);
                        if (r < 0)
                                return waiter_error(r, name, error);
                }
                record_requests(rt, keep_alive_sec, pin);
                return 1;

        case MODEL_AVAILABLE:
        case MODEL_ERROR:
                if (call) {
                        r = waiter_add(m, model, call, kind);
                        if (r < 0) {
                                (void) forget_if_unannounced(m, model);
                                return waiter_error(r, name, error);
                        }
                }
                r = start_probe(m, model);
                if (r < 0) {
                        if (call) {
                                /* Drop the waiter again: the caller gets the error from the handler. */
                                rt->n_waiters--;
                                sd_bus_message_unref(rt->waiters[rt->n_waiters].call);
                        }
                        (void) forget_if_unannounced(m, model);
                        return log_error_errno(r, "Cannot start loading %s: %m", name);
                }
                record_requests(rt, keep_alive_sec, pin);
                return 1;

        default:
                assert(false);
                return -EINVAL;
        }
}

void manager_unload(Manager *m, PoolModel *model, const char *reason) {
        ModelRuntime *rt = model->userdata;
        uint64_t freed = model->memory_bytes;

        assert(model->state == MODEL_LOADED);

        /* munmap() of a read-only file mapping does no I/O, so unloading is
         * done here and finished before anyone is told. */
        model->state = MODEL_UNLOADING;
        loader_mappings_release(TAKE_PTR(rt->mappings), rt->n_mappings);
        rt->n_mappings = 0;
        model->memory_bytes = 0;
        model->pinned = false;
        model->keep_alive_sec = KEEP_ALIVE_DEFAULT;
        model->state = MODEL_AVAILABLE;

        log_model_event(LOG_INFO, model->name, "unloaded", reason, freed, UINT64_MAX,
                        "Unloaded %s (%s), %" PRIu64 " bytes given back.", model->name, reason, freed);
        bus_emit_model_unloaded(m, model->name, reason);
        model_changed(m, model);
        pool_changed(m);
}

int manager_unload_all(Manager *m, bool force, sd_bus_message *call) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        UnloadBatch *batch;
        int r;

        r = sd_bus_message_new_method_return(call, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;

        for (PoolModel *model = m->pool.models; model; model = model->next) {
                if (model->state != MODEL_LOADED || (model->pinned && !force))
                        continue;
                r = sd_bus_message_append(reply, "s", model->name);
                if (r < 0)
                        return r;
                manager_unload(m, model, MPOOL_REASON_REQUEST);
        }
        manager_reschedule_idle(m);

        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;

        /* The batch holds one reference of its own while loads are being
         * cancelled, so that the first to finish cannot send the reply early. */
        batch = new0_batch(reply);
        if (!batch)
                return -ENOMEM;
        for (PoolModel *model = m->pool.models; model; model = model->next) {
                if (model->state != MODEL_LOADING || (model->pinned && !force))
                        continue;
                r = waiter_add_full(m, model, call, WAITER_UNLOAD, batch);
                if (r < 0)
                        log_warning_errno(r, "UnloadAll cancels the load of %s without waiting for it to stop: %m",
                                          model->name);
                manager_cancel_load(m, model);
        }
        batch_unref(batch, true);
        return 1;
}

void manager_cancel_load(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        _cleanup_free_ char *message = NULL;

        assert(model->state == MODEL_LOADING);
        assert(rt && rt->job);

        if (rt->cancel_requested)
                return;
        rt->cancel_requested = true;
        /* What the cancelled callers asked for goes with them. */
        rt->pin_requested = false;
        rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
        loader_job_cancel(rt->job);
        if (asprintf(&message, "Loading %s was cancelled by an unload request.", model->name) < 0)
                message = NULL;
        answer_waiters(model, false, false, message ?: "The load was cancelled.");
        bus_emit_load_failed(m, model->name, MPOOL_ERROR_CANCELLED, message ?: "The load was cancelled.");
}

int manager_request_unload(Manager *m, const char *name, bool force, sd_bus_message *call,
                           sd_bus_error *error) {
        PoolModel *model = pool_find(&m->pool, name);
        int r;

        if (!model || !model->userdata)
                return sd_bus_reply_method_return(call, "b", false);

        if (model->pinned && !force)
                return sd_bus_error_setf(error, MPOOL_ERROR_MODEL_PINNED,
                                         "Model %s is pinned; unloading it needs the force option.", name);

        switch (model->state) {

        case MODEL_LOADED:
                manager_unload(m, model, MPOOL_REASON_REQUEST);
                manager_reschedule_idle(m);
                return sd_bus_reply_method_return(call, "b", true);

        case MODEL_LOADING:
                r = waiter_add(m, model, call, WAITER_UNLOAD);
                if (r < 0)
                        return waiter_error(r, name, error);
                manager_cancel_load(m, model);
                return 1;

        default:
                return sd_bus_reply_method_return(call, "b", false);
        }
}

static void admit(Manager *m, PoolModel *model, LoaderJob *probe) {
        ModelRuntime *rt = model->userdata;
        PoolModel *victims[POOL_MODELS_MAX];
        LoaderJob *map;
        uint64_t available;
        int n, r;

        n = pool_plan_admission(&m->pool, model, probe->total_bytes, victims, ELEMENTSOF(victims), &available);
        if (n == -ENOSPC) {
                _cleanup_free_ char *message = NULL;

                if (asprintf(&message,
                             "Model %s needs %" PRIu64 " bytes, but only %" PRIu64 " of the memory limit of %"
                             PRIu64 " bytes can be made available%s.",
                             model->name, probe->total_bytes, available, m->pool.memory_limit,
                             m->pool.max_loaded_models > 0 ? " (or MaxLoadedModels is reached)" : "") < 0)
                        (void) load_failed(m, model, -ENOMEM, "Out of memory.");
                else
                        (void) load_failed(m, model, -ENOSPC, message);
                return;
        }

        for (int i = 0; i < n; i++)
                manager_unload(m, victims[i], MPOOL_REASON_MEMORY_LIMIT);
        if (n > 0)
                manager_reschedule_idle(m);

        r = loader_job_new_map(probe, &map);
        if (r >= 0) {
                r = loader_start(m->loader, map);
                if (r < 0)
                        loader_job_free(map);
        }
        if (r < 0) {
                log_error_errno(r, "Cannot start mapping %s: %m", model->name);
                (void) load_failed(m, model, r, "The daemon could not start reading the model.");
                return;
        }

        rt->job = map;
        model->reserved_bytes = probe->total_bytes;
}

static void loaded(Manager *m, PoolModel *model, LoaderJob *job) {
        ModelRuntime *rt = model->userdata;
        uint64_t now = now_monotonic_usec();

        rt->mappings = loader_job_steal_mappings(job, &rt->n_mappings);
        rt->locked = job->locked;
        model->memory_bytes = job->resident_bytes;
        model->reserved_bytes = 0;
        model->state = MODEL_LOADED;
        model->loaded_at = now;
        model->last_used = now;
        free(model->error);
        model->error = NULL;

        log_model_event(LOG_INFO, model->name, "loaded", NULL, model->memory_bytes, now - rt->load_started_usec,
                        "Loaded %s: %" PRIu64 " bytes in %" PRIu64 " ms%s.", model->name, model->memory_bytes,
                        (now - rt->load_started_usec) / USEC_PER_MSEC,
                        rt->locked ? "" : " (not locked in memory: RLIMIT_MEMLOCK is too low)");
        bus_emit_model_loaded(m, model->name, model->memory_bytes);

        if (rt->cancel_requested || m->shutting_down) {
                /* The load finished before it saw the cancellation. Callers
                 * who asked again since get a fresh load (on_loader_done). */
                rt->cancel_requested = false;
                manager_unload(m, model, m->shutting_down ? MPOOL_REASON_SHUTDOWN : MPOOL_REASON_REQUEST);
                if (m->shutting_down)
                        complete_waiters(m, model, -ECANCELED, "The load was cancelled.");
                else
                        answer_waiters(model, true, true, NULL);
                return;
        }

        apply_requests(model, rt);
        complete_waiters(m, model, 0, NULL);
        model_changed(m, model);
        pool_changed(m);
        manager_reschedule_idle(m);
}

static void on_loader_progress(LoaderJob *job, uint64_t done, uint64_t total, void *userdata) {
        Manager *m = userdata;
        PoolModel *model = job->userdata;
        ModelRuntime *rt = model->userdata;
        uint64_t now = now_monotonic_usec();

        /* The chunk under way when a cancellation arrives still reports. */
        if (rt->cancel_requested || m->shutting_down)
                return;

        if (rt->progress_started) {
                if (done < rt->progress_emitted_bytes || (done == rt->progress_emitted_bytes && done != 0))
                        return;
                if (done < total && now - rt->progress_emitted_usec < PROGRESS_SIGNAL_INTERVAL_USEC)
                        return;
        }

        rt->progress_started = true;
        rt->progress_emitted_usec = now;
        rt->progress_emitted_bytes = done;
        bus_emit_load_progress(m, model->name, done, total);
}

static void on_loader_done(LoaderJob *job, void *userdata) {
        Manager *m = userdata;
        PoolModel *model = job->userdata;
        ModelRuntime *rt = model->userdata;
        bool cancelled, removed = false;

        assert(rt->job == job);
        rt->job = NULL;
        cancelled = rt->cancel_requested || m->shutting_down;

        if (job->result < 0)
                removed = load_failed(m, model, job->result, strempty(job->error_message));
        else if (job->kind == LOADER_JOB_PROBE) {
                model->size_bytes = job->total_bytes;
                if (!rt->announced) {
                        rt->announced = true;
                        bus_model_announce(m, model);
                }
                if (cancelled)
                        (void) load_failed(m, model, -ECANCELED, "The load was cancelled.");
                else
                        admit(m, model, job);
        } else
                loaded(m, model, job);

        loader_job_free(job);

        /* Callers who asked for the model after its load was cancelled. */
        if (!removed && !m->shutting_down && !rt->job && model->state != MODEL_LOADED &&
            has_load_waiters(model)) {
                int r = start_probe(m, model);
                if (r < 0) {
                        log_error_errno(r, "Cannot restart loading %s: %m", model->name);
                        complete_waiters(m, model, r, "The daemon could not start loading the model.");
                }
        }

        if (m->shutting_down) {
                if (loader_running(m->loader) == 0)
                        (void) sd_event_exit(m->event, 0);
        } else
                manager_preload(m);
}

/* A file truncated under a loaded model takes its pages with it, locked or
 * not: what the models hold follows what is really resident. */
static void measure_loaded_models(Manager *m) {
        bool changed = false;

        for (PoolModel *model = m->pool.models; model; model = model->next) {
                ModelRuntime *rt = model->userdata;
                uint64_t resident;

                if (model->state != MODEL_LOADED || !rt)
                        continue;
                if (loader_mappings_measure(rt->mappings, rt->n_mappings, &resident) > 0)
                        log_warning("The files of model %s changed after it was loaded; it now holds %" PRIu64
                                    " bytes.", model->name, resident);
                if (resident == model->memory_bytes)
                        continue;
                model->memory_bytes = resident;
                bus_emit_model_changed(m, model, "MemoryBytes", NULL);
                changed = true;
        }
        if (changed)
                pool_changed(m);
}

static void on_memory(MemoryMonitor *monitor, const MemoryInfo *info, bool stalled, void *userdata) {
        Manager *m = userdata;
        PoolModel *victims[POOL_MODELS_MAX];
        uint64_t to_free = 0;
        size_t n;

        measure_loaded_models(m);

        if (info->total != m->memory.total) {
                m->memory.total = info->total;
                bus_emit_manager_changed(m, "MemoryTotal", NULL);
        }
        m->memory.available = info->available;

        if (info->available < m->memory_available_min)
                to_free = m->memory_available_min - info->available;
        else if (stalled)
                to_free = 1;   /* stalls with memory to spare: give back one model at a time */
        if (to_free == 0)
                return;

        n = pool_collect_pressure_victims(&m->pool, to_free, victims, ELEMENTSOF(victims));
        if (n == 0)
                return;

        log_notice("Memory pressure (%" PRIu64 " MiB available, minimum %" PRIu64 " MiB%s): unloading %zu idle model(s).",
                   info->available >> 20, m->memory_available_min >> 20, stalled ? ", tasks stalled" : "", n);
        for (size_t i = 0; i < n; i++)
                manager_unload(m, victims[i], MPOOL_REASON_MEMORY_PRESSURE);
        manager_reschedule_idle(m);
}

int manager_start(Manager *m) {
        int r;

        assert(m);
        assert(m->event);

        r = loader_new(m->event, on_loader_progress, on_loader_done, m, &m->loader);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the loader: %m");

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

        return 0;
}

void manager_preload(Manager *m) {
        char **preload = m->config.preload;

        while (preload && preload[m->preload_next] && load_slot_free(m)) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                const char *name = preload[m->preload_next++];
                int r;

                r = manager_request_load(m, name, KEEP_ALIVE_DEFAULT, true, NULL, WAITER_LOAD, &error);
                if (r < 0)
                        log_error_errno(r, "Cannot preload %s: %s", name,
                                        sd_bus_error_is_set(&error) ? error.message : strerror(-r));
        }
}

void manager_peer_left(Manager *m, const char *name) {
        peer_left(m, name);

        /* Nobody is left to answer; the loads themselves go on. */
        for (PoolModel *model = m->pool.models; model; model = model->next) {
                ModelRuntime *rt = model->userdata;
                size_t kept = 0;

                for (size_t i = 0; rt && i < rt->n_waiters; i++) {
                        Waiter *w = &rt->waiters[i];

                        if (w->kind == WAITER_UNLOAD ||
                            strcmp(strempty(sd_bus_message_get_sender(w->call)), name) != 0) {
                                rt->waiters[kept++] = *w;
                                continue;
                        }
                        sd_bus_message_unref(w->call);
                }
                if (rt)
                        rt->n_waiters = kept;
        }
}

void manager_bus_lost(Manager *m) {
        if (m->bus_lost)
                return;
        m->bus_lost = true;
        log_error("The connection to the bus is gone; unloading every model and stopping.");
        manager_begin_shutdown(m);
}

void manager_begin_shutdown(Manager *m) {
        if (m->shutting_down)
                return;
        m->shutting_down = true;
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Unloading every model.");
        log_info("Shutting down: unloading every model.");

        for (PoolModel *model = m->pool.models; model; model = model->next) {
                ModelRuntime *rt = model->userdata;

                if (model->state == MODEL_LOADED)
                        manager_unload(m, model, MPOOL_REASON_SHUTDOWN);
                else if (rt && rt->job) {
                        loader_job_cancel(rt->job);
                        answer_waiters(model, false, false, "mpoold is shutting down.");
                }
        }

        if (loader_running(m->loader) == 0)
                (void) sd_event_exit(m->event, 0);
}

int manager_hold(Manager *m, PoolModel *model, const char *peer_name) {
        int r;

        r = peer_add_hold(m, peer_name, model->name);
        if (r < 0)
                return r;
        model->holds++;
        model_changed(m, model);
        manager_reschedule_idle(m);
        return 0;
}

void manager_drop_holds(Manager *m, const char *model_name, unsigned count) {
        PoolModel *model = pool_find(&m->pool, model_name);

        if (!model)
                return;
        pool_model_release(&m->pool, model, count, now_monotonic_usec());
        model_changed(m, model);
        manager_reschedule_idle(m);
}

int manager_release(Manager *m, PoolModel *model, const char *peer_name) {
        int r;

        r = peer_remove_hold(m, peer_name, model->name);
        if (r < 0)
                return r;
        manager_drop_holds(m, model->name, 1);
        return 0;
}

int manager_set_memory_limit(Manager *m, uint64_t limit, uint64_t *ret_needed) {
        PoolModel *victims[POOL_MODELS_MAX];
        uint64_t pinned = 0, old = m->pool.memory_limit;
        size_t n;

        for (PoolModel *model = m->pool.models; model; model = model->next)
                if (model->pinned)
                        pinned += model->memory_bytes + model->reserved_bytes;
        if (limit < pinned) {
                if (ret_needed)
                        *ret_needed = pinned;
                return -EBUSY;
        }

        m->pool.memory_limit = limit;
        log_info("Memory limit changed from %" PRIu64 " to %" PRIu64 " bytes.", old, limit);
        bus_emit_manager_changed(m, "MemoryLimit", NULL);

        if (pool_memory_committed(&m->pool) > limit) {
                n = pool_collect_pressure_victims(&m->pool, pool_memory_committed(&m->pool) - limit, victims,
                                                  ELEMENTSOF(victims));
                for (size_t i = 0; i < n; i++)
                        manager_unload(m, victims[i], MPOOL_REASON_MEMORY_LIMIT);
                if (pool_memory_committed(&m->pool) > limit)
                        log_notice("The pool holds %" PRIu64 " bytes, over the new limit: held or busy models "
                                   "stay until they are idle.", pool_memory_committed(&m->pool));
                manager_reschedule_idle(m);
        }
        manager_update_status(m);
        return 0;
}

void manager_set_idle_timeout(Manager *m, int64_t idle_timeout_sec) {
        log_info("Idle timeout changed from %" PRIi64 " to %" PRIi64 " seconds.", m->pool.idle_timeout_sec,
                 idle_timeout_sec);
        m->pool.idle_timeout_sec = idle_timeout_sec;
        bus_emit_manager_changed(m, "IdleTimeoutSec", NULL);
        for (PoolModel *model = m->pool.models; model; model = model->next)
                if (model->state == MODEL_LOADED)
                        bus_emit_model_changed(m, model, "ExpiresAt", NULL);
        manager_reschedule_idle(m);
}
