/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "macro.h"

/* NULL-terminated arrays of strings that own their elements. A NULL array is
 * a valid empty one for every function here. */

void strv_free(char **l);
static inline void strv_freep(char ***l) {
        strv_free(*l);
}
#define _cleanup_strv_free_ _cleanup_(strv_freep)

size_t strv_length(char * const *l);
bool strv_contains(char * const *l, const char *s);

/* Appends a copy of value; on failure *l is unchanged. */
int strv_extend(char ***l, const char *value);

/* Sorts with strcmp(). */
void strv_sort(char **l);
