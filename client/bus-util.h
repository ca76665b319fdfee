/* SPDX-License-Identifier: MIT */
#pragma once

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

/* Talking to mpoold: the connection the global options ask for, D-Bus
 * errors turned into one-line messages and exit statuses, and the calls
 * more than one verb makes. */

/* Connects as --system/--user/--address=/--host= say, with the method call
 * timeout of --timeout= and interactive authorization unless
 * --no-ask-password. Returns 0, or an exit status after saying what failed
 * (MPOOL_EXIT_UNREACHABLE when there is no bus to talk to). */
int client_connect(sd_bus **ret);

/* The default event loop with the bus attached to it, for the verbs that
 * follow signals. Returns 0, or an exit status after saying what failed. */
int client_attach_event(sd_bus *bus, sd_event **ret);

/* The exit status for a failed call: error (if set) or else r. */
int bus_error_exit_status(const sd_bus_error *error, int r);

/* Says in words what went wrong when trying to `action` ("load", "unload",
 * "hold", ...) the model `model` (NULL: the pool), and returns the exit
 * status for it. */
int report_bus_error(const sd_bus_error *error, int r, const char *action, const char *model);

/* Checks a model name given on the command line; returns 0 or, after saying
 * what is wrong with it, MPOOL_EXIT_USAGE. */
int check_model_name(const char *name);

/* The timeout for calls that load (Load, Acquire): none unless --timeout=. */
uint64_t load_call_timeout(void);

/* The timeout for the other calls that polkit may have to ask a password
 * for (Unload, UnloadAll, setting a property): long enough to type it,
 * unless --timeout=. */
#define AUTHORIZED_CALL_TIMEOUT_USEC (5 * 60 * USEC_PER_SEC)
uint64_t authorized_call_timeout(void);

/* The object path of a model. */
int model_object_path(const char *name, char **ret);

/* Status(): the pool and the models as JSON objects, with the daemon's key
 * names and natural types, every key of a model present (see
 * status_models_complete()). */
int mpool_status(sd_bus *bus, cJSON **ret_pool, cJSON **ret_models, sd_bus_error *error);

/* Puts back, in each model of Status's models array, the keys the daemon
 * leaves out at their default value (0, false, "", {}), so that what the
 * client shows and prints as JSON has them all. -EBADMSG for no array of
 * objects, -ENOMEM. */
int status_models_complete(cJSON *models);

/* The model of that name in the models array, or NULL. */
const cJSON *models_find(const cJSON *models, const char *name);

/* Blocks these signals (0-terminated) so that sd-event can take them;
 * ret_old (if not NULL) gets the mask as it was, for a child to start with. */
int block_signals(sigset_t *ret_old, int first, ...);

/* Calls handler once mpoold leaves the bus (it crashed or stopped), with
 * bus_lost false, or when the connection to the bus itself is lost, with
 * bus_lost true. One watcher per process. */
typedef void (*DaemonGoneHandler)(void *userdata, bool bus_lost);
int bus_watch_daemon_gone(sd_bus *bus, DaemonGoneHandler handler, void *userdata);

