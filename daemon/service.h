/* SPDX-License-Identifier: MIT */
#pragma once

#include "manager.h"

/* The daemon as a service around the model core: configuration, the
 * store's scan at start-up and its changes later, the idle timer, memory
 * pressure and the memory limit, Preload=, peers leaving, and shutdown. */

/* Applies the configuration: pool limits resolved against the host's memory. */
int manager_configure(Manager *m, const Config *config);
int manager_scan_store(Manager *m);
/* Needs m->event. Starts the workers, the idle timer, the memory watch and
 * the store's watch (models added or removed by hand). */
int manager_start(Manager *m);
Manager *manager_free(Manager *m);
static inline void manager_freep(Manager **m) {
        *m = manager_free(*m);
}

/* Unloads every model and cancels every load; the loop exits once every
 * worker and every user has let go. */
void manager_begin_shutdown(Manager *m);
/* Starts the Preload= models as the workers allow; again whenever work is
 * done, until every one has been started. */
void manager_preload(Manager *m);
/* A bus peer left: its holds and waiting requests are dropped. */
void manager_peer_left(Manager *m, const char *name);
/* The bus connection is gone: unload and stop, reporting failure. */
void manager_bus_lost(Manager *m);

/* Unloads idle models, least recently used first, until the pool fits its
 * limit (after the limit was lowered, or the memory total shrank). */
void manager_enforce_limit(Manager *m, const char *reason);
/* Run-time changes of the pool's settings. -EBUSY: the new limit is below
 * what pinned models hold (ret_needed gets that figure). Lowering the limit
 * unloads idle models, least recently used first, until the pool fits. */
int manager_set_memory_limit(Manager *m, uint64_t limit, uint64_t *ret_needed);
void manager_set_idle_timeout(Manager *m, int64_t idle_timeout_sec);
