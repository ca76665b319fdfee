/* SPDX-License-Identifier: MIT */
/* Models made runnable from their files (configuration, sentence-
 * transformers' files, tokenizer.json, the tensors of a mapped file) and
 * texts run through them, against the embeddings torch computed for the
 * fixtures of tests/fixtures/bert. The fixtures give ids; the texts here
 * make exactly those ids with the tokenizer of id-tokenizer.h. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "bert-fixture.h"
#include "id-tokenizer.h"

#include "blas.h"
#include "embedding-model.h"
#include "macro.h"
#include "tensor-list.h"
#include "tokenizer-unicode.h"


/* A fixture's folder, with a tokenizer.json of our own. */
typedef struct Source {
        char *dir;
        char *tokenizer;          /* NULL: none */
        bool no_config;
        void *map;
        size_t map_length;
        TensorList tensors;
        EmbeddingSource source;
        cJSON *expected;
        unsigned vocab_size;
} Source;

static int source_read(const char *path, uint64_t max_size, char **ret_text, size_t *ret_length, void *userdata,
                       char **ret_error) {
        Source *s = userdata;

        if (s->no_config && strcmp(path, BERT_CONFIG_FILE) == 0)
                return -ENOENT;
        return read_folder_file(path, max_size, ret_text, ret_length, s->dir, ret_error);
}

static int source_open(const char *path, void *userdata, char **ret_error) {
        Source *s = userdata;
        int fd;

        assert_string_equal(path, EMBEDDING_TOKENIZER_FILE);
        if (!s->tokenizer)
                return -ENOENT;
        fd = memfd_create("tokenizer.json", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, s->tokenizer, strlen(s->tokenizer)), (ssize_t) strlen(s->tokenizer));
        return fd;
}

static void source_open_fixture(const char *name, Source *s) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        _cleanup_close_ int fd = -1;
        BertConfig config;
        size_t length = 0;
        struct stat st;

        *s = (Source) {};
        assert_true(asprintf(&s->dir, BERT_FIXTURES "/%s", name) > 0);
        assert_int_equal(read_folder_file(BERT_CONFIG_FILE, 1 << 20, &text, &length, s->dir, NULL), 0);
        assert_int_equal(bert_config_parse(text, length, &config, NULL), 0);
        s->vocab_size = config.vocab_size;
        s->tokenizer = id_tokenizer_json(config.vocab_size);
        assert_non_null(s->tokenizer);

        assert_true(asprintf(&path, "%s/model.safetensors", s->dir) > 0);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0 && fstat(fd, &st) >= 0);
        s->map_length = (size_t) st.st_size;
        s->map = mmap(NULL, s->map_length, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(s->map != MAP_FAILED);
        assert_int_equal(tensor_list_add_mapped(&s->tensors, s->map, s->map_length, path, NULL, NULL, NULL), 0);

        free(text);
        text = NULL;
        assert_int_equal(read_folder_file("expected.json", 8 << 20, &text, &length, s->dir, NULL), 0);
        s->expected = cJSON_Parse(text);
        assert_non_null(s->expected);

        s->source = (EmbeddingSource) {
                .name = name,
                .read_file = source_read,
                .open_file = source_open,
                .userdata = s,
                .tensors = s->tensors.tensors,
                .n_tensors = s->tensors.n_tensors,
        };
}

/* The mapping goes: a model that still needs it would read freed memory. */
static void source_unmap(Source *s) {
        if (s->map)
                assert_int_equal(munmap(s->map, s->map_length), 0);
        s->map = NULL;
}

static void source_close(Source *s) {
        source_unmap(s);
        tensor_list_done(&s->tensors);
        cJSON_Delete(s->expected);
        free(s->tokenizer);
        free(s->dir);
        *s = (Source) {};
}

static EmbeddingModel *model_new(Source *s, Precision p) {
        _cleanup_free_ char *error = NULL;
        EmbeddingModel *m = NULL;
        int r;

        r = embedding_model_new(&s->source, p, NULL, NULL, &m, &error);
        if (r < 0)
                fail_msg("%s: %s", s->source.name, error ?: "(no message)");
        return m;
}

/* The fixture's inputs as texts: those the model takes whole (a fixture
 * may hold an input longer than its sentence-transformers maximum, for the
 * forward pass alone). index[i]: text i's input. */
typedef struct Texts {
        char **texts;
        size_t *lengths;
        size_t *index;
        size_t n;
        uint64_t tokens;
} Texts;

static void texts_of(const Source *s, Texts *ret) {
        const cJSON *inputs = cJSON_GetObjectItem(s->expected, "inputs"), *input;
        size_t i = 0, k = 0;

        ret->n = cJSON_GetArraySize(inputs);
        ret->texts = calloc(ret->n, sizeof *ret->texts);
        ret->lengths = calloc(ret->n, sizeof *ret->lengths);
        ret->index = calloc(ret->n, sizeof *ret->index);
        ret->tokens = 0;
        assert_non_null(ret->texts);
        assert_non_null(ret->lengths);
        assert_non_null(ret->index);
        cJSON_ArrayForEach(input, inputs) {
                uint32_t ids[1024];
                const cJSON *id;
                size_t n = 0;

                cJSON_ArrayForEach(id, input)
                        ids[n++] = (uint32_t) id->valuedouble;
                if (n <= cJSON_GetObjectItem(s->expected, "max_length")->valuedouble) {
                        ret->texts[i] = id_tokenizer_text(ids, n, s->vocab_size);
                        assert_non_null(ret->texts[i]);
                        ret->lengths[i] = strlen(ret->texts[i]);
                        ret->index[i++] = k;
                        ret->tokens += n;
                }
                k++;
        }
        ret->n = i;
        assert_true(ret->n >= 5);
}

static void texts_done(Texts *t) {
        for (size_t i = 0; i < t->n; i++)
                free(t->texts[i]);
        free(t->texts);
        free(t->lengths);
        free(t->index);
}

static void expected_row(const Source *s, const char *member, size_t i, double *out, size_t n) {
        const cJSON *row = cJSON_GetArrayItem(cJSON_GetObjectItem(s->expected, member), (int) i), *v;
        size_t k = 0;

        assert_non_null(row);
        assert_int_equal(cJSON_GetArraySize(row), n);
        cJSON_ArrayForEach(v, row)
                out[k++] = v->valuedouble;
}

static double cosine_of(const float *got, const double *want, size_t n, double *ret_worst) {
        double dot = 0, a = 0, b = 0, worst = 0;

        for (size_t j = 0; j < n; j++) {
                dot += got[j] * want[j];
                a += (double) got[j] * got[j];
                b += want[j] * want[j];
                worst = fmax(worst, fabs(got[j] - want[j]));
        }
        if (ret_worst)
                *ret_worst = worst;
        return dot / (sqrt(a) * sqrt(b));
}

static void assert_close(const char *what, size_t i, const float *got, const double *want, size_t n) {
        double worst, cosine = cosine_of(got, want, n, &worst);

        if (!(cosine >= COSINE_MIN) || !(worst <= ABS_ERROR_MAX))
                fail_msg("%s, text %zu: cosine %.9f, max abs error %g", what, i, cosine, worst);
}

static float *run(const EmbeddingModel *m, EmbeddingScratch *s, const Texts *t, const EmbedOptions *o,
                  size_t *ret_dims, uint64_t *ret_tokens) {
        _cleanup_free_ char *error = NULL;
        float *vectors = NULL;
        size_t failed = SIZE_MAX;
        int r;

        r = embedding_run(m, s, (const char *const *) t->texts, t->lengths, t->n, o, NULL, NULL, &vectors, ret_dims,
                          ret_tokens, &failed, &error);
        if (r < 0)
                fail_msg("embedding_run: %d %s", r, error ?: "(no message)");
        assert_int_equal(failed, SIZE_MAX);
        return vectors;
}

/* Texts in, the reference's embeddings out, in the texts' order. */
static void test_fixture(void **state) {
        const char *name = *state;
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
        _cleanup_free_ float *vectors = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        EmbeddingModel *m;
        double want[64];
        uint64_t tokens = 0;
        size_t dims = 0, hidden;
        Source s;
        Texts t;

        source_open_fixture(name, &s);
        m = model_new(&s, PRECISION_F32);
        hidden = embedding_model_dimensions(m);
        assert_int_equal(embedding_model_precision(m), PRECISION_F32);
        assert_int_equal(embedding_model_needs_mappings(m), strncmp(name, "f32", 3) == 0);
        assert_int_equal(embedding_model_max_length(m),
                         cJSON_GetObjectItem(s.expected, "max_length")->valuedouble);
        assert_int_equal(embedding_model_bytes(m) % sysconf(_SC_PAGESIZE), 0);
        assert_true(embedding_model_bytes(m) >= (uint64_t) sysconf(_SC_PAGESIZE));
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);
        assert_true(embedding_scratch_bytes(scratch) > EMBEDDING_BATCH_TOKENS * hidden * 4);
        texts_of(&s, &t);

        /* The fixture's prompts are for people; the reference ran the ids
         * as they are. */
        o.prompt_name = "";
        vectors = run(m, scratch, &t, &o, &dims, &tokens);
        assert_int_equal(dims, hidden);
        assert_int_equal(tokens, t.tokens);
        for (size_t i = 0; i < t.n; i++) {
                expected_row(&s, "embeddings", t.index[i], want, hidden);
                assert_close(name, i, vectors + i * hidden, want, hidden);
        }
        free(vectors);

        /* Each text alone gives what it gives among the others. */
        for (size_t i = 0; i < t.n; i++) {
                Texts one = { .texts = t.texts + i, .lengths = t.lengths + i, .n = 1 };

                vectors = run(m, scratch, &one, &o, &dims, &tokens);
                expected_row(&s, "embeddings", t.index[i], want, hidden);
                assert_close("alone", i, vectors, want, hidden);
                free(vectors);
        }

        /* Normalization, as asked or as the model says, and dimensions. */
        o.normalize = 0;
        vectors = run(m, scratch, &t, &o, &dims, &tokens);
        for (size_t i = 0; i < t.n; i++) {
                expected_row(&s, cJSON_GetObjectItem(s.expected, "pooling")->valuestring, t.index[i], want, hidden);
                assert_close("not normalized", i, vectors + i * hidden, want, hidden);
        }
        free(vectors);
        o.normalize = 1;
        o.dimensions = hidden / 2;
        vectors = run(m, scratch, &t, &o, &dims, &tokens);
        assert_int_equal(dims, hidden / 2);
        for (size_t i = 0; i < t.n; i++) {
                double norm = 0;

                expected_row(&s, cJSON_GetObjectItem(s.expected, "pooling")->valuestring, t.index[i], want, hidden);
                for (size_t j = 0; j < dims; j++)
                        norm += want[j] * want[j];
                for (size_t j = 0; j < dims; j++)
                        want[j] /= sqrt(norm);
                assert_close("half, normalized", i, vectors + i * dims, want, dims);
        }
        free(vectors);
        vectors = NULL;

        texts_done(&t);
        embedding_model_free(m);
        source_close(&s);
}

/* What sentence-transformers does to a text before tokenizing: strip,
 * and lowercase when the model says so (the bf16 fixture does). */
static void test_strip_and_lowercase(void **state) {
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        const char *plain[] = { "t5 t17 t200" }, *upper[] = { " \t T5\u3000T17 t200 \n\x1c" };
        size_t n_plain[] = { strlen(plain[0]) }, n_upper[] = { strlen(upper[0]) }, dims, failed;
        float *a = NULL, *b = NULL;
        EmbeddingModel *m;
        uint64_t tokens;
        Source s;

        source_open_fixture("bf16-mean-normalize-prompts", &s);
        m = model_new(&s, PRECISION_F32);
        assert_true(embedding_model_st_config(m)->lowercase);
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);
        o.prompt_name = "";
        assert_int_equal(embedding_run(m, scratch, plain, n_plain, 1, &o, NULL, NULL, &a, &dims, &tokens, &failed,
                                       NULL), 0);
        assert_int_equal(tokens, 3);
        assert_int_equal(embedding_run(m, scratch, upper, n_upper, 1, &o, NULL, NULL, &b, &dims, &tokens, &failed,
                                       NULL), 0);
        assert_int_equal(tokens, 3);
        assert_memory_equal(a, b, dims * sizeof(float));
        free(a);
        free(b);
        embedding_model_free(m);
        source_close(&s);

        /* A model that does not lowercase: "T5" is no token of it. */
        source_open_fixture("f32-prefix-mean", &s);
        m = model_new(&s, PRECISION_F32);
        scratch = embedding_scratch_free(scratch);
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);
        assert_int_equal(embedding_run(m, scratch, plain, n_plain, 1, &o, NULL, NULL, &a, &dims, &tokens, &failed,
                                       NULL), 0);
        assert_int_equal(embedding_run(m, scratch, upper, n_upper, 1, &o, NULL, NULL, &b, &dims, &tokens, &failed,
                                       NULL), 0);
        assert_memory_not_equal(a, b, dims * sizeof(float));
        free(a);
        free(b);
        embedding_model_free(m);
        source_close(&s);
}

static void test_python_strip_lower(void **state) {
        static const struct {
                const char *in;
                bool lower;
                const char *out;
        } cases[] = {
                { "", true, "" },
                { " \t\n\v\f\r\x1c\x1d\x1e\x1f", false, "" },
                { "  Abc  ", false, "Abc" },
                { "  Abc  ", true, "abc" },
                /* NEL, NBSP, ideographic space, line separator: Python's
                 * whitespace; a zero-width space (U+200B) is not. */
                { "\xc2\x85\xc2\xa0" "Ab\xe2\x80\x8b\xe3\x80\x80\xe2\x80\xa8", false, "Ab\xe2\x80\x8b" },
                /* A final capital sigma lowercases to a final small sigma,
                 * in context; the others to σ. */
                { "\xce\x9f\xce\xa3\xce\xa3\xce\x9f\xce\xa3 \xce\xa3", true,
                  "\xce\xbf\xcf\x83\xcf\x83\xce\xbf\xcf\x82 \xcf\x83" },
                /* Capital I with a dot: i and a combining dot. */
                { "\xc4\xb0X", true, "i\xcc\x87x" },
                /* Bytes that are not UTF-8 stay as they are when nothing is
                 * lowercased. */
                { " \xff\xfe A ", false, "\xff\xfe A" },
                { " \xff\xc3\x89 ", true, "\xef\xbf\xbd\xc3\xa9" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *out = NULL;
                size_t n;

                assert_int_equal(tu_python_strip_lower((const uint8_t *) cases[i].in, strlen(cases[i].in),
                                                       cases[i].lower, &out, &n), 0);
                if (n != strlen(cases[i].out) || memcmp(out, cases[i].out, n) != 0)
                        fail_msg("case %zu: got \"%.*s\"", i, (int) n, out);
        }
}

/* Prompts: the default one, one by name, none; and unknown names. */
static void test_prompts(void **state) {
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
        _cleanup_free_ char *error = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        const char *text[] = { "t7 t9" }, *with_query[] = { "query: t7 t9" }, *with_passage[] = { "passage: t7 t9" };
        size_t n[] = { strlen(text[0]) }, nq[] = { strlen(with_query[0]) }, np[] = { strlen(with_passage[0]) };
        float *a, *b;
        size_t dims, failed;
        uint64_t tokens, tokens_b;
        EmbeddingModel *m;
        Source s;

        source_open_fixture("bf16-mean-normalize-prompts", &s);
        m = model_new(&s, PRECISION_F32);
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);

        /* The default prompt ("query: ") is put before the text. */
        assert_int_equal(embedding_run(m, scratch, text, n, 1, &o, NULL, NULL, &a, &dims, &tokens, &failed, NULL), 0);
        o.prompt_name = "";
        assert_int_equal(embedding_run(m, scratch, with_query, nq, 1, &o, NULL, NULL, &b, &dims, &tokens_b, &failed,
                                       NULL), 0);
        assert_int_equal(tokens, tokens_b);
        assert_memory_equal(a, b, dims * sizeof(float));
        free(a);
        free(b);

        o.prompt_name = "passage";
        assert_int_equal(embedding_run(m, scratch, text, n, 1, &o, NULL, NULL, &a, &dims, &tokens, &failed, NULL), 0);
        o.prompt_name = "";
        assert_int_equal(embedding_run(m, scratch, with_passage, np, 1, &o, NULL, NULL, &b, &dims, &tokens_b, &failed,
                                       NULL), 0);
        assert_memory_equal(a, b, dims * sizeof(float));
        free(a);
        free(b);

        /* An empty prompt is no prompt. */
        o.prompt_name = "plain";
        assert_int_equal(embedding_run(m, scratch, text, n, 1, &o, NULL, NULL, &a, &dims, &tokens, &failed, NULL), 0);
        assert_int_equal(tokens, 2);
        free(a);

        o.prompt_name = "nonexistent";
        assert_int_equal(embedding_options_check(m, &o, &error), -EINVAL);
        assert_contains(error, "bf16-mean-normalize-prompts: it has no prompt of that name");
        a = (float *) 0x1;
        assert_int_equal(embedding_run(m, scratch, text, n, 1, &o, NULL, NULL, &a, &dims, &tokens, &failed, NULL),
                         -EINVAL);
        assert_ptr_equal(a, (float *) 0x1);
        embedding_model_free(m);
        source_close(&s);

        /* A model without prompts knows none. */
        source_open_fixture("f32-bare", &s);
        m = model_new(&s, PRECISION_F32);
        o.prompt_name = "query";
        free(error);
        error = NULL;
        assert_int_equal(embedding_options_check(m, &o, &error), -EINVAL);
        assert_contains(error, "it has no prompts");
        o.prompt_name = NULL;
        assert_int_equal(embedding_options_check(m, &o, NULL), 0);
        embedding_model_free(m);
        source_close(&s);
}

static void test_options_refused(void **state) {
        _cleanup_free_ char *error = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        EmbeddingModel *m;
        Source s;

        source_open_fixture("f32-bare", &s);   /* hidden 32 */
        m = model_new(&s, PRECISION_F32);
        assert_int_equal(embedding_model_dimensions(m), 32);
        o.dimensions = 32;
        assert_int_equal(embedding_options_check(m, &o, NULL), 0);
        o.dimensions = 33;
        assert_int_equal(embedding_options_check(m, &o, &error), -EINVAL);
        assert_contains(error, "32 dimensions; 33 cannot be kept");
        o = EMBED_OPTIONS_DEFAULT;
        o.normalize = 2;
        assert_int_equal(embedding_options_check(m, &o, NULL), -EINVAL);
        o = EMBED_OPTIONS_DEFAULT;
        o.direction = TOKENIZER_TRUNCATE_NONE;
        assert_int_equal(embedding_options_check(m, &o, NULL), -EINVAL);
        /* Without truncation the direction does not matter. */
        o.truncate = false;
        assert_int_equal(embedding_options_check(m, &o, NULL), 0);
        embedding_model_free(m);
        source_close(&s);
}

/* Texts longer than the model takes: cut from either side, or refused
 * with the index of the first such text. */
static void test_truncation(void **state) {
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
        _cleanup_free_ char *error = NULL, *long_text = NULL, *head = NULL, *tail = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        uint32_t ids[100];
        const char *texts[3];
        size_t lengths[3], dims, failed = SIZE_MAX, max;
        float *a = NULL, *b = NULL;
        uint64_t tokens;
        EmbeddingModel *m;
        Source s;

        source_open_fixture("f16-prefix-cls-normalize", &s);   /* 40 tokens at most */
        m = model_new(&s, PRECISION_F32);
        max = embedding_model_max_length(m);
        assert_int_equal(max, 40);
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);
        for (size_t i = 0; i < ELEMENTSOF(ids); i++)
                ids[i] = 5 + (uint32_t) i;
        long_text = id_tokenizer_text(ids, 45, s.vocab_size);
        head = id_tokenizer_text(ids, max, s.vocab_size);
        tail = id_tokenizer_text(ids + 45 - max, max, s.vocab_size);

        texts[0] = "t1";
        texts[1] = long_text;
        texts[2] = long_text;
        for (size_t i = 0; i < 3; i++)
                lengths[i] = strlen(texts[i]);

        o.truncate = false;
        a = (float *) 0x1;
        assert_int_equal(embedding_run(m, scratch, texts, lengths, 3, &o, NULL, NULL, &a, &dims, &tokens, &failed,
                                       &error), -E2BIG);
        assert_int_equal(failed, 1);
        assert_ptr_equal(a, (float *) 0x1);
        assert_contains(error, "text 1 makes more than the 40 tokens");

        o.truncate = true;
        o.direction = TOKENIZER_TRUNCATE_RIGHT;
        assert_int_equal(embedding_run(m, scratch, texts + 1, lengths + 1, 1, &o, NULL, NULL, &a, &dims, &tokens,
                                       &failed, NULL), 0);
        assert_int_equal(tokens, max);
        assert_int_equal(embedding_run(m, scratch, (const char *[]) { head }, (size_t[]) { strlen(head) }, 1, &o, NULL,
                                       NULL, &b, &dims, &tokens, &failed, NULL), 0);
        assert_memory_equal(a, b, dims * sizeof(float));
        free(a);
        free(b);

        o.direction = TOKENIZER_TRUNCATE_LEFT;
        assert_int_equal(embedding_run(m, scratch, texts + 1, lengths + 1, 1, &o, NULL, NULL, &a, &dims, &tokens,
                                       &failed, NULL), 0);
        assert_int_equal(embedding_run(m, scratch, (const char *[]) { tail }, (size_t[]) { strlen(tail) }, 1, &o, NULL,
                                       NULL, &b, &dims, &tokens, &failed, NULL), 0);
        assert_memory_equal(a, b, dims * sizeof(float));
        free(a);
        free(b);

        embedding_model_free(m);
        source_close(&s);
}

/* No token at all (this tokenizer adds no [CLS] and [SEP]): zeros, and
 * the other texts as they are. */
static void test_empty_text(void **state) {
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        const char *texts[] = { "", "t3 t4", "   " }, *alone[] = { "t3 t4" };
        size_t lengths[] = { 0, 5, 3 }, n_alone[] = { 5 }, dims, failed;
        float *v, *w;
        uint64_t tokens;
        EmbeddingModel *m;
        Source s;

        source_open_fixture("f32-bare", &s);
        m = model_new(&s, PRECISION_F32);
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);
        assert_int_equal(embedding_run(m, scratch, texts, lengths, 3, &o, NULL, NULL, &v, &dims, &tokens, &failed,
                                       NULL), 0);
        assert_int_equal(tokens, 2);
        assert_int_equal(embedding_run(m, scratch, alone, n_alone, 1, &o, NULL, NULL, &w, &dims, &tokens, &failed,
                                       NULL), 0);
        for (size_t j = 0; j < dims; j++) {
                assert_true(v[j] == 0.0f);
                assert_true(v[2 * dims + j] == 0.0f);
        }
        assert_memory_equal(v + dims, w, dims * sizeof(float));
        free(v);
        free(w);
        embedding_model_free(m);
        source_close(&s);
}

static bool cancel_after(void *userdata) {
        unsigned *left = userdata;

        if (*left == 0)
                return true;
        (*left)--;
        return false;
}

static void test_cancel(void **state) {
        _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        const char *texts[] = { "t1 t2", "t3" };
        size_t lengths[] = { 5, 2 }, dims, failed;
        float *v = NULL;
        uint64_t tokens;
        EmbeddingModel *m, *unset = (EmbeddingModel *) 0x1;
        unsigned left;
        Source s;

        source_open_fixture("f32-bare", &s);
        m = model_new(&s, PRECISION_F32);
        assert_int_equal(embedding_scratch_new(m, &scratch), 0);
        /* While the texts are tokenized, and between the layers. */
        for (unsigned k = 0; k < 4; k++) {
                left = k;
                assert_int_equal(embedding_run(m, scratch, texts, lengths, 2, &o, cancel_after, &left, &v, &dims,
                                               &tokens, &failed, NULL), -ECANCELED);
                assert_null(v);
        }
        left = 0;
        assert_int_equal(embedding_model_new(&s.source, PRECISION_F32, cancel_after, &left, &unset, NULL),
                         -ECANCELED);
        assert_ptr_equal(unset, (EmbeddingModel *) 0x1);
        embedding_model_free(m);
        source_close(&s);
}

/* Lower precisions: every weight converted, so the file's mapping can go
 * (unmapped here: a model that still read it would fault), and the
 * embeddings within the bounds of the reference. */
static void test_precisions(void **state) {
        static const struct {
                Precision p;
                double cosine_min;
        } precisions[] = {
                { PRECISION_F16, 0.9999 },
                { PRECISION_Q8, 0.995 },
                { PRECISION_Q4, 0.97 },
        };
        const char *name = "f32-moderate-mean-normalize";
        uint64_t f32_bytes = 0;

        for (size_t k = 0; k < ELEMENTSOF(precisions); k++) {
                _cleanup_(embedding_scratch_freep) EmbeddingScratch *scratch = NULL;
                _cleanup_free_ float *vectors = NULL;
                EmbedOptions o = EMBED_OPTIONS_DEFAULT;
                EmbeddingModel *m;
                double want[64];
                uint64_t tokens;
                size_t dims;
                Source s;
                Texts t;

                source_open_fixture(name, &s);
                if (k == 0) {
                        m = model_new(&s, PRECISION_F32);
                        /* In place: only the tokenizer is its own. */
                        assert_true(embedding_model_needs_mappings(m));
                        f32_bytes = bert_weights_bytes(embedding_model_config(m), PRECISION_F32);
                        assert_true(embedding_model_bytes(m) < f32_bytes);
                        embedding_model_free(m);
                }
                m = model_new(&s, precisions[k].p);
                assert_int_equal(embedding_model_precision(m), precisions[k].p);
                assert_false(embedding_model_needs_mappings(m));
                assert_true(embedding_model_bytes(m) >=
                            bert_weights_bytes(embedding_model_config(m), precisions[k].p));
                assert_true(embedding_model_bytes(m) < f32_bytes);
                source_unmap(&s);

                assert_int_equal(embedding_scratch_new(m, &scratch), 0);
                texts_of(&s, &t);
                vectors = run(m, scratch, &t, &o, &dims, &tokens);
                for (size_t i = 0; i < t.n; i++) {
                        double cosine;

                        expected_row(&s, "embeddings", t.index[i], want, dims);
                        cosine = cosine_of(vectors + i * dims, want, dims, NULL);
                        if (!(cosine >= precisions[k].cosine_min))
                                fail_msg("%s: text %zu: cosine %.6f", precision_to_string(precisions[k].p), i, cosine);
                }
                texts_done(&t);
                embedding_model_free(m);
                source_close(&s);
        }
}

/* What cannot be run, and why. */
static void assert_not_made(Source *s, int error, const char *fact) {
        _cleanup_free_ char *message = NULL;
        EmbeddingModel *m = (EmbeddingModel *) 0x1;

        assert_int_equal(embedding_model_new(&s->source, PRECISION_F32, NULL, NULL, &m, &message), error);
        assert_ptr_equal(m, (EmbeddingModel *) 0x1);
        assert_contains(message, fact);
}

static void test_refused(void **state) {
        Source s;

        source_open_fixture("f32-bare", &s);

        free(s.tokenizer);
        s.tokenizer = NULL;
        assert_not_made(&s, -EOPNOTSUPP, "f32-bare: there is no tokenizer.json");

        /* Ids beyond the model's vocabulary: its embedding table lacks them. */
        s.tokenizer = id_tokenizer_json(s.vocab_size + 1);
        assert_not_made(&s, -EBADMSG, "tokenizer.json gives ids up to 300, beyond the 300 of the model's vocabulary");
        free(s.tokenizer);

        s.tokenizer = strdup("{\"model\":{\"type\":\"BPE\"}}");
        assert_not_made(&s, -EOPNOTSUPP, "f32-bare/tokenizer.json");
        free(s.tokenizer);
        s.tokenizer = strdup("{\"model\":");
        assert_not_made(&s, -EBADMSG, "f32-bare/tokenizer.json");
        free(s.tokenizer);
        s.tokenizer = id_tokenizer_json(s.vocab_size);

        s.no_config = true;
        assert_not_made(&s, -EOPNOTSUPP, "f32-bare: there is no config.json");
        s.no_config = false;

        /* A tensor missing. */
        s.source.n_tensors = 0;
        assert_not_made(&s, -EBADMSG, "f32-bare: Tensor ");
        source_close(&s);
}

/* One model, several threads, each with its own scratch. */
#define THREADS 4

typedef struct Worker {
        const EmbeddingModel *m;
        const Texts *t;
        float *vectors;
        int result;
} Worker;

static void *worker_run(void *userdata) {
        Worker *w = userdata;
        EmbeddingScratch *s = NULL;
        EmbedOptions o = EMBED_OPTIONS_DEFAULT;
        size_t dims, failed;
        uint64_t tokens;

        o.prompt_name = "";
        w->result = embedding_scratch_new(w->m, &s);
        for (unsigned round = 0; round < 4 && w->result == 0; round++) {
                free(w->vectors);
                w->vectors = NULL;
                w->result = embedding_run(w->m, s, (const char *const *) w->t->texts, w->t->lengths, w->t->n, &o,
                                          NULL, NULL, &w->vectors, &dims, &tokens, &failed, NULL);
        }
        embedding_scratch_free(s);
        return NULL;
}

static void test_threads(void **state) {
        Worker workers[THREADS] = {};
        pthread_t threads[THREADS];
        EmbeddingModel *m;
        double want[64];
        Source s;
        Texts t;

        source_open_fixture("bf16-mean-normalize-prompts", &s);
        m = model_new(&s, PRECISION_Q8);
        source_unmap(&s);
        texts_of(&s, &t);
        for (size_t i = 0; i < THREADS; i++) {
                workers[i] = (Worker) { .m = m, .t = &t };
                assert_int_equal(pthread_create(&threads[i], NULL, worker_run, &workers[i]), 0);
        }
        for (size_t i = 0; i < THREADS; i++)
                assert_int_equal(pthread_join(threads[i], NULL), 0);
        for (size_t i = 0; i < THREADS; i++) {
                assert_int_equal(workers[i].result, 0);
                /* Each the same, and close to the reference. */
                assert_memory_equal(workers[i].vectors, workers[0].vectors,
                                    t.n * embedding_model_dimensions(m) * sizeof(float));
                for (size_t k = 0; k < t.n; k++) {
                        expected_row(&s, "embeddings", t.index[k], want, embedding_model_dimensions(m));
                        assert_true(cosine_of(workers[i].vectors + k * embedding_model_dimensions(m), want,
                                              embedding_model_dimensions(m), NULL) >= 0.995);
                }
        }
        for (size_t i = 0; i < THREADS; i++)
                free(workers[i].vectors);
        texts_done(&t);
        embedding_model_free(m);
        source_close(&s);
}

static int setup(void **state) {
        return blas_init(NULL) < 0 ? -1 : 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_prestate(test_fixture, (void *) fixtures[0]),
                cmocka_unit_test_prestate(test_fixture, (void *) fixtures[1]),
                cmocka_unit_test_prestate(test_fixture, (void *) fixtures[2]),
                cmocka_unit_test_prestate(test_fixture, (void *) fixtures[3]),
                cmocka_unit_test_prestate(test_fixture, (void *) fixtures[4]),
                cmocka_unit_test(test_strip_and_lowercase),
                cmocka_unit_test(test_python_strip_lower),
                cmocka_unit_test(test_prompts),
                cmocka_unit_test(test_options_refused),
                cmocka_unit_test(test_truncation),
                cmocka_unit_test(test_empty_text),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_precisions),
                cmocka_unit_test(test_refused),
                cmocka_unit_test(test_threads),
        };

        return cmocka_run_group_tests(tests, setup, NULL);
}
