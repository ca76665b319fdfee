/* SPDX-License-Identifier: MIT */
#pragma once

#include "manager.h"

/* The org.mpool.Manager interface: method handlers validate D-Bus input,
 * authorize, and hand the core a request whose completion becomes the
 * reply; the core's events become signals. */

int bus_manager_register(Manager *m);

/* Reads a model name from message and checks it: InvalidArgs, with what is
 * wrong, otherwise. *ret points into the message. */
int bus_read_model_name(sd_bus_message *message, const char **ret, sd_bus_error *error);

/* Asks polkit for each action in turn (NULL-terminated), with the model's
 * name as a detail. 1: all allowed; 0: a check is under way and the call
 * will be dispatched again; <0: denied, error set. */
int bus_verify_actions(Manager *m, sd_bus_message *message, const char *model_name, sd_bus_error *error,
                       const char *action, ...);

/* The D-Bus error name for a request that ended with negative errno error
 * (the list in request.h). */
const char *bus_error_name(int error);
