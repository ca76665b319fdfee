/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "pool.h"

/* uthash aborts on allocation failure unless told otherwise: a full memory
 * must make pool_add() fail, not end the daemon. */
#undef uthash_nonfatal_oom
#define uthash_nonfatal_oom(obj) (hash_oom = true)

static const char *const model_state_table[_MODEL_STATE_MAX] = {
        [MODEL_AVAILABLE] = "available",
        [MODEL_LOADING] = "loading",
        [MODEL_LOADED] = "loaded",
        [MODEL_UNLOADING] = "unloading",
        [MODEL_ERROR] = "error",
        [MODEL_DOWNLOADING] = "downloading",
};

const char *model_state_to_string(ModelState s) {
        assert(s >= 0 && s < _MODEL_STATE_MAX);
        return model_state_table[s];
}

void pool_init(Pool *p, uint64_t memory_limit, unsigned max_loaded_models,
               int64_t idle_timeout_sec, PoolIdlePolicy idle_policy) {
        assert(p);
        assert(idle_timeout_sec == KEEP_ALIVE_FOREVER || idle_timeout_sec >= 1);

        *p = (Pool) {
                .memory_limit = memory_limit,
                .max_loaded_models = max_loaded_models,
                .idle_timeout_sec = idle_timeout_sec,
                .idle_policy = idle_policy,
        };
}

static void pool_model_free(PoolModel *m) {
        if (!m)
                return;
        free(m->name);
        free(m->error);
        free(m);
}

void pool_done(Pool *p) {
        assert(p);

        PoolModel *m, *tmp;

        HASH_ITER(hh, p->models, m, tmp) {
                HASH_DELETE(hh, p->models, m);
                pool_model_free(m);
        }
}

size_t pool_size(const Pool *p) {
        return HASH_COUNT(p->models);
}

PoolModel *pool_find(const Pool *p, const char *name) {
        PoolModel *m;

        assert(p);
        assert(name);

        HASH_FIND_STR(p->models, name, m);
        return m;
}

static int by_name(const PoolModel *a, const PoolModel *b) {
        return strcmp(a->name, b->name);
}

int pool_add(Pool *p, const char *name, PoolModel **ret) {
        bool hash_oom = false;
        PoolModel *m;

        assert(p);
        assert(name);

        m = pool_find(p, name);
        if (m) {
                if (ret)
                        *ret = m;
                return 0;
        }
        if (pool_size(p) >= POOL_MODELS_MAX)
                return -E2BIG;

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->name = strdup(name);
        if (!m->name) {
                free(m);
                return -ENOMEM;
        }
        m->state = MODEL_AVAILABLE;
        m->keep_alive_sec = KEEP_ALIVE_DEFAULT;

        /* Kept in name order, so that listings are stable for people and
         * tests. The store is listed sorted, so a name mostly goes last:
         * put there at once, since the in-order insertion walks the list
         * from its head, which made the start with thousands of models
         * quadratic. */
        PoolModel *last = p->models ? ELMT_FROM_HH(p->models->hh.tbl, p->models->hh.tbl->tail) : NULL;
        if (!last || by_name(last, m) < 0)
                HASH_ADD_KEYPTR(hh, p->models, m->name, strlen(m->name), m);
        else
                HASH_ADD_KEYPTR_INORDER(hh, p->models, m->name, strlen(m->name), m, by_name);
        if (hash_oom) {
                pool_model_free(m);
                return -ENOMEM;
        }

        if (ret)
                *ret = m;
        return 1;
}

static bool model_occupies_slot(const PoolModel *m) {
        return m->state == MODEL_LOADED || m->state == MODEL_LOADING || m->state == MODEL_UNLOADING;
}

int pool_remove(Pool *p, PoolModel *m) {
        assert(p);
        assert(m);

        if (m->memory_bytes > 0 || m->reserved_bytes > 0 || m->holds > 0 || m->in_flight > 0 ||
            model_occupies_slot(m))
                return -EBUSY;

        if (pool_find(p, m->name) != m)
                return -ENOENT;
        HASH_DELETE(hh, p->models, m);
        pool_model_free(m);
        return 0;
}

uint64_t pool_memory_used(const Pool *p) {
        uint64_t sum = 0;

        POOL_FOREACH(m, p)
                sum += m->memory_bytes;
        return sum;
}

uint64_t pool_memory_committed(const Pool *p) {
        uint64_t sum = 0;

        POOL_FOREACH(m, p)
                sum += m->memory_bytes + m->reserved_bytes;
        return sum;
}

uint64_t pool_memory_pinned(const Pool *p) {
        uint64_t sum = 0;

        POOL_FOREACH(m, p)
                if (m->pinned)
                        sum += m->memory_bytes + m->reserved_bytes;
        return sum;
}

unsigned pool_models_loaded(const Pool *p) {
        unsigned n = 0;

        POOL_FOREACH(m, p)
                if (m->state == MODEL_LOADED)
                        n++;
        return n;
}

void pool_model_use(Pool *p, PoolModel *m, uint64_t now) {
        assert(p);
        assert(m);

        m->last_used = now;
        m->requests_total++;
        if (p->idle_policy == POOL_IDLE_GLOBAL)
                p->global_last_used = now;
}

void pool_model_release(Pool *p, PoolModel *m, unsigned count, uint64_t now) {
        assert(p);
        assert(m);
        assert(m->holds >= count);

        m->holds -= count;
        m->last_used = MAX(m->last_used, now);
        if (p->idle_policy == POOL_IDLE_GLOBAL)
                p->global_last_used = MAX(p->global_last_used, now);
}

bool pool_model_is_evictable(const PoolModel *m) {
        return m->state == MODEL_LOADED && !m->pinned && m->holds == 0 && m->in_flight == 0;
}

void pool_model_charge(Pool *p, PoolModel *m, uint64_t bytes) {
        assert(p);
        assert(m);

        m->charged_bytes += bytes;
        m->memory_bytes += bytes;
}

void pool_model_uncharge(Pool *p, PoolModel *m, uint64_t bytes) {
        assert(p);
        assert(m);
        assert(m->charged_bytes >= bytes && m->memory_bytes >= bytes);

        m->charged_bytes -= bytes;
        m->memory_bytes -= bytes;
}

int pool_set_memory_limit(Pool *p, uint64_t limit, uint64_t *ret_needed) {
        uint64_t pinned = pool_memory_pinned(p);

        assert(p);

        if (limit < pinned) {
                if (ret_needed)
                        *ret_needed = pinned;
                return -EBUSY;
        }
        p->memory_limit = limit;
        return 0;
}

bool pool_follow_memory_total(Pool *p, const SizeOrPercent *configured, uint64_t total) {
        uint64_t limit;

        assert(p);
        assert(configured);

        if (!configured->is_percent)
                return false;
        limit = MAX(size_or_percent_resolve(configured, total), pool_memory_pinned(p));
        if (limit == p->memory_limit)
                return false;
        p->memory_limit = limit;
        return true;
}

size_t pool_collect_over_limit(const Pool *p, PoolModel **victims, size_t n_max) {
        uint64_t committed = pool_memory_committed(p);

        if (committed <= p->memory_limit)
                return 0;
        return pool_collect_pressure_victims(p, committed - p->memory_limit, victims, n_max);
}

PoolModel **pool_victims_new(const Pool *p) {
        return calloc(pool_size(p) ?: 1, sizeof(PoolModel *));
}

int64_t pool_model_keep_alive_sec(const Pool *p, const PoolModel *m) {
        return m->keep_alive_sec == KEEP_ALIVE_DEFAULT ? p->idle_timeout_sec : m->keep_alive_sec;
}

uint64_t pool_model_deadline(const Pool *p, const PoolModel *m) {
        uint64_t base, span, deadline;
        int64_t keep_alive;

        if (!pool_model_is_evictable(m))
                return UINT64_MAX;
        keep_alive = pool_model_keep_alive_sec(p, m);
        if (keep_alive == KEEP_ALIVE_FOREVER)
                return UINT64_MAX;

        base = p->idle_policy == POOL_IDLE_GLOBAL ? MAX(p->global_last_used, m->last_used) : m->last_used;
        if (__builtin_mul_overflow((uint64_t) keep_alive, USEC_PER_SEC, &span) ||
            __builtin_add_overflow(base, span, &deadline))
                return UINT64_MAX;   /* further away than any clock will reach */
        return deadline;
}

uint64_t pool_next_deadline(const Pool *p) {
        uint64_t next = UINT64_MAX;

        POOL_FOREACH(m, p)
                next = MIN(next, pool_model_deadline(p, m));
        return next;
}

typedef uint64_t (*model_key_t)(const Pool *p, const PoolModel *m);

/* Insertion sort into the caller's array, by a key derived from each model,
 * so that no scratch memory is needed. */
static size_t insert_sorted(const Pool *p, PoolModel **list, size_t n, size_t n_max, PoolModel *m,
                            model_key_t key_of) {
        uint64_t key = key_of(p, m);
        size_t i;

        if (n == n_max && (n == 0 || key_of(p, list[n - 1]) <= key))
                return n;
        if (n < n_max)
                n++;
        for (i = n - 1; i > 0 && key_of(p, list[i - 1]) > key; i--)
                list[i] = list[i - 1];
        list[i] = m;
        return n;
}

static uint64_t last_used_of(const Pool *p, const PoolModel *m) {
        return m->last_used;
}

size_t pool_collect_expired(const Pool *p, uint64_t now, PoolModel **victims, size_t n_max) {
        size_t n = 0;

        POOL_FOREACH(m, p)
                if (pool_model_deadline(p, m) <= now)
                        n = insert_sorted(p, victims, n, n_max, m, pool_model_deadline);
        return n;
}

/* Evictable models other than `except`, least recently used first. */
static size_t collect_lru(const Pool *p, const PoolModel *except, PoolModel **list, size_t n_max) {
        size_t n = 0;

        POOL_FOREACH(m, p)
                if (m != except && pool_model_is_evictable(m))
                        n = insert_sorted(p, list, n, n_max, m, last_used_of);
        return n;
}

int pool_plan_admission(const Pool *p, const PoolModel *m, uint64_t needed_bytes,
                        PoolModel **victims, size_t n_max, uint64_t *ret_available) {
        uint64_t committed;
        unsigned slots_used = 0;
        size_t n_lru;

        assert(p);
        assert(victims || n_max == 0);

        committed = pool_memory_committed(p) - (m ? m->memory_bytes + m->reserved_bytes : 0);
        POOL_FOREACH(i, p)
                if (i != m && model_occupies_slot(i))
                        slots_used++;

        /* The victims are a prefix of the LRU order; only they are stored. */
        _cleanup_free_ PoolModel **lru = calloc(n_max ?: 1, sizeof *lru);
        if (!lru)
                return -ENOMEM;
        n_lru = collect_lru(p, m, lru, n_max);

        for (size_t i = 0;; i++) {
                bool memory_fits = needed_bytes <= p->memory_limit &&
                        committed <= p->memory_limit - needed_bytes;
                bool slot_free = p->max_loaded_models == 0 || slots_used < p->max_loaded_models;

                if (memory_fits && slot_free)
                        return (int) i;
                if (i >= n_lru) {
                        /* Every evictable model is already taken off committed. */
                        if (ret_available)
                                *ret_available = p->memory_limit > committed ? p->memory_limit - committed : 0;
                        return -ENOSPC;
                }
                victims[i] = lru[i];
                committed -= lru[i]->memory_bytes;
                slots_used--;
        }
}

size_t pool_collect_pressure_victims(const Pool *p, uint64_t bytes_to_free,
                                     PoolModel **victims, size_t n_max) {
        uint64_t freed = 0;
        size_t n, i;

        n = collect_lru(p, NULL, victims, n_max);
        for (i = 0; i < n && freed < bytes_to_free; i++)
                freed += victims[i]->memory_bytes;
        return i;
}
