/* SPDX-License-Identifier: MIT */
#pragma once

/* The element-wise functions of the forward pass (daemon/bert.c), written
 * so that the compiler vectorizes them: libm's erff() and expf() are calls,
 * one element at a time, and took a fifth of an embedding's time, as much
 * as a third of what sgemm takes. Accurate to float's own precision for
 * what BERT does with them (see tests/unit/test-vector-math.c). */

#include <stddef.h>

/* x·Φ(x), Φ the normal CDF from erf: BERT's exact GELU. Largest error
 * against erff()'s: 2e-7 of max(|x|, 1). */
void vector_gelu(float *x, size_t n);

/* x[i] = e^(x[i] − shift) for each i, and the sum of the results. For
 * softmax: shift the largest x, so that no result exceeds 1. Relative error
 * against expf()'s: 3e-7; arguments below −87 give e^−87 (not 0). */
float vector_exp_sum(float *x, size_t n, float shift);
