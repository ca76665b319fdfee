/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "hub.h"
#include "json-scan.h"
#include "macro.h"

/* The files besides the weights that mpool reads: the model's
 * configuration, its tokenizer's, and sentence-transformers' (pooling). */
static const char *const wanted_files[] = {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "merges.txt",
        "vocab.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
};

void hub_info_done(HubInfo *info) {
        for (size_t i = 0; i < info->n_siblings; i++)
                free(info->siblings[i].name);
        free(info->siblings);
        *info = (HubInfo) {};
}

void plan_done(Plan *plan) {
        for (size_t i = 0; i < plan->n_files; i++)
                free(plan->files[i].name);
        free(plan->files);
        *plan = (Plan) {};
}

/* A path in a repository that is safe to show and to compare: relative,
 * its components neither empty, "." nor "..", none longer than NAME_MAX,
 * valid UTF-8 without control characters. (Only a few of them are ever
 * written, each by a fixed name; the rest is checked so that the hub is.) */
static bool repository_path_is_valid(const char *s, size_t n) {
        size_t component = 0;

        if (n == 0 || n > HUB_PATH_MAX || s[0] == '/')
                return false;
        for (size_t i = 0; i < n;) {
                uint8_t c = (uint8_t) s[i];
                size_t k;

                if (c == '/') {
                        if (component == 0)
                                return false;
                        component = 0;
                        i++;
                        continue;
                }
                if (c < 0x20 || c == 0x7f)
                        return false;
                k = json_utf8_sequence_length((const uint8_t *) s + i, n - i);
                if (k == 0)
                        return false;
                /* "." and ".." as whole components. */
                if (c == '.' && component == 0 &&
                    (i + 1 == n || s[i + 1] == '/' || (s[i + 1] == '.' && (i + 2 == n || s[i + 2] == '/'))))
                        return false;
                component += k;
                if (component > HUB_COMPONENT_MAX)
                        return false;
                i += k;
        }
        return component > 0;
}

static bool commit_is_valid(const char *s, size_t n) {
        if (n != HUB_COMMIT_LENGTH)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

typedef struct InfoReader {
        JsonScan json;
        PullError *error;
        HubInfo info;
        size_t allocated;
        unsigned n_sha;
        unsigned n_siblings_members;
} InfoReader;

static int info_violation(InfoReader *x, const char *format, ...) _printf_(2, 3);
static int info_violation(InfoReader *x, const char *format, ...) {
        char message[PULL_MESSAGE_MAX];
        va_list ap;

        va_start(ap, format);
        vsnprintf(message, sizeof message, format, ap);
        va_end(ap);
        return pull_error(x->error, PULL_PROTOCOL, -EBADMSG, "The hub's model info is not valid: %s.", message);
}

static int read_lfs(InfoReader *x, size_t entry, HubSibling *sibling, bool *have_lfs_size, uint64_t *lfs_size) {
        bool have_sha256 = false;
        JsonString key, string;
        JsonKind kind;
        uint64_t number;
        size_t n = 0;
        int r;

        if (json_peek(&x->json) != '{') {
                r = json_read_value(&x->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                if (kind == JSON_NULL)
                        return 0;
                return info_violation(x, "\"lfs\" of file %zu is %s, not an object", entry,
                                      json_kind_to_string(kind));
        }

        r = json_enter(&x->json);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                if (json_string_equal(&x->json, &key, "sha256")) {
                        r = json_read_value(&x->json, &kind, NULL, &string);
                        if (r < 0)
                                return r;
                        if (kind != JSON_STRING || string.escaped ||
                            sha256_from_hex((const char *) x->json.text + string.begin, string.end - string.begin,
                                            sibling->sha256) < 0)
                                return info_violation(x, "the sha256 of file %zu is not 64 hex digits", entry);
                        have_sha256 = true;
                } else if (json_string_equal(&x->json, &key, "size")) {
                        r = json_read_value(&x->json, &kind, &number, NULL);
                        if (r < 0)
                                return r;
                        if (kind != JSON_WHOLE)
                                return info_violation(x, "the LFS size of file %zu is not a whole number", entry);
                        *have_lfs_size = true;
                        *lfs_size = number;
                } else
                        r = json_read_value(&x->json, NULL, NULL, NULL);
        }
        if (r < 0)
                return r;
        if (!have_sha256)
                return info_violation(x, "file %zu is in LFS without a sha256", entry);
        sibling->lfs = true;
        return 0;
}

static int read_sibling(InfoReader *x, size_t entry) {
        _cleanup_free_ char *name = NULL;
        HubSibling sibling = {};
        bool have_lfs_size = false;
        uint64_t lfs_size = 0, number;
        JsonString key, string;
        JsonKind kind;
        size_t n = 0;
        int r;

        if (json_peek(&x->json) != '{') {
                r = json_read_value(&x->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                return info_violation(x, "file %zu is %s, not an object", entry, json_kind_to_string(kind));
        }

        r = json_enter(&x->json);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                if (json_string_equal(&x->json, &key, "rfilename")) {
                        size_t length;

                        r = json_read_value(&x->json, &kind, NULL, &string);
                        if (r < 0)
                                return r;
                        if (kind != JSON_STRING)
                                return info_violation(x, "the name of file %zu is %s, not a string", entry,
                                                      json_kind_to_string(kind));
                        if (name)
                                return info_violation(x, "file %zu has more than one name", entry);
                        length = json_string_length(&x->json, &string);
                        if (length == 0 || length > HUB_PATH_MAX)
                                return info_violation(x, "the name of file %zu is empty or longer than %u bytes",
                                                      entry, HUB_PATH_MAX);
                        name = malloc(length + 1);
                        if (!name)
                                return pull_error(x->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
                        if (json_string_decode(&x->json, &string, name, length + 1) != length ||
                            strlen(name) != length || !repository_path_is_valid(name, length))
                                return info_violation(x,
                                                      "the name of file %zu is not a relative path of printable "
                                                      "components of at most %u bytes",
                                                      entry, HUB_COMPONENT_MAX);
                } else if (json_string_equal(&x->json, &key, "size")) {
                        r = json_read_value(&x->json, &kind, &number, NULL);
                        if (r < 0)
                                return r;
                        if (kind != JSON_WHOLE)
                                return info_violation(x, "the size of file %zu is not a whole number", entry);
                        sibling.have_size = true;
                        sibling.size = number;
                } else if (json_string_equal(&x->json, &key, "lfs"))
                        r = read_lfs(x, entry, &sibling, &have_lfs_size, &lfs_size);
                else
                        r = json_read_value(&x->json, NULL, NULL, NULL);
        }
        if (r < 0)
                return r;

        if (!name)
                return info_violation(x, "file %zu has no \"rfilename\"", entry);
        if (have_lfs_size) {
                if (sibling.have_size && sibling.size != lfs_size)
                        return info_violation(x, "file %zu has two different sizes", entry);
                sibling.have_size = true;
                sibling.size = lfs_size;
        }

        if (x->info.n_siblings >= x->allocated) {
                size_t allocated = MAX(x->allocated * 2, (size_t) 64);
                HubSibling *p = reallocarray(x->info.siblings, allocated, sizeof *p);

                if (!p)
                        return pull_error(x->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
                x->info.siblings = p;
                x->allocated = allocated;
        }
        sibling.name = TAKE_PTR(name);
        x->info.siblings[x->info.n_siblings++] = sibling;
        return 0;
}

static int read_siblings(InfoReader *x) {
        JsonKind kind;
        size_t n = 0;
        int r;

        if (++x->n_siblings_members > 1)
                return info_violation(x, "\"siblings\" appears more than once");
        if (json_peek(&x->json) != '[') {
                r = json_read_value(&x->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                return info_violation(x, "\"siblings\" is %s, not an array", json_kind_to_string(kind));
        }

        r = json_enter(&x->json);
        while (r >= 0 && (r = json_array_next(&x->json, &n)) > 0) {
                if (n > HUB_SIBLINGS_MAX)
                        return info_violation(x, "it lists more than %u files", HUB_SIBLINGS_MAX);
                r = read_sibling(x, n - 1);
        }
        return r;
}

static int read_commit(InfoReader *x) {
        JsonString string;
        JsonKind kind;
        int r;

        if (++x->n_sha > 1)
                return info_violation(x, "\"sha\" appears more than once");
        r = json_read_value(&x->json, &kind, NULL, &string);
        if (r < 0)
                return r;
        if (kind != JSON_STRING || string.escaped ||
            !commit_is_valid((const char *) x->json.text + string.begin, string.end - string.begin))
                return info_violation(x, "the commit (\"sha\") is not 40 lowercase hex digits");
        memcpy(x->info.commit, x->json.text + string.begin, HUB_COMMIT_LENGTH);
        x->info.commit[HUB_COMMIT_LENGTH] = '\0';
        return 0;
}

static int compare_siblings(const void *a, const void *b) {
        return strcmp(((const HubSibling *) a)->name, ((const HubSibling *) b)->name);
}

int hub_info_parse(const void *text, size_t length, HubInfo *ret, PullError *e) {
        InfoReader x = {
                .json = {
                        .text = text,
                        .length = length,
                        .end_of_text = "the end of the model info where a value must be",
                },
                .error = e,
        };
        JsonString key;
        JsonKind kind;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(&x.json);
        if (r >= 0 && json_peek(&x.json) != '{') {
                r = json_read_value(&x.json, &kind, NULL, NULL);
                if (r >= 0)
                        r = info_violation(&x, "it is %s, not an object", json_kind_to_string(kind));
        } else if (r >= 0) {
                r = json_enter(&x.json);
                while (r >= 0 && (r = json_object_next(&x.json, &n, &key)) > 0) {
                        if (json_string_equal(&x.json, &key, "sha"))
                                r = read_commit(&x);
                        else if (json_string_equal(&x.json, &key, "siblings"))
                                r = read_siblings(&x);
                        else
                                r = json_read_value(&x.json, NULL, NULL, NULL);
                }
        }
        if (r >= 0)
                r = json_skip_whitespace(&x.json);
        if (r >= 0 && x.json.pos < x.json.length)
                r = json_syntax_error_at(&x.json, x.json.pos, "text after the end of the JSON value");
        if (r == -EBADMSG && x.json.syntax_error)
                r = info_violation(&x, "not valid JSON: %s at byte %zu", x.json.syntax_error,
                                   x.json.syntax_error_at);
        if (r >= 0 && x.n_sha == 0)
                r = info_violation(&x, "it names no commit (\"sha\")");
        if (r >= 0 && x.n_siblings_members == 0)
                r = info_violation(&x, "it has no file list (\"siblings\")");
        if (r >= 0) {
                if (x.info.n_siblings > 0)
                        qsort(x.info.siblings, x.info.n_siblings, sizeof *x.info.siblings, compare_siblings);
                for (size_t i = 1; i < x.info.n_siblings && r >= 0; i++)
                        if (strcmp(x.info.siblings[i - 1].name, x.info.siblings[i].name) == 0)
                                r = info_violation(&x, "a file is listed twice");
        }
        if (r < 0) {
                if (!e->set)
                        pull_error(e, PULL_INTERNAL, r, "Cannot read the hub's model info: %m");
                hub_info_done(&x.info);
                return r;
        }

        *ret = x.info;
        return 0;
}

const HubSibling *hub_info_find(const HubInfo *info, const char *name) {
        HubSibling key = { .name = (char *) name };

        if (info->n_siblings == 0)
                return NULL;
        return bsearch(&key, info->siblings, info->n_siblings, sizeof key, compare_siblings);
}

static int plan_add(Plan *plan, const HubSibling *s, bool weights, PullError *e) {
        PlanFile *p, f = {
                .size = s->size,
                .have_sha256 = s->lfs,
                .weights = weights,
        };

        if (!s->have_size)
                return pull_error(e, PULL_PROTOCOL, -EBADMSG,
                                  "The hub's model info gives no size for %s.", s->name);
        memcpy(f.sha256, s->sha256, SHA256_SIZE);
        f.name = strdup(s->name);
        if (!f.name)
                return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");

        /* plan->index points into the array: keep it pointing right. */
        size_t index_at = plan->index ? (size_t) (plan->index - plan->files) : SIZE_MAX;
        p = reallocarray(plan->files, plan->n_files + 1, sizeof *p);
        if (!p) {
                free(f.name);
                return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        }
        plan->files = p;
        plan->files[plan->n_files++] = f;
        if (index_at != SIZE_MAX)
                plan->index = plan->files + index_at;
        return 0;
}

int hub_plan(const HubInfo *info, const char *repo, const char *revision, Plan *ret, PullError *e) {
        _cleanup_(plan_done) Plan plan = {};
        const HubSibling *s;
        int r;

        /* A single file wins over an index, as in the store and in the
         * transformers library. The index first, since it must be read before
         * the rest of the plan is known. */
        s = hub_info_find(info, HUB_SINGLE_WEIGHTS);
        if (!s) {
                s = hub_info_find(info, HUB_INDEX);
                if (!s)
                        return pull_error(e, PULL_UNSUPPORTED, -ENOENT, "There are no safetensors weights in %s at %s.",
                                          repo, revision);
                r = plan_add(&plan, s, false, e);
                if (r < 0)
                        return r;
                plan.index = &plan.files[0];
                s = NULL;
        }

        for (size_t i = 0; i < ELEMENTSOF(wanted_files); i++) {
                const HubSibling *w = hub_info_find(info, wanted_files[i]);

                if (!w)
                        continue;
                r = plan_add(&plan, w, false, e);
                if (r < 0)
                        return r;
        }
        if (s) {
                r = plan_add(&plan, s, true, e);
                if (r < 0)
                        return r;
        }

        *ret = plan;
        plan = (Plan) {};
        return 0;
}

static bool has_suffix(const char *s, const char *suffix) {
        size_t n = strlen(s), k = strlen(suffix);

        return n > k && strcmp(s + n - k, suffix) == 0;
}

int hub_plan_add_shards(Plan *plan, const HubInfo *info, char * const *shards, PullError *e) {
        int r;

        for (size_t i = 0; shards && shards[i]; i++) {
                const HubSibling *s;

                /* The index read is the daemon's, which already allows only
                 * plain printable names; the suffix keeps a shard from
                 * standing in for a file of another kind. */
                if (!has_suffix(shards[i], HUB_WEIGHTS_SUFFIX))
                        return pull_error(e, PULL_PROTOCOL, -EBADMSG,
                                          "%s names a shard that is not a .safetensors file (entry %zu of its shards).",
                                          HUB_INDEX, i);
                s = hub_info_find(info, shards[i]);
                if (!s)
                        return pull_error(e, PULL_PROTOCOL, -EBADMSG,
                                          "%s names the shard %s, which the repository does not hold.", HUB_INDEX,
                                          shards[i]);
                r = plan_add(plan, s, true, e);
                if (r < 0)
                        return r;
        }
        return 0;
}

uint64_t plan_total_bytes(const Plan *plan) {
        uint64_t total = 0;

        for (size_t i = 0; i < plan->n_files; i++)
                total = plan->files[i].size > UINT64_MAX - total ? UINT64_MAX : total + plan->files[i].size;
        return total;
}

static bool printable_ascii(const char *s) {
        for (; *s; s++)
                if (*s <= 0x20 || *s >= 0x7f)
                        return false;
        return true;
}

int hub_endpoint_validate(const char *endpoint, PullError *e) {
        size_t n = strlen(endpoint);

        if (n == 0 || n > HUB_ENDPOINT_MAX || !printable_ascii(endpoint) ||
            !(strncmp(endpoint, "http://", 7) == 0 || strncmp(endpoint, "https://", 8) == 0) ||
            strchr(endpoint, '?') || strchr(endpoint, '#'))
                return pull_error(e, PULL_INTERNAL, -EINVAL,
                                  "The endpoint must be an http:// or https:// URL of at most %u printable "
                                  "characters, without query or fragment.",
                                  HUB_ENDPOINT_MAX);
        return 0;
}

int hub_revision_validate(const char *revision, PullError *e) {
        size_t n = strlen(revision);

        if (n == 0 || n > HUB_REVISION_MAX || !printable_ascii(revision))
                return pull_error(e, PULL_INTERNAL, -EINVAL,
                                  "The revision must be 1 to %u printable characters without spaces.",
                                  HUB_REVISION_MAX);
        return 0;
}

static size_t endpoint_length(const char *endpoint) {
        size_t n = strlen(endpoint);

        while (n > 0 && endpoint[n - 1] == '/')
                n--;
        return n;
}

static char *escape(const char *s) {
        char *c = curl_easy_escape(NULL, s, 0), *copy;

        if (!c)
                return NULL;
        copy = strdup(c);
        curl_free(c);
        return copy;
}

int hub_info_url(const char *endpoint, const char *repo, const char *revision, char **ret) {
        /* The revision is one path segment, as the hub's own client sends
         * it: "refs/pr/1" goes as refs%2Fpr%2F1. */
        _cleanup_free_ char *rev = escape(revision);

        if (!rev || asprintf(ret, "%.*s/api/models/%s/revision/%s?blobs=true", (int) endpoint_length(endpoint),
                             endpoint, repo, rev) < 0)
                return -ENOMEM;
        return 0;
}

int hub_file_url(const char *endpoint, const char *repo, const char *commit, const char *name, char **ret) {
        _cleanup_free_ char *copy = strdup(name), *path = strdup("");
        char *rest = copy, *component;

        if (!copy || !path)
                return -ENOMEM;
        /* Each component escaped, the slashes between them kept. */
        while ((component = strsep(&rest, "/"))) {
                _cleanup_free_ char *e = escape(component);
                char *joined;

                if (!e || asprintf(&joined, "%s%s%s", path, *path ? "/" : "", e) < 0)
                        return -ENOMEM;
                free(path);
                path = joined;
        }

        if (asprintf(ret, "%.*s/%s/resolve/%s/%s", (int) endpoint_length(endpoint), endpoint, repo, commit,
                     path) < 0)
                return -ENOMEM;
        return 0;
}
