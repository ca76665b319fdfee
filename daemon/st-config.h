/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bert.h"

/* How sentence-transformers runs a model folder, from its files:
 *
 *   modules.json                       the pipeline: a Transformer (the
 *                                      folder itself), a Pooling module,
 *                                      optionally a Normalize module
 *   <Pooling path>/config.json         the pooling: mean or CLS
 *   sentence_bert_config.json          max_seq_length, do_lower_case
 *   config_sentence_transformers.json  prompts, default_prompt_name
 *
 * A folder without modules.json is a bare transformers model, which
 * sentence-transformers runs with mean pooling and no normalization. The
 * other files are read whether modules.json is there or not, as
 * sentence-transformers does.
 *
 * A pipeline this code cannot run exactly (other module types such as
 * Dense, other pooling modes, prompts left out of the pooling, the model in
 * a subfolder) is refused as not supported rather than run differently.
 * Messages never quote the files, as in bert.h. */

#define ST_MODULES_FILE     "modules.json"
#define ST_POOLING_FILE     "config.json"   /* in the Pooling module's folder */
#define ST_BERT_CONFIG_FILE "sentence_bert_config.json"
#define ST_PROMPTS_FILE     "config_sentence_transformers.json"

#define ST_MODULES_MAX      16U
#define ST_PATH_MAX         128U    /* bytes of a module's path */
#define ST_PROMPTS_MAX      64U
#define ST_PROMPT_NAME_MAX  128U    /* bytes */
#define ST_PROMPT_MAX       4096U   /* bytes of a prompt's text */

typedef struct StPrompt {
        char *name;
        char *text;               /* put before the text to embed; may be "" */
} StPrompt;

typedef struct StConfig {
        BertPooling pooling;
        bool normalize;           /* a Normalize module follows the pooling */
        bool lowercase;           /* do_lower_case: texts are lowercased before tokenization */
        uint32_t max_length;      /* tokens, [CLS] and [SEP] included: max_seq_length, at most
                                   * max_position_embeddings (which it is without one) */
        StPrompt *prompts;
        size_t n_prompts;
        const StPrompt *default_prompt; /* one of prompts, or NULL */
} StConfig;

/* Reads the model folder's file at path (relative to the folder, such as
 * "modules.json" or "1_Pooling/config.json"), whole. Returns 0 with a
 * malloc'd copy of its max_size bytes at most in *ret_text (not
 * NUL-terminated) and its length in *ret_length; -ENOENT when there is no
 * such file; -EFBIG when it is larger than max_size; another negative errno
 * (with *ret_error set, if it may) when it cannot be read. The daemon's
 * reader opens beneath the store's root; tests read a folder. */
typedef int (*st_read_file_t)(const char *path, uint64_t max_size, char **ret_text, size_t *ret_length,
                              void *userdata, char **ret_error);

/* Reads the files above for a model of configuration bert. Returns 0 and
 * fills *ret (free with st_config_done()), or
 *   -EBADMSG     a file is malformed, out of bounds or disagrees with the
 *                model (the pooling's word_embedding_dimension),
 *   -EOPNOTSUPP  the pipeline is one this code does not run,
 *   -ENOMEM, or what read_file returned,
 * with a message in *ret_error (may be NULL). */
int st_config_load(st_read_file_t read_file, void *userdata, const BertConfig *bert, StConfig *ret,
                   char **ret_error);

void st_config_done(StConfig *c);

/* The prompt of that name, or NULL. */
const StPrompt *st_config_find_prompt(const StConfig *c, const char *name);
