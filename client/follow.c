/* SPDX-License-Identifier: MIT */
#include <signal.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "follow.h"
#include "mpool-bus.h"
#include "polkit-agent.h"
#include "terminal.h"
#include "time-util.h"

static const int interrupting_signals[] = { SIGINT, SIGTERM, SIGHUP };

int follow_open(Follow *f, const char *name, const FollowWords *words) {
        int r;

        *f = (Follow) {
                .name = name,
                .words = words,
                .bar = { .verb = words->bar, .name = name },
                .show_progress = on_tty() && !arg_quiet && arg_json == JSON_OFF,
        };

        /* Taken by the event loop: Ctrl-C cancels rather than killing us. */
        r = block_signals(NULL, SIGINT, SIGTERM, SIGHUP, 0);
        if (r < 0)
                return print_error_errno(r, "Cannot block signals: %m");
        r = client_connect(&f->bus);
        if (r != 0)
                return r;
        return client_attach_event(f->bus, &f->event);
}

void follow_close(Follow *f) {
        progress_bar_clear(&f->bar);
        f->bus = sd_bus_flush_close_unref(f->bus);
        f->event = sd_event_unref(f->event);
}

int follow_exit(Follow *f, int status) {
        progress_bar_clear(&f->bar);
        return sd_event_exit(f->event, status);
}

int follow_exit_interrupted(Follow *f) {
        return follow_exit(f, 128 + f->signal);
}

static int on_progress(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Follow *f = userdata;
        const char *name;
        uint64_t done, total;

        if (sd_bus_message_read(m, "stt", &name, &done, &total) < 0)
                return 0;       /* not the signal the contract describes: nothing to show */
        if (strcmp(name, f->name) != 0 || !f->show_progress || f->cancelling)
                return 0;
        progress_bar_draw(&f->bar, done, total);
        return 0;
}

typedef struct Interrupt {
        Follow *follow;
        follow_interrupt_t handler;
} Interrupt;

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Interrupt *i = userdata;
        Follow *f = i->follow;

        f->signal = (int) si->ssi_signo;
        progress_bar_clear(&f->bar);
        if (f->cancelling)      /* asked twice: stop waiting */
                return follow_exit_interrupted(f);
        return i->handler(f);
}

static void on_daemon_gone(void *userdata, bool bus_lost) {
        Follow *f = userdata;

        progress_bar_clear(&f->bar);
        if (bus_lost)
                print_error("Lost the connection to the bus while %s %s.", f->words->doing, f->name);
        else
                print_error("mpoold stopped while %s %s.", f->words->doing, f->name);
        sd_event_exit(f->event, MPOOL_EXIT_UNREACHABLE);
}

static int subscribe(Follow *f, const char *member, sd_bus_message_handler_t handler) {
        int r;

        r = sd_bus_match_signal(f->bus, NULL, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, member,
                                handler, f);
        if (r < 0)
                return report_bus_error(NULL, r, "subscribe to the progress of", f->name);
        return 0;
}

int follow_run(Follow *f, const char *member, const char *const *extra, sd_bus_message_handler_t handler,
               follow_interrupt_t on_interrupt, follow_start_t start) {
        Interrupt interrupt = { .follow = f, .handler = on_interrupt };
        int r;

        r = subscribe(f, member, on_progress);
        if (r != 0)
                return r;
        for (const char *const *e = extra; e && *e; e++) {
                r = subscribe(f, *e, handler);
                if (r != 0)
                        return r;
        }
        r = bus_watch_daemon_gone(f->bus, on_daemon_gone, f);
        if (r < 0)
                return report_bus_error(NULL, r, "watch mpoold for", f->name);

        for (size_t i = 0; i < ELEMENTSOF(interrupting_signals); i++) {
                r = sd_event_add_signal(f->event, NULL, interrupting_signals[i], on_signal, &interrupt);
                if (r < 0)
                        return print_error_errno(r, "Cannot watch signal %d: %m", interrupting_signals[i]);
        }

        (void) polkit_agent_open();
        f->started_usec = now_monotonic_usec();
        r = start(f);
        if (r < 0)
                return report_bus_error(NULL, r, f->words->action, f->name);

        r = sd_event_loop(f->event);
        progress_bar_clear(&f->bar);
        if (r < 0)
                return print_error_errno(r, "The event loop failed: %m");
        return r;
}
