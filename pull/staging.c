/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "staging.h"

int staging_open(const char *path, int *ret_fd, PullError *e) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd < 0)
                return pull_error(e, PULL_INTERNAL, -errno, "Cannot open the staging folder %s: %m", path);
        *ret_fd = fd;
        return 0;
}

static bool plain_name_is_allowed(const char *s) {
        size_t n = strlen(s);

        if (n == 0 || n + strlen(STAGING_PART_SUFFIX) > NAME_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((uint8_t) s[i] < 0x20 || s[i] == 0x7f || s[i] == '/')
                        return false;
        return true;
}

bool staging_name_is_allowed(const char *name) {
        return strcmp(name, STAGING_POOLING_DIR "/config.json") == 0 || plain_name_is_allowed(name);
}

void target_done(Target *t) {
        if (t->fd >= 0)
                close(t->fd);
        if (t->dir_fd >= 0 && t->dir_fd != t->staging_fd)
                close(t->dir_fd);
        free(t->base);
        free(t->part);
        sha256_free(t->sha);
        *t = (Target) { .fd = -1, .dir_fd = -1, .staging_fd = -1 };
}

static int open_dir(Target *t, PullError *e) {
        const char *slash = strchr(t->file->name, '/');
        int fd;

        if (!slash) {
                t->dir_fd = t->staging_fd;
                return 0;
        }
        if (mkdirat(t->staging_fd, STAGING_POOLING_DIR, 0755) < 0 && errno != EEXIST)
                return pull_error_io(e, -errno, "Cannot create %s in the staging folder: %m", STAGING_POOLING_DIR);
        /* O_NOFOLLOW: a symlink planted there must not lead our writes away. */
        fd = openat(t->staging_fd, STAGING_POOLING_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return pull_error_io(e, -errno, "Cannot open %s in the staging folder: %m", STAGING_POOLING_DIR);
        t->dir_fd = fd;
        return 0;
}

int target_check(Target *t, int staging_fd, const PlanFile *f, PullError *e) {
        const char *slash = strchr(f->name, '/');
        struct stat st;
        int r;

        *t = (Target) { .file = f, .staging_fd = staging_fd, .dir_fd = -1, .fd = -1 };
        if (!staging_name_is_allowed(f->name))
                return pull_error(e, PULL_PROTOCOL, -EBADMSG, "Refusing to write a file named %s.", f->name);
        t->base = strdup(slash ? slash + 1 : f->name);
        if (!t->base || asprintf(&t->part, "%s%s", t->base, STAGING_PART_SUFFIX) < 0) {
                t->part = NULL;
                return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        }
        t->sha = sha256_new();
        if (!t->sha)
                return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        r = open_dir(t, e);
        if (r < 0)
                return r;

        if (fstatat(t->dir_fd, t->base, &st, AT_SYMLINK_NOFOLLOW) >= 0) {
                _cleanup_close_ int fd = -1;

                if (!S_ISREG(st.st_mode))
                        return pull_error(e, PULL_INTERNAL, -EEXIST,
                                          "%s in the staging folder is not a regular file.", f->name);
                fd = openat(t->dir_fd, t->base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
                if (fd < 0)
                        return pull_error_io(e, -errno, "Cannot open %s in the staging folder: %m", f->name);
                r = verify_fd(fd, f->size, f->have_sha256 ? f->sha256 : NULL);
                if (r < 0)
                        return pull_error_io(e, r, "Cannot read %s in the staging folder: %m", f->name);
                if (r > 0) {
                        t->complete = true;
                        return 0;
                }
                if (unlinkat(t->dir_fd, t->base, 0) < 0)
                        return pull_error_io(e, -errno, "Cannot remove the wrong %s from the staging folder: %m",
                                             f->name);
        } else if (errno != ENOENT)
                return pull_error_io(e, -errno, "Cannot look at %s in the staging folder: %m", f->name);

        if (fstatat(t->dir_fd, t->part, &st, AT_SYMLINK_NOFOLLOW) >= 0) {
                if (!S_ISREG(st.st_mode))
                        return pull_error(e, PULL_INTERNAL, -EEXIST,
                                          "%s%s in the staging folder is not a regular file.", f->name,
                                          STAGING_PART_SUFFIX);
                /* Longer than the file can be: not a part of it. */
                t->have = (uint64_t) st.st_size <= f->size ? (uint64_t) st.st_size : 0;
        } else if (errno != ENOENT)
                return pull_error_io(e, -errno, "Cannot look at %s%s in the staging folder: %m", f->name,
                                     STAGING_PART_SUFFIX);
        return 0;
}

int target_open(Target *t, PullError *e) {
        const PlanFile *f = t->file;
        struct stat st;
        int fd, r;

        if (t->fd >= 0)
                return 0;
        fd = openat(t->dir_fd, t->part, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0644);
        if (fd < 0)
                return pull_error_io(e, -errno, "Cannot create %s%s in the staging folder: %m", f->name,
                                     STAGING_PART_SUFFIX);
        t->fd = fd;
        if (fstat(fd, &st) < 0)
                return pull_error_io(e, -errno, "Cannot look at %s%s: %m", f->name, STAGING_PART_SUFFIX);
        if (!S_ISREG(st.st_mode))
                return pull_error(e, PULL_INTERNAL, -EEXIST, "%s%s in the staging folder is not a regular file.",
                                  f->name, STAGING_PART_SUFFIX);

        t->have = (uint64_t) st.st_size;
        if (t->have > f->size) {
                if (ftruncate(fd, 0) < 0)
                        return pull_error_io(e, -errno, "Cannot truncate %s%s: %m", f->name, STAGING_PART_SUFFIX);
                t->have = 0;
        }
        r = sha256_reset(t->sha);
        if (r >= 0)
                r = sha256_update_from_fd(t->sha, fd, t->have);
        if (r < 0)
                return pull_error_io(e, r, "Cannot read %s%s: %m", f->name, STAGING_PART_SUFFIX);
        if (lseek(fd, (off_t) t->have, SEEK_SET) < 0)
                return pull_error_io(e, -errno, "Cannot seek in %s%s: %m", f->name, STAGING_PART_SUFFIX);

        /* Reserving the rest now makes a full disk fail the download at
         * once rather than after hours; KEEP_SIZE leaves the .part's size the
         * count of bytes it holds. Not every file system can. */
        if (f->size > t->have &&
            fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t) t->have, (off_t) (f->size - t->have)) < 0 &&
            (errno == ENOSPC || errno == EDQUOT))
                return pull_error_io(e, -errno, "No room for %s in the staging folder: %m", f->name);
        return 0;
}

int target_reset(Target *t, PullError *e) {
        int r;

        if (ftruncate(t->fd, 0) < 0 || lseek(t->fd, 0, SEEK_SET) < 0)
                return pull_error_io(e, -errno, "Cannot truncate %s%s: %m", t->file->name, STAGING_PART_SUFFIX);
        r = sha256_reset(t->sha);
        if (r < 0)
                return pull_error(e, PULL_INTERNAL, r, "Out of memory.");
        t->have = 0;
        return 0;
}

int target_write(Target *t, const void *data, size_t n, PullError *e) {
        const uint8_t *p = data;
        int r;

        if (n > t->file->size - t->have)
                return pull_error(e, PULL_SIZE_MISMATCH, -EBADMSG,
                                  "The server sent more of %s than the %" PRIu64 " bytes the hub gave as its size.",
                                  t->file->name, t->file->size);
        r = sha256_update(t->sha, data, n);
        if (r < 0)
                return pull_error(e, PULL_INTERNAL, r, "Out of memory.");
        while (n > 0) {
                ssize_t k = write(t->fd, p, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return pull_error_io(e, -errno, "Cannot write %s%s: %m", t->file->name, STAGING_PART_SUFFIX);
                }
                p += k;
                n -= (size_t) k;
                t->have += (uint64_t) k;
        }
        return 0;
}

static void remove_part(Target *t) {
        (void) unlinkat(t->dir_fd, t->part, 0);
}

int target_finish(Target *t, PullError *e) {
        const PlanFile *f = t->file;
        uint8_t digest[SHA256_SIZE];
        int r;

        if (t->have != f->size) {
                remove_part(t);
                return pull_error(e, PULL_SIZE_MISMATCH, -EBADMSG,
                                  "%s has %" PRIu64 " bytes where the hub said %" PRIu64 ".", f->name, t->have,
                                  f->size);
        }
        r = sha256_final(t->sha, digest);
        if (r < 0)
                return pull_error(e, PULL_INTERNAL, r, "Out of memory.");
        if (f->have_sha256 && memcmp(digest, f->sha256, SHA256_SIZE) != 0) {
                remove_part(t);
                return pull_error(e, PULL_HASH_MISMATCH, -EBADMSG,
                                  "%s does not have the SHA-256 the hub published for it.", f->name);
        }

        /* Once renamed, the name says the file is verified: it must be on
         * disk before the name is. */
        if (fsync(t->fd) < 0)
                return pull_error_io(e, -errno, "Cannot write %s%s to disk: %m", f->name, STAGING_PART_SUFFIX);
        if (renameat(t->dir_fd, t->part, t->dir_fd, t->base) < 0)
                return pull_error_io(e, -errno, "Cannot rename %s%s: %m", f->name, STAGING_PART_SUFFIX);
        if (fsync(t->dir_fd) < 0)
                return pull_error_io(e, -errno, "Cannot write the staging folder to disk: %m");
        close(t->fd);
        t->fd = -1;
        t->complete = true;
        return 0;
}

int target_write_whole(Target *t, const void *data, size_t n, PullError *e) {
        int r;

        if (t->complete)
                return 0;
        r = target_open(t, e);
        if (r >= 0)
                r = target_reset(t, e);
        if (r >= 0)
                r = target_write(t, data, n, e);
        if (r >= 0)
                r = target_finish(t, e);
        return r;
}
