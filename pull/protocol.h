/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "macro.h"

/* The line protocol between mpool-pull and the daemon (pull/PROTOCOL.md):
 * the helper writes lines to stdout, the daemon answers on stdin. Every
 * field is plain ASCII the daemon can split on spaces; the one free-form
 * field (a file name, a message) always comes last, and never holds a
 * control character. */

/* Why a pull failed, as the FAILED line names it. */
typedef enum PullFailure {
        PULL_NOT_FOUND,
        PULL_UNAUTHORIZED,
        PULL_NETWORK,
        PULL_HASH_MISMATCH,
        PULL_SIZE_MISMATCH,
        PULL_STORAGE,
        PULL_PROTOCOL,
        PULL_UNSUPPORTED,
        PULL_CANCELLED,
        PULL_INTERNAL,
        _PULL_FAILURE_MAX,
} PullFailure;

const char *pull_failure_to_string(PullFailure kind);

/* The first failure of a run: later ones are consequences of it. */
#define PULL_MESSAGE_MAX 512U
typedef struct PullError {
        bool set;
        PullFailure kind;
        char message[PULL_MESSAGE_MAX];
} PullError;

/* Records the failure unless one is recorded already; returns r (a
 * negative errno), so that callers can write "return pull_error(...)". The
 * message is for people: it names the file where there is one and never
 * quotes what a server sent. "%m" names -r. */
int pull_error(PullError *e, PullFailure kind, int r, const char *format, ...) _printf_(4, 5);

/* The same for a failure of the staging folder's file system: storage when
 * it is full (ENOSPC, EDQUOT), internal otherwise. */
int pull_error_io(PullError *e, int r, const char *format, ...) _printf_(3, 4);

/* The output lines. Each returns 0 or a negative errno when stdout cannot
 * be written (the daemon has gone: EPIPE). */
int protocol_commit(const char *commit);
int protocol_file(uint64_t size, const char *sha256_hex, const char *name);
int protocol_total(uint64_t bytes, uint64_t files);
int protocol_ready(void);
int protocol_line(const char *format, ...) _printf_(1, 2);
int protocol_done(void);
int protocol_failed(const PullError *e);

/* PROGRESS lines, at most one per PROTOCOL_PROGRESS_INTERVAL_USEC; force
 * writes one anyway (the first and the last). */
#define PROTOCOL_PROGRESS_INTERVAL_USEC (100 * USEC_PER_MSEC)
int protocol_progress(uint64_t done, uint64_t total, bool force);

/* What the daemon said after READY. */
typedef enum ProtocolAnswer {
        PROTOCOL_GO,
        PROTOCOL_CANCEL,        /* "CANCEL", end of file, or a signal */
} ProtocolAnswer;

/* Waits for the daemon's answer on input_fd, also watching signal_fd (a
 * signalfd: SIGTERM or SIGINT cancel). Returns PROTOCOL_GO or
 * PROTOCOL_CANCEL, or -EBADMSG for a line that is neither, or another
 * negative errno. */
int protocol_wait_answer(int input_fd, int signal_fd);
