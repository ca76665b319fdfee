/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "macro.h"
#include "parse-util.h"
#include "strv.h"

static const char *const idle_policy_table[_IDLE_POLICY_MAX] = {
        [IDLE_POLICY_PER_MODEL] = "per-model",
        [IDLE_POLICY_GLOBAL]    = "global",
};

const char *idle_policy_to_string(IdlePolicy p) {
        if ((unsigned) p >= _IDLE_POLICY_MAX)
                return NULL;
        return idle_policy_table[p];
}

int idle_policy_from_string(const char *s) {
        assert(s);

        for (size_t i = 0; i < ELEMENTSOF(idle_policy_table); i++)
                if (strcmp(s, idle_policy_table[i]) == 0)
                        return (int) i;
        return -EINVAL;
}

static int strv_copy(char *const *l, char ***ret) {
        _cleanup_strv_free_ char **copy = NULL;
        int r;

        for (; l && *l; l++) {
                r = strv_extend(&copy, *l);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(copy);
        return 0;
}

int config_init_defaults(Config *c) {
        _cleanup_free_ char *model_dir = NULL, *hub_endpoint = NULL;

        assert(c);

        model_dir = strdup(CONFIG_MODEL_DIR_DEFAULT);
        hub_endpoint = strdup(CONFIG_HUB_ENDPOINT_DEFAULT);
        if (!model_dir || !hub_endpoint)
                return -ENOMEM;

        *c = (Config) {
                .model_dir = TAKE_PTR(model_dir),
                .huggingface_cache = NULL,
                .memory_limit = { .is_percent = true, .permyriad = 5000 },
                .max_loaded_models = 0,
                .idle_timeout_sec = CONFIG_IDLE_TIMEOUT_SEC_DEFAULT,
                .idle_policy = IDLE_POLICY_PER_MODEL,
                .memory_available_min = { .is_percent = true, .permyriad = 500 },
                .preload = NULL,
                .max_concurrent_loads = CONFIG_MAX_CONCURRENT_LOADS_DEFAULT,
                .max_queued_loads = CONFIG_MAX_QUEUED_LOADS_DEFAULT,
                .max_queued_requests = CONFIG_MAX_QUEUED_REQUESTS_DEFAULT,
                .cooldown_sec = CONFIG_COOLDOWN_SEC_DEFAULT,
                .max_concurrent_downloads = CONFIG_MAX_CONCURRENT_DOWNLOADS_DEFAULT,
                .hub_endpoint = TAKE_PTR(hub_endpoint),
                .hub_token_file = NULL,
        };
        return 0;
}

void config_done(Config *c) {
        assert(c);

        free(c->model_dir);
        free(c->huggingface_cache);
        strv_free(c->preload);
        free(c->hub_endpoint);
        free(c->hub_token_file);
        *c = (Config) {};
}

static int strdup_or_null(const char *s, char **ret) {
        char *copy = NULL;

        if (s) {
                copy = strdup(s);
                if (!copy)
                        return -ENOMEM;
        }
        *ret = copy;
        return 0;
}

static int config_copy(const Config *c, Config *ret) {
        _cleanup_free_ char *model_dir = NULL, *huggingface_cache = NULL, *hub_endpoint = NULL, *hub_token_file = NULL;
        char **preload;
        int r;

        if (strdup_or_null(c->hub_endpoint, &hub_endpoint) < 0 ||
            strdup_or_null(c->hub_token_file, &hub_token_file) < 0)
                return -ENOMEM;

        if (c->model_dir) {
                model_dir = strdup(c->model_dir);
                if (!model_dir)
                        return -ENOMEM;
        }
        if (c->huggingface_cache) {
                huggingface_cache = strdup(c->huggingface_cache);
                if (!huggingface_cache)
                        return -ENOMEM;
        }
        r = strv_copy(c->preload, &preload);
        if (r < 0)
                return r;

        *ret = *c;
        ret->model_dir = TAKE_PTR(model_dir);
        ret->huggingface_cache = TAKE_PTR(huggingface_cache);
        ret->preload = preload;
        ret->hub_endpoint = TAKE_PTR(hub_endpoint);
        ret->hub_token_file = TAKE_PTR(hub_token_file);
        return 0;
}

/* Sets *ret_message (if non-NULL) to a formatted message and returns error,
 * or -ENOMEM. */
_printf_(3, 4)
static int config_error(char **ret_message, int error, const char *format, ...);

/* An empty assignment is refused rather than taken as "the default": the
 * default is what one gets by leaving the line out or commented. */
static int refuse_empty(const char *value, char **ret_reason) {
        if (value[0] != '\0')
                return 0;
        return config_error(ret_reason, -EINVAL, "empty value; comment the line out to use the default");
}

/* An absolute path with no "." or ".." component, with repeated and
 * trailing slashes dropped. */
static int parse_absolute_path(const char *value, char **ret_path, char **ret_reason) {
        _cleanup_free_ char *path = NULL;
        const char *p;
        char *q;

        if (value[0] != '/')
                return config_error(ret_reason, -EINVAL, "'%s' is not an absolute path", value);
        if (strlen(value) >= PATH_MAX)
                return config_error(ret_reason, -EINVAL, "path is longer than %d characters", PATH_MAX - 1);
        for (p = value; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return config_error(ret_reason, -EINVAL, "path contains control characters");

        path = malloc(strlen(value) + 1);
        if (!path)
                return -ENOMEM;

        q = path;
        p = value;
        while (*p) {
                size_t n;

                p += strspn(p, "/");
                n = strcspn(p, "/");
                if (n == 0)
                        break;
                if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
                        return config_error(ret_reason, -EINVAL, "'%s' contains a '%.*s' component", value, (int) n, p);
                *q++ = '/';
                memcpy(q, p, n);
                q += n;
                p += n;
        }
        if (q == path)
                *q++ = '/';
        *q = '\0';

        *ret_path = TAKE_PTR(path);
        return 0;
}

static int parse_model_dir(Config *c, const char *value, char **ret_reason) {
        char *path;
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;
        r = parse_absolute_path(value, &path, ret_reason);
        if (r < 0)
                return r;

        free(c->model_dir);
        c->model_dir = path;
        return 0;
}

/* An absolute path, or empty for none (the default); replaces *slot. */
static int parse_optional_path(const char *value, char **slot, char **ret_reason) {
        char *path = NULL;
        int r;

        if (value[0] != '\0') {
                r = parse_absolute_path(value, &path, ret_reason);
                if (r < 0)
                        return r;
        }

        free(*slot);
        *slot = path;
        return 0;
}

static int parse_huggingface_cache(Config *c, const char *value, char **ret_reason) {
        return parse_optional_path(value, &c->huggingface_cache, ret_reason);
}

static int parse_size_or_percent_setting(const char *value, bool allow_zero, SizeOrPercent *ret,
                                         char **ret_reason) {
        SizeOrPercent v;
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;

        r = parse_size_or_percent(value, &v);
        if (r == -ERANGE)
                return config_error(ret_reason, r,
                              "'%s' is out of range: a percentage is at most 100%%, a size at most 16 EiB", value);
        if (r < 0)
                return config_error(ret_reason, r,
                              "invalid value '%s': expected a size such as 512M or 4G, or a percentage such as 50%%",
                              value);
        if (!allow_zero && (v.is_percent ? v.permyriad == 0 : v.bytes == 0))
                return config_error(ret_reason, -ERANGE, "must be greater than zero");

        *ret = v;
        return 0;
}

static int parse_memory_limit(Config *c, const char *value, char **ret_reason) {
        return parse_size_or_percent_setting(value, /* allow_zero= */ false, &c->memory_limit, ret_reason);
}

static int parse_memory_available_min(Config *c, const char *value, char **ret_reason) {
        return parse_size_or_percent_setting(value, /* allow_zero= */ true, &c->memory_available_min, ret_reason);
}

static int parse_unsigned_setting(const char *value, unsigned min, unsigned max, unsigned *ret,
                                  char **ret_reason) {
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;

        r = parse_unsigned(value, min, max, ret);
        if (r == -ERANGE)
                return config_error(ret_reason, r, "%s is out of range %u..%u", value, min, max);
        if (r < 0)
                return config_error(ret_reason, r, "invalid number '%s'", value);
        return 0;
}

static int parse_max_loaded_models(Config *c, const char *value, char **ret_reason) {
        return parse_unsigned_setting(value, 0, UINT_MAX, &c->max_loaded_models, ret_reason);
}

static int parse_max_concurrent_loads(Config *c, const char *value, char **ret_reason) {
        return parse_unsigned_setting(value, 1, CONFIG_MAX_CONCURRENT_LOADS_MAX, &c->max_concurrent_loads,
                                      ret_reason);
}

static int parse_max_queued_loads(Config *c, const char *value, char **ret_reason) {
        return parse_unsigned_setting(value, 0, CONFIG_MAX_QUEUED_LOADS_MAX, &c->max_queued_loads, ret_reason);
}

static int parse_max_workers(Config *c, const char *value, char **ret_reason) {
        return parse_unsigned_setting(value, 0, CONFIG_MAX_WORKERS_MAX, &c->max_workers, ret_reason);
}

static int parse_max_queued_requests(Config *c, const char *value, char **ret_reason) {
        return parse_unsigned_setting(value, 0, CONFIG_MAX_QUEUED_REQUESTS_MAX, &c->max_queued_requests,
                                      ret_reason);
}

static int parse_cooldown(Config *c, const char *value, char **ret_reason) {
        int64_t sec;
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;
        r = parse_duration_sec(value, &sec);
        if (r < 0 && r != -ERANGE)
                return config_error(ret_reason, r,
                                    "invalid duration '%s': expected seconds or a duration such as 90s or 5min",
                                    value);
        if (r == -ERANGE || sec < 1 || sec > CONFIG_COOLDOWN_SEC_MAX)
                return config_error(ret_reason, -ERANGE, "'%s' is out of range: 1s to 1d", value);
        c->cooldown_sec = sec;
        return 0;
}

static int parse_max_concurrent_downloads(Config *c, const char *value, char **ret_reason) {
        return parse_unsigned_setting(value, 1, CONFIG_MAX_CONCURRENT_DOWNLOADS_MAX,
                                      &c->max_concurrent_downloads, ret_reason);
}

/* The helper builds its URLs by appending "/api/…" and "/{repo}/resolve/…",
 * so the endpoint is a bare http(s) origin or prefix without spaces, control
 * characters, a query or a fragment, and its trailing slashes are dropped. */
static int parse_hub_endpoint(Config *c, const char *value, char **ret_reason) {
        const char *rest;
        char *copy;
        size_t n;
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;
        if (strncmp(value, "https://", 8) == 0)
                rest = value + 8;
        else if (strncmp(value, "http://", 7) == 0)
                rest = value + 7;
        else
                return config_error(ret_reason, -EINVAL, "'%s' is not an http:// or https:// URL", value);
        n = strlen(value);
        if (n > CONFIG_HUB_ENDPOINT_MAX)
                return config_error(ret_reason, -EINVAL, "URL is longer than %u characters", CONFIG_HUB_ENDPOINT_MAX);
        if (rest[0] == '\0' || rest[0] == '/')
                return config_error(ret_reason, -EINVAL, "'%s' has no host", value);
        for (const char *p = value; *p; p++)
                if ((unsigned char) *p <= 0x20 || (unsigned char) *p >= 0x7f || strchr("?#\\\"<>", *p))
                        return config_error(ret_reason, -EINVAL, "URL contains the character '%c' (0x%02x), which is not allowed",
                                            (unsigned char) *p > 0x20 && (unsigned char) *p < 0x7f ? *p : '?',
                                            (unsigned char) *p);
        while (n > 0 && value[n - 1] == '/')
                n--;

        copy = strndup(value, n);
        if (!copy)
                return -ENOMEM;
        free(c->hub_endpoint);
        c->hub_endpoint = copy;
        return 0;
}

static int parse_hub_token_file(Config *c, const char *value, char **ret_reason) {
        return parse_optional_path(value, &c->hub_token_file, ret_reason);
}

static int parse_idle_timeout(Config *c, const char *value, char **ret_reason) {
        int64_t sec;
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;

        r = parse_duration_sec(value, &sec);
        if (r == -ERANGE)
                return config_error(ret_reason, r, "'%s' is out of range: at least 1s, or 'infinity'", value);
        if (r < 0)
                return config_error(ret_reason, r,
                              "invalid duration '%s': expected seconds, a duration such as 5min or 1h 30min, or 'infinity'",
                              value);

        c->idle_timeout_sec = sec;
        return 0;
}

static int parse_idle_policy(Config *c, const char *value, char **ret_reason) {
        int r;

        r = refuse_empty(value, ret_reason);
        if (r < 0)
                return r;

        r = idle_policy_from_string(value);
        if (r < 0)
                return config_error(ret_reason, r, "unknown policy '%s': expected 'per-model' or 'global'", value);

        c->idle_policy = (IdlePolicy) r;
        return 0;
}

/* Accumulates over repeated lines; an empty assignment empties the list,
 * as systemd does for list settings. */
static int parse_preload(Config *c, const char *value, char **ret_reason) {
        const char *p = value;
        int r;

        if (value[0] == '\0') {
                strv_free(c->preload);
                c->preload = NULL;
                return 0;
        }

        for (;;) {
                _cleanup_free_ char *name = NULL, *error = NULL;
                size_t n;

                p += strspn(p, " \t");
                n = strcspn(p, " \t");
                if (n == 0)
                        return 0;

                name = strndup(p, n);
                if (!name)
                        return -ENOMEM;
                p += n;

                r = model_name_validate(name, &error);
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        *ret_reason = TAKE_PTR(error);
                        return r;
                }

                if (strv_contains(c->preload, name))
                        continue;
                if (strv_length(c->preload) >= CONFIG_PRELOAD_MAX)
                        return config_error(ret_reason, -ERANGE, "more than %u models to preload", CONFIG_PRELOAD_MAX);

                r = strv_extend(&c->preload, name);
                if (r < 0)
                        return r;
        }
}

typedef int (*ConfigParseFunc)(Config *c, const char *value, char **ret_reason);

static const struct {
        const char *section;
        const char *key;
        ConfigParseFunc parse;
} config_keys[] = {
        { "Store", "ModelDir",           parse_model_dir },
        { "Store", "HuggingFaceCache",   parse_huggingface_cache },
        { "Pool",  "MemoryLimit",        parse_memory_limit },
        { "Pool",  "MaxLoadedModels",    parse_max_loaded_models },
        { "Pool",  "IdleTimeoutSec",     parse_idle_timeout },
        { "Pool",  "IdlePolicy",         parse_idle_policy },
        { "Pool",  "MemoryAvailableMin", parse_memory_available_min },
        { "Pool",  "Preload",            parse_preload },
        { "Pool",  "MaxConcurrentLoads", parse_max_concurrent_loads },
        { "Pool",  "MaxQueuedLoads", parse_max_queued_loads },
        { "Pool",  "MaxConcurrentDownloads", parse_max_concurrent_downloads },
        { "Workers", "MaxWorkers",       parse_max_workers },
        { "Workers", "MaxQueuedRequests", parse_max_queued_requests },
        { "Workers", "CooldownSec",      parse_cooldown },
        { "Hub",   "Endpoint",           parse_hub_endpoint },
        { "Hub",   "TokenFile",          parse_hub_token_file },
};

static int config_apply(Config *c, const char *section, const char *key, const char *value,
                        char **ret_reason) {
        bool section_known = false;

        if (section[0] == '\0')
                return config_error(ret_reason, -EINVAL, "setting outside of a section, expected [Store], [Pool], [Workers] or [Hub] first");

        for (size_t i = 0; i < ELEMENTSOF(config_keys); i++) {
                if (strcmp(section, config_keys[i].section) != 0)
                        continue;
                section_known = true;
                if (strcmp(key, config_keys[i].key) == 0)
                        return config_keys[i].parse(c, value, ret_reason);
        }

        if (!section_known)
                return config_error(ret_reason, -EINVAL, "unknown section [%s]", section);
        return config_error(ret_reason, -EINVAL, "unknown key in section [%s]", section);
}

typedef struct ConfigParser {
        FILE *file;
        Config config;          /* what is being built; replaces the caller's only on success */
        unsigned line;          /* number of the line last handed to inih */
        int read_error;         /* errno of a failed read, 0 if none */

        /* The first problem found, with the line it was found on. */
        int error;
        unsigned error_line;
        char *error_message;
} ConfigParser;

static void config_parser_done(ConfigParser *p) {
        config_done(&p->config);
        free(p->error_message);
}

/* Keeps the first error only: it is the one on the earliest line, as the
 * file is read in order. On -ENOMEM there is no message. */
static void config_parser_fail(ConfigParser *p, int error, char *message) {
        if (p->error != 0) {
                free(message);
                return;
        }
        p->error = error;
        p->error_line = p->line;
        p->error_message = message;
}

/* inih does not tell its handler the line number (Debian builds it without
 * INI_HANDLER_LINENO), so we feed it the lines ourselves and count them; it
 * processes each line before asking for the next. Reading ourselves also
 * fixes two ways inih would take a line other than as written: a line
 * longer than its buffer is split in two, and a line that starts with
 * whitespace continues the previous value. Here an overlong line or a NUL
 * byte is an error, and leading whitespace is dropped as systemd does. */
static char *config_reader(char *buf, int size, void *userdata) {
        ConfigParser *p = userdata;
        size_t n = 0, skip;
        bool too_long = false, has_nul = false, dropped_cr = false;
        int c;

        assert(size >= 2);

        for (;;) {
                c = getc(p->file);
                if (c == EOF || c == '\n')
                        break;
                if (c == '\0')
                        has_nul = true;
                if (n < (size_t) size - 1)
                        buf[n++] = (char) c;
                else if (c == '\r' && !dropped_cr)
                        dropped_cr = true;  /* the CR of a CRLF ending is not content */
                else
                        too_long = true;
        }
        if (c == EOF && ferror(p->file)) {
                p->read_error = errno > 0 ? errno : EIO;
                return NULL;
        }
        if (c == EOF && n == 0)
                return NULL;

        p->line++;
        buf[n] = '\0';

        if (too_long || has_nul) {
                char *message = NULL;

                if (too_long) {
                        if (asprintf(&message, "line is longer than %d characters", size - 1) < 0)
                                message = NULL;
                } else
                        message = strdup("line contains a NUL byte");
                config_parser_fail(p, message ? -EINVAL : -ENOMEM, message);
                buf[0] = '\0';
                return buf;
        }

        skip = strspn(buf, " \t");
        memmove(buf, buf + skip, n - skip + 1);
        return buf;
}

static int config_handler(void *userdata, const char *section, const char *key, const char *value) {
        ConfigParser *p = userdata;
        _cleanup_free_ char *why = NULL;
        char *message;
        int r;

        /* Nothing after the first error will be used. */
        if (p->error != 0)
                return 1;

        r = config_apply(&p->config, section, key, value, &why);
        if (r >= 0)
                return 1;

        if (r == -ENOMEM || asprintf(&message, "%s=: %s", key, why) < 0)
                config_parser_fail(p, -ENOMEM, NULL);
        else
                config_parser_fail(p, r, message);
        return 0;
}

static int config_error(char **ret_error, int error, const char *format, ...) {
        char *message;
        va_list ap;
        int r;

        if (!ret_error)
                return error;

        va_start(ap, format);
        r = vasprintf(&message, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        *ret_error = message;
        return error;
}

int config_load_file(Config *c, const char *path, bool must_exist, char **ret_error) {
        _cleanup_(config_parser_done) ConfigParser p = {};
        _cleanup_fclose_ FILE *f = NULL;
        int r;

        assert(c);
        assert(path);

        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && !must_exist)
                        return 0;
                r = negative_errno();
                return config_error(ret_error, r, "%s: cannot open: %s", path, strerror(-r));
        }

        r = config_copy(c, &p.config);
        if (r < 0)
                return r;
        p.file = f;

        r = ini_parse_stream(config_reader, &p, config_handler, &p);
        if (r < 0)
                /* Only heap-buffer builds of inih fail by themselves, for memory. */
                return -ENOMEM;

        if (p.read_error != 0)
                return config_error(ret_error, -p.read_error, "%s: cannot read: %s", path,
                                    strerror(p.read_error));

        /* inih reports the first line it could not parse, or the first line
         * our handler refused; we know the reason only for the latter. */
        if (r > 0 && (p.error == 0 || (unsigned) r < p.error_line))
                return config_error(ret_error, -EINVAL,
                                    "%s:%d: syntax error: expected Key=value, [Section] or a comment", path, r);
        if (p.error == -ENOMEM)
                return -ENOMEM;
        if (p.error != 0)
                return config_error(ret_error, p.error, "%s:%u: %s", path, p.error_line, p.error_message);

        config_done(c);
        *c = p.config;
        p.config = (Config) {};
        return 0;
}
