/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"

/* A figure of this process's /proc/self/status in bytes ("VmHWM",
 * "VmRSS"), 0 if it cannot be read: for tests that bound what a reader
 * takes, in a child of their own. */
static inline uint64_t proc_status_bytes(const char *key) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        size_t n = strlen(key);

        if (!f)
                return 0;
        while (fgets(line, sizeof line, f))
                if (strncmp(line, key, n) == 0 && line[n] == ':')
                        return strtoull(line + n + 1, NULL, 10) * 1024;
        return 0;
}
