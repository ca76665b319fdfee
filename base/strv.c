/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "strv.h"

void strv_free(char **l) {
        if (!l)
                return;
        for (char **i = l; *i; i++)
                free(*i);
        free(l);
}

size_t strv_length(char * const *l) {
        size_t n = 0;

        if (!l)
                return 0;
        while (l[n])
                n++;
        return n;
}

bool strv_contains(char * const *l, const char *s) {
        if (!l)
                return false;
        for (char * const *i = l; *i; i++)
                if (strcmp(*i, s) == 0)
                        return true;
        return false;
}

int strv_extend(char ***l, const char *value) {
        _cleanup_free_ char *copy = NULL;
        size_t n = strv_length(*l);
        char **grown;

        copy = strdup(value);
        if (!copy)
                return -ENOMEM;

        grown = reallocarray(*l, n + 2, sizeof(char *));
        if (!grown)
                return -ENOMEM;

        grown[n] = TAKE_PTR(copy);
        grown[n + 1] = NULL;
        *l = grown;
        return 0;
}

static int compare_strings(const void *a, const void *b) {
        return strcmp(*(char * const *) a, *(char * const *) b);
}

void strv_sort(char **l) {
        size_t n = strv_length(l);

        if (n > 1)
                qsort(l, n, sizeof(char *), compare_strings);
}
