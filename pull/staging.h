/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hub.h"
#include "protocol.h"
#include "verify.h"

/* The staging folder the daemon hands us: opened once, everything in it
 * reached with *at() calls relative to it, following no symlink. A file is
 * written as NAME.part and renamed to NAME once its size and SHA-256 are
 * right, so a NAME in the folder is always a verified file; a NAME.part is
 * what an earlier run left, and is resumed. */

#define STAGING_PART_SUFFIX ".part"
/* The one file that lives in a subfolder. */
#define STAGING_POOLING_DIR "1_Pooling"

int staging_open(const char *path, int *ret_fd, PullError *e);

/* Whether a file of the plan may be written: a plain name, or
 * 1_Pooling/config.json; never ".", "..", a control character or a name
 * too long for the file system once ".part" is added. */
bool staging_name_is_allowed(const char *name);

/* One file of the plan on its way into the folder. */
typedef struct Target {
        const PlanFile *file;
        int staging_fd;                 /* not owned */
        int dir_fd;                     /* the folder it goes in; owned when not staging_fd */
        char *base;                     /* its name in that folder */
        char *part;                     /* base + ".part" */
        int fd;                         /* the .part, open while it is written */
        Sha256 *sha;                    /* of the .part's bytes so far */
        uint64_t have;                  /* bytes in the .part */
        bool complete;                  /* NAME is there, verified */
} Target;

void target_done(Target *t);

/* Looks at what the folder holds for the file: NAME, verified (a wrong one
 * is removed), makes it complete; otherwise NAME.part's size is what is
 * held. Nothing is opened for writing yet. */
int target_check(Target *t, int staging_fd, const PlanFile *f, PullError *e);

/* Opens the .part for writing (creating it), takes in the digest of what it
 * holds and reserves the space the rest will take. */
int target_open(Target *t, PullError *e);

/* Drops what the .part holds: the server sends the whole file again. */
int target_reset(Target *t, PullError *e);

/* Appends; more than the file's size is a size-mismatch. */
int target_write(Target *t, const void *data, size_t n, PullError *e);

/* Once the transfer ended: checks the size and the digest, syncs and
 * renames NAME.part to NAME. A wrong file is removed, so that the next run
 * starts it over rather than resuming it. */
int target_finish(Target *t, PullError *e);

/* Writes a whole file held in memory (the index, read before the plan). */
int target_write_whole(Target *t, const void *data, size_t n, PullError *e);
