/* SPDX-License-Identifier: MIT */
/* The vectorized GELU and exponential of the forward pass against libm in
 * double precision, over every range BERT gives them, in lengths that do
 * and do not fill whole blocks. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "macro.h"
#include "vector-math.h"

#define N 20001U

static double gelu_exact(double x) {
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static void test_gelu(void **state) {
        float *x = calloc(N, sizeof *x);
        double worst = 0;

        assert_non_null(x);
        /* −20…20: far past where erf is ±1 in float, both ways. */
        for (size_t i = 0; i < N; i++)
                x[i] = -20.0f + 40.0f * (float) i / (float) (N - 1);
        vector_gelu(x, N);
        for (size_t i = 0; i < N; i++) {
                double in = (double) (-20.0f + 40.0f * (float) i / (float) (N - 1)), error;

                error = fabs(x[i] - gelu_exact(in)) / fmax(fabs(in), 1.0);
                worst = fmax(worst, error);
        }
        printf("gelu: largest error %.3g of max(|x|, 1)\n", worst);
        assert_true(worst <= 2e-7);
        /* Exactly 0 at 0, and x itself far out, as the exact form. */
        x[0] = 0, x[1] = 30, x[2] = -30;
        vector_gelu(x, 3);
        assert_true(x[0] == 0 && x[1] == 30 && x[2] == 0);
        free(x);
}

static void test_exp_sum(void **state) {
        static const size_t lengths[] = { 1, 15, 16, 17, 113, 512 };
        float x[512];

        for (size_t k = 0; k < ELEMENTSOF(lengths); k++) {
                size_t n = lengths[k];
                double sum = 0, worst = 0;
                float got;

                /* Softmax's arguments: scores minus the largest, 0…−87 (below, the range ends). */
                for (size_t i = 0; i < n; i++)
                        x[i] = 5.0f - 87.0f * (float) ((i * 7919) % n) / (float) n;
                got = vector_exp_sum(x, n, 5.0f);
                for (size_t i = 0; i < n; i++) {
                        double want = exp((double) (5.0f - 87.0f * (float) ((i * 7919) % n) / (float) n) - 5.0);

                        sum += x[i];
                        worst = fmax(worst, fabs(x[i] - want) / want);
                }
                printf("exp, %zu elements: largest relative error %.3g\n", n, worst);
                assert_true(worst <= 3e-7);
                assert_true(fabs(got - sum) <= 1e-6 * sum);
        }
        /* Far below the range: e^−87.3, tiny but not 0, nor a denormal. */
        x[0] = -1000;
        assert_true(vector_exp_sum(x, 1, 0) > 0 && x[0] < 1e-37f && isnormal(x[0]));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_gelu),
                cmocka_unit_test(test_exp_sum),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
