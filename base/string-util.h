/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>

/* The ellipsis that marks a string cut short (U+2026, 3 bytes in UTF-8). */
#define ELLIPSIS "\xe2\x80\xa6"

/* A copy of s of at most max bytes (the terminating NUL not counted): s
 * itself when it fits, else its longest prefix that ends on a UTF-8
 * character boundary and leaves room for ELLIPSIS, followed by it. max must
 * be at least strlen(ELLIPSIS). NULL when out of memory. */
char *strdup_bounded(const char *s, size_t max);
