/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus-inspect.h"
#include "bus-manager.h"
#include "bus-options.h"
#include "inspection.h"
#include "log.h"
#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"

/* Opens the entry key of an a{sv} and, in its variant, an array of
 * element_signature; close_array_entry() closes all three. */
static int open_array_entry(sd_bus_message *reply, const char *key, const char *element_signature) {
        char signature[16];
        int r;

        snprintf(signature, sizeof signature, "a%s", element_signature);
        r = sd_bus_message_open_container(reply, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(reply, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'v', signature);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', element_signature);
        return r;
}

static int close_array_entry(sd_bus_message *reply) {
        int r = 0;

        for (unsigned i = 0; r >= 0 && i < 3; i++)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int append_reply(sd_bus_message *reply, const InspectionResult *result) {
        const PullPlan *plan = result->plan;
        const PullInspection *weights = result->weights;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(reply, "{sv}", "commit", "s", plan->commit);

        /* files: the names in the plan's order, as Pull would fetch them;
         * file_sizes: each one's size. */
        if (r >= 0)
                r = open_array_entry(reply, "files", "s");
        for (size_t i = 0; r >= 0 && i < plan->n_files; i++)
                r = sd_bus_message_append(reply, "s", plan->files[i].name);
        if (r >= 0)
                r = close_array_entry(reply);
        if (r >= 0)
                r = open_array_entry(reply, "file_sizes", "{st}");
        for (size_t i = 0; r >= 0 && i < plan->n_files; i++)
                r = sd_bus_message_append(reply, "{st}", plan->files[i].name, plan->files[i].size);
        if (r >= 0)
                r = close_array_entry(reply);

        if (r >= 0)
                r = open_array_entry(reply, "dtypes", "{st}");
        for (size_t i = 0; r >= 0 && i < weights->n_dtypes; i++)
                r = sd_bus_message_append(reply, "{st}", weights->dtypes[i].name, weights->dtypes[i].parameters);
        if (r >= 0)
                r = close_array_entry(reply);

        if (r >= 0)
                r = sd_bus_message_append(reply, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}",
                                          "download_bytes", "t", plan->total_bytes,
                                          "tensors", "t", weights->tensors,
                                          "parameters", "t", weights->parameters,
                                          "memory_bytes", "t", weights->memory_bytes,
                                          "memory_limit", "t", result->memory_limit,
                                          "memory_pinned", "t", result->memory_pinned,
                                          "fits", "b", result->fits);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

/* Owns the reference on the call taken by bus_method_inspect(). */
static void on_inspected(int error, const char *message, const InspectionResult *result, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = userdata, *reply = NULL;
        const char *error_name;
        int r;

        if (error >= 0) {
                r = sd_bus_message_new_method_return(call, &reply);
                if (r >= 0)
                        r = append_reply(reply, result);
                if (r >= 0)
                        r = sd_bus_message_send(reply);
                else
                        r = sd_bus_reply_method_errnof(call, r, "Cannot answer the inspection: %m");
        } else {
                switch (error) {
                case -EREMOTEIO:
                case -ETIME:
                        error_name = MPOOL_ERROR_DOWNLOAD_FAILED;
                        break;
                default:
                        error_name = bus_error_name(error);
                }
                r = sd_bus_reply_method_errorf(call, error_name, "%s", strempty(message));
        }
        /* A caller that went away cannot be answered; that is no failure of ours. */
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot send the reply to an inspection: %m");
}

int bus_method_inspect(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *problem = NULL;
        Manager *m = userdata;
        HubOptions options;
        const char *repo;
        int r;

        r = sd_bus_message_read(message, "s", &repo);
        if (r < 0)
                return r;
        r = model_name_validate(repo, &problem);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Invalid repository id: %s",
                                         problem ?: "not a model name.");
        r = hub_options_read(message, &options, error);
        if (r < 0)
                return r;

        /* No polkit: the spec leaves Inspect open like Status. The
         * core bounds what callers can make the daemon do. */
        sd_bus_message_ref(message);   /* on_inspected's */
        r = inspection_start(m, repo, options.revision, options.token, sd_bus_message_get_sender(message),
                             on_inspected, message);
        if (r < 0) {
                sd_bus_message_unref(message);
                switch (r) {
                case -EBUSY:
                        if (m->shutting_down)
                                return sd_bus_error_set(error, MPOOL_ERROR_BUSY, "The daemon is shutting down.");
                        return sd_bus_error_setf(error, MPOOL_ERROR_BUSY,
                                                 "%u inspections are under way; try again shortly.", INSPECTIONS_MAX);
                case -EUSERS:
                        return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                                 "You have %u calls waiting already; wait for one to finish.",
                                                 PENDING_CALLS_PER_PEER_MAX);
                default:
                        return sd_bus_error_set_errnof(error, r, "Cannot inspect %s: %m", repo);
                }
        }
        return 1;
}
