/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "bus-manager.h"
#include "bus-options.h"
#include "bus-util.h"
#include "log.h"
#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"
#include "peer.h"
#include "polkit.h"
#include "time-util.h"

static int read_model_name(sd_bus_message *message, const char **ret, sd_bus_error *error) {
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
static int verify_actions(Manager *m, sd_bus_message *message, const char *model_name, sd_bus_error *error,
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

static int method_load(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        RequestOptions options;
        const char *name;
        int r;

        r = read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = request_options_read(message, request_options_load, &options, error);
        if (r < 0)
                return r;
        r = verify_actions(m, message, name, error, POLKIT_ACTION_LOAD,
                           options.pin ? POLKIT_ACTION_CONFIGURE : NULL, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 1: polkit will answer, the call comes back */

        return manager_request_load(m, name, options.keep_alive_sec, options.pin, message, WAITER_LOAD, error);
}

static int method_acquire(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        int r;

        r = read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = verify_actions(m, message, name, error, POLKIT_ACTION_LOAD, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return manager_request_load(m, name, KEEP_ALIVE_DEFAULT, false, message, WAITER_ACQUIRE, error);
}

static int method_release(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        PoolModel *model;
        const char *name;
        int r;

        r = read_model_name(message, &name, error);
        if (r < 0)
                return r;

        model = pool_find(&m->pool, name);
        r = model ? manager_release(m, model, sd_bus_message_get_sender(message)) : -ENOENT;
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

        r = read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = request_options_read(message, request_options_unload, &options, error);
        if (r < 0)
                return r;
        r = verify_actions(m, message, name, error, POLKIT_ACTION_LOAD,
                           options.force ? POLKIT_ACTION_CONFIGURE : NULL, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return manager_request_unload(m, name, options.force, message, error);
}

static int method_unload_all(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        RequestOptions options;
        int r;

        r = request_options_read(message, request_options_unload, &options, error);
        if (r < 0)
                return r;
        r = verify_actions(m, message, NULL, error, POLKIT_ACTION_LOAD,
                           options.force ? POLKIT_ACTION_CONFIGURE : NULL, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;

        return manager_unload_all(m, options.force, message);
}

static double percent(uint64_t part, uint64_t whole) {
        return whole > 0 ? 100.0 * (double) part / (double) whole : 0.0;
}

static int append_model_status(sd_bus_message *reply, Manager *m, PoolModel *model) {
        uint64_t deadline = pool_model_deadline(&m->pool, model);

        return sd_bus_message_append(
                        reply, "a{sv}", 13,
                        "name", "s", model->name,
                        "state", "s", model_state_to_string(model->state),
                        "size_bytes", "t", model->size_bytes,
                        "memory_bytes", "t", model->memory_bytes,
                        "memory_percent", "d", percent(model->memory_bytes, m->memory.total),
                        "memory_limit_percent", "d", percent(model->memory_bytes, m->pool.memory_limit),
                        "pinned", "b", model->pinned,
                        "holds", "u", model->holds,
                        "loaded_at_usec", "t",
                        model->state == MODEL_LOADED ? manager_realtime(m, model->loaded_at) : UINT64_C(0),
                        "last_used_usec", "t", manager_realtime(m, model->last_used),
                        "expires_at_usec", "t", manager_realtime(m, deadline),
                        "requests_total", "t", model->requests_total,
                        "error", "s", strempty(model->error));
}

static int method_status(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        MemoryInfo memory;
        int r;

        /* Fresh figures for the caller; the monitor's last ones if /proc fails. */
        if (memory_info_read(&memory) >= 0)
                m->memory.available = memory.available;

        r = sd_bus_message_new_method_return(message, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_append(
                        reply, "a{sv}", 9,
                        "version", "s", MPOOL_VERSION,
                        "memory_total", "t", m->memory.total,
                        "memory_available", "t", m->memory.available,
                        "memory_limit", "t", m->pool.memory_limit,
                        "memory_used", "t", pool_memory_used(&m->pool),
                        "models_loaded", "u", pool_models_loaded(&m->pool),
                        "idle_timeout_sec", "x", m->pool.idle_timeout_sec,
                        "idle_policy", "s", m->pool.idle_policy == POOL_IDLE_GLOBAL ? "global" : "per-model",
                        "uptime_usec", "t", now_monotonic_usec() - m->started_monotonic);
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(reply, 'a', "a{sv}");
        if (r < 0)
                return r;
        for (PoolModel *model = m->pool.models; model; model = model->next) {
                /* As on the object manager: a name not yet found in the store
                 * is no model (yet). */
                if (!model->userdata || !((ModelRuntime *) model->userdata)->announced)
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
        for (PoolModel *model = m->pool.models; model; model = model->next)
                if (model->state == MODEL_LOADED) {
                        r = sd_bus_message_append(reply, "s", model->name);
                        if (r < 0)
                                return r;
                }
        return sd_bus_message_close_container(reply);
}

static int property_get_model(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        PoolModel *model = userdata;

        if (strcmp(property, "Name") == 0)
                return sd_bus_message_append(reply, "s", model->name);
        if (strcmp(property, "State") == 0)
                return sd_bus_message_append(reply, "s", model_state_to_string(model->state));
        if (strcmp(property, "SizeBytes") == 0)
                return sd_bus_message_append(reply, "t", model->size_bytes);
        if (strcmp(property, "MemoryBytes") == 0)
                return sd_bus_message_append(reply, "t", model->memory_bytes);
        if (strcmp(property, "Pinned") == 0)
                return sd_bus_message_append(reply, "b", model->pinned);
        if (strcmp(property, "Holds") == 0)
                return sd_bus_message_append(reply, "u", model->holds);
        if (strcmp(property, "RequestsTotal") == 0)
                return sd_bus_message_append(reply, "t", model->requests_total);
        return -EINVAL;
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
        SD_BUS_METHOD_WITH_ARGS("Acquire",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_acquire, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Release",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_release, SD_BUS_VTABLE_UNPRIVILEGED),

        SD_BUS_SIGNAL_WITH_ARGS("LoadProgress", SD_BUS_ARGS("s", name, "t", bytes_done, "t", bytes_total), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelLoaded", SD_BUS_ARGS("s", name, "t", memory_bytes), 0),
        SD_BUS_SIGNAL_WITH_ARGS("LoadFailed", SD_BUS_ARGS("s", name, "s", error_name, "s", message), 0),
        SD_BUS_SIGNAL_WITH_ARGS("ModelUnloaded", SD_BUS_ARGS("s", name, "s", reason), 0),

        SD_BUS_VTABLE_END
};

/* Times need the manager (for the realtime clock), so they have getters of their own. */
static int property_get_model_time(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        PoolModel *model = userdata;
        Manager *m = ((ModelRuntime *) model->userdata)->manager;
        uint64_t t;

        if (strcmp(property, "LoadedAt") == 0)
                t = model->state == MODEL_LOADED ? model->loaded_at : 0;
        else if (strcmp(property, "LastUsed") == 0)
                t = model->last_used;
        else
                t = pool_model_deadline(&m->pool, model);
        return sd_bus_message_append(reply, "t", manager_realtime(m, t));
}

static const sd_bus_vtable model_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("SizeBytes", "t", property_get_model, 0, 0),
        SD_BUS_PROPERTY("MemoryBytes", "t", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Pinned", "b", property_get_model, 0, 0),
        SD_BUS_PROPERTY("Holds", "u", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LoadedAt", "t", property_get_model_time, 0, 0),
        SD_BUS_PROPERTY("LastUsed", "t", property_get_model_time, 0, 0),
        SD_BUS_PROPERTY("ExpiresAt", "t", property_get_model_time, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("RequestsTotal", "t", property_get_model, 0, 0),
        SD_BUS_VTABLE_END
};

int bus_model_path(const char *name, char **ret) {
        return sd_bus_path_encode(MPOOL_MODELS_PATH, name, ret);
}

static PoolModel *model_from_path(Manager *m, const char *path) {
        _cleanup_free_ char *name = NULL;
        PoolModel *model;

        if (sd_bus_path_decode(path, MPOOL_MODELS_PATH, &name) <= 0)
                return NULL;
        model = pool_find(&m->pool, name);
        if (!model || !model->userdata || !((ModelRuntime *) model->userdata)->announced)
                return NULL;
        return model;
}

static int model_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                             void **found, sd_bus_error *error) {
        PoolModel *model = model_from_path(userdata, path);

        if (!model)
                return 0;
        *found = model;
        return 1;
}

static int model_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                                 sd_bus_error *error) {
        Manager *m = userdata;
        char **nodes;
        size_t n = 0;
        int r;

        nodes = calloc(m->pool.n_models + 1, sizeof *nodes);
        if (!nodes)
                return -ENOMEM;
        for (PoolModel *model = m->pool.models; model; model = model->next) {
                if (!model->userdata || !((ModelRuntime *) model->userdata)->announced)
                        continue;
                r = bus_model_path(model->name, &nodes[n]);
                if (r < 0) {
                        for (size_t i = 0; i < n; i++)
                                free(nodes[i]);
                        free(nodes);
                        return r;
                }
                n++;
        }

        *ret_nodes = nodes;
        return 0;
}

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

int bus_manager_register(Manager *m) {
        int r;

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
        r = sd_bus_add_fallback_vtable(m->bus, NULL, MPOOL_MODELS_PATH, MPOOL_MODEL_INTERFACE, model_vtable,
                                       model_object_find, m);
        if (r < 0)
                return log_error_errno(r, "Cannot register the model objects: %m");
        r = sd_bus_add_node_enumerator(m->bus, NULL, MPOOL_MODELS_PATH, model_node_enumerator, m);
        if (r < 0)
                return log_error_errno(r, "Cannot register the model enumerator: %m");
        r = sd_bus_add_object_manager(m->bus, &m->object_manager_slot, MPOOL_MANAGER_PATH);
        if (r < 0)
                return log_error_errno(r, "Cannot register the object manager: %m");
        return 0;
}

const char *bus_load_error_name(int r) {
        switch (r) {
        case -ENOENT:
                return MPOOL_ERROR_MODEL_NOT_FOUND;
        case -EBADMSG:
                return MPOOL_ERROR_INVALID_MODEL;
        case -ENOSPC:
                return MPOOL_ERROR_INSUFFICIENT_MEMORY;
        case -ECANCELED:
                return MPOOL_ERROR_CANCELLED;
        case -ENOMEM:
                return SD_BUS_ERROR_NO_MEMORY;
        default:
                /* Unreadable files too (EACCES): that is the store's problem,
                 * not the caller's authorization, so no AccessDenied. */
                return SD_BUS_ERROR_IO_ERROR;
        }
}

/* Signals are best effort towards listeners, but a failure to queue one is
 * logged: a listener would otherwise miss a change without anyone knowing. */
static void log_emit(int r, const char *what, const char *name) {
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot emit %s for %s: %m", what, name);
}

void bus_emit_load_progress(Manager *m, const char *name, uint64_t done, uint64_t total) {
        if (m->bus)
                log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "LoadProgress",
                                            "stt", name, done, total), "LoadProgress", name);
}

void bus_emit_model_loaded(Manager *m, const char *name, uint64_t memory_bytes) {
        if (m->bus)
                log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "ModelLoaded",
                                            "st", name, memory_bytes), "ModelLoaded", name);
}

void bus_emit_load_failed(Manager *m, const char *name, const char *error_name, const char *message) {
        if (m->bus)
                log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "LoadFailed",
                                            "sss", name, error_name, message), "LoadFailed", name);
}

void bus_emit_model_unloaded(Manager *m, const char *name, const char *reason) {
        if (m->bus)
                log_emit(sd_bus_emit_signal(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "ModelUnloaded",
                                            "ss", name, reason), "ModelUnloaded", name);
}

#define PROPERTIES_MAX 8

static size_t collect_names(const char *first, va_list ap, char **names) {
        size_t n = 0;

        for (const char *p = first; p && n < PROPERTIES_MAX; p = va_arg(ap, const char *))
                names[n++] = (char *) p;
        names[n] = NULL;
        return n;
}

void bus_emit_manager_changed(Manager *m, const char *property, ...) {
        char *names[PROPERTIES_MAX + 1];
        va_list ap;

        if (!m->bus)
                return;
        va_start(ap, property);
        collect_names(property, ap, names);
        va_end(ap);
        log_emit(sd_bus_emit_properties_changed_strv(m->bus, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, names),
                 "PropertiesChanged", "the manager");
}

void bus_emit_model_changed(Manager *m, PoolModel *model, const char *property, ...) {
        char *names[PROPERTIES_MAX + 1];
        _cleanup_free_ char *path = NULL;
        va_list ap;

        if (!m->bus || !model->userdata || !((ModelRuntime *) model->userdata)->announced)
                return;
        if (bus_model_path(model->name, &path) < 0) {
                log_oom();
                return;
        }
        va_start(ap, property);
        collect_names(property, ap, names);
        va_end(ap);
        log_emit(sd_bus_emit_properties_changed_strv(m->bus, path, MPOOL_MODEL_INTERFACE, names),
                 "PropertiesChanged", model->name);
}

void bus_model_announce(Manager *m, PoolModel *model) {
        _cleanup_free_ char *path = NULL;

        if (!m->bus)
                return;
        if (bus_model_path(model->name, &path) < 0) {
                log_oom();
                return;
        }
        log_emit(sd_bus_emit_object_added(m->bus, path), "InterfacesAdded", model->name);
}
