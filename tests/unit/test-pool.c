/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "macro.h"
#include "pool.h"

#define SEC(n) ((uint64_t) (n) * USEC_PER_SEC)

/* A sentinel that no real model pointer equals, to see that an output array
 * or parameter was left alone. */
static PoolModel sentinel_model;
#define UNTOUCHED (&sentinel_model)

/* The pool under test; the teardown frees it even when an assertion failed
 * half way through a test. */
static Pool pool;

static int teardown_pool(void **state) {
        pool_done(&pool);
        return 0;
}

static PoolModel *add_model(Pool *p, const char *name, ModelState state, uint64_t memory_bytes,
                            uint64_t last_used) {
        PoolModel *m = NULL;

        assert_int_equal(pool_add(p, name, &m), 1);
        assert_non_null(m);
        m->state = state;
        m->memory_bytes = memory_bytes;
        m->last_used = last_used;
        return m;
}

static void fill_untouched(PoolModel **victims, size_t n) {
        for (size_t i = 0; i < n; i++)
                victims[i] = UNTOUCHED;
}

static void test_model_state_to_string(void **state) {
        assert_string_equal(model_state_to_string(MODEL_AVAILABLE), "available");
        assert_string_equal(model_state_to_string(MODEL_LOADING), "loading");
        assert_string_equal(model_state_to_string(MODEL_LOADED), "loaded");
        assert_string_equal(model_state_to_string(MODEL_UNLOADING), "unloading");
        assert_string_equal(model_state_to_string(MODEL_ERROR), "error");
        assert_string_equal(model_state_to_string(MODEL_DOWNLOADING), "downloading");
}

static void test_init(void **state) {

        memset(&pool, 0xaa, sizeof pool);
        pool_init(&pool, 1000, 3, 60, POOL_IDLE_GLOBAL);
        assert_null(pool.models);
        assert_int_equal(pool_size(&pool), 0);
        assert_int_equal(pool.memory_limit, 1000);
        assert_int_equal(pool.max_loaded_models, 3);
        assert_int_equal(pool.idle_timeout_sec, 60);
        assert_int_equal(pool.idle_policy, POOL_IDLE_GLOBAL);
        assert_int_equal(pool.global_last_used, 0);
        assert_int_equal(pool_memory_used(&pool), 0);
        assert_int_equal(pool_memory_committed(&pool), 0);
        assert_int_equal(pool_models_loaded(&pool), 0);
        assert_int_equal(pool_next_deadline(&pool), UINT64_MAX);
        pool_done(&pool);
}

static void test_add_sorted_idempotent(void **state) {
        static const char *const order[] = { "org.b", "org.a", "org.c", "net.z", "org.aa" };
        static const char *const sorted[] = { "net.z", "org.a", "org.aa", "org.b", "org.c" };
        PoolModel *m, *first, *again;
        size_t i;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);

        for (i = 0; i < ELEMENTSOF(order); i++) {
                m = NULL;
                assert_int_equal(pool_add(&pool, order[i], &m), 1);
                assert_non_null(m);
                assert_string_equal(m->name, order[i]);
                assert_ptr_not_equal(m->name, order[i]);   /* a copy, not the caller's string */
                assert_int_equal(m->state, MODEL_AVAILABLE);
                assert_int_equal(m->keep_alive_sec, KEEP_ALIVE_DEFAULT);
                assert_int_equal(m->memory_bytes, 0);
                assert_int_equal(m->reserved_bytes, 0);
                assert_int_equal(m->holds, 0);
                assert_int_equal(m->in_flight, 0);
                assert_false(m->pinned);
                assert_int_equal(m->requests_total, 0);
                assert_null(m->error);
                assert_int_equal(pool_size(&pool), i + 1);
        }

        i = 0;
        for (m = pool.models; m; m = m->hh.next, i++) {
                assert_true(i < ELEMENTSOF(sorted));
                assert_string_equal(m->name, sorted[i]);
        }
        assert_int_equal(i, ELEMENTSOF(sorted));

        /* Adding a known name returns the same model and adds nothing. */
        first = pool_find(&pool, "org.b");
        assert_non_null(first);
        first->memory_bytes = 42;
        again = NULL;
        assert_int_equal(pool_add(&pool, "org.b", &again), 0);
        assert_ptr_equal(again, first);
        assert_int_equal(again->memory_bytes, 42);
        assert_int_equal(pool_size(&pool), ELEMENTSOF(order));

        /* ret may be NULL. */
        assert_int_equal(pool_add(&pool, "org.b", NULL), 0);
        assert_int_equal(pool_add(&pool, "org.d", NULL), 1);
        assert_int_equal(pool_size(&pool), ELEMENTSOF(order) + 1);
        assert_non_null(pool_find(&pool, "org.d"));
        assert_null(pool_find(&pool, "org.e"));
        assert_null(pool_find(&pool, "org"));
        m = pool.models;
        for (unsigned k = 0; k < 5; k++)
                m = m->hh.next;
        assert_string_equal(m->name, "org.d");

        pool_done(&pool);
        assert_null(pool.models);
        assert_int_equal(pool_size(&pool), 0);
}

static void test_add_limit(void **state) {
        char name[32];
        PoolModel *m;
        unsigned i;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);

        /* Added in reverse order, which exercises insertion at the head. */
        for (i = POOL_MODELS_MAX; i > 0; i--) {
                snprintf(name, sizeof name, "m%05u", i - 1);
                assert_int_equal(pool_add(&pool, name, NULL), 1);
        }
        assert_int_equal(pool_size(&pool), POOL_MODELS_MAX);

        m = UNTOUCHED;
        assert_int_equal(pool_add(&pool, "one.too.many", &m), -E2BIG);
        assert_ptr_equal(m, UNTOUCHED);
        assert_int_equal(pool_size(&pool), POOL_MODELS_MAX);
        assert_null(pool_find(&pool, "one.too.many"));

        /* A known name is still found at the limit. */
        m = NULL;
        assert_int_equal(pool_add(&pool, "m00007", &m), 0);
        assert_non_null(m);
        assert_string_equal(m->name, "m00007");

        i = 0;
        for (m = pool.models; m; m = m->hh.next, i++) {
                snprintf(name, sizeof name, "m%05u", i);
                assert_string_equal(m->name, name);
        }
        assert_int_equal(i, POOL_MODELS_MAX);

        /* Forgetting one makes room for one. */
        assert_int_equal(pool_remove(&pool, pool_find(&pool, "m00100")), 0);
        assert_int_equal(pool_add(&pool, "one.too.many", NULL), 1);
        assert_int_equal(pool_add(&pool, "two.too.many", NULL), -E2BIG);

        pool_done(&pool);
}

/* The store lists names sorted: each then goes last at once (the start with
 * thousands of models is no longer quadratic), and the order must still hold
 * when a name comes out of turn or the last one leaves. */
static void test_add_ascending(void **state) {
        static const char *const expected[] = { "a.0", "m00000", "m00001", "m00002", "m00002a", "z.9" };
        char name[32];
        PoolModel *m;
        unsigned i;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        for (i = 0; i < POOL_MODELS_MAX; i++) {
                snprintf(name, sizeof name, "m%05u", i);
                assert_int_equal(pool_add(&pool, name, NULL), 1);
        }
        i = 0;
        for (m = pool.models; m; m = m->hh.next, i++) {
                snprintf(name, sizeof name, "m%05u", i);
                assert_string_equal(m->name, name);
        }
        assert_int_equal(i, POOL_MODELS_MAX);
        pool_done(&pool);

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        assert_int_equal(pool_add(&pool, "m00000", NULL), 1);
        assert_int_equal(pool_add(&pool, "m00001", NULL), 1);
        assert_int_equal(pool_add(&pool, "m00003", NULL), 1);
        /* The last one leaves: the next name is compared with the new last. */
        assert_int_equal(pool_remove(&pool, pool_find(&pool, "m00003")), 0);
        assert_int_equal(pool_add(&pool, "m00002a", NULL), 1);
        assert_int_equal(pool_add(&pool, "m00002", NULL), 1);   /* before the last */
        assert_int_equal(pool_add(&pool, "a.0", NULL), 1);      /* at the head */
        assert_int_equal(pool_add(&pool, "z.9", NULL), 1);      /* last again */
        assert_int_equal(pool_add(&pool, "m00001", NULL), 0);   /* known: nothing moves */
        i = 0;
        for (m = pool.models; m; m = m->hh.next, i++) {
                assert_true(i < ELEMENTSOF(expected));
                assert_string_equal(m->name, expected[i]);
                assert_ptr_equal(pool_find(&pool, expected[i]), m);
        }
        assert_int_equal(i, ELEMENTSOF(expected));
}

static void test_remove(void **state) {
        PoolModel *a, *b, *c, stranger = { .name = (char *) "stranger", .state = MODEL_AVAILABLE };

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_AVAILABLE, 0, 0);
        b = add_model(&pool, "b", MODEL_AVAILABLE, 0, 0);
        c = add_model(&pool, "c", MODEL_AVAILABLE, 0, 0);

        /* Each reason to be busy alone is enough to refuse. */
        b->memory_bytes = 1;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        b->memory_bytes = 0;

        b->reserved_bytes = 1;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        b->reserved_bytes = 0;

        b->holds = 1;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        b->holds = 0;

        b->in_flight = 1;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        b->in_flight = 0;

        b->state = MODEL_LOADED;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        b->state = MODEL_LOADING;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        b->state = MODEL_UNLOADING;
        assert_int_equal(pool_remove(&pool, b), -EBUSY);
        assert_int_equal(pool_size(&pool), 3);
        assert_ptr_equal(pool_find(&pool, "b"), b);

        /* A failed model holding nothing may be forgotten. */
        b->state = MODEL_ERROR;
        b->error = strdup("load failed");
        assert_non_null(b->error);
        assert_int_equal(pool_remove(&pool, b), 0);
        assert_int_equal(pool_size(&pool), 2);
        assert_null(pool_find(&pool, "b"));
        assert_ptr_equal(pool.models, a);
        assert_ptr_equal(a->hh.next, c);
        assert_null(c->hh.next);

        /* A model the pool does not know is not unlinked. */
        assert_int_equal(pool_remove(&pool, &stranger), -ENOENT);
        assert_int_equal(pool_size(&pool), 2);

        assert_int_equal(pool_remove(&pool, a), 0);
        assert_ptr_equal(pool.models, c);
        assert_int_equal(pool_remove(&pool, c), 0);
        assert_null(pool.models);
        assert_int_equal(pool_size(&pool), 0);

        pool_done(&pool);
}

static void test_accounting(void **state) {
        PoolModel *a, *b, *c, *d, *e;

        pool_init(&pool, 10000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 1000, 0);
        b = add_model(&pool, "b", MODEL_LOADED, 200, 0);
        c = add_model(&pool, "c", MODEL_LOADING, 30, 0);
        c->reserved_bytes = 400;
        d = add_model(&pool, "d", MODEL_UNLOADING, 5, 0);
        e = add_model(&pool, "e", MODEL_AVAILABLE, 0, 0);
        (void) a;
        (void) d;
        (void) e;

        assert_int_equal(pool_memory_used(&pool), 1235);
        assert_int_equal(pool_memory_committed(&pool), 1635);
        assert_int_equal(pool_models_loaded(&pool), 2);

        c->state = MODEL_LOADED;
        c->memory_bytes = 430;
        c->reserved_bytes = 0;
        assert_int_equal(pool_memory_used(&pool), 1635);
        assert_int_equal(pool_memory_committed(&pool), 1635);
        assert_int_equal(pool_models_loaded(&pool), 3);

        b->state = MODEL_ERROR;
        b->memory_bytes = 0;
        assert_int_equal(pool_memory_used(&pool), 1435);
        assert_int_equal(pool_memory_committed(&pool), 1435);
        assert_int_equal(pool_models_loaded(&pool), 2);

        pool_done(&pool);
}

static void test_is_evictable(void **state) {
        PoolModel m = { .state = MODEL_LOADED };

        assert_true(pool_model_is_evictable(&m));
        m.pinned = true;
        assert_false(pool_model_is_evictable(&m));
        m.pinned = false;
        m.holds = 1;
        assert_false(pool_model_is_evictable(&m));
        m.holds = 0;
        m.in_flight = 2;
        assert_false(pool_model_is_evictable(&m));
        m.in_flight = 0;
        for (ModelState s = 0; s < _MODEL_STATE_MAX; s++) {
                m.state = s;
                assert_int_equal(pool_model_is_evictable(&m), s == MODEL_LOADED);
        }
}

/* Three loaded models of 100 bytes each, filling a 300 byte pool, whose
 * order of use (c at 1 s, a at 2 s, b at 3 s) differs from their name order. */
static void setup_three(Pool *p, PoolModel **a, PoolModel **b, PoolModel **c, PoolModel **new) {
        pool_init(p, 300, 0, 60, POOL_IDLE_PER_MODEL);
        *a = add_model(p, "a", MODEL_LOADED, 100, SEC(2));
        *b = add_model(p, "b", MODEL_LOADED, 100, SEC(3));
        *c = add_model(p, "c", MODEL_LOADED, 100, SEC(1));
        *new = add_model(p, "new", MODEL_AVAILABLE, 0, 0);
}

static void test_admission_lru(void **state) {
        PoolModel *a, *b, *c, *new, *victims[8];
        uint64_t available;

        setup_three(&pool, &a, &b, &c, &new);

        /* Room for one: the least recently used goes. */
        fill_untouched(victims, ELEMENTSOF(victims));
        available = 12345;
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), &available), 1);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], UNTOUCHED);
        assert_int_equal(available, 12345);

        /* A single byte short still takes one victim. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 1, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], c);

        /* Room for two: least recently used first. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 200, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], a);
        assert_ptr_equal(victims[2], UNTOUCHED);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 101, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], a);

        /* Everything. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 300, victims, ELEMENTSOF(victims), NULL), 3);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], a);
        assert_ptr_equal(victims[2], b);
        assert_ptr_equal(victims[3], UNTOUCHED);

        /* A new use reorders: c used now, a becomes the oldest. */
        pool_model_use(&pool, c, SEC(4));
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 200, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], a);
        assert_ptr_equal(victims[1], b);

        /* Without a model (NULL), the same plan. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, NULL, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], a);

        pool_done(&pool);
}

static void test_admission_fits(void **state) {
        PoolModel *a, *b, *victims[4];
        uint64_t available = 777;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 300, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADING, 0, SEC(2));
        b->reserved_bytes = 200;
        (void) a;

        /* 300 held + 200 reserved + 500 needed = exactly the limit. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, NULL, 500, victims, ELEMENTSOF(victims), &available), 0);
        assert_ptr_equal(victims[0], UNTOUCHED);
        assert_int_equal(available, 777);

        /* No room for victims needed when it fits. */
        assert_int_equal(pool_plan_admission(&pool, NULL, 0, NULL, 0, NULL), 0);
        assert_int_equal(pool_plan_admission(&pool, NULL, 500, NULL, 0, NULL), 0);

        /* The reserved bytes of another load count: one byte more evicts a. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, NULL, 501, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], a);
        assert_ptr_equal(victims[1], UNTOUCHED);

        pool_done(&pool);
}

static void test_admission_spares_busy(void **state) {
        PoolModel *a, *b, *c, *d, *e, *new, *victims[8];

        /* Five models, each 100 bytes, in a 500 byte pool; a..d are older
         * than e but each is protected for a different reason. */
        pool_init(&pool, 500, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 100, SEC(1));
        a->pinned = true;
        b = add_model(&pool, "b", MODEL_LOADED, 100, SEC(2));
        b->holds = 1;
        c = add_model(&pool, "c", MODEL_LOADED, 100, SEC(3));
        c->in_flight = 1;
        d = add_model(&pool, "d", MODEL_LOADING, 0, SEC(4));
        d->reserved_bytes = 100;
        e = add_model(&pool, "e", MODEL_LOADED, 100, SEC(5));
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], e);
        assert_ptr_equal(victims[1], UNTOUCHED);

        /* Release the hold on b: b (2 s) is now older than e (5 s). */
        b->holds = 0;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], b);
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 200, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], e);
        assert_ptr_equal(victims[2], UNTOUCHED);

        /* c finishes its request: c (3 s) comes between b and e. */
        c->in_flight = 0;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 300, victims, ELEMENTSOF(victims), NULL), 3);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], c);
        assert_ptr_equal(victims[2], e);
        assert_ptr_equal(victims[3], UNTOUCHED);

        /* An unloading model is not a victim either. */
        e->state = MODEL_UNLOADING;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 200, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], c);

        pool_done(&pool);
}

static void test_admission_enospc_nothing_evictable(void **state) {
        PoolModel *a, *b, *new, *victims[4];
        uint64_t available = 0;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 300, SEC(1));
        a->pinned = true;
        b = add_model(&pool, "b", MODEL_LOADING, 0, SEC(2));
        b->reserved_bytes = 200;
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);

        assert_int_equal(pool_plan_admission(&pool, new, 501, victims, ELEMENTSOF(victims), &available), -ENOSPC);
        assert_int_equal(available, 500);
        assert_int_equal(pool_plan_admission(&pool, new, 501, victims, ELEMENTSOF(victims), NULL), -ENOSPC);
        assert_int_equal(pool_plan_admission(&pool, new, 500, victims, ELEMENTSOF(victims), &available), 0);

        /* More than the limit itself. */
        available = 0;
        assert_int_equal(pool_plan_admission(&pool, new, 1001, victims, ELEMENTSOF(victims), &available), -ENOSPC);
        assert_int_equal(available, 500);
        available = 0;
        assert_int_equal(pool_plan_admission(&pool, new, UINT64_MAX, victims, ELEMENTSOF(victims), &available),
                         -ENOSPC);
        assert_int_equal(available, 500);

        pool_done(&pool);
}

static void test_admission_too_big_for_empty_pool(void **state) {
        PoolModel *new, *victims[4];
        uint64_t available = 0;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);

        assert_int_equal(pool_plan_admission(&pool, new, 1000, victims, ELEMENTSOF(victims), &available), 0);
        assert_int_equal(pool_plan_admission(&pool, new, 1001, victims, ELEMENTSOF(victims), &available), -ENOSPC);
        assert_int_equal(available, 1000);

        pool_done(&pool);
}

/* BUG (pool.c, pool_plan_admission): on -ENOSPC, *ret_available subtracts the
 * evictable memory twice. By the time the loop runs out of victims,
 * `committed` has already been reduced by every victim's memory, and the
 * -ENOSPC branch subtracts `freeable` from it once more. This test fails until
 * that is fixed: limit 1000, a pinned 500, b evictable 300; needing 600 the
 * most that could be made available is 1000 - 500 = 500, but 800 is reported.
 * Only when nothing is evictable (freeable 0) is the value right. */
static void test_admission_enospc_available(void **state) {
        PoolModel *a, *b, *new, *victims[4];
        uint64_t available = 0;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 500, SEC(1));
        a->pinned = true;
        b = add_model(&pool, "b", MODEL_LOADED, 300, SEC(2));
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);
        (void) b;

        /* Evicting b makes exactly 500 available: that fits, 501 does not. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 500, victims, ELEMENTSOF(victims), &available), 1);
        assert_ptr_equal(victims[0], b);

        assert_int_equal(pool_plan_admission(&pool, new, 600, victims, ELEMENTSOF(victims), &available), -ENOSPC);
        assert_int_equal(available, 500);

        available = 0;
        assert_int_equal(pool_plan_admission(&pool, new, 2000, victims, ELEMENTSOF(victims), &available), -ENOSPC);
        assert_int_equal(available, 500);

        pool_done(&pool);
}

static void test_admission_max_loaded(void **state) {
        PoolModel *a, *b, *c, *new, *victims[4];
        uint64_t available = 0;

        /* Memory to spare; only the count is limited. */
        pool_init(&pool, 1000000, 2, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 100, SEC(2));
        b = add_model(&pool, "b", MODEL_LOADED, 100, SEC(1));
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], UNTOUCHED);

        /* One free slot: no eviction. */
        b->state = MODEL_AVAILABLE;
        b->memory_bytes = 0;
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 0);

        /* A load under way occupies a slot though not counted as loaded. */
        b->state = MODEL_LOADING;
        b->reserved_bytes = 100;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], a);

        /* So does an unload under way. */
        b->state = MODEL_UNLOADING;
        b->reserved_bytes = 0;
        b->memory_bytes = 100;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], a);

        /* Both slots taken by models that cannot go: no room. */
        b->state = MODEL_LOADED;
        a->pinned = true;
        b->holds = 1;
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), &available), -ENOSPC);
        assert_int_equal(available, 1000000 - 200);

        /* The model being admitted does not take a slot from itself. */
        pool_done(&pool);
        pool_init(&pool, 1000000, 1, 60, POOL_IDLE_PER_MODEL);
        c = add_model(&pool, "c", MODEL_LOADING, 0, 0);
        c->reserved_bytes = 100;
        assert_int_equal(pool_plan_admission(&pool, c, 100, victims, ELEMENTSOF(victims), NULL), 0);

        /* Three slots, three loaded: both the count and the memory must fit,
         * and each may ask for more victims than the other. */
        pool_done(&pool);
        pool_init(&pool, 1000, 3, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 400, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 100, SEC(2));
        c = add_model(&pool, "c", MODEL_LOADED, 100, SEC(3));
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 400, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], a);
        /* Freeing a's 400 is not enough for 900 (limit 1000, 200 left): b goes too. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 900, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], a);
        assert_ptr_equal(victims[1], b);
        assert_ptr_equal(victims[2], UNTOUCHED);

        pool_done(&pool);
}

static void test_downloading_is_never_counted_or_evicted(void **state) {
        PoolModel *a, *pulled, *new, *victims[4];
        uint64_t now = SEC(1000);

        /* One slot, taken by a; a model being pulled for the first time
         * takes none, holds nothing, is never a victim nor expires. */
        pool_init(&pool, 1000, 1, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 400, SEC(1));
        pulled = add_model(&pool, "pulled", MODEL_DOWNLOADING, 0, 0);
        new = add_model(&pool, "new", MODEL_AVAILABLE, 0, 0);

        assert_false(pool_model_is_evictable(pulled));
        assert_int_equal(pool_models_loaded(&pool), 1);
        assert_int_equal(pool_memory_used(&pool), 400);
        assert_int_equal(pool_memory_committed(&pool), 400);
        assert_int_equal(pool_model_deadline(&pool, pulled), UINT64_MAX);
        assert_int_equal(pool_collect_expired(&pool, now, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], a);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], a);
        assert_ptr_equal(victims[1], UNTOUCHED);
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_pressure_victims(&pool, UINT64_MAX, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], a);
        assert_int_equal(pool_collect_over_limit(&pool, victims, ELEMENTSOF(victims)), 0);

        /* With a's slot free, nothing at all needs to go. */
        a->state = MODEL_AVAILABLE;
        a->memory_bytes = 0;
        assert_int_equal(pool_plan_admission(&pool, new, 1000, victims, ELEMENTSOF(victims), NULL), 0);

        /* It can be forgotten as soon as its pull ends. */
        assert_int_equal(pool_remove(&pool, pulled), 0);
        assert_null(pool_find(&pool, "pulled"));
        pool_done(&pool);
}

static void test_admission_self(void **state) {
        PoolModel *m, *b, *c, *victims[4];

        /* The model being admitted is loading with its own bytes reserved;
         * they are the same bytes as needed_bytes and must not count twice. */
        pool_init(&pool, 300, 0, 60, POOL_IDLE_PER_MODEL);
        b = add_model(&pool, "b", MODEL_LOADED, 100, SEC(1));
        m = add_model(&pool, "m", MODEL_LOADING, 0, 0);
        m->reserved_bytes = 200;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, m, 200, victims, ELEMENTSOF(victims), NULL), 0);
        assert_ptr_equal(victims[0], UNTOUCHED);
        /* Without naming it, its reservation does count: 100 more needs b gone,
         * 200 more cannot fit at all. */
        assert_int_equal(pool_plan_admission(&pool, NULL, 100, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], b);
        assert_int_equal(pool_plan_admission(&pool, NULL, 200, victims, ELEMENTSOF(victims), NULL), -ENOSPC);
        pool_done(&pool);

        /* The model being admitted is loaded, evictable and the least
         * recently used of all: it is never its own victim, and its memory
         * does not count. */
        pool_init(&pool, 300, 0, 60, POOL_IDLE_PER_MODEL);
        m = add_model(&pool, "a", MODEL_LOADED, 100, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 100, SEC(2));
        c = add_model(&pool, "c", MODEL_LOADED, 100, SEC(3));
        assert_int_equal(pool_plan_admission(&pool, m, 100, victims, ELEMENTSOF(victims), NULL), 0);
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, m, 200, victims, ELEMENTSOF(victims), NULL), 1);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], UNTOUCHED);
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, m, 300, victims, ELEMENTSOF(victims), NULL), 2);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], c);
        assert_ptr_equal(victims[2], UNTOUCHED);
        assert_int_equal(pool_plan_admission(&pool, m, 301, victims, ELEMENTSOF(victims), NULL), -ENOSPC);
        pool_done(&pool);
}

static void test_admission_n_max(void **state) {
        PoolModel *a, *b, *c, *new, *victims[4];

        setup_three(&pool, &a, &b, &c, &new);

        /* Room for two victims only, and the two are the least recently used. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 200, victims, 2, NULL), 2);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], a);
        assert_ptr_equal(victims[2], UNTOUCHED);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_plan_admission(&pool, new, 100, victims, 1, NULL), 1);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], UNTOUCHED);

        pool_done(&pool);
}

static void test_keep_alive_and_deadline(void **state) {
        PoolModel *a, *b, *c, *d;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(100));
        b = add_model(&pool, "b", MODEL_LOADED, 10, SEC(100));
        b->keep_alive_sec = 5;
        c = add_model(&pool, "c", MODEL_LOADED, 10, SEC(100));
        c->keep_alive_sec = KEEP_ALIVE_FOREVER;
        d = add_model(&pool, "d", MODEL_LOADED, 10, 1234567);
        d->keep_alive_sec = 3600;

        assert_int_equal(pool_model_keep_alive_sec(&pool, a), 60);
        assert_int_equal(pool_model_keep_alive_sec(&pool, b), 5);
        assert_int_equal(pool_model_keep_alive_sec(&pool, c), KEEP_ALIVE_FOREVER);
        assert_int_equal(pool_model_keep_alive_sec(&pool, d), 3600);

        assert_int_equal(pool_model_deadline(&pool, a), SEC(160));
        assert_int_equal(pool_model_deadline(&pool, b), SEC(105));
        assert_int_equal(pool_model_deadline(&pool, c), UINT64_MAX);
        assert_int_equal(pool_model_deadline(&pool, d), 1234567 + SEC(3600));
        assert_int_equal(pool_next_deadline(&pool), SEC(105));

        /* Whatever keeps a model from being evictable suspends its deadline. */
        b->pinned = true;
        assert_int_equal(pool_model_deadline(&pool, b), UINT64_MAX);
        assert_int_equal(pool_next_deadline(&pool), SEC(160));
        b->pinned = false;
        b->holds = 2;
        assert_int_equal(pool_model_deadline(&pool, b), UINT64_MAX);
        b->holds = 0;
        b->in_flight = 1;
        assert_int_equal(pool_model_deadline(&pool, b), UINT64_MAX);
        b->in_flight = 0;
        for (ModelState s = 0; s < _MODEL_STATE_MAX; s++) {
                b->state = s;
                assert_int_equal(pool_model_deadline(&pool, b), s == MODEL_LOADED ? SEC(105) : UINT64_MAX);
        }
        b->state = MODEL_LOADED;
        assert_int_equal(pool_next_deadline(&pool), SEC(105));

        pool_done(&pool);

        /* A pool that keeps models forever by default; a model may still
         * ask for a timeout of its own. */
        pool_init(&pool, 1000, 0, KEEP_ALIVE_FOREVER, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(100));
        b = add_model(&pool, "b", MODEL_LOADED, 10, SEC(100));
        assert_int_equal(pool_model_keep_alive_sec(&pool, a), KEEP_ALIVE_FOREVER);
        assert_int_equal(pool_model_deadline(&pool, a), UINT64_MAX);
        assert_int_equal(pool_next_deadline(&pool), UINT64_MAX);
        b->keep_alive_sec = 7;
        assert_int_equal(pool_model_deadline(&pool, b), SEC(107));
        assert_int_equal(pool_next_deadline(&pool), SEC(107));
        pool_done(&pool);
}

/* BUG (pool.c, pool_model_deadline): last_used + keep_alive_sec * USEC_PER_SEC
 * is not checked for overflow. pool.h allows any keep_alive_sec ≥ 1; with
 * 2^58 s (2^58 * 10^6 ≡ 0 mod 2^64) the deadline wraps to last_used itself,
 * and the model is collected as expired at once instead of being kept for
 * ~9 billion years. Expected: the deadline saturates at UINT64_MAX (or the
 * header bounds keep_alive_sec and callers enforce it). Fails until fixed. */
static void test_deadline_overflow(void **state) {
        PoolModel *a, *victims[2];

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(100));
        a->keep_alive_sec = INT64_C(1) << 58;
        assert_int_equal(pool_model_deadline(&pool, a), UINT64_MAX);
        assert_int_equal(pool_collect_expired(&pool, SEC(101), victims, ELEMENTSOF(victims)), 0);
        pool_done(&pool);
}

static void test_collect_expired(void **state) {
        PoolModel *a, *b, *c, *d, *e, *victims[8];

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(10));        /* 70 s */
        b = add_model(&pool, "b", MODEL_LOADED, 10, SEC(20));        /* 25 s */
        b->keep_alive_sec = 5;
        c = add_model(&pool, "c", MODEL_LOADED, 10, SEC(0));         /* never */
        c->keep_alive_sec = KEEP_ALIVE_FOREVER;
        d = add_model(&pool, "d", MODEL_LOADED, 10, SEC(0));         /* pinned */
        d->pinned = true;
        e = add_model(&pool, "e", MODEL_LOADED, 10, SEC(40));        /* 50 s */
        e->keep_alive_sec = 10;

        assert_int_equal(pool_next_deadline(&pool), SEC(25));

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(25) - 1, victims, ELEMENTSOF(victims)), 0);
        assert_ptr_equal(victims[0], UNTOUCHED);

        assert_int_equal(pool_collect_expired(&pool, SEC(25), victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], UNTOUCHED);

        assert_int_equal(pool_collect_expired(&pool, SEC(50) - 1, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], b);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(50), victims, ELEMENTSOF(victims)), 2);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], e);
        assert_ptr_equal(victims[2], UNTOUCHED);

        /* Earliest first, regardless of name order. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(1000000), victims, ELEMENTSOF(victims)), 3);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], e);
        assert_ptr_equal(victims[2], a);
        assert_ptr_equal(victims[3], UNTOUCHED);

        /* n_max keeps the earliest. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(1000000), victims, 2), 2);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], e);
        assert_ptr_equal(victims[2], UNTOUCHED);

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(1000000), victims, 1), 1);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], UNTOUCHED);

        assert_int_equal(pool_collect_expired(&pool, SEC(1000000), NULL, 0), 0);

        /* A request under way postpones expiry; so does a use. */
        b->in_flight = 1;
        assert_int_equal(pool_next_deadline(&pool), SEC(50));
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(60), victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], e);
        b->in_flight = 0;
        pool_model_use(&pool, b, SEC(58));
        assert_int_equal(pool_model_deadline(&pool, b), SEC(63));
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(62), victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], e);
        (void) c;
        (void) d;

        pool_done(&pool);
}

static void test_model_use(void **state) {
        PoolModel *a, *b;

        pool_init(&pool, 1000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 10, SEC(2));

        pool_model_use(&pool, a, SEC(30));
        assert_int_equal(a->last_used, SEC(30));
        assert_int_equal(a->requests_total, 1);
        assert_int_equal(pool_model_deadline(&pool, a), SEC(90));
        pool_model_use(&pool, a, SEC(31));
        assert_int_equal(a->requests_total, 2);
        assert_int_equal(pool_model_deadline(&pool, a), SEC(91));

        /* Per-model policy: the other model is untouched. */
        assert_int_equal(b->last_used, SEC(2));
        assert_int_equal(b->requests_total, 0);
        assert_int_equal(pool_model_deadline(&pool, b), SEC(62));
        assert_int_equal(pool.global_last_used, 0);
        assert_int_equal(pool_next_deadline(&pool), SEC(62));

        pool_done(&pool);
}

static void test_release(void **state) {
        PoolModel *a, *b;

        /* Letting go of the last hold starts the keep-alive from then, and
         * is no request. */
        pool_init(&pool, 1000, 0, 10, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(1));
        a->holds = 2;
        assert_int_equal(pool_model_deadline(&pool, a), UINT64_MAX);
        pool_model_release(&pool, a, 1, SEC(5));
        assert_int_equal(a->holds, 1);
        assert_int_equal(pool_model_deadline(&pool, a), UINT64_MAX);
        pool_model_release(&pool, a, 1, SEC(7));
        assert_int_equal(a->holds, 0);
        assert_int_equal(a->requests_total, 0);
        assert_int_equal(pool_model_deadline(&pool, a), SEC(17));
        /* A clock that seems to go back never shortens the keep-alive. */
        a->holds = 1;
        pool_model_release(&pool, a, 1, SEC(6));
        assert_int_equal(pool_model_deadline(&pool, a), SEC(17));
        pool_done(&pool);

        /* Under the global policy, a release renews every model. */
        pool_init(&pool, 1000, 0, 10, POOL_IDLE_GLOBAL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 10, SEC(1));
        a->holds = 1;
        pool_model_release(&pool, a, 1, SEC(20));
        assert_int_equal(pool_model_deadline(&pool, b), SEC(30));
}

static void test_global_idle(void **state) {
        PoolModel *a, *b, *c, *d, *victims[8];

        pool_init(&pool, 1000, 0, 10, POOL_IDLE_GLOBAL);
        a = add_model(&pool, "a", MODEL_LOADED, 10, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 10, SEC(2));
        c = add_model(&pool, "c", MODEL_LOADED, 10, SEC(3));
        d = add_model(&pool, "d", MODEL_LOADED, 10, SEC(0));
        d->pinned = true;

        /* Before any use, each model's own last use counts. */
        assert_int_equal(pool_model_deadline(&pool, a), SEC(11));
        assert_int_equal(pool_next_deadline(&pool), SEC(11));

        /* A use of one renews every model. */
        pool_model_use(&pool, b, SEC(20));
        assert_int_equal(pool.global_last_used, SEC(20));
        assert_int_equal(b->requests_total, 1);
        assert_int_equal(a->requests_total, 0);
        assert_int_equal(a->last_used, SEC(1));
        assert_int_equal(pool_model_deadline(&pool, a), SEC(30));
        assert_int_equal(pool_model_deadline(&pool, b), SEC(30));
        assert_int_equal(pool_model_deadline(&pool, c), SEC(30));
        assert_int_equal(pool_model_deadline(&pool, d), UINT64_MAX);
        assert_int_equal(pool_next_deadline(&pool), SEC(30));

        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(30) - 1, victims, ELEMENTSOF(victims)), 0);
        assert_ptr_equal(victims[0], UNTOUCHED);

        /* At expiry every unpinned idle model goes together. */
        assert_int_equal(pool_collect_expired(&pool, SEC(30), victims, ELEMENTSOF(victims)), 3);
        assert_ptr_equal(victims[0], a);
        assert_ptr_equal(victims[1], b);
        assert_ptr_equal(victims[2], c);
        assert_ptr_equal(victims[3], UNTOUCHED);

        /* A held model is spared at expiry; a later use renews the rest. */
        c->holds = 1;
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_expired(&pool, SEC(30), victims, ELEMENTSOF(victims)), 2);
        assert_ptr_equal(victims[0], a);
        assert_ptr_equal(victims[1], b);
        assert_ptr_equal(victims[2], UNTOUCHED);
        pool_model_use(&pool, c, SEC(29));
        assert_int_equal(pool.global_last_used, SEC(29));
        c->holds = 0;
        assert_int_equal(pool_model_deadline(&pool, a), SEC(39));
        pool_model_use(&pool, c, SEC(35));
        assert_int_equal(pool_next_deadline(&pool), SEC(45));
        assert_int_equal(pool_collect_expired(&pool, SEC(44), victims, ELEMENTSOF(victims)), 0);
        assert_int_equal(pool_collect_expired(&pool, SEC(45), victims, ELEMENTSOF(victims)), 3);

        /* A model's own keep-alive still applies to the shared last use. */
        b->keep_alive_sec = 2;
        assert_int_equal(pool_model_deadline(&pool, b), SEC(37));
        assert_int_equal(pool_next_deadline(&pool), SEC(37));
        a->keep_alive_sec = KEEP_ALIVE_FOREVER;
        assert_int_equal(pool_model_deadline(&pool, a), UINT64_MAX);
        assert_int_equal(pool_collect_expired(&pool, SEC(45), victims, ELEMENTSOF(victims)), 2);
        assert_ptr_equal(victims[0], b);
        assert_ptr_equal(victims[1], c);

        pool_done(&pool);
}

static void test_pressure_victims(void **state) {
        PoolModel *a, *b, *c, *d, *e, *victims[8];

        pool_init(&pool, 10000, 0, 60, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 300, SEC(3));
        b = add_model(&pool, "b", MODEL_LOADED, 200, SEC(2));
        c = add_model(&pool, "c", MODEL_LOADED, 100, SEC(1));
        d = add_model(&pool, "d", MODEL_LOADED, 1000, SEC(0));
        d->pinned = true;
        e = add_model(&pool, "e", MODEL_LOADED, 1000, SEC(0));
        e->holds = 1;

        /* LRU order c (100), b (200), a (300); stops once enough is freed. */
        assert_int_equal(pool_collect_pressure_victims(&pool, 0, victims, ELEMENTSOF(victims)), 0);

        assert_int_equal(pool_collect_pressure_victims(&pool, 1, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], c);

        assert_int_equal(pool_collect_pressure_victims(&pool, 100, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], c);

        assert_int_equal(pool_collect_pressure_victims(&pool, 101, victims, ELEMENTSOF(victims)), 2);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], b);

        assert_int_equal(pool_collect_pressure_victims(&pool, 300, victims, ELEMENTSOF(victims)), 2);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], b);

        assert_int_equal(pool_collect_pressure_victims(&pool, 301, victims, ELEMENTSOF(victims)), 3);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], b);
        assert_ptr_equal(victims[2], a);

        /* More than there is: every evictable model, pinned and held spared. */
        assert_int_equal(pool_collect_pressure_victims(&pool, 100000, victims, ELEMENTSOF(victims)), 3);
        assert_int_equal(pool_collect_pressure_victims(&pool, UINT64_MAX, victims, ELEMENTSOF(victims)), 3);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], b);
        assert_ptr_equal(victims[2], a);

        /* n_max keeps the least recently used. */
        fill_untouched(victims, ELEMENTSOF(victims));
        assert_int_equal(pool_collect_pressure_victims(&pool, UINT64_MAX, victims, 2), 2);
        assert_ptr_equal(victims[0], c);
        assert_ptr_equal(victims[1], b);
        assert_ptr_equal(victims[2], UNTOUCHED);
        assert_int_equal(pool_collect_pressure_victims(&pool, UINT64_MAX, NULL, 0), 0);

        /* In-flight and transitioning models are spared too. */
        c->in_flight = 1;
        b->state = MODEL_UNLOADING;
        assert_int_equal(pool_collect_pressure_victims(&pool, UINT64_MAX, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], a);

        /* Once the hold is released, e (oldest) is first. */
        e->holds = 0;
        assert_int_equal(pool_collect_pressure_victims(&pool, 500, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], e);
        (void) d;

        pool_done(&pool);
}

static void test_memory_limit_at_run_time(void **state) {
        PoolModel *a, *b, *c, *victims[4];
        uint64_t needed = 0;

        pool_init(&pool, 1000, 0, 300, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 300, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 300, SEC(2));
        c = add_model(&pool, "c", MODEL_LOADING, 0, SEC(3));
        c->reserved_bytes = 200;
        c->pinned = true;
        b->pinned = true;
        assert_int_equal(pool_memory_pinned(&pool), 500);

        /* Below what pinned models hold (or are admitted for): refused. */
        assert_int_equal(pool_set_memory_limit(&pool, 499, &needed), -EBUSY);
        assert_int_equal(needed, 500);
        assert_int_equal(pool.memory_limit, 1000);

        /* Within it nothing needs to go. */
        assert_int_equal(pool_set_memory_limit(&pool, 800, NULL), 0);
        assert_int_equal(pool_collect_over_limit(&pool, victims, ELEMENTSOF(victims)), 0);

        /* Lower: the idle unpinned model goes, the pinned ones stay. */
        assert_int_equal(pool_set_memory_limit(&pool, 500, NULL), 0);
        assert_int_equal(pool.memory_limit, 500);
        assert_int_equal(pool_collect_over_limit(&pool, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], a);

        /* A held model is no victim even when the pool is over. */
        a->holds = 1;
        assert_int_equal(pool_collect_over_limit(&pool, victims, ELEMENTSOF(victims)), 0);
        (void) b;
}

static void test_percent_limit_follows_total(void **state) {
        SizeOrPercent half = { .is_percent = true, .permyriad = 5000 };
        SizeOrPercent fixed = { .bytes = 1000 };
        PoolModel *a, *victims[4];

        pool_init(&pool, 1000, 0, 300, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 600, SEC(1));

        assert_false(pool_follow_memory_total(&pool, &fixed, 4000));
        assert_int_equal(pool.memory_limit, 1000);
        assert_false(pool_follow_memory_total(&pool, &half, 2000));
        assert_true(pool_follow_memory_total(&pool, &half, 4000));
        assert_int_equal(pool.memory_limit, 2000);

        /* Shrinking: the idle model no longer fits. */
        assert_true(pool_follow_memory_total(&pool, &half, 1000));
        assert_int_equal(pool.memory_limit, 500);
        assert_int_equal(pool_collect_over_limit(&pool, victims, ELEMENTSOF(victims)), 1);
        assert_ptr_equal(victims[0], a);

        /* Pinned, it keeps the limit from going below it. */
        a->pinned = true;
        assert_true(pool_follow_memory_total(&pool, &half, 800));
        assert_int_equal(pool.memory_limit, 600);
        assert_int_equal(pool_collect_over_limit(&pool, victims, ELEMENTSOF(victims)), 0);
}

static void test_charges(void **state) {
        PoolModel *a, *b, *victims[4];

        pool_init(&pool, 1000, 0, 300, POOL_IDLE_PER_MODEL);
        a = add_model(&pool, "a", MODEL_LOADED, 300, SEC(1));
        b = add_model(&pool, "b", MODEL_LOADED, 300, SEC(2));

        pool_model_charge(&pool, b, 100);
        assert_int_equal(b->memory_bytes, 400);
        assert_int_equal(b->charged_bytes, 100);
        assert_int_equal(pool_memory_used(&pool), 700);

        /* Charging b 400 more: planned as b needing all it would hold. */
        b->in_flight = 1;
        assert_int_equal(pool_plan_admission(&pool, b, b->memory_bytes + 400, victims, ELEMENTSOF(victims), NULL),
                         1);
        assert_ptr_equal(victims[0], a);
        assert_int_equal(pool_plan_admission(&pool, b, b->memory_bytes + 701, victims, ELEMENTSOF(victims), NULL),
                         -ENOSPC);

        pool_model_uncharge(&pool, b, 100);
        assert_int_equal(b->memory_bytes, 300);
        assert_int_equal(b->charged_bytes, 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_model_state_to_string, teardown_pool),
                cmocka_unit_test_teardown(test_init, teardown_pool),
                cmocka_unit_test_teardown(test_memory_limit_at_run_time, teardown_pool),
                cmocka_unit_test_teardown(test_charges, teardown_pool),
                cmocka_unit_test_teardown(test_percent_limit_follows_total, teardown_pool),
                cmocka_unit_test_teardown(test_add_sorted_idempotent, teardown_pool),
                cmocka_unit_test_teardown(test_add_limit, teardown_pool),
                cmocka_unit_test_teardown(test_add_ascending, teardown_pool),
                cmocka_unit_test_teardown(test_remove, teardown_pool),
                cmocka_unit_test_teardown(test_accounting, teardown_pool),
                cmocka_unit_test_teardown(test_is_evictable, teardown_pool),
                cmocka_unit_test_teardown(test_admission_lru, teardown_pool),
                cmocka_unit_test_teardown(test_admission_fits, teardown_pool),
                cmocka_unit_test_teardown(test_admission_spares_busy, teardown_pool),
                cmocka_unit_test_teardown(test_admission_enospc_nothing_evictable, teardown_pool),
                cmocka_unit_test_teardown(test_admission_too_big_for_empty_pool, teardown_pool),
                cmocka_unit_test_teardown(test_admission_enospc_available, teardown_pool),
                cmocka_unit_test_teardown(test_admission_max_loaded, teardown_pool),
                cmocka_unit_test_teardown(test_admission_self, teardown_pool),
                cmocka_unit_test_teardown(test_downloading_is_never_counted_or_evicted, teardown_pool),
                cmocka_unit_test_teardown(test_admission_n_max, teardown_pool),
                cmocka_unit_test_teardown(test_keep_alive_and_deadline, teardown_pool),
                cmocka_unit_test_teardown(test_deadline_overflow, teardown_pool),
                cmocka_unit_test_teardown(test_collect_expired, teardown_pool),
                cmocka_unit_test_teardown(test_model_use, teardown_pool),
                cmocka_unit_test_teardown(test_release, teardown_pool),
                cmocka_unit_test_teardown(test_global_idle, teardown_pool),
                cmocka_unit_test_teardown(test_pressure_victims, teardown_pool),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
