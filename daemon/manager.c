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

uint64_t manager_realtime(const Manager *m, uint64_t monotonic) {
        if (monotonic == 0 || monotonic == UINT64_MAX)
                return 0;
        return m->started_realtime + (monotonic - m->started_monotonic);
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
