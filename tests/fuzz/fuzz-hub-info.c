/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the hub's JSON responses as mpool-pull reads
 * them: the model info (hub_info_parse()), the plan made from it
 * (hub_plan()) and, for sharded weights, the index fetched next
 * (store_index_parse(), then hub_plan_add_shards()). `make fuzz` builds
 * and runs it; `make check` replays tests/fuzz/hub-info/.
 *
 * Input: the model info's text, then optionally a NUL byte and the index's
 * text. Each is handed over in a buffer of exactly its size, so that any
 * read past it is caught by AddressSanitizer. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hub.h"
#include "store.h"
#include "strv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_lower_hex(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!strchr("0123456789abcdef", s[i]) || s[i] == 0)
                        return false;
        return s[n] == 0;
}

static void check_error(const PullError *e) {
        if (!e->set || e->kind < 0 || e->kind >= _PULL_FAILURE_MAX || strlen(e->message) == 0 ||
            strlen(e->message) >= PULL_MESSAGE_MAX)
                abort();
        for (const char *p = e->message; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        abort();
}

static void check_info(const HubInfo *info) {
        if (!is_lower_hex(info->commit, HUB_COMMIT_LENGTH) || info->n_siblings > HUB_SIBLINGS_MAX)
                abort();
        for (size_t i = 0; i < info->n_siblings; i++) {
                const char *name = info->siblings[i].name;

                if (!name || strlen(name) == 0 || strlen(name) > HUB_PATH_MAX)
                        abort();
                if (i > 0 && strcmp(info->siblings[i - 1].name, name) >= 0)
                        abort();
                if (hub_info_find(info, name) != &info->siblings[i])
                        abort();
        }
}

static void check_plan(const Plan *plan, const HubInfo *info) {
        if (plan->n_files == 0 || (plan->index && plan->index != &plan->files[0]))
                abort();
        for (size_t i = 0; i < plan->n_files; i++) {
                const HubSibling *s = hub_info_find(info, plan->files[i].name);

                if (!s || (s->have_size && s->size != plan->files[i].size))
                        abort();
                if (plan->files[i].have_sha256 != s->lfs ||
                    (s->lfs && memcmp(s->sha256, plan->files[i].sha256, SHA256_SIZE) != 0))
                        abort();
        }
        (void) plan_total_bytes(plan);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint8_t *nul = memchr(data, 0, size);
        size_t info_length = nul ? (size_t) (nul - data) : size, index_length = 0;
        char *text = NULL, *index_text = NULL, **shards = NULL, *why = NULL;
        HubInfo info = {};
        PullError e = {};
        Plan plan = {};
        int r;

        text = malloc(info_length > 0 ? info_length : 1);
        if (!text)
                return 0;
        memcpy(text, data, info_length);
        if (nul) {
                index_length = size - info_length - 1;
                index_text = malloc(index_length > 0 ? index_length : 1);
                if (!index_text)
                        goto finish;
                memcpy(index_text, nul + 1, index_length);
        }

        r = hub_info_parse(text, info_length, &info, &e);
        if (r == -EBADMSG) {
                check_error(&e);
                if (info.siblings || info.n_siblings || info.commit[0])
                        abort();
                goto finish;
        }
        if (r < 0) {
                if (r != -ENOMEM)
                        abort();
                goto finish;
        }
        if (e.set)
                abort();
        check_info(&info);

        r = hub_plan(&info, "org/model", "main", &plan, &e);
        if (r < 0) {
                if (r != -ENOENT && r != -EBADMSG && r != -ENOMEM && r != -EFBIG)
                        abort();
                if (r != -ENOMEM)
                        check_error(&e);
                goto finish;
        }
        check_plan(&plan, &info);
        if (!plan.index || !index_text)
                goto finish;

        r = store_index_parse(index_text, index_length, NULL, NULL, &shards, &why);
        if (r < 0)
                goto finish;
        r = hub_plan_add_shards(&plan, &info, shards, &e);
        if (r < 0) {
                if (r != -EBADMSG && r != -ENOMEM && r != -EFBIG && r != -E2BIG)
                        abort();
                if (r != -ENOMEM)
                        check_error(&e);
        } else
                check_plan(&plan, &info);

finish:
        plan_done(&plan);
        hub_info_done(&info);
        strv_free(shards);
        free(why);
        free(index_text);
        free(text);
        return 0;
}
