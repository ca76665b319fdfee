/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bert.h"
#include "precision.h"
#include "st-config.h"
#include "tokenizer.h"

/* A model made runnable: its configuration, sentence-transformers' files,
 * tokenizer and weights bound together, and what turns texts into
 * embeddings with them, as sentence-transformers' encode() does:
 *
 *   - the prompt (config_sentence_transformers.json) is put before the
 *     text;
 *   - whitespace is stripped from both ends, and the text lowercased when
 *     sentence_bert_config.json says do_lower_case, as Python's str.strip()
 *     and str.lower() do;
 *   - the tokenizer (tokenizer.json) makes at most the maximum length of
 *     ids, [CLS] and [SEP] included, truncating from the right or the left
 *     or refusing the text;
 *   - the BERT forward pass and the pooling (mean or CLS), then the first
 *     dimensions kept and normalized when asked.
 *
 * Pure: no I/O but through the reader it is made with, no D-Bus, no event
 * loop. An EmbeddingModel is immutable once made: any number of worker
 * threads use one at once, each with an EmbeddingScratch of its own. It
 * points into the weights' mappings (in f32 over F32 files) and must be
 * freed before they are unmapped.
 *
 * Messages never quote the model's files (see bert.h); texts are named by
 * their index. */

/* Tokens one scratch runs at once: batches are packed to this many tokens
 * (with no padding, see bert_embed()), which keeps the matrix products
 * large enough for sgemm to run at full speed while a worker's buffers
 * stay modest (about 56 MiB at hidden 384, 113 MiB at 768). Sequences up
 * to the model's maximum length always fit: a model whose maximum length
 * is larger gets one sequence's room. */
#define EMBEDDING_BATCH_TOKENS 4096U

typedef struct EmbeddingModel EmbeddingModel;
typedef struct EmbeddingScratch EmbeddingScratch;   /* one per worker */

/* Where a model's files come from. */
typedef struct EmbeddingSource {
        const char *name;                 /* the model, for messages */
        /* Reads a small file of the model's folder ("config.json",
         * "modules.json", "1_Pooling/config.json"…). */
        st_read_file_t read_file;
        /* Opens a file of the model's folder for reading: a descriptor, or
         * -ENOENT when there is none, another negative errno otherwise
         * (with a message in *ret_error if it can say more). For
         * tokenizer.json, which may be large and is read in place. */
        int (*open_file)(const char *path, void *userdata, char **ret_error);
        void *userdata;
        /* The tensors of its weights files (tensor-list.h). */
        const BertTensor *tensors;
        size_t n_tensors;
} EmbeddingSource;

#define EMBEDDING_TOKENIZER_FILE "tokenizer.json"

/* Asked now and then while the model is made and while texts are run;
 * true stops the work (-ECANCELED). */
typedef bool (*embedding_cancel_t)(void *userdata);

/* Makes the model in that precision. Returns 0 and the model in *ret, or
 *   -EOPNOTSUPP  a model this code does not run: no config.json or
 *                tokenizer.json, a configuration, pipeline, tokenizer or
 *                dtype other than those bert.h, st-config.h and
 *                tokenizer.h run,
 *   -EBADMSG     files that are not valid, or disagree with each other (a
 *                tensor missing or misshapen, a tokenizer whose ids go
 *                beyond the model's vocabulary),
 *   -ECANCELED, -ENOMEM, or what reading a file returned,
 * with a message for people in *ret_error (may be NULL). */
int embedding_model_new(const EmbeddingSource *source, Precision precision, embedding_cancel_t cancel,
                        void *userdata, EmbeddingModel **ret, char **ret_error);
EmbeddingModel *embedding_model_free(EmbeddingModel *m);
static inline void embedding_model_freep(EmbeddingModel **m) {
        *m = embedding_model_free(*m);
}

typedef struct EmbedOptions {
        int normalize;                 /* -1: the model's default (a Normalize module), 0, 1 */
        bool truncate;                 /* false: a text over the maximum length is an error naming its index */
        TokenizerTruncation direction; /* TOKENIZER_TRUNCATE_RIGHT or _LEFT when truncating */
        const char *prompt_name;       /* NULL: the default prompt, if any; "": none */
        size_t dimensions;             /* 0: all */
} EmbedOptions;

/* The options as a caller gives them when it gives none. */
#define EMBED_OPTIONS_DEFAULT ((EmbedOptions) { .normalize = -1, .truncate = true, \
                                                .direction = TOKENIZER_TRUNCATE_RIGHT })

/* Cheap, on the loop, before a request is queued: -EINVAL with a message
 * for an unknown prompt name, dimensions beyond the hidden size, or a
 * normalize or direction out of range. */
int embedding_options_check(const EmbeddingModel *m, const EmbedOptions *o, char **ret_error);

size_t embedding_model_dimensions(const EmbeddingModel *m);    /* the hidden size */
Precision embedding_model_precision(const EmbeddingModel *m);
/* Tokens a text may make, [CLS] and [SEP] included. */
size_t embedding_model_max_length(const EmbeddingModel *m);
/* Memory of its own, in whole pages: the weights it converted, its
 * tokenizer and configuration. To be charged to the model. */
uint64_t embedding_model_bytes(const EmbeddingModel *m);
/* false: the weights' file mappings may be dropped (every weight was
 * converted); true: the model reads them where they are mapped. */
bool embedding_model_needs_mappings(const EmbeddingModel *m);
const BertConfig *embedding_model_config(const EmbeddingModel *m);
const StConfig *embedding_model_st_config(const EmbeddingModel *m);

/* A worker's buffers, for EMBEDDING_BATCH_TOKENS tokens at once. */
int embedding_scratch_new(const EmbeddingModel *m, EmbeddingScratch **ret);
uint64_t embedding_scratch_bytes(const EmbeddingScratch *s);   /* to charge per worker */
EmbeddingScratch *embedding_scratch_free(EmbeddingScratch *s);
static inline void embedding_scratch_freep(EmbeddingScratch **s) {
        *s = embedding_scratch_free(*s);
}

/* On a worker: texts[i] of lengths[i] bytes (any bytes; invalid UTF-8 is
 * read as the tokenizer reads it), n texts, n > 0. Returns 0 with
 * *ret_vectors a malloc'd array of n × *ret_dims floats, row i text i's
 * embedding (dims: o->dimensions, or the hidden size), and in *ret_tokens
 * the tokens run. A text that makes no token at all (possible only with a
 * tokenizer that adds no [CLS] and [SEP]) gets zeros, as mean pooling over
 * nothing gives. Errors, with a message in *ret_error:
 *   -E2BIG      truncation is off and a text makes more tokens than the
 *               model takes: its index in *ret_failed_index,
 *   -EINVAL     options that embedding_options_check() refuses,
 *   -ECANCELED  cancel (may be NULL) said so,
 *   -ENOMEM.
 * OpenBLAS must be loaded (blas_init()). The outputs are untouched on
 * failure, but for *ret_failed_index with -E2BIG. */
int embedding_run(const EmbeddingModel *m, EmbeddingScratch *s, const char *const *texts, const size_t *lengths,
                  size_t n, const EmbedOptions *o, bool (*cancel)(void *), void *userdata,
                  float **ret_vectors, size_t *ret_dims, uint64_t *ret_tokens, size_t *ret_failed_index,
                  char **ret_error);
