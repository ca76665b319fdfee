/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* A full-screen frame for `top`: text clipped to the terminal's width and
 * height, written in one go over the previous frame (cursor home, each line
 * overwritten and erased to its end), so nothing flickers and nothing
 * scrolls. Widths count code points, which is right for the ASCII, box
 * drawing and block characters used here. */

typedef struct Frame {
        FILE *f;
        char *buffer;
        size_t size;
        unsigned columns, rows;
        unsigned row, column;   /* where the next character goes */
        bool colors;
} Frame;

int frame_begin(Frame *fr, unsigned columns, unsigned rows, bool colors);

/* Text on the current line, clipped at the right edge. */
void frame_puts(Frame *fr, const char *s);
void frame_printf(Frame *fr, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* Text padded with blanks (or clipped) to exactly width columns. */
void frame_put_padded(Frame *fr, const char *s, unsigned width);

/* An escape sequence (color), dropped when colors are off. */
void frame_color(Frame *fr, const char *sequence);

/* Blanks up to column. */
void frame_pad_to(Frame *fr, unsigned column);

/* Ends the line: erases the rest of it and moves to the next one (never past
 * the last row, so the screen never scrolls). */
void frame_newline(Frame *fr);

unsigned frame_rows_left(const Frame *fr);

/* Erases the rows below and writes the frame to fd. */
int frame_flush(Frame *fr, int fd);

void frame_done(Frame *fr);

/* The number of code points in s (escape sequences not counted). */
size_t text_width(const char *s);
