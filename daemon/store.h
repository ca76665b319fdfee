/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"
#include "strv.h"

/* The model store: maps model names to the files on disk. Two roots are
 * searched. ModelDir holds one directory per model, named by its path
 * relative to the root ("name" or "org/name"). A Hugging Face cache (the
 * "hub" folder) holds models--ORG--NAME (or models--NAME) directories whose
 * refs/main names the snapshot in use; those models are named "ORG/NAME".
 * When both roots know a name, ModelDir wins.
 *
 * A model directory holds either model.safetensors or
 * model.safetensors.index.json plus the shards its weight_map names. The
 * store only finds files and reads the index; the loader validates the
 * safetensors content. */

/* Bounds on what a store may make us read or hold. */
#define STORE_LIST_MAX          4096U
#define STORE_INDEX_SIZE_MAX    (UINT64_C(64) * 1024 * 1024)
#define STORE_SHARDS_MAX        10000U

#define STORE_SINGLE_WEIGHTS_FILE "model.safetensors"
#define STORE_INDEX_FILE          "model.safetensors.index.json"

typedef struct ModelLocation {
        char *name;
        char *directory;         /* absolute; the snapshot directory for the HF cache */
        char **weight_paths;     /* absolute, sorted, no duplicates, NULL-terminated; in the
                                  * HF cache these are symlinks into blobs/ to be opened
                                  * following links */
        size_t n_weights;
        bool from_hf_cache;
} ModelLocation;

/* Returns NULL. */
ModelLocation *model_location_free(ModelLocation *l);
static inline void model_location_freep(ModelLocation **l) {
        *l = model_location_free(*l);
}

/* Finds the model's files. The name must already be valid
 * (model_name_validate()); either root may be NULL or missing.
 * Returns 0 and a new ModelLocation in *ret, or
 *   -ENOENT   no root holds a model of that name,
 *   -EBADMSG  the directory is there but is not a valid model (no weights
 *             file, malformed or oversized index, a shard missing or named
 *             with a path),
 *   another negative errno on I/O failure or lack of memory.
 * On failure, if ret_error is non-NULL it receives a message for people
 * saying what is wrong and where (NULL only if even that allocation
 * failed). */
int store_resolve(const char *model_dir, const char *hf_cache, const char *name, ModelLocation **ret,
                  char **ret_error);

/* Lists the names of the models in both roots: sorted, without duplicates,
 * NULL-terminated, at most STORE_LIST_MAX (a warning is logged about the
 * rest). Missing roots are not an error; entries that cannot be read are
 * logged and skipped, as are directories that are not models or whose names
 * are not valid model names. Lists only that models look present: a listed
 * model can still fail store_resolve(). */
int store_list(const char *model_dir, const char *hf_cache, char ***ret_names);
