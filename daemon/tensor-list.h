/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bert.h"

/* The tensors of a model's safetensors files as the (name, dtype, shape,
 * data) entries bert_model_new() binds, read from each file's header with
 * the in-place JSON reader (json-scan.h).
 *
 * Nothing of a header is trusted beyond what the validator
 * (safetensors_validate_header()) checked: each header is copied out of
 * the file (or its mapping) first, the copy is validated, and only the
 * copy is read, so that a file rewritten meanwhile cannot make us read
 * what was not checked. Names are decoded (they may hold JSON escapes).
 *
 * A list holds the names, dtypes and shapes itself; the entries' data
 * point into the caller's mappings. It is needed only while a model is
 * being made: bert_model_new() keeps pointers into the data, not into the
 * list. */

typedef struct TensorList {
        BertTensor *tensors;
        size_t n_tensors;
        /* Where each tensor's data begins in its file: F32 data is used in
         * place only when it is aligned for a float. */
        uint64_t *file_offsets;

        /* The names and shapes, one block of each per file. */
        void **blocks;
        size_t n_blocks;
} TensorList;

/* Asked about once per MiB of header; true stops the read (-ECANCELED). */
typedef bool (*tensor_list_cancel_t)(void *userdata);

/* Adds the tensors of the safetensors file mapped whole at data (length
 * bytes, the file's size). file names it in messages. Returns 0, or
 *   -EBADMSG     the header is not valid (the validator's words, after the
 *                file's name, in *ret_error),
 *   -ECANCELED, -ENOMEM.
 * The list is unchanged on failure. */
int tensor_list_add_mapped(TensorList *l, const void *data, uint64_t length, const char *file,
                           tensor_list_cancel_t cancel, void *userdata, char **ret_error);

/* The same from the descriptor of a safetensors file (read with pread(),
 * its offset neither used nor moved), for what a model is before it is
 * mapped: the entries' data are NULL, their lengths and file offsets
 * known. -EIO also when the file changes size while it is read, and the
 * errno of a failed read (with a message). */
int tensor_list_add_fd(TensorList *l, int fd, const char *file, tensor_list_cancel_t cancel, void *userdata,
                       char **ret_error);

void tensor_list_done(TensorList *l);

/* The list of one header's text (length bytes), as if a file of
 * file_size bytes began with it (8 bytes of length, then the text) and
 * data were that file's first byte (may be NULL). For tests and fuzzing. */
int tensor_list_add_header(TensorList *l, const char *header, size_t length, uint64_t file_size, const void *data,
                           tensor_list_cancel_t cancel, void *userdata, char **ret_error);
