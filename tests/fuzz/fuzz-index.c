/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the reader of sharded models' indexes
 * (model.safetensors.index.json). `make fuzz` builds
 * and runs it; `make check` replays tests/fuzz/index/.
 *
 * Input: one byte, then the index's text. The text is handed over in a
 * buffer of exactly its size, so that any read past it is caught by
 * AddressSanitizer. The first byte, when not 0, is the question at which a
 * cancellation callback stops the read, to exercise the paths that unwind
 * from the middle. */

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "strv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Cancel {
        unsigned calls;
        unsigned at;
} Cancel;

static bool cancel_at(void *userdata) {
        Cancel *c = userdata;

        return ++c->calls >= c->at;
}

/* What the store joins to a model's directory: a plain file name. */
static bool plain_file_name(const char *s) {
        size_t n = strlen(s);

        if (n == 0 || n > NAME_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] < 0x20 || s[i] >= 0x7f || s[i] == '/')
                        return false;
        return true;
}

/* Messages are for every local user and travel over D-Bus: printable
 * ASCII only, whatever the text held. */
static bool printable(const char *s) {
        for (; *s; s++)
                if (*s < 0x20 || *s >= 0x7f)
                        return false;
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char **shards = NULL, *text, *error = NULL;
        size_t length, n;
        Cancel c = {};
        int r;

        if (size < 1)
                return 0;
        c.at = data[0];
        length = size - 1;

        text = malloc(length > 0 ? length : 1);
        if (!text)
                return 0;
        memcpy(text, data + 1, length);

        r = store_index_parse(text, length, c.at > 0 ? cancel_at : NULL, &c, &shards, &error);
        if (r == 0) {
                n = strv_length(shards);
                if (error || n == 0 || n > STORE_SHARDS_MAX || (c.at > 0 && c.calls >= c.at))
                        abort();
                for (size_t i = 0; i < n; i++)
                        if (!plain_file_name(shards[i]) || (i > 0 && strcmp(shards[i - 1], shards[i]) >= 0))
                                abort();
        } else if (r == -EBADMSG) {
                if (shards || !error || strlen(error) == 0 || !printable(error) || (c.at > 0 && c.calls >= c.at))
                        abort();
        } else if (r == -ECANCELED) {
                /* Stopped at the question that said so, and nothing to say. */
                if (c.at == 0 || c.calls != c.at || shards || error)
                        abort();
        } else if (r != -ENOMEM)
                abort();

        strv_free(shards);
        free(error);
        free(text);
        return 0;
}
