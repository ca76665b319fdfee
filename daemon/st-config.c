/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-json.h"
#include "st-config.h"

#define MODULE_PREFIX "sentence_transformers.models."
#define POOLING_PATH_MAX (ST_PATH_MAX + 1 + sizeof(ST_POOLING_FILE))

typedef enum ModuleType {
        MODULE_TRANSFORMER,
        MODULE_POOLING,
        MODULE_NORMALIZE,
        _MODULE_OTHER,
} ModuleType;

static ModuleType module_type_from_string(const char *s) {
        static const char *const names[] = {
                [MODULE_TRANSFORMER] = MODULE_PREFIX "Transformer",
                [MODULE_POOLING] = MODULE_PREFIX "Pooling",
                [MODULE_NORMALIZE] = MODULE_PREFIX "Normalize",
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcmp(s, names[i]) == 0)
                        return (ModuleType) i;
        return _MODULE_OTHER;
}

/* A module's folder, to be read beneath the model's: relative, plain
 * names separated by single slashes, neither "." nor "..". */
static bool module_path_is_valid(const char *p) {
        size_t n = strlen(p), segment = 0;

        if (n == 0 || n > ST_PATH_MAX)
                return false;
        for (size_t i = 0; i <= n; i++) {
                char c = p[i];

                if (c == '/' || c == '\0') {
                        if (segment == 0 ||
                            (segment == 1 && p[i - 1] == '.') ||
                            (segment == 2 && p[i - 1] == '.' && p[i - 2] == '.'))
                                return false;
                        segment = 0;
                } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                           c == '_' || c == '-' || c == '.')
                        segment++;
                else
                        return false;
        }
        return true;
}

/* Reads one file; *ret_json NULL when it is not there. */
static int read_json(st_read_file_t read_file, void *userdata, const char *path, JsonKind kind, cJSON **ret_json,
                     char **ret_error) {
        _cleanup_free_ char *text = NULL;
        size_t length = 0;
        int r;

        r = read_file(path, CONFIG_JSON_SIZE_MAX, &text, &length, userdata, ret_error);
        if (r == -ENOENT) {
                *ret_json = NULL;
                return 0;
        }
        if (r == -EFBIG)
                return config_json_error(ret_error, -EBADMSG, "%s is larger than %" PRIu64 " bytes.", path,
                                         CONFIG_JSON_SIZE_MAX);
        if (r < 0)
                return r;
        return config_json_parse(text, length, path, kind, ret_json, ret_error);
}

/* modules.json: the pipeline, and where the Pooling module keeps its
 * configuration. */
static int parse_modules(const cJSON *modules, char pooling_path[static POOLING_PATH_MAX], bool *ret_normalize,
                         char **ret_error) {
        const cJSON *module;
        size_t i = 0;
        bool pooling = false, normalize = false;

        if (cJSON_GetArraySize(modules) > (int) ST_MODULES_MAX)
                return config_json_error(ret_error, -EBADMSG, ST_MODULES_FILE " lists more than %u modules.",
                                         ST_MODULES_MAX);

        cJSON_ArrayForEach(module, modules) {
                const char *type, *path;
                char file[32];
                int r;

                snprintf(file, sizeof file, ST_MODULES_FILE " module %zu", i);
                if (!cJSON_IsObject(module))
                        return config_json_error(ret_error, -EBADMSG, "%s is not an object.", file);

                r = config_json_string(module, file, "type", CONFIG_JSON_SIZE_MAX, &type, ret_error);
                if (r == -ENOENT)
                        return config_json_error(ret_error, -EBADMSG, "%s has no type.", file);
                if (r < 0)
                        return r;
                r = config_json_string(module, file, "path", ST_PATH_MAX, &path, ret_error);
                if (r == -ENOENT)
                        return config_json_error(ret_error, -EBADMSG, "%s has no path.", file);
                if (r < 0)
                        return r;

                switch (module_type_from_string(type)) {
                case MODULE_TRANSFORMER:
                        if (i != 0)
                                return config_json_error(ret_error, -EOPNOTSUPP,
                                                         "%s is a Transformer after other modules.", file);
                        if (*path)
                                return config_json_error(ret_error, -EOPNOTSUPP,
                                                         "%s keeps the Transformer in a subfolder: only a model "
                                                         "at the top of its folder can be run.", file);
                        break;
                case MODULE_POOLING:
                        if (i == 0 || pooling)
                                return config_json_error(ret_error, -EOPNOTSUPP,
                                                         "%s is a Pooling module that does not follow the "
                                                         "Transformer.", file);
                        if (!module_path_is_valid(path))
                                return config_json_error(ret_error, -EBADMSG,
                                                         "%s has a path that is not a relative folder name of "
                                                         "at most %u bytes of letters, digits, '_', '-' and '.'.",
                                                         file, ST_PATH_MAX);
                        snprintf(pooling_path, POOLING_PATH_MAX, "%s/" ST_POOLING_FILE, path);
                        pooling = true;
                        break;
                case MODULE_NORMALIZE:
                        if (!pooling || normalize)
                                return config_json_error(ret_error, -EOPNOTSUPP,
                                                         "%s is a Normalize module that does not follow the "
                                                         "Pooling module.", file);
                        normalize = true;
                        break;
                default:
                        return config_json_error(ret_error, -EOPNOTSUPP,
                                                 "%s is of a type that cannot be run: only Transformer, Pooling "
                                                 "and Normalize modules can.", file);
                }
                i++;
        }

        if (i == 0)
                return config_json_error(ret_error, -EOPNOTSUPP, ST_MODULES_FILE " lists no Transformer module.");
        if (!pooling)
                return config_json_error(ret_error, -EOPNOTSUPP,
                                         ST_MODULES_FILE " lists no Pooling module: token embeddings cannot be "
                                         "served.");

        *ret_normalize = normalize;
        return 0;
}

static int parse_pooling(const cJSON *json, const char *file, const BertConfig *bert, BertPooling *ret,
                         char **ret_error) {
        static const char *const unsupported[] = {
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens",
                "pooling_mode_lasttoken",
        };
        bool cls = false, mean = false, include_prompt = true, b;
        uint64_t dimension;
        int r;

        r = config_json_uint(json, file, "word_embedding_dimension", 1, BERT_HIDDEN_MAX, &dimension, ret_error);
        if (r == -ENOENT)
                return config_json_error(ret_error, -EBADMSG, "%s has no word_embedding_dimension.", file);
        if (r < 0)
                return r;
        if (dimension != bert->hidden_size)
                return config_json_error(ret_error, -EBADMSG,
                                         "%s: word_embedding_dimension is %" PRIu64 ", not the model's hidden_size "
                                         "(%" PRIu32 ").", file, dimension, bert->hidden_size);

        if ((r = config_json_bool(json, file, "pooling_mode_cls_token", &cls, ret_error)) < 0 && r != -ENOENT)
                return r;
        if ((r = config_json_bool(json, file, "pooling_mode_mean_tokens", &mean, ret_error)) < 0 && r != -ENOENT)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(unsupported); i++) {
                b = false;
                r = config_json_bool(json, file, unsupported[i], &b, ret_error);
                if (r < 0 && r != -ENOENT)
                        return r;
                if (b)
                        return config_json_error(ret_error, -EOPNOTSUPP,
                                                 "%s: %s cannot be run; only mean and CLS pooling can.", file,
                                                 unsupported[i]);
        }
        r = config_json_bool(json, file, "include_prompt", &include_prompt, ret_error);
        if (r < 0 && r != -ENOENT)
                return r;
        if (!include_prompt)
                return config_json_error(ret_error, -EOPNOTSUPP,
                                         "%s: pooling without the prompt's tokens (include_prompt false) cannot be "
                                         "run.", file);

        if (cls == mean)
                return config_json_error(ret_error, -EOPNOTSUPP,
                                         "%s: exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token "
                                         "must be true to be run.", file);
        *ret = cls ? BERT_POOLING_CLS : BERT_POOLING_MEAN;
        return 0;
}

static int parse_bert_config(const cJSON *json, const BertConfig *bert, StConfig *c, char **ret_error) {
        uint64_t length;
        int r;

        r = config_json_uint(json, ST_BERT_CONFIG_FILE, "max_seq_length", 1, JSON_EXACT_INTEGER_MAX, &length,
                             ret_error);
        if (r < 0 && r != -ENOENT)
                return r;
        /* Longer would run past the position embeddings, which
         * sentence-transformers would fail on: the model's own bound wins. */
        if (r == 0 && length < c->max_length)
                c->max_length = (uint32_t) length;

        r = config_json_bool(json, ST_BERT_CONFIG_FILE, "do_lower_case", &c->lowercase, ret_error);
        if (r < 0 && r != -ENOENT)
                return r;
        return 0;
}

static char *strdup_or_null(const char *s, bool *failed) {
        char *d = strdup(s);

        if (!d)
                *failed = true;
        return d;
}

static int parse_prompts(const cJSON *json, StConfig *c, char **ret_error) {
        const cJSON *prompts, *p;
        const char *default_name = NULL;
        size_t n;
        int r;

        prompts = cJSON_GetObjectItemCaseSensitive(json, "prompts");
        if (prompts && !cJSON_IsNull(prompts)) {
                if (!cJSON_IsObject(prompts))
                        return config_json_error(ret_error, -EBADMSG, ST_PROMPTS_FILE ": prompts is not an object.");
                n = (size_t) cJSON_GetArraySize(prompts);
                if (n > ST_PROMPTS_MAX)
                        return config_json_error(ret_error, -EBADMSG, ST_PROMPTS_FILE " has more than %u prompts.",
                                                 ST_PROMPTS_MAX);
                c->prompts = calloc(MAX(n, 1U), sizeof *c->prompts);
                if (!c->prompts)
                        return -ENOMEM;

                cJSON_ArrayForEach(p, prompts) {
                        const char *text = cJSON_GetStringValue(p);
                        bool failed = false;

                        /* The text was checked as UTF-8 with the file. */
                        if (!text)
                                return config_json_error(ret_error, -EBADMSG,
                                                         ST_PROMPTS_FILE ": prompt %zu is not a string.",
                                                         c->n_prompts);
                        if (!*p->string || strlen(p->string) > ST_PROMPT_NAME_MAX)
                                return config_json_error(ret_error, -EBADMSG,
                                                         ST_PROMPTS_FILE ": prompt %zu has a name that is empty or "
                                                         "longer than %u bytes.", c->n_prompts, ST_PROMPT_NAME_MAX);
                        if (strlen(text) > ST_PROMPT_MAX)
                                return config_json_error(ret_error, -EBADMSG,
                                                         ST_PROMPTS_FILE ": prompt %zu is longer than %u bytes.",
                                                         c->n_prompts, ST_PROMPT_MAX);
                        if (st_config_find_prompt(c, p->string))
                                return config_json_error(ret_error, -EBADMSG,
                                                         ST_PROMPTS_FILE ": prompt %zu has the name of another.",
                                                         c->n_prompts);

                        c->prompts[c->n_prompts] = (StPrompt) {
                                .name = strdup_or_null(p->string, &failed),
                                .text = strdup_or_null(text, &failed),
                        };
                        c->n_prompts++;
                        if (failed)
                                return -ENOMEM;
                }
        }

        r = config_json_string(json, ST_PROMPTS_FILE, "default_prompt_name", ST_PROMPT_NAME_MAX, &default_name,
                               ret_error);
        if (r < 0 && r != -ENOENT)
                return r;
        if (default_name) {
                c->default_prompt = st_config_find_prompt(c, default_name);
                if (!c->default_prompt)
                        return config_json_error(ret_error, -EBADMSG,
                                                 ST_PROMPTS_FILE ": default_prompt_name is not one of prompts.");
        }
        return 0;
}

void st_config_done(StConfig *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_prompts; i++) {
                free(c->prompts[i].name);
                free(c->prompts[i].text);
        }
        free(c->prompts);
        *c = (StConfig) {};
}

const StPrompt *st_config_find_prompt(const StConfig *c, const char *name) {
        assert(c);
        assert(name);

        for (size_t i = 0; i < c->n_prompts; i++)
                if (strcmp(c->prompts[i].name, name) == 0)
                        return &c->prompts[i];
        return NULL;
}

int st_config_load(st_read_file_t read_file, void *userdata, const BertConfig *bert, StConfig *ret,
                   char **ret_error) {
        _cleanup_(st_config_done) StConfig c = {
                .pooling = BERT_POOLING_MEAN,
                .max_length = bert->max_position_embeddings,
        };
        _cleanup_cjson_ cJSON *modules = NULL, *pooling = NULL, *bert_config = NULL, *prompts = NULL;
        char pooling_path[POOLING_PATH_MAX];
        int r;

        assert(read_file);
        assert(bert);
        assert(ret);

        r = read_json(read_file, userdata, ST_MODULES_FILE, JSON_ARRAY, &modules, ret_error);
        if (r < 0)
                return r;
        if (modules) {
                r = parse_modules(modules, pooling_path, &c.normalize, ret_error);
                if (r < 0)
                        return r;
                r = read_json(read_file, userdata, pooling_path, JSON_OBJECT, &pooling, ret_error);
                if (r < 0)
                        return r;
                if (!pooling)
                        return config_json_error(ret_error, -EBADMSG, "%s is missing.", pooling_path);
                r = parse_pooling(pooling, pooling_path, bert, &c.pooling, ret_error);
                if (r < 0)
                        return r;
        }

        r = read_json(read_file, userdata, ST_BERT_CONFIG_FILE, JSON_OBJECT, &bert_config, ret_error);
        if (r < 0)
                return r;
        if (bert_config) {
                r = parse_bert_config(bert_config, bert, &c, ret_error);
                if (r < 0)
                        return r;
        }

        r = read_json(read_file, userdata, ST_PROMPTS_FILE, JSON_OBJECT, &prompts, ret_error);
        if (r < 0)
                return r;
        if (prompts) {
                r = parse_prompts(prompts, &c, ret_error);
                if (r < 0)
                        return r;
        }

        *ret = c;
        c = (StConfig) {};
        return 0;
}
