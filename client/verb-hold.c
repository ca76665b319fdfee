/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "bus-util.h"
#include "client.h"
#include "mpool-bus.h"
#include "polkit-agent.h"
#include "terminal.h"

/* Exit statuses of a command that could not be run, as shells use them. */
#define EXIT_COMMAND_NOT_EXECUTABLE 126
#define EXIT_COMMAND_NOT_FOUND 127

/* What the command is told of the weights files it was handed (hold
 * --files), in the manner of systemd's LISTEN_FDS: descriptors from 3 on,
 * their number, their names in the model's folder separated by ':', and the
 * process they are meant for, so that a child of the command that inherits
 * the environment can tell they are not its own. */
#define FDS_START 3
#define ENV_FDS "MPOOL_FDS"
#define ENV_FDNAMES "MPOOL_FDNAMES"
#define ENV_FDS_PID "MPOOL_FDS_PID"
/* As the daemon's bound (one system bus message carries at most 16). */
#define REQUEST_FILES_MAX_CLIENT 16U

typedef struct HeldFiles {
        const char **names;     /* point into the reply */
        int *fds;               /* owned by the reply */
        size_t n;
        char *names_joined;
} HeldFiles;

typedef struct HoldContext {
        sd_event *event;
        pid_t pid;
        sigset_t original_mask;         /* ours before we blocked the signals we handle */
} HoldContext;

static const int forwarded_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };

static int on_child_exit(sd_event_source *s, const siginfo_t *si, void *userdata) {
        HoldContext *c = userdata;
        int status;

        if (si->si_code == CLD_EXITED)
                status = si->si_status;
        else
                status = 128 + si->si_status;   /* killed or dumped by that signal, as shells report it */
        c->pid = 0;
        return sd_event_exit(c->event, status);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        HoldContext *c = userdata;
        int sig = (int) si->ssi_signo;

        /* What the kernel sends (Ctrl-C, Ctrl-\, a hangup) goes to our whole
         * process group, the command included; what another process sends to
         * us is passed on. Either way we keep waiting: the hold is released
         * once the command is gone. A process may also signal our whole
         * group (kill -TERM -PGID); the command then gets that signal from
         * it and once more from us, as nothing tells such a signal apart from
         * one sent to us alone (see BUGS in mpool-client(1)). */
        if (si->ssi_code == SI_KERNEL)
                return 0;
        if (c->pid > 0)
                (void) kill(c->pid, sig);
        return 0;
}

/* In the child: the descriptors at FDS_START… in order, inheritable, and the
 * environment that says so. Returns 0 or a negative errno. */
static int pass_files(const HeldFiles *files) {
        char number[32];

        /* Out of the way first, above every target, so that moving one into
         * place cannot close another still to be moved. */
        for (size_t i = 0; i < files->n; i++) {
                int fd = fcntl(files->fds[i], F_DUPFD_CLOEXEC, FDS_START + (int) files->n);

                if (fd < 0)
                        return -errno;
                files->fds[i] = fd;
        }
        for (size_t i = 0; i < files->n; i++)
                if (dup2(files->fds[i], FDS_START + (int) i) < 0)   /* dup2 clears O_CLOEXEC */
                        return -errno;

        snprintf(number, sizeof number, "%zu", files->n);
        if (setenv(ENV_FDS, number, 1) < 0 || setenv(ENV_FDNAMES, files->names_joined, 1) < 0)
                return -errno;
        snprintf(number, sizeof number, "%i", (int) getpid());
        if (setenv(ENV_FDS_PID, number, 1) < 0)
                return -errno;
        return 0;
}

_Noreturn static void exec_command(char **command, const sigset_t *original_mask, const HeldFiles *files) {
        int r;

        if (files) {
                r = pass_files(files);
                if (r < 0) {
                        print_error_errno(r, "Cannot hand the weights files to %s: %m", command[0]);
                        _exit(EXIT_COMMAND_NOT_EXECUTABLE);
                }
        }

        /* The command starts as if we were not there: with the signal mask
         * we were started with. Dispositions we never changed (blocking is
         * all we did), so one ignored by whoever started us (nohup) stays
         * ignored, as they meant. */
        if (sigprocmask(SIG_SETMASK, original_mask, NULL) < 0) {
                print_error_errno(errno, "Cannot restore the signal mask for %s: %m", command[0]);
                _exit(EXIT_COMMAND_NOT_EXECUTABLE);
        }

        execvp(command[0], command);
        r = errno;
        print_error_errno(r, "Cannot run %s: %m", command[0]);
        _exit(r == ENOENT ? EXIT_COMMAND_NOT_FOUND : EXIT_COMMAND_NOT_EXECUTABLE);
}

static void held_files_done(HeldFiles *files) {
        free(files->names);
        free(files->fds);
        free(files->names_joined);
}

/* The reply to OpenFiles, read into files (which points into it). */
static int read_files(sd_bus_message *reply, HeldFiles *files) {
        size_t joined_length = 0;
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "(sh)");
        if (r < 0)
                return r;
        for (;;) {
                const char *name;
                int fd;

                r = sd_bus_message_read(reply, "(sh)", &name, &fd);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                /* ':' separates the names in the environment. */
                if (strchr(name, ':'))
                        return -EBADMSG;
                if (files->n >= REQUEST_FILES_MAX_CLIENT)
                        return -E2BIG;

                const char **names = reallocarray(files->names, files->n + 1, sizeof *names);
                if (!names)
                        return -ENOMEM;
                files->names = names;
                int *fds = reallocarray(files->fds, files->n + 1, sizeof *fds);
                if (!fds)
                        return -ENOMEM;
                files->fds = fds;
                files->names[files->n] = name;
                files->fds[files->n] = fd;
                files->n++;
                joined_length += strlen(name) + 1;
        }
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return r;

        files->names_joined = calloc(joined_length + 1, 1);
        if (!files->names_joined)
                return -ENOMEM;
        for (size_t i = 0; i < files->n; i++) {
                if (i > 0)
                        strcat(files->names_joined, ":");
                strcat(files->names_joined, files->names[i]);
        }
        return 0;
}

static int release(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, "Release", &error,
                               NULL, "s", name);
        if (r < 0)
                return report_bus_error(&error, r, "release", name);
        return 0;
}

int verb_hold(int argc, char *argv[]) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(held_files_done) HeldFiles files = {};
        const char *name = argv[1];
        HoldContext c = {};
        int status, r;

        r = check_model_name(name);
        if (r != 0)
                return r;

        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = sd_bus_message_new_method_call(bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           arg_files ? "OpenFiles" : "Acquire");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", name);
        if (r < 0)
                return print_error_errno(r, "Cannot build the call: %m");
        /* Acquire and OpenFiles load the model if need be: they wait like load does. */
        (void) polkit_agent_open();
        r = sd_bus_call(bus, m, load_call_timeout(), &error, &reply);
        /* Release needs no authorization: the command has the terminal to itself. */
        polkit_agent_close();
        if (r < 0)
                return report_bus_error(&error, r, "hold", name);
        if (arg_files) {
                r = read_files(reply, &files);
                if (r < 0) {
                        print_error_errno(r, "Cannot read the weights files of %s from the reply: %m", name);
                        (void) release(bus, name);
                        return MPOOL_EXIT_FAILURE;
                }
        }

        /* Only now: Ctrl-C while the model loads simply ends us (and the
         * daemon drops a hold that came too late with our connection). */
        r = block_signals(&c.original_mask, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, 0);
        if (r < 0) {
                print_error_errno(r, "Cannot block signals: %m");
                (void) release(bus, name);
                return r;
        }

        r = sd_event_default(&event);
        if (r < 0)
                return print_error_errno(r, "Cannot create the event loop: %m");
        c.event = event;

        /* Holds belong to our bus connection: it stays open, and if we die
         * mpoold drops them. The connection's socket is O_CLOEXEC, so the
         * command does not inherit it. */
        c.pid = fork();
        if (c.pid < 0) {
                r = print_error_errno(errno, "Cannot start %s: %m", argv[2]);
                (void) release(bus, name);
                return r;
        }
        if (c.pid == 0)
                exec_command(argv + 2, &c.original_mask, arg_files ? &files : NULL);

        r = sd_event_add_child(event, NULL, c.pid, WEXITED, on_child_exit, &c);
        if (r < 0) {
                print_error_errno(r, "Cannot watch the command: %m");
                (void) kill(c.pid, SIGTERM);
                (void) waitpid(c.pid, NULL, 0);
                (void) release(bus, name);
                return r;
        }
        for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++) {
                r = sd_event_add_signal(event, NULL, forwarded_signals[i], on_signal, &c);
                if (r < 0)
                        return print_error_errno(r, "Cannot watch signal %d: %m", forwarded_signals[i]);
        }

        status = sd_event_loop(event);
        if (status < 0)
                return print_error_errno(status, "The event loop failed: %m");

        /* The command's status is ours; a failure to release is only reported
         * (the hold goes with our connection anyway). */
        (void) release(bus, name);
        return status;
}
