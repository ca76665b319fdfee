/* SPDX-License-Identifier: MIT */
/* The daemon's side of the mpool-pull protocol, against a stand-in helper
 * (tests/tools/fake-pull.sh) that plays each case. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "macro.h"
#include "pull-process.h"
#include "time-util.h"

#define WAIT_USEC (60 * USEC_PER_SEC)
#define FAKE_HELPER "tests/tools/fake-pull.sh"

typedef struct Run {
        sd_event *event;
        PullProcess *process;
        bool go;                  /* answer READY with GO, else cancel */
        unsigned ready_calls;
        size_t n_files;
        char first_file[64];
        char names[16][64];
        uint64_t file_sizes[4];
        uint64_t last_done, last_total;
        unsigned progress_calls;
        bool finished;
        int error;
        char failure[64];
        char message[256];
        /* An inspection's results, copied in finished. */
        bool inspected;
        char commit[41];
        uint64_t total_bytes;
        PullInspection inspection;
} Run;

static void on_ready(PullProcess *p, const PullPlan *plan, void *userdata) {
        Run *run = userdata;

        run->ready_calls++;
        run->n_files = plan->n_files;
        snprintf(run->first_file, sizeof run->first_file, "%s", plan->files[0].name);
        for (size_t i = 0; i < plan->n_files && i < ELEMENTSOF(run->names); i++)
                snprintf(run->names[i], sizeof run->names[i], "%s", plan->files[i].name);
        for (size_t i = 0; i < plan->n_files && i < ELEMENTSOF(run->file_sizes); i++)
                run->file_sizes[i] = plan->files[i].size;
        if (run->go)
                assert_int_equal(pull_process_go(p), 0);
        else
                pull_process_cancel(p);
}

static void on_progress(PullProcess *p, uint64_t done, uint64_t total, void *userdata) {
        Run *run = userdata;

        run->progress_calls++;
        run->last_done = done;
        run->last_total = total;
}

static void on_finished(PullProcess *p, int error, const char *failure, const char *message, void *userdata) {
        Run *run = userdata;

        assert_false(run->finished);
        run->finished = true;
        run->error = error;
        snprintf(run->failure, sizeof run->failure, "%s", strempty(failure));
        snprintf(run->message, sizeof run->message, "%s", strempty(message));
        if (error == 0 && pull_process_inspection(p)) {
                const PullPlan *plan = pull_process_plan(p);

                run->inspected = true;
                run->n_files = plan->n_files;
                memcpy(run->commit, plan->commit, sizeof run->commit);
                run->total_bytes = plan->total_bytes;
                run->inspection = *pull_process_inspection(p);
        }
}

static const PullCallbacks callbacks = {
        .ready = on_ready,
        .progress = on_progress,
        .finished = on_finished,
};

static void run_with(Run *run, const PullArguments *args, const PullCallbacks *cbs) {
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        assert_int_equal(sd_event_new(&run->event), 0);
        assert_int_equal(pull_process_start(run->event, args, cbs, run, &run->process), 0);
        while (!run->finished) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(run->event, 100 * USEC_PER_MSEC) >= 0);
        }
        pull_process_free(run->process);
        sd_event_unref(run->event);
}

static void run_helper(Run *run, const char *repo, int token_fd) {
        PullArguments args = {
                .helper = FAKE_HELPER,
                .endpoint = "http://127.0.0.1:1",
                .repo = repo,
                .revision = "main",
                .staging = "/nonexistent",
                .token_fd = token_fd,
        };

        run_with(run, &args, &callbacks);
}

/* An inspection: no staging folder, no ready callback. */
static const PullCallbacks inspect_callbacks = {
        .finished = on_finished,
};

static void run_inspection(Run *run, const char *repo) {
        PullArguments args = {
                .helper = FAKE_HELPER,
                .endpoint = "http://127.0.0.1:1",
                .repo = repo,
                .revision = "main",
                .token_fd = -1,
                .inspect = true,
        };

        run_with(run, &args, &inspect_callbacks);
}

static void test_download_done(void **state) {
        Run run = { .go = true };

        run_helper(&run, "ok", -1);
        assert_int_equal(run.ready_calls, 1);
        assert_int_equal(run.n_files, 2);
        assert_string_equal(run.first_file, "config.json");
        assert_int_equal(run.file_sizes[1], 4096);
        assert_int_equal(run.progress_calls, 2);
        assert_int_equal(run.last_done, 4196);
        assert_int_equal(run.error, 0);
}

static void test_download_failed(void **state) {
        Run run = { .go = true };

        run_helper(&run, "fail", -1);
        assert_int_equal(run.error, -EIO);
        assert_string_equal(run.failure, "hash-mismatch");
        assert_non_null(strstr(run.message, "model.safetensors"));
}

static void test_cancel_at_ready(void **state) {
        Run run = { .go = false };

        run_helper(&run, "ok", -1);
        assert_int_equal(run.error, -ECANCELED);
        assert_string_equal(run.failure, "cancelled");
        assert_int_equal(run.progress_calls, 0);
}

static void test_cancel_while_it_hangs(void **state) {
        Run run = { .go = false };

        run_helper(&run, "hang", -1);
        assert_int_equal(run.error, -ECANCELED);
}

/* What the code logs while it runs, stderr being the log here. */
static int stderr_capture_begin(int *ret_saved) {
        int fd, saved;

        fd = memfd_create("stderr", MFD_CLOEXEC);
        assert_true(fd >= 0);
        fflush(stderr);
        saved = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
        assert_true(saved >= 0);
        assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
        *ret_saved = saved;
        return fd;
}

static void stderr_capture_end(int fd, int saved, char *buf, size_t size) {
        ssize_t n;

        fflush(stderr);
        assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
        close(saved);
        n = pread(fd, buf, size - 1, 0);
        assert_true(n >= 0);
        buf[n] = '\0';
        close(fd);
}

/* mpool-pull has no SIGTERM handler: a cancellation kills it with our
 * signal, which is what was asked for, not a warning in the journal (the
 * stress run saw one for every cancelled download and inspection). A signal
 * that was not ours still is one. */
static void test_stopped_by_our_signal_is_no_warning(void **state) {
        char log[4096];
        int fd, saved;

        Run cancelled = { .go = false };
        fd = stderr_capture_begin(&saved);
        run_helper(&cancelled, "die-on-term", -1);
        stderr_capture_end(fd, saved, log, sizeof log);
        assert_int_equal(cancelled.error, -ECANCELED);
        if (strstr(log, "warning"))
                fail_msg("a cancellation logged: %s", log);

        Run crashed = { .go = true };
        fd = stderr_capture_begin(&saved);
        run_helper(&crashed, "crash", -1);
        stderr_capture_end(fd, saved, log, sizeof log);
        assert_int_equal(crashed.error, -EPROTO);
        assert_non_null(strstr(log, "killed by signal 9"));
}

static void test_helper_dies_without_a_word(void **state) {
        Run run = { .go = true };

        run_helper(&run, "crash", -1);
        assert_int_equal(run.error, -EPROTO);
        assert_string_equal(run.failure, "internal");
}

static void test_done_needs_a_clean_exit(void **state) {
        Run run = { .go = true };

        run_helper(&run, "done-but-exit-1", -1);
        assert_int_equal(run.error, -EPROTO);
}

static void test_protocol_violations_stop_the_helper(void **state) {
        static const char *const cases[] = { "garbage", "escape", "long" };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Run run = { .go = true };

                /* Each would sleep for 30 s: it is killed instead. */
                run_helper(&run, cases[i], -1);
                assert_int_equal(run.error, -EPROTO);
                assert_string_equal(run.failure, "protocol");
                assert_int_equal(run.ready_calls, 0);
                /* Nothing the helper said is repeated. */
                assert_null(strstr(run.message, "passwd"));
                assert_null(strstr(run.message, "rm -rf"));
        }
}

static void test_descriptors_handed_on(void **state) {
        _cleanup_close_ int leak = -1;
        int token[2];
        Run run = { .go = true };

        /* A descriptor of the daemon's without O_CLOEXEC must not reach
         * the helper; the token's must, as fd 3. */
        {
                _cleanup_close_ int low = open("/dev/null", O_RDONLY);

                assert_true(low >= 0);
                /* Above 3, so that it is not the token's number; the
                 * stand-in looks for 42. */
                leak = dup2(low, 42);
                assert_int_equal(leak, 42);
        }
        assert_int_equal(pipe2(token, O_CLOEXEC), 0);
        assert_int_equal(write(token[1], "hf_secret", 9), 9);
        close(token[1]);

        run_helper(&run, "fds", token[0]);
        close(token[0]);
        assert_int_equal(run.error, 0);
        assert_int_equal(run.file_sizes[0], 0);   /* no leak */
        assert_int_equal(run.file_sizes[1], 9);   /* the token arrived */
}

static bool run_has_name(const Run *run, const char *name) {
        for (size_t i = 0; i < run->n_files && i < ELEMENTSOF(run->names); i++)
                if (strcmp(run->names[i], name) == 0)
                        return true;
        return false;
}

static void test_environment_is_cleared(void **state) {
        Run run = { .go = true };

        /* Whatever the daemon inherited stays with it; the log level and
         * libcurl's proxy settings go along. */
        assert_int_equal(setenv("FAKE_PULL_SECRET", "do-not-pass", 1), 0);
        assert_int_equal(setenv("HOME", "/root", 1), 0);
        assert_int_equal(setenv("MPOOL_LOG_LEVEL", "debug", 1), 0);
        assert_int_equal(setenv("https_proxy", "http://127.0.0.1:9", 1), 0);
        assert_int_equal(setenv("no_proxy", "127.0.0.1", 1), 0);
        assert_int_equal(setenv("HTTP_PROXY", "http://127.0.0.1:9", 1), 0);

        run_helper(&run, "env", -1);
        assert_int_equal(run.error, 0);
        assert_true(run_has_name(&run, "MPOOL_LOG_LEVEL"));
        assert_true(run_has_name(&run, "https_proxy"));
        assert_true(run_has_name(&run, "no_proxy"));
        assert_false(run_has_name(&run, "FAKE_PULL_SECRET"));
        assert_false(run_has_name(&run, "HOME"));
        assert_false(run_has_name(&run, "PATH"));
        assert_false(run_has_name(&run, "HTTP_PROXY"));
        for (size_t i = 0; i < run.n_files; i++)
                if (strncmp(run.names[i], "ASAN_", 5) != 0 && strncmp(run.names[i], "LSAN_", 5) != 0 &&
                    strncmp(run.names[i], "UBSAN_", 6) != 0)
                        assert_true(strcmp(run.names[i], "MPOOL_LOG_LEVEL") == 0 ||
                                    strcmp(run.names[i], "https_proxy") == 0 ||
                                    strcmp(run.names[i], "no_proxy") == 0);

        unsetenv("FAKE_PULL_SECRET");
        unsetenv("MPOOL_LOG_LEVEL");
        unsetenv("https_proxy");
        unsetenv("no_proxy");
        unsetenv("HTTP_PROXY");
}

static void test_line_parsing(void **state) {
        PullPlan plan = {};
        uint64_t done = 0, total = 0;
        char *failure = NULL, *message = NULL;
        static const char *const bad[] = {
                "COMMIT 0123",
                "COMMIT 0123456789ABCDEF0123456789abcdef01234567",
                "FILE 12 - /etc/passwd",
                "FILE 12 - a/../b",
                "FILE 12 - a/b/c",
                "FILE 12 - a\tb",
                "FILE x - a",
                "FILE 99999999999999999999999 - a",
                "FILE 12 abc a",
                "PROGRESS 5 4",
                "READY now",
                "FAILED",
                "FAILED Hash oops",
                "HELLO",
                "",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (pull_line_parse(bad[i], &plan, &done, &total, &failure, &message) != -EBADMSG)
                        fail_msg("accepted: \"%s\"", bad[i]);

        assert_int_equal(pull_line_parse("COMMIT 0123456789abcdef0123456789abcdef01234567", &plan, &done, &total,
                                         &failure, &message), PULL_LINE_COMMIT);
        assert_int_equal(pull_line_parse("FILE 7 - 1_Pooling/config.json", &plan, &done, &total, &failure,
                                         &message), PULL_LINE_FILE);
        /* A name twice is no plan. */
        assert_int_equal(pull_line_parse("FILE 7 - 1_Pooling/config.json", &plan, &done, &total, &failure,
                                         &message), -EBADMSG);
        assert_int_equal(pull_line_parse("TOTAL 7 2", &plan, &done, &total, &failure, &message), -EBADMSG);
        assert_int_equal(pull_line_parse("TOTAL 7 1", &plan, &done, &total, &failure, &message), PULL_LINE_TOTAL);
        assert_int_equal(plan.total_bytes, 7);
        assert_int_equal(pull_line_parse("PROGRESS 3 7", &plan, &done, &total, &failure, &message),
                         PULL_LINE_PROGRESS);
        assert_int_equal(done, 3);
        assert_int_equal(pull_line_parse("FAILED not-found No such repository.", &plan, &done, &total, &failure,
                                         &message), PULL_LINE_FAILED);
        assert_string_equal(failure, "not-found");
        assert_string_equal(message, "No such repository.");
        free(failure);
        free(message);
        pull_plan_done(&plan);
}

static void test_inspection_done(void **state) {
        Run run = {};

        run_inspection(&run, "inspect-ok");
        assert_int_equal(run.error, 0);
        assert_true(run.inspected);
        assert_string_equal(run.commit, "0123456789abcdef0123456789abcdef01234567");
        assert_int_equal(run.n_files, 2);
        assert_int_equal(run.total_bytes, 4196);
        assert_int_equal(run.inspection.tensors, 3);
        assert_int_equal(run.inspection.parameters, 1000);
        assert_int_equal(run.inspection.n_dtypes, 2);
        assert_string_equal(run.inspection.dtypes[0].name, "BF16");
        assert_int_equal(run.inspection.dtypes[0].parameters, 600);
        assert_string_equal(run.inspection.dtypes[1].name, "F32");
        assert_int_equal(run.inspection.memory_bytes, 4096);
        assert_int_equal(run.ready_calls, 0);
}

static void test_inspection_failed(void **state) {
        Run run = {};

        run_inspection(&run, "inspect-not-found");
        assert_int_equal(run.error, -EIO);
        assert_string_equal(run.failure, "not-found");
        assert_false(run.inspected);
}

static void test_inspection_cancelled(void **state) {
        Run run = {};
        PullArguments args = {
                .helper = FAKE_HELPER,
                .endpoint = "http://127.0.0.1:1",
                .repo = "inspect-hang",
                .revision = "main",
                .token_fd = -1,
                .inspect = true,
        };
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        assert_int_equal(sd_event_new(&run.event), 0);
        assert_int_equal(pull_process_start(run.event, &args, &inspect_callbacks, &run, &run.process), 0);
        pull_process_cancel(run.process);
        while (!run.finished) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(run.event, 100 * USEC_PER_MSEC) >= 0);
        }
        assert_int_equal(run.error, -ECANCELED);
        assert_false(run.inspected);
        pull_process_free(run.process);
        sd_event_unref(run.event);
}

static void test_inspection_violations_stop_the_helper(void **state) {
        static const char *const cases[] = {
                "inspect-ready",        /* READY has no place in an inspection */
                "inspect-early",        /* results before the plan is complete */
                "inspect-no-memory",    /* DONE without MEMORY */
                "inspect-unsorted",
                "inspect-sum",          /* dtypes do not add up to PARAMETERS */
                "inspect-dtype",        /* a dtype the daemon does not know */
                "inspect-memory",       /* more memory than the plan's files */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Run run = {};

                run_inspection(&run, cases[i]);
                if (run.error != -EPROTO || strcmp(run.failure, "protocol") != 0)
                        fail_msg("%s: error %d, failure \"%s\"", cases[i], run.error, run.failure);
                assert_false(run.inspected);
                assert_null(strstr(run.message, "rm_"));
        }
}

static void test_inspection_lines_are_not_pull_lines(void **state) {
        Run run = { .go = true };

        /* A download's helper that says TENSORS breaks the protocol. */
        run_helper(&run, "inspect-ok", -1);
        assert_int_equal(run.error, -EPROTO);
        assert_string_equal(run.failure, "protocol");
        assert_int_equal(run.ready_calls, 1);
}

static void test_inspection_line_parsing(void **state) {
        PullInspection in = {};
        static const char *const bad_first[] = {
                "PARAMETERS 5", "DTYPE F32 5", "MEMORY 5", "TENSORS", "TENSORS -1", "TENSORS 1 2", "TENSORS x",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad_first); i++)
                if (pull_inspection_line_parse(bad_first[i], &in, 1 << 20) != -EBADMSG)
                        fail_msg("accepted first: \"%s\"", bad_first[i]);
        assert_int_equal(pull_inspection_line_parse("COMMIT 0123", &in, 1 << 20), -ENOMSG);
        assert_int_equal(pull_inspection_line_parse("TENSORS 2", &in, 1 << 20), PULL_LINE_TENSORS);
        assert_int_equal(pull_inspection_line_parse("TENSORS 2", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("PARAMETERS 10", &in, 1 << 20), PULL_LINE_PARAMETERS);
        assert_int_equal(pull_inspection_line_parse("DTYPE F32 11", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("DTYPE F32\t4", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("DTYPE FLOAT 4", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("DTYPE BF16 4", &in, 1 << 20), PULL_LINE_DTYPE);
        assert_int_equal(pull_inspection_line_parse("DTYPE BF16 1", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("DTYPE F32 7", &in, 1 << 20), -EBADMSG);
        /* Not all parameters have a dtype yet. */
        assert_int_equal(pull_inspection_line_parse("MEMORY 4096", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("DTYPE F32 6", &in, 1 << 20), PULL_LINE_DTYPE);
        /* Two tensors, two dtypes: a third cannot be. */
        assert_int_equal(pull_inspection_line_parse("DTYPE I8 0", &in, 1 << 20), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("MEMORY 4097", &in, 4096), -EBADMSG);
        assert_int_equal(pull_inspection_line_parse("MEMORY 4096", &in, 4096), PULL_LINE_MEMORY);
        assert_int_equal(in.stage, PULL_INSPECTION_COMPLETE);
        assert_int_equal(in.memory_bytes, 4096);
        assert_int_equal(pull_inspection_line_parse("MEMORY 4096", &in, 4096), -EBADMSG);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_line_parsing),
                cmocka_unit_test(test_download_done),
                cmocka_unit_test(test_download_failed),
                cmocka_unit_test(test_cancel_at_ready),
                cmocka_unit_test(test_cancel_while_it_hangs),
                cmocka_unit_test(test_helper_dies_without_a_word),
                cmocka_unit_test(test_stopped_by_our_signal_is_no_warning),
                cmocka_unit_test(test_done_needs_a_clean_exit),
                cmocka_unit_test(test_protocol_violations_stop_the_helper),
                cmocka_unit_test(test_descriptors_handed_on),
                cmocka_unit_test(test_inspection_line_parsing),
                cmocka_unit_test(test_inspection_done),
                cmocka_unit_test(test_inspection_failed),
                cmocka_unit_test(test_inspection_cancelled),
                cmocka_unit_test(test_inspection_violations_stop_the_helper),
                cmocka_unit_test(test_inspection_lines_are_not_pull_lines),
                cmocka_unit_test(test_environment_is_cleared),
        };

        /* As in the daemon: a helper that went away is EPIPE, not a signal. */
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
