/* SPDX-License-Identifier: MIT */
/* Inspections without a bus: the core (daemon/inspection.c) runs the
 * stand-in helper tests/tools/fake-pull.sh in its inspect mode and answers
 * through its reply, within its bounds. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "inspection.h"
#include "macro.h"
#include "manager.h"
#include "service.h"
#include "time-util.h"

#define WAIT_USEC (60 * USEC_PER_SEC)
#define FAKE_HELPER "tests/tools/fake-pull.sh"

typedef struct Answer {
        bool replied;
        int error;
        char message[256];
        char commit[41];
        size_t n_files;
        uint64_t download_bytes, memory_bytes, memory_limit, memory_pinned, parameters;
        bool fits;
} Answer;

static void on_reply(int error, const char *message, const InspectionResult *result, void *userdata) {
        Answer *a = userdata;

        assert_false(a->replied);
        a->replied = true;
        a->error = error;
        snprintf(a->message, sizeof a->message, "%s", strempty(message));
        if (error < 0) {
                assert_null(result);
                return;
        }
        memcpy(a->commit, result->plan->commit, sizeof a->commit);
        a->n_files = result->plan->n_files;
        a->download_bytes = result->plan->total_bytes;
        a->parameters = result->weights->parameters;
        a->memory_bytes = result->weights->memory_bytes;
        a->memory_limit = result->memory_limit;
        a->memory_pinned = result->memory_pinned;
        a->fits = result->fits;
}

static Manager *manager(uint64_t memory_limit) {
        Manager *m;

        assert_int_equal(manager_new(&m), 0);
        assert_int_equal(config_init_defaults(&m->config), 0);
        free(m->config.hub_endpoint);
        m->config.hub_endpoint = strdup("http://127.0.0.1:1");
        assert_non_null(m->config.hub_endpoint);
        pool_init(&m->pool, memory_limit, 0, 300, POOL_IDLE_PER_MODEL);
        assert_int_equal(sd_event_new(&m->event), 0);
        m->pull_helper = FAKE_HELPER;
        return m;
}

static void wait_reply(Manager *m, const Answer *a) {
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        while (!a->replied) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(m->event, 100 * USEC_PER_MSEC) >= 0);
        }
}

/* Every helper was waited for: the process has no child left. */
static void assert_no_helper_left(void) {
        assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
        assert_int_equal(errno, ECHILD);
}

static void test_inspect_and_fits(void **state) {
        Manager *m = manager(1 << 20);
        Answer a = {};

        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, NULL, on_reply, &a), 0);
        assert_false(a.replied);
        assert_int_equal(inspections_running(m), 1);
        wait_reply(m, &a);
        assert_int_equal(a.error, 0);
        assert_string_equal(a.commit, "0123456789abcdef0123456789abcdef01234567");
        assert_int_equal(a.n_files, 2);
        assert_int_equal(a.download_bytes, 4196);
        assert_int_equal(a.parameters, 1000);
        assert_int_equal(a.memory_bytes, 4096);
        assert_int_equal(a.memory_limit, 1 << 20);
        assert_int_equal(a.memory_pinned, 0);
        assert_true(a.fits);
        assert_int_equal(inspections_running(m), 0);
        assert_no_helper_left();

        /* A limit below the model: it does not fit. */
        m->pool.memory_limit = 4095;
        a = (Answer) {};
        assert_int_equal(inspection_start(m, "inspect-ok", "main", NULL, NULL, on_reply, &a), 0);
        wait_reply(m, &a);
        assert_int_equal(a.error, 0);
        assert_false(a.fits);
        manager_free(m);
}

static void test_pinned_models_count(void **state) {
        Manager *m = manager(12288);
        PoolModel *pinned, *idle;
        Answer a = {};

        /* What pinned models hold is not to be had; other models may be
         * unloaded to make room, so they do not count. */
        assert_int_equal(pool_add(&m->pool, "pinned", &pinned), 1);
        pinned->state = MODEL_LOADED;
        pinned->pinned = true;
        pinned->memory_bytes = 8192;
        assert_int_equal(pool_add(&m->pool, "idle", &idle), 1);
        idle->state = MODEL_LOADED;
        idle->memory_bytes = 4096;

        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, NULL, on_reply, &a), 0);
        wait_reply(m, &a);
        assert_int_equal(a.memory_pinned, 8192);
        assert_true(a.fits);      /* 4096 ≤ 12288 - 8192 */

        pinned->memory_bytes = 8193;
        a = (Answer) {};
        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, NULL, on_reply, &a), 0);
        wait_reply(m, &a);
        assert_false(a.fits);
        pinned->memory_bytes = idle->memory_bytes = 0;
        manager_free(m);
}

static void test_helper_failure_is_worded(void **state) {
        Manager *m = manager(1 << 20);
        Answer a = {};

        assert_int_equal(inspection_start(m, "inspect-not-found", NULL, NULL, NULL, on_reply, &a), 0);
        wait_reply(m, &a);
        assert_int_equal(a.error, -EREMOTEIO);
        assert_non_null(strstr(a.message, "inspect-not-found"));
        assert_non_null(strstr(a.message, "(not-found)"));

        a = (Answer) {};
        assert_int_equal(inspection_start(m, "inspect-sum", NULL, NULL, NULL, on_reply, &a), 0);
        wait_reply(m, &a);
        assert_int_equal(a.error, -EREMOTEIO);
        assert_non_null(strstr(a.message, "(protocol)"));
        assert_no_helper_left();
        manager_free(m);
}

static void test_bad_revision(void **state) {
        Manager *m = manager(1 << 20);
        Answer a = {};

        assert_int_equal(inspection_start(m, "inspect-ok", "../x", NULL, NULL, on_reply, &a), -EINVAL);
        assert_int_equal(inspection_start(m, "inspect-ok", "", NULL, NULL, on_reply, &a), -EINVAL);
        assert_false(a.replied);
        assert_int_equal(inspections_running(m), 0);
        manager_free(m);
}

static void test_bounds(void **state) {
        Manager *m = manager(1 << 20);
        Answer a[INSPECTIONS_MAX + 1] = {};

        /* At most INSPECTIONS_MAX at once, whoever asks. */
        for (unsigned i = 0; i < INSPECTIONS_MAX; i++)
                assert_int_equal(inspection_start(m, "inspect-hang", NULL, NULL, ":1.9", on_reply, &a[i]), 0);
        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, ":1.10", on_reply, &a[INSPECTIONS_MAX]),
                         -EBUSY);
        assert_int_equal(peers_pending(&m->peers, ":1.9"), INSPECTIONS_MAX);

        /* The caller leaves: its helpers are stopped, and nothing is left. */
        inspections_drop_owner(m, ":1.10");
        assert_int_equal(inspections_running(m), INSPECTIONS_MAX);
        inspections_drop_owner(m, ":1.9");
        for (unsigned i = 0; i < INSPECTIONS_MAX; i++) {
                assert_true(a[i].replied);
                assert_int_equal(a[i].error, -ECANCELED);
        }
        assert_int_equal(inspections_running(m), 0);
        assert_int_equal(peers_pending(&m->peers, ":1.9"), 0);
        assert_no_helper_left();

        /* Each counts against its caller's waiting calls. */
        for (unsigned i = 0; i < PENDING_CALLS_PER_PEER_MAX; i++)
                assert_int_equal(peers_add_pending(&m->peers, ":1.11"), 0);
        memset(a, 0, sizeof a);
        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, ":1.11", on_reply, &a[0]), -EUSERS);
        assert_int_equal(inspections_running(m), 0);
        assert_false(a[0].replied);
        manager_free(m);
}

static void test_shutdown_stops_them(void **state) {
        Manager *m = manager(1 << 20);
        Answer a = {}, b = {};

        assert_int_equal(inspection_start(m, "inspect-hang", NULL, NULL, ":1.3", on_reply, &a), 0);
        assert_int_equal(inspection_start(m, "inspect-hang", NULL, "hf_token", NULL, on_reply, &b), 0);
        inspections_stop_all(m);
        assert_int_equal(a.error, -EBUSY);
        assert_int_equal(b.error, -EBUSY);
        assert_no_helper_left();
        m->shutting_down = true;
        a = (Answer) {};
        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, NULL, on_reply, &a), -EBUSY);
        manager_free(m);
}

static void test_token_file_unreadable(void **state) {
        Manager *m = manager(1 << 20);
        Answer a = {};

        m->config.hub_token_file = strdup("/nonexistent/mpool-token");
        assert_non_null(m->config.hub_token_file);
        /* Said at once, as Pull says it. */
        assert_int_equal(inspection_start(m, "inspect-ok", NULL, NULL, ":1.4", on_reply, &a), 0);
        assert_true(a.replied);
        assert_int_equal(a.error, -EREMOTEIO);
        assert_non_null(strstr(a.message, "token file"));
        assert_int_equal(inspections_running(m), 0);
        assert_int_equal(peers_pending(&m->peers, ":1.4"), 0);
        manager_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_inspect_and_fits),
                cmocka_unit_test(test_pinned_models_count),
                cmocka_unit_test(test_helper_failure_is_worded),
                cmocka_unit_test(test_bad_revision),
                cmocka_unit_test(test_bounds),
                cmocka_unit_test(test_shutdown_stops_them),
                cmocka_unit_test(test_token_file_unreadable),
        };

        /* As in the daemon: a helper that went away is EPIPE, not a signal. */
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
