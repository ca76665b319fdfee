/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "format.h"
#include "mpool-bus.h"
#include "progress-bar.h"
#include "terminal.h"

/* Rate and ETA are shown once the transfer has run this long, so that the
 * first two signals do not make up a wild figure. */
#define RATE_MIN_ELAPSED_USEC (200 * USEC_PER_MSEC)
/* Room kept right of the bar for " 45% 28.8M/64.0G 512.0M/s ETA 1min 3s". */
#define PROGRESS_RIGHT_WIDTH 44

void progress_bar_clear(ProgressBar *c) {
        if (!c->bar_drawn)
                return;
        fputs("\r" ANSI_ERASE_TO_EOL, stderr);
        fflush(stderr);
        c->bar_drawn = false;
}

void progress_bar_draw(ProgressBar *c, uint64_t done, uint64_t total) {
        unsigned columns = terminal_columns(STDERR_FILENO);
        uint64_t now = now_monotonic_usec();
        bool utf8 = is_utf8_locale(), colors = colors_enabled_stderr();
        double fraction = total > 0 ? (double) MIN(done, total) / (double) total : 1.0;
        char right[128], left[MPOOL_NAME_MAX + 32];
        size_t used, bar, filled;

        if (c->first_progress_usec == 0) {
                c->first_progress_usec = now;
                c->first_progress_bytes = done;
        }

        snprintf(left, sizeof left, "%s %s ", c->verb, c->name);
        used = (size_t) snprintf(right, sizeof right, " %3u%% %s/%s", (unsigned) (fraction * 100.0),
                                 FORMAT_BYTES(done), FORMAT_BYTES(total));
        if (now - c->first_progress_usec >= RATE_MIN_ELAPSED_USEC && done > c->first_progress_bytes) {
                double rate = (double) (done - c->first_progress_bytes) * USEC_PER_SEC /
                              (double) (now - c->first_progress_usec);
                uint64_t eta = rate > 0 ? (uint64_t) ((double) (total - MIN(done, total)) / rate * USEC_PER_SEC) : 0;

                used += (size_t) snprintf(right + used, sizeof right - used, " %s/s",
                                          FORMAT_BYTES((uint64_t) rate));
                if (done < total && used < sizeof right)
                        snprintf(right + used, sizeof right - used, " ETA %s",
                                 FORMAT_TIMESPAN(MAX(eta, USEC_PER_SEC), USEC_PER_SEC));
        }

        /* The bar keeps its length when rate and ETA appear; and never the
         * last column: writing there makes some terminals wrap. */
        used = strlen(left) + MAX(strlen(right), (size_t) PROGRESS_RIGHT_WIDTH) + 2 + 1;
        bar = columns > used + 10 ? MIN(columns - used, (size_t) 60) : 0;
        filled = (size_t) (fraction * (double) bar);

        fputc('\r', stderr);
        if (bar > 0)
                fputs(left, stderr);
        else {
                /* No room for a bar: the figures, and as much of the name as
                 * fits on one line (a wrapped line could not be redrawn). */
                size_t room = columns > strlen(right) + 1 ? columns - strlen(right) - 1 : 0;

                fprintf(stderr, "%.*s", (int) MIN(room, strlen(left)), left);
                right[MIN(strlen(right), (size_t) (columns > 1 ? columns - 1 : 0))] = 0;
        }
        if (bar > 0) {
                fputc('[', stderr);
                if (colors)
                        fputs(ANSI_GREEN, stderr);
                for (size_t i = 0; i < filled; i++)
                        fputs(utf8 ? "\u2501" : "#", stderr);
                if (colors)
                        fputs(ANSI_GREY, stderr);
                for (size_t i = filled; i < bar; i++)
                        fputs(utf8 ? "\u2501" : "-", stderr);
                if (colors)
                        fputs(ANSI_NORMAL, stderr);
                fputc(']', stderr);
        }
        fputs(right, stderr);
        fputs(ANSI_ERASE_TO_EOL, stderr);
        fflush(stderr);
        c->bar_drawn = true;
}
