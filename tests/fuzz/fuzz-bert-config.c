/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the reader of a BERT model's config.json
 * (bert_config_parse()). `make fuzz` builds and runs it; `make check`
 * replays tests/fuzz/bert-config/.
 *
 * Input: the file's text, in a buffer of exactly its size (it need not be
 * NUL-terminated), so that any read past it is caught by AddressSanitizer. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Messages are for every local user and travel over D-Bus. */
static bool printable(const char *s) {
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        BertConfig c = {}, untouched;
        char *text, *error = NULL;
        int r;

        text = malloc(size > 0 ? size : 1);
        if (!text)
                return 0;
        memcpy(text, data, size);
        memset(&untouched, 0, sizeof untouched);

        r = bert_config_parse(text, size, &c, &error);
        if (r == 0) {
                /* What sizing the model's buffers relies on. */
                if (error || c.vocab_size < 1 || c.vocab_size > BERT_VOCAB_MAX || c.hidden_size < 1 ||
                    c.hidden_size > BERT_HIDDEN_MAX || c.n_layers < 1 || c.n_layers > BERT_LAYERS_MAX ||
                    c.n_heads < 1 || c.n_heads > BERT_HEADS_MAX || c.hidden_size % c.n_heads != 0 ||
                    c.intermediate_size < 1 || c.intermediate_size > BERT_INTERMEDIATE_MAX ||
                    c.max_position_embeddings < 1 || c.max_position_embeddings > BERT_POSITIONS_MAX ||
                    c.type_vocab_size < 1 || c.type_vocab_size > BERT_TYPE_VOCAB_MAX || !(c.layer_norm_eps > 0))
                        abort();
        } else if (r == -EBADMSG || r == -EOPNOTSUPP) {
                if (!error || strlen(error) == 0 || !printable(error) || memcmp(&c, &untouched, sizeof c) != 0)
                        abort();
        } else if (r != -ENOMEM)
                abort();

        free(error);
        free(text);
        return 0;
}
