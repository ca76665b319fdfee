/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "model-compute.h"
#include "time-util.h"

/* One worker's state, handed to every job it runs. */
typedef struct Worker {
        ModelCompute *compute;
        void *scratch;
        uint64_t bytes;           /* charged to the model */
} Worker;

struct ModelCompute {
        Manager *manager;
        PoolModel *model;         /* valid until model_compute_release() */
        WorkPool *workers;
        const ComputeEngine *engine;
        void *engine_data;
        WorkerPolicy policy;
        ComputeJob *jobs;         /* submitted and not done, oldest first */
        ComputeJob *jobs_tail;
        unsigned n_jobs;
        uint64_t idle_since_usec;
        uint64_t retired_usec;
        sd_event_source *cooldown_timer;
        sd_event_source *grace_timer;
        sd_event_source *free_source;
        bool released;            /* the model is unloaded: no more jobs, free once the workers stopped */
        ModelCompute *released_next; /* in the manager's list of those */
};

void compute_job_done(ComputeJob *job) {
        job->error_message = mfree(job->error_message);
}

static unsigned default_max_workers(const Manager *m) {
        long cpus;

        if (m->config.max_workers > 0)
                return m->config.max_workers;
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        return cpus > 0 ? (unsigned) MIN(cpus, (long) CONFIG_MAX_WORKERS_MAX) : 1;
}

void model_compute_configure(Manager *m, PoolModel *model, unsigned max_workers) {
        ModelRuntime *rt = model_runtime(m, model);

        if (rt)
                rt->max_workers = MIN(max_workers, CONFIG_MAX_WORKERS_MAX);
}

static WorkerCounts counts(const ModelCompute *c) {
        unsigned workers = workpool_threads(c->workers), waiting = workpool_waiting(c->workers);

        /* Jobs not waiting are run by a worker, or about to be. */
        return (WorkerCounts) {
                .workers = workers,
                .busy = MIN(c->n_jobs - MIN(waiting, c->n_jobs), workers),
                .waiting = waiting,
                .idle_since_usec = c->idle_since_usec,
                .retired_usec = c->retired_usec,
        };
}

void model_compute_counts(const PoolModel *model, ComputeCounts *ret) {
        const ModelRuntime *rt = model->userdata;
        const ModelCompute *c = rt ? rt->compute : NULL;

        if (!c) {
                *ret = (ComputeCounts) {};
                return;
        }
        WorkerCounts w = counts(c);
        *ret = (ComputeCounts) {
                .workers = w.workers,
                .active = w.busy,
                .queued = w.waiting,
        };
}

/* --- Workers ----------------------------------------------------------- */

static void on_worker_retired(void *state, void *userdata) {
        Worker *w = state;
        ModelCompute *c = w->compute;

        /* After an unload the model's charges are gone with it. */
        if (!c->released && c->model->state == MODEL_LOADED)
                model_uncharge(c->manager, c->model, w->bytes);
        c->engine->scratch_free(w->scratch);
        free(w);
}

/* One more worker, its scratch charged to the model: -ENOSPC when the limit
 * leaves no room for it, even after evicting idle models. */
static int add_worker(ModelCompute *c) {
        _cleanup_free_ Worker *w = NULL;
        int r;

        w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->compute = c;
        r = c->engine->scratch_new(c->engine_data, &w->scratch, &w->bytes);
        if (r < 0)
                return r;
        r = model_charge(c->manager, c->model, w->bytes);
        if (r < 0) {
                c->engine->scratch_free(w->scratch);
                return r;
        }
        r = workpool_add_worker(c->workers, w);
        if (r < 0) {
                model_uncharge(c->manager, c->model, w->bytes);
                c->engine->scratch_free(w->scratch);
                return r;
        }
        log_debug("Model %s: started worker %u.", c->model->name, workpool_threads(c->workers));
        TAKE_PTR(w);
        return 0;
}

static void arm_cooldown(ModelCompute *c);

static int on_cooldown(sd_event_source *s, uint64_t usec, void *userdata) {
        ModelCompute *c = userdata;
        WorkerCounts w = counts(c);
        uint64_t now = now_monotonic_usec();

        if (worker_policy_next_retirement(&c->policy, &w) <= now && workpool_retire_worker(c->workers) >= 0) {
                c->retired_usec = now;
                log_debug("Model %s: cooled down to %u worker(s).", c->model->name, workpool_threads(c->workers));
        }
        arm_cooldown(c);
        return 0;
}

static void arm_cooldown(ModelCompute *c) {
        WorkerCounts w = counts(c);
        uint64_t next = c->released ? UINT64_MAX : worker_policy_next_retirement(&c->policy, &w);
        int r;

        if (next == UINT64_MAX) {
                if (c->cooldown_timer)
                        (void) sd_event_source_set_enabled(c->cooldown_timer, SD_EVENT_OFF);
                return;
        }
        if (!c->cooldown_timer) {
                r = sd_event_add_time(c->manager->event, &c->cooldown_timer, CLOCK_MONOTONIC, next, 0, on_cooldown,
                                      c);
                if (r < 0)
                        goto fail;
                (void) sd_event_source_set_description(c->cooldown_timer, "worker-cooldown");
                return;
        }
        r = sd_event_source_set_time(c->cooldown_timer, next);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->cooldown_timer, SD_EVENT_ONESHOT);
        if (r >= 0)
                return;
fail:
        /* The workers then stay until the model is unloaded: memory held
         * longer than asked, nothing worse. */
        log_warning_errno(r, "Cannot arm the cooldown of the workers of %s: %m", c->model->name);
}

/* --- Jobs -------------------------------------------------------------- */

static void jobs_unlink(ModelCompute *c, ComputeJob *job) {
        if (job->previous)
                job->previous->next = job->next;
        else
                c->jobs = job->next;
        if (job->next)
                job->next->previous = job->previous;
        else
                c->jobs_tail = job->previous;
        job->next = job->previous = NULL;
        c->n_jobs--;
}

static void model_compute_free_later(ModelCompute *c);

static void on_job_done(WorkItem *item, bool ran) {
        ComputeJob *job = container_of(item, ComputeJob, item);
        ModelCompute *c = item->userdata;
        Manager *m = job->manager;
        PoolModel *model = job->model;
        ModelWeights *weights = TAKE_PTR(job->weights);

        jobs_unlink(c, job);
        if (ran)
                model->tokens_total += job->tokens;
        else if (job->error >= 0) {
                job->error = -ECANCELED;
                job->error_message = mfree(job->error_message);
                if (asprintf(&job->error_message, "The request was cancelled: model %s is being unloaded.",
                             model->name) < 0)
                        job->error_message = NULL;
        }
        if (c->n_jobs == 0) {
                c->idle_since_usec = now_monotonic_usec();
                c->retired_usec = 0;
                c->grace_timer = sd_event_source_disable_unref(c->grace_timer);
        }
        arm_cooldown(c);

        job->done(job);

        /* Last: the lease may be what an unload waits for. */
        model_unlease(m, model, weights);
}

/* On a worker thread. */
static void run_job(WorkItem *item) {
        ComputeJob *job = container_of(item, ComputeJob, item);
        Worker *w = item->worker_state;

        job->run(job, w->scratch);
}

static int compute_new(Manager *m, PoolModel *model, const ComputeEngine *engine, void *engine_data,
                       ModelCompute **ret) {
        ModelRuntime *rt = model->userdata;
        _cleanup_free_ ModelCompute *c = NULL;
        int r;

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        *c = (ModelCompute) {
                .manager = m,
                .model = model,
                .engine = engine,
                .engine_data = engine_data,
                .policy = {
                        .max_workers = rt->max_workers > 0 ? rt->max_workers : default_max_workers(m),
                        .max_queued = m->config.max_queued_requests,
                        .cooldown_usec = (uint64_t) m->config.cooldown_sec * USEC_PER_SEC,
                },
        };
        /* The policy refuses first; the pool's own bound only backs it up. */
        r = workpool_new(m->event, "compute", 0, c->policy.max_queued + c->policy.max_workers, &c->workers);
        if (r < 0)
                return r;
        workpool_set_retired(c->workers, on_worker_retired, c);
        *ret = TAKE_PTR(c);
        return 0;
}

int model_compute_submit(Manager *m, PoolModel *model, const ComputeEngine *engine, void *engine_data,
                         ComputeJob *job) {
        ModelRuntime *rt = model->userdata;
        ModelCompute *c;
        WorkerCounts w;
        int r;

        assert(job && job->run && job->done);

        if (model->state != MODEL_LOADED || !rt)
                return -ESTALE;
        if (!rt->compute) {
                r = compute_new(m, model, engine, engine_data, &rt->compute);
                if (r < 0)
                        return r;
        }
        c = rt->compute;
        assert(c->engine == engine && c->engine_data == engine_data);
        /* A later Load may have asked for another bound. */
        c->policy.max_workers = rt->max_workers > 0 ? rt->max_workers : default_max_workers(m);

        /* Would it have to wait, with every worker that may start started? */
        w = counts(c);
        if (w.busy >= w.workers && w.workers >= c->policy.max_workers && !worker_policy_admit(&c->policy, &w))
                return -EBUSY;
        /* No worker at all and none can start: refused before it queues. */
        if (w.workers == 0) {
                r = add_worker(c);
                if (r < 0)
                        return r;
        }

        job->error = 0;
        job->error_message = NULL;
        job->tokens = 0;
        job->manager = m;
        job->model = model;
        job->item = (WorkItem) {
                .run = run_job,
                .done = on_job_done,
                .userdata = c,
        };
        r = model_lease(m, model, &job->weights);
        if (r < 0)
                return r;
        r = workpool_submit(c->workers, &job->item);
        if (r < 0) {
                model_unlease(m, model, TAKE_PTR(job->weights));
                return r;
        }
        if (c->jobs_tail)
                c->jobs_tail->next = job;
        else
                c->jobs = job;
        job->previous = c->jobs_tail;
        job->next = NULL;
        c->jobs_tail = job;
        c->n_jobs++;
        if (c->cooldown_timer)
                (void) sd_event_source_set_enabled(c->cooldown_timer, SD_EVENT_OFF);

        /* Waiting for a worker: one more may start. */
        w = counts(c);
        if (worker_policy_grow(&c->policy, &w)) {
                r = add_worker(c);
                if (r < 0 && r != -ENOSPC)
                        log_warning_errno(r, "Cannot start another worker for %s; the request waits: %m",
                                          model->name);
        }
        return 0;
}

/* --- Unloading --------------------------------------------------------- */

static int on_grace_over(sd_event_source *s, uint64_t usec, void *userdata) {
        ModelCompute *c = userdata;

        log_warning("Model %s: %u request(s) still running %" PRIu64 " s after its unload began; stopping them.",
                    c->model->name, c->n_jobs, COMPUTE_UNLOAD_GRACE_USEC / USEC_PER_SEC);
        for (ComputeJob *job = c->jobs; job; job = job->next)
                workpool_cancel(c->workers, &job->item);
        c->grace_timer = sd_event_source_disable_unref(c->grace_timer);
        return 0;
}

static void on_model_unloading(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        ModelCompute *c = rt ? rt->compute : NULL;
        int r;

        if (!c || c->n_jobs == 0)
                return;
        for (ComputeJob *job = c->jobs; job; job = job->next)
                (void) workpool_cancel_queued(c->workers, &job->item);
        r = sd_event_add_time_relative(m->event, &c->grace_timer, CLOCK_MONOTONIC, COMPUTE_UNLOAD_GRACE_USEC, 0,
                                       on_grace_over, c);
        if (r < 0)
                log_warning_errno(r, "Cannot time the requests of %s that run on; the unload waits for them: %m",
                                  model->name);
}

static void compute_free(ModelCompute *c) {
        ModelCompute **link = &c->manager->released_computes;

        for (; *link && *link != c; link = &(*link)->released_next)
                ;
        if (*link)
                *link = c->released_next;

        /* Every worker is idle (no job is left), so this waits for nothing. */
        workpool_free(c->workers);
        sd_event_source_disable_unref(c->cooldown_timer);
        sd_event_source_disable_unref(c->grace_timer);
        sd_event_source_disable_unref(c->free_source);
        free(c);
}

static int on_free(sd_event_source *s, void *userdata) {
        compute_free(userdata);
        return 0;
}

/* Not at once: the unload may complete inside the workers' own completion
 * handler, which must not see its pool freed under it. Until then the
 * manager lists it, for model_compute_free_released() at exit. */
static void model_compute_free_later(ModelCompute *c) {
        int r;

        c->released_next = c->manager->released_computes;
        c->manager->released_computes = c;
        r = sd_event_add_defer(c->manager->event, &c->free_source, on_free, c);
        if (r < 0)
                log_warning_errno(r, "Cannot free the workers of %s before exit: %m", c->model->name);
}

void model_compute_free_released(Manager *m) {
        while (m->released_computes)
                compute_free(m->released_computes);
}

static void on_model_unloaded(Manager *m, PoolModel *model) {
        ModelRuntime *rt = model->userdata;
        ModelCompute *c = rt ? TAKE_PTR(rt->compute) : NULL;

        if (rt)
                rt->max_workers = 0;
        if (!c)
                return;
        assert(c->n_jobs == 0);
        c->released = true;
        (void) sd_event_source_set_enabled(c->cooldown_timer, SD_EVENT_OFF);
        model_compute_free_later(c);
}

void model_compute_setup(Manager *m) {
        m->model_unloading = on_model_unloading;
        m->model_unloaded = on_model_unloaded;
}
