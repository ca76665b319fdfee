/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "polkit-agent.h"
#include "progress-bar.h"
#include "terminal.h"

typedef struct LoadContext {
        sd_event *event;
        sd_bus *bus;
        const char *name;
        char *path;
        bool was_loaded;        /* already loaded when we asked */
        bool started_by_us;     /* neither loading nor loaded when we asked: the load is ours */
        bool cancelling;
        bool load_replied;      /* while cancelling: the reply to Load came */
        bool awaiting_load;     /* Unload came before our Load took effect: wait for Load, then undo it */
        int signal;             /* the signal that interrupted us */
        bool show_progress;
        ProgressBar bar;
        uint64_t started_usec;
} LoadContext;

static void progress_clear(LoadContext *c) {
        progress_bar_clear(&c->bar);
}

static int on_load_progress(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        LoadContext *c = userdata;
        const char *name;
        uint64_t done, total;

        if (sd_bus_message_read(m, "stt", &name, &done, &total) < 0)
                return 0;       /* not the signal the contract describes: nothing to show */
        if (strcmp(name, c->name) != 0 || !c->show_progress || c->cancelling)
                return 0;
        progress_bar_draw(&c->bar, done, total);
        return 0;
}

static int print_result(LoadContext *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uint64_t memory = 0;
        int r;

        r = sd_bus_get_property_trivial(c->bus, MPOOL_BUS_NAME, c->path, MPOOL_MODEL_INTERFACE, "MemoryBytes",
                                        &error, 't', &memory);
        if (r < 0)
                return report_bus_error(&error, r, "query", c->name);

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", c->name) ||
                    !cJSON_AddStringToObject(j, "path", c->path) || !json_add_u64(j, "memory_bytes", memory))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (arg_quiet)
                return 0;

        if (c->was_loaded)
                printf("%s is loaded: %s in memory.\n", c->name, FORMAT_BYTES(memory));
        else
                printf("Loaded %s: %s in memory, in %s.\n", c->name, FORMAT_BYTES(memory),
                       FORMAT_TIMESPAN(now_monotonic_usec() - c->started_usec, USEC_PER_MSEC));
        return 0;
}

static int cancel_load(LoadContext *c);

/* Cancelled, and the load stopped or undone. */
static int finish_cancelled(LoadContext *c) {
        if (!arg_quiet)
                fprintf(stderr, "Cancelled loading %s.\n", c->name);
        return sd_event_exit(c->event, 128 + c->signal);
}

static int on_load_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        LoadContext *c = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        const char *path;
        int r;

        /* Cancelling on our own request: the Unload reply ends it, unless
         * that Unload came too early (see on_unload_reply). */
        if (c->cancelling) {
                c->load_replied = true;
                if (!c->awaiting_load)
                        return 0;
                c->awaiting_load = false;
                if (error)      /* it never loaded: nothing to undo */
                        return finish_cancelled(c);
                r = cancel_load(c);
                if (r < 0) {
                        print_error_errno(r, "Cannot unload %s after cancelling its load: %m", c->name);
                        return sd_event_exit(c->event, 128 + c->signal);
                }
                return 0;
        }

        progress_clear(c);

        if (error)
                return sd_event_exit(c->event, report_bus_error(error, sd_bus_message_get_errno(m), "load", c->name));

        r = sd_bus_message_read(m, "o", &path);
        if (r < 0) {
                print_error_errno(r, "Cannot read the reply to Load: %m");
                return sd_event_exit(c->event, MPOOL_EXIT_FAILURE);
        }
        c->path = strdup(path);
        if (!c->path) {
                print_oom();
                return sd_event_exit(c->event, MPOOL_EXIT_FAILURE);
        }

        r = print_result(c);
        return sd_event_exit(c->event, r < 0 ? MPOOL_EXIT_FAILURE : r);
}

static int on_unload_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        LoadContext *c = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        int was_loaded, r;

        if (error) {
                report_bus_error(error, sd_bus_message_get_errno(m), "cancel the load of", c->name);
                return sd_event_exit(c->event, 128 + c->signal);
        }
        r = sd_bus_message_read(m, "b", &was_loaded);
        if (r < 0) {
                print_error_errno(r, "Cannot read the reply to Unload: %m");
                return sd_event_exit(c->event, 128 + c->signal);
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
        int r;

        r = sd_bus_message_new_method_call(c->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Unload");
        if (r < 0)
                return r;
        /* A load we asked to pin is pinned already; cancelling it is still ours to do. */
        if (arg_pin)
                r = sd_bus_message_append(m, "sa{sv}", c->name, 1, "force", "b", 1);
        else
                r = sd_bus_message_append(m, "sa{sv}", c->name, 0);
        if (r < 0)
                return r;
        return sd_bus_call_async(c->bus, NULL, m, on_unload_reply, c, authorized_call_timeout());
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        LoadContext *c = userdata;
        int r;

        c->signal = (int) si->ssi_signo;
        progress_clear(c);

        if (c->cancelling)      /* asked twice: stop waiting */
                return sd_event_exit(c->event, 128 + c->signal);

        if (!c->started_by_us) {
                if (!arg_quiet)
                        fprintf(stderr, "Interrupted; the load of %s was started by another client and goes on.\n",
                                c->name);
                return sd_event_exit(c->event, 128 + c->signal);
        }

        c->cancelling = true;
        if (!arg_quiet)
                fprintf(stderr, "Cancelling the load of %s...\n", c->name);
        r = cancel_load(c);
        if (r < 0) {
                print_error_errno(r, "Cannot cancel the load of %s: %m", c->name);
                return sd_event_exit(c->event, 128 + c->signal);
        }
        return 0;
}

static void on_daemon_gone(void *userdata, bool bus_lost) {
        LoadContext *c = userdata;

        progress_clear(c);
        if (bus_lost)
                print_error("Lost the connection to the bus while loading %s.", c->name);
        else
                print_error("mpoold stopped while loading %s.", c->name);
        sd_event_exit(c->event, MPOOL_EXIT_UNREACHABLE);
}

/* The model's state before we ask: whether Ctrl-C may cancel the load (only
 * one we started) and whether to say it was loaded already. Returns 0, or an
 * exit status when mpoold is out of reach. */
static int read_initial_state(LoadContext *c, const char *path) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r;

        r = sd_bus_get_property_string(c->bus, MPOOL_BUS_NAME, path, MPOOL_MODEL_INTERFACE, "State", &error,
                                       &state);
        if (r < 0) {
                int status = bus_error_exit_status(&error, r);

                /* An unknown model is for Load to report, with the daemon's words. */
                if (status == MPOOL_EXIT_UNREACHABLE || status == MPOOL_EXIT_ACCESS_DENIED)
                        return report_bus_error(&error, r, "load", c->name);
                c->started_by_us = true;
                return 0;
        }

        c->was_loaded = strcmp(state, "loaded") == 0;
        c->started_by_us = !c->was_loaded && strcmp(state, "loading") != 0;
        return 0;
}

static int start_load(LoadContext *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(c->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Load");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", c->name);
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
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        c->started_usec = now_monotonic_usec();
        return sd_bus_call_async(c->bus, NULL, m, on_load_reply, c, load_call_timeout());
}

static const int handled_signals[] = { SIGINT, SIGTERM, SIGHUP };

int verb_load(int argc, char *argv[]) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_free_ char *path = NULL;
        LoadContext c = {
                .name = argv[1],
                .bar = { .verb = "Loading", .name = argv[1] },
                .show_progress = on_tty() && !arg_quiet && arg_json == JSON_OFF,
        };
        int r;

        r = check_model_name(c.name);
        if (r != 0)
                return r;

        /* Taken by the event loop: Ctrl-C cancels the load rather than killing us. */
        r = block_signals(NULL, SIGINT, SIGTERM, SIGHUP, 0);
        if (r < 0)
                return print_error_errno(r, "Cannot block signals: %m");

        r = client_connect(&bus);
        if (r != 0)
                return r;
        c.bus = bus;

        r = model_object_path(c.name, &path);
        if (r < 0)
                return print_error_errno(r, "Cannot build the object path of %s: %m", c.name);

        r = read_initial_state(&c, path);
        if (r != 0)
                return r;

        r = client_attach_event(bus, &event);
        if (r != 0)
                return r;
        c.event = event;

        /* Subscribed before Load is sent, so no progress signal is missed. */
        r = sd_bus_match_signal(bus, NULL, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                "LoadProgress", on_load_progress, &c);
        if (r < 0)
                return report_bus_error(NULL, r, "subscribe to the progress of", c.name);
        r = bus_watch_daemon_gone(bus, on_daemon_gone, &c);
        if (r < 0)
                return report_bus_error(NULL, r, "watch mpoold while loading", c.name);

        for (size_t i = 0; i < ELEMENTSOF(handled_signals); i++) {
                r = sd_event_add_signal(event, NULL, handled_signals[i], on_signal, &c);
                if (r < 0)
                        return print_error_errno(r, "Cannot watch signal %d: %m", handled_signals[i]);
        }

        (void) polkit_agent_open();
        r = start_load(&c);
        if (r < 0)
                return report_bus_error(NULL, r, "load", c.name);

        r = sd_event_loop(event);
        progress_clear(&c);
        free(c.path);
        if (r < 0)
                return print_error_errno(r, "The event loop failed: %m");
        return r;
}
