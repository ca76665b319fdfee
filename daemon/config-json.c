/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config-json.h"

int config_json_error(char **ret_error, int error, const char *format, ...) {
        char *message;
        va_list ap;

        assert(error < 0);

        if (!ret_error)
                return error;

        errno = -error;
        va_start(ap, format);
        if (vasprintf(&message, format, ap) < 0)
                message = NULL;
        va_end(ap);

        free(*ret_error);
        *ret_error = message;
        return error;
}

/* cJSON takes what it does not understand in its own way (a \u0000 cuts a
 * string, invalid UTF-8 goes through, trailing text is ignored): the text
 * is first checked by the strict reader, with its bound on nesting. */
static int check_syntax(const char *text, size_t length, const char *file, JsonKind expected, char **ret_error) {
        JsonScan s = { .text = (const uint8_t *) text, .length = length };
        JsonKind kind;
        int r;

        r = json_skip_whitespace(&s);
        if (r >= 0)
                r = json_read_value(&s, &kind, NULL, NULL);
        if (r >= 0)
                r = json_skip_whitespace(&s);
        if (r >= 0 && s.pos < length)
                r = json_syntax_error_at(&s, s.pos, "more than whitespace after the JSON value");
        if (r == -EBADMSG)
                return config_json_error(ret_error, r, "%s is not valid JSON: %s at byte %zu.", file,
                                         s.syntax_error ?: "a syntax error", s.syntax_error_at);
        if (r < 0)
                return config_json_error(ret_error, r, "%s cannot be read: %m", file);
        if (kind != expected)
                return config_json_error(ret_error, -EBADMSG, "%s holds %s, not %s.", file,
                                         json_kind_to_string(kind), json_kind_to_string(expected));
        return 0;
}

static int compare_names(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* cJSON keeps every member of a name and answers with the first, Python's
 * json (which wrote the file, likely) with the last: a file that names a
 * member twice means two things, and is refused. Sorting keeps this
 * O(n log n) for an object of many members. Depth is bounded by the
 * syntax check. */
static int check_duplicates(const cJSON *item, const char *file, char **ret_error) {
        _cleanup_free_ const char **names = NULL;
        const cJSON *child;
        size_t n = 0;
        int r;

        cJSON_ArrayForEach(child, item) {
                r = check_duplicates(child, file, ret_error);
                if (r < 0)
                        return r;
        }
        if (!cJSON_IsObject(item))
                return 0;

        names = malloc(MAX((size_t) cJSON_GetArraySize(item), 1U) * sizeof *names);
        if (!names)
                return -ENOMEM;
        cJSON_ArrayForEach(child, item)
                names[n++] = child->string;
        qsort(names, n, sizeof *names, compare_names);
        for (size_t i = 1; i < n; i++)
                if (strcmp(names[i - 1], names[i]) == 0)
                        return config_json_error(ret_error, -EBADMSG, "%s names a member twice in one object.",
                                                 file);
        return 0;
}

int config_json_parse(const char *text, size_t length, const char *file, JsonKind kind, cJSON **ret,
                      char **ret_error) {
        cJSON *json;
        int r;

        assert(text || length == 0);
        assert(file);
        assert(ret);

        if (length > CONFIG_JSON_SIZE_MAX)
                return config_json_error(ret_error, -EBADMSG, "%s is larger than %" PRIu64 " bytes.", file,
                                         CONFIG_JSON_SIZE_MAX);

        assert(kind == JSON_OBJECT || kind == JSON_ARRAY);
        r = check_syntax(text ?: "", length, file, kind, ret_error);
        if (r < 0)
                return r;

        json = cJSON_ParseWithLength(text, length);
        if (!json)
                /* The text is valid JSON: only memory can have failed. */
                return config_json_error(ret_error, -ENOMEM, "%s cannot be read: %m", file);

        r = check_duplicates(json, file, ret_error);
        if (r < 0) {
                cJSON_Delete(json);
                return r;
        }

        *ret = json;
        return 0;
}

static const cJSON *member(const cJSON *object, const char *key) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);

        return cJSON_IsNull(item) ? NULL : item;
}

int config_json_uint(const cJSON *object, const char *file, const char *key, uint64_t min, uint64_t max,
                     uint64_t *ret, char **ret_error) {
        const cJSON *item = member(object, key);
        double v;

        assert(min <= max && max <= JSON_EXACT_INTEGER_MAX);

        if (!item)
                return -ENOENT;
        v = cJSON_GetNumberValue(item);
        if (!cJSON_IsNumber(item) || !isfinite(v) || v != floor(v) || v < (double) min || v > (double) max)
                return config_json_error(ret_error, -EBADMSG, "%s: %s must be a whole number from %" PRIu64
                                         " to %" PRIu64 ".", file, key, min, max);
        *ret = (uint64_t) v;
        return 0;
}

int config_json_number(const cJSON *object, const char *file, const char *key, double above, double max,
                       double *ret, char **ret_error) {
        const cJSON *item = member(object, key);
        double v;

        if (!item)
                return -ENOENT;
        v = cJSON_GetNumberValue(item);
        if (!cJSON_IsNumber(item) || !isfinite(v) || v <= above || v > max)
                return config_json_error(ret_error, -EBADMSG, "%s: %s must be a number above %g and at most %g.",
                                         file, key, above, max);
        *ret = v;
        return 0;
}

int config_json_bool(const cJSON *object, const char *file, const char *key, bool *ret, char **ret_error) {
        const cJSON *item = member(object, key);

        if (!item)
                return -ENOENT;
        if (!cJSON_IsBool(item))
                return config_json_error(ret_error, -EBADMSG, "%s: %s must be true or false.", file, key);
        *ret = cJSON_IsTrue(item);
        return 0;
}

bool config_json_utf8_valid(const char *s, size_t max) {
        size_t n = strnlen(s, max + 1);

        if (n > max)
                return false;
        for (size_t i = 0; i < n;) {
                size_t k = json_utf8_sequence_length((const uint8_t *) s + i, n - i);
                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}

int config_json_string(const cJSON *object, const char *file, const char *key, size_t max, const char **ret,
                       char **ret_error) {
        const cJSON *item = member(object, key);
        const char *s;

        if (!item)
                return -ENOENT;
        s = cJSON_GetStringValue(item);
        if (!s)
                return config_json_error(ret_error, -EBADMSG, "%s: %s must be a string.", file, key);
        if (!config_json_utf8_valid(s, max))
                return config_json_error(ret_error, -EBADMSG, "%s: %s is longer than %zu bytes.", file, key, max);
        *ret = s;
        return 0;
}
