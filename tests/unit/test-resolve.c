/* SPDX-License-Identifier: MIT */
/* The walk that stands in for openat2() where it is missing (valgrind, old
 * kernels) must answer as openat2() does: every path of a small tree with
 * good and bad symlinks, under each set of RESOLVE_* flags the daemon uses,
 * through both, same file or same error. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>

#include "macro.h"
#include "resolve.h"

static char root[64];

static void make_tree(void) {
        char path[PATH_MAX];
        int fd;

        strcpy(root, "/tmp/test-resolve-XXXXXX");
        assert_non_null(mkdtemp(root));
#define AT(p) (snprintf(path, sizeof path, "%s/%s", root, p), path)
        assert_int_equal(mkdir(AT("a"), 0755), 0);
        assert_int_equal(mkdir(AT("a/b"), 0755), 0);
        fd = open(AT("a/b/file"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(symlink("b/file", AT("a/rel")), 0);          /* stays inside */
        assert_int_equal(symlink("../a/b", AT("a/up")), 0);           /* up, and back in */
        assert_int_equal(symlink("../..", AT("a/out")), 0);           /* out of the root */
        assert_int_equal(symlink("/etc", AT("abs")), 0);              /* absolute */
        assert_int_equal(symlink("loop2", AT("loop1")), 0);
        assert_int_equal(symlink("loop1", AT("loop2")), 0);
        assert_int_equal(symlink("a", AT("dirlink")), 0);
        assert_int_equal(symlink("missing", AT("dangling")), 0);
#undef AT
}

static int remove_tree(const char *path) {
        char command[PATH_MAX + 16];

        snprintf(command, sizeof command, "rm -rf '%s'", path);
        return system(command);
}

static int by_openat2(int dir_fd, const char *path, int flags, uint64_t resolve) {
        struct open_how how = {
                .flags = (uint64_t) (flags | O_CLOEXEC | O_NOCTTY),
                .resolve = resolve,
        };
        long fd = syscall(SYS_openat2, dir_fd, path, &how, sizeof how);

        return fd < 0 ? -errno : (int) fd;
}

static void compare(int dir_fd, const char *path, int flags, uint64_t resolve) {
        int expected, got;
        struct stat a, b;

        expected = by_openat2(dir_fd, path, flags, resolve);
        got = open_resolved_by_walking(dir_fd, path, flags, resolve);
        if ((expected < 0) != (got < 0) || (expected < 0 && expected != got))
                fail_msg("%s (flags %#x, resolve %#llx): openat2() %s, the walk %s", path, (unsigned) flags,
                         (unsigned long long) resolve, expected < 0 ? strerror(-expected) : "opens it",
                         got < 0 ? strerror(-got) : "opens it");
        if (expected < 0)
                return;
        assert_int_equal(fstat(expected, &a), 0);
        assert_int_equal(fstat(got, &b), 0);
        if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
                fail_msg("%s: the walk opened another file than openat2()", path);
        assert_true(fcntl(got, F_GETFD) & FD_CLOEXEC);
        close(expected);
        close(got);
}

static const char *const relative_paths[] = {
        "a/b/file", "a/rel", "a/up/file", "a/out", "a/out/x", "abs", "abs/passwd", "..", "../x",
        "a/../a/b/file", "a/b/../../..", "a/b/../../a", "loop1", "missing", "a/missing/x", "a/b/file/x",
        "dirlink/b", "dirlink/", "dirlink/.", ".", "a/b/", "a//b///file", "./a/./rel", "dangling",
        "/etc", "a/up/../../..",
};

static const uint64_t resolves[] = {
        RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        RESOLVE_NO_MAGICLINKS,
};

static void test_same_as_openat2(void **state) {
        _cleanup_close_ int root_fd = -1;
        struct open_how probe = { .flags = O_RDONLY | O_CLOEXEC };
        long fd;

        fd = syscall(SYS_openat2, AT_FDCWD, "/", &probe, sizeof probe);
        if (fd < 0 && errno == ENOSYS)
                skip();   /* nothing to compare with (valgrind, old kernels) */
        close((int) fd);

        make_tree();
        root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(root_fd >= 0);

        for (size_t r = 0; r < ELEMENTSOF(resolves); r++)
                for (size_t i = 0; i < ELEMENTSOF(relative_paths); i++) {
                        compare(root_fd, relative_paths[i], O_RDONLY, resolves[r]);
                        compare(root_fd, relative_paths[i], O_RDONLY | O_DIRECTORY, resolves[r]);
                        compare(root_fd, relative_paths[i], O_RDONLY | O_NONBLOCK, resolves[r]);
                }

        /* Absolute paths from the working directory, as a registered
         * model's root is opened; magic links in /proc. */
        for (size_t r = 2; r < ELEMENTSOF(resolves); r++) {
                char path[PATH_MAX];

                for (size_t i = 0; i < ELEMENTSOF(relative_paths); i++) {
                        snprintf(path, sizeof path, "%s/%s", root, relative_paths[i]);
                        compare(AT_FDCWD, path, O_RDONLY | O_DIRECTORY, resolves[r]);
                        compare(AT_FDCWD, path, O_RDONLY, resolves[r]);
                }
                compare(AT_FDCWD, "/proc/self/exe", O_RDONLY, resolves[r]);
                compare(AT_FDCWD, "/proc/self/fd/0", O_RDONLY, resolves[r]);
                compare(AT_FDCWD, "/proc/self/cwd/", O_RDONLY | O_DIRECTORY, resolves[r]);
                compare(AT_FDCWD, "/proc/self/status", O_RDONLY, resolves[r]);
        }
        assert_int_equal(remove_tree(root), 0);
}

/* The daemon's entry point takes openat2()'s answer where there is one. */
static void test_open_resolved(void **state) {
        int fd;

        make_tree();
        fd = open_resolved(AT_FDCWD, root, O_RDONLY | O_DIRECTORY, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
        assert_true(fd >= 0);
        assert_int_equal(open_resolved(fd, "abs", O_RDONLY, RESOLVE_BENEATH), -EXDEV);
        assert_int_equal(open_resolved(fd, "a/out/x", O_RDONLY, RESOLVE_BENEATH), -EXDEV);
        assert_int_equal(open_resolved(fd, "a/rel", O_RDONLY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), -ELOOP);
        close(fd);
        assert_int_equal(remove_tree(root), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_same_as_openat2),
                cmocka_unit_test(test_open_resolved),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
