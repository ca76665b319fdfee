/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <time.h>

/* The clock in microseconds: CLOCK_MONOTONIC for deadlines and durations,
 * CLOCK_REALTIME for what people and other programs are shown. */
uint64_t now_usec(clockid_t clock);

static inline uint64_t now_monotonic_usec(void) {
        return now_usec(CLOCK_MONOTONIC);
}

static inline uint64_t now_realtime_usec(void) {
        return now_usec(CLOCK_REALTIME);
}
