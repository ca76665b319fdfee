/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* State shared by the verbs of mpool-client: the parsed command line. */

/* Exit statuses, documented in mpool-client(1). Verbs return one of these,
 * or a negative errno for a failure that maps to MPOOL_EXIT_FAILURE. */
enum {
        MPOOL_EXIT_SUCCESS = 0,
        MPOOL_EXIT_FAILURE = 1,
        MPOOL_EXIT_USAGE = 2,
        MPOOL_EXIT_NOT_FOUND = 3,
        MPOOL_EXIT_ACCESS_DENIED = 4,
        MPOOL_EXIT_NO_MEMORY = 5,
        MPOOL_EXIT_INVALID_MODEL = 6,
        MPOOL_EXIT_UNREACHABLE = 7,
        MPOOL_EXIT_PINNED = 8,
        MPOOL_EXIT_CANCELLED = 9,
        MPOOL_EXIT_BUSY = 10,
        MPOOL_EXIT_DOWNLOAD_FAILED = 11,
        MPOOL_EXIT_NO_STORAGE = 12,
        MPOOL_EXIT_EXISTS = 13,
        MPOOL_EXIT_NOT_SUPPORTED = 14,  /* embed: a model mpoold cannot run */
        MPOOL_EXIT_INTERRUPTED = 130,   /* 128 + SIGINT, as shells report it */
};

typedef enum BusTransport {
        TRANSPORT_SYSTEM,
        TRANSPORT_USER,
        TRANSPORT_ADDRESS,
        TRANSPORT_REMOTE,
} BusTransport;

typedef enum JsonMode {
        JSON_OFF,
        JSON_SHORT,
        JSON_PRETTY,
} JsonMode;

/* The default method call timeout, as busctl's. */
#define DEFAULT_TIMEOUT_USEC (25 * UINT64_C(1000000))

extern BusTransport arg_transport;
extern const char *arg_address;        /* TRANSPORT_ADDRESS */
extern const char *arg_host;           /* TRANSPORT_REMOTE */
extern JsonMode arg_json;
extern bool arg_no_pager;
extern bool arg_no_legend;
extern bool arg_quiet;
extern bool arg_ask_password;
extern bool arg_timeout_set;           /* --timeout= given: loads wait no longer either */
extern uint64_t arg_timeout_usec;      /* UINT64_MAX: no timeout */
extern bool arg_force;
extern bool arg_all;
extern bool arg_pin;
extern bool arg_files;
extern bool arg_keep_alive_set;
extern int64_t arg_keep_alive_sec;     /* -1: never unload for idleness */
extern const char *arg_revision;       /* pull, inspect: NULL for the daemon's default */
extern const char *arg_precision;      /* load: NULL for the daemon's default */
extern uint32_t arg_max_workers;       /* load: 0 for the daemon's default */
extern bool arg_normalize_set;         /* embed: --normalize or --no-normalize given */
extern bool arg_normalize;
extern bool arg_no_truncate;           /* embed */
extern const char *arg_truncation_direction; /* embed: NULL for the daemon's default */
extern const char *arg_prompt_name;    /* embed: NULL for the model's default prompt */
extern uint32_t arg_dimensions;        /* embed: 0 for all */
extern bool arg_null;                  /* embed: texts on stdin are NUL-separated */

/* Verbs: argv[0] is the verb. They return 0, an exit status, or a negative
 * errno (already reported). */
int verb_status(int argc, char *argv[]);
int verb_list(int argc, char *argv[]);
int verb_load(int argc, char *argv[]);
int verb_unload(int argc, char *argv[]);
int verb_hold(int argc, char *argv[]);
int verb_monitor(int argc, char *argv[]);
int verb_top(int argc, char *argv[]);
int verb_set(int argc, char *argv[]);
int verb_pull(int argc, char *argv[]);
int verb_inspect(int argc, char *argv[]);
int verb_cancel(int argc, char *argv[]);
int verb_register(int argc, char *argv[]);
int verb_remove(int argc, char *argv[]);
int verb_embed(int argc, char *argv[]);
