/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bus-model.h"
#include "bus-signal.h"
#include "download.h"
#include "log.h"
#include "macro.h"
#include "model-lifecycle.h"
#include "mpool-bus.h"

static int property_get_model(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        PoolModel *model = userdata;
        const ModelRuntime *rt = model->userdata;

        if (strcmp(property, "Name") == 0)
                return sd_bus_message_append(reply, "s", model->name);
        if (strcmp(property, "State") == 0)
                return sd_bus_message_append(reply, "s", model_state_to_string(model->state));
        if (strcmp(property, "SizeBytes") == 0)
                return sd_bus_message_append(reply, "t", model->size_bytes);
        if (strcmp(property, "MemoryBytes") == 0)
                return sd_bus_message_append(reply, "t", model->memory_bytes);
        if (strcmp(property, "Pinned") == 0)
                return sd_bus_message_append(reply, "b", model->pinned);
        if (strcmp(property, "Holds") == 0)
                return sd_bus_message_append(reply, "u", model->holds);
        if (strcmp(property, "RequestsTotal") == 0)
                return sd_bus_message_append(reply, "t", model->requests_total);
        if (strcmp(property, "Source") == 0)
                return sd_bus_message_append(reply, "s", model_source_to_string(rt->source));
        if (strcmp(property, "Revision") == 0)
                return sd_bus_message_append(reply, "s", strempty(rt->revision));
        if (strcmp(property, "Kind") == 0)
                return sd_bus_message_append(reply, "s", model_kind_to_string(model_kind(model, NULL, NULL)));
        if (strcmp(property, "Precision") == 0)
                return sd_bus_message_append(reply, "s", strempty(precision_to_string(model_precision(model))));
        if (strcmp(property, "MemoryByPrecision") == 0)
                return bus_model_append_memory_by_precision(reply, model);
        return -EINVAL;
}

bool bus_model_has_memory_by_precision(const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;

        return rt && rt->profile.kind == MODEL_KIND_EMBEDDING;
}

int bus_model_append_memory_by_precision(sd_bus_message *reply, const PoolModel *model) {
        const ModelRuntime *rt = model->userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "{st}");
        if (r < 0)
                return r;
        if (bus_model_has_memory_by_precision(model))
                for (Precision p = 0; p < _PRECISION_MAX; p++) {
                        r = sd_bus_message_append(reply, "{st}", precision_to_string(p),
                                                  model_profile_memory_bytes(&rt->profile, p));
                        if (r < 0)
                                return r;
                }
        return sd_bus_message_close_container(reply);
}

/* A pull's progress, as Status gives it. No PropertiesChanged: it would
 * follow every DownloadProgress signal, which says the same. */
static int property_get_model_download(sd_bus *bus, const char *path, const char *interface, const char *property,
                                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        PoolModel *model = userdata;
        Manager *m = ((ModelRuntime *) model->userdata)->manager;
        uint64_t done = 0, total = 0;

        (void) download_find(m, model->name, &done, &total);
        return sd_bus_message_append(reply, "t", strcmp(property, "DownloadDone") == 0 ? done : total);
}

/* Times need the manager (for the realtime clock), so they have getters of their own. */
static int property_get_model_time(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        PoolModel *model = userdata;
        Manager *m = ((ModelRuntime *) model->userdata)->manager;
        uint64_t t;

        if (strcmp(property, "LoadedAt") == 0)
                t = model->state == MODEL_LOADED ? model->loaded_at : 0;
        else if (strcmp(property, "LastUsed") == 0)
                t = model->last_used;
        else
                t = pool_model_deadline(&m->pool, model);
        return sd_bus_message_append(reply, "t", manager_realtime(m, t));
}

static const sd_bus_vtable model_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("SizeBytes", "t", property_get_model, 0, 0),
        SD_BUS_PROPERTY("MemoryBytes", "t", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Pinned", "b", property_get_model, 0, 0),
        SD_BUS_PROPERTY("Holds", "u", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LoadedAt", "t", property_get_model_time, 0, 0),
        SD_BUS_PROPERTY("LastUsed", "t", property_get_model_time, 0, 0),
        SD_BUS_PROPERTY("ExpiresAt", "t", property_get_model_time, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("RequestsTotal", "t", property_get_model, 0, 0),
        SD_BUS_PROPERTY("Source", "s", property_get_model, 0, 0),
        SD_BUS_PROPERTY("Revision", "s", property_get_model, 0, 0),
        SD_BUS_PROPERTY("Kind", "s", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Precision", "s", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("MemoryByPrecision", "a{st}", property_get_model, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("DownloadDone", "t", property_get_model_download, 0, 0),
        SD_BUS_PROPERTY("DownloadTotal", "t", property_get_model_download, 0, 0),
        SD_BUS_VTABLE_END
};

int bus_model_path(const char *name, char **ret) {
        return sd_bus_path_encode(MPOOL_MODELS_PATH, name, ret);
}

static PoolModel *model_from_path(Manager *m, const char *path) {
        _cleanup_free_ char *name = NULL;
        PoolModel *model;

        if (sd_bus_path_decode(path, MPOOL_MODELS_PATH, &name) <= 0)
                return NULL;
        model = pool_find(&m->pool, name);
        if (!model || !model_is_announced(model))
                return NULL;
        return model;
}

static int model_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                             void **found, sd_bus_error *error) {
        PoolModel *model = model_from_path(userdata, path);

        if (!model)
                return 0;
        *found = model;
        return 1;
}

static int model_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                                 sd_bus_error *error) {
        Manager *m = userdata;
        char **nodes;
        size_t n = 0;
        int r;

        nodes = calloc(pool_size(&m->pool) + 1, sizeof *nodes);
        if (!nodes)
                return -ENOMEM;
        POOL_FOREACH(model, &m->pool) {
                if (!model_is_announced(model))
                        continue;
                r = bus_model_path(model->name, &nodes[n]);
                if (r < 0) {
                        for (size_t i = 0; i < n; i++)
                                free(nodes[i]);
                        free(nodes);
                        return r;
                }
                n++;
        }

        *ret_nodes = nodes;
        return 0;
}

void bus_model_emit_changed(Manager *m, PoolModel *model, ModelChange what) {
        static const BusChangedProperty table[] = {
                { MODEL_CHANGED_STATE, "State" },
                { MODEL_CHANGED_MEMORY, "MemoryBytes" },
                { MODEL_CHANGED_HOLDS, "Holds" },
                { MODEL_CHANGED_EXPIRES, "ExpiresAt" },
                { MODEL_CHANGED_KIND, "Kind" },
                { MODEL_CHANGED_KIND, "Precision" },
                { MODEL_CHANGED_KIND, "MemoryByPrecision" },
        };
        _cleanup_free_ char *path = NULL;

        /* A name not yet found in the store has no object to change. */
        if (!m->bus || !model_is_announced(model))
                return;
        if (bus_model_path(model->name, &path) < 0) {
                log_oom();
                return;
        }
        bus_emit_changed_bits(m->bus, path, MPOOL_MODEL_INTERFACE, what, table, ELEMENTSOF(table), model->name);
}

void bus_model_emit_added(Manager *m, PoolModel *model) {
        _cleanup_free_ char *path = NULL;

        if (!m->bus)
                return;
        if (bus_model_path(model->name, &path) < 0) {
                log_oom();
                return;
        }
        bus_log_emit(sd_bus_emit_object_added(m->bus, path), "InterfacesAdded", model->name);
}

/* Called while the model can still be found: sd-bus looks the object up to
 * list the interfaces that go with it. */
void bus_model_emit_removed(Manager *m, PoolModel *model) {
        _cleanup_free_ char *path = NULL;

        if (!m->bus || !model_is_announced(model))
                return;
        if (bus_model_path(model->name, &path) < 0) {
                log_oom();
                return;
        }
        bus_log_emit(sd_bus_emit_object_removed(m->bus, path), "InterfacesRemoved", model->name);
}

int bus_model_register(Manager *m) {
        int r;

        r = sd_bus_add_fallback_vtable(m->bus, NULL, MPOOL_MODELS_PATH, MPOOL_MODEL_INTERFACE, model_vtable,
                                       model_object_find, m);
        if (r < 0)
                return log_error_errno(r, "Cannot register the model objects: %m");
        r = sd_bus_add_node_enumerator(m->bus, NULL, MPOOL_MODELS_PATH, model_node_enumerator, m);
        if (r < 0)
                return log_error_errno(r, "Cannot register the model enumerator: %m");
        return 0;
}
