/* SPDX-License-Identifier: MIT */
#pragma once

#include "manager.h"

/* The org.mpool.Manager interface: method handlers validate D-Bus input,
 * authorize, and hand the core a request whose completion becomes the
 * reply; the core's events become signals. */

int bus_manager_register(Manager *m);

/* The D-Bus error name for a request that ended with negative errno error
 * (the list in request.h). */
const char *bus_error_name(int error);
