/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* Threads working through a bounded queue of items, so that the event loop
 * never waits on the file system or on computation.
 * An item is handed over with its inputs fixed; its run function, on a
 * worker thread, writes only the item's own result fields; then the item is
 * posted back through one pipe that the loop watches, which orders those
 * writes before the loop reads them. The loop keeps sole ownership of
 * everything else: workers take no locks but the queue's own.
 *
 * Loading uses one such pool with a fixed number of threads. A model that
 * computes has its own, elastic: the owner adds a worker, with state of its
 * own (scratch buffers) handed to every item that worker runs, when work
 * waits, and retires the least recently used idle one when the pool cooled
 * down; the retired worker's state comes back to the owner through the
 * loop. */

typedef struct WorkPool WorkPool;
typedef struct WorkItem WorkItem;

/* On a worker thread. Checks work_item_cancelled() at points where stopping
 * is cheap, and reports progress with work_item_progress(). */
typedef void (*work_run_t)(WorkItem *item);
/* On the loop thread, exactly once per item submitted: after run, or
 * instead of it when the item was cancelled while still queued. The
 * callee owns the item again. */
typedef void (*work_done_t)(WorkItem *item, bool ran);
/* On the loop thread: the latest progress a running item reported. */
typedef void (*work_progress_t)(WorkItem *item, uint64_t done, uint64_t total);

struct WorkItem {
        /* Set by the owner before submitting. */
        work_run_t run;
        work_done_t done;
        work_progress_t progress;   /* may be NULL */
        void *userdata;

        /* Set by the worker before run: the state it was added with. */
        void *worker_state;

        /* The one field both sides touch while the item runs. */
        atomic_bool cancelled;

        /* The pool's bookkeeping. */
        WorkPool *pool;
        WorkItem *queue_next;
        bool queued;
};

/* n_threads workers (none: the owner adds them), their state NULL, and at
 * most queue_max items waiting beyond what the workers run. */
int workpool_new(sd_event *event, const char *name, unsigned n_threads, unsigned queue_max, WorkPool **ret);
/* Waits for the workers to finish what they run now and stops them; the
 * retired callback gets back every worker's state. Items still queued are
 * not run and not handed back: the owner drains first (cancel everything,
 * wait until workpool_in_flight() is 0). */
WorkPool *workpool_free(WorkPool *p);

/* On the loop thread, once a retired worker has stopped (or at
 * workpool_free): its state is the owner's again. */
typedef void (*work_retired_t)(void *state, void *userdata);
void workpool_set_retired(WorkPool *p, work_retired_t retired, void *userdata);
/* One more thread, running items with state; it never receives signals. */
int workpool_add_worker(WorkPool *p, void *state);
/* Asks the worker idle the longest to stop: it takes no further item, and
 * its state comes back through the retired callback. -EAGAIN when every
 * worker is busy. */
int workpool_retire_worker(WorkPool *p);

/* -EBUSY when the queue is full; the item is then still the caller's. */
int workpool_submit(WorkPool *p, WorkItem *item);
/* Asks the item to stop. An item still queued is taken off the queue and
 * handed back (done with ran = false) from the loop soon after, never from
 * inside this call. */
void workpool_cancel(WorkPool *p, WorkItem *item);
/* The same for an item still queued only, returning true; one a worker runs
 * already is left to finish (false). */
bool workpool_cancel_queued(WorkPool *p, WorkItem *item);

/* Items submitted and not yet handed back. */
unsigned workpool_in_flight(const WorkPool *p);
/* Whether another submit would be refused. */
bool workpool_full(const WorkPool *p);
/* Workers running or ready to run items (not those asked to retire). */
unsigned workpool_threads(const WorkPool *p);
/* Items that wait because every worker is busy. */
unsigned workpool_waiting(const WorkPool *p);

static inline bool work_item_cancelled(WorkItem *item) {
        return atomic_load(&item->cancelled);
}
/* From the item's run function only. Reports are throttled by the caller. */
void work_item_progress(WorkItem *item, uint64_t done, uint64_t total);
