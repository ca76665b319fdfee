/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Validation of safetensors files, done before any tensor byte is trusted.
 *
 * Layout: an 8-byte little-endian u64 N (the header length), N bytes of
 * UTF-8 JSON, then the data section up to the end of the file. The JSON is an
 * object whose optional "__metadata__" member maps strings to strings and
 * whose every other member is a tensor:
 *
 *     "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
 *
 * data_offsets are relative to the data section. The rules are those of the
 * reference reader (the Hugging Face safetensors crate): each tensor's byte
 * range must be exactly as long as its shape and dtype need, the ranges
 * sorted by offset must tile the data section from 0 with neither gap nor
 * overlap, and the data section must end exactly at the end of the file.
 *
 * As in the reference, shapes and offsets are JSON integers (2.0, 2e0 and
 * -0 are floats to it, and refused) and arrays and objects nest at most 127
 * deep. Where this reader is stricter than the reference, it is only for
 * files no writer produces: duplicate member names, NUL characters in
 * strings, whole numbers above 2^53, and the bounds below. Members of a
 * tensor object other than the three above are ignored, as the reference
 * ignores them.
 *
 * The header is read in place, in one pass, keeping 32 bytes per tensor and
 * nothing of ignored values, whatever their size: validating the largest
 * header allowed takes little memory beyond the header itself.
 *
 * Messages never quote the file: they are shown to every local user, and
 * the file may be readable by its owner only. A tensor is named by its index
 * (from 0, in header order) and the header byte where its name begins; the
 * numbers of its shape and offsets, the dtype when it is a known one, and
 * byte offsets are given, names and other strings never. */

/* The reference reader's limit on N. */
#define SAFETENSORS_HEADER_MAX UINT64_C(100000000)
/* Bounds on what one header may describe. */
#define SAFETENSORS_TENSORS_MAX 1000000
#define SAFETENSORS_DIMS_MAX 64
#define SAFETENSORS_NAME_MAX 4096 /* bytes of a tensor name */
/* The length prefix in front of the header. */
#define SAFETENSORS_PREFIX_SIZE 8

typedef struct SafetensorsInfo {
        uint64_t header_length;   /* N */
        uint64_t data_offset;     /* 8 + N: where tensor data starts in the file */
        uint64_t data_length;     /* file size - data_offset */
        size_t n_tensors;
} SafetensorsInfo;

/* Asked now and then while a header is read and validated (about once per
 * MiB of header, and before each step that takes long); returning true
 * stops the validation, which then returns -ECANCELED. Called on the
 * validating thread. */
typedef bool (*safetensors_cancel_t)(void *userdata);

/* Validates a header. json/json_length: the N header bytes (json may be NULL
 * when json_length is 0; it need not be NUL-terminated); file_size: the size
 * of the whole file, which the data section must fill exactly; cancel (may
 * be NULL) and userdata: see above.
 *
 * Returns 0 and fills *ret_info when the header is valid. On a violation of
 * the format returns -EBADMSG and sets *ret_error to a malloc'd message that
 * says what is wrong and where. Other negative errno (-ECANCELED, -ENOMEM)
 * on other failures, with *ret_error left untouched. ret_info and ret_error
 * may each be NULL. Safe to call from several threads at once. */
int safetensors_validate_header(const char *json, size_t json_length, uint64_t file_size,
                                safetensors_cancel_t cancel, void *userdata, SafetensorsInfo *ret_info,
                                char **ret_error);

/* Reads the length prefix and the header from fd with pread() (the file
 * offset is neither used nor moved; the size comes from fstat()), checks the
 * length bounds before allocating anything, then validates the header as
 * above. Same return convention, except that I/O failures return their
 * negative errno (-EIO when the file shrinks while it is read) and also set
 * *ret_error to a message describing them. Memory the header needed is
 * given back to the kernel before it returns, not kept by the allocator. */
int safetensors_validate_fd(int fd, safetensors_cancel_t cancel, void *userdata, SafetensorsInfo *ret_info,
                            char **ret_error);

/* Bits of one element of a dtype ("F32" → 32, "F4" → 4), or 0 when the
 * dtype is unknown. */
unsigned safetensors_dtype_bits(const char *dtype);

typedef struct SafetensorsTensorSpec {
        const char *name;
        const char *dtype;
        const uint64_t *shape;    /* may be NULL when n_dims is 0 (a scalar) */
        size_t n_dims;
} SafetensorsTensorSpec;

/* Serialises a header for the tensors, in the order given, their data laid
 * out contiguously from offset 0 in that order. Returns 0, a malloc'd
 * NUL-terminated JSON object in *ret_json whose length is padded with spaces
 * to a multiple of 8 as the reference writer does (so N = strlen(*ret_json)),
 * and the total data bytes in *ret_data_length. A file is then the 8-byte
 * little-endian N, the JSON, and exactly that many data bytes.
 *
 * -EINVAL for a spec that would not make a valid file (no name, a name
 * of "__metadata__", too long or repeated, an unknown dtype, too many
 * dimensions or tensors, a sub-byte dtype with an element count that is not
 * a whole number of bytes), -EOVERFLOW when a size does not fit in 64 bits,
 * -E2BIG when the header would exceed SAFETENSORS_HEADER_MAX, -ENOMEM. */
int safetensors_build_header(const SafetensorsTensorSpec *tensors, size_t n_tensors, char **ret_json,
                             uint64_t *ret_data_length);
