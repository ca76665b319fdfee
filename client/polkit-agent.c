/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "format.h"
#include "macro.h"
#include "polkit-agent.h"
#include "terminal.h"

#define POLKIT_AGENT_BINARY_PATH "/usr/bin/pkttyagent"
/* The fd the agent closes once it has registered with polkit. */
#define POLKIT_AGENT_NOTIFY_FD 3
#define POLKIT_AGENT_NOTIFY_FD_TEXT "3"
/* An agent slower than this to register (polkitd hung?) is not waited for:
 * the call goes on, and polkit may still find the agent when it asks. */
#define POLKIT_AGENT_READY_TIMEOUT_USEC (25 * USEC_PER_SEC)

static pid_t agent_pid = 0;

/* In the child: becomes pkttyagent with notify_fd as its --notify-fd. */
_Noreturn static void exec_agent(int notify_fd, pid_t parent) {
        struct sigaction default_action = { .sa_handler = SIG_DFL };
        sigset_t none;
        int fd;

        /* The agent must not outlive us, even if we are killed. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0)
                _exit(EXIT_FAILURE);
        if (getppid() != parent)        /* we died before that took effect */
                _exit(EXIT_FAILURE);

        /* Our verbs block signals for their event loops, and an ignored
         * SIGTERM would keep polkit_agent_close() waiting: the agent starts
         * with every signal at its default and none blocked. */
        for (int sig = 1; sig < NSIG; sig++)
                if (sig != SIGKILL && sig != SIGSTOP)
                        (void) sigaction(sig, &default_action, NULL);   /* fails only for numbers libc reserves */
        sigemptyset(&none);
        if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
                _exit(EXIT_FAILURE);

        /* Out of the way of the standard fds before they may be replaced;
         * this copy is not close-on-exec. */
        fd = fcntl(notify_fd, F_DUPFD, POLKIT_AGENT_NOTIFY_FD);
        if (fd < 0)
                _exit(EXIT_FAILURE);

        /* The prompt goes to the terminal, even when our output is piped. */
        if (!isatty(STDOUT_FILENO) || !isatty(STDERR_FILENO)) {
                int tty = open("/dev/tty", O_WRONLY | O_NOCTTY | O_CLOEXEC);

                if (tty < 0)
                        _exit(EXIT_FAILURE);
                if (!isatty(STDOUT_FILENO) && dup2(tty, STDOUT_FILENO) < 0)
                        _exit(EXIT_FAILURE);
                if (!isatty(STDERR_FILENO) && dup2(tty, STDERR_FILENO) < 0)
                        _exit(EXIT_FAILURE);
        }

        if (fd != POLKIT_AGENT_NOTIFY_FD) {
                if (dup2(fd, POLKIT_AGENT_NOTIFY_FD) < 0)
                        _exit(EXIT_FAILURE);
                close(fd);
        }
        /* Our own fds are all close-on-exec; those we inherited need not be. */
        (void) close_range(POLKIT_AGENT_NOTIFY_FD + 1, ~0U, 0);        /* ENOSYS before Linux 5.9 */

        execl(POLKIT_AGENT_BINARY_PATH, POLKIT_AGENT_BINARY_PATH, "--notify-fd", POLKIT_AGENT_NOTIFY_FD_TEXT,
              "--fallback", (char *) NULL);
        _exit(EXIT_FAILURE);
}

/* Until the agent closes its end of the pipe: it has registered, or it
 * failed and exited. */
static void wait_until_ready(int fd) {
        uint64_t deadline = now_monotonic_usec() + POLKIT_AGENT_READY_TIMEOUT_USEC;
        struct pollfd p = { .fd = fd, .events = POLLIN };

        for (;;) {
                uint64_t now = now_monotonic_usec();
                int r;

                if (now >= deadline) {
                        print_warning("The polkit agent did not start in time; going on without waiting for it.");
                        return;
                }
                r = poll(&p, 1, (int) ((deadline - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC));
                if (r > 0)
                        return;
                if (r < 0 && errno != EINTR) {
                        print_warning("Cannot wait for the polkit agent: %m");
                        return;
                }
        }
}

int polkit_agent_open(void) {
        static bool close_at_exit = false;
        _cleanup_close_ int read_fd = -1;
        pid_t parent = getpid(), pid;
        int fds[2];

        if (agent_pid > 0)
                return 1;
        /* The password is typed on stdin; polkit asks on the host it runs on,
         * which for --host is not ours; and it never asks root. */
        if (!arg_ask_password || arg_transport == TRANSPORT_REMOTE || geteuid() == 0 || !isatty(STDIN_FILENO))
                return 0;
        if (access(POLKIT_AGENT_BINARY_PATH, X_OK) < 0)
                return 0;       /* not installed: polkit asks through another agent, or refuses */

        if (!close_at_exit) {
                if (atexit(polkit_agent_close) != 0) {
                        print_warning("Cannot start the polkit agent: out of memory.");
                        return -ENOMEM;
                }
                close_at_exit = true;
        }

        if (pipe2(fds, O_CLOEXEC) < 0) {
                int r = negative_errno();

                print_warning("Cannot start the polkit agent: %m");
                return r;
        }
        read_fd = fds[0];

        pid = fork();
        if (pid < 0) {
                int r = negative_errno();

                close(fds[1]);
                print_warning("Cannot start the polkit agent: %m");
                return r;
        }
        if (pid == 0)
                exec_agent(fds[1], parent);

        agent_pid = pid;
        /* Only the agent holds the write end now: its closing is the news. */
        close(fds[1]);
        wait_until_ready(read_fd);
        return 1;
}

void polkit_agent_close(void) {
        if (agent_pid <= 0)
                return;

        /* SIGCONT: it may have been stopped along with us (Ctrl-Z). */
        (void) kill(agent_pid, SIGTERM);
        (void) kill(agent_pid, SIGCONT);
        while (waitpid(agent_pid, NULL, 0) < 0 && errno == EINTR)
                ;
        agent_pid = 0;
}
