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

typedef struct PullContext {
        Follow follow;
        char *path;
        bool replied;           /* Pull replied: the download goes on, or the model was there */
} PullContext;

static const FollowWords pull_words = { .action = "pull", .bar = "Pulling", .doing = "pulling" };

static int print_done(PullContext *c) {
        const char *name = c->follow.name;

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *j = cJSON_CreateObject();

                if (!j || !cJSON_AddStringToObject(j, "name", name) ||
                    !cJSON_AddStringToObject(j, "path", strempty(c->path)) ||
                    !cJSON_AddStringToObject(j, "result", "done"))
                        return print_oom();
                return json_print(j, stdout);
        }
        if (!arg_quiet)
                printf("Pulled %s in %s.\n", name,
                       FORMAT_TIMESPAN(now_monotonic_usec() - c->follow.started_usec, USEC_PER_MSEC));
        return 0;
}

static int on_finished(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Follow *f = userdata;
        PullContext *c = container_of(f, PullContext, follow);
        const char *name, *result, *message;
        int r;

        if (sd_bus_message_read(m, "sss", &name, &result, &message) < 0)
                return 0;
        /* Before the reply, the reply tells the outcome. */
        if (strcmp(name, f->name) != 0 || !c->replied)
                return 0;
        progress_bar_clear(&f->bar);

        if (strcmp(result, "done") == 0) {
                if (f->cancelling)
                        return follow_exit_interrupted(f);
                r = print_done(c);
                return follow_exit(f, r < 0 ? MPOOL_EXIT_FAILURE : r);
        }
        if (strcmp(result, "cancelled") == 0) {
                if (!arg_quiet)
                        fprintf(stderr, "Cancelled pulling %s.\n", f->name);
                return f->cancelling ? follow_exit_interrupted(f) : follow_exit(f, MPOOL_EXIT_CANCELLED);
        }
        print_error("Cannot pull %s: %s", f->name, message);
        return f->cancelling ? follow_exit_interrupted(f) : follow_exit(f, MPOOL_EXIT_DOWNLOAD_FAILED);
}

static int on_pull_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        PullContext *c = userdata;
        Follow *f = &c->follow;
        const sd_bus_error *error = sd_bus_message_get_error(m);
        const char *path;
        int r;

        if (error) {
                if (f->cancelling && sd_bus_error_has_name(error, MPOOL_ERROR_CANCELLED)) {
                        if (!arg_quiet)
                                fprintf(stderr, "Cancelled pulling %s.\n", f->name);
                        return follow_exit_interrupted(f);
                }
                return follow_exit(f, report_bus_error(error, sd_bus_message_get_errno(m), "pull", f->name));
        }
        r = sd_bus_message_read(m, "o", &path);
        if (r < 0) {
                print_error_errno(r, "Cannot read the reply to Pull: %m");
                return follow_exit(f, MPOOL_EXIT_FAILURE);
        }
        c->path = strdup(path);
        if (!c->path) {
                print_oom();
                return follow_exit(f, MPOOL_EXIT_FAILURE);
        }
        /* DownloadFinished follows. */
        c->replied = true;
        return 0;
}

static int on_cancel_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Follow *f = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(m);

        /* Nothing under way: the Pull has not reached the daemon yet, or is
         * over; its reply or DownloadFinished ends it. */
        if (error && !sd_bus_error_has_name(error, MPOOL_ERROR_NOTHING_TO_CANCEL)) {
                report_bus_error(error, sd_bus_message_get_errno(m), "cancel the download of", f->name);
                return follow_exit_interrupted(f);
        }
        return 0;
}

static int send_cancel(Follow *f) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(f->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Cancel");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", f->name);
        if (r < 0)
                return r;
        return sd_bus_call_async(f->bus, NULL, m, on_cancel_reply, f, authorized_call_timeout());
}

static int on_interrupt(Follow *f) {
        int r;

        f->cancelling = true;
        if (!arg_quiet)
                fprintf(stderr, "Cancelling the download of %s...\n", f->name);
        r = send_cancel(f);
        if (r < 0) {
                print_error_errno(r, "Cannot cancel the download of %s: %m", f->name);
                return follow_exit_interrupted(f);
        }
        return 0;
}

static int start_pull(Follow *f) {
        PullContext *c = container_of(f, PullContext, follow);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(f->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Pull");
        if (r < 0)
                return r;
        if (arg_revision)
                r = sd_bus_message_append(m, "sa{sv}", f->name, 1, "revision", "s", arg_revision);
        else
                r = sd_bus_message_append(m, "sa{sv}", f->name, 0);
        if (r < 0)
                return r;
        /* Pull replies once the file list is known and space checked, after
         * the pulls queued before it: no timeout unless asked. */
        return sd_bus_call_async(f->bus, NULL, m, on_pull_reply, c, load_call_timeout());
}

int verb_pull(int argc, char *argv[]) {
        static const char *const finished[] = { "DownloadFinished", NULL };
        PullContext c = {};
        int r;

        r = check_model_name(argv[1]);
        if (r != 0)
                return r;

        r = follow_open(&c.follow, argv[1], &pull_words);
        if (r == 0)
                r = follow_run(&c.follow, "DownloadProgress", finished, on_finished, on_interrupt, start_pull);
        follow_close(&c.follow);
        free(c.path);
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
