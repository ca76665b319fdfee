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
/* Logs a failure to queue a signal (what) about name. */
void bus_log_emit(int r, const char *what, const char *name);

/* PropertiesChanged for the properties whose bits are set in what. */
typedef struct BusChangedProperty {
        unsigned bit;
        const char *property;
} BusChangedProperty;
void bus_emit_changed_bits(sd_bus *bus, const char *path, const char *interface, unsigned what,
                           const BusChangedProperty *table, size_t n_table, const char *who);
