/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <langinfo.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "terminal.h"

static int cached_on_tty = -1;
static int cached_colors[3] = { -1, -1, -1 };

bool on_tty(void) {
        if (cached_on_tty < 0)
                cached_on_tty = isatty(STDOUT_FILENO) && isatty(STDERR_FILENO);
        return cached_on_tty;
}

static bool colors_enabled_fd(int fd) {
        const char *term;

        if (cached_colors[fd] >= 0)
                return cached_colors[fd];

        term = getenv("TERM");
        cached_colors[fd] = isatty(fd) && !getenv("NO_COLOR") && !(term && strcmp(term, "dumb") == 0);
        return cached_colors[fd];
}

bool colors_enabled(void) {
        return colors_enabled_fd(STDOUT_FILENO);
}

bool colors_enabled_stderr(void) {
        return colors_enabled_fd(STDERR_FILENO);
}

const char *ansi(const char *sequence) {
        return colors_enabled() ? sequence : "";
}

static unsigned env_dimension(const char *variable, unsigned fallback) {
        const char *e = getenv(variable);
        char *end;
        unsigned long v;

        if (!e || !*e)
                return fallback;
        errno = 0;
        v = strtoul(e, &end, 10);
        if (errno != 0 || *end || v == 0 || v > 10000)
                return fallback;
        return (unsigned) v;
}

unsigned terminal_columns(int fd) {
        struct winsize ws = {};

        if (ioctl(fd, TIOCGWINSZ, &ws) >= 0 && ws.ws_col > 0)
                return ws.ws_col;
        return env_dimension("COLUMNS", 80);
}

unsigned terminal_lines(int fd) {
        struct winsize ws = {};

        if (ioctl(fd, TIOCGWINSZ, &ws) >= 0 && ws.ws_row > 0)
                return ws.ws_row;
        return env_dimension("LINES", 24);
}

bool is_utf8_locale(void) {
        const char *set = nl_langinfo(CODESET);

        return set && (strcasecmp(set, "UTF-8") == 0 || strcasecmp(set, "utf8") == 0);
}

static void print_message(const char *color, const char *format, va_list ap) {
        int saved_errno = errno;        /* before isatty() can change it */
        bool colored = colors_enabled_stderr();

        /* stdout may hold a half-written line; keep the two streams in order. */
        fflush(stdout);
        if (colored)
                fputs(color, stderr);
        errno = saved_errno;    /* for %m */
        vfprintf(stderr, format, ap);
        if (colored)
                fputs(ANSI_NORMAL, stderr);
        fputc('\n', stderr);
}

void print_error(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        print_message(ANSI_HIGHLIGHT_RED, format, ap);
        va_end(ap);
}

void print_warning(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        print_message(ANSI_HIGHLIGHT_YELLOW, format, ap);
        va_end(ap);
}

int print_error_errno(int r, const char *format, ...) {
        va_list ap;

        r = r < 0 ? -r : r;
        errno = r;
        va_start(ap, format);
        print_message(ANSI_HIGHLIGHT_RED, format, ap);
        va_end(ap);
        return -r;
}

int print_oom(void) {
        return print_error_errno(ENOMEM, "Out of memory.");
}

int fflush_and_check(FILE *f) {
        errno = 0;
        if (fflush(f) != 0 || ferror(f))
                return negative_errno();
        return 0;
}

int print_output_error(int r) {
        r = r < 0 ? r : -r;
        if (r == -EPIPE)
                return r;
        return print_error_errno(r, "Cannot write the output: %m");
}
