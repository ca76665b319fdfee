/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uthash.h>

#include "log.h"
#include "macro.h"
#include "store.h"
#include "store-watch.h"
#include "strv.h"
#include "time-util.h"
#include "workpool.h"

#undef uthash_nonfatal_oom
#define uthash_nonfatal_oom(obj) (hash_oom = true)

#define HF_REPO_PREFIX "models--"

/* Entries created, removed or moved; files written (refs/main is rewritten
 * in place); the watched folder itself going away. */
#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE | IN_DELETE_SELF | \
                    IN_MOVE_SELF | IN_ONLYDIR)

typedef enum WatchKind {
        WATCH_FOLDER,
        WATCH_MODEL_DIR_ROOT,
        WATCH_HF_CACHE_ROOT,
} WatchKind;

typedef struct Watch {
        int wd;
        WatchKind kind;
        bool seen;                 /* during a look: still wanted */
        UT_hash_handle hh;
} Watch;

typedef struct ResolveJob {
        WorkItem item;
        StoreWatch *watch;
        char *name;                /* the hash key */
        /* Results, written by the worker. */
        int result;
        uint64_t size_bytes;
        ModelSource source;
        char *revision;
        char *error;
        ModelProfile profile;
        UT_hash_handle hh;
} ResolveJob;

struct StoreWatch {
        sd_event *event;
        char *model_dir;
        char *hf_cache;
        const StoreWatchCallbacks *callbacks;
        void *userdata;

        int inotify_fd;
        sd_event_source *inotify_source;
        sd_event_source *look_timer;
        sd_event_source *retry_timer;
        uint64_t pending_since;    /* monotonic time of the first event not yet looked at; 0: none */
        Watch *watches;            /* by wd */
        unsigned n_seen;
        bool warned_full;
        bool root_watched[2];      /* ModelDir, the cache: as of the last look */

        char **listed;             /* the last look's names, sorted */
        WorkPool *resolvers;
        ResolveJob *jobs;          /* by name: queued or running */
        bool stopped;
};

int store_measure(const char *model_dir, const char *hf_cache, const char *name, uint64_t *ret_size_bytes,
                  ModelSource *ret_source, char **ret_revision, ModelProfile *ret_profile, char **ret_error) {
        _cleanup_(model_location_freep) ModelLocation *location = NULL;
        uint64_t total = 0;
        int r;

        r = store_resolve(model_dir, hf_cache, name, &location, ret_error);
        if (r < 0) {
                /* Where it failed matters still: a cache model is not ours to remove. */
                if (store_locate(model_dir, hf_cache, name, ret_source) <= 0)
                        *ret_source = MODEL_SOURCE_STORE;
                return r;
        }
        for (size_t i = 0; i < location->n_weights; i++) {
                struct stat st;

                if (fstat(location->weight_fds[i], &st) >= 0)
                        total += (uint64_t) st.st_size;
        }
        r = model_profile_read(&location->folder, name, location->weight_fds, location->weight_paths,
                               location->n_weights, NULL, NULL, ret_profile);
        if (r < 0)
                log_warning_errno(r, "Cannot tell what kind of model %s is: %m", name);
        *ret_size_bytes = total;
        *ret_source = location->source;
        *ret_revision = TAKE_PTR(location->revision);
        return 0;
}

/* --- Resolving new models, off the loop -------------------------------- */

static ResolveJob *resolve_job_free(ResolveJob *j) {
        if (!j)
                return NULL;
        free(j->name);
        free(j->revision);
        free(j->error);
        model_profile_done(&j->profile);
        free(j);
        return NULL;
}

static void resolve_run(WorkItem *item) {
        ResolveJob *j = (ResolveJob *) ((char *) item - offsetof(ResolveJob, item));

        if (work_item_cancelled(item)) {
                j->result = -ECANCELED;
                return;
        }
        j->result = store_measure(j->watch->model_dir, j->watch->hf_cache, j->name, &j->size_bytes, &j->source,
                                  &j->revision, &j->profile, &j->error);
}

static bool is_listed(const StoreWatch *w, const char *name) {
        size_t lo = 0, hi = strv_length(w->listed);

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(w->listed[mid], name);

                if (c == 0)
                        return true;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

static void resolve_done(WorkItem *item, bool ran) {
        ResolveJob *j = (ResolveJob *) ((char *) item - offsetof(ResolveJob, item));
        StoreWatch *w = j->watch;
        int r = ran ? j->result : -ECANCELED;

        HASH_DEL(w->jobs, j);
        /* Gone again while it was being resolved: the look that noticed has
         * told the owner already. */
        if (w->stopped || !is_listed(w, j->name))
                r = -ECANCELED;
        w->callbacks->resolved(j->name, r, j->size_bytes, j->source, j->revision, j->error, &j->profile,
                               w->userdata);
        resolve_job_free(j);
}

int store_watch_resolve(StoreWatch *w, const char *name) {
        ResolveJob *j;
        bool hash_oom = false;
        int r;

        assert(w);
        assert(name);

        if (w->stopped)
                return -ESHUTDOWN;
        HASH_FIND_STR(w->jobs, name, j);
        if (j)
                return 0;

        j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->watch = w;
        j->name = strdup(name);
        if (!j->name) {
                resolve_job_free(j);
                return -ENOMEM;
        }
        j->item.run = resolve_run;
        j->item.done = resolve_done;

        HASH_ADD_KEYPTR(hh, w->jobs, j->name, strlen(j->name), j);
        if (hash_oom) {
                resolve_job_free(j);
                return -ENOMEM;
        }
        r = workpool_submit(w->resolvers, &j->item);
        if (r < 0) {
                HASH_DEL(w->jobs, j);
                resolve_job_free(j);
                return r;
        }
        return 0;
}

bool store_watch_busy(const StoreWatch *w) {
        return w && w->resolvers && workpool_in_flight(w->resolvers) > 0;
}

/* --- Watches ------------------------------------------------------------ */

static Watch *watch_find(StoreWatch *w, int wd) {
        Watch *watch;

        HASH_FIND_INT(w->watches, &wd, watch);
        return watch;
}

static void watch_forget(StoreWatch *w, Watch *watch) {
        HASH_DEL(w->watches, watch);
        free(watch);
}

static const char *root_description(WatchKind kind) {
        return kind == WATCH_MODEL_DIR_ROOT ? "ModelDir=" : "HuggingFaceCache=";
}

/* Watches path (again), marking it wanted. Returns 0 when it is watched,
 * negative errno when not (a folder that just went, or the bound reached). */
static int watch_add(StoreWatch *w, const char *path, WatchKind kind) {
        bool hash_oom = false;
        Watch *watch;
        int wd;

        if (w->n_seen >= STORE_WATCH_MAX) {
                if (!w->warned_full)
                        log_warning("The store has more than %u folders to watch; changes in the others are "
                                    "noticed only with those in the watched ones.", STORE_WATCH_MAX);
                w->warned_full = true;
                return -E2BIG;
        }

        /* The roots are used as configured, symlinks and all; below them a
         * symlink is not followed, so that nothing outside is watched. */
        wd = inotify_add_watch(w->inotify_fd, path, WATCH_MASK | (kind == WATCH_FOLDER ? IN_DONT_FOLLOW : 0));
        if (wd < 0) {
                if (errno == ENOSPC && !w->warned_full) {
                        log_warning("The kernel's limit of inotify watches is reached (fs.inotify.max_user_watches): "
                                    "models added by hand in some folders are noticed late.");
                        w->warned_full = true;
                } else if (errno != ENOENT && errno != ENOTDIR)
                        log_debug_errno(errno, "Cannot watch %s: %m", path);
                return -errno;
        }

        watch = watch_find(w, wd);
        if (!watch) {
                watch = calloc(1, sizeof *watch);
                if (!watch) {
                        (void) inotify_rm_watch(w->inotify_fd, wd);
                        return -ENOMEM;
                }
                watch->wd = wd;
                HASH_ADD_INT(w->watches, wd, watch);
                if (hash_oom) {
                        free(watch);
                        (void) inotify_rm_watch(w->inotify_fd, wd);
                        return -ENOMEM;
                }
        }
        /* A root is a root even when it is also reached as a folder. */
        if (!watch->seen || kind != WATCH_FOLDER)
                watch->kind = kind;
        if (!watch->seen)
                w->n_seen++;
        watch->seen = true;
        return 0;
}

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

static DIR *open_folder(const char *path, bool follow) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
        DIR *d;

        if (fd < 0)
                return NULL;
        d = fdopendir(fd);
        if (!d)
                close(fd);
        return d;
}

typedef int (*folder_fn_t)(StoreWatch *w, const char *path, int parent_fd, const char *entry);

/* Each entry of the folder worth watching: a directory (or one that may
 * be) whose name does not start with '.'. Calls fn with its path; stops
 * only when memory runs out. follow: path may be a symlink (a root). */
static int for_each_folder(StoreWatch *w, const char *path, bool follow, folder_fn_t fn) {
        _cleanup_(closedirp) DIR *d = open_folder(path, follow);
        struct dirent *de;
        int r;

        if (!d)
                return 0;
        while ((de = readdir(d))) {
                _cleanup_free_ char *child = NULL;

                if (de->d_name[0] == '.' || (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN))
                        continue;
                if (asprintf(&child, "%s/%s", path, de->d_name) < 0)
                        return -ENOMEM;
                r = fn(w, child, dirfd(d), de->d_name);
                if (r == -ENOMEM)
                        return r;
        }
        return 0;
}

static int watch_folder(StoreWatch *w, const char *path, int parent_fd, const char *entry) {
        return watch_add(w, path, WATCH_FOLDER);
}

/* A folder of ModelDir: a model (whose own subfolders, such as
 * 1_Pooling/, say nothing about which models exist), or an organisation
 * whose folders are models. */
static int watch_model_dir_entry(StoreWatch *w, const char *path, int parent_fd, const char *entry) {
        struct stat st;
        int r;

        r = watch_add(w, path, WATCH_FOLDER);
        if (r < 0)
                return r;
        if (fstatat(parent_fd, entry, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
                return 0;
        {
                _cleanup_close_ int fd = openat(parent_fd, entry, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);

                if (fd < 0)
                        return 0;
                if (faccessat(fd, STORE_SINGLE_WEIGHTS_FILE, F_OK, AT_SYMLINK_NOFOLLOW) >= 0 ||
                    faccessat(fd, STORE_INDEX_FILE, F_OK, AT_SYMLINK_NOFOLLOW) >= 0)
                        return 0;
        }
        return for_each_folder(w, path, false, watch_folder);
}

/* A models--* folder of the cache: a snapshot appearing, or refs/main
 * being written, makes a model usable that was not. */
static int watch_hf_entry(StoreWatch *w, const char *path, int parent_fd, const char *entry) {
        _cleanup_free_ char *refs = NULL, *snapshots = NULL;
        int r;

        if (strncmp(entry, HF_REPO_PREFIX, strlen(HF_REPO_PREFIX)) != 0)
                return 0;
        r = watch_add(w, path, WATCH_FOLDER);
        if (r < 0)
                return r;
        if (asprintf(&refs, "%s/refs", path) < 0 || asprintf(&snapshots, "%s/snapshots", path) < 0)
                return -ENOMEM;
        (void) watch_add(w, refs, WATCH_FOLDER);
        r = watch_add(w, snapshots, WATCH_FOLDER);
        if (r < 0)
                return r == -ENOMEM ? r : 0;
        return for_each_folder(w, snapshots, false, watch_folder);
}

static void watch_root(StoreWatch *w, const char *path, WatchKind kind, folder_fn_t fn) {
        size_t i = kind == WATCH_MODEL_DIR_ROOT ? 0 : 1;
        int r;

        if (!path)
                return;
        r = watch_add(w, path, kind);
        if (r < 0) {
                /* A look may find the root gone before its IN_DELETE_SELF is
                 * read (a slow daemon reads the events of a removal in
                 * several batches): said as that event would say it. */
                if (w->root_watched[i] && r == -ENOENT)
                        log_warning("%s%s was removed; its models leave. It is watched again once it is back.",
                                    root_description(kind), path);
                else if (w->root_watched[i] || r != -ENOENT)
                        log_warning_errno(r, "Cannot watch %s%s: %m. Models added or removed there by hand are "
                                          "noticed once it can be watched again.", root_description(kind), path);
                w->root_watched[i] = false;
                return;
        }
        if (!w->root_watched[i])
                log_info("Watching %s%s again for models added or removed by hand.", root_description(kind), path);
        w->root_watched[i] = true;
        r = for_each_folder(w, path, true, fn);
        if (r < 0)
                log_warning_errno(r, "Cannot watch every folder of %s: %m", path);
}

static int arm(sd_event_source *s, uint64_t when) {
        int r;

        r = sd_event_source_set_time(s, when);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return r;
}

/* Brings the watches in line with the folders there are now: mark and
 * sweep, so that folders that went or moved away cost no watch. */
static void watches_sync(StoreWatch *w) {
        Watch *watch, *tmp;
        int r;

        w->n_seen = 0;
        HASH_ITER(hh, w->watches, watch, tmp)
                watch->seen = false;

        watch_root(w, w->model_dir, WATCH_MODEL_DIR_ROOT, watch_model_dir_entry);
        watch_root(w, w->hf_cache, WATCH_HF_CACHE_ROOT, watch_hf_entry);

        HASH_ITER(hh, w->watches, watch, tmp)
                if (!watch->seen) {
                        (void) inotify_rm_watch(w->inotify_fd, watch->wd);
                        watch_forget(w, watch);
                }

        if ((w->model_dir && !w->root_watched[0]) || (w->hf_cache && !w->root_watched[1])) {
                r = arm(w->retry_timer, now_monotonic_usec() + STORE_WATCH_RETRY_USEC);
                if (r < 0)
                        log_warning_errno(r, "Cannot arm the timer that looks for a missing store root: %m");
        }
}

/* --- Looking ------------------------------------------------------------ */

static void look(StoreWatch *w) {
        char **names = NULL;
        int r;

        w->pending_since = 0;
        watches_sync(w);

        r = store_list(w->model_dir, w->hf_cache, &names);
        if (r < 0) {
                log_warning_errno(r, "Cannot list the models in the store again: %m");
                return;
        }
        strv_free(w->listed);
        w->listed = names;
        w->callbacks->listed(names, w->userdata);
}

static int on_look_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        look(userdata);
        return 0;
}

static int on_retry_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        StoreWatch *w = userdata;

        if ((w->model_dir && !w->root_watched[0]) || (w->hf_cache && !w->root_watched[1]))
                look(w);
        return 0;
}

static void schedule_look(StoreWatch *w) {
        uint64_t now = now_monotonic_usec();
        int r;

        if (w->pending_since == 0)
                w->pending_since = now;
        r = arm(w->look_timer, MIN(now + STORE_WATCH_SETTLE_USEC, w->pending_since + STORE_WATCH_DELAY_MAX_USEC));
        if (r < 0) {
                /* Better late than wrong: look now. */
                log_warning_errno(r, "Cannot arm the store's timer, looking at once: %m");
                look(w);
        }
}

void store_watch_look_soon(StoreWatch *w) {
        if (w && !w->stopped)
                schedule_look(w);
}

static void handle_event(StoreWatch *w, const struct inotify_event *e, bool *look_wanted) {
        Watch *watch;

        if (e->mask & IN_Q_OVERFLOW) {
                log_notice("Too many changes in the store at once for the kernel's queue; looking at all of it.");
                *look_wanted = true;
                return;
        }

        watch = watch_find(w, e->wd);
        if (e->mask & IN_IGNORED) {
                /* The folder went, or its watch was removed: the kernel has
                 * dropped it. */
                if (watch)
                        watch_forget(w, watch);
                *look_wanted = true;
                return;
        }
        if (!watch)
                return;   /* events queued before its watch was removed */

        if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
                if (watch->kind != WATCH_FOLDER) {
                        /* Said once: the look that follows finds it missing. */
                        w->root_watched[watch->kind == WATCH_MODEL_DIR_ROOT ? 0 : 1] = false;
                        log_warning("%s%s was %s; its models leave. It is watched again once it is back.",
                                    root_description(watch->kind),
                                    watch->kind == WATCH_MODEL_DIR_ROOT ? w->model_dir : w->hf_cache,
                                    e->mask & IN_DELETE_SELF ? "removed" : "moved away");
                }
                /* A folder moved elsewhere keeps its watch otherwise: the look
                 * watches it again by its path if it is still in the store. */
                if (e->mask & IN_MOVE_SELF)
                        (void) inotify_rm_watch(w->inotify_fd, watch->wd);
                *look_wanted = true;
                return;
        }

        /* Staging folders, .locks, editors' and downloaders' temporary files. */
        if (e->len > 0 && e->name[0] == '.')
                return;
        *look_wanted = true;
}

static int on_inotify(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        StoreWatch *w = userdata;
        bool look_wanted = false;
        union {
                struct inotify_event event;
                char raw[64 * 1024];
        } buffer;

        for (;;) {
                ssize_t n = read(fd, &buffer, sizeof buffer);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                log_warning_errno(errno, "Cannot read the store's inotify events; looking at all of "
                                                  "it: %m");
                        if (errno != EAGAIN)
                                look_wanted = true;
                        break;
                }
                for (char *p = buffer.raw; p < buffer.raw + n;) {
                        const struct inotify_event *e = (const struct inotify_event *) p;

                        handle_event(w, e, &look_wanted);
                        p += sizeof *e + e->len;
                }
        }

        if (look_wanted)
                schedule_look(w);
        return 0;
}

/* --- Life --------------------------------------------------------------- */

int store_watch_new(sd_event *event, const char *model_dir, const char *hf_cache, const StoreWatchCallbacks *callbacks,
                    void *userdata, StoreWatch **ret) {
        _cleanup_(store_watch_freep) StoreWatch *w = NULL;
        int r;

        assert(event);
        assert(callbacks && callbacks->listed && callbacks->resolved);
        assert(ret);

        w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->inotify_fd = -1;
        w->event = sd_event_ref(event);
        w->callbacks = callbacks;
        w->userdata = userdata;
        if ((model_dir && *model_dir && !(w->model_dir = strdup(model_dir))) ||
            (hf_cache && *hf_cache && !(w->hf_cache = strdup(hf_cache))))
                return -ENOMEM;

        r = workpool_new(event, "store", 1, POOL_MODELS_MAX, &w->resolvers);
        if (r < 0)
                return r;

        w->inotify_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
        if (w->inotify_fd < 0)
                return -errno;
        r = sd_event_add_io(event, &w->inotify_source, w->inotify_fd, EPOLLIN, on_inotify, w);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(w->inotify_source, "store-watch");

        r = sd_event_add_time(event, &w->look_timer, CLOCK_MONOTONIC, UINT64_MAX, 10 * USEC_PER_MSEC, on_look_timer,
                              w);
        if (r >= 0)
                r = sd_event_add_time(event, &w->retry_timer, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_SEC,
                                      on_retry_timer, w);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(w->retry_timer, SD_EVENT_OFF);

        /* The roots as they are now: a missing one is reported once, here. */
        w->root_watched[0] = w->root_watched[1] = true;
        watches_sync(w);

        /* Whatever changed between the owner's scan and the first watch. */
        schedule_look(w);

        *ret = TAKE_PTR(w);
        return 0;
}

void store_watch_stop(StoreWatch *w) {
        ResolveJob *j, *tmp;

        if (!w || w->stopped)
                return;
        w->stopped = true;
        w->inotify_source = sd_event_source_disable_unref(w->inotify_source);
        w->look_timer = sd_event_source_disable_unref(w->look_timer);
        w->retry_timer = sd_event_source_disable_unref(w->retry_timer);
        if (w->resolvers)
                HASH_ITER(hh, w->jobs, j, tmp)
                        workpool_cancel(w->resolvers, &j->item);
}

StoreWatch *store_watch_free(StoreWatch *w) {
        Watch *watch, *tmp;

        if (!w)
                return NULL;

        store_watch_stop(w);
        if (store_watch_busy(w)) {
                /* Only when the loop ended before shutdown drained the
                 * resolutions: the worker may still write to them. */
                log_error("Stopping while %u model(s) of the store are still being resolved.",
                          workpool_in_flight(w->resolvers));
                return NULL;
        }
        workpool_free(w->resolvers);

        HASH_ITER(hh, w->watches, watch, tmp)
                watch_forget(w, watch);
        if (w->inotify_fd >= 0)
                close(w->inotify_fd);
        strv_free(w->listed);
        free(w->model_dir);
        free(w->hf_cache);
        sd_event_unref(w->event);
        free(w);
        return NULL;
}
