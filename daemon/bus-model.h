/* SPDX-License-Identifier: MIT */
#pragma once

#include "manager.h"

/* The per-model objects, org.mpool.Model at /org/mpool/Manager/models/NAME
 * (the name path-encoded): their properties, and the signals that say a
 * model appeared, changed or went. */

int bus_model_register(Manager *m);
int bus_model_path(const char *name, char **ret);

void bus_model_emit_added(Manager *m, PoolModel *model);
void bus_model_emit_removed(Manager *m, PoolModel *model);
void bus_model_emit_changed(Manager *m, PoolModel *model, ModelChange what);

/* Whether the model's memory_by_precision has any entry. */
bool bus_model_has_memory_by_precision(const PoolModel *model);
/* The model's memory in each precision, as an a{st} ("f32" → bytes…),
 * empty for a model that cannot be run: for Status and the property. */
int bus_model_append_memory_by_precision(sd_bus_message *reply, const PoolModel *model);
