/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "polkit-agent.h"
#include "follow.h"
#include "terminal.h"

typedef struct LoadContext {
        Follow follow;
        char *path;
        bool was_loaded;        /* already loaded when we asked */
        bool started_by_us;     /* neither loading nor loaded when we asked: the load is ours */
        bool load_replied;      /* while cancelling: the reply to Load came */
        bool awaiting_load;     /* Unload came before our Load took effect: wait for Load, then undo it */
} LoadContext;

static const FollowWords load_words = { .action = "load", .bar = "Loading", .doing = "loading" };

static int print_result(LoadContext *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *name = c->follow.name;
        uint64_t memory = 0;
        int r;

        r = sd_bus_get_property_trivial(c->follow.bus, MPOOL_BUS_NAME, c->path, MPOOL_MODEL_INTERFACE,
                                        "MemoryBytes", &error, 't', &memory);
        if (r < 0)
                return report_bus_error(&error, r, "query", name);

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", name) ||
                    !cJSON_AddStringToObject(j, "path", c->path) || !json_add_u64(j, "memory_bytes", memory))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (arg_quiet)
                return 0;

        if (c->was_loaded)
                printf("%s is loaded: %s in memory.\n", name, FORMAT_BYTES(memory));
        else
                printf("Loaded %s: %s in memory, in %s.\n", name, FORMAT_BYTES(memory),
                       FORMAT_TIMESPAN(now_monotonic_usec() - c->follow.started_usec, USEC_PER_MSEC));
        return 0;
}

static int cancel_load(LoadContext *c);

/* Cancelled, and the load stopped or undone. */
static int finish_cancelled(LoadContext *c) {
        if (!arg_quiet)
                fprintf(stderr, "Cancelled loading %s.\n", c->follow.name);
        return follow_exit_interrupted(&c->follow);
}

static int on_load_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        LoadContext *c = userdata;
        Follow *f = &c->follow;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        const char *path;
        int r;

        /* Cancelling on our own request: the Unload reply ends it, unless
         * that Unload came too early (see on_unload_reply). */
        if (f->cancelling) {
                c->load_replied = true;
                if (!c->awaiting_load)
                        return 0;
                c->awaiting_load = false;
                if (error)      /* it never loaded: nothing to undo */
                        return finish_cancelled(c);
                r = cancel_load(c);
                if (r < 0) {
                        print_error_errno(r, "Cannot unload %s after cancelling its load: %m", f->name);
                        return follow_exit_interrupted(f);
                }
                return 0;
        }

        progress_bar_clear(&f->bar);

        if (error)
                return follow_exit(f, report_bus_error(error, sd_bus_message_get_errno(m), "load", f->name));

        r = sd_bus_message_read(m, "o", &path);
        if (r < 0) {
                print_error_errno(r, "Cannot read the reply to Load: %m");
                return follow_exit(f, MPOOL_EXIT_FAILURE);
        }
        c->path = strdup(path);
        if (!c->path) {
                print_oom();
                return follow_exit(f, MPOOL_EXIT_FAILURE);
        }

        r = print_result(c);
        return follow_exit(f, r < 0 ? MPOOL_EXIT_FAILURE : r);
}

static int on_unload_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        LoadContext *c = userdata;
        Follow *f = &c->follow;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        int was_loaded, r;

        if (error) {
                report_bus_error(error, sd_bus_message_get_errno(m), "cancel the load of", f->name);
                return follow_exit_interrupted(f);
        }
        r = sd_bus_message_read(m, "b", &was_loaded);
        if (r < 0) {
                print_error_errno(r, "Cannot read the reply to Unload: %m");
                return follow_exit_interrupted(f);
        }

        /* Nothing was loading or loaded: our Load has not taken effect yet
         * (it may still wait for polkit), and would go on after we left.
         * Wait for it, and undo what it did. */
        if (!was_loaded && !c->load_replied) {
                c->awaiting_load = true;
                return 0;
        }
        return finish_cancelled(c);
}

static int cancel_load(LoadContext *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        Follow *f = &c->follow;
        int r;

        r = sd_bus_message_new_method_call(f->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Unload");
        if (r < 0)
                return r;
        /* A load we asked to pin is pinned already; cancelling it is still ours to do. */
        if (arg_pin)
                r = sd_bus_message_append(m, "sa{sv}", f->name, 1, "force", "b", 1);
        else
                r = sd_bus_message_append(m, "sa{sv}", f->name, 0);
        if (r < 0)
                return r;
        return sd_bus_call_async(f->bus, NULL, m, on_unload_reply, c, authorized_call_timeout());
}

static int on_interrupt(Follow *f) {
        LoadContext *c = container_of(f, LoadContext, follow);
        int r;

        if (!c->started_by_us) {
                if (!arg_quiet)
                        fprintf(stderr, "Interrupted; the load of %s was started by another client and goes on.\n",
                                f->name);
                return follow_exit_interrupted(f);
        }

        f->cancelling = true;
        if (!arg_quiet)
                fprintf(stderr, "Cancelling the load of %s...\n", f->name);
        r = cancel_load(c);
        if (r < 0) {
                print_error_errno(r, "Cannot cancel the load of %s: %m", f->name);
                return follow_exit_interrupted(f);
        }
        return 0;
}

/* The model's state before we ask: whether Ctrl-C may cancel the load (only
 * one we started) and whether to say it was loaded already. Returns 0, or an
 * exit status when mpoold is out of reach. */
static int read_initial_state(LoadContext *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL, *state = NULL;
        Follow *f = &c->follow;
        int r;

        r = model_object_path(f->name, &path);
        if (r < 0)
                return print_error_errno(r, "Cannot build the object path of %s: %m", f->name);

        r = sd_bus_get_property_string(f->bus, MPOOL_BUS_NAME, path, MPOOL_MODEL_INTERFACE, "State", &error,
                                       &state);
        if (r < 0) {
                int status = bus_error_exit_status(&error, r);

                /* An unknown model is for Load to report, with the daemon's words. */
                if (status == MPOOL_EXIT_UNREACHABLE || status == MPOOL_EXIT_ACCESS_DENIED)
                        return report_bus_error(&error, r, "load", f->name);
                c->started_by_us = true;
                return 0;
        }

        c->was_loaded = strcmp(state, "loaded") == 0;
        c->started_by_us = !c->was_loaded && strcmp(state, "loading") != 0;
        return 0;
}

static int start_load(Follow *f) {
        LoadContext *c = container_of(f, LoadContext, follow);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(f->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Load");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", f->name);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        if (arg_keep_alive_set) {
                r = sd_bus_message_append(m, "{sv}", "keep_alive_sec", "x", arg_keep_alive_sec);
                if (r < 0)
                        return r;
        }
        if (arg_pin) {
                r = sd_bus_message_append(m, "{sv}", "pin", "b", 1);
                if (r < 0)
                        return r;
        }
        if (arg_precision) {
                r = sd_bus_message_append(m, "{sv}", "precision", "s", arg_precision);
                if (r < 0)
                        return r;
        }
        if (arg_max_workers > 0) {
                r = sd_bus_message_append(m, "{sv}", "max_workers", "u", arg_max_workers);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        return sd_bus_call_async(f->bus, NULL, m, on_load_reply, c, load_call_timeout());
}

int verb_load(int argc, char *argv[]) {
        LoadContext c = {};
        int r;

        r = check_model_name(argv[1]);
        if (r != 0)
                return r;

        r = follow_open(&c.follow, argv[1], &load_words);
        if (r == 0)
                r = read_initial_state(&c);
        if (r == 0)
                r = follow_run(&c.follow, "LoadProgress", NULL, NULL, on_interrupt, start_load);
        follow_close(&c.follow);
        free(c.path);
        return r;
}
