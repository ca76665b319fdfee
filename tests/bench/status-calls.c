/* SPDX-License-Identifier: MIT */
/* status-calls --address=ADDRESS [--calls=N] [--warmup=N]
 *
 * Calls org.mpool.Manager.Status back to back on one connection and times
 * each round trip (from the call to its reply in hand, CLOCK_MONOTONIC),
 * then the walk through every value of that reply, as a client that uses it
 * must. One line of key=value: the round trip's min, median and p90, the
 * walk's median, the models and basic values in the reply. C, because Python's
 * unmarshalling of thousands of models would dwarf the daemon's share.
 * Prints, never judges: exits non-zero only when a call fails. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-bus.h>

#include "macro.h"
#include "parse-util.h"

#define CALLS_MAX 100000U

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
}

static int compare_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

/* Reads every value of the current container (recursively); counts the
 * basic values read. */
static int walk(sd_bus_message *m, uint64_t *n_values) {
        for (;;) {
                const char *contents;
                char type;
                int r;

                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (r == 0)
                        return 0;
                if (strchr("avre", type)) {   /* array, variant, struct, dict entry */
                        r = sd_bus_message_enter_container(m, type, contents);
                        if (r < 0)
                                return r;
                        r = walk(m, n_values);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                } else {
                        union {
                                uint64_t u;
                                double d;
                                const char *s;
                        } value;

                        r = sd_bus_message_read_basic(m, type, &value);
                        if (r < 0)
                                return r;
                        (*n_values)++;
                }
        }
}

/* The models in a Status reply: the length of its second member. */
static int count_models(sd_bus_message *m, unsigned *ret) {
        unsigned n = 0;
        int r;

        r = sd_bus_message_rewind(m, true);
        if (r < 0)
                return r;
        r = sd_bus_message_skip(m, "a{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(m, 'a', "a{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_skip(m, "a{sv}")) > 0)
                n++;
        if (r < 0)
                return r;
        *ret = n;
        return 0;
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "address", required_argument, NULL, 'a' },
                { "calls",   required_argument, NULL, 'n' },
                { "warmup",  required_argument, NULL, 'w' },
                {}
        };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const char *address = NULL;
        unsigned calls = 50, warmup = 3, n_models = 0;
        uint64_t *round_trips, *walks, n_values = 0;
        int c, r;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'a':
                        address = optarg;
                        break;
                case 'n':
                        if (parse_unsigned(optarg, 1, CALLS_MAX, &calls) < 0) {
                                fprintf(stderr, "Invalid --calls=%s\n", optarg);
                                return EXIT_FAILURE;
                        }
                        break;
                case 'w':
                        if (parse_unsigned(optarg, 0, CALLS_MAX, &warmup) < 0) {
                                fprintf(stderr, "Invalid --warmup=%s\n", optarg);
                                return EXIT_FAILURE;
                        }
                        break;
                default:
                        return EXIT_FAILURE;
                }
        if (!address) {
                fprintf(stderr, "Usage: %s --address=ADDRESS [--calls=N] [--warmup=N]\n", argv[0]);
                return EXIT_FAILURE;
        }

        round_trips = calloc(calls, sizeof *round_trips);
        walks = calloc(calls, sizeof *walks);
        if (!round_trips || !walks)
                return EXIT_FAILURE;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0) {
                fprintf(stderr, "Cannot connect to %s: %s\n", address, strerror(-r));
                return EXIT_FAILURE;
        }

        for (unsigned i = 0; i < warmup + calls; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                uint64_t t0, t1, t2;

                t0 = now_ns();
                r = sd_bus_call_method(bus, "org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                                       "Status", &error, &reply, NULL);
                t1 = now_ns();
                if (r < 0) {
                        fprintf(stderr, "Status failed: %s\n", error.message ?: strerror(-r));
                        return EXIT_FAILURE;
                }
                n_values = 0;
                r = walk(reply, &n_values);
                t2 = now_ns();
                if (r < 0) {
                        fprintf(stderr, "Cannot read the reply: %s\n", strerror(-r));
                        return EXIT_FAILURE;
                }
                if (i < warmup)
                        continue;
                round_trips[i - warmup] = t1 - t0;
                walks[i - warmup] = t2 - t1;
                if (i + 1 == warmup + calls) {
                        r = count_models(reply, &n_models);
                        if (r < 0) {
                                fprintf(stderr, "Cannot count the models: %s\n", strerror(-r));
                                return EXIT_FAILURE;
                        }
                }
        }

        qsort(round_trips, calls, sizeof *round_trips, compare_u64);
        qsort(walks, calls, sizeof *walks, compare_u64);
        printf("calls=%u models=%u values=%" PRIu64 " min_us=%.0f median_us=%.0f p90_us=%.0f "
               "walk_median_us=%.0f\n",
               calls, n_models, n_values, round_trips[0] / 1e3, round_trips[calls / 2] / 1e3,
               round_trips[calls * 9 / 10] / 1e3, walks[calls / 2] / 1e3);
        free(round_trips);
        free(walks);
        return EXIT_SUCCESS;
}
