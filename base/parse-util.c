/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "mpool-bus.h"
#include "parse-util.h"

static bool char_is_digit(char c) {
        return c >= '0' && c <= '9';
}

static bool char_is_blank(char c) {
        return c == ' ' || c == '\t';
}

/* The parsers allow whitespace only between a number and its unit; callers
 * that want to be lenient strip their input first (inih does). */
static bool has_outer_blank(const char *s) {
        size_t n = strlen(s);

        return n > 0 && (char_is_blank(s[0]) || char_is_blank(s[n - 1]));
}

/* Reads a run of digits, saturating at UINT64_MAX and flagging the overflow
 * rather than failing at once, so that junk after a huge number is still
 * reported as -EINVAL. */
static const char *scan_digits(const char *p, uint64_t *ret_value, bool *ret_overflow) {
        uint64_t v = 0;
        bool overflow = false;

        for (; char_is_digit(*p); p++) {
                unsigned d = (unsigned) (*p - '0');

                if (v > (UINT64_MAX - d) / 10) {
                        overflow = true;
                        v = UINT64_MAX;
                } else if (!overflow)
                        v = v * 10 + d;
        }

        *ret_value = v;
        *ret_overflow = overflow;
        return p;
}

static const struct {
        const char *suffix;
        uint64_t factor;
} size_units[] = {
        { "B",   UINT64_C(1) },
        { "K",   UINT64_C(1) << 10 },
        { "KiB", UINT64_C(1) << 10 },
        { "M",   UINT64_C(1) << 20 },
        { "MiB", UINT64_C(1) << 20 },
        { "G",   UINT64_C(1) << 30 },
        { "GiB", UINT64_C(1) << 30 },
        { "T",   UINT64_C(1) << 40 },
        { "TiB", UINT64_C(1) << 40 },
};

/* Fractional digits beyond this many are ignored: they amount to less than
 * 1100 bytes even for "T", and keeping the fraction below 10^9 keeps the
 * arithmetic below in 64 bits. */
#define SIZE_FRACTION_DIGITS_MAX 9

int parse_size(const char *s, uint64_t *ret_bytes) {
        uint64_t whole, fraction = 0, fraction_scale = 1, factor = 1, bytes, fraction_bytes;
        bool overflow, has_fraction = false;
        const char *p;

        assert(s);
        assert(ret_bytes);

        if (!char_is_digit(s[0]) || has_outer_blank(s))
                return -EINVAL;

        p = scan_digits(s, &whole, &overflow);

        if (*p == '.') {
                unsigned n;

                p++;
                if (!char_is_digit(*p))
                        return -EINVAL;
                for (n = 0; char_is_digit(*p); p++, n++)
                        if (n < SIZE_FRACTION_DIGITS_MAX) {
                                fraction = fraction * 10 + (uint64_t) (*p - '0');
                                fraction_scale *= 10;
                        }
                has_fraction = true;
        }

        p += strspn(p, " \t");
        if (*p != '\0') {
                size_t i;

                for (i = 0; i < ELEMENTSOF(size_units); i++)
                        if (strcmp(p, size_units[i].suffix) == 0)
                                break;
                if (i >= ELEMENTSOF(size_units))
                        return -EINVAL;
                factor = size_units[i].factor;
        }

        /* A fraction of a byte is meaningless. */
        if (has_fraction && factor == 1)
                return -EINVAL;

        if (overflow || whole > UINT64_MAX / factor)
                return -ERANGE;
        bytes = whole * factor;

        /* fraction/fraction_scale * factor, split so that neither product
         * overflows: fraction < 10^9 and factor % fraction_scale < 10^9. */
        fraction_bytes = fraction * (factor / fraction_scale) +
                         fraction * (factor % fraction_scale) / fraction_scale;
        if (bytes > UINT64_MAX - fraction_bytes)
                return -ERANGE;

        *ret_bytes = bytes + fraction_bytes;
        return 0;
}

/* "50", "12.5", "0.25" (the part before '%') in permyriad. */
static int parse_permyriad(const char *s, size_t n, uint32_t *ret) {
        uint64_t whole = 0, hundredths = 0;
        const char *p = s, *end = s + n;
        unsigned decimals = 0;

        if (p >= end || !char_is_digit(*p))
                return -EINVAL;

        for (; p < end && char_is_digit(*p); p++)
                whole = MIN(whole * 10 + (uint64_t) (*p - '0'), UINT64_C(1000)); /* saturate above 100 */

        if (p < end && *p == '.') {
                p++;
                if (p >= end || !char_is_digit(*p))
                        return -EINVAL;
                for (; p < end && char_is_digit(*p); p++) {
                        if (++decimals > 2)
                                return -EINVAL; /* finer than permyriad */
                        hundredths = hundredths * 10 + (uint64_t) (*p - '0');
                }
                if (decimals == 1)
                        hundredths *= 10;
        }

        while (p < end && char_is_blank(*p))
                p++;
        if (p != end)
                return -EINVAL;

        if (whole * 100 + hundredths > PERMYRIAD_MAX)
                return -ERANGE;

        *ret = (uint32_t) (whole * 100 + hundredths);
        return 0;
}

int parse_size_or_percent(const char *s, SizeOrPercent *ret) {
        size_t n;
        int r;

        assert(s);
        assert(ret);

        n = strlen(s);
        if (n > 0 && s[n - 1] == '%') {
                uint32_t permyriad;

                if (has_outer_blank(s))
                        return -EINVAL;
                r = parse_permyriad(s, n - 1, &permyriad);
                if (r < 0)
                        return r;

                *ret = (SizeOrPercent) { .is_percent = true, .permyriad = permyriad };
                return 0;
        }

        uint64_t bytes;
        r = parse_size(s, &bytes);
        if (r < 0)
                return r;

        *ret = (SizeOrPercent) { .is_percent = false, .bytes = bytes };
        return 0;
}

uint64_t size_or_percent_resolve(const SizeOrPercent *v, uint64_t total) {
        assert(v);

        if (!v->is_percent)
                return v->bytes;

        assert(v->permyriad <= PERMYRIAD_MAX);

        /* total * permyriad / 10000 without overflowing the product. */
        return total / PERMYRIAD_MAX * v->permyriad +
               total % PERMYRIAD_MAX * v->permyriad / PERMYRIAD_MAX;
}

static const struct {
        const char *suffix;
        uint64_t seconds;
} duration_units[] = {
        { "s",       1 },
        { "sec",     1 },
        { "second",  1 },
        { "seconds", 1 },
        { "m",       60 },
        { "min",     60 },
        { "minute",  60 },
        { "minutes", 60 },
        { "h",       3600 },
        { "hr",      3600 },
        { "hour",    3600 },
        { "hours",   3600 },
        { "d",       86400 },
        { "day",     86400 },
        { "days",    86400 },
        { "w",       604800 },
        { "week",    604800 },
        { "weeks",   604800 },
};

static bool char_is_lower(char c) {
        return c >= 'a' && c <= 'z';
}

int parse_duration_sec(const char *s, int64_t *ret_sec) {
        uint64_t total = 0;
        bool out_of_range = false;
        const char *p = s;

        assert(s);
        assert(ret_sec);

        if (strcmp(s, "infinity") == 0) {
                *ret_sec = -1;
                return 0;
        }

        if (!char_is_digit(s[0]) || has_outer_blank(s))
                return -EINVAL;

        while (*p != '\0') {
                uint64_t n, factor = 1;
                bool overflow;
                size_t k;

                if (!char_is_digit(*p))
                        return -EINVAL;
                p = scan_digits(p, &n, &overflow);
                p += strspn(p, " \t");

                for (k = 0; char_is_lower(p[k]); k++)
                        ;
                if (k > 0) {
                        size_t i;

                        for (i = 0; i < ELEMENTSOF(duration_units); i++)
                                if (strlen(duration_units[i].suffix) == k &&
                                    strncmp(p, duration_units[i].suffix, k) == 0)
                                        break;
                        if (i >= ELEMENTSOF(duration_units))
                                return -EINVAL;
                        factor = duration_units[i].seconds;
                        p += k;
                }
                p += strspn(p, " \t");

                /* Keep checking the syntax of the rest even once too large. */
                if (overflow || n > (uint64_t) DURATION_SEC_MAX / factor)
                        out_of_range = true;
                else {
                        total += n * factor;
                        if (total > (uint64_t) DURATION_SEC_MAX)
                                out_of_range = true;
                }
        }

        if (out_of_range || total < 1)
                return -ERANGE;

        *ret_sec = (int64_t) total;
        return 0;
}

int parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret) {
        uint64_t v;
        bool overflow;
        const char *p;

        assert(s);
        assert(ret);
        assert(min <= max);

        if (!char_is_digit(s[0]))
                return -EINVAL;

        p = scan_digits(s, &v, &overflow);
        if (*p != '\0')
                return -EINVAL;
        if (overflow || v < min || v > max)
                return -ERANGE;

        *ret = (unsigned) v;
        return 0;
}

int parse_boolean(const char *s) {
        static const char *const yes[] = { "1", "yes", "true", "on" };
        static const char *const no[] = { "0", "no", "false", "off" };

        assert(s);

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcasecmp(s, yes[i]) == 0)
                        return 1;
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcasecmp(s, no[i]) == 0)
                        return 0;

        return -EINVAL;
}

/* Model names reach error messages from untrusted callers: escape anything
 * that could mess with a terminal or a log line. */
static char *escape_bytes(const char *s, size_t n) {
        char *buf, *q;

        buf = malloc(n * 4 + 1);
        if (!buf)
                return NULL;

        q = buf;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) s[i];

                if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\')
                        *q++ = (char) c;
                else
                        q += sprintf(q, "\\x%02x", c);
        }
        *q = '\0';

        return buf;
}

/* Sets *ret_error to "segment N of 'NAME': REASON", "'NAME': REASON" when
 * segment is 0, or "REASON" when name is NULL, and returns -EINVAL; -ENOMEM
 * if the message cannot be built. */
_printf_(4, 5)
static int name_error(char **ret_error, const char *name, unsigned segment, const char *format, ...) {
        _cleanup_free_ char *shown = NULL, *reason = NULL;
        char *message;
        va_list ap;
        int r;

        if (!ret_error)
                return -EINVAL;

        va_start(ap, format);
        r = vasprintf(&reason, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        if (!name) {
                *ret_error = TAKE_PTR(reason);
                return -EINVAL;
        }

        shown = escape_bytes(name, strlen(name));
        if (!shown)
                return -ENOMEM;

        if (segment > 0)
                r = asprintf(&message, "segment %u of '%s': %s", segment, shown, reason);
        else
                r = asprintf(&message, "'%s': %s", shown, reason);
        if (r < 0)
                return -ENOMEM;

        *ret_error = message;
        return -EINVAL;
}

static bool char_is_name_start(char c) {
        return char_is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool char_is_name(char c) {
        return char_is_name_start(c) || c == '.' || c == '_' || c == '-';
}

int model_name_validate(const char *name, char **ret_error) {
        const char *segment_start;
        size_t length;
        unsigned segment, n_segments;

        assert(name);

        /* Bounded scan: names come from D-Bus callers too. */
        length = strnlen(name, MPOOL_NAME_MAX + 1);
        if (length == 0)
                return name_error(ret_error, NULL, 0, "model name is empty");
        if (length > MPOOL_NAME_MAX)
                return name_error(ret_error, NULL, 0, "model name is longer than %u characters",
                                  (unsigned) MPOOL_NAME_MAX);

        if (name[0] == '/')
                return name_error(ret_error, name, 0, "must not start with '/'");
        if (name[length - 1] == '/')
                return name_error(ret_error, name, 0, "must not end with '/'");

        n_segments = 1;
        for (size_t i = 0; i < length; i++)
                if (name[i] == '/')
                        n_segments++;

        /* Name the segment only when there is more than one. */
        segment_start = name;
        for (segment = 1; ; segment++) {
                unsigned shown_segment = n_segments > 1 ? segment : 0;
                size_t n = strcspn(segment_start, "/");

                if (segment > 2)
                        return name_error(ret_error, name, segment, "at most two segments are allowed");
                if (n == 0)
                        return name_error(ret_error, name, shown_segment, "must not be empty");
                if (n > MPOOL_NAME_SEGMENT_MAX)
                        return name_error(ret_error, name, shown_segment,
                                          "%zu characters long, at most %u are allowed",
                                          n, (unsigned) MPOOL_NAME_SEGMENT_MAX);
                if ((n == 1 && segment_start[0] == '.') ||
                    (n == 2 && segment_start[0] == '.' && segment_start[1] == '.'))
                        return name_error(ret_error, name, shown_segment, "'%.*s' is not allowed",
                                          (int) n, segment_start);

                for (size_t i = 0; i < n; i++) {
                        char c = segment_start[i];

                        if (char_is_name(c))
                                continue;
                        if (!ret_error)
                                return -EINVAL;

                        _cleanup_free_ char *shown_char = escape_bytes(&c, 1);
                        if (!shown_char)
                                return -ENOMEM;
                        return name_error(ret_error, name, 0, "character '%s' at position %zu is not allowed",
                                          shown_char, (size_t) (segment_start - name) + i + 1);
                }

                if (!char_is_name_start(segment_start[0]))
                        return name_error(ret_error, name, shown_segment,
                                          "must start with a letter or a digit");

                /* As the Hugging Face hub's repository names: ".." would read
                 * as a parent directory to tools that join names into paths,
                 * and "--" separates the parts of a cache directory's name
                 * (models--ORG--NAME), which must map back to one name. */
                for (size_t i = 0; i + 1 < n; i++)
                        if ((segment_start[i] == '.' || segment_start[i] == '-') &&
                            segment_start[i + 1] == segment_start[i])
                                return name_error(ret_error, name, shown_segment, "must not contain '%c%c'",
                                                  segment_start[i], segment_start[i]);
                if (segment_start[n - 1] == '.' || segment_start[n - 1] == '-')
                        return name_error(ret_error, name, shown_segment, "must not end with '%c'",
                                          segment_start[n - 1]);

                if (segment_start[n] == '\0')
                        break;
                segment_start += n + 1;
        }

        return 0;
}
