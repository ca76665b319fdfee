/* SPDX-License-Identifier: MIT */
#ifdef MPOOL_TEST_HOOKS

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "parse-util.h"
#include "test-hooks.h"
#include "time-util.h"

/* How often a held load looks at its cancellation flag. */
#define GATE_POLL_MSEC 20

/* Waits while the FIFO named after the model in the directory $variable
 * names exists, until a byte comes through it or the item is cancelled.
 * what: "load", "request", for the log. */
static void gate(const char *variable, const char *what, const char *model_name, WorkItem *item) {
        const char *dir = getenv(variable);
        char path[PATH_MAX], *p;
        _cleanup_close_ int fd = -1;
        struct stat st;

        if (!dir)
                return;
        if (snprintf(path, sizeof path, "%s/%s", dir, model_name) >= (int) sizeof path)
                return;
        for (p = path + strlen(dir) + 1; *p; p++)
                if (*p == '/')
                        *p = '%';
        if (stat(path, &st) < 0 || !S_ISFIFO(st.st_mode))
                return;

        /* Non-blocking, so that opening does not wait for a writer. */
        fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
                log_warning_errno(errno, "Test hook: cannot open the %s gate %s: %m", what, path);
                return;
        }
        log_info("Test hook: a %s of %s waits at its gate.", what, model_name);

        while (!work_item_cancelled(item)) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                char byte;

                if (poll(&pfd, 1, GATE_POLL_MSEC) <= 0)
                        continue;
                if (read(fd, &byte, 1) == 1)
                        break;
                /* POLLHUP without data: a writer came and went, and poll()
                 * now returns at once; wait on without spinning. */
                (void) poll(NULL, 0, GATE_POLL_MSEC);
        }
        log_info("Test hook: a %s of %s passed its gate.", what, model_name);
}

void test_hook_load_gate(const char *model_name, WorkItem *item) {
        gate("MPOOL_TEST_LOAD_GATE", "load", model_name, item);
}

void test_hook_compute_gate(const char *model_name, WorkItem *item) {
        gate("MPOOL_TEST_COMPUTE_GATE", "request", model_name, item);
}

uint64_t test_hook_inspection_timeout_usec(uint64_t usec) {
        const char *v = getenv("MPOOL_TEST_INSPECTION_TIMEOUT_SEC");
        unsigned sec;

        if (v && parse_unsigned(v, 1, 3600, &sec) >= 0)
                return sec * USEC_PER_SEC;
        return usec;
}

const char *test_hook_pull_argument(void) {
        static char argument[64];
        const char *v = getenv("MPOOL_TEST_PULL_BACKOFF_MSEC");
        unsigned msec;

        if (!v || parse_unsigned(v, 1, 60000, &msec) < 0)
                return NULL;
        snprintf(argument, sizeof argument, "--test-backoff-msec=%u", msec);
        return argument;
}

#endif
