/* SPDX-License-Identifier: MIT */
/* A model's workers with real threads and a stand-in engine: they grow when
 * requests wait, are charged to the model, refuse beyond the queue's bound,
 * cool down one at a time, and an unload lets running requests finish while
 * queued ones end cancelled. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include <cmocka.h>

#include "lifecycle-fixture.h"
#include "log.h"
#include "model-compute.h"

#define SCRATCH_BYTES (UINT64_C(64) * 1024)

typedef struct Engine {
        unsigned scratches;       /* alive now */
        unsigned made;
} Engine;

static int scratch_new(void *engine, void **ret_scratch, uint64_t *ret_bytes) {
        Engine *e = engine;
        unsigned *id = malloc(sizeof *id);

        if (!id)
                return -ENOMEM;
        *id = ++e->made;
        e->scratches++;
        *ret_scratch = id;
        *ret_bytes = SCRATCH_BYTES;
        return 0;
}

static Engine *current_engine;

static void scratch_free(void *scratch) {
        current_engine->scratches--;
        free(scratch);
}

static const ComputeEngine engine_ops = {
        .scratch_new = scratch_new,
        .scratch_free = scratch_free,
};

typedef struct TestJob {
        ComputeJob job;
        int gate[2];              /* run waits for a byte, or for cancellation */
        atomic_bool started;      /* set by run */
        bool done;
        int error;
        unsigned scratch_id;
} TestJob;

static void run(ComputeJob *job, void *scratch) {
        TestJob *t = container_of(job, TestJob, job);
        char byte;

        t->scratch_id = *(unsigned *) scratch;
        atomic_store(&t->started, true);
        while (!compute_job_cancelled(job)) {
                if (read(t->gate[0], &byte, 1) == 1) {
                        job->tokens = 7;
                        return;
                }
                usleep(1000);
        }
        job->error = -ECANCELED;
}

static void done(ComputeJob *job) {
        TestJob *t = container_of(job, TestJob, job);

        t->done = true;
        t->error = job->error;
        compute_job_done(job);
}

static void job_init(TestJob *t) {
        memset(t, 0, sizeof *t);
        assert_int_equal(pipe2(t->gate, O_CLOEXEC | O_NONBLOCK), 0);
        t->job.run = run;
        t->job.done = done;
}

static void job_release(TestJob *t) {
        assert_int_equal(write(t->gate[1], "x", 1), 1);
}

static void job_close(TestJob *t) {
        close(t->gate[0]);
        close(t->gate[1]);
}

static void run_for(Fixture *f, uint64_t usec) {
        uint64_t end = now_monotonic_usec() + usec;

        while (now_monotonic_usec() < end)
                assert_true(sd_event_run(f->m->event, 10 * USEC_PER_MSEC) >= 0);
}

static ComputeCounts counts_of(PoolModel *model) {
        ComputeCounts c;

        model_compute_counts(model, &c);
        return c;
}

static void wait_counts(Fixture *f, PoolModel *model, unsigned workers, unsigned active, unsigned queued) {
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        for (;;) {
                ComputeCounts c = counts_of(model);

                if (c.workers == workers && c.active == active && c.queued == queued)
                        return;
                if (now_monotonic_usec() >= end)
                        fail_msg("counts %u/%u/%u, expected %u/%u/%u", c.workers, c.active, c.queued, workers,
                                 active, queued);
                assert_true(sd_event_run(f->m->event, 10 * USEC_PER_MSEC) >= 0);
        }
}

static void test_grow_refuse_and_cool_down(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        Engine engine = {};
        TestJob jobs[6];
        PoolModel *alpha;
        uint64_t weights;

        current_engine = &engine;
        f->m->config.max_queued_requests = 2;
        f->m->config.cooldown_sec = 1;
        alpha = load(f, "alpha");
        weights = alpha->memory_bytes;
        model_compute_configure(f->m, alpha, 3);

        /* Three run at once on three workers, each charged; two more wait;
         * the sixth is refused at once. */
        for (unsigned i = 0; i < 5; i++) {
                job_init(&jobs[i]);
                assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &jobs[i].job), 0);
        }
        job_init(&jobs[5]);
        assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &jobs[5].job), -EBUSY);
        wait_counts(f, alpha, 3, 3, 2);
        assert_int_equal(engine.scratches, 3);
        assert_int_equal(alpha->memory_bytes, weights + 3 * SCRATCH_BYTES);
        assert_int_equal(alpha->in_flight, 5);

        for (unsigned i = 0; i < 5; i++) {
                job_release(&jobs[i]);
                run_until(f, &jobs[i].done);
                assert_int_equal(jobs[i].error, 0);
                assert_true(atomic_load(&jobs[i].started));
        }
        assert_int_equal(alpha->tokens_total, 5 * 7);
        assert_int_equal(alpha->in_flight, 0);
        wait_counts(f, alpha, 3, 0, 0);

        /* Cooldown: one per second, 3 → 2 → 1 → 0, the charges given back;
         * the model stays loaded. */
        for (unsigned left = 2;; left--) {
                uint64_t end = now_monotonic_usec() + WAIT_USEC;

                while (counts_of(alpha).workers > left) {
                        assert_true(now_monotonic_usec() < end);
                        assert_true(sd_event_run(f->m->event, 50 * USEC_PER_MSEC) >= 0);
                }
                assert_int_equal(counts_of(alpha).workers, left);
                /* Retired workers come back through the loop. */
                while (engine.scratches > left)
                        assert_true(sd_event_run(f->m->event, 50 * USEC_PER_MSEC) >= 0);
                assert_int_equal(alpha->memory_bytes, weights + left * SCRATCH_BYTES);
                if (left == 0)
                        break;
        }
        assert_int_equal(alpha->state, MODEL_LOADED);

        /* From none, a request starts a worker again. */
        job_init(&jobs[5]);
        assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &jobs[5].job), 0);
        wait_counts(f, alpha, 1, 1, 0);
        job_release(&jobs[5]);
        run_until(f, &jobs[5].done);
        assert_int_equal(jobs[5].error, 0);

        for (unsigned i = 0; i < 6; i++)
                job_close(&jobs[i]);
        fixture_free(f);
        assert_int_equal(engine.scratches, 0);
}

static void test_unload_lets_running_finish_and_cancels_queued(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        Engine engine = {};
        TestJob running, queued;
        PoolModel *alpha;
        Outcome o;
        Request *req;

        current_engine = &engine;
        alpha = load(f, "alpha");
        model_compute_configure(f->m, alpha, 1);
        job_init(&running);
        job_init(&queued);
        assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &running.job), 0);
        assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &queued.job), 0);
        wait_counts(f, alpha, 1, 1, 1);
        /* Taken by the worker, not merely counted as such. */
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC; !atomic_load(&running.started);) {
                assert_true(now_monotonic_usec() < end);
                usleep(1000);
        }

        /* The unload waits for the running one; the queued one ends at once. */
        req = submit(f, REQUEST_UNLOAD, "alpha", NULL, &o);
        run_until(f, &queued.done);
        assert_int_equal(queued.error, -ECANCELED);
        assert_false(atomic_load(&queued.started));
        assert_int_equal(alpha->state, MODEL_UNLOADING);
        assert_false(o.completed);
        /* Not while it runs: a new request is refused. */
        TestJob late;
        job_init(&late);
        assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &late.job), -ESTALE);

        job_release(&running);
        run_until(f, &o.completed);
        assert_true(running.done);
        assert_int_equal(running.error, 0);
        assert_true(o.was_loaded);
        assert_int_equal(alpha->state, MODEL_AVAILABLE);
        assert_int_equal(alpha->memory_bytes, 0);
        request_unref(req);

        /* The worker is freed on the next turns of the loop. */
        run_for(f, 100 * USEC_PER_MSEC);
        assert_int_equal(engine.scratches, 0);

        job_close(&running);
        job_close(&queued);
        job_close(&late);
        fixture_free(f);
}

/* No room for even one worker's scratch: refused before anything queues. */
static void test_no_memory_for_a_worker(void **state) {
        Fixture *f = fixture_new("1G", 2, 4);
        Engine engine = {};
        TestJob job;
        PoolModel *alpha;

        current_engine = &engine;
        alpha = load(f, "alpha");
        f->m->pool.memory_limit = alpha->memory_bytes + SCRATCH_BYTES - 1;
        job_init(&job);
        assert_int_equal(model_compute_submit(f->m, alpha, &engine_ops, &engine, &job.job), -ENOSPC);
        assert_int_equal(engine.scratches, 0);
        assert_int_equal(alpha->in_flight, 0);
        assert_int_equal(counts_of(alpha).workers, 0);
        job_close(&job);
        fixture_free(f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_grow_refuse_and_cool_down),
                cmocka_unit_test(test_unload_lets_running_finish_and_cancels_queued),
                cmocka_unit_test(test_no_memory_for_a_worker),
        };

        log_set_max_level(LOG_WARNING);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
