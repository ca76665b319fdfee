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

typedef struct PullContext {
        sd_event *event;
        sd_bus *bus;
        const char *name;
        char *path;
        bool replied;           /* Pull replied: the download goes on, or the model was there */
        bool cancelling;
        int signal;
        bool show_progress;
        ProgressBar bar;
        uint64_t started_usec;
} PullContext;

static void progress_clear(PullContext *c) {
        progress_bar_clear(&c->bar);
}

static int on_progress(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PullContext *c = userdata;
        const char *name;
        uint64_t done, total;

        if (sd_bus_message_read(m, "stt", &name, &done, &total) < 0)
                return 0;
        if (strcmp(name, c->name) != 0 || !c->show_progress || c->cancelling)
                return 0;
        progress_bar_draw(&c->bar, done, total);
        return 0;
}

static int print_done(PullContext *c) {
        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", c->name) ||
                    !cJSON_AddStringToObject(j, "path", strempty(c->path)) ||
                    !cJSON_AddStringToObject(j, "result", "done"))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (!arg_quiet)
                printf("Pulled %s in %s.\n", c->name,
                       FORMAT_TIMESPAN(now_monotonic_usec() - c->started_usec, USEC_PER_MSEC));
        return 0;
}

static int on_finished(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PullContext *c = userdata;
        const char *name, *result, *message;
        int r;

        if (sd_bus_message_read(m, "sss", &name, &result, &message) < 0)
                return 0;
        /* Before the reply, the reply tells the outcome. */
        if (strcmp(name, c->name) != 0 || !c->replied)
                return 0;
        progress_clear(c);

        if (strcmp(result, "done") == 0) {
                if (c->cancelling)
                        return sd_event_exit(c->event, 128 + c->signal);
                r = print_done(c);
                return sd_event_exit(c->event, r < 0 ? MPOOL_EXIT_FAILURE : r);
        }
        if (strcmp(result, "cancelled") == 0) {
                if (!arg_quiet)
                        fprintf(stderr, "Cancelled pulling %s.\n", c->name);
                return sd_event_exit(c->event, c->cancelling ? 128 + c->signal : MPOOL_EXIT_CANCELLED);
        }
        print_error("Cannot pull %s: %s", c->name, message);
        return sd_event_exit(c->event, c->cancelling ? 128 + c->signal : MPOOL_EXIT_DOWNLOAD_FAILED);
}

static int on_pull_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PullContext *c = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        const char *path;
        int r;

        if (error) {
                progress_clear(c);
                if (c->cancelling && sd_bus_error_has_name(error, MPOOL_ERROR_CANCELLED)) {
                        if (!arg_quiet)
                                fprintf(stderr, "Cancelled pulling %s.\n", c->name);
                        return sd_event_exit(c->event, 128 + c->signal);
                }
                return sd_event_exit(c->event, report_bus_error(error, sd_bus_message_get_errno(m), "pull", c->name));
        }
        r = sd_bus_message_read(m, "o", &path);
        if (r < 0) {
                print_error_errno(r, "Cannot read the reply to Pull: %m");
                return sd_event_exit(c->event, MPOOL_EXIT_FAILURE);
        }
        c->path = strdup(path);
        if (!c->path) {
                print_oom();
                return sd_event_exit(c->event, MPOOL_EXIT_FAILURE);
        }
        /* DownloadFinished follows. */
        c->replied = true;
        return 0;
}

static int on_cancel_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PullContext *c = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(m);

        /* Nothing under way: the Pull has not reached the daemon yet, or is
         * over; its reply or DownloadFinished ends it. */
        if (error && !sd_bus_error_has_name(error, MPOOL_ERROR_NOTHING_TO_CANCEL)) {
                report_bus_error(error, sd_bus_message_get_errno(m), "cancel the download of", c->name);
                return sd_event_exit(c->event, 128 + c->signal);
        }
        return 0;
}

static int send_cancel(sd_bus *bus, const char *name, sd_bus_message_handler_t handler, void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Cancel");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", name);
        if (r < 0)
                return r;
        return sd_bus_call_async(bus, NULL, m, handler, userdata, authorized_call_timeout());
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        PullContext *c = userdata;
        int r;

        c->signal = (int) si->ssi_signo;
        progress_clear(c);
        if (c->cancelling)      /* asked twice: stop waiting */
                return sd_event_exit(c->event, 128 + c->signal);

        c->cancelling = true;
        if (!arg_quiet)
                fprintf(stderr, "Cancelling the download of %s...\n", c->name);
        r = send_cancel(c->bus, c->name, on_cancel_reply, c);
        if (r < 0) {
                print_error_errno(r, "Cannot cancel the download of %s: %m", c->name);
                return sd_event_exit(c->event, 128 + c->signal);
        }
        return 0;
}

static void on_daemon_gone(void *userdata, bool bus_lost) {
        PullContext *c = userdata;

        progress_clear(c);
        if (bus_lost)
                print_error("Lost the connection to the bus while pulling %s.", c->name);
        else
                print_error("mpoold stopped while pulling %s.", c->name);
        sd_event_exit(c->event, MPOOL_EXIT_UNREACHABLE);
}

static int start_pull(PullContext *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(c->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Pull");
        if (r < 0)
                return r;
        if (arg_revision)
                r = sd_bus_message_append(m, "sa{sv}", c->name, 1, "revision", "s", arg_revision);
        else
                r = sd_bus_message_append(m, "sa{sv}", c->name, 0);
        if (r < 0)
                return r;
        c->started_usec = now_monotonic_usec();
        /* Pull replies once the file list is known and space checked, after
         * the pulls queued before it: no timeout unless asked. */
        return sd_bus_call_async(c->bus, NULL, m, on_pull_reply, c, load_call_timeout());
}

static const int handled_signals[] = { SIGINT, SIGTERM, SIGHUP };

int verb_pull(int argc, char *argv[]) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        PullContext c = {
                .name = argv[1],
                .bar = { .verb = "Pulling", .name = argv[1] },
                .show_progress = on_tty() && !arg_quiet && arg_json == JSON_OFF,
        };
        int r;

        r = check_model_name(c.name);
        if (r != 0)
                return r;

        r = block_signals(NULL, SIGINT, SIGTERM, SIGHUP, 0);
        if (r < 0)
                return print_error_errno(r, "Cannot block signals: %m");

        r = client_connect(&bus);
        if (r != 0)
                return r;
        c.bus = bus;
        r = client_attach_event(bus, &event);
        if (r != 0)
                return r;
        c.event = event;

        /* Subscribed before Pull is sent, so that no signal is missed. */
        r = sd_bus_match_signal(bus, NULL, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                "DownloadProgress", on_progress, &c);
        if (r >= 0)
                r = sd_bus_match_signal(bus, NULL, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                        "DownloadFinished", on_finished, &c);
        if (r < 0)
                return report_bus_error(NULL, r, "subscribe to the progress of", c.name);
        r = bus_watch_daemon_gone(bus, on_daemon_gone, &c);
        if (r < 0)
                return report_bus_error(NULL, r, "watch mpoold while pulling", c.name);

        for (size_t i = 0; i < ELEMENTSOF(handled_signals); i++) {
                r = sd_event_add_signal(event, NULL, handled_signals[i], on_signal, &c);
                if (r < 0)
                        return print_error_errno(r, "Cannot watch signal %d: %m", handled_signals[i]);
        }

        (void) polkit_agent_open();
        r = start_pull(&c);
        if (r < 0)
                return report_bus_error(NULL, r, "pull", c.name);

        r = sd_event_loop(event);
        progress_clear(&c);
        free(c.path);
        if (r < 0)
                return print_error_errno(r, "The event loop failed: %m");
        return r;
}

int verb_cancel(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *name = argv[1];
        int r;

        r = check_model_name(name);
        if (r != 0)
                return r;
        r = client_connect(&bus);
        if (r != 0)
                return r;

        (void) polkit_agent_open();
        r = sd_bus_call_method(bus, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "Cancel", &error,
                               &reply, "s", name);
        if (r < 0)
                return report_bus_error(&error, r, "cancel", name);

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", name) || !cJSON_AddBoolToObject(j, "cancelled", 1))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (!arg_quiet)
                printf("Cancelled what was under way for %s.\n", name);
        return 0;
}
