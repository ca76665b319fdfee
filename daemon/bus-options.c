/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bus-options.h"
#include "download.h"
#include "config.h"
#include "hub-token.h"
#include "macro.h"
#include "pool.h"

const BusOption request_options_load[] = {
        { "keep_alive_sec", BUS_OPTION_INT64, offsetof(RequestOptions, keep_alive_sec),
          .int64 = { .min = 1, .max = KEEP_ALIVE_SEC_MAX, .minus_one = "never unload", .unit = "seconds" } },
        { "pin", BUS_OPTION_BOOLEAN, offsetof(RequestOptions, pin) },
        { "precision", BUS_OPTION_STRING, offsetof(RequestOptions, precision_name), .string.max_length = 16 },
        { "max_workers", BUS_OPTION_UINT64, offsetof(RequestOptions, max_workers),
          .uint64 = { .min = 1, .max = CONFIG_MAX_WORKERS_MAX, .unit = "workers" } },
        {}
};

const BusOption request_options_unload[] = {
        { "force", BUS_OPTION_BOOLEAN, offsetof(RequestOptions, force) },
        {}
};

/* An integer of any D-Bus integer type, as the two 64-bit types can hold it. */
typedef struct BusInteger {
        int64_t i;
        uint64_t u;
        bool fits_int64;
        bool fits_uint64;
        char text[24];      /* as the caller sent it, for errors */
} BusInteger;

static bool type_is_integer(const char *signature) {
        return signature[0] != '\0' && signature[1] == '\0' && strchr("ynqiuxt", signature[0]);
}

static void integer_from_signed(int64_t v, BusInteger *ret) {
        *ret = (BusInteger) { .i = v, .u = (uint64_t) v, .fits_int64 = true, .fits_uint64 = v >= 0 };
        snprintf(ret->text, sizeof ret->text, "%" PRIi64, v);
}

static void integer_from_unsigned(uint64_t v, BusInteger *ret) {
        *ret = (BusInteger) { .i = (int64_t) v, .u = v, .fits_int64 = v <= INT64_MAX, .fits_uint64 = true };
        snprintf(ret->text, sizeof ret->text, "%" PRIu64, v);
}

/* Reads the basic integer of type `type` at the message's read position. */
static int read_integer(sd_bus_message *message, char type, BusInteger *ret) {
        union {
                uint8_t y;
                int16_t n;
                uint16_t q;
                int32_t i;
                uint32_t u;
                int64_t x;
                uint64_t t;
        } v;
        int r;

        r = sd_bus_message_read_basic(message, type, &v);
        if (r < 0)
                return r;

        switch (type) {
        case 'y': integer_from_unsigned(v.y, ret); break;
        case 'n': integer_from_signed(v.n, ret); break;
        case 'q': integer_from_unsigned(v.q, ret); break;
        case 'i': integer_from_signed(v.i, ret); break;
        case 'u': integer_from_unsigned(v.u, ret); break;
        case 'x': integer_from_signed(v.x, ret); break;
        case 't': integer_from_unsigned(v.t, ret); break;
        default: return -EINVAL;
        }
        return 0;
}

static int range_error(const BusOption *o, const BusInteger *v, sd_bus_error *error) {
        char range[128];
        const char *unit;

        if (o->type == BUS_OPTION_INT64) {
                unit = o->int64.unit;
                snprintf(range, sizeof range, "%s%s%sbetween %" PRIi64 " and %" PRIi64,
                         o->int64.minus_one ? "-1 (" : "", strempty(o->int64.minus_one),
                         o->int64.minus_one ? ") or " : "", o->int64.min, o->int64.max);
        } else {
                unit = o->uint64.unit;
                snprintf(range, sizeof range, "between %" PRIu64 " and %" PRIu64, o->uint64.min, o->uint64.max);
        }

        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' must be %s%s%s, not %s.",
                                 o->name, range, unit ? " " : "", strempty(unit), v->text);
}

static int store_integer(const BusOption *o, const BusInteger *v, void *field, sd_bus_error *error) {
        if (o->type == BUS_OPTION_INT64) {
                if (!v->fits_int64 ||
                    (!(o->int64.minus_one && v->i == -1) && (v->i < o->int64.min || v->i > o->int64.max)))
                        return range_error(o, v, error);
                *(int64_t *) field = v->i;
        } else {
                if (!v->fits_uint64 || v->u < o->uint64.min || v->u > o->uint64.max)
                        return range_error(o, v, error);
                *(uint64_t *) field = v->u;
        }
        return 0;
}

static int unknown_option(const BusOption *table, const char *key, sd_bus_error *error) {
        char known[256] = "";
        size_t n = 0;

        /* Tables are short; a longer list would only be cut short. */
        for (const BusOption *o = table; o->name && n < sizeof known; o++)
                n += (size_t) snprintf(known + n, sizeof known - n, "%s%s", n > 0 ? ", " : "", o->name);

        if (n == 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Unknown option '%.64s': this call takes no options.", key);
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%.64s' (known: %s).", key,
                                 known);
}

/* Reads the variant at the read position into the option's field. */
static int read_value(sd_bus_message *message, const BusOption *o, void *options, sd_bus_error *error) {
        void *field = (uint8_t *) options + o->offset;
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(message, &type, &contents);
        if (r < 0)
                return r;
        if (type != 'v')
                return -EINVAL;   /* the a{sv} signature was checked on entry */

        switch (o->type) {
        case BUS_OPTION_BOOLEAN:
        case BUS_OPTION_TRISTATE: {
                int b;

                if (strcmp(contents, "b") != 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be of type 'b', not '%.16s'.", o->name, contents);
                r = sd_bus_message_read(message, "v", "b", &b);
                if (r < 0)
                        return r;
                if (o->type == BUS_OPTION_TRISTATE)
                        *(int *) field = !!b;
                else
                        *(bool *) field = b;
                return 0;
        }

        case BUS_OPTION_INT64:
        case BUS_OPTION_UINT64: {
                BusInteger v;

                if (!type_is_integer(contents))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be an integer (of type '%c'; any of y, n, q, "
                                                 "i, u, x, t is accepted), not of type '%.16s'.", o->name,
                                                 o->type == BUS_OPTION_INT64 ? 'x' : 't', contents);
                r = sd_bus_message_enter_container(message, 'v', contents);
                if (r < 0)
                        return r;
                r = read_integer(message, contents[0], &v);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(message);
                if (r < 0)
                        return r;
                return store_integer(o, &v, field, error);
        }

        case BUS_OPTION_STRING: {
                const char *s;
                size_t n;

                if (strcmp(contents, "s") != 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be of type 's', not '%.16s'.", o->name, contents);
                r = sd_bus_message_read(message, "v", "s", &s);
                if (r < 0)
                        return r;
                n = strnlen(s, o->string.max_length + 1);
                if (n > o->string.max_length)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' is longer than %zu bytes.", o->name,
                                                 o->string.max_length);
                *(const char **) field = s;
                return 0;
        }
        }

        assert(!"unknown BusOptionType");
        return -EINVAL;
}

int bus_options_read(sd_bus_message *message, const BusOption *table, void *options, sd_bus_error *error) {
        uint64_t seen = 0;
        int r;

        assert(message);
        assert(table);
        assert(options);

        r = sd_bus_message_enter_container(message, 'a', "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(message, 'e', "sv")) > 0) {
                const BusOption *o;
                const char *key;
                size_t i;

                r = sd_bus_message_read(message, "s", &key);
                if (r < 0)
                        return r;

                for (o = table, i = 0; o->name; o++, i++)
                        if (strcmp(key, o->name) == 0)
                                break;
                if (!o->name)
                        return unknown_option(table, key, error);
                assert(i < BUS_OPTIONS_MAX);
                if (seen & (UINT64_C(1) << i))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' is given twice.", key);
                seen |= UINT64_C(1) << i;

                r = read_value(message, o, options, error);
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(message);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;

        r = sd_bus_message_exit_container(message);
        return r < 0 ? r : 0;
}

int request_options_read(sd_bus_message *message, const BusOption *table, RequestOptions *ret,
                         sd_bus_error *error) {
        RequestOptions options = { .keep_alive_sec = KEEP_ALIVE_DEFAULT, .precision = _PRECISION_INVALID };
        int r;

        r = bus_options_read(message, table, &options, error);
        if (r < 0)
                return r;
        if (options.precision_name) {
                options.precision = precision_from_string(options.precision_name);
                if (options.precision == _PRECISION_INVALID)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option 'precision' must be one of f32, f16, q8 and q4.");
        }

        *ret = options;
        return 0;
}

static const BusOption hub_options[] = {
        { "revision", BUS_OPTION_STRING, offsetof(HubOptions, revision), .string.max_length = DOWNLOAD_REVISION_MAX },
        { "token",    BUS_OPTION_STRING, offsetof(HubOptions, token),    .string.max_length = HUB_TOKEN_MAX },
        {}
};

int hub_options_read(sd_bus_message *message, HubOptions *ret, sd_bus_error *error) {
        HubOptions options = { .revision = "main" };
        int r;

        r = bus_options_read(message, hub_options, &options, error);
        if (r < 0)
                return r;
        if (download_revision_validate(options.revision) < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid option \"revision\": 1 to %u characters of A-Z a-z 0-9 . _ / -, "
                                         "without \"..\".", DOWNLOAD_REVISION_MAX);
        if (options.token && (options.token[0] == '\0' || strpbrk(options.token, "\n\r")))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Invalid option \"token\": empty or more than one line.");

        *ret = options;
        return 0;
}
