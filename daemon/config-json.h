/* SPDX-License-Identifier: MIT */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "json-scan.h"
#include "macro.h"

/* The small JSON files that describe a model (config.json and the
 * sentence-transformers files), read whole with cJSON: each is a few
 * hundred bytes, bounded here, unlike the headers and indexes json-scan.h
 * reads in place.
 *
 * Messages name the file and the member, and give numbers, never strings
 * of the file: they are shown to every local user, and the file may be
 * readable by its owner only. */

/* Far above any real one (a BERT config.json is under 1 KiB). */
#define CONFIG_JSON_SIZE_MAX (UINT64_C(1) << 20)

/* Sets *ret_error (when ret_error is not NULL) to the formatted message,
 * replacing what it held, and returns error (negative). "%m" names it. */
_printf_(3, 4) int config_json_error(char **ret_error, int error, const char *format, ...);

/* Parses length bytes of text (need not be NUL-terminated) as one JSON
 * value of the kind given (JSON_OBJECT or JSON_ARRAY), with nothing but
 * whitespace after it. file names it in messages. Refused with -EBADMSG:
 * over CONFIG_JSON_SIZE_MAX, not JSON (as json-scan.h reads it: RFC 8259,
 * valid UTF-8, no \u0000, nesting bounded), of another kind, an object
 * naming a member twice. -ENOMEM. */
int config_json_parse(const char *text, size_t length, const char *file, JsonKind kind, cJSON **ret,
                      char **ret_error);

static inline void cjson_deletep(cJSON **j) {
        if (*j)
                cJSON_Delete(*j);
}
#define _cleanup_cjson_ _cleanup_(cjson_deletep)

/* Members of an object. Each returns 0 with the value, -ENOENT (no
 * message) when the member is absent or null, -EBADMSG with a message when
 * it is of the wrong kind or out of bounds. */

/* A whole number from min to max. */
int config_json_uint(const cJSON *object, const char *file, const char *key, uint64_t min, uint64_t max,
                     uint64_t *ret, char **ret_error);
/* A finite number greater than above and at most max. */
int config_json_number(const cJSON *object, const char *file, const char *key, double above, double max,
                       double *ret, char **ret_error);
int config_json_bool(const cJSON *object, const char *file, const char *key, bool *ret, char **ret_error);
/* Valid UTF-8 of at most max bytes; points into the object. */
int config_json_string(const cJSON *object, const char *file, const char *key, size_t max, const char **ret,
                       char **ret_error);

/* Whether s is valid UTF-8 of at most max bytes. */
bool config_json_utf8_valid(const char *s, size_t max);
