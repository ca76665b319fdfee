/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

#include "manager.h"

/* Pulls from the hub, on the loop thread and without D-Bus: one mpool-pull
 * helper (pull-process.h) per repository, started from the loop thread so
 * that PR_SET_PDEATHSIG ties it to the daemon. At most
 * MaxConcurrentDownloads= helpers run; further pulls wait in a FIFO.
 *
 * The helper fills ModelDir/.staging/ORG--NAME/ (NAME for a repository
 * without an organisation), one folder per repository, since a second pull
 * of a repository under way joins it. Its .part files stay there after a
 * failure, a cancellation or a daemon restart, as the state a later pull of
 * the same repository resumes from. Once DONE, the daemon writes the
 * metadata file .mpool-pull.json into that folder and renames it to
 * ModelDir/ORG/NAME: with RENAME_NOREPLACE, or, if a model of that name is
 * there and not loaded, with RENAME_EXCHANGE followed by the removal of
 * the old folder. The store watch then announces the model. */

#define DOWNLOAD_METADATA_FILE ".mpool-pull.json"
#define DOWNLOAD_STAGING_DIR   ".staging"
#define DOWNLOAD_REVISION_MAX  255U
/* Calls waiting for the plan of one download. */
#define DOWNLOAD_WAITERS_MAX   64U
/* Downloads running and queued, together. */
#define DOWNLOADS_MAX          256U

/* The answer to a pull: error 0 and the model's name (the download goes on,
 * or the model was complete already), or a negative errno and a message:
 * -EDQUOT: not enough free space in the store;
 * -EREMOTEIO: the helper failed (message says why); -ECANCELED: cancelled
 * before the plan was known; -EBUSY: the daemon is shutting down; -ENOMEM. */
typedef void (*DownloadReply)(int error, const char *message, const char *name, void *userdata);

/* Checks a revision: 1..DOWNLOAD_REVISION_MAX of [A-Za-z0-9._/-], no "..". */
int download_revision_validate(const char *revision);

/* Starts or joins the pull of repo (a valid model name) at revision. token:
 * NULL for the one of TokenFile=, if any. reply is called exactly once,
 * possibly before this returns. Returns 0, or a negative errno when the
 * pull could not even be queued (reply not called then): -EINVAL (bad
 * revision), -EBUSY (the model is loaded, or shutdown), -EEXIST (being
 * pulled at another revision), -EUSERS (too many pulls or waiters), or what
 * creating the staging folder or the token's pipe gave. */
int download_pull(Manager *m, const char *repo, const char *revision, const char *token, DownloadReply reply,
                  void *userdata);

/* Cancels the download of name: 0, or -ENOENT when none is under way. */
int download_cancel(Manager *m, const char *name);

/* The download of name, if one is under way: its progress. */
bool download_find(Manager *m, const char *name, uint64_t *ret_done, uint64_t *ret_total);

/* A staging folder keeps the .part files of a download that failed or was
 * cancelled for a later pull of the same repository; one left alone for
 * this long (by its folder's modification time, which each file created or
 * renamed in it updates) is removed at start-up. */
#define DOWNLOAD_STAGING_KEEP_SEC (7 * 24 * 3600)
void downloads_clean_staging(Manager *m);

/* Shutdown: stops every helper; waiters get -EBUSY. */
void downloads_stop_all(Manager *m);
