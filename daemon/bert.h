/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "precision.h"

/* BERT encoders, as transformers' BertModel defines them, for sentence
 * embeddings: the configuration read from config.json, the weights bound
 * from a model's tensors, and the forward pass with pooling.
 *
 * A BertModel is immutable once made: several workers run it at once, each
 * with a BertScratch of its own. In precision f32 it uses F32 weights where
 * they are mapped (zero copy) and converts the others once, when it is made,
 * into memory of its own that the caller charges to the model; in f16, q8
 * and q4 (precision.h) it converts every weight, and the mapping can then
 * be let go. Nothing here does I/O or knows the loader: tensors come as
 * (name, dtype, shape, data) entries.
 *
 * Messages never quote the files: they name the file and the member, or
 * the tensor by its canonical name (without the "bert." prefix), and give
 * numbers. */

/* Bounds on a configuration: above every published BERT (bert-large:
 * hidden 1024, 24 layers, 16 heads, intermediate 4096, 512 positions;
 * multilingual vocabularies: 250k), low enough that every size computed
 * from them fits in 64 bits and every matrix dimension in an int. */
#define BERT_VOCAB_MAX          (UINT32_C(1) << 20)
#define BERT_HIDDEN_MAX         8192U
#define BERT_LAYERS_MAX         128U
#define BERT_HEADS_MAX          256U
#define BERT_INTERMEDIATE_MAX   65536U
#define BERT_POSITIONS_MAX      8192U
#define BERT_TYPE_VOCAB_MAX     16U
/* Tokens one scratch is made for (max_batch × max_length): 8 GiB of
 * activations at hidden 1024, far more than a worker should ever hold. */
#define BERT_SCRATCH_TOKENS_MAX (UINT64_C(1) << 20)

#define BERT_CONFIG_FILE "config.json"
/* The prefix transformers adds when the encoder is part of a larger model
 * (BertForMaskedLM and the like); tensors are found with or without it. */
#define BERT_TENSOR_PREFIX "bert."

typedef struct BertConfig {
        uint32_t vocab_size;
        uint32_t hidden_size;
        uint32_t n_layers;                /* num_hidden_layers */
        uint32_t n_heads;                 /* num_attention_heads, dividing hidden_size */
        uint32_t intermediate_size;
        uint32_t max_position_embeddings;
        uint32_t type_vocab_size;
        float layer_norm_eps;
} BertConfig;

/* Reads config.json (length bytes of text, need not be NUL-terminated).
 * Returns 0 and fills *ret, or
 *   -EBADMSG     not a valid configuration (malformed JSON, a member
 *                missing, of the wrong kind or out of the bounds above),
 *   -EOPNOTSUPP  a valid configuration of a model this code does not run:
 *                model_type other than "bert", hidden_act other than
 *                "gelu" (the exact erf form), position_embedding_type other
 *                than "absolute",
 *   -ENOMEM,
 * with a message in *ret_error (may be NULL) for the first two. Members
 * not used here are ignored; layer_norm_eps defaults to 1e-12 and
 * type_vocab_size to 2, as in transformers. */
int bert_config_parse(const char *text, size_t length, BertConfig *ret, char **ret_error);

/* One tensor of the model's files. dtype and shape as the safetensors
 * header gives them; data: the elements, little-endian as in the file,
 * length bytes. F32 data is used where it is (it must then stay mapped as
 * long as the model lives) when it is aligned for a float; anything else
 * is converted. */
typedef struct BertTensor {
        const char *name;
        const char *dtype;
        const uint64_t *shape;
        size_t n_dims;
        const void *data;
        uint64_t length;
} BertTensor;

typedef struct BertModel BertModel;

/* What the weights of a model of that configuration take in memory in
 * precision p, in whole pages, as bert_model_converted_bytes() will say
 * once every weight is converted: for the memory each precision would take,
 * before loading. (In f32 over F32 files nothing is converted: the weights
 * are the mapping.) */
uint64_t bert_weights_bytes(const BertConfig *config, Precision p);

/* Binds the weights of the configuration's encoder from the tensors, found
 * by name with or without BERT_TENSOR_PREFIX (the LayerNorm's "gamma" and
 * "beta" of old checkpoints stand for "weight" and "bias"); tensors not
 * needed are ignored (pooler, heads, position_ids…). Weight matrices and
 * embedding tables are kept in precision, biases and LayerNorm parameters
 * in F32. Returns 0 and a new model in *ret, or
 *   -EBADMSG     a tensor is missing, given twice (with and without the
 *                prefix), shaped other than the configuration says, or its
 *                length does not match its shape,
 *   -EOPNOTSUPP  a needed tensor's dtype is none of F32, F16 and BF16,
 *   -ENOMEM,
 * with a message naming the tensor in *ret_error (may be NULL). The model
 * keeps pointers into the tensors' data (see bert_model_uses_tensor_data())
 * and copies of nothing else. */
int bert_model_new(const BertConfig *config, const BertTensor *tensors, size_t n_tensors, Precision precision,
                   BertModel **ret, char **ret_error);
BertModel *bert_model_free(BertModel *m);
static inline void bert_model_freep(BertModel **m) {
        *m = bert_model_free(*m);
}

const BertConfig *bert_model_config(const BertModel *m);
Precision bert_model_precision(const BertModel *m);
/* Memory the model holds of its own: the tensors it converted (F16, BF16,
 * unaligned F32, all of them in another precision than f32), in whole
 * pages. 0 when every weight is used in place. */
uint64_t bert_model_converted_bytes(const BertModel *m);
/* Whether the model reads weights where the tensors' data is: the data
 * must then stay mapped while the model lives. False in precisions other
 * than f32, and in f32 when no tensor was F32. */
bool bert_model_uses_tensor_data(const BertModel *m);

/* One worker's buffers for the activations, for batches of up to
 * max_batch × max_length tokens, no sequence longer than max_length, and,
 * in precisions other than f32, for a layer's largest matrix decoded to
 * F32 before each product (so those precisions cost a decoding of the
 * weights per batch: larger batches spread it). */
typedef struct BertScratch BertScratch;

/* -EINVAL when max_batch or max_length is 0, max_length exceeds
 * max_position_embeddings or the product BERT_SCRATCH_TOKENS_MAX; -ENOMEM. */
int bert_scratch_new(const BertModel *m, size_t max_batch, size_t max_length, BertScratch **ret);
BertScratch *bert_scratch_free(BertScratch *s);
static inline void bert_scratch_freep(BertScratch **s) {
        *s = bert_scratch_free(*s);
}
/* What the buffers take, in whole pages: to be charged to the model. */
uint64_t bert_scratch_bytes(const BertScratch *s);
size_t bert_scratch_max_length(const BertScratch *s);

typedef enum BertPooling {
        BERT_POOLING_MEAN,        /* average of the sequence's token vectors */
        BERT_POOLING_CLS,         /* the first token's vector */
        _BERT_POOLING_MAX,
} BertPooling;

const char *bert_pooling_to_string(BertPooling p);

/* One sequence of token ids, [CLS] and [SEP] included (the tokenizer's
 * post-processor adds them). Token types are all 0, positions from 0. */
typedef struct BertInput {
        const uint32_t *ids;
        size_t n_ids;
} BertInput;

/* Asked between two layers; returning true stops the computation. */
typedef bool (*bert_cancel_t)(void *userdata);

typedef struct BertEmbedOptions {
        BertPooling pooling;
        bool normalize;           /* to unit L2 norm, after the truncation */
        size_t dimensions;        /* the first components kept: 1…hidden_size, 0 for all */
        bert_cancel_t cancel;     /* may be NULL */
        void *userdata;
} BertEmbedOptions;

/* The embedding of each input, in order: row i of vectors (n_inputs rows of
 * the dimensions kept, hidden_size when 0) is input i's. The inputs are run
 * in batches as large as the scratch allows, with the tokens of a batch's
 * sequences one after another and no padding at all: every matrix product
 * is a cblas_sgemm over all of a batch's tokens, and each sequence attends
 * to its own tokens only, which is what BERT's attention mask does to
 * padding. So sequences of any lengths batch together without waste.
 * Returns 0, or
 *   -EINVAL     an input is empty or longer than the scratch's max_length,
 *               or dimensions exceeds hidden_size,
 *   -ERANGE     a token id is not below vocab_size,
 *   -ECANCELED  cancel said so,
 * checking the inputs before computing anything; vectors is undefined on
 * failure. OpenBLAS must be loaded (blas_init()). The scratch must have
 * been made for this model and be used by one thread at a time; the model
 * can be used by any number at once. */
int bert_embed(const BertModel *m, BertScratch *s, const BertInput *inputs, size_t n_inputs,
               const BertEmbedOptions *options, float *vectors);
