/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "macro.h"

/* Terminal facts and the client's own messages on stderr. Nothing here
 * writes an escape sequence to something that is not a terminal. */

#define ANSI_NORMAL          "\x1b[0m"
#define ANSI_BOLD            "\x1b[1m"
#define ANSI_UNDERLINE       "\x1b[4m"
#define ANSI_GREY            "\x1b[0;38;5;245m"
#define ANSI_RED             "\x1b[0;31m"
#define ANSI_GREEN           "\x1b[0;32m"
#define ANSI_YELLOW          "\x1b[0;33m"
#define ANSI_BLUE            "\x1b[0;34m"
#define ANSI_HIGHLIGHT_RED   "\x1b[0;1;31m"
#define ANSI_HIGHLIGHT_YELLOW "\x1b[0;1;33m"
#define ANSI_ERASE_TO_EOL    "\x1b[K"

/* stdout and stderr are both terminals, as systemd's tools check before
 * they draw anything interactive. */
bool on_tty(void);

/* Colors on stdout (or stderr): a terminal, $NO_COLOR unset, $TERM not "dumb". */
bool colors_enabled(void);
bool colors_enabled_stderr(void);

/* An escape sequence if colors are enabled on stdout, else "". */
const char *ansi(const char *sequence);

/* The terminal's size (of fd), or $COLUMNS/$LINES, or 80x24. */
unsigned terminal_columns(int fd);
unsigned terminal_lines(int fd);

/* The locale's character set is UTF-8: box drawing and bullets may be used. */
bool is_utf8_locale(void);

/* One line on stderr, red when stderr is a terminal. print_error_errno()
 * returns -|r| and sets errno for %m. */
void print_error(const char *format, ...) _printf_(1, 2);
void print_warning(const char *format, ...) _printf_(1, 2);
int print_error_errno(int r, const char *format, ...) _printf_(2, 3);
int print_oom(void);

/* Flushes f and returns 0, or a negative errno if that or any write to f
 * since its error flag was last cleared failed (stdio may have written, and
 * failed, before: fflush() alone misses that). */
int fflush_and_check(FILE *f);

/* Says "Cannot write the output: …" for a failure r to write stdout, except
 * EPIPE (the reader went away: nothing to tell it), and returns r. */
int print_output_error(int r);
