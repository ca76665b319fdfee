/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>

#include "manager.h"

/* The org.mpool.Manager interface and the per-model org.mpool.Model objects:
 * method handlers translate D-Bus input into manager calls; the emit helpers
 * translate pool changes into signals. */

int bus_manager_register(Manager *m);

int bus_model_path(const char *name, char **ret);
/* The D-Bus error name for a load that ended with negative errno r. */
const char *bus_load_error_name(int r);

void bus_emit_load_progress(Manager *m, const char *name, uint64_t done, uint64_t total);
void bus_emit_model_loaded(Manager *m, const char *name, uint64_t memory_bytes);
void bus_emit_load_failed(Manager *m, const char *name, const char *error_name, const char *message);
void bus_emit_model_unloaded(Manager *m, const char *name, const char *reason);
/* PropertiesChanged for the manager's changing properties (NULL-terminated names). */
void bus_emit_manager_changed(Manager *m, const char *property, ...) __attribute__((sentinel));
void bus_emit_model_changed(Manager *m, PoolModel *model, const char *property, ...) __attribute__((sentinel));
/* InterfacesAdded for a model that became known. */
void bus_model_announce(Manager *m, PoolModel *model);
