/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "hub-token.h"
#include "log.h"
#include "macro.h"

int hub_token_pipe(const char *token, size_t n, int *ret_fd) {
        int fds[2];

        if (n > HUB_TOKEN_MAX)
                return -EFBIG;
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        /* At most HUB_TOKEN_MAX bytes: far below a pipe's capacity. */
        if (write(fds[1], token, n) != (ssize_t) n) {
                int r = errno > 0 ? -errno : -EIO;
                close(fds[0]);
                close(fds[1]);
                return r;
        }
        close(fds[1]);
        *ret_fd = fds[0];
        return 0;
}

int hub_token_file_pipe(const char *path, int *ret_fd) {
        _cleanup_close_ int fd = -1;
        char buf[HUB_TOKEN_MAX + 1];
        ssize_t n;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_warning_errno(-errno, "Cannot open the token file %s: %m", path);
        n = read(fd, buf, sizeof buf);
        if (n < 0)
                return log_warning_errno(-errno, "Cannot read the token file %s: %m", path);
        if ((size_t) n > HUB_TOKEN_MAX) {
                explicit_bzero(buf, sizeof buf);
                log_warning("The token file %s is larger than %u bytes.", path, HUB_TOKEN_MAX);
                return -EFBIG;
        }
        r = hub_token_pipe(buf, n, ret_fd);
        explicit_bzero(buf, sizeof buf);
        return r;
}
