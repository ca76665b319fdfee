/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus-util.h"
#include "client.h"
#include "json-out.h"
#include "macro.h"
#include "mpool-bus.h"
#include "polkit-agent.h"
#include "terminal.h"

/* The daemon wants an absolute path. A relative one means the client's
 * working directory, which the daemon cannot know; over --host= it would
 * mean a directory of this machine, so it is refused there. */
static int absolute_path(const char *path, char **ret) {
        _cleanup_free_ char *cwd = NULL;
        size_t n;

        if (path[0] == '/') {
                *ret = strdup(path);
                return *ret ? 0 : print_oom();
        }
        if (path[0] == 0) {
                print_error("The path of the model's directory is empty.");
                return MPOOL_EXIT_USAGE;
        }
        if (arg_transport == TRANSPORT_REMOTE) {
                print_error("%s is a relative path, which means nothing on %s; give an absolute one.", path,
                            arg_host);
                return MPOOL_EXIT_USAGE;
        }
        cwd = getcwd(NULL, 0);
        if (!cwd)
                return print_error_errno(-errno, "Cannot tell the working directory to make %s absolute: %m",
                                         path);
        n = strlen(cwd);
        if (asprintf(ret, "%s%s%s", cwd, n > 0 && cwd[n - 1] == '/' ? "" : "/", path) < 0)
                return print_oom();
        return 0;
}

int verb_register(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *path = NULL;
        const char *name = argv[1];
        int r;

        r = check_model_name(name);
        if (r != 0)
                return r;
        r = absolute_path(argv[2], &path);
        if (r != 0)
                return r;
        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Register");
        if (r >= 0)
                r = sd_bus_message_append(m, "ssa{sv}", name, path, 0);
        if (r < 0)
                return print_error_errno(r, "Cannot build the Register call: %m");

        (void) polkit_agent_open();
        r = sd_bus_call(bus, m, authorized_call_timeout(), &error, &reply);
        if (r < 0) {
                /* Not found is the directory here, not the model. */
                if (sd_bus_error_has_name(&error, MPOOL_ERROR_MODEL_NOT_FOUND)) {
                        print_error("Cannot register model %s: %s", name, error.message ?: path);
                        return MPOOL_EXIT_NOT_FOUND;
                }
                return report_bus_error(&error, r, "register", name);
        }

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", name) || !cJSON_AddStringToObject(j, "path", path))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (!arg_quiet)
                printf("Registered %s at %s.\n", name, path);
        return 0;
}

int verb_remove(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *name = argv[1];
        int r;

        r = check_model_name(name);
        if (r != 0)
                return r;
        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Remove");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", name);
        if (r >= 0)
                r = arg_force ? sd_bus_message_append(m, "a{sv}", 1, "force", "b", 1)
                              : sd_bus_message_append(m, "a{sv}", 0);
        if (r < 0)
                return print_error_errno(r, "Cannot build the Remove call: %m");

        (void) polkit_agent_open();
        r = sd_bus_call(bus, m, authorized_call_timeout(), &error, &reply);
        if (r < 0)
                return report_bus_error(&error, r, "remove", name);

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", name) || !cJSON_AddBoolToObject(j, "removed", 1))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (!arg_quiet)
                printf("Removed %s.\n", name);
        return 0;
}
