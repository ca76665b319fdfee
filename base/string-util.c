/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "string-util.h"

static bool is_utf8_continuation(char c) {
        return ((unsigned char) c & 0xc0) == 0x80;
}

char *strdup_bounded(const char *s, size_t max) {
        size_t n = strnlen(s, max + 1), cut;
        char *copy;

        assert(max >= strlen(ELLIPSIS));

        if (n <= max)
                return strndup(s, n);

        /* Never split a character: a cut one is no valid UTF-8, which D-Bus
         * refuses in a string. */
        cut = max - strlen(ELLIPSIS);
        while (cut > 0 && is_utf8_continuation(s[cut]))
                cut--;

        copy = malloc(cut + strlen(ELLIPSIS) + 1);
        if (!copy)
                return NULL;
        memcpy(copy, s, cut);
        memcpy(copy + cut, ELLIPSIS, strlen(ELLIPSIS) + 1);
        return copy;
}
