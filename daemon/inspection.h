/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "manager.h"
#include "pull-process.h"
#include "time-util.h"

/* Inspect: what a Pull of a repository would fetch and what the model
 * would take in memory, asked of the hub without downloading the weights,
 * on the loop thread and without D-Bus. Each inspection runs its own
 * `mpool-pull --inspect` helper (pull/PROTOCOL.md), started from the loop
 * thread so that PR_SET_PDEATHSIG ties it to the daemon, with the token of
 * the call or of [Hub] TokenFile= on a pipe as Pull does.
 *
 * Any local user may inspect (it is open like Status), and each one makes
 * the daemon reach the network, so inspections are bounded: at most
 * INSPECTIONS_MAX run at once, each counts as a waiting call of its caller
 * (peer.h's per-peer bound), a helper still running after the timeout is
 * killed, and the inspections of a caller that leaves the bus are stopped.
 * Inspections of one repository are not joined: each caller may bring a
 * token of its own. */

#define INSPECTIONS_MAX 4U
/* Generous: the helper retries a failing transfer for about half a minute
 * and aborts one slower than 1 KiB/s for a minute, so a slow but working
 * hub finishes well within it. */
#define INSPECTION_TIMEOUT_USEC (5 * 60 * USEC_PER_SEC)

typedef struct InspectionResult {
        const PullPlan *plan;                 /* commit, the files a pull would fetch, their sizes and sum */
        const PullInspection *weights;        /* tensors, parameters, dtypes, memory_bytes */
        uint64_t memory_limit;                /* MemoryLimit now */
        uint64_t memory_pinned;               /* what pinned models hold or are admitted for */
        /* memory_bytes fits beside the pinned models: every other model may
         * be unloaded to make room, pinned ones may not. */
        bool fits;
} InspectionResult;

/* The answer: error 0 and the result (valid during the call only), or a
 * negative errno and a message for people: -EREMOTEIO the helper failed
 * (the message names its failure kind: not-found, unauthorized, network,
 * protocol, unsupported, …, or that the token file cannot be read);
 * -ETIME it took longer than the timeout; -ECANCELED the caller left the
 * bus; -EBUSY the daemon is shutting down; -ENOMEM. */
typedef void (*InspectionReply)(int error, const char *message, const InspectionResult *result, void *userdata);

/* Starts inspecting repo (a valid model name) at revision (NULL: main).
 * token: NULL for the one of TokenFile=, if any. owner: the caller's bus
 * name, or NULL. reply is called exactly once: later, or before this
 * returns 0 when the token file cannot be read. Returns 0, or a negative errno when nothing was started (reply not
 * called): -EINVAL (bad revision), -EBUSY (INSPECTIONS_MAX are running, or
 * shutdown), -EUSERS (the owner has its most calls waiting already, or too
 * many peers are known), or why the helper could not be started. */
int inspection_start(Manager *m, const char *repo, const char *revision, const char *token, const char *owner,
                     InspectionReply reply, void *userdata);

unsigned inspections_running(Manager *m);

/* The owner left the bus: its helpers are killed, its replies get -ECANCELED. */
void inspections_drop_owner(Manager *m, const char *owner);

/* Shutdown: every helper is killed, every reply gets -EBUSY. */
void inspections_stop_all(Manager *m);
