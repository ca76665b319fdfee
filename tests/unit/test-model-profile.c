/* SPDX-License-Identifier: MIT */
/* What kind of model a folder holds, told from its small files before it
 * is loaded, and what each precision would take. */
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

#include "id-tokenizer.h"

#include "macro.h"
#include "model-profile.h"
#include "store.h"

typedef struct Fixture {
        char root[64];
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);

        assert_non_null(f);
        strcpy(f->root, "/tmp/test-model-profile-XXXXXX");
        assert_non_null(mkdtemp(f->root));
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char command[128];

        snprintf(command, sizeof command, "rm -rf '%s'", f->root);
        assert_int_equal(system(command), 0);
        free(f);
        return 0;
}

static void write_text(const Fixture *f, const char *name, const char *file, const char *text) {
        _cleanup_free_ char *path = NULL;
        FILE *out;

        assert_true(asprintf(&path, "%s/%s/%s", f->root, name, file) > 0);
        out = fopen(path, "we");
        assert_non_null(out);
        assert_true(fputs(text, out) >= 0);
        assert_int_equal(fclose(out), 0);
}

/* A fixture of tests/fixtures/bert as model name, with or without a
 * tokenizer.json. */
static void copy_bert(const Fixture *f, const char *fixture, const char *name, unsigned vocab_size) {
        _cleanup_free_ char *command = NULL, *json = NULL;

        assert_true(asprintf(&command, "cp -r '" MPOOL_TESTS_DIR "/fixtures/bert/%s' '%s/%s'", fixture, f->root,
                             name) > 0);
        assert_int_equal(system(command), 0);
        if (vocab_size > 0) {
                json = id_tokenizer_json(vocab_size);
                write_text(f, name, "tokenizer.json", json);
        }
}

static void profile_of(const Fixture *f, const char *name, ModelProfile *ret) {
        _cleanup_(model_location_freep) ModelLocation *l = NULL;
        _cleanup_free_ char *error = NULL;

        if (store_resolve(f->root, NULL, name, &l, &error) < 0)
                fail_msg("%s: %s", name, error ?: "(no message)");
        assert_int_equal(model_profile_read(&l->folder, name, l->weight_fds, l->weight_paths, l->n_weights, NULL,
                                            NULL, ret), 0);
}

static void assert_weights(const Fixture *f, const char *name, int error, const char *fact) {
        ModelProfile p;

        profile_of(f, name, &p);
        assert_int_equal(p.kind, MODEL_KIND_WEIGHTS);
        assert_int_equal(p.error, error);
        if (!p.reason || !strstr(p.reason, fact))
                fail_msg("%s: reason \"%s\" lacks \"%s\"", name, p.reason ?: "(null)", fact);
        /* Whatever the precision: the files. */
        assert_int_equal(model_profile_memory_bytes(&p, PRECISION_Q8), p.files_bytes);
        assert_int_equal(model_profile_load_bytes(&p, PRECISION_F32), p.files_bytes);
        model_profile_done(&p);
}

static void test_kinds(void **state) {
        Fixture *f = *state;
        long page = sysconf(_SC_PAGESIZE);
        ModelProfile p;

        copy_bert(f, "f32-bare", "runnable", 300);
        profile_of(f, "runnable", &p);
        assert_int_equal(p.kind, MODEL_KIND_EMBEDDING);
        assert_int_equal(p.error, 0);
        assert_null(p.reason);
        assert_int_equal(p.config.hidden_size, 32);
        assert_int_equal(p.files_bytes, (160112 + page - 1) / page * page);
        assert_true(p.all_f32 && p.some_f32);
        assert_true(p.tokenizer_bytes > 0);
        model_profile_done(&p);

        copy_bert(f, "f32-bare", "no-tokenizer", 0);
        assert_weights(f, "no-tokenizer", -EOPNOTSUPP, "no-tokenizer: there is no tokenizer.json");

        copy_bert(f, "f32-bare", "no-config", 300);
        {
                _cleanup_free_ char *path = NULL;
                assert_true(asprintf(&path, "%s/no-config/config.json", f->root) > 0);
                assert_int_equal(unlink(path), 0);
        }
        assert_weights(f, "no-config", -EOPNOTSUPP, "no-config: there is no config.json");

        copy_bert(f, "f32-bare", "llama", 300);
        write_text(f, "llama", "config.json", "{\"model_type\": \"llama\"}");
        assert_weights(f, "llama", -EOPNOTSUPP, "llama: config.json: model_type");

        copy_bert(f, "f32-bare", "broken", 300);
        write_text(f, "broken", "config.json", "{\"model_type\": \"bert\",");
        assert_weights(f, "broken", -EBADMSG, "broken: config.json");

        copy_bert(f, "f32-bare", "gelu-new", 300);
        write_text(f, "gelu-new", "config.json",
                   "{\"model_type\": \"bert\", \"vocab_size\": 300, \"hidden_size\": 32, \"num_hidden_layers\": 3,"
                   " \"num_attention_heads\": 4, \"intermediate_size\": 64, \"max_position_embeddings\": 64,"
                   " \"hidden_act\": \"gelu_new\"}");
        assert_weights(f, "gelu-new", -EOPNOTSUPP, "GELU");
}

/* What each precision takes: F32 files used in place in f32, anything
 * else converted, and the files let go once everything is. */
static void test_memory(void **state) {
        Fixture *f = *state;
        ModelProfile p;
        uint64_t tok;

        copy_bert(f, "f32-moderate-mean-normalize", "f32", 300);
        profile_of(f, "f32", &p);
        tok = p.tokenizer_bytes;
        assert_true(p.all_f32);
        assert_int_equal(model_profile_memory_bytes(&p, PRECISION_F32), p.files_bytes + tok);
        assert_int_equal(model_profile_load_bytes(&p, PRECISION_F32), p.files_bytes + tok);
        for (Precision k = PRECISION_F16; k < _PRECISION_MAX; k++) {
                assert_int_equal(model_profile_memory_bytes(&p, k), bert_weights_bytes(&p.config, k) + tok);
                assert_int_equal(model_profile_load_bytes(&p, k),
                                 p.files_bytes + bert_weights_bytes(&p.config, k) + tok);
        }
        assert_true(model_profile_memory_bytes(&p, PRECISION_Q8) * 10 < model_profile_memory_bytes(&p, PRECISION_F32) * 4);
        model_profile_done(&p);

        /* F16 files: f32 converts every weight, and lets the files go. */
        copy_bert(f, "f16-prefix-cls-normalize", "f16", 280);
        profile_of(f, "f16", &p);
        assert_false(p.all_f32);
        assert_false(p.some_f32);
        assert_int_equal(model_profile_memory_bytes(&p, PRECISION_F32),
                         bert_weights_bytes(&p.config, PRECISION_F32) + p.tokenizer_bytes);
        assert_int_equal(model_profile_load_bytes(&p, PRECISION_F32),
                         p.files_bytes + bert_weights_bytes(&p.config, PRECISION_F32) + p.tokenizer_bytes);
        model_profile_done(&p);
}

static void test_set_weights(void **state) {
        ModelProfile p = MODEL_PROFILE_NULL, q = MODEL_PROFILE_NULL;

        p.kind = MODEL_KIND_EMBEDDING;
        assert_int_equal(model_profile_set_weights(&p, -EBADMSG, "%s: %d", "m", 7), 0);
        assert_int_equal(p.kind, MODEL_KIND_WEIGHTS);
        assert_int_equal(p.error, -EBADMSG);
        assert_string_equal(p.reason, "m: 7");
        model_profile_move(&q, &p);
        assert_int_equal(p.kind, MODEL_KIND_UNKNOWN);
        assert_null(p.reason);
        assert_string_equal(q.reason, "m: 7");
        model_profile_done(&q);
        assert_string_equal(model_kind_to_string(MODEL_KIND_UNKNOWN), "");
        assert_string_equal(model_kind_to_string(MODEL_KIND_EMBEDDING), "embedding");
        assert_string_equal(model_kind_to_string(MODEL_KIND_WEIGHTS), "weights");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_kinds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_memory, setup, teardown),
                cmocka_unit_test(test_set_weights),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
