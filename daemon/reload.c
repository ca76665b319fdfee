/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "macro.h"
#include "reload.h"
#include "service.h"

static bool streq_ptr(const char *a, const char *b) {
        return a && b ? strcmp(a, b) == 0 : a == b;
}

static bool size_or_percent_equal(const SizeOrPercent *a, const SizeOrPercent *b) {
        if (a->is_percent != b->is_percent)
                return false;
        return a->is_percent ? a->permyriad == b->permyriad : a->bytes == b->bytes;
}

static bool strv_equal(char * const *a, char * const *b) {
        size_t i;

        for (i = 0; a && a[i] && b && b[i]; i++)
                if (strcmp(a[i], b[i]) != 0)
                        return false;
        return !(a && a[i]) && !(b && b[i]);
}

/* Appends "Key=, " to buf for each setting that differs between the
 * configuration in use and the new one, among those read only at start-up. */
static void list_restart_only_changes(const Config *old, const Config *new, char *buf, size_t size) {
        const struct {
                const char *key;
                bool changed;
        } settings[] = {
                { "ModelDir=",           !streq_ptr(old->model_dir, new->model_dir) },
                { "HuggingFaceCache=",   !streq_ptr(old->huggingface_cache, new->huggingface_cache) },
                { "MaxLoadedModels=",    old->max_loaded_models != new->max_loaded_models },
                { "IdlePolicy=",         old->idle_policy != new->idle_policy },
                { "MemoryAvailableMin=", !size_or_percent_equal(&old->memory_available_min,
                                                                &new->memory_available_min) },
                { "Preload=",            !strv_equal(old->preload, new->preload) },
                { "MaxConcurrentLoads=", old->max_concurrent_loads != new->max_concurrent_loads },
                { "MaxQueuedLoads=",     old->max_queued_loads != new->max_queued_loads },
                { "MaxConcurrentDownloads=", old->max_concurrent_downloads != new->max_concurrent_downloads },
                { "MaxWorkers=",         old->max_workers != new->max_workers },
                { "MaxQueuedRequests=",  old->max_queued_requests != new->max_queued_requests },
                { "CooldownSec=",        old->cooldown_sec != new->cooldown_sec },
                { "Endpoint=",           !streq_ptr(old->hub_endpoint, new->hub_endpoint) },
                { "TokenFile=",          !streq_ptr(old->hub_token_file, new->hub_token_file) },
        };
        size_t n = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < ELEMENTSOF(settings); i++)
                if (settings[i].changed && n < size)
                        n += (size_t) snprintf(buf + n, size - n, "%s%s", n > 0 ? ", " : "", settings[i].key);
}

int reload_config(Manager *m, const char *path, bool must_exist) {
        _cleanup_(config_done) Config c = {};
        _cleanup_free_ char *error = NULL;
        char restart_only[512];
        uint64_t limit, needed;
        int r, ret = 0;

        assert(m);
        assert(path);

        log_info("Reloading the configuration from %s.", path);

        r = config_init_defaults(&c);
        if (r < 0)
                return log_oom();
        r = config_load_file(&c, path, must_exist, &error);
        if (r < 0) {
                if (error)
                        return log_error_errno(r, "Cannot reload the configuration, keeping the settings in use: %s",
                                               error);
                return log_error_errno(r, "Cannot reload the configuration from %s, keeping the settings in use: %m",
                                       path);
        }

        /* Resolved as at start-up: a percentage is of the memory total. */
        limit = MIN(size_or_percent_resolve(&c.memory_limit, m->memory.total), m->memory.total);
        if (limit != m->pool.memory_limit) {
                r = manager_set_memory_limit(m, limit, &needed);
                if (r == -EBUSY) {
                        log_warning("Keeping the memory limit of %" PRIu64 " bytes: MemoryLimit= in %s asks for %"
                                    PRIu64 " bytes, below the %" PRIu64 " bytes that pinned models hold. Unload "
                                    "them with force, then reload again.", m->pool.memory_limit, path, limit,
                                    needed);
                        ret = -EBUSY;
                } else if (r < 0) {
                        log_error_errno(r, "Cannot change the memory limit to %" PRIu64 " bytes: %m", limit);
                        ret = r;
                }
        }

        if (c.idle_timeout_sec != m->pool.idle_timeout_sec)
                manager_set_idle_timeout(m, c.idle_timeout_sec);

        /* m->config stays what start-up read: the store, the load slots and
         * the preload list still work from it, so it is also what a later
         * reload compares with. */
        list_restart_only_changes(&m->config, &c, restart_only, sizeof restart_only);
        if (restart_only[0])
                log_notice("Changed in %s but taking effect only when mpoold restarts: %s.", path, restart_only);

        if (m->pool.idle_timeout_sec == KEEP_ALIVE_FOREVER)
                log_info("Configuration reloaded: memory limit %" PRIu64 " bytes, no idle timeout.",
                         m->pool.memory_limit);
        else
                log_info("Configuration reloaded: memory limit %" PRIu64 " bytes, idle timeout %" PRIi64
                         " seconds.", m->pool.memory_limit, m->pool.idle_timeout_sec);
        return ret;
}
