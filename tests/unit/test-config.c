/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "macro.h"

#define GiB (UINT64_C(1) << 30)
#define MiB (UINT64_C(1) << 20)

typedef struct Fixture {
        char dir[64];
        char path[128];
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        if (!f)
                return -1;
        strcpy(f->dir, "/tmp/test-config.XXXXXX");
        if (!mkdtemp(f->dir)) {
                free(f);
                return -1;
        }
        snprintf(f->path, sizeof f->path, "%s/mpoold.conf", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        (void) unlink(f->path);
        (void) rmdir(f->dir);
        free(f);
        return 0;
}

static void write_file(const Fixture *f, const char *contents, size_t size) {
        FILE *file = fopen(f->path, "we");

        assert_non_null(file);
        assert_int_equal(fwrite(contents, 1, size, file), size);
        assert_int_equal(fclose(file), 0);
}

static void write_config(const Fixture *f, const char *contents) {
        write_file(f, contents, strlen(contents));
}

static void assert_defaults(const Config *c) {
        assert_string_equal(c->model_dir, "/var/lib/mpool/models");
        assert_null(c->huggingface_cache);
        assert_true(c->memory_limit.is_percent);
        assert_int_equal(c->memory_limit.permyriad, 5000);
        assert_int_equal(c->max_loaded_models, 0);
        assert_int_equal(c->idle_timeout_sec, 300);
        assert_int_equal(c->idle_policy, IDLE_POLICY_PER_MODEL);
        assert_true(c->memory_available_min.is_percent);
        assert_int_equal(c->memory_available_min.permyriad, 500);
        assert_null(c->preload);
        assert_int_equal(c->max_concurrent_loads, 4);
        assert_int_equal(c->max_queued_loads, 64);
        assert_int_equal(c->max_concurrent_downloads, 2);
        assert_int_equal(c->max_workers, 0);
        assert_int_equal(c->max_queued_requests, 64);
        assert_int_equal(c->cooldown_sec, 60);
        assert_string_equal(c->hub_endpoint, "https://huggingface.co");
        assert_null(c->hub_token_file);
}

static void test_idle_policy_strings(void **state) {
        assert_string_equal(idle_policy_to_string(IDLE_POLICY_PER_MODEL), "per-model");
        assert_string_equal(idle_policy_to_string(IDLE_POLICY_GLOBAL), "global");
        assert_null(idle_policy_to_string(_IDLE_POLICY_MAX));
        assert_int_equal(idle_policy_from_string("per-model"), IDLE_POLICY_PER_MODEL);
        assert_int_equal(idle_policy_from_string("global"), IDLE_POLICY_GLOBAL);
        assert_int_equal(idle_policy_from_string("Global"), -EINVAL);
        assert_int_equal(idle_policy_from_string(""), -EINVAL);
}

static void test_missing_file(void **state) {
        Fixture *f = *state;
        char *error = NULL, expected[256];
        Config c;

        assert_int_equal(config_init_defaults(&c), 0);
        assert_defaults(&c);

        assert_int_equal(config_load_file(&c, f->path, false, &error), 0);
        assert_null(error);
        assert_defaults(&c);

        assert_int_equal(config_load_file(&c, f->path, true, &error), -ENOENT);
        snprintf(expected, sizeof expected, "%s: cannot open: %s", f->path, strerror(ENOENT));
        assert_non_null(error);
        assert_string_equal(error, expected);
        free(error);
        assert_defaults(&c);

        config_done(&c);
}

static void test_empty_file(void **state) {
        Fixture *f = *state;
        Config c;

        write_config(f, "");
        assert_int_equal(config_init_defaults(&c), 0);
        assert_int_equal(config_load_file(&c, f->path, true, NULL), 0);
        assert_defaults(&c);
        config_done(&c);
}

static void test_every_key(void **state) {
        Fixture *f = *state;
        char *error = NULL;
        Config c;

        write_config(f,
                     "# a comment\n"
                     "; another one\n"
                     "\n"
                     "[Store]\n"
                     "ModelDir = /srv//models/\n"
                     "HuggingFaceCache=/var/cache/hf/hub\n"
                     "\n"
                     "[Pool]\n"
                     "MemoryLimit=12G\n"
                     "MaxLoadedModels=3\n"
                     "IdleTimeoutSec=1h 30min\n"
                     "IdlePolicy=global\n"
                     "MemoryAvailableMin=512M\n"
                     "Preload=org/one two\n"
                     "MaxConcurrentLoads=64\r\n"
                     "MaxQueuedLoads=0\r\n"
                     "MaxConcurrentDownloads=16\n"
                     "[Workers]\n"
                     "MaxWorkers=8\n"
                     "MaxQueuedRequests=0\n"
                     "CooldownSec=2min\n"
                     "[Hub]\n"
                     "Endpoint=http://127.0.0.1:8080/mirror//\n"
                     "TokenFile=/etc/mpool//hub-token\n");

        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));

        assert_string_equal(c.model_dir, "/srv/models");
        assert_string_equal(c.huggingface_cache, "/var/cache/hf/hub");
        assert_false(c.memory_limit.is_percent);
        assert_int_equal(c.memory_limit.bytes, 12 * GiB);
        assert_int_equal(c.max_loaded_models, 3);
        assert_int_equal(c.idle_timeout_sec, 5400);
        assert_int_equal(c.idle_policy, IDLE_POLICY_GLOBAL);
        assert_false(c.memory_available_min.is_percent);
        assert_int_equal(c.memory_available_min.bytes, 512 * MiB);
        assert_non_null(c.preload);
        assert_string_equal(c.preload[0], "org/one");
        assert_string_equal(c.preload[1], "two");
        assert_null(c.preload[2]);
        assert_int_equal(c.max_concurrent_loads, 64);
        assert_int_equal(c.max_queued_loads, 0);
        assert_int_equal(c.max_concurrent_downloads, 16);
        assert_int_equal(c.max_workers, 8);
        assert_int_equal(c.max_queued_requests, 0);
        assert_int_equal(c.cooldown_sec, 120);
        assert_string_equal(c.hub_endpoint, "http://127.0.0.1:8080/mirror");
        assert_string_equal(c.hub_token_file, "/etc/mpool/hub-token");

        config_done(&c);
}

static void test_other_forms(void **state) {
        Fixture *f = *state;
        char *error = NULL;
        Config c;

        write_config(f,
                     "[Pool]\n"
                     "MemoryLimit=12.5%\n"
                     "IdleTimeoutSec=infinity\n"
                     "MemoryAvailableMin=0%\n"
                     "MaxLoadedModels=0\n"
                     "[Store]\n"
                     "ModelDir=/\n"
                     "HuggingFaceCache=/hf/hub\n"
                     "HuggingFaceCache=\n"
                     "[Pool]\n"
                     "IdleTimeoutSec=90\n"
                     "IdleTimeoutSec=5 min\n");

        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));

        assert_true(c.memory_limit.is_percent);
        assert_int_equal(c.memory_limit.permyriad, 1250);
        assert_int_equal(c.idle_timeout_sec, 300);   /* the last assignment wins */
        assert_true(c.memory_available_min.is_percent);
        assert_int_equal(c.memory_available_min.permyriad, 0);
        assert_string_equal(c.model_dir, "/");
        assert_null(c.huggingface_cache);            /* empty: none */

        config_done(&c);

        write_config(f, "[Pool]\nIdleTimeoutSec=infinity\n");
        assert_int_equal(config_init_defaults(&c), 0);
        assert_int_equal(config_load_file(&c, f->path, true, NULL), 0);
        assert_int_equal(c.idle_timeout_sec, -1);
        config_done(&c);
}

static void test_preload(void **state) {
        Fixture *f = *state;
        char *error = NULL;
        Config c;

        write_config(f,
                     "[Pool]\n"
                     "Preload=early\n"
                     "Preload=\n"
                     "Preload=a  org/b\tc\n"
                     "Preload=d a\n"
                     "Preload=e\n");

        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));

        assert_non_null(c.preload);
        assert_string_equal(c.preload[0], "a");
        assert_string_equal(c.preload[1], "org/b");
        assert_string_equal(c.preload[2], "c");
        assert_string_equal(c.preload[3], "d");   /* "a" again is not added twice */
        assert_string_equal(c.preload[4], "e");
        assert_null(c.preload[5]);

        /* A second file adds to what the first gave, and can reset it. */
        write_config(f, "[Pool]\nPreload=f\n");
        assert_int_equal(config_load_file(&c, f->path, true, NULL), 0);
        assert_string_equal(c.preload[5], "f");
        assert_null(c.preload[6]);

        write_config(f, "[Pool]\nPreload=\n");
        assert_int_equal(config_load_file(&c, f->path, true, NULL), 0);
        assert_null(c.preload);

        config_done(&c);
}

static void test_preload_too_many(void **state) {
        Fixture *f = *state;
        char *error = NULL, expected[256];
        FILE *file;
        Config c;

        file = fopen(f->path, "we");
        assert_non_null(file);
        fputs("[Pool]\n", file);
        for (unsigned i = 0; i < CONFIG_PRELOAD_MAX / 8 + 1; i++)
                fprintf(file, "Preload=m%u-0 m%u-1 m%u-2 m%u-3 m%u-4 m%u-5 m%u-6 m%u-7\n",
                        i, i, i, i, i, i, i, i);
        assert_int_equal(fclose(file), 0);

        assert_int_equal(config_init_defaults(&c), 0);
        assert_int_equal(config_load_file(&c, f->path, true, &error), -ERANGE);
        snprintf(expected, sizeof expected, "%s:%u: Preload=: more than %u models to preload",
                 f->path, CONFIG_PRELOAD_MAX / 8 + 2, CONFIG_PRELOAD_MAX);
        assert_string_equal(error, expected);
        free(error);
        assert_defaults(&c);
        config_done(&c);
}

/* Each bad line, placed after some good ones, must be reported with its line
 * number and key, and leave the configuration untouched. */
static void test_bad_values(void **state) {
        static const struct {
                const char *section;
                const char *line;
                const char *message;  /* after "FILE:LINE: " */
                int error;
        } cases[] = {
                { "Store", "ModelDir=relative/path",       "ModelDir=: 'relative/path' is not an absolute path", -EINVAL },
                { "Store", "ModelDir=",                    "ModelDir=: empty value; comment the line out to use the default", -EINVAL },
                { "Store", "ModelDir=/srv/../etc",         "ModelDir=: '/srv/../etc' contains a '..' component", -EINVAL },
                { "Store", "ModelDir=/srv/./m",            "ModelDir=: '/srv/./m' contains a '.' component", -EINVAL },
                { "Store", "HuggingFaceCache=hub",         "HuggingFaceCache=: 'hub' is not an absolute path", -EINVAL },
                { "Pool",  "MemoryLimit=1..5G",            "MemoryLimit=: invalid value '1..5G': expected a size such as 512M or 4G, or a percentage such as 50%", -EINVAL },
                { "Pool",  "MemoryLimit=-1",               "MemoryLimit=: invalid value '-1': expected a size such as 512M or 4G, or a percentage such as 50%", -EINVAL },
                { "Pool",  "MemoryLimit=101%",             "MemoryLimit=: '101%' is out of range: a percentage is at most 100%, a size at most 16 EiB", -ERANGE },
                { "Pool",  "MemoryLimit=99999999999T",     "MemoryLimit=: '99999999999T' is out of range: a percentage is at most 100%, a size at most 16 EiB", -ERANGE },
                { "Pool",  "MemoryLimit=0",                "MemoryLimit=: must be greater than zero", -ERANGE },
                { "Pool",  "MemoryLimit=0%",               "MemoryLimit=: must be greater than zero", -ERANGE },
                { "Pool",  "MemoryLimit=",                 "MemoryLimit=: empty value; comment the line out to use the default", -EINVAL },
                { "Pool",  "MaxLoadedModels=-1",           "MaxLoadedModels=: invalid number '-1'", -EINVAL },
                { "Pool",  "MaxLoadedModels=many",         "MaxLoadedModels=: invalid number 'many'", -EINVAL },
                { "Pool",  "MaxLoadedModels=4294967296",   "MaxLoadedModels=: 4294967296 is out of range 0..4294967295", -ERANGE },
                { "Pool",  "IdleTimeoutSec=0",             "IdleTimeoutSec=: '0' is out of range: at least 1s, or 'infinity'", -ERANGE },
                { "Pool",  "IdleTimeoutSec=5 lightyears",  "IdleTimeoutSec=: invalid duration '5 lightyears': expected seconds, a duration such as 5min or 1h 30min, or 'infinity'", -EINVAL },
                { "Pool",  "IdleTimeoutSec=-1",            "IdleTimeoutSec=: invalid duration '-1': expected seconds, a duration such as 5min or 1h 30min, or 'infinity'", -EINVAL },
                { "Pool",  "IdleTimeoutSec=500ms",         "IdleTimeoutSec=: invalid duration '500ms': expected seconds, a duration such as 5min or 1h 30min, or 'infinity'", -EINVAL },
                { "Pool",  "IdlePolicy=lru",               "IdlePolicy=: unknown policy 'lru': expected 'per-model' or 'global'", -EINVAL },
                { "Pool",  "IdlePolicy=Global",            "IdlePolicy=: unknown policy 'Global': expected 'per-model' or 'global'", -EINVAL },
                { "Pool",  "MemoryAvailableMin=5 percent", "MemoryAvailableMin=: invalid value '5 percent': expected a size such as 512M or 4G, or a percentage such as 50%", -EINVAL },
                { "Pool",  "MemoryAvailableMin=100.5%",    "MemoryAvailableMin=: '100.5%' is out of range: a percentage is at most 100%, a size at most 16 EiB", -ERANGE },
                { "Pool",  "Preload=good a/b/c",           "Preload=: segment 3 of 'a/b/c': at most two segments are allowed", -EINVAL },
                { "Pool",  "Preload=../etc",               "Preload=: segment 1 of '../etc': '..' is not allowed", -EINVAL },
                { "Pool",  "Preload=org/a,b",              "Preload=: 'org/a,b': character ',' at position 6 is not allowed", -EINVAL },
                { "Pool",  "MaxConcurrentLoads=0",         "MaxConcurrentLoads=: 0 is out of range 1..64", -ERANGE },
                { "Pool",  "MaxConcurrentLoads=65",        "MaxConcurrentLoads=: 65 is out of range 1..64", -ERANGE },
                { "Pool",  "MaxConcurrentLoads=4x",        "MaxConcurrentLoads=: invalid number '4x'", -EINVAL },
                { "Pool",  "MaxQueuedLoads=1025",          "MaxQueuedLoads=: 1025 is out of range 0..1024", -ERANGE },
                { "Pool",  "MaxConcurrentDownloads=0",     "MaxConcurrentDownloads=: 0 is out of range 1..16", -ERANGE },
                { "Pool",  "MaxConcurrentDownloads=17",    "MaxConcurrentDownloads=: 17 is out of range 1..16", -ERANGE },
                { "Workers", "MaxWorkers=257",             "MaxWorkers=: 257 is out of range 0..256", -ERANGE },
                { "Workers", "MaxQueuedRequests=4097",     "MaxQueuedRequests=: 4097 is out of range 0..4096", -ERANGE },
                { "Workers", "CooldownSec=infinity",       "CooldownSec=: 'infinity' is out of range: 1s to 1d", -ERANGE },
                { "Workers", "CooldownSec=2d",             "CooldownSec=: '2d' is out of range: 1s to 1d", -ERANGE },
                { "Workers", "CooldownSec=soon",           "CooldownSec=: invalid duration 'soon': expected seconds or a duration such as 90s or 5min", -EINVAL },
                { "Pool",  "MaxWorkers=2",                 "MaxWorkers=: unknown key in section [Pool]", -EINVAL },
                { "Hub",   "Endpoint=",                    "Endpoint=: empty value; comment the line out to use the default", -EINVAL },
                { "Hub",   "Endpoint=ftp://hub",           "Endpoint=: 'ftp://hub' is not an http:// or https:// URL", -EINVAL },
                { "Hub",   "Endpoint=huggingface.co",      "Endpoint=: 'huggingface.co' is not an http:// or https:// URL", -EINVAL },
                { "Hub",   "Endpoint=https://",            "Endpoint=: 'https://' has no host", -EINVAL },
                { "Hub",   "Endpoint=https:///x",          "Endpoint=: 'https:///x' has no host", -EINVAL },
                { "Hub",   "Endpoint=https://h/a b",       "Endpoint=: URL contains the character '?' (0x20), which is not allowed", -EINVAL },
                { "Hub",   "Endpoint=https://h/?q=1",      "Endpoint=: URL contains the character '?' (0x3f), which is not allowed", -EINVAL },
                { "Hub",   "Endpoint=https://h/#x",        "Endpoint=: URL contains the character '#' (0x23), which is not allowed", -EINVAL },
                { "Hub",   "TokenFile=token",              "TokenFile=: 'token' is not an absolute path", -EINVAL },
                { "Hub",   "TokenFile=/etc/../token",      "TokenFile=: '/etc/../token' contains a '..' component", -EINVAL },
                { "Hub",   "MaxConcurrentDownloads=2",     "MaxConcurrentDownloads=: unknown key in section [Hub]", -EINVAL },
                { "Pool",  "MaxLoadedModel=3",             "MaxLoadedModel=: unknown key in section [Pool]", -EINVAL },
                { "Pool",  "ModelDir=/srv",                "ModelDir=: unknown key in section [Pool]", -EINVAL },
                { "Pool",  "memorylimit=4G",               "memorylimit=: unknown key in section [Pool]", -EINVAL },
                { "Store", "MemoryLimit=4G",               "MemoryLimit=: unknown key in section [Store]", -EINVAL },
        };
        Fixture *f = *state;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char contents[512], expected[512], *error = NULL;
                Config c;
                int r;

                /* The bad line is line 6. */
                snprintf(contents, sizeof contents,
                         "# test\n"
                         "[Pool]\n"
                         "MaxLoadedModels=7\n"
                         "\n"
                         "[%s]\n"
                         "%s\n"
                         "Preload=after\n",
                         cases[i].section, cases[i].line);
                write_config(f, contents);

                assert_int_equal(config_init_defaults(&c), 0);
                r = config_load_file(&c, f->path, true, &error);
                if (r != cases[i].error)
                        fail_msg("\"%s\": returned %d, expected %d (%s)", cases[i].line, r, cases[i].error,
                                 strempty(error));

                snprintf(expected, sizeof expected, "%s:6: %s", f->path, cases[i].message);
                assert_non_null(error);
                if (strcmp(error, expected) != 0)
                        fail_msg("\"%s\":\n got \"%s\"\nwant \"%s\"", cases[i].line, error, expected);
                free(error);

                /* Nothing applied, not even the good line before the bad one. */
                assert_defaults(&c);
                config_done(&c);
        }
}

static void check_load_error(const Fixture *f, const char *contents, size_t size, int error,
                             const char *message) {
        char expected[512], *got = NULL;
        Config c;
        int r;

        write_file(f, contents, size);
        assert_int_equal(config_init_defaults(&c), 0);
        r = config_load_file(&c, f->path, true, &got);
        if (r != error)
                fail_msg("returned %d, expected %d (%s)", r, error, strempty(got));

        snprintf(expected, sizeof expected, "%s:%s", f->path, message);
        assert_non_null(got);
        if (strcmp(got, expected) != 0)
                fail_msg("\n got \"%s\"\nwant \"%s\"", got, expected);
        free(got);

        assert_defaults(&c);
        config_done(&c);
}

#define check_load_error_str(f, contents, error, message) \
        check_load_error((f), (contents), strlen(contents), (error), (message))

static void test_bad_structure(void **state) {
        Fixture *f = *state;
        char contents[1024], message[128];

        check_load_error_str(f, "[Pool]\nMaxLoadedModels=1\n[Pol]\nMemoryLimit=4G\n", -EINVAL,
                             "4: MemoryLimit=: unknown section [Pol]");
        check_load_error_str(f, "[pool]\nMemoryLimit=4G\n", -EINVAL,
                             "2: MemoryLimit=: unknown section [pool]");
        check_load_error_str(f, "# no section yet\nMemoryLimit=4G\n", -EINVAL,
                             "2: MemoryLimit=: setting outside of a section, expected [Store], [Pool], [Workers] or [Hub] first");
        check_load_error_str(f, "[Pool]\nMemoryLimit 4G\n", -EINVAL,
                             "2: syntax error: expected Key=value, [Section] or a comment");
        check_load_error_str(f, "[Pool\nMemoryLimit=4G\n", -EINVAL,
                             "1: syntax error: expected Key=value, [Section] or a comment");

        /* The first problem is the one reported, whichever kind it is. */
        check_load_error_str(f, "[Pool]\nbroken line\nMemoryLimit=nope\n", -EINVAL,
                             "2: syntax error: expected Key=value, [Section] or a comment");
        check_load_error_str(f, "[Pool]\nMemoryLimit=nope\nbroken line\nIdlePolicy=x\n", -EINVAL,
                             "2: MemoryLimit=: invalid value 'nope': expected a size such as 512M or 4G, or a percentage such as 50%");

        /* inih would take an indented line as the continuation of the
         * previous value; we read it as a line of its own. */
        check_load_error_str(f, "[Pool]\nPreload=a\n  b\n", -EINVAL,
                             "3: syntax error: expected Key=value, [Section] or a comment");
        check_load_error_str(f, "[Pool]\nMaxLoadedModels=3\n   MaxConcurrentLoads=99\n", -ERANGE,
                             "3: MaxConcurrentLoads=: 99 is out of range 1..64");

        /* A line too long for inih's buffer is refused, not cut in two. */
        snprintf(contents, sizeof contents, "[Pool]\nPreload=%0300d\nIdlePolicy=global\n", 0);
        snprintf(message, sizeof message, "2: line is longer than 199 characters");
        check_load_error_str(f, contents, -EINVAL, message);

        check_load_error(f, "[Pool]\nMemoryLimit=4G\0junk\n", 27, -EINVAL, "2: line contains a NUL byte");
}

static void test_line_limits(void **state) {
        Fixture *f = *state;
        char contents[512], segment[97];
        char *error = NULL;
        Config c;

        memset(segment, 'n', 96);
        segment[96] = '\0';

        /* "Preload=" and a name of 96 + 1 + 94 characters: 199 in all, the
         * most inih's buffer takes; here on the last line, without '\n'. */
        snprintf(contents, sizeof contents, "[Pool]\nPreload=%s/%.94s", segment, segment);
        write_config(f, contents);
        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));
        assert_non_null(c.preload);
        assert_int_equal(strlen(c.preload[0]), 191);
        assert_null(c.preload[1]);
        config_done(&c);

        /* The same with a CRLF ending. */
        snprintf(contents, sizeof contents, "[Pool]\r\nPreload=%s/%.94s\r\n", segment, segment);
        write_config(f, contents);
        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));
        assert_non_null(c.preload);
        assert_int_equal(strlen(c.preload[0]), 191);
        config_done(&c);

        /* One more is refused. */
        snprintf(contents, sizeof contents, "[Pool]\nPreload=%s/%.95s\n", segment, segment);
        check_load_error_str(f, contents, -EINVAL, "2: line is longer than 199 characters");

        /* Indented settings and comments, a BOM, an inline comment. */
        write_config(f, "\xef\xbb\xbf[Pool]\n\t# comment\n  IdlePolicy=global ; inline comment\n");
        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));
        assert_int_equal(c.idle_policy, IDLE_POLICY_GLOBAL);
        config_done(&c);
}

static void test_layered_files(void **state) {
        Fixture *f = *state;
        Config c;

        assert_int_equal(config_init_defaults(&c), 0);

        write_config(f, "[Pool]\nMaxLoadedModels=2\nIdlePolicy=global\n");
        assert_int_equal(config_load_file(&c, f->path, true, NULL), 0);
        write_config(f, "[Pool]\nMaxLoadedModels=5\n");
        assert_int_equal(config_load_file(&c, f->path, true, NULL), 0);
        assert_int_equal(c.max_loaded_models, 5);
        assert_int_equal(c.idle_policy, IDLE_POLICY_GLOBAL);

        /* A failing file changes nothing, also without a message wanted. */
        write_config(f, "[Pool]\nMaxLoadedModels=9\nIdlePolicy=never\n");
        assert_int_equal(config_load_file(&c, f->path, true, NULL), -EINVAL);
        assert_int_equal(c.max_loaded_models, 5);

        config_done(&c);
}

static void test_unreadable(void **state) {
        Fixture *f = *state;
        char *error = NULL, expected[256];
        Config c;

        assert_int_equal(config_init_defaults(&c), 0);
        assert_int_equal(config_load_file(&c, f->dir, true, &error), -EISDIR);
        snprintf(expected, sizeof expected, "%s: cannot read: %s", f->dir, strerror(EISDIR));
        assert_string_equal(error, expected);
        free(error);
        assert_defaults(&c);
        config_done(&c);
}

static void test_shipped_config(void **state) {
        const char *source_dir = getenv("MPOOL_SOURCE_DIR");
        char path[4096], *error = NULL;
        Config c;

        snprintf(path, sizeof path, "%s/daemon/mpoold.conf", source_dir ?: ".");
        if (access(path, R_OK) < 0)
                fail_msg("%s not found: run from the source tree or set MPOOL_SOURCE_DIR", path);

        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, path, true, &error) != 0)
                fail_msg("%s", strempty(error));
        assert_defaults(&c);
        config_done(&c);

        /* Uncommenting every setting as shipped must give the defaults too:
         * the values written in the file are the real ones. */
        FILE *in = fopen(path, "re");
        Fixture *f = *state;
        FILE *out = fopen(f->path, "we");
        char line[512];
        unsigned settings = 0;

        assert_non_null(in);
        assert_non_null(out);
        while (fgets(line, sizeof line, in)) {
                const char *p = line;

                if (line[0] == '#' && line[1] >= 'A' && line[1] <= 'Z' && strchr(line, '=')) {
                        p = line + 1;
                        settings++;
                }
                fputs(p, out);
        }
        fclose(in);
        assert_int_equal(fclose(out), 0);
        assert_int_equal(settings, 16);

        assert_int_equal(config_init_defaults(&c), 0);
        if (config_load_file(&c, f->path, true, &error) != 0)
                fail_msg("%s", strempty(error));
        assert_defaults(&c);
        config_done(&c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_idle_policy_strings),
                cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_empty_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_every_key, setup, teardown),
                cmocka_unit_test_setup_teardown(test_other_forms, setup, teardown),
                cmocka_unit_test_setup_teardown(test_preload, setup, teardown),
                cmocka_unit_test_setup_teardown(test_preload_too_many, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_values, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_structure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_line_limits, setup, teardown),
                cmocka_unit_test_setup_teardown(test_layered_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unreadable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shipped_config, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
