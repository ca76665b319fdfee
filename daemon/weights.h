/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "embedding-model.h"
#include "loader.h"

/* A loaded model's weights: its mappings, and the EmbeddingModel made over
 * them for a runnable model, reference-counted. The pool holds one
 * reference while the model is loaded; each user (a worker reading the
 * weights, a program they are handed to) holds one more. The EmbeddingModel
 * is freed and the files unmapped when the last reference goes, in that
 * order, so no thread ever reads unmapped memory. Mappings of a model whose
 * weights were all converted have no address any more, only their
 * descriptors.
 *
 * References are taken and dropped on the loop thread only: a worker gets
 * its reference before its job is submitted and the loop drops it when the
 * job comes back. So the count needs no atomics. */

typedef struct ModelWeights {
        unsigned n_ref;
        LoaderMapping *mappings;
        size_t n_mappings;
        bool locked;              /* every mapping is mlock()ed */
        EmbeddingModel *embedding;     /* NULL: a model that cannot be run */
} ModelWeights;

/* Takes ownership of the mappings and of embedding (may be NULL). NULL on
 * OOM, both then freed. */
ModelWeights *model_weights_new(LoaderMapping *mappings, size_t n_mappings, bool locked, EmbeddingModel *embedding);
ModelWeights *model_weights_ref(ModelWeights *w);
/* Unmaps at the last reference. */
ModelWeights *model_weights_unref(ModelWeights *w);
