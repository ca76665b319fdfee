/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "polkit-agent.h"
#include "strv.h"
#include "terminal.h"

static int append_force(sd_bus_message *m) {
        if (arg_force)
                return sd_bus_message_append(m, "a{sv}", 1, "force", "b", 1);
        return sd_bus_message_append(m, "a{sv}", 0);
}

/* Unload() says false both for a model that is known but not loaded and for
 * one that does not exist; the second is an error for us. Returns 0 when the
 * model is known, MPOOL_EXIT_NOT_FOUND after saying so, or another exit
 * status when the question could not be asked. */
static int check_model_known(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL, *state = NULL;
        int r;

        r = model_object_path(name, &path);
        if (r < 0)
                return print_error_errno(r, "Cannot build the object path of %s: %m", name);
        r = sd_bus_get_property_string(bus, MPOOL_BUS_NAME, path, MPOOL_MODEL_INTERFACE, "State", &error, &state);
        if (r < 0)
                return report_bus_error(&error, r, "query", name);
        return 0;
}

static int unload_one(sd_bus *bus, const char *name, char ***unloaded) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int was_loaded, r;

        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Unload");
        if (r < 0)
                return print_error_errno(r, "Cannot build the Unload call: %m");
        r = sd_bus_message_append(m, "s", name);
        if (r < 0)
                return print_error_errno(r, "Cannot build the Unload call: %m");
        r = append_force(m);
        if (r < 0)
                return print_error_errno(r, "Cannot build the Unload call: %m");

        r = sd_bus_call(bus, m, authorized_call_timeout(), &error, &reply);
        if (r < 0)
                return report_bus_error(&error, r, "unload", name);
        r = sd_bus_message_read(reply, "b", &was_loaded);
        if (r < 0)
                return print_error_errno(r, "Cannot read the reply to Unload: %m");

        if (!was_loaded) {
                r = check_model_known(bus, name);
                if (r != 0)
                        return r;
                if (!arg_quiet && arg_json == JSON_OFF)
                        printf("%s was not loaded.\n", name);
                return 0;
        }

        if (strv_extend(unloaded, name) < 0)
                return print_oom();
        if (!arg_quiet && arg_json == JSON_OFF)
                printf("Unloaded %s.\n", name);
        return 0;
}

static int unload_all(sd_bus *bus, char ***unloaded) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *name;
        size_t n = 0;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "UnloadAll");
        if (r < 0)
                return print_error_errno(r, "Cannot build the UnloadAll call: %m");
        r = append_force(m);
        if (r < 0)
                return print_error_errno(r, "Cannot build the UnloadAll call: %m");

        r = sd_bus_call(bus, m, authorized_call_timeout(), &error, &reply);
        if (r < 0)
                return report_bus_error(&error, r, "unload every model", NULL);

        r = sd_bus_message_enter_container(reply, 'a', "s");
        if (r < 0)
                return print_error_errno(r, "Cannot read the reply to UnloadAll: %m");
        while ((r = sd_bus_message_read(reply, "s", &name)) > 0) {
                if (strv_extend(unloaded, name) < 0)
                        return print_oom();
                if (!arg_quiet && arg_json == JSON_OFF)
                        printf("Unloaded %s.\n", name);
                n++;
        }
        if (r < 0)
                return print_error_errno(r, "Cannot read the reply to UnloadAll: %m");

        if (n == 0 && !arg_quiet && arg_json == JSON_OFF)
                printf(arg_force ? "No model was loaded.\n" : "No unpinned model was loaded.\n");
        return 0;
}

int verb_unload(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_strv_free_ char **unloaded = NULL;
        int ret = 0, r;

        if (arg_all && argc > 1) {
                print_error("Give either --all or model names, not both.");
                return MPOOL_EXIT_USAGE;
        }
        if (!arg_all && argc < 2) {
                print_error("Which models? Give their names, or --all.");
                return MPOOL_EXIT_USAGE;
        }
        for (int i = 1; i < argc; i++) {
                r = check_model_name(argv[i]);
                if (r != 0)
                        return r;
        }

        r = client_connect(&bus);
        if (r != 0)
                return r;

        (void) polkit_agent_open();
        if (arg_all)
                ret = unload_all(bus, &unloaded);
        else
                /* Like systemctl stop: go on with the others, report the first failure. */
                for (int i = 1; i < argc; i++) {
                        r = unload_one(bus, argv[i], &unloaded);
                        if (r != 0 && ret == 0)
                                ret = r;
                        /* Nothing else can succeed without mpoold. */
                        if (r == MPOOL_EXIT_UNREACHABLE)
                                break;
                }

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();
                cJSON *names;

                if (!j || !(names = cJSON_AddArrayToObject(j, "unloaded")))
                        return print_oom();
                for (char **name = unloaded; name && *name; name++) {
                        cJSON *s = cJSON_CreateString(*name);

                        if (!s || !cJSON_AddItemToArray(names, s)) {
                                cJSON_Delete(s);
                                return print_oom();
                        }
                }
                r = json_print(j, stdout);
                if (r < 0 && ret == 0)
                        ret = r;
        }
        return ret;
}
