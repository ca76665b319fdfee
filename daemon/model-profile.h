/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bert.h"
#include "macro.h"
#include "precision.h"
#include "store.h"

/* What kind of model a folder holds, told cheaply from its small files,
 * before it is loaded, and what it would take in memory in each precision.
 *
 * A model is runnable (kind "embedding") when its config.json describes a
 * BERT encoder bert.h runs (model_type "bert", the exact GELU, absolute
 * positions, within the bounds) and it has a tokenizer.json. Anything else
 * can be held and opened but not run (kind "weights"), and the profile says
 * why: -EOPNOTSUPP for a model of another kind (no config.json, another
 * model_type, no tokenizer.json), -EBADMSG for files that are not valid.
 * The load makes the model runnable for good or finds, reading the rest
 * (sentence-transformers' files, the tokenizer, the tensors), that it
 * cannot be; see model-lifecycle.h. */

typedef enum ModelKind {
        MODEL_KIND_UNKNOWN,       /* not read yet (a model in error) */
        MODEL_KIND_WEIGHTS,
        MODEL_KIND_EMBEDDING,
        _MODEL_KIND_MAX,
} ModelKind;

/* "", "weights", "embedding". */
const char *model_kind_to_string(ModelKind k);

typedef struct ModelProfile {
        ModelKind kind;
        int error;                /* WEIGHTS: why it cannot be run, -EOPNOTSUPP or -EBADMSG (or the errno of
                                   * a file that could not be read) */
        char *reason;             /* WEIGHTS: that, for people ("NAME: there is no tokenizer.json…") */
        BertConfig config;        /* EMBEDDING */
        uint64_t files_bytes;     /* what the weights files' mappings hold: each file in pages */
        uint64_t tokenizer_bytes; /* EMBEDDING: about what its tokenizer will hold */
        /* EMBEDDING: how its tensors are stored, which decides what f32
         * takes: all F32 (and aligned), the files are used where they are
         * mapped; none, every weight is converted and the mappings let go;
         * some, the mappings stay and the others are converted besides. */
        bool all_f32;
        bool some_f32;
} ModelProfile;

#define MODEL_PROFILE_NULL ((ModelProfile) {})

void model_profile_done(ModelProfile *p);
/* Hands *src over to *dst, which is emptied first; *src is left empty. */
void model_profile_move(ModelProfile *dst, ModelProfile *src);

/* Asked between the files; true stops the read (-ECANCELED). */
typedef bool (*model_profile_cancel_t)(void *userdata);

/* Reads the model's profile: config.json and the presence of
 * tokenizer.json in its folder and, for a runnable one, its weights files'
 * headers (n descriptors, with their paths for messages). name is how
 * messages call the model. A model that cannot be run is no failure: its
 * profile says so. Returns 0, -ECANCELED or -ENOMEM. */
int model_profile_read(const ModelFolder *folder, const char *name, const int *weight_fds,
                       char *const *weight_paths, size_t n_weights, model_profile_cancel_t cancel, void *userdata,
                       ModelProfile *ret);

/* Makes a profile of kind WEIGHTS saying why (a printf format), replacing
 * what it said. -ENOMEM leaves it as it was. */
int model_profile_set_weights(ModelProfile *p, int error, const char *format, ...) _printf_(3, 4);

/* What a loaded model of this profile holds in precision p, as its
 * memory_bytes will say: the weights (mapped or converted) and the
 * tokenizer. The weights files' size for a model that cannot be run. */
uint64_t model_profile_memory_bytes(const ModelProfile *p, Precision precision);

/* What loading it in precision p takes at its height: the mappings, and
 * what the conversion makes while they are still there. Admission
 * reserves this. */
uint64_t model_profile_load_bytes(const ModelProfile *p, Precision precision);
