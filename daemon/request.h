/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "precision.h"

/* What somebody asked of the model core, and how it ended. The core never
 * sees who asked or how to answer: it completes the request once, and the
 * completion callback (the bus layer's reply, Preload's log line, a test's
 * assertion, the next step of a chain) does the rest.
 *
 * Errors are negative errno values with a message for people:
 *   -ENOENT     no such model            -EBADMSG  the model's files are invalid
 *   -ENOSPC     the memory limit         -ECANCELED cancelled (by Unload, shutdown)
 *   -EBUSY      a queue is full          -EUSERS   a per-caller or pool bound
 *   -EPERM      pinned (Unload without force)
 *   -EOPNOTSUPP a precision asked of a model that cannot be run
 *   -ENOMEM     out of memory            others    reading the model failed
 */

typedef enum RequestKind {
        REQUEST_LOAD,        /* result: the model is loaded */
        REQUEST_ACQUIRE,     /* result: loaded, and a hold taken for the owner */
        REQUEST_UNLOAD,      /* result: was_loaded, once the memory is back */
        REQUEST_UNLOAD_ALL,  /* result: the names unloaded, once every cancelled load let go */
        REQUEST_OPEN_FILES,  /* result: as REQUEST_ACQUIRE, and a descriptor of each weights file */
        _REQUEST_KIND_MAX,
} RequestKind;

typedef struct Request Request;

/* A weights file handed out: its name in the model's folder and a
 * descriptor of its own (read-only, O_CLOEXEC; its own file offset), which
 * the request closes when it goes. */
typedef struct RequestFile {
        char *name;
        int fd;
} RequestFile;

/* A system bus lets one message carry at most 16 descriptors unless its
 * administrator says otherwise (max_message_unix_fds): a model in more
 * weights files than that cannot be handed out in one reply. */
#define REQUEST_FILES_MAX 16U

typedef void (*request_complete_t)(Request *req, void *userdata);

struct Request {
        unsigned n_ref;
        RequestKind kind;

        /* Inputs, fixed at creation. */
        char *model;              /* NULL for REQUEST_UNLOAD_ALL */
        char *owner;              /* who holds and is bounded: a bus peer; NULL for the daemon */
        int64_t keep_alive_sec;   /* KEEP_ALIVE_DEFAULT: as it is */
        Precision precision;      /* a runnable model's, for its load; _PRECISION_INVALID: not asked */
        unsigned max_workers;     /* REQUEST_LOAD: the most workers the model may run; 0: not asked */
        bool pin;
        bool force;

        /* Results, valid in the completion callback. */
        bool completed;
        int error;                /* 0 or negative errno */
        char *error_message;      /* when error < 0 */
        bool was_loaded;          /* REQUEST_UNLOAD */
        char **unloaded;          /* REQUEST_UNLOAD_ALL, NULL-terminated */
        RequestFile *files;       /* REQUEST_OPEN_FILES */
        size_t n_files;

        /* The core's bookkeeping. */
        unsigned n_pending;       /* REQUEST_UNLOAD_ALL: cancelled loads still letting go */
        bool waiting;             /* counted against its owner's pending calls */

        request_complete_t on_complete;
        void *userdata;
};

/* model may be NULL only for REQUEST_UNLOAD_ALL; owner may be NULL. */
int request_new(RequestKind kind, const char *model, const char *owner, request_complete_t on_complete,
                void *userdata, Request **ret);
Request *request_ref(Request *req);
Request *request_unref(Request *req);
static inline void request_unrefp(Request **req) {
        request_unref(*req);
}

/* Completes a request that has not completed yet: sets the outcome and
 * calls the callback. The message is copied (a printf format). */
void request_complete(Request *req, int error, const char *format, ...) __attribute__((format(printf, 3, 4)));
void request_succeed(Request *req);

/* A short word for an error, for the journal's REASON= field: "not-found",
 * "invalid-model", "insufficient-memory", "cancelled", … */
const char *request_error_reason(int error);
