/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog.h"
#include "download.h"
#include "log.h"
#include "macro.h"
#include "model-lifecycle.h"
#include "registry.h"
#include "safetensors.h"
#include "store.h"
#include "trash.h"

typedef enum CatalogJobKind {
        CATALOG_JOB_CLEAN,
        CATALOG_JOB_REGISTER,
        CATALOG_JOB_REMOVE,
} CatalogJobKind;

typedef struct CatalogJob {
        WorkItem item;

        /* Inputs, fixed before the job is submitted. */
        CatalogJobKind kind;
        Manager *manager;
        char *name;
        char *path;                   /* register: as the caller gave it */
        char *model_dir;
        char *hf_cache;
        bool expected_known;          /* remove: the kind Status showed */
        ModelSource expected;
        CatalogReply reply;
        void *userdata;

        /* Results, written by the worker. */
        int result;
        char *message;
        char *resolved;               /* register: the directory registered */
        uint64_t size_bytes;
        ModelProfile profile;         /* register */
        ModelSource source;           /* remove: what was removed */
} CatalogJob;

struct Catalog {
        WorkPool *worker;
        CatalogJob **jobs;            /* in flight, for cancelling at shutdown */
        size_t n_jobs;
};

/* --- Jobs --------------------------------------------------------------- */

static CatalogJob *catalog_job_free(CatalogJob *j) {
        if (!j)
                return NULL;
        free(j->name);
        free(j->path);
        free(j->model_dir);
        free(j->hf_cache);
        free(j->message);
        free(j->resolved);
        model_profile_done(&j->profile);
        free(j);
        return NULL;
}

static void catalog_job_freep(CatalogJob **j) {
        catalog_job_free(*j);
}

static CatalogJob *job_from_item(WorkItem *item) {
        return (CatalogJob *) ((char *) item - offsetof(CatalogJob, item));
}

_printf_(3, 4) static void job_fail(CatalogJob *j, int error, const char *format, ...) {
        va_list ap;

        assert(error < 0);
        j->result = error;
        free(j->message);
        errno = -error;
        va_start(ap, format);
        if (vasprintf(&j->message, format, ap) < 0)
                j->message = NULL;
        va_end(ap);
}

/* The worker asks this during long reads. */
static bool job_cancelled(void *userdata) {
        CatalogJob *j = userdata;

        return work_item_cancelled(&j->item);
}

static const char *where_known(ModelSource source) {
        switch (source) {
        case MODEL_SOURCE_LOCAL:
                return "registered already";
        case MODEL_SOURCE_HF_CACHE:
                return "in the Hugging Face cache";
        default:
                return "in the model directory";
        }
}

/* 1 when path is root itself or below it; both absolute and resolved. */
static bool path_is_below(const char *path, const char *root) {
        size_t n = strlen(root);

        if (strcmp(root, "/") == 0)
                return true;
        return strncmp(path, root, n) == 0 && (path[n] == 0 || path[n] == '/');
}

static void run_register(CatalogJob *j) {
        _cleanup_(model_location_freep) ModelLocation *location = NULL;
        _cleanup_free_ char *resolved = NULL, *model_dir = NULL, *error = NULL;
        ModelSource source;
        uint64_t total = 0;
        struct stat st;
        int r;

        r = store_locate(j->model_dir, j->hf_cache, j->name, &source);
        if (r < 0)
                return job_fail(j, r, "Cannot tell whether model %s exists already: %m", j->name);
        if (r > 0)
                return job_fail(j, -EEXIST, "Model %s exists already: it is %s.", j->name, where_known(source));

        resolved = realpath(j->path, NULL);
        if (!resolved) {
                r = negative_errno();
                if (r == -ENOENT)
                        return job_fail(j, r, "%s does not exist.", j->path);
                if (r == -ENOTDIR)
                        return job_fail(j, r, "%s is not a directory.", j->path);
                if (r == -ENOMEM)
                        return job_fail(j, r, "Out of memory.");
                return job_fail(j, r, "Cannot resolve %s: %m.", j->path);
        }
        if (!store_registered_path_is_valid(resolved))
                return job_fail(j, -EINVAL, "%s cannot be registered: with its symlinks resolved, its path is "
                                "longer than %u bytes, or not UTF-8 without control characters.", j->path,
                                STORE_REGISTERED_PATH_MAX);
        if (stat(resolved, &st) < 0)
                return job_fail(j, negative_errno(), "Cannot access %s: %m.", resolved);
        if (!S_ISDIR(st.st_mode))
                return job_fail(j, -ENOTDIR, "%s is not a directory.", j->path);

        /* Trash, staging and models alike: ModelDir is the daemon's to change,
         * and its models need no registering. */
        model_dir = realpath(j->model_dir, NULL);
        if (model_dir && (path_is_below(resolved, model_dir) || path_is_below(model_dir, resolved)))
                return job_fail(j, -EINVAL, "%s is %s the model directory %s; a model there is found without "
                                "registering, and a registered directory must not hold the store.", j->path,
                                path_is_below(resolved, model_dir) ? "inside" : "around", model_dir);

        r = store_resolve_directory(resolved, j->name, job_cancelled, j, &location, &error);
        if (r < 0)
                return job_fail(j, r, "%s", error ?: "Out of memory.");

        /* As a load's probe would: every header, before the model is shown
         * as available. */
        for (size_t i = 0; i < location->n_weights; i++) {
                _cleanup_free_ char *detail = NULL;

                r = safetensors_validate_fd(location->weight_fds[i], job_cancelled, j, NULL, &detail);
                if (r == -EBADMSG)
                        return job_fail(j, r, "%s: %s", location->weight_paths[i],
                                        detail ?: "not a valid safetensors file");
                if (r == -ENOMEM)
                        return job_fail(j, r, "Out of memory.");
                if (r < 0)
                        return job_fail(j, r, "Cannot read %s: %s", location->weight_paths[i],
                                        detail ?: strerror(-r));
                if (fstat(location->weight_fds[i], &st) >= 0)
                        total += (uint64_t) st.st_size;
        }

        r = model_profile_read(&location->folder, j->name, location->weight_fds, location->weight_paths,
                               location->n_weights, job_cancelled, j, &j->profile);
        if (r == -ECANCELED)
                return job_fail(j, r, "Registering %s was cancelled.", j->name);
        if (r < 0)
                return job_fail(j, r, "Out of memory.");

        r = registry_add(j->model_dir, j->name, resolved);
        if (r == -ENOENT)
                /* The store is missing, not the caller's directory. */
                return job_fail(j, -EIO, "Cannot register %s: the model directory %s does not exist.", j->name,
                                j->model_dir);
        if (r == -EEXIST)
                return job_fail(j, r, "Model %s exists already: it is registered already.", j->name);
        if (r == -EUSERS)
                return job_fail(j, r, "%u models are registered, the most there may be.", STORE_REGISTRY_MAX);
        if (r < 0)
                return job_fail(j, r, "Cannot write the registration of %s into %s/" STORE_REGISTRY_DIR ": %m",
                                j->name, j->model_dir);

        j->resolved = TAKE_PTR(resolved);
        j->size_bytes = total;
        j->result = 0;
}

static bool kind_of(ModelSource a, ModelSource b) {
        bool a_folder = a == MODEL_SOURCE_STORE || a == MODEL_SOURCE_HUB;
        bool b_folder = b == MODEL_SOURCE_STORE || b == MODEL_SOURCE_HUB;

        return a == b || (a_folder && b_folder);
}

static void run_remove(CatalogJob *j) {
        _cleanup_free_ char *entry = NULL;
        ModelSource source;
        int r;

        r = store_locate(j->model_dir, j->hf_cache, j->name, &source);
        if (r < 0)
                return job_fail(j, r, "Cannot tell where model %s is: %m", j->name);
        if (r == 0)
                return job_fail(j, -ENOENT, "No model %s is in the store.", j->name);
        if (j->expected_known && !kind_of(source, j->expected))
                return job_fail(j, -EAGAIN, "Model %s changed in the store meanwhile (it is %s now, not %s); look "
                                "at its status and try again.", j->name, model_source_to_string(source),
                                model_source_to_string(j->expected));
        j->source = source;

        switch (source) {
        case MODEL_SOURCE_LOCAL:
                r = registry_remove(j->model_dir, j->name);
                if (r == -ENOENT)
                        return job_fail(j, r, "No model %s is in the store.", j->name);
                if (r < 0)
                        return job_fail(j, r, "Cannot remove the registration of %s from %s/" STORE_REGISTRY_DIR
                                        ": %m", j->name, j->model_dir);
                break;

        case MODEL_SOURCE_STORE:
        case MODEL_SOURCE_HUB:
                r = trash_move(j->model_dir, j->name, &entry);
                if (r == -ENOENT)
                        return job_fail(j, r, "No model %s is in the store.", j->name);
                if (r == -EXDEV)
                        return job_fail(j, r, "%s/%s is reached through a symlink or is on another file system "
                                        "than the model directory; mpool removes only its own folders: remove "
                                        "it by hand.", j->model_dir, j->name);
                if (r < 0)
                        return job_fail(j, r, "Cannot move %s/%s out of the store: %m", j->model_dir, j->name);
                /* It has left the store: a folder that cannot be deleted
                 * whole stays in the trash, which the next start empties. */
                r = trash_delete(j->model_dir, entry);
                if (r < 0)
                        log_warning_errno(r, "Cannot delete all of model %s, removed into %s/" TRASH_DIR "/%s: %m",
                                          j->name, j->model_dir, entry);
                break;

        default:
                return job_fail(j, -EOPNOTSUPP, "Model %s is in the Hugging Face cache, which mpool does not own; "
                                "remove it with the Hugging Face tools (huggingface-cli delete-cache).", j->name);
        }
        j->result = 0;
}

static void run(WorkItem *item) {
        CatalogJob *j = job_from_item(item);

        if (work_item_cancelled(item)) {
                j->result = -ECANCELED;
                return;
        }
        switch (j->kind) {
        case CATALOG_JOB_CLEAN:
                registry_clean(j->model_dir);
                trash_empty(j->model_dir);
                break;
        case CATALOG_JOB_REGISTER:
                run_register(j);
                break;
        case CATALOG_JOB_REMOVE:
                run_remove(j);
                break;
        }
}

static void catalog_forget_job(Catalog *c, CatalogJob *j) {
        for (size_t i = 0; i < c->n_jobs; i++)
                if (c->jobs[i] == j) {
                        c->jobs[i] = c->jobs[--c->n_jobs];
                        return;
                }
}

static void register_done(Manager *m, CatalogJob *j);
static void remove_done(Manager *m, CatalogJob *j);

static void on_job_done(WorkItem *item, bool ran) {
        _cleanup_(catalog_job_freep) CatalogJob *j = job_from_item(item);
        Manager *m = j->manager;

        catalog_forget_job(m->catalog, j);
        if (!ran || j->result == -ECANCELED) {
                if (j->reply)
                        j->reply(-EBUSY, "mpoold is shutting down.", j->userdata);
        } else if (j->kind == CATALOG_JOB_REGISTER)
                register_done(m, j);
        else if (j->kind == CATALOG_JOB_REMOVE)
                remove_done(m, j);
        manager_work_done(m);
}

static int job_new(Manager *m, CatalogJobKind kind, const char *name, CatalogJob **ret) {
        _cleanup_(catalog_job_freep) CatalogJob *j = NULL;

        j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->kind = kind;
        j->manager = m;
        j->item.run = run;
        j->item.done = on_job_done;
        j->model_dir = strdup(m->config.model_dir);
        if (!j->model_dir)
                return -ENOMEM;
        if (m->config.huggingface_cache) {
                j->hf_cache = strdup(m->config.huggingface_cache);
                if (!j->hf_cache)
                        return -ENOMEM;
        }
        if (name) {
                j->name = strdup(name);
                if (!j->name)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(j);
        return 0;
}

/* Hands the job to the worker, or says why not. The job is the worker's on
 * success, still the caller's otherwise. */
static int job_submit(Catalog *c, CatalogJob *j) {
        CatalogJob **jobs;
        int r;

        jobs = reallocarray(c->jobs, c->n_jobs + 1, sizeof *jobs);
        if (!jobs)
                return -ENOMEM;
        c->jobs = jobs;
        r = workpool_submit(c->worker, &j->item);
        if (r < 0)
                return r;
        c->jobs[c->n_jobs++] = j;
        return 0;
}

/* --- Life --------------------------------------------------------------- */

int catalog_new(Manager *m, Catalog **ret) {
        _cleanup_(catalog_job_freep) CatalogJob *clean = NULL;
        Catalog *c;
        int r;

        assert(m);
        assert(m->event);
        assert(ret);

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        r = workpool_new(m->event, "catalog", 1, CATALOG_QUEUE_MAX + 1, &c->worker);
        if (r < 0) {
                free(c);
                return r;
        }

        /* A crash may have left a removal half done, or a registration half
         * written; the worker clears that before anything else. */
        r = job_new(m, CATALOG_JOB_CLEAN, NULL, &clean);
        if (r >= 0)
                r = job_submit(c, clean);
        if (r < 0) {
                catalog_free(c);
                return r;
        }
        TAKE_PTR(clean);

        *ret = c;
        return 0;
}

void catalog_stop(Catalog *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_jobs; i++)
                workpool_cancel(c->worker, &c->jobs[i]->item);
}

bool catalog_busy(const Catalog *c) {
        return c && c->worker && workpool_in_flight(c->worker) > 0;
}

Catalog *catalog_free(Catalog *c) {
        if (!c)
                return NULL;
        if (catalog_busy(c)) {
                /* Only when the loop ended before shutdown drained the worker:
                 * it may still write to its job. */
                log_error("Stopping while %u registration(s) or removal(s) are under way.",
                          workpool_in_flight(c->worker));
                return NULL;
        }
        workpool_free(c->worker);
        free(c->jobs);
        free(c);
        return NULL;
}

/* --- Register ----------------------------------------------------------- */

_printf_(4, 5) static void reply_error(CatalogReply reply, void *userdata, int error, const char *format, ...) {
        _cleanup_free_ char *message = NULL;
        va_list ap;

        va_start(ap, format);
        if (vasprintf(&message, format, ap) < 0)
                message = NULL;
        va_end(ap);
        reply(error, message ?: "Out of memory.", userdata);
}

static void register_done(Manager *m, CatalogJob *j) {
        if (j->result < 0) {
                log_info("Registering %s at %s failed: %s", j->name, j->path, strempty(j->message));
                return j->reply(j->result, j->message ?: "Out of memory.", j->userdata);
        }

        log_info("Registered model %s at %s.", j->name, j->resolved);
        if (!m->shutting_down)
                (void) model_found(m, j->name, 0, j->size_bytes, MODEL_SOURCE_LOCAL, NULL, NULL,
                                   &j->profile);   /* logged */
        j->reply(0, NULL, j->userdata);
}

void catalog_register(Manager *m, const char *name, const char *path, CatalogReply reply, void *userdata) {
        _cleanup_(catalog_job_freep) CatalogJob *j = NULL;
        PoolModel *model;
        int r;

        assert(m);
        assert(name);
        assert(path);
        assert(reply);

        if (m->shutting_down || !m->catalog)
                return reply(-EBUSY, "mpoold is shutting down.", userdata);
        if (path[0] != '/')
                return reply_error(reply, userdata, -EINVAL, "The path of a model directory must be absolute, "
                                   "not \"%s\".", path);
        if (strlen(path) > STORE_REGISTERED_PATH_MAX)
                return reply_error(reply, userdata, -EINVAL, "The path is longer than %u bytes.",
                                   STORE_REGISTERED_PATH_MAX);

        model = pool_find(&m->pool, name);
        if (model && model_is_announced(model))
                return reply_error(reply, userdata, -EEXIST, "Model %s exists already: it is %s.", name,
                                   where_known(((ModelRuntime *) model->userdata)->source));
        if (download_find(m, name, NULL, NULL))
                return reply_error(reply, userdata, -EBUSY, "Model %s is being pulled into the store.", name);

        r = job_new(m, CATALOG_JOB_REGISTER, name, &j);
        if (r >= 0) {
                j->path = strdup(path);
                if (!j->path)
                        r = -ENOMEM;
        }
        if (r < 0)
                return reply(r, "Out of memory.", userdata);
        j->reply = reply;
        j->userdata = userdata;

        r = job_submit(m->catalog, j);
        if (r == -EBUSY)
                return reply_error(reply, userdata, r, "%u registrations and removals wait already; try again "
                                   "when one is done.", CATALOG_QUEUE_MAX);
        if (r < 0)
                return reply(r, "Out of memory.", userdata);
        TAKE_PTR(j);
}

/* --- Remove ------------------------------------------------------------- */

/* What makes a model busy for Remove; NULL if nothing. Holds stay possible
 * after a forced unload, so they are asked about apart (holds_count). */
static const char *busy_reason(const PoolModel *model, bool holds_count) {
        const ModelRuntime *rt = model->userdata;

        if (model->state == MODEL_LOADED)
                return "loaded";
        if (model->state == MODEL_LOADING || (rt && rt->job))
                return "loading";
        if (model->state == MODEL_UNLOADING || model->in_flight > 0)
                return "in use";
        if (rt && rt->n_waiters > 0)
                return "waited for";
        if (holds_count && model->holds > 0)
                return "held";
        return NULL;
}

static void removing_done(Manager *m, const char *name) {
        PoolModel *model = pool_find(&m->pool, name);

        if (model && model->userdata)
                ((ModelRuntime *) model->userdata)->removing = false;
}

static void remove_done(Manager *m, CatalogJob *j) {
        PoolModel *model;

        removing_done(m, j->name);
        if (j->result < 0) {
                log_info("Removing model %s failed: %s", j->name, strempty(j->message));
                if (j->result == -EAGAIN && m->store_watch)
                        store_watch_look_soon(m->store_watch);
                return j->reply(j->result, j->message ?: "Out of memory.", j->userdata);
        }

        log_info("Removed model %s (%s)%s.", j->name, model_source_to_string(j->source),
                 j->source == MODEL_SOURCE_LOCAL ? "; its directory is left as it was" : "");
        model = pool_find(&m->pool, j->name);
        if (model)
                model_left_store(m, model);
        /* A model of that name elsewhere (in the cache, or a folder a
         * registration hid) comes forward. */
        if (m->store_watch)
                store_watch_look_soon(m->store_watch);
        j->reply(0, NULL, j->userdata);
}

typedef struct RemoveStep {
        Manager *manager;
        char *name;
        bool expected_known;
        ModelSource expected;
        CatalogReply reply;
        void *userdata;
} RemoveStep;

static RemoveStep *remove_step_free(RemoveStep *s) {
        if (s) {
                free(s->name);
                free(s);
        }
        return NULL;
}

static void remove_step_freep(RemoveStep **s) {
        remove_step_free(*s);
}

/* The model is not busy (holds aside): the worker removes its files. */
static void remove_submit(Manager *m, const char *name, bool expected_known, ModelSource expected,
                          CatalogReply reply, void *userdata) {
        _cleanup_(catalog_job_freep) CatalogJob *j = NULL;
        int r;

        r = job_new(m, CATALOG_JOB_REMOVE, name, &j);
        if (r < 0) {
                removing_done(m, name);
                return reply(r, "Out of memory.", userdata);
        }
        j->expected_known = expected_known;
        j->expected = expected;
        j->reply = reply;
        j->userdata = userdata;

        r = job_submit(m->catalog, j);
        if (r < 0) {
                removing_done(m, name);
                if (r == -EBUSY)
                        return reply_error(reply, userdata, r, "%u registrations and removals wait already; try "
                                           "again when one is done.", CATALOG_QUEUE_MAX);
                return reply(r, "Out of memory.", userdata);
        }
        TAKE_PTR(j);
}

/* The forced Unload is over: on to the files, if nothing took the model
 * meanwhile. */
static void on_unloaded(Request *req, void *userdata) {
        _cleanup_(remove_step_freep) RemoveStep *s = userdata;
        Manager *m = s->manager;
        PoolModel *model;
        const char *busy;

        if (req->error < 0) {
                removing_done(m, s->name);
                return reply_error(s->reply, s->userdata, req->error, "Cannot unload model %s before removing it: %s",
                                   s->name, strempty(req->error_message));
        }
        if (m->shutting_down) {
                removing_done(m, s->name);
                return s->reply(-EBUSY, "mpoold is shutting down.", s->userdata);
        }

        model = pool_find(&m->pool, s->name);
        busy = model ? busy_reason(model, false) : NULL;
        if (busy) {
                /* Loads that waited for the unload to finish start again. */
                removing_done(m, s->name);
                return reply_error(s->reply, s->userdata, -EBUSY, "Model %s is %s again: a load that waited for "
                                   "it came first. Try again.", s->name, busy);
        }
        remove_submit(m, s->name, s->expected_known, s->expected, s->reply, s->userdata);
}

void catalog_remove(Manager *m, const char *name, bool force, const char *owner, CatalogReply reply,
                    void *userdata) {
        _cleanup_(request_unrefp) Request *req = NULL;
        _cleanup_(remove_step_freep) RemoveStep *step = NULL;
        bool expected_known = false;
        ModelSource expected = MODEL_SOURCE_STORE;
        ModelRuntime *rt = NULL;
        PoolModel *model;
        const char *busy = NULL;
        int r;

        assert(m);
        assert(name);
        assert(reply);

        if (m->shutting_down || !m->catalog)
                return reply(-EBUSY, "mpoold is shutting down.", userdata);

        model = pool_find(&m->pool, name);
        if (model)
                rt = model->userdata;
        if (rt && rt->removing)
                return reply_error(reply, userdata, -EBUSY, "Model %s is being removed already.", name);
        if (download_find(m, name, NULL, NULL))
                return reply_error(reply, userdata, -EBUSY, "Model %s is being downloaded; cancel the download "
                                   "first.", name);

        if (model && model_is_announced(model)) {
                expected_known = true;
                expected = rt->source;
                /* Refused before anything is unloaded for it. */
                if (expected == MODEL_SOURCE_HF_CACHE)
                        return reply_error(reply, userdata, -EOPNOTSUPP, "Model %s is in the Hugging Face cache, "
                                           "which mpool does not own; remove it with the Hugging Face tools "
                                           "(huggingface-cli delete-cache).", name);
        }

        if (model)
                busy = busy_reason(model, true);
        if (busy && !force)
                return reply_error(reply, userdata, -EBUSY, "Model %s is %s: unload it first, or remove it with "
                                   "force, which unloads it.", name, busy);

        if (rt)
                rt->removing = true;
        if (!busy || !busy_reason(model, false))
                /* Not busy, or only held: holds do not keep files. */
                return remove_submit(m, name, expected_known, expected, reply, userdata);

        step = calloc(1, sizeof *step);
        if (step)
                step->name = strdup(name);
        if (!step || !step->name) {
                removing_done(m, name);
                return reply(-ENOMEM, "Out of memory.", userdata);
        }
        step->manager = m;
        step->expected_known = expected_known;
        step->expected = expected;
        step->reply = reply;
        step->userdata = userdata;

        r = request_new(REQUEST_UNLOAD, name, owner, on_unloaded, step, &req);
        if (r < 0) {
                removing_done(m, name);
                return reply(r, "Out of memory.", userdata);
        }
        req->force = true;
        log_info("Unloading model %s to remove it.", name);
        TAKE_PTR(step);   /* on_unloaded's, which runs exactly once */
        manager_submit(m, req);
}
