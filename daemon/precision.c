/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "macro.h"
#include "precision.h"

/* The blocks of q8 and q4, as they are laid out in memory. */
typedef struct BlockQ8 {
        float scale;
        int8_t q[PRECISION_BLOCK];
} BlockQ8;

typedef struct BlockQ4 {
        float min;
        float step;
        uint8_t q[PRECISION_BLOCK / 2];   /* weight 2i in the low nibble, 2i + 1 in the high */
} BlockQ4;

static const char *const names[_PRECISION_MAX] = {
        [PRECISION_F32] = "f32",
        [PRECISION_F16] = "f16",
        [PRECISION_Q8] = "q8",
        [PRECISION_Q4] = "q4",
};

const char *precision_to_string(Precision p) {
        return p >= 0 && p < _PRECISION_MAX ? names[p] : NULL;
}

Precision precision_from_string(const char *s) {
        if (s)
                for (size_t i = 0; i < ELEMENTSOF(names); i++)
                        if (strcmp(s, names[i]) == 0)
                                return (Precision) i;
        return _PRECISION_INVALID;
}

static uint64_t blocks(uint64_t columns) {
        return (columns + PRECISION_BLOCK - 1) / PRECISION_BLOCK;
}

uint64_t precision_row_bytes(Precision p, uint64_t columns) {
        switch (p) {
        case PRECISION_F32:
                return columns * 4;
        case PRECISION_F16:
                return columns * 2;
        case PRECISION_Q8:
                return blocks(columns) * sizeof(BlockQ8);
        case PRECISION_Q4:
                return blocks(columns) * sizeof(BlockQ4);
        default:
                assert(false);
                return 0;
        }
}

float f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t) (h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
        float f;

        if (exponent == 0x1f)           /* infinities and NaNs */
                bits = sign | UINT32_C(0x7f800000) | mantissa << 13;
        else if (exponent > 0)          /* rebias from 15 to 127 */
                bits = sign | (exponent + 112) << 23 | mantissa << 13;
        else {                          /* zero and subnormals: mantissa × 2^-24, exact */
                f = ldexpf((float) mantissa, -24);
                return sign ? -f : f;
        }
        memcpy(&f, &bits, sizeof f);
        return f;
}

float bf16_to_f32(uint16_t b) {
        /* The upper half of an F32. */
        uint32_t bits = (uint32_t) b << 16;
        float f;

        memcpy(&f, &bits, sizeof f);
        return f;
}

uint16_t f32_to_f16(float f) {
        uint32_t x, magnitude, sign;

        memcpy(&x, &f, sizeof x);
        sign = (x >> 16) & 0x8000;
        magnitude = x & UINT32_C(0x7fffffff);

        if (magnitude > UINT32_C(0x7f800000))   /* NaN: stays one, quiet */
                return (uint16_t) (sign | 0x7e00 | ((magnitude >> 13) & 0x3ff));
        if (magnitude >= UINT32_C(0x477ff000))  /* rounds to 65520 or more: infinity */
                return (uint16_t) (sign | 0x7c00);
        if (magnitude < UINT32_C(0x38800000)) { /* below 2^-14: a subnormal half, or 0 */
                float v;
                memcpy(&v, &magnitude, sizeof v);
                /* v·2^24 is exact, and below 1024; rounding to the nearest
                 * integer, ties to even, is the half's mantissa (1024, the
                 * smallest normal, when it rounds up). */
                return (uint16_t) (sign | (uint32_t) lrintf(v * 16777216.0f));
        }
        /* Rebias the exponent and round 23 bits of mantissa to 10, ties to
         * even; a carry moves into the exponent, as it should. */
        magnitude += UINT32_C(0xfff) + ((magnitude >> 13) & 1);
        return (uint16_t) (sign | ((magnitude >> 13) - (UINT32_C(112) << 10)));
}

static float block_scale(const float *in, size_t n, float levels) {
        float largest = 0;

        for (size_t i = 0; i < n; i++)
                largest = fmaxf(largest, fabsf(in[i]));
        return largest / levels;
}

/* x in steps (inverse: 1 / the step), to the nearest, within low…high. */
static int quantize(float x, float inverse, int low, int high) {
        long q = lrintf(x * inverse);

        return (int) MAX(low, MIN(high, q));
}

void precision_encode_row(Precision p, const float *in, size_t columns, void *out) {
        switch (p) {
        case PRECISION_F32:
                memcpy(out, in, columns * sizeof(float));
                break;

        case PRECISION_F16: {
                uint16_t *h = out;
                for (size_t i = 0; i < columns; i++)
                        h[i] = f32_to_f16(in[i]);
                break;
        }

        case PRECISION_Q8: {
                BlockQ8 *b = out;
                for (size_t start = 0; start < columns; start += PRECISION_BLOCK, b++) {
                        size_t n = MIN(PRECISION_BLOCK, columns - start);
                        float scale = block_scale(in + start, n, 127), inverse = scale > 0 ? 1 / scale : 0;

                        memset(b, 0, sizeof *b);
                        b->scale = scale;
                        for (size_t i = 0; i < n; i++)
                                b->q[i] = (int8_t) quantize(in[start + i], inverse, -127, 127);
                }
                break;
        }

        case PRECISION_Q4: {
                BlockQ4 *b = out;
                for (size_t start = 0; start < columns; start += PRECISION_BLOCK, b++) {
                        size_t n = MIN(PRECISION_BLOCK, columns - start);
                        float min = in[start], max = in[start], inverse;

                        for (size_t i = 1; i < n; i++) {
                                min = fminf(min, in[start + i]);
                                max = fmaxf(max, in[start + i]);
                        }
                        memset(b, 0, sizeof *b);
                        b->min = min;
                        b->step = (max - min) / 15;
                        inverse = b->step > 0 ? 1 / b->step : 0;
                        for (size_t i = 0; i < n; i++) {
                                uint8_t q = (uint8_t) quantize(in[start + i] - min, inverse, 0, 15);
                                b->q[i / 2] |= (uint8_t) (i % 2 == 0 ? q : q << 4);
                        }
                }
                break;
        }

        default:
                assert(false);
        }
}

void precision_decode_rows(Precision p, const void *matrix, size_t columns, size_t first, size_t n_rows,
                           float *out) {
        const uint8_t *row = (const uint8_t *) matrix + first * precision_row_bytes(p, columns);

        switch (p) {
        case PRECISION_F32:
                memcpy(out, row, n_rows * columns * sizeof(float));
                break;

        case PRECISION_F16: {
                const uint16_t *h = (const uint16_t *) row;
                for (size_t i = 0; i < n_rows * columns; i++)
                        out[i] = f16_to_f32(h[i]);
                break;
        }

        case PRECISION_Q8: {
                const BlockQ8 *b = (const BlockQ8 *) row;
                for (size_t r = 0; r < n_rows; r++)
                        for (size_t start = 0; start < columns; start += PRECISION_BLOCK, b++) {
                                size_t n = MIN(PRECISION_BLOCK, columns - start);
                                for (size_t i = 0; i < n; i++)
                                        *out++ = b->scale * (float) b->q[i];
                        }
                break;
        }

        case PRECISION_Q4: {
                const BlockQ4 *b = (const BlockQ4 *) row;
                for (size_t r = 0; r < n_rows; r++)
                        for (size_t start = 0; start < columns; start += PRECISION_BLOCK, b++) {
                                size_t n = MIN(PRECISION_BLOCK, columns - start);
                                for (size_t i = 0; i < n; i++) {
                                        uint8_t byte = b->q[i / 2];
                                        *out++ = b->min + b->step * (float) (i % 2 == 0 ? byte & 0x0f : byte >> 4);
                                }
                        }
                break;
        }

        default:
                assert(false);
        }
}
