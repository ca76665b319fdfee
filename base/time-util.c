/* SPDX-License-Identifier: MIT */
#include "macro.h"
#include "time-util.h"

uint64_t now_usec(clockid_t clock) {
        struct timespec ts;

        /* Only an invalid clock id fails, which is a programming error. */
        if (clock_gettime(clock, &ts) < 0)
                abort();
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}
