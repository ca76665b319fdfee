/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "memory-monitor.h"
#include "metrics.h"
#include "peer.h"
#include "polkit.h"
#include "pool.h"
#include "store-watch.h"
#include "workpool.h"

/* The daemon's state, owned by the event loop thread alone: the pool and
 * what each model holds at run time (model-lifecycle.h), the peers and
 * their holds, the loading workers; and the few services on it that every
 * layer uses (timers, status, change events). The core speaks no D-Bus:
 * requests come in as Request objects (request.h) and changes go out
 * through the events below, which the bus layer (bus-manager.c,
 * bus-model.c) turns into signals. A test installs its own events and runs
 * the core without a bus. Layers, each including only those below it:
 * manager.h, model-lifecycle.h, service.h, the bus files. */

typedef struct Manager Manager;
typedef struct Download Download;
typedef struct ModelCompute ModelCompute;
typedef struct Catalog Catalog;
typedef struct Inspection Inspection;
typedef struct DownloadJob DownloadJob;

/* What changed, for the listeners of PropertiesChanged. */
typedef enum ManagerChange {
        MANAGER_CHANGED_MEMORY_TOTAL = 1 << 0,
        MANAGER_CHANGED_MEMORY_LIMIT = 1 << 1,
        MANAGER_CHANGED_MEMORY_USED = 1 << 2,
        MANAGER_CHANGED_LOADED_MODELS = 1 << 3,
        MANAGER_CHANGED_IDLE_TIMEOUT = 1 << 4,
} ManagerChange;

typedef enum ModelChange {
        MODEL_CHANGED_STATE = 1 << 0,
        MODEL_CHANGED_MEMORY = 1 << 1,
        MODEL_CHANGED_HOLDS = 1 << 2,
        MODEL_CHANGED_EXPIRES = 1 << 3,
        MODEL_CHANGED_KIND = 1 << 4,   /* kind, precision, memory by precision */
        MODEL_CHANGED_ALL = (1 << 5) - 1,
} ModelChange;

typedef struct ManagerEvents {
        void (*manager_changed)(Manager *m, ManagerChange what);
        /* A model became known to callers (found in the store). */
        void (*model_announced)(Manager *m, PoolModel *model);
        void (*model_changed)(Manager *m, PoolModel *model, ModelChange what);
        void (*load_progress)(Manager *m, PoolModel *model, uint64_t done, uint64_t total);
        void (*model_loaded)(Manager *m, PoolModel *model);
        /* error: negative errno as in request.h. */
        void (*load_failed)(Manager *m, PoolModel *model, int error, const char *message);
        void (*model_unloaded)(Manager *m, PoolModel *model, const char *reason);
        /* A model is about to be forgotten (it left the store): the last
         * moment it can still be found. */
        void (*model_removed)(Manager *m, PoolModel *model);
        /* Pulls (download.h), by repository name: progress at most every
         * 50 ms; result "done", "failed" or "cancelled". */
        void (*download_progress)(Manager *m, const char *name, uint64_t done, uint64_t total);
        void (*download_finished)(Manager *m, const char *name, const char *result, const char *message);
} ManagerEvents;

struct Manager {
        sd_event *event;
        sd_bus *bus;                  /* the bus layer's; NULL without a bus */
        const ManagerEvents *events;  /* NULL: nobody listens */
        Config config;
        Pool pool;
        WorkPool *loaders;
        WorkPool *releaser;           /* unloaded models' weights let go (model-lifecycle.c) */
        uint64_t release_off_loop_min_bytes; /* smaller models are unmapped on the loop */
        MemoryMonitor *memory_monitor;
        MemoryInfo memory;
        uint64_t memory_read_usec;    /* CLOCK_MONOTONIC of the last read for callers, 0: none yet */
        uint64_t memory_available_min;
        sd_event_source *idle_timer;
        sd_event_source *forget_source; /* forgets models that left the store, once they let go */
        StoreWatch *store_watch;      /* models added and removed by hand */
        Download *downloads;          /* running and queued pulls, oldest first (download.h) */
        Catalog *catalog;             /* Register and Remove (catalog.h) */
        Inspection *inspections;      /* running inspections (inspection.h) */
        WorkPool *download_workers;   /* the downloads' disk work: metadata, measuring, removals */
        DownloadJob *download_jobs;   /* handed to download_workers, until they come back */
        const char *pull_helper;      /* path of mpool-pull */
        const char *blas_core;        /* OpenBLAS's kernel set, NULL when it could not be loaded */
        sd_bus_slot *object_manager_slot;
        sd_bus_slot *peer_left_slot;
        size_t preload_next;          /* Preload= entries started so far */
        bool bus_lost;
        PolkitRegistry *polkit;
        PeerTable peers;
        uint64_t started_realtime;
        uint64_t started_monotonic;
        Metrics metrics;              /* for monitoring: only grows (metrics.h) */
        bool shutting_down;
        void (*on_work_done)(Manager *m);
        /* The layer that runs models (model-compute.c) hears when a loaded
         * model begins to unload and when it is unloaded, to end what waits
         * for its workers and to stop them. */
        void (*model_unloading)(Manager *m, PoolModel *model);
        void (*model_unloaded)(Manager *m, PoolModel *model);
        ModelCompute *released_computes; /* workers of unloaded models, freed on the next turn */
};

int manager_new(Manager **ret);

uint64_t manager_realtime(const Manager *m, uint64_t monotonic);
/* Arms the idle timer for the pool's next deadline (or disarms it). */
void manager_reschedule_idle(Manager *m);
void manager_update_status(Manager *m);
/* Brings m->memory.available up to date for Status: read again unless the
 * last such read is under 100 ms old; the monitor's last figure stays when
 * the files cannot be read. */
void manager_refresh_memory_available(Manager *m);

void manager_emit_changed(Manager *m, ManagerChange what);
void manager_emit_model_changed(Manager *m, PoolModel *model, ModelChange what);

/* The layer above (service.c) hears when a job of the loading workers came
 * back or a user of a model let go: it then starts further Preload= loads,
 * or exits once shutdown has nothing left to wait for. */
static inline void manager_work_done(Manager *m) {
        if (m->on_work_done)
                m->on_work_done(m);
}

