/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "pager.h"
#include "table.h"
#include "terminal.h"

static const char *state_color(const char *state) {
        if (strcmp(state, "loaded") == 0)
                return ANSI_GREEN;
        if (strcmp(state, "loading") == 0 || strcmp(state, "unloading") == 0 || strcmp(state, "downloading") == 0)
                return ANSI_YELLOW;
        if (strcmp(state, "error") == 0)
                return ANSI_RED;
        return NULL;
}

static bool model_is_loaded(const cJSON *model) {
        return strcmp(json_get_string(model, "state", ""), "loaded") == 0;
}

/* A pull of the model under way: a model pulled for the first time is
 * "downloading"; one in the store that is pulled again keeps its state. */
static bool model_is_pulled(const cJSON *model) {
        return strcmp(json_get_string(model, "state", ""), "downloading") == 0 ||
                json_get_u64(model, "download_total", 0) > 0;
}

static unsigned download_percent(const cJSON *model) {
        uint64_t done = json_get_u64(model, "download_done", 0), total = json_get_u64(model, "download_total", 0);

        return total > 0 ? (unsigned) (MIN(done, total) * 100 / total) : 0;
}

/* "loaded (pinned)", "downloading 42%", "available, pulling 42%". */
static char *format_state(char *buf, size_t l, const cJSON *model, bool with_pinned) {
        const char *state = json_get_string(model, "state", "unknown");
        bool pinned = with_pinned && json_get_bool(model, "pinned", false);

        if (strcmp(state, "downloading") == 0 && json_get_u64(model, "download_total", 0) > 0)
                snprintf(buf, l, "%s %u%%", state, download_percent(model));
        else if (model_is_pulled(model) && strcmp(state, "downloading") != 0)
                snprintf(buf, l, "%s%s, pulling %u%%", state, pinned ? " (pinned)" : "", download_percent(model));
        else
                snprintf(buf, l, "%s%s", state, pinned ? " (pinned)" : "");
        return buf;
}

/* When an idle unload is due, relative to now: "25s", "never" for a loaded
 * model without a deadline (pinned, held or kept forever), "-" otherwise. */
static char *format_expires(char *buf, size_t l, const cJSON *model, uint64_t now) {
        uint64_t expires = json_get_u64(model, "expires_at_usec", 0);

        if (!model_is_loaded(model))
                snprintf(buf, l, "-");
        else if (expires == 0)
                snprintf(buf, l, "never");
        else
                format_timespan(buf, l, expires > now ? expires - now : 0, USEC_PER_SEC);
        return buf;
}

/* Connects and asks for Status. Returns 0, or an exit status after saying
 * what failed. */
static int status_fetch(cJSON **ret_pool, cJSON **ret_models) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = mpool_status(bus, ret_pool, ret_models, &error);
        if (r < 0)
                return report_bus_error(&error, r, "query mpoold", NULL);
        return 0;
}

static void print_pool_summary(FILE *f, const cJSON *pool, const cJSON *models) {
        uint64_t total = json_get_u64(pool, "memory_total", 0);
        uint64_t limit = json_get_u64(pool, "memory_limit", 0);
        uint64_t used = json_get_u64(pool, "memory_used", 0);
        double limit_percent = limit > 0 ? 100.0 * (double) used / (double) limit : 0.0;
        double total_percent = total > 0 ? 100.0 * (double) used / (double) total : 0.0;

        fprintf(f, "    Version: %s\n", json_get_string(pool, "version", "n/a"));
        fprintf(f, "     Memory: %s%s%s used (%s of the %s limit, %s of %s total); %s available\n",
                ansi(ANSI_BOLD), FORMAT_BYTES(used), ansi(ANSI_NORMAL),
                FORMAT_PERCENT(limit_percent), FORMAT_BYTES(limit),
                FORMAT_PERCENT(total_percent), FORMAT_BYTES(total),
                FORMAT_BYTES(json_get_u64(pool, "memory_available", 0)));
        const cJSON *m;
        unsigned pulled = 0;

        cJSON_ArrayForEach(m, models)
                pulled += model_is_pulled(m);
        fprintf(f, "     Models: %" PRIu64 " loaded, ", json_get_u64(pool, "models_loaded", 0));
        if (pulled > 0)
                fprintf(f, "%u downloading, ", pulled);
        fprintf(f, "%d known\n", cJSON_GetArraySize(models));
        fprintf(f, "Idle unload: after %s unused (%s)\n", FORMAT_SECONDS(json_get_i64(pool, "idle_timeout_sec", -1)),
                json_get_string(pool, "idle_policy", "n/a"));
        fprintf(f, "     Uptime: %s\n", FORMAT_TIMESPAN(json_get_u64(pool, "uptime_usec", 0), USEC_PER_SEC));
        const char *core = json_get_string(pool, "blas_core", "");
        fprintf(f, "   OpenBLAS: %s\n", core[0] ? core : "not available (models are not run)");
}

static int print_models_table(FILE *f, const cJSON *models) {
        _cleanup_table_ Table *t = NULL;
        uint64_t now = now_realtime_usec();
        const cJSON *m;
        int r;

        t = table_new("NAME", "STATE", "MEMORY", "%TOTAL", "%LIMIT", "HOLDS", "EXPIRES", "REQUESTS", NULL);
        if (!t)
                return print_oom();
        for (size_t c = 2; c <= 7; c++)
                if (c != 6)
                        table_set_align_right(t, c);

        cJSON_ArrayForEach(m, models) {
                const char *state = json_get_string(m, "state", "unknown");
                bool loaded = model_is_loaded(m);
                char expires[FORMAT_TIMESPAN_MAX], state_text[128];

                if ((r = table_add_cell(t, json_get_string(m, "name", "?"), NULL)) < 0 ||
                    (r = table_add_cell(t, format_state(state_text, sizeof state_text, m, true), state_color(state))) < 0 ||
                    (r = table_add_cell(t, loaded ? FORMAT_BYTES(json_get_u64(m, "memory_bytes", 0)) : "-",
                                        NULL)) < 0 ||
                    (r = table_add_cell(t, loaded ? FORMAT_PERCENT(json_get_double(m, "memory_percent", 0)) : "-",
                                        NULL)) < 0 ||
                    (r = table_add_cell(t, loaded ? FORMAT_PERCENT(json_get_double(m, "memory_limit_percent", 0))
                                                  : "-", NULL)) < 0 ||
                    (r = table_add_cellf(t, NULL, "%" PRIu64, json_get_u64(m, "holds", 0))) < 0 ||
                    (r = table_add_cell(t, format_expires(expires, sizeof expires, m, now), NULL)) < 0 ||
                    (r = table_add_cellf(t, NULL, "%" PRIu64, json_get_u64(m, "requests_total", 0))) < 0)
                        return print_oom();
        }

        r = table_print(t, f, !arg_no_legend);
        if (r < 0)
                return r;
        if (!arg_no_legend)
                fprintf(f, "\n%zu model%s listed.\n", table_rows(t), table_rows(t) == 1 ? "" : "s");
        return 0;
}

static void print_field(FILE *f, const char *label, const char *format, ...) _printf_(3, 4);
static void print_field(FILE *f, const char *label, const char *format, ...) {
        va_list ap;

        fprintf(f, "%12s: ", label);
        va_start(ap, format);
        vfprintf(f, format, ap);
        va_end(ap);
        fputc('\n', f);
}

static void print_time_field(FILE *f, const char *label, uint64_t when, uint64_t now) {
        char relative[FORMAT_TIMESPAN_MAX + 8];

        if (when == 0)
                print_field(f, label, "n/a");
        else
                print_field(f, label, "%s; %s", FORMAT_TIMESTAMP(when),
                            format_timestamp_relative(relative, sizeof relative, when, now));
}

static void print_model_details(FILE *f, const cJSON *m) {
        const char *state = json_get_string(m, "state", "unknown");
        const char *color = state_color(state) ?: "";
        const char *error = json_get_string(m, "error", "");
        uint64_t now = now_realtime_usec();
        bool loaded = model_is_loaded(m);

        fprintf(f, "%s%s%s %s\n", ansi(color), is_utf8_locale() ? "\u25cf" : "*", ansi(ANSI_NORMAL),
                json_get_string(m, "name", "?"));
        print_field(f, "State", "%s%s%s%s", ansi(color), state, ansi(ANSI_NORMAL),
                    json_get_bool(m, "pinned", false) ? " (pinned)" : "");
        print_field(f, "Size", "%s on disk", FORMAT_BYTES(json_get_u64(m, "size_bytes", 0)));
        if (*json_get_string(m, "revision", ""))
                print_field(f, "Source", "%s, at %s", json_get_string(m, "source", "n/a"),
                            json_get_string(m, "revision", ""));
        else
                print_field(f, "Source", "%s", json_get_string(m, "source", "n/a"));
        if (model_is_pulled(m)) {
                uint64_t total = json_get_u64(m, "download_total", 0);

                if (total > 0)
                        print_field(f, "Download", "%s of %s (%u%%)", FORMAT_BYTES(json_get_u64(m, "download_done", 0)),
                                    FORMAT_BYTES(total), download_percent(m));
                else
                        print_field(f, "Download", "waiting for its turn or the hub's file list");
        }
        if (loaded)
                print_field(f, "Memory", "%s (%s of total, %s of the limit)",
                            FORMAT_BYTES(json_get_u64(m, "memory_bytes", 0)),
                            FORMAT_PERCENT(json_get_double(m, "memory_percent", 0)),
                            FORMAT_PERCENT(json_get_double(m, "memory_limit_percent", 0)));
        else
                print_field(f, "Memory", "-");
        print_field(f, "Holds", "%" PRIu64, json_get_u64(m, "holds", 0));
        print_time_field(f, "Loaded", loaded ? json_get_u64(m, "loaded_at_usec", 0) : 0, now);
        print_time_field(f, "Last used", json_get_u64(m, "last_used_usec", 0), now);
        if (loaded && json_get_u64(m, "expires_at_usec", 0) == 0)
                print_field(f, "Expires", "never (%s)",
                            json_get_bool(m, "pinned", false) ? "pinned" :
                            json_get_u64(m, "holds", 0) > 0 ? "held" : "no idle timeout");
        else
                print_time_field(f, "Expires", json_get_u64(m, "expires_at_usec", 0), now);
        print_field(f, "Requests", "%" PRIu64, json_get_u64(m, "requests_total", 0));
        if (strcmp(json_get_string(m, "kind", ""), "embedding") == 0) {
                const char *precision = json_get_string(m, "precision", "");

                print_field(f, "Kind", "embedding%s%s", *precision ? ", computing in " : "", precision);
                print_field(f, "Workers", "%" PRIu64 " (%" PRIu64 " running, %" PRIu64 " waiting)",
                            json_get_u64(m, "workers", 0), json_get_u64(m, "active_requests", 0),
                            json_get_u64(m, "queued_requests", 0));
                print_field(f, "Tokens", "%" PRIu64, json_get_u64(m, "tokens_total", 0));
        } else if (*json_get_string(m, "kind", ""))
                print_field(f, "Kind", "%s", json_get_string(m, "kind", ""));
        if (*error)
                print_field(f, "Last error", "%s%s%s", ansi(ANSI_RED), error, ansi(ANSI_NORMAL));
}

int verb_status(int argc, char *argv[]) {
        _cleanup_json_ cJSON *pool = NULL, *models = NULL, *selected = NULL;
        _cleanup_pager_ Pager pager = {};
        int r;

        for (int i = 1; i < argc; i++) {
                r = check_model_name(argv[i]);
                if (r != 0)
                        return r;
        }

        r = status_fetch(&pool, &models);
        if (r != 0)
                return r;

        if (argc > 1) {
                selected = cJSON_CreateArray();
                if (!selected)
                        return print_oom();
                for (int i = 1; i < argc; i++) {
                        const cJSON *m = models_find(models, argv[i]);
                        cJSON *copy;

                        if (!m) {
                                print_error("Model %s not found.", argv[i]);
                                return MPOOL_EXIT_NOT_FOUND;
                        }
                        copy = cJSON_Duplicate(m, true);
                        if (!copy || !cJSON_AddItemToArray(selected, copy)) {
                                cJSON_Delete(copy);
                                return print_oom();
                        }
                }
        }

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *root = cJSON_CreateObject();

                if (!root)
                        return print_oom();
                if (!cJSON_AddItemToObject(root, "pool", pool))
                        return print_oom();
                pool = NULL;
                if (selected) {
                        if (!cJSON_AddItemToObject(root, "models", selected))
                                return print_oom();
                        selected = NULL;
                } else {
                        if (!cJSON_AddItemToObject(root, "models", models))
                                return print_oom();
                        models = NULL;
                }
                return json_print(root, stdout);
        }

        r = pager_open(&pager);
        if (r < 0)
                return print_error_errno(r, "Cannot set up the output: %m");

        if (selected) {
                const cJSON *m;
                bool first = true;

                cJSON_ArrayForEach(m, selected) {
                        if (!first)
                                fputc('\n', pager.f);
                        first = false;
                        print_model_details(pager.f, m);
                }
        } else {
                print_pool_summary(pager.f, pool, models);
                fputc('\n', pager.f);
                r = print_models_table(pager.f, models);
                if (r < 0)
                        return print_output_error(r);
        }

        r = pager_close(&pager);
        if (r < 0)
                return print_error_errno(r, "Cannot write the output: %m");
        return 0;
}

int verb_list(int argc, char *argv[]) {
        _cleanup_json_ cJSON *models = NULL;
        _cleanup_pager_ Pager pager = {};
        _cleanup_table_ Table *t = NULL;
        const cJSON *m;
        int r;

        r = status_fetch(NULL, &models);
        if (r != 0)
                return r;

        if (arg_json != JSON_OFF) {
                _cleanup_json_ cJSON *list = cJSON_CreateArray();

                if (!list)
                        return print_oom();
                cJSON_ArrayForEach(m, models) {
                        cJSON *o = cJSON_CreateObject();

                        if (!o || !cJSON_AddItemToArray(list, o)) {
                                cJSON_Delete(o);
                                return print_oom();
                        }
                        if (!cJSON_AddStringToObject(o, "name", json_get_string(m, "name", "")) ||
                            !cJSON_AddStringToObject(o, "state", json_get_string(m, "state", "")) ||
                            !json_add_u64(o, "size_bytes", json_get_u64(m, "size_bytes", 0)) ||
                            !cJSON_AddBoolToObject(o, "pinned", json_get_bool(m, "pinned", false)) ||
                            !cJSON_AddStringToObject(o, "source", json_get_string(m, "source", "")))
                                return print_oom();
                }
                return json_print(list, stdout);
        }

        t = table_new("NAME", "STATE", "SIZE", "SOURCE", NULL);
        if (!t)
                return print_oom();
        table_set_align_right(t, 2);
        cJSON_ArrayForEach(m, models) {
                const char *state = json_get_string(m, "state", "unknown");
                char state_text[128];

                if (table_add_cell(t, json_get_string(m, "name", "?"), NULL) < 0 ||
                    table_add_cell(t, format_state(state_text, sizeof state_text, m, false), state_color(state)) < 0 ||
                    table_add_cell(t, FORMAT_BYTES(json_get_u64(m, "size_bytes", 0)), NULL) < 0 ||
                    table_add_cell(t, json_get_string(m, "source", "-"), NULL) < 0)
                        return print_oom();
        }

        r = pager_open(&pager);
        if (r < 0)
                return print_error_errno(r, "Cannot set up the output: %m");
        r = table_print(t, pager.f, !arg_no_legend);
        if (r < 0)
                return print_error_errno(r, "Cannot write the output: %m");
        if (!arg_no_legend)
                fprintf(pager.f, "\n%zu model%s listed.\n", table_rows(t), table_rows(t) == 1 ? "" : "s");
        r = pager_close(&pager);
        if (r < 0)
                return print_error_errno(r, "Cannot write the output: %m");
        return 0;
}
