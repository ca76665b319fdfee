/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "parse-util.h"

/* mpoold's configuration: /etc/mpool/mpoold.conf, an INI file with the
 * sections [Store], [Pool] and [Hub]. Every key, its default and its syntax are
 * listed in the shipped daemon/mpoold.conf. Anything the daemon does not
 * understand (a malformed value, an unknown key or section, a line without
 * '=') is an error that names the file, the line and the key: a typo must
 * never turn silently into a default. */

#ifndef MPOOLD_CONFIG_FILE
#define MPOOLD_CONFIG_FILE "/etc/mpool/mpoold.conf"
#endif

#define CONFIG_MODEL_DIR_DEFAULT              "/var/lib/mpool/models"
#define CONFIG_IDLE_TIMEOUT_SEC_DEFAULT       INT64_C(300)
#define CONFIG_MAX_CONCURRENT_LOADS_DEFAULT   4U
#define CONFIG_MAX_CONCURRENT_LOADS_MAX       64U
#define CONFIG_MAX_QUEUED_LOADS_DEFAULT       64U
#define CONFIG_MAX_QUEUED_LOADS_MAX           1024U
#define CONFIG_HUB_ENDPOINT_DEFAULT           "https://huggingface.co"
#define CONFIG_HUB_ENDPOINT_MAX               1024U
#define CONFIG_MAX_CONCURRENT_DOWNLOADS_DEFAULT 2U
#define CONFIG_MAX_CONCURRENT_DOWNLOADS_MAX   16U
#define CONFIG_MAX_WORKERS_MAX                256U
#define CONFIG_MAX_QUEUED_REQUESTS_DEFAULT    64U
#define CONFIG_MAX_QUEUED_REQUESTS_MAX        4096U
#define CONFIG_COOLDOWN_SEC_DEFAULT           INT64_C(60)
#define CONFIG_COOLDOWN_SEC_MAX               INT64_C(86400)
/* Bounds what Preload= lines can make the daemon hold and start at boot. */
#define CONFIG_PRELOAD_MAX                    1024U

typedef enum IdlePolicy {
        IDLE_POLICY_PER_MODEL,  /* each model expires IdleTimeoutSec after its own last use */
        IDLE_POLICY_GLOBAL,     /* all models expire together, IdleTimeoutSec after any use */
        _IDLE_POLICY_MAX,
} IdlePolicy;

/* "per-model", "global"; NULL for an invalid value. */
const char *idle_policy_to_string(IdlePolicy p);
/* The policy, or -EINVAL. */
int idle_policy_from_string(const char *s);

typedef struct Config {
        char *model_dir;
        char *huggingface_cache;          /* NULL when none */
        SizeOrPercent memory_limit;       /* never zero */
        unsigned max_loaded_models;       /* 0 = no limit */
        int64_t idle_timeout_sec;         /* -1 = never, else ≥ 1 */
        IdlePolicy idle_policy;
        SizeOrPercent memory_available_min;
        char **preload;                   /* NULL-terminated, valid model names, no duplicates; may be NULL */
        unsigned max_concurrent_loads;    /* 1..CONFIG_MAX_CONCURRENT_LOADS_MAX */
        unsigned max_queued_loads;        /* 0..CONFIG_MAX_QUEUED_LOADS_MAX */
        unsigned max_concurrent_downloads; /* 1..CONFIG_MAX_CONCURRENT_DOWNLOADS_MAX */
        unsigned max_workers;             /* per model; 0 = as many as there are CPUs */
        unsigned max_queued_requests;     /* per model, 0..CONFIG_MAX_QUEUED_REQUESTS_MAX */
        int64_t cooldown_sec;             /* 1..CONFIG_COOLDOWN_SEC_MAX */
        char *hub_endpoint;               /* http:// or https:// URL, no trailing slash */
        char *hub_token_file;             /* absolute path, NULL when none; the token itself is read at use */
} Config;

/* Fills c (which holds nothing yet) with the defaults. -ENOMEM. */
int config_init_defaults(Config *c);

/* Applies the settings of the file at path on top of what c holds. When the
 * file does not exist and must_exist is false, returns 0 and leaves c as it
 * is. On any error c is left untouched too, and the function returns a
 * negative errno (-EINVAL or -ERANGE for bad content, -ENOMEM, or the errno
 * of opening or reading the file) and, if ret_error is not NULL, sets it to a
 * newly allocated message: "FILE:LINE: Key=: reason" for a bad setting,
 * "FILE:LINE: reason" for a line that is not a setting, "FILE: reason" when
 * the file cannot be read. */
int config_load_file(Config *c, const char *path, bool must_exist, char **ret_error);

/* Frees what c holds; c may then be initialised again. */
void config_done(Config *c);
