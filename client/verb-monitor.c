/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "terminal.h"

/* Load and download progress is reported at these percentages only. */
#define MILESTONE_STEP 25

/* The last milestone reported per model, so each is printed once per load
 * (or download). */
typedef struct Milestone {
        char *name;
        int percent;    /* -1: none yet */
} Milestone;

typedef struct Milestones {
        Milestone *items;
        size_t n;
} Milestones;

typedef struct MonitorContext {
        sd_event *event;
        const char *filter;     /* only this model, or NULL */
        Milestones loads, downloads;
} MonitorContext;

static Milestone *milestone_get(Milestones *list, const char *name) {
        Milestone *array;

        for (size_t i = 0; i < list->n; i++)
                if (strcmp(list->items[i].name, name) == 0)
                        return &list->items[i];

        array = reallocarray(list->items, list->n + 1, sizeof *array);
        if (!array)
                return NULL;
        list->items = array;
        array[list->n] = (Milestone) { .name = strdup(name), .percent = -1 };
        if (!array[list->n].name)
                return NULL;
        return &array[list->n++];
}

static void milestones_reset(Milestones *list) {
        for (size_t i = 0; i < list->n; i++)
                list->items[i].percent = -1;
}

static void milestones_free(Milestones *list) {
        for (size_t i = 0; i < list->n; i++)
                free(list->items[i].name);
        free(list->items);
}

/* Text lines start with the local time, to the millisecond. */
static void print_time_prefix(uint64_t realtime_usec) {
        time_t sec = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;
        char buf[16];

        if (!localtime_r(&sec, &tm) || strftime(buf, sizeof buf, "%H:%M:%S", &tm) == 0)
                snprintf(buf, sizeof buf, "??:??:??");
        printf("%s%s.%03u%s ", ansi(ANSI_GREY), buf, (unsigned) (realtime_usec % USEC_PER_SEC / USEC_PER_MSEC),
               ansi(ANSI_NORMAL));
}

/* A JSON line starts as {"event": ..., "name": ...}; NULL on allocation failure. */
static cJSON *json_event_new(const char *event, const char *name) {
        cJSON *j = cJSON_CreateObject();

        if (!j)
                return NULL;
        if (!cJSON_AddStringToObject(j, "event", event) || (name && !cJSON_AddStringToObject(j, "name", name))) {
                cJSON_Delete(j);
                return NULL;
        }
        return j;
}

/* Each line is out as soon as it is written. Returns 0, or a negative errno
 * after saying what failed (nothing for EPIPE: the reader went away). */
static int flush_line(void) {
        int r = fflush_and_check(stdout);

        return r < 0 ? print_output_error(r) : 0;
}

/* Writes the line with its timestamp_usec; takes j. ok is false when adding
 * a field failed. */
static int json_event_emit(cJSON *j, bool ok, uint64_t now) {
        _cleanup_json_ cJSON *owned = j;

        if (!j || !ok || !json_add_u64(j, "timestamp_usec", now))
                return print_oom();
        return json_print(j, stdout);
}

static int on_load_progress(MonitorContext *c, sd_bus_message *m, uint64_t now) {
        const char *name;
        uint64_t done, total;
        Milestone *milestone;
        int percent, r;

        r = sd_bus_message_read(m, "stt", &name, &done, &total);
        if (r < 0)
                return r;
        if (c->filter && strcmp(name, c->filter) != 0)
                return 0;

        milestone = milestone_get(&c->loads, name);
        if (!milestone)
                return print_oom();

        percent = total > 0 ? (int) (MIN(done, total) * 100 / total) : 100;
        percent -= percent % MILESTONE_STEP;
        /* A load starts at 0 bytes; a new load of the same model starts over. */
        if (done == 0)
                milestone->percent = -1;
        if (percent <= milestone->percent)
                return 0;
        milestone->percent = percent;

        if (arg_json != JSON_OFF) {
                cJSON *j = json_event_new("load-progress", name);

                return json_event_emit(j, j && json_add_u64(j, "bytes_done", done) &&
                                                  json_add_u64(j, "bytes_total", total) &&
                                                  cJSON_AddNumberToObject(j, "percent", percent), now);
        }

        print_time_prefix(now);
        if (done == 0)
                printf("%s: loading started, %s to load\n", name, FORMAT_BYTES(total));
        else
                printf("%s: loading, %d%% (%s of %s)\n", name, percent, FORMAT_BYTES(done), FORMAT_BYTES(total));
        return flush_line();
}

static int on_model_loaded(MonitorContext *c, sd_bus_message *m, uint64_t now) {
        const char *name;
        uint64_t memory;
        int r;

        r = sd_bus_message_read(m, "st", &name, &memory);
        if (r < 0)
                return r;
        if (c->filter && strcmp(name, c->filter) != 0)
                return 0;

        if (arg_json != JSON_OFF) {
                cJSON *j = json_event_new("loaded", name);

                return json_event_emit(j, j && json_add_u64(j, "memory_bytes", memory), now);
        }

        print_time_prefix(now);
        printf("%s: %sloaded%s, %s in memory\n", name, ansi(ANSI_GREEN), ansi(ANSI_NORMAL), FORMAT_BYTES(memory));
        return flush_line();
}

static int on_load_failed(MonitorContext *c, sd_bus_message *m, uint64_t now) {
        const char *name, *error_name, *message;
        bool cancelled;
        int r;

        r = sd_bus_message_read(m, "sss", &name, &error_name, &message);
        if (r < 0)
                return r;
        if (c->filter && strcmp(name, c->filter) != 0)
                return 0;
        cancelled = strcmp(error_name, MPOOL_ERROR_CANCELLED) == 0;

        if (arg_json != JSON_OFF) {
                cJSON *j = json_event_new(cancelled ? "load-cancelled" : "load-failed", name);

                return json_event_emit(j, j && cJSON_AddStringToObject(j, "error_name", error_name) &&
                                                  cJSON_AddStringToObject(j, "message", message), now);
        }

        print_time_prefix(now);
        printf("%s: %s%s%s: %s\n", name, ansi(cancelled ? ANSI_YELLOW : ANSI_RED),
               cancelled ? "load cancelled" : "load failed", ansi(ANSI_NORMAL), message);
        return flush_line();
}

static int on_model_unloaded(MonitorContext *c, sd_bus_message *m, uint64_t now) {
        const char *name, *reason;
        int r;

        r = sd_bus_message_read(m, "ss", &name, &reason);
        if (r < 0)
                return r;
        if (c->filter && strcmp(name, c->filter) != 0)
                return 0;

        if (arg_json != JSON_OFF) {
                cJSON *j = json_event_new("unloaded", name);

                return json_event_emit(j, j && cJSON_AddStringToObject(j, "reason", reason), now);
        }

        print_time_prefix(now);
        printf("%s: unloaded (%s)\n", name, reason);
        return flush_line();
}

static int on_download_progress(MonitorContext *c, sd_bus_message *m, uint64_t now) {
        const char *name;
        uint64_t done, total;
        Milestone *milestone;
        int percent, r;

        r = sd_bus_message_read(m, "stt", &name, &done, &total);
        if (r < 0)
                return r;
        if (c->filter && strcmp(name, c->filter) != 0)
                return 0;

        milestone = milestone_get(&c->downloads, name);
        if (!milestone)
                return print_oom();
        /* A resumed download starts where the last one stopped: its first
         * report says so, whatever the milestone. */
        percent = total > 0 ? (int) (MIN(done, total) * 100 / total) : 100;
        if (milestone->percent >= 0)
                percent -= percent % MILESTONE_STEP;
        if (percent <= milestone->percent)
                return 0;
        milestone->percent = percent;

        if (arg_json != JSON_OFF) {
                cJSON *j = json_event_new("download-progress", name);

                return json_event_emit(j, j && json_add_u64(j, "bytes_done", done) &&
                                                  json_add_u64(j, "bytes_total", total) &&
                                                  cJSON_AddNumberToObject(j, "percent", percent), now);
        }

        print_time_prefix(now);
        printf("%s: downloading, %d%% (%s of %s)\n", name, percent, FORMAT_BYTES(done), FORMAT_BYTES(total));
        return flush_line();
}

static int on_download_finished(MonitorContext *c, sd_bus_message *m, uint64_t now) {
        const char *name, *result, *message, *event, *color;
        Milestone *milestone;
        int r;

        r = sd_bus_message_read(m, "sss", &name, &result, &message);
        if (r < 0)
                return r;
        if (c->filter && strcmp(name, c->filter) != 0)
                return 0;
        milestone = milestone_get(&c->downloads, name);
        if (milestone)
                milestone->percent = -1;        /* the next pull starts over */

        if (strcmp(result, "done") == 0)
                event = "pulled", color = ANSI_GREEN;
        else if (strcmp(result, "cancelled") == 0)
                event = "download-cancelled", color = ANSI_YELLOW;
        else
                event = "download-failed", color = ANSI_RED;

        if (arg_json != JSON_OFF) {
                cJSON *j = json_event_new(event, name);

                return json_event_emit(j, j && cJSON_AddStringToObject(j, "message", message), now);
        }

        print_time_prefix(now);
        if (strcmp(result, "done") == 0)
                printf("%s: %spulled%s into the store\n", name, ansi(color), ansi(ANSI_NORMAL));
        else
                printf("%s: %s%s%s: %s\n", name, ansi(color),
                       strcmp(result, "cancelled") == 0 ? "download cancelled" : "download failed",
                       ansi(ANSI_NORMAL), message);
        return flush_line();
}

/* Output that cannot be written ends the monitor (said once, already):
 * with status 0 if the reader went away, as when it quits a pipe. */
static int end_on_output_error(MonitorContext *c, int r) {
        if (r == -EPIPE) {
                clearerr(stdout);       /* nothing more to say about it at exit */
                return sd_event_exit(c->event, MPOOL_EXIT_SUCCESS);
        }
        return sd_event_exit(c->event, MPOOL_EXIT_FAILURE);
}

static int on_manager_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        static const struct {
                const char *member;
                int (*handler)(MonitorContext *c, sd_bus_message *m, uint64_t now);
        } handlers[] = {
                { "LoadProgress",  on_load_progress  },
                { "ModelLoaded",   on_model_loaded   },
                { "LoadFailed",    on_load_failed    },
                { "ModelUnloaded", on_model_unloaded },
                { "DownloadProgress", on_download_progress },
                { "DownloadFinished", on_download_finished },
        };
        MonitorContext *c = userdata;
        const char *member = sd_bus_message_get_member(m);
        int r;

        for (size_t i = 0; i < ELEMENTSOF(handlers); i++)
                if (member && strcmp(member, handlers[i].member) == 0) {
                        r = handlers[i].handler(c, m, now_realtime_usec());
                        if (ferror(stdout))
                                return end_on_output_error(c, r);
                        if (r < 0 && r != -ENOMEM)      /* out of memory was said already */
                                print_warning("Cannot show a %s signal: %s", member, strerror(-r));
                        return 0;
                }
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        MonitorContext *c = userdata;
        const char *name, *old_owner, *new_owner, *event;
        uint64_t now = now_realtime_usec();
        int r;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || strcmp(name, MPOOL_BUS_NAME) != 0)
                return 0;
        if (*new_owner)
                event = "daemon-started";
        else if (*old_owner)
                event = "daemon-stopped";
        else
                return 0;
        /* Its models were all unloaded (or will be announced again), its
         * downloads stopped. */
        milestones_reset(&c->loads);
        milestones_reset(&c->downloads);

        if (arg_json != JSON_OFF)
                r = json_event_emit(json_event_new(event, NULL), true, now);
        else {
                print_time_prefix(now);
                printf("mpoold %s\n", *new_owner ? "started" : "stopped");
                r = flush_line();
        }
        if (ferror(stdout))
                return end_on_output_error(c, r);
        return 0;
}

static int on_disconnected(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        MonitorContext *c = userdata;

        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected")) {
                print_error("Lost the connection to the bus.");
                return sd_event_exit(c->event, MPOOL_EXIT_UNREACHABLE);
        }
        return 0;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        MonitorContext *c = userdata;
        int sig = (int) si->ssi_signo;

        /* Ctrl-C is how a monitor is meant to end; being terminated or hung
         * up on is reported as shells report it. */
        return sd_event_exit(c->event, sig == SIGINT ? MPOOL_EXIT_SUCCESS : 128 + sig);
}

int verb_monitor(int argc, char *argv[]) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        MonitorContext c = { .filter = argc > 1 ? argv[1] : NULL };
        static const int handled_signals[] = { SIGINT, SIGTERM, SIGHUP };
        int r;

        if (c.filter) {
                r = check_model_name(c.filter);
                if (r != 0)
                        return r;
        }

        /* A reader that goes away ends us with EPIPE on write, not SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);
        r = block_signals(NULL, SIGINT, SIGTERM, SIGHUP, 0);
        if (r < 0)
                return print_error_errno(r, "Cannot block signals: %m");

        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = client_attach_event(bus, &event);
        if (r != 0)
                return r;
        c.event = event;

        /* Every signal of the manager interface, on its one object. */
        r = sd_bus_match_signal(bus, NULL, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, NULL,
                                on_manager_signal, &c);
        if (r < 0)
                return report_bus_error(NULL, r, "subscribe to the events of mpoold", NULL);
        r = sd_bus_add_match(bus, NULL,
                             "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                             "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" MPOOL_BUS_NAME "'",
                             on_name_owner_changed, &c);
        if (r < 0)
                return report_bus_error(NULL, r, "watch mpoold", NULL);
        r = sd_bus_add_filter(bus, NULL, on_disconnected, &c);
        if (r < 0)
                return print_error_errno(r, "Cannot watch the bus connection: %m");

        for (size_t i = 0; i < ELEMENTSOF(handled_signals); i++) {
                r = sd_event_add_signal(event, NULL, handled_signals[i], on_signal, &c);
                if (r < 0)
                        return print_error_errno(r, "Cannot watch signal %d: %m", handled_signals[i]);
        }

        /* Said once the subscriptions are in place: from here on nothing is missed. */
        if (!arg_quiet)
                fprintf(stderr, "Monitoring mpoold events%s%s. Press Ctrl-C to stop.\n", c.filter ? " of " : "",
                        strempty(c.filter));

        r = sd_event_loop(event);
        milestones_free(&c.loads);
        milestones_free(&c.downloads);
        if (r < 0)
                return print_error_errno(r, "The event loop failed: %m");
        return r;
}
