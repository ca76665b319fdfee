/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "model-lifecycle.h"
#include "mpool-bus.h"
#include "string-util.h"
#include "strv.h"
#include "time-util.h"

/* LoadProgress: at most 20 a second for each model. */
#define PROGRESS_EVENT_INTERVAL_USEC (50 * USEC_PER_MSEC)

static void on_job_done(WorkItem *item, bool ran);
static void restart_if_wanted(Manager *m, PoolModel *model);
static void on_job_progress(WorkItem *item, uint64_t done, uint64_t total);
static void record_requests(ModelRuntime *rt, const Request *req);

ModelRuntime *model_runtime(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        if (!rt) {
                rt = calloc(1, sizeof *rt);
                if (!rt)
                        return NULL;
                rt->manager = m;
                rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
                rt->precision_requested = _PRECISION_INVALID;
                rt->profile = MODEL_PROFILE_NULL;
                model->userdata = rt;
        }
        return rt;
}

bool model_is_announced(const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        return rt && rt->announced;
}

void model_announce(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        assert(rt);
        rt->left_store = false;
        if (rt->announced)
                return;
        rt->announced = true;
        if (m->events && m->events->model_announced)
                m->events->model_announced(m, model);
}

void model_set_error(PoolModel *model, const char *message) {
        free(model->error);
        /* Bounded: it can quote paths and what a file held, and Status sends
         * it for every model, all 4,096 of them in one message of at most
         * 32 MiB. If even the copy fails, the state still says "error". */
        model->error = strdup_bounded(message ?: "Out of memory.", MODEL_ERROR_MAX);
}

int model_set_source(PoolModel *model, ModelSource source, const char *revision) {
        ModelRuntime *rt = model->userdata;
        char *copy = NULL;

        assert(rt);
        if (revision && *revision) {
                copy = strdup(revision);
                if (!copy)
                        return -ENOMEM;
        }
        free(rt->revision);
        rt->revision = copy;
        rt->source = source;
        return 0;
}

int model_found(Manager *m, const char *name, int resolved, uint64_t size_bytes, ModelSource source,
                const char *revision, const char *error, ModelProfile *profile) {
        PoolModel *model = pool_find(&m->pool, name);
        bool added = false;
        int r;

        if (!model) {
                r = pool_add(&m->pool, name, &model);
                if (r < 0)
                        return log_error_errno(r, "Cannot add model %s to the pool: %m", name);
                added = true;
        }
        if (!model_runtime(m, model) || model_set_source(model, source, revision) < 0) {
                if (added) {
                        model_runtime_free(model->userdata);
                        model->userdata = NULL;
                        (void) pool_remove(&m->pool, model);
                }
                return log_oom();
        }

        if (added) {
                if (resolved < 0) {
                        log_warning("Model %s is not usable: %s", name, strempty(error));
                        model->state = MODEL_ERROR;
                        model_set_error(model, error);
                } else
                        model->size_bytes = size_bytes;
        }
        /* What a load found last stands while it holds what it found. */
        if (profile && (model->state == MODEL_AVAILABLE || model->state == MODEL_ERROR)) {
                model_profile_move(&((ModelRuntime *) model->userdata)->profile, profile);
                if (!added)
                        manager_emit_model_changed(m, model, MODEL_CHANGED_KIND);
        }
        model_announce(m, model);
        return 0;
}

/* --- Requests waiting for a model ------------------------------------- */

/* Every completion goes through here, so that the owner's count of waiting
 * calls is always given back. */
static void finish(Manager *m, Request *req, int error, const char *message) {
        if (req->waiting && req->owner)
                peers_remove_pending(&m->peers, req->owner);
        req->waiting = false;
        if (error < 0)
                request_complete(req, error, "%s", message ?: "Out of memory.");
        else
                request_succeed(req);
}

static void finish_unload_all_part(Manager *m, Request *req) {
        assert(req->kind == REQUEST_UNLOAD_ALL);
        assert(req->n_pending > 0);
        if (--req->n_pending == 0)
                finish(m, req, 0, NULL);
}

void model_runtime_free(ModelRuntime *rt) {
        if (!rt)
                return;
        assert(!rt->job);
        for (size_t i = 0; i < rt->n_waiters; i++)
                request_unref(rt->waiters[i]);
        free(rt->waiters);
        model_weights_unref(rt->weights);
        free(rt->unload_reason);
        free(rt->revision);
        model_profile_done(&rt->profile);
        free(rt);
}

/* -EBUSY: too many requests wait for this model; -EUSERS: the owner has too
 * many calls waiting already. */
static int waiter_add(Manager *m, PoolModel *model, Request *req) {
        ModelRuntime *rt = model->userdata;
        Request **w;
        int r;

        if (rt->n_waiters >= WAITERS_PER_MODEL_MAX)
                return -EBUSY;
        w = reallocarray(rt->waiters, rt->n_waiters + 1, sizeof *w);
        if (!w)
                return -ENOMEM;
        rt->waiters = w;

        /* An UnloadAll waits on many models but is one call of its owner. */
        if (req->owner && !req->waiting) {
                r = peers_add_pending(&m->peers, req->owner);
                if (r < 0)
                        return r;
                req->waiting = true;
        }
        rt->waiters[rt->n_waiters++] = request_ref(req);
        if (req->kind == REQUEST_UNLOAD_ALL)
                req->n_pending++;
        return 0;
}

static int waiter_error(Manager *m, Request *req, int r) {
        if (r == -EBUSY)
                request_complete(req, -EBUSY, "Too many callers are waiting for %s.", req->model);
        else if (r == -EUSERS)
                request_complete(req, -EUSERS, "You have %u calls waiting already; wait for one to finish.",
                                 PENDING_CALLS_PER_PEER_MAX);
        else
                request_complete(req, r, "Cannot queue the request: %s.", strerror(-r));
        return r;
}

static bool is_unload(const Request *req) {
        return req->kind == REQUEST_UNLOAD || req->kind == REQUEST_UNLOAD_ALL;
}

static bool has_load_waiters(const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        for (size_t i = 0; i < rt->n_waiters; i++)
                if (!is_unload(rt->waiters[i]))
                        return true;
        return false;
}

/* Takes out the waiters of one side (unloads, or loads and acquires), in
 * order, keeping the others; the caller completes and unrefs them. The
 * list is taken whole and compacted in place, so that taking cannot fail;
 * only keeping the other side needs memory, and without it those requests
 * are told so rather than left waiting forever. */
static Request **take_waiters(Manager *m, PoolModel *model, bool unloads, size_t *ret_n) {
        ModelRuntime *rt = model->userdata;
        Request **all = TAKE_PTR(rt->waiters);
        size_t n_all = rt->n_waiters, n = 0, n_kept = 0;
        Request **kept;

        rt->n_waiters = 0;
        for (size_t i = 0; i < n_all; i++)
                if (is_unload(all[i]) != unloads)
                        n_kept++;
        kept = n_kept > 0 ? calloc(n_kept, sizeof *kept) : NULL;

        for (size_t i = 0; i < n_all; i++) {
                Request *req = all[i];

                if (is_unload(req) == unloads)
                        all[n++] = req;
                else if (kept)
                        kept[rt->n_waiters++] = req;
                else {
                        log_oom();
                        if (req->kind == REQUEST_UNLOAD_ALL)
                                finish_unload_all_part(m, req);
                        else
                                finish(m, req, -ENOMEM, "Out of memory.");
                        request_unref(req);
                }
        }
        rt->waiters = kept;
        *ret_n = n;
        return all;
}

/* The Unload and UnloadAll requests, once the model's memory is back. */
static void answer_unloads(Manager *m, PoolModel *model, bool was_loaded) {
        size_t n;
        _cleanup_free_ Request **taken = take_waiters(m, model, true, &n);

        for (size_t i = 0; i < n; i++) {
                Request *req = taken[i];

                if (req->kind == REQUEST_UNLOAD_ALL)
                        finish_unload_all_part(m, req);
                else {
                        req->was_loaded = req->was_loaded || was_loaded;
                        finish(m, req, 0, NULL);
                }
                request_unref(req);
        }
}

/* Descriptors of the loaded weights files of their own, for a program that
 * maps them itself. Opened again through /proc rather than duplicated: a
 * duplicate would share our file offset with every other holder, and the
 * path in the store could by now lead to another file. The same inode, so
 * the same pages in the page cache: nothing is copied. */
static int open_weights_files(const PoolModel *model, RequestFile **ret_files, size_t *ret_n) {
        const ModelRuntime *rt = model->userdata;
        const ModelWeights *w = rt->weights;
        RequestFile *files;
        size_t n = 0;

        files = calloc(w->n_mappings ?: 1, sizeof *files);
        if (!files)
                return -ENOMEM;
        for (size_t i = 0; i < w->n_mappings; i++) {
                const LoaderMapping *mapping = &w->mappings[i];
                char proc_path[64];
                int r = 0;

                if (mapping->fd < 0)    /* an empty file: nothing to map */
                        continue;
                snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%i", mapping->fd);
                files[n].fd = open(proc_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (files[n].fd < 0)
                        r = negative_errno();
                else {
                        files[n].name = strdup(mapping->name);
                        if (!files[n].name)
                                r = -ENOMEM;
                        n++;
                }
                if (r < 0) {
                        for (size_t k = 0; k < n; k++) {
                                free(files[k].name);
                                close(files[k].fd);
                        }
                        free(files);
                        return r;
                }
        }
        *ret_files = files;
        *ret_n = n;
        return 0;
}

static bool takes_hold(const Request *req) {
        return req->kind == REQUEST_ACQUIRE || req->kind == REQUEST_OPEN_FILES;
}

/* Gives a Load, Acquire or OpenFiles request what it asked for from a
 * loaded model. */
/* With IdlePolicy=global every idle model's deadline follows the pool's
 * last use: a use of one model moves the ExpiresAt of all the others. */
static void announce_pool_use(Manager *m, PoolModel *used) {
        if (m->pool.idle_policy != POOL_IDLE_GLOBAL)
                return;
        POOL_FOREACH(other, &m->pool)
                if (other != used && pool_model_is_evictable(other))
                        manager_emit_model_changed(m, other, MODEL_CHANGED_EXPIRES);
}

static void serve(Manager *m, PoolModel *model, Request *req) {
        int r;

        assert(model->state == MODEL_LOADED);

        if (req->kind == REQUEST_OPEN_FILES) {
                const ModelRuntime *rt = model->userdata;

                if (rt->weights->n_mappings > REQUEST_FILES_MAX) {
                        char message[256];

                        snprintf(message, sizeof message,
                                 "Model %s is in %zu weights files; one reply can carry at most %u descriptors.",
                                 model->name, rt->weights->n_mappings, REQUEST_FILES_MAX);
                        return finish(m, req, -EUSERS, message);
                }
                r = open_weights_files(model, &req->files, &req->n_files);
                if (r < 0) {
                        char message[320];

                        log_error_errno(r, "Cannot open the weights files of %s for a caller: %m", model->name);
                        snprintf(message, sizeof message, "Cannot open the weights files of %s: %s.", model->name,
                                 strerror(-r));
                        return finish(m, req, r, message);
                }
        }

        if (takes_hold(req)) {
                assert(req->owner);
                r = peers_add_hold(&m->peers, req->owner, model->name);
                if (r < 0) {
                        char message[128];

                        if (r == -EBUSY)
                                snprintf(message, sizeof message, "Too many holds: at most %u per peer.",
                                         HOLDS_PER_PEER_MAX);
                        else if (r == -EUSERS)
                                snprintf(message, sizeof message, "Too many peers hold models (at most %u).",
                                         PEERS_MAX);
                        else
                                snprintf(message, sizeof message, "Cannot hold model %s: %s.", model->name,
                                         strerror(-r));
                        return finish(m, req, r == -EBUSY ? -EUSERS : r, message);
                }
                model->holds++;
                manager_emit_model_changed(m, model, MODEL_CHANGED_HOLDS | MODEL_CHANGED_EXPIRES);
                manager_reschedule_idle(m);
        }

        /* Kept until the model is unloaded; its workers follow at once. */
        if (req->max_workers > 0)
                ((ModelRuntime *) model->userdata)->max_workers = req->max_workers;

        pool_model_use(&m->pool, model, now_monotonic_usec());
        announce_pool_use(m, model);
        finish(m, req, 0, NULL);
}

/* The Load and Acquire requests: served from the loaded model, or told
 * how the load ended. */
static void answer_loads(Manager *m, PoolModel *model, int error, const char *message) {
        ModelRuntime *rt = model->userdata;
        size_t n;
        _cleanup_free_ Request **taken = take_waiters(m, model, false, &n);
        bool requeued = false;

        for (size_t i = 0; i < n; i++) {
                Request *req = taken[i];

                if (error < 0)
                        finish(m, req, error, message);
                else if (model->state == MODEL_LOADED)
                        serve(m, model, req);
                else {
                        /* An earlier completion unloaded the model again
                         * (a chain's next step): this one waits for a load
                         * of its own. */
                        Request **w = reallocarray(rt->waiters, rt->n_waiters + 1, sizeof *w);

                        if (!w)
                                finish(m, req, -ENOMEM, "Out of memory.");
                        else {
                                rt->waiters = w;
                                rt->waiters[rt->n_waiters++] = request_ref(req);
                                record_requests(rt, req);
                                requeued = true;
                        }
                }
                request_unref(req);
        }
        if (requeued)
                restart_if_wanted(m, model);
}

/* --- Loading ----------------------------------------------------------- */

/* Forgets a model callers never heard of (a name that turned out not to
 * exist, or a load refused before it started), so that callers cannot fill
 * the pool with names. Returns true when it did. */
static bool forget_if_unannounced(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        if ((rt && (rt->announced || rt->job || rt->n_waiters > 0)) || model->holds > 0)
                return false;
        model_runtime_free(rt);
        model->userdata = NULL;
        if (pool_remove(&m->pool, model) < 0) {
                log_error("Cannot forget the unknown model %s.", model->name);
                return false;
        }
        return true;
}

/* Nothing loaded, loading or unloading, no hold, no user, nobody waiting. */
static bool model_unused(const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        return !(rt && (rt->job || rt->n_waiters > 0)) && model->holds == 0 && model->in_flight == 0 &&
                (model->state == MODEL_AVAILABLE || model->state == MODEL_ERROR);
}

/* Forgets a model that left the store if it holds nothing any more. Its
 * object goes first, while it can still be found, as sd-bus needs to say
 * which interfaces went. Returns true when it did. */
static bool forget_if_left(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        if (!rt || !rt->left_store || !model_unused(model))
                return false;
        log_info("Model %s left the store; forgetting it.", model->name);
        if (rt->announced && m->events && m->events->model_removed)
                m->events->model_removed(m, model);
        rt->announced = false;
        return forget_if_unannounced(m, model);
}

static int on_forget(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        for (PoolModel *model = m->pool.models, *next; model; model = next) {
                next = model->hh.next;
                (void) forget_if_left(m, model);
        }
        return 0;
}

/* A model that left the store let go of something. It is forgotten from
 * the loop's next turn, not here: this moment comes deep inside completions
 * whose callers still use the model. */
static void forget_later(Manager *m, PoolModel *model) {
        const ModelRuntime *rt = model->userdata;
        int r;

        if (!rt || !rt->left_store || !m->event)
                return;
        if (!m->forget_source) {
                r = sd_event_add_defer(m->event, &m->forget_source, on_forget, m);
                if (r < 0) {
                        log_error_errno(r, "Cannot schedule forgetting %s, which left the store: %m", model->name);
                        return;
                }
                (void) sd_event_source_set_description(m->forget_source, "forget-models");
        }
        r = sd_event_source_set_enabled(m->forget_source, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Cannot schedule forgetting %s, which left the store: %m", model->name);
}

void model_left_store(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;

        if (!rt || !rt->announced || rt->left_store)
                return;
        rt->left_store = true;
        if (forget_if_left(m, model))
                return;
        log_info("The files of model %s left the store; it stays (%s) until it is unloaded and nothing holds or "
                 "waits for it.", model->name, model_state_to_string(model->state));
}

int model_download_begin(Manager *m, const char *name) {
        PoolModel *model = pool_find(&m->pool, name);
        ModelRuntime *rt;
        bool added = false;
        int r;

        if (model && model->userdata && ((ModelRuntime *) model->userdata)->removing)
                return -EBUSY;
        if (model && model_is_announced(model))
                return model->state == MODEL_DOWNLOADING ? 1 : 0;
        if (model && !model_unused(model))
                return -EBUSY;
        if (!model) {
                r = pool_add(&m->pool, name, &model);
                if (r < 0)
                        return r;
                added = true;
        }
        rt = model_runtime(m, model);
        if (!rt || model_set_source(model, MODEL_SOURCE_HUB, NULL) < 0) {
                if (added) {
                        model_runtime_free(model->userdata);
                        model->userdata = NULL;
                        (void) pool_remove(&m->pool, model);
                }
                return -ENOMEM;
        }
        model->state = MODEL_DOWNLOADING;
        model->size_bytes = 0;
        free(model->error);
        model->error = NULL;
        model_announce(m, model);
        return 1;
}

void model_download_end(Manager *m, const char *name, bool installed, int r, uint64_t size_bytes,
                        ModelSource source, const char *revision, ModelProfile *profile, const char *error) {
        PoolModel *model = pool_find(&m->pool, name);
        ModelRuntime *rt;

        if (!model || !(rt = model->userdata))
                return;

        if (!installed) {
                if (model->state != MODEL_DOWNLOADING)
                        return;
                /* Nothing of it is left: its object goes while it can
                 * still be found, then the name. */
                if (rt->announced && m->events && m->events->model_removed)
                        m->events->model_removed(m, model);
                rt->announced = false;
                model->state = MODEL_AVAILABLE;
                if (!forget_if_unannounced(m, model))
                        log_error("Cannot forget %s, whose download ended.", name);
                return;
        }

        /* Where it now comes from, whatever its state. */
        if (model_set_source(model, source, revision) < 0)
                log_oom();
        /* A model that was loaded meanwhile measured its files itself. */
        if (model->state != MODEL_DOWNLOADING && model->state != MODEL_AVAILABLE && model->state != MODEL_ERROR)
                return;
        model->size_bytes = r < 0 ? 0 : size_bytes;
        if (r < 0) {
                log_warning("Model %s, just pulled, is not usable: %s", name, strempty(error));
                model->state = MODEL_ERROR;
                model_set_error(model, error);
        } else {
                free(model->error);
                model->error = NULL;
                model->state = MODEL_AVAILABLE;
        }
        if (profile)
                model_profile_move(&rt->profile, profile);
        rt->left_store = false;
        manager_emit_model_changed(m, model, MODEL_CHANGED_STATE | (profile ? MODEL_CHANGED_KIND : 0));
}

static void record_requests(ModelRuntime *rt, const Request *req) {
        if (req->keep_alive_sec != KEEP_ALIVE_DEFAULT)
                rt->keep_alive_requested = req->keep_alive_sec;
        if (req->precision != _PRECISION_INVALID)
                rt->precision_requested = req->precision;
        if (req->pin)
                rt->pin_requested = true;
}

static void apply_requests(PoolModel *model, ModelRuntime *rt) {
        if (rt->keep_alive_requested != KEEP_ALIVE_DEFAULT)
                model->keep_alive_sec = rt->keep_alive_requested;
        if (rt->pin_requested)
                model->pinned = true;
        rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
        rt->pin_requested = false;
        /* The load it was for is done. */
        rt->precision_requested = _PRECISION_INVALID;
}

/* Returns true when the model was forgotten (a name that never existed). */
static bool load_failed(Manager *m, PoolModel *model, int r, const char *message) {
        ModelRuntime *rt = model->userdata;
        bool cancelled_by_request = rt->cancel_requested;
        /* Its files left the store (Remove, or by hand) and it is kept
         * only until nothing holds or waits for it: a load that finds them
         * gone is told so, but the model is not put in error. Nothing
         * would clear that error (no look of the store sees the model
         * again), so it would stay until the model is forgotten or pulled
         * again, as if the model were broken. */
        bool gone = r == -ENOENT && rt->left_store;

        model->reserved_bytes = 0;
        model->state = r == -ECANCELED || gone ? MODEL_AVAILABLE : MODEL_ERROR;
        if (gone) {
                free(model->error);
                model->error = NULL;
        } else if (r != -ECANCELED)
                model_set_error(model, message);

        metrics_load_finished(&m->metrics, r, 0);
        log_model_event(r == -ECANCELED ? LOG_INFO : LOG_WARNING, model->name, "load-failed",
                        request_error_reason(r), UINT64_MAX,
                        rt->load_started_usec ? now_monotonic_usec() - rt->load_started_usec : UINT64_MAX,
                        "Loading %s failed: %s", model->name, message);
        /* A cancelled load told its requests and the listeners already, when
         * it was cancelled. */
        if (!cancelled_by_request && m->events && m->events->load_failed)
                m->events->load_failed(m, model, r, message);

        rt->cancel_requested = false;
        if (r == -ECANCELED && cancelled_by_request && !m->shutting_down)
                /* Requests that came since the cancellation keep their pin
                 * and keep-alive for the load that starts again. */
                answer_unloads(m, model, false);
        else {
                rt->pin_requested = false;
                rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
                rt->precision_requested = _PRECISION_INVALID;
                answer_unloads(m, model, false);
                answer_loads(m, model, r, message);
        }

        if (forget_if_unannounced(m, model))
                return true;
        manager_emit_model_changed(m, model, MODEL_CHANGED_STATE | MODEL_CHANGED_KIND);
        forget_later(m, model);
        return false;
}

static int submit_job(Manager *m, PoolModel *model, LoaderJob *job) {
        ModelRuntime *rt = model->userdata;
        int r;

        job->item.done = on_job_done;
        job->item.progress = on_job_progress;
        r = workpool_submit(m->loaders, &job->item);
        if (r < 0)
                return r;
        rt->job = job;
        return 0;
}

/* What a caller is told when its load could not even start. */
static const char *start_error_message(int r) {
        if (r == -EBUSY)
                return "The load queue is full (MaxQueuedLoads=); try again when a load is done.";
        if (r == -ENOMEM)
                return "Out of memory.";
        return "The daemon could not start loading the model.";
}

static int start_probe(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        LoaderJob *job;
        int r;

        r = loader_job_new_probe(model->name, m->config.model_dir, m->config.huggingface_cache, model, &job);
        if (r < 0)
                return r;
        /* The load's precision is fixed now: later requests that ask
         * another are told so (precision_conflict()). */
        if (rt->precision_requested != _PRECISION_INVALID) {
                job->precision = rt->precision_requested;
                job->precision_asked = true;
        }
        r = submit_job(m, model, job);
        if (r < 0) {
                loader_job_free(job);
                return r;
        }

        rt->precision_requested = _PRECISION_INVALID;
        rt->load_started_usec = now_monotonic_usec();
        rt->progress_started = false;
        rt->progress_emitted_bytes = 0;
        model->state = MODEL_LOADING;
        log_model_event(LOG_INFO, model->name, "load-started", NULL, UINT64_MAX, UINT64_MAX,
                        "Loading %s.", model->name);
        manager_emit_model_changed(m, model, MODEL_CHANGED_STATE);
        return 0;
}

/* Loads come back for callers that asked after a cancellation or while
 * the model was being unloaded. */
static void restart_if_wanted(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        int r;

        if (rt->job || model->state == MODEL_LOADED || model->state == MODEL_UNLOADING || !has_load_waiters(model))
                return;
        if (m->shutting_down) {
                /* Nothing loads any more: whoever waited is told so. */
                answer_loads(m, model, -ECANCELED, "mpoold is shutting down.");
                return;
        }
        r = start_probe(m, model);
        if (r < 0) {
                log_error_errno(r, "Cannot restart loading %s: %m", model->name);
                answer_loads(m, model, r, start_error_message(r));
        }
}

static void admit(Manager *m, PoolModel *model, LoaderJob *probe) {
        _cleanup_free_ PoolModel **victims = pool_victims_new(&m->pool);
        const ModelProfile *profile = &((ModelRuntime *) model->userdata)->profile;
        uint64_t needed = loader_job_memory_bytes(probe), available;
        LoaderJob *map;
        int n, r;

        /* A runnable model's conversion is made while the mappings are
         * there: room for both, and for its tokenizer. */
        if (profile->kind == MODEL_KIND_EMBEDDING &&
            __builtin_add_overflow(needed, model_profile_load_bytes(profile, probe->precision) - profile->files_bytes,
                                   &needed))
                needed = UINT64_MAX;

        if (!victims) {
                (void) load_failed(m, model, -ENOMEM, "Out of memory.");
                return;
        }

        n = pool_plan_admission(&m->pool, model, needed, victims, pool_size(&m->pool), &available);
        if (n == -ENOSPC) {
                _cleanup_free_ char *message = NULL;

                if (asprintf(&message,
                             "Model %s needs %" PRIu64 " bytes%s%s, but only %" PRIu64 " of the memory limit of %"
                             PRIu64 " bytes can be made available%s.",
                             model->name, needed, profile->kind == MODEL_KIND_EMBEDDING ? " to load in " : "",
                             profile->kind == MODEL_KIND_EMBEDDING ? precision_to_string(probe->precision) : "",
                             available, m->pool.memory_limit,
                             m->pool.max_loaded_models > 0 ? " (or MaxLoadedModels is reached)" : "") < 0)
                        (void) load_failed(m, model, -ENOMEM, "Out of memory.");
                else
                        (void) load_failed(m, model, -ENOSPC, message);
                return;
        }
        if (n < 0) {
                (void) load_failed(m, model, n, "Out of memory.");
                return;
        }

        for (int i = 0; i < n; i++)
                model_unload(m, victims[i], MPOOL_REASON_MEMORY_LIMIT);
        if (n > 0)
                manager_reschedule_idle(m);

        r = loader_job_new_map(probe, &map);
        if (r >= 0) {
                r = submit_job(m, model, map);
                if (r < 0)
                        loader_job_free(map);
        }
        if (r < 0) {
                log_error_errno(r, "Cannot start mapping %s: %m", model->name);
                (void) load_failed(m, model, r, "The daemon could not start reading the model.");
                return;
        }
        model->reserved_bytes = needed;
}

/* What a runnable model holds of its own can exceed what was reserved for
 * it (a tokenizer larger than its file, F32 files that were not all F32):
 * room is made for it now, as admission makes it, before the model counts
 * as loaded. Returns false when the load failed (told already). */
static bool fits_as_made(Manager *m, PoolModel *model, LoaderJob *job, uint64_t held) {
        _cleanup_free_ PoolModel **victims = NULL;
        uint64_t available;
        int n;

        if (held <= model->reserved_bytes)
                return true;
        victims = pool_victims_new(&m->pool);
        if (!victims) {
                (void) load_failed(m, model, -ENOMEM, "Out of memory.");
                return false;
        }
        n = pool_plan_admission(&m->pool, model, held, victims, pool_size(&m->pool), &available);
        if (n == -ENOSPC) {
                _cleanup_free_ char *message = NULL;

                if (asprintf(&message, "Model %s holds %" PRIu64 " bytes once made runnable in %s, but only %" PRIu64
                             " of the memory limit of %" PRIu64 " bytes can be made available.", model->name, held,
                             precision_to_string(job->precision), available, m->pool.memory_limit) < 0)
                        (void) load_failed(m, model, -ENOMEM, "Out of memory.");
                else
                        (void) load_failed(m, model, -ENOSPC, message);
                return false;
        }
        if (n < 0) {
                (void) load_failed(m, model, n, "Out of memory.");
                return false;
        }
        for (int i = 0; i < n; i++)
                model_unload(m, victims[i], MPOOL_REASON_MEMORY_LIMIT);
        if (n > 0)
                manager_reschedule_idle(m);
        return true;
}

static void loaded(Manager *m, PoolModel *model, LoaderJob *job) {
        ModelRuntime *rt = model->userdata;
        uint64_t now = now_monotonic_usec(), own = job->embedding ? embedding_model_bytes(job->embedding) : 0;
        LoaderMapping *mappings;
        size_t n_mappings;

        if (!fits_as_made(m, model, job, job->resident_bytes + own))
                return;

        if (job->embedding_error < 0 &&
            model_profile_set_weights(&rt->profile, job->embedding_error, "%s", strempty(job->embedding_message)) < 0)
                log_oom();

        mappings = loader_job_steal_mappings(job, &n_mappings);
        rt->weights = model_weights_new(mappings, n_mappings, job->locked, TAKE_PTR(job->embedding));
        if (!rt->weights) {
                (void) load_failed(m, model, -ENOMEM, "Out of memory.");
                return;
        }
        /* Converted weights and the tokenizer are the model's own memory. */
        model->memory_bytes = job->resident_bytes + own;
        model->charged_bytes = own;
        model->reserved_bytes = 0;
        model->state = MODEL_LOADED;
        model->loaded_at = now;
        model->last_used = now;
        free(model->error);
        model->error = NULL;

        metrics_load_finished(&m->metrics, 0, now - rt->load_started_usec);
        log_model_event(LOG_INFO, model->name, "loaded", NULL, model->memory_bytes, now - rt->load_started_usec,
                        "Loaded %s: %" PRIu64 " bytes in %" PRIu64 " ms%s%s%s.", model->name, model->memory_bytes,
                        (now - rt->load_started_usec) / USEC_PER_MSEC,
                        rt->weights->embedding ? ", runnable in " : "",
                        rt->weights->embedding ? precision_to_string(embedding_model_precision(rt->weights->embedding))
                                               : "",
                        job->locked ? "" : " (not locked in memory: RLIMIT_MEMLOCK is too low)");
        if (m->events && m->events->model_loaded)
                m->events->model_loaded(m, model);

        if (rt->cancel_requested || m->shutting_down) {
                /* The load finished before it saw the cancellation. Requests
                 * that came since get a fresh load (restart_if_wanted). */
                rt->cancel_requested = false;
                for (size_t i = 0; i < rt->n_waiters; i++)
                        rt->waiters[i]->was_loaded = true;
                model_unload(m, model, m->shutting_down ? MPOOL_REASON_SHUTDOWN : MPOOL_REASON_REQUEST);
                if (m->shutting_down)
                        answer_loads(m, model, -ECANCELED, "The load was cancelled.");
                return;
        }

        apply_requests(model, rt);
        answer_loads(m, model, 0, NULL);
        manager_emit_model_changed(m, model, MODEL_CHANGED_ALL);
        manager_emit_changed(m, MANAGER_CHANGED_MEMORY_USED | MANAGER_CHANGED_LOADED_MODELS);
        manager_update_status(m);
        manager_reschedule_idle(m);
}

static void on_job_progress(WorkItem *item, uint64_t done, uint64_t total) {
        LoaderJob *job = loader_job_from_item(item);
        PoolModel *model = job->userdata;
        ModelRuntime *rt = model->userdata;
        Manager *m = rt->manager;
        uint64_t now = now_monotonic_usec();

        /* The chunk under way when a cancellation arrives still reports. */
        if (rt->cancel_requested || m->shutting_down)
                return;

        if (rt->progress_started) {
                if (done < rt->progress_emitted_bytes || (done == rt->progress_emitted_bytes && done != 0))
                        return;
                if (done < total && now - rt->progress_emitted_usec < PROGRESS_EVENT_INTERVAL_USEC)
                        return;
        }

        rt->progress_started = true;
        rt->progress_emitted_usec = now;
        rt->progress_emitted_bytes = done;
        if (m->events && m->events->load_progress)
                m->events->load_progress(m, model, done, total);
}

/* A precision was asked of a model that cannot be run. */
static bool not_runnable(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        _cleanup_free_ char *message = NULL;

        if (asprintf(&message, "Model %s cannot be run, so the precision option does not apply to it. %s",
                     model->name, strempty(rt->profile.reason)) < 0)
                return load_failed(m, model, -ENOMEM, "Out of memory.");
        return load_failed(m, model, -EOPNOTSUPP, message);
}

static void on_job_done(WorkItem *item, bool ran) {
        LoaderJob *job = loader_job_from_item(item);
        PoolModel *model = job->userdata;
        ModelRuntime *rt = model->userdata;
        Manager *m = rt->manager;
        bool cancelled, removed = false;

        assert(rt->job == job);
        rt->job = NULL;
        cancelled = rt->cancel_requested || m->shutting_down;

        if (!ran)
                removed = load_failed(m, model, -ECANCELED, "The load was cancelled.");
        else if (job->result < 0) {
                /* Its files do not make it runnable: what it is from now on. */
                if (job->embedding_error < 0 &&
                    model_profile_set_weights(&rt->profile, job->embedding_error, "%s",
                                              strempty(job->embedding_message)) < 0)
                        log_oom();
                removed = load_failed(m, model, job->result, strempty(job->error_message));
        }
        else if (job->kind == LOADER_JOB_PROBE) {
                model->size_bytes = job->total_bytes;
                if (model_set_source(model, job->source, job->revision) < 0)
                        log_oom();
                model_profile_move(&rt->profile, &job->profile);
                manager_emit_model_changed(m, model, MODEL_CHANGED_KIND);
                model_announce(m, model);
                if (cancelled)
                        (void) load_failed(m, model, -ECANCELED, "The load was cancelled.");
                else if (job->precision_asked && rt->profile.kind != MODEL_KIND_EMBEDDING)
                        removed = not_runnable(m, model);
                else
                        admit(m, model, job);
        } else
                loaded(m, model, job);

        loader_job_free(job);

        if (!removed)
                restart_if_wanted(m, model);
        manager_work_done(m);
}


/* --- Unloading ---------------------------------------------------------- */

/* The memory is back: the model is available again. */
static void unloaded_finish(Manager *m, PoolModel *model, const char *reason) {
        uint64_t freed = model->memory_bytes;

        model->memory_bytes = 0;
        model->charged_bytes = 0;
        model->state = MODEL_AVAILABLE;

        metrics_unloaded(&m->metrics, reason);
        log_model_event(LOG_INFO, model->name, "unloaded", reason, freed, UINT64_MAX,
                        "Unloaded %s (%s), %" PRIu64 " bytes given back.", model->name, reason, freed);
        if (m->events && m->events->model_unloaded)
                m->events->model_unloaded(m, model, reason);
        manager_emit_model_changed(m, model, MODEL_CHANGED_ALL);
        manager_emit_changed(m, MANAGER_CHANGED_MEMORY_USED | MANAGER_CHANGED_LOADED_MODELS);
        manager_update_status(m);

        answer_unloads(m, model, false);
        restart_if_wanted(m, model);
        forget_later(m, model);
}

/* Unmapping gigabytes takes the kernel milliseconds per GiB (every page
 * table entry, every locked page back on its list): time the loop would
 * not spend answering. So the last reference to a model's weights goes on
 * a thread of its own, and the model stays unloading until it is back:
 * Unload still replies once the memory is given back. */
typedef struct Release {
        WorkItem item;
        Manager *manager;
        PoolModel *model;
        ModelWeights *weights;
        char *reason;
} Release;

static void release_run(WorkItem *item) {
        Release *r = item->userdata;

        r->weights = model_weights_unref(r->weights);
}

static void release_done(WorkItem *item, bool ran) {
        Release *r = item->userdata;
        Manager *m = r->manager;

        /* Never cancelled: only a pool freed with the item queued would. */
        r->weights = model_weights_unref(r->weights);
        assert(r->model->state == MODEL_UNLOADING);
        unloaded_finish(m, r->model, r->reason);
        free(r->reason);
        free(r);
        manager_work_done(m);
}

/* Takes the weights of a large model when nothing but the model holds
 * them; false when they are to be let go here (a small model's unmap is
 * quicker than the thread's round trip). */
static bool release_off_loop(Manager *m, PoolModel *model, const char *reason) {
        ModelRuntime *rt = model->userdata;
        Release *r;

        if (!m->releaser || !rt->weights || rt->weights->n_ref != 1 ||
            model->memory_bytes < m->release_off_loop_min_bytes)
                return false;
        r = calloc(1, sizeof *r);
        if (!r)
                return false;
        *r = (Release) {
                .item = { .run = release_run, .done = release_done },
                .manager = m,
                .model = model,
                .weights = rt->weights,
                .reason = strdup(reason),
        };
        r->item.userdata = r;
        if (!r->reason || workpool_submit(m->releaser, &r->item) < 0) {
                free(r->reason);
                free(r);
                return false;
        }
        rt->weights = NULL;
        return true;
}

static void unloaded(Manager *m, PoolModel *model, const char *reason) {
        ModelRuntime *rt = model->userdata;

        assert(model->state == MODEL_UNLOADING);
        assert(model->in_flight == 0);

        /* The workers' scratch goes with the rest of the model's memory. */
        if (m->model_unloaded)
                m->model_unloaded(m, model);
        if (release_off_loop(m, model, reason))
                return;
        rt->weights = model_weights_unref(rt->weights);
        unloaded_finish(m, model, reason);
}

void model_unload(Manager *m, PoolModel *model, const char *reason) {
        ModelRuntime *rt = model->userdata;

        assert(model->state == MODEL_LOADED);

        model->state = MODEL_UNLOADING;
        model->pinned = false;
        model->keep_alive_sec = KEEP_ALIVE_DEFAULT;
        free(rt->unload_reason);
        rt->unload_reason = strdup(reason);

        /* Requests queued for its workers end now; running ones may finish. */
        if (m->model_unloading)
                m->model_unloading(m, model);

        /* Users still reading the weights keep them mapped; the unload
         * completes when the last lets go (model_unlease). */
        if (model->in_flight == 0)
                unloaded(m, model, reason);
        else {
                log_model_event(LOG_INFO, model->name, "unloading", reason, UINT64_MAX, UINT64_MAX,
                                "Unloading %s (%s) once its %u user(s) let go.", model->name, reason,
                                model->in_flight);
                manager_emit_model_changed(m, model, MODEL_CHANGED_STATE | MODEL_CHANGED_EXPIRES);
                manager_emit_changed(m, MANAGER_CHANGED_LOADED_MODELS);
        }
}

void model_cancel_load(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        _cleanup_free_ char *message = NULL;

        assert(model->state == MODEL_LOADING);
        assert(rt && rt->job);

        if (rt->cancel_requested)
                return;
        rt->cancel_requested = true;
        /* What the cancelled requests asked for goes with them. */
        rt->pin_requested = false;
        rt->keep_alive_requested = KEEP_ALIVE_DEFAULT;
        rt->precision_requested = _PRECISION_INVALID;
        workpool_cancel(m->loaders, &rt->job->item);
        if (asprintf(&message, "Loading %s was cancelled by an unload request.", model->name) < 0)
                message = NULL;
        answer_loads(m, model, -ECANCELED, message ?: "The load was cancelled.");
        if (m->events && m->events->load_failed)
                m->events->load_failed(m, model, -ECANCELED, message ?: "The load was cancelled.");
}

/* --- Submitting -------------------------------------------------------- */

/* A request that asks a precision the model is loaded (or being loaded)
 * in already, or cannot be: completed here, and true returned. A model
 * not loaded is left to its probe, which reads its files afresh. */
static bool precision_refused(PoolModel *model, Request *req) {
        ModelRuntime *rt = model->userdata;
        const char *doing;
        Precision have;

        if (req->precision == _PRECISION_INVALID)
                return false;

        switch (model->state) {
        case MODEL_LOADED:
                if (!rt->weights->embedding) {
                        request_complete(req, -EOPNOTSUPP, "Model %s cannot be run, so the precision option does "
                                         "not apply to it. %s", model->name, strempty(rt->profile.reason));
                        return true;
                }
                have = embedding_model_precision(rt->weights->embedding);
                doing = "loaded";
                break;
        case MODEL_LOADING:
                /* A cancelled load is followed by a fresh one, which takes
                 * the precision recorded. */
                if (rt->cancel_requested || !rt->job)
                        return false;
                have = rt->job->precision;
                doing = "being loaded";
                break;
        default:
                return false;
        }
        if (have == req->precision)
                return false;
        request_complete(req, -EBUSY, "Model %s is %s in %s; unload it first to load it in %s.", model->name, doing,
                         precision_to_string(have), precision_to_string(req->precision));
        return true;
}

static void submit_load(Manager *m, Request *req) {
        PoolModel *model;
        ModelRuntime *rt;
        bool added;
        int r;

        if (m->shutting_down)
                return request_complete(req, -EBUSY, "mpoold is shutting down.");

        /* Refused before the name is added, so refusals leave nothing behind. */
        model = pool_find(&m->pool, req->model);
        if (model && model->userdata && ((ModelRuntime *) model->userdata)->removing)
                return request_complete(req, -EBUSY, "Model %s is being removed.", req->model);
        if ((!model || model->state == MODEL_AVAILABLE || model->state == MODEL_ERROR) &&
            workpool_full(m->loaders))
                return request_complete(req, -EBUSY,
                                        "%u loads are waiting already; try again when one is done.",
                                        workpool_in_flight(m->loaders));

        r = pool_add(&m->pool, req->model, &model);
        added = r > 0;
        if (r == -E2BIG)
                return request_complete(req, -EUSERS, "The pool already knows %u models.", POOL_MODELS_MAX);
        if (r < 0)
                return request_complete(req, r, "Cannot add model %s: %s.", req->model, strerror(-r));
        rt = model_runtime(m, model);
        if (!rt) {
                if (added)
                        (void) forget_if_unannounced(m, model);
                return request_complete(req, -ENOMEM, "Out of memory.");
        }
        if (precision_refused(model, req))
                return;

        switch (model->state) {

        case MODEL_LOADED:
                record_requests(rt, req);
                apply_requests(model, rt);
                serve(m, model, req);
                manager_emit_model_changed(m, model, MODEL_CHANGED_EXPIRES);
                manager_reschedule_idle(m);
                return;

        case MODEL_LOADING:
        case MODEL_UNLOADING:
                r = waiter_add(m, model, req);
                if (r < 0) {
                        (void) waiter_error(m, req, r);
                        return;
                }
                record_requests(rt, req);
                return;

        case MODEL_DOWNLOADING:
                /* Never a half model: its files are not in the store yet. */
                return request_complete(req, -EBUSY, "Model %s is being downloaded; load it once its download is "
                                        "done.", req->model);

        case MODEL_AVAILABLE:
        case MODEL_ERROR:
                r = waiter_add(m, model, req);
                if (r < 0) {
                        /* Only a name this call added: one that was there
                         * is someone else's to forget (a load_failed() up
                         * the stack, answering the requests of that name). */
                        if (added)
                                (void) forget_if_unannounced(m, model);
                        (void) waiter_error(m, req, r);
                        return;
                }
                /* The load's precision is fixed when it starts. */
                if (req->precision != _PRECISION_INVALID)
                        rt->precision_requested = req->precision;
                r = start_probe(m, model);
                if (r < 0) {
                        rt->precision_requested = _PRECISION_INVALID;
                        log_error_errno(r, "Cannot start loading %s: %m", model->name);
                        answer_loads(m, model, r, start_error_message(r));
                        if (added)
                                (void) forget_if_unannounced(m, model);
                        return;
                }
                record_requests(rt, req);
                return;

        default:
                assert(false);
        }
}

/* Pinned, or to be pinned when the load under way succeeds. */
static bool pinned_or_pinning(const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        return model->pinned || (model->state == MODEL_LOADING && rt && rt->pin_requested);
}

static void submit_unload(Manager *m, Request *req) {
        PoolModel *model = pool_find(&m->pool, req->model);
        int r;

        if (!model || !model->userdata)
                return request_succeed(req);   /* was_loaded false */

        if (pinned_or_pinning(model) && !req->force)
                return request_complete(req, -EPERM, "Model %s is pinned; unloading it needs the force option.",
                                        req->model);

        switch (model->state) {

        case MODEL_LOADED:
                req->was_loaded = true;
                model_unload(m, model, MPOOL_REASON_REQUEST);
                manager_reschedule_idle(m);
                if (model->state == MODEL_AVAILABLE)
                        return request_succeed(req);
                /* Users still read the weights: answered when they let go. */
                r = waiter_add(m, model, req);
                if (r < 0)
                        (void) waiter_error(m, req, r);
                return;

        case MODEL_LOADING:
                r = waiter_add(m, model, req);
                if (r < 0) {
                        (void) waiter_error(m, req, r);
                        return;
                }
                model_cancel_load(m, model);
                return;

        case MODEL_UNLOADING:
                r = waiter_add(m, model, req);
                if (r < 0)
                        (void) waiter_error(m, req, r);
                return;

        default:
                return request_succeed(req);
        }
}

static bool unloads_with_all(const PoolModel *model, bool force) {
        return model->state == MODEL_LOADED && (force || !model->pinned);
}

static void submit_unload_all(Manager *m, Request *req) {
        _cleanup_(strv_freep) char **names = NULL;
        size_t n = 0;
        int r;

        /* The names are copied before anything is unloaded, so that running
         * out of memory refuses the call whole instead of half done. */
        POOL_FOREACH(model, &m->pool)
                if (unloads_with_all(model, req->force))
                        n++;
        names = calloc(n + 1, sizeof *names);
        if (!names)
                return request_complete(req, -ENOMEM, "Out of memory.");
        n = 0;
        POOL_FOREACH(model, &m->pool)
                if (unloads_with_all(model, req->force)) {
                        names[n] = strdup(model->name);
                        if (!names[n++])
                                return request_complete(req, -ENOMEM, "Out of memory.");
                }

        /* The request holds one part of its own while loads are being
         * cancelled, so that the first to finish cannot complete it early. */
        req->n_pending = 1;

        for (char **name = names; *name; name++) {
                PoolModel *model = pool_find(&m->pool, *name);

                /* A completion run by an earlier unload may have changed it. */
                if (!model || !unloads_with_all(model, req->force))
                        continue;
                model_unload(m, model, MPOOL_REASON_REQUEST);
                if (model->state == MODEL_UNLOADING) {
                        r = waiter_add(m, model, req);
                        if (r < 0)
                                log_warning_errno(r, "UnloadAll does not wait for the users of %s to let go: %m",
                                                  model->name);
                }
        }
        manager_reschedule_idle(m);

        POOL_FOREACH(model, &m->pool) {
                if (model->state != MODEL_LOADING || (pinned_or_pinning(model) && !req->force))
                        continue;
                r = waiter_add(m, model, req);
                if (r < 0)
                        log_warning_errno(r, "UnloadAll cancels the load of %s without waiting for it to stop: %m",
                                          model->name);
                model_cancel_load(m, model);
        }

        req->unloaded = TAKE_PTR(names);
        finish_unload_all_part(m, req);
}

void manager_submit(Manager *m, Request *req) {
        _cleanup_(request_unrefp) Request *hold = request_ref(req);

        assert(m);
        assert(req);

        switch (req->kind) {
        case REQUEST_LOAD:
        case REQUEST_ACQUIRE:
        case REQUEST_OPEN_FILES:
                return submit_load(m, req);
        case REQUEST_UNLOAD:
                return submit_unload(m, req);
        case REQUEST_UNLOAD_ALL:
                return submit_unload_all(m, req);
        default:
                assert(false);
        }
}

/* --- Holds, users, charges -------------------------------------------- */

void model_drop_holds(Manager *m, const char *model_name, unsigned count) {
        PoolModel *model = pool_find(&m->pool, model_name);

        if (!model)
                return;
        pool_model_release(&m->pool, model, count, now_monotonic_usec());
        manager_emit_model_changed(m, model, MODEL_CHANGED_HOLDS | MODEL_CHANGED_EXPIRES);
        announce_pool_use(m, model);
        manager_reschedule_idle(m);
        forget_later(m, model);
}

int model_release(Manager *m, const char *model_name, const char *owner) {
        int r;

        r = peers_remove_hold(&m->peers, owner, model_name);
        if (r < 0)
                return r;
        model_drop_holds(m, model_name, 1);
        return 0;
}

void models_drop_requests_of(Manager *m, const char *owner) {
        /* Most peers that leave wait for nothing: no walk over the models. */
        if (peers_pending(&m->peers, owner) == 0)
                return;

        POOL_FOREACH(model, &m->pool) {
                ModelRuntime *rt = model->userdata;
                size_t kept = 0, n_gone = 0;
                _cleanup_free_ Request **gone = NULL;

                if (!rt || rt->n_waiters == 0)
                        continue;
                gone = calloc(rt->n_waiters, sizeof *gone);
                if (!gone) {
                        log_oom();
                        continue;
                }
                /* Unloads go on being answered (into the void); loads and
                 * acquires must not take holds for a peer that is gone. */
                for (size_t i = 0; i < rt->n_waiters; i++) {
                        Request *req = rt->waiters[i];

                        if (!is_unload(req) && req->owner && strcmp(req->owner, owner) == 0)
                                gone[n_gone++] = req;
                        else
                                rt->waiters[kept++] = req;
                }
                rt->n_waiters = kept;
                for (size_t i = 0; i < n_gone; i++) {
                        finish(m, gone[i], -ECONNRESET, "The caller left the bus.");
                        request_unref(gone[i]);
                }
        }
}

int model_lease(Manager *m, PoolModel *model, ModelWeights **ret) {
        ModelRuntime *rt = model->userdata;
        bool was_evictable;

        assert(ret);

        if (model->state != MODEL_LOADED || !rt || !rt->weights)
                return -ESTALE;
        was_evictable = pool_model_is_evictable(model);
        model->in_flight++;
        pool_model_use(&m->pool, model, now_monotonic_usec());
        *ret = model_weights_ref(rt->weights);
        /* A model in use has no idle deadline: ExpiresAt falls to 0. */
        if (was_evictable)
                manager_emit_model_changed(m, model, MODEL_CHANGED_EXPIRES);
        announce_pool_use(m, model);
        manager_reschedule_idle(m);
        return 0;
}

void model_unlease(Manager *m, PoolModel *model, ModelWeights *weights) {
        ModelRuntime *rt = model->userdata;

        assert(model->in_flight > 0);
        assert(weights);

        model->in_flight--;
        model_weights_unref(weights);
        model->last_used = MAX(model->last_used, now_monotonic_usec());

        if (model->state == MODEL_UNLOADING && model->in_flight == 0)
                unloaded(m, model, strempty(rt->unload_reason));
        else {
                /* The last user gone, its idle time starts now: ExpiresAt
                 * changes whatever it said while the model was in use. */
                if (pool_model_is_evictable(model))
                        manager_emit_model_changed(m, model, MODEL_CHANGED_EXPIRES);
                manager_reschedule_idle(m);
        }
        manager_work_done(m);
}

EmbeddingModel *model_embedding(PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        if (model->state != MODEL_LOADED || !rt || !rt->weights)
                return NULL;
        return rt->weights->embedding;
}

ModelKind model_kind(const PoolModel *model, int *ret_error, const char **ret_reason) {
        const ModelRuntime *rt = model->userdata;
        const ModelProfile *p = rt ? &rt->profile : NULL;

        if (ret_error)
                *ret_error = p && p->kind == MODEL_KIND_WEIGHTS ? p->error : 0;
        if (ret_reason)
                *ret_reason = p && p->kind == MODEL_KIND_WEIGHTS ? p->reason : NULL;
        return p ? p->kind : MODEL_KIND_UNKNOWN;
}

Precision model_precision(const PoolModel *model) {
        EmbeddingModel *e = model_embedding((PoolModel *) model);

        return e ? embedding_model_precision(e) : _PRECISION_INVALID;
}

int model_charge(Manager *m, PoolModel *model, uint64_t bytes) {
        _cleanup_free_ PoolModel **victims = pool_victims_new(&m->pool);
        uint64_t needed;
        int n;

        if (model->state != MODEL_LOADED)
                return -ESTALE;
        if (!victims)
                return -ENOMEM;
        if (__builtin_add_overflow(model->memory_bytes + model->reserved_bytes, bytes, &needed))
                return -ENOSPC;

        /* The model itself is busy (it is being charged for a use), so the
         * plan never picks it. */
        n = pool_plan_admission(&m->pool, model, needed, victims, pool_size(&m->pool), NULL);
        if (n < 0)
                return n;
        for (int i = 0; i < n; i++)
                model_unload(m, victims[i], MPOOL_REASON_MEMORY_LIMIT);
        pool_model_charge(&m->pool, model, bytes);
        manager_emit_model_changed(m, model, MODEL_CHANGED_MEMORY);
        manager_emit_changed(m, MANAGER_CHANGED_MEMORY_USED);
        manager_reschedule_idle(m);
        return 0;
}

void model_uncharge(Manager *m, PoolModel *model, uint64_t bytes) {
        pool_model_uncharge(&m->pool, model, bytes);
        manager_emit_model_changed(m, model, MODEL_CHANGED_MEMORY);
        manager_emit_changed(m, MANAGER_CHANGED_MEMORY_USED);
}

void models_measure_resident(Manager *m) {
        bool changed = false;

        POOL_FOREACH(model, &m->pool) {
                ModelRuntime *rt = model->userdata;
                uint64_t resident, held;

                if (model->state != MODEL_LOADED || !rt || !rt->weights)
                        continue;
                if (loader_mappings_measure(rt->weights->mappings, rt->weights->n_mappings, &resident) > 0)
                        log_warning("The files of model %s changed after it was loaded; its weights now hold %"
                                    PRIu64 " bytes.", model->name, resident);
                held = resident + model->charged_bytes;
                if (held == model->memory_bytes)
                        continue;
                model->memory_bytes = held;
                manager_emit_model_changed(m, model, MODEL_CHANGED_MEMORY);
                changed = true;
        }
        if (changed) {
                manager_emit_changed(m, MANAGER_CHANGED_MEMORY_USED);
                manager_update_status(m);
        }
}

/* --- Shutdown ---------------------------------------------------------- */

void models_stop_all(Manager *m) {
        POOL_FOREACH(model, &m->pool) {
                ModelRuntime *rt = model->userdata;

                if (model->state == MODEL_LOADED)
                        model_unload(m, model, MPOOL_REASON_SHUTDOWN);
                else if (rt && rt->job) {
                        workpool_cancel(m->loaders, &rt->job->item);
                        answer_loads(m, model, -ECANCELED, "mpoold is shutting down.");
                } else if (rt && model->state == MODEL_UNLOADING)
                        /* Its users let go later; no load follows. */
                        answer_loads(m, model, -ECANCELED, "mpoold is shutting down.");
        }
}

bool models_settled(Manager *m) {
        if (m->loaders && workpool_in_flight(m->loaders) > 0)
                return false;
        if (m->releaser && workpool_in_flight(m->releaser) > 0)
                return false;
        POOL_FOREACH(model, &m->pool)
                if (model->state == MODEL_UNLOADING)
                        return false;
        return true;
}
