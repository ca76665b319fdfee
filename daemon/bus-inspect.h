/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>

/* org.mpool.Manager.Inspect: reads and checks the call, starts an
 * inspection (inspection.h) for the caller and turns its answer into the
 * reply. Open to every local user, as Status is; userdata is the Manager. */
int bus_method_inspect(sd_bus_message *message, void *userdata, sd_bus_error *error);
