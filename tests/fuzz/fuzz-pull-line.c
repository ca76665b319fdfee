/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the download helper's line protocol as the
 * daemon reads it (pull/PROTOCOL.md): the plan, progress and outcome lines
 * (pull_line_parse()) and an inspection's results
 * (pull_inspection_line_parse()), line after line as the daemon feeds them.
 * `make fuzz` builds and runs it; `make check` replays tests/fuzz/pull-line/.
 *
 * Input: one byte of options (bit 0: an inspection, whose lines are offered
 * to the inspection's reader first, as the daemon does), then the helper's
 * output, split at newlines. Lines longer than PULL_LINE_MAX are dropped,
 * as the daemon never hands them over. Each line is a string of exactly its
 * size, so that any read past it is caught by AddressSanitizer. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pull-process.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_lower_hex(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!s[i] || !strchr("0123456789abcdef", s[i]))
                        return false;
        return s[n] == 0;
}

static void check_plan(const PullPlan *plan, size_t n_before) {
        if (plan->commit[0] && !is_lower_hex(plan->commit, 40))
                abort();
        if (plan->n_files > PULL_FILES_MAX || plan->n_files < n_before || plan->n_files > n_before + 1)
                abort();
        for (size_t i = 0; i < plan->n_files; i++) {
                const PullFile *f = &plan->files[i];

                if (!f->name || strlen(f->name) == 0 || (f->sha256[0] && !is_lower_hex(f->sha256, 64)))
                        abort();
        }
}

static void check_inspection(const PullInspection *in) {
        uint64_t sum = 0;

        if (in->n_dtypes > PULL_DTYPES_MAX || in->n_dtypes > in->tensors || in->stage > PULL_INSPECTION_COMPLETE)
                abort();
        for (size_t i = 0; i < in->n_dtypes; i++) {
                if (__builtin_add_overflow(sum, in->dtypes[i].parameters, &sum) || sum > in->parameters)
                        abort();
                if (i > 0 && strcmp(in->dtypes[i - 1].name, in->dtypes[i].name) >= 0)
                        abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        PullInspection inspection = {};
        const uint8_t *p, *end;
        PullPlan plan = {};
        bool inspect;

        if (size < 1)
                return 0;
        inspect = data[0] & 1;
        p = data + 1;
        end = data + size;

        while (p < end) {
                const uint8_t *nl = memchr(p, '\n', (size_t) (end - p));
                size_t length = nl ? (size_t) (nl - p) : (size_t) (end - p), n_before = plan.n_files;
                char *failure = NULL, *message = NULL, *line;
                uint64_t done = 0, total = 0;
                int kind = -ENOMSG;

                if (length > PULL_LINE_MAX || memchr(p, 0, length))
                        goto next;      /* the daemon's reader stops there */
                line = malloc(length + 1);
                if (!line)
                        break;
                memcpy(line, p, length);
                line[length] = 0;

                if (inspect) {
                        kind = pull_inspection_line_parse(line, &inspection, UINT64_C(1) << 40);
                        if (kind >= 0 && kind != PULL_LINE_TENSORS && kind != PULL_LINE_PARAMETERS &&
                            kind != PULL_LINE_DTYPE && kind != PULL_LINE_MEMORY)
                                abort();
                        if (kind == PULL_LINE_MEMORY && inspection.memory_bytes > UINT64_C(1) << 40)
                                abort();
                        check_inspection(&inspection);
                }
                if (kind == -ENOMSG) {
                        kind = pull_line_parse(line, &plan, &done, &total, &failure, &message);
                        if (kind == PULL_LINE_PROGRESS && done > total)
                                abort();
                        if ((kind == PULL_LINE_FAILED) != (failure && message))
                                abort();
                        if (kind == -ENOMSG || kind > PULL_LINE_FAILED)
                                abort();
                        check_plan(&plan, n_before);
                }
                free(failure);
                free(message);
                free(line);
        next:
                p = nl ? nl + 1 : end;
        }

        pull_plan_done(&plan);
        return 0;
}
