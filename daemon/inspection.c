/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "download.h"
#include "hub-token.h"
#include "inspection.h"
#include "log.h"
#include "macro.h"
#include "test-hooks.h"

struct Inspection {
        Manager *manager;
        Inspection *next;
        char *repo;
        char *owner;                  /* counted in its pending calls; NULL without a bus */
        PullProcess *process;
        sd_event_source *timer;
        InspectionReply reply;
        void *userdata;
};

static Inspection *inspection_free(Inspection *i) {
        if (!i)
                return NULL;
        /* Kills a helper still running, and waits for it: none is left behind. */
        pull_process_free(i->process);
        sd_event_source_disable_unref(i->timer);
        if (i->owner)
                peers_remove_pending(&i->manager->peers, i->owner);
        free(i->owner);
        free(i->repo);
        free(i);
        return NULL;
}

static void inspection_unlink(Inspection *i) {
        for (Inspection **p = &i->manager->inspections; *p; p = &(*p)->next)
                if (*p == i) {
                        *p = i->next;
                        return;
                }
}

/* Answers, then forgets the inspection; the caller must not touch it after. */
static void inspection_end(Inspection *i, int error, const char *message, const InspectionResult *result) {
        inspection_unlink(i);
        i->reply(error, message, result, i->userdata);
        inspection_free(i);
}

unsigned inspections_running(Manager *m) {
        unsigned n = 0;

        for (Inspection *i = m->inspections; i; i = i->next)
                n++;
        return n;
}

static void on_finished(PullProcess *p, int error, const char *failure, const char *message, void *userdata) {
        _cleanup_free_ char *text = NULL;
        Inspection *i = userdata;
        Manager *m = i->manager;

        if (error >= 0) {
                const PullInspection *weights = pull_process_inspection(p);
                InspectionResult result = {
                        .plan = pull_process_plan(p),
                        .weights = weights,
                        .memory_limit = m->pool.memory_limit,
                        .memory_pinned = pool_memory_pinned(&m->pool),
                };

                assert(weights && weights->stage == PULL_INSPECTION_COMPLETE);
                result.fits = result.memory_pinned <= result.memory_limit &&
                        weights->memory_bytes <= result.memory_limit - result.memory_pinned;
                log_info("Inspected %s at commit %s: %zu files, %" PRIu64 " bytes to download, %" PRIu64
                         " bytes of memory once loaded.", i->repo, result.plan->commit, result.plan->n_files,
                         result.plan->total_bytes, weights->memory_bytes);
                return inspection_end(i, 0, NULL, &result);
        }

        /* The helper's message is for people and holds nothing a server
         * sent in a body, nor the token (pull/PROTOCOL.md). */
        if (asprintf(&text, "Inspection of %s failed (%s): %s", i->repo, strempty(failure), strempty(message)) < 0)
                text = NULL;
        log_info("%s", strempty(text));
        inspection_end(i, text ? -EREMOTEIO : -ENOMEM, text ?: "Out of memory.", NULL);
}

static const PullCallbacks pull_callbacks = {
        .finished = on_finished,
};

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        _cleanup_free_ char *text = NULL;
        Inspection *i = userdata;
        uint64_t timeout = test_hook_inspection_timeout_usec(INSPECTION_TIMEOUT_USEC);

        log_warning("The inspection of %s took longer than %" PRIu64 " s; stopping its helper %d.", i->repo,
                    timeout / USEC_PER_SEC, (int) pull_process_pid(i->process));
        if (asprintf(&text, "Inspection of %s failed (network): the hub did not answer within %" PRIu64 " s.",
                     i->repo, timeout / USEC_PER_SEC) < 0)
                text = NULL;
        inspection_end(i, -ETIME, text ?: "Out of memory.", NULL);
        return 0;
}

int inspection_start(Manager *m, const char *repo, const char *revision, const char *token, const char *owner,
                     InspectionReply reply, void *userdata) {
        _cleanup_close_ int token_fd = -1;
        Inspection *i;
        int r;

        assert(m);
        assert(repo);
        assert(reply);

        if (!revision)
                revision = "main";
        if (download_revision_validate(revision) < 0)
                return -EINVAL;
        if (m->shutting_down || inspections_running(m) >= INSPECTIONS_MAX)
                return -EBUSY;

        i = calloc(1, sizeof *i);
        if (!i)
                return -ENOMEM;
        i->manager = m;
        i->reply = reply;
        i->userdata = userdata;
        i->repo = strdup(repo);
        if (!i->repo) {
                free(i);
                return -ENOMEM;
        }
        if (owner) {
                r = peers_add_pending(&m->peers, owner);
                if (r < 0) {
                        inspection_free(i);
                        return r;
                }
                i->owner = strdup(owner);
                if (!i->owner) {
                        peers_remove_pending(&m->peers, owner);
                        inspection_free(i);
                        return -ENOMEM;
                }
        }

        if (token)
                r = hub_token_pipe(token, strlen(token), &token_fd);
        else if (m->config.hub_token_file) {
                r = hub_token_file_pipe(m->config.hub_token_file, &token_fd);
                if (r < 0 && r != -ENOMEM) {
                        /* The administrator's file, not the caller's mistake:
                         * a failure that says why, as Pull's. */
                        _cleanup_free_ char *text = NULL;

                        if (asprintf(&text, "Inspection of %s failed (internal): cannot read the token file %s: %s",
                                     repo, m->config.hub_token_file, strerror(-r)) < 0) {
                                inspection_free(i);
                                return -ENOMEM;
                        }
                        reply(-EREMOTEIO, text, NULL, userdata);
                        inspection_free(i);
                        return 0;
                }
        } else
                r = 0;
        if (r < 0) {
                inspection_free(i);
                return r;
        }

        r = sd_event_add_time_relative(m->event, &i->timer, CLOCK_MONOTONIC,
                                       test_hook_inspection_timeout_usec(INSPECTION_TIMEOUT_USEC), USEC_PER_SEC,
                                       on_timeout, i);
        if (r < 0) {
                inspection_free(i);
                return r;
        }

        PullArguments args = {
                .helper = m->pull_helper,
                .endpoint = m->config.hub_endpoint,
                .repo = repo,
                .revision = revision,
                .token_fd = token_fd,
                .inspect = true,
        };
        r = pull_process_start(m->event, &args, &pull_callbacks, i, &i->process);
        if (r < 0) {
                log_warning_errno(r, "Cannot start %s to inspect %s: %m", m->pull_helper, repo);
                inspection_free(i);
                return r;
        }

        i->next = m->inspections;
        m->inspections = i;
        return 0;
}

void inspections_drop_owner(Manager *m, const char *owner) {
        Inspection **p = &m->inspections;

        while (*p) {
                Inspection *i = *p;

                if (!i->owner || strcmp(i->owner, owner) != 0) {
                        p = &i->next;
                        continue;
                }
                log_info("%s left the bus; stopping its inspection of %s.", owner, i->repo);
                /* Unlinked here, so the walk goes on from *p. */
                inspection_end(i, -ECANCELED, "The caller left the bus.", NULL);
        }
}

void inspections_stop_all(Manager *m) {
        while (m->inspections)
                inspection_end(m->inspections, -EBUSY, "The daemon is shutting down.", NULL);
}
