/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "pool.h"

static const char *const model_state_table[_MODEL_STATE_MAX] = {
        [MODEL_AVAILABLE] = "available",
        [MODEL_LOADING] = "loading",
        [MODEL_LOADED] = "loaded",
        [MODEL_UNLOADING] = "unloading",
        [MODEL_ERROR] = "error",
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

        while (p->models) {
                PoolModel *m = p->models;
                p->models = m->next;
                pool_model_free(m);
        }
        p->n_models = 0;
}

PoolModel *pool_find(const Pool *p, const char *name) {
        assert(p);
        assert(name);

        for (PoolModel *m = p->models; m; m = m->next)
                if (strcmp(m->name, name) == 0)
                        return m;
        return NULL;
}

int pool_add(Pool *p, const char *name, PoolModel **ret) {
        PoolModel **link, *m;

        assert(p);
        assert(name);

        m = pool_find(p, name);
        if (m) {
                if (ret)
                        *ret = m;
                return 0;
        }
        if (p->n_models >= POOL_MODELS_MAX)
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

        /* Sorted by name, so that listings are stable for people and tests. */
        for (link = &p->models; *link && strcmp((*link)->name, name) < 0; link = &(*link)->next)
                ;
        m->next = *link;
        *link = m;
        p->n_models++;

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

        for (PoolModel **link = &p->models; *link; link = &(*link)->next)
                if (*link == m) {
                        *link = m->next;
                        p->n_models--;
                        pool_model_free(m);
                        return 0;
                }
        return -ENOENT;
}

uint64_t pool_memory_used(const Pool *p) {
        uint64_t sum = 0;

        for (PoolModel *m = p->models; m; m = m->next)
                sum += m->memory_bytes;
        return sum;
}

uint64_t pool_memory_committed(const Pool *p) {
        uint64_t sum = 0;

        for (PoolModel *m = p->models; m; m = m->next)
                sum += m->memory_bytes + m->reserved_bytes;
        return sum;
}

unsigned pool_models_loaded(const Pool *p) {
        unsigned n = 0;

        for (PoolModel *m = p->models; m; m = m->next)
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

        for (PoolModel *m = p->models; m; m = m->next)
                next = MIN(next, pool_model_deadline(p, m));
        return next;
}

/* Insertion sort into a small caller-provided array, by a key per model. */
static size_t insert_sorted(PoolModel **list, uint64_t *keys, size_t n, size_t n_max,
                            PoolModel *m, uint64_t key) {
        size_t i;

        if (n == n_max && (n == 0 || keys[n - 1] <= key))
                return n;
        if (n < n_max)
                n++;
        for (i = n - 1; i > 0 && keys[i - 1] > key; i--) {
                list[i] = list[i - 1];
                keys[i] = keys[i - 1];
        }
        list[i] = m;
        keys[i] = key;
        return n;
}

size_t pool_collect_expired(const Pool *p, uint64_t now, PoolModel **victims, size_t n_max) {
        uint64_t keys[n_max ?: 1];
        size_t n = 0;

        for (PoolModel *m = p->models; m; m = m->next) {
                uint64_t deadline = pool_model_deadline(p, m);

                if (deadline <= now)
                        n = insert_sorted(victims, keys, n, n_max, m, deadline);
        }
        return n;
}

/* Evictable models other than `except`, least recently used first. */
static size_t collect_lru(const Pool *p, const PoolModel *except, PoolModel **list, size_t n_max) {
        uint64_t keys[n_max ?: 1];
        size_t n = 0;

        for (PoolModel *m = p->models; m; m = m->next)
                if (m != except && pool_model_is_evictable(m))
                        n = insert_sorted(list, keys, n, n_max, m, m->last_used);
        return n;
}

int pool_plan_admission(const Pool *p, const PoolModel *m, uint64_t needed_bytes,
                        PoolModel **victims, size_t n_max, uint64_t *ret_available) {
        uint64_t committed;
        unsigned slots_used = 0;
        size_t n_lru, n = 0;

        assert(p);
        assert(victims || n_max == 0);

        committed = pool_memory_committed(p) - (m ? m->memory_bytes + m->reserved_bytes : 0);
        for (PoolModel *i = p->models; i; i = i->next)
                if (i != m && model_occupies_slot(i))
                        slots_used++;

        PoolModel *lru[POOL_MODELS_MAX];
        n_lru = collect_lru(p, m, lru, MIN((size_t) POOL_MODELS_MAX, n_max));

        for (size_t i = 0;; i++) {
                bool memory_fits = needed_bytes <= p->memory_limit &&
                        committed <= p->memory_limit - needed_bytes;
                bool slot_free = p->max_loaded_models == 0 || slots_used < p->max_loaded_models;

                if (memory_fits && slot_free)
                        break;
                if (i >= n_lru) {
                        /* Every evictable model is already taken off committed. */
                        if (ret_available)
                                *ret_available = p->memory_limit > committed ? p->memory_limit - committed : 0;
                        return -ENOSPC;
                }
                victims[n++] = lru[i];
                committed -= lru[i]->memory_bytes;
                slots_used--;
        }
        return (int) n;
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
