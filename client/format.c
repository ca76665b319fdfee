/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#include "format.h"
#include "macro.h"

char *format_bytes(char *buf, size_t l, uint64_t bytes) {
        static const char suffixes[] = "KMGTPE";
        uint64_t factor = 1024;

        if (bytes < 1024) {
                snprintf(buf, l, "%" PRIu64 "B", bytes);
                return buf;
        }

        for (size_t i = 0; i < sizeof(suffixes) - 1; i++) {
                /* Move on to the next unit once this one would need five digits. */
                if (i + 1 < sizeof(suffixes) - 1 && bytes / factor >= 1024) {
                        factor *= 1024;
                        continue;
                }
                snprintf(buf, l, "%" PRIu64 ".%" PRIu64 "%c", bytes / factor,
                         (bytes % factor) * 10 / factor, suffixes[i]);
                return buf;
        }
        return buf;     /* not reached: the last unit always formats */
}

char *format_timespan(char *buf, size_t l, uint64_t usec, uint64_t accuracy_usec) {
        static const struct {
                const char *suffix;
                uint64_t usec;
        } table[] = {
                { "y",     UINT64_C(31557600) * USEC_PER_SEC },
                { "month", UINT64_C(2629800) * USEC_PER_SEC },
                { "w",     UINT64_C(604800) * USEC_PER_SEC },
                { "d",     UINT64_C(86400) * USEC_PER_SEC },
                { "h",     UINT64_C(3600) * USEC_PER_SEC },
                { "min",   UINT64_C(60) * USEC_PER_SEC },
                { "s",     USEC_PER_SEC },
                { "ms",    USEC_PER_MSEC },
                { "us",    1 },
        };
        size_t n = 0;
        bool something = false;

        if (l == 0)
                return buf;
        buf[0] = 0;

        if (usec == UINT64_MAX) {
                snprintf(buf, l, "infinity");
                return buf;
        }
        if (accuracy_usec == 0)
                accuracy_usec = 1;
        if (usec < accuracy_usec) {
                /* Below the accuracy: show the accuracy's unit, "0s" or "0ms". */
                for (size_t i = 0; i < ELEMENTSOF(table); i++)
                        if (table[i].usec <= accuracy_usec) {
                                snprintf(buf, l, "0%s", table[i].suffix);
                                return buf;
                        }
                snprintf(buf, l, "0");
                return buf;
        }

        for (size_t i = 0; i < ELEMENTSOF(table) && usec > 0; i++) {
                uint64_t count;
                int k;

                if (usec < accuracy_usec)
                        break;
                if (usec < table[i].usec)
                        continue;

                count = usec / table[i].usec;
                usec %= table[i].usec;
                k = snprintf(buf + n, l - n, "%s%" PRIu64 "%s", something ? " " : "", count, table[i].suffix);
                if (k < 0 || (size_t) k >= l - n)
                        break;
                n += (size_t) k;
                something = true;
        }
        return buf;
}

char *format_timestamp(char *buf, size_t l, uint64_t realtime_usec) {
        time_t sec;
        struct tm tm;

        if (realtime_usec == 0) {
                snprintf(buf, l, "n/a");
                return buf;
        }
        sec = (time_t) (realtime_usec / USEC_PER_SEC);
        if (!localtime_r(&sec, &tm) || strftime(buf, l, "%a %Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                snprintf(buf, l, "@%" PRIu64, realtime_usec / USEC_PER_SEC);
        return buf;
}

char *format_timestamp_relative(char *buf, size_t l, uint64_t realtime_usec, uint64_t now_usec) {
        char span[FORMAT_TIMESPAN_MAX];

        if (realtime_usec == 0) {
                snprintf(buf, l, "n/a");
                return buf;
        }
        if (realtime_usec > now_usec)
                snprintf(buf, l, "in %s", format_timespan(span, sizeof span, realtime_usec - now_usec, USEC_PER_SEC));
        else
                snprintf(buf, l, "%s ago", format_timespan(span, sizeof span, now_usec - realtime_usec, USEC_PER_SEC));
        return buf;
}

char *format_percent(char *buf, size_t l, double percent) {
        if (percent < 10.0)
                snprintf(buf, l, "%.1f%%", percent);
        else
                snprintf(buf, l, "%.0f%%", percent);
        return buf;
}

char *format_seconds(char *buf, size_t l, int64_t sec) {
        if (sec < 0)
                return format_timespan(buf, l, UINT64_MAX, USEC_PER_SEC);
        return format_timespan(buf, l, (uint64_t) sec * USEC_PER_SEC, USEC_PER_SEC);
}
