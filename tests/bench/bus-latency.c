/* SPDX-License-Identifier: MIT */
/* bus-latency --address=ADDRESS --method=status|ping [--connections=N]
 *             [--seconds=S | --calls=N] [--warmup=N]
 *
 * Round trips to mpoold as a C client sees them: N connections, one thread
 * and one sd_bus each, call either org.mpool.Manager.Status (and read every
 * value of the reply, as a client that uses it must) or
 * org.freedesktop.DBus.Peer.Ping on the same daemon, back to back. Every
 * round trip is timed with CLOCK_MONOTONIC; one line of key=value gives the
 * percentiles over all connections together. Python's unmarshalling would
 * dwarf what is measured, hence C; --no-read receives Status's reply but
 * reads none of it, to tell the client's unmarshalling from the rest;
 * --read-apart reads it but outside the round trip timed, and gives the
 * median of the reading alone (read_median_us).
 * Prints, never judges: exits non-zero only when a call fails. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-bus.h>

#include "macro.h"
#include "parse-util.h"

#define CONNECTIONS_MAX 1024U
#define CALLS_MAX 100000000U
#define SECONDS_MAX 3600U

typedef enum Method {
        METHOD_STATUS,
        METHOD_PING,
} Method;

typedef struct Options {
        const char *address;
        Method method;
        unsigned connections;
        unsigned seconds;  /* 0: run for calls instead */
        unsigned calls;    /* per connection */
        unsigned warmup;   /* per connection, not recorded */
        bool no_read;
        bool read_apart;
} Options;

typedef struct Worker {
        const Options *options;
        pthread_barrier_t *start;
        uint64_t *latencies_ns;
        size_t n_latencies;
        size_t allocated;
        uint64_t *reads_ns;  /* --read-apart: one for each latency */
        int error;
        char message[256];
} Worker;

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
}

/* Reads every value of the message from where it stands, containers
 * entered, as a client that uses the reply would. */
static int walk(sd_bus_message *m) {
        for (;;) {
                const char *contents;
                char type;
                int r;

                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r <= 0)
                        return r;
                if (type == SD_BUS_TYPE_ARRAY || type == SD_BUS_TYPE_STRUCT || type == SD_BUS_TYPE_VARIANT ||
                    type == SD_BUS_TYPE_DICT_ENTRY) {
                        r = sd_bus_message_enter_container(m, type, contents);
                        if (r < 0)
                                return r;
                        r = walk(m);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                } else {
                        union {
                                uint64_t u64;
                                double d;
                                const char *s;
                                int i;
                        } value;

                        r = sd_bus_message_read_basic(m, type, &value);
                        if (r < 0)
                                return r;
                }
        }
}

static int call_once(sd_bus *bus, Method method, bool no_read, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        if (method == METHOD_PING)
                return sd_bus_call_method(bus, "org.mpool.Manager", "/org/mpool/Manager",
                                          "org.freedesktop.DBus.Peer", "Ping", error, NULL, NULL);

        r = sd_bus_call_method(bus, "org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Status",
                               error, &reply, NULL);
        if (r < 0 || no_read)
                return r;
        return walk(reply);
}

static int record(Worker *w, uint64_t ns, uint64_t read_ns) {
        if (w->n_latencies == w->allocated) {
                size_t n = w->allocated ? w->allocated * 2 : 4096;
                uint64_t *p = realloc(w->latencies_ns, n * sizeof *p);

                if (!p)
                        return -ENOMEM;
                w->latencies_ns = p;
                p = realloc(w->reads_ns, n * sizeof *p);
                if (!p)
                        return -ENOMEM;
                w->reads_ns = p;
                w->allocated = n;
        }
        w->reads_ns[w->n_latencies] = read_ns;
        w->latencies_ns[w->n_latencies++] = ns;
        return 0;
}

/* --read-apart: the round trip up to the reply in hand, then the reading
 * of every value, each timed on its own. */
static int call_read_apart(sd_bus *bus, sd_bus_error *error, uint64_t *ret_ns, uint64_t *ret_read_ns) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint64_t t0, t1;
        int r;

        t0 = now_ns();
        r = sd_bus_call_method(bus, "org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Status",
                               error, &reply, NULL);
        t1 = now_ns();
        if (r < 0)
                return r;
        r = walk(reply);
        if (r < 0)
                return r;
        *ret_ns = t1 - t0;
        *ret_read_ns = now_ns() - t1;
        return 0;
}

static void fail(Worker *w, int r, const sd_bus_error *error, const char *what) {
        w->error = r;
        snprintf(w->message, sizeof w->message, "%s: %s", what,
                 error && sd_bus_error_is_set(error) ? error->message : strerror(-r));
}

static void *run(void *userdata) {
        Worker *w = userdata;
        const Options *o = w->options;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        uint64_t deadline;
        int r;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, o->address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0)
                fail(w, r, NULL, "connecting");

        for (unsigned i = 0; w->error == 0 && i < o->warmup; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;

                r = call_once(bus, o->method, o->no_read, &error);
                if (r < 0)
                        fail(w, r, &error, "warm-up call");
        }

        /* Everyone connected and warm before anyone is timed, so that N
         * connections really are N at once. */
        pthread_barrier_wait(w->start);
        if (w->error != 0)
                return NULL;

        deadline = now_ns() + (uint64_t) o->seconds * UINT64_C(1000000000);
        for (unsigned i = 0;; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                uint64_t t0, ns = 0, read_ns = 0;

                if (o->seconds == 0 ? i >= o->calls : now_ns() >= deadline)
                        break;
                if (o->read_apart)
                        r = call_read_apart(bus, &error, &ns, &read_ns);
                else {
                        t0 = now_ns();
                        r = call_once(bus, o->method, o->no_read, &error);
                        ns = now_ns() - t0;
                }
                if (r < 0) {
                        fail(w, r, &error, "call");
                        break;
                }
                r = record(w, ns, read_ns);
                if (r < 0) {
                        fail(w, r, NULL, "recording");
                        break;
                }
        }
        return NULL;
}

static int compare_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return (x > y) - (x < y);
}

/* Nearest rank: the smallest value with at least p of them at or below it. */
static double percentile_us(const uint64_t *sorted, size_t n, double p) {
        size_t rank = (size_t) ((double) n * p + 0.999999);

        rank = MAX(rank, (size_t) 1);
        rank = MIN(rank, n);
        return (double) sorted[rank - 1] / 1e3;
}

static void help(void) {
        printf("usage: bus-latency --address=ADDRESS --method=status|ping [--connections=N]\n"
               "                   [--seconds=S | --calls=N] [--warmup=N]\n"
               "                   [--no-read | --read-apart]\n");
}

static int parse_argv(int argc, char *argv[], Options *o) {
        static const struct option options[] = {
                { "help",        no_argument,       NULL, 'h' },
                { "address",     required_argument, NULL, 'a' },
                { "method",      required_argument, NULL, 'm' },
                { "connections", required_argument, NULL, 'c' },
                { "seconds",     required_argument, NULL, 's' },
                { "calls",       required_argument, NULL, 'n' },
                { "warmup",      required_argument, NULL, 'w' },
                { "no-read",     no_argument,       NULL, 'r' },
                { "read-apart",  no_argument,       NULL, 'R' },
                {}
        };
        bool have_method = false, have_calls = false;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        exit(0);
                case 'a':
                        o->address = optarg;
                        break;
                case 'm':
                        if (strcmp(optarg, "status") == 0)
                                o->method = METHOD_STATUS;
                        else if (strcmp(optarg, "ping") == 0)
                                o->method = METHOD_PING;
                        else {
                                fprintf(stderr, "bus-latency: --method=%s: status or ping\n", optarg);
                                return -EINVAL;
                        }
                        have_method = true;
                        break;
                case 'c':
                        if (parse_unsigned(optarg, 1, CONNECTIONS_MAX, &o->connections) < 0) {
                                fprintf(stderr, "bus-latency: --connections=%s: 1 to %u\n", optarg, CONNECTIONS_MAX);
                                return -EINVAL;
                        }
                        break;
                case 's':
                        if (parse_unsigned(optarg, 1, SECONDS_MAX, &o->seconds) < 0) {
                                fprintf(stderr, "bus-latency: --seconds=%s: 1 to %u\n", optarg, SECONDS_MAX);
                                return -EINVAL;
                        }
                        break;
                case 'n':
                        if (parse_unsigned(optarg, 1, CALLS_MAX, &o->calls) < 0) {
                                fprintf(stderr, "bus-latency: --calls=%s: 1 to %u\n", optarg, CALLS_MAX);
                                return -EINVAL;
                        }
                        have_calls = true;
                        break;
                case 'w':
                        if (parse_unsigned(optarg, 0, CALLS_MAX, &o->warmup) < 0) {
                                fprintf(stderr, "bus-latency: --warmup=%s: 0 to %u\n", optarg, CALLS_MAX);
                                return -EINVAL;
                        }
                        break;
                case 'r':
                        o->no_read = true;
                        break;
                case 'R':
                        o->read_apart = true;
                        break;
                default:
                        return -EINVAL;
                }

        if (optind < argc) {
                fprintf(stderr, "bus-latency: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (!o->address || !have_method) {
                help();
                return -EINVAL;
        }
        if (o->read_apart && (o->no_read || o->method != METHOD_STATUS)) {
                fprintf(stderr, "bus-latency: --read-apart is for Status, and excludes --no-read\n");
                return -EINVAL;
        }
        if (o->seconds > 0 && have_calls) {
                fprintf(stderr, "bus-latency: --seconds and --calls exclude each other\n");
                return -EINVAL;
        }
        return 0;
}

int main(int argc, char *argv[]) {
        Options o = { .connections = 1, .calls = 1000, .warmup = 100 };
        _cleanup_free_ Worker *workers = NULL;
        _cleanup_free_ pthread_t *threads = NULL;
        _cleanup_free_ uint64_t *all = NULL, *reads = NULL;
        pthread_barrier_t start;
        uint64_t t0, t1;
        size_t n = 0;
        int r, failed = 0;

        r = parse_argv(argc, argv, &o);
        if (r < 0)
                return 2;

        workers = calloc(o.connections, sizeof *workers);
        threads = calloc(o.connections, sizeof *threads);
        if (!workers || !threads) {
                fprintf(stderr, "bus-latency: out of memory\n");
                return 1;
        }
        /* The main thread is one more party: it starts the clock when every
         * connection is ready. */
        r = pthread_barrier_init(&start, NULL, o.connections + 1);
        if (r != 0) {
                fprintf(stderr, "bus-latency: barrier: %s\n", strerror(r));
                return 1;
        }

        for (unsigned i = 0; i < o.connections; i++) {
                workers[i] = (Worker) { .options = &o, .start = &start };
                r = pthread_create(&threads[i], NULL, run, &workers[i]);
                if (r != 0) {
                        /* The barrier cannot be left half-joined: give up at once. */
                        fprintf(stderr, "bus-latency: thread: %s\n", strerror(r));
                        exit(1);
                }
        }

        pthread_barrier_wait(&start);
        t0 = now_ns();
        for (unsigned i = 0; i < o.connections; i++)
                pthread_join(threads[i], NULL);
        t1 = now_ns();
        pthread_barrier_destroy(&start);

        for (unsigned i = 0; i < o.connections; i++) {
                if (workers[i].error != 0) {
                        fprintf(stderr, "bus-latency: connection %u: %s\n", i, workers[i].message);
                        failed = 1;
                }
                n += workers[i].n_latencies;
        }

        all = malloc(MAX(n, (size_t) 1) * sizeof *all);
        reads = malloc(MAX(n, (size_t) 1) * sizeof *reads);
        if (!all || !reads) {
                fprintf(stderr, "bus-latency: out of memory\n");
                failed = 1;
        } else {
                size_t k = 0;

                for (unsigned i = 0; i < o.connections; i++) {
                        memcpy(all + k, workers[i].latencies_ns, workers[i].n_latencies * sizeof *all);
                        memcpy(reads + k, workers[i].reads_ns, workers[i].n_latencies * sizeof *reads);
                        k += workers[i].n_latencies;
                }
                qsort(all, n, sizeof *all, compare_u64);
                qsort(reads, n, sizeof *reads, compare_u64);
        }
        for (unsigned i = 0; i < o.connections; i++) {
                free(workers[i].latencies_ns);
                free(workers[i].reads_ns);
        }

        if (failed || n == 0) {
                if (n == 0)
                        fprintf(stderr, "bus-latency: no call completed\n");
                return 1;
        }

        printf("method=%s connections=%u calls=%zu min_us=%.1f median_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f"
               " calls_per_s=%.0f",
               o.method == METHOD_STATUS ? "status" : "ping", o.connections, n, (double) all[0] / 1e3,
               percentile_us(all, n, 0.5), percentile_us(all, n, 0.9), percentile_us(all, n, 0.99),
               (double) all[n - 1] / 1e3, (double) n * 1e9 / (double) (t1 - t0));
        if (o.read_apart)
                printf(" read_median_us=%.1f", percentile_us(reads, n, 0.5));
        printf("\n");
        return 0;
}
