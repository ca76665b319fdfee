/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "parse-util.h"
#include "polkit-agent.h"
#include "terminal.h"

typedef struct Setting {
        const char *name;               /* on the command line */
        const char *property;           /* on org.mpool.Manager */
        const char *json_key;           /* as Status names it */
        const char *config_key;         /* in mpoold.conf */
} Setting;

static const Setting settings[] = {
        { "memory-limit", "MemoryLimit",    "memory_limit",     "MemoryLimit="    },
        { "idle-timeout", "IdleTimeoutSec", "idle_timeout_sec", "IdleTimeoutSec=" },
};

static int set_property(sd_bus *bus, const Setting *s, char type, const void *value) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        char what[64];
        int r;

        /* Built by hand rather than with sd_bus_set_property(), for a timeout
         * long enough to type a password in. */
        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH,
                                           "org.freedesktop.DBus.Properties", "Set");
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", MPOOL_MANAGER_INTERFACE, s->property);
        if (r >= 0) {
                if (type == 't')
                        r = sd_bus_message_append(m, "v", "t", *(const uint64_t *) value);
                else
                        r = sd_bus_message_append(m, "v", "x", *(const int64_t *) value);
        }
        if (r < 0)
                return print_error_errno(r, "Cannot build the call that sets %s: %m", s->name);

        (void) polkit_agent_open();
        r = sd_bus_call(bus, m, authorized_call_timeout(), &error, NULL);
        if (r >= 0)
                return 0;

        if (sd_bus_error_has_names(&error, SD_BUS_ERROR_PROPERTY_READ_ONLY, SD_BUS_ERROR_UNKNOWN_PROPERTY)) {
                print_error("The running mpoold cannot change %s while it runs; set %s in mpoold.conf and "
                            "restart it instead.", s->name, s->config_key);
                return MPOOL_EXIT_FAILURE;
        }
        snprintf(what, sizeof what, "set %s", s->name);
        return report_bus_error(&error, r, what, NULL);
}

int verb_set(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const Setting *s = NULL;
        uint64_t bytes = 0;
        int64_t sec = 0;
        int r;

        for (size_t i = 0; i < ELEMENTSOF(settings); i++)
                if (strcmp(argv[1], settings[i].name) == 0)
                        s = &settings[i];
        if (!s) {
                print_error("Unknown setting '%s'; known are memory-limit and idle-timeout.", argv[1]);
                return MPOOL_EXIT_USAGE;
        }

        if (s == &settings[0]) {
                r = parse_size(argv[2], &bytes);
                if (r < 0) {
                        print_error("Invalid memory limit '%s': expected a size such as 512M or 8G.", argv[2]);
                        return MPOOL_EXIT_USAGE;
                }
        } else {
                r = parse_duration_sec(argv[2], &sec);
                if (r < 0) {
                        print_error("Invalid idle timeout '%s': expected a duration such as 90s, 5min, "
                                    "1h 30min or infinity.", argv[2]);
                        return MPOOL_EXIT_USAGE;
                }
        }

        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = s == &settings[0] ? set_property(bus, s, 't', &bytes) : set_property(bus, s, 'x', &sec);
        if (r != 0)
                return r;

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !(s == &settings[0] ? json_add_u64(j, s->json_key, bytes) : json_add_i64(j, s->json_key, sec)))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (!arg_quiet) {
                if (s == &settings[0])
                        printf("Memory limit set to %s.\n", FORMAT_BYTES(bytes));
                else
                        printf("Idle timeout set to %s.\n", FORMAT_SECONDS(sec));
        }
        return 0;
}
