/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "blas.h"
#include "sigbus.h"
#include "bus-manager.h"
#include "config.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "service.h"
#include "mpool-bus.h"
#include "polkit.h"
#include "pool.h"
#include "reload.h"
#include "time-util.h"

#define DEFAULT_CONFIG_FILE "/etc/mpool/mpoold.conf"
#ifndef MPOOL_PULL_PATH
#define MPOOL_PULL_PATH "/usr/local/libexec/mpool/mpool-pull"
#endif

typedef enum BusKind {
        BUS_SYSTEM,
        BUS_USER,
        BUS_ADDRESS,
} BusKind;

static BusKind arg_bus_kind = BUS_SYSTEM;
static const char *arg_address = NULL;
static const char *arg_config = NULL;
static bool arg_polkit = true;

static void help(void) {
        printf("mpoold [OPTIONS...]\n\n"
               "Keeps machine-learning models in memory for the programs of this host,\n"
               "as the D-Bus service " MPOOL_BUS_NAME ".\n\n"
               "  -h --help             Show this help\n"
               "     --version          Show the version\n"
               "     --system           Serve on the system bus (default)\n"
               "     --user             Serve on the user's session bus\n"
               "     --address=ADDRESS  Serve on the bus at ADDRESS\n"
               "     --config=FILE      Read FILE instead of " DEFAULT_CONFIG_FILE "\n"
               "     --no-polkit        Authorize nothing with polkit (development buses\n"
               "                        only; refused with --system)\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_SYSTEM,
                ARG_USER,
                ARG_ADDRESS,
                ARG_CONFIG,
                ARG_NO_POLKIT,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "system", no_argument, NULL, ARG_SYSTEM },
                { "user", no_argument, NULL, ARG_USER },
                { "address", required_argument, NULL, ARG_ADDRESS },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "no-polkit", no_argument, NULL, ARG_NO_POLKIT },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("mpoold %s\n", MPOOL_VERSION);
                        return 0;
                case ARG_SYSTEM:
                        arg_bus_kind = BUS_SYSTEM;
                        break;
                case ARG_USER:
                        arg_bus_kind = BUS_USER;
                        break;
                case ARG_ADDRESS:
                        if (!*optarg)
                                return log_error_errno(EINVAL, "--address= needs a bus address.");
                        arg_bus_kind = BUS_ADDRESS;
                        arg_address = optarg;
                        break;
                case ARG_CONFIG:
                        arg_config = optarg;
                        break;
                case ARG_NO_POLKIT:
                        arg_polkit = false;
                        break;
                case '?':
                        return -EINVAL;
                default:
                        return log_error_errno(EINVAL, "Unhandled option %c.", c);
                }

        /* The system bus is shared by every user of the host: an open door
         * there must never be one flag away. */
        if (!arg_polkit && arg_bus_kind == BUS_SYSTEM)
                return log_error_errno(EPERM, "--no-polkit is for development buses (--user, --address=) only, "
                                       "never for the system bus.");

        if (optind < argc)
                return log_error_errno(EINVAL, "mpoold takes no arguments, but got '%s'.", argv[optind]);
        return 1;
}

static int bus_connect(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        switch (arg_bus_kind) {
        case BUS_SYSTEM:
                r = sd_bus_open_system_with_description(&bus, "mpoold");
                break;
        case BUS_USER:
                r = sd_bus_open_user_with_description(&bus, "mpoold");
                break;
        default:
                r = sd_bus_new(&bus);
                if (r < 0)
                        break;
                r = sd_bus_set_address(bus, arg_address);
                if (r < 0)
                        break;
                r = sd_bus_set_bus_client(bus, true);
                if (r < 0)
                        break;
                r = sd_bus_start(bus);
        }
        if (r < 0)
                return r;

        *ret = TAKE_PTR(bus);
        return 0;
}

/* The configuration file read at start-up, and read again on SIGHUP. */
static const char *config_path(void) {
        return arg_config ?: DEFAULT_CONFIG_FILE;
}

static void reload(Manager *m) {
        if (m->shutting_down) {
                log_notice("Received SIGHUP while shutting down; not reloading the configuration.");
                return;
        }

        /* systemd waits for READY=1 after RELOADING=1, and (from version
         * 253) wants to know when the reload began. */
        (void) sd_notifyf(false, "RELOADING=1\nSTATUS=Reloading the configuration.\nMONOTONIC_USEC=%" PRIu64,
                          now_monotonic_usec());
        (void) reload_config(m, config_path(), !!arg_config);   /* logged */
        (void) sd_notify(false, "READY=1");
        manager_update_status(m);
}

static void log_state_summary(Manager *m) {
        uint64_t now = now_monotonic_usec();

        log_info("State: %zu model(s) known, %u loaded, %" PRIu64 " of %" PRIu64 " bytes in use (%" PRIu64
                 " available on the host), idle timeout %" PRIi64 " s, %u peer(s) holding or waiting, up %" PRIu64
                 " s%s.", pool_size(&m->pool), pool_models_loaded(&m->pool), pool_memory_used(&m->pool),
                 m->pool.memory_limit, m->memory.available, m->pool.idle_timeout_sec, peers_count(&m->peers),
                 (now - m->started_monotonic) / USEC_PER_SEC, m->shutting_down ? ", shutting down" : "");

        POOL_FOREACH(model, &m->pool) {
                uint64_t deadline = pool_model_deadline(&m->pool, model);
                char expiry[64] = "no idle unload";

                /* Models that hold nothing and do nothing would only be noise. */
                if (model->state == MODEL_AVAILABLE && !model->pinned && model->holds == 0)
                        continue;

                if (deadline != UINT64_MAX)
                        snprintf(expiry, sizeof expiry, "idle unload in %" PRIu64 " s",
                                 (deadline > now ? deadline - now : 0) / USEC_PER_SEC);
                log_info("Model %s: %s, %" PRIu64 " bytes, %s, %u hold(s), %" PRIu64 " request(s), %s%s%s.",
                         model->name, model_state_to_string(model->state), model->memory_bytes,
                         model->pinned ? "pinned" : "not pinned", model->holds, model->requests_total, expiry,
                         model->error ? "; last error: " : "", strempty(model->error));
        }
}

/* SIGHUP reloads the configuration, SIGUSR1 logs a summary of the state,
 * SIGUSR2 is logged and otherwise ignored, SIGTERM and SIGINT stop. None of
 * them may end the daemon by its default action: that would drop every
 * model, pin and hold without a word. */
static const int handled_signals[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 };

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        switch (si->ssi_signo) {
        case SIGHUP:
                reload(m);
                break;
        case SIGUSR1:
                log_state_summary(m);
                break;
        case SIGUSR2:
                log_notice("Received SIGUSR2 from PID %" PRIu32 ", which mpoold does not use; ignoring it.",
                           si->ssi_pid);
                break;
        default:
                log_info("Received %s from PID %" PRIu32 ".", si->ssi_signo == SIGINT ? "SIGINT" : "SIGTERM",
                         si->ssi_pid);
                manager_begin_shutdown(m);
        }
        return 0;
}

static int run(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        _cleanup_free_ char *config_error = NULL;
        sigset_t mask;
        int r;

        log_setup();

        /* Blocked first, so that a signal sent while starting waits for the
         * event loop instead of ending the daemon by its default action, and
         * before any thread exists, so that every thread inherits the mask
         * and the signals reach sd-event's signalfd only. */
        sigemptyset(&mask);
        for (size_t i = 0; i < ELEMENTSOF(handled_signals); i++)
                sigaddset(&mask, handled_signals[i]);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Cannot block signals: %m");
        /* A write to a pipe nobody reads (stderr, once its reader is gone)
         * fails with EPIPE instead of ending the process. */
        if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
                return log_error_errno(errno, "Cannot ignore SIGPIPE: %m");

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r;

        r = manager_new(&m);
        if (r < 0)
                return log_oom();

        r = config_init_defaults(&m->config);
        if (r < 0)
                return log_oom();
        r = config_load_file(&m->config, arg_config ?: DEFAULT_CONFIG_FILE, !!arg_config, &config_error);
        if (r < 0)
                return log_error_errno(r, "Invalid configuration: %s", config_error ?: "cannot read it");

        /* Read once, at start-up: the tests run the helper from the build. */
        m->pull_helper = getenv("MPOOL_PULL_PATH") ?: MPOOL_PULL_PATH;
        if (m->pull_helper[0] != '/')
                return log_error_errno(-EINVAL, "MPOOL_PULL_PATH must be an absolute path.");

        /* Before any thread exists (it sets the environment OpenBLAS reads)
         * and after the signals are blocked, which its threads would
         * inherit. Without it the daemon still serves weights; computing
         * is what it cannot do. */
        r = blas_init(NULL);
        if (r < 0)
                log_warning_errno(r, "OpenBLAS is not available; models will be served but not run: %m");
        else
                m->blas_core = blas_core();

        /* After OpenBLAS is loaded, which may set handlers of its own, and
         * before any worker may read a mapped file that shrinks. */
        r = sigbus_install();
        if (r < 0)
                return log_error_errno(r, "Cannot handle SIGBUS: %m");

        r = manager_configure(m, &m->config);
        if (r < 0)
                return r;

        r = sd_event_default(&m->event);
        if (r < 0)
                return log_error_errno(r, "Cannot allocate the event loop: %m");
        for (size_t i = 0; i < ELEMENTSOF(handled_signals); i++) {
                r = sd_event_add_signal(m->event, NULL, handled_signals[i], on_signal, m);
                if (r < 0)
                        return log_error_errno(r, "Cannot watch for signal %d: %m", handled_signals[i]);
        }
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                return log_error_errno(r, "Cannot enable the watchdog: %m");

        r = manager_scan_store(m);
        if (r < 0)
                return r;
        r = manager_start(m);
        if (r < 0)
                return r;

        r = bus_connect(&m->bus);
        if (r < 0)
                return log_error_errno(r, "Cannot connect to the %s bus%s%s: %m",
                                       arg_bus_kind == BUS_USER ? "user" : arg_bus_kind == BUS_SYSTEM ? "system" : "",
                                       arg_address ? " at " : "", strempty(arg_address));
        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Cannot attach the bus to the event loop: %m");
        r = polkit_registry_new(m->bus, arg_polkit, &m->polkit);
        if (r < 0)
                return log_error_errno(r, "Cannot set up authorization with polkit: %m");
        if (!arg_polkit)
                log_warning("Authorization is off (--no-polkit): every peer on this bus may load, unload and "
                            "configure.");
        r = bus_manager_register(m);
        if (r < 0)
                return r;
        r = sd_bus_request_name(m->bus, MPOOL_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Cannot own the bus name %s (%m). Is another mpoold running, "
                                       "or does the bus policy not allow this user to own it?", MPOOL_BUS_NAME);

        log_info("mpoold %s serving %s.", MPOOL_VERSION, MPOOL_BUS_NAME);
        (void) sd_notify(false, "READY=1");
        manager_update_status(m);
        manager_preload(m);

        r = sd_event_loop(m->event);
        if (r < 0)
                return log_error_errno(r, "The event loop failed: %m");
        if (m->bus_lost)
                return -ENOTCONN;   /* already logged; a failure, so that the unit restarts */

        log_info("mpoold stopped.");
        return 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
