/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the sentence-transformers loaders
 * (st_config_load()): modules.json, the pooling's config.json,
 * sentence_bert_config.json and config_sentence_transformers.json, read
 * from memory. `make fuzz` builds and runs it; `make check` replays
 * tests/fuzz/st-config/.
 *
 * Input: one byte of options, then the four files in that order, separated
 * by NUL bytes. Options: bit 0..3, the file is missing (-ENOENT) rather than
 * there; bit 4, the model's hidden_size is 24 rather than 32; bit 5, reading
 * fails with -EIO on the second file asked for; bit 6, the size bound passed
 * to the reader is enforced at 64 bytes (-EFBIG). Each file is handed over
 * in a buffer of exactly its size, so that any read past it is caught by
 * AddressSanitizer. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st-config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Files {
        const uint8_t *text[4];
        size_t length[4];
        uint8_t options;
        unsigned calls;
} Files;

static int read_file(const char *path, uint64_t max_size, char **ret_text, size_t *ret_length, void *userdata,
                     char **ret_error) {
        Files *f = userdata;
        unsigned i;
        char *copy;

        if (!path || strlen(path) == 0 || strlen(path) > ST_PATH_MAX + 1 + strlen(ST_POOLING_FILE))
                abort();
        f->calls++;
        if ((f->options & 0x20) && f->calls == 2) {
                if (ret_error)
                        *ret_error = strdup("cannot read: Input/output error");
                return -EIO;
        }

        if (strcmp(path, ST_MODULES_FILE) == 0)
                i = 0;
        else if (strcmp(path, ST_BERT_CONFIG_FILE) == 0)
                i = 2;
        else if (strcmp(path, ST_PROMPTS_FILE) == 0)
                i = 3;
        else
                i = 1;  /* the pooling's, wherever modules.json put it */

        if (f->options & (1U << i))
                return -ENOENT;
        if ((f->options & 0x40) && max_size > 64)
                max_size = 64;
        if (f->length[i] > max_size)
                return -EFBIG;
        copy = malloc(f->length[i] > 0 ? f->length[i] : 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, f->text[i], f->length[i]);
        *ret_text = copy;
        *ret_length = f->length[i];
        return 0;
}

static bool printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

static void check_config(const StConfig *c, const BertConfig *bert) {
        bool default_found = false;

        if (c->pooling < 0 || !bert_pooling_to_string(c->pooling))
                abort();
        if (c->max_length < 1 || c->max_length > bert->max_position_embeddings)
                abort();
        if (c->n_prompts > ST_PROMPTS_MAX || (c->n_prompts > 0 && !c->prompts))
                abort();
        for (size_t i = 0; i < c->n_prompts; i++) {
                const StPrompt *p = &c->prompts[i];

                if (!p->name || !p->text || strlen(p->name) > ST_PROMPT_NAME_MAX || strlen(p->text) > ST_PROMPT_MAX)
                        abort();
                if (st_config_find_prompt(c, p->name) != p)
                        abort();
                if (p == c->default_prompt)
                        default_found = true;
        }
        if (c->default_prompt && !default_found)
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        BertConfig bert = {
                .vocab_size = 418, .hidden_size = 32, .n_layers = 2, .n_heads = 4,
                .intermediate_size = 64, .max_position_embeddings = 48, .type_vocab_size = 2,
                .layer_norm_eps = 1e-12f,
        };
        const uint8_t *p, *end = data + size;
        char *error = NULL;
        StConfig c = {};
        Files f = {};
        int r;

        if (size < 1)
                return 0;
        f.options = data[0];
        if (f.options & 0x10)
                bert.hidden_size = 24;

        p = data + 1;
        for (unsigned i = 0; i < 4; i++) {
                const uint8_t *nul = memchr(p, 0, (size_t) (end - p));

                f.text[i] = p;
                f.length[i] = nul ? (size_t) (nul - p) : (size_t) (end - p);
                p = nul ? nul + 1 : end;
        }

        r = st_config_load(read_file, &f, &bert, &c, &error);
        if (r == 0) {
                if (error)
                        abort();
                check_config(&c, &bert);
                st_config_done(&c);
        } else if (r == -EBADMSG || r == -EOPNOTSUPP) {
                if (!error || strlen(error) == 0 || !printable(error))
                        abort();
        } else if (r == -EIO) {
                if (!(f.options & 0x20))
                        abort();
        } else if (r != -ENOMEM)
                abort();

        free(error);
        return 0;
}
