/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "progress-bar.h"

/* What load and pull share while they follow a long call: Ctrl-C and its
 * kin taken by the event loop (so that they cancel rather than kill), a
 * progress bar fed by the daemon's progress signal for the one model, and
 * an end with a message when mpoold or the bus goes away. The verb keeps
 * its own state around it and decides what an interruption means. */
typedef struct Follow {
        sd_event *event;
        sd_bus *bus;
        const char *name;               /* the model */
        const struct FollowWords *words;
        ProgressBar bar;
        bool show_progress;             /* a terminal, neither --quiet nor --json */
        bool cancelling;                /* interrupted once; progress is no longer drawn */
        int signal;                     /* the signal that interrupted us */
        uint64_t started_usec;
} Follow;

/* How the verb is named in what we print. */
typedef struct FollowWords {
        const char *action;             /* "load": "Cannot load NAME: …" */
        const char *bar;                /* "Loading": the progress bar */
        const char *doing;              /* "loading": "mpoold stopped while loading NAME." */
} FollowWords;

/* Sets up f for the model name: blocks the signals the loop will take,
 * connects, and attaches an event loop. Returns 0 or an exit status, with
 * the error printed. */
int follow_open(Follow *f, const char *name, const FollowWords *words);

/* Draws the bar from member (a signal "stt": name, done, total) and calls
 * handler for the further signals of the manager named in extra (NULL or a
 * NULL-terminated list of members) — all subscribed before the call is sent,
 * so that none is missed. Watches mpoold, and calls on_signal when SIGINT,
 * SIGTERM or SIGHUP arrives, with f->signal set and the bar cleared; a
 * second one ends the loop at once. Then start() sends the call, and the
 * loop runs until a handler exits it. Returns the exit status. */
typedef int (*follow_start_t)(Follow *f);
typedef int (*follow_interrupt_t)(Follow *f);
int follow_run(Follow *f, const char *member, const char *const *extra, sd_bus_message_handler_t handler,
               follow_interrupt_t on_interrupt, follow_start_t start);

/* Ends the loop with status, clearing the bar first. */
int follow_exit(Follow *f, int status);
/* Ends the loop as an interruption: 128 + the signal. */
int follow_exit_interrupted(Follow *f);

void follow_close(Follow *f);
