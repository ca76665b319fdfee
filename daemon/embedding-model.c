/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config-json.h"
#include "embedding-model.h"
#include "macro.h"
#include "tokenizer-unicode.h"

struct EmbeddingModel {
        char *name;
        BertConfig config;
        StConfig st;
        Tokenizer *tokenizer;
        BertModel *bert;
        size_t max_length;        /* tokens, [CLS] and [SEP] included */
        uint64_t bytes;
};

struct EmbeddingScratch {
        const EmbeddingModel *model;
        BertScratch *bert;
};

/* Replaces *ret_error (if wanted) with "NAME: " and the message. */
_printf_(4, 5) static int fail(char **ret_error, int error, const char *name, const char *format, ...) {
        _cleanup_free_ char *detail = NULL;
        char *message;
        va_list ap;

        if (!ret_error)
                return error;
        errno = -error;
        va_start(ap, format);
        if (vasprintf(&detail, format, ap) < 0)
                detail = NULL;
        va_end(ap);
        if (!detail || asprintf(&message, "%s: %s", name, detail) < 0)
                message = NULL;
        free(*ret_error);
        *ret_error = message;
        return error;
}

/* Puts "NAME: " before the message a lower layer left (or the fallback). */
static int fail_with(char **ret_error, int error, const char *name, const char *fallback) {
        _cleanup_free_ char *detail = NULL;

        if (!ret_error)
                return error;
        detail = TAKE_PTR(*ret_error);
        return fail(ret_error, error, name, "%s", detail ?: fallback);
}

static uint64_t page_round(uint64_t n) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (n + page - 1) / page * page;
}

EmbeddingModel *embedding_model_free(EmbeddingModel *m) {
        if (!m)
                return NULL;
        bert_model_free(m->bert);
        tokenizer_free(m->tokenizer);
        st_config_done(&m->st);
        free(m->name);
        free(m);
        return NULL;
}

static int read_config(const EmbeddingSource *source, BertConfig *ret, char **ret_error) {
        _cleanup_free_ char *text = NULL;
        size_t length = 0;
        int r;

        r = source->read_file(BERT_CONFIG_FILE, CONFIG_JSON_SIZE_MAX, &text, &length, source->userdata, ret_error);
        if (r == -ENOENT)
                return fail(ret_error, -EOPNOTSUPP, source->name, "there is no " BERT_CONFIG_FILE
                            " to say what model it is.");
        if (r == -EFBIG)
                return fail(ret_error, -EBADMSG, source->name, BERT_CONFIG_FILE " is larger than %" PRIu64
                            " bytes.", CONFIG_JSON_SIZE_MAX);
        if (r < 0)
                return fail_with(ret_error, r, source->name, "cannot read " BERT_CONFIG_FILE ".");
        r = bert_config_parse(text, length, ret, ret_error);
        if (r < 0)
                return fail_with(ret_error, r, source->name, "cannot read " BERT_CONFIG_FILE ".");
        return 0;
}

static int load_tokenizer(const EmbeddingSource *source, embedding_cancel_t cancel, void *userdata,
                          Tokenizer **ret, char **ret_error) {
        _cleanup_free_ char *file = NULL;
        _cleanup_close_ int fd = -1;
        int r;

        fd = source->open_file(EMBEDDING_TOKENIZER_FILE, source->userdata, ret_error);
        if (fd == -ENOENT)
                return fail(ret_error, -EOPNOTSUPP, source->name, "there is no " EMBEDDING_TOKENIZER_FILE
                            " to turn texts into tokens.");
        if (fd == -EFBIG)
                return fail(ret_error, -EBADMSG, source->name, EMBEDDING_TOKENIZER_FILE " is larger than %" PRIu64
                            " bytes.", TOKENIZER_FILE_SIZE_MAX);
        if (fd < 0)
                return fail_with(ret_error, fd, source->name, "cannot open " EMBEDDING_TOKENIZER_FILE ".");

        if (asprintf(&file, "%s/%s", source->name, EMBEDDING_TOKENIZER_FILE) < 0)
                return -ENOMEM;
        /* Its messages name the file already. */
        r = tokenizer_load_fd(fd, file, cancel, userdata, ret, ret_error);
        if (r == -EFBIG)
                return -EBADMSG;
        return r;
}

int embedding_model_new(const EmbeddingSource *source, Precision precision, embedding_cancel_t cancel,
                        void *userdata, EmbeddingModel **ret, char **ret_error) {
        _cleanup_(embedding_model_freep) EmbeddingModel *m = NULL;
        size_t n_special;
        uint32_t id_limit;
        int r;

        assert(source && source->name && source->read_file && source->open_file);
        assert(source->tensors || source->n_tensors == 0);
        assert(precision >= 0 && precision < _PRECISION_MAX);
        assert(ret);

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->name = strdup(source->name);
        if (!m->name)
                return -ENOMEM;

        /* The small files first: a model that cannot be run costs neither
         * the tokenizer's nor the weights' conversion. */
        r = read_config(source, &m->config, ret_error);
        if (r < 0)
                return r;
        r = st_config_load(source->read_file, source->userdata, &m->config, &m->st, ret_error);
        if (r < 0)
                return fail_with(ret_error, r, source->name, "cannot read the sentence-transformers files.");
        if (cancel && cancel(userdata))
                return -ECANCELED;

        r = load_tokenizer(source, cancel, userdata, &m->tokenizer, ret_error);
        if (r < 0)
                return r;
        id_limit = tokenizer_id_limit(m->tokenizer);
        if (id_limit > m->config.vocab_size)
                return fail(ret_error, -EBADMSG, source->name,
                            EMBEDDING_TOKENIZER_FILE " gives ids up to %" PRIu32 ", beyond the %" PRIu32 " of the "
                            "model's vocabulary (" BERT_CONFIG_FILE ": vocab_size).", id_limit - 1,
                            m->config.vocab_size);
        n_special = tokenizer_n_special_ids(m->tokenizer);
        m->max_length = m->st.max_length;
        if (m->max_length <= n_special)
                return fail(ret_error, -EBADMSG, source->name,
                            "the maximum length (%zu tokens) leaves no room for a text between the %zu special "
                            "tokens " EMBEDDING_TOKENIZER_FILE " adds.", m->max_length, n_special);
        if (cancel && cancel(userdata))
                return -ECANCELED;

        r = bert_model_new(&m->config, source->tensors, source->n_tensors, precision, &m->bert, ret_error);
        if (r < 0)
                return fail_with(ret_error, r, source->name, "cannot bind the weights.");

        m->bytes = tokenizer_bytes(m->tokenizer) + sizeof *m;
        for (size_t i = 0; i < m->st.n_prompts; i++)
                m->bytes += strlen(m->st.prompts[i].name) + strlen(m->st.prompts[i].text) + 2;
        m->bytes = page_round(m->bytes) + bert_model_converted_bytes(m->bert);

        *ret = TAKE_PTR(m);
        return 0;
}

size_t embedding_model_dimensions(const EmbeddingModel *m) {
        assert(m);
        return m->config.hidden_size;
}

Precision embedding_model_precision(const EmbeddingModel *m) {
        assert(m);
        return bert_model_precision(m->bert);
}

size_t embedding_model_max_length(const EmbeddingModel *m) {
        assert(m);
        return m->max_length;
}

uint64_t embedding_model_bytes(const EmbeddingModel *m) {
        assert(m);
        return m->bytes;
}

bool embedding_model_needs_mappings(const EmbeddingModel *m) {
        assert(m);
        return bert_model_uses_tensor_data(m->bert);
}

const BertConfig *embedding_model_config(const EmbeddingModel *m) {
        assert(m);
        return &m->config;
}

const StConfig *embedding_model_st_config(const EmbeddingModel *m) {
        assert(m);
        return &m->st;
}

/* The prompt the options ask for: 0 and the prompt (NULL: none), or
 * -EINVAL for a name the model does not know. */
static int find_prompt(const EmbeddingModel *m, const char *name, const StPrompt **ret) {
        const StPrompt *p;

        if (!name) {
                *ret = m->st.default_prompt;
                return 0;
        }
        if (!*name) {
                *ret = NULL;
                return 0;
        }
        p = st_config_find_prompt(&m->st, name);
        if (!p)
                return -EINVAL;
        *ret = p;
        return 0;
}

int embedding_options_check(const EmbeddingModel *m, const EmbedOptions *o, char **ret_error) {
        const StPrompt *p;

        assert(m);
        assert(o);

        if (o->normalize < -1 || o->normalize > 1)
                return fail(ret_error, -EINVAL, m->name, "normalize must be -1 (as the model says), 0 or 1.");
        if (o->truncate && o->direction != TOKENIZER_TRUNCATE_RIGHT && o->direction != TOKENIZER_TRUNCATE_LEFT)
                return fail(ret_error, -EINVAL, m->name, "texts are truncated from the right or from the left.");
        if (o->dimensions > m->config.hidden_size)
                return fail(ret_error, -EINVAL, m->name,
                            "its embeddings have %" PRIu32 " dimensions; %zu cannot be kept.", m->config.hidden_size,
                            o->dimensions);
        if (find_prompt(m, o->prompt_name, &p) < 0)
                return fail(ret_error, -EINVAL, m->name,
                            m->st.n_prompts > 0 ? "it has no prompt of that name (" ST_PROMPTS_FILE " lists %zu)."
                                                : "it has no prompts (" ST_PROMPTS_FILE " lists %zu).",
                            m->st.n_prompts);
        return 0;
}

int embedding_scratch_new(const EmbeddingModel *m, EmbeddingScratch **ret) {
        _cleanup_free_ EmbeddingScratch *s = NULL;
        int r;

        assert(m);
        assert(ret);

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->model = m;
        r = bert_scratch_new(m->bert, MAX(EMBEDDING_BATCH_TOKENS / m->max_length, (size_t) 1), m->max_length,
                             &s->bert);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

uint64_t embedding_scratch_bytes(const EmbeddingScratch *s) {
        assert(s);
        return bert_scratch_bytes(s->bert) + page_round(sizeof *s);
}

EmbeddingScratch *embedding_scratch_free(EmbeddingScratch *s) {
        if (!s)
                return NULL;
        bert_scratch_free(s->bert);
        free(s);
        return NULL;
}

/* Every text's ids, one after another. */
typedef struct Encoded {
        uint32_t *ids;
        size_t n_ids, allocated;
        size_t *begin;            /* per text: where its ids begin */
        size_t *length;           /* and how many */
        uint64_t tokens;
} Encoded;

static void encoded_done(Encoded *e) {
        free(e->ids);
        free(e->begin);
        free(e->length);
}

/* The text as the tokenizer is to see it: prompt, text, stripped,
 * lowercased if the model says so. */
static int prepare(const EmbeddingModel *m, const StPrompt *prompt, const char *text, size_t length, char **ret,
                   size_t *ret_length) {
        _cleanup_free_ char *joined = NULL;
        size_t n_prompt = prompt ? strlen(prompt->text) : 0;

        if (n_prompt > 0) {
                if (length > SIZE_MAX - n_prompt - 1)
                        return -ENOMEM;
                joined = malloc(n_prompt + length + 1);
                if (!joined)
                        return -ENOMEM;
                memcpy(joined, prompt->text, n_prompt);
                memcpy(joined + n_prompt, text, length);
                text = joined;
                length += n_prompt;
        }
        return tu_python_strip_lower((const uint8_t *) text, length, m->st.lowercase, ret, ret_length);
}

static int encode_all(const EmbeddingModel *m, const StPrompt *prompt, const char *const *texts,
                      const size_t *lengths, size_t n, const EmbedOptions *o, bool (*cancel)(void *),
                      void *userdata, Encoded *e, size_t *ret_failed_index, char **ret_error) {
        TokenizerTruncation truncation = o->truncate ? o->direction : TOKENIZER_TRUNCATE_NONE;
        _cleanup_free_ int32_t *ids = NULL;
        int r;

        ids = calloc(m->max_length, sizeof *ids);
        e->begin = calloc(n, sizeof *e->begin);
        e->length = calloc(n, sizeof *e->length);
        if (!ids || !e->begin || !e->length)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *text = NULL;
                size_t length = 0, n_ids = 0;

                if (cancel && cancel(userdata))
                        return fail(ret_error, -ECANCELED, m->name, "the request was cancelled.");
                assert(texts[i] || lengths[i] == 0);
                r = prepare(m, prompt, texts[i] ?: "", lengths[i], &text, &length);
                if (r == -EFBIG)
                        r = -E2BIG;
                if (r == 0)
                        r = tokenizer_encode(m->tokenizer, text, length, truncation, ids, m->max_length, &n_ids);
                if (r == -E2BIG) {
                        *ret_failed_index = i;
                        return fail(ret_error, r, m->name,
                                    "text %zu makes more than the %zu tokens the model takes; truncation would cut "
                                    "it.", i, m->max_length);
                }
                if (r < 0)
                        return r;

                if (e->n_ids + n_ids > e->allocated) {
                        size_t k = MAX(e->allocated * 2, e->n_ids + n_ids);
                        uint32_t *p = reallocarray(e->ids, MAX(k, (size_t) 1), sizeof *p);

                        if (!p)
                                return -ENOMEM;
                        e->ids = p;
                        e->allocated = k;
                }
                /* Ids are below tokenizer_id_limit(): never negative. */
                for (size_t k = 0; k < n_ids; k++)
                        e->ids[e->n_ids + k] = (uint32_t) ids[k];
                e->begin[i] = e->n_ids;
                e->length[i] = n_ids;
                e->n_ids += n_ids;
                e->tokens += n_ids;
        }
        return 0;
}

int embedding_run(const EmbeddingModel *m, EmbeddingScratch *s, const char *const *texts, const size_t *lengths,
                  size_t n, const EmbedOptions *o, bool (*cancel)(void *), void *userdata,
                  float **ret_vectors, size_t *ret_dims, uint64_t *ret_tokens, size_t *ret_failed_index,
                  char **ret_error) {
        _cleanup_(encoded_done) Encoded e = {};
        _cleanup_free_ BertInput *inputs = NULL;
        _cleanup_free_ float *vectors = NULL, *run = NULL;
        const StPrompt *prompt = NULL;
        BertEmbedOptions bo;
        size_t dims, n_run = 0;
        int r;

        assert(m);
        assert(s && s->model == m);
        assert(texts && lengths && n > 0);
        assert(o);
        assert(ret_vectors && ret_dims && ret_tokens && ret_failed_index);

        r = embedding_options_check(m, o, ret_error);
        if (r < 0)
                return r;
        (void) find_prompt(m, o->prompt_name, &prompt);
        dims = o->dimensions > 0 ? o->dimensions : m->config.hidden_size;

        r = encode_all(m, prompt, texts, lengths, n, o, cancel, userdata, &e, ret_failed_index, ret_error);
        if (r == -ENOMEM)
                return fail(ret_error, r, m->name, "out of memory.");
        if (r < 0)
                return r;

        /* At most 2^20 dimensions a vector, by the configuration's bounds. */
        if (n > SIZE_MAX / sizeof(float) / dims)
                return fail(ret_error, -ENOMEM, m->name, "out of memory.");
        vectors = calloc(n * dims, sizeof *vectors);
        inputs = calloc(n, sizeof *inputs);
        if (!vectors || !inputs)
                return fail(ret_error, -ENOMEM, m->name, "out of memory.");
        for (size_t i = 0; i < n; i++)
                if (e.length[i] > 0)
                        inputs[n_run++] = (BertInput) { e.ids + e.begin[i], e.length[i] };

        /* Texts that made no token keep their zeros: the others are run
         * apart and put in their rows after. */
        if (n_run < n) {
                run = calloc(MAX(n_run, (size_t) 1) * dims, sizeof *run);
                if (!run)
                        return fail(ret_error, -ENOMEM, m->name, "out of memory.");
        }

        bo = (BertEmbedOptions) {
                .pooling = m->st.pooling,
                .normalize = o->normalize < 0 ? m->st.normalize : o->normalize > 0,
                .dimensions = o->dimensions,
                .cancel = cancel,
                .userdata = userdata,
        };
        if (n_run > 0) {
                r = bert_embed(m->bert, s->bert, inputs, n_run, &bo, run ?: vectors);
                if (r == -ECANCELED)
                        return fail(ret_error, r, m->name, "the request was cancelled.");
                if (r < 0)
                        /* The inputs were made to fit the model: a bug if not. */
                        return fail(ret_error, -EINVAL, m->name, "the forward pass refused the tokens (%s).",
                                    strerror(-r));
        }
        if (run)
                for (size_t i = 0, k = 0; i < n; i++)
                        if (e.length[i] > 0)
                                memcpy(vectors + i * dims, run + k++ * dims, dims * sizeof *vectors);

        *ret_vectors = TAKE_PTR(vectors);
        *ret_dims = dims;
        *ret_tokens = e.tokens;
        return 0;
}
