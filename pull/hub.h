/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"
#include "verify.h"

/* What the hub says about a repository at a revision, and which of its
 * files mpool takes. The model info is
 *
 *     GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true
 *
 * a JSON object of which only "sha" (the commit, 40 hex digits) and
 * "siblings" are read: each sibling an object with "rfilename", "size" and,
 * for files kept in LFS, "lfs": {"sha256", "size"}. It is read in place
 * (json-scan.h), and everything in it is bounded and checked, whether it is
 * used or not: a hub that sends a bad name for a file we skip is not one to
 * take other files from either. */

/* Bounds on what a hub may make us read or keep. */
#define HUB_INFO_SIZE_MAX (UINT64_C(32) * 1024 * 1024)
#define HUB_SIBLINGS_MAX 10000U
#define HUB_PATH_MAX 1024U              /* bytes of a file's path in the repository */
#define HUB_COMPONENT_MAX 255U          /* bytes of each of its components (NAME_MAX) */
#define HUB_COMMIT_LENGTH 40U
#define HUB_REVISION_MAX 255U
#define HUB_ENDPOINT_MAX 2048U

#define HUB_SINGLE_WEIGHTS "model.safetensors"
#define HUB_INDEX "model.safetensors.index.json"
#define HUB_WEIGHTS_SUFFIX ".safetensors"

typedef struct HubSibling {
        char *name;
        bool have_size;
        uint64_t size;
        bool lfs;
        uint8_t sha256[SHA256_SIZE];    /* when lfs */
} HubSibling;

typedef struct HubInfo {
        char commit[HUB_COMMIT_LENGTH + 1];
        HubSibling *siblings;           /* sorted by name, each once */
        size_t n_siblings;
} HubInfo;

void hub_info_done(HubInfo *info);

/* Reads the model info. 0, or -EBADMSG with a protocol failure recorded in
 * e (-ENOMEM: internal). On failure *ret is untouched. */
int hub_info_parse(const void *text, size_t length, HubInfo *ret, PullError *e);

const HubSibling *hub_info_find(const HubInfo *info, const char *name);

/* A file to fetch. */
typedef struct PlanFile {
        char *name;
        uint64_t size;
        bool have_sha256;
        uint8_t sha256[SHA256_SIZE];
        bool weights;                   /* a safetensors file */
} PlanFile;

typedef struct Plan {
        PlanFile *files;
        size_t n_files;
        /* The index, when the weights are sharded: its shards are added once
         * it has been read (hub_plan_add_shards()). */
        const PlanFile *index;
} Plan;

void plan_done(Plan *plan);

/* Picks the files mpool uses: config.json, the tokenizer's and
 * sentence-transformers' files, and model.safetensors, or else
 * model.safetensors.index.json (its shards follow once it is read). The
 * index comes first. -ENOENT with an "unsupported" failure when the
 * repository has no safetensors weights. */
int hub_plan(const HubInfo *info, const char *repo, const char *revision, Plan *ret, PullError *e);

/* Adds the shards the index names (store_index_parse()): each must be a
 * sibling named *.safetensors. */
int hub_plan_add_shards(Plan *plan, const HubInfo *info, char * const *shards, PullError *e);

uint64_t plan_total_bytes(const Plan *plan);

/* Checks of what the daemon passes: -EINVAL with a message in e. */
int hub_endpoint_validate(const char *endpoint, PullError *e);
int hub_revision_validate(const char *revision, PullError *e);

/* The URLs, with the revision and file names escaped. */
int hub_info_url(const char *endpoint, const char *repo, const char *revision, char **ret);
int hub_file_url(const char *endpoint, const char *repo, const char *commit, const char *name, char **ret);
