/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "loader.h"

/* A loaded model's weights: its mappings, reference-counted. The pool holds
 * one reference while the model is loaded; each user (a worker reading the
 * weights, a program they are handed to) holds one more. Unmapping happens
 * when the last reference goes, so no thread ever reads unmapped memory.
 *
 * References are taken and dropped on the loop thread only: a worker gets
 * its reference before its job is submitted and the loop drops it when the
 * job comes back. So the count needs no atomics. */

typedef struct ModelWeights {
        unsigned n_ref;
        LoaderMapping *mappings;
        size_t n_mappings;
        bool locked;              /* every mapping is mlock()ed */
} ModelWeights;

/* Takes ownership of the mappings. NULL on OOM, the mappings then released. */
ModelWeights *model_weights_new(LoaderMapping *mappings, size_t n_mappings, bool locked);
ModelWeights *model_weights_ref(ModelWeights *w);
/* Unmaps at the last reference. */
ModelWeights *model_weights_unref(ModelWeights *w);
