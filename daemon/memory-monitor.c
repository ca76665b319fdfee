/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "memory-monitor.h"

/* A stall of 150 ms within a 1 s window: the kernel's own example of a
 * "some" threshold worth acting on, and the smallest window unprivileged
 * processes may ask for is 2 s, which we fall back to. */
#define PSI_TRIGGER "some 150000 1000000"
#define PSI_TRIGGER_UNPRIVILEGED "some 300000 2000000"

struct MemoryMonitor {
        sd_event_source *psi_source;
        sd_event_source *timer_source;
        int psi_fd;
        uint64_t interval_usec;
        memory_pressure_handler_t handler;
        void *userdata;
};

static int read_small_file(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = -1;
        ssize_t n;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        n = read(fd, buf, size - 1);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        return 0;
}

int meminfo_parse(const char *text, uint64_t *ret_total, uint64_t *ret_available) {
        uint64_t total = 0, available = 0;
        bool have_total = false, have_available = false;

        for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
                unsigned long long kib;

                if (sscanf(line, "MemTotal: %llu kB", &kib) == 1) {
                        total = (uint64_t) kib * 1024;
                        have_total = true;
                } else if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
                        available = (uint64_t) kib * 1024;
                        have_available = true;
                }
        }
        if (!have_total || !have_available)
                return -EBADMSG;

        *ret_total = total;
        *ret_available = available;
        return 0;
}

/* Reads a cgroup's limit and usage files; -ENOENT when there is no numeric
 * limit ("max" on v2 means none). A missing usage figure counts as 0. */
static int read_cgroup_files(const char *directory, const char *limit_file, const char *usage_file,
                             uint64_t *ret_limit, uint64_t *ret_usage) {
        char path[4352], buf[64];
        unsigned long long limit, usage;

        snprintf(path, sizeof path, "%s/%s", directory, limit_file);
        if (read_small_file(path, buf, sizeof buf) < 0 || sscanf(buf, "%llu", &limit) != 1)
                return -ENOENT;
        snprintf(path, sizeof path, "%s/%s", directory, usage_file);
        if (read_small_file(path, buf, sizeof buf) < 0 || sscanf(buf, "%llu", &usage) != 1)
                usage = 0;

        *ret_limit = limit;
        *ret_usage = usage;
        return 0;
}

/* The daemon's cgroup limit and usage, v1 or v2; -ENOENT when there is no
 * limit to honour. */
static int cgroup_memory(uint64_t *ret_limit, uint64_t *ret_usage) {
        char cgroups[4096], directory[4200];
        const char *v2 = NULL, *v1 = NULL;
        int r;

        r = read_small_file("/proc/self/cgroup", cgroups, sizeof cgroups);
        if (r < 0)
                return r;

        for (char *line = strtok(cgroups, "\n"); line; line = strtok(NULL, "\n")) {
                if (strncmp(line, "0::", 3) == 0)
                        v2 = line + 3;
                else {
                        char *controllers = strchr(line, ':'), *rest;

                        if (!controllers || !(rest = strchr(controllers + 1, ':')))
                                continue;
                        *rest = 0;
                        if (strstr(controllers + 1, "memory"))
                                v1 = rest + 1;
                }
        }

        if (v1) {
                snprintf(directory, sizeof directory, "/sys/fs/cgroup/memory%s", v1);
                if (read_cgroup_files(directory, "memory.limit_in_bytes", "memory.usage_in_bytes",
                                      ret_limit, ret_usage) >= 0)
                        return 0;
        }
        if (v2) {
                snprintf(directory, sizeof directory, "/sys/fs/cgroup%s", v2);
                if (read_cgroup_files(directory, "memory.max", "memory.current", ret_limit, ret_usage) >= 0)
                        return 0;
        }
        return -ENOENT;
}

int memory_info_read(MemoryInfo *ret) {
        char meminfo[8192];
        uint64_t total, available, limit, usage;
        int r;

        assert(ret);

        r = read_small_file("/proc/meminfo", meminfo, sizeof meminfo);
        if (r < 0)
                return r;
        r = meminfo_parse(meminfo, &total, &available);
        if (r < 0)
                return r;

        if (cgroup_memory(&limit, &usage) >= 0 && limit < total) {
                total = limit;
                available = MIN(available, limit > usage ? limit - usage : 0);
        }

        *ret = (MemoryInfo) { .total = total, .available = available };
        return 0;
}

static void check(MemoryMonitor *m, bool stalled) {
        MemoryInfo info;
        int r;

        r = memory_info_read(&info);
        if (r < 0) {
                log_warning_errno(r, "Cannot read the memory figures: %m");
                return;
        }
        m->handler(m, &info, stalled, m->userdata);
}

static int on_psi(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        MemoryMonitor *m = userdata;

        if (revents & EPOLLERR) {
                log_warning("The memory pressure trigger went away; relying on MemAvailable checks.");
                return sd_event_source_set_enabled(s, SD_EVENT_OFF);
        }
        check(m, true);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        MemoryMonitor *m = userdata;
        int r;

        check(m, false);
        r = sd_event_source_set_time_relative(s, m->interval_usec);
        if (r < 0)
                return log_error_errno(r, "Cannot re-arm the memory check: %m");
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int psi_open(void) {
        static const char *const triggers[] = { PSI_TRIGGER, PSI_TRIGGER_UNPRIVILEGED };
        int r = -ENOENT;

        for (size_t i = 0; i < ELEMENTSOF(triggers); i++) {
                _cleanup_close_ int fd = open("/proc/pressure/memory", O_RDWR | O_NONBLOCK | O_CLOEXEC);

                if (fd < 0)
                        return -errno;
                if (write(fd, triggers[i], strlen(triggers[i]) + 1) >= 0)
                        return TAKE_FD(fd);
                r = -errno;
        }
        return r;
}

int memory_monitor_new(sd_event *event, uint64_t check_interval_usec, memory_pressure_handler_t handler,
                       void *userdata, MemoryMonitor **ret) {
        _cleanup_free_ MemoryMonitor *m = NULL;
        int r;

        assert(event);
        assert(handler);
        assert(ret);

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->psi_fd = -1;
        m->interval_usec = check_interval_usec;
        m->handler = handler;
        m->userdata = userdata;

        r = psi_open();
        if (r < 0)
                log_info_errno(r, "Kernel memory pressure (PSI) triggers are not available (%m); "
                               "checking MemAvailable every %" PRIu64 " ms only.",
                               check_interval_usec / USEC_PER_MSEC);
        else {
                m->psi_fd = r;
                r = sd_event_add_io(event, &m->psi_source, m->psi_fd, EPOLLPRI, on_psi, m);
                if (r < 0)
                        goto fail;
        }

        r = sd_event_add_time_relative(event, &m->timer_source, CLOCK_MONOTONIC, check_interval_usec,
                                       check_interval_usec / 10, on_timer, m);
        if (r < 0)
                goto fail;

        *ret = TAKE_PTR(m);
        return 0;

fail:
        sd_event_source_disable_unref(m->psi_source);
        if (m->psi_fd >= 0)
                close(m->psi_fd);
        return r;
}

MemoryMonitor *memory_monitor_free(MemoryMonitor *m) {
        if (!m)
                return NULL;
        sd_event_source_disable_unref(m->psi_source);
        sd_event_source_disable_unref(m->timer_source);
        if (m->psi_fd >= 0)
                close(m->psi_fd);
        free(m);
        return NULL;
}

bool memory_monitor_has_psi(const MemoryMonitor *m) {
        return m->psi_fd >= 0;
}
