/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "time-util.h"

/* Human-readable figures, written the way systemd's tools write them. Each
 * formatter writes into buf (of size l) and returns buf. */

#define FORMAT_BYTES_MAX 16
#define FORMAT_TIMESPAN_MAX 64
#define FORMAT_TIMESTAMP_MAX 64

/* "512B", "64.0M", "1.2G": base 1024, one decimal above bytes. */
char *format_bytes(char *buf, size_t l, uint64_t bytes);

/* "1h 30min", "5min 3s", "250ms"; components down to accuracy_usec
 * (USEC_PER_SEC gives whole seconds). UINT64_MAX is "infinity". */
char *format_timespan(char *buf, size_t l, uint64_t usec, uint64_t accuracy_usec);

/* Local time, "Thu 2024-05-02 12:00:01 CEST"; 0 is "n/a". */
char *format_timestamp(char *buf, size_t l, uint64_t realtime_usec);

/* "5min ago" or "in 25s" relative to now (CLOCK_REALTIME); 0 is "n/a". */
char *format_timestamp_relative(char *buf, size_t l, uint64_t realtime_usec, uint64_t now_usec);

/* "0.3%", "12%": one decimal below 10%, none above. */
char *format_percent(char *buf, size_t l, double percent);

/* Seconds of keep-alive as systemd writes a duration: "30s", "5min", "infinity". */
char *format_seconds(char *buf, size_t l, int64_t sec);

#define FORMAT_BYTES(b) format_bytes((char[FORMAT_BYTES_MAX]){}, FORMAT_BYTES_MAX, (b))
#define FORMAT_TIMESPAN(u, a) format_timespan((char[FORMAT_TIMESPAN_MAX]){}, FORMAT_TIMESPAN_MAX, (u), (a))
#define FORMAT_TIMESTAMP(u) format_timestamp((char[FORMAT_TIMESTAMP_MAX]){}, FORMAT_TIMESTAMP_MAX, (u))
#define FORMAT_PERCENT(p) format_percent((char[16]){}, 16, (p))
#define FORMAT_SECONDS(s) format_seconds((char[FORMAT_TIMESPAN_MAX]){}, FORMAT_TIMESPAN_MAX, (s))
