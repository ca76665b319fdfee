/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

/* The daemon's side of one mpool-pull helper (pull/PROTOCOL.md): starts it
 * with a pipe each way, reads its lines on the loop, and hands on what they
 * say. The helper has already checked everything that came from the
 * network; the lines are still read as untrusted (bounded length, known
 * words, numbers in range, names validated), since a helper that crashed
 * half-way or was subverted must fail one download and nothing else. */

#define PULL_LINE_MAX 1024U
#define PULL_FILES_MAX 10000U

typedef struct PullFile {
        char *name;               /* relative, validated by the helper and again here */
        uint64_t size;
        char sha256[65];          /* empty for files that are not LFS */
} PullFile;

typedef struct PullPlan {
        char commit[41];
        PullFile *files;
        size_t n_files;
        uint64_t total_bytes;
} PullPlan;

typedef struct PullProcess PullProcess;

typedef struct PullCallbacks {
        /* The plan is complete (READY): answer with pull_process_go() or
         * pull_process_cancel(), now or later. */
        void (*ready)(PullProcess *p, const PullPlan *plan, void *userdata);
        void (*progress)(PullProcess *p, uint64_t done, uint64_t total, void *userdata);
        /* Exactly once, after the helper exited: error 0 (DONE), or
         * negative with failure the FAILED line's kind ("not-found",
         * "hash-mismatch", …, or "internal" when the helper died without
         * saying why, "protocol" when it said something it must not) and a
         * message for people. The process object may be freed here. */
        void (*finished)(PullProcess *p, int error, const char *failure, const char *message, void *userdata);
} PullCallbacks;

typedef struct PullArguments {
        const char *helper;       /* path of mpool-pull */
        const char *endpoint;
        const char *repo;
        const char *revision;
        const char *staging;
        int token_fd;             /* -1: none; else handed to the helper as fd 3 */
        const char *test_argument; /* one more option, from the test build only (test-hooks.h), or NULL */
} PullArguments;

/* The helper starts with a cleared environment: only MPOOL_LOG_LEVEL and
 * libcurl's proxy variables (http_proxy, https_proxy, HTTPS_PROXY,
 * all_proxy, ALL_PROXY, no_proxy, NO_PROXY) are passed on from the
 * daemon's. */

int pull_process_start(sd_event *event, const PullArguments *args, const PullCallbacks *callbacks,
                       void *userdata, PullProcess **ret);
/* After ready: the helper downloads. */
int pull_process_go(PullProcess *p);
/* Asks the helper to stop (CANCEL, then SIGTERM); finished follows. */
void pull_process_cancel(PullProcess *p);
/* Kills a helper still running; no callback follows. */
PullProcess *pull_process_free(PullProcess *p);
pid_t pull_process_pid(const PullProcess *p);

void pull_plan_done(PullPlan *plan);

/* Parses one line of the plan or of progress into *plan, *ret_done and
 * *ret_total. Exposed for tests. Returns the kind of line (below) or
 * -EBADMSG. */
typedef enum PullLine {
        PULL_LINE_COMMIT,
        PULL_LINE_FILE,
        PULL_LINE_TOTAL,
        PULL_LINE_READY,
        PULL_LINE_PROGRESS,
        PULL_LINE_DONE,
        PULL_LINE_FAILED,
} PullLine;
int pull_line_parse(const char *line, PullPlan *plan, uint64_t *ret_done, uint64_t *ret_total,
                    char **ret_failure, char **ret_message);
