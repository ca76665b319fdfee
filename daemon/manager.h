/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "loader.h"
#include "memory-monitor.h"
#include "polkit.h"
#include "pool.h"

/* The daemon's state, owned by the event loop thread alone: the pool and
 * what each model holds at run time, the bus peers and their holds, the
 * loader threads' jobs. Bus handlers (bus-manager.c, bus-model.c) call in
 * here; nothing here parses D-Bus input. */

typedef enum WaiterKind {
        WAITER_LOAD,      /* replies with the model's object path */
        WAITER_ACQUIRE,   /* takes a hold for the caller, replies empty */
        WAITER_UNLOAD,    /* replies was_loaded once the memory is back */
} WaiterKind;

/* An UnloadAll that waits for the loads it cancelled to let go of their
 * memory: its reply is sent when the last of them has. */
typedef struct UnloadBatch {
        sd_bus_message *reply;
        unsigned n_pending;
} UnloadBatch;

typedef struct Waiter {
        sd_bus_message *call;
        WaiterKind kind;
        UnloadBatch *batch;   /* WAITER_UNLOAD of an UnloadAll, else NULL */
} Waiter;

/* Per-model run-time data beside the policy's PoolModel (its userdata). */
typedef struct Manager Manager;

typedef struct ModelRuntime {
        Manager *manager;
        LoaderJob *job;               /* under way on a loader thread, or NULL */
        Waiter *waiters;
        size_t n_waiters;
        LoaderMapping *mappings;      /* what the model holds while loaded */
        size_t n_mappings;
        bool locked;
        bool announced;               /* its object exists on the bus */
        uint64_t load_started_usec;   /* monotonic */
        uint64_t loaded_at_realtime;
        uint64_t progress_emitted_usec;
        uint64_t progress_emitted_bytes;
        bool progress_started;
        bool cancel_requested;
        /* What callers asked for while the model was not loaded yet; applied
         * when the load succeeds, dropped when it fails. */
        bool pin_requested;
        int64_t keep_alive_requested; /* KEEP_ALIVE_DEFAULT: nothing asked */
} ModelRuntime;

/* Bounds on what callers can make the daemon keep. */
#define WAITERS_PER_MODEL_MAX 1024U
#define PEERS_MAX 4096U
#define HOLDS_PER_PEER_MAX 1024U
#define PENDING_CALLS_PER_PEER_MAX 64U

typedef struct Peer Peer;

struct Manager {
        sd_event *event;
        sd_bus *bus;
        Config config;
        Pool pool;
        Loader *loader;
        MemoryMonitor *memory_monitor;
        MemoryInfo memory;
        uint64_t memory_available_min;
        sd_event_source *idle_timer;
        sd_bus_slot *object_manager_slot;
        sd_bus_slot *peer_left_slot;
        size_t preload_next;          /* Preload= entries started so far */
        bool bus_lost;
        PolkitRegistry *polkit;
        Peer *peers;
        unsigned n_peers;
        uint64_t started_realtime;
        uint64_t started_monotonic;
        bool shutting_down;
};

int manager_new(Manager **ret);
Manager *manager_free(Manager *m);
/* Applies the configuration: pool limits resolved against the host's memory. */
int manager_configure(Manager *m, const Config *config);
int manager_scan_store(Manager *m);
int manager_start(Manager *m);
void manager_begin_shutdown(Manager *m);
/* Starts the Preload= models as load slots allow; called again whenever a
 * load ends, until every one has been started. */
void manager_preload(Manager *m);
/* A unique name left the bus: its holds and waiting calls are dropped. */
void manager_peer_left(Manager *m, const char *name);
/* The bus connection is gone: unload and stop, reporting failure. */
void manager_bus_lost(Manager *m);

uint64_t manager_realtime(const Manager *m, uint64_t monotonic);

/* Loads the model (or joins the load under way) and queues the waiter, or
 * completes it at once when the model is loaded. The waiter's call gets a
 * reply either way. keep_alive_sec KEEP_ALIVE_DEFAULT leaves it as it is. */
int manager_request_load(Manager *m, const char *name, int64_t keep_alive_sec, bool pin,
                         sd_bus_message *call, WaiterKind kind, sd_bus_error *error);
/* Returns 1 when it unloaded (or started cancelling), 0 when not loaded. The
 * call is replied to here (or later, once a cancelled load has stopped). */
int manager_request_unload(Manager *m, const char *name, bool force, sd_bus_message *call,
                           sd_bus_error *error);
void manager_unload(Manager *m, PoolModel *model, const char *reason);
/* Unloads every loaded model (pinned ones only with force) and cancels loads
 * under way, replying to call with the names of the models unloaded once
 * every cancelled load has let go of its memory. */
int manager_unload_all(Manager *m, bool force, sd_bus_message *call);
/* Stops a load under way: its Load and Acquire callers get Cancelled now,
 * Unload callers once the loader has let go of the memory. */
void manager_cancel_load(Manager *m, PoolModel *model);

int manager_hold(Manager *m, PoolModel *model, const char *peer_name);
int manager_release(Manager *m, PoolModel *model, const char *peer_name);
/* A peer left the bus holding the model count times. */
void manager_drop_holds(Manager *m, const char *model_name, unsigned count);

void manager_reschedule_idle(Manager *m);

/* Run-time changes of the pool's settings. -EBUSY: the new limit is below
 * what pinned models hold (ret_needed gets that figure). Lowering the limit
 * unloads idle models, least recently used first, until the pool fits. */
int manager_set_memory_limit(Manager *m, uint64_t limit, uint64_t *ret_needed);
void manager_set_idle_timeout(Manager *m, int64_t idle_timeout_sec);
void manager_update_status(Manager *m);

static inline void manager_freep(Manager **m) {
        *m = manager_free(*m);
}
