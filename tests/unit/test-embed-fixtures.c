/* SPDX-License-Identifier: MIT */
/* The text-level fixtures of Embed (tests/fixtures/embed/, written by
 * tests/tools/make-embed-fixtures.py from the reference tokenizer and
 * torch) against the daemon's own parts, before any D-Bus: each model
 * folder read as the daemon reads it (config.json, sentence-transformers'
 * files, tokenizer.json, the weights), each case's texts, as the
 * reference prepared them (prompt put before, lowercased), encoded by
 * tokenizer.c into the reference's ids, and those run by bert.c into the
 * reference's vectors with the case's options, within the bounds;
 * then the lower precisions on the models meant for them. So a fixture
 * that the integration tests of Embed compare with is known to be one the
 * daemon's parts can meet. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bert-fixture.h"

#include "bert.h"
#include "blas.h"
#include "macro.h"
#include "st-config.h"
#include "tokenizer.h"

#define EMBED_FIXTURES MPOOL_TESTS_DIR "/fixtures/embed"

#define BATCH_MAX 16

static cJSON *expected = NULL;

typedef struct Model {
        const char *name;
        const cJSON *facts;       /* expected.json's models.NAME */
        char *dir;
        BertConfig config;
        StConfig st;
        Tokenizer *tokenizer;
        FixtureTensors tensors;
        BertModel *model;
} Model;

static void model_close(Model *m) {
        bert_model_free(m->model);
        fixture_tensors_done(&m->tensors);
        tokenizer_free(m->tokenizer);
        st_config_done(&m->st);
        free(m->dir);
        *m = (Model) {};
}

static void model_open(const char *name, Model *m) {
        _cleanup_free_ char *text = NULL, *error = NULL, *path = NULL;
        size_t length = 0;
        int r;

        *m = (Model) { .name = name };
        m->facts = cJSON_GetObjectItem(cJSON_GetObjectItem(expected, "models"), name);
        assert_non_null(m->facts);
        assert_true(asprintf(&m->dir, EMBED_FIXTURES "/%s", name) > 0);

        assert_int_equal(read_folder_file(BERT_CONFIG_FILE, 1 << 20, &text, &length, m->dir, NULL), 0);
        r = bert_config_parse(text, length, &m->config, &error);
        if (r < 0)
                fail_msg("%s: %s", name, strempty(error));
        r = st_config_load(read_folder_file, m->dir, &m->config, &m->st, &error);
        if (r < 0)
                fail_msg("%s: %s", name, strempty(error));

        free(text);
        text = NULL;
        assert_int_equal(read_folder_file("tokenizer.json", TOKENIZER_FILE_SIZE_MAX, &text, &length, m->dir, NULL),
                         0);
        r = tokenizer_parse(text, length, NULL, NULL, &m->tokenizer, &error);
        if (r < 0)
                fail_msg("%s: %s", name, strempty(error));
        /* The vocabulary fits the model's embedding table. */
        assert_true(tokenizer_id_limit(m->tokenizer) <= m->config.vocab_size);

        assert_true(asprintf(&path, "%s/model.safetensors", m->dir) > 0);
        assert_int_equal(fixture_tensors_load(path, &m->tensors), 0);
        r = bert_model_new(&m->config, m->tensors.tensors, m->tensors.n_tensors, PRECISION_F32, &m->model, &error);
        if (r < 0)
                fail_msg("%s: %s", name, strempty(error));
}

static const cJSON *member(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItem(o, key);

        if (!v)
                fail_msg("no member %s", key);
        return v;
}

/* The case's options as the daemon will apply them. */
typedef struct CaseOptions {
        bool normalize;
        bool truncate;
        TokenizerTruncation direction;
        size_t dimensions;
        const char *prompt_name;  /* NULL: the default */
} CaseOptions;

static CaseOptions case_options(const Model *m, const cJSON *c) {
        const cJSON *o = member(c, "options"), *v;
        CaseOptions r = { .normalize = m->st.normalize, .truncate = true, .direction = TOKENIZER_TRUNCATE_RIGHT };

        cJSON_ArrayForEach(v, o) {
                if (strcmp(v->string, "normalize") == 0)
                        r.normalize = cJSON_IsTrue(v);
                else if (strcmp(v->string, "truncate") == 0)
                        r.truncate = cJSON_IsTrue(v);
                else if (strcmp(v->string, "truncation_direction") == 0)
                        r.direction = strcmp(v->valuestring, "left") == 0 ? TOKENIZER_TRUNCATE_LEFT
                                                                           : TOKENIZER_TRUNCATE_RIGHT;
                else if (strcmp(v->string, "dimensions") == 0)
                        r.dimensions = (size_t) v->valuedouble;
                else if (strcmp(v->string, "prompt_name") == 0)
                        r.prompt_name = v->valuestring;
                else
                        fail_msg("unknown option %s", v->string);
        }
        return r;
}

/* The ids tokenizer.c gives for the text, checked against the reference's. */
static void check_ids(const Model *m, const char *what, const char *input, const CaseOptions *o, const cJSON *want,
                      uint32_t *ids, size_t *ret_n) {
        int32_t got[512];
        size_t n = 0, i = 0;
        const cJSON *id;

        assert_true(m->st.max_length <= ELEMENTSOF(got));
        assert_int_equal(tokenizer_encode(m->tokenizer, input, strlen(input),
                                          o->truncate ? o->direction : TOKENIZER_TRUNCATE_NONE, got,
                                          m->st.max_length, &n),
                         0);
        if ((size_t) cJSON_GetArraySize(want) != n)
                fail_msg("%s: %zu ids, the reference %d", what, n, cJSON_GetArraySize(want));
        cJSON_ArrayForEach(id, want) {
                if (got[i] != (int32_t) id->valuedouble)
                        fail_msg("%s: id %zu is %d, the reference's %d", what, i, got[i], (int) id->valuedouble);
                ids[i] = (uint32_t) got[i];
                i++;
        }
        *ret_n = n;
}

static void assert_close(const char *what, size_t i, const float *got, const cJSON *want, size_t n, double cosine_min,
                         double abs_error_max, double *ret_cosine) {
        double dot = 0, a = 0, b = 0, worst = 0, cosine;
        const cJSON *v;
        size_t j = 0;

        assert_int_equal(cJSON_GetArraySize(want), n);
        cJSON_ArrayForEach(v, want) {
                dot += got[j] * v->valuedouble;
                a += (double) got[j] * got[j];
                b += v->valuedouble * v->valuedouble;
                worst = fmax(worst, fabs(got[j] - v->valuedouble));
                j++;
        }
        cosine = dot / (sqrt(a) * sqrt(b));
        if (!(cosine >= cosine_min) || !(worst <= abs_error_max))
                fail_msg("%s, text %zu: cosine %.9f, max abs error %g", what, i, cosine, worst);
        if (ret_cosine)
                *ret_cosine = cosine;
}

/* Runs the case's ids through model (m's, or one in another precision)
 * and compares with its embeddings; returns the lowest cosine. */
static double run_case(const Model *m, const BertModel *model, const cJSON *c, double cosine_min,
                       double abs_error_max) {
        _cleanup_(bert_scratch_freep) BertScratch *s = NULL;
        _cleanup_free_ float *vectors = NULL;
        const char *name = member(c, "name")->valuestring;
        const cJSON *inputs = member(c, "inputs"), *ids = member(c, "ids"), *embeddings = member(c, "embeddings");
        CaseOptions o = case_options(m, c);
        size_t n = (size_t) cJSON_GetArraySize(inputs), kept = o.dimensions ?: m->config.hidden_size;
        uint32_t id_store[BATCH_MAX][512];
        BertInput batch[BATCH_MAX];
        BertEmbedOptions eo = { .pooling = m->st.pooling, .normalize = o.normalize, .dimensions = o.dimensions };
        double worst = 1, cosine;

        assert_true(n > 0 && n <= BATCH_MAX);
        assert_int_equal(cJSON_GetArraySize(ids), n);
        for (size_t i = 0; i < n; i++) {
                const char *input = cJSON_GetArrayItem(inputs, (int) i)->valuestring;

                check_ids(m, name, input, &o, cJSON_GetArrayItem(ids, (int) i), id_store[i], &batch[i].n_ids);
                batch[i].ids = id_store[i];
        }

        assert_int_equal(bert_scratch_new(model, n, m->st.max_length, &s), 0);
        vectors = calloc(n * kept, sizeof(float));
        assert_non_null(vectors);
        assert_int_equal(bert_embed(model, s, batch, n, &eo, vectors), 0);
        for (size_t i = 0; i < n; i++) {
                assert_close(name, i, vectors + i * kept, cJSON_GetArrayItem(embeddings, (int) i), kept, cosine_min,
                             abs_error_max, &cosine);
                worst = fmin(worst, cosine);
        }
        return worst;
}

/* A case that expects an error: the text it names is too long for the
 * model without truncation, or the prompt is none of the model's. */
static void check_error_case(const Model *m, const cJSON *c) {
        const char *name = member(c, "name")->valuestring;
        const cJSON *inputs, *index = cJSON_GetObjectItem(c, "error_index");
        CaseOptions o = case_options(m, c);

        assert_string_equal(member(c, "error")->valuestring, "org.freedesktop.DBus.Error.InvalidArgs");
        if (o.prompt_name) {
                assert_null(st_config_find_prompt(&m->st, o.prompt_name));
                return;
        }
        assert_false(o.truncate);
        assert_non_null(index);
        inputs = member(c, "inputs");
        assert_int_equal(cJSON_GetArraySize(inputs), cJSON_GetArraySize(member(c, "texts")));
        for (int i = 0; i < cJSON_GetArraySize(inputs); i++) {
                const char *input = cJSON_GetArrayItem(inputs, i)->valuestring;
                int32_t ids[512];
                size_t n = 0;
                int r;

                r = tokenizer_encode(m->tokenizer, input, strlen(input), TOKENIZER_TRUNCATE_NONE, ids,
                                     m->st.max_length, &n);
                if (i == (int) index->valuedouble) {
                        if (r != -E2BIG)
                                fail_msg("%s: text %d is not too long (%d)", name, i, r);
                } else if (r != 0)
                        fail_msg("%s: text %d fails (%d)", name, i, r);
        }
}

static void test_model(void **state) {
        const char *name = *state;
        const cJSON *c, *facts;
        size_t n_cases = 0;
        Model m;

        model_open(name, &m);
        facts = m.facts;

        /* The folder says what expected.json says it does. */
        assert_string_equal(bert_pooling_to_string(m.st.pooling), member(facts, "pooling")->valuestring);
        assert_int_equal(m.st.normalize, cJSON_IsTrue(member(facts, "normalize")));
        assert_int_equal(m.st.lowercase, cJSON_IsTrue(member(facts, "do_lower_case")));
        assert_int_equal(m.st.max_length, member(facts, "max_length")->valuedouble);
        assert_int_equal(m.config.hidden_size, member(facts, "dimensions")->valuedouble);
        assert_int_equal(m.st.n_prompts, cJSON_GetArraySize(member(facts, "prompts")));
        if (cJSON_IsString(member(facts, "default_prompt_name")))
                assert_string_equal(m.st.default_prompt->name, member(facts, "default_prompt_name")->valuestring);
        else
                assert_null(m.st.default_prompt);

        cJSON_ArrayForEach(c, member(expected, "cases")) {
                if (strcmp(member(c, "model")->valuestring, name) != 0)
                        continue;
                n_cases++;
                if (cJSON_GetObjectItem(c, "error"))
                        check_error_case(&m, c);
                else
                        run_case(&m, m.model, c, COSINE_MIN, ABS_ERROR_MAX);
        }
        assert_true(n_cases >= 10);
        model_close(&m);
}

/* The lower precisions of a load, on the models expected.json gives
 * bounds for, against the F32 reference. */
static void test_precisions(void **state) {
        const cJSON *facts_of = member(expected, "models"), *facts;
        size_t n_models = 0;

        cJSON_ArrayForEach(facts, facts_of) {
                const cJSON *bounds = cJSON_GetObjectItem(facts, "precision_cosine_min"), *bound;
                Model m;

                if (!bounds)
                        continue;
                n_models++;
                model_open(facts->string, &m);
                cJSON_ArrayForEach(bound, bounds) {
                        _cleanup_(bert_model_freep) BertModel *model = NULL;
                        _cleanup_free_ char *error = NULL;
                        Precision p = precision_from_string(bound->string);
                        double worst = 1;
                        const cJSON *c;
                        int r;

                        assert_int_not_equal(p, _PRECISION_INVALID);
                        r = bert_model_new(&m.config, m.tensors.tensors, m.tensors.n_tensors, p, &model, &error);
                        if (r < 0)
                                fail_msg("%s: %s", m.name, strempty(error));
                        cJSON_ArrayForEach(c, member(expected, "cases"))
                                if (strcmp(member(c, "model")->valuestring, m.name) == 0 &&
                                    !cJSON_GetObjectItem(c, "error"))
                                        worst = fmin(worst, run_case(&m, model, c, bound->valuedouble, INFINITY));
                        printf("%s in %s: lowest cosine %.6f (bound %g)\n", m.name, bound->string, worst,
                               bound->valuedouble);
                }
                model_close(&m);
        }
        assert_true(n_models > 0);
}

static int setup(void **state) {
        _cleanup_free_ char *text = NULL;
        size_t length = 0;

        if (blas_init(NULL) < 0)
                return -1;
        if (read_whole_file(EMBED_FIXTURES "/expected.json", 8 << 20, &text, &length) < 0)
                return -1;
        expected = cJSON_ParseWithLength(text, length);
        return expected ? 0 : -1;
}

static int teardown(void **state) {
        cJSON_Delete(expected);
        expected = NULL;
        return 0;
}

int main(void) {
        /* Named after the model, so that a failure says which. */
#define MODEL_TEST(name) { "test_model: " name, test_model, NULL, NULL, (void *) name }
        const struct CMUnitTest tests[] = {
                MODEL_TEST("f32-mean-normalize"),
                MODEL_TEST("f16-prefix-cls-normalize"),
                MODEL_TEST("bf16-mean-normalize-prompts"),
                MODEL_TEST("f32-lowercase-mean"),
                MODEL_TEST("f32-bare"),
                cmocka_unit_test(test_precisions),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
