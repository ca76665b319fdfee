/* SPDX-License-Identifier: MIT */
#define SD_JOURNAL_SUPPRESS_LOCATION 1

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"

static int max_level = LOG_INFO;
static bool use_journal = false;

/* journald sets JOURNAL_STREAM to "DEVICE:INODE" of the stream it gave us as
 * stderr; only then do structured entries reach it in full. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

/* A process started with stdin, stdout or stderr closed would hand that
 * number to the next file it opens (say, its bus connection), and log lines
 * meant for stderr would be written there. /dev/null holds the place. */
static void stdio_hold_open(void) {
        for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++) {
                int null_fd;

                if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
                        continue;
                /* The lowest free number, so fd itself: those below are open. */
                null_fd = open("/dev/null", (fd == STDIN_FILENO ? O_RDONLY : O_WRONLY) | O_NOCTTY | O_CLOEXEC);
                if (null_fd >= 0 && null_fd != fd)
                        (void) close(null_fd);
        }
}

void log_setup(void) {
        const char *e = getenv("MPOOL_LOG_LEVEL");

        stdio_hold_open();
        use_journal = stderr_is_journal();
        if (e) {
                if (strcmp(e, "debug") == 0)
                        max_level = LOG_DEBUG;
                else if (strcmp(e, "info") == 0)
                        max_level = LOG_INFO;
                else if (strcmp(e, "notice") == 0)
                        max_level = LOG_NOTICE;
                else if (strcmp(e, "warning") == 0)
                        max_level = LOG_WARNING;
                else if (strcmp(e, "err") == 0 || strcmp(e, "error") == 0)
                        max_level = LOG_ERR;
        }
}

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

static void log_to_stderr(int level, const char *message) {
        static const char *const prefix[] = {
                [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
                [LOG_ERR] = "error", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
                [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
        };

        int saved_errno = errno;

        /* Best effort: a closed stderr or one whose reader went away (EPIPE,
         * with SIGPIPE ignored) costs the line, never the caller. */
        /* Named after the program, so that mpool-pull's lines in mpoold's
         * log are told apart from mpoold's own. */
        (void) fprintf(stderr, "%s[%s]: %s\n", program_invocation_short_name, prefix[level & LOG_PRIMASK],
                       message);
        clearerr(stderr);
        errno = saved_errno;
}

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) {
        char message[2048];
        va_list ap;

        error = abs(error);
        if ((level & LOG_PRIMASK) > max_level)
                return -error;

        errno = error;
        va_start(ap, format);
        vsnprintf(message, sizeof message, format, ap);
        va_end(ap);

        if (use_journal) {
                char line_buf[32];

                snprintf(line_buf, sizeof line_buf, "CODE_LINE=%d", line);
                if (error > 0)
                        sd_journal_send("MESSAGE=%s", message, "PRIORITY=%i", level & LOG_PRIMASK,
                                        "ERRNO=%i", error, "CODE_FILE=%s", file, line_buf,
                                        "CODE_FUNC=%s", func, NULL);
                else
                        sd_journal_send("MESSAGE=%s", message, "PRIORITY=%i", level & LOG_PRIMASK,
                                        "CODE_FILE=%s", file, line_buf, "CODE_FUNC=%s", func, NULL);
        } else
                log_to_stderr(level, message);

        return -error;
}

void log_model_event(int level, const char *model, const char *event, const char *reason,
                     uint64_t bytes, uint64_t duration_usec, const char *format, ...) {
        char message[2048];
        va_list ap;

        if ((level & LOG_PRIMASK) > max_level)
                return;

        va_start(ap, format);
        vsnprintf(message, sizeof message, format, ap);
        va_end(ap);

        if (!use_journal) {
                log_to_stderr(level, message);
                return;
        }

        char bytes_field[48] = "BYTES=", duration_field[48] = "DURATION_USEC=";
        if (bytes != UINT64_MAX)
                snprintf(bytes_field, sizeof bytes_field, "BYTES=%" PRIu64, bytes);
        if (duration_usec != UINT64_MAX)
                snprintf(duration_field, sizeof duration_field, "DURATION_USEC=%" PRIu64, duration_usec);

        sd_journal_send("MESSAGE=%s", message, "PRIORITY=%i", level & LOG_PRIMASK,
                        "MPOOL_MODEL=%s", strempty(model), "MPOOL_EVENT=%s", strempty(event),
                        "MPOOL_REASON=%s", strempty(reason), "MPOOL_%s", bytes_field,
                        "MPOOL_%s", duration_field, NULL);
}
