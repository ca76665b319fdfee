/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bert.h"
#include "blas.h"
#include "config-json.h"
#include "precision.h"
#include "vector-math.h"

/* Where each converted tensor and each activation buffer starts: a cache
 * line, which is also what OpenBLAS's kernels like best. */
#define BUFFER_ALIGN 64U

/* Bounds on what config.json's strings may be for us to look at them. */
#define CONFIG_STRING_MAX 64U

/* The longest canonical tensor name, with room to spare:
 * "encoder.layer.127.attention.output.LayerNorm.weight". */
#define TENSOR_NAME_MAX 96U

/* A weight matrix, rows × columns in the model's precision: F32 in the
 * mapping or converted, or encoded at load. Vectors (biases, LayerNorm
 * parameters) are always F32: they are small, and added, not multiplied. */
typedef struct Matrix {
        const void *data;
        size_t rows, columns;
} Matrix;

typedef struct BertLayer {
        Matrix query_weight, key_weight, value_weight;
        const float *query_bias, *key_bias, *value_bias;
        Matrix attention_output_weight;
        const float *attention_output_bias;
        const float *attention_norm_weight, *attention_norm_bias;
        Matrix intermediate_weight;
        const float *intermediate_bias;
        Matrix output_weight;
        const float *output_bias;
        const float *output_norm_weight, *output_norm_bias;
} BertLayer;

struct BertModel {
        BertConfig config;
        Precision precision;
        Matrix word_embeddings;
        Matrix position_embeddings;
        Matrix token_type_embeddings;
        const float *embeddings_norm_weight, *embeddings_norm_bias;
        BertLayer *layers;

        bool in_place;            /* some weights are read where the caller's tensors are */
        void *converted;          /* mapped, read-only once filled */
        size_t converted_size;
};

struct BertScratch {
        const BertModel *model;
        size_t max_length;
        size_t max_tokens;

        /* max_tokens rows of hidden_size (intermediate_size for
         * intermediate); scores: one max_length × max_length matrix;
         * pooled: one row of hidden_size; rows: three of hidden_size, for
         * the embeddings of a token; weights: the largest matrix of a
         * layer decoded, when the model's precision is not F32 (else NULL). */
        float *hidden, *query, *key, *value, *context, *intermediate, *scores, *pooled, *rows, *weights;

        void *memory;
        size_t size;
};

static size_t page_size(void) {
        long p = sysconf(_SC_PAGESIZE);

        return p > 0 ? (size_t) p : 4096;
}

static size_t round_up(size_t n, size_t to) {
        return (n + to - 1) / to * to;
}

static void *map_anonymous(size_t size) {
        /* Mapped for itself rather than malloc'd, so that it goes back to
         * the kernel the moment it is freed and what it takes is exactly
         * what is charged. */
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        return p == MAP_FAILED ? NULL : p;
}

/* config.json */

static int config_uint32(const cJSON *json, const char *key, uint32_t min, uint32_t max, bool required,
                         uint32_t fallback, uint32_t *ret, char **ret_error) {
        uint64_t v;
        int r;

        r = config_json_uint(json, BERT_CONFIG_FILE, key, min, max, &v, ret_error);
        if (r == -ENOENT) {
                if (required)
                        return config_json_error(ret_error, -EBADMSG, BERT_CONFIG_FILE " has no %s.", key);
                v = fallback;
        } else if (r < 0)
                return r;
        *ret = (uint32_t) v;
        return 0;
}

/* A string member that must be one value, when it is there at all. */
static int config_expect(const cJSON *json, const char *key, const char *expected, bool required,
                         const char *what, char **ret_error) {
        const char *v;
        int r;

        r = config_json_string(json, BERT_CONFIG_FILE, key, CONFIG_STRING_MAX, &v, ret_error);
        if (r == -ENOENT) {
                if (required)
                        return config_json_error(ret_error, -EBADMSG, BERT_CONFIG_FILE " has no %s.", key);
                return 0;
        }
        if (r < 0)
                return r;
        if (strcmp(v, expected) != 0)
                return config_json_error(ret_error, -EOPNOTSUPP, BERT_CONFIG_FILE ": %s is not \"%s\": %s.", key,
                                         expected, what);
        return 0;
}

int bert_config_parse(const char *text, size_t length, BertConfig *ret, char **ret_error) {
        _cleanup_cjson_ cJSON *json = NULL;
        BertConfig c = {};
        double eps;
        int r;

        assert(ret);

        r = config_json_parse(text, length, BERT_CONFIG_FILE, JSON_OBJECT, &json, ret_error);
        if (r < 0)
                return r;

        r = config_expect(json, "model_type", "bert", true, "only BERT encoders can be run", ret_error);
        if (r < 0)
                return r;

        if ((r = config_uint32(json, "vocab_size", 1, BERT_VOCAB_MAX, true, 0, &c.vocab_size, ret_error)) < 0 ||
            (r = config_uint32(json, "hidden_size", 1, BERT_HIDDEN_MAX, true, 0, &c.hidden_size, ret_error)) < 0 ||
            (r = config_uint32(json, "num_hidden_layers", 1, BERT_LAYERS_MAX, true, 0, &c.n_layers, ret_error)) < 0 ||
            (r = config_uint32(json, "num_attention_heads", 1, BERT_HEADS_MAX, true, 0, &c.n_heads, ret_error)) < 0 ||
            (r = config_uint32(json, "intermediate_size", 1, BERT_INTERMEDIATE_MAX, true, 0, &c.intermediate_size,
                               ret_error)) < 0 ||
            (r = config_uint32(json, "max_position_embeddings", 1, BERT_POSITIONS_MAX, true, 0,
                               &c.max_position_embeddings, ret_error)) < 0 ||
            (r = config_uint32(json, "type_vocab_size", 1, BERT_TYPE_VOCAB_MAX, false, 2, &c.type_vocab_size,
                               ret_error)) < 0)
                return r;

        if (c.hidden_size % c.n_heads != 0)
                return config_json_error(ret_error, -EBADMSG,
                                         BERT_CONFIG_FILE ": hidden_size (%" PRIu32
                                         ") is not a multiple of num_attention_heads (%" PRIu32 ").",
                                         c.hidden_size, c.n_heads);

        /* transformers' default; real ones are 1e-12 (BERT) to 1e-5. */
        r = config_json_number(json, BERT_CONFIG_FILE, "layer_norm_eps", 0, 1e-1, &eps, ret_error);
        if (r == -ENOENT)
                eps = 1e-12;
        else if (r < 0)
                return r;
        c.layer_norm_eps = (float) eps;
        if (!(c.layer_norm_eps > 0))
                /* Positive as a double, 0 as a float: too small to mean anything. */
                return config_json_error(ret_error, -EBADMSG, BERT_CONFIG_FILE ": layer_norm_eps is too small.");

        /* Not required, as transformers defaults to these; anything else is
         * a model of another kind. "gelu" is the exact erf form there. */
        r = config_expect(json, "hidden_act", "gelu", false, "only the exact (erf) GELU can be run", ret_error);
        if (r < 0)
                return r;
        r = config_expect(json, "position_embedding_type", "absolute", false,
                          "only absolute position embeddings can be run", ret_error);
        if (r < 0)
                return r;

        *ret = c;
        return 0;
}

/* Binding tensors */

typedef enum Dimension {
        DIM_NONE,
        DIM_VOCAB,
        DIM_POSITIONS,
        DIM_TYPES,
        DIM_HIDDEN,
        DIM_INTERMEDIATE,
} Dimension;

typedef struct TensorRule {
        const char *name;         /* canonical, after "embeddings." or "encoder.layer.N." */
        Dimension rows, columns;  /* columns DIM_NONE: a vector of rows */
        size_t offset;            /* of the Matrix (or the vector's pointer) in BertModel or BertLayer */
} TensorRule;

#define MODEL_TENSOR(n, r, c, field) { n, r, c, offsetof(BertModel, field) }
#define LAYER_TENSOR(n, r, c, field) { n, r, c, offsetof(BertLayer, field) }

static const TensorRule embedding_rules[] = {
        MODEL_TENSOR("word_embeddings.weight", DIM_VOCAB, DIM_HIDDEN, word_embeddings),
        MODEL_TENSOR("position_embeddings.weight", DIM_POSITIONS, DIM_HIDDEN, position_embeddings),
        MODEL_TENSOR("token_type_embeddings.weight", DIM_TYPES, DIM_HIDDEN, token_type_embeddings),
        MODEL_TENSOR("LayerNorm.weight", DIM_HIDDEN, DIM_NONE, embeddings_norm_weight),
        MODEL_TENSOR("LayerNorm.bias", DIM_HIDDEN, DIM_NONE, embeddings_norm_bias),
};

/* Weights as torch.nn.Linear keeps them: out × in. */
static const TensorRule layer_rules[] = {
        LAYER_TENSOR("attention.self.query.weight", DIM_HIDDEN, DIM_HIDDEN, query_weight),
        LAYER_TENSOR("attention.self.query.bias", DIM_HIDDEN, DIM_NONE, query_bias),
        LAYER_TENSOR("attention.self.key.weight", DIM_HIDDEN, DIM_HIDDEN, key_weight),
        LAYER_TENSOR("attention.self.key.bias", DIM_HIDDEN, DIM_NONE, key_bias),
        LAYER_TENSOR("attention.self.value.weight", DIM_HIDDEN, DIM_HIDDEN, value_weight),
        LAYER_TENSOR("attention.self.value.bias", DIM_HIDDEN, DIM_NONE, value_bias),
        LAYER_TENSOR("attention.output.dense.weight", DIM_HIDDEN, DIM_HIDDEN, attention_output_weight),
        LAYER_TENSOR("attention.output.dense.bias", DIM_HIDDEN, DIM_NONE, attention_output_bias),
        LAYER_TENSOR("attention.output.LayerNorm.weight", DIM_HIDDEN, DIM_NONE, attention_norm_weight),
        LAYER_TENSOR("attention.output.LayerNorm.bias", DIM_HIDDEN, DIM_NONE, attention_norm_bias),
        LAYER_TENSOR("intermediate.dense.weight", DIM_INTERMEDIATE, DIM_HIDDEN, intermediate_weight),
        LAYER_TENSOR("intermediate.dense.bias", DIM_INTERMEDIATE, DIM_NONE, intermediate_bias),
        LAYER_TENSOR("output.dense.weight", DIM_HIDDEN, DIM_INTERMEDIATE, output_weight),
        LAYER_TENSOR("output.dense.bias", DIM_HIDDEN, DIM_NONE, output_bias),
        LAYER_TENSOR("output.LayerNorm.weight", DIM_HIDDEN, DIM_NONE, output_norm_weight),
        LAYER_TENSOR("output.LayerNorm.bias", DIM_HIDDEN, DIM_NONE, output_norm_bias),
};

static uint64_t dimension(const BertConfig *c, Dimension d) {
        switch (d) {
        case DIM_VOCAB:
                return c->vocab_size;
        case DIM_POSITIONS:
                return c->max_position_embeddings;
        case DIM_TYPES:
                return c->type_vocab_size;
        case DIM_HIDDEN:
                return c->hidden_size;
        case DIM_INTERMEDIATE:
                return c->intermediate_size;
        default:
                return 0;
        }
}

typedef enum DType {
        DTYPE_F32,
        DTYPE_F16,
        DTYPE_BF16,
        _DTYPE_INVALID = -1,
} DType;

static DType dtype_from_string(const char *s) {
        if (!s)
                return _DTYPE_INVALID;
        if (strcmp(s, "F32") == 0)
                return DTYPE_F32;
        if (strcmp(s, "F16") == 0)
                return DTYPE_F16;
        if (strcmp(s, "BF16") == 0)
                return DTYPE_BF16;
        return _DTYPE_INVALID;
}

static size_t dtype_size(DType t) {
        return t == DTYPE_F32 ? 4 : 2;
}

/* What a tensor takes in the model's own memory when it is converted to
 * the precision (vectors: F32), before alignment. */
static uint64_t converted_bytes(const BertConfig *c, const TensorRule *rule, Precision p) {
        uint64_t rows = dimension(c, rule->rows);

        if (rule->columns == DIM_NONE)
                return rows * sizeof(float);
        /* At most 2^20 rows of 2^16 columns, at 4 bytes. */
        return rows * precision_row_bytes(p, dimension(c, rule->columns));
}

/* Calls f for every tensor the configuration needs, in order: the
 * embeddings, then each layer's. name: its canonical name; base: the
 * BertModel or BertLayer its rule's offset is in (from model, which may be
 * NULL when f only counts). Stops at the first negative return. */
static int for_each_tensor(const BertConfig *c, BertModel *model,
                           int (*f)(const char *name, const TensorRule *rule, char *base, void *userdata),
                           void *userdata) {
        for (size_t layer = 0; layer <= c->n_layers; layer++) {
                const TensorRule *rules = layer == 0 ? embedding_rules : layer_rules;
                size_t n_rules = layer == 0 ? ELEMENTSOF(embedding_rules) : ELEMENTSOF(layer_rules);
                char *base = !model ? NULL : layer == 0 ? (char *) model : (char *) &model->layers[layer - 1];

                for (size_t i = 0; i < n_rules; i++) {
                        char name[TENSOR_NAME_MAX];
                        int r;

                        if (layer == 0)
                                snprintf(name, sizeof name, "embeddings.%s", rules[i].name);
                        else
                                snprintf(name, sizeof name, "encoder.layer.%zu.%s", layer - 1, rules[i].name);
                        r = f(name, &rules[i], base, userdata);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

typedef struct ByteCount {
        const BertConfig *config;
        Precision precision;
        uint64_t total;
} ByteCount;

static int add_bytes(const char *name, const TensorRule *rule, char *base, void *userdata) {
        ByteCount *sum = userdata;

        /* Laid out as bert_model_new() lays out what it converts. */
        sum->total += round_up(converted_bytes(sum->config, rule, sum->precision), BUFFER_ALIGN);
        return 0;
}

uint64_t bert_weights_bytes(const BertConfig *c, Precision p) {
        ByteCount sum = { c, p, 0 };

        assert(c);
        assert(p >= 0 && p < _PRECISION_MAX);

        (void) for_each_tensor(c, NULL, add_bytes, &sum);
        return round_up(sum.total, page_size());
}

/* A tensor's name without the prefix, and where it is in the caller's array. */
typedef struct Entry {
        const char *name;
        size_t index;
} Entry;

static int compare_entries(const void *a, const void *b) {
        const Entry *x = a, *y = b;
        int c = strcmp(x->name, y->name);

        /* Ties by index, so that the order is total and the same on every run. */
        return c != 0 ? c : (x->index > y->index) - (x->index < y->index);
}

static const char *strip_prefix(const char *name) {
        size_t n = strlen(BERT_TENSOR_PREFIX);

        return strncmp(name, BERT_TENSOR_PREFIX, n) == 0 ? name + n : name;
}

/* The first entry named name, or NULL; *ret_count: how many are. */
static const Entry *find_entry(const Entry *entries, size_t n, const char *name, size_t *ret_count) {
        size_t lo = 0, hi = n, count = 0;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (strcmp(entries[mid].name, name) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        while (lo + count < n && strcmp(entries[lo + count].name, name) == 0)
                count++;
        *ret_count = count;
        return count > 0 ? &entries[lo] : NULL;
}

/* What binding one tensor needs, found in the first pass. */
typedef struct Binding {
        const BertTensor *tensor;
        DType dtype;
        uint64_t rows, columns;   /* columns 0: a vector */
        bool convert;
        size_t converted_offset;
        void *slot;               /* a Matrix, or a vector's const float * */
} Binding;

static const char *old_layer_norm_name(const char *name, char buffer[static TENSOR_NAME_MAX]) {
        /* Checkpoints converted from TensorFlow call the LayerNorm's
         * parameters gamma and beta; transformers renames them at load. */
        static const struct {
                const char *suffix, *old;
        } renames[] = {
                { "LayerNorm.weight", "LayerNorm.gamma" },
                { "LayerNorm.bias", "LayerNorm.beta" },
        };
        size_t n = strlen(name);

        for (size_t i = 0; i < ELEMENTSOF(renames); i++) {
                size_t k = strlen(renames[i].suffix);
                if (n >= k && strcmp(name + n - k, renames[i].suffix) == 0) {
                        snprintf(buffer, TENSOR_NAME_MAX, "%.*s%s", (int) (n - k), name, renames[i].old);
                        return buffer;
                }
        }
        return NULL;
}

static int find_tensor(const Entry *entries, size_t n_entries, const BertTensor *tensors, const char *name,
                       const BertTensor **ret, char **ret_error) {
        char buffer[TENSOR_NAME_MAX];
        const char *old = old_layer_norm_name(name, buffer);
        const Entry *e, *e_old = NULL;
        size_t count, count_old = 0;

        e = find_entry(entries, n_entries, name, &count);
        if (old)
                e_old = find_entry(entries, n_entries, old, &count_old);

        if (count + count_old == 0)
                return config_json_error(ret_error, -EBADMSG, "Tensor %s is missing.", name);
        if (count + count_old > 1)
                return config_json_error(ret_error, -EBADMSG,
                                         "Tensor %s is given more than once (with and without the prefix "
                                         BERT_TENSOR_PREFIX ", or under its old name).", name);
        *ret = &tensors[(e ?: e_old)->index];
        return 0;
}

static int check_tensor(const BertConfig *c, Precision precision, const TensorRule *rule, const char *name,
                        const BertTensor *t, Binding *b, char **ret_error) {
        uint64_t rows = dimension(c, rule->rows), columns = dimension(c, rule->columns);
        size_t n_dims = rule->columns == DIM_NONE ? 1 : 2;
        DType dtype = dtype_from_string(t->dtype);

        if (dtype == _DTYPE_INVALID)
                return config_json_error(ret_error, -EOPNOTSUPP,
                                         "Tensor %s is neither F32, F16 nor BF16: it cannot be run.",
                                         name);

        if (t->n_dims != n_dims || !t->shape || t->shape[0] != rows ||
            (n_dims == 2 && t->shape[1] != columns)) {
                if (n_dims == 1)
                        return config_json_error(ret_error, -EBADMSG,
                                                 "Tensor %s does not have the shape [%" PRIu64 "] the configuration "
                                                 "says.", name, rows);
                return config_json_error(ret_error, -EBADMSG,
                                         "Tensor %s does not have the shape [%" PRIu64 ", %" PRIu64 "] the "
                                         "configuration says.", name, rows, columns);
        }

        /* Both at most 2^20 × 2^16 by the configuration's bounds. */
        b->rows = rows;
        b->columns = n_dims == 2 ? columns : 0;
        if (t->length != rows * MAX(b->columns, 1U) * dtype_size(dtype) || (t->length > 0 && !t->data))
                return config_json_error(ret_error, -EBADMSG, "Tensor %s holds %" PRIu64 " bytes, not the %" PRIu64
                                         " its shape and dtype need.", name, t->length,
                                         rows * MAX(b->columns, 1U) * dtype_size(dtype));

        b->tensor = t;
        b->dtype = dtype;
        /* In place only when nothing of the model is converted to another
         * precision: otherwise the caller may let the mapping go. */
        b->convert = precision != PRECISION_F32 || dtype != DTYPE_F32 ||
                __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__ || (uintptr_t) t->data % alignof(float) != 0;
        return 0;
}

/* n elements of the file's data, from element first, as floats. */
static void read_elements(const Binding *b, uint64_t first, size_t n, float *out) {
        const uint8_t *in = (const uint8_t *) b->tensor->data + first * dtype_size(b->dtype);

        for (size_t i = 0; i < n; i++) {
                uint32_t bits;
                uint16_t half;

                switch (b->dtype) {
                case DTYPE_F32:
                        memcpy(&bits, in + 4 * i, 4);
                        bits = le32toh(bits);
                        memcpy(&out[i], &bits, 4);
                        break;
                case DTYPE_F16:
                        memcpy(&half, in + 2 * i, 2);
                        out[i] = f16_to_f32(le16toh(half));
                        break;
                case DTYPE_BF16:
                        memcpy(&half, in + 2 * i, 2);
                        out[i] = bf16_to_f32(le16toh(half));
                        break;
                default:
                        assert(false);
                }
        }
}

/* The tensor in the model's own memory: a vector as F32, a matrix row by
 * row in the precision. row: room for one row of floats. */
static void convert(const Binding *b, Precision precision, float *row, uint8_t *out) {
        if (b->columns == 0) {
                read_elements(b, 0, b->rows, (float *) out);
                return;
        }
        for (uint64_t r = 0; r < b->rows; r++) {
                read_elements(b, r * b->columns, b->columns, row);
                precision_encode_row(precision, row, b->columns, out + r * precision_row_bytes(precision, b->columns));
        }
}

BertModel *bert_model_free(BertModel *m) {
        if (!m)
                return NULL;
        if (m->converted)
                munmap(m->converted, m->converted_size);
        free(m->layers);
        free(m);
        return NULL;
}

typedef struct BindContext {
        const BertConfig *config;
        Precision precision;
        const Entry *entries;
        size_t n_entries;
        const BertTensor *tensors;
        Binding *bindings;
        size_t n_bindings;
        size_t converted;         /* bytes of the converted tensors so far */
        char **ret_error;
} BindContext;

static int bind_tensor(const char *name, const TensorRule *rule, char *base, void *userdata) {
        BindContext *x = userdata;
        Binding *b = &x->bindings[x->n_bindings];
        const BertTensor *t = NULL;
        int r;

        r = find_tensor(x->entries, x->n_entries, x->tensors, name, &t, x->ret_error);
        if (r < 0)
                return r;
        r = check_tensor(x->config, x->precision, rule, name, t, b, x->ret_error);
        if (r < 0)
                return r;

        b->slot = base + rule->offset;
        if (b->convert) {
                b->converted_offset = x->converted;
                x->converted += round_up(converted_bytes(x->config, rule, x->precision), BUFFER_ALIGN);
        }
        x->n_bindings++;
        return 0;
}

int bert_model_new(const BertConfig *config, const BertTensor *tensors, size_t n_tensors, Precision precision,
                   BertModel **ret, char **ret_error) {
        _cleanup_(bert_model_freep) BertModel *m = NULL;
        _cleanup_free_ Entry *entries = NULL;
        _cleanup_free_ Binding *bindings = NULL;
        _cleanup_free_ float *row = NULL;
        BindContext x;
        int r;

        assert(config);
        assert(config->n_layers > 0 && config->n_layers <= BERT_LAYERS_MAX);
        assert(tensors || n_tensors == 0);
        assert(precision >= 0 && precision < _PRECISION_MAX);
        assert(ret);

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->config = *config;
        m->precision = precision;
        m->layers = calloc(config->n_layers, sizeof *m->layers);
        if (!m->layers)
                return -ENOMEM;

        entries = calloc(MAX(n_tensors, 1U), sizeof *entries);
        if (!entries)
                return -ENOMEM;
        for (size_t i = 0; i < n_tensors; i++) {
                assert(tensors[i].name);
                entries[i] = (Entry) { strip_prefix(tensors[i].name), i };
        }
        qsort(entries, n_tensors, sizeof *entries, compare_entries);

        bindings = calloc(ELEMENTSOF(embedding_rules) + config->n_layers * ELEMENTSOF(layer_rules),
                          sizeof *bindings);
        row = calloc(MAX(config->hidden_size, config->intermediate_size), sizeof *row);
        if (!bindings || !row)
                return -ENOMEM;

        /* First every tensor is found and checked, so that a bad model costs
         * no conversion, and the room for the converted ones is known. */
        x = (BindContext) {
                .config = config,
                .precision = precision,
                .entries = entries,
                .n_entries = n_tensors,
                .tensors = tensors,
                .bindings = bindings,
                .ret_error = ret_error,
        };
        r = for_each_tensor(config, m, bind_tensor, &x);
        if (r < 0)
                return r;

        if (x.converted > 0) {
                m->converted_size = round_up(x.converted, page_size());
                m->converted = map_anonymous(m->converted_size);
                if (!m->converted)
                        return -ENOMEM;
        }

        for (size_t i = 0; i < x.n_bindings; i++) {
                Binding *b = &bindings[i];
                const void *data = b->tensor->data;

                if (b->convert) {
                        data = (uint8_t *) m->converted + b->converted_offset;
                        convert(b, precision, row, (uint8_t *) data);
                } else
                        m->in_place = true;

                if (b->columns > 0)
                        *(Matrix *) b->slot = (Matrix) { data, b->rows, b->columns };
                else
                        *(const float **) b->slot = data;
        }

        /* Shared by every worker and never written again: a stray write is
         * a fault rather than a silently wrong model. */
        if (m->converted && mprotect(m->converted, m->converted_size, PROT_READ) < 0)
                return negative_errno();

        *ret = TAKE_PTR(m);
        return 0;
}

const BertConfig *bert_model_config(const BertModel *m) {
        assert(m);
        return &m->config;
}

uint64_t bert_model_converted_bytes(const BertModel *m) {
        assert(m);
        return m->converted ? m->converted_size : 0;
}

Precision bert_model_precision(const BertModel *m) {
        assert(m);
        return m->precision;
}

bool bert_model_uses_tensor_data(const BertModel *m) {
        assert(m);
        return m->in_place;
}

/* Scratch */

BertScratch *bert_scratch_free(BertScratch *s) {
        if (!s)
                return NULL;
        if (s->memory)
                munmap(s->memory, s->size);
        free(s);
        return NULL;
}

int bert_scratch_new(const BertModel *m, size_t max_batch, size_t max_length, BertScratch **ret) {
        _cleanup_(bert_scratch_freep) BertScratch *s = NULL;
        const BertConfig *c;
        size_t tokens, hidden_bytes, sizes[10], offset = 0;
        float **buffers[10];

        assert(m);
        assert(ret);
        c = &m->config;

        if (max_batch == 0 || max_length == 0 || max_length > c->max_position_embeddings ||
            max_batch > BERT_SCRATCH_TOKENS_MAX / max_length)
                return -EINVAL;
        tokens = max_batch * max_length;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->model = m;
        s->max_length = max_length;
        s->max_tokens = tokens;

        /* At most 2^20 × 2^16 floats each, by the bounds. */
        hidden_bytes = tokens * c->hidden_size * sizeof(float);
        buffers[0] = &s->hidden, sizes[0] = hidden_bytes;
        buffers[1] = &s->query, sizes[1] = hidden_bytes;
        buffers[2] = &s->key, sizes[2] = hidden_bytes;
        buffers[3] = &s->value, sizes[3] = hidden_bytes;
        buffers[4] = &s->context, sizes[4] = hidden_bytes;
        buffers[5] = &s->intermediate, sizes[5] = tokens * c->intermediate_size * sizeof(float);
        buffers[6] = &s->scores, sizes[6] = max_length * max_length * sizeof(float);
        buffers[7] = &s->pooled, sizes[7] = c->hidden_size * sizeof(float);
        buffers[8] = &s->rows, sizes[8] = 3 * c->hidden_size * sizeof(float);
        /* The largest of a layer's matrices: hidden × hidden, or
         * intermediate × hidden both ways. */
        buffers[9] = &s->weights, sizes[9] = m->precision == PRECISION_F32 ? 0 :
                (size_t) c->hidden_size * MAX(c->hidden_size, c->intermediate_size) * sizeof(float);

        for (size_t i = 0; i < ELEMENTSOF(sizes); i++)
                offset += round_up(sizes[i], BUFFER_ALIGN);
        s->size = round_up(offset, page_size());
        s->memory = map_anonymous(s->size);
        if (!s->memory)
                return -ENOMEM;

        offset = 0;
        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                *buffers[i] = sizes[i] > 0 ? (float *) ((uint8_t *) s->memory + offset) : NULL;
                offset += round_up(sizes[i], BUFFER_ALIGN);
        }

        *ret = TAKE_PTR(s);
        return 0;
}

uint64_t bert_scratch_bytes(const BertScratch *s) {
        assert(s);
        return s->size;
}

size_t bert_scratch_max_length(const BertScratch *s) {
        assert(s);
        return s->max_length;
}

/* The forward pass */

static const char *const pooling_names[_BERT_POOLING_MAX] = {
        [BERT_POOLING_MEAN] = "mean",
        [BERT_POOLING_CLS] = "cls",
};

const char *bert_pooling_to_string(BertPooling p) {
        return p >= 0 && p < _BERT_POOLING_MAX ? pooling_names[p] : NULL;
}

/* Each row of x (rows × n) normalized to mean 0 and variance 1 (the biased
 * variance, as torch's layer_norm), then scaled and shifted. */
static void layer_norm(float *x, size_t rows, size_t n, const float *weight, const float *bias, float eps) {
        for (size_t r = 0; r < rows; r++) {
                float *row = x + r * n;
                double sum = 0, squares = 0, mean, variance;
                float scale;

                for (size_t i = 0; i < n; i++)
                        sum += row[i];
                mean = sum / (double) n;
                for (size_t i = 0; i < n; i++) {
                        double d = row[i] - mean;
                        squares += d * d;
                }
                variance = squares / (double) n;
                scale = (float) (1.0 / sqrt(variance + eps));
                for (size_t i = 0; i < n; i++)
                        row[i] = ((float) (row[i] - mean) * scale) * weight[i] + bias[i];
        }
}

/* y = bias (+ residual), row by row: the start that sgemm with beta = 1
 * adds the product to. */
static void start_rows(float *y, size_t rows, size_t n, const float *bias, const float *residual) {
        for (size_t r = 0; r < rows; r++) {
                float *row = y + r * n;

                if (residual) {
                        const float *res = residual + r * n;
                        for (size_t i = 0; i < n; i++)
                                row[i] = res[i] + bias[i];
                } else
                        memcpy(row, bias, n * sizeof(float));
        }
}

/* The matrix as floats: where it is for F32, else decoded into the
 * scratch's room for one. */
static const float *matrix_floats(const BertModel *m, BertScratch *s, const Matrix *w) {
        if (m->precision == PRECISION_F32)
                return w->data;
        precision_decode_rows(m->precision, w->data, w->columns, 0, w->rows, s->weights);
        return s->weights;
}

/* Rows of x per sgemm call. OpenBLAS packs a call's rows into a buffer it
 * keeps for the life of the process, one per call running at once, and the
 * pages it touched stay resident after the model is unloaded: at 4096 rows
 * about 3.5 MiB of each buffer, at 512 about 0.9. The weights are packed
 * again for each call, which costs about 1/512 of the multiply: measured,
 * no slower. */
#define LINEAR_ROWS_MAX 512

/* y (rows × out) += x (rows × in) · weightᵀ, weight out × in as torch keeps it. */
static void linear(const BertModel *m, BertScratch *s, const float *x, size_t rows, const Matrix *weight,
                   float *y) {
        size_t in = weight->columns, out = weight->rows;
        const float *w = matrix_floats(m, s, weight);

        for (size_t at = 0; at < rows; at += LINEAR_ROWS_MAX) {
                size_t n = MIN(rows - at, (size_t) LINEAR_ROWS_MAX);

                blas_sgemm(false, true, (int) n, (int) out, (int) in, 1.0f, x + at * in, (int) in, w, (int) in, 1.0f,
                           y + at * out, (int) out);
        }
}

static void softmax_rows(float *x, size_t rows, size_t n) {
        for (size_t r = 0; r < rows; r++) {
                float *row = x + r * n, max = row[0], sum, inverse;

                /* Not fmaxf(), which is a call: scores are never NaN. */
                for (size_t i = 1; i < n; i++)
                        max = row[i] > max ? row[i] : max;
                sum = vector_exp_sum(row, n, max);
                inverse = 1 / sum;
                for (size_t i = 0; i < n; i++)
                        row[i] *= inverse;
        }
}

/* The sequences of one batch: inputs[first…first + n), their tokens laid
 * one after another in rows 0…tokens. */
typedef struct Batch {
        const BertInput *inputs;
        size_t n;
        size_t tokens;
} Batch;

/* Self-attention of each sequence over its own tokens, head by head, from
 * s->query, key and value into s->context. */
static void attention(const BertModel *m, BertScratch *s, const Batch *b) {
        size_t hidden = m->config.hidden_size, heads = m->config.n_heads, d = hidden / heads, row = 0;
        float scale = 1.0f / sqrtf((float) d);

        for (size_t i = 0; i < b->n; row += b->inputs[i].n_ids, i++) {
                size_t length = b->inputs[i].n_ids;

                for (size_t h = 0; h < heads; h++) {
                        size_t at = row * hidden + h * d;

                        /* scores = Q_h·K_hᵀ/√d, length × length */
                        blas_sgemm(false, true, (int) length, (int) length, (int) d, scale, s->query + at,
                                   (int) hidden, s->key + at, (int) hidden, 0.0f, s->scores, (int) length);
                        softmax_rows(s->scores, length, length);
                        /* context_h = softmax(scores)·V_h, length × d */
                        blas_sgemm(false, false, (int) length, (int) d, (int) length, 1.0f, s->scores, (int) length,
                                   s->value + at, (int) hidden, 0.0f, s->context + at, (int) hidden);
                }
        }
}

/* One encoder layer, from s->hidden back into s->hidden. */
static void encoder_layer(const BertModel *m, const BertLayer *l, BertScratch *s, const Batch *b) {
        size_t hidden = m->config.hidden_size, inter = m->config.intermediate_size, t = b->tokens;
        float eps = m->config.layer_norm_eps;
        float *attended = s->query;     /* the query is not needed once the context is made */

        start_rows(s->query, t, hidden, l->query_bias, NULL);
        linear(m, s, s->hidden, t, &l->query_weight, s->query);
        start_rows(s->key, t, hidden, l->key_bias, NULL);
        linear(m, s, s->hidden, t, &l->key_weight, s->key);
        start_rows(s->value, t, hidden, l->value_bias, NULL);
        linear(m, s, s->hidden, t, &l->value_weight, s->value);

        attention(m, s, b);

        /* Post-LayerNorm: the norm of the residual sum, as BERT does it. */
        start_rows(attended, t, hidden, l->attention_output_bias, s->hidden);
        linear(m, s, s->context, t, &l->attention_output_weight, attended);
        layer_norm(attended, t, hidden, l->attention_norm_weight, l->attention_norm_bias, eps);

        start_rows(s->intermediate, t, inter, l->intermediate_bias, NULL);
        linear(m, s, attended, t, &l->intermediate_weight, s->intermediate);
        /* GELU, the exact form BERT uses: x·Φ(x), Φ from erf. */
        vector_gelu(s->intermediate, t * inter);

        start_rows(s->hidden, t, hidden, l->output_bias, attended);
        linear(m, s, s->intermediate, t, &l->output_weight, s->hidden);
        layer_norm(s->hidden, t, hidden, l->output_norm_weight, l->output_norm_bias, eps);
}

static void embeddings(const BertModel *m, BertScratch *s, const Batch *b) {
        size_t hidden = m->config.hidden_size, row = 0;
        float *word = s->rows, *position = s->rows + hidden, *type = s->rows + 2 * hidden;

        precision_decode_rows(m->precision, m->token_type_embeddings.data, hidden, 0, 1, type); /* type 0 */
        for (size_t i = 0; i < b->n; i++)
                for (size_t p = 0; p < b->inputs[i].n_ids; p++, row++) {
                        float *out = s->hidden + row * hidden;

                        precision_decode_rows(m->precision, m->word_embeddings.data, hidden, b->inputs[i].ids[p], 1,
                                              word);
                        precision_decode_rows(m->precision, m->position_embeddings.data, hidden, p, 1, position);
                        for (size_t j = 0; j < hidden; j++)
                                out[j] = word[j] + position[j] + type[j];
                }
        layer_norm(s->hidden, b->tokens, hidden, m->embeddings_norm_weight, m->embeddings_norm_bias,
                   m->config.layer_norm_eps);
}

static void pool(const BertModel *m, BertScratch *s, const Batch *b, const BertEmbedOptions *o, size_t dimensions,
                 float *vectors) {
        size_t hidden = m->config.hidden_size, row = 0;

        for (size_t i = 0; i < b->n; row += b->inputs[i].n_ids, i++) {
                size_t length = b->inputs[i].n_ids;
                const float *first = s->hidden + row * hidden;
                float *out = vectors + i * dimensions;

                if (o->pooling == BERT_POOLING_CLS)
                        memcpy(s->pooled, first, hidden * sizeof(float));
                else
                        for (size_t j = 0; j < hidden; j++) {
                                double sum = 0;
                                for (size_t p = 0; p < length; p++)
                                        sum += first[p * hidden + j];
                                s->pooled[j] = (float) (sum / (double) length);
                        }

                memcpy(out, s->pooled, dimensions * sizeof(float));
                if (o->normalize) {
                        double squares = 0;
                        float scale;

                        for (size_t j = 0; j < dimensions; j++)
                                squares += (double) out[j] * out[j];
                        /* As torch.nn.functional.normalize: a zero vector stays zero. */
                        scale = (float) (1.0 / fmax(sqrt(squares), 1e-12));
                        for (size_t j = 0; j < dimensions; j++)
                                out[j] *= scale;
                }
        }
}

static int check_inputs(const BertModel *m, const BertScratch *s, const BertInput *inputs, size_t n,
                        size_t dimensions) {
        if (dimensions > m->config.hidden_size)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (inputs[i].n_ids == 0 || inputs[i].n_ids > s->max_length)
                        return -EINVAL;
                assert(inputs[i].ids);
        }
        for (size_t i = 0; i < n; i++)
                for (size_t p = 0; p < inputs[i].n_ids; p++)
                        if (inputs[i].ids[p] >= m->config.vocab_size)
                                return -ERANGE;
        return 0;
}

int bert_embed(const BertModel *m, BertScratch *s, const BertInput *inputs, size_t n_inputs,
               const BertEmbedOptions *o, float *vectors) {
        size_t dimensions;
        int r;

        assert(m);
        assert(s && s->model == m);
        assert(inputs || n_inputs == 0);
        assert(o && o->pooling >= 0 && o->pooling < _BERT_POOLING_MAX);
        assert(vectors || n_inputs == 0);
        assert(blas_library());

        r = check_inputs(m, s, inputs, n_inputs, o->dimensions);
        if (r < 0)
                return r;
        dimensions = o->dimensions > 0 ? o->dimensions : m->config.hidden_size;

        for (size_t first = 0; first < n_inputs;) {
                Batch b = { .inputs = inputs + first };

                /* As many whole sequences as the scratch holds; each fits,
                 * being no longer than max_length. */
                while (first + b.n < n_inputs && b.tokens + inputs[first + b.n].n_ids <= s->max_tokens)
                        b.tokens += inputs[first + b.n++].n_ids;

                embeddings(m, s, &b);
                for (size_t l = 0; l < m->config.n_layers; l++) {
                        if (o->cancel && o->cancel(o->userdata))
                                return -ECANCELED;
                        encoder_layer(m, &m->layers[l], s, &b);
                }
                pool(m, s, &b, o, dimensions, vectors + first * dimensions);
                first += b.n;
        }
        return 0;
}
