/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "protocol.h"
#include "time-util.h"

static const char *const failure_names[_PULL_FAILURE_MAX] = {
        [PULL_NOT_FOUND] = "not-found",
        [PULL_UNAUTHORIZED] = "unauthorized",
        [PULL_NETWORK] = "network",
        [PULL_HASH_MISMATCH] = "hash-mismatch",
        [PULL_SIZE_MISMATCH] = "size-mismatch",
        [PULL_STORAGE] = "storage",
        [PULL_PROTOCOL] = "protocol",
        [PULL_UNSUPPORTED] = "unsupported",
        [PULL_CANCELLED] = "cancelled",
        [PULL_INTERNAL] = "internal",
};

const char *pull_failure_to_string(PullFailure kind) {
        if ((unsigned) kind >= _PULL_FAILURE_MAX)
                return "internal";
        return failure_names[kind];
}

static int pull_error_va(PullError *e, PullFailure kind, int r, const char *format, va_list ap) {
        if (e->set)
                return r;
        e->set = true;
        e->kind = kind;
        errno = r < 0 ? -r : r;
        vsnprintf(e->message, sizeof e->message, format, ap);
        /* One line, whatever a name or an error string held. */
        for (char *p = e->message; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        *p = ' ';
        return r;
}

int pull_error(PullError *e, PullFailure kind, int r, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        r = pull_error_va(e, kind, r, format, ap);
        va_end(ap);
        return r;
}

int pull_error_io(PullError *e, int r, const char *format, ...) {
        PullFailure kind = r == -ENOSPC || r == -EDQUOT ? PULL_STORAGE : PULL_INTERNAL;
        va_list ap;

        va_start(ap, format);
        r = pull_error_va(e, kind, r, format, ap);
        va_end(ap);
        return r;
}

static int write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int protocol_line(const char *format, ...) {
        char line[PULL_MESSAGE_MAX + 64];
        va_list ap;
        int n;

        va_start(ap, format);
        n = vsnprintf(line, sizeof line - 1, format, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;
        /* A line cut short still ends, so the next one is not glued to it. */
        n = MIN((size_t) n, sizeof line - 2);
        line[n++] = '\n';
        return write_all(STDOUT_FILENO, line, (size_t) n);
}

int protocol_commit(const char *commit) {
        return protocol_line("COMMIT %s", commit);
}

int protocol_file(uint64_t size, const char *sha256_hex, const char *name) {
        return protocol_line("FILE %" PRIu64 " %s %s", size, sha256_hex ?: "-", name);
}

int protocol_total(uint64_t bytes, uint64_t files) {
        return protocol_line("TOTAL %" PRIu64 " %" PRIu64, bytes, files);
}

int protocol_ready(void) {
        return protocol_line("READY");
}

int protocol_done(void) {
        return protocol_line("DONE");
}

int protocol_failed(const PullError *e) {
        if (!e->set)
                return protocol_line("FAILED internal The download failed for an unknown reason.");
        return protocol_line("FAILED %s %s", pull_failure_to_string(e->kind), e->message);
}

int protocol_progress(uint64_t done, uint64_t total, bool force) {
        static uint64_t last_usec = 0, last_done = UINT64_MAX;
        uint64_t now = now_monotonic_usec();

        if (done == last_done && !force)
                return 0;
        if (!force && last_usec != 0 && now - last_usec < PROTOCOL_PROGRESS_INTERVAL_USEC)
                return 0;
        last_usec = now;
        last_done = done;
        return protocol_line("PROGRESS %" PRIu64 " %" PRIu64, done, total);
}

/* Lines longer than this are not an answer the daemon would give. */
#define ANSWER_MAX 64U

int protocol_wait_answer(int input_fd, int signal_fd) {
        char line[ANSWER_MAX];
        size_t n = 0;

        for (;;) {
                struct pollfd fds[2] = {
                        { .fd = input_fd, .events = POLLIN },
                        { .fd = signal_fd, .events = POLLIN },
                };
                ssize_t k;

                if (poll(fds, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (fds[1].revents & POLLIN)
                        return PROTOCOL_CANCEL;
                if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
                        continue;

                /* Byte by byte: what follows the answer is not ours to take. */
                k = read(input_fd, line + n, 1);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return PROTOCOL_CANCEL;
                if (line[n] != '\n') {
                        if (++n >= sizeof line)
                                return -EBADMSG;
                        continue;
                }
                line[n] = '\0';
                if (n > 0 && line[n - 1] == '\r')
                        line[n - 1] = '\0';
                if (strcmp(line, "GO") == 0)
                        return PROTOCOL_GO;
                if (strcmp(line, "CANCEL") == 0)
                        return PROTOCOL_CANCEL;
                return -EBADMSG;
        }
}
