/* SPDX-License-Identifier: MIT */
/* sgemm-shapes HIDDEN HEADS INTERMEDIATE LAYERS ROUNDS LENGTH… — the
 * ceiling for embed-throughput: the cblas_sgemm calls of daemon/bert.c's
 * forward pass for one batch of sequences of the given lengths (the
 * projections on all tokens at once, attention per sequence and head), on
 * OpenBLAS loaded as the daemon loads it (daemon/blas.c: the kernel chosen
 * from the CPU, single-threaded), with nothing else between them. Prints
 * one line of key=value: the kernel, seconds per batch, and GFLOP/s for the
 * projections, for attention and for both. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "blas.h"

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static float *filled(size_t n) {
        float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);

        if (!p) {
                fprintf(stderr, "sgemm-shapes: out of memory\n");
                exit(1);
        }
        for (size_t i = 0; i < n; i++)
                p[i] = (float) ((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        return p;
}

int main(int argc, char *argv[]) {
        size_t hidden, heads, inter, layers, rounds, n, tokens = 0, longest = 0, *lengths, d;
        double linear_flops, attention_flops = 0, linear_seconds = 0, attention_seconds = 0;
        float *x, *w, *y, *big, *scores;

        if (argc < 7) {
                fprintf(stderr, "usage: sgemm-shapes HIDDEN HEADS INTERMEDIATE LAYERS ROUNDS LENGTH...\n");
                return 2;
        }
        hidden = strtoul(argv[1], NULL, 10);
        heads = strtoul(argv[2], NULL, 10);
        inter = strtoul(argv[3], NULL, 10);
        layers = strtoul(argv[4], NULL, 10);
        rounds = strtoul(argv[5], NULL, 10);
        n = (size_t) argc - 6;
        if (hidden == 0 || heads == 0 || hidden % heads || inter == 0 || layers == 0 || rounds == 0)
                return 2;
        d = hidden / heads;
        lengths = calloc(n, sizeof *lengths);
        if (!lengths)
                return 1;
        for (size_t i = 0; i < n; i++) {
                lengths[i] = strtoul(argv[6 + i], NULL, 10);
                if (lengths[i] == 0)
                        return 2;
                tokens += lengths[i];
                longest = lengths[i] > longest ? lengths[i] : longest;
                attention_flops += 4.0 * (double) lengths[i] * (double) lengths[i] * (double) hidden;
        }
        linear_flops = 2.0 * (double) tokens * (4.0 * hidden * hidden + 2.0 * hidden * inter);

        if (blas_init(NULL) < 0)
                return 1;
        x = filled(tokens * inter);
        w = filled(inter * hidden);
        y = filled(tokens * inter);
        big = filled(tokens * hidden * 3);
        scores = filled(longest * longest);

        for (size_t round = 0; round <= rounds; round++) {
                double t0, t1, t2;

                t0 = now();
                for (size_t l = 0; l < layers; l++) {
                        for (int p = 0; p < 4; p++)
                                blas_sgemm(false, true, (int) tokens, (int) hidden, (int) hidden, 1, x, (int) hidden,
                                           w, (int) hidden, 1, y, (int) hidden);
                        blas_sgemm(false, true, (int) tokens, (int) inter, (int) hidden, 1, x, (int) hidden, w,
                                   (int) hidden, 1, y, (int) inter);
                        blas_sgemm(false, true, (int) tokens, (int) hidden, (int) inter, 1, x, (int) inter, w,
                                   (int) inter, 1, y, (int) hidden);
                }
                t1 = now();
                for (size_t l = 0; l < layers; l++)
                        for (size_t i = 0, row = 0; i < n; row += lengths[i], i++)
                                for (size_t h = 0; h < heads; h++) {
                                        size_t at = row * hidden + h * d;
                                        int len = (int) lengths[i];

                                        blas_sgemm(false, true, len, len, (int) d, 1, big + at, (int) hidden,
                                                   big + tokens * hidden + at, (int) hidden, 0, scores, len);
                                        blas_sgemm(false, false, len, (int) d, len, 1, scores, len,
                                                   big + 2 * tokens * hidden + at, (int) hidden, 0, y + at,
                                                   (int) hidden);
                                }
                t2 = now();
                if (round == 0)
                        continue;       /* warming up */
                linear_seconds += t1 - t0;
                attention_seconds += t2 - t1;
        }
        linear_seconds /= (double) rounds;
        attention_seconds /= (double) rounds;
        linear_flops *= (double) layers;
        attention_flops *= (double) layers;

        printf("core=%s tokens=%zu seconds=%.6f linear_gflops=%.2f attention_gflops=%.2f gflops=%.2f flops=%.0f\n",
               blas_core(), tokens, linear_seconds + attention_seconds, linear_flops / linear_seconds * 1e-9,
               attention_flops / attention_seconds * 1e-9,
               (linear_flops + attention_flops) / (linear_seconds + attention_seconds) * 1e-9,
               linear_flops + attention_flops);
        return 0;
}
