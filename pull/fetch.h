/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "json-scan.h"
#include "protocol.h"

/* HTTP transfers through libcurl's multi interface: several at once, each
 * resumed with a Range request from what its sink already holds, retried
 * with a doubling delay after failures that may pass (a dropped
 * connection, a timeout, a 5xx), redirects followed to http and https URLs
 * only, and the Authorization header kept to the host it was meant for
 * (libcurl drops it on a redirect to another host, port or scheme: a test
 * checks). Everything waits in curl_multi_poll(), which also watches a
 * signalfd: SIGTERM or SIGINT cancels. */

typedef struct FetchOptions {
        const char *token;              /* may be NULL; sent as "Authorization: Bearer" */
        unsigned retries;               /* after the first attempt, in a row without progress */
        uint64_t backoff_usec;          /* the first delay; doubles after each failure */
        long low_speed_time_sec;        /* aborted (and retried) below 1 KiB/s for that long */
        long connect_timeout_sec;
} FetchOptions;

#define FETCH_RETRIES_DEFAULT 5U
#define FETCH_BACKOFF_USEC_DEFAULT USEC_PER_SEC
#define FETCH_BACKOFF_USEC_MAX (60 * USEC_PER_SEC)
#define FETCH_LOW_SPEED_LIMIT 1024L
#define FETCH_LOW_SPEED_TIME_DEFAULT 60L
#define FETCH_CONNECT_TIMEOUT_DEFAULT 30L
#define FETCH_MAX_REDIRECTS 10L

typedef struct Fetcher Fetcher;

/* signal_fd: a signalfd whose signals cancel. */
int fetcher_new(const FetchOptions *options, int signal_fd, Fetcher **ret);
Fetcher *fetcher_free(Fetcher *f);
static inline void fetcher_freep(Fetcher **f) {
        *f = fetcher_free(*f);
}

/* Where a transfer's bytes go. */
typedef struct FetchSink {
        /* Called before the first request (may be NULL). */
        int (*open)(void *userdata, PullError *e);
        /* Bytes of the wanted range held already: the next request asks
         * for what follows. */
        uint64_t (*held)(void *userdata);
        /* The server sends the resource from its start, Range or not: drop
         * what is held. */
        int (*reset)(void *userdata, PullError *e);
        /* 0, 1 when the sink holds all it wants (the rest is not read), or
         * a negative errno with the failure recorded. */
        int (*write)(void *userdata, const void *data, size_t n, PullError *e);
        /* The transfer is over and every byte came. */
        int (*finish)(void *userdata, PullError *e);
} FetchSink;

typedef struct FetchRequest {
        const char *what;               /* for messages: "config.json", "the model info of org/name at main" */
        const char *url;
        uint64_t first;                 /* the first byte wanted */
        uint64_t length;                /* how many; UINT64_MAX: to the end, however many */
        bool exact_range;               /* ask for just those (else "bytes=N-" only to resume) */
        const FetchSink *sink;
        void *userdata;
} FetchRequest;

/* Called after bytes were written somewhere, and at least once a second
 * while transfers wait; a negative errno stops every transfer, the failure
 * recorded in e. */
typedef int (*fetch_progress_t)(void *userdata, PullError *e);

/* Runs the requests, at most parallel at once, until each is finished or
 * one fails for good (the others are then stopped). 0, or a negative errno
 * with the failure recorded in e (-ECANCELED: cancelled). */
int fetch_run(Fetcher *f, const FetchRequest *requests, size_t n, unsigned parallel, fetch_progress_t progress,
              void *userdata, PullError *e);

/* One request into memory: [first, first + length) of url, or the whole
 * resource (length UINT64_MAX) of at most max bytes, which is then a
 * protocol failure. The bytes are in *ret (mapped: see JsonBuffer), their
 * count in *ret_length. A server that ignores Range is fine here. */
int fetch_to_memory(Fetcher *f, const char *what, const char *url, uint64_t first, uint64_t length, uint64_t max,
                    JsonBuffer *ret, size_t *ret_length, PullError *e);
