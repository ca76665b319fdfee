/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* What the host (or the daemon's cgroup) has, and a watch on memory
 * pressure: the kernel's PSI trigger where it is offered, and a periodic
 * look at MemAvailable (PSI needs no polling, MemAvailable has no event). */

typedef struct MemoryInfo {
        uint64_t total;       /* MemTotal, or the cgroup's limit when lower */
        uint64_t available;   /* MemAvailable, or what the cgroup still allows when lower */
} MemoryInfo;

int memory_info_read(MemoryInfo *ret);

/* Parses /proc/meminfo-formatted text. Exposed for tests. */
int meminfo_parse(const char *text, uint64_t *ret_total, uint64_t *ret_available);

typedef struct MemoryMonitor MemoryMonitor;

/* Called on the loop when PSI reports a stall or MemAvailable is checked. */
typedef void (*memory_pressure_handler_t)(MemoryMonitor *m, const MemoryInfo *info, bool stalled,
                                          void *userdata);

int memory_monitor_new(sd_event *event, uint64_t check_interval_usec, memory_pressure_handler_t handler,
                       void *userdata, MemoryMonitor **ret);
MemoryMonitor *memory_monitor_free(MemoryMonitor *m);
bool memory_monitor_has_psi(const MemoryMonitor *m);
