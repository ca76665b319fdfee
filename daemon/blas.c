/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "blas.h"
#include "log.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static BlasLibrary library;
/* Set (release) once library and core are filled; read with acquire. */
static const BlasLibrary *loaded;
static char *core;

void blas_cpu_features(BlasCpuFeatures *ret) {
        assert(ret);

        *ret = (BlasCpuFeatures) {};
#if defined(__x86_64__) || defined(__i386__)
        /* GCC's checks ask the kernel too (XGETBV): a flag is set only when
         * the registers it needs are saved on context switches. */
        __builtin_cpu_init();
        ret->avx = __builtin_cpu_supports("avx");
        ret->avx2 = __builtin_cpu_supports("avx2");
        ret->fma = __builtin_cpu_supports("fma");
        ret->avx512f = __builtin_cpu_supports("avx512f");
        ret->avx512bw = __builtin_cpu_supports("avx512bw");
        ret->avx512dq = __builtin_cpu_supports("avx512dq");
        ret->avx512vl = __builtin_cpu_supports("avx512vl");
        ret->avx512cd = __builtin_cpu_supports("avx512cd");
        ret->avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
}

const char *blas_choose_coretype(const BlasCpuFeatures *f) {
        assert(f);

        /* Each set also runs the kernels of the ones below it: the AVX-512
         * sets need AVX2 and FMA as well. */
        bool haswell = f->avx && f->avx2 && f->fma;
        bool skylakex = haswell && f->avx512f && f->avx512bw && f->avx512dq && f->avx512vl && f->avx512cd;

        if (skylakex && f->avx512bf16)
                return "Cooperlake";
        if (skylakex)
                return "SkylakeX";
        if (haswell)
                return "Haswell";
        if (f->avx)
                return "Sandybridge";
        return NULL;
}

/* The environment as it was, to put back after the load. */
typedef struct SavedVariable {
        const char *name;
        char *value;            /* NULL: it was not set */
} SavedVariable;

static int save_and_set(SavedVariable *v, const char *name, const char *value) {
        const char *old = getenv(name);

        v->name = name;
        v->value = NULL;
        if (old) {
                v->value = strdup(old);
                if (!v->value)
                        return -ENOMEM;
        }
        if (value ? setenv(name, value, 1) : unsetenv(name)) {
                free(v->value);
                v->value = NULL;
                return negative_errno();
        }
        return 0;
}

static void restore(SavedVariable *v) {
        if (!v->name)
                return;
        if (v->value)
                (void) setenv(v->name, v->value, 1);
        else
                (void) unsetenv(v->name);
        free(v->value);
        *v = (SavedVariable) {};
}

/* dlopen() with every signal blocked, so that any thread the library's
 * constructor starts receives none of them. */
static void *open_library(const char *name, const char *coretype, int *ret_error) {
        SavedVariable saved_core = {}, saved_threads = {};
        sigset_t all, old;
        void *handle = NULL;
        int r;

        r = save_and_set(&saved_core, "OPENBLAS_CORETYPE", coretype);
        if (r < 0)
                goto finish;
        r = save_and_set(&saved_threads, "OPENBLAS_NUM_THREADS", "1");
        if (r < 0)
                goto finish;

        sigfillset(&all);
        r = -pthread_sigmask(SIG_SETMASK, &all, &old);
        if (r < 0)
                goto finish;
        handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
                r = -ENOENT;
                log_error("Cannot load %s: %s", name, strempty(dlerror()));
        }
        (void) pthread_sigmask(SIG_SETMASK, &old, NULL);

finish:
        restore(&saved_threads);
        restore(&saved_core);
        *ret_error = r;
        return handle;
}

static int bind_symbols(void *handle, const char *name, BlasLibrary *ret) {
        static const struct {
                const char *symbol;
                size_t offset;
        } table[] = {
                { "cblas_sgemm", offsetof(BlasLibrary, cblas_sgemm) },
                { "openblas_set_num_threads", offsetof(BlasLibrary, openblas_set_num_threads) },
                { "openblas_get_corename", offsetof(BlasLibrary, openblas_get_corename) },
                { "openblas_get_config", offsetof(BlasLibrary, openblas_get_config) },
        };
        BlasLibrary l = {};

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                void *p = dlsym(handle, table[i].symbol);
                if (!p) {
                        log_error("%s has no %s: not an OpenBLAS library.", name, table[i].symbol);
                        return -ELIBBAD;
                }
                /* POSIX guarantees that a data pointer from dlsym() converts
                 * to a function pointer; a memcpy says so without a cast
                 * the compiler would warn about. */
                memcpy((char *) &l + table[i].offset, &p, sizeof p);
        }
        *ret = l;
        return 0;
}

int blas_init(const char *name) {
        BlasCpuFeatures features;
        const char *coretype, *in_use, *config;
        BlasLibrary l;
        void *handle;
        char *c;
        int r;

        if (!name)
                name = BLAS_LIBRARY;

        pthread_mutex_lock(&init_lock);
        if (loaded) {
                pthread_mutex_unlock(&init_lock);
                return 0;
        }

        blas_cpu_features(&features);
        coretype = blas_choose_coretype(&features);

        handle = open_library(name, coretype, &r);
        if (!handle)
                goto finish;
        r = bind_symbols(handle, name, &l);
        if (r < 0)
                goto close;

        /* Already 1 from the environment; said again in case the library
         * did not read it (a build without its thread server ignores it). */
        l.openblas_set_num_threads(1);

        in_use = l.openblas_get_corename();
        config = l.openblas_get_config();
        c = strdup(in_use ?: "unknown");
        if (!c) {
                r = log_oom();
                goto close;
        }

        if (coretype && strcasecmp(coretype, c) != 0)
                /* A library built for one CPU, or without that kernel set:
                 * it runs its own choice, which is correct, if slower. */
                log_warning("OpenBLAS runs its %s kernels, not the %s kernels chosen for this CPU.", c, coretype);
        log_info("OpenBLAS: %s kernels (%s), %s, single-threaded.", c,
                 coretype ? "chosen from the CPU's features" : "its own choice: the CPU has no AVX",
                 strempty(config));

        library = l;
        core = c;
        __atomic_store_n(&loaded, &library, __ATOMIC_RELEASE);
        r = 0;
        goto finish;

close:
        dlclose(handle);
finish:
        pthread_mutex_unlock(&init_lock);
        return r;
}

const BlasLibrary *blas_library(void) {
        return __atomic_load_n(&loaded, __ATOMIC_ACQUIRE);
}

const char *blas_core(void) {
        return blas_library() ? core : NULL;
}

void blas_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                const float *b, int ldb, float beta, float *c, int ldc) {
        const BlasLibrary *l = blas_library();

        assert(l);
        l->cblas_sgemm(BLAS_ROW_MAJOR, trans_a ? BLAS_TRANS : BLAS_NO_TRANS, trans_b ? BLAS_TRANS : BLAS_NO_TRANS,
                       m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
