/* SPDX-License-Identifier: MIT */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <systemd/sd-bus.h>

#include "macro.h"

/* D-Bus values as JSON, and JSON output in the mode --json= chose.
 *
 * Integers are kept exact: they are stored as raw JSON number text (cJSON
 * would otherwise hold them in a double), so read them back with the
 * json_get_*() helpers below rather than with cJSON's valuedouble. */

static inline void cjson_deletep(cJSON **j) {
        if (*j)
                cJSON_Delete(*j);
}
#define _cleanup_json_ _cleanup_(cjson_deletep)

/* Reads the next complete value of m (any type but file descriptors): a
 * dictionary with string keys becomes an object, other arrays and structs
 * arrays, variants their content, numbers, booleans and strings themselves. */
int bus_message_read_json(sd_bus_message *m, cJSON **ret);

/* Integers that stay exact. NULL on allocation failure. */
cJSON *json_add_u64(cJSON *object, const char *key, uint64_t v);
cJSON *json_add_i64(cJSON *object, const char *key, int64_t v);
cJSON *json_create_u64(uint64_t v);

/* Members of an object, with a fallback when the key is missing or of
 * another type. */
uint64_t json_get_u64(const cJSON *object, const char *key, uint64_t fallback);
int64_t json_get_i64(const cJSON *object, const char *key, int64_t fallback);
double json_get_double(const cJSON *object, const char *key, double fallback);
bool json_get_bool(const cJSON *object, const char *key, bool fallback);
const char *json_get_string(const cJSON *object, const char *key, const char *fallback);

/* Writes j to f, compact (one line) or indented as --json= says, with a
 * newline, and flushes. Returns 0, or a negative errno after saying what
 * failed (but nothing for EPIPE: the reader went away). */
int json_print(const cJSON *j, FILE *f);
