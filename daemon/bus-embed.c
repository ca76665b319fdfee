/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "bus-embed.h"
#include "bus-manager.h"
#include "bus-options.h"
#include "embed.h"
#include "log.h"
#include "macro.h"
#include "mpool-bus.h"
#include "polkit.h"
#include "st-config.h"

/* Embed's options as the bus gives them; the direction is a word. */
typedef struct EmbedBusOptions {
        int normalize;
        bool truncate;
        const char *truncation_direction;
        const char *prompt_name;
        uint64_t dimensions;
} EmbedBusOptions;

static const BusOption embed_options[] = {
        { "normalize", BUS_OPTION_TRISTATE, offsetof(EmbedBusOptions, normalize) },
        { "truncate", BUS_OPTION_BOOLEAN, offsetof(EmbedBusOptions, truncate) },
        { "truncation_direction", BUS_OPTION_STRING, offsetof(EmbedBusOptions, truncation_direction),
          .string = { .max_length = 5 } },
        { "prompt_name", BUS_OPTION_STRING, offsetof(EmbedBusOptions, prompt_name),
          .string = { .max_length = ST_PROMPT_NAME_MAX } },
        { "dimensions", BUS_OPTION_UINT64, offsetof(EmbedBusOptions, dimensions),
          .uint64 = { .min = 1, .max = BERT_HIDDEN_MAX, .unit = "components" } },
        {}
};

static int read_options(sd_bus_message *message, EmbedOptions *ret, sd_bus_error *error) {
        EmbedBusOptions o = {
                .normalize = -1,
                .truncate = true,
                .truncation_direction = "right",
        };
        EmbedOptions options = EMBED_OPTIONS_DEFAULT;
        int r;

        r = bus_options_read(message, embed_options, &o, error);
        if (r < 0)
                return r;
        if (strcmp(o.truncation_direction, "left") == 0)
                options.direction = TOKENIZER_TRUNCATE_LEFT;
        else if (strcmp(o.truncation_direction, "right") != 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option 'truncation_direction' must be 'right' or 'left'.");
        options.normalize = o.normalize;
        options.truncate = o.truncate;
        options.prompt_name = o.prompt_name;
        options.dimensions = (size_t) o.dimensions;
        *ret = options;
        return 0;
}

/* The texts, copied and bounded; an empty list is refused. */
static int read_texts(sd_bus_message *message, char ***ret_texts, size_t **ret_lengths, size_t *ret_n,
                      sd_bus_error *error) {
        _cleanup_free_ size_t *lengths = NULL;
        char **texts = NULL;
        uint64_t total = 0;
        size_t n = 0;
        int r;

        r = sd_bus_message_enter_container(message, 'a', "s");
        if (r < 0)
                return r;
        texts = calloc(EMBED_TEXTS_MAX, sizeof *texts);
        lengths = calloc(EMBED_TEXTS_MAX, sizeof *lengths);
        if (!texts || !lengths) {
                r = -ENOMEM;
                goto fail;
        }
        for (;;) {
                const char *text;
                size_t length;

                r = sd_bus_message_read(message, "s", &text);
                if (r < 0)
                        goto fail;
                if (r == 0)
                        break;
                length = strlen(text);
                if (n >= EMBED_TEXTS_MAX) {
                        r = sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Too many texts: at most %u per call.", EMBED_TEXTS_MAX);
                        goto fail;
                }
                if (length > EMBED_TEXT_BYTES_MAX) {
                        r = sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "Text %zu is %zu bytes long: at most %" PRIu64 " are taken.", n, length,
                                              EMBED_TEXT_BYTES_MAX);
                        goto fail;
                }
                total += length;
                if (total > EMBED_CALL_BYTES_MAX) {
                        r = sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                              "The texts are longer than %" PRIu64 " bytes in all; send fewer per call.",
                                              EMBED_CALL_BYTES_MAX);
                        goto fail;
                }
                texts[n] = strdup(text);
                if (!texts[n]) {
                        r = -ENOMEM;
                        goto fail;
                }
                lengths[n++] = length;
        }
        r = sd_bus_message_exit_container(message);
        if (r < 0)
                goto fail;
        if (n == 0) {
                r = sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "No texts: give at least one.");
                goto fail;
        }

        *ret_texts = texts;
        *ret_lengths = TAKE_PTR(lengths);
        *ret_n = n;
        return 0;

fail:
        for (size_t i = 0; texts && i < n; i++)
                free(texts[i]);
        free(texts);
        return r;
}

static const char *embed_error_name(int error) {
        switch (error) {
        case -EINVAL:
                return SD_BUS_ERROR_INVALID_ARGS;
        case -EOPNOTSUPP:
                return MPOOL_ERROR_NOT_SUPPORTED;
        default:
                return bus_error_name(error);
        }
}

static int send_vectors(sd_bus_message *call, const float *vectors, size_t n, size_t dims) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ double *row = NULL;
        int r;

        row = calloc(dims ?: 1, sizeof *row);
        if (!row)
                return -ENOMEM;
        r = sd_bus_message_new_method_return(call, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "ad");
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                for (size_t k = 0; k < dims; k++)
                        row[k] = vectors[i * dims + k];
                r = sd_bus_message_append_array(reply, 'd', row, dims * sizeof *row);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_message_send(reply);
}

static void on_embedded(int error, const char *message, const float *vectors, size_t n, size_t dims,
                        void *userdata) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = userdata;
        int r;

        if (error < 0)
                r = sd_bus_reply_method_errorf(call, embed_error_name(error), "%s", message);
        else
                r = send_vectors(call, vectors, n, dims);
        /* A caller that went away cannot be answered; that is no failure of ours. */
        if (r < 0 && r != -ENOTCONN && r != -ECONNRESET)
                log_warning_errno(r, "Cannot send the reply to Embed: %m");
}

int bus_method_embed(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ size_t *lengths = NULL;
        EmbedOptions options;
        const char *name;
        char **texts = NULL;
        size_t n = 0;
        int r;

        r = bus_read_model_name(message, &name, error);
        if (r < 0)
                return r;
        r = read_texts(message, &texts, &lengths, &n, error);
        if (r < 0)
                return r;
        r = read_options(message, &options, error);
        if (r >= 0)
                r = bus_verify_actions(m, message, name, error, POLKIT_ACTION_LOAD, NULL);
        if (r <= 0) {
                for (size_t i = 0; i < n; i++)
                        free(texts[i]);
                free(texts);
                return r < 0 ? r : 1;   /* 1: polkit will answer, the call comes back */
        }

        sd_bus_message_ref(message);   /* the reply's, given back there */
        r = embed_submit(m, name, texts, TAKE_PTR(lengths), n, &options, sd_bus_message_get_sender(message),
                         on_embedded, message);
        if (r < 0) {
                sd_bus_message_unref(message);
                return r;
        }
        return 1;
}
