/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
        uint64_t memory_bytes;    /* held now */
        uint64_t reserved_bytes;  /* admitted for a load under way */
        bool pinned;
        unsigned holds;
        unsigned in_flight;       /* requests being served right now */
        int64_t keep_alive_sec;   /* KEEP_ALIVE_DEFAULT, KEEP_ALIVE_FOREVER or ≥ 1 */
        uint64_t loaded_at;
        uint64_t last_used;
        uint64_t requests_total;
        char *error;              /* last failure, NULL if none */
        void *userdata;           /* the owner's runtime data for this model */
        PoolModel *next;
};

typedef struct Pool {
        PoolModel *models;        /* sorted by name */
        size_t n_models;
        uint64_t memory_limit;
        unsigned max_loaded_models;   /* 0 = no limit */
        int64_t idle_timeout_sec;     /* KEEP_ALIVE_FOREVER or ≥ 1 */
        PoolIdlePolicy idle_policy;
        uint64_t global_last_used;
} Pool;

/* Upper bound on known models, so that a store full of directories or a
 * flood of Load calls cannot grow the daemon without bound. */
#define POOL_MODELS_MAX 4096U

const char *model_state_to_string(ModelState s);

void pool_init(Pool *p, uint64_t memory_limit, unsigned max_loaded_models,
               int64_t idle_timeout_sec, PoolIdlePolicy idle_policy);
void pool_done(Pool *p);

PoolModel *pool_find(const Pool *p, const char *name);
/* Returns the model of that name, adding it (state available) if unknown.
 * -E2BIG when the pool already knows POOL_MODELS_MAX models. */
int pool_add(Pool *p, const char *name, PoolModel **ret);
/* Forgets a model that holds nothing and has nothing under way. */
int pool_remove(Pool *p, PoolModel *m);

uint64_t pool_memory_used(const Pool *p);
/* Held plus admitted for loads under way: what admission counts against the limit. */
uint64_t pool_memory_committed(const Pool *p);
unsigned pool_models_loaded(const Pool *p);

/* A use: renews the idle deadline (of every model under the global policy). */
void pool_model_use(Pool *p, PoolModel *m, uint64_t now);

/* Neither pinned, held, in use nor mid-transition: may be unloaded for
 * idleness, room or pressure. */
/* count holds let go: letting go renews the idle deadline as a use does
 * (of every model under the global policy), without counting a request. */
void pool_model_release(Pool *p, PoolModel *m, unsigned count, uint64_t now);

bool pool_model_is_evictable(const PoolModel *m);
int64_t pool_model_keep_alive_sec(const Pool *p, const PoolModel *m);
/* Monotonic µs at which the model is to be unloaded for idleness, or
 * UINT64_MAX when no idle unload is pending. */
uint64_t pool_model_deadline(const Pool *p, const PoolModel *m);
uint64_t pool_next_deadline(const Pool *p);

/* Models (at most n_max) whose idle deadline has passed, earliest first.
 * Returns how many were stored in victims. */
size_t pool_collect_expired(const Pool *p, uint64_t now, PoolModel **victims, size_t n_max);

/* Plans room for a model about to load needed_bytes: the evictable models to
 * unload, least recently used first, so that the committed memory plus
 * needed_bytes stays within the limit and the loaded count within
 * MaxLoadedModels. Returns the number of victims stored (0 when it fits as
 * it is), or -ENOSPC when even evicting every evictable model would not be
 * enough; then nothing is to be unloaded and *ret_available (if non-NULL)
 * gets the most that could be made available. */
int pool_plan_admission(const Pool *p, const PoolModel *m, uint64_t needed_bytes,
                        PoolModel **victims, size_t n_max, uint64_t *ret_available);

/* Evictable models, least recently used first, until their memory adds up
 * to at least bytes_to_free (UINT64_MAX: every evictable model). */
size_t pool_collect_pressure_victims(const Pool *p, uint64_t bytes_to_free,
                                     PoolModel **victims, size_t n_max);
