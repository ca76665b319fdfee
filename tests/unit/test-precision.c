/* SPDX-License-Identifier: MIT */
/* The encodings of weights: halves both ways (every half, and against the
 * compiler's own conversion), bfloat16, and the q8 and q4 blocks' error
 * bounds and layout. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "macro.h"
#include "precision.h"

static uint32_t float_bits(float f) {
        uint32_t b;

        memcpy(&b, &f, sizeof b);
        return b;
}

static float bits_float(uint32_t b) {
        float f;

        memcpy(&f, &b, sizeof f);
        return f;
}

static void test_names(void **state) {
        for (Precision p = 0; p < _PRECISION_MAX; p++)
                assert_int_equal(precision_from_string(precision_to_string(p)), p);
        assert_string_equal(precision_to_string(PRECISION_Q4), "q4");
        assert_int_equal(precision_from_string("F32"), _PRECISION_INVALID);
        assert_int_equal(precision_from_string("q5"), _PRECISION_INVALID);
        assert_int_equal(precision_from_string(""), _PRECISION_INVALID);
        assert_int_equal(precision_from_string(NULL), _PRECISION_INVALID);
        assert_null(precision_to_string(_PRECISION_MAX));
        assert_null(precision_to_string(_PRECISION_INVALID));
}

static void test_f16(void **state) {
        /* Every half widens and comes back the same; NaNs stay NaNs. */
        for (uint32_t h = 0; h <= 0xffff; h++) {
                float f = f16_to_f32((uint16_t) h);

                if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
                        assert_true(isnan(f));
                        assert_int_equal(f32_to_f16(f) & 0x7c00, 0x7c00);
                        assert_true(f32_to_f16(f) & 0x3ff);
                } else
                        assert_int_equal(f32_to_f16(f), h);
        }

        assert_true(f16_to_f32(0x3c00) == 1.0f);
        assert_true(f16_to_f32(0xc000) == -2.0f);
        assert_true(f16_to_f32(0x7bff) == 65504.0f);
        assert_true(f16_to_f32(0x0001) == ldexpf(1, -24));
        assert_true(f16_to_f32(0x7c00) == INFINITY);

        /* Ties go to even; past the largest half, infinity. */
        assert_int_equal(f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);
        assert_int_equal(f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
        assert_int_equal(f32_to_f16(65519.0f), 0x7bff);
        assert_int_equal(f32_to_f16(65520.0f), 0x7c00);
        assert_int_equal(f32_to_f16(-1e10f), 0xfc00);
        assert_int_equal(f32_to_f16(ldexpf(1, -25)), 0x0000);        /* a tie with 0: even */
        assert_int_equal(f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
        assert_int_equal(f32_to_f16(ldexpf(1, -14) - ldexpf(1, -26)), 0x0400); /* up to the smallest normal */
        assert_int_equal(f32_to_f16(-0.0f), 0x8000);
        assert_int_equal(f32_to_f16(1e-30f), 0x0000);

#ifdef __FLT16_MAX__
        /* The compiler's conversion (IEEE, to nearest, ties to even) on
         * floats of every exponent. */
        srand(1);
        for (unsigned i = 0; i < 2000000; i++) {
                uint32_t bits = (uint32_t) rand() << 1 ^ (uint32_t) rand();
                float f = bits_float(bits);
                _Float16 h = (_Float16) f;
                uint16_t want;

                if (isnan(f))
                        continue;
                memcpy(&want, &h, sizeof want);
                if (f32_to_f16(f) != want)
                        fail_msg("%a (0x%08x): 0x%04x, not 0x%04x", f, bits, f32_to_f16(f), want);
        }
#endif
}

static void test_bf16(void **state) {
        assert_true(bf16_to_f32(0x3f80) == 1.0f);
        assert_true(bf16_to_f32(0xc040) == -3.0f);
        assert_int_equal(float_bits(bf16_to_f32(0x7f80)), 0x7f800000);
        assert_int_equal(float_bits(bf16_to_f32(0x0001)), 0x00010000);
}

static void test_row_bytes(void **state) {
        assert_int_equal(precision_row_bytes(PRECISION_F32, 384), 1536);
        assert_int_equal(precision_row_bytes(PRECISION_F16, 384), 768);
        /* Blocks of 32: a scale and 32 bytes; a minimum, a step and 16. */
        assert_int_equal(precision_row_bytes(PRECISION_Q8, 384), 12 * 36);
        assert_int_equal(precision_row_bytes(PRECISION_Q4, 384), 12 * 24);
        /* A partial block takes a whole one's room. */
        assert_int_equal(precision_row_bytes(PRECISION_Q8, 33), 2 * 36);
        assert_int_equal(precision_row_bytes(PRECISION_Q4, 1), 24);
        assert_int_equal(precision_row_bytes(PRECISION_F16, 3), 6);
}

/* Encodes rows × columns values and decodes them back, every row at once
 * and each on its own; returns the largest error, relative to each block's
 * largest magnitude (q8) or range (q4). */
static double round_trip(Precision p, const float *in, size_t rows, size_t columns) {
        size_t row_bytes = precision_row_bytes(p, columns);
        _cleanup_free_ uint8_t *encoded = malloc(rows * row_bytes);
        _cleanup_free_ float *out = malloc(rows * columns * sizeof(float)), *one = malloc(columns * sizeof(float));
        double worst = 0;

        assert_non_null(encoded);
        assert_non_null(out);
        assert_non_null(one);
        for (size_t r = 0; r < rows; r++)
                precision_encode_row(p, in + r * columns, columns, encoded + r * row_bytes);
        precision_decode_rows(p, encoded, columns, 0, rows, out);

        for (size_t r = 0; r < rows; r++) {
                precision_decode_rows(p, encoded, columns, r, 1, one);
                assert_memory_equal(one, out + r * columns, columns * sizeof(float));

                for (size_t start = 0; start < columns; start += PRECISION_BLOCK) {
                        size_t n = MIN(PRECISION_BLOCK, columns - start);
                        const float *x = in + r * columns + start, *y = out + r * columns + start;
                        float largest = 0, min = x[0], max = x[0], unit;

                        for (size_t i = 0; i < n; i++) {
                                largest = fmaxf(largest, fabsf(x[i]));
                                min = fminf(min, x[i]);
                                max = fmaxf(max, x[i]);
                        }
                        unit = p == PRECISION_Q4 ? max - min : largest;
                        for (size_t i = 0; i < n; i++) {
                                double e = fabs((double) y[i] - x[i]);
                                if (unit > 0)
                                        worst = fmax(worst, e / unit);
                                else
                                        assert_true(e == 0);
                        }
                }
        }
        return worst;
}

static void test_blocks(void **state) {
        static const size_t shapes[][2] = { { 1, 1 }, { 3, 32 }, { 5, 33 }, { 4, 80 }, { 2, 384 } };
        float in[2 * 384];

        srand(2);
        for (size_t s = 0; s < ELEMENTSOF(shapes); s++) {
                size_t rows = shapes[s][0], columns = shapes[s][1];

                for (size_t i = 0; i < rows * columns; i++)
                        /* Of several magnitudes, and some blocks not centred on 0. */
                        in[i] = ((float) rand() / RAND_MAX - 0.3f) * (i % 97 < 40 ? 1e-3f : 5.0f);

                /* Half a step at most, and a little for rounding. */
                assert_true(round_trip(PRECISION_Q8, in, rows, columns) <= 0.5 / 127 + 1e-6);
                assert_true(round_trip(PRECISION_Q4, in, rows, columns) <= 0.5 / 15 + 1e-6);
                assert_true(round_trip(PRECISION_F16, in, rows, columns) <= ldexp(1, -11));
                assert_true(round_trip(PRECISION_F32, in, rows, columns) == 0);
        }

        /* A block of zeros, one of a single value, the extremes: exact. */
        memset(in, 0, sizeof in);
        assert_true(round_trip(PRECISION_Q8, in, 2, 40) == 0);
        assert_true(round_trip(PRECISION_Q4, in, 2, 40) == 0);
        for (size_t i = 0; i < 64; i++)
                in[i] = 0.25f;
        assert_true(round_trip(PRECISION_Q4, in, 1, 64) == 0);
        assert_true(round_trip(PRECISION_Q8, in, 1, 64) == 0);
        for (size_t i = 0; i < 32; i++)
                in[i] = i % 2 ? -7.5f : 2.5f;
        assert_true(round_trip(PRECISION_Q4, in, 1, 32) == 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_names),
                cmocka_unit_test(test_f16),
                cmocka_unit_test(test_bf16),
                cmocka_unit_test(test_row_bytes),
                cmocka_unit_test(test_blocks),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
