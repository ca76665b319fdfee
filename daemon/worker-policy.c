/* SPDX-License-Identifier: MIT */
#include <assert.h>

#include "macro.h"
#include "worker-policy.h"

bool worker_policy_admit(const WorkerPolicy *p, const WorkerCounts *c) {
        assert(p && c);

        return c->waiting < p->max_queued;
}

bool worker_policy_grow(const WorkerPolicy *p, const WorkerCounts *c) {
        assert(p && c);

        return c->waiting > 0 && c->workers < p->max_workers;
}

uint64_t worker_policy_next_retirement(const WorkerPolicy *p, const WorkerCounts *c) {
        uint64_t since;

        assert(p && c);
        assert(p->cooldown_usec > 0);

        if (c->workers == 0 || c->busy > 0 || c->waiting > 0)
                return UINT64_MAX;
        /* The countdown runs from the last request, or from the last worker
         * stopped since then: one per interval. */
        since = MAX(c->idle_since_usec, c->retired_usec);
        if (since > UINT64_MAX - p->cooldown_usec)
                return UINT64_MAX;
        return since + p->cooldown_usec;
}
