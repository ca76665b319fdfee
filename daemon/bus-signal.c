/* SPDX-License-Identifier: MIT */
#include <errno.h>

#include "bus-signal.h"
#include "log.h"

/* Signals are best effort towards listeners, but a failure to queue one is
 * logged: a listener would otherwise miss a change without anyone knowing. */
void bus_log_emit(int r, const char *what, const char *name) {
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot emit %s for %s: %m", what, name);
}

void bus_emit_changed_bits(sd_bus *bus, const char *path, const char *interface, unsigned what,
                           const BusChangedProperty *table, size_t n_table, const char *who) {
        char *names[n_table + 1];
        size_t n = 0;

        if (!bus)
                return;
        for (size_t i = 0; i < n_table; i++)
                if (what & table[i].bit)
                        names[n++] = (char *) table[i].property;
        names[n] = NULL;
        if (n > 0)
                bus_log_emit(sd_bus_emit_properties_changed_strv(bus, path, interface, names),
                             "PropertiesChanged", who);
}
