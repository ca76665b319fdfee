/* SPDX-License-Identifier: MIT */
/* The model core without a bus: requests go in, completions and events come
 * out, with real loads of small safetensors files on the loading workers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "id-tokenizer.h"

#include "blas.h"
#include "catalog.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "service.h"
#include "model-lifecycle.h"
#include "mpool-bus.h"
#include "request.h"
#include "time-util.h"

#include "lifecycle-fixture.h"

static void test_load_and_unload(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        PoolModel *alpha;
        Outcome o;
        Request *req;

        assert_int_equal(rec.announced, 2);
        alpha = load(f, "alpha");
        assert_non_null(alpha);
        assert_int_equal(alpha->state, MODEL_LOADED);
        assert_true(alpha->memory_bytes >= 1024 * 1024);
        assert_int_equal(pool_memory_used(&f->m->pool), alpha->memory_bytes);
        assert_int_equal(rec.loaded, 1);
        assert_true(rec.progress >= 1);

        /* A second Load of a loaded model completes at once. */
        req = submit(f, REQUEST_LOAD, "alpha", NULL, &o);
        assert_true(o.completed);
        assert_int_equal(o.error, 0);
        request_unref(req);

        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        assert_true(o.completed);
        assert_true(o.was_loaded);
        assert_int_equal(alpha->state, MODEL_AVAILABLE);
        assert_int_equal(pool_memory_used(&f->m->pool), 0);
        assert_string_equal(rec.last_unload_reason, MPOOL_REASON_REQUEST);
        request_unref(req);

        /* Not loaded: was_loaded is false. */
        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        assert_true(o.completed);
        assert_false(o.was_loaded);
        request_unref(req);

        fixture_free(f);
}

static void test_unknown_model_is_forgotten(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        Outcome o;
        Request *req = submit(f, REQUEST_LOAD, "nope", NULL, &o);

        run_until(f, &o.completed);
        assert_int_equal(o.error, -ENOENT);
        assert_null(pool_find(&f->m->pool, "nope"));
        request_unref(req);
        fixture_free(f);
}

/* ExpiresAt follows the leases of Embed and OpenFiles: 0 while the model is
 * in use, its new deadline once the last user is done. Each change is
 * announced, or a client following the signals keeps a stale deadline (found
 * by the stress run). */
static void test_lease_announces_expires(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *alpha = load(f, "alpha");
        ModelWeights *first, *second;
        unsigned before;

        before = rec.expires_changed;
        assert_int_equal(model_lease(f->m, alpha, &first), 0);
        assert_int_equal(rec.expires_changed, before + 1);
        /* Already in use: ExpiresAt stays 0, nothing to announce. */
        assert_int_equal(model_lease(f->m, alpha, &second), 0);
        assert_int_equal(rec.expires_changed, before + 1);
        model_unlease(f->m, alpha, second);
        assert_int_equal(rec.expires_changed, before + 1);
        model_unlease(f->m, alpha, first);
        assert_int_equal(rec.expires_changed, before + 2);
        assert_true(pool_model_is_evictable(alpha));
        fixture_free(f);
}

/* IdlePolicy=global: a use of one model moves every idle model's deadline,
 * and each of them announces it. */
static void test_global_use_announces_every_expiry(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *alpha = load(f, "alpha"), *beta = load(f, "beta");
        ModelWeights *weights;
        unsigned before;

        f->m->pool.idle_policy = POOL_IDLE_GLOBAL;
        assert_true(pool_model_is_evictable(beta));
        before = rec.expires_changed;
        assert_int_equal(model_lease(f->m, alpha, &weights), 0);
        /* alpha's own (now in use) and beta's (moved). */
        assert_int_equal(rec.expires_changed, before + 2);
        model_unlease(f->m, alpha, weights);
        fixture_free(f);
}

static void test_unload_waits_for_users(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *alpha = load(f, "alpha");
        ModelWeights *weights;
        uint64_t held = alpha->memory_bytes;
        Outcome o;
        Request *req;

        assert_int_equal(model_lease(f->m, alpha, &weights), 0);
        assert_int_equal(alpha->in_flight, 1);
        assert_false(pool_model_is_evictable(alpha));

        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        /* The weights stay mapped and charged while a user reads them. */
        assert_false(o.completed);
        assert_int_equal(alpha->state, MODEL_UNLOADING);
        assert_int_equal(alpha->memory_bytes, held);
        /* Still readable: the header's length leads the file. */
        assert_true(*(const uint64_t *) weights->mappings[0].address % 8 == 0);
        assert_int_equal(model_lease(f->m, alpha, &(ModelWeights *) { NULL }), -ESTALE);

        model_unlease(f->m, alpha, weights);
        assert_true(o.completed);
        assert_true(o.was_loaded);
        assert_int_equal(alpha->state, MODEL_AVAILABLE);
        assert_int_equal(alpha->memory_bytes, 0);
        assert_int_equal(rec.unloaded, 1);
        request_unref(req);

        /* A Load during the wait is served by a fresh load afterwards. */
        alpha = load(f, "alpha");
        assert_int_equal(model_lease(f->m, alpha, &weights), 0);
        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        {
                Outcome again;
                Request *load_req = submit(f, REQUEST_LOAD, "alpha", NULL, &again);

                assert_false(again.completed);
                model_unlease(f->m, alpha, weights);
                assert_true(o.completed);
                run_until(f, &again.completed);
                assert_int_equal(again.error, 0);
                assert_int_equal(alpha->state, MODEL_LOADED);
                request_unref(load_req);
        }
        request_unref(req);
        fixture_free(f);
}

static void test_charges_count_against_the_limit(void **state) {
        Fixture *f = fixture_new("3M", 1, 4);
        PoolModel *alpha = load(f, "alpha"), *beta;
        ModelWeights *weights;
        uint64_t held = alpha->memory_bytes;

        beta = load(f, "beta");
        assert_int_equal(alpha->state, MODEL_LOADED);

        /* beta is in use and charged a buffer: the idle alpha makes room. */
        assert_int_equal(model_lease(f->m, beta, &weights), 0);
        assert_int_equal(model_charge(f->m, beta, held), 0);
        assert_int_equal(alpha->state, MODEL_AVAILABLE);
        assert_string_equal(rec.last_unload_reason, MPOOL_REASON_MEMORY_LIMIT);
        assert_int_equal(beta->charged_bytes, held);
        assert_int_equal(pool_memory_used(&f->m->pool), beta->memory_bytes);

        /* Nothing else to evict: refused, and nothing changes. */
        assert_int_equal(model_charge(f->m, beta, 2 * held), -ENOSPC);
        assert_int_equal(beta->charged_bytes, held);

        /* Unloading gives the charge back with the mapping. */
        model_uncharge(f->m, beta, held);
        assert_int_equal(beta->charged_bytes, 0);
        assert_int_equal(model_charge(f->m, beta, held), 0);
        model_unlease(f->m, beta, weights);
        model_unload(f->m, beta, MPOOL_REASON_REQUEST);
        assert_int_equal(beta->memory_bytes, 0);
        assert_int_equal(beta->charged_bytes, 0);
        assert_int_equal(pool_memory_used(&f->m->pool), 0);

        fixture_free(f);
}

static void test_acquire_and_peer_leaving(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *alpha;
        Outcome o;
        Request *req = submit(f, REQUEST_ACQUIRE, "alpha", ":1.42", &o);

        run_until(f, &o.completed);
        assert_int_equal(o.error, 0);
        alpha = pool_find(&f->m->pool, "alpha");
        assert_int_equal(alpha->holds, 1);
        assert_int_equal(model_release(f->m, "alpha", ":1.43"), -ENOENT);

        /* Held: an Unload without force still unloads (holds are no pins),
         * but eviction for room never picks it. */
        assert_false(pool_model_is_evictable(alpha));
        manager_peer_left(f->m, ":1.42");
        assert_int_equal(alpha->holds, 0);
        assert_true(pool_model_is_evictable(alpha));
        assert_int_equal(model_release(f->m, "alpha", ":1.42"), -ENOENT);
        assert_int_equal(peers_count(&f->m->peers), 0);

        request_unref(req);
        fixture_free(f);
}

static void test_pinned_and_unload_all(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        Outcome o;
        Request *req = submit(f, REQUEST_LOAD, "alpha", NULL, &o);

        req->pin = true;   /* too late for this one: applies to the next */
        run_until(f, &o.completed);
        request_unref(req);
        assert_int_equal(request_new(REQUEST_LOAD, "beta", NULL, on_complete, &o, &req), 0);
        req->pin = true;
        memset(&o, 0, sizeof o);
        manager_submit(f->m, req);
        run_until(f, &o.completed);
        request_unref(req);
        assert_true(pool_find(&f->m->pool, "beta")->pinned);

        req = submit(f, REQUEST_UNLOAD, "beta", NULL, &o);
        assert_int_equal(o.error, -EPERM);
        request_unref(req);

        req = submit(f, REQUEST_UNLOAD_ALL, NULL, NULL, &o);
        assert_true(o.completed);
        assert_non_null(o.unloaded);
        assert_string_equal(o.unloaded[0], "alpha");
        assert_null(o.unloaded[1]);
        free(o.unloaded[0]);
        free(o.unloaded);
        assert_int_equal(pool_find(&f->m->pool, "beta")->state, MODEL_LOADED);
        request_unref(req);

        fixture_free(f);
}

static void test_cancel_during_load(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        Outcome loading, unloading;
        Request *load_req = submit(f, REQUEST_LOAD, "alpha", NULL, &loading);
        Request *unload_req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &unloading);

        /* The Load is told at once; the Unload once the worker let go. */
        assert_true(loading.completed);
        assert_int_equal(loading.error, -ECANCELED);
        run_until(f, &unloading.completed);
        assert_int_equal(unloading.error, 0);
        assert_int_equal(pool_find(&f->m->pool, "alpha")->state, MODEL_AVAILABLE);
        assert_int_equal(pool_memory_used(&f->m->pool), 0);
        assert_int_equal(workpool_in_flight(f->m->loaders), 0);

        request_unref(load_req);
        request_unref(unload_req);
        fixture_free(f);
}

static void test_queue_full_is_busy(void **state) {
        Fixture *f = fixture_new("1G", 1, 0);
        Outcome first, second;
        Request *a = submit(f, REQUEST_LOAD, "alpha", NULL, &first);
        Request *b = submit(f, REQUEST_LOAD, "beta", NULL, &second);

        /* One worker, no queue: the second load is refused and forgotten
         * nothing; the first goes on. */
        assert_true(second.completed);
        assert_int_equal(second.error, -EBUSY);
        assert_int_equal(pool_find(&f->m->pool, "beta")->state, MODEL_AVAILABLE);
        run_until(f, &first.completed);
        assert_int_equal(first.error, 0);

        request_unref(a);
        request_unref(b);
        fixture_free(f);
}

/* A completion that submits the next request, as a chain (download, load,
 * run) does: here the first Load's completion unloads the model, while a
 * second Load waits for the same load. */
typedef struct Chain {
        Fixture *f;
        Outcome unload;
        Request *unload_req;
} Chain;

static void on_loaded_then_unload(Request *req, void *userdata) {
        Chain *c = userdata;

        assert_int_equal(req->error, 0);
        c->unload_req = submit(c->f, REQUEST_UNLOAD, req->model, NULL, &c->unload);
}

static void test_chained_requests(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        Chain chain = { .f = f };
        Outcome second;
        Request *first, *other;

        assert_int_equal(request_new(REQUEST_LOAD, "alpha", NULL, on_loaded_then_unload, &chain, &first), 0);
        manager_submit(f->m, first);
        other = submit(f, REQUEST_LOAD, "alpha", NULL, &second);

        /* The unload ran inside the first completion; the second Load is
         * served all the same, by a load of its own. */
        run_until(f, &second.completed);
        assert_true(chain.unload.completed);
        assert_true(chain.unload.was_loaded);
        assert_int_equal(second.error, 0);
        assert_int_equal(pool_find(&f->m->pool, "alpha")->state, MODEL_LOADED);
        assert_int_equal(rec.loaded, 2);

        request_unref(first);
        request_unref(other);
        request_unref(chain.unload_req);
        fixture_free(f);
}

/* --- Review reproductions ------------------------------------------------ */

/* R1: a completion that submits a Load of the same unknown name, for a caller
 * at its limit of waiting calls: submit_load forgets the model inside the
 * callback, and load_failed() (then on_job_done()) go on using it. */
typedef struct Resubmit {
        Fixture *f;
        Outcome again;
        Request *again_req;
} Resubmit;

static void on_failed_then_load_again(Request *req, void *userdata) {
        Resubmit *r = userdata;

        assert_int_equal(req->error, -ENOENT);
        r->again_req = submit(r->f, REQUEST_LOAD, req->model, ":1.9", &r->again);
}

static void test_completion_loading_a_failed_name_again(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        Resubmit rs = { .f = f };
        Outcome o = {};
        Request *first;

        for (unsigned i = 0; i < PENDING_CALLS_PER_PEER_MAX; i++)
                assert_int_equal(peers_add_pending(&f->m->peers, ":1.9"), 0);

        assert_int_equal(request_new(REQUEST_LOAD, "nope", NULL, on_failed_then_load_again, &rs, &first), 0);
        manager_submit(f->m, first);
        run_until(f, &first->completed);
        assert_true(rs.again.completed);
        assert_int_equal(rs.again.error, -EUSERS);
        assert_null(pool_find(&f->m->pool, "nope"));

        for (unsigned i = 0; i < PENDING_CALLS_PER_PEER_MAX; i++)
                peers_remove_pending(&f->m->peers, ":1.9");
        request_unref(first);
        request_unref(rs.again_req);
        (void) o;
        fixture_free(f);
}

/* A model's error is bounded wherever it comes from: Status sends it for
 * every model, thousands of them in one message. */
static void test_error_is_bounded(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        size_t n = 64 * 1024;
        char *huge = malloc(n + 1);
        PoolModel *model;
        size_t len;

        assert_non_null(huge);
        /* "é" (2 bytes) over and over: the bound, less the ellipsis, falls
         * inside one, which must go whole. */
        for (size_t i = 0; i < n; i += 2)
                memcpy(huge + i, "\xc3\xa9", 2);
        huge[n] = 0;

        assert_int_equal(model_found(f->m, "broken", -EINVAL, 0, MODEL_SOURCE_STORE, NULL, huge, NULL), 0);
        model = pool_find(&f->m->pool, "broken");
        assert_non_null(model);
        assert_int_equal(model->state, MODEL_ERROR);
        assert_non_null(model->error);
        len = strlen(model->error);
        assert_true(len <= MODEL_ERROR_MAX);
        assert_true(len > MODEL_ERROR_MAX - 8);
        assert_memory_equal(model->error, huge, len - 3);
        assert_int_equal((unsigned char) model->error[len - 4], 0xa9);
        assert_memory_equal(model->error + len - 3, "\xe2\x80\xa6", 3);

        /* A short one stays whole. */
        model_set_error(model, "No weights.");
        assert_string_equal(model->error, "No weights.");
        model_set_error(model, NULL);
        assert_string_equal(model->error, "Out of memory.");

        free(huge);
        fixture_free(f);
}

/* R2: shutdown while a Load waits for a model that is unloading (a user
 * still holds its weights): the Load is never completed. */
static void test_shutdown_completes_waiters_of_unloading_model(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *alpha = load(f, "alpha");
        ModelWeights *weights;
        Outcome unloading, loading;
        Request *unload_req, *load_req;

        assert_int_equal(model_lease(f->m, alpha, &weights), 0);
        unload_req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &unloading);
        assert_int_equal(alpha->state, MODEL_UNLOADING);
        load_req = submit(f, REQUEST_LOAD, "alpha", NULL, &loading);
        assert_false(loading.completed);

        manager_begin_shutdown(f->m);
        model_unlease(f->m, alpha, weights);
        assert_true(unloading.completed);
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC;
             sd_event_get_state(f->m->event) != SD_EVENT_FINISHED && now_monotonic_usec() < end;)
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        /* Every request is completed exactly once: this one too. */
        assert_true(loading.completed);
        assert_int_equal(loading.error, -ECANCELED);

        request_unref(unload_req);
        request_unref(load_req);
        fixture_free(f);
}

/* A large model's weights are unmapped off the loop: the model stays
 * unloading, its memory counted, until they are; Unload answers then, a
 * Load that came meanwhile starts afresh after it, and shutdown waits for
 * it. Every model counts as large here. */
static void test_unload_off_the_loop(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *alpha, *beta;
        Outcome unloading, loading, last;
        Request *unload_req, *load_req, *last_req;

        f->m->release_off_loop_min_bytes = 0;
        alpha = load(f, "alpha");
        beta = load(f, "beta");

        unload_req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &unloading);
        assert_false(unloading.completed);
        assert_int_equal(alpha->state, MODEL_UNLOADING);
        assert_true(alpha->memory_bytes >= 1024 * 1024);
        assert_int_equal(pool_memory_used(&f->m->pool), alpha->memory_bytes + beta->memory_bytes);
        assert_int_equal(rec.unloaded, 0);
        load_req = submit(f, REQUEST_LOAD, "alpha", NULL, &loading);
        assert_false(loading.completed);

        run_until(f, &unloading.completed);
        assert_int_equal(unloading.error, 0);
        assert_true(unloading.was_loaded);
        assert_int_equal(rec.unloaded, 1);
        assert_string_equal(rec.last_unload_reason, MPOOL_REASON_REQUEST);
        assert_int_equal(pool_memory_used(&f->m->pool), beta->memory_bytes);
        run_until(f, &loading.completed);
        assert_int_equal(loading.error, 0);
        assert_int_equal(alpha->state, MODEL_LOADED);

        /* Shutdown with an unmap under way ends once it is done. */
        last_req = submit(f, REQUEST_UNLOAD, "beta", NULL, &last);
        assert_false(last.completed);
        manager_begin_shutdown(f->m);
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC;
             sd_event_get_state(f->m->event) != SD_EVENT_FINISHED && now_monotonic_usec() < end;)
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        assert_int_equal(sd_event_get_state(f->m->event), SD_EVENT_FINISHED);
        assert_true(last.completed);
        assert_int_equal(last.error, 0);
        assert_int_equal(workpool_in_flight(f->m->releaser), 0);
        assert_int_equal(pool_memory_used(&f->m->pool), 0);

        request_unref(unload_req);
        request_unref(load_req);
        request_unref(last_req);
        fixture_free(f);
}

/* R3: a pin asked for with Load (org.mpool.configure) is dropped by an
 * Unload without force (org.mpool.load only) while the load runs. */
static void test_unload_without_force_keeps_pinned_load(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        Outcome loading, unloading;
        Request *load_req, *unload_req;

        assert_int_equal(request_new(REQUEST_LOAD, "alpha", NULL, on_complete, &loading, &load_req), 0);
        memset(&loading, 0, sizeof loading);
        load_req->pin = true;
        manager_submit(f->m, load_req);
        unload_req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &unloading);

        run_until(f, &loading.completed);
        run_until(f, &unloading.completed);
        assert_int_equal(unloading.error, -EPERM);
        assert_int_equal(loading.error, 0);

        request_unref(load_req);
        request_unref(unload_req);
        fixture_free(f);
}

/* R4: the keep-alive of a Load that is requeued because a neighbour's
 * completion unloaded the model is lost. */
static void test_requeued_load_keeps_its_options(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        Chain chain = { .f = f };
        Outcome second;
        Request *first, *other;

        assert_int_equal(request_new(REQUEST_LOAD, "alpha", NULL, on_loaded_then_unload, &chain, &first), 0);
        manager_submit(f->m, first);
        assert_int_equal(request_new(REQUEST_LOAD, "alpha", NULL, on_complete, &second, &other), 0);
        memset(&second, 0, sizeof second);
        other->keep_alive_sec = KEEP_ALIVE_FOREVER;
        manager_submit(f->m, other);

        run_until(f, &second.completed);
        assert_int_equal(second.error, 0);
        assert_int_equal(pool_find(&f->m->pool, "alpha")->state, MODEL_LOADED);
        assert_int_equal(pool_find(&f->m->pool, "alpha")->keep_alive_sec, KEEP_ALIVE_FOREVER);

        request_unref(first);
        request_unref(other);
        request_unref(chain.unload_req);
        fixture_free(f);
}

/* The loop runs until cond holds (the store watch settles in ~150 ms). */
#define RUN_UNTIL(f, cond)                                                              \
        do {                                                                            \
                uint64_t end_ = now_monotonic_usec() + WAIT_USEC;                       \
                while (!(cond)) {                                                       \
                        assert_true(now_monotonic_usec() < end_);                       \
                        assert_true(sd_event_run((f)->m->event, 100 * USEC_PER_MSEC) >= 0); \
                }                                                                       \
        } while (0)

static void remove_model_dir(Fixture *f, const char *name) {
        char command[256];

        snprintf(command, sizeof command, "rm -rf '%s/%s'", f->dir, name);
        assert_int_equal(system(command), 0);
}

static bool left_store(Fixture *f, const char *name) {
        PoolModel *model = pool_find(&f->m->pool, name);

        return model && ((ModelRuntime *) model->userdata)->left_store;
}

static void test_store_watch_announces_and_forgets(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        PoolModel *gamma;

        assert_int_equal(rec.announced, 2);
        write_model(f->dir, "gamma", 1024);
        RUN_UNTIL(f, rec.announced == 3);
        gamma = pool_find(&f->m->pool, "gamma");
        assert_non_null(gamma);
        assert_int_equal(gamma->state, MODEL_AVAILABLE);
        assert_true(gamma->size_bytes > 4096);
        assert_int_equal(rec.removed, 0);

        remove_model_dir(f, "gamma");
        RUN_UNTIL(f, rec.removed == 1);
        assert_null(pool_find(&f->m->pool, "gamma"));
        assert_non_null(pool_find(&f->m->pool, "alpha"));
        fixture_free(f);
}

static void test_store_watch_keeps_loaded_model_until_unloaded(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        PoolModel *alpha = load(f, "alpha");
        Outcome o;
        Request *req;

        remove_model_dir(f, "alpha");
        RUN_UNTIL(f, left_store(f, "alpha"));
        /* Its mappings keep its data. */
        assert_int_equal(alpha->state, MODEL_LOADED);
        assert_int_equal(rec.removed, 0);

        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        run_until(f, &o.completed);
        assert_int_equal(o.error, 0);
        assert_true(o.was_loaded);
        request_unref(req);
        RUN_UNTIL(f, rec.removed == 1);
        assert_null(pool_find(&f->m->pool, "alpha"));
        fixture_free(f);
}

static void test_store_watch_model_back_before_unload_stays(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        char from[128], to[128];
        Outcome o;
        Request *req;

        (void) load(f, "alpha");
        snprintf(from, sizeof from, "%s/alpha", f->dir);
        snprintf(to, sizeof to, "%s/.away", f->dir);
        assert_int_equal(rename(from, to), 0);
        RUN_UNTIL(f, left_store(f, "alpha"));
        assert_int_equal(rename(to, from), 0);
        RUN_UNTIL(f, !left_store(f, "alpha"));

        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        run_until(f, &o.completed);
        request_unref(req);
        /* A look more, to be sure nothing forgets it later. */
        write_model(f->dir, "gamma", 1024);
        RUN_UNTIL(f, rec.announced == 3);
        assert_int_equal(rec.removed, 0);
        assert_non_null(pool_find(&f->m->pool, "alpha"));
        fixture_free(f);
}

/* --- Register and Remove (catalog.h) ----------------------------------- */

typedef struct Reply {
        bool done;
        int error;
        char message[512];
} Reply;

static void on_reply(int error, const char *message, void *userdata) {
        Reply *r = userdata;

        assert_false(r->done);
        r->done = true;
        r->error = error;
        snprintf(r->message, sizeof r->message, "%s", strempty(message));
}

static bool exists(Fixture *f, const char *name) {
        char path[256];

        snprintf(path, sizeof path, "%s/%s", f->dir, name);
        return access(path, F_OK) >= 0;
}

static void test_catalog_register_and_remove(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        char outside[128], path[160];
        PoolModel *model;
        Reply r = {};

        strcpy(outside, "/tmp/mpool-test-catalog-XXXXXX");
        assert_non_null(mkdtemp(outside));
        write_model(outside, "m", 1024);
        snprintf(path, sizeof path, "%s/m", outside);

        catalog_register(f->m, "acme/m", path, on_reply, &r);
        run_until(f, &r.done);
        assert_int_equal(r.error, 0);
        model = pool_find(&f->m->pool, "acme/m");
        assert_non_null(model);
        assert_true(model_is_announced(model));
        assert_int_equal(((ModelRuntime *) model->userdata)->source, MODEL_SOURCE_LOCAL);
        assert_int_equal(model->state, MODEL_AVAILABLE);
        assert_int_equal(rec.announced, 3);
        (void) load(f, "acme/m");

        /* Known now, by the pool and by the registry. */
        r = (Reply) {};
        catalog_register(f->m, "acme/m", path, on_reply, &r);
        assert_true(r.done);
        assert_int_equal(r.error, -EEXIST);
        r = (Reply) {};
        catalog_register(f->m, "alpha", path, on_reply, &r);
        assert_true(r.done);
        assert_int_equal(r.error, -EEXIST);
        r = (Reply) {};
        catalog_register(f->m, "other", "relative", on_reply, &r);
        assert_true(r.done);
        assert_int_equal(r.error, -EINVAL);

        /* Loaded: busy, unless forced. */
        r = (Reply) {};
        catalog_remove(f->m, "acme/m", false, NULL, on_reply, &r);
        assert_true(r.done);
        assert_int_equal(r.error, -EBUSY);
        assert_non_null(strstr(r.message, "loaded"));
        r = (Reply) {};
        catalog_remove(f->m, "acme/m", true, NULL, on_reply, &r);
        run_until(f, &r.done);
        assert_int_equal(r.error, 0);
        assert_int_equal(rec.removed, 1);
        assert_null(pool_find(&f->m->pool, "acme/m"));
        /* A registration goes; the directory stays. */
        snprintf(path, sizeof path, "%s/m/model.safetensors", outside);
        assert_int_equal(access(path, F_OK), 0);

        r = (Reply) {};
        catalog_remove(f->m, "acme/m", false, NULL, on_reply, &r);
        run_until(f, &r.done);
        assert_int_equal(r.error, -ENOENT);

        fixture_free(f);
        snprintf(path, sizeof path, "rm -rf '%s'", outside);
        assert_int_equal(system(path), 0);
}

static void test_catalog_remove_waits_for_users_and_refuses_loads(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        PoolModel *alpha = load(f, "alpha");
        ModelWeights *weights;
        Reply r = {}, again = {};
        Outcome o;
        Request *req;

        assert_int_equal(model_lease(f->m, alpha, &weights), 0);
        catalog_remove(f->m, "alpha", true, NULL, on_reply, &r);
        /* The unload waits for the user of the weights, and so does Remove. */
        assert_false(r.done);
        assert_int_equal(alpha->state, MODEL_UNLOADING);

        req = submit(f, REQUEST_LOAD, "alpha", NULL, &o);
        assert_true(o.completed);
        assert_int_equal(o.error, -EBUSY);
        request_unref(req);
        catalog_remove(f->m, "alpha", true, NULL, on_reply, &again);
        assert_true(again.done);
        assert_int_equal(again.error, -EBUSY);
        assert_true(exists(f, "alpha"));

        model_unlease(f->m, alpha, weights);
        run_until(f, &r.done);
        assert_int_equal(r.error, 0);
        assert_false(exists(f, "alpha"));
        RUN_UNTIL(f, rec.removed == 1);
        assert_null(pool_find(&f->m->pool, "alpha"));
        assert_non_null(pool_find(&f->m->pool, "beta"));
        fixture_free(f);
}

/* Removed while a peer holds it: the model stays until the hold goes, and
 * a load meanwhile finds no files. That is the caller's answer, not an
 * error of the model's to keep (the stress run found one left behind). */
static void test_load_of_removed_held_model_leaves_no_error(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        PoolModel *alpha;
        Reply r = {};
        Outcome o;
        Request *req = submit(f, REQUEST_ACQUIRE, "alpha", ":1.42", &o);

        run_until(f, &o.completed);
        assert_int_equal(o.error, 0);
        request_unref(req);

        catalog_remove(f->m, "alpha", true, NULL, on_reply, &r);
        run_until(f, &r.done);
        assert_int_equal(r.error, 0);
        assert_false(exists(f, "alpha"));
        alpha = pool_find(&f->m->pool, "alpha");
        assert_non_null(alpha);
        assert_true(left_store(f, "alpha"));
        assert_int_equal(alpha->holds, 1);
        assert_int_equal(alpha->state, MODEL_AVAILABLE);

        req = submit(f, REQUEST_LOAD, "alpha", NULL, &o);
        run_until(f, &o.completed);
        assert_int_equal(o.error, -ENOENT);
        request_unref(req);
        assert_ptr_equal(pool_find(&f->m->pool, "alpha"), alpha);
        assert_int_equal(alpha->state, MODEL_AVAILABLE);
        assert_null(alpha->error);
        assert_int_equal(rec.removed, 0);

        /* The hold was all that kept it. */
        manager_peer_left(f->m, ":1.42");
        RUN_UNTIL(f, rec.removed == 1);
        assert_null(pool_find(&f->m->pool, "alpha"));
        fixture_free(f);
}

static void test_catalog_shutdown_answers_what_waits(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        Reply r[4] = {};

        /* Queued behind each other on the one worker; shutdown takes those
         * not yet started off the queue, and each is answered once. */
        catalog_remove(f->m, "alpha", false, NULL, on_reply, &r[0]);
        catalog_remove(f->m, "beta", false, NULL, on_reply, &r[1]);
        catalog_register(f->m, "x", "/nonexistent", on_reply, &r[2]);
        manager_begin_shutdown(f->m);
        catalog_remove(f->m, "alpha", false, NULL, on_reply, &r[3]);
        assert_true(r[3].done);
        assert_int_equal(r[3].error, -EBUSY);
        for (unsigned i = 0; i < 3; i++)
                run_until(f, &r[i].done);
        fixture_free(f);
}

/* A model is admitted for what it will hold once loaded (each file in
 * pages), never for less: the limit holds after the load too, and
 * Inspect's memory_bytes, counted the same, says whether it fits. */
static void test_admission_counts_pages(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE), pages;
        char path[128];
        struct stat st;
        Outcome o;
        Request *req;

        snprintf(path, sizeof path, "%s/alpha/model.safetensors", f->dir);
        assert_int_equal(stat(path, &st), 0);
        pages = ((uint64_t) st.st_size + page - 1) / page * page;
        assert_true(pages > (uint64_t) st.st_size);   /* the header makes it uneven */

        f->m->pool.memory_limit = (uint64_t) st.st_size;
        req = submit(f, REQUEST_LOAD, "alpha", NULL, &o);
        run_until(f, &o.completed);
        assert_int_equal(o.error, -ENOSPC);
        request_unref(req);

        f->m->pool.memory_limit = pages;
        assert_int_equal(load(f, "alpha")->memory_bytes, pages);
        assert_true(pool_memory_used(&f->m->pool) <= f->m->pool.memory_limit);
        fixture_free(f);
}

/* A fixture of tests/fixtures/bert copied into the store as name, with a
 * tokenizer.json of ids within its vocabulary. */
static void copy_bert(Fixture *f, const char *fixture, const char *name, unsigned vocab_size) {
        _cleanup_free_ char *command = NULL, *path = NULL, *json = id_tokenizer_json(vocab_size);
        FILE *out;

        assert_true(asprintf(&command, "cp -r '" MPOOL_TESTS_DIR "/fixtures/bert/%s' '%s/%s'", fixture, f->dir,
                             name) > 0);
        assert_int_equal(system(command), 0);
        assert_true(asprintf(&path, "%s/%s/tokenizer.json", f->dir, name) > 0);
        out = fopen(path, "we");
        assert_non_null(out);
        assert_true(fputs(json, out) >= 0);
        assert_int_equal(fclose(out), 0);
}

static int load_in(Fixture *f, const char *name, Precision precision) {
        Outcome o;
        Request *req;

        memset(&o, 0, sizeof o);
        assert_int_equal(request_new(REQUEST_LOAD, name, NULL, on_complete, &o, &req), 0);
        req->precision = precision;
        manager_submit(f->m, req);
        run_until(f, &o.completed);
        request_unref(req);
        return o.error;
}

/* What a worker does with a lease: the model it runs. */
static void run_leased(const EmbeddingModel *e) {
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *s = NULL;
        _cleanup_free_ float *v = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        const char *text[] = { "t5 t7 t9" };
        size_t lengths[] = { strlen(text[0]) }, dims, failed;
        uint64_t tokens;

        o.prompt_name = "";
        assert_int_equal(embedding_scratch_new(e, &s), 0);
        assert_int_equal(embedding_run(e, s, text, lengths, 1, &o, NULL, NULL, &v, &dims, &tokens, &failed, NULL), 0);
        assert_int_equal(tokens, 3);
        assert_int_equal(dims, embedding_model_dimensions(e));
}

/* A runnable model: made so by its load, in the precision asked, its own
 * memory charged, its mappings let go once converted, and alive as long
 * as its weights, past an unload while a worker holds a lease. */
static void test_runnable_model(void **state) {
        Fixture *f = fixture_new("1G", 1, 4);
        PoolModel *bare, *bf16, *alpha;
        ModelWeights *weights;
        EmbeddingModel *e;
        const char *reason;
        Outcome o;
        Request *req;
        int error;

        assert_int_equal(blas_init(NULL), 0);
        copy_bert(f, "f32-bare", "bare", 300);
        copy_bert(f, "bf16-mean-normalize-prompts", "bf16", 310);

        /* F32 in f32: used where it is mapped. */
        assert_int_equal(load_in(f, "bare", _PRECISION_INVALID), 0);
        bare = pool_find(&f->m->pool, "bare");
        e = model_embedding(bare);
        assert_non_null(e);
        assert_int_equal(model_kind(bare, NULL, NULL), MODEL_KIND_EMBEDDING);
        assert_int_equal(model_precision(bare), PRECISION_F32);
        assert_true(embedding_model_needs_mappings(e));
        assert_int_equal(bare->charged_bytes, embedding_model_bytes(e));
        assert_int_equal(bare->memory_bytes, 160 * 1024 + embedding_model_bytes(e));

        /* Leased, unloaded: the model and its mappings stay until the
         * lease goes. */
        assert_int_equal(model_lease(f->m, bare, &weights), 0);
        assert_ptr_equal(weights->embedding, e);
        req = submit(f, REQUEST_UNLOAD, "bare", NULL, &o);
        assert_false(o.completed);
        assert_null(model_embedding(bare));
        run_leased(weights->embedding);
        model_unlease(f->m, bare, weights);
        assert_true(o.completed);
        assert_int_equal(bare->memory_bytes, 0);
        assert_int_equal(model_precision(bare), _PRECISION_INVALID);
        request_unref(req);

        /* BF16 in q8: every weight converted, the file no longer mapped. */
        assert_int_equal(load_in(f, "bf16", PRECISION_Q8), 0);
        bf16 = pool_find(&f->m->pool, "bf16");
        e = model_embedding(bf16);
        assert_non_null(e);
        assert_int_equal(model_precision(bf16), PRECISION_Q8);
        assert_false(embedding_model_needs_mappings(e));
        assert_int_equal(bf16->memory_bytes, embedding_model_bytes(e));
        assert_int_equal(bf16->charged_bytes, embedding_model_bytes(e));
        assert_int_equal(model_lease(f->m, bf16, &weights), 0);
        assert_int_equal(weights->n_mappings, 1);
        assert_null(weights->mappings[0].address);
        assert_true(weights->mappings[0].fd >= 0);
        /* The file's changes are still followed, at no cost. */
        models_measure_resident(f->m);
        assert_int_equal(bf16->memory_bytes, embedding_model_bytes(e));

        /* Another precision while it is loaded: unload first. */
        assert_int_equal(load_in(f, "bf16", PRECISION_F16), -EBUSY);
        assert_int_equal(load_in(f, "bf16", PRECISION_Q8), 0);
        assert_int_equal(load_in(f, "bf16", _PRECISION_INVALID), 0);
        model_unload(f->m, bf16, MPOOL_REASON_REQUEST);
        run_leased(weights->embedding);
        model_unlease(f->m, bf16, weights);
        assert_int_equal(bf16->state, MODEL_AVAILABLE);

        /* No config.json: held as weights, and no precision applies. */
        assert_int_equal(load_in(f, "alpha", PRECISION_Q8), -EOPNOTSUPP);
        alpha = pool_find(&f->m->pool, "alpha");
        assert_int_equal(model_kind(alpha, &error, &reason), MODEL_KIND_WEIGHTS);
        assert_int_equal(error, -EOPNOTSUPP);
        assert_non_null(strstr(reason, "alpha: there is no config.json"));
        assert_int_equal(load_in(f, "alpha", _PRECISION_INVALID), 0);
        assert_null(model_embedding(alpha));
        assert_int_equal(alpha->charged_bytes, 0);

        fixture_free(f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_load_and_unload),
                cmocka_unit_test(test_unknown_model_is_forgotten),
                cmocka_unit_test(test_lease_announces_expires),
        cmocka_unit_test(test_global_use_announces_every_expiry),
        cmocka_unit_test(test_unload_waits_for_users),
                cmocka_unit_test(test_charges_count_against_the_limit),
                cmocka_unit_test(test_acquire_and_peer_leaving),
                cmocka_unit_test(test_pinned_and_unload_all),
                cmocka_unit_test(test_cancel_during_load),
                cmocka_unit_test(test_queue_full_is_busy),
                cmocka_unit_test(test_chained_requests),
                cmocka_unit_test(test_completion_loading_a_failed_name_again),
                cmocka_unit_test(test_error_is_bounded),
                cmocka_unit_test(test_shutdown_completes_waiters_of_unloading_model),
                cmocka_unit_test(test_unload_off_the_loop),
                cmocka_unit_test(test_unload_without_force_keeps_pinned_load),
                cmocka_unit_test(test_requeued_load_keeps_its_options),
                cmocka_unit_test(test_store_watch_announces_and_forgets),
                cmocka_unit_test(test_store_watch_keeps_loaded_model_until_unloaded),
                cmocka_unit_test(test_store_watch_model_back_before_unload_stays),
                cmocka_unit_test(test_catalog_register_and_remove),
                cmocka_unit_test(test_catalog_remove_waits_for_users_and_refuses_loads),
                cmocka_unit_test(test_catalog_shutdown_answers_what_waits),
                cmocka_unit_test(test_load_of_removed_held_model_leaves_no_error),
                cmocka_unit_test(test_admission_counts_pages),
                cmocka_unit_test(test_runnable_model),
        };

        log_set_max_level(LOG_WARNING);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
