/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config-json.h"
#include "embedding-model.h"
#include "model-profile.h"
#include "tensor-list.h"
#include "tokenizer.h"

static const char *const kind_table[_MODEL_KIND_MAX] = {
        [MODEL_KIND_UNKNOWN] = "",
        [MODEL_KIND_WEIGHTS] = "weights",
        [MODEL_KIND_EMBEDDING] = "embedding",
};

const char *model_kind_to_string(ModelKind k) {
        return k >= 0 && k < _MODEL_KIND_MAX ? kind_table[k] : NULL;
}

void model_profile_done(ModelProfile *p) {
        free(p->reason);
        *p = MODEL_PROFILE_NULL;
}

void model_profile_move(ModelProfile *dst, ModelProfile *src) {
        model_profile_done(dst);
        *dst = *src;
        *src = MODEL_PROFILE_NULL;
}

int model_profile_set_weights(ModelProfile *p, int error, const char *format, ...) {
        char *reason;
        va_list ap;

        assert(error < 0);
        errno = -error;
        va_start(ap, format);
        if (vasprintf(&reason, format, ap) < 0)
                reason = NULL;
        va_end(ap);
        if (!reason)
                return -ENOMEM;
        free(p->reason);
        p->reason = reason;
        p->kind = MODEL_KIND_WEIGHTS;
        p->error = error;
        return 0;
}

static uint64_t page_round(uint64_t n) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (n + page - 1) / page * page;
}

/* The reason a lower layer gave (it names the file), after the model's
 * name; -ENOMEM only when that cannot be said. */
static int not_runnable(ModelProfile *p, int error, const char *name, char **message, const char *fallback) {
        int r = model_profile_set_weights(p, error, "%s: %s", name, *message ?: fallback);

        free(*message);
        *message = NULL;
        return r;
}

/* How the tensors are stored. */
static int read_dtypes(ModelProfile *p, const char *name, const int *fds, char *const *paths, size_t n,
                       model_profile_cancel_t cancel, void *userdata) {
        size_t n_f32 = 0, n_other = 0;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *error = NULL;
                TensorList l = {};
                int r;

                if (cancel && cancel(userdata))
                        return -ECANCELED;
                r = tensor_list_add_fd(&l, fds[i], paths[i], cancel, userdata, &error);
                if (r == -ECANCELED || r == -ENOMEM)
                        return r;
                if (r < 0)
                        return not_runnable(p, r, name, &error, "a weights file cannot be read.");
                for (size_t k = 0; k < l.n_tensors; k++) {
                        const char *dtype = l.tensors[k].dtype;

                        /* Integer tensors are buffers (position_ids), never
                         * weights. F32 data is used in place only where it
                         * is aligned for a float. */
                        if (dtype[0] != 'F' && strcmp(dtype, "BF16") != 0)
                                continue;
                        if (strcmp(dtype, "F32") == 0 && l.file_offsets[k] % sizeof(float) == 0)
                                n_f32++;
                        else
                                n_other++;
                }
                tensor_list_done(&l);
        }
        p->all_f32 = n_other == 0;
        p->some_f32 = n_f32 > 0;
        return 0;
}

int model_profile_read(const ModelFolder *folder, const char *name, const int *weight_fds,
                       char *const *weight_paths, size_t n_weights, model_profile_cancel_t cancel, void *userdata,
                       ModelProfile *ret) {
        ModelProfile p = MODEL_PROFILE_NULL;
        _cleanup_free_ char *text = NULL, *error = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t tokenizer_size = 0;
        size_t length = 0;
        int r;

        assert(folder);
        assert(name);
        assert(weight_fds || n_weights == 0);
        assert(ret);

        for (size_t i = 0; i < n_weights; i++) {
                struct stat st;

                if (fstat(weight_fds[i], &st) >= 0)
                        p.files_bytes += page_round((uint64_t) st.st_size);
        }

        r = store_read_model_file(folder, BERT_CONFIG_FILE, CONFIG_JSON_SIZE_MAX, &text, &length, &error);
        if (r == -ENOENT)
                r = model_profile_set_weights(&p, -EOPNOTSUPP, "%s: there is no " BERT_CONFIG_FILE
                                              " to say what model it is.", name);
        else if (r == -EFBIG)
                r = model_profile_set_weights(&p, -EBADMSG, "%s: " BERT_CONFIG_FILE " is larger than %llu bytes.",
                                              name, (unsigned long long) CONFIG_JSON_SIZE_MAX);
        else if (r < 0 && r != -ENOMEM)
                r = not_runnable(&p, r, name, &error, "cannot read " BERT_CONFIG_FILE ".");
        else if (r >= 0) {
                r = bert_config_parse(text, length, &p.config, &error);
                if (r < 0 && r != -ENOMEM)
                        r = not_runnable(&p, r, name, &error, "cannot read " BERT_CONFIG_FILE ".");
        }
        if (r < 0)
                goto finish;
        if (p.kind == MODEL_KIND_WEIGHTS)
                goto done;

        fd = store_open_model_file(folder, EMBEDDING_TOKENIZER_FILE, TOKENIZER_FILE_SIZE_MAX, &tokenizer_size,
                                   &error);
        if (fd == -ENOENT)
                r = model_profile_set_weights(&p, -EOPNOTSUPP, "%s: there is no " EMBEDDING_TOKENIZER_FILE
                                              " to turn texts into tokens.", name);
        else if (fd == -EFBIG)
                r = model_profile_set_weights(&p, -EBADMSG, "%s: " EMBEDDING_TOKENIZER_FILE " is larger than "
                                              "%llu bytes.", name, (unsigned long long) TOKENIZER_FILE_SIZE_MAX);
        else if (fd < 0 && fd != -ENOMEM)
                r = not_runnable(&p, fd, name, &error, "cannot open " EMBEDDING_TOKENIZER_FILE ".");
        else
                r = fd < 0 ? fd : 0;
        if (r < 0)
                goto finish;
        if (p.kind == MODEL_KIND_WEIGHTS)
                goto done;

        /* What the tokenizer keeps is about what its file holds (the
         * vocabulary's strings and an entry for each), and a page for the
         * rest of the model's own. */
        p.tokenizer_bytes = page_round(tokenizer_size) + page_round(1);
        p.kind = MODEL_KIND_EMBEDDING;
        r = read_dtypes(&p, name, weight_fds, weight_paths, n_weights, cancel, userdata);
        if (r < 0)
                goto finish;

done:
        *ret = p;
        return 0;

finish:
        model_profile_done(&p);
        return r;
}

uint64_t model_profile_memory_bytes(const ModelProfile *p, Precision precision) {
        assert(p);
        assert(precision >= 0 && precision < _PRECISION_MAX);

        if (p->kind != MODEL_KIND_EMBEDDING)
                return p->files_bytes;
        if (precision == PRECISION_F32 && p->all_f32)
                return p->files_bytes + p->tokenizer_bytes;
        /* Every weight converted; the mappings stay only while some are
         * used where they are. */
        return (precision == PRECISION_F32 && p->some_f32 ? p->files_bytes : 0) +
                bert_weights_bytes(&p->config, precision) + p->tokenizer_bytes;
}

uint64_t model_profile_load_bytes(const ModelProfile *p, Precision precision) {
        assert(p);
        assert(precision >= 0 && precision < _PRECISION_MAX);

        if (p->kind != MODEL_KIND_EMBEDDING)
                return p->files_bytes;
        if (precision == PRECISION_F32 && p->all_f32)
                return p->files_bytes + p->tokenizer_bytes;
        return p->files_bytes + bert_weights_bytes(&p->config, precision) + p->tokenizer_bytes;
}
