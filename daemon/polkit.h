/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <systemd/sd-bus.h>

/* Authorization of D-Bus calls with polkit, without ever blocking the event
 * loop: the check is an asynchronous CheckAuthorization call to polkitd for
 * the caller's bus name, and the method call waits in a registry meanwhile.
 * When polkit answers, the call is put back into the bus's read queue
 * (sd_bus_enqueue_for_read), so its method handler runs a second time from
 * the start, re-reading its arguments and the daemon's current state, and
 * this time learns the answer. A handler therefore asks before it changes
 * anything:
 *
 *         r = polkit_verify_async(m->polkit, call, POLKIT_ACTION_LOAD, details, error);
 *         if (r < 0)
 *                 return r;       // denied or failed; *error says why
 *         if (r == 0)
 *                 return 1;       // asked polkit; we will be called again
 *         ... authorized: do the work and reply ...
 *
 * Note the "return 1" (handled, the reply comes later): a handler that
 * returns 0 without replying makes sd-bus answer UnknownMethod at once.
 *
 * A call that needs several actions asks for each in turn; every answer is
 * remembered for that call until it has been dispatched again without
 * starting a new check, so asking again for an action already answered
 * gives the same answer without asking polkit twice.
 *
 * A call whose sender leaves the bus while polkit is deciding is dropped:
 * its handler never runs again. The bus must be attached to an event loop,
 * at a priority above SD_EVENT_PRIORITY_IDLE, before the registry is made. */

#define POLKIT_ACTION_LOAD          "org.mpool.load"
#define POLKIT_ACTION_CONFIGURE     "org.mpool.configure"
#define POLKIT_ACTION_MANAGE_MODELS "org.mpool.manage-models"

/* Calls waiting for polkit, per sender and in all; beyond them a call fails
 * with org.mpool.Error.LimitsExceeded. The total stays below the system
 * bus's default max_replies_per_connection (128), which bounds the
 * CheckAuthorization calls the daemon can have under way; should the bus
 * refuse one anyway, the caller gets LimitsExceeded too. */
#define POLKIT_CALLS_PER_PEER_MAX 16U
#define POLKIT_CALLS_MAX 96U
/* Actions one call may ask for, and key/value pairs of details per action. */
#define POLKIT_ACTIONS_PER_CALL_MAX 8U
#define POLKIT_DETAILS_MAX 8U

typedef struct PolkitRegistry PolkitRegistry;

/* With enabled false no call is ever checked (a private or session bus has
 * no polkit) and bus may be NULL. -EINVAL when enabled and the bus is not
 * attached to an event loop. */
int polkit_registry_new(sd_bus *bus, bool enabled, PolkitRegistry **ret);
/* Calls still waiting for polkit are dropped without a reply; their callers
 * get one from the bus when the daemon disconnects. */
PolkitRegistry *polkit_registry_free(PolkitRegistry *registry);
static inline void polkit_registry_freep(PolkitRegistry **registry) {
        polkit_registry_free(*registry);
}

/* 1: authorized, go on. 0: a check is under way; the handler must return 1
 * without replying (see above). <0: *error is set: AccessDenied,
 * InteractiveAuthorizationRequired (authentication would succeed if the
 * caller allowed interaction), AccessDenied saying polkit could not be
 * asked, or org.mpool.Error.LimitsExceeded (too many calls waiting for
 * polkit). Always 1 when the registry is disabled.
 *
 * details: NULL, or key, value, ..., NULL (at most POLKIT_DETAILS_MAX pairs),
 * passed to polkit (e.g. "model", name); a different action or different
 * details for the same call is a check of its own. The subject is the
 * caller's bus name; interaction is allowed iff the call allows it. */
int polkit_verify_async(PolkitRegistry *registry, sd_bus_message *call, const char *action,
                        const char *const *details, sd_bus_error *error);

/* Calls the registry holds: waiting for polkit or answered and queued for
 * their second dispatch. */
unsigned polkit_registry_n_calls(const PolkitRegistry *registry);
