/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>

/* openat2(dir_fd, path, {flags | O_CLOEXEC | O_NOCTTY, resolve}): returns
 * the fd or a negative errno. resolve may hold RESOLVE_BENEATH,
 * RESOLVE_NO_SYMLINKS and RESOLVE_NO_MAGICLINKS, nothing else.
 *
 * Where openat2() itself is missing (ENOSYS: a kernel before 5.6, or
 * valgrind, which does not know the system call) the same resolution is done
 * one component at a time (open_resolved_by_walking()). */
int open_resolved(int dir_fd, const char *path, int flags, uint64_t resolve);

/* The walk alone, with openat2()'s answers: -EXDEV for a path that would
 * leave dir_fd under RESOLVE_BENEATH (an absolute path or symlink, a ".."
 * above it), -ELOOP for any symlink under RESOLVE_NO_SYMLINKS and for more
 * than 40 of them otherwise. Every symlink is read, never followed by the
 * kernel (the last component is opened with O_NOFOLLOW), so none can lead
 * anywhere the rules forbid, and ".." goes back through the directories the
 * walk came from, never up from wherever a directory has been moved to.
 * Exposed for the unit test that compares it with openat2(). */
int open_resolved_by_walking(int dir_fd, const char *path, int flags, uint64_t resolve);
