/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

/* A file truncated under its mapping takes the pages past its new end with
 * it, and reading them raises SIGBUS: the workers that compute over a
 * model's weights in place would take the daemon down. As systemd's
 * journal does, the handler maps a zero page where the file's page was, so
 * the computation finishes (on zeros), and counts it; the job then sees
 * the count move, fails its call and has the model unloaded. A SIGBUS that
 * is no such fault (no address) still ends the process.
 *
 * sigbus_install() once, at start, before any worker runs. */
int sigbus_install(void);

/* How many pages were replaced so far. */
uint64_t sigbus_count(void);
