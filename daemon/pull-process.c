/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "pull-process.h"
#include "safetensors.h"

/* The helper's token descriptor, as its command line names it. */
#define TOKEN_FD 3

/* How often the helper's exit is looked for where there is no pidfd. */
#define EXIT_POLL_USEC (50 * UINT64_C(1000))

/* All the helper gets of the daemon's environment: its log level, and the
 * proxy settings libcurl reads (it ignores an upper-case HTTP_PROXY, which
 * a CGI-style caller could set). An administrator sets those for the
 * service (Environment= in a drop-in); anything else the daemon happened
 * to inherit stays with it. A sanitizer build also passes on the
 * sanitizers' options, so that the helper's reports land where the
 * daemon's do. */
static const char *const helper_environment[] = {
        "MPOOL_LOG_LEVEL",
        "http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY",
#ifdef __SANITIZE_ADDRESS__
        "ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS",
#endif
};

struct PullProcess {
        PullCallbacks callbacks;
        void *userdata;
        pid_t pid;
        int pidfd;
        int stdin_fd;             /* ours to write GO or CANCEL to */
        int stdout_fd;
        sd_event_source *stdout_source;
        sd_event_source *exit_source;
        char buffer[PULL_LINE_MAX + 1];
        size_t buffered;
        PullPlan plan;
        bool inspect;
        PullInspection inspection;
        bool total_seen;          /* the plan is complete */
        bool ready_seen;
        bool answered;
        bool stdout_closed;
        bool exited;
        int exit_status;          /* as waitid() tells it */
        bool finished;
        bool broken;              /* said something it must not: the rest is not read */
        int signal_sent;          /* the signal we stopped it with, 0 if none */
        /* The outcome the lines (or a cancellation) told first, until the
         * exit confirms it. */
        bool outcome_set;
        int error;
        char *failure;
        char *message;
};

void pull_plan_done(PullPlan *plan) {
        for (size_t i = 0; i < plan->n_files; i++)
                free(plan->files[i].name);
        free(plan->files);
        *plan = (PullPlan) {};
}

static bool is_hex(const char *s, size_t length) {
        if (strlen(s) != length)
                return false;
        for (size_t i = 0; i < length; i++)
                if (!strchr("0123456789abcdef", s[i]))
                        return false;
        return true;
}

/* A relative name inside the model's folder: at most two segments of
 * [A-Za-z0-9._-], none "." or "..". */
static bool file_name_is_valid(const char *name) {
        size_t segments = 1, length = strlen(name);
        const char *segment = name;

        if (length == 0 || length > 255)
                return false;
        for (const char *p = name;; p++) {
                if (*p == '/' || *p == '\0') {
                        size_t n = (size_t) (p - segment);

                        if (n == 0 || (n == 1 && segment[0] == '.') ||
                            (n == 2 && segment[0] == '.' && segment[1] == '.'))
                                return false;
                        if (*p == '\0')
                                return true;
                        if (++segments > 2)
                                return false;
                        segment = p + 1;
                        continue;
                }
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", *p))
                        return false;
        }
}

static bool has_control(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < ' ' || *s == 0x7f)
                        return true;
        return false;
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;

        if (!s || *s < '0' || *s > '9')
                return -EBADMSG;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || *end != '\0')
                return -EBADMSG;
        *ret = v;
        return 0;
}

/* Splits off the next space-separated word; the rest stays in *p. */
static char *next_word(char **p) {
        char *word = *p, *space;

        if (!word)
                return NULL;
        space = strchr(word, ' ');
        if (space) {
                *space = '\0';
                *p = space + 1;
        } else
                *p = NULL;
        return word;
}

static int parse_file(char *rest, PullPlan *plan) {
        const char *size_word = next_word(&rest), *sha = next_word(&rest), *name = rest;
        PullFile *files;
        uint64_t size;

        if (parse_u64(size_word, &size) < 0 || !sha || !name || !file_name_is_valid(name))
                return -EBADMSG;
        if (strcmp(sha, "-") != 0 && !is_hex(sha, 64))
                return -EBADMSG;
        if (plan->n_files >= PULL_FILES_MAX)
                return -EBADMSG;
        for (size_t i = 0; i < plan->n_files; i++)
                if (strcmp(plan->files[i].name, name) == 0)
                        return -EBADMSG;

        files = reallocarray(plan->files, plan->n_files + 1, sizeof *files);
        if (!files)
                return -ENOMEM;
        plan->files = files;
        files[plan->n_files] = (PullFile) { .size = size, .name = strdup(name) };
        if (!files[plan->n_files].name)
                return -ENOMEM;
        if (strcmp(sha, "-") != 0)
                memcpy(files[plan->n_files].sha256, sha, 65);
        plan->n_files++;
        return 0;
}

int pull_line_parse(const char *line, PullPlan *plan, uint64_t *ret_done, uint64_t *ret_total,
                    char **ret_failure, char **ret_message) {
        _cleanup_free_ char *copy = strdup(line);
        char *rest = copy, *word;
        uint64_t a, b;
        int r;

        if (!copy)
                return -ENOMEM;
        if (has_control(line))
                return -EBADMSG;
        word = next_word(&rest);

        if (strcmp(word, "COMMIT") == 0) {
                if (!rest || !is_hex(rest, 40) || plan->commit[0])
                        return -EBADMSG;
                memcpy(plan->commit, rest, 41);
                return PULL_LINE_COMMIT;
        }
        if (strcmp(word, "FILE") == 0) {
                r = parse_file(rest, plan);
                return r < 0 ? r : PULL_LINE_FILE;
        }
        if (strcmp(word, "TOTAL") == 0) {
                if (parse_u64(next_word(&rest), &a) < 0 || parse_u64(rest, &b) < 0 || b != plan->n_files)
                        return -EBADMSG;
                plan->total_bytes = a;
                return PULL_LINE_TOTAL;
        }
        if (strcmp(word, "READY") == 0)
                return rest ? -EBADMSG : PULL_LINE_READY;
        if (strcmp(word, "DONE") == 0)
                return rest ? -EBADMSG : PULL_LINE_DONE;
        if (strcmp(word, "PROGRESS") == 0) {
                if (parse_u64(next_word(&rest), &a) < 0 || parse_u64(rest, &b) < 0 || a > b)
                        return -EBADMSG;
                *ret_done = a;
                *ret_total = b;
                return PULL_LINE_PROGRESS;
        }
        if (strcmp(word, "FAILED") == 0) {
                const char *kind = next_word(&rest);

                if (!kind || !rest || strspn(kind, "abcdefghijklmnopqrstuvwxyz-") != strlen(kind))
                        return -EBADMSG;
                *ret_failure = strdup(kind);
                *ret_message = strdup(rest);
                if (!*ret_failure || !*ret_message) {
                        free(*ret_failure);
                        free(*ret_message);
                        *ret_failure = *ret_message = NULL;
                        return -ENOMEM;
                }
                return PULL_LINE_FAILED;
        }
        return -EBADMSG;
}

/* TENSORS, PARAMETERS, DTYPE…, MEMORY: each figure as the helper counted
 * it from headers the daemon's own validator accepted; what can be checked
 * without them is checked here. */
enum {
        STAGE_NONE,
        STAGE_TENSORS,
        STAGE_PARAMETERS,         /* DTYPE lines follow */
};
_Static_assert(PULL_INSPECTION_COMPLETE > STAGE_PARAMETERS, "the last stage comes last");

int pull_inspection_line_parse(const char *line, PullInspection *inspection, uint64_t plan_bytes_max) {
        _cleanup_free_ char *copy = strdup(line);
        char *rest = copy, *word;
        uint64_t v, sum = 0;

        if (!copy)
                return -ENOMEM;
        if (has_control(line))
                return -EBADMSG;
        word = next_word(&rest);
        for (size_t i = 0; i < inspection->n_dtypes; i++)
                sum += inspection->dtypes[i].parameters;   /* bounded by parameters as each was added */

        if (strcmp(word, "TENSORS") == 0) {
                if (inspection->stage != STAGE_NONE || parse_u64(rest, &v) < 0)
                        return -EBADMSG;
                inspection->tensors = v;
                inspection->stage = STAGE_TENSORS;
                return PULL_LINE_TENSORS;
        }
        if (strcmp(word, "PARAMETERS") == 0) {
                if (inspection->stage != STAGE_TENSORS || parse_u64(rest, &v) < 0)
                        return -EBADMSG;
                inspection->parameters = v;
                inspection->stage = STAGE_PARAMETERS;
                return PULL_LINE_PARAMETERS;
        }
        if (strcmp(word, "DTYPE") == 0) {
                const char *name = next_word(&rest);
                PullDtype *d;

                if (inspection->stage != STAGE_PARAMETERS || !name || parse_u64(rest, &v) < 0)
                        return -EBADMSG;
                /* A dtype the daemon's reader knows: never a free-form string. */
                if (strlen(name) >= sizeof d->name || safetensors_dtype_bits(name) == 0)
                        return -EBADMSG;
                /* Sorted, each once, within PARAMETERS, one per tensor at most. */
                if (inspection->n_dtypes >= PULL_DTYPES_MAX || inspection->n_dtypes >= inspection->tensors)
                        return -EBADMSG;
                if (inspection->n_dtypes > 0 && strcmp(inspection->dtypes[inspection->n_dtypes - 1].name, name) >= 0)
                        return -EBADMSG;
                if (v > inspection->parameters - sum)
                        return -EBADMSG;
                d = &inspection->dtypes[inspection->n_dtypes++];
                memcpy(d->name, name, strlen(name) + 1);
                d->parameters = v;
                return PULL_LINE_DTYPE;
        }
        if (strcmp(word, "MEMORY") == 0) {
                if (inspection->stage != STAGE_PARAMETERS || parse_u64(rest, &v) < 0)
                        return -EBADMSG;
                /* Every parameter has its dtype, and tensors have one at least. */
                if (sum != inspection->parameters || (inspection->tensors > 0) != (inspection->n_dtypes > 0))
                        return -EBADMSG;
                if (v > plan_bytes_max)
                        return -EBADMSG;
                inspection->memory_bytes = v;
                inspection->stage = PULL_INSPECTION_COMPLETE;
                return PULL_LINE_MEMORY;
        }
        return -ENOMSG;
}

/* The most memory the plan's files can take once mapped: each rounded up to
 * pages, as the daemon counts a mapping. */
static uint64_t plan_bytes_max(const PullPlan *plan) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE), sum = 0;

        for (size_t i = 0; i < plan->n_files; i++) {
                uint64_t size = plan->files[i].size, pages = size / page + (size % page != 0);

                if (__builtin_mul_overflow(pages, page, &size) || __builtin_add_overflow(sum, size, &sum))
                        return UINT64_MAX;
        }
        return sum;
}

/* Stops the helper with sig, remembered: its death by that signal is then
 * what was asked for, not news worth a warning. */
static void signal_helper(PullProcess *p, int sig) {
        if (p->pid <= 0 || p->exited)
                return;
        if (kill(p->pid, sig) < 0) {
                if (errno != ESRCH)
                        log_warning_errno(errno, "Cannot stop the download helper %d: %m", (int) p->pid);
                return;
        }
        p->signal_sent = sig;
}

static void kill_helper(PullProcess *p) {
        signal_helper(p, SIGKILL);
}

static void set_outcome(PullProcess *p, int error, const char *failure, const char *message) {
        if (p->outcome_set)
                return;   /* the first word stands */
        p->outcome_set = true;
        p->error = error;
        p->failure = failure ? strdup(failure) : NULL;
        p->message = message ? strdup(message) : NULL;
}

static void maybe_finish(PullProcess *p) {
        int error;

        if (p->finished || !p->exited || !p->stdout_closed)
                return;
        p->finished = true;

        /* DONE counts only from a helper that then exited cleanly. */
        if (p->outcome_set && p->error == 0 && p->exit_status == 0)
                error = 0;
        else if (p->outcome_set && p->error < 0)
                error = p->error;
        else {
                error = -EPROTO;
                free(p->failure);
                free(p->message);
                p->failure = strdup("internal");
                p->message = strdup("The download helper stopped without saying why.");
        }
        p->callbacks.finished(p, error, error < 0 ? p->failure : NULL, error < 0 ? p->message : NULL,
                              p->userdata);
}

/* The helper said something it must not: it is stopped, and the download
 * fails with a word about it rather than anything it said. */
static void protocol_violation(PullProcess *p, const char *what) {
        if (p->broken)
                return;
        p->broken = true;
        log_warning("The download helper %d broke the protocol: %s; stopping it.", (int) p->pid, what);
        set_outcome(p, -EPROTO, "protocol", "The download helper misbehaved and was stopped.");
        kill_helper(p);
}

static void handle_line(PullProcess *p, const char *line) {
        _cleanup_free_ char *failure = NULL, *message = NULL;
        uint64_t done = 0, total = 0;
        int kind = -ENOMSG;

        if (p->inspect) {
                kind = pull_inspection_line_parse(line, &p->inspection, plan_bytes_max(&p->plan));
                if (kind >= 0 && !p->total_seen)
                        return protocol_violation(p, "what the weights hold before the plan");
                if (kind >= 0)
                        return;
        }
        if (kind == -ENOMSG)
                kind = pull_line_parse(line, &p->plan, &done, &total, &failure, &message);
        if (kind == -ENOMEM) {
                log_oom();
                set_outcome(p, -ENOMEM, "internal", "Out of memory.");
                kill_helper(p);
                return;
        }
        if (kind < 0)
                return protocol_violation(p, "a line that is not in the protocol");

        switch (kind) {
        case PULL_LINE_COMMIT:
        case PULL_LINE_FILE:
        case PULL_LINE_TOTAL:
                if (p->total_seen)
                        return protocol_violation(p, "the plan went on after TOTAL");
                p->total_seen = kind == PULL_LINE_TOTAL;
                return;
        case PULL_LINE_READY:
                if (p->inspect)
                        return protocol_violation(p, "READY in an inspection");
                if (p->ready_seen || !p->plan.commit[0] || p->plan.n_files == 0 || !p->total_seen)
                        return protocol_violation(p, "READY without a complete plan");
                p->ready_seen = true;
                p->callbacks.ready(p, &p->plan, p->userdata);
                return;
        case PULL_LINE_PROGRESS:
                if (!p->answered)
                        return protocol_violation(p, "progress before GO");
                if (p->callbacks.progress)
                        p->callbacks.progress(p, done, total, p->userdata);
                return;
        case PULL_LINE_DONE:
                if (p->inspect ? p->inspection.stage != PULL_INSPECTION_COMPLETE || !p->plan.commit[0]
                               : !p->answered)
                        return protocol_violation(p, p->inspect ? "DONE before MEMORY" : "DONE before GO");
                set_outcome(p, 0, NULL, NULL);
                return;
        case PULL_LINE_FAILED:
                set_outcome(p, strcmp(failure, "cancelled") == 0 ? -ECANCELED : -EIO, failure, message);
                return;
        }
}

static int on_stdout(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        PullProcess *p = userdata;

        for (;;) {
                ssize_t n = read(fd, p->buffer + p->buffered, PULL_LINE_MAX - p->buffered);
                char *start, *newline;

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        log_warning_errno(errno, "Cannot read from the download helper: %m");
                        n = 0;   /* as the end: the helper's exit says the rest */
                }
                if (n == 0) {
                        p->stdout_closed = true;
                        p->stdout_source = sd_event_source_disable_unref(p->stdout_source);
                        maybe_finish(p);
                        return 0;
                }
                p->buffered += (size_t) n;

                start = p->buffer;
                while ((newline = memchr(start, '\n', p->buffered - (size_t) (start - p->buffer)))) {
                        *newline = '\0';
                        if (p->broken)
                                ;   /* drained until the end, not read */
                        else if (memchr(start, '\0', (size_t) (newline - start)))
                                protocol_violation(p, "a NUL byte");
                        else
                                handle_line(p, start);
                        start = newline + 1;
                }
                p->buffered -= (size_t) (start - p->buffer);
                memmove(p->buffer, start, p->buffered);
                if (p->buffered >= PULL_LINE_MAX) {
                        protocol_violation(p, "a line longer than the protocol allows");
                        p->buffered = 0;
                }
        }
}

/* 1 once the helper has exited (and is collected), 0 while it runs. */
static int collect_helper(PullProcess *p) {
        siginfo_t info = {};

        if (waitid(P_PID, (id_t) p->pid, &info, WEXITED | WNOHANG) < 0)
                return log_error_errno(errno, "Cannot collect the download helper %d: %m", (int) p->pid);
        if (info.si_pid == 0)
                return 0;   /* not yet */

        p->exited = true;
        p->exit_status = info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
        if (info.si_code != CLD_EXITED) {
                /* A cancelled download or inspection, or a helper stopped
                 * for breaking the protocol (which was warned about). */
                if (info.si_code == CLD_KILLED && info.si_status == p->signal_sent)
                        log_debug("The download helper %d stopped on our signal %d.", (int) p->pid,
                                  info.si_status);
                else
                        log_warning("The download helper %d was killed by signal %d.", (int) p->pid,
                                    info.si_status);
        }
        p->exit_source = sd_event_source_disable_unref(p->exit_source);
        maybe_finish(p);
        return 1;
}

static int on_helper_exit(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        (void) collect_helper(userdata);
        return 0;
}

static int on_exit_poll(sd_event_source *s, uint64_t usec, void *userdata) {
        int r;

        r = collect_helper(userdata);
        if (r != 0)
                return 0;
        r = sd_event_source_set_time_relative(s, EXIT_POLL_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Cannot wait for the download helper any more: %m");
        return 0;
}

/* Between fork() and exec(): only async-signal-safe calls. */
__attribute__((noreturn)) static void exec_helper(const PullArguments *args, int stdin_fd, int stdout_fd,
                                                   char **envp) {
        char endpoint[PATH_MAX], repo[256], revision[256], staging[PATH_MAX];
        char *argv[9] = { (char *) args->helper, endpoint, repo, revision };
        size_t n = 4;
        sigset_t none;

        if (args->staging)
                argv[n++] = staging;
        if (args->inspect)
                argv[n++] = (char *) "--inspect";
        if (args->token_fd >= 0)
                argv[n++] = (char *) "--token-fd=3";
        if (args->test_argument)
                argv[n++] = (char *) args->test_argument;
        argv[n] = NULL;

        /* The daemon blocks the signals its event loop takes: the helper
         * starts with none blocked and dies with its parent. */
        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);
        (void) signal(SIGPIPE, SIG_DFL);
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);

        if (dup2(stdin_fd, STDIN_FILENO) < 0 || dup2(stdout_fd, STDOUT_FILENO) < 0)
                _exit(127);
        if (args->token_fd >= 0) {
                /* dup2() onto itself would keep O_CLOEXEC. */
                if (args->token_fd == TOKEN_FD ? fcntl(TOKEN_FD, F_SETFD, 0) < 0
                                               : dup2(args->token_fd, TOKEN_FD) < 0)
                        _exit(127);
        }
        /* Nothing else of the daemon's goes along. */
        if (syscall(SYS_close_range, args->token_fd >= 0 ? TOKEN_FD + 1 : TOKEN_FD, ~0U, 0) < 0)
                _exit(127);

        if (snprintf(endpoint, sizeof endpoint, "--endpoint=%s", args->endpoint) >= (int) sizeof endpoint ||
            snprintf(repo, sizeof repo, "--repo=%s", args->repo) >= (int) sizeof repo ||
            snprintf(revision, sizeof revision, "--revision=%s", args->revision) >= (int) sizeof revision ||
            (args->staging &&
             snprintf(staging, sizeof staging, "--staging=%s", args->staging) >= (int) sizeof staging))
                _exit(127);
        execve(args->helper, argv, envp);
        _exit(127);
}

/* The entries of environ the helper keeps, as pointers into environ:
 * nothing is allocated, and the child (a copy of this process) execs with
 * them. */
static void helper_envp(char *envp[static ELEMENTSOF(helper_environment) + 1]) {
        size_t n = 0;

        for (char **e = environ; e && *e; e++)
                for (size_t i = 0; i < ELEMENTSOF(helper_environment); i++) {
                        size_t length = strlen(helper_environment[i]);

                        if (strncmp(*e, helper_environment[i], length) == 0 && (*e)[length] == '=') {
                                if (n < ELEMENTSOF(helper_environment))
                                        envp[n++] = *e;
                                break;
                        }
                }
        envp[n] = NULL;
}

int pull_process_start(sd_event *event, const PullArguments *args, const PullCallbacks *callbacks,
                       void *userdata, PullProcess **ret) {
        _cleanup_close_ int in_read = -1, in_write = -1, out_read = -1, out_write = -1;
        char *envp[ELEMENTSOF(helper_environment) + 1];
        PullProcess *p;
        int fds[2], r;

        assert(event);
        assert(args && args->helper && args->endpoint && args->repo && args->revision);
        assert(args->staging || args->inspect);
        assert(callbacks && (callbacks->ready || args->inspect) && callbacks->finished);
        assert(ret);

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        in_read = fds[0];
        in_write = fds[1];
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        out_read = fds[0];
        out_write = fds[1];
        if (fcntl(out_read, F_SETFL, O_NONBLOCK) < 0)
                return -errno;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->callbacks = *callbacks;
        p->userdata = userdata;
        p->inspect = args->inspect;
        p->pidfd = -1;
        p->stdin_fd = -1;
        p->stdout_fd = -1;

        helper_envp(envp);
        p->pid = fork();
        if (p->pid < 0) {
                r = -errno;
                free(p);
                return r;
        }
        if (p->pid == 0)
                exec_helper(args, in_read, out_write, envp);

        p->stdin_fd = TAKE_FD(in_write);
        p->stdout_fd = TAKE_FD(out_read);
        p->pidfd = (int) syscall(SYS_pidfd_open, p->pid, 0);
        if (p->pidfd < 0 && errno != ENOSYS) {
                r = -errno;
                goto fail;
        }
        r = sd_event_add_io(event, &p->stdout_source, p->stdout_fd, EPOLLIN, on_stdout, p);
        if (r < 0)
                goto fail;
        if (p->pidfd >= 0)
                /* A pidfd turns readable when the process exits: no SIGCHLD
                 * needed. */
                r = sd_event_add_io(event, &p->exit_source, p->pidfd, EPOLLIN, on_helper_exit, p);
        else
                /* No pidfd_open() (before Linux 5.3, or under valgrind):
                 * the exit is polled for. SIGCHLD stays out of it, as it
                 * would have to be blocked in every thread, OpenBLAS's too. */
                r = sd_event_add_time_relative(event, &p->exit_source, CLOCK_MONOTONIC, EXIT_POLL_USEC, 0,
                                               on_exit_poll, p);
        if (r < 0)
                goto fail;

        *ret = p;
        return 0;

fail:
        pull_process_free(p);
        return r;
}

static int write_answer(PullProcess *p, const char *answer) {
        size_t length = strlen(answer);

        if (p->answered)
                return -EALREADY;
        p->answered = true;
        /* A few bytes into an empty pipe: never blocks. A helper that has
         * gone gives EPIPE (SIGPIPE is ignored), and its exit tells why. */
        if (write(p->stdin_fd, answer, length) != (ssize_t) length)
                return -errno;
        return 0;
}

int pull_process_go(PullProcess *p) {
        assert(p);
        assert(p->ready_seen);
        return write_answer(p, "GO\n");
}

void pull_process_cancel(PullProcess *p) {
        assert(p);

        set_outcome(p, -ECANCELED, "cancelled", "The download was cancelled.");
        if (!p->answered)
                (void) write_answer(p, "CANCEL\n");
        signal_helper(p, SIGTERM);
}

PullProcess *pull_process_free(PullProcess *p) {
        if (!p)
                return NULL;
        kill_helper(p);
        if (p->pid > 0 && !p->exited)
                /* SIGKILL was sent: the wait is short, and leaves no zombie. */
                (void) waitpid(p->pid, NULL, 0);
        sd_event_source_disable_unref(p->stdout_source);
        sd_event_source_disable_unref(p->exit_source);
        if (p->stdin_fd >= 0)
                close(p->stdin_fd);
        if (p->stdout_fd >= 0)
                close(p->stdout_fd);
        if (p->pidfd >= 0)
                close(p->pidfd);
        pull_plan_done(&p->plan);
        free(p->failure);
        free(p->message);
        free(p);
        return NULL;
}

pid_t pull_process_pid(const PullProcess *p) {
        return p->pid;
}

const PullPlan *pull_process_plan(const PullProcess *p) {
        return &p->plan;
}

const PullInspection *pull_process_inspection(const PullProcess *p) {
        return p->inspect ? &p->inspection : NULL;
}
