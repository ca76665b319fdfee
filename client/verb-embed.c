/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus-util.h"
#include "client.h"
#include "embed-input.h"
#include "follow.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "table.h"
#include "terminal.h"

/* Each component as the float32 mpoold computed it, read back exactly. */
#define COMPONENT_FORMAT "%.9g"
/* On a terminal: enough to tell vectors apart at a glance. */
#define SHORT_COMPONENT_FORMAT "%.4f"
/* The widest that makes of a double (1.8e308: 309 digits), with a blank. */
#define SHORT_COMPONENT_MAX 352

typedef struct Vector {
        const double *v;
        size_t n;
} Vector;

typedef struct EmbedContext {
        Follow follow;
        EmbedTexts texts;
        sd_bus_message *call;
} EmbedContext;

static const FollowWords embed_words = { .action = "embed with", .bar = "Loading", .doing = "embedding with" };

static void c_locale_freep(locale_t *l) {
        if (*l)
                freelocale(*l);
}

static double norm(const Vector *v) {
        double sum = 0;

        for (size_t j = 0; j < v->n; j++)
                sum += v->v[j] * v->v[j];
        return sqrt(sum);
}

static int print_json(const char *name, const Vector *vectors, size_t n) {
        _cleanup_json_ cJSON *j = cJSON_CreateObject();
        cJSON *embeddings;

        if (!j || !cJSON_AddStringToObject(j, "name", name) ||
            !json_add_u64(j, "dimensions", n > 0 ? vectors[0].n : 0) ||
            !(embeddings = cJSON_AddArrayToObject(j, "embeddings")))
                return print_oom();

        for (size_t i = 0; i < n; i++) {
                cJSON *row = cJSON_CreateArray();

                if (!row || !cJSON_AddItemToArray(embeddings, row)) {
                        cJSON_Delete(row);
                        return print_oom();
                }
                for (size_t k = 0; k < vectors[i].n; k++) {
                        char buf[32];
                        cJSON *x;

                        /* JSON has no NaN or infinity. */
                        if (isfinite(vectors[i].v[k])) {
                                snprintf(buf, sizeof buf, COMPONENT_FORMAT, vectors[i].v[k]);
                                x = cJSON_CreateRaw(buf);
                        } else
                                x = cJSON_CreateNull();
                        if (!x || !cJSON_AddItemToArray(row, x)) {
                                cJSON_Delete(x);
                                return print_oom();
                        }
                }
        }
        return json_print(j, stdout);
}

/* Every component, one line per text: for awk, paste, numpy.loadtxt. */
static void print_full(const Vector *vectors, size_t n) {
        for (size_t i = 0; i < n; i++) {
                for (size_t k = 0; k < vectors[i].n; k++)
                        printf(k > 0 ? " " COMPONENT_FORMAT : COMPONENT_FORMAT, vectors[i].v[k]);
                putchar('\n');
        }
}

/* The first components that fit in room columns, then an ellipsis if some
 * are left out. */
static char *short_vector(const Vector *v, size_t room) {
        const char *ellipsis = is_utf8_locale() ? " …" : " ...";
        size_t ellipsis_width = is_utf8_locale() ? 2 : 4, used = 0;
        char *s = calloc(1, room + 16);

        if (!s)
                return NULL;
        for (size_t k = 0; k < v->n; k++) {
                char buf[SHORT_COMPONENT_MAX];
                int w = snprintf(buf, sizeof buf, k > 0 ? " " SHORT_COMPONENT_FORMAT : SHORT_COMPONENT_FORMAT,
                                 v->v[k]);
                /* The last one needs no room for the ellipsis after it. */
                size_t needed = (size_t) w + (k + 1 < v->n ? ellipsis_width : 0);

                if (used + needed > room) {
                        strcpy(s + used, k > 0 ? ellipsis : ellipsis + 1);
                        return s;
                }
                memcpy(s + used, buf, (size_t) w + 1);
                used += (size_t) w;
        }
        return s;
}

/* On a terminal: one line per text, its index, dimensions, L2 norm and
 * the first components that fit the width. */
static int print_table(const Vector *vectors, size_t n) {
        _cleanup_table_ Table *t = table_new("TEXT", "DIMS", "NORM", "VECTOR", NULL);
        size_t widths[3] = { 0 }, room, columns = terminal_columns(STDOUT_FILENO);
        bool legend = !arg_no_legend;
        int r;

        if (!t)
                return print_oom();
        for (size_t c = 0; c < 3; c++) {
                table_set_align_right(t, c);
                if (legend)
                        widths[c] = 4;
        }
        for (size_t i = 0; i < n; i++) {
                char buf[SHORT_COMPONENT_MAX];

                widths[0] = MAX(widths[0], (size_t) snprintf(buf, sizeof buf, "%zu", i));
                widths[1] = MAX(widths[1], (size_t) snprintf(buf, sizeof buf, "%zu", vectors[i].n));
                widths[2] = MAX(widths[2], (size_t) snprintf(buf, sizeof buf, "%.4f", norm(&vectors[i])));
        }
        /* Never the last column: writing there makes some terminals wrap. */
        room = widths[0] + widths[1] + widths[2] + 3 + 1;
        room = columns > room + 12 ? columns - room : 12;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *shortened = short_vector(&vectors[i], room);

                if (!shortened)
                        return print_oom();
                r = table_add_cellf(t, NULL, "%zu", i);
                if (r >= 0)
                        r = table_add_cellf(t, NULL, "%zu", vectors[i].n);
                if (r >= 0)
                        r = table_add_cellf(t, NULL, "%.4f", norm(&vectors[i]));
                if (r >= 0)
                        r = table_add_cell(t, shortened, NULL);
                if (r < 0)
                        return print_oom();
        }
        return table_print(t, stdout, legend);
}

static int print_vectors(EmbedContext *c, const Vector *vectors, size_t n) {
        _cleanup_(c_locale_freep) locale_t numeric = NULL;
        locale_t previous;
        int r;

        if (arg_json == JSON_OFF && isatty(STDOUT_FILENO))
                return print_table(vectors, n);

        /* Numbers for programs: a decimal point whatever LC_NUMERIC says. */
        numeric = newlocale(LC_NUMERIC_MASK, "C", (locale_t) 0);
        if (!numeric)
                return print_error_errno(-errno, "Cannot make the C locale: %m");
        previous = uselocale(numeric);
        if (arg_json != JSON_OFF)
                r = print_json(c->follow.name, vectors, n);
        else {
                print_full(vectors, n);
                r = 0;
        }
        uselocale(previous);
        return r;
}

/* Reads the reply's aad, keeping pointers into the message (valid while
 * the handler runs), and prints it. Returns the exit status. */
static int handle_vectors(EmbedContext *c, sd_bus_message *m) {
        _cleanup_free_ Vector *vectors = NULL;
        size_t n = 0, allocated = 0;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "ad");
        if (r < 0)
                goto bad_reply;
        for (;;) {
                const void *p;
                size_t size;

                r = sd_bus_message_at_end(m, false);
                if (r < 0)
                        goto bad_reply;
                if (r > 0)
                        break;
                if (n == allocated) {
                        size_t more = MAX(allocated * 2, (size_t) 16);
                        Vector *grown = reallocarray(vectors, more, sizeof *vectors);

                        if (!grown) {
                                print_oom();
                                return MPOOL_EXIT_FAILURE;
                        }
                        vectors = grown;
                        allocated = more;
                }
                r = sd_bus_message_read_array(m, 'd', &p, &size);
                if (r < 0)
                        goto bad_reply;
                vectors[n++] = (Vector) { .v = p, .n = size / sizeof(double) };
        }

        if (n != c->texts.n) {
                print_error("mpoold sent %zu vectors for %zu texts.", n, c->texts.n);
                return MPOOL_EXIT_FAILURE;
        }
        r = print_vectors(c, vectors, n);
        return r < 0 ? MPOOL_EXIT_FAILURE : r;

bad_reply:
        print_error_errno(r, "Cannot read the reply to Embed: %m");
        return MPOOL_EXIT_FAILURE;
}

static int on_embed_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        EmbedContext *c = userdata;
        Follow *f = &c->follow;
        const sd_bus_error *error = sd_bus_message_get_error(m);

        progress_bar_clear(&f->bar);
        if (error) {
                /* The load it waited for, or the call itself, was cancelled:
                 * not a load of ours, as report_bus_error() would say. */
                if (sd_bus_error_has_name(error, MPOOL_ERROR_CANCELLED)) {
                        print_error("Embedding with model %s was cancelled: %s", f->name,
                                    error->message && *error->message ? error->message : "no reason given");
                        return follow_exit(f, MPOOL_EXIT_CANCELLED);
                }
                return follow_exit(f, report_bus_error(error, sd_bus_message_get_errno(m), "embed with", f->name));
        }
        return follow_exit(f, handle_vectors(c, m));
}

/* Ctrl-C ends the wait; mpoold drops the call when we leave the bus, and
 * a load it started for it goes on as any load does. */
static int on_interrupt(Follow *f) {
        return follow_exit_interrupted(f);
}

static int start_embed(Follow *f) {
        EmbedContext *c = container_of(f, EmbedContext, follow);

        /* The reply waits for the model's load: no timeout unless asked. */
        return sd_bus_call_async(f->bus, NULL, c->call, on_embed_reply, c, load_call_timeout());
}

static int build_call(EmbedContext *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        Follow *f = &c->follow;
        int r;

        r = sd_bus_message_new_method_call(f->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Embed");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", f->name);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "s");
        if (r < 0)
                return r;
        for (size_t i = 0; i < c->texts.n; i++) {
                r = sd_bus_message_append_basic(m, 's', c->texts.texts[i]);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        if (arg_normalize_set) {
                r = sd_bus_message_append(m, "{sv}", "normalize", "b", arg_normalize);
                if (r < 0)
                        return r;
        }
        if (arg_no_truncate) {
                r = sd_bus_message_append(m, "{sv}", "truncate", "b", 0);
                if (r < 0)
                        return r;
        }
        if (arg_truncation_direction) {
                r = sd_bus_message_append(m, "{sv}", "truncation_direction", "s", arg_truncation_direction);
                if (r < 0)
                        return r;
        }
        if (arg_prompt_name) {
                r = sd_bus_message_append(m, "{sv}", "prompt_name", "s", arg_prompt_name);
                if (r < 0)
                        return r;
        }
        if (arg_dimensions > 0) {
                r = sd_bus_message_append(m, "{sv}", "dimensions", "u", arg_dimensions);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        c->call = TAKE_PTR(m);
        return 0;
}

/* The texts: the arguments, or standard input for a lone "-". */
static int read_texts(EmbedContext *c, int n_args, char *args[]) {
        bool from_stdin = n_args == 1 && strcmp(args[0], "-") == 0;

        for (int i = 0; i < n_args && !from_stdin; i++)
                if (strcmp(args[i], "-") == 0) {
                        print_error("'-' reads the texts from standard input and must be the only text.");
                        return MPOOL_EXIT_USAGE;
                }
        if (arg_null && !from_stdin) {
                print_error("--null applies to texts read from standard input ('-') only.");
                return MPOOL_EXIT_USAGE;
        }
        if (from_stdin)
                return embed_texts_read(STDIN_FILENO, arg_null, &c->texts);
        return embed_texts_from_args(args, (size_t) n_args, &c->texts);
}

int verb_embed(int argc, char *argv[]) {
        EmbedContext c = {};
        int r;

        r = check_model_name(argv[1]);
        if (r != 0)
                return r;
        /* Before connecting, and before Ctrl-C is taken: reading may wait. */
        r = read_texts(&c, argc - 2, argv + 2);
        if (r != 0)
                goto finish;

        /* Nothing to embed (an empty input): nothing to ask either. */
        if (c.texts.n == 0) {
                r = arg_json != JSON_OFF ? print_json(argv[1], NULL, 0) : 0;
                goto finish;
        }

        r = follow_open(&c.follow, argv[1], &embed_words);
        if (r == 0) {
                /* The vectors go to stdout, the bar to stderr: a terminal
                 * there is enough for it. */
                c.follow.show_progress = isatty(STDERR_FILENO) && !arg_quiet;
                r = build_call(&c);
                if (r < 0)
                        r = report_bus_error(NULL, r, "embed with", argv[1]);
        }
        if (r == 0)
                r = follow_run(&c.follow, "LoadProgress", NULL, NULL, on_interrupt, start_embed);
        follow_close(&c.follow);
finish:
        sd_bus_message_unref(c.call);
        embed_texts_done(&c.texts);
        return r;
}
