/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "log.h"
#include "macro.h"
#include "model-compute.h"
#include "mpool-bus.h"
#include "request.h"
#include "sigbus.h"
#include "test-hooks.h"
#include "time-util.h"

typedef struct EmbedCall {
        Manager *manager;
        char *model_name;
        char **texts;
        size_t *lengths;
        size_t n;
        EmbedOptions options;
        char *prompt_name;        /* options.prompt_name points here */
        EmbedReply reply;
        void *userdata;
        uint64_t started_usec;    /* monotonic: the call's duration, for the metrics */

        /* Fixed before the job is submitted; read by the worker. */
        const EmbeddingModel *model;
        ComputeJob job;

        /* Written by the worker. */
        bool files_changed;       /* a page it read was gone (sigbus.h) */
        float *vectors;
        size_t dims;
} EmbedCall;

static EmbedCall *embed_call_free(EmbedCall *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n; i++)
                free(c->texts[i]);
        free(c->texts);
        free(c->lengths);
        free(c->prompt_name);
        free(c->model_name);
        free(c->vectors);
        free(c);
        return NULL;
}

static void finish(EmbedCall *c, int error, const char *message) {
        metrics_embed_finished(&c->manager->metrics, error, now_monotonic_usec() - c->started_usec);
        if (error < 0)
                c->reply(error, message ?: "Out of memory.", NULL, 0, 0, c->userdata);
        else
                c->reply(0, NULL, c->vectors, c->n, c->dims, c->userdata);
        embed_call_free(c);
}

static void finishf(EmbedCall *c, int error, const char *format, ...) _printf_(3, 4);
static void finishf(EmbedCall *c, int error, const char *format, ...) {
        _cleanup_free_ char *message = NULL;
        va_list ap;

        va_start(ap, format);
        if (vasprintf(&message, format, ap) < 0)
                message = NULL;
        va_end(ap);
        finish(c, error, message);
}

/* --- The workers' side --------------------------------------------------- */

static int scratch_new(void *engine, void **ret_scratch, uint64_t *ret_bytes) {
        EmbeddingScratch *s;
        int r;

        r = embedding_scratch_new(engine, &s);
        if (r < 0)
                return r;
        *ret_bytes = embedding_scratch_bytes(s);
        *ret_scratch = s;
        return 0;
}

static void scratch_free(void *scratch) {
        embedding_scratch_free(scratch);
}

static const ComputeEngine embedding_engine = {
        .scratch_new = scratch_new,
        .scratch_free = scratch_free,
};

static bool job_cancelled(void *userdata) {
        return compute_job_cancelled(userdata);
}

/* On a worker thread. */
static void run(ComputeJob *job, void *scratch) {
        EmbedCall *c = container_of(job, EmbedCall, job);
        size_t failed = 0;
        int r;

        test_hook_compute_gate(c->model_name, &job->item);
        uint64_t faults = sigbus_count();
        r = embedding_run(c->model, scratch, (const char *const *) c->texts, c->lengths, c->n, &c->options,
                          job_cancelled, job, &c->vectors, &c->dims, &job->tokens, &failed, &job->error_message);
        /* A text too long to take whole is the caller's to shorten. */
        job->error = r == -E2BIG ? -EINVAL : r;

        /* Counted for any model: a fault elsewhere at the same moment costs
         * this call a retry, which is better than wrong vectors. */
        if (sigbus_count() != faults) {
                c->files_changed = true;
                c->vectors = mfree(c->vectors);
                free(job->error_message);
                job->error = -EBADMSG;
                if (asprintf(&job->error_message, "The files of model %s changed while it was being used; it is "
                             "unloaded.", c->model_name) < 0)
                        job->error_message = NULL;
        }
}

static void done(ComputeJob *job) {
        EmbedCall *c = container_of(job, EmbedCall, job);
        int error = job->error;
        _cleanup_free_ char *message = TAKE_PTR(job->error_message);

        compute_job_done(job);
        /* Its mapping holds zero pages now: it must be loaded afresh. */
        if (c->files_changed) {
                PoolModel *model = pool_find(&c->manager->pool, c->model_name);

                if (model && model->state == MODEL_LOADED) {
                        log_warning("The files of model %s shrank while it was computing; unloading it.",
                                    c->model_name);
                        model_unload(c->manager, model, MPOOL_REASON_FILES_CHANGED);
                }
        }
        finish(c, error, message);
}

/* --- The loop's side ----------------------------------------------------- */

static void run_on_workers(EmbedCall *c) {
        Manager *m = c->manager;
        PoolModel *model = pool_find(&m->pool, c->model_name);
        _cleanup_free_ char *problem = NULL;
        int r;

        if (!model || model->state != MODEL_LOADED)
                return finishf(c, -ECANCELED, "Model %s was unloaded before its texts could run.", c->model_name);

        c->model = model_embedding(model);
        if (!c->model) {
                const char *reason = NULL;
                int error = -EOPNOTSUPP;

                (void) model_kind(model, &error, &reason);
                return finishf(c, error < 0 ? error : -EOPNOTSUPP, "Model %s cannot be run by mpoold: %s",
                               c->model_name, reason ?: "it is not a BERT embedding model.");
        }
        if (!m->blas_core)
                return finishf(c, -EOPNOTSUPP, "Models cannot be run: OpenBLAS could not be loaded (see the log).");

        r = embedding_options_check(c->model, &c->options, &problem);
        if (r < 0)
                return finishf(c, r, "%s", problem ?: "Invalid options.");

        c->job = (ComputeJob) {
                .run = run,
                .done = done,
        };
        r = model_compute_submit(m, model, &embedding_engine, (void *) c->model, &c->job);
        switch (r) {
        case 0:
                return;   /* done follows */
        case -EBUSY:
                return finishf(c, -EBUSY, "Model %s has %u requests waiting already; try again later.",
                               c->model_name, m->config.max_queued_requests);
        case -ENOSPC:
                return finishf(c, -ENOSPC, "Model %s has no worker, and the memory limit leaves no room for one.",
                               c->model_name);
        case -ESTALE:
                return finishf(c, -ECANCELED, "Model %s is being unloaded.", c->model_name);
        default:
                log_error_errno(r, "Cannot run the texts of a request on %s: %m", c->model_name);
                return finishf(c, r, "Cannot run the texts on model %s: %s.", c->model_name, strerror(-r));
        }
}

static void on_loaded(Request *req, void *userdata) {
        EmbedCall *c = userdata;

        if (req->error < 0)
                return finish(c, req->error, req->error_message);
        run_on_workers(c);
}

int embed_submit(Manager *m, const char *name, char **texts, size_t *lengths, size_t n, const EmbedOptions *options,
                 const char *owner, EmbedReply reply, void *userdata) {
        _cleanup_(request_unrefp) Request *req = NULL;
        EmbedCall *c;
        PoolModel *model;
        int r;

        assert(m && name && reply && options);
        assert(n > 0 && n <= EMBED_TEXTS_MAX);

        c = calloc(1, sizeof *c);
        if (!c) {
                for (size_t i = 0; i < n; i++)
                        free(texts[i]);
                free(texts);
                free(lengths);
                return -ENOMEM;
        }
        *c = (EmbedCall) {
                .manager = m,
                .texts = texts,
                .lengths = lengths,
                .n = n,
                .options = *options,
                .reply = reply,
                .userdata = userdata,
                .started_usec = now_monotonic_usec(),
        };
        c->model_name = strdup(name);
        if (!c->model_name)
                goto oom;
        if (options->prompt_name) {
                c->prompt_name = strdup(options->prompt_name);
                if (!c->prompt_name)
                        goto oom;
        }
        c->options.prompt_name = c->prompt_name;

        /* Loaded: straight to the workers, which count the use once. */
        model = pool_find(&m->pool, name);
        if (model && model->state == MODEL_LOADED) {
                run_on_workers(c);
                return 0;
        }

        r = request_new(REQUEST_LOAD, name, owner, on_loaded, c, &req);
        if (r < 0)
                goto oom;
        manager_submit(m, req);
        return 0;

oom:
        embed_call_free(c);
        return -ENOMEM;
}
