/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* When a model's workers grow and when they cool down: pure policy, no
 * threads, no clock but the one it is given, so it is unit-tested alone.
 *
 * A request goes to an idle worker. When every worker is busy and requests
 * wait, one more worker starts, up to max_workers (the caller then also
 * checks that the memory limit allows its buffers). Requests beyond
 * max_queued waiting are refused at once.
 *
 * Cooldown: once every worker of the model is idle, the one idle the
 * longest stops cooldown_usec later, and one more each cooldown_usec after
 * that (4 → 3 → 2 → 1 → 0 over four intervals); any request resets the
 * countdown. Whether the model stays loaded is the keep-alive's business,
 * not this one's. */

typedef struct WorkerPolicy {
        unsigned max_workers;         /* ≥ 1 */
        unsigned max_queued;          /* requests waiting for a worker */
        uint64_t cooldown_usec;       /* ≥ 1 */
} WorkerPolicy;

typedef struct WorkerCounts {
        unsigned workers;             /* running, not retiring */
        unsigned busy;                /* of them, running a request */
        unsigned waiting;             /* requests beyond what the workers run (workpool_waiting) */
        uint64_t idle_since_usec;     /* when the last request finished (monotonic) */
        uint64_t retired_usec;        /* when cooldown last stopped a worker; 0: not since that */
} WorkerCounts;

/* Whether one more request may wait. */
bool worker_policy_admit(const WorkerPolicy *p, const WorkerCounts *c);
/* Whether to start a worker for the requests that wait. */
bool worker_policy_grow(const WorkerPolicy *p, const WorkerCounts *c);
/* When the next worker is due to stop, or UINT64_MAX when none is (busy,
 * requests waiting, or no worker left). */
uint64_t worker_policy_next_retirement(const WorkerPolicy *p, const WorkerCounts *c);
