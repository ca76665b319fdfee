/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdio.h>

#include "macro.h"

/* Output that goes through a pager when it is long: on a terminal, and
 * unless --no-pager, what a verb writes is collected, and if it has more
 * lines than the terminal it is shown with $MPOOL_PAGER, $PAGER or less,
 * with $LESS set to "FRSXMK" (or to $MPOOL_LESS), as systemd does.
 * Otherwise it goes straight to stdout. */

typedef struct Pager {
        FILE *f;        /* write here */
        char *buffer;
        size_t size;
        FILE *memstream;
} Pager;

/* Sets p->f. Returns 0 or a negative errno. */
int pager_open(Pager *p);

/* Shows what was written (through the pager if it is long) and waits for the
 * pager to exit. Returns 0 or a negative errno. */
int pager_close(Pager *p);

void pager_done(Pager *p);
#define _cleanup_pager_ _cleanup_(pager_done)
