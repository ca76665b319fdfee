/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "download.h"
#include "macro.h"
#include "registry.h"
#include "store.h"
#include "strv.h"
#include "trash.h"

typedef struct Fixture {
        char root[64];
        char models[PATH_MAX];
} Fixture;

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);

        assert_non_null(f);
        strcpy(f->root, "/tmp/test-registry-XXXXXX");
        assert_non_null(mkdtemp(f->root));
        snprintf(f->models, sizeof f->models, "%s/models", f->root);
        assert_int_equal(mkdir(f->models, 0755), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        assert_int_equal(nftw(f->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
        free(f);
        return 0;
}

_printf_(1, 2) static char *path_printf(const char *format, ...) {
        static char buffers[4][PATH_MAX];
        static unsigned next;
        char *p = buffers[next++ % ELEMENTSOF(buffers)];
        va_list ap;
        int n;

        va_start(ap, format);
        n = vsnprintf(p, PATH_MAX, format, ap);
        va_end(ap);
        assert_true(n > 0 && n < PATH_MAX);
        return p;
}

static void make_directories(const char *path) {
        char buffer[PATH_MAX];

        strcpy(buffer, path);
        for (char *p = buffer + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                assert_true(mkdir(buffer, 0755) == 0 || errno == EEXIST);
                *p = '/';
        }
        assert_true(mkdir(buffer, 0755) == 0 || errno == EEXIST);
}

static void write_file(const char *path, const char *contents) {
        char parent[PATH_MAX];
        FILE *f;

        strcpy(parent, path);
        *strrchr(parent, '/') = 0;
        make_directories(parent);
        f = fopen(path, "we");
        assert_non_null(f);
        assert_true(fputs(contents, f) >= 0);
        assert_int_equal(fclose(f), 0);
}

static char *read_text(const char *path) {
        static char buffer[PATH_MAX + 2];
        FILE *f = fopen(path, "re");
        size_t n;

        assert_non_null(f);
        n = fread(buffer, 1, sizeof buffer - 1, f);
        fclose(f);
        buffer[n] = 0;
        return buffer;
}

static bool exists(const char *path) {
        struct stat st;

        return lstat(path, &st) >= 0;
}

static unsigned count_files(const char *directory) {
        DIR *d = opendir(directory);
        struct dirent *de;
        unsigned n = 0;

        if (!d)
                return 0;
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        n++;
        closedir(d);
        return n;
}

static void test_add_and_remove(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_strv_free_ char **names = NULL;
        char elsewhere[PATH_MAX];

        strcpy(elsewhere, path_printf("%s/elsewhere", f->root));
        write_file(path_printf("%s/model.safetensors", elsewhere), "w");

        assert_int_equal(registry_add(f->models, "acme/llm", elsewhere), 0);
        assert_string_equal(read_text(path_printf("%s/" STORE_REGISTRY_DIR "/acme--llm", f->models)),
                            path_printf("%s\n", elsewhere));
        /* Written whole, nothing left beside it. */
        assert_int_equal(count_files(path_printf("%s/" STORE_REGISTRY_DIR, f->models)), 1);

        assert_int_equal(registry_add(f->models, "acme/llm", "/other"), -EEXIST);
        assert_string_equal(read_text(path_printf("%s/" STORE_REGISTRY_DIR "/acme--llm", f->models)),
                            path_printf("%s\n", elsewhere));

        /* The store reads what was written. */
        assert_int_equal(store_resolve(f->models, NULL, "acme/llm", &l, NULL), 0);
        assert_int_equal(l->source, MODEL_SOURCE_LOCAL);
        assert_string_equal(l->directory, elsewhere);
        assert_int_equal(store_list(f->models, NULL, &names), 0);
        assert_int_equal(strv_length(names), 1);
        assert_string_equal(names[0], "acme/llm");

        assert_int_equal(registry_add(f->models, "bad", "relative"), -EINVAL);
        assert_int_equal(registry_add(f->models, "bad", "/a/../b"), -EINVAL);

        /* Dropping a registration leaves the directory alone. */
        assert_int_equal(registry_remove(f->models, "acme/llm"), 0);
        assert_false(exists(path_printf("%s/" STORE_REGISTRY_DIR "/acme--llm", f->models)));
        assert_true(exists(path_printf("%s/model.safetensors", elsewhere)));
        assert_int_equal(registry_remove(f->models, "acme/llm"), -ENOENT);
}

static void test_missing_model_dir(void **state) {
        Fixture *f = *state;

        assert_int_equal(registry_add(path_printf("%s/nothing", f->root), "a", "/x"), -ENOENT);
        assert_int_equal(registry_remove(path_printf("%s/nothing", f->root), "a"), -ENOENT);
        assert_int_equal(registry_remove(f->models, "a"), -ENOENT);
}

static void test_bounded(void **state) {
        Fixture *f = *state;

        for (unsigned i = 0; i < STORE_REGISTRY_MAX; i++)
                write_file(path_printf("%s/" STORE_REGISTRY_DIR "/m%u", f->models, i), "/x\n");
        /* Hidden files do not count. */
        write_file(path_printf("%s/" STORE_REGISTRY_DIR "/.tmp-0123456789abcdef", f->models), "/x");
        assert_int_equal(registry_add(f->models, "one-more", "/x"), -EUSERS);
        assert_int_equal(registry_remove(f->models, "m0"), 0);
        assert_int_equal(registry_add(f->models, "one-more", "/x"), 0);

        registry_clean(f->models);
        assert_false(exists(path_printf("%s/" STORE_REGISTRY_DIR "/.tmp-0123456789abcdef", f->models)));
        assert_int_equal(count_files(path_printf("%s/" STORE_REGISTRY_DIR, f->models)), STORE_REGISTRY_MAX);
}

static void test_registry_not_through_a_symlink(void **state) {
        Fixture *f = *state;

        make_directories(path_printf("%s/outside", f->root));
        assert_int_equal(symlink("../outside", path_printf("%s/" STORE_REGISTRY_DIR, f->models)), 0);
        assert_int_equal(registry_add(f->models, "a", "/x"), -ENOTDIR);
        assert_int_equal(count_files(path_printf("%s/outside", f->root)), 0);
}

static void test_trash(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *entry = NULL, *single = NULL, *link_entry = NULL;
        char trash[PATH_MAX], elsewhere[PATH_MAX];

        strcpy(trash, path_printf("%s/" TRASH_DIR, f->models));
        strcpy(elsewhere, path_printf("%s/elsewhere", f->root));
        write_file(path_printf("%s/keep", elsewhere), "k");

        write_file(path_printf("%s/acme/llm/model.safetensors", f->models), "w");
        write_file(path_printf("%s/acme/llm/1_Pooling/config.json", f->models), "{}");
        /* Links are deleted, never followed. */
        assert_int_equal(symlink(elsewhere, path_printf("%s/acme/llm/outside", f->models)), 0);
        assert_int_equal(symlink(path_printf("%s/keep", elsewhere), path_printf("%s/acme/llm/k", f->models)), 0);
        write_file(path_printf("%s/acme/other/model.safetensors", f->models), "w");

        assert_int_equal(trash_move(f->models, "acme/llm", &entry), 0);
        assert_false(exists(path_printf("%s/acme/llm", f->models)));
        assert_true(exists(path_printf("%s/%s/1_Pooling/config.json", trash, entry)));
        assert_non_null(strstr(entry, "acme--llm."));
        /* Another model is still in the organisation folder. */
        assert_true(exists(path_printf("%s/acme/other", f->models)));

        assert_int_equal(trash_delete(f->models, entry), 0);
        assert_int_equal(count_files(trash), 0);
        assert_true(exists(path_printf("%s/keep", elsewhere)));

        /* The last model of an organisation takes its folder along. */
        assert_int_equal(trash_move(f->models, "acme/other", &single), 0);
        assert_false(exists(path_printf("%s/acme", f->models)));

        /* A model folder that is a symlink: the symlink goes. */
        write_file(path_printf("%s/tiny/model.safetensors", f->models), "w");
        assert_int_equal(symlink("tiny", path_printf("%s/alias", f->models)), 0);
        assert_int_equal(trash_move(f->models, "alias", &link_entry), 0);
        trash_empty(f->models);
        assert_int_equal(count_files(trash), 0);
        assert_true(exists(path_printf("%s/tiny/model.safetensors", f->models)));

        {
                char *none = NULL;

                assert_int_equal(trash_move(f->models, "missing", &none), -ENOENT);
                assert_int_equal(trash_move(f->models, "nope/missing", &none), -ENOENT);
                /* Through a symlinked organisation folder: left alone. */
                write_file(path_printf("%s/real/m/model.safetensors", f->models), "w");
                assert_int_equal(symlink("real", path_printf("%s/orglink", f->models)), 0);
                assert_int_equal(trash_move(f->models, "orglink/m", &none), -EXDEV);
                assert_true(exists(path_printf("%s/real/m/model.safetensors", f->models)));
                assert_null(none);
        }
}

static void test_trash_depth_bounded(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *entry = NULL;
        char deep[PATH_MAX];
        int n;

        n = snprintf(deep, sizeof deep, "%s/deep", f->models);
        for (unsigned i = 0; i < TRASH_DEPTH_MAX + 2; i++)
                n += snprintf(deep + n, sizeof deep - n, "/d");
        write_file(path_printf("%s/f", deep), "x");
        write_file(path_printf("%s/deep/model.safetensors", f->models), "w");

        assert_int_equal(trash_move(f->models, "deep", &entry), 0);
        assert_int_equal(trash_delete(f->models, entry), -ELOOP);
        /* What could be deleted is; the rest waits in the trash. */
        assert_false(exists(path_printf("%s/" TRASH_DIR "/%s/model.safetensors", f->models, entry)));
        assert_int_equal(count_files(path_printf("%s/" TRASH_DIR, f->models)), 1);
}

static void test_metadata_file_name(void **state) {
        /* Pull writes the file the store reads. */
        assert_string_equal(DOWNLOAD_METADATA_FILE, STORE_PULL_METADATA_FILE);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_add_and_remove, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_model_dir, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bounded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_registry_not_through_a_symlink, setup, teardown),
                cmocka_unit_test_setup_teardown(test_trash, setup, teardown),
                cmocka_unit_test_setup_teardown(test_trash_depth_bounded, setup, teardown),
                cmocka_unit_test(test_metadata_file_name),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
