/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "download.h"
#include "hub-token.h"
#include "log.h"
#include "macro.h"
#include "model-lifecycle.h"
#include "pull-process.h"
#include "store-watch.h"
#include "strv.h"
#include "test-hooks.h"
#include "time-util.h"

#define PROGRESS_INTERVAL_USEC (50 * USEC_PER_MSEC)
/* The metadata file is ours and small; anything bigger is not ours. */
#define METADATA_MAX (4U * 1024U * 1024U)
/* A model folder holds files and 1_Pooling/: nothing deeper is removed. */
#define REMOVE_DEPTH_MAX 3
/* Staging folders one cleaning weighs; the rest wait for the next one. */
#define STAGING_FOLDERS_MAX 4096U
/* Names tried for moving a replaced model aside. */
#define REPLACED_ATTEMPTS_MAX 64U
/* At most one step of each download, the removals of replaced models and
 * one cleaning wait for the worker at a time. */
#define JOBS_QUEUE_MAX (2U * DOWNLOADS_MAX + 1U)

typedef enum DownloadPhase {
        DOWNLOAD_QUEUED,              /* waits for a helper's slot, or for the staging folder to be cleaned */
        DOWNLOAD_RUNNING,             /* its helper runs */
        DOWNLOAD_INSTALLING,          /* verified: moving into the store, on the worker and the loop */
} DownloadPhase;

typedef enum JobKind {
        JOB_METADATA,                 /* writes and syncs the metadata file in the staging folder */
        JOB_MEASURE,                  /* syncs the folder the model was moved into, measures the model */
        JOB_REMOVE,                   /* removes a replaced model, moved aside */
        JOB_CLEAN,                    /* download_staging_clean() */
} JobKind;

struct DownloadJob {
        WorkItem item;
        Manager *manager;
        DownloadJob *next;            /* in the manager's list, until it comes back */
        JobKind kind;
        Download *download;           /* whose step it is (METADATA, MEASURE), or NULL */
        /* Inputs, fixed before it is submitted. */
        char *path;                   /* METADATA: the staging folder; MEASURE: the model's parent; REMOVE: the tree */
        char *text;                   /* METADATA */
        char *model_dir;              /* MEASURE, CLEAN */
        char *hf_cache;               /* MEASURE */
        char *name;                   /* MEASURE */
        char **keep;                  /* CLEAN */
        int64_t now;                  /* CLEAN */
        /* Results. */
        int result;
        uint64_t size_bytes;
        ModelSource source;           /* MEASURE */
        char *revision;               /* MEASURE */
        ModelProfile profile;         /* MEASURE */
        char *error;
};

typedef struct DownloadWaiter {
        DownloadReply reply;
        void *userdata;
} DownloadWaiter;

struct Download {
        Manager *manager;
        Download *next;
        DownloadPhase phase;
        char *repo;
        char *revision;
        char *folder;                 /* ORG--NAME, its name in the staging folder */
        char *staging;
        int token_fd;                 /* the read end of a pipe holding the token, or -1 */
        PullProcess *process;
        DownloadWaiter waiters[DOWNLOAD_WAITERS_MAX];
        size_t n_waiters;
        bool replied;                 /* the plan was accepted: joiners are answered at once */
        bool up_to_date;              /* the store holds that commit already */
        bool refused;                 /* refused at READY; message below */
        char *refusal;
        bool cancel_requested;        /* while installing, before the move */
        bool moved;                   /* the files are in the store: nothing left to cancel */
        cJSON *metadata;
        uint64_t done, total;
        uint64_t last_progress;
        DownloadJob *job;             /* its step on the worker, or NULL */
};

int download_revision_validate(const char *revision) {
        size_t n = strlen(revision);

        if (n == 0 || n > DOWNLOAD_REVISION_MAX)
                return -EINVAL;
        if (strspn(revision, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-") != n)
                return -EINVAL;
        if (strstr(revision, ".."))
                return -EINVAL;
        return 0;
}

/* --- Files, for any thread ---------------------------------------------- */

static int remove_tree_at(int dfd, const char *name, unsigned depth) {
        _cleanup_close_ int fd = -1;
        DIR *dir;
        struct dirent *de;
        int r = 0;

        if (unlinkat(dfd, name, 0) >= 0 || errno == ENOENT)
                return 0;
        if (errno != EISDIR && errno != EPERM)
                return -errno;
        if (depth == 0)
                return -ELOOP;
        fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        dir = fdopendir(fd);
        if (!dir)
                return -errno;
        fd = -1;
        while ((de = readdir(dir))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                int k = remove_tree_at(dirfd(dir), de->d_name, depth - 1);
                if (k < 0 && r == 0)
                        r = k;
        }
        closedir(dir);
        if (unlinkat(dfd, name, AT_REMOVEDIR) < 0 && r == 0)
                r = -errno;
        return r;
}

/* The disk space a tree takes (allocated blocks, so sparse .part files
 * count for what they hold). */
static uint64_t tree_bytes_at(int dfd, const char *name, unsigned depth) {
        _cleanup_close_ int fd = -1;
        struct dirent *de;
        struct stat st;
        uint64_t sum;
        DIR *dir;

        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return 0;
        sum = (uint64_t) st.st_blocks * 512;
        if (!S_ISDIR(st.st_mode) || depth == 0)
                return sum;
        fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return sum;
        dir = fdopendir(fd);
        if (!dir)
                return sum;
        fd = -1;
        while ((de = readdir(dir)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        sum += tree_bytes_at(dirfd(dir), de->d_name, depth - 1);
        closedir(dir);
        return sum;
}

/* write() may write less than asked (a signal, a file size limit): the
 * rest follows, or the error that stopped it. */
static int write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int download_metadata_write(const char *staging, const char *text) {
        _cleanup_close_ int dfd = -1, fd = -1;
        int r;

        dfd = open(staging, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        fd = openat(dfd, DOWNLOAD_METADATA_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        r = write_all(fd, text, strlen(text));
        if (r < 0)
                return r;
        if (fsync(fd) < 0)
                return -errno;
        /* Its name too, before the folder moves into the store. */
        if (fsync(dfd) < 0)
                return -errno;
        return 0;
}

typedef struct StagingFolder {
        char *name;
        int64_t mtime;
        uint64_t bytes;
} StagingFolder;

static int staging_folder_compare(const void *a, const void *b) {
        const StagingFolder *x = a, *y = b;

        if (x->mtime != y->mtime)
                return x->mtime < y->mtime ? -1 : 1;
        return strcmp(x->name, y->name);
}

static void remove_staging_folder(int dfd, const char *dir, const char *name, const char *why) {
        int r = remove_tree_at(dfd, name, REMOVE_DEPTH_MAX);

        if (r < 0)
                log_warning_errno(r, "Cannot remove the staging folder %s/%s (%s): %m", dir, name, why);
        else
                log_info("Removed the staging folder %s/%s: %s.", dir, name, why);
}

void download_staging_clean(const char *model_dir, char * const *keep, int64_t now) {
        _cleanup_free_ char *dir = NULL;
        _cleanup_close_ int fd = -1;
        StagingFolder *folders = NULL;
        size_t n = 0, allocated = 0;
        uint64_t total = 0, budget = UINT64_MAX;
        struct statvfs sv;
        struct dirent *de;
        DIR *d;

        if (asprintf(&dir, "%s/" DOWNLOAD_STAGING_DIR, model_dir) < 0)
                return;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return;         /* none yet */
        if (fstatvfs(fd, &sv) >= 0)
                budget = (uint64_t) sv.f_blocks * sv.f_frsize / 100 * DOWNLOAD_STAGING_SHARE_PERCENT;
        d = fdopendir(fd);
        if (!d)
                return;
        fd = -1;

        while ((de = readdir(d))) {
                struct stat st;

                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
                        continue;
                if (strncmp(de->d_name, DOWNLOAD_REPLACED_PREFIX, strlen(DOWNLOAD_REPLACED_PREFIX)) == 0) {
                        remove_staging_folder(dirfd(d), dir, de->d_name, "the files of a replaced model");
                        continue;
                }
                if (de->d_name[0] == '.' || strv_contains(keep, de->d_name))
                        continue;
                if (st.st_mtim.tv_sec <= now - DOWNLOAD_STAGING_KEEP_SEC) {
                        char why[64];

                        snprintf(why, sizeof why, "unused for %u days",
                                 (unsigned) (DOWNLOAD_STAGING_KEEP_SEC / (24 * 3600)));
                        remove_staging_folder(dirfd(d), dir, de->d_name, why);
                        continue;
                }
                if (n >= STAGING_FOLDERS_MAX)
                        continue;
                if (n == allocated) {
                        size_t more = MAX(allocated * 2, (size_t) 16);
                        StagingFolder *f = reallocarray(folders, more, sizeof *f);

                        if (!f)
                                break;
                        folders = f;
                        allocated = more;
                }
                folders[n] = (StagingFolder) {
                        .name = strdup(de->d_name),
                        .mtime = st.st_mtim.tv_sec,
                        .bytes = tree_bytes_at(dirfd(d), de->d_name, REMOVE_DEPTH_MAX),
                };
                if (!folders[n].name)
                        break;
                total += folders[n].bytes;
                n++;
        }

        /* What failed downloads keep for later is bounded: the least
         * recently used go first. */
        if (n > 0)
                qsort(folders, n, sizeof *folders, staging_folder_compare);
        for (size_t i = 0; i < n && total > budget; i++) {
                char why[128];

                snprintf(why, sizeof why, "the least recently used, beyond %u%% of the file system",
                         DOWNLOAD_STAGING_SHARE_PERCENT);
                remove_staging_folder(dirfd(d), dir, folders[i].name, why);
                total -= folders[i].bytes;
        }
        for (size_t i = 0; i < n; i++)
                free(folders[i].name);
        free(folders);
        closedir(d);
}

/* --- The downloads' worker ----------------------------------------------- */

static DownloadJob *job_free(DownloadJob *j) {
        if (!j)
                return NULL;
        free(j->path);
        free(j->text);
        free(j->model_dir);
        free(j->hf_cache);
        free(j->name);
        strv_free(j->keep);
        free(j->revision);
        model_profile_done(&j->profile);
        free(j->error);
        free(j);
        return NULL;
}

static DownloadJob *job_new(Manager *m, JobKind kind, Download *d) {
        DownloadJob *j = calloc(1, sizeof *j);

        if (!j)
                return NULL;
        j->manager = m;
        j->kind = kind;
        j->download = d;
        return j;
}

static void job_run(WorkItem *item) {
        DownloadJob *j = item->userdata;
        _cleanup_close_ int fd = -1;

        if (work_item_cancelled(item)) {
                j->result = -ECANCELED;
                return;
        }
        switch (j->kind) {
        case JOB_METADATA:
                j->result = download_metadata_write(j->path, j->text);
                return;
        case JOB_MEASURE:
                /* The rename, before the model is said to be there. */
                fd = open(j->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (fd >= 0 && fsync(fd) < 0)
                        log_warning_errno(errno, "Cannot sync %s: %m", j->path);
                j->result = store_measure(j->model_dir, j->hf_cache, j->name, &j->size_bytes, &j->source,
                                          &j->revision, &j->profile, &j->error);
                return;
        case JOB_REMOVE:
                j->result = remove_tree_at(AT_FDCWD, j->path, REMOVE_DEPTH_MAX);
                return;
        case JOB_CLEAN:
                download_staging_clean(j->model_dir, j->keep, j->now);
                j->result = 0;
                return;
        }
}

static void job_done(WorkItem *item, bool ran);

static void jobs_unlink(Manager *m, DownloadJob *j) {
        for (DownloadJob **p = &m->download_jobs; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        return;
                }
}

/* Hands the job to the worker; it is the caller's again on failure. */
static int job_submit(Manager *m, DownloadJob *j) {
        int r;

        if (!m->download_workers) {
                r = workpool_new(m->event, "download", 1, JOBS_QUEUE_MAX, &m->download_workers);
                if (r < 0)
                        return r;
        }
        j->item.run = job_run;
        j->item.done = job_done;
        j->item.userdata = j;
        r = workpool_submit(m->download_workers, &j->item);
        if (r < 0)
                return r;
        j->next = m->download_jobs;
        m->download_jobs = j;
        if (j->download)
                j->download->job = j;
        return 0;
}

static bool cleaning(Manager *m) {
        for (DownloadJob *j = m->download_jobs; j; j = j->next)
                if (j->kind == JOB_CLEAN)
                        return true;
        return false;
}

bool downloads_busy(Manager *m) {
        return m->download_jobs != NULL;
}

/* --- Downloads, on the loop ------------------------------------------------ */

static void download_reply_all(Download *d, int error, const char *message) {
        size_t n = d->n_waiters;

        d->n_waiters = 0;
        for (size_t i = 0; i < n; i++)
                d->waiters[i].reply(error, message, d->repo, d->waiters[i].userdata);
}

static Download *download_free(Download *d) {
        if (!d)
                return NULL;
        assert(d->n_waiters == 0);
        assert(!d->job);
        pull_process_free(d->process);
        if (d->token_fd >= 0)
                close(d->token_fd);
        cJSON_Delete(d->metadata);
        free(d->refusal);
        free(d->staging);
        free(d->folder);
        free(d->revision);
        free(d->repo);
        free(d);
        return NULL;
}

static void download_unlink(Manager *m, Download *d) {
        for (Download **p = &m->downloads; *p; p = &(*p)->next)
                if (*p == d) {
                        *p = d->next;
                        return;
                }
}

static Download *download_find_repo(Manager *m, const char *repo) {
        for (Download *d = m->downloads; d; d = d->next)
                if (strcmp(d->repo, repo) == 0)
                        return d;
        return NULL;
}

bool download_find(Manager *m, const char *name, uint64_t *ret_done, uint64_t *ret_total) {
        Download *d = download_find_repo(m, name);

        if (!d)
                return false;
        if (ret_done)
                *ret_done = d->done;
        if (ret_total)
                *ret_total = d->total;
        return true;
}

static int path_join3(const char *a, const char *b, const char *c, char **ret) {
        char *s;

        if (asprintf(&s, "%s/%s%s%s", a, b, c ? "/" : "", strempty(c)) < 0)
                return -ENOMEM;
        *ret = s;
        return 0;
}

static bool model_is_registered(Manager *m, const char *name) {
        PoolModel *model = pool_find(&m->pool, name);
        const ModelRuntime *rt = model ? model->userdata : NULL;

        return rt && rt->source == MODEL_SOURCE_LOCAL;
}

static bool model_is_loaded(Manager *m, const char *name) {
        PoolModel *model = pool_find(&m->pool, name);

        return model && model->state != MODEL_AVAILABLE && model->state != MODEL_ERROR &&
                model->state != MODEL_DOWNLOADING;
}

/* The commit a model in the store was pulled at, from its metadata file, or
 * NULL (no file, not ours, unreadable). */
static char *installed_commit(Manager *m, const char *repo) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        _cleanup_close_ int fd = -1;
        cJSON *json, *commit;
        char *result = NULL;
        struct stat st;
        ssize_t n;

        if (asprintf(&path, "%s/%s/" DOWNLOAD_METADATA_FILE, m->config.model_dir, repo) < 0)
                return NULL;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > METADATA_MAX)
                return NULL;
        text = malloc(st.st_size + 1);
        if (!text)
                return NULL;
        n = read(fd, text, st.st_size);
        if (n != st.st_size)
                return NULL;
        text[n] = '\0';

        json = cJSON_Parse(text);
        commit = cJSON_GetObjectItemCaseSensitive(json, "commit");
        if (cJSON_IsString(commit))
                result = strdup(commit->valuestring);
        cJSON_Delete(json);
        return result;
}

/* The bytes of the plan already in the staging folder, whole or as .part. */
static uint64_t staged_bytes(const char *staging, const PullPlan *plan) {
        _cleanup_close_ int dfd = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        uint64_t sum = 0;

        if (dfd < 0)
                return 0;
        for (size_t i = 0; i < plan->n_files; i++) {
                _cleanup_free_ char *part = NULL;
                struct stat st;

                if (fstatat(dfd, plan->files[i].name, &st, AT_SYMLINK_NOFOLLOW) >= 0 && S_ISREG(st.st_mode)) {
                        sum += MIN((uint64_t) st.st_size, plan->files[i].size);
                        continue;
                }
                if (asprintf(&part, "%s.part", plan->files[i].name) >= 0 &&
                    fstatat(dfd, part, &st, AT_SYMLINK_NOFOLLOW) >= 0 && S_ISREG(st.st_mode))
                        sum += MIN((uint64_t) st.st_size, plan->files[i].size);
        }
        return sum;
}

static cJSON *metadata_new(const Download *d, const PullPlan *plan) {
        cJSON *json = cJSON_CreateObject(), *files;

        if (!json ||
            !cJSON_AddStringToObject(json, "repo", d->repo) ||
            !cJSON_AddStringToObject(json, "revision", d->revision) ||
            !cJSON_AddStringToObject(json, "commit", plan->commit) ||
            !(files = cJSON_AddArrayToObject(json, "files")))
                goto fail;
        for (size_t i = 0; i < plan->n_files; i++) {
                cJSON *f = cJSON_CreateObject();

                if (!f)
                        goto fail;
                cJSON_AddItemToArray(files, f);
                if (!cJSON_AddStringToObject(f, "name", plan->files[i].name) ||
                    !cJSON_AddNumberToObject(f, "size", (double) plan->files[i].size) ||
                    !cJSON_AddStringToObject(f, "sha256", plan->files[i].sha256))
                        goto fail;
        }
        return json;
fail:
        cJSON_Delete(json);
        return NULL;
}

static void download_finish(Download *d, const char *result, const char *message) {
        Manager *m = d->manager;

        if (m->events && m->events->download_finished)
                m->events->download_finished(m, d->repo, result, strempty(message));
}

static void downloads_start_queued(Manager *m);

/* Folders left empty hold nothing to resume: they go. */
static void remove_empty_staging(Download *d) {
        Manager *m = d->manager;
        _cleanup_free_ char *dir = NULL;

        if (rmdir(d->staging) < 0 && errno != ENOENT && errno != ENOTEMPTY && errno != EEXIST)
                log_debug_errno(errno, "Cannot remove the empty folder %s: %m", d->staging);
        if (asprintf(&dir, "%s/" DOWNLOAD_STAGING_DIR, m->config.model_dir) >= 0)
                (void) rmdir(dir);
}

/* A download that put nothing into the store ends: a model known only for
 * it goes first, so that its callers, told next, find it gone. */
static void download_end(Download *d, int error, const char *result, const char *message) {
        Manager *m = d->manager;

        download_unlink(m, d);
        model_download_end(m, d->repo, false, 0, 0, MODEL_SOURCE_HUB, NULL, NULL, NULL);
        download_reply_all(d, error, message ?: "Out of memory.");
        download_finish(d, result, message ?: "Out of memory.");
        remove_empty_staging(d);
        download_free(d);
        downloads_start_queued(m);
}

static void install_failed(Download *d, const char *text) {
        log_warning("%s", text);
        download_end(d, -EREMOTEIO, "failed", text);
}

/* The new files are in the store: measured on the worker, then the model
 * is there for callers (available, or error saying why not) before
 * DownloadFinished says so. */
static void measured(Download *d, int r, uint64_t size_bytes, ModelSource source, const char *revision,
                     ModelProfile *profile, const char *error) {
        Manager *m = d->manager;

        download_unlink(m, d);
        model_download_end(m, d->repo, true, r, size_bytes, source, revision, profile, error);
        if (!d->up_to_date)
                log_info("Pulled %s into the store.", d->repo);
        download_finish(d, "done", "");
        download_free(d);
}

static void install_measure(Download *d) {
        Manager *m = d->manager;
        const char *slash = strchr(d->repo, '/');
        int length = slash ? (int) (slash - d->repo) : 0;
        DownloadJob *j;
        int r = -ENOMEM;

        d->phase = DOWNLOAD_INSTALLING;
        d->moved = true;
        j = job_new(m, JOB_MEASURE, d);
        if (j && (j->model_dir = strdup(m->config.model_dir)) && (j->name = strdup(d->repo)) &&
            (!m->config.huggingface_cache || (j->hf_cache = strdup(m->config.huggingface_cache)))) {
                /* The folder the model's folder was renamed into. */
                if (asprintf(&j->path, "%s/%.*s", m->config.model_dir, length, d->repo) >= 0)
                        r = job_submit(m, j);
                else
                        j->path = NULL;
        }
        if (r < 0) {
                log_warning_errno(r, "Cannot measure %s, just pulled: %m", d->repo);
                job_free(j);
                /* The files are there: the model is, with the plan's size. */
                return measured(d, 0, d->total, MODEL_SOURCE_HUB, NULL, NULL, NULL);
        }
}

/* The staging folder, after RENAME_EXCHANGE, holds the model that was
 * replaced: it is moved aside under a name no download uses, so that a
 * new pull of the repository can start at once, and removed on the
 * worker. */
static void remove_replaced(Download *d) {
        Manager *m = d->manager;
        static unsigned counter;
        DownloadJob *j;
        int r = -EEXIST;

        j = job_new(m, JOB_REMOVE, NULL);
        if (!j) {
                log_oom();
                return;
        }
        for (unsigned i = 0; i < REPLACED_ATTEMPTS_MAX && r == -EEXIST; i++) {
                free(j->path);
                j->path = NULL;
                if (asprintf(&j->path, "%s/" DOWNLOAD_STAGING_DIR "/" DOWNLOAD_REPLACED_PREFIX "%s-%u",
                             m->config.model_dir, d->folder, counter++) < 0) {
                        j->path = NULL;
                        r = -ENOMEM;
                        break;
                }
                r = renameat2(AT_FDCWD, d->staging, AT_FDCWD, j->path, RENAME_NOREPLACE) < 0 ? -errno : 0;
        }
        if (r < 0) {
                /* The next cleaning or pull of it deals with what stays. */
                log_warning_errno(r, "Cannot move the former files of %s aside in %s: %m", d->repo, d->staging);
                job_free(j);
                return;
        }
        r = job_submit(m, j);
        if (r < 0) {
                log_warning_errno(r, "Cannot remove the former files of %s from %s now; the next cleaning does: %m",
                                  d->repo, j->path);
                job_free(j);
        }
}

/* Moves the verified staging folder to its place in the store. A rename
 * within one file system: quick, and on the loop, so that no load can
 * start between the check that the model is not loaded and the move. */
static int install_move(Download *d, char **ret_message) {
        Manager *m = d->manager;
        _cleanup_free_ char *final = NULL;
        const char *slash;

        slash = strchr(d->repo, '/');
        if (slash) {
                if (asprintf(&final, "%s/%.*s", m->config.model_dir, (int) (slash - d->repo), d->repo) < 0)
                        return -ENOMEM;
                if (mkdir(final, 0755) < 0 && errno != EEXIST)
                        return log_warning_errno(-errno, "Cannot create %s: %m", final);
                free(final);
                final = NULL;
        }
        if (path_join3(m->config.model_dir, d->repo, NULL, &final) < 0)
                return -ENOMEM;

        if (renameat2(AT_FDCWD, d->staging, AT_FDCWD, final, RENAME_NOREPLACE) >= 0)
                return 0;
        if (errno != EEXIST)
                return log_warning_errno(-errno, "Cannot move %s into place: %m", d->repo);
        if (model_is_loaded(m, d->repo)) {
                (void) asprintf(ret_message, "%s is loaded: unload it and pull again to replace it.", d->repo);
                return -EBUSY;
        }
        if (renameat2(AT_FDCWD, d->staging, AT_FDCWD, final, RENAME_EXCHANGE) < 0)
                return log_warning_errno(-errno, "Cannot move %s into place: %m", d->repo);
        remove_replaced(d);
        return 0;
}

static void metadata_written(Download *d, int r) {
        _cleanup_free_ char *text = NULL;

        if (r < 0) {
                if (asprintf(&text, "Cannot write the metadata of %s: %s", d->repo, strerror(-r)) < 0)
                        text = NULL;
                return install_failed(d, text ?: "Out of memory.");
        }
        if (d->cancel_requested) {
                /* The verified files stay staged: a later pull of the same
                 * commit has nothing left to fetch. */
                if (asprintf(&text, "The download of %s was cancelled.", d->repo) < 0)
                        text = NULL;
                return download_end(d, -ECANCELED, "cancelled", text);
        }
        r = install_move(d, &text);
        if (r < 0) {
                if (!text && asprintf(&text, "Cannot move %s into the store: %s", d->repo, strerror(-r)) < 0)
                        text = NULL;
                return install_failed(d, text ?: "Out of memory.");
        }
        install_measure(d);
}

static void install_begin(Download *d) {
        Manager *m = d->manager;
        DownloadJob *j;
        int r = -ENOMEM;

        d->phase = DOWNLOAD_INSTALLING;
        j = job_new(m, JOB_METADATA, d);
        if (j && cJSON_AddNumberToObject(d->metadata, "time", (double) time(NULL)) &&
            (j->text = cJSON_Print(d->metadata)) && (j->path = strdup(d->staging)))
                r = job_submit(m, j);
        if (r < 0) {
                job_free(j);
                return metadata_written(d, r);
        }
}

static void job_done(WorkItem *item, bool ran) {
        DownloadJob *j = item->userdata;
        Manager *m = j->manager;
        Download *d = j->download;
        int r = ran ? j->result : -ECANCELED;

        jobs_unlink(m, j);
        if (d)
                d->job = NULL;

        if (d && m->shutting_down)
                /* downloads_stop_all() left it to its step: nobody waits. */
                download_free(d);
        else
                switch (j->kind) {
                case JOB_METADATA:
                        metadata_written(d, r);
                        break;
                case JOB_MEASURE:
                        measured(d, r, j->size_bytes, j->source, j->revision, &j->profile, j->error);
                        break;
                case JOB_REMOVE:
                        if (r < 0 && r != -ECANCELED)
                                log_warning_errno(r, "Cannot remove the former files of a pulled model from %s: %m",
                                                  j->path);
                        break;
                case JOB_CLEAN:
                        downloads_start_queued(m);
                        break;
                }

        job_free(j);
        manager_work_done(m);
}

/* --- The helper's outcome ------------------------------------------------- */

static void on_ready(PullProcess *p, const PullPlan *plan, void *userdata) {
        Download *d = userdata;
        Manager *m = d->manager;
        _cleanup_free_ char *commit = NULL, *message = NULL;
        struct statvfs sv;
        uint64_t staged, needed, available;

        d->total = plan->total_bytes;

        commit = installed_commit(m, d->repo);
        if (commit && strcmp(commit, plan->commit) == 0) {
                log_info("%s is at commit %s already.", d->repo, plan->commit);
                d->up_to_date = true;
                d->replied = true;      /* joiners until the helper is gone are answered at once */
                pull_process_cancel(p);
                download_reply_all(d, 0, NULL);
                return;
        }

        d->metadata = metadata_new(d, plan);
        if (!d->metadata) {
                d->refused = true;
                pull_process_cancel(p);
                return;
        }

        staged = staged_bytes(d->staging, plan);
        needed = plan->total_bytes > staged ? plan->total_bytes - staged : 0;
        if (statvfs(d->staging, &sv) < 0) {
                log_warning_errno(-errno, "Cannot tell the free space of %s: %m", d->staging);
                available = UINT64_MAX;
        } else
                available = (uint64_t) sv.f_bavail * sv.f_frsize;
        if (available < needed) {
                d->refused = true;
                if (asprintf(&d->refusal, "%s needs %" PRIu64 " bytes more in the store, which has %" PRIu64 " free.",
                             d->repo, needed, available) < 0)
                        d->refusal = NULL;
                pull_process_cancel(p);
                return;
        }

        if (pull_process_go(p) < 0) {
                pull_process_cancel(p);
                return;
        }
        d->replied = true;
        download_reply_all(d, 0, NULL);
}

static void on_progress(PullProcess *p, uint64_t done, uint64_t total, void *userdata) {
        Download *d = userdata;
        Manager *m = d->manager;
        uint64_t now = 0;

        d->done = done;
        d->total = total;
        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (done != total && now < d->last_progress + PROGRESS_INTERVAL_USEC)
                return;
        d->last_progress = now;
        if (m->events && m->events->download_progress)
                m->events->download_progress(m, d->repo, done, total);
}

static void on_finished(PullProcess *p, int error, const char *failure, const char *message, void *userdata) {
        _cleanup_free_ char *text = NULL;
        Download *d = userdata;
        Manager *m = d->manager;
        bool cancelled = error < 0 && failure && strcmp(failure, "cancelled") == 0;

        /* failure and message belong to the process: the words are taken
         * before it goes. */
        if (d->refused)
                text = strdup(d->refusal ?: "Out of memory.");
        else if (cancelled)
                (void) asprintf(&text, "The download of %s was cancelled.", d->repo);
        else if (error < 0)
                (void) asprintf(&text, "Download of %s failed (%s): %s", d->repo, strempty(failure), strempty(message));
        d->process = pull_process_free(d->process);
        d->phase = DOWNLOAD_INSTALLING;   /* its helper's slot is free */

        if (d->up_to_date)
                install_measure(d);
        else if (d->refused)
                download_end(d, d->refusal ? -EDQUOT : -ENOMEM, "failed", text);
        else if (error >= 0)
                install_begin(d);
        else if (cancelled)
                download_end(d, -ECANCELED, "cancelled", text);
        else {
                log_warning("%s", strempty(text));
                download_end(d, -EREMOTEIO, "failed", text);
        }
        downloads_start_queued(m);
}

static const PullCallbacks pull_callbacks = {
        .ready = on_ready,
        .progress = on_progress,
        .finished = on_finished,
};

static int make_staging(Download *d) {
        Manager *m = d->manager;
        _cleanup_free_ char *dir = NULL;

        if (asprintf(&dir, "%s/" DOWNLOAD_STAGING_DIR, m->config.model_dir) < 0)
                return -ENOMEM;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return log_warning_errno(-errno, "Cannot create %s: %m", dir);
        if (mkdir(d->staging, 0755) < 0 && errno != EEXIST)
                return log_warning_errno(-errno, "Cannot create %s: %m", d->staging);
        return 0;
}

static void download_start(Download *d) {
        Manager *m = d->manager;
        PullArguments args = {
                .helper = m->pull_helper,
                .endpoint = m->config.hub_endpoint,
                .repo = d->repo,
                .revision = d->revision,
                .staging = d->staging,
                .token_fd = d->token_fd,
                .test_argument = test_hook_pull_argument(),
        };
        const char *what = "cannot create its staging folder";
        int r;

        /* Created only now, after any cleaning of the staging folders. */
        r = make_staging(d);
        if (r >= 0) {
                what = "cannot start the download helper";
                r = pull_process_start(m->event, &args, &pull_callbacks, d, &d->process);
                if (r < 0)
                        log_warning_errno(r, "Cannot start %s for %s: %m", m->pull_helper, d->repo);
        }
        if (d->token_fd >= 0) {
                close(d->token_fd);
                d->token_fd = -1;
        }
        if (r < 0) {
                _cleanup_free_ char *text = NULL;

                if (asprintf(&text, "Download of %s failed (internal): %s: %s", d->repo, what, strerror(-r)) < 0)
                        text = NULL;
                return download_end(d, -EREMOTEIO, "failed", text ?: "Download failed.");
        }
        d->phase = DOWNLOAD_RUNNING;
}

static void downloads_start_queued(Manager *m) {
        /* One at a time, looking afresh each time: a download that cannot
         * start ends, and that starts others from in here. */
        for (;;) {
                Download *queued = NULL;
                unsigned running = 0;

                /* A cleaning of the staging folders under way may remove
                 * the folder of a download that was not there when it
                 * began. */
                if (m->shutting_down || cleaning(m))
                        return;
                for (Download *d = m->downloads; d; d = d->next)
                        if (d->phase == DOWNLOAD_RUNNING)
                                running++;
                        else if (d->phase == DOWNLOAD_QUEUED && !queued)
                                queued = d;
                if (!queued || running >= m->config.max_concurrent_downloads)
                        return;
                download_start(queued);
        }
}

/* Staging folders of other repositories that are too old or too many go
 * when a download starts, on the worker; until then no download starts. */
static void clean_staging_start(Manager *m) {
        _cleanup_(strv_freep) char **keep = NULL;
        DownloadJob *j;
        int r;

        if (cleaning(m))
                return;
        for (Download *d = m->downloads; d; d = d->next)
                if (strv_extend(&keep, d->folder) < 0)
                        return (void) log_oom();
        j = job_new(m, JOB_CLEAN, NULL);
        if (!j || !(j->model_dir = strdup(m->config.model_dir))) {
                job_free(j);
                return (void) log_oom();
        }
        j->keep = TAKE_PTR(keep);
        j->now = (int64_t) time(NULL);
        r = job_submit(m, j);
        if (r < 0) {
                log_warning_errno(r, "Cannot clean the staging folders now: %m");
                job_free(j);
        }
}

/* ORG/NAME → ORG--NAME: "--" is no part of a valid segment's start or end,
 * so the folder names of two repositories never collide. */
static int staging_folder_name(const char *repo, char **ret) {
        const char *slash = strchr(repo, '/');
        char *s;

        if (slash) {
                if (asprintf(&s, "%.*s--%s", (int) (slash - repo), repo, slash + 1) < 0)
                        return -ENOMEM;
        } else if (!(s = strdup(repo)))
                return -ENOMEM;
        *ret = s;
        return 0;
}

int download_pull(Manager *m, const char *repo, const char *revision, const char *token, DownloadReply reply,
                  void *userdata) {
        Download *d;
        size_t n = 0;
        int r;

        assert(m);
        assert(repo);
        assert(reply);

        if (!revision)
                revision = "main";
        if (download_revision_validate(revision) < 0)
                return -EINVAL;
        if (m->shutting_down)
                return -EBUSY;

        d = download_find_repo(m, repo);
        if (d) {
                if (strcmp(d->revision, revision) != 0)
                        return -EEXIST;
                if (d->replied) {
                        reply(0, NULL, repo, userdata);
                        return 0;
                }
                if (d->n_waiters >= DOWNLOAD_WAITERS_MAX)
                        return -EUSERS;
                d->waiters[d->n_waiters++] = (DownloadWaiter) { reply, userdata };
                return 0;
        }

        if (model_is_loaded(m, repo))
                return -EBUSY;
        /* The registration would hide what the pull installs. */
        if (model_is_registered(m, repo))
                return -ENOTUNIQ;
        for (Download *i = m->downloads; i; i = i->next)
                n++;
        if (n >= DOWNLOADS_MAX)
                return -EUSERS;

        d = calloc(1, sizeof(Download));
        if (!d)
                return -ENOMEM;
        d->manager = m;
        d->token_fd = -1;
        d->repo = strdup(repo);
        d->revision = strdup(revision);
        if (!d->repo || !d->revision || staging_folder_name(repo, &d->folder) < 0 ||
            asprintf(&d->staging, "%s/" DOWNLOAD_STAGING_DIR "/%s", m->config.model_dir, d->folder) < 0) {
                d->staging = NULL;
                download_free(d);
                return -ENOMEM;
        }
        if (token)
                r = hub_token_pipe(token, strlen(token), &d->token_fd);
        else if (m->config.hub_token_file) {
                r = hub_token_file_pipe(m->config.hub_token_file, &d->token_fd);
                if (r < 0 && r != -ENOMEM) {
                        /* The administrator's file, not the caller's mistake:
                         * a failed download that says why. */
                        _cleanup_free_ char *text = NULL;

                        download_free(d);
                        if (asprintf(&text, "Download of %s failed (internal): cannot read the token file %s: %s",
                                     repo, m->config.hub_token_file, strerror(-r)) < 0)
                                return -ENOMEM;
                        reply(-EREMOTEIO, text, repo, userdata);
                        return 0;
                }
        } else
                r = 0;
        if (r < 0) {
                download_free(d);
                return r;
        }

        /* A model pulled for the first time is there from now on. */
        r = model_download_begin(m, repo);
        if (r < 0) {
                download_free(d);
                return r == -E2BIG ? -EUSERS : r;
        }

        d->waiters[d->n_waiters++] = (DownloadWaiter) { reply, userdata };
        /* FIFO: the newest at the end. */
        Download **tail = &m->downloads;
        while (*tail)
                tail = &(*tail)->next;
        *tail = d;

        clean_staging_start(m);
        downloads_start_queued(m);
        return 0;
}

int download_cancel(Manager *m, const char *name) {
        Download *d = download_find_repo(m, name);
        _cleanup_free_ char *text = NULL;

        if (!d)
                return -ENOENT;
        switch (d->phase) {
        case DOWNLOAD_RUNNING:
                pull_process_cancel(d->process);
                return 0;
        case DOWNLOAD_INSTALLING:
                if (d->moved)
                        return -ENOENT;
                d->cancel_requested = true;
                return 0;
        case DOWNLOAD_QUEUED:
                /* No helper to stop. */
                if (asprintf(&text, "The download of %s was cancelled.", d->repo) < 0)
                        text = NULL;
                download_end(d, -ECANCELED, "cancelled", text ?: "Cancelled.");
                return 0;
        }
        return -ENOENT;
}

void downloads_clean_staging(Manager *m) {
        download_staging_clean(m->config.model_dir, NULL, (int64_t) time(NULL));
}

void downloads_stop_all(Manager *m) {
        while (m->downloads) {
                Download *d = m->downloads;

                m->downloads = d->next;
                download_reply_all(d, -EBUSY, "The daemon is shutting down.");
                /* One with a step on the worker is freed when it comes
                 * back (cancelled below, if it has not begun). */
                if (!d->job) {
                        model_download_end(m, d->repo, false, 0, 0, MODEL_SOURCE_HUB, NULL, NULL, NULL);
                        download_free(d);
                }
        }
        for (DownloadJob *j = m->download_jobs; j; j = j->next)
                workpool_cancel(m->download_workers, &j->item);
}

void downloads_free(Manager *m) {
        if (m->download_jobs) {
                /* The loop stopped before the worker was done: leaking is
                 * better than freeing what a thread may still use. */
                log_error("The downloads' worker is still busy; not stopping it.");
                return;
        }
        m->download_workers = workpool_free(m->download_workers);
}
