/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macro.h"
#include "pool.h"
#include "request.h"
#include "strv.h"

int request_new(RequestKind kind, const char *model, const char *owner, request_complete_t on_complete,
                void *userdata, Request **ret) {
        _cleanup_(request_unrefp) Request *req = NULL;

        assert(kind >= 0 && kind < _REQUEST_KIND_MAX);
        assert(model || kind == REQUEST_UNLOAD_ALL);
        assert(on_complete);
        assert(ret);

        req = calloc(1, sizeof *req);
        if (!req)
                return -ENOMEM;
        *req = (Request) {
                .n_ref = 1,
                .kind = kind,
                .keep_alive_sec = KEEP_ALIVE_DEFAULT,
                .precision = _PRECISION_INVALID,
                .on_complete = on_complete,
                .userdata = userdata,
        };
        if (model) {
                req->model = strdup(model);
                if (!req->model)
                        return -ENOMEM;
        }
        if (owner) {
                req->owner = strdup(owner);
                if (!req->owner)
                        return -ENOMEM;
        }

        *ret = TAKE_PTR(req);
        return 0;
}

Request *request_ref(Request *req) {
        assert(req && req->n_ref > 0);
        req->n_ref++;
        return req;
}

Request *request_unref(Request *req) {
        if (!req)
                return NULL;
        assert(req->n_ref > 0);
        if (--req->n_ref > 0)
                return NULL;
        free(req->model);
        free(req->owner);
        free(req->error_message);
        strv_free(req->unloaded);
        for (size_t i = 0; i < req->n_files; i++) {
                free(req->files[i].name);
                if (req->files[i].fd >= 0)
                        close(req->files[i].fd);
        }
        free(req->files);
        free(req);
        return NULL;
}

static void finish(Request *req) {
        /* The callback may drop the last reference its owner held. */
        request_ref(req);
        req->completed = true;
        req->on_complete(req, req->userdata);
        request_unref(req);
}

void request_complete(Request *req, int error, const char *format, ...) {
        va_list ap;

        assert(req);
        assert(!req->completed);
        assert(error <= 0);

        req->error = error;
        if (error < 0) {
                va_start(ap, format);
                if (vasprintf(&req->error_message, format, ap) < 0)
                        req->error_message = NULL;   /* the callback says "out of memory" then */
                va_end(ap);
        }
        finish(req);
}

void request_succeed(Request *req) {
        assert(req);
        assert(!req->completed);

        req->error = 0;
        finish(req);
}

const char *request_error_reason(int error) {
        switch (error) {
        case -ENOENT:
                return "not-found";
        case -EBADMSG:
                return "invalid-model";
        case -ENOSPC:
                return "insufficient-memory";
        case -ECANCELED:
                return "cancelled";
        case -EBUSY:
                return "busy";
        case -EUSERS:
                return "limits-exceeded";
        case -EPERM:
                return "pinned";
        case -EOPNOTSUPP:
                return "not-supported";
        case -ENOMEM:
                return "no-memory";
        default:
                return "io-error";
        }
}
