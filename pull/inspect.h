/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

/* What --inspect tells before anything is downloaded: from each weights
 * file's safetensors header (fetched with Range requests), validated by the
 * daemon's own validator, the tensors, parameters by dtype, and the memory
 * the model takes once loaded: the daemon maps each weights file whole and
 * counts it in pages, so the same is counted here. */

#define INSPECT_DTYPES_MAX 64U

typedef struct InspectDtype {
        char name[16];
        uint64_t parameters;
} InspectDtype;

typedef struct InspectTotals {
        uint64_t tensors;
        uint64_t parameters;
        uint64_t memory_bytes;
        InspectDtype dtypes[INSPECT_DTYPES_MAX];
        size_t n_dtypes;
} InspectTotals;

/* The header length from the 8-byte prefix of a file of file_size bytes:
 * -EBADMSG (a protocol failure naming the file) when it is beyond the
 * format's limit or the file. */
int inspect_header_length(const uint8_t prefix[static 8], uint64_t file_size, const char *name,
                          uint64_t *ret_length, PullError *e);

/* Validates one file's header (json: its length bytes) and adds what it
 * describes, and the file's memory, to t. */
int inspect_add_file(InspectTotals *t, const char *json, size_t length, uint64_t file_size, const char *name,
                     PullError *e);

/* Prints the TENSORS, PARAMETERS, DTYPE and MEMORY lines. */
int inspect_print(InspectTotals *t);
