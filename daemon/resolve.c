/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "macro.h"
#include "resolve.h"

/* As the kernel's MAXSYMLINKS. */
#define SYMLINKS_MAX 40

#define RESOLVE_KNOWN (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)

/* Set once openat2() said ENOSYS: it will not change its mind, and valgrind
 * logs a warning for every call it does not know. */
static atomic_bool openat2_missing;

int open_resolved(int dir_fd, const char *path, int flags, uint64_t resolve) {
        struct open_how how = {
                .flags = (uint64_t) (flags | O_CLOEXEC | O_NOCTTY),
                .resolve = resolve,
        };
        long fd;

        assert((resolve & ~(uint64_t) RESOLVE_KNOWN) == 0);

        if (!atomic_load_explicit(&openat2_missing, memory_order_relaxed)) {
                fd = syscall(SYS_openat2, dir_fd, path, &how, sizeof how);
                if (fd >= 0)
                        return (int) fd;
                if (errno != ENOSYS)
                        return -errno;
                atomic_store_explicit(&openat2_missing, true, memory_order_relaxed);
        }
        return open_resolved_by_walking(dir_fd, path, flags, resolve);
}

/* The directories the walk went through, the last one where it is. */
typedef struct Walk {
        int *fds;
        size_t n, allocated;
} Walk;

static void walk_done(Walk *w) {
        for (size_t i = 0; i < w->n; i++)
                close(w->fds[i]);
        free(w->fds);
}

static int walk_push(Walk *w, int fd) {
        if (w->n == w->allocated) {
                size_t allocated = w->allocated ? w->allocated * 2 : 16;
                int *fds = reallocarray(w->fds, allocated, sizeof *fds);

                if (!fds) {
                        close(fd);
                        return -ENOMEM;
                }
                w->fds = fds;
                w->allocated = allocated;
        }
        w->fds[w->n++] = fd;
        return 0;
}

/* The symlink opened as fd (O_PATH), read; the rest of the walk becomes its
 * target followed by what came after it. Returns 1 when the target is
 * absolute: the walk goes on from "/". */
static int splice_symlink(int fd, const char *rest, uint64_t resolve, char **todo) {
        char target[PATH_MAX];
        struct statfs sfs;
        ssize_t n;
        char *joined;

        if (resolve & RESOLVE_NO_SYMLINKS)
                return -ELOOP;
        n = readlinkat(fd, "", target, sizeof target);
        if (n < 0)
                return -errno;
        if ((size_t) n >= sizeof target)
                return -ENAMETOOLONG;
        target[n] = '\0';
        /* Magic links (/proc/PID/fd/N, …/exe, …/root) are procfs's only, and
         * read as an absolute path or as "TYPE:[INODE]"; its plain ones
         * (/proc/self, /proc/thread-self) as relative paths. */
        if ((resolve & RESOLVE_NO_MAGICLINKS) && (target[0] == '/' || strchr(target, ':'))) {
                if (fstatfs(fd, &sfs) < 0)
                        return -errno;
                if (sfs.f_type == PROC_SUPER_MAGIC)
                        return -ELOOP;
        }
        if (target[0] == '/' && (resolve & RESOLVE_BENEATH))
                return -EXDEV;

        if (asprintf(&joined, "%s%s%s", target, *rest ? "/" : "", rest) < 0)
                return -ENOMEM;
        free(*todo);
        *todo = joined;
        return target[0] == '/';
}

int open_resolved_by_walking(int dir_fd, const char *path, int flags, uint64_t resolve) {
        _cleanup_free_ char *todo = NULL;
        Walk w = {};
        unsigned symlinks = 0;
        int r, fd;

        assert(path);
        assert((resolve & ~(uint64_t) RESOLVE_KNOWN) == 0);
        /* O_PATH|O_NOFOLLOW would open a last symlink itself instead of
         * refusing it: the walk below relies on that refusal. */
        assert(!(flags & O_PATH));

        if (path[0] == '\0')
                return -ENOENT;
        if (path[0] == '/' && (resolve & RESOLVE_BENEATH))
                return -EXDEV;
        todo = strdup(path);
        if (!todo)
                return -ENOMEM;

        fd = openat(path[0] == '/' ? AT_FDCWD : dir_fd, path[0] == '/' ? "/" : ".",
                    O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = walk_push(&w, fd);
        if (r < 0)
                goto finish;

        for (;;) {
                char *name = todo, *rest;
                bool last;
                struct stat st;

                name += strspn(name, "/");
                rest = name + strcspn(name, "/");
                last = rest[strspn(rest, "/")] == '\0';
                if (*rest)
                        *rest++ = '\0';

                if (name[0] == '\0' || strcmp(name, ".") == 0) {
                        /* "dir/" and "dir/." name the directory itself:
                         * opened again with the caller's flags. */
                        if (!last) {
                                memmove(todo, rest, strlen(rest) + 1);
                                continue;
                        }
                        r = openat(w.fds[w.n - 1], ".", flags | O_CLOEXEC | O_NOCTTY);
                        r = r < 0 ? -errno : r;
                        goto finish;
                }

                if (strcmp(name, "..") == 0) {
                        if (w.n == 1) {
                                if (resolve & RESOLVE_BENEATH) {
                                        r = -EXDEV;
                                        goto finish;
                                }
                                /* Above where the walk began, as the
                                 * kernel would go. */
                                fd = openat(w.fds[0], "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
                                if (fd < 0) {
                                        r = -errno;
                                        goto finish;
                                }
                                close(w.fds[0]);
                                w.fds[0] = fd;
                        } else
                                close(w.fds[--w.n]);
                        memmove(todo, rest, strlen(rest) + 1);
                        if (last) {
                                r = openat(w.fds[w.n - 1], ".", flags | O_CLOEXEC | O_NOCTTY);
                                r = r < 0 ? -errno : r;
                                goto finish;
                        }
                        continue;
                }

                if (last) {
                        /* O_NOFOLLOW: whatever is there now, a symlink is
                         * not followed; one found is read below instead. */
                        r = openat(w.fds[w.n - 1], name, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
                        if (r >= 0)
                                goto finish;
                        r = -errno;
                        if (r != -ELOOP && r != -ENOTDIR && r != -ENXIO)
                                goto finish;
                        if (flags & O_NOFOLLOW)
                                goto finish;
                }

                fd = openat(w.fds[w.n - 1], name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0) {
                        r = -errno;
                        goto finish;
                }
                if (fstat(fd, &st) < 0) {
                        r = -errno;
                        close(fd);
                        goto finish;
                }
                if (S_ISLNK(st.st_mode)) {
                        if (++symlinks > SYMLINKS_MAX)
                                r = -ELOOP;
                        else
                                r = splice_symlink(fd, rest, resolve, &todo);
                        close(fd);
                        if (r < 0)
                                goto finish;
                        if (r > 0) {
                                /* An absolute target, allowed: from "/". */
                                fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
                                if (fd < 0) {
                                        r = -errno;
                                        goto finish;
                                }
                                while (w.n > 0)
                                        close(w.fds[--w.n]);
                                r = walk_push(&w, fd);
                                if (r < 0)
                                        goto finish;
                        }
                        continue;
                }
                if (last) {
                        /* Not a symlink after all: openat()'s own error. */
                        close(fd);
                        goto finish;
                }
                if (!S_ISDIR(st.st_mode)) {
                        close(fd);
                        r = -ENOTDIR;
                        goto finish;
                }
                r = walk_push(&w, fd);
                if (r < 0)
                        goto finish;
                memmove(todo, rest, strlen(rest) + 1);
        }

finish:
        walk_done(&w);
        return r;
}
