/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

/* OpenBLAS, loaded at run time.
 *
 * Debian's OpenBLAS is built for every x86-64 generation at once and picks
 * its kernels when it is loaded, from what it recognizes of the CPU. 0.3.21
 * does not recognize some current CPUs and falls back to its Prescott
 * kernels, five times slower at sgemm than the AVX-512 ones those CPUs run
 * (with the same results). OPENBLAS_CORETYPE overrides its choice, but it
 * is read only once, by the library's constructor. So the library is not
 * linked: blas_init() chooses the kernel set from the CPU's own feature
 * flags (never one the CPU lacks), puts it in the environment, and only
 * then dlopen()s the library.
 *
 * Threads: OpenBLAS runs single-threaded (OPENBLAS_NUM_THREADS=1 at load,
 * so its thread server starts no thread at all, and
 * openblas_set_num_threads(1)); parallelism comes from the daemon's
 * workers, one computation each, as many as there are CPUs. The thread
 * count of OpenBLAS is one setting for the whole process, not per caller,
 * so it cannot be shared out among workers; several workers calling a
 * multi-threaded OpenBLAS at once queue on its one thread server; and its
 * idle threads spin for a while before they sleep, taking CPU time the
 * workers need. One thread per worker and one worker per CPU keeps the
 * machine busy without oversubscribing it.
 *
 * Signals: blas_init() must be called once by the daemon after it has
 * blocked the signals it handles (sigprocmask), and before it starts any
 * thread (setenv() is not safe while other threads may read the
 * environment). Should OpenBLAS ever start a thread, it inherits every
 * signal blocked: blas_init() blocks them all around the dlopen(), and
 * threads started later inherit the mask of the worker that asks, which is
 * the daemon's. The environment is put back as it was after the load, so
 * that programs the daemon starts do not inherit our choice.
 *
 * Only Debian's 32-bit-integer interface is used (libopenblas.so.0; the
 * 64-bit one is libopenblas64.so.0), whose blasint is int. */

#define BLAS_LIBRARY "libopenblas.so.0"

/* The values of CBLAS's enums, fixed by the CBLAS standard. */
typedef enum BlasOrder {
        BLAS_ROW_MAJOR = 101,
        BLAS_COL_MAJOR = 102,
} BlasOrder;

typedef enum BlasTranspose {
        BLAS_NO_TRANS = 111,
        BLAS_TRANS = 112,
} BlasTranspose;

/* The library's entry points, as it exports them. */
typedef struct BlasLibrary {
        void (*cblas_sgemm)(BlasOrder order, BlasTranspose trans_a, BlasTranspose trans_b, int m, int n, int k,
                            float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c,
                            int ldc);
        void (*openblas_set_num_threads)(int n);
        char *(*openblas_get_corename)(void);
        char *(*openblas_get_config)(void);
} BlasLibrary;

/* What of the CPU decides the kernel set: each flag true only when the CPU
 * has the instructions and the kernel saves their registers. */
typedef struct BlasCpuFeatures {
        bool avx;
        bool avx2;
        bool fma;
        bool avx512f;
        bool avx512bw;
        bool avx512dq;
        bool avx512vl;
        bool avx512cd;
        bool avx512bf16;
} BlasCpuFeatures;

/* This CPU's features (all false where they do not apply, as off x86-64). */
void blas_cpu_features(BlasCpuFeatures *ret);

/* The OPENBLAS_CORETYPE for those features, or NULL to let OpenBLAS
 * choose (no AVX: its own detection then only chooses among kernels
 * without AVX, which it does right): "Cooperlake" (the SkylakeX set plus
 * BF16 kernels), "SkylakeX" (AVX-512 F, BW, DQ, VL and CD), "Haswell"
 * (AVX2 and FMA), "Sandybridge" (AVX). */
const char *blas_choose_coretype(const BlasCpuFeatures *features);

/* Loads OpenBLAS (library: a file name for dlopen(), NULL for BLAS_LIBRARY)
 * with the kernel set chosen for this CPU, single-threaded, and logs the
 * kernel set in use and the library's configuration. Safe to call again
 * (and from several threads): once it has succeeded, later calls return 0
 * and keep the library loaded then. Returns
 *   -ENOENT     the library cannot be loaded (logged with dlerror()),
 *   -ELIBBAD    it lacks one of the entry points above,
 *   -ENOMEM.
 * On failure nothing is kept and a later call may try again. */
int blas_init(const char *library);

/* The entry points, or NULL before blas_init() succeeded. */
const BlasLibrary *blas_library(void);

/* The kernel set in use, as OpenBLAS names it ("SkylakeX", "Haswell"…),
 * for the log and Status (blas_core); NULL before blas_init() succeeded. */
const char *blas_core(void);

/* cblas_sgemm in row-major order: C = alpha·op(A)·op(B) + beta·C, op(A)
 * m×k, op(B) k×n, C m×n. blas_init() must have succeeded. */
void blas_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                const float *b, int ldb, float beta, float *c, int ldc);
