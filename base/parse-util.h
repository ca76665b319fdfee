/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Parsers for the values mpoold accepts from its configuration file and over
 * D-Bus. All of them are strict: the whole string must be consumed, there is
 * no leading sign, and on failure the output parameter is left untouched.
 * They return 0 on success, -EINVAL for text that is not a valid value and
 * -ERANGE for a well-formed value outside the accepted range. Whitespace is
 * allowed only between a number and its unit ("4 G", "5 min"), as systemd
 * does. */

/* A byte count: digits, an optional fraction and an optional unit, base 1024:
 * "B", "K"/"KiB", "M"/"MiB", "G"/"GiB", "T"/"TiB" (case-sensitive). A fraction
 * needs a unit above bytes and is rounded down to whole bytes: "512", "4K",
 * "1.5G", "2GiB". -ERANGE when the result does not fit in 64 bits. */
int parse_size(const char *s, uint64_t *ret_bytes);

#define PERMYRIAD_MAX 10000U

/* Either an absolute byte count or a share of some total known later (the
 * memory of the host). The share is in permyriad, i.e. a percentage with two
 * decimals: 12.5% is 1250. */
typedef struct SizeOrPercent {
        bool is_percent;
        uint64_t bytes;         /* when !is_percent */
        uint32_t permyriad;     /* when is_percent: 0..PERMYRIAD_MAX */
} SizeOrPercent;

/* "50%", "12.5%", "0.25%" (at most two decimals, at most "100%"), or
 * anything parse_size() accepts. */
int parse_size_or_percent(const char *s, SizeOrPercent *ret);

/* The byte count v stands for, given the total a percentage refers to.
 * Rounds down; never overflows. */
uint64_t size_or_percent_resolve(const SizeOrPercent *v, uint64_t total);

/* The largest duration parse_duration_sec() accepts, so that callers may
 * convert to microseconds in an int64_t without overflow. */
#define DURATION_SEC_MAX (INT64_MAX / INT64_C(1000000))

/* A duration in whole seconds, systemd style: one or more components, each a
 * whole number with an optional unit, optionally separated by whitespace:
 * "300", "90s", "5min", "5 min", "1h 30min", "1d". Units: s, sec, second(s),
 * m, min, minute(s), h, hr, hour(s), d, day(s), w, week(s); a number without
 * a unit is seconds. "infinity" gives -1. Otherwise the result is 1 ..
 * DURATION_SEC_MAX (-ERANGE outside). */
int parse_duration_sec(const char *s, int64_t *ret_sec);

/* A decimal number in min..max (-ERANGE outside). */
int parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret);

/* yes/no, true/false, on/off, 1/0 (case-insensitive): 1 or 0, else -EINVAL. */
int parse_boolean(const char *s);

/* Checks a model name: one or two segments separated by '/' ("org/name"),
 * each matching [A-Za-z0-9][A-Za-z0-9._-]* and at most MPOOL_NAME_SEGMENT_MAX
 * characters long, never containing ".." or "--" and never ending with '.'
 * or '-' (the Hugging Face hub's rules for repository names). Returns 0 if
 * valid. Otherwise returns
 * -EINVAL and, if ret_error is not NULL, sets it to a newly allocated message
 * that says what is wrong (non-printable characters escaped), e.g.
 * "'x y': character ' ' at position 2 is not allowed". -ENOMEM if that
 * message cannot be allocated. */
int model_name_validate(const char *name, char **ret_error);
