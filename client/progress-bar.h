/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* The one-line progress bar of load and pull on a terminal's stderr:
 * "VERB NAME [━━━━──] 45% 28.8M/64.0G 512.0M/s ETA 1min 3s", redrawn in
 * place and fitted to the terminal's width. */
typedef struct ProgressBar {
        const char *verb;               /* "Loading", "Pulling" */
        const char *name;
        bool bar_drawn;
        uint64_t first_progress_usec;
        uint64_t first_progress_bytes;
} ProgressBar;

void progress_bar_draw(ProgressBar *c, uint64_t done, uint64_t total);
/* Erases the bar, if drawn, before other output. */
void progress_bar_clear(ProgressBar *c);
