/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <systemd/sd-bus.h>

/* What the bus objects share for their signals. */

/* Logs a failure to queue a signal (what) about name. */
void bus_log_emit(int r, const char *what, const char *name);

/* PropertiesChanged for the properties whose bits are set in what. */
typedef struct BusChangedProperty {
        unsigned bit;
        const char *property;
} BusChangedProperty;
void bus_emit_changed_bits(sd_bus *bus, const char *path, const char *interface, unsigned what,
                           const BusChangedProperty *table, size_t n_table, const char *who);
