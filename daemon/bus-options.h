/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

#include "precision.h"

/* Method options given as a D-Bus a{sv}, read by a table that names each
 * option, what it holds and where in the caller's struct it goes.
 *
 * Integer options take every D-Bus integer type (y n q i u x t) and check the
 * value, not the type: callers in other languages often cannot choose
 * (dbus-python sends a plain int as 'i', and so does GVariant text "<30>"),
 * and a type error for a value in range helps nobody. The interface document
 * names the preferred type ('x' or 't'). Booleans and strings must have their
 * own type, 'b' and 's'. */

typedef enum BusOptionType {
        BUS_OPTION_BOOLEAN,   /* 'b' into a bool */
        BUS_OPTION_TRISTATE,  /* 'b' into an int, 0 or 1; left as it is (say -1) when not given */
        BUS_OPTION_INT64,     /* any integer into an int64_t, in int64.min .. int64.max */
        BUS_OPTION_UINT64,    /* any integer into a uint64_t, in uint64.min .. uint64.max */
        BUS_OPTION_STRING,    /* 's' into a const char * that points into the message */
} BusOptionType;

typedef struct BusOption {
        const char *name;
        BusOptionType type;
        size_t offset;                  /* of the option's field in the caller's struct */
        union {
                struct {
                        int64_t min, max;
                        /* Non-NULL: -1 is accepted too, and means this
                         * (e.g. "never unload"); errors say so. */
                        const char *minus_one;
                        const char *unit;       /* for errors: "between 1 and 60 seconds" */
                } int64;
                struct {
                        uint64_t min, max;
                        const char *unit;
                } uint64;
                struct {
                        size_t max_length;      /* in bytes */
                } string;
        };
} BusOption;

/* Entries a table may have (options seen are tracked in a 64-bit mask). */
#define BUS_OPTIONS_MAX 64U

/* Reads an a{sv} from message into the struct at options, as table (ended
 * by an entry whose name is NULL) describes. Options not given leave their
 * fields as they are: fill the struct with the defaults first. An unknown,
 * repeated, ill-typed or out-of-range option is InvalidArgs with a message
 * that names it; fields read before it may have been written by then.
 * Returns 0, or a negative errno (with error set for the caller's mistakes). */
int bus_options_read(sd_bus_message *message, const BusOption *table, void *options, sd_bus_error *error);

/* The options of org.mpool.Manager's methods. */

/* A keep-alive longer than ten years is a mistake, not a wish. */
#define KEEP_ALIVE_SEC_MAX (INT64_C(10) * 366 * 24 * 3600)

typedef struct RequestOptions {
        int64_t keep_alive_sec;   /* KEEP_ALIVE_DEFAULT when not given */
        bool pin;
        bool force;
        const char *precision_name;   /* as given, pointing into the message */
        Precision precision;      /* _PRECISION_INVALID when not given */
        uint64_t max_workers;     /* 0 when not given */
} RequestOptions;

/* Load: keep_alive_sec, pin, precision (s: "f32", "f16", "q8", "q4"),
 * max_workers (any integer type, 1..CONFIG_MAX_WORKERS_MAX). */
extern const BusOption request_options_load[];
/* Unload, UnloadAll: force. */
extern const BusOption request_options_unload[];

/* bus_options_read() from the defaults; *ret is untouched on failure. */
int request_options_read(sd_bus_message *message, const BusOption *table, RequestOptions *ret,
                         sd_bus_error *error);

/* Pull and Inspect: "revision" (default "main", download_revision_validate())
 * and "token" (one line, not empty, at most HUB_TOKEN_MAX bytes), both
 * pointing into the message. *ret is untouched on failure. */
typedef struct HubOptions {
        const char *revision;
        const char *token;        /* NULL: none given */
} HubOptions;

int hub_options_read(sd_bus_message *message, HubOptions *ret, sd_bus_error *error);
