/* SPDX-License-Identifier: MIT */
#include <stdint.h>
#include <string.h>

#include "vector-math.h"

/* Elements in the block the loops below go through: a count known at
 * compile time, which GCC's -O2 needs to vectorize a loop, and a multiple
 * of every vector width (AVX-512: 16 floats). */
#define BLOCK 16U

/* On x86-64 each function is also built for AVX2 and AVX-512, the right one
 * chosen when the daemon starts (an ifunc): the baseline has only SSE2. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#  define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#  define VECTOR_CLONES
#endif

/* e^x for x in [−87.3, 88.7] without a call or a branch: x = n·ln 2 + r with
 * |r| ≤ ln 2 / 2, e^r from Cephes' expf polynomial, 2^n put in the exponent
 * field. The rounding to n adds and subtracts 1.5·2^23, which leaves n in
 * the low bits of the sum's representation. */
static inline float exp_core(float x) {
        const float round = 12582912.0f;       /* 1.5·2^23 */
        float t, n, r, p;
        uint32_t bits;
        int32_t e;

        x = x < -87.3f ? -87.3f : x;
        x = x > 88.7f ? 88.7f : x;
        t = x * 1.44269504088896341f + round;
        n = t - round;
        memcpy(&bits, &t, sizeof bits);
        e = (int32_t) (bits - 0x4b400000u);     /* n as an integer */
        /* ln 2 in two parts, so that n·ln2_hi is exact. */
        r = x - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        bits = (uint32_t) (e + 127) << 23;
        memcpy(&t, &bits, sizeof t);
        return p * t;
}

/* x·Φ(x) = x/2·(1 + erf(x/√2)), erf from Abramowitz and Stegun's 7.1.26
 * (error at most 1.5e-7): erf(|z|) = 1 − t·P(t)·e^(−z²), t = 1/(1 + p|z|),
 * odd in z. Here with |z| bounded so that e^(−z²) stays in exp_core()'s
 * range: erf is 1 in float long before. */
static inline float gelu_core(float x) {
        float z = x * 0.70710678118654752f, a, t, poly, e;

        a = z < 0 ? -z : z;
        a = a > 9.0f ? 9.0f : a;
        t = 1.0f / (1.0f + 0.3275911f * a);
        poly = 1.061405429f;
        poly = poly * t - 1.453152027f;
        poly = poly * t + 1.421413741f;
        poly = poly * t - 0.284496736f;
        poly = poly * t + 0.254829592f;
        e = 1.0f - poly * t * exp_core(-a * a);
        e = z < 0 ? -e : e;
        return 0.5f * x * (1.0f + e);
}

VECTOR_CLONES void vector_gelu(float *x, size_t n) {
        size_t i = 0;

        for (; i + BLOCK <= n; i += BLOCK)
                for (size_t j = 0; j < BLOCK; j++)
                        x[i + j] = gelu_core(x[i + j]);
        for (; i < n; i++)
                x[i] = gelu_core(x[i]);
}

VECTOR_CLONES float vector_exp_sum(float *x, size_t n, float shift) {
        /* One partial sum per lane, added up at the end: a single running
         * sum would keep the loop from being vectorized. */
        float lanes[BLOCK] = {}, sum = 0;
        size_t i = 0;

        for (; i + BLOCK <= n; i += BLOCK)
                for (size_t j = 0; j < BLOCK; j++) {
                        x[i + j] = exp_core(x[i + j] - shift);
                        lanes[j] += x[i + j];
                }
        for (; i < n; i++) {
                x[i] = exp_core(x[i] - shift);
                sum += x[i];
        }
        for (size_t j = 0; j < BLOCK; j++)
                sum += lanes[j];
        return sum;
}
