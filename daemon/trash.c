/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "resolve.h"
#include "store.h"
#include "trash.h"

/* A folder below ModelDir, reached through no symlink at all. */
static int open_folder_strictly(int root_fd, const char *path) {
        int fd;

        do
                fd = open_resolved(root_fd, path, O_RDONLY | O_DIRECTORY,
                                   RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
        while (fd == -EAGAIN || fd == -EINTR);
        if (fd == -ELOOP)
                return -EXDEV;
        return fd;
}

static int open_trash(int root_fd) {
        if (mkdirat(root_fd, TRASH_DIR, 0700) < 0 && errno != EEXIST)
                return -errno;
        return open_folder_strictly(root_fd, TRASH_DIR);
}

int trash_remove_tree(int dir_fd, const char *name, unsigned depth) {
        _cleanup_close_ int fd = -1;
        struct dirent *de;
        DIR *d;
        int r = 0;

        if (unlinkat(dir_fd, name, 0) >= 0 || errno == ENOENT)
                return 0;
        if (errno != EISDIR && errno != EPERM)
                return -errno;
        if (depth == 0)
                return -ELOOP;

        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d)
                return -errno;
        TAKE_FD(fd);

        for (;;) {
                int k;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0 && r == 0)
                                r = -errno;
                        break;
                }
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                k = trash_remove_tree(dirfd(d), de->d_name, depth - 1);
                if (k < 0 && r == 0)
                        r = k;
        }
        closedir(d);

        if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0 && r == 0)
                r = -errno;
        return r;
}

int trash_move(const char *model_dir, const char *name, char **ret_entry) {
        _cleanup_close_ int root_fd = -1, parent_fd = -1, trash_fd = -1;
        _cleanup_free_ char *entry = NULL, *trash_name = NULL, *organisation = NULL;
        const char *slash, *base;
        uint64_t random;
        struct stat st;
        int r;

        assert(model_dir);
        assert(name);
        assert(ret_entry);

        root_fd = open(model_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return -errno;

        slash = strchr(name, '/');
        if (slash) {
                organisation = strndup(name, slash - name);
                if (!organisation)
                        return -ENOMEM;
                parent_fd = open_folder_strictly(root_fd, organisation);
                if (parent_fd < 0)
                        return parent_fd == -ENOTDIR ? -ENOENT : parent_fd;
                base = slash + 1;
        } else {
                parent_fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 3);
                if (parent_fd < 0)
                        return -errno;
                base = name;
        }
        if (fstatat(parent_fd, base, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;

        trash_fd = open_trash(root_fd);
        if (trash_fd < 0)
                return trash_fd;

        r = store_registry_entry_name(name, &entry);
        if (r < 0)
                return r;
        if (getrandom(&random, sizeof random, 0) != sizeof random)
                return -EIO;
        if (asprintf(&trash_name, "%s.%016" PRIx64, entry, random) < 0)
                return -ENOMEM;

        if (renameat2(parent_fd, base, trash_fd, trash_name, RENAME_NOREPLACE) < 0)
                return errno == EBUSY ? -EXDEV : -errno;   /* EBUSY: the folder is a mount point */

        /* Pull makes organisation folders; one it leaves empty goes with
         * its last model. Not empty: another model is in it. */
        if (organisation && unlinkat(root_fd, organisation, AT_REMOVEDIR) < 0 && errno != ENOTEMPTY &&
            errno != EEXIST && errno != ENOENT)
                log_debug_errno(errno, "Cannot remove the empty folder %s/%s: %m", model_dir, organisation);

        *ret_entry = TAKE_PTR(trash_name);
        return 0;
}

int trash_delete(const char *model_dir, const char *entry) {
        _cleanup_close_ int root_fd = -1, trash_fd = -1;

        assert(model_dir);
        assert(entry);

        root_fd = open(model_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return -errno;
        trash_fd = open_folder_strictly(root_fd, TRASH_DIR);
        if (trash_fd < 0)
                return trash_fd;
        return trash_remove_tree(trash_fd, entry, TRASH_DEPTH_MAX);
}

void trash_empty(const char *model_dir) {
        _cleanup_close_ int root_fd = -1, trash_fd = -1;
        struct dirent *de;
        unsigned n = 0;
        DIR *d;
        int r;

        root_fd = open(model_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (root_fd < 0)
                return;
        trash_fd = open_folder_strictly(root_fd, TRASH_DIR);
        if (trash_fd < 0) {
                if (trash_fd != -ENOENT)
                        log_warning_errno(trash_fd, "Cannot open %s/" TRASH_DIR ": %m", model_dir);
                return;
        }
        d = fdopendir(trash_fd);
        if (!d) {
                log_warning_errno(errno, "Cannot read %s/" TRASH_DIR ": %m", model_dir);
                return;
        }
        TAKE_FD(trash_fd);

        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                r = trash_remove_tree(dirfd(d), de->d_name, TRASH_DEPTH_MAX);
                if (r < 0)
                        log_warning_errno(r, "Cannot delete a removed model from %s/" TRASH_DIR ": %m", model_dir);
                else
                        n++;
        }
        closedir(d);
        if (n > 0)
                log_info("Deleted %u removed model(s) left in %s/" TRASH_DIR ".", n, model_dir);
}
