/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <systemd/sd-event.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "screen.h"
#include "terminal.h"

#define TILE_WIDTH 40
#define TILE_HEIGHT 9
#define TILE_INNER (TILE_WIDTH - 4)     /* between "| " and " |" */
#define GAUGE_LABEL 7
#define GAUGE_PERCENT 7
#define REFRESH_USEC USEC_PER_SEC

#define ANSI_ALTERNATE_SCREEN_ON  "\x1b[?1049h"
#define ANSI_ALTERNATE_SCREEN_OFF "\x1b[?1049l"
#define ANSI_CURSOR_HIDE          "\x1b[?25l"
#define ANSI_CURSOR_SHOW          "\x1b[?25h"
#define ANSI_AUTOWRAP_OFF         "\x1b[?7l"
#define ANSI_AUTOWRAP_ON          "\x1b[?7h"
#define ANSI_CLEAR_SCREEN         "\x1b[2J"

/* What we remember of a model between two Status snapshots. */
typedef struct TopModel {
        char *name;
        uint64_t sample_requests;       /* requests_total at sample_usec */
        uint64_t sample_usec;           /* CLOCK_MONOTONIC */
        double requests_per_sec;
        uint64_t progress_done, progress_total;
} TopModel;

typedef struct Top {
        sd_event *event;
        sd_bus *bus;
        cJSON *pool, *models;           /* the last Status; NULL when there is none */
        char *problem;                  /* why there is none */
        TopModel *tracked;
        size_t n_tracked;
        sd_bus_slot *status_call;       /* a Status call in flight */
        bool refresh_again;             /* something changed while it was */
        bool asked_once;                /* the first Status went out (and may have started mpoold) */
        unsigned columns, rows;
        bool utf8, colors;
} Top;

/* The terminal as we found it, for every way out. */
static struct termios saved_termios;
static bool terminal_taken = false;

static void write_string(const char *s) {
        size_t n = strlen(s);

        while (n > 0) {
                ssize_t k = write(STDOUT_FILENO, s, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return;
                }
                s += k;
                n -= (size_t) k;
        }
}

static void terminal_restore(void) {
        if (!terminal_taken)
                return;
        terminal_taken = false;
        write_string(ANSI_AUTOWRAP_ON ANSI_CURSOR_SHOW ANSI_ALTERNATE_SCREEN_OFF);
        (void) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_termios);
}

static int terminal_take(void) {
        struct termios raw;

        if (tcgetattr(STDIN_FILENO, &saved_termios) < 0)
                return negative_errno();

        /* Keys one by one, unechoed; Ctrl-C and Ctrl-Z arrive as keys, so
         * the terminal is always restored by us. Output processing stays. */
        raw = saved_termios;
        raw.c_lflag &= ~(ICANON | ECHO | ISIG | IEXTEN);
        raw.c_iflag &= ~(IXON | ICRNL);
        raw.c_cc[VMIN] = 1;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) < 0)
                return negative_errno();

        terminal_taken = true;
        atexit(terminal_restore);
        write_string(ANSI_ALTERNATE_SCREEN_ON ANSI_CURSOR_HIDE ANSI_AUTOWRAP_OFF ANSI_CLEAR_SCREEN);
        return 0;
}

static TopModel *tracked_get(Top *t, const char *name) {
        TopModel *array;

        for (size_t i = 0; i < t->n_tracked; i++)
                if (strcmp(t->tracked[i].name, name) == 0)
                        return &t->tracked[i];

        array = reallocarray(t->tracked, t->n_tracked + 1, sizeof *array);
        if (!array)
                return NULL;
        t->tracked = array;
        array[t->n_tracked] = (TopModel) { .name = strdup(name) };
        if (!array[t->n_tracked].name)
                return NULL;
        return &array[t->n_tracked++];
}

static void top_done(Top *t) {
        for (size_t i = 0; i < t->n_tracked; i++)
                free(t->tracked[i].name);
        free(t->tracked);
        cJSON_Delete(t->pool);
        cJSON_Delete(t->models);
        free(t->problem);
        sd_bus_slot_unref(t->status_call);
}

static bool state_has_tile(const char *state) {
        return strcmp(state, "loaded") == 0 || strcmp(state, "loading") == 0 || strcmp(state, "unloading") == 0;
}

static const char *state_color(const char *state) {
        if (strcmp(state, "loaded") == 0)
                return ANSI_GREEN;
        if (strcmp(state, "error") == 0)
                return ANSI_RED;
        return ANSI_YELLOW;
}

/* A bar of width cells for percent, with eighth blocks on a UTF-8 terminal. */
static void put_gauge(Top *t, Frame *fr, unsigned width, double percent, bool warn) {
        static const char *const eighths[] = { "", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b", "\u258a", "\u2589" };
        double p = percent < 0 ? 0 : percent > 100 ? 100 : percent;
        unsigned units = (unsigned) (p / 100.0 * width * 8 + 0.5);
        unsigned full = units / 8, part = units % 8, used = 0;

        frame_color(fr, warn && p >= 90 ? ANSI_RED : warn && p >= 70 ? ANSI_YELLOW : ANSI_GREEN);
        for (; used < full && used < width; used++)
                frame_puts(fr, t->utf8 ? "\u2588" : "#");
        if (used < width && part > 0) {
                frame_puts(fr, t->utf8 ? eighths[part] : (part >= 4 ? "#" : "."));
                used++;
        }
        frame_color(fr, ANSI_GREY);
        for (; used < width; used++)
                frame_puts(fr, t->utf8 ? "\u2591" : ".");
        frame_color(fr, ANSI_NORMAL);
}

static void tile_text(Frame *fr, const char *text) {
        frame_put_padded(fr, text, TILE_INNER);
}

static void tile_gauge(Top *t, Frame *fr, const char *label, double percent, bool warn) {
        frame_put_padded(fr, label, GAUGE_LABEL);
        put_gauge(t, fr, TILE_INNER - GAUGE_LABEL - GAUGE_PERCENT, percent, warn);
        frame_printf(fr, "%*s", GAUGE_PERCENT, FORMAT_PERCENT(percent));
}

/* One line (0 .. TILE_HEIGHT-1) of a model's tile, TILE_WIDTH columns wide. */
static void tile_line(Top *t, Frame *fr, const cJSON *m, unsigned line) {
        const char *name = json_get_string(m, "name", "?");
        const char *state = json_get_string(m, "state", "?");
        const char *h = t->utf8 ? "\u2500" : "-", *v = t->utf8 ? "\u2502" : "|";
        bool loading = strcmp(state, "loading") == 0;
        TopModel *tm = tracked_get(t, name);
        uint64_t now = now_realtime_usec();
        char text[128];
        unsigned start = fr->column;

        if (line == 0 || line == TILE_HEIGHT - 1) {
                frame_puts(fr, line == 0 ? (t->utf8 ? "\u250c" : "+") : (t->utf8 ? "\u2514" : "+"));
                frame_puts(fr, h);
                if (line == 0) {
                        frame_puts(fr, " ");
                        frame_color(fr, ANSI_BOLD);
                        frame_put_padded(fr, name, MIN(text_width(name), (size_t) TILE_WIDTH - 6));
                        frame_color(fr, ANSI_NORMAL);
                        frame_puts(fr, " ");
                }
                while (fr->column < start + TILE_WIDTH - 1 && fr->column < fr->columns)
                        frame_puts(fr, h);
                frame_puts(fr, line == 0 ? (t->utf8 ? "\u2510" : "+") : (t->utf8 ? "\u2518" : "+"));
                return;
        }

        frame_puts(fr, v);
        frame_puts(fr, " ");
        switch (line) {
        case 1:
                frame_color(fr, state_color(state));
                if (loading && tm && tm->progress_total > 0)
                        snprintf(text, sizeof text, "%s %" PRIu64 "%%", state,
                                 MIN(tm->progress_done, tm->progress_total) * 100 / tm->progress_total);
                else
                        snprintf(text, sizeof text, "%s%s", state,
                                 json_get_bool(m, "pinned", false) ? ", pinned" : "");
                tile_text(fr, text);
                frame_color(fr, ANSI_NORMAL);
                break;
        case 2:
                if (loading && tm && tm->progress_total > 0)
                        snprintf(text, sizeof text, "read   %s of %s", FORMAT_BYTES(tm->progress_done),
                                 FORMAT_BYTES(tm->progress_total));
                else
                        snprintf(text, sizeof text, "memory %s (%s on disk)",
                                 FORMAT_BYTES(json_get_u64(m, "memory_bytes", 0)),
                                 FORMAT_BYTES(json_get_u64(m, "size_bytes", 0)));
                tile_text(fr, text);
                break;
        case 3:
                tile_gauge(t, fr, "total", json_get_double(m, "memory_percent", 0), false);
                break;
        case 4:
                tile_gauge(t, fr, "limit", json_get_double(m, "memory_limit_percent", 0), true);
                break;
        case 5: {
                uint64_t loaded_at = json_get_u64(m, "loaded_at_usec", 0);

                snprintf(text, sizeof text, "uptime %s",
                         loaded_at > 0 ? FORMAT_TIMESPAN(now > loaded_at ? now - loaded_at : 0, USEC_PER_SEC) : "-");
                tile_text(fr, text);
                break;
        }
        case 6: {
                uint64_t expires = json_get_u64(m, "expires_at_usec", 0);

                if (expires > 0)
                        snprintf(text, sizeof text, "expires in %s",
                                 FORMAT_TIMESPAN(expires > now ? expires - now : 0, USEC_PER_SEC));
                else if (strcmp(state, "loaded") == 0)
                        snprintf(text, sizeof text, "expires never (%s)",
                                 json_get_bool(m, "pinned", false) ? "pinned" :
                                 json_get_u64(m, "holds", 0) > 0 ? "held" : "no idle timeout");
                else
                        snprintf(text, sizeof text, "expires -");
                tile_text(fr, text);
                break;
        }
        case 7:
                snprintf(text, sizeof text, "holds %" PRIu64 "  req/s %.1f  total %" PRIu64,
                         json_get_u64(m, "holds", 0), tm ? tm->requests_per_sec : 0.0,
                         json_get_u64(m, "requests_total", 0));
                tile_text(fr, text);
                break;
        }
        frame_pad_to(fr, start + TILE_WIDTH - 1);
        frame_puts(fr, v);
}

static void draw_header(Top *t, Frame *fr) {
        uint64_t now = now_realtime_usec();
        time_t sec = (time_t) (now / USEC_PER_SEC);
        char clock[16] = "", host[64] = "";
        struct tm tm;

        if (localtime_r(&sec, &tm))
                strftime(clock, sizeof clock, "%H:%M:%S", &tm);
        (void) gethostname(host, sizeof host - 1);

        frame_color(fr, ANSI_BOLD);
        frame_puts(fr, "mpool top");
        frame_color(fr, ANSI_NORMAL);
        if (t->pool)
                frame_printf(fr, " - mpoold %s on %s, up %s", json_get_string(t->pool, "version", "?"), host,
                             FORMAT_TIMESPAN(json_get_u64(t->pool, "uptime_usec", 0), USEC_PER_SEC));
        if (t->columns > fr->column + strlen(clock))
                frame_pad_to(fr, t->columns - (unsigned) strlen(clock));
        frame_puts(fr, clock);
        frame_newline(fr);

        if (!t->pool) {
                frame_color(fr, ANSI_YELLOW);
                frame_puts(fr, t->problem ?: "Asking mpoold...");
                frame_color(fr, ANSI_NORMAL);
                frame_newline(fr);
                frame_newline(fr);
                return;
        }

        uint64_t used = json_get_u64(t->pool, "memory_used", 0), limit = json_get_u64(t->pool, "memory_limit", 0),
                 total = json_get_u64(t->pool, "memory_total", 0);
        double limit_percent = limit > 0 ? 100.0 * (double) used / (double) limit : 0;
        size_t loaded = 0, loading = 0, downloading = 0;
        uint64_t download_done = 0, download_total = 0;
        const cJSON *m;

        frame_printf(fr, "Memory: %s used of %s limit ", FORMAT_BYTES(used), FORMAT_BYTES(limit));
        put_gauge(t, fr, 20, limit_percent, true);
        frame_printf(fr, " %s;  %s total, %s available", FORMAT_PERCENT(limit_percent), FORMAT_BYTES(total),
                     FORMAT_BYTES(json_get_u64(t->pool, "memory_available", 0)));
        frame_newline(fr);

        cJSON_ArrayForEach(m, t->models) {
                const char *state = json_get_string(m, "state", "");

                loaded += strcmp(state, "loaded") == 0;
                loading += strcmp(state, "loading") == 0;
                /* First pulls, and pulls of models in the store. */
                if (strcmp(state, "downloading") == 0 || json_get_u64(m, "download_total", 0) > 0) {
                        downloading++;
                        download_done += json_get_u64(m, "download_done", 0);
                        download_total += json_get_u64(m, "download_total", 0);
                }
        }
        frame_printf(fr, "Models: %zu loaded, %zu loading, ", loaded, loading);
        if (downloading > 0)
                frame_printf(fr, "%zu downloading (%s of %s), ", downloading, FORMAT_BYTES(download_done),
                             FORMAT_BYTES(download_total));
        frame_printf(fr, "%d known;  idle unload after %s (%s)", cJSON_GetArraySize(t->models),
                     FORMAT_SECONDS(json_get_i64(t->pool, "idle_timeout_sec", -1)),
                     json_get_string(t->pool, "idle_policy", "?"));
        frame_newline(fr);
}

static int redraw(Top *t) {
        _cleanup_free_ const cJSON **tiles = NULL;
        size_t n_tiles = 0, per_row, shown = 0;
        Frame fr;
        const cJSON *m;
        int r;

        tiles = calloc((size_t) MAX(cJSON_GetArraySize(t->models), 1), sizeof *tiles);
        if (!tiles)
                return -ENOMEM;
        cJSON_ArrayForEach(m, t->models)
                if (state_has_tile(json_get_string(m, "state", "")))
                        tiles[n_tiles++] = m;

        r = frame_begin(&fr, t->columns, t->rows, t->colors);
        if (r < 0)
                return r;

        draw_header(t, &fr);
        frame_newline(&fr);

        per_row = MAX((size_t) 1, (t->columns + 1) / (TILE_WIDTH + 1));
        if (t->pool && n_tiles == 0) {
                frame_puts(&fr, "No model is loaded.");
                frame_newline(&fr);
        }
        /* Rows of tiles while they fit, keeping the last row for the footer. */
        for (size_t first = 0; first < n_tiles && frame_rows_left(&fr) > TILE_HEIGHT; first += per_row) {
                size_t last = MIN(first + per_row, n_tiles);

                for (unsigned line = 0; line < TILE_HEIGHT; line++) {
                        for (size_t i = first; i < last; i++) {
                                if (i > first)
                                        frame_puts(&fr, " ");
                                tile_line(t, &fr, tiles[i], line);
                        }
                        frame_newline(&fr);
                }
                shown = last;
        }

        while (frame_rows_left(&fr) > 1)
                frame_newline(&fr);
        frame_color(&fr, ANSI_GREY);
        if (shown < n_tiles)
                frame_printf(&fr, "%zu more not shown (enlarge the terminal).  ", n_tiles - shown);
        frame_puts(&fr, "q: quit");
        frame_color(&fr, ANSI_NORMAL);
        frame_newline(&fr);

        r = frame_flush(&fr, STDOUT_FILENO);
        frame_done(&fr);
        return r;
}

static void redraw_or_quit(Top *t) {
        int r = redraw(t);

        if (r < 0) {
                terminal_restore();
                print_error_errno(r, "Cannot draw the screen: %m");
                sd_event_exit(t->event, MPOOL_EXIT_FAILURE);
        }
}

/* Requests per second over the last second or more, per model. */
static void update_rates(Top *t) {
        uint64_t now = now_monotonic_usec();
        const cJSON *m;

        cJSON_ArrayForEach(m, t->models) {
                TopModel *tm = tracked_get(t, json_get_string(m, "name", "?"));
                uint64_t requests = json_get_u64(m, "requests_total", 0);

                if (!tm)
                        continue;
                if (tm->sample_usec == 0 || requests < tm->sample_requests) {
                        tm->sample_requests = requests;
                        tm->sample_usec = now;
                        tm->requests_per_sec = 0;
                } else if (now - tm->sample_usec >= REFRESH_USEC) {
                        tm->requests_per_sec = (double) (requests - tm->sample_requests) * USEC_PER_SEC /
                                               (double) (now - tm->sample_usec);
                        tm->sample_requests = requests;
                        tm->sample_usec = now;
                }
                if (strcmp(json_get_string(m, "state", ""), "loading") != 0)
                        tm->progress_done = tm->progress_total = 0;
        }
}

static void request_refresh(Top *t);

static int on_status_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Top *t = userdata;
        const sd_bus_error *error = sd_bus_message_get_error(reply);
        cJSON *pool = NULL, *models = NULL;
        int r;

        t->status_call = sd_bus_slot_unref(t->status_call);

        if (error) {
                int status = bus_error_exit_status(error, sd_bus_message_get_errno(reply));

                free(t->problem);
                t->problem = NULL;
                if (status == MPOOL_EXIT_UNREACHABLE)
                        t->problem = strdup("mpoold is not running; waiting for it to start "
                                            "('systemctl start mpoold').");
                else if (asprintf(&t->problem, "Cannot get the status of mpoold: %s",
                                  error->message ?: error->name) < 0)
                        t->problem = NULL;
                cJSON_Delete(t->pool);
                cJSON_Delete(t->models);
                t->pool = t->models = NULL;
        } else {
                r = bus_message_read_json(reply, &pool);
                if (r >= 0)
                        r = bus_message_read_json(reply, &models);
                if (r >= 0)
                        r = status_models_complete(models);
                if (r < 0) {
                        cJSON_Delete(pool);
                        cJSON_Delete(models);
                        free(t->problem);
                        t->problem = strdup("mpoold sent a status this client does not understand.");
                } else {
                        cJSON_Delete(t->pool);
                        cJSON_Delete(t->models);
                        t->pool = pool;
                        t->models = models;
                        free(t->problem);
                        t->problem = NULL;
                        update_rates(t);
                }
        }

        redraw_or_quit(t);
        if (t->refresh_again) {
                t->refresh_again = false;
                request_refresh(t);
        }
        return 0;
}

/* Asks for a new snapshot; changes during a call in flight ask again after it. */
static void request_refresh(Top *t) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (t->status_call) {
                t->refresh_again = true;
                return;
        }
        r = sd_bus_message_new_method_call(t->bus, &m, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Status");
        /* Only the first call may start mpoold through D-Bus activation, as
         * busctl's would: refreshing every second must not start again, at
         * once, a daemon that was just stopped. The bus then says the name
         * has no owner, which we show as mpoold not running. */
        if (r >= 0 && t->asked_once)
                r = sd_bus_message_set_auto_start(m, false);
        if (r >= 0)
                r = sd_bus_call_async(t->bus, &t->status_call, m, on_status_reply, t, 0);
        if (r < 0) {
                free(t->problem);
                t->problem = strdup("Cannot ask mpoold for its status.");
                return;
        }
        t->asked_once = true;
}

static int on_manager_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Top *t = userdata;

        if (sd_bus_message_is_signal(m, MPOOL_MANAGER_INTERFACE, "LoadProgress")) {
                const char *name;
                uint64_t done, total;
                TopModel *tm;

                if (sd_bus_message_read(m, "stt", &name, &done, &total) < 0)
                        return 0;
                tm = tracked_get(t, name);
                if (tm) {
                        tm->progress_done = done;
                        tm->progress_total = total;
                }
                /* The first one means a load began: the model's state changed. */
                if (done == 0)
                        request_refresh(t);
                else
                        redraw_or_quit(t);
                return 0;
        }

        /* Many a second, and in the next Status anyway. */
        if (sd_bus_message_is_signal(m, MPOOL_MANAGER_INTERFACE, "DownloadProgress"))
                return 0;

        request_refresh(t);
        return 0;
}

static int on_bus_change(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        request_refresh(userdata);
        return 0;
}

static int on_disconnected(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Top *t = userdata;

        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected")) {
                terminal_restore();
                print_error("Lost the connection to the bus.");
                return sd_event_exit(t->event, MPOOL_EXIT_UNREACHABLE);
        }
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Top *t = userdata;
        int r;

        request_refresh(t);
        /* The clocks move even when nothing else does. */
        redraw_or_quit(t);

        r = sd_event_source_set_time_relative(s, REFRESH_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        if (r < 0) {
                terminal_restore();
                print_error_errno(r, "Cannot rearm the timer: %m");
                return sd_event_exit(t->event, MPOOL_EXIT_FAILURE);
        }
        return 0;
}

static int on_key(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Top *t = userdata;
        char keys[64];
        ssize_t n;

        n = read(fd, keys, sizeof keys);
        if (n < 0) {
                if (errno == EINTR || errno == EAGAIN)
                        return 0;
                return sd_event_exit(t->event, MPOOL_EXIT_SUCCESS);
        }
        if (n == 0)     /* the terminal went away */
                return sd_event_exit(t->event, MPOOL_EXIT_SUCCESS);

        for (ssize_t i = 0; i < n; i++)
                switch (keys[i]) {
                case 'q':
                case 'Q':
                case 3:         /* Ctrl-C */
                case 4:         /* Ctrl-D */
                        return sd_event_exit(t->event, MPOOL_EXIT_SUCCESS);
                case 12:        /* Ctrl-L: draw everything anew */
                        write_string(ANSI_CLEAR_SCREEN);
                        redraw_or_quit(t);
                        break;
                default:
                        break;
                }
        return 0;
}

static int on_resize(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Top *t = userdata;

        t->columns = terminal_columns(STDOUT_FILENO);
        t->rows = terminal_lines(STDOUT_FILENO);
        write_string(ANSI_CLEAR_SCREEN);
        redraw_or_quit(t);
        return 0;
}

static int on_quit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Top *t = userdata;
        int sig = (int) si->ssi_signo;

        /* SIGINT is a Ctrl-C and quits like q; being terminated or hung up
         * on is reported as shells report it. */
        return sd_event_exit(t->event, sig == SIGINT ? MPOOL_EXIT_SUCCESS : 128 + sig);
}

static int subscribe(Top *t) {
        int r;

        r = sd_bus_match_signal(t->bus, NULL, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE, NULL,
                                on_manager_signal, t);
        if (r < 0)
                return r;
        r = sd_bus_add_match(t->bus, NULL,
                             "type='signal',sender='" MPOOL_BUS_NAME "',interface='org.freedesktop.DBus.Properties',"
                             "member='PropertiesChanged',path_namespace='" MPOOL_MANAGER_PATH "'",
                             on_bus_change, t);
        if (r < 0)
                return r;
        r = sd_bus_add_match(t->bus, NULL,
                             "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                             "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" MPOOL_BUS_NAME "'",
                             on_bus_change, t);
        if (r < 0)
                return r;
        return sd_bus_add_filter(t->bus, NULL, on_disconnected, t);
}

int verb_top(int argc, char *argv[]) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        static const int quit_signals[] = { SIGINT, SIGTERM, SIGHUP };
        Top t = {};
        int r;

        if (arg_json != JSON_OFF) {
                print_error("top draws a live view and has no JSON output; use 'status --json'.");
                return MPOOL_EXIT_USAGE;
        }
        if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
                print_error("top needs a terminal; use 'status' or 'monitor' in scripts.");
                return MPOOL_EXIT_USAGE;
        }

        r = block_signals(NULL, SIGINT, SIGTERM, SIGHUP, SIGWINCH, 0);
        if (r < 0)
                return print_error_errno(r, "Cannot block signals: %m");

        r = client_connect(&bus);
        if (r != 0)
                return r;
        t.bus = bus;

        r = client_attach_event(bus, &event);
        if (r != 0)
                return r;
        t.event = event;

        r = subscribe(&t);
        if (r < 0)
                return report_bus_error(NULL, r, "subscribe to the events of mpoold", NULL);

        for (size_t i = 0; i < ELEMENTSOF(quit_signals); i++) {
                r = sd_event_add_signal(event, NULL, quit_signals[i], on_quit_signal, &t);
                if (r < 0)
                        return print_error_errno(r, "Cannot watch signal %d: %m", quit_signals[i]);
        }
        r = sd_event_add_signal(event, NULL, SIGWINCH, on_resize, &t);
        if (r < 0)
                return print_error_errno(r, "Cannot watch terminal resizes: %m");
        r = sd_event_add_io(event, NULL, STDIN_FILENO, EPOLLIN, on_key, &t);
        if (r < 0)
                return print_error_errno(r, "Cannot watch the keyboard: %m");
        r = sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC, REFRESH_USEC, 0, on_timer, &t);
        if (r < 0)
                return print_error_errno(r, "Cannot set up the refresh timer: %m");

        t.columns = terminal_columns(STDOUT_FILENO);
        t.rows = terminal_lines(STDOUT_FILENO);
        t.utf8 = is_utf8_locale();
        t.colors = colors_enabled();

        r = terminal_take();
        if (r < 0)
                return print_error_errno(r, "Cannot set up the terminal: %m");

        request_refresh(&t);
        r = redraw(&t);
        if (r >= 0)
                r = sd_event_loop(event);

        terminal_restore();
        top_done(&t);
        if (r < 0)
                return print_error_errno(r, "top failed: %m");
        return r;
}
