/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

#include "manager.h"

/* Pulls from the hub, on the loop thread and without D-Bus: one mpool-pull
 * helper (pull-process.h) per repository, started from the loop thread so
 * that PR_SET_PDEATHSIG ties it to the daemon. At most
 * MaxConcurrentDownloads= helpers run; further pulls wait in a FIFO.
 *
 * A model pulled for the first time is known (state downloading, an object
 * with its progress) from the moment its Pull is accepted, and goes again
 * if the pull fails or is cancelled (model-lifecycle.h). A model in the
 * store that is pulled again stays as it is and usable meanwhile.
 *
 * The helper fills ModelDir/.staging/ORG--NAME/ (NAME for a repository
 * without an organisation), one folder per repository, since a second pull
 * of a repository under way joins it. Its .part files stay there after a
 * failure, a cancellation or a daemon restart, as the state a later pull of
 * the same repository resumes from. Once DONE, the metadata file
 * .mpool-pull.json is written into that folder and synced on a worker
 * thread; then the loop renames the folder to ModelDir/ORG/NAME: with
 * RENAME_NOREPLACE, or, if a model of that name is there and not loaded,
 * with RENAME_EXCHANGE, after which the old folder is moved aside
 * (.staging/.replaced-ORG--NAME-N) and removed on a worker thread. The
 * new model is measured on a worker thread and becomes available before
 * DownloadFinished says "done"; the store watch then finds it known.
 *
 * Nothing that waits on the disk runs on the loop but directory creation,
 * renames and the removal of empty folders: metadata, syncs, measuring and
 * recursive removals go to a worker thread of the downloads' own. */

#define DOWNLOAD_METADATA_FILE ".mpool-pull.json"
#define DOWNLOAD_STAGING_DIR   ".staging"
/* Folders of replaced models on their way out; never a repository's. */
#define DOWNLOAD_REPLACED_PREFIX ".replaced-"
#define DOWNLOAD_REVISION_MAX  255U
/* Calls waiting for the plan of one download. */
#define DOWNLOAD_WAITERS_MAX   64U
/* Downloads running, queued and being installed, together. */
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
 * pulled at another revision), -ENOTUNIQ (a registered model has that
 * name, and would hide what the pull installs), -EUSERS (too many pulls or waiters, or
 * models), or what creating the token's pipe gave. */
int download_pull(Manager *m, const char *repo, const char *revision, const char *token, DownloadReply reply,
                  void *userdata);

/* Cancels the download of name: 0, or -ENOENT when none is under way (or
 * its files are in the store already). */
int download_cancel(Manager *m, const char *name);

/* The download of name, if one is under way: its progress (0 of 0 while it
 * waits for its turn or its plan). */
bool download_find(Manager *m, const char *name, uint64_t *ret_done, uint64_t *ret_total);

/* A staging folder keeps the .part files of a download that failed or was
 * cancelled for a later pull of the same repository. One left alone for
 * this long (by its folder's modification time, which each file created or
 * renamed in it updates) is removed, and so are the oldest beyond
 * DOWNLOAD_STAGING_SHARE_PERCENT of the store's file system, together;
 * folders of replaced models go whatever their age. The store is cleaned
 * so at start-up, before the daemon serves, and whenever a Pull starts a
 * download, on a worker thread (the folders of the downloads under way
 * are kept, and none starts until the cleaning is done). */
#define DOWNLOAD_STAGING_KEEP_SEC (7 * 24 * 3600)
#define DOWNLOAD_STAGING_SHARE_PERCENT 10U
void downloads_clean_staging(Manager *m);
/* Cleans ModelDir/.staging as above, keeping the folders named in keep
 * (NULL-terminated, may be NULL), with now the current CLOCK_REALTIME
 * seconds. For any thread; exposed for tests. */
void download_staging_clean(const char *model_dir, char * const *keep, int64_t now);

/* Writes text as the metadata file into the staging folder, all of it
 * (write() may stop short), and syncs the file and the folder. For any
 * thread; exposed for tests. */
int download_metadata_write(const char *staging, const char *text);

/* Shutdown: stops every helper and cancels what waits for a worker;
 * waiters get -EBUSY. downloads_busy() says when the workers are done. */
void downloads_stop_all(Manager *m);
bool downloads_busy(Manager *m);
/* Frees the downloads' workers, once they are no longer busy. */
void downloads_free(Manager *m);
