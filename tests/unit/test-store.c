/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-memory.h"

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
        assert_int_equal(l->source, MODEL_SOURCE_STORE);
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

/* Parses an index's text, which must be valid, and checks the shards it names. */
static void assert_index_shards(const char *text, const char *const *expected) {
        _cleanup_strv_free_ char **shards = NULL;
        _cleanup_free_ char *error = NULL;
        size_t n = 0;
        int r;

        r = store_index_parse(text, strlen(text), NULL, NULL, &shards, &error);
        if (r != 0)
                fail_msg("index %s refused (%d): %s", text, r, strempty(error));
        assert_null(error);
        for (; expected[n]; n++) {
                assert_non_null(shards[n]);
                assert_string_equal(shards[n], expected[n]);
        }
        assert_null(shards[n]);
}

/* The index must be refused with a message holding fact and nothing of the
 * text that holds secret (NULL: none). */
static void assert_index_refused(const char *text, size_t length, const char *fact, const char *secret) {
        _cleanup_strv_free_ char **shards = NULL;
        _cleanup_free_ char *error = NULL;

        assert_int_equal(store_index_parse(text, length, NULL, NULL, &shards, &error), -EBADMSG);
        assert_null(shards);
        assert_non_null(error);
        if (!strstr(error, fact))
                fail_msg("error \"%s\" does not mention \"%s\"", error, fact);
        if (secret && strstr(error, secret))
                fail_msg("error \"%s\" quotes the index", error);
        /* Without a place for the message, the verdict is the same. */
        assert_int_equal(store_index_parse(text, length, NULL, NULL, NULL, NULL), -EBADMSG);
}

static void test_index_parse(void **state) {
        /* As transformers writes it (json.dumps(index, indent=2,
         * sort_keys=True)): metadata first, with total_size. */
        assert_index_shards("{\n"
                            "  \"metadata\": {\n"
                            "    \"total_parameters\": 6738415616,\n"
                            "    \"total_size\": 13476839424\n"
                            "  },\n"
                            "  \"weight_map\": {\n"
                            "    \"lm_head.weight\": \"model-00002-of-00002.safetensors\",\n"
                            "    \"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"
                            "    \"model.layers.0.mlp.down_proj.weight\": \"model-00001-of-00002.safetensors\",\n"
                            "    \"model.norm.weight\": \"model-00002-of-00002.safetensors\"\n"
                            "  }\n"
                            "}\n",
                            (const char *const[]) { "model-00001-of-00002.safetensors",
                                                    "model-00002-of-00002.safetensors", NULL });

        /* Any JSON beside weight_map; escapes in shard names are decoded. */
        assert_index_shards("{\"weight_map\": {\"a\": \"b.safetensors\", \"\\u00e9\": \"a\\u002e\\u0073t\","
                            " \"c\": \"b.safetensors\"}, \"x\": [1.5e3, -0, null, true, {\"y\": [[]]}],"
                            " \"\xc3\xa9t\xc3\xa9\": \"\\ud83d\\ude00\"}",
                            (const char *const[]) { "a.st", "b.safetensors", NULL });

        /* Shards come sorted and once, in whatever order entries name them. */
        assert_index_shards("{\"weight_map\": {\"a\": \"s3\", \"b\": \"s1\", \"c\": \"s2\", \"d\": \"s1\","
                            " \"e\": \"s3\", \"f\": \"s0\", \"g\": \"s2\"}}",
                            (const char *const[]) { "s0", "s1", "s2", "s3", NULL });
}

#define INDEX_SECRET "s3cr3t-Index"

static void test_index_parse_refuses(void **state) {
        char long_name[NAME_MAX + 64];
        char text[2 * NAME_MAX + 256];

        assert_index_refused("", 0, "not valid JSON: the end of the file where a value must be at byte 0", NULL);
        assert_index_refused("   ", 3, "at byte 3", NULL);
        assert_index_refused("{\"weight_map\": {\"a\": \"s\"}", 25, "not valid JSON: a missing ',' or '}' in an "
                             "object at byte 25", NULL);
        assert_index_refused("{\"weight_map\": {\"a\": \"s\"}} " INDEX_SECRET,
                             strlen("{\"weight_map\": {\"a\": \"s\"}} " INDEX_SECRET),
                             "not valid JSON: more than whitespace after the JSON value at byte 27", INDEX_SECRET);
        /* A NUL byte ends nothing: the length given does. */
        assert_index_refused("{\"weight_map\": {\"a\": \"s\"}}\0", 27, "at byte 26", NULL);
        /* A byte order mark is not JSON; transformers refuses it too. */
        assert_index_refused("\xef\xbb\xbf{\"weight_map\": {\"a\": \"s\"}}", 29,
                             "not valid JSON: something other than a JSON value at byte 0", NULL);
        /* Strings must be UTF-8, even those nobody reads. */
        assert_index_refused("{\"x\": \"\xff" INDEX_SECRET "\", \"weight_map\": {\"a\": \"s\"}}",
                             strlen("{\"x\": \"\xff" INDEX_SECRET "\", \"weight_map\": {\"a\": \"s\"}}"),
                             "not valid JSON: a string that is not valid UTF-8 at byte 7", INDEX_SECRET);

        assert_index_refused("[]", 2, "no \"weight_map\" object", NULL);
        assert_index_refused("{\"weight_map\": null}", 20, "no \"weight_map\" object", NULL);
        assert_index_refused("{\"Weight_map\": {\"a\": \"s\"}}", 26, "no \"weight_map\" object", NULL);
        assert_index_refused("{\"weight_map\": {\"a\": \"s\"}, \"weight_map\": {\"a\": \"t\"}}", 52,
                             "\"weight_map\" appears more than once", NULL);
        assert_index_refused("{\"weight_map\": {}}", 18, "\"weight_map\" names no tensors", NULL);

        /* Entries are named by their number, from 1: neither the tensor's
         * name nor the value is quoted. */
        assert_index_refused("{\"weight_map\": {\"a\": \"s\", \"" INDEX_SECRET "\": [\"" INDEX_SECRET "\"]}}",
                             strlen("{\"weight_map\": {\"a\": \"s\", \"" INDEX_SECRET "\": [\"" INDEX_SECRET "\"]}}"),
                             "entry 2 of \"weight_map\" is an array, not a file name", INDEX_SECRET);
        assert_index_refused("{\"weight_map\": {\"a\": \"s\", \"b\": \"t\", \"c\": \"../" INDEX_SECRET "\"}}",
                             strlen("{\"weight_map\": {\"a\": \"s\", \"b\": \"t\", \"c\": \"../" INDEX_SECRET
                                    "\"}}"),
                             "the shard of entry 3 of \"weight_map\" is not a plain file name", INDEX_SECRET);
        /* Escapes are decoded before the name is judged. */
        assert_index_refused("{\"weight_map\": {\"a\": \"x\\u002f" INDEX_SECRET "\"}}",
                             strlen("{\"weight_map\": {\"a\": \"x\\u002f" INDEX_SECRET "\"}}"),
                             "the shard of entry 1 of \"weight_map\" is not a plain file name", INDEX_SECRET);
        assert_index_refused("{\"weight_map\": {\"a\": \"\xc3\xa9" INDEX_SECRET "\"}}",
                             strlen("{\"weight_map\": {\"a\": \"\xc3\xa9" INDEX_SECRET "\"}}"),
                             "entry 1", INDEX_SECRET);
        /* The first entry that is wrong is the one reported. */
        assert_index_refused("{\"weight_map\": {\"a\": 1, \"b\": \"/\"}}", 34, "entry 1 of \"weight_map\" is a number",
                             NULL);

        /* A name just short enough, and one byte longer. */
        memset(long_name, 'n', NAME_MAX);
        long_name[NAME_MAX] = '\0';
        snprintf(text, sizeof text, "{\"weight_map\": {\"a\": \"%s\"}}", long_name);
        assert_index_shards(text, (const char *const[]) { long_name, NULL });
        snprintf(text, sizeof text, "{\"weight_map\": {\"a\": \"%sn\"}}", long_name);
        assert_index_refused(text, strlen(text), "the shard of entry 1 of \"weight_map\" is not a plain file name",
                             NULL);
}

static void test_index_resolve_messages(void **state) {
        Fixture *f = *state;

        /* What store_resolve() says: where the index is, then what is
         * wrong, quoting nothing of it. */
        write_weights(path_printf("%s/m/s", f->models));
        write_index(f, "{\"weight_map\": {\"a\": \"s\", \"" INDEX_SECRET "\" " INDEX_SECRET "}}");
        assert_resolve_fails_without(f, "m", -EBADMSG,
                                     path_printf("%s/m/model.safetensors.index.json: not valid JSON: a missing ':' "
                                                 "after a member name at byte 41.", f->models),
                                     INDEX_SECRET);
        write_index(f, "{\"weight_map\": {\"a\": \"s\", \"b\": {\"" INDEX_SECRET "\": 1}}}");
        assert_resolve_fails_without(f, "m", -EBADMSG,
                                     path_printf("%s/m/model.safetensors.index.json: entry 2 of \"weight_map\" is an "
                                                 "object, not a file name.", f->models),
                                     INDEX_SECRET);
}

#define MiB (UINT64_C(1) << 20)
/* Close to the largest index allowed. */
#define HUGE_INDEX_SIZE (60 * MiB)
#define HUGE_INDEX_SHARDS 4

typedef enum HugeIndex {
        HUGE_INDEX_IGNORED_ARRAY,       /* tens of millions of values under a member nobody reads */
        HUGE_INDEX_MANY_ENTRIES,        /* millions of tensors in weight_map */
} HugeIndex;

typedef struct Writer {
        FILE *f;
        uint64_t written;
} Writer;

_printf_(2, 3) static void writer_printf(Writer *w, const char *format, ...) {
        va_list ap;
        int n;

        va_start(ap, format);
        n = vfprintf(w->f, format, ap);
        va_end(ap);
        assert_true(n >= 0);
        w->written += (uint64_t) n;
}

/* Writes the model "m": an index of exactly HUGE_INDEX_SIZE bytes naming
 * shards s0 to s3, and the shards. */
static void write_huge_index(const Fixture *f, HugeIndex kind) {
        static const char array_tail[] = "]}, \"weight_map\": {\"a\": \"s0\", \"b\": \"s1\", \"c\": \"s2\", \"d\": \"s3\"}}";
        Writer w = {};

        for (unsigned i = 0; i < HUGE_INDEX_SHARDS; i++)
                write_weights(path_printf("%s/m/s%u", f->models, i));

        w.f = fopen(path_printf("%s/m/model.safetensors.index.json", f->models), "we");
        assert_non_null(w.f);
        assert_int_equal(setvbuf(w.f, NULL, _IOFBF, 1 << 20), 0);

        if (kind == HUGE_INDEX_IGNORED_ARRAY) {
                _cleanup_free_ char *chunk = malloc(MiB);

                assert_non_null(chunk);
                for (size_t i = 0; i < MiB; i += 2)
                        memcpy(chunk + i, ",0", 2);

                writer_printf(&w, "{\"metadata\": {\"total_size\": 4, \"ignored\": [0");
                while (w.written + 2 + strlen(array_tail) <= HUGE_INDEX_SIZE) {
                        size_t n = MIN((size_t) MiB, (size_t) (HUGE_INDEX_SIZE - strlen(array_tail) - w.written));

                        n -= n % 2;
                        assert_int_equal(fwrite(chunk, 1, n, w.f), n);
                        w.written += n;
                }
                writer_printf(&w, "%s", array_tail);
        } else {
                writer_printf(&w, "{\"metadata\": {\"total_size\": 4}, \"weight_map\": {\"t0000000\": \"s0\"");
                for (unsigned i = 1; w.written + 32 <= HUGE_INDEX_SIZE; i++)
                        writer_printf(&w, ",\"t%07x\":\"s%u\"", i, i % HUGE_INDEX_SHARDS);
                writer_printf(&w, "}}");
        }
        while (w.written < HUGE_INDEX_SIZE)
                writer_printf(&w, " ");

        assert_int_equal(fclose(w.f), 0);
        assert_int_equal(w.written, HUGE_INDEX_SIZE);
}

/* In a child, so that its peak memory is its own and a limit on its address
 * space stops a reader that would take gigabytes before it takes them. */
static void assert_huge_index_bounded_memory(const Fixture *f, HugeIndex kind) {
        int status;
        pid_t pid;

        write_huge_index(f, kind);

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                ModelLocation *l = NULL;
                uint64_t before, peak, after;
                struct rlimit limit;
                char *error = NULL;
                int r;

                /* The index itself, and 256 MiB for all the rest. */
                limit.rlim_cur = limit.rlim_max = proc_status_bytes("VmSize") + STORE_INDEX_SIZE_MAX + 256 * MiB;
                if (setrlimit(RLIMIT_AS, &limit) < 0)
                        _exit(10);

                before = proc_status_bytes("VmRSS");
                r = store_resolve(f->models, NULL, "m", &l, &error);
                peak = proc_status_bytes("VmHWM");
                if (r != 0) {
                        fprintf(stderr, "the index was refused (%d): %s\n", r, error ?: "-");
                        _exit(11);
                }
                if (l->n_weights != HUGE_INDEX_SHARDS) {
                        fprintf(stderr, "%zu shards instead of %u\n", l->n_weights, HUGE_INDEX_SHARDS);
                        _exit(12);
                }
                /* Beyond the index's own bytes, nothing that grows with its
                 * millions of values. */
                if (peak > before + HUGE_INDEX_SIZE + 16 * MiB) {
                        fprintf(stderr, "peak RSS rose by %" PRIu64 " MiB for a %" PRIu64 " MiB index\n",
                                (peak - before) / MiB, HUGE_INDEX_SIZE / MiB);
                        _exit(13);
                }
                /* And nothing is kept once the files are found. */
                model_location_free(l);
                after = proc_status_bytes("VmRSS");
                if (after > before + 4 * MiB) {
                        fprintf(stderr, "RSS is %" PRIu64 " KiB above what it was before the index was read\n",
                                (after - before) / 1024);
                        _exit(14);
                }
                _exit(0);
        }

        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail_msg("the child failed (status 0x%x); see its message above", status);
}

static void test_index_huge_ignored_array_bounded_memory(void **state) {
        assert_huge_index_bounded_memory(*state, HUGE_INDEX_IGNORED_ARRAY);
}

static void test_index_huge_weight_map_bounded_memory(void **state) {
        assert_huge_index_bounded_memory(*state, HUGE_INDEX_MANY_ENTRIES);
}

typedef struct CancelCounter {
        unsigned calls;
        unsigned cancel_at;     /* 0: never */
} CancelCounter;

static bool count_and_cancel(void *userdata) {
        CancelCounter *c = userdata;

        c->calls++;
        return c->cancel_at > 0 && c->calls >= c->cancel_at;
}

static unsigned count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        unsigned n = 0;

        assert_non_null(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

static void assert_huge_index_cancellable(const Fixture *f, HugeIndex kind) {
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        CancelCounter all = {};
        unsigned total, fds;

        write_huge_index(f, kind);

        /* Asked all along: at least once per MiB of the index. */
        assert_int_equal(store_resolve_full(f->models, NULL, "m", count_and_cancel, &all, &l, NULL), 0);
        assert_int_equal(l->n_weights, HUGE_INDEX_SHARDS);
        total = all.calls;
        assert_true(total >= HUGE_INDEX_SIZE / MiB);

        /* Stopped as soon as asked: while reading the file, parsing it, or
         * at the last question, before the last shard is opened. */
        fds = count_fds();
        const unsigned points[] = { 1, total / 2, total * 3 / 4, total };
        for (size_t i = 0; i < ELEMENTSOF(points); i++) {
                CancelCounter c = { .cancel_at = points[i] };
                ModelLocation *cancelled = NULL;
                _cleanup_free_ char *error = NULL;

                assert_int_equal(store_resolve_full(f->models, NULL, "m", count_and_cancel, &c, &cancelled, &error),
                                 -ECANCELED);
                assert_int_equal(c.calls, points[i]);
                assert_null(cancelled);
                assert_non_null(error);
                assert_non_null(strstr(error, "was cancelled"));
                assert_int_equal(count_fds(), fds);
        }
}

static void test_index_huge_ignored_array_cancellable(void **state) {
        assert_huge_index_cancellable(*state, HUGE_INDEX_IGNORED_ARRAY);
}

static void test_index_huge_weight_map_cancellable(void **state) {
        assert_huge_index_cancellable(*state, HUGE_INDEX_MANY_ENTRIES);
}

static void test_index_parse_cancellable(void **state) {
        const char *text = "{\"weight_map\": {\"a\": \"s\"}}";
        _cleanup_strv_free_ char **shards = NULL;
        CancelCounter now = { .cancel_at = 1 }, never = {};
        char *error = NULL;

        /* Even a small index is asked about at least once. */
        assert_int_equal(store_index_parse(text, strlen(text), count_and_cancel, &now, &shards, &error),
                         -ECANCELED);
        assert_null(shards);
        assert_null(error);
        assert_int_equal(store_index_parse(text, strlen(text), count_and_cancel, &never, &shards, &error), 0);
        assert_true(never.calls >= 1);
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
        assert_int_equal(l->source, MODEL_SOURCE_HF_CACHE);

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
        assert_int_equal(sharded->source, MODEL_SOURCE_HF_CACHE);
}

/* Reads a file of the model's folder, expected to be there with contents. */
static void assert_model_file(const ModelLocation *l, const char *path, const char *contents) {
        _cleanup_free_ char *text = NULL, *error = NULL;
        size_t length = 0;
        int r;

        r = store_read_model_file(&l->folder, path, 1024, &text, &length, &error);
        if (r < 0)
                fail_msg("%s: %d %s", path, r, error ?: "(no message)");
        assert_int_equal(length, strlen(contents));
        assert_string_equal(text, contents);
        assert_null(error);
}

static void assert_model_file_refused(const ModelLocation *l, const char *path, int expected, const char *fact) {
        _cleanup_free_ char *text = NULL, *error = NULL;

        assert_int_equal(store_read_model_file(&l->folder, path, 1024, &text, NULL, &error), expected);
        assert_null(text);
        if (fact) {
                assert_non_null(error);
                if (!strstr(error, fact))
                        fail_msg("%s: message \"%s\" lacks \"%s\"", path, error, fact);
        } else
                assert_null(error);
}

/* A model's other files, read beneath its root as its weights are: in
 * ModelDir, the cache (through the blobs) and a registered directory. */
static void test_model_files(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL, *hf = NULL, *registered = NULL;
        _cleanup_free_ char *big = calloc(1, 2000);
        char elsewhere[PATH_MAX];
        uint64_t size = 0;
        int fd;

        write_weights(path_printf("%s/org/bert/model.safetensors", f->models));
        write_file(path_printf("%s/org/bert/config.json", f->models), "{\"model_type\": \"bert\"}");
        write_file(path_printf("%s/org/bert/1_Pooling/config.json", f->models), "{}");
        write_file(path_printf("%s/org/other/secret.json", f->models), "secret");
        write_file(path_printf("%s/outside.json", f->root), "outside");
        make_symlink("../other/secret.json", path_printf("%s/org/bert/inside-store.json", f->models));
        make_symlink(path_printf("%s/outside.json", f->root), path_printf("%s/org/bert/absolute.json", f->models));
        make_symlink("../../../outside.json", path_printf("%s/org/bert/escaping.json", f->models));
        make_symlink("nowhere.json", path_printf("%s/org/bert/dangling.json", f->models));
        assert_int_equal(mkfifo(path_printf("%s/org/bert/fifo.json", f->models), 0600), 0);
        memset(big, 'x', 1999);
        write_file(path_printf("%s/org/bert/big.json", f->models), big);

        assert_int_equal(store_resolve(f->models, NULL, "org/bert", &l, NULL), 0);
        assert_true(l->folder.root_fd >= 0);
        assert_string_equal(l->folder.subdir, "org/bert");
        assert_string_equal(l->folder.directory, l->directory);
        assert_model_file(l, "config.json", "{\"model_type\": \"bert\"}");
        assert_model_file(l, "1_Pooling/config.json", "{}");
        /* Relative symlinks that stay in the store are followed, as for
         * weights. */
        assert_model_file(l, "inside-store.json", "secret");

        assert_model_file_refused(l, "missing.json", -ENOENT, NULL);
        assert_model_file_refused(l, "dangling.json", -ENOENT, NULL);
        assert_model_file_refused(l, "config.json/x", -ENOENT, NULL);
        assert_model_file_refused(l, "big.json", -EFBIG, NULL);
        assert_model_file_refused(l, "absolute.json", -EBADMSG, "org/bert/absolute.json: a symlink");
        assert_model_file_refused(l, "escaping.json", -EBADMSG, "leads out of");
        assert_model_file_refused(l, "fifo.json", -EBADMSG, "org/bert/fifo.json is not a regular file");
        assert_model_file_refused(l, "1_Pooling", -EBADMSG, "is not a regular file");
        /* Only paths inside the folder are asked for. */
        assert_model_file_refused(l, "../other/secret.json", -EINVAL, "relative path");
        assert_model_file_refused(l, "/etc/passwd", -EINVAL, "relative path");
        assert_model_file_refused(l, "1_Pooling//config.json", -EINVAL, "relative path");
        assert_model_file_refused(l, "./config.json", -EINVAL, "relative path");
        assert_model_file_refused(l, "", -EINVAL, "relative path");

        fd = store_open_model_file(&l->folder, "big.json", 4096, &size, NULL);
        assert_true(fd >= 0);
        assert_int_equal(size, 1999);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        close(fd);

        /* The cache: the snapshot's files are symlinks into the repo's blobs. */
        make_hf_model(f, "models--acme--bert",
                      (const char *const[]) { "model.safetensors", "w", "tokenizer.json", "{\"model\": {}}", NULL });
        assert_int_equal(store_resolve(NULL, f->hub, "acme/bert", &hf, NULL), 0);
        assert_string_equal(hf->folder.subdir, "snapshots/" COMMIT);
        assert_model_file(hf, "tokenizer.json", "{\"model\": {}}");
        assert_model_file_refused(hf, "config.json", -ENOENT, NULL);

        /* A registered directory is its own root. */
        strcpy(elsewhere, path_printf("%s/elsewhere", f->root));
        write_weights(path_printf("%s/model.safetensors", elsewhere));
        write_file(path_printf("%s/config.json", elsewhere), "{}");
        make_symlink("../outside.json", path_printf("%s/up.json", elsewhere));
        assert_int_equal(store_resolve_directory(elsewhere, "reg", NULL, NULL, &registered, NULL), 0);
        assert_string_equal(registered->folder.subdir, ".");
        assert_model_file(registered, "config.json", "{}");
        assert_model_file_refused(registered, "up.json", -EBADMSG, "leads out of");
}

static void test_hf_one_segment_name(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;

        make_hf_model(f, "models--gpt2", (const char *const[]) { "model.safetensors", "w", NULL });

        assert_int_equal(store_resolve(f->models, f->hub, "gpt2", &l, NULL), 0);
        assert_string_equal(l->name, "gpt2");
        assert_string_equal(l->directory, path_printf("%s/models--gpt2/snapshots/" COMMIT, f->hub));
        assert_int_equal(l->source, MODEL_SOURCE_HF_CACHE);

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
        assert_int_equal(l->source, MODEL_SOURCE_STORE);
        assert_string_equal(l->directory, path_printf("%s/acme/tiny", f->models));

        /* A ModelDir directory without weights does not hide the cache's model. */
        write_file(path_printf("%s/acme/other/README", f->models), "");
        make_hf_model(f, "models--acme--other", (const char *const[]) { "model.safetensors", "w", NULL });
        assert_int_equal(store_resolve(f->models, f->hub, "acme/other", &hf, NULL), 0);
        assert_int_equal(hf->source, MODEL_SOURCE_HF_CACHE);
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

/* ---- where models come from, and registered models ---- */

#define COMMIT2 "fedcba9876543210fedcba9876543210fedcba98"

static void assert_source(const Fixture *f, const char *name, ModelSource source, const char *revision) {
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_free_ char *error = NULL;

        if (store_resolve(f->models, f->hub, name, &l, &error) < 0)
                fail_msg("%s: %s", name, error);
        assert_int_equal(l->source, source);
        assert_string_equal(l->revision, revision);
}

static void test_source_and_revision(void **state) {
        Fixture *f = *state;

        write_weights(path_printf("%s/copied/model.safetensors", f->models));
        assert_source(f, "copied", MODEL_SOURCE_STORE, "");

        write_weights(path_printf("%s/acme/pulled/model.safetensors", f->models));
        write_file(path_printf("%s/acme/pulled/" STORE_PULL_METADATA_FILE, f->models),
                   "{\"repo\": \"acme/pulled\", \"revision\": \"main\", \"commit\": \"" COMMIT2 "\", "
                   "\"files\": [{\"name\": \"model.safetensors\", \"commit\": \"x\"}], \"time\": 1}");
        assert_source(f, "acme/pulled", MODEL_SOURCE_HUB, COMMIT2);

        /* Ours, but unreadable as such: pulled, at an unknown commit. */
        write_weights(path_printf("%s/acme/broken/model.safetensors", f->models));
        write_file(path_printf("%s/acme/broken/" STORE_PULL_METADATA_FILE, f->models), "{\"commit\": ");
        assert_source(f, "acme/broken", MODEL_SOURCE_HUB, "");
        write_weights(path_printf("%s/acme/nohash/model.safetensors", f->models));
        write_file(path_printf("%s/acme/nohash/" STORE_PULL_METADATA_FILE, f->models), "{\"commit\": \"../etc\"}");
        assert_source(f, "acme/nohash", MODEL_SOURCE_HUB, "");

        make_hf_model(f, "models--acme--cached", (const char *const[]) { "model.safetensors", "w", NULL });
        assert_source(f, "acme/cached", MODEL_SOURCE_HF_CACHE, COMMIT);

        assert_string_equal(model_source_to_string(MODEL_SOURCE_STORE), "store");
        assert_string_equal(model_source_to_string(MODEL_SOURCE_HUB), "hub");
        assert_string_equal(model_source_to_string(MODEL_SOURCE_LOCAL), "local");
        assert_string_equal(model_source_to_string(MODEL_SOURCE_HF_CACHE), "hf-cache");
}

static void test_registry_entry_names(void **state) {
        static const char *const names[] = { "tiny", "acme/llm-7b", "a.b/c_d" };
        static const char *const not_names[] = { ".tmp-x", "a--b--c", "bad name", "a---b", "--a", "a--" };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                _cleanup_free_ char *entry = NULL, *back = NULL;

                assert_int_equal(store_registry_entry_name(names[i], &entry), 0);
                assert_null(strchr(entry, '/'));
                assert_int_equal(store_registry_model_name(entry, &back), 1);
                assert_string_equal(back, names[i]);
        }
        for (size_t i = 0; i < ELEMENTSOF(not_names); i++) {
                char *back = NULL;

                assert_int_equal(store_registry_model_name(not_names[i], &back), 0);
                assert_null(back);
        }
}

static void test_registered_path_is_valid(void **state) {
        char long_path[STORE_REGISTERED_PATH_MAX + 2];

        assert_true(store_registered_path_is_valid("/"));
        assert_true(store_registered_path_is_valid("/srv/models/llm"));
        assert_true(store_registered_path_is_valid("/home/jos\xc3\xa9/m..odel/.x"));
        assert_false(store_registered_path_is_valid(""));
        assert_false(store_registered_path_is_valid("relative/dir"));
        assert_false(store_registered_path_is_valid("/srv/"));
        assert_false(store_registered_path_is_valid("/srv//x"));
        assert_false(store_registered_path_is_valid("/srv/./x"));
        assert_false(store_registered_path_is_valid("/srv/../x"));
        assert_false(store_registered_path_is_valid("/srv/.."));
        assert_false(store_registered_path_is_valid("/srv/."));
        assert_false(store_registered_path_is_valid("/srv/a\nb"));
        assert_false(store_registered_path_is_valid("/srv/\xc3("));
        assert_false(store_registered_path_is_valid("/srv/\x7f"));

        memset(long_path, 'a', sizeof long_path - 1);
        long_path[0] = '/';
        long_path[STORE_REGISTERED_PATH_MAX] = 0;
        assert_true(store_registered_path_is_valid(long_path));
        long_path[STORE_REGISTERED_PATH_MAX] = 'a';
        long_path[STORE_REGISTERED_PATH_MAX + 1] = 0;
        assert_false(store_registered_path_is_valid(long_path));
}

static void register_by_hand(const Fixture *f, const char *entry, const char *contents) {
        write_file(path_printf("%s/" STORE_REGISTRY_DIR "/%s", f->models, entry), contents);
}

static void test_registered(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL, *shadow = NULL;
        _cleanup_strv_free_ char **names = NULL;
        char elsewhere[PATH_MAX];

        strcpy(elsewhere, path_printf("%s/elsewhere/llm", f->root));
        write_weights(path_printf("%s/model.safetensors", elsewhere));
        register_by_hand(f, "acme--llm", path_printf("%s\n", elsewhere));

        assert_int_equal(store_resolve(f->models, f->hub, "acme/llm", &l, NULL), 0);
        assert_int_equal(l->source, MODEL_SOURCE_LOCAL);
        assert_string_equal(l->revision, "");
        assert_string_equal(l->directory, elsewhere);
        assert_string_equal(l->weight_paths[0], path_printf("%s/model.safetensors", elsewhere));
        assert_fd_is(l->weight_fds[0], l->weight_paths[0]);

        /* A registration hides a folder of the same name added since. */
        write_weights(path_printf("%s/acme/llm/model.safetensors", f->models));
        assert_int_equal(store_resolve(f->models, f->hub, "acme/llm", &shadow, NULL), 0);
        assert_string_equal(shadow->directory, elsewhere);

        /* Listed by its entry, whatever the entry holds; hidden files and
         * names of no model are not. */
        register_by_hand(f, "gone", "/nonexistent/mpool-test\n");
        register_by_hand(f, ".tmp-writing", "/x\n");
        register_by_hand(f, "not a name", "/x\n");
        assert_int_equal(store_list(f->models, f->hub, &names), 0);
        assert_int_equal(strv_length(names), 2);
        assert_string_equal(names[0], "acme/llm");
        assert_string_equal(names[1], "gone");

        assert_resolve_fails(f, "gone", -ENOENT, "registered");
        assert_resolve_fails(f, "gone", -ENOENT, "/nonexistent/mpool-test, which does not exist any more");
}

static void test_registered_damaged_or_escaping(void **state) {
        Fixture *f = *state;
        char secret[PATH_MAX], linked[PATH_MAX];

        strcpy(secret, write_secret(f));
        register_by_hand(f, "relative", "elsewhere/llm\n");
        assert_resolve_fails(f, "relative", -EBADMSG, "is damaged: it holds no absolute path");
        register_by_hand(f, "twolines", "/a\n/b\n");
        assert_resolve_fails(f, "twolines", -EBADMSG, "is damaged");
        register_by_hand(f, "empty", "");
        assert_resolve_fails(f, "empty", -EBADMSG, "is damaged");
        make_directories(path_printf("%s/" STORE_REGISTRY_DIR "/adir", f->models));
        assert_resolve_fails(f, "adir", -EBADMSG, "is damaged: not a small regular file");
        make_symlink(secret, path_printf("%s/" STORE_REGISTRY_DIR "/alink", f->models));
        assert_resolve_fails_without(f, "alink", -EBADMSG, "is damaged", SECRET);

        /* A file, not a directory; a model with nothing in it. */
        register_by_hand(f, "file", path_printf("%s\n", secret));
        assert_resolve_fails(f, "file", -ENOTDIR, "is not a directory");
        make_directories(path_printf("%s/empty-model", f->root));
        register_by_hand(f, "nothing", path_printf("%s/empty-model\n", f->root));
        assert_resolve_fails(f, "nothing", -EBADMSG, "has neither model.safetensors nor");

        /* The registered directory is its root: a symlink out of it is refused. */
        make_symlink("../secret", path_printf("%s/escaping/model.safetensors", f->root));
        register_by_hand(f, "escaping", path_printf("%s/escaping\n", f->root));
        assert_resolve_fails_without(f, "escaping", -EBADMSG, "a symlink on the way is absolute or leads out of",
                                     SECRET);

        /* Stored resolved: a symlink on the way now is refused. */
        write_weights(path_printf("%s/real/model.safetensors", f->root));
        strcpy(linked, path_printf("%s/link", f->root));
        make_symlink("real", linked);
        register_by_hand(f, "throughlink", path_printf("%s\n", linked));
        assert_resolve_fails(f, "throughlink", -EBADMSG, "a symlink is on its way now");
}

static void test_resolve_directory(void **state) {
        Fixture *f = *state;
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        char directory[PATH_MAX];

        strcpy(directory, path_printf("%s/dir", f->root));
        write_file(path_printf("%s/dir/model.safetensors.index.json", f->root),
                   "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}");
        write_weights(path_printf("%s/dir/s1.safetensors", f->root));
        write_weights(path_printf("%s/dir/s2.safetensors", f->root));

        assert_int_equal(store_resolve_directory(directory, "x", NULL, NULL, &l, NULL), 0);
        assert_int_equal(l->source, MODEL_SOURCE_LOCAL);
        assert_int_equal(l->n_weights, 2);
        assert_string_equal(l->name, "x");

        {
                _cleanup_free_ char *error = NULL;
                ModelLocation *none = NULL;

                assert_int_equal(store_resolve_directory("dir", "x", NULL, NULL, &none, &error), -EINVAL);
                assert_non_null(strstr(error, "absolute"));
                assert_null(none);
        }
        {
                _cleanup_free_ char *error = NULL;
                ModelLocation *none = NULL;

                assert_int_equal(store_resolve_directory(path_printf("%s/missing", f->root), "x", NULL, NULL, &none,
                                                         &error), -ENOENT);
                assert_non_null(strstr(error, "does not exist"));
        }
        {
                _cleanup_free_ char *error = NULL;
                ModelLocation *none = NULL;

                assert_int_equal(store_resolve_directory(path_printf("%s/dir/s1.safetensors", f->root), "x", NULL,
                                                         NULL, &none, &error), -ENOTDIR);
                assert_non_null(strstr(error, "is not a directory"));
        }
}

static void test_locate(void **state) {
        Fixture *f = *state;
        ModelSource source;

        write_weights(path_printf("%s/copied/model.safetensors", f->models));
        write_weights(path_printf("%s/acme/pulled/model.safetensors", f->models));
        write_file(path_printf("%s/acme/pulled/" STORE_PULL_METADATA_FILE, f->models), "{}");
        write_file(path_printf("%s/acme/config-only/config.json", f->models), "{}");
        register_by_hand(f, "acme--reg", "/anything\n");
        write_weights(path_printf("%s/acme/reg/model.safetensors", f->models));
        make_directories(path_printf("%s/models--acme--cached/blobs", f->hub));

        assert_int_equal(store_locate(f->models, f->hub, "copied", &source), 1);
        assert_int_equal(source, MODEL_SOURCE_STORE);
        assert_int_equal(store_locate(f->models, f->hub, "acme/pulled", &source), 1);
        assert_int_equal(source, MODEL_SOURCE_HUB);
        assert_int_equal(store_locate(f->models, f->hub, "acme/reg", &source), 1);
        assert_int_equal(source, MODEL_SOURCE_LOCAL);
        assert_int_equal(store_locate(f->models, f->hub, "acme/cached", &source), 1);
        assert_int_equal(source, MODEL_SOURCE_HF_CACHE);
        assert_int_equal(store_locate(f->models, f->hub, "acme/config-only", &source), 0);
        assert_int_equal(store_locate(f->models, f->hub, "nothing", &source), 0);
        assert_int_equal(store_locate(NULL, NULL, "copied", &source), 0);
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
                cmocka_unit_test(test_index_parse),
                cmocka_unit_test(test_index_parse_refuses),
                cmocka_unit_test(test_index_parse_cancellable),
                cmocka_unit_test_setup_teardown(test_index_resolve_messages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_huge_ignored_array_bounded_memory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_huge_weight_map_bounded_memory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_huge_ignored_array_cancellable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_index_huge_weight_map_cancellable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hf_cache, setup, teardown),
                cmocka_unit_test_setup_teardown(test_model_files, setup, teardown),
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
                cmocka_unit_test_setup_teardown(test_source_and_revision, setup, teardown),
                cmocka_unit_test(test_registry_entry_names),
                cmocka_unit_test(test_registered_path_is_valid),
                cmocka_unit_test_setup_teardown(test_registered, setup, teardown),
                cmocka_unit_test_setup_teardown(test_registered_damaged_or_escaping, setup, teardown),
                cmocka_unit_test_setup_teardown(test_resolve_directory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_locate, setup, teardown),
                cmocka_unit_test(test_strv),
        };

        /* Keep the expected warnings (the list bound) out of the output. */
        log_set_max_level(LOG_ERR);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
