/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* How a model's weight matrices are kept in memory: the Load option
 * "precision". F32 is used where it is mapped when the files hold F32;
 * the others are made once, at load, and take that much less memory:
 *
 *   f32  4 bytes a weight
 *   f16  2 bytes (IEEE half, rounded to nearest even)
 *   q8   1.125 bytes: blocks of PRECISION_BLOCK weights of a row, each an
 *        F32 scale (the block's largest magnitude / 127) and one signed
 *        byte per weight
 *   q4   0.75 bytes: blocks of PRECISION_BLOCK weights of a row, each its
 *        smallest weight and a step (F32, the block's range / 15) and 4
 *        bits per weight (0…15 steps above the smallest): sixteen levels
 *        over the block's range rather than fifteen over twice its
 *        largest magnitude, which halves the error of weights that are
 *        not centred on 0
 *
 * The last block of a row may be partial; it takes a whole block's room.
 * Matrices are decoded to F32, a whole matrix or some rows at a time, for
 * cblas_sgemm and the embedding lookups. */

#define PRECISION_BLOCK 32U

typedef enum Precision {
        PRECISION_F32,
        PRECISION_F16,
        PRECISION_Q8,
        PRECISION_Q4,
        _PRECISION_MAX,
        _PRECISION_INVALID = -1,
} Precision;

/* "f32", "f16", "q8", "q4"; NULL for anything else. */
const char *precision_to_string(Precision p);
/* The Precision of that name, or _PRECISION_INVALID. */
Precision precision_from_string(const char *s);

/* Bytes one row of columns weights takes. */
uint64_t precision_row_bytes(Precision p, uint64_t columns);

/* One weight of safetensors' 16-bit float types, widened exactly. */
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t b);
/* Rounded to the nearest half (ties to even); beyond the largest half,
 * infinity; NaN stays NaN. */
uint16_t f32_to_f16(float f);

/* Encodes one row of columns floats into out (precision_row_bytes()). */
void precision_encode_row(Precision p, const float *in, size_t columns, void *out);

/* Decodes rows first…first + n_rows of a matrix of columns weights a row,
 * kept in precision p at matrix, into out (n_rows × columns floats). */
void precision_decode_rows(Precision p, const void *matrix, size_t columns, size_t first, size_t n_rows,
                           float *out);
