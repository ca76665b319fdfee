/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "pager.h"
#include "terminal.h"

int pager_open(Pager *p) {
        *p = (Pager) { .f = stdout };

        if (arg_no_pager || !on_tty())
                return 0;

        p->memstream = open_memstream(&p->buffer, &p->size);
        if (!p->memstream)
                return negative_errno();
        p->f = p->memstream;
        return 0;
}

static size_t count_lines(const char *s, size_t n) {
        size_t lines = 0;

        for (size_t i = 0; i < n; i++)
                if (s[i] == '\n')
                        lines++;
        return lines;
}

static int write_all(int fd, const char *s, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, s, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                s += k;
                n -= (size_t) k;
        }
        return 0;
}

/* In the pager child: $PAGER (through the shell, as it may have arguments),
 * else less, else more; and if none can run, the text is copied as it is. */
_Noreturn static void exec_pager(void) {
        const char *pager = getenv("MPOOL_PAGER") ?: getenv("PAGER");
        const char *less_options = getenv("MPOOL_LESS") ?: "FRSXMK";
        char buffer[4096];
        ssize_t k;

        /* As systemd's tools do: our options for less override $LESS, which
         * users set for other purposes (e.g. -i) and without R would show
         * our colors as raw escape codes. $MPOOL_LESS is how to change them.
         * Set for $PAGER too, which is often less. */
        if (setenv("LESS", less_options, 1) < 0)
                _exit(EXIT_FAILURE);

        if (pager) {
                /* "" and "cat" mean no pager. */
                if (*pager && strcmp(pager, "cat") != 0)
                        execl("/bin/sh", "sh", "-c", pager, (char *) NULL);
        } else {
                execlp("less", "less", (char *) NULL);
                execlp("more", "more", (char *) NULL);
        }

        while ((k = read(STDIN_FILENO, buffer, sizeof buffer)) > 0)
                if (write_all(STDOUT_FILENO, buffer, (size_t) k) < 0)
                        break;
        _exit(EXIT_SUCCESS);
}

static int run_pager(const char *text, size_t n) {
        int fds[2];
        pid_t pid;
        int r = 0, status;
        struct sigaction ignore = { .sa_handler = SIG_IGN }, old_pipe;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return negative_errno();

        pid = fork();
        if (pid < 0) {
                r = negative_errno();
                close(fds[0]);
                close(fds[1]);
                return r;
        }
        if (pid == 0) {
                if (dup2(fds[0], STDIN_FILENO) < 0)
                        _exit(EXIT_FAILURE);
                close(fds[0]);
                close(fds[1]);
                exec_pager();
        }
        close(fds[0]);

        /* The user may quit the pager before reading everything. */
        sigaction(SIGPIPE, &ignore, &old_pipe);
        r = write_all(fds[1], text, n);
        if (r == -EPIPE)
                r = 0;
        close(fds[1]);

        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR) {
                        r = negative_errno();
                        break;
                }
        sigaction(SIGPIPE, &old_pipe, NULL);
        return r;
}

int pager_close(Pager *p) {
        int r;

        if (!p->memstream)
                return fflush_and_check(stdout);

        if (fclose(p->memstream) != 0) {
                p->memstream = NULL;
                return negative_errno();
        }
        p->memstream = NULL;
        p->f = stdout;

        /* Short output needs no pager; it would only flash the screen. */
        if (count_lines(p->buffer, p->size) < terminal_lines(STDOUT_FILENO)) {
                fwrite(p->buffer, 1, p->size, stdout);
                r = fflush_and_check(stdout);
        } else {
                fflush(stdout);
                r = run_pager(p->buffer, p->size);
        }

        free(p->buffer);
        p->buffer = NULL;
        return r;
}

void pager_done(Pager *p) {
        if (p->memstream)
                fclose(p->memstream);
        free(p->buffer);
        *p = (Pager) { .f = stdout };
}
