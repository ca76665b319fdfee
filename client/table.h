/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "macro.h"

/* A text table as systemctl prints them: columns aligned, an underlined
 * header line unless --no-legend, colors only on a terminal. Cells are ASCII
 * (model names are). */

typedef struct Table Table;

/* The headers, NULL-terminated. */
Table *table_new(const char *first_header, ...);
void table_free(Table *t);
static inline void table_freep(Table **t) {
        table_free(*t);
}
#define _cleanup_table_ _cleanup_(table_freep)

/* Right-aligns a column (numbers). */
void table_set_align_right(Table *t, size_t column);

/* Appends one cell; rows fill left to right. color is an ANSI sequence shown
 * only on a terminal, or NULL. Returns 0 or -ENOMEM. */
int table_add_cell(Table *t, const char *text, const char *color);
int table_add_cellf(Table *t, const char *color, const char *format, ...) _printf_(3, 4);

size_t table_rows(const Table *t);

/* Prints the header (unless legend is false) and every row to f. */
int table_print(const Table *t, FILE *f, bool legend);
