/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "model-lifecycle.h"
#include "worker-policy.h"
#include "workpool.h"

/* The workers of the models that compute (embeddings), on the loop thread:
 * each loaded model that has work gets an elastic pool of worker threads
 * that share its weights and own only their scratch, which is charged to
 * the model. worker-policy.h decides when a worker starts (work waits and
 * the memory limit allows its scratch) and when one stops (cooldown); here
 * is the mechanism.
 *
 * A job holds a lease on the model's weights (model_lease) from its submit
 * to its completion: it counts as use, keeps the model from eviction, and
 * keeps the weights mapped past an unload. An unload lets the jobs that run
 * finish (for up to COMPUTE_UNLOAD_GRACE_USEC, then they are asked to
 * stop), ends queued ones at once as cancelled, and frees the workers once
 * the model is unloaded. */

#define COMPUTE_UNLOAD_GRACE_USEC (30 * USEC_PER_SEC)

/* What a model's workers run: the embedding model in the daemon, a stand-in
 * in tests. scratch_new runs on the loop thread, before the worker starts;
 * scratch_free on the loop thread, once the worker has stopped. */
typedef struct ComputeEngine {
        int (*scratch_new)(void *engine, void **ret_scratch, uint64_t *ret_bytes);
        void (*scratch_free)(void *scratch);
} ComputeEngine;

typedef struct ComputeJob ComputeJob;

/* On a worker thread: the job's work, with that worker's scratch. Writes
 * only the job's results (error, error_message, tokens and the owner's own
 * result fields); checks compute_job_cancelled() where stopping is cheap. */
typedef void (*compute_run_t)(ComputeJob *job, void *scratch);
/* On the loop thread, exactly once per job submitted: after run, or
 * instead of it (error -ECANCELED: the model was unloaded before a worker
 * took it; -ENOSPC: no memory for a worker). The owner has the job back. */
typedef void (*compute_done_t)(ComputeJob *job);

struct ComputeJob {
        /* Set by the owner before submitting. */
        compute_run_t run;
        compute_done_t done;
        void *userdata;

        /* Results. */
        int error;                /* 0 or negative errno */
        char *error_message;      /* malloc'd, when error < 0; freed by compute_job_done() */
        uint64_t tokens;          /* work done, for the model's counters */

        /* The compute's. */
        WorkItem item;
        Manager *manager;
        PoolModel *model;
        ModelWeights *weights;    /* the lease */
        ComputeJob *next, *previous;
};

static inline bool compute_job_cancelled(ComputeJob *job) {
        return work_item_cancelled(&job->item);
}

/* Frees what the compute put in the job (the error message). */
void compute_job_done(ComputeJob *job);

/* The settings of the model's workers: max_workers 0 means the
 * configuration's ([Workers] MaxWorkers=, itself 0 for one per CPU). Kept
 * until the model is unloaded. */
void model_compute_configure(Manager *m, PoolModel *model, unsigned max_workers);

/* Queues the job on the loaded model's workers, starting one if the policy
 * says so. Returns 0 (done follows, never from inside this call), or
 *   -ESTALE  the model is not loaded,
 *   -EBUSY   MaxQueuedRequests= requests wait already,
 *   -ENOSPC  no worker runs and the memory limit leaves no room for one,
 *   -ENOMEM,
 * or what engine->scratch_new gave; done is then not called. */
int model_compute_submit(Manager *m, PoolModel *model, const ComputeEngine *engine, void *engine_data,
                         ComputeJob *job);

typedef struct ComputeCounts {
        unsigned workers;
        unsigned active;          /* jobs a worker runs */
        unsigned queued;          /* jobs waiting for a worker */
} ComputeCounts;

void model_compute_counts(const PoolModel *model, ComputeCounts *ret);

/* Frees the workers of unloaded models not freed yet, at exit. */
void model_compute_free_released(Manager *m);

/* Installs the hooks by which model-lifecycle.c tells the workers of
 * unloads. */
void model_compute_setup(Manager *m);
