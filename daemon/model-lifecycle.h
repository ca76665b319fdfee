/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "embedding-model.h"
#include "loader.h"
#include "manager.h"
#include "model-profile.h"
#include "request.h"
#include "store.h"
#include "weights.h"

/* How a model goes through its states: loads (probe, admission, map on the
 * loading workers), unloads, cancellations, holds and the users of its
 * weights; and the requests that wait for each. Everything here runs on
 * the loop thread and completes requests rather than answering anybody. */

/* Per-model run-time data beside the policy's PoolModel (its userdata). */
typedef struct ModelRuntime {
        Manager *manager;
        LoaderJob *job;               /* on a loading worker, or NULL */
        Request **waiters;            /* each holds a reference */
        size_t n_waiters;
        ModelWeights *weights;        /* the pool's reference while loaded */
        ModelCompute *compute;        /* its workers (model-compute.h), while loaded and used */
        unsigned max_workers;         /* asked by the load; 0: the configuration's */
        bool announced;               /* known to callers: found in the store */
        bool left_store;              /* its files left the store: forgotten once it holds nothing */
        uint64_t load_started_usec;   /* monotonic */
        uint64_t progress_emitted_usec;
        uint64_t progress_emitted_bytes;
        bool progress_started;
        bool cancel_requested;
        char *unload_reason;          /* while unloading: why, for when it completes */
        /* What callers asked for while the model was not loaded yet; applied
         * when the load succeeds, dropped when it fails. */
        bool pin_requested;
        int64_t keep_alive_requested; /* KEEP_ALIVE_DEFAULT: nothing asked */
        Precision precision_requested; /* for the next load; _PRECISION_INVALID: nothing asked */
        /* Where its files are, as last resolved (listed, loaded). */
        ModelSource source;
        char *revision;               /* NULL: "" */
        bool removing;                /* Remove is under way: loads are refused */
        /* What kind of model its files hold and what each precision
         * takes, as last read (listed, loaded); a load that finds it cannot
         * be run after all makes it WEIGHTS with the reason. */
        ModelProfile profile;
} ModelRuntime;

/* Bounds on what callers can make the daemon keep. */
#define WAITERS_PER_MODEL_MAX 1024U

/* Takes the request on: it is completed exactly once, possibly before this
 * returns. The caller keeps its own reference. */
void manager_submit(Manager *m, Request *req);

/* A loaded model goes: its weights are unmapped once the last user lets go
 * (state unloading until then), and every request waiting for it is told. */
void model_unload(Manager *m, PoolModel *model, const char *reason);
/* Stops a load under way: its Load and Acquire requests end Cancelled now,
 * Unload requests once the worker has let go of the memory. */
void model_cancel_load(Manager *m, PoolModel *model);

/* -ENOENT when owner holds no hold on the model. */
int model_release(Manager *m, const char *model_name, const char *owner);
/* A peer that left held the model count times. */
void model_drop_holds(Manager *m, const char *model_name, unsigned count);
/* Ends the waiting requests of an owner that left the bus. */
void models_drop_requests_of(Manager *m, const char *owner);

/* A user of a loaded model's weights (a worker computing with them, a
 * program they are handed to): counts as a use, keeps the model from being
 * evicted, and keeps the mappings alive past an unload. -ESTALE when the
 * model is not loaded. */
int model_lease(Manager *m, PoolModel *model, ModelWeights **ret);
void model_unlease(Manager *m, PoolModel *model, ModelWeights *weights);

/* A loaded model made runnable: what Embed's workers run (under a lease,
 * which keeps it alive). NULL when the model is not loaded, or cannot be
 * run: model_kind() says why. */
EmbeddingModel *model_embedding(PoolModel *model);
/* What kind of model it is, as far as it is known (model-profile.h). For
 * one that cannot be run (MODEL_KIND_WEIGHTS), why: *ret_error -EOPNOTSUPP
 * (a model of another kind: NotSupported) or -EBADMSG (invalid files:
 * InvalidModel), or the errno of a file that could not be read, and
 * *ret_reason a message naming the model ("NAME: there is no
 * tokenizer.json…"), valid until the model changes. Each may be NULL. */
ModelKind model_kind(const PoolModel *model, int *ret_error, const char **ret_reason);
/* The precision a loaded runnable model computes in; _PRECISION_INVALID
 * for any other. */
Precision model_precision(const PoolModel *model);

/* Memory a loaded model holds besides its mappings, counted against the
 * limit: idle models are evicted to make room, or -ENOSPC. */
int model_charge(Manager *m, PoolModel *model, uint64_t bytes);
void model_uncharge(Manager *m, PoolModel *model, uint64_t bytes);

bool model_is_announced(const PoolModel *model);
/* The runtime of a model, created on first use; NULL on OOM. */
ModelRuntime *model_runtime(Manager *m, PoolModel *model);
void model_runtime_free(ModelRuntime *rt);
/* Makes a model found in the store known to callers (again in the store,
 * if it had left). */
void model_announce(Manager *m, PoolModel *model);
/* The longest error a model keeps, in bytes. */
#define MODEL_ERROR_MAX 1024
/* Replaces the model's error with message (NULL: out of memory), cut to
 * MODEL_ERROR_MAX bytes. */
void model_set_error(PoolModel *model, const char *message);
/* Where the model's files were found last, for Status. revision may be
 * NULL (none). -ENOMEM leaves the model as it was. */
int model_set_source(PoolModel *model, ModelSource source, const char *revision);
/* A model the store lists (at start-up, noticed later, or registered),
 * resolved off the loop: available with the size of its files
 * (resolved >= 0), or in error saying why it cannot be used (error), and
 * from source at revision (NULL: none) either way; profile (NULL: not
 * known) says what kind of model it is, taken over unless the model is
 * loaded or on its way. Announced only then, so that its object appears
 * with its state. A name the pool knows already (a load found it first, or
 * it left the store and is back) keeps its state. Fails (logged) only for
 * lack of memory or room in the pool. */
int model_found(Manager *m, const char *name, int resolved, uint64_t size_bytes, ModelSource source,
                const char *revision, const char *error, ModelProfile *profile);
/* The model's files are no longer in the store. A model that holds nothing
 * and that nothing waits for is forgotten at once (model_removed first,
 * then the PoolModel is freed); one that is loaded, loading, held or waited
 * for stays as it is (a loaded model's mappings keep its data) and is
 * forgotten once it has let go of everything, unless it is found in the
 * store again before. Names callers never heard of are left alone. */
void model_left_store(Manager *m, PoolModel *model);

/* Pulls (download.h). A model pulled for the first time is known from the
 * moment its Pull is accepted: added in state downloading and announced,
 * so that its object and Status show its progress. Returns 1 when it was
 * added so, 0 when a model of that name is in the store already (it keeps
 * its state and stays usable while the new files download), -EBUSY when
 * the name is busy otherwise (a load looking for it, a Remove under way),
 * -E2BIG or -ENOMEM. */
int model_download_begin(Manager *m, const char *name);
/* The pull of name ended. installed: its files are now in the store, and
 * r, size_bytes, source, revision, profile (taken; may be NULL) and error
 * are what store_measure() found there: a model that was only downloading
 * becomes available (or error) without being announced again, and a
 * model that was there and is not loaded takes the new files' size, state,
 * revision and profile. Not installed (the rest unused): a model that was
 * only downloading goes (model_removed, then forgotten); one that was in
 * the store stays as it is. */
void model_download_end(Manager *m, const char *name, bool installed, int r, uint64_t size_bytes,
                        ModelSource source, const char *revision, ModelProfile *profile, const char *error);

/* A file truncated under a loaded model takes its pages with it, locked or
 * not: what the models hold follows what is really resident. Cheap (one
 * fstat() per file) unless a file changed. */
void models_measure_resident(Manager *m);

/* Cancels every load and unloads every model, for shutdown. */
void models_stop_all(Manager *m);
/* Nothing is loading and nothing waits for its users to let go. */
bool models_settled(Manager *m);
