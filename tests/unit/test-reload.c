/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "macro.h"
#include "manager.h"
#include "service.h"
#include "pool.h"
#include "reload.h"

#define MiB (UINT64_C(1) << 20)

/* A manager configured from a file, as start-up leaves it, without a bus or
 * an event loop: reloading needs neither. */
typedef struct Fixture {
        char dir[64];
        char path[128];
        Manager *m;
} Fixture;

static void write_config(const Fixture *f, const char *pool_section) {
        FILE *file = fopen(f->path, "we");

        assert_non_null(file);
        fprintf(file, "[Store]\nModelDir=%s\n\n[Pool]\n%s", f->dir, pool_section);
        assert_int_equal(fclose(file), 0);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        if (!f)
                return -1;
        strcpy(f->dir, "/tmp/test-reload.XXXXXX");
        if (!mkdtemp(f->dir))
                return -1;
        snprintf(f->path, sizeof f->path, "%s/mpoold.conf", f->dir);
        write_config(f, "MemoryLimit=512M\nIdleTimeoutSec=300\nMaxConcurrentLoads=4\n");

        if (manager_new(&f->m) < 0 || config_init_defaults(&f->m->config) < 0 ||
            config_load_file(&f->m->config, f->path, true, NULL) < 0 || manager_configure(f->m, &f->m->config) < 0)
                return -1;
        /* The tests need a host with more than 512 MiB. */
        if (f->m->pool.memory_limit != 512 * MiB)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        manager_free(f->m);
        (void) unlink(f->path);
        (void) rmdir(f->dir);
        free(f);
        return 0;
}

static void test_applies_run_time_settings(void **state) {
        Fixture *f = *state;

        write_config(f, "MemoryLimit=256M\nIdleTimeoutSec=10min\nMaxConcurrentLoads=2\n");
        assert_int_equal(reload_config(f->m, f->path, true), 0);
        assert_true(f->m->pool.memory_limit == 256 * MiB);
        assert_int_equal(f->m->pool.idle_timeout_sec, 600);
        /* Read only at start-up: unchanged until a restart. */
        assert_int_equal(f->m->config.max_concurrent_loads, 4);

        write_config(f, "MemoryLimit=1G\nIdleTimeoutSec=infinity\n");
        assert_int_equal(reload_config(f->m, f->path, true), 0);
        assert_true(f->m->pool.memory_limit == 1024 * MiB);
        assert_int_equal(f->m->pool.idle_timeout_sec, KEEP_ALIVE_FOREVER);

        /* Keys left out fall back to their defaults, as at start-up. */
        write_config(f, "");
        assert_int_equal(reload_config(f->m, f->path, true), 0);
        assert_int_equal(f->m->pool.idle_timeout_sec, CONFIG_IDLE_TIMEOUT_SEC_DEFAULT);
}

static void test_bad_file_changes_nothing(void **state) {
        Fixture *f = *state;

        /* The good line before the bad one is not applied either. */
        write_config(f, "IdleTimeoutSec=5\nMemoryLimit=lots\n");
        assert_int_equal(reload_config(f->m, f->path, true), -EINVAL);
        assert_true(f->m->pool.memory_limit == 512 * MiB);
        assert_int_equal(f->m->pool.idle_timeout_sec, 300);

        write_config(f, "IdleTimeoutSec=5\nNoSuchKey=1\n");
        assert_int_equal(reload_config(f->m, f->path, true), -EINVAL);
        assert_int_equal(f->m->pool.idle_timeout_sec, 300);

        assert_int_equal(unlink(f->path), 0);
        assert_int_equal(reload_config(f->m, f->path, true), -ENOENT);
        assert_true(f->m->pool.memory_limit == 512 * MiB);
        assert_int_equal(f->m->pool.idle_timeout_sec, 300);

        /* The default file may be missing, as at start-up: then the defaults apply. */
        assert_int_equal(reload_config(f->m, f->path, false), 0);
        assert_int_equal(f->m->pool.idle_timeout_sec, CONFIG_IDLE_TIMEOUT_SEC_DEFAULT);
}

static void test_limit_below_pinned_is_kept(void **state) {
        Fixture *f = *state;
        PoolModel *model;

        assert_true(pool_add(&f->m->pool, "alpha", &model) >= 0);
        model->state = MODEL_LOADED;
        model->pinned = true;
        model->memory_bytes = 8 * MiB;

        write_config(f, "MemoryLimit=1M\nIdleTimeoutSec=60\n");
        assert_int_equal(reload_config(f->m, f->path, true), -EBUSY);
        assert_true(f->m->pool.memory_limit == 512 * MiB);
        /* What can change still does. */
        assert_int_equal(f->m->pool.idle_timeout_sec, 60);

        write_config(f, "MemoryLimit=8M\nIdleTimeoutSec=60\n");
        assert_int_equal(reload_config(f->m, f->path, true), 0);
        assert_true(f->m->pool.memory_limit == 8 * MiB);
        assert_int_equal(model->state, MODEL_LOADED);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_applies_run_time_settings, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_file_changes_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_below_pinned_is_kept, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
