/* SPDX-License-Identifier: MIT */
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

#include "log.h"
#include "store.h"
#include "strv.h"

#define COMMIT "0123456789abcdef0123456789abcdef01234567"

typedef struct Fixture {
        char root[64];          /* the temporary directory */
        char models[PATH_MAX];  /* ModelDir, not created until a test writes into it */
        char hub[PATH_MAX];     /* HuggingFaceCache, likewise */
} Fixture;

/* Creates every missing directory of path, like mkdir -p. */
static void make_directories(const char *path) {
        char buffer[PATH_MAX];

        assert_true(strlen(path) < sizeof buffer);
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

_printf_(1, 2) /* Returns one of a few static buffers, reused in turn: copy what must live
 * longer than a statement or two. */
static char *path_printf(const char *format, ...) {
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

/* Writes a file, creating its parent directories. */
static void write_file(const char *path, const char *contents) {
        char parent[PATH_MAX];
        FILE *f;

        strcpy(parent, path);
        *strrchr(parent, '/') = 0;
        make_directories(parent);

        f = fopen(path, "we");
        assert_non_null(f);
        assert_int_equal(fputs(contents, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

static void make_symlink(const char *target, const char *path) {
        char parent[PATH_MAX];

        strcpy(parent, path);
        *strrchr(parent, '/') = 0;
        make_directories(parent);
        assert_int_equal(symlink(target, path), 0);
}

/* The store does not look inside weights files; any bytes do. */
static void write_weights(const char *path) {
        write_file(path, "not really safetensors");
}

/* An HF cache entry the way huggingface_hub lays it out: the snapshot's
 * files are relative symlinks into blobs/. */
static void make_hf_model(const Fixture *f, const char *repo, const char *const *files) {
        write_file(path_printf("%s/%s/refs/main", f->hub, repo), COMMIT "\n");
        for (size_t i = 0; files[i]; i += 2) {
                const char *blob = path_printf("%s/%s/blobs/blob%zu", f->hub, repo, i);
                write_file(blob, files[i + 1]);
                make_symlink(path_printf("../../blobs/blob%zu", i),
                             path_printf("%s/%s/snapshots/" COMMIT "/%s", f->hub, repo, files[i]));
        }
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);

        assert_non_null(f);
        strcpy(f->root, "/tmp/test-store-XXXXXX");
        assert_non_null(mkdtemp(f->root));
        snprintf(f->models, sizeof f->models, "%s/models", f->root);
        snprintf(f->hub, sizeof f->hub, "%s/hub", f->root);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        assert_int_equal(nftw(f->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
        free(f);
        return 0;
}

/* Resolves a name expected to fail and checks the error and its message. */
static void assert_resolve_fails(const Fixture *f, const char *name, int expected, const char *in_message) {
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_free_ char *error = NULL;

        assert_int_equal(store_resolve(f->models, f->hub, name, &l, &error), expected);
        assert_null(l);
        assert_non_null(error);
        if (!strstr(error, in_message))
                fail_msg("error \"%s\" does not mention \"%s\"", error, in_message);
}

/* As assert_resolve_fails(), and the message must not contain avoid. */
static void assert_resolve_fails_without(const Fixture *f, const char *name, int expected, const char *in_message,
                                         const char *avoid) {
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_free_ char *error = NULL;

        assert_int_equal(store_resolve(f->models, f->hub, name, &l, &error), expected);
        assert_null(l);
        assert_non_null(error);
        if (!strstr(error, in_message))
                fail_msg("error \"%s\" does not mention \"%s\"", error, in_message);
        if (strstr(error, avoid))
                fail_msg("error \"%s\" quotes \"%s\"", error, avoid);
}

/* The descriptor the store hands out is the file at path, opened as the
 * loader needs it. */
static void assert_fd_is(int fd, const char *path) {
        struct stat a, b;
        int flags;

        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &a), 0);
        assert_int_equal(stat(path, &b), 0);
        assert_true(S_ISREG(a.st_mode));
        assert_true(a.st_dev == b.st_dev && a.st_ino == b.st_ino);

        flags = fcntl(fd, F_GETFL);
        assert_true(flags >= 0);
        assert_int_equal(flags & O_ACCMODE, O_RDONLY);
        assert_true(flags & O_NONBLOCK);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static void test_single_file(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_free_ char *error = NULL;

        write_weights(path_printf("%s/tiny/model.safetensors", f->models));
        write_file(path_printf("%s/tiny/config.json", f->models), "{}");

        assert_int_equal(store_resolve(f->models, f->hub, "tiny", &l, &error), 0);
        assert_null(error);
        assert_string_equal(l->name, "tiny");
        assert_string_equal(l->directory, path_printf("%s/tiny", f->models));
        assert_int_equal(l->n_weights, 1);
        assert_string_equal(l->weight_paths[0], path_printf("%s/tiny/model.safetensors", f->models));
        assert_null(l->weight_paths[1]);
        assert_fd_is(l->weight_fds[0], l->weight_paths[0]);
        assert_false(l->from_hf_cache);
}

static void test_sharded(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;

        /* The second shard comes first and both appear several times. */
        write_file(path_printf("%s/big/model.safetensors.index.json", f->models),
                   "{\"metadata\": {\"total_size\": 64},"
                   " \"weight_map\": {\"b.weight\": \"model-00002-of-00002.safetensors\","
                   " \"a.weight\": \"model-00001-of-00002.safetensors\","
                   " \"c.weight\": \"model-00002-of-00002.safetensors\","
                   " \"d.weight\": \"model-00001-of-00002.safetensors\"}}\n");
        write_weights(path_printf("%s/big/model-00001-of-00002.safetensors", f->models));
        write_weights(path_printf("%s/big/model-00002-of-00002.safetensors", f->models));
        /* A file the index does not name is not a weight. */
        write_weights(path_printf("%s/big/model-00003-of-00002.safetensors", f->models));

        assert_int_equal(store_resolve(f->models, NULL, "big", &l, NULL), 0);
        assert_int_equal(l->n_weights, 2);
        assert_string_equal(l->weight_paths[0],
                            path_printf("%s/big/model-00001-of-00002.safetensors", f->models));
        assert_string_equal(l->weight_paths[1],
                            path_printf("%s/big/model-00002-of-00002.safetensors", f->models));
        assert_null(l->weight_paths[2]);
        assert_fd_is(l->weight_fds[0], l->weight_paths[0]);
        assert_fd_is(l->weight_fds[1], l->weight_paths[1]);
}

static void test_single_file_wins_over_index(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;

        write_weights(path_printf("%s/both/model.safetensors", f->models));
        write_file(path_printf("%s/both/model.safetensors.index.json", f->models), "broken");

        assert_int_equal(store_resolve(f->models, NULL, "both", &l, NULL), 0);
        assert_int_equal(l->n_weights, 1);
        assert_string_equal(l->weight_paths[0], path_printf("%s/both/model.safetensors", f->models));
}

static void test_two_segments(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;

        write_weights(path_printf("%s/acme/llm-7b/model.safetensors", f->models));

        assert_int_equal(store_resolve(f->models, f->hub, "acme/llm-7b", &l, NULL), 0);
        assert_string_equal(l->name, "acme/llm-7b");
        assert_string_equal(l->directory, path_printf("%s/acme/llm-7b", f->models));
        assert_string_equal(l->weight_paths[0], path_printf("%s/acme/llm-7b/model.safetensors", f->models));

        /* The organisation alone is a directory without weights. */
        assert_resolve_fails(f, "acme", -EBADMSG, "neither");
}

static void test_relative_model_dir(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        char cwd[PATH_MAX];
        int r;

        write_weights(path_printf("%s/tiny/model.safetensors", f->models));

        assert_non_null(getcwd(cwd, sizeof cwd));
        assert_int_equal(chdir(f->root), 0);
        r = store_resolve("models/", NULL, "tiny", &l, NULL);
        assert_int_equal(chdir(cwd), 0);

        assert_int_equal(r, 0);
        assert_string_equal(l->weight_paths[0], path_printf("%s/tiny/model.safetensors", f->models));
}

static void test_missing(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_free_ char *error = NULL;

        /* Neither root exists. */
        assert_resolve_fails(f, "nothing", -ENOENT, path_printf("%s/nothing", f->models));

        make_directories(f->models);
        make_directories(f->hub);
        assert_resolve_fails(f, "org/nothing", -ENOENT, path_printf("%s/org/nothing", f->models));
        assert_resolve_fails(f, "org/nothing", -ENOENT, path_printf("%s/models--org--nothing", f->hub));

        /* A file of that name is not a model directory. */
        write_file(path_printf("%s/plain", f->models), "x");
        assert_resolve_fails(f, "plain", -ENOENT, "not found");

        assert_int_equal(store_resolve(NULL, NULL, "nothing", &l, &error), -ENOENT);
        assert_null(l);
        assert_non_null(error);
}

static void test_no_weights(void **state) {
        Fixture *f = *state;

        write_file(path_printf("%s/empty/config.json", f->models), "{}");
        assert_resolve_fails(f, "empty", -EBADMSG, path_printf("%s/empty", f->models));

        /* Weights must be regular files. */
        make_directories(path_printf("%s/dir/model.safetensors", f->models));
        assert_resolve_fails(f, "dir", -EBADMSG, "not a regular file");

        make_symlink("nowhere", path_printf("%s/dangling/model.safetensors", f->models));
        assert_resolve_fails(f, "dangling", -EBADMSG, "dangling");
}

static void test_index_missing_shard(void **state) {
        Fixture *f = *state;

        write_file(path_printf("%s/m/model.safetensors.index.json", f->models),
                   "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
                   " \"b\": \"model-00002-of-00002.safetensors\"}}");
        write_weights(path_printf("%s/m/model-00001-of-00002.safetensors", f->models));

        assert_resolve_fails(f, "m", -EBADMSG, "model-00002-of-00002.safetensors is missing");
}

static void write_index(const Fixture *f, const char *contents) {
        write_file(path_printf("%s/m/model.safetensors.index.json", f->models), contents);
}

static void test_index_bad_shard_names(void **state) {
        Fixture *f = *state;
        static const char *const indexes[] = {
                "{\"weight_map\": {\"a\": \"../x\"}}",
                "{\"weight_map\": {\"a\": \"sub/x.safetensors\"}}",
                "{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
                "{\"weight_map\": {\"a\": \"..\"}}",
                "{\"weight_map\": {\"a\": \".\"}}",
                "{\"weight_map\": {\"a\": \"\"}}",
                "{\"weight_map\": {\"a\": \"x\\ny.safetensors\"}}",
        };

        /* A real file outside the model, which none of these may reach. */
        write_weights(path_printf("%s/x", f->models));
        make_directories(path_printf("%s/m/sub", f->models));
        write_weights(path_printf("%s/m/sub/x.safetensors", f->models));

        for (size_t i = 0; i < ELEMENTSOF(indexes); i++) {
                write_index(f, indexes[i]);
                assert_resolve_fails(f, "m", -EBADMSG, "not a plain file name");
        }

        /* The index's strings are the file's content: positions, not quotes. */
        write_index(f, "{\"weight_map\": {\"SECRET-tensor\": \"x.safetensors\", \"b\": \"SECRET/x\"}}");
        assert_resolve_fails_without(f, "m", -EBADMSG, "entry 2", "SECRET");
        write_index(f, "{\"weight_map\": {\"a\": \"x.safetensors\", \"SECRET-tensor\": 1}}");
        assert_resolve_fails_without(f, "m", -EBADMSG, "entry 2", "SECRET");
}

static void test_index_malformed(void **state) {
        Fixture *f = *state;

        write_weights(path_printf("%s/m/model-00001-of-00001.safetensors", f->models));

        write_index(f, "{\"weight_map\": {\"a\": \"model-00001-of-00001.safetensors\"");
        assert_resolve_fails(f, "m", -EBADMSG, "not valid JSON");

        write_index(f, "{\"weight_map\": {\"a\": \"model-00001-of-00001.safetensors\"}} trailing");
        assert_resolve_fails(f, "m", -EBADMSG, "not valid JSON");

        write_index(f, "");
        assert_resolve_fails(f, "m", -EBADMSG, "not valid JSON");

        write_index(f, "[\"model-00001-of-00001.safetensors\"]");
        assert_resolve_fails(f, "m", -EBADMSG, "no \"weight_map\"");

        write_index(f, "{\"weight_map\": [\"model-00001-of-00001.safetensors\"]}");
        assert_resolve_fails(f, "m", -EBADMSG, "no \"weight_map\"");

        write_index(f, "{\"weight_map\": {}}");
        assert_resolve_fails(f, "m", -EBADMSG, "names no tensors");

        write_index(f, "{\"weight_map\": {\"a\": 1}}");
        assert_resolve_fails(f, "m", -EBADMSG, "not a file name");
}

static void test_index_too_large(void **state) {
        Fixture *f = *state;
        const char *path = path_printf("%s/m/model.safetensors.index.json", f->models);

        /* Sparse: the size alone must make the store refuse it. */
        write_index(f, "");
        assert_int_equal(truncate(path, (off_t) STORE_INDEX_SIZE_MAX + 1), 0);
        assert_resolve_fails(f, "m", -EBADMSG, "larger than");
}

static void test_index_too_many_shards(void **state) {
        Fixture *f = *state;
        size_t size = (STORE_SHARDS_MAX + 1) * 64 + 64, n = 0;
        _cleanup_free_ char *index = malloc(size);

        assert_non_null(index);
        n += (size_t) snprintf(index + n, size - n, "{\"weight_map\": {");
        for (unsigned i = 0; i <= STORE_SHARDS_MAX; i++)
                n += (size_t) snprintf(index + n, size - n, "%s\"t%u\": \"s%u.safetensors\"",
                                       i ? "," : "", i, i);
        n += (size_t) snprintf(index + n, size - n, "}}");
        assert_true(n < size);

        write_index(f, index);
        assert_resolve_fails(f, "m", -EBADMSG, "more than");
}

static void test_hf_cache(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL, *sharded = NULL;
        char snapshot[PATH_MAX];

        strcpy(snapshot, path_printf("%s/models--acme--tiny/snapshots/" COMMIT, f->hub));

        make_hf_model(f, "models--acme--tiny",
                      (const char *const[]) { "model.safetensors", "weights", "config.json", "{}", NULL });

        /* No ModelDir at all, and one that does not hold the model. */
        assert_int_equal(store_resolve(NULL, f->hub, "acme/tiny", &l, NULL), 0);
        l = model_location_free(l);
        make_directories(f->models);
        assert_int_equal(store_resolve(f->models, f->hub, "acme/tiny", &l, NULL), 0);

        assert_string_equal(l->name, "acme/tiny");
        assert_string_equal(l->directory, snapshot);
        assert_int_equal(l->n_weights, 1);
        assert_string_equal(l->weight_paths[0], path_printf("%s/model.safetensors", snapshot));
        assert_fd_is(l->weight_fds[0], l->weight_paths[0]);
        assert_true(l->from_hf_cache);

        make_hf_model(f, "models--acme--sharded",
                      (const char *const[]) {
                              "model.safetensors.index.json",
                              "{\"weight_map\": {\"x\": \"model-00002-of-00002.safetensors\","
                              " \"y\": \"model-00001-of-00002.safetensors\"}}",
                              "model-00001-of-00002.safetensors", "one",
                              "model-00002-of-00002.safetensors", "two",
                              NULL });
        assert_int_equal(store_resolve(f->models, f->hub, "acme/sharded", &sharded, NULL), 0);
        assert_int_equal(sharded->n_weights, 2);
        assert_string_equal(sharded->weight_paths[0],
                            path_printf("%s/models--acme--sharded/snapshots/" COMMIT
                                        "/model-00001-of-00002.safetensors", f->hub));
        assert_true(sharded->from_hf_cache);
}

static void test_hf_one_segment_name(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;

        make_hf_model(f, "models--gpt2", (const char *const[]) { "model.safetensors", "w", NULL });

        assert_int_equal(store_resolve(f->models, f->hub, "gpt2", &l, NULL), 0);
        assert_string_equal(l->name, "gpt2");
        assert_string_equal(l->directory, path_printf("%s/models--gpt2/snapshots/" COMMIT, f->hub));
        assert_true(l->from_hf_cache);

        /* Names Hugging Face cannot hold do not map onto its directories. */
        assert_resolve_fails(f, "gpt2-", -ENOENT, "not found");
}

static void test_hf_broken(void **state) {
        Fixture *f = *state;

        make_directories(path_printf("%s/models--acme--norefs/snapshots/" COMMIT, f->hub));
        assert_resolve_fails(f, "acme/norefs", -EBADMSG, "refs/main");

        write_file(path_printf("%s/models--acme--badref/refs/main", f->hub), "../../../etc\n");
        assert_resolve_fails(f, "acme/badref", -EBADMSG, "commit hash");

        write_file(path_printf("%s/models--acme--nosnapshot/refs/main", f->hub), COMMIT);
        assert_resolve_fails(f, "acme/nosnapshot", -EBADMSG, "is missing");

        /* A blob that is gone leaves its symlink dangling. */
        write_file(path_printf("%s/models--acme--noblob/refs/main", f->hub), COMMIT);
        make_symlink("../../blobs/gone",
                     path_printf("%s/models--acme--noblob/snapshots/" COMMIT "/model.safetensors", f->hub));
        assert_resolve_fails(f, "acme/noblob", -EBADMSG, "dangling");

        make_hf_model(f, "models--acme--noweights", (const char *const[]) { "config.json", "{}", NULL });
        assert_resolve_fails(f, "acme/noweights", -EBADMSG, "neither");
}

#define SECRET "mpool-test-secret-0f1e2d"

/* A file outside both roots that no model may reach, holding a string no
 * message may quote. */
static const char *write_secret(const Fixture *f) {
        const char *path = path_printf("%s/outside/secret", f->root);

        write_file(path, "{\"weight_map\": {\"" SECRET "\": \"" SECRET "/x\"}}");
        return path;
}

static void test_symlinks_out_of_model_dir(void **state) {
        Fixture *f = *state;
        char secret[PATH_MAX];

        strcpy(secret, write_secret(f));
        write_weights(path_printf("%s/outside/dir/model.safetensors", f->root));
        write_weights(path_printf("%s/outside/org/m/model.safetensors", f->root));

        /* The weights file, absolute or relative. */
        make_symlink(secret, path_printf("%s/absolute/model.safetensors", f->models));
        assert_resolve_fails_without(f, "absolute", -EBADMSG,
                                     path_printf("%s/absolute/model.safetensors: a symlink on the way is absolute "
                                                 "or leads out of %s;", f->models, f->models), "outside");
        assert_resolve_fails_without(f, "absolute", -EBADMSG, "symlink", SECRET);

        make_symlink("../../outside/secret", path_printf("%s/relative/model.safetensors", f->models));
        assert_resolve_fails_without(f, "relative", -EBADMSG, "relative/model.safetensors: a symlink", "outside");

        /* Through a symlink that stays inside first. */
        make_symlink("../relative/model.safetensors", path_printf("%s/chained/model.safetensors", f->models));
        assert_resolve_fails_without(f, "chained", -EBADMSG, "chained/model.safetensors: a symlink", "outside");

        /* The index, and a shard named by an index inside the store. */
        make_symlink("../../outside/secret", path_printf("%s/index/model.safetensors.index.json", f->models));
        assert_resolve_fails_without(f, "index", -EBADMSG, "index/model.safetensors.index.json: a symlink", SECRET);

        write_file(path_printf("%s/shard/model.safetensors.index.json", f->models),
                   "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}");
        write_weights(path_printf("%s/shard/s1.safetensors", f->models));
        make_symlink(secret, path_printf("%s/shard/s2.safetensors", f->models));
        assert_resolve_fails_without(f, "shard", -EBADMSG, "shard/s2.safetensors: a symlink", "outside");

        /* The model's directory, or its organisation's. */
        make_symlink("../outside/dir", path_printf("%s/dirlink", f->models));
        assert_resolve_fails_without(f, "dirlink", -EBADMSG, "dirlink: a symlink", "outside");
        make_symlink(path_printf("%s/outside/org", f->root), path_printf("%s/orglink", f->models));
        assert_resolve_fails_without(f, "orglink/m", -EBADMSG, "orglink/m: a symlink", "outside");
}

static void test_symlinks_inside_model_dir(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *file = NULL, *dir = NULL, *sharded = NULL;
        const char *target = path_printf("%s/tiny/model.safetensors", f->models);

        write_weights(target);

        /* Relative symlinks that stay inside ModelDir are followed, across
         * models and organisations. */
        make_symlink("../../tiny/model.safetensors", path_printf("%s/acme/copy/model.safetensors", f->models));
        assert_int_equal(store_resolve(f->models, NULL, "acme/copy", &file, NULL), 0);
        assert_string_equal(file->weight_paths[0], path_printf("%s/acme/copy/model.safetensors", f->models));
        assert_fd_is(file->weight_fds[0], target);

        make_symlink("tiny", path_printf("%s/alias", f->models));
        assert_int_equal(store_resolve(f->models, NULL, "alias", &dir, NULL), 0);
        assert_string_equal(dir->weight_paths[0], path_printf("%s/alias/model.safetensors", f->models));
        assert_fd_is(dir->weight_fds[0], target);

        write_file(path_printf("%s/sharded/model.safetensors.index.json", f->models),
                   "{\"weight_map\": {\"a\": \"s.safetensors\"}}");
        make_symlink("../tiny/model.safetensors", path_printf("%s/sharded/s.safetensors", f->models));
        assert_int_equal(store_resolve(f->models, NULL, "sharded", &sharded, NULL), 0);
        assert_fd_is(sharded->weight_fds[0], target);

        /* Absolute symlinks are not, even into the store: RESOLVE_BENEATH
         * cannot tell where they lead without leaving the root. */
        make_symlink(target, path_printf("%s/absolute/model.safetensors", f->models));
        assert_resolve_fails(f, "absolute", -EBADMSG, "only relative symlinks");
}

static void test_hf_symlinks_out_of_repo(void **state) {
        Fixture *f = *state;
        char secret[PATH_MAX];

        strcpy(secret, write_secret(f));

        /* A snapshot file that leads out of its repo: out of the cache, or
         * into another repo's blobs. */
        write_file(path_printf("%s/models--acme--out/refs/main", f->hub), COMMIT);
        make_symlink("../../../../outside/secret",
                     path_printf("%s/models--acme--out/snapshots/" COMMIT "/model.safetensors", f->hub));
        assert_resolve_fails_without(f, "acme/out", -EBADMSG, "model.safetensors: a symlink", "outside");

        make_hf_model(f, "models--acme--tiny", (const char *const[]) { "model.safetensors", "w", NULL });
        write_file(path_printf("%s/models--acme--other/refs/main", f->hub), COMMIT);
        make_symlink("../../../models--acme--tiny/blobs/blob0",
                     path_printf("%s/models--acme--other/snapshots/" COMMIT "/model.safetensors", f->hub));
        assert_resolve_fails(f, "acme/other", -EBADMSG, path_printf("leads out of %s/models--acme--other;", f->hub));

        /* refs/main, the snapshot directory, the repo directory. */
        make_symlink(secret, path_printf("%s/models--acme--ref/refs/main", f->hub));
        assert_resolve_fails_without(f, "acme/ref", -EBADMSG, "refs/main: a symlink", SECRET);

        write_file(path_printf("%s/models--acme--snap/refs/main", f->hub), COMMIT);
        make_directories(path_printf("%s/outside/snapshot", f->root));
        write_weights(path_printf("%s/outside/snapshot/model.safetensors", f->root));
        make_symlink("../../../outside/snapshot", path_printf("%s/models--acme--snap/snapshots/" COMMIT, f->hub));
        assert_resolve_fails_without(f, "acme/snap", -EBADMSG, COMMIT ": a symlink", "outside");

        make_symlink(path_printf("%s/models--acme--tiny", f->hub), path_printf("%s/models--acme--repo", f->hub));
        assert_resolve_fails(f, "acme/repo", -EBADMSG, "models--acme--repo: a symlink");
}

static void test_list_beneath(void **state) {
        Fixture *f = *state;
        _cleanup_strv_free_ char **names = NULL;

        write_weights(path_printf("%s/outside/dir/model.safetensors", f->root));
        write_weights(path_printf("%s/outside/org/m/model.safetensors", f->root));
        write_weights(path_printf("%s/tiny/model.safetensors", f->models));

        /* Directories that lead out are skipped; a model is listed by the
         * names of its files, and fails to resolve if they lead out. */
        make_symlink("../outside/dir", path_printf("%s/dirlink", f->models));
        make_symlink(path_printf("%s/outside/org", f->root), path_printf("%s/orglink", f->models));
        make_symlink("../../outside/dir/model.safetensors", path_printf("%s/filelink/model.safetensors", f->models));
        make_symlink("../tiny", path_printf("%s/org/alias", f->models));
        make_hf_model(f, "models--acme--tiny", (const char *const[]) { "model.safetensors", "w", NULL });
        make_symlink("models--acme--tiny", path_printf("%s/models--acme--alias", f->hub));
        make_symlink("../outside", path_printf("%s/models--acme--out", f->hub));

        assert_int_equal(store_list(f->models, f->hub, &names), 0);
        assert_int_equal(strv_length(names), 5);
        assert_string_equal(names[0], "acme/alias");
        assert_string_equal(names[1], "acme/tiny");
        assert_string_equal(names[2], "filelink");
        assert_string_equal(names[3], "org/alias");
        assert_string_equal(names[4], "tiny");
}

static void test_model_dir_precedence(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL, *hf = NULL;

        write_weights(path_printf("%s/acme/tiny/model.safetensors", f->models));
        make_hf_model(f, "models--acme--tiny", (const char *const[]) { "model.safetensors", "w", NULL });

        assert_int_equal(store_resolve(f->models, f->hub, "acme/tiny", &l, NULL), 0);
        assert_false(l->from_hf_cache);
        assert_string_equal(l->directory, path_printf("%s/acme/tiny", f->models));

        /* A ModelDir directory without weights does not hide the cache's model. */
        write_file(path_printf("%s/acme/other/README", f->models), "");
        make_hf_model(f, "models--acme--other", (const char *const[]) { "model.safetensors", "w", NULL });
        assert_int_equal(store_resolve(f->models, f->hub, "acme/other", &hf, NULL), 0);
        assert_true(hf->from_hf_cache);
}

static void test_list(void **state) {
        Fixture *f = *state;
        _cleanup_strv_free_ char **names = NULL;
        /* "linked" is a symlink to a model directory, which makes a model too. */
        static const char *const expected[] = {
                "acme/llm", "acme/sharded", "gpt2", "hf/model", "linked", "tiny",
        };

        /* ModelDir: models one and two levels deep, and everything else. */
        write_weights(path_printf("%s/tiny/model.safetensors", f->models));
        write_weights(path_printf("%s/tiny/nested/model.safetensors", f->models));
        write_weights(path_printf("%s/acme/llm/model.safetensors", f->models));
        write_file(path_printf("%s/acme/sharded/model.safetensors.index.json", f->models), "{}");
        write_file(path_printf("%s/acme/config-only/config.json", f->models), "{}");
        write_file(path_printf("%s/acme/file", f->models), "");
        write_weights(path_printf("%s/deep/er/still/model.safetensors", f->models));
        write_weights(path_printf("%s/bad name/model.safetensors", f->models));
        write_weights(path_printf("%s/.hidden/model.safetensors", f->models));
        write_weights(path_printf("%s/acme/.hidden/model.safetensors", f->models));
        write_file(path_printf("%s/model.safetensors", f->models), "");
        make_directories(path_printf("%s/empty", f->models));
        make_symlink("acme/llm", path_printf("%s/linked", f->models));
        make_symlink("nowhere", path_printf("%s/dangling", f->models));

        /* The cache: one model also in ModelDir, and things that are not models. */
        make_hf_model(f, "models--acme--llm", (const char *const[]) { "model.safetensors", "w", NULL });
        make_hf_model(f, "models--hf--model", (const char *const[]) { "model.safetensors", "w", NULL });
        make_hf_model(f, "models--gpt2", (const char *const[]) { "model.safetensors", "w", NULL });
        make_hf_model(f, "datasets--hf--data", (const char *const[]) { "model.safetensors", "w", NULL });
        make_hf_model(f, "models--hf--nothing", (const char *const[]) { "config.json", "{}", NULL });
        make_hf_model(f, "models--a---b", (const char *const[]) { "model.safetensors", "w", NULL });
        make_hf_model(f, "models--a--b--c", (const char *const[]) { "model.safetensors", "w", NULL });
        make_directories(path_printf("%s/models--hf--norefs/snapshots/" COMMIT, f->hub));
        make_directories(path_printf("%s/.locks/models--hf--model", f->hub));

        assert_int_equal(store_list(f->models, f->hub, &names), 0);
        assert_non_null(names);

        assert_int_equal(strv_length(names), ELEMENTSOF(expected));
        for (size_t i = 0; i < ELEMENTSOF(expected); i++)
                assert_string_equal(names[i], expected[i]);
}

static void test_list_missing_roots(void **state) {
        Fixture *f = *state;
        _cleanup_strv_free_ char **names = NULL, **none = NULL;

        assert_int_equal(store_list(f->models, f->hub, &names), 0);
        assert_non_null(names);
        assert_null(names[0]);

        assert_int_equal(store_list(NULL, NULL, &none), 0);
        assert_non_null(none);
        assert_null(none[0]);
}

static void test_list_bounded(void **state) {
        Fixture *f = *state;
        _cleanup_strv_free_ char **names = NULL;

        for (unsigned i = 0; i < STORE_LIST_MAX + 10; i++)
                write_weights(path_printf("%s/m%05u/model.safetensors", f->models, i));

        assert_int_equal(store_list(f->models, NULL, &names), 0);
        assert_int_equal(strv_length(names), STORE_LIST_MAX);
        for (size_t i = 1; names[i]; i++)
                assert_true(strcmp(names[i - 1], names[i]) < 0);
}

static void test_strv(void **state) {
        _cleanup_strv_free_ char **l = NULL;

        assert_int_equal(strv_length(l), 0);
        assert_false(strv_contains(l, "a"));

        assert_int_equal(strv_extend(&l, "b"), 0);
        assert_int_equal(strv_extend(&l, "a"), 0);
        assert_int_equal(strv_extend(&l, "c"), 0);
        assert_int_equal(strv_length(l), 3);
        assert_true(strv_contains(l, "a"));
        assert_false(strv_contains(l, "d"));

        strv_sort(l);
        assert_string_equal(l[0], "a");
        assert_string_equal(l[1], "b");
        assert_string_equal(l[2], "c");
        assert_null(l[3]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_single_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_sharded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_single_file_wins_over_index, setup, teardown),
                cmocka_unit_test_setup_teardown(test_two_segments, setup, teardown),
                cmocka_unit_test_setup_teardown(test_relative_model_dir, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_weights, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_missing_shard, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_bad_shard_names, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_malformed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_too_large, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_too_many_shards, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hf_cache, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hf_one_segment_name, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hf_broken, setup, teardown),
                cmocka_unit_test_setup_teardown(test_symlinks_out_of_model_dir, setup, teardown),
                cmocka_unit_test_setup_teardown(test_symlinks_inside_model_dir, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hf_symlinks_out_of_repo, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_beneath, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_dir_precedence, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_missing_roots, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_bounded, setup, teardown),
                cmocka_unit_test(test_strv),
        };

        /* Keep the expected warnings (the list bound) out of the output. */
        log_set_max_level(LOG_ERR);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
