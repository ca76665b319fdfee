/* SPDX-License-Identifier: MIT */
/* The worker pool with real threads: order, the queue's bound, cancellation
 * of queued and running items, progress. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "macro.h"
#include "time-util.h"
#include "workpool.h"

#define WAIT_USEC (60 * USEC_PER_SEC)

typedef struct TestItem {
        WorkItem item;
        int gate[2];             /* run() waits for a byte, or for cancellation */
        bool ran;
        bool done;
        bool saw_cancel;
        unsigned progress_reports;
        unsigned order;
        void *ran_with;          /* the worker's state */
} TestItem;

static unsigned done_counter;

static void run(WorkItem *item) {
        TestItem *t = (TestItem *) item;
        char byte;

        t->ran_with = item->worker_state;
        work_item_progress(item, 1, 2);
        /* Held until released, checking for cancellation as a loader does. */
        while (!work_item_cancelled(item)) {
                if (read(t->gate[0], &byte, 1) == 1)
                        break;
                usleep(1000);
        }
        t->saw_cancel = work_item_cancelled(item);
}

static void done(WorkItem *item, bool ran) {
        TestItem *t = (TestItem *) item;

        t->done = true;
        t->ran = ran;
        t->order = ++done_counter;
}

static void progress(WorkItem *item, uint64_t n, uint64_t total) {
        ((TestItem *) item)->progress_reports++;
}

static void item_init(TestItem *t) {
        memset(t, 0, sizeof *t);
        assert_int_equal(pipe2(t->gate, O_CLOEXEC | O_NONBLOCK), 0);
        t->item.run = run;
        t->item.done = done;
        t->item.progress = progress;
}

static void item_done(TestItem *t) {
        close(t->gate[0]);
        close(t->gate[1]);
}

static void release(TestItem *t) {
        assert_int_equal(write(t->gate[1], "x", 1), 1);
}

static void run_until(sd_event *e, const bool *flag) {
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        while (!*flag) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        }
}

static void test_queue_bound_and_cancellation(void **state) {
        sd_event *e = NULL;
        WorkPool *p = NULL;
        TestItem a, b, c, d;

        done_counter = 0;
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(workpool_new(e, "test", 1, 2, &p), 0);
        item_init(&a);
        item_init(&b);
        item_init(&c);
        item_init(&d);

        /* One runs, two wait: the next is refused and stays the caller's. */
        assert_int_equal(workpool_submit(p, &a.item), 0);
        assert_int_equal(workpool_submit(p, &b.item), 0);
        assert_int_equal(workpool_submit(p, &c.item), 0);
        assert_true(workpool_full(p));
        assert_int_equal(workpool_submit(p, &d.item), -EBUSY);
        assert_null(d.item.pool);
        assert_int_equal(workpool_in_flight(p), 3);

        /* a runs (its progress arrives); b and c are cancelled while queued:
         * handed back without running, in the order cancelled, and never
         * from inside the call. They no longer take a place. */
        while (a.progress_reports == 0)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        workpool_cancel(p, &c.item);
        workpool_cancel(p, &b.item);
        assert_false(b.done);
        assert_false(c.done);
        assert_false(workpool_full(p));
        assert_int_equal(workpool_submit(p, &d.item), 0);
        run_until(e, &b.done);
        assert_true(c.done);
        assert_false(b.ran);
        assert_false(c.ran);
        assert_int_equal(c.order, 1);
        assert_int_equal(b.order, 2);
        assert_int_equal(b.progress_reports + c.progress_reports, 0);

        /* A running item sees its cancellation and comes back as run. */
        workpool_cancel(p, &a.item);
        run_until(e, &a.done);
        assert_true(a.ran);
        assert_true(a.saw_cancel);

        /* The next in line runs to the end when released. */
        while (d.progress_reports == 0)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        release(&d);
        run_until(e, &d.done);
        assert_true(d.ran);
        assert_false(d.saw_cancel);
        assert_int_equal(workpool_in_flight(p), 0);

        workpool_free(p);
        sd_event_unref(e);
        item_done(&a);
        item_done(&b);
        item_done(&c);
        item_done(&d);
}

static void test_threads_run_at_once(void **state) {
        sd_event *e = NULL;
        WorkPool *p = NULL;
        TestItem items[3];

        done_counter = 0;
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(workpool_new(e, "test", 3, 0, &p), 0);
        assert_int_equal(workpool_threads(p), 3);
        for (size_t i = 0; i < ELEMENTSOF(items); i++) {
                item_init(&items[i]);
                assert_int_equal(workpool_submit(p, &items[i].item), 0);
        }
        /* All three report progress while none has been released. */
        for (size_t i = 0; i < ELEMENTSOF(items); i++)
                while (items[i].progress_reports == 0)
                        assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        for (size_t i = 0; i < ELEMENTSOF(items); i++)
                release(&items[i]);
        for (size_t i = 0; i < ELEMENTSOF(items); i++) {
                run_until(e, &items[i].done);
                assert_true(items[i].ran);
                item_done(&items[i]);
        }
        workpool_free(p);
        sd_event_unref(e);
}

typedef struct Retired {
        void *states[8];
        unsigned n;
} Retired;

static void on_retired(void *state, void *userdata) {
        Retired *r = userdata;

        assert_true(r->n < ELEMENTSOF(r->states));
        r->states[r->n++] = state;
}

static void run_item(sd_event *e, WorkPool *p, TestItem *t) {
        item_init(t);
        assert_int_equal(workpool_submit(p, &t->item), 0);
        release(t);
        run_until(e, &t->done);
        assert_true(t->ran);
        item_done(t);
}

/* Workers added with state of their own, each item run with its worker's
 * state; the one idle the longest retires first and its state comes back. */
static void test_elastic_workers(void **state) {
        int first = 1, second = 2;
        sd_event *e = NULL;
        WorkPool *p = NULL;
        Retired retired = {};
        TestItem busy[2], waiting, later;

        done_counter = 0;
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(workpool_new(e, "elastic", 0, 4, &p), 0);
        workpool_set_retired(p, on_retired, &retired);
        assert_int_equal(workpool_threads(p), 0);
        assert_int_equal(workpool_retire_worker(p), -EAGAIN);

        /* Without workers, an item waits. */
        item_init(&busy[0]);
        assert_int_equal(workpool_submit(p, &busy[0].item), 0);
        assert_int_equal(workpool_waiting(p), 1);
        assert_int_equal(workpool_add_worker(p, &first), 0);
        assert_int_equal(workpool_waiting(p), 0);
        while (busy[0].progress_reports == 0)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        assert_ptr_equal(busy[0].ran_with, &first);

        /* All busy: a second item waits until a second worker comes. */
        item_init(&busy[1]);
        assert_int_equal(workpool_submit(p, &busy[1].item), 0);
        assert_int_equal(workpool_waiting(p), 1);
        assert_int_equal(workpool_retire_worker(p), -EAGAIN);
        assert_int_equal(workpool_add_worker(p, &second), 0);
        while (busy[1].progress_reports == 0)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        assert_ptr_equal(busy[1].ran_with, &second);
        assert_int_equal(workpool_threads(p), 2);

        /* The second finishes first, then the first: the second has been
         * idle the longest and goes first. */
        release(&busy[1]);
        run_until(e, &busy[1].done);
        usleep(2000);
        release(&busy[0]);
        run_until(e, &busy[0].done);
        item_done(&busy[0]);
        item_done(&busy[1]);

        assert_int_equal(workpool_retire_worker(p), 0);
        assert_int_equal(workpool_threads(p), 1);
        while (retired.n < 1)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        assert_ptr_equal(retired.states[0], &second);

        /* The one left serves on. */
        run_item(e, p, &waiting);
        assert_ptr_equal(waiting.ran_with, &first);

        assert_int_equal(workpool_retire_worker(p), 0);
        assert_int_equal(workpool_threads(p), 0);
        assert_int_equal(workpool_retire_worker(p), -EAGAIN);
        while (retired.n < 2)
                assert_true(sd_event_run(e, 100 * USEC_PER_MSEC) >= 0);
        assert_ptr_equal(retired.states[1], &first);

        /* And a worker added again after cooling down to none. */
        assert_int_equal(workpool_add_worker(p, &second), 0);
        run_item(e, p, &later);
        assert_ptr_equal(later.ran_with, &second);

        /* Freeing the pool gives back the states of the workers left. */
        workpool_free(p);
        assert_int_equal(retired.n, 3);
        assert_ptr_equal(retired.states[2], &second);
        sd_event_unref(e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_queue_bound_and_cancellation),
                cmocka_unit_test(test_threads_run_at_once),
                cmocka_unit_test(test_elastic_workers),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
