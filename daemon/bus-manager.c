/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bus-embed.h"
#include "bus-inspect.h"
#include "bus-metrics.h"
#include "bus-manager.h"
#include "bus-model.h"
#include "bus-options.h"
#include "bus-signal.h"
#include "service.h"
#include "bus-util.h"
#include "catalog.h"
#include "download.h"
#include "log.h"
#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"
#include "model-compute.h"
#include "model-lifecycle.h"
#include "polkit.h"
#include "time-util.h"

static int reply_strv(sd_bus_message *call, char **l) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_message_new_method_return(call, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append_strv(reply, l);
        if (r < 0)
                return r;
        return sd_bus_message_send(reply);
}

const char *bus_error_name(int error) {
        switch (error) {
        case -ENOENT:
                return MPOOL_ERROR_MODEL_NOT_FOUND;
        case -EBADMSG:
                return MPOOL_ERROR_INVALID_MODEL;
        case -ENOSPC:
                return MPOOL_ERROR_INSUFFICIENT_MEMORY;
        case -ECANCELED:
                return MPOOL_ERROR_CANCELLED;
        case -EBUSY:
                return MPOOL_ERROR_BUSY;
        case -EUSERS:
                return MPOOL_ERROR_LIMITS_EXCEEDED;
        case -EPERM:
                return MPOOL_ERROR_MODEL_PINNED;
        case -EOPNOTSUPP:
                return SD_BUS_ERROR_NOT_SUPPORTED;
        case -ENOMEM:
                return SD_BUS_ERROR_NO_MEMORY;
        default:
                /* Unreadable files too (EACCES): that is the store's problem,
                 * not the caller's authorization, so no AccessDenied. */
                return SD_BUS_ERROR_IO_ERROR;
        }
}

int bus_read_model_name(sd_bus_message *message, const char **ret, sd_bus_error *error) {
        _cleanup_free_ char *problem = NULL;
        const char *name;
        int r;

        r = sd_bus_message_read(message, "s", &name);
        if (r < 0)
                return r;
        r = model_name_validate(name, &problem);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Invalid model name: %s",
                                         problem ?: "not a model name.");
        *ret = name;
        return 0;
}

/* Asks polkit for each action in turn (NULL-terminated). 1: all allowed;
 * 0: a check is under way and the call will be dispatched again; <0: denied. */
int bus_verify_actions(Manager *m, sd_bus_message *message, const char *model_name, sd_bus_error *error,
                          const char *action, ...) {
        const char *const details[] = { "model", model_name, NULL };
        va_list ap;
        int r = 1;

        va_start(ap, action);
        for (const char *a = action; a; a = va_arg(ap, const char *)) {
                r = polkit_verify_async(m->polkit, message, a, model_name ? details : NULL, error);
                if (r <= 0)
                        break;
        }
        va_end(ap);
        return r;
}

static int reply_files(sd_bus_message *call, const RequestFile *files, size_t n_files) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_message_new_method_return(call, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(sh)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_files; i++) {
                r = sd_bus_message_append(reply, "(sh)", files[i].name, files[i].fd);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

/* The bus's answer to a request the core completed: the reply, or the
 * named error. Owns the reference on the call taken by submit(). */
static void on_request_complete(Request *req, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        if (req->error < 0)
                r = sd_bus_reply_method_errorf(call, bus_error_name(req->error), "%s",
                                               req->error_message ?: "Out of memory.");
        else
                switch (req->kind) {
                case REQUEST_LOAD:
                        r = bus_model_path(req->model, &path);
                        if (r >= 0)
                                r = sd_bus_reply_method_return(call, "o", path);
                        else
                                r = sd_bus_reply_method_errnof(call, r, "Cannot name the object of %s: %m",
                                                               req->model);
                        break;
                case REQUEST_ACQUIRE:
                        r = sd_bus_reply_method_return(call, NULL);
                        break;
                case REQUEST_UNLOAD:
                        r = sd_bus_reply_method_return(call, "b", req->was_loaded);
                        break;
                case REQUEST_UNLOAD_ALL:
                        r = reply_strv(call, req->unloaded);
                        break;
                case REQUEST_OPEN_FILES:
                        r = reply_files(call, req->files, req->n_files);
                        break;
                default:
                        assert(false);
                        return;
                }

        /* A caller that went away cannot be answered; that is no failure of ours. */
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot send the reply about %s: %m", strempty(req->model));
}

/* Hands the call to the core as a request; the reply follows its completion. */
static int submit(Manager *m, sd_bus_message *message, RequestKind kind, const char *name,
                  const RequestOptions *options) {
        _cleanup_(request_unrefp) Request *req = NULL;
        int r;

        r = request_new(kind, name, sd_bus_message_get_sender(message), on_request_complete, message, &req);
        if (r < 0)
                return r;
        if (options) {
                req->keep_alive_sec = options->keep_alive_sec;
                req->precision = options->precision;
                req->max_workers = (unsigned) options->max_workers;
                req->pin = options->pin;
                req->force = options->force;
        }
        sd_bus_message_ref(message);   /* the completion's, given back there */
        manager_submit(m, req);
        return 1;
}

static int method_load(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        RequestOptions options;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = request_options_read(message, request_options_load, &options, error);
        if (r < 0)
                return r;
        r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_LOAD,
                           options.pin ? POLKIT_ACTION_CONFIGURE : NULL, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 1: polkit will answer, the call comes back */

        return submit(m, message, REQUEST_LOAD, name, &options);
}

static int method_acquire(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_LOAD, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return submit(m, message, REQUEST_ACQUIRE, name, NULL);
}

static int method_open_files(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        /* Descriptors can only go to a peer that can receive them; better
         * said now than after loading the model for nothing. */
        if (sd_bus_can_send(sd_bus_message_get_bus(message), SD_BUS_TYPE_UNIX_FD) <= 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_NOT_SUPPORTED,
                                        "This bus connection cannot pass file descriptors.");
        r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_LOAD, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return submit(m, message, REQUEST_OPEN_FILES, name, NULL);
}

static int method_release(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;

        r = model_release(m, name, sd_bus_message_get_sender(message));
        if (r == -ENOENT)
                return sd_bus_error_setf(error, MPOOL_ERROR_NOT_HELD, "You hold no hold on model %s.", name);
        if (r < 0)
                return r;

        return sd_bus_reply_method_return(message, NULL);
}

static int method_unload(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        RequestOptions options;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = request_options_read(message, request_options_unload, &options, error);
        if (r < 0)
                return r;
        r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_LOAD,
                           options.force ? POLKIT_ACTION_CONFIGURE : NULL, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return submit(m, message, REQUEST_UNLOAD, name, &options);
}

static int method_unload_all(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        RequestOptions options;
        int r;

        r = request_options_read(message, request_options_unload, &options, error);
        if (r < 0)
                return r;
        r = bus_verify_actions(m, message, NULL, error, POLKIT_ACTION_LOAD,
                           options.force ? POLKIT_ACTION_CONFIGURE : NULL, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return submit(m, message, REQUEST_UNLOAD_ALL, NULL, &options);
}

/* Owns the reference on the call taken by method_pull(). */
static void on_pull_reply(int error, const char *message, const char *name, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = userdata;
        _cleanup_free_ char *path = NULL;
        const char *error_name;
        int r;

        switch (error) {
        case 0:
                r = bus_model_path(name, &path);
                if (r >= 0)
                        r = sd_bus_reply_method_return(call, "o", path);
                else
                        r = sd_bus_reply_method_errnof(call, r, "Cannot name the object of %s: %m", name);
                goto done;
        case -EDQUOT:
                error_name = MPOOL_ERROR_INSUFFICIENT_STORAGE;
                break;
        case -EREMOTEIO:
                error_name = MPOOL_ERROR_DOWNLOAD_FAILED;
                break;
        default:
                error_name = bus_error_name(error);
        }
        r = sd_bus_reply_method_errorf(call, error_name, "%s", strempty(message));
done:
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot send the reply about pulling %s: %m", name);
}

static int method_pull(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        HubOptions options;
        const char *repo;
        int r;

        r = bus_read_model_name(message, &repo, error);
        if (r < 0)
                return r;
        r = hub_options_read(message, &options, error);
        if (r < 0)
                return r;
        r = bus_verify_actions(m, message, repo, error, POLKIT_ACTION_MANAGE_MODELS, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        sd_bus_message_ref(message);   /* on_pull_reply's */
        r = download_pull(m, repo, options.revision, options.token, on_pull_reply, message);
        if (r < 0) {
                sd_bus_message_unref(message);
                switch (r) {
                case -EBUSY:
                        return sd_bus_error_setf(error, MPOOL_ERROR_BUSY,
                                                 m->shutting_down ? "The daemon is shutting down."
                                                                  : "Model %s is loaded: unload it before pulling it again.",
                                                 repo);
                case -EEXIST:
                        return sd_bus_error_setf(error, MPOOL_ERROR_BUSY,
                                                 "%s is being pulled at another revision.", repo);
                case -ENOTUNIQ:
                        return sd_bus_error_setf(error, MPOOL_ERROR_MODEL_EXISTS,
                                                 "Model %s is registered from a directory outside the store; "
                                                 "remove the registration before pulling it.", repo);
                case -EUSERS:
                        return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                                 "Too many pulls under way or waiting.");
                default:
                        return sd_bus_error_set_errnof(error, r, "Cannot pull %s: %m", repo);
                }
        }
        return 1;
}

static int method_cancel(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        PoolModel *model;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;

        if (download_find(m, name, NULL, NULL)) {
                r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_MANAGE_MODELS, NULL);
                if (r <= 0)
                        return r < 0 ? r : 1;
                /* Polkit may have taken its time: look again. */
                if (download_cancel(m, name) >= 0)
                        return sd_bus_reply_method_return(message, NULL);
        }

        model = pool_find(&m->pool, name);
        if (model && model->state == MODEL_LOADING) {
                r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_LOAD, NULL);
                if (r <= 0)
                        return r < 0 ? r : 1;
                model = pool_find(&m->pool, name);
                if (model && model->state == MODEL_LOADING) {
                        model_cancel_load(m, model);
                        return sd_bus_reply_method_return(message, NULL);
                }
        }

        return sd_bus_error_setf(error, MPOOL_ERROR_NOTHING_TO_CANCEL,
                                 "Nothing is under way for %s: no download and no load.", name);
}

/* Owns the reference on the call taken by method_register() or
 * method_remove(). */
static void on_catalog_reply(int error, const char *message, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = userdata;
        const char *error_name;
        int r;

        switch (error) {
        case 0:
                r = sd_bus_reply_method_return(call, NULL);
                goto done;
        case -EINVAL:
        case -ENOTDIR:
                error_name = SD_BUS_ERROR_INVALID_ARGS;
                break;
        case -EEXIST:
                error_name = MPOOL_ERROR_MODEL_EXISTS;
                break;
        case -EAGAIN:
                error_name = MPOOL_ERROR_BUSY;
                break;
        case -EOPNOTSUPP:
                error_name = SD_BUS_ERROR_NOT_SUPPORTED;
                break;
        default:
                error_name = bus_error_name(error);
        }
        r = sd_bus_reply_method_errorf(call, error_name, "%s", strempty(message));
done:
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot send the reply to %s: %m", strempty(sd_bus_message_get_member(call)));
}

static int method_register(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        static const BusOption no_options[] = { {} };
        Manager *m = userdata;
        const char *name, *path;
        char none;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(message, "s", &path);
        if (r < 0)
                return r;
        r = bus_options_read(message, no_options, &none, error);
        if (r < 0)
                return r;
        /* Refused before polkit is asked: a mistake needs no password. */
        if (path[0] != '/')
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "The path of a model directory must be absolute, not \"%s\".", path);
        if (strlen(path) > STORE_REGISTERED_PATH_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "The path is longer than %u bytes.",
                                         STORE_REGISTERED_PATH_MAX);

        const char *const details[] = { "model", name, "path", path, NULL };
        r = polkit_verify_async(m->polkit, message, POLKIT_ACTION_MANAGE_MODELS, details, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        sd_bus_message_ref(message);   /* on_catalog_reply's */
        catalog_register(m, name, path, on_catalog_reply, message);
        return 1;
}

static int method_remove(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        RequestOptions options;
        const char *name;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = request_options_read(message, request_options_unload, &options, error);
        if (r < 0)
                return r;
        r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_MANAGE_MODELS, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        sd_bus_message_ref(message);   /* on_catalog_reply's */
        catalog_remove(m, name, options.force, sd_bus_message_get_sender(message), on_catalog_reply, message);
        return 1;
}

static double percent(uint64_t part, uint64_t whole) {
        return whole > 0 ? 100.0 * (double) part / (double) whole : 0.0;
}

/* One {sv} entry of a model's status. Straight calls rather than one
 * sd_bus_message_append() of a long format: with thousands of models, the
 * format's parsing was a sixth of what Status cost. */
static int append_entry(sd_bus_message *reply, const char *key, char type, const void *value) {
        const char signature[2] = { type, 0 };
        int r;

        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(reply, 's', key);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'v', signature);
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(reply, type, value);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static int append_string(sd_bus_message *reply, const char *key, const char *value) {
        return append_entry(reply, key, 's', value);
}

static int append_u64(sd_bus_message *reply, const char *key, uint64_t value) {
        return append_entry(reply, key, 't', &value);
}

static int append_u32(sd_bus_message *reply, const char *key, uint32_t value) {
        return append_entry(reply, key, 'u', &value);
}

static int append_double(sd_bus_message *reply, const char *key, double value) {
        return append_entry(reply, key, 'd', &value);
}

static int append_bool(sd_bus_message *reply, const char *key, bool value) {
        int b = value;

        return append_entry(reply, key, 'b', &b);
}

static int append_model_status(sd_bus_message *reply, Manager *m, PoolModel *model) {
        uint64_t deadline = pool_model_deadline(&m->pool, model), download_done = 0, download_total = 0;
        const ModelRuntime *rt = model->userdata;
        ComputeCounts compute;
        int r;

        model_compute_counts(model, &compute);
        (void) download_find(m, model->name, &download_done, &download_total);
        r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        if ((r = append_string(reply, "name", model->name)) < 0 ||
            (r = append_string(reply, "state", model_state_to_string(model->state))) < 0 ||
            (r = append_u64(reply, "size_bytes", model->size_bytes)) < 0 ||
            (r = append_u64(reply, "memory_bytes", model->memory_bytes)) < 0 ||
            (r = append_double(reply, "memory_percent", percent(model->memory_bytes, m->memory.total))) < 0 ||
            (r = append_double(reply, "memory_limit_percent", percent(model->memory_bytes, m->pool.memory_limit))) < 0 ||
            (r = append_bool(reply, "pinned", model->pinned)) < 0 ||
            (r = append_u32(reply, "holds", model->holds)) < 0 ||
            (r = append_u64(reply, "loaded_at_usec",
                            model->state == MODEL_LOADED ? manager_realtime(m, model->loaded_at) : UINT64_C(0))) < 0 ||
            (r = append_u64(reply, "last_used_usec", manager_realtime(m, model->last_used))) < 0 ||
            (r = append_u64(reply, "expires_at_usec", manager_realtime(m, deadline))) < 0 ||
            (r = append_u64(reply, "requests_total", model->requests_total)) < 0 ||
            (r = append_string(reply, "error", strempty(model->error))) < 0 ||
            (r = append_string(reply, "source", model_source_to_string(rt->source))) < 0 ||
            (r = append_string(reply, "revision", strempty(rt->revision))) < 0 ||
            (r = append_string(reply, "kind", model_kind_to_string(model_kind(model, NULL, NULL)))) < 0 ||
            (r = append_string(reply, "precision", strempty(precision_to_string(model_precision(model))))) < 0 ||
            (r = append_u32(reply, "workers", compute.workers)) < 0 ||
            (r = append_u32(reply, "active_requests", compute.active)) < 0 ||
            (r = append_u32(reply, "queued_requests", compute.queued)) < 0 ||
            (r = append_u64(reply, "tokens_total", model->tokens_total)) < 0 ||
            (r = append_u64(reply, "download_done", download_done)) < 0 ||
            (r = append_u64(reply, "download_total", download_total)) < 0)
                return r;

        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(reply, 's', "memory_by_precision");
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'v', "a{st}");
        if (r < 0)
                return r;
        r = bus_model_append_memory_by_precision(reply, model);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static int method_status(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        manager_refresh_memory_available(m);

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_append(
                        reply, "a{sv}", 10,
                        "version", "s", MPOOL_VERSION,
                        "memory_total", "t", m->memory.total,
                        "memory_available", "t", m->memory.available,
                        "memory_limit", "t", m->pool.memory_limit,
                        "memory_used", "t", pool_memory_used(&m->pool),
                        "models_loaded", "u", pool_models_loaded(&m->pool),
                        "idle_timeout_sec", "x", m->pool.idle_timeout_sec,
                        "idle_policy", "s", m->pool.idle_policy == POOL_IDLE_GLOBAL ? "global" : "per-model",
                        "uptime_usec", "t", now_monotonic_usec() - m->started_monotonic,
                        "blas_core", "s", strempty(m->blas_core));
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(reply, 'a', "a{sv}");
        if (r < 0)
                return r;
        POOL_FOREACH(model, &m->pool) {
                /* As on the object manager: a name not yet found in the store
                 * is no model (yet). */
                if (!model_is_announced(model))
                        continue;
                r = append_model_status(reply, m, model);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;

        return sd_bus_message_send(reply);
}

static int property_get_manager(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int r;

        if (strcmp(property, "Version") == 0)
                return sd_bus_message_append(reply, "s", MPOOL_VERSION);
        if (strcmp(property, "MemoryTotal") == 0)
                return sd_bus_message_append(reply, "t", m->memory.total);
        if (strcmp(property, "MemoryLimit") == 0)
                return sd_bus_message_append(reply, "t", m->pool.memory_limit);
        if (strcmp(property, "MemoryUsed") == 0)
                return sd_bus_message_append(reply, "t", pool_memory_used(&m->pool));
        if (strcmp(property, "IdleTimeoutSec") == 0)
                return sd_bus_message_append(reply, "x", m->pool.idle_timeout_sec);

        assert(strcmp(property, "LoadedModels") == 0);
        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        POOL_FOREACH(model, &m->pool)
                if (model->state == MODEL_LOADED) {
                        r = sd_bus_message_append(reply, "s", model->name);
                        if (r < 0)
                                return r;
                }
        return sd_bus_message_close_container(reply);
}

static int property_set_memory_limit(sd_bus *bus, const char *path, const char *interface,
                                     const char *property, sd_bus_message *value, void *userdata,
                                     sd_bus_error *error) {
        Manager *m = userdata;
        uint64_t limit, needed;
        int r;

        r = sd_bus_message_read(value, "t", &limit);
        if (r < 0)
                return r;
        if (limit == 0 || limit > m->memory.total)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "MemoryLimit must be between 1 and %" PRIu64 " bytes (the memory total), "
                                         "not %" PRIu64 ".", m->memory.total, limit);

        r = manager_set_memory_limit(m, limit, &needed);
        if (r == -EBUSY)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "MemoryLimit %" PRIu64 " is below the %" PRIu64 " bytes that pinned models "
                                         "hold; unload them with force first.", limit, needed);
        return r;
}

static int property_set_idle_timeout(sd_bus *bus, const char *path, const char *interface,
                                     const char *property, sd_bus_message *value, void *userdata,
                                     sd_bus_error *error) {
        Manager *m = userdata;
        int64_t sec;
        int r;

        r = sd_bus_message_read(value, "x", &sec);
        if (r < 0)
                return r;
        if (sec != KEEP_ALIVE_FOREVER && (sec < 1 || sec > KEEP_ALIVE_SEC_MAX))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "IdleTimeoutSec must be -1 (never) or between 1 and %" PRIi64
                                         " seconds, not %" PRIi64 ".", KEEP_ALIVE_SEC_MAX, sec);

        manager_set_idle_timeout(m, sec);
        return 0;
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),

        SD_BUS_PROPERTY("Version", "s", property_get_manager, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MemoryTotal", "t", property_get_manager, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_WRITABLE_PROPERTY("MemoryLimit", "t", property_get_manager, property_set_memory_limit, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("MemoryUsed", "t", property_get_manager, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LoadedModels", "as", property_get_manager, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_WRITABLE_PROPERTY("IdleTimeoutSec", "x", property_get_manager, property_set_idle_timeout, 0,
                                 SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE | SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_METHOD_WITH_ARGS("Load",
                                SD_BUS_ARGS("s", name, "a{sv}", options),
                                SD_BUS_RESULT("o", model),
                                method_load, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unload",
                                SD_BUS_ARGS("s", name, "a{sv}", options),
                                SD_BUS_RESULT("b", was_loaded),
                                method_unload, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("UnloadAll",
                                SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_RESULT("as", unloaded),
                                method_unload_all, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Status",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a{sv}", pool, "aa{sv}", models),
                                method_status, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Metrics",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a{sv}", metrics),
                                bus_method_metrics, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Acquire",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_acquire, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenFiles",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_RESULT("a(sh)", files),
                                method_open_files, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Release",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_release, SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_METHOD_WITH_ARGS("Pull",
                                SD_BUS_ARGS("s", repo, "a{sv}", options),
                                SD_BUS_RESULT("o", model),
                                method_pull, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Cancel",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_cancel, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Register",
                                SD_BUS_ARGS("s", name, "s", path, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                method_register, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Remove",
                                SD_BUS_ARGS("s", name, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                method_remove, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Embed",
                                SD_BUS_ARGS("s", name, "as", texts, "a{sv}", options),
                                SD_BUS_RESULT("aad", embeddings),
                                bus_method_embed, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Inspect",
                                SD_BUS_ARGS("s", repo, "a{sv}", options),
                                SD_BUS_RESULT("a{sv}", info),
                                bus_method_inspect, SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_SIGNAL_WITH_ARGS("LoadProgress", SD_BUS_ARGS("s", name, "t", bytes_done, "t", bytes_total), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelLoaded", SD_BUS_ARGS("s", name, "t", memory_bytes), 0),
        SD_BUS_SIGNAL_WITH_ARGS("LoadFailed", SD_BUS_ARGS("s", name, "s", error_name, "s", message), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelUnloaded", SD_BUS_ARGS("s", name, "s", reason), 0),
        SD_BUS_SIGNAL_WITH_ARGS("DownloadProgress", SD_BUS_ARGS("s", name, "t", bytes_done, "t", bytes_total), 0),
        SD_BUS_SIGNAL_WITH_ARGS("DownloadFinished", SD_BUS_ARGS("s", name, "s", result, "s", message), 0),

        SD_BUS_VTABLE_END
};

/* sd-bus replies to Properties.Set as soon as the setter returns, so a
 * setter cannot wait for polkit. Writes to the manager's properties are
 * therefore authorized here, before dispatch: the call is held until polkit
 * answers and then dispatched again, reaching the setter only if allowed. */
static int filter_property_set(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        Manager *m = userdata;
        const char *interface;
        int r;

        if (!sd_bus_message_is_method_call(message, "org.freedesktop.DBus.Properties", "Set") ||
            strcmp(strempty(sd_bus_message_get_path(message)), MPOOL_MANAGER_PATH) != 0)
                return 0;

        r = sd_bus_message_read(message, "s", &interface);
        if (r < 0)
                return 0;   /* malformed: sd-bus's own dispatch will say so */
        r = sd_bus_message_rewind(message, true);
        if (r < 0)
                return log_error_errno(r, "Cannot rewind a Properties.Set call: %m");
        if (strcmp(interface, MPOOL_MANAGER_INTERFACE) != 0)
                return 0;

        r = polkit_verify_async(m->polkit, message, POLKIT_ACTION_CONFIGURE, NULL, &error);
        if (r > 0)
                return 0;   /* allowed: let sd-bus dispatch it to the setter */
        if (r == 0)
                return 1;   /* held until polkit answers */

        if (!sd_bus_error_is_set(&error))
                sd_bus_error_set_errno(&error, r);
        r = sd_bus_reply_method_error(message, &error);
        if (r < 0)
                log_warning_errno(r, "Cannot refuse a Properties.Set call: %m");
        return 1;
}

/* sd-bus delivers the loss of the connection as a local signal. */
static int filter_disconnected(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        if (sd_bus_message_is_signal(message, "org.freedesktop.DBus.Local", "Disconnected"))
                manager_bus_lost(userdata);
        return 0;
}

static int on_peer_left(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        const char *name, *old_owner, *new_owner;
        int r;

        r = sd_bus_message_read(message, "sss", &name, &old_owner, &new_owner);
        if (r < 0) {
                log_warning_errno(r, "Cannot read a NameOwnerChanged signal: %m");
                return 0;
        }
        if (name[0] == ':' && new_owner[0] == '\0')
                manager_peer_left(userdata, name);
        return 0;
}

static int on_peer_left_installed(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        const sd_bus_error *e = sd_bus_message_get_error(reply);

        /* Without it holds outlive their holders: refuse to serve like that. */
        if (e) {
                log_error("Cannot watch for peers leaving the bus (%s); stopping.", strempty(e->message));
                manager_begin_shutdown(userdata);
        }
        return 0;
}

static void emit_manager_changed(Manager *m, ManagerChange what) {
        static const BusChangedProperty table[] = {
                { MANAGER_CHANGED_MEMORY_TOTAL, "MemoryTotal" },
                { MANAGER_CHANGED_MEMORY_LIMIT, "MemoryLimit" },
                { MANAGER_CHANGED_MEMORY_USED, "MemoryUsed" },
                { MANAGER_CHANGED_LOADED_MODELS, "LoadedModels" },
                { MANAGER_CHANGED_IDLE_TIMEOUT, "IdleTimeoutSec" },
        };

        bus_emit_changed_bits(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, what, table,
                              ELEMENTSOF(table), "the manager");
}

static void emit_load_progress(Manager *m, PoolModel *model, uint64_t done, uint64_t total) {
        if (m->bus)
                bus_log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                                "LoadProgress", "stt", model->name, done, total),
                             "LoadProgress", model->name);
}

static void emit_model_loaded(Manager *m, PoolModel *model) {
        if (m->bus)
                bus_log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                                "ModelLoaded", "st", model->name, model->memory_bytes),
                             "ModelLoaded", model->name);
}

static void emit_load_failed(Manager *m, PoolModel *model, int error, const char *message) {
        if (m->bus)
                bus_log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                                "LoadFailed", "sss", model->name, bus_error_name(error), message),
                             "LoadFailed", model->name);
}

static void emit_model_unloaded(Manager *m, PoolModel *model, const char *reason) {
        if (m->bus)
                bus_log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                                "ModelUnloaded", "ss", model->name, reason),
                             "ModelUnloaded", model->name);
}

static void emit_download_progress(Manager *m, const char *name, uint64_t done, uint64_t total) {
        if (m->bus)
                bus_log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                                "DownloadProgress", "stt", name, done, total),
                             "DownloadProgress", name);
}

static void emit_download_finished(Manager *m, const char *name, const char *result, const char *message) {
        if (m->bus)
                bus_log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                                "DownloadFinished", "sss", name, result, message),
                             "DownloadFinished", name);
}

static const ManagerEvents bus_events = {
        .manager_changed = emit_manager_changed,
        .model_announced = bus_model_emit_added,
        .model_changed = bus_model_emit_changed,
        .load_progress = emit_load_progress,
        .model_loaded = emit_model_loaded,
        .load_failed = emit_load_failed,
        .model_unloaded = emit_model_unloaded,
        .model_removed = bus_model_emit_removed,
        .download_progress = emit_download_progress,
        .download_finished = emit_download_finished,
};

int bus_manager_register(Manager *m) {
        int r;

        m->events = &bus_events;

        r = sd_bus_add_filter(m->bus, NULL, filter_property_set, m);
        if (r < 0)
                return log_error_errno(r, "Cannot install the property write filter: %m");
        r = sd_bus_add_filter(m->bus, NULL, filter_disconnected, m);
        if (r < 0)
                return log_error_errno(r, "Cannot watch the bus connection: %m");
        r = sd_bus_add_match_async(m->bus, &m->peer_left_slot, MATCH_UNIQUE_NAME_LEFT, on_peer_left,
                                   on_peer_left_installed, m);
        if (r < 0)
                return log_error_errno(r, "Cannot watch for peers leaving the bus: %m");

        r = sd_bus_add_object_vtable(m->bus, NULL, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, manager_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Cannot register the manager object: %m");
        r = bus_model_register(m);
        if (r < 0)
                return r;
        r = sd_bus_add_object_manager(m->bus, &m->object_manager_slot, MPOOL_MANAGER_PATH);
        if (r < 0)
                return log_error_errno(r, "Cannot register the object manager: %m");
        return 0;
}

