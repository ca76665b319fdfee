/* SPDX-License-Identifier: MIT */
/* Worker growth and cooldown, driven by an injected clock: a small model of
 * one model's workers that follows the policy the way the daemon does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "macro.h"
#include "worker-policy.h"

#define SEC(n) ((uint64_t) (n) * USEC_PER_SEC)

static const WorkerPolicy policy = { .max_workers = 4, .max_queued = 3, .cooldown_usec = SEC(60) };

/* Submits a request as the daemon would: refused when too many wait, else
 * it waits and a worker starts if the policy says so; a worker takes it. */
static bool submit(WorkerCounts *c) {
        if (!worker_policy_admit(&policy, c))
                return false;
        if (c->busy < c->workers) {     /* an idle worker takes it */
                c->busy++;
                return true;
        }
        c->waiting++;
        if (worker_policy_grow(&policy, c)) {
                c->workers++;
                c->busy++;
                c->waiting--;
        }
        return true;
}

static void finish(WorkerCounts *c, uint64_t now) {
        assert_true(c->busy > 0);
        if (c->waiting > 0)
                c->waiting--;   /* the worker takes the next one */
        else
                c->busy--;
        c->idle_since_usec = now;
        c->retired_usec = 0;
}

/* Runs the clock from now to until, stopping workers when they are due;
 * returns the times they stopped. */
static unsigned cool_down(WorkerCounts *c, uint64_t now, uint64_t until, uint64_t *stopped, unsigned max) {
        unsigned n = 0;

        for (;;) {
                uint64_t due = worker_policy_next_retirement(&policy, c);

                if (due == UINT64_MAX || due > until)
                        return n;
                assert_true(due >= now);   /* never in the past: nothing is early */
                now = due;
                c->workers--;
                c->retired_usec = now;
                assert_true(n < max);
                stopped[n++] = now;
        }
}

static void test_grow_under_load_then_cool_down_one_per_interval(void **state) {
        WorkerCounts c = {};
        uint64_t stopped[8];

        /* Nothing runs: no worker, none due to stop. */
        assert_int_equal(worker_policy_next_retirement(&policy, &c), UINT64_MAX);

        /* Six requests at once: four workers, two wait; the seventh waits
         * too, the eighth is refused (three may wait). */
        for (unsigned i = 0; i < 7; i++)
                assert_true(submit(&c));
        assert_int_equal(c.workers, 4);
        assert_int_equal(c.busy, 4);
        assert_int_equal(c.waiting, 3);
        assert_false(submit(&c));

        /* Busy: nothing cools down however long it takes. */
        assert_int_equal(worker_policy_next_retirement(&policy, &c), UINT64_MAX);

        /* All finish at t = 10 s. */
        for (unsigned i = 0; i < 7; i++)
                finish(&c, SEC(10));
        assert_int_equal(c.busy, 0);
        assert_int_equal(c.waiting, 0);
        assert_int_equal(c.workers, 4);

        /* 4 → 3 → 2 → 1 → 0, one per 60 s, the first 60 s after the last
         * request. */
        assert_int_equal(cool_down(&c, SEC(10), SEC(1000), stopped, 8), 4);
        assert_int_equal(stopped[0], SEC(70));
        assert_int_equal(stopped[1], SEC(130));
        assert_int_equal(stopped[2], SEC(190));
        assert_int_equal(stopped[3], SEC(250));
        assert_int_equal(c.workers, 0);
        assert_int_equal(worker_policy_next_retirement(&policy, &c), UINT64_MAX);

        /* From none, a request starts one worker again. */
        assert_true(submit(&c));
        assert_int_equal(c.workers, 1);
}

static void test_a_request_resets_the_countdown(void **state) {
        WorkerCounts c = {};
        uint64_t stopped[8];

        for (unsigned i = 0; i < 3; i++)
                assert_true(submit(&c));
        for (unsigned i = 0; i < 3; i++)
                finish(&c, SEC(0));
        assert_int_equal(c.workers, 3);

        /* One stops at 60 s; a request at 100 s puts the next off until
         * 60 s after it ended. */
        assert_int_equal(cool_down(&c, SEC(0), SEC(100), stopped, 8), 1);
        assert_int_equal(stopped[0], SEC(60));
        assert_true(submit(&c));
        assert_int_equal(c.workers, 2);   /* an idle worker took it: none started */
        assert_int_equal(worker_policy_next_retirement(&policy, &c), UINT64_MAX);
        finish(&c, SEC(101));
        assert_int_equal(worker_policy_next_retirement(&policy, &c), SEC(161));
        assert_int_equal(cool_down(&c, SEC(101), SEC(10000), stopped, 8), 2);
        assert_int_equal(stopped[0], SEC(161));
        assert_int_equal(stopped[1], SEC(221));
}

static void test_bounds(void **state) {
        const WorkerPolicy one = { .max_workers = 1, .max_queued = 0, .cooldown_usec = 1 };
        WorkerCounts c = { .workers = 1, .busy = 1 };

        /* Nothing may wait: a busy single worker refuses at once. */
        assert_false(worker_policy_admit(&one, &c));
        c.waiting = 1;
        assert_false(worker_policy_grow(&one, &c));

        /* A clock near its end does not wrap round to "due now". */
        c = (WorkerCounts) { .workers = 1, .idle_since_usec = UINT64_MAX - 1 };
        assert_int_equal(worker_policy_next_retirement(&policy, &c), UINT64_MAX);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_grow_under_load_then_cool_down_one_per_interval),
                cmocka_unit_test(test_a_request_resets_the_countdown),
                cmocka_unit_test(test_bounds),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
