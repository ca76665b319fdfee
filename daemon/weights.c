/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdlib.h>

#include "weights.h"

ModelWeights *model_weights_new(LoaderMapping *mappings, size_t n_mappings, bool locked, EmbeddingModel *embedding) {
        ModelWeights *w = calloc(1, sizeof *w);

        if (!w) {
                embedding_model_free(embedding);
                loader_mappings_release(mappings, n_mappings);
                return NULL;
        }
        *w = (ModelWeights) {
                .n_ref = 1,
                .mappings = mappings,
                .n_mappings = n_mappings,
                .locked = locked,
                .embedding = embedding,
        };
        return w;
}

ModelWeights *model_weights_ref(ModelWeights *w) {
        assert(w && w->n_ref > 0);
        w->n_ref++;
        return w;
}

ModelWeights *model_weights_unref(ModelWeights *w) {
        if (!w)
                return NULL;
        assert(w->n_ref > 0);
        if (--w->n_ref > 0)
                return NULL;
        /* It may point into the mappings. Its converted weights are
         * anonymous mappings: unmapped as quickly as the files'. */
        embedding_model_free(w->embedding);
        /* munmap() of a read-only file mapping does no I/O: quick enough
         * for the loop. */
        loader_mappings_release(w->mappings, w->n_mappings);
        free(w);
        return NULL;
}
