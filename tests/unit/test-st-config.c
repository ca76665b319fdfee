/* SPDX-License-Identifier: MIT */
/* sentence-transformers' files: the pipelines that can be run, those that
 * cannot, and files that are malformed, read through an in-memory folder.
 * (The fixtures' own files are read in test-bert.) */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config-json.h"
#include "macro.h"
#include "st-config.h"

/* A model folder in memory: NULL-terminated pairs of path and text. A text
 * of "EIO" cannot be read. */
typedef struct Folder {
        const char *files[16][2];
} Folder;

static int read_memory(const char *path, uint64_t max_size, char **ret_text, size_t *ret_length, void *userdata,
                       char **ret_error) {
        const Folder *f = userdata;

        for (size_t i = 0; i < ELEMENTSOF(f->files) && f->files[i][0]; i++) {
                const char *text = f->files[i][1];
                size_t n = strlen(text);

                if (strcmp(f->files[i][0], path) != 0)
                        continue;
                if (strcmp(text, "EIO") == 0)
                        return config_json_error(ret_error, -EIO, "%s cannot be read: %m", path);
                if (n > max_size)
                        return -EFBIG;
                *ret_text = strdup(text);
                assert_non_null(*ret_text);
                *ret_length = n;
                return 0;
        }
        return -ENOENT;
}

static const BertConfig bert = {
        .vocab_size = 100,
        .hidden_size = 384,
        .n_layers = 2,
        .n_heads = 12,
        .intermediate_size = 1536,
        .max_position_embeddings = 512,
        .type_vocab_size = 2,
        .layer_norm_eps = 1e-12f,
};

#define TRANSFORMER "{\"idx\": 0, \"name\": \"0\", \"path\": \"\", \"type\": \"sentence_transformers.models.Transformer\"}"
#define POOLING "{\"idx\": 1, \"name\": \"1\", \"path\": \"1_Pooling\", \"type\": \"sentence_transformers.models.Pooling\"}"
#define NORMALIZE "{\"idx\": 2, \"name\": \"2\", \"path\": \"2_Normalize\", \"type\": \"sentence_transformers.models.Normalize\"}"
#define DENSE "{\"idx\": 2, \"name\": \"2\", \"path\": \"2_Dense\", \"type\": \"sentence_transformers.models.Dense\"}"
#define MEAN "{\"word_embedding_dimension\": 384, \"pooling_mode_cls_token\": false, \"pooling_mode_mean_tokens\": true, " \
        "\"pooling_mode_max_tokens\": false, \"pooling_mode_mean_sqrt_len_tokens\": false, " \
        "\"pooling_mode_weightedmean_tokens\": false, \"pooling_mode_lasttoken\": false, \"include_prompt\": true}"
#define CLS "{\"word_embedding_dimension\": 384, \"pooling_mode_cls_token\": true}"

static void load(const Folder *f, StConfig *ret) {
        _cleanup_free_ char *message = NULL;
        int r;

        r = st_config_load(read_memory, (void *) f, &bert, ret, &message);
        if (r < 0)
                fail_msg("refused (%d): %s", r, strempty(message));
        assert_null(message);
}

static void assert_refused(const Folder *f, int error, const char *fact) {
        _cleanup_free_ char *message = NULL;
        StConfig c = { .max_length = 12345 };

        assert_int_equal(st_config_load(read_memory, (void *) f, &bert, &c, &message), error);
        if (!message || !strstr(message, fact))
                fail_msg("message \"%s\" does not contain \"%s\"", strempty(message), fact);
        /* Never a string of the files. */
        assert_null(strstr(message, "SECRET"));
        assert_int_equal(c.max_length, 12345);
        assert_int_equal(st_config_load(read_memory, (void *) f, &bert, &c, NULL), error);
}

static void test_bare(void **state) {
        Folder f = {};
        StConfig c;

        /* A transformers model alone: mean pooling, as sentence-transformers
         * runs one. */
        load(&f, &c);
        assert_int_equal(c.pooling, BERT_POOLING_MEAN);
        assert_false(c.normalize);
        assert_false(c.lowercase);
        assert_int_equal(c.max_length, 512);
        assert_int_equal(c.n_prompts, 0);
        assert_null(c.default_prompt);
        st_config_done(&c);

        /* Its other files still count. */
        f = (Folder) { { { ST_BERT_CONFIG_FILE, "{\"max_seq_length\": 256, \"do_lower_case\": true}" } } };
        load(&f, &c);
        assert_int_equal(c.max_length, 256);
        assert_true(c.lowercase);
        st_config_done(&c);
}

static void test_pipelines(void **state) {
        Folder f = { {
                { ST_MODULES_FILE, "[" TRANSFORMER ", " POOLING ", " NORMALIZE "]" },
                { "1_Pooling/config.json", MEAN },
        } };
        StConfig c;

        load(&f, &c);
        assert_int_equal(c.pooling, BERT_POOLING_MEAN);
        assert_true(c.normalize);
        assert_int_equal(c.max_length, 512);
        st_config_done(&c);

        f.files[0][1] = "[" TRANSFORMER ", " POOLING "]";
        f.files[1][1] = CLS;
        load(&f, &c);
        assert_int_equal(c.pooling, BERT_POOLING_CLS);
        assert_false(c.normalize);
        st_config_done(&c);

        /* The Pooling module anywhere beneath the folder; members other than
         * type and path ignored. */
        f.files[0][1] = "[" TRANSFORMER ", {\"path\": \"modules/pool.v2\", \"type\": "
                "\"sentence_transformers.models.Pooling\", \"kwargs\": [\"x\"]}]";
        f.files[1][0] = "modules/pool.v2/config.json";
        load(&f, &c);
        assert_int_equal(c.pooling, BERT_POOLING_CLS);
        st_config_done(&c);

        /* max_seq_length: at most the model's positions. */
        f = (Folder) { { { ST_BERT_CONFIG_FILE, "{\"max_seq_length\": 8192}" } } };
        load(&f, &c);
        assert_int_equal(c.max_length, 512);
        st_config_done(&c);
        f.files[0][1] = "{\"max_seq_length\": null, \"do_lower_case\": false}";
        load(&f, &c);
        assert_int_equal(c.max_length, 512);
        assert_false(c.lowercase);
        st_config_done(&c);
}

static void test_pipelines_not_supported(void **state) {
        Folder f = { {
                { ST_MODULES_FILE, "[" TRANSFORMER ", " POOLING ", " DENSE ", " NORMALIZE "]" },
                { "1_Pooling/config.json", MEAN },
        } };

        assert_refused(&f, -EOPNOTSUPP, "modules.json module 2 is of a type that cannot be run");
        f.files[0][1] = "[" TRANSFORMER ", " POOLING ", {\"path\": \"x\", \"type\": \"SECRET\"}]";
        assert_refused(&f, -EOPNOTSUPP, "modules.json module 2 is of a type that cannot be run");
        f.files[0][1] = "[{\"path\": \"0_BERT\", \"type\": \"sentence_transformers.models.Transformer\"}, " POOLING "]";
        assert_refused(&f, -EOPNOTSUPP, "module 0 keeps the Transformer in a subfolder");
        f.files[0][1] = "[" TRANSFORMER "]";
        assert_refused(&f, -EOPNOTSUPP, "lists no Pooling module");
        f.files[0][1] = "[]";
        assert_refused(&f, -EOPNOTSUPP, "lists no Transformer module");
        f.files[0][1] = "[" POOLING ", " TRANSFORMER "]";
        assert_refused(&f, -EOPNOTSUPP, "module 0 is a Pooling module that does not follow the Transformer");
        f.files[0][1] = "[" TRANSFORMER ", " NORMALIZE ", " POOLING "]";
        assert_refused(&f, -EOPNOTSUPP, "module 1 is a Normalize module that does not follow the Pooling module");
        f.files[0][1] = "[" TRANSFORMER ", " POOLING ", " POOLING "]";
        assert_refused(&f, -EOPNOTSUPP, "module 2 is a Pooling module");
        f.files[0][1] = "[" TRANSFORMER ", " POOLING ", " NORMALIZE ", " NORMALIZE "]";
        assert_refused(&f, -EOPNOTSUPP, "module 3 is a Normalize module");
        f.files[0][1] = "[" TRANSFORMER ", " TRANSFORMER ", " POOLING "]";
        assert_refused(&f, -EOPNOTSUPP, "module 1 is a Transformer after other modules");

        /* Pooling modes other than mean and CLS, or several at once. */
        f.files[0][1] = "[" TRANSFORMER ", " POOLING "]";
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_max_tokens\": true}";
        assert_refused(&f, -EOPNOTSUPP, "1_Pooling/config.json: pooling_mode_max_tokens cannot be run");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_tokens\": true, "
                "\"pooling_mode_lasttoken\": true}";
        assert_refused(&f, -EOPNOTSUPP, "pooling_mode_lasttoken cannot be run");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_tokens\": true, "
                "\"pooling_mode_weightedmean_tokens\": true}";
        assert_refused(&f, -EOPNOTSUPP, "pooling_mode_weightedmean_tokens");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_sqrt_len_tokens\": true}";
        assert_refused(&f, -EOPNOTSUPP, "pooling_mode_mean_sqrt_len_tokens");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_tokens\": true, "
                "\"pooling_mode_cls_token\": true}";
        assert_refused(&f, -EOPNOTSUPP, "exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token");
        f.files[1][1] = "{\"word_embedding_dimension\": 384}";
        assert_refused(&f, -EOPNOTSUPP, "exactly one of");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_tokens\": true, "
                "\"include_prompt\": false}";
        assert_refused(&f, -EOPNOTSUPP, "include_prompt false");
}

static void test_malformed(void **state) {
        Folder f = { {
                { ST_MODULES_FILE, "[" TRANSFORMER ", " POOLING "]" },
                { "1_Pooling/config.json", MEAN },
        } };
        char big[4000];

        /* modules.json */
        f.files[0][1] = "{\"modules\": []}";
        assert_refused(&f, -EBADMSG, "modules.json holds an object, not an array");
        f.files[0][1] = "[" TRANSFORMER ", \"1_Pooling\"]";
        assert_refused(&f, -EBADMSG, "modules.json module 1 is not an object");
        f.files[0][1] = "[" TRANSFORMER ", {\"path\": \"1_Pooling\"}]";
        assert_refused(&f, -EBADMSG, "modules.json module 1 has no type");
        f.files[0][1] = "[" TRANSFORMER ", {\"type\": \"sentence_transformers.models.Pooling\"}]";
        assert_refused(&f, -EBADMSG, "modules.json module 1 has no path");
        f.files[0][1] = "[" TRANSFORMER ", {\"path\": 1, \"type\": \"sentence_transformers.models.Pooling\"}]";
        assert_refused(&f, -EBADMSG, "modules.json module 1: path must be a string");
        f.files[0][1] = "[" TRANSFORMER ", " POOLING ",";
        assert_refused(&f, -EBADMSG, "modules.json is not valid JSON");

        strcpy(big, "[" TRANSFORMER);
        for (unsigned i = 0; i < ST_MODULES_MAX; i++)
                strcat(big, ", " NORMALIZE);
        strcat(big, "]");
        f.files[0][1] = big;
        assert_refused(&f, -EBADMSG, "modules.json lists more than 16 modules");

        /* Paths that are not a folder beneath the model's. */
        static const char *const bad_paths[] = {
                "../SECRET", "/etc", "a//b", ".", "..", "a/./b", "a/../b", "a/", "x y", "SECRET\\\\x", "\\u00e9",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad_paths); i++) {
                snprintf(big, sizeof big, "[" TRANSFORMER ", {\"path\": \"%s\", \"type\": "
                         "\"sentence_transformers.models.Pooling\"}]", bad_paths[i]);
                f.files[0][1] = big;
                assert_refused(&f, -EBADMSG, "module 1");
        }

        /* The Pooling module's configuration. */
        f.files[0][1] = "[" TRANSFORMER ", " POOLING "]";
        f.files[1][0] = "elsewhere/config.json";
        assert_refused(&f, -EBADMSG, "1_Pooling/config.json is missing");
        f.files[1][0] = "1_Pooling/config.json";
        f.files[1][1] = "{\"word_embedding_dimension\": 768, \"pooling_mode_mean_tokens\": true}";
        assert_refused(&f, -EBADMSG, "word_embedding_dimension is 768, not the model's hidden_size (384)");
        f.files[1][1] = "{\"pooling_mode_mean_tokens\": true}";
        assert_refused(&f, -EBADMSG, "1_Pooling/config.json has no word_embedding_dimension");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_tokens\": \"SECRET\"}";
        assert_refused(&f, -EBADMSG, "pooling_mode_mean_tokens must be true or false");
        f.files[1][1] = "{\"word_embedding_dimension\": 384, \"pooling_mode_mean_tokens\": true, "
                "\"pooling_mode_mean_tokens\": false}";
        assert_refused(&f, -EBADMSG, "names a member twice");
        f.files[1][1] = "EIO";
        assert_refused(&f, -EIO, "1_Pooling/config.json cannot be read");
        f.files[1][1] = MEAN;

        /* sentence_bert_config.json */
        f.files[2][0] = ST_BERT_CONFIG_FILE;
        f.files[2][1] = "{\"max_seq_length\": 0}";
        assert_refused(&f, -EBADMSG, "sentence_bert_config.json: max_seq_length must be a whole number");
        f.files[2][1] = "{\"max_seq_length\": \"SECRET\"}";
        assert_refused(&f, -EBADMSG, "max_seq_length must be a whole number");
        f.files[2][1] = "{\"max_seq_length\": 128, \"do_lower_case\": 1}";
        assert_refused(&f, -EBADMSG, "do_lower_case must be true or false");
        f.files[2][1] = "[128]";
        assert_refused(&f, -EBADMSG, "sentence_bert_config.json holds an array, not an object");
        f.files[2][1] = "EIO";
        assert_refused(&f, -EIO, "sentence_bert_config.json cannot be read");
        f.files[2][1] = "{}";

        /* Too large to be one. */
        memset(big, ' ', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        f.files[2][1] = big;
        {
                /* The reader is told the bound: a file above it is refused
                 * without being read. */
                _cleanup_free_ char *huge = malloc(CONFIG_JSON_SIZE_MAX + 3);
                assert_non_null(huge);
                memset(huge, ' ', CONFIG_JSON_SIZE_MAX + 2);
                huge[0] = '{';
                huge[CONFIG_JSON_SIZE_MAX + 1] = '}';
                huge[CONFIG_JSON_SIZE_MAX + 2] = '\0';
                f.files[2][1] = huge;
                assert_refused(&f, -EBADMSG, "sentence_bert_config.json is larger than 1048576 bytes");
        }
}

static void test_prompts(void **state) {
        Folder f = { { { ST_PROMPTS_FILE, "{\"prompts\": {\"query\": \"query: \", \"passage\": \"passage: \", "
                                          "\"empty\": \"\", \"\\u00e9t\\u00e9\": \"\\u6f22\\u5b57: \"}, "
                                          "\"default_prompt_name\": \"passage\", \"similarity_fn_name\": \"cosine\"}" } } };
        char big[ST_PROMPT_MAX + 200], name[ST_PROMPT_NAME_MAX + 2];
        StConfig c;

        load(&f, &c);
        assert_int_equal(c.n_prompts, 4);
        assert_string_equal(st_config_find_prompt(&c, "query")->text, "query: ");
        assert_string_equal(st_config_find_prompt(&c, "passage")->text, "passage: ");
        assert_string_equal(st_config_find_prompt(&c, "empty")->text, "");
        assert_string_equal(st_config_find_prompt(&c, "\xc3\xa9t\xc3\xa9")->text, "\xe6\xbc\xa2\xe5\xad\x97: ");
        assert_null(st_config_find_prompt(&c, "Query"));
        assert_ptr_equal(c.default_prompt, st_config_find_prompt(&c, "passage"));
        st_config_done(&c);

        /* No prompts, or no default. */
        f.files[0][1] = "{\"prompts\": {}, \"default_prompt_name\": null}";
        load(&f, &c);
        assert_int_equal(c.n_prompts, 0);
        assert_null(c.default_prompt);
        st_config_done(&c);
        f.files[0][1] = "{\"prompts\": null, \"__version__\": {\"sentence_transformers\": \"2.2.2\"}}";
        load(&f, &c);
        assert_int_equal(c.n_prompts, 0);
        st_config_done(&c);
        f.files[0][1] = "{\"prompts\": {\"query\": \"q: \"}}";
        load(&f, &c);
        assert_int_equal(c.n_prompts, 1);
        assert_null(c.default_prompt);
        st_config_done(&c);

        /* Malformed. */
        f.files[0][1] = "{\"prompts\": {\"query\": \"q: \"}, \"default_prompt_name\": \"SECRET\"}";
        assert_refused(&f, -EBADMSG, "default_prompt_name is not one of prompts");
        f.files[0][1] = "{\"prompts\": {}, \"default_prompt_name\": \"query\"}";
        assert_refused(&f, -EBADMSG, "default_prompt_name is not one of prompts");
        f.files[0][1] = "{\"prompts\": {\"query\": \"q: \"}, \"default_prompt_name\": 0}";
        assert_refused(&f, -EBADMSG, "default_prompt_name must be a string");
        f.files[0][1] = "{\"prompts\": [\"SECRET\"]}";
        assert_refused(&f, -EBADMSG, "prompts is not an object");
        f.files[0][1] = "{\"prompts\": {\"a\": \"x\", \"b\": 1}}";
        assert_refused(&f, -EBADMSG, "prompt 1 is not a string");
        f.files[0][1] = "{\"prompts\": {\"\": \"x\"}}";
        assert_refused(&f, -EBADMSG, "prompt 0 has a name that is empty or longer than 128 bytes");
        f.files[0][1] = "{\"prompts\": {\"a\": \"x\", \"a\": \"y\"}}";
        assert_refused(&f, -EBADMSG, "names a member twice");

        memset(name, 'n', sizeof name - 1);
        name[sizeof name - 1] = '\0';
        snprintf(big, sizeof big, "{\"prompts\": {\"%s\": \"x\"}}", name);
        f.files[0][1] = big;
        assert_refused(&f, -EBADMSG, "prompt 0 has a name that is empty or longer than 128 bytes");
        name[sizeof name - 2] = '\0';   /* 128 bytes: allowed */
        snprintf(big, sizeof big, "{\"prompts\": {\"%s\": \"x\"}}", name);
        load(&f, &c);
        assert_int_equal(c.n_prompts, 1);
        st_config_done(&c);

        strcpy(big, "{\"prompts\": {\"a\": \"");
        memset(big + strlen(big), 'x', ST_PROMPT_MAX + 1);
        strcpy(big + strlen("{\"prompts\": {\"a\": \"") + ST_PROMPT_MAX + 1, "\"}}");
        assert_refused(&f, -EBADMSG, "prompt 0 is longer than 4096 bytes");

        {
                _cleanup_free_ char *many = NULL;
                size_t size = 0;
                FILE *m = open_memstream(&many, &size);

                assert_non_null(m);
                fputs("{\"prompts\": {", m);
                for (unsigned i = 0; i <= ST_PROMPTS_MAX; i++)
                        fprintf(m, "%s\"p%u\": \"x\"", i ? ", " : "", i);
                fputs("}}", m);
                assert_int_equal(fclose(m), 0);
                f.files[0][1] = many;
                assert_refused(&f, -EBADMSG, "has more than 64 prompts");
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bare),
                cmocka_unit_test(test_pipelines),
                cmocka_unit_test(test_pipelines_not_supported),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_prompts),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
