/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "table.h"
#include "terminal.h"

#define TABLE_COLUMNS_MAX 16

typedef struct Cell {
        char *text;
        const char *color;
} Cell;

struct Table {
        size_t n_columns;
        const char *headers[TABLE_COLUMNS_MAX];
        bool align_right[TABLE_COLUMNS_MAX];
        Cell *cells;
        size_t n_cells;
        size_t allocated;
};

Table *table_new(const char *first_header, ...) {
        Table *t;
        va_list ap;

        t = calloc(1, sizeof *t);
        if (!t)
                return NULL;

        va_start(ap, first_header);
        for (const char *h = first_header; h; h = va_arg(ap, const char *)) {
                if (t->n_columns >= TABLE_COLUMNS_MAX) {
                        va_end(ap);
                        free(t);
                        errno = EINVAL;
                        return NULL;
                }
                t->headers[t->n_columns++] = h;
        }
        va_end(ap);
        return t;
}

void table_free(Table *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i].text);
        free(t->cells);
        free(t);
}

void table_set_align_right(Table *t, size_t column) {
        if (column < t->n_columns)
                t->align_right[column] = true;
}

static int table_add_cell_owned(Table *t, char *text, const char *color) {
        if (t->n_cells >= t->allocated) {
                size_t n = t->allocated ? t->allocated * 2 : 64;
                Cell *cells = reallocarray(t->cells, n, sizeof *cells);

                if (!cells) {
                        free(text);
                        return -ENOMEM;
                }
                t->cells = cells;
                t->allocated = n;
        }
        t->cells[t->n_cells++] = (Cell) { .text = text, .color = color };
        return 0;
}

int table_add_cell(Table *t, const char *text, const char *color) {
        char *copy = strdup(text ?: "");

        if (!copy)
                return -ENOMEM;
        return table_add_cell_owned(t, copy, color);
}

int table_add_cellf(Table *t, const char *color, const char *format, ...) {
        char *text;
        va_list ap;
        int k;

        va_start(ap, format);
        k = vasprintf(&text, format, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        return table_add_cell_owned(t, text, color);
}

size_t table_rows(const Table *t) {
        return t->n_columns ? t->n_cells / t->n_columns : 0;
}

static void print_cell(FILE *f, const char *text, const char *color, size_t width, bool right, bool last) {
        size_t len = strlen(text);
        size_t pad = width > len ? width - len : 0;
        bool colored = color && colors_enabled();

        if (right)
                fprintf(f, "%*s", (int) pad, "");
        if (colored)
                fputs(color, f);
        fputs(text, f);
        if (colored)
                fputs(ANSI_NORMAL, f);
        /* No trailing blanks after the last column. */
        if (!right && !last)
                fprintf(f, "%*s", (int) pad, "");
}

int table_print(const Table *t, FILE *f, bool legend) {
        size_t width[TABLE_COLUMNS_MAX] = {};
        size_t rows = table_rows(t);

        if (t->n_columns == 0)
                return 0;

        for (size_t c = 0; c < t->n_columns; c++)
                if (legend)
                        width[c] = strlen(t->headers[c]);
        for (size_t i = 0; i < rows * t->n_columns; i++) {
                size_t c = i % t->n_columns, len = strlen(t->cells[i].text);

                if (len > width[c])
                        width[c] = len;
        }

        if (legend) {
                for (size_t c = 0; c < t->n_columns; c++) {
                        if (c > 0)
                                fputc(' ', f);
                        print_cell(f, t->headers[c], ANSI_UNDERLINE, width[c], t->align_right[c],
                                   c + 1 == t->n_columns);
                }
                fputc('\n', f);
        }

        for (size_t r = 0; r < rows; r++) {
                for (size_t c = 0; c < t->n_columns; c++) {
                        const Cell *cell = &t->cells[r * t->n_columns + c];

                        if (c > 0)
                                fputc(' ', f);
                        print_cell(f, cell->text, cell->color, width[c], t->align_right[c], c + 1 == t->n_columns);
                }
                fputc('\n', f);
        }

        return ferror(f) ? -EIO : 0;
}
