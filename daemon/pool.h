/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uthash.h>

#include "parse-util.h"

/* The pool's policy: which models are known, what they hold, when they
 * expire and whom to evict. It does no I/O and knows nothing of D-Bus; every
 * function that depends on time takes "now" (CLOCK_MONOTONIC µs) from the
 * caller, so the policy is unit-tested with an injected clock. */

typedef enum ModelState {
        MODEL_AVAILABLE,
        MODEL_LOADING,
        MODEL_LOADED,
        MODEL_UNLOADING,
        MODEL_ERROR,
        /* Not in the store yet: known only as a pull under way, for its
         * first time (download.h). Holds nothing and is never loaded,
         * counted against MaxLoadedModels or evicted. */
        MODEL_DOWNLOADING,
        _MODEL_STATE_MAX,
} ModelState;

typedef enum PoolIdlePolicy {
        POOL_IDLE_PER_MODEL,
        POOL_IDLE_GLOBAL,
} PoolIdlePolicy;

#define KEEP_ALIVE_DEFAULT INT64_C(0)   /* use the pool's idle timeout */
#define KEEP_ALIVE_FOREVER INT64_C(-1)  /* never unload for idleness */

typedef struct PoolModel PoolModel;
struct PoolModel {
        char *name;
        ModelState state;
        uint64_t size_bytes;      /* on disk */
        uint64_t memory_bytes;    /* held now: resident weights plus charged_bytes */
        uint64_t charged_bytes;   /* memory that is no file mapping (converted weights, buffers) */
        uint64_t reserved_bytes;  /* admitted for a load under way */
        bool pinned;
        unsigned holds;
        unsigned in_flight;       /* requests being served right now */
        int64_t keep_alive_sec;   /* KEEP_ALIVE_DEFAULT, KEEP_ALIVE_FOREVER or ≥ 1 */
        uint64_t loaded_at;
        uint64_t last_used;
        uint64_t requests_total;
        uint64_t tokens_total;    /* computed for requests, never reset by an unload */
        char *error;              /* last failure, NULL if none */
        void *userdata;           /* the owner's runtime data for this model */
        UT_hash_handle hh;        /* by name; the hash's order is sorted by name */
};

typedef struct Pool {
        PoolModel *models;        /* hash table by name, iterated in name order */
        uint64_t memory_limit;
        unsigned max_loaded_models;   /* 0 = no limit */
        int64_t idle_timeout_sec;     /* KEEP_ALIVE_FOREVER or ≥ 1 */
        PoolIdlePolicy idle_policy;
        uint64_t global_last_used;
} Pool;

/* Upper bound on known models, so that a store full of directories or a
 * flood of Load calls cannot grow the daemon without bound. */
#define POOL_MODELS_MAX 4096U

/* Every model, in name order, stable for people and tests. The body may not
 * remove models other than the current one. */
#define POOL_FOREACH(model, pool) for (PoolModel *model = (pool)->models; model; model = (model)->hh.next)

const char *model_state_to_string(ModelState s);

void pool_init(Pool *p, uint64_t memory_limit, unsigned max_loaded_models,
               int64_t idle_timeout_sec, PoolIdlePolicy idle_policy);
void pool_done(Pool *p);

size_t pool_size(const Pool *p);
PoolModel *pool_find(const Pool *p, const char *name);
/* Returns the model of that name, adding it (state available) if unknown.
 * -E2BIG when the pool already knows POOL_MODELS_MAX models. */
int pool_add(Pool *p, const char *name, PoolModel **ret);
/* Forgets a model that holds nothing and has nothing under way. */
int pool_remove(Pool *p, PoolModel *m);

uint64_t pool_memory_used(const Pool *p);
/* What pinned models hold or have been admitted for: the floor of the limit. */
uint64_t pool_memory_pinned(const Pool *p);
/* Held plus admitted for loads under way: what admission counts against the limit. */
uint64_t pool_memory_committed(const Pool *p);
unsigned pool_models_loaded(const Pool *p);

/* A use: renews the idle deadline (of every model under the global policy). */
void pool_model_use(Pool *p, PoolModel *m, uint64_t now);

/* count holds let go: letting go renews the idle deadline as a use does
 * (of every model under the global policy), without counting a request. */
void pool_model_release(Pool *p, PoolModel *m, unsigned count, uint64_t now);

/* Neither pinned, held, in use nor mid-transition: may be unloaded for
 * idleness, room or pressure. */
bool pool_model_is_evictable(const PoolModel *m);

/* Memory a loaded model holds besides its mapped weights. Charging does not
 * check the limit: plan it first with pool_plan_admission() for
 * memory_bytes + bytes. Uncharging more than was charged is a programming
 * error. */
void pool_model_charge(Pool *p, PoolModel *m, uint64_t bytes);
void pool_model_uncharge(Pool *p, PoolModel *m, uint64_t bytes);

/* A new memory limit. -EBUSY when it is below what pinned models hold
 * (ret_needed, if non-NULL, gets that figure); the limit is then unchanged.
 * What must go to fit the new limit: pool_collect_over_limit(). */
int pool_set_memory_limit(Pool *p, uint64_t limit, uint64_t *ret_needed);
/* A limit configured as a share of memory follows a change of the total,
 * never below what pinned models hold. Returns true when the limit changed
 * (then pool_collect_over_limit() says what must go); an absolute limit
 * never changes. */
bool pool_follow_memory_total(Pool *p, const SizeOrPercent *configured, uint64_t total);
/* Evictable models, least recently used first, whose unloading brings the
 * committed memory back within the limit (as far as evictable models can). */
size_t pool_collect_over_limit(const Pool *p, PoolModel **victims, size_t n_max);
int64_t pool_model_keep_alive_sec(const Pool *p, const PoolModel *m);
/* Monotonic µs at which the model is to be unloaded for idleness, or
 * UINT64_MAX when no idle unload is pending. */
uint64_t pool_model_deadline(const Pool *p, const PoolModel *m);
uint64_t pool_next_deadline(const Pool *p);

/* The victim lists below are written to a caller's array of n_max entries;
 * pool_size() entries always suffice. */

/* Models (at most n_max) whose idle deadline has passed, earliest first.
 * Returns how many were stored in victims. */
size_t pool_collect_expired(const Pool *p, uint64_t now, PoolModel **victims, size_t n_max);

/* Plans room for a model about to load needed_bytes: the evictable models to
 * unload, least recently used first, so that the committed memory plus
 * needed_bytes stays within the limit and the loaded count within
 * MaxLoadedModels. Returns the number of victims stored (0 when it fits as
 * it is), or -ENOSPC when even evicting every evictable model would not be
 * enough; then nothing is to be unloaded and *ret_available (if non-NULL)
 * gets the most that could be made available. -ENOMEM without scratch
 * memory. */
int pool_plan_admission(const Pool *p, const PoolModel *m, uint64_t needed_bytes,
                        PoolModel **victims, size_t n_max, uint64_t *ret_available);
/* An array with room for every model, for the victim lists; NULL on OOM. */
PoolModel **pool_victims_new(const Pool *p);

/* Evictable models, least recently used first, until their memory adds up
 * to at least bytes_to_free (UINT64_MAX: every evictable model). */
size_t pool_collect_pressure_victims(const Pool *p, uint64_t bytes_to_free,
                                     PoolModel **victims, size_t n_max);
