/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "time-util.h"

/* Reading MemAvailable and the cgroup's figures opens and reads four files
 * under /proc and /sys: more than all the rest of a Status call. Callers
 * within this long of each other share one read, so a crowd polling Status
 * costs the kernel ten reads a second, not one per call, and no figure is
 * older than a blink. */
#define MEMORY_REFRESH_USEC (100 * USEC_PER_MSEC)

uint64_t manager_realtime(const Manager *m, uint64_t monotonic) {
        if (monotonic == 0 || monotonic == UINT64_MAX)
                return 0;
        return m->started_realtime + (monotonic - m->started_monotonic);
}

void manager_refresh_memory_available(Manager *m) {
        uint64_t now = now_monotonic_usec();
        MemoryInfo memory;

        if (m->memory_read_usec != 0 && now - m->memory_read_usec < MEMORY_REFRESH_USEC)
                return;
        /* If /proc cannot be read, the memory monitor's last figures stay:
         * it logs its own failures on its tick, and a Status caller still
         * gets an answer. */
        if (memory_info_read(&memory) < 0)
                return;
        m->memory.available = memory.available;
        m->memory_read_usec = now;
}

int manager_new(Manager **ret) {
        _cleanup_free_ Manager *m = NULL;

        assert(ret);

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->started_realtime = now_realtime_usec();
        m->started_monotonic = now_monotonic_usec();
        metrics_init(&m->metrics);
        /* About 0.3 ms of the loop's time at the 5 ms per GiB measured. */
        m->release_off_loop_min_bytes = UINT64_C(64) << 20;

        *ret = TAKE_PTR(m);
        return 0;
}

void manager_update_status(Manager *m) {
        if (!m->bus)
                return;
        int r;

        r = sd_notifyf(false, "STATUS=%u model(s) loaded, %" PRIu64 " of %" PRIu64 " MiB in use.",
                          pool_models_loaded(&m->pool), pool_memory_used(&m->pool) >> 20,
                          m->pool.memory_limit >> 20);
        if (r < 0)
                log_debug_errno(r, "Cannot tell the service manager our status: %m");
}


void manager_emit_changed(Manager *m, ManagerChange what) {
        if (m->events && m->events->manager_changed)
                m->events->manager_changed(m, what);
}

void manager_emit_model_changed(Manager *m, PoolModel *model, ModelChange what) {
        if (m->events && m->events->model_changed)
                m->events->model_changed(m, model, what);
}

void manager_reschedule_idle(Manager *m) {
        uint64_t next = pool_next_deadline(&m->pool);
        int r;

        if (!m->idle_timer)
                return;

        if (next == UINT64_MAX) {
                r = sd_event_source_set_enabled(m->idle_timer, SD_EVENT_OFF);
                if (r < 0)
                        log_error_errno(r, "Cannot disable the idle timer: %m");
                return;
        }

        r = sd_event_source_set_time(m->idle_timer, next);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->idle_timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Cannot arm the idle timer, idle models stay loaded: %m");
}
