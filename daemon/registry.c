/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "registry.h"
#include "store.h"

/* The registry folder, created if wanted; never through a symlink. */
static int open_registry(const char *model_dir, bool create) {
        _cleanup_close_ int root_fd = -1;
        int fd;

        root_fd = open(model_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return -errno;

        if (create) {
                if (mkdirat(root_fd, STORE_REGISTRY_DIR, 0755) >= 0) {
                        /* The new folder must survive a crash with its first entry. */
                        if (fsync(root_fd) < 0)
                                return -errno;
                } else if (errno != EEXIST)
                        return -errno;
        }

        fd = openat(root_fd, STORE_REGISTRY_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return errno == ELOOP ? -ENOTDIR : -errno;
        return fd;
}

/* Entries, not counting hidden files. */
static int count_entries(int registry_fd, unsigned *ret) {
        _cleanup_close_ int fd = -1;
        struct dirent *de;
        unsigned n = 0;
        DIR *d;

        fd = openat(registry_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d)
                return -errno;
        TAKE_FD(fd);
        for (;;) {
                errno = 0;
                de = readdir(d);
                if (!de)
                        break;
                if (de->d_name[0] != '.')
                        n++;
        }
        if (errno != 0) {
                int r = -errno;
                closedir(d);
                return r;
        }
        closedir(d);
        *ret = n;
        return 0;
}

static int write_all(int fd, const char *text, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, text, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                text += k;
                n -= (size_t) k;
        }
        return 0;
}

/* Where O_TMPFILE or /proc is missing: a hidden file of a random name,
 * renamed without replacing anything. */
static int add_through_temporary_file(int registry_fd, const char *entry, const char *text) {
        _cleanup_close_ int fd = -1;
        char temporary[64];
        uint64_t random;
        int r;

        if (getrandom(&random, sizeof random, 0) != sizeof random)
                return -EIO;
        snprintf(temporary, sizeof temporary, ".tmp-%016" PRIx64, random);

        fd = openat(registry_fd, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        r = write_all(fd, text, strlen(text));
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (r >= 0 && renameat2(registry_fd, temporary, registry_fd, entry, RENAME_NOREPLACE) < 0)
                r = -errno;
        if (r < 0)
                (void) unlinkat(registry_fd, temporary, 0);
        return r;
}

int registry_add(const char *model_dir, const char *name, const char *path) {
        _cleanup_free_ char *entry = NULL, *text = NULL;
        _cleanup_close_ int registry_fd = -1, fd = -1;
        char proc_path[64];
        unsigned n = 0;
        int r;

        assert(model_dir);
        assert(name);
        assert(path);

        if (!store_registered_path_is_valid(path))
                return -EINVAL;
        r = store_registry_entry_name(name, &entry);
        if (r < 0)
                return r;
        if (asprintf(&text, "%s\n", path) < 0)
                return -ENOMEM;

        registry_fd = open_registry(model_dir, true);
        if (registry_fd < 0)
                return registry_fd;

        /* Register and Remove run on one thread: nothing adds meanwhile. */
        r = count_entries(registry_fd, &n);
        if (r < 0)
                return r;
        if (n >= STORE_REGISTRY_MAX)
                return -EUSERS;
        if (faccessat(registry_fd, entry, F_OK, AT_SYMLINK_NOFOLLOW) >= 0)
                return -EEXIST;

        fd = openat(registry_fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0) {
                if (errno != EOPNOTSUPP && errno != EISDIR)
                        return -errno;
                r = add_through_temporary_file(registry_fd, entry, text);
        } else {
                r = write_all(fd, text, strlen(text));
                if (r >= 0 && fsync(fd) < 0)
                        r = -errno;
                if (r >= 0) {
                        /* Naming an unnamed file needs its /proc link (or a
                         * capability, for AT_EMPTY_PATH); linkat() never
                         * replaces an entry. */
                        snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", fd);
                        if (linkat(AT_FDCWD, proc_path, registry_fd, entry, AT_SYMLINK_FOLLOW) < 0)
                                r = errno == ENOENT ? add_through_temporary_file(registry_fd, entry, text) : -errno;
                }
        }
        if (r < 0)
                return r;

        if (fsync(registry_fd) < 0)
                return -errno;
        return 0;
}

int registry_remove(const char *model_dir, const char *name) {
        _cleanup_free_ char *entry = NULL;
        _cleanup_close_ int registry_fd = -1;
        int r;

        assert(model_dir);
        assert(name);

        r = store_registry_entry_name(name, &entry);
        if (r < 0)
                return r;
        registry_fd = open_registry(model_dir, false);
        if (registry_fd < 0)
                return registry_fd;
        if (unlinkat(registry_fd, entry, 0) < 0)
                return errno == EISDIR ? -EBADMSG : -errno;
        if (fsync(registry_fd) < 0)
                return -errno;
        return 0;
}

void registry_clean(const char *model_dir) {
        _cleanup_close_ int registry_fd = -1, fd = -1;
        struct dirent *de;
        DIR *d;

        registry_fd = open_registry(model_dir, false);
        if (registry_fd < 0) {
                if (registry_fd != -ENOENT)
                        log_warning_errno(registry_fd, "Cannot open the registry %s/" STORE_REGISTRY_DIR ": %m",
                                          model_dir);
                return;
        }
        fd = openat(registry_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return;
        d = fdopendir(fd);
        if (!d)
                return;
        TAKE_FD(fd);
        while ((de = readdir(d))) {
                /* Only names of ours: they are quoted in the log. */
                if (strncmp(de->d_name, ".tmp-", 5) != 0 || strlen(de->d_name) != 5 + 16 ||
                    strspn(de->d_name + 5, "0123456789abcdef") != 16)
                        continue;
                if (unlinkat(registry_fd, de->d_name, 0) < 0)
                        log_warning_errno(errno, "Cannot remove %s/" STORE_REGISTRY_DIR "/%s: %m", model_dir,
                                          de->d_name);
                else
                        log_info("Removed %s/" STORE_REGISTRY_DIR "/%s, left by a registration that did not "
                                 "complete.", model_dir, de->d_name);
        }
        closedir(d);
}
