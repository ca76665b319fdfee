/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macro.h"
#include "screen.h"

#define ANSI_HOME "\x1b[H"
#define ANSI_ERASE_LINE_END "\x1b[K"
#define ANSI_ERASE_BELOW "\x1b[J"
#define ANSI_RESET "\x1b[0m"

static bool is_continuation_byte(unsigned char c) {
        return (c & 0xc0) == 0x80;
}

size_t text_width(const char *s) {
        size_t n = 0;

        for (; *s; s++) {
                if (*s == '\x1b') {
                        /* CSI: ESC [ parameters final-byte */
                        if (s[1] == '[') {
                                s += 2;
                                while (*s && !(*s >= 0x40 && *s <= 0x7e))
                                        s++;
                                if (!*s)
                                        break;
                        }
                        continue;
                }
                if (!is_continuation_byte((unsigned char) *s))
                        n++;
        }
        return n;
}

int frame_begin(Frame *fr, unsigned columns, unsigned rows, bool colors) {
        *fr = (Frame) { .columns = columns, .rows = rows, .colors = colors };
        fr->f = open_memstream(&fr->buffer, &fr->size);
        if (!fr->f)
                return negative_errno();
        fputs(ANSI_HOME, fr->f);
        return 0;
}

void frame_puts(Frame *fr, const char *s) {
        if (fr->row >= fr->rows)
                return;
        for (const char *p = s; *p; ) {
                size_t len = 1;

                while (p[len] && is_continuation_byte((unsigned char) p[len]))
                        len++;
                if (fr->column >= fr->columns)
                        return;
                fwrite(p, 1, len, fr->f);
                fr->column++;
                p += len;
        }
}

void frame_printf(Frame *fr, const char *format, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;
        int k;

        va_start(ap, format);
        k = vasprintf(&s, format, ap);
        va_end(ap);
        if (k >= 0)
                frame_puts(fr, s);
}

void frame_pad_to(Frame *fr, unsigned column) {
        while (fr->row < fr->rows && fr->column < column && fr->column < fr->columns)
                frame_puts(fr, " ");
}

void frame_put_padded(Frame *fr, const char *s, unsigned width) {
        unsigned start = fr->column;
        _cleanup_free_ char *clipped = NULL;
        size_t n = 0, i = 0;

        /* Clip to width code points. */
        for (; s[i]; i++)
                if (!is_continuation_byte((unsigned char) s[i]) && n++ == width)
                        break;
        clipped = strndup(s, i);
        if (!clipped)
                return;
        frame_puts(fr, clipped);
        frame_pad_to(fr, start + width);
}

void frame_color(Frame *fr, const char *sequence) {
        if (fr->colors && fr->row < fr->rows)
                fputs(sequence, fr->f);
}

void frame_newline(Frame *fr) {
        if (fr->row >= fr->rows)
                return;
        if (fr->colors)
                fputs(ANSI_RESET, fr->f);
        /* With autowrap off the cursor stays on the last column once it is
         * written, and erasing from there would take that character away. */
        if (fr->column < fr->columns)
                fputs(ANSI_ERASE_LINE_END, fr->f);
        fr->row++;
        fr->column = 0;
        if (fr->row < fr->rows)
                fputs("\r\n", fr->f);
}

unsigned frame_rows_left(const Frame *fr) {
        return fr->row < fr->rows ? fr->rows - fr->row : 0;
}

int frame_flush(Frame *fr, int fd) {
        const char *p;
        size_t n;

        if (fr->row < fr->rows) {
                if (fr->colors)
                        fputs(ANSI_RESET, fr->f);
                if (fr->column < fr->columns)
                        fputs(ANSI_ERASE_BELOW, fr->f);
        }
        if (fflush(fr->f) != 0)
                return negative_errno();

        /* One write, so the terminal never shows half a frame for long. */
        for (p = fr->buffer, n = fr->size; n > 0; ) {
                ssize_t k = write(fd, p, n);

                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        return negative_errno();
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

void frame_done(Frame *fr) {
        if (fr->f)
                fclose(fr->f);
        free(fr->buffer);
        *fr = (Frame) {};
}
