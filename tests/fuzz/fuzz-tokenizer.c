/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the tokenizer: reading tokenizer.json and
 * encoding text with what was read. `make fuzz` builds
 * and runs it; `make check` replays tests/fuzz/tokenizer/.
 *
 * Input: a tokenizer.json, then optionally a NUL byte followed by one
 * byte of options and the text to encode. Without a NUL (the corpus of
 * plain tokenizer.json files) a fixed text is encoded, so that mutations
 * of a valid file reach the encoder. Every buffer is of exactly its size,
 * so that any read past one is caught by AddressSanitizer. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char default_text[] =
        "Hello, [MASK] World! Café naïve 我喜欢 👍🏽\t\x0b\xc2\xa0 unbelievable-ish \xff\xfe end.";

/* Messages are for every local user and travel over D-Bus: valid UTF-8
 * at least, and no control characters. */
static bool printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

static void check_encode(const Tokenizer *t, const char *text, size_t length, uint8_t options) {
        TokenizerTruncation truncation = options % 3;
        size_t max_ids = (options >> 2) + 1, n = 0, n_special = tokenizer_n_special_ids(t);
        uint32_t limit = tokenizer_id_limit(t);
        int32_t *ids;
        int r;

        ids = malloc(max_ids * sizeof *ids);
        if (!ids)
                return;
        r = tokenizer_encode(t, text, length, truncation, ids, max_ids, &n);
        if (r == 0) {
                if (n < n_special || n > max_ids)
                        abort();
                for (size_t i = 0; i < n; i++)
                        if (ids[i] < 0 || (uint32_t) ids[i] >= limit)
                                abort();
        } else if (r == -EINVAL) {
                if (max_ids >= n_special)
                        abort();
        } else if (r == -E2BIG) {
                if (truncation != TOKENIZER_TRUNCATE_NONE)
                        abort();
        } else if (r != -ENOMEM)
                abort();
        free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint8_t *nul = memchr(data, 0, size);
        size_t json_length = nul ? (size_t) (nul - data) : size;
        char *json, *text = NULL, *error = NULL;
        size_t text_length = 0;
        uint8_t options = 0x7d;
        Tokenizer *t = NULL;
        int r;

        json = malloc(json_length > 0 ? json_length : 1);
        if (!json)
                return 0;
        memcpy(json, data, json_length);
        if (nul && size - json_length >= 2) {
                options = nul[1];
                text_length = size - json_length - 2;
                text = malloc(text_length > 0 ? text_length : 1);
                if (!text)
                        goto finish;
                memcpy(text, nul + 2, text_length);
        }

        r = tokenizer_parse(json, json_length, NULL, NULL, &t, &error);
        if (r == 0) {
                if (!t || error)
                        abort();
                if (text)
                        check_encode(t, text, text_length, options);
                else
                        check_encode(t, default_text, sizeof default_text - 1, options);
        } else if (r == -EBADMSG || r == -EOPNOTSUPP) {
                if (t || !error || strlen(error) == 0 || !printable(error))
                        abort();
        } else if (r != -ENOMEM)
                abort();

finish:
        tokenizer_free(t);
        free(error);
        free(text);
        free(json);
        return 0;
}
