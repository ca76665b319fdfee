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
#include "log.h"
#include "macro.h"
#include "pull-process.h"
#include "test-hooks.h"
#include "time-util.h"

#define PROGRESS_INTERVAL_USEC (50 * USEC_PER_MSEC)
/* The metadata file is ours and small; anything bigger is not ours. */
#define METADATA_MAX (4U * 1024U * 1024U)
/* A model folder holds files and 1_Pooling/: nothing deeper is removed. */
#define REMOVE_DEPTH_MAX 3

typedef struct DownloadWaiter {
        DownloadReply reply;
        void *userdata;
} DownloadWaiter;

struct Download {
        Manager *manager;
        Download *next;
        char *repo;
        char *revision;
        char *staging;
        int token_fd;                 /* the read end of a pipe holding the token, or -1 */
        PullProcess *process;
        DownloadWaiter waiters[DOWNLOAD_WAITERS_MAX];
        size_t n_waiters;
        bool replied;                 /* the plan was accepted: joiners are answered at once */
        bool up_to_date;              /* the store holds that commit already */
        bool refused;                 /* refused at READY; message below */
        char *refusal;
        cJSON *metadata;
        uint64_t done, total;
        uint64_t last_progress;
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
        pull_process_free(d->process);
        if (d->token_fd >= 0)
                close(d->token_fd);
        cJSON_Delete(d->metadata);
        free(d->refusal);
        free(d->staging);
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

static bool model_is_loaded(Manager *m, const char *name) {
        PoolModel *model = pool_find(&m->pool, name);

        return model && model->state != MODEL_AVAILABLE && model->state != MODEL_ERROR;
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

static int write_metadata(Download *d) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        _cleanup_close_ int fd = -1;
        size_t n;

        if (!cJSON_AddNumberToObject(d->metadata, "time", (double) time(NULL)))
                return -ENOMEM;
        text = cJSON_Print(d->metadata);
        if (!text)
                return -ENOMEM;
        if (path_join3(d->staging, DOWNLOAD_METADATA_FILE, NULL, &path) < 0)
                return -ENOMEM;
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return -errno;
        n = strlen(text);
        if (write(fd, text, n) != (ssize_t) n)
                return errno > 0 ? -errno : -EIO;
        if (fsync(fd) < 0)
                return -errno;
        return 0;
}

/* Moves the verified staging folder to its place in the store. */
static int download_install(Download *d, char **ret_message) {
        Manager *m = d->manager;
        _cleanup_free_ char *final = NULL;
        const char *slash;
        int r;

        r = write_metadata(d);
        if (r < 0)
                return log_warning_errno(r, "Cannot write the metadata of %s: %m", d->repo);

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
        /* The staging folder now holds the model that was replaced. */
        r = remove_tree_at(AT_FDCWD, d->staging, REMOVE_DEPTH_MAX);
        if (r < 0)
                log_warning_errno(r, "Cannot remove the former files of %s from %s: %m", d->repo, d->staging);
        return 0;
}

static void downloads_start_queued(Manager *m);

static void download_finish(Download *d, const char *result, const char *message) {
        Manager *m = d->manager;

        if (m->events && m->events->download_finished)
                m->events->download_finished(m, d->repo, result, strempty(message));
}

static void on_finished(PullProcess *p, int error, const char *failure, const char *message, void *userdata) {
        _cleanup_free_ char *text = NULL;
        Download *d = userdata;
        Manager *m = d->manager;

        /* failure and message belong to the process: it is freed last,
         * with the download. */
        download_unlink(m, d);

        if (d->up_to_date)
                download_finish(d, "done", "");
        else if (d->refused) {
                int e = d->refusal ? -EDQUOT : -ENOMEM;

                download_reply_all(d, e, d->refusal ?: "Out of memory.");
                download_finish(d, "failed", d->refusal ?: "Out of memory.");
        } else if (error >= 0) {
                int r = download_install(d, &text);

                if (r < 0) {
                        if (!text)
                                (void) asprintf(&text, "Cannot move %s into the store: %s", d->repo, strerror(-r));
                        log_warning("%s", strempty(text));
                        download_finish(d, "failed", text);
                } else {
                        log_info("Pulled %s into the store.", d->repo);
                        download_finish(d, "done", "");
                }
        } else if (failure && strcmp(failure, "cancelled") == 0) {
                (void) asprintf(&text, "The download of %s was cancelled.", d->repo);
                download_reply_all(d, -ECANCELED, text ?: "Cancelled.");
                download_finish(d, "cancelled", text);
        } else {
                (void) asprintf(&text, "Download of %s failed (%s): %s", d->repo, strempty(failure), strempty(message));
                log_warning("%s", strempty(text));
                download_reply_all(d, -EREMOTEIO, text ?: "Download failed.");
                download_finish(d, "failed", text);
        }

        download_free(d);
        downloads_start_queued(m);
}

static const PullCallbacks pull_callbacks = {
        .ready = on_ready,
        .progress = on_progress,
        .finished = on_finished,
};

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
        int r;

        r = pull_process_start(m->event, &args, &pull_callbacks, d, &d->process);
        if (d->token_fd >= 0) {
                close(d->token_fd);
                d->token_fd = -1;
        }
        if (r < 0) {
                _cleanup_free_ char *text = NULL;

                log_warning_errno(r, "Cannot start %s for %s: %m", m->pull_helper, d->repo);
                (void) asprintf(&text, "Download of %s failed (internal): cannot start the download helper: %s",
                                d->repo, strerror(-r));
                download_unlink(m, d);
                download_reply_all(d, -EREMOTEIO, text ?: "Download failed.");
                download_finish(d, "failed", text);
                download_free(d);
        }
}

static void downloads_start_queued(Manager *m) {
        unsigned running = 0;
        Download *d, *next;

        if (m->shutting_down)
                return;
        for (d = m->downloads; d; d = d->next)
                if (d->process)
                        running++;
        for (d = m->downloads; d && running < m->config.max_concurrent_downloads; d = next) {
                next = d->next;
                if (d->process)
                        continue;
                download_start(d);
                running++;
        }
}

/* A pipe holding the token, so that it reaches the helper without passing
 * through its argv or environment, and is kept by the kernel alone while
 * the download waits its turn. */
static int token_pipe(const char *token, size_t n, int *ret) {
        int fds[2];

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        /* At most DOWNLOAD_TOKEN_MAX bytes: far below a pipe's capacity. */
        if (write(fds[1], token, n) != (ssize_t) n) {
                int r = errno > 0 ? -errno : -EIO;
                close(fds[0]);
                close(fds[1]);
                return r;
        }
        close(fds[1]);
        *ret = fds[0];
        return 0;
}

static int token_file_pipe(const char *path, int *ret) {
        _cleanup_close_ int fd = -1;
        char buf[DOWNLOAD_TOKEN_MAX + 1];
        ssize_t n;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_warning_errno(-errno, "Cannot open the token file %s: %m", path);
        n = read(fd, buf, sizeof buf);
        if (n < 0)
                return log_warning_errno(-errno, "Cannot read the token file %s: %m", path);
        if ((size_t) n > DOWNLOAD_TOKEN_MAX) {
                explicit_bzero(buf, sizeof buf);
                log_warning("The token file %s is larger than %u bytes.", path, DOWNLOAD_TOKEN_MAX);
                return -EFBIG;
        }
        r = token_pipe(buf, n, ret);
        explicit_bzero(buf, sizeof buf);
        return r;
}

int download_pull(Manager *m, const char *repo, const char *revision, const char *token, DownloadReply reply,
                  void *userdata) {
        _cleanup_free_ char *dir = NULL, *folder = NULL;
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
        for (Download *i = m->downloads; i; i = i->next)
                n++;
        if (n >= DOWNLOADS_MAX)
                return -EUSERS;

        if (asprintf(&dir, "%s/" DOWNLOAD_STAGING_DIR, m->config.model_dir) < 0)
                return -ENOMEM;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return log_warning_errno(-errno, "Cannot create %s: %m", dir);

        folder = strdup(repo);
        if (!folder)
                return -ENOMEM;
        /* ORG/NAME → ORG--NAME: "--" is no part of a valid segment's start
         * or end, so the folder names of two repositories never collide. */
        char *slash = strchr(folder, '/');
        if (slash) {
                _cleanup_free_ char *s = NULL;
                *slash = '\0';
                if (asprintf(&s, "%s--%s", folder, slash + 1) < 0)
                        return -ENOMEM;
                free(folder);
                folder = TAKE_PTR(s);
        }

        d = calloc(1, sizeof(Download));
        if (!d)
                return -ENOMEM;
        d->manager = m;
        d->token_fd = -1;
        d->repo = strdup(repo);
        d->revision = strdup(revision);
        if (!d->repo || !d->revision || path_join3(dir, folder, NULL, &d->staging) < 0) {
                download_free(d);
                return -ENOMEM;
        }
        if (mkdir(d->staging, 0755) < 0 && errno != EEXIST) {
                r = log_warning_errno(-errno, "Cannot create %s: %m", d->staging);
                download_free(d);
                return r;
        }
        if (token)
                r = token_pipe(token, strlen(token), &d->token_fd);
        else if (m->config.hub_token_file) {
                r = token_file_pipe(m->config.hub_token_file, &d->token_fd);
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

        d->waiters[d->n_waiters++] = (DownloadWaiter) { reply, userdata };
        /* FIFO: the newest at the end. */
        Download **tail = &m->downloads;
        while (*tail)
                tail = &(*tail)->next;
        *tail = d;

        downloads_start_queued(m);
        return 0;
}

int download_cancel(Manager *m, const char *name) {
        Download *d = download_find_repo(m, name);

        if (!d)
                return -ENOENT;
        if (d->process) {
                pull_process_cancel(d->process);
                return 0;
        }

        /* Still queued: no helper to stop. */
        _cleanup_free_ char *text = NULL;
        (void) asprintf(&text, "The download of %s was cancelled.", d->repo);
        download_unlink(m, d);
        download_reply_all(d, -ECANCELED, text ?: "Cancelled.");
        download_finish(d, "cancelled", text);
        download_free(d);
        return 0;
}

void downloads_clean_staging(Manager *m) {
        _cleanup_free_ char *dir = NULL;
        _cleanup_close_ int fd = -1;
        struct timespec now;
        struct dirent *de;
        DIR *d;

        if (asprintf(&dir, "%s/" DOWNLOAD_STAGING_DIR, m->config.model_dir) < 0)
                return;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return;         /* none yet */
        d = fdopendir(fd);
        if (!d)
                return;
        fd = -1;
        if (clock_gettime(CLOCK_REALTIME, &now) < 0) {
                closedir(d);
                return;
        }
        while ((de = readdir(d))) {
                struct stat st;
                int r;

                if (de->d_name[0] == '.')
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
                        continue;
                if (st.st_mtim.tv_sec > now.tv_sec - DOWNLOAD_STAGING_KEEP_SEC)
                        continue;
                r = remove_tree_at(dirfd(d), de->d_name, REMOVE_DEPTH_MAX);
                if (r < 0)
                        log_warning_errno(r, "Cannot remove the old staging folder %s/%s: %m", dir, de->d_name);
                else
                        log_info("Removed the staging folder %s/%s, unused for %u days.", dir, de->d_name,
                                 (unsigned) (DOWNLOAD_STAGING_KEEP_SEC / (24 * 3600)));
        }
        closedir(d);
}

void downloads_stop_all(Manager *m) {
        while (m->downloads) {
                Download *d = m->downloads;

                m->downloads = d->next;
                download_reply_all(d, -EBUSY, "The daemon is shutting down.");
                download_free(d);
        }
}
