/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "macro.h"
#include "model-profile.h"
#include "pool.h"
#include "store.h"

/* Notices models added to or removed from the store by hand, through
 * inotify on both roots, so that they appear and disappear without waiting
 * for a Load.
 *
 * Watched: ModelDir= itself, its folders (a model, or an organisation) and
 * the folders of each organisation; the Hugging Face cache itself, each
 * models--* folder, its refs/ and snapshots/ and each snapshot. Names
 * starting with '.' (staging folders, the cache's .locks) are neither
 * watched nor a reason to look again. Watches follow the store: each look
 * adds those of new folders and drops those of folders that went; there are
 * at most STORE_WATCH_MAX of them.
 *
 * A burst of events (a folder copied file by file, many models moved in at
 * once) makes one look: STORE_WATCH_SETTLE_USEC after the last event, and
 * never later than STORE_WATCH_DELAY_MAX_USEC after the first. A look lists
 * the store's directories on the loop (store_list(), cheap: names only) and
 * hands the names to its owner, who compares them with what it knows. What a
 * new model holds (its files, their size, whether it is usable) is found
 * out off the loop, on a worker thread of the watch's own, one model at a
 * time (store_watch_resolve()). The kernel's queue overflowing costs
 * nothing but a look, since every look is complete.
 *
 * A root that is removed or moved away is logged and watched again, by its
 * configured path, as soon as it is back (looked for every
 * STORE_WATCH_RETRY_USEC); a root missing at start-up is looked for the
 * same way. Everything here runs on the loop thread but the resolutions. */

#define STORE_WATCH_MAX             (4U * POOL_MODELS_MAX)
#define STORE_WATCH_SETTLE_USEC     (150 * USEC_PER_MSEC)
#define STORE_WATCH_DELAY_MAX_USEC  (1 * USEC_PER_SEC)
#define STORE_WATCH_RETRY_USEC      (5 * USEC_PER_SEC)

typedef struct StoreWatch StoreWatch;

typedef struct StoreWatchCallbacks {
        /* What the store lists now: names sorted, NULL-terminated, valid
         * model names only (store_list()). The callee may call
         * store_watch_resolve() from here. */
        void (*listed)(char **names, void *userdata);
        /* Each name passed to store_watch_resolve() comes back here once,
         * with r and error as store_measure() gives them, the size of its
         * weights, its source and revision (NULL when r < 0) and its
         * profile (the callee may take it with model_profile_move()). r is
         * -ECANCELED (and the result to be dropped) when the watch was
         * stopped, or when the name was gone from the store's last listing
         * by the time it was resolved. */
        void (*resolved)(const char *name, int r, uint64_t size_bytes, ModelSource source, const char *revision,
                         const char *error, ModelProfile *profile, void *userdata);
} StoreWatchCallbacks;

/* Starts watching and looks at the store once soon (something may have
 * changed since the owner's own scan). model_dir or hf_cache may be NULL
 * (not configured). Fails only when inotify or the worker cannot be had. */
int store_watch_new(sd_event *event, const char *model_dir, const char *hf_cache, const StoreWatchCallbacks *callbacks,
                    void *userdata, StoreWatch **ret);
/* For shutdown: no more events or looks; queued resolutions come back
 * cancelled. */
void store_watch_stop(StoreWatch *w);
/* Resolutions not yet handed back: shutdown waits for them. */
bool store_watch_busy(const StoreWatch *w);
/* Frees once nothing is resolving (store_watch_busy() false). */
StoreWatch *store_watch_free(StoreWatch *w);
static inline void store_watch_freep(StoreWatch **w) {
        *w = store_watch_free(*w);
}

/* Finds out off the loop what the model of that name holds. A name already
 * on its way is not queued twice (returns 0 then too). -EBUSY when
 * POOL_MODELS_MAX resolutions wait already, -ESHUTDOWN once stopped. */
int store_watch_resolve(StoreWatch *w, const char *name);

/* Looks at the store soon, as after a change: for changes the watch does
 * not see (the registry, written by the daemon itself). */
void store_watch_look_soon(StoreWatch *w);

/* What the scan at start-up and the watch learn of one listed model: 0, the
 * size of its weights files, its revision (store.h) and its profile
 * (model-profile.h: its config.json, whether it has a tokenizer.json, and
 * a BERT's headers; left empty, kind unknown, if even that cannot be
 * read), or store_resolve()'s error and message (*ret_error, NULL only if
 * even that allocation failed). Its source either way (where it was
 * found; STORE if nowhere). Opens files: on the loop only before it
 * serves. */
int store_measure(const char *model_dir, const char *hf_cache, const char *name, uint64_t *ret_size_bytes,
                  ModelSource *ret_source, char **ret_revision, ModelProfile *ret_profile, char **ret_error);
