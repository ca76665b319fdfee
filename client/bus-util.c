/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"
#include "terminal.h"

#define DBUS_ERROR_SPAWN_PREFIX "org.freedesktop.DBus.Error.Spawn."
#define SD_BUS_SYSTEM_ERROR_PREFIX "System.Error."

static const char *transport_description(void) {
        static char buf[256];

        switch (arg_transport) {
        case TRANSPORT_USER:
                return "the user bus";
        case TRANSPORT_ADDRESS:
                snprintf(buf, sizeof buf, "the bus at %s", arg_address);
                return buf;
        case TRANSPORT_REMOTE:
                snprintf(buf, sizeof buf, "the system bus of %s", arg_host);
                return buf;
        case TRANSPORT_SYSTEM:
        default:
                return "the system bus";
        }
}

static bool errno_is_unreachable(int r) {
        r = r < 0 ? -r : r;
        return r == ENOENT || r == ECONNREFUSED || r == ENOTCONN || r == ECONNRESET || r == EHOSTUNREACH ||
               r == ENETUNREACH || r == ESHUTDOWN || r == EPIPE;
}

/* The transports sd-bus can connect with; it skips any other, so that an
 * address of only those fails as "connection refused". */
static bool bus_transport_known(const char *entry, size_t length) {
        static const char *const known[] = { "unix:", "tcp:", "unixexec:", "x-machine-unix:" };

        for (size_t i = 0; i < ELEMENTSOF(known); i++)
                if (length >= strlen(known[i]) && strncmp(entry, known[i], strlen(known[i])) == 0)
                        return true;
        return false;
}

/* A D-Bus address is "transport:key=value,..." entries separated by ";".
 * Returns 0, or MPOOL_EXIT_USAGE after saying what is wrong. */
static int check_bus_address(const char *address) {
        size_t entries = 0;

        for (const char *p = address; *p;) {
                size_t length = strcspn(p, ";");

                if (length > 0) {
                        if (!memchr(p, ':', length)) {
                                print_error("Invalid bus address '%s': '%.*s' names no transport "
                                            "(e.g. unix:path=/run/dbus/system_bus_socket).",
                                            address, (int) length, p);
                                return MPOOL_EXIT_USAGE;
                        }
                        if (!bus_transport_known(p, length)) {
                                print_error("Invalid bus address '%s': unknown transport in '%.*s'; "
                                            "use unix:, tcp:, unixexec: or x-machine-unix:.",
                                            address, (int) length, p);
                                return MPOOL_EXIT_USAGE;
                        }
                        entries++;
                }
                p += length;
                if (*p == ';')
                        p++;
        }
        if (entries == 0) {
                print_error("Invalid bus address '%s': it names no bus.", address);
                return MPOOL_EXIT_USAGE;
        }
        return 0;
}

int client_attach_event(sd_bus *bus, sd_event **ret) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        int r;

        r = sd_event_default(&event);
        if (r < 0)
                return print_error_errno(r, "Cannot create the event loop: %m");
        r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return print_error_errno(r, "Cannot attach the bus to the event loop: %m");

        *ret = TAKE_PTR(event);
        return 0;
}

int client_connect(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        switch (arg_transport) {
        case TRANSPORT_USER:
                r = sd_bus_open_user(&bus);
                break;
        case TRANSPORT_REMOTE:
                r = sd_bus_open_system_remote(&bus, arg_host);
                break;
        case TRANSPORT_ADDRESS:
                r = check_bus_address(arg_address);
                if (r != 0)
                        return r;
                r = sd_bus_new(&bus);
                if (r < 0)
                        break;
                r = sd_bus_set_address(bus, arg_address);
                if (r < 0) {
                        print_error_errno(r, "Invalid bus address '%s': %m", arg_address);
                        return MPOOL_EXIT_USAGE;
                }
                r = sd_bus_set_bus_client(bus, true);
                if (r < 0)
                        break;
                r = sd_bus_start(bus);
                /* sd-bus parses the address only now: EINVAL is a malformed
                 * key or value, not a bus that refused us. */
                if (r == -EINVAL) {
                        print_error_errno(r, "Invalid bus address '%s': %m", arg_address);
                        return MPOOL_EXIT_USAGE;
                }
                break;
        case TRANSPORT_SYSTEM:
        default:
                r = sd_bus_open_system(&bus);
                break;
        }
        if (r < 0) {
                print_error_errno(r, "Cannot connect to %s: %m", transport_description());
                return r == -ENOMEM ? MPOOL_EXIT_FAILURE : MPOOL_EXIT_UNREACHABLE;
        }

        r = sd_bus_set_allow_interactive_authorization(bus, arg_ask_password);
        if (r < 0)
                return print_error_errno(r, "Cannot allow interactive authorization: %m");
        r = sd_bus_set_method_call_timeout(bus, arg_timeout_set ? arg_timeout_usec : DEFAULT_TIMEOUT_USEC);
        if (r < 0)
                return print_error_errno(r, "Cannot set the method call timeout: %m");

        *ret = TAKE_PTR(bus);
        return 0;
}

typedef enum ErrorClass {
        ERROR_OTHER,
        ERROR_NOT_FOUND,
        ERROR_INVALID_MODEL,
        ERROR_NO_MEMORY,
        ERROR_PINNED,
        ERROR_CANCELLED,
        ERROR_BUSY,
        ERROR_LIMITS,
        ERROR_ACCESS_DENIED,
        ERROR_AUTH_REQUIRED,
        ERROR_UNREACHABLE,
        ERROR_NO_CONNECTION,
        ERROR_ACTIVATION,
        ERROR_TIMEOUT,
        ERROR_INVALID_ARGS,
        ERROR_NOT_HELD,
        ERROR_UNSUPPORTED,
        ERROR_DOWNLOAD_FAILED,
        ERROR_NO_STORAGE,
        ERROR_NOTHING_TO_CANCEL,
        ERROR_EXISTS,
        ERROR_MODEL_NOT_SUPPORTED,
} ErrorClass;

static ErrorClass classify(const sd_bus_error *error, int r) {
        static const struct {
                const char *name;
                ErrorClass class;
        } table[] = {
                { MPOOL_ERROR_MODEL_NOT_FOUND,                          ERROR_NOT_FOUND },
                { MPOOL_ERROR_INVALID_MODEL,                            ERROR_INVALID_MODEL },
                { MPOOL_ERROR_INSUFFICIENT_MEMORY,                      ERROR_NO_MEMORY },
                { MPOOL_ERROR_MODEL_PINNED,                             ERROR_PINNED },
                { MPOOL_ERROR_CANCELLED,                                ERROR_CANCELLED },
                { MPOOL_ERROR_BUSY,                                     ERROR_BUSY },
                { MPOOL_ERROR_LIMITS_EXCEEDED,                          ERROR_LIMITS },
                { SD_BUS_ERROR_LIMITS_EXCEEDED,                         ERROR_LIMITS },
                { MPOOL_ERROR_NOT_HELD,                                 ERROR_NOT_HELD },
                { MPOOL_ERROR_DOWNLOAD_FAILED,                          ERROR_DOWNLOAD_FAILED },
                { MPOOL_ERROR_INSUFFICIENT_STORAGE,                     ERROR_NO_STORAGE },
                { MPOOL_ERROR_NOTHING_TO_CANCEL,                        ERROR_NOTHING_TO_CANCEL },
                { MPOOL_ERROR_MODEL_EXISTS,                             ERROR_EXISTS },
                { MPOOL_ERROR_NOT_SUPPORTED,                            ERROR_MODEL_NOT_SUPPORTED },
                { SD_BUS_ERROR_UNKNOWN_OBJECT,                          ERROR_NOT_FOUND },
                { SD_BUS_ERROR_ACCESS_DENIED,                           ERROR_ACCESS_DENIED },
                { SD_BUS_ERROR_AUTH_FAILED,                             ERROR_ACCESS_DENIED },
                { SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,      ERROR_AUTH_REQUIRED },
                { SD_BUS_ERROR_SERVICE_UNKNOWN,                         ERROR_UNREACHABLE },
                { SD_BUS_ERROR_NAME_HAS_NO_OWNER,                       ERROR_UNREACHABLE },
                { SD_BUS_ERROR_DISCONNECTED,                            ERROR_UNREACHABLE },
                { SD_BUS_ERROR_NO_SERVER,                               ERROR_UNREACHABLE },
                { SD_BUS_ERROR_NO_REPLY,                                ERROR_TIMEOUT },
                { SD_BUS_ERROR_TIMEOUT,                                 ERROR_TIMEOUT },
                { SD_BUS_ERROR_INVALID_ARGS,                            ERROR_INVALID_ARGS },
                { SD_BUS_ERROR_UNKNOWN_METHOD,                          ERROR_UNSUPPORTED },
                { SD_BUS_ERROR_UNKNOWN_PROPERTY,                        ERROR_UNSUPPORTED },
                { SD_BUS_ERROR_UNKNOWN_INTERFACE,                       ERROR_UNSUPPORTED },
                { SD_BUS_ERROR_PROPERTY_READ_ONLY,                      ERROR_UNSUPPORTED },
        };

        if (sd_bus_error_is_set(error)) {
                for (size_t i = 0; i < ELEMENTSOF(table); i++)
                        if (sd_bus_error_has_name(error, table[i].name))
                                return table[i].class;
                if (strncmp(error->name, DBUS_ERROR_SPAWN_PREFIX, strlen(DBUS_ERROR_SPAWN_PREFIX)) == 0)
                        return ERROR_ACTIVATION;
                /* sd-bus names its own failures "System.Error.E…": those are errnos. */
                if (strncmp(error->name, SD_BUS_SYSTEM_ERROR_PREFIX, strlen(SD_BUS_SYSTEM_ERROR_PREFIX)) != 0)
                        return ERROR_OTHER;
                r = -sd_bus_error_get_errno(error);
        }

        if (r == -ETIMEDOUT)
                return ERROR_TIMEOUT;
        if (r == -EACCES || r == -EPERM)
                return ERROR_ACCESS_DENIED;
        if (errno_is_unreachable(r))
                return ERROR_NO_CONNECTION;
        return ERROR_OTHER;
}

int bus_error_exit_status(const sd_bus_error *error, int r) {
        switch (classify(error, r)) {
        case ERROR_NOT_FOUND:
        case ERROR_NOTHING_TO_CANCEL:
                return MPOOL_EXIT_NOT_FOUND;
        case ERROR_DOWNLOAD_FAILED:
                return MPOOL_EXIT_DOWNLOAD_FAILED;
        case ERROR_NO_STORAGE:
                return MPOOL_EXIT_NO_STORAGE;
        case ERROR_EXISTS:
                return MPOOL_EXIT_EXISTS;
        case ERROR_MODEL_NOT_SUPPORTED:
                return MPOOL_EXIT_NOT_SUPPORTED;
        case ERROR_INVALID_MODEL:
                return MPOOL_EXIT_INVALID_MODEL;
        case ERROR_NO_MEMORY:
                return MPOOL_EXIT_NO_MEMORY;
        case ERROR_PINNED:
                return MPOOL_EXIT_PINNED;
        case ERROR_CANCELLED:
                return MPOOL_EXIT_CANCELLED;
        case ERROR_BUSY:
        case ERROR_LIMITS:
                return MPOOL_EXIT_BUSY;
        case ERROR_ACCESS_DENIED:
        case ERROR_AUTH_REQUIRED:
                return MPOOL_EXIT_ACCESS_DENIED;
        case ERROR_UNREACHABLE:
        case ERROR_NO_CONNECTION:
        case ERROR_ACTIVATION:
                return MPOOL_EXIT_UNREACHABLE;
        case ERROR_INVALID_ARGS:
                return MPOOL_EXIT_USAGE;
        default:
                return MPOOL_EXIT_FAILURE;
        }
}

/* The daemon's message, or what r says. */
static const char *error_text(const sd_bus_error *error, int r) {
        if (sd_bus_error_is_set(error) && error->message && *error->message)
                return error->message;
        return strerror(r < 0 ? -r : r);
}

int report_bus_error(const sd_bus_error *error, int r, const char *action, const char *model) {
        const char *text = error_text(error, r);
        char what[MPOOL_NAME_MAX + 64];

        /* "load model demo/tiny", or "query mpoold" for calls about the pool. */
        if (model)
                snprintf(what, sizeof what, "%s model %s", action, model);
        else
                snprintf(what, sizeof what, "%s", action);

        switch (classify(error, r)) {
        case ERROR_NOT_FOUND:
                if (model)
                        print_error("Model %s not found.", model);
                else
                        print_error("Not found: %s", text);
                break;
        case ERROR_INVALID_MODEL:
                print_error("Model %s is not usable: %s", strempty(model), text);
                break;
        case ERROR_DOWNLOAD_FAILED:
        case ERROR_NO_STORAGE:
        case ERROR_NOTHING_TO_CANCEL:
        case ERROR_EXISTS:
                print_error("Cannot %s: %s", what, text);
                break;
        case ERROR_MODEL_NOT_SUPPORTED:
                /* The model is valid, but not one mpoold computes with. */
                print_error("Cannot %s: mpoold cannot run this model: %s", what, text);
                break;
        case ERROR_NO_MEMORY:
                print_error("Not enough memory for model %s: %s", strempty(model), text);
                break;
        case ERROR_PINNED:
                print_error("Model %s is pinned; use --force to unload it anyway.", strempty(model));
                break;
        case ERROR_CANCELLED:
                /* The daemon's message may name the model already. */
                if (model && !strstr(text, model))
                        print_error("Loading model %s was cancelled: %s", model, text);
                else
                        print_error("%s", text);
                break;
        case ERROR_BUSY:
                print_error("Cannot %s now, mpoold is busy: %s", what, text);
                break;
        case ERROR_LIMITS:
                print_error("Cannot %s, a limit is reached: %s", what, text);
                break;
        case ERROR_ACCESS_DENIED:
                print_error("Permission denied to %s: %s", what, text);
                break;
        case ERROR_AUTH_REQUIRED:
                print_error("Permission denied to %s: it needs authorization, which %s.", what,
                            arg_ask_password ? "could not be asked for" : "--no-ask-password forbids asking for");
                break;
        case ERROR_UNREACHABLE:
                print_error("mpoold is not running on %s and cannot be activated; start it with "
                            "'systemctl start mpoold' (or 'make run' in a source tree for development).",
                            transport_description());
                break;
        case ERROR_NO_CONNECTION:
                print_error("Cannot %s: no connection to %s (%s).", what, transport_description(),
                            strerror(r < 0 ? -r : r));
                break;
        case ERROR_ACTIVATION:
                print_error("mpoold could not be started on %s: %s. See 'journalctl -u mpoold'.",
                            transport_description(), text);
                break;
        case ERROR_TIMEOUT:
                print_error("Cannot %s: mpoold did not answer in time (see --timeout=).", what);
                break;
        case ERROR_INVALID_ARGS:
                print_error("Cannot %s: %s", what, text);
                break;
        case ERROR_NOT_HELD:
                print_error("Cannot %s: it is not held by this client.", what);
                break;
        case ERROR_UNSUPPORTED:
                print_error("Cannot %s: the running mpoold does not support it (%s).", what, text);
                break;
        case ERROR_OTHER:
        default:
                print_error("Failed to %s: %s", what, text);
                break;
        }

        return bus_error_exit_status(error, r);
}

int check_model_name(const char *name) {
        _cleanup_free_ char *problem = NULL;
        int r;

        r = model_name_validate(name, &problem);
        if (r == -ENOMEM)
                return print_oom();
        if (r < 0) {
                print_error("Invalid model name %s", problem ?: name);
                return MPOOL_EXIT_USAGE;
        }
        return 0;
}

uint64_t load_call_timeout(void) {
        return arg_timeout_set ? arg_timeout_usec : UINT64_MAX;
}

uint64_t authorized_call_timeout(void) {
        return arg_timeout_set ? arg_timeout_usec : AUTHORIZED_CALL_TIMEOUT_USEC;
}

int model_object_path(const char *name, char **ret) {
        return sd_bus_path_encode(MPOOL_MODELS_PATH, name, ret);
}

/* Every key of a model's Status entry in the daemon's order, with the value
 * it stands for when the daemon leaves it out. */
static const struct {
        const char *key;
        char type;      /* 's', 't' (any unsigned), 'd', 'b' or 'a' (a dictionary) */
} model_status_keys[] = {
        { "name",                 's' },
        { "state",                's' },
        { "size_bytes",           't' },
        { "memory_bytes",         't' },
        { "memory_percent",       'd' },
        { "memory_limit_percent", 'd' },
        { "pinned",               'b' },
        { "holds",                't' },
        { "loaded_at_usec",       't' },
        { "last_used_usec",       't' },
        { "expires_at_usec",      't' },
        { "requests_total",       't' },
        { "error",                's' },
        { "source",               's' },
        { "revision",             's' },
        { "kind",                 's' },
        { "precision",            's' },
        { "workers",              't' },
        { "active_requests",      't' },
        { "queued_requests",      't' },
        { "tokens_total",         't' },
        { "download_done",        't' },
        { "download_total",       't' },
        { "memory_by_precision",  'a' },
};

static cJSON *model_status_default(char type) {
        switch (type) {
        case 's':
                return cJSON_CreateString("");
        case 't':
                return json_create_u64(0);
        case 'd':
                return cJSON_CreateNumber(0);
        case 'b':
                return cJSON_CreateFalse();
        default:
                return cJSON_CreateObject();
        }
}

/* A model as the daemon describes it, every key present, in the daemon's
 * order, and then any key this client does not know. Moves model's members. */
static cJSON *model_status_complete(cJSON *model) {
        _cleanup_json_ cJSON *complete = NULL;
        cJSON *item;

        complete = cJSON_CreateObject();
        if (!complete)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(model_status_keys); i++) {
                item = cJSON_DetachItemFromObjectCaseSensitive(model, model_status_keys[i].key);
                if (!item)
                        item = model_status_default(model_status_keys[i].type);
                if (!item)
                        return NULL;
                if (!cJSON_AddItemToObject(complete, model_status_keys[i].key, item)) {
                        cJSON_Delete(item);
                        return NULL;
                }
        }
        while ((item = model->child)) {
                cJSON_DetachItemViaPointer(model, item);
                if (!cJSON_AddItemToObject(complete, item->string, item)) {
                        cJSON_Delete(item);
                        return NULL;
                }
        }
        return TAKE_PTR(complete);
}

int status_models_complete(cJSON *models) {
        cJSON *model, *next;

        if (!cJSON_IsArray(models))
                return -EBADMSG;
        for (model = models->child; model; model = next) {
                cJSON *complete;

                next = model->next;
                if (!cJSON_IsObject(model))
                        return -EBADMSG;
                complete = model_status_complete(model);
                if (!complete)
                        return -ENOMEM;
                /* Frees what is left of model. */
                if (!cJSON_ReplaceItemViaPointer(models, model, complete)) {
                        cJSON_Delete(complete);
                        return -ENOMEM;
                }
        }
        return 0;
}

int mpool_status(sd_bus *bus, cJSON **ret_pool, cJSON **ret_models, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_json_ cJSON *pool = NULL, *models = NULL;
        int r;

        r = sd_bus_call_method(bus, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "Status", error,
                               &reply, NULL);
        if (r < 0)
                return r;

        r = sd_bus_message_has_signature(reply, "a{sv}aa{sv}");
        if (r == 0)
                return -EBADMSG;
        r = bus_message_read_json(reply, &pool);
        if (r < 0)
                return r;
        r = bus_message_read_json(reply, &models);
        if (r < 0)
                return r;
        r = status_models_complete(models);
        if (r < 0)
                return r;

        if (ret_pool)
                *ret_pool = TAKE_PTR(pool);
        if (ret_models)
                *ret_models = TAKE_PTR(models);
        return 0;
}

const cJSON *models_find(const cJSON *models, const char *name) {
        const cJSON *m;

        cJSON_ArrayForEach(m, models) {
                const char *n = json_get_string(m, "name", NULL);

                if (n && strcmp(n, name) == 0)
                        return m;
        }
        return NULL;
}

int block_signals(sigset_t *ret_old, int first, ...) {
        sigset_t set, old;
        va_list ap;

        sigemptyset(&set);
        va_start(ap, first);
        for (int sig = first; sig > 0; sig = va_arg(ap, int))
                sigaddset(&set, sig);
        va_end(ap);

        if (sigprocmask(SIG_BLOCK, &set, &old) < 0)
                return negative_errno();
        if (ret_old)
                *ret_old = old;
        return 0;
}

static DaemonGoneHandler gone_handler = NULL;
static void *gone_userdata = NULL;

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (strcmp(name, MPOOL_BUS_NAME) == 0 && *old_owner && !*new_owner && gone_handler)
                gone_handler(gone_userdata, false);
        return 0;
}

static int on_any_message(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected") && gone_handler)
                gone_handler(gone_userdata, true);
        return 0;
}

int bus_watch_daemon_gone(sd_bus *bus, DaemonGoneHandler handler, void *userdata) {
        int r;

        gone_handler = handler;
        gone_userdata = userdata;

        r = sd_bus_add_match(bus, NULL,
                             "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                             "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" MPOOL_BUS_NAME "'",
                             on_name_owner_changed, NULL);
        if (r < 0)
                return r;
        /* The disconnection is a local message that no match rule sees. */
        return sd_bus_add_filter(bus, NULL, on_any_message, NULL);
}
