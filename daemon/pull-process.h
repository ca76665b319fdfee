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
/* Distinct dtypes an inspection may name (the helper's own bound). */
#define PULL_DTYPES_MAX 64U

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

/* What --inspect says of the weights (pull/PROTOCOL.md): read from the
 * TENSORS, PARAMETERS, DTYPE and MEMORY lines, which must come in that order
 * after the plan, the DTYPE names known to the daemon's safetensors reader,
 * each once and sorted, their counts adding up to PARAMETERS. */
typedef struct PullDtype {
        char name[16];
        uint64_t parameters;
} PullDtype;

typedef struct PullInspection {
        uint64_t tensors;
        uint64_t parameters;
        PullDtype dtypes[PULL_DTYPES_MAX];
        size_t n_dtypes;
        uint64_t memory_bytes;    /* as Status will report the model once loaded */
        unsigned stage;           /* lines seen so far; PULL_INSPECTION_COMPLETE after MEMORY */
} PullInspection;

#define PULL_INSPECTION_COMPLETE 4U

typedef struct PullProcess PullProcess;

typedef struct PullCallbacks {
        /* The plan is complete (READY): answer with pull_process_go() or
         * pull_process_cancel(), now or later. Not called (and may be NULL)
         * for an inspection, whose results are read in finished. */
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
        const char *staging;      /* NULL for an inspection */
        int token_fd;             /* -1: none; else handed to the helper as fd 3 */
        bool inspect;             /* --inspect: the plan and what the weights hold, nothing written */
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
/* What the helper said, for finished with error 0: the plan and, for an
 * inspection, what the weights hold. Valid until pull_process_free(). */
const PullPlan *pull_process_plan(const PullProcess *p);
const PullInspection *pull_process_inspection(const PullProcess *p);

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
        PULL_LINE_TENSORS,
        PULL_LINE_PARAMETERS,
        PULL_LINE_DTYPE,
        PULL_LINE_MEMORY,
} PullLine;
int pull_line_parse(const char *line, PullPlan *plan, uint64_t *ret_done, uint64_t *ret_total,
                    char **ret_failure, char **ret_message);
/* Parses one line of an inspection's results into *inspection, in order:
 * the kind, -ENOMSG for a line that is none of them (pull_line_parse()'s
 * then), or -EBADMSG. plan_bytes_max bounds MEMORY: the plan's files,
 * each rounded up to pages, are the most any model of that plan can take. */
int pull_inspection_line_parse(const char *line, PullInspection *inspection, uint64_t plan_bytes_max);
