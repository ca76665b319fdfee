/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "json-out.h"
#include "terminal.h"

static cJSON *json_raw_number(const char *format, ...) _printf_(1, 2);
static cJSON *json_raw_number(const char *format, ...) {
        char buf[32];
        va_list ap;

        va_start(ap, format);
        vsnprintf(buf, sizeof buf, format, ap);
        va_end(ap);
        return cJSON_CreateRaw(buf);
}

cJSON *json_create_u64(uint64_t v) {
        return json_raw_number("%" PRIu64, v);
}

static cJSON *json_create_i64(int64_t v) {
        return json_raw_number("%" PRIi64, v);
}

static cJSON *add_item(cJSON *object, const char *key, cJSON *item) {
        if (!item)
                return NULL;
        if (!cJSON_AddItemToObject(object, key, item)) {
                cJSON_Delete(item);
                return NULL;
        }
        return item;
}

cJSON *json_add_u64(cJSON *object, const char *key, uint64_t v) {
        return add_item(object, key, json_create_u64(v));
}

cJSON *json_add_i64(cJSON *object, const char *key, int64_t v) {
        return add_item(object, key, json_create_i64(v));
}

static int read_basic(sd_bus_message *m, char type, cJSON **ret) {
        union {
                uint8_t u8;
                int16_t i16;
                uint16_t u16;
                int32_t i32;
                uint32_t u32;
                int64_t i64;
                uint64_t u64;
                double d;
                int b;
                const char *s;
        } v;
        cJSON *j;
        int r;

        r = sd_bus_message_read_basic(m, type, &v);
        if (r < 0)
                return r;

        switch (type) {
        case SD_BUS_TYPE_BYTE:
                j = json_create_u64(v.u8);
                break;
        case SD_BUS_TYPE_INT16:
                j = json_create_i64(v.i16);
                break;
        case SD_BUS_TYPE_UINT16:
                j = json_create_u64(v.u16);
                break;
        case SD_BUS_TYPE_INT32:
                j = json_create_i64(v.i32);
                break;
        case SD_BUS_TYPE_UINT32:
                j = json_create_u64(v.u32);
                break;
        case SD_BUS_TYPE_INT64:
                j = json_create_i64(v.i64);
                break;
        case SD_BUS_TYPE_UINT64:
                j = json_create_u64(v.u64);
                break;
        case SD_BUS_TYPE_DOUBLE:
                j = cJSON_CreateNumber(v.d);
                break;
        case SD_BUS_TYPE_BOOLEAN:
                j = cJSON_CreateBool(v.b);
                break;
        case SD_BUS_TYPE_STRING:
        case SD_BUS_TYPE_OBJECT_PATH:
        case SD_BUS_TYPE_SIGNATURE:
                j = cJSON_CreateString(v.s);
                break;
        default:
                return -EOPNOTSUPP;
        }
        if (!j)
                return -ENOMEM;
        *ret = j;
        return 0;
}

static int read_container(sd_bus_message *m, char type, const char *contents, cJSON **ret) {
        _cleanup_json_ cJSON *j = NULL;
        bool dict = type == SD_BUS_TYPE_ARRAY && contents[0] == SD_BUS_TYPE_DICT_ENTRY_BEGIN &&
                    contents[1] == SD_BUS_TYPE_STRING;
        int r;

        j = dict ? cJSON_CreateObject() : cJSON_CreateArray();
        if (!j)
                return -ENOMEM;

        r = sd_bus_message_enter_container(m, type, contents);
        if (r < 0)
                return r;

        for (;;) {
                _cleanup_json_ cJSON *item = NULL;

                if (dict) {
                        _cleanup_free_ char *entry = NULL;
                        const char *key;

                        /* contents is "{s…}": the entry's signature is what is inside the braces. */
                        entry = strndup(contents + 1, strlen(contents) - 2);
                        if (!entry)
                                return -ENOMEM;
                        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, entry);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                break;
                        r = sd_bus_message_read_basic(m, SD_BUS_TYPE_STRING, &key);
                        if (r < 0)
                                return r;
                        r = bus_message_read_json(m, &item);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                        /* Replace rather than duplicate a repeated key. */
                        if (cJSON_GetObjectItemCaseSensitive(j, key))
                                cJSON_DeleteItemFromObjectCaseSensitive(j, key);
                        if (!cJSON_AddItemToObject(j, key, item))
                                return -ENOMEM;
                        TAKE_PTR(item);
                } else {
                        r = sd_bus_message_at_end(m, false);
                        if (r < 0)
                                return r;
                        if (r > 0)
                                break;
                        r = bus_message_read_json(m, &item);
                        if (r < 0)
                                return r;
                        if (!cJSON_AddItemToArray(j, item))
                                return -ENOMEM;
                        TAKE_PTR(item);
                }
        }

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(j);
        return 0;
}

int bus_message_read_json(sd_bus_message *m, cJSON **ret) {
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENXIO;

        switch (type) {
        case SD_BUS_TYPE_VARIANT: {
                cJSON *j;

                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
                if (r < 0)
                        return r;
                r = bus_message_read_json(m, &j);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0) {
                        cJSON_Delete(j);
                        return r;
                }
                *ret = j;
                return 0;
        }
        case SD_BUS_TYPE_ARRAY:
        case SD_BUS_TYPE_STRUCT:
        case SD_BUS_TYPE_DICT_ENTRY:    /* of a dictionary whose keys are not strings: a pair */
                return read_container(m, type, contents, ret);
        case SD_BUS_TYPE_UNIX_FD:
                return -EOPNOTSUPP;
        default:
                return read_basic(m, type, ret);
        }
}

static const cJSON *member(const cJSON *object, const char *key) {
        return object ? cJSON_GetObjectItemCaseSensitive(object, key) : NULL;
}

uint64_t json_get_u64(const cJSON *object, const char *key, uint64_t fallback) {
        const cJSON *j = member(object, key);
        char *end;
        uint64_t v;

        if (cJSON_IsRaw(j) && j->valuestring && j->valuestring[0] != '-') {
                errno = 0;
                v = strtoull(j->valuestring, &end, 10);
                if (errno == 0 && end != j->valuestring && *end == 0)
                        return v;
        } else if (cJSON_IsNumber(j) && j->valuedouble >= 0 && j->valuedouble < 18446744073709551616.0)
                return (uint64_t) j->valuedouble;
        return fallback;
}

int64_t json_get_i64(const cJSON *object, const char *key, int64_t fallback) {
        const cJSON *j = member(object, key);
        char *end;
        int64_t v;

        if (cJSON_IsRaw(j) && j->valuestring) {
                errno = 0;
                v = strtoll(j->valuestring, &end, 10);
                if (errno == 0 && end != j->valuestring && *end == 0)
                        return v;
        } else if (cJSON_IsNumber(j) && j->valuedouble >= -9223372036854775808.0 &&
                   j->valuedouble < 9223372036854775808.0)
                return (int64_t) j->valuedouble;
        return fallback;
}

double json_get_double(const cJSON *object, const char *key, double fallback) {
        const cJSON *j = member(object, key);

        if (cJSON_IsNumber(j))
                return j->valuedouble;
        if (cJSON_IsRaw(j) && j->valuestring) {
                char *end;
                double v = strtod(j->valuestring, &end);

                if (end != j->valuestring && *end == 0)
                        return v;
        }
        return fallback;
}

bool json_get_bool(const cJSON *object, const char *key, bool fallback) {
        const cJSON *j = member(object, key);

        return cJSON_IsBool(j) ? cJSON_IsTrue(j) : fallback;
}

const char *json_get_string(const cJSON *object, const char *key, const char *fallback) {
        const cJSON *j = member(object, key);

        return cJSON_IsString(j) && j->valuestring ? j->valuestring : fallback;
}

int json_print(const cJSON *j, FILE *f) {
        _cleanup_free_ char *text = NULL;
        int r;

        text = arg_json == JSON_PRETTY ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
        if (!text)
                return print_oom();
        fputs(text, f);
        fputc('\n', f);
        r = fflush_and_check(f);
        if (r < 0)
                return print_output_error(r);
        return 0;
}
