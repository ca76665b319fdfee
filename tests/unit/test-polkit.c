/* SPDX-License-Identifier: MIT */
/* polkit_verify_async() against a private dbus-daemon (started per test) and
 * a fake polkit authority in this process, which records every
 * CheckAuthorization call and answers from a script, or holds the calls to
 * answer them later. Skipped when dbus-daemon is not installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "macro.h"
#include "mpool-bus.h"
#include "polkit.h"

#define TEST_PATH      "/org/mpool/Test"
#define TEST_INTERFACE "org.mpool.Test"
#define RUN_TIMEOUT_USEC (10 * USEC_PER_SEC)
#define CLIENTS_MAX 16
#define REQUESTS_MAX 256
#define SCRIPT_MAX 8

typedef enum Answer {
        ANSWER_AUTHORIZED,
        ANSWER_DENIED,
        ANSWER_CHALLENGE,
        ANSWER_ERROR,
        ANSWER_BUS_LIMIT,
} Answer;

typedef struct Request {
        char *subject_kind;
        char *subject_name;
        char *action;
        char *details;       /* "k=v;k=v;" */
        uint32_t flags;
        char *cancellation_id;
        sd_bus_message *held;
} Request;

typedef struct Reply {
        bool done;
        char *error_name;
        char *error_message;
        uint32_t executed;
} Reply;

typedef struct Fixture {
        char dir[64];
        pid_t bus_pid;
        char address[256];
        sd_event *event;
        sd_bus *service;
        sd_bus *polkit;
        sd_bus *clients[CLIENTS_MAX];
        PolkitRegistry *registry;

        /* fake polkit */
        Answer script[SCRIPT_MAX];
        unsigned n_script;
        bool hold;
        Request requests[REQUESTS_MAX];
        unsigned n_requests;

        /* service */
        unsigned handler_runs;
        unsigned executed;
} Fixture;

static char *xstrdup(const char *s) {
        char *copy = strdup(s);
        assert_non_null(copy);
        return copy;
}

/* ---- the fake polkit authority ---- */

static int send_answer(sd_bus_message *call, Answer answer) {
        switch (answer) {
        case ANSWER_AUTHORIZED:
                return sd_bus_reply_method_return(call, "(bba{ss})", 1, 0, 0);
        case ANSWER_DENIED:
                return sd_bus_reply_method_return(call, "(bba{ss})", 0, 0, 0);
        case ANSWER_CHALLENGE:
                return sd_bus_reply_method_return(call, "(bba{ss})", 0, 1, 0);
        case ANSWER_BUS_LIMIT:
                return sd_bus_reply_method_errorf(call, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                                  "The maximum number of pending replies per connection has been reached");
        case ANSWER_ERROR:
        default:
                return sd_bus_reply_method_errorf(call, "org.freedesktop.PolicyKit1.Error.Failed",
                                                  "Test failure of the authority");
        }
}

static int fake_check_authorization(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Fixture *f = userdata;
        Request *req;
        const char *kind, *action, *cancellation_id;
        uint32_t flags;
        char details[512] = "";
        int r;

        assert_true(f->n_requests < REQUESTS_MAX);
        req = &f->requests[f->n_requests++];

        assert_int_equal(sd_bus_message_enter_container(m, 'r', "sa{sv}"), 1);
        assert_int_equal(sd_bus_message_read(m, "s", &kind), 1);
        req->subject_kind = xstrdup(kind);
        assert_int_equal(sd_bus_message_enter_container(m, 'a', "{sv}"), 1);
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *value;

                assert_int_equal(sd_bus_message_read(m, "s", &key), 1);
                assert_string_equal(key, "name");
                assert_int_equal(sd_bus_message_read(m, "v", "s", &value), 1);
                req->subject_name = xstrdup(value);
                assert_int_equal(sd_bus_message_exit_container(m), 1);
        }
        assert_int_equal(r, 0);
        assert_int_equal(sd_bus_message_exit_container(m), 1);
        assert_int_equal(sd_bus_message_exit_container(m), 1);

        assert_int_equal(sd_bus_message_read(m, "s", &action), 1);
        req->action = xstrdup(action);
        assert_int_equal(sd_bus_message_enter_container(m, 'a', "{ss}"), 1);
        while ((r = sd_bus_message_enter_container(m, 'e', "ss")) > 0) {
                const char *key, *value;

                assert_int_equal(sd_bus_message_read(m, "ss", &key, &value), 1);
                strncat(details, key, sizeof details - strlen(details) - 1);
                strncat(details, "=", sizeof details - strlen(details) - 1);
                strncat(details, value, sizeof details - strlen(details) - 1);
                strncat(details, ";", sizeof details - strlen(details) - 1);
                assert_int_equal(sd_bus_message_exit_container(m), 1);
        }
        assert_int_equal(r, 0);
        assert_int_equal(sd_bus_message_exit_container(m), 1);
        req->details = xstrdup(details);
        assert_int_equal(sd_bus_message_read(m, "us", &flags, &cancellation_id), 1);
        req->flags = flags;
        req->cancellation_id = xstrdup(cancellation_id);

        if (f->hold) {
                req->held = sd_bus_message_ref(m);
                return 1;
        }
        assert_true(f->n_requests <= f->n_script);
        return send_answer(m, f->script[f->n_requests - 1]);
}

static const sd_bus_vtable fake_polkit_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("CheckAuthorization", "(sa{sv})sa{ss}us", "(bba{ss})", fake_check_authorization,
                      SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

/* ---- the service under test ---- */

static int method_load(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        static const char *const details[] = { "model", "demo/tiny", NULL };
        Fixture *f = userdata;
        int r;

        f->handler_runs++;
        r = polkit_verify_async(f->registry, m, POLKIT_ACTION_LOAD, details, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        f->executed++;
        return sd_bus_reply_method_return(m, "u", f->executed);
}

/* Needs two actions, like Load with "pin". */
static int method_load_pinned(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Fixture *f = userdata;
        int r;

        f->handler_runs++;
        r = polkit_verify_async(f->registry, m, POLKIT_ACTION_LOAD, NULL, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;
        r = polkit_verify_async(f->registry, m, POLKIT_ACTION_CONFIGURE, NULL, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        f->executed++;
        return sd_bus_reply_method_return(m, "u", f->executed);
}

static const sd_bus_vtable service_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Load", "", "u", method_load, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("LoadPinned", "", "u", method_load_pinned, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

/* ---- bus plumbing ---- */

static bool find_dbus_daemon(void) {
        return access("/usr/bin/dbus-daemon", X_OK) == 0 || access("/bin/dbus-daemon", X_OK) == 0;
}

/* The bus keeps dbus-daemon's default limits, max_replies_per_connection=128
 * among them, as on the system bus: the registry's limits must fit. */
static void start_bus(Fixture *f) {
        char config[128], command[512], pid_line[64];
        FILE *out, *p;

        strcpy(f->dir, "/tmp/test-polkit-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(config, sizeof config, "%s/bus.conf", f->dir);

        out = fopen(config, "we");
        assert_non_null(out);
        fprintf(out,
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>session</type>\n"
                "  <listen>unix:path=%s/bus</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n"
                "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n"
                "    <allow own=\"*\"/>\n"
                "  </policy>\n"
                "  <limit name=\"max_connections_per_user\">1000</limit>\n"
                "  <limit name=\"max_match_rules_per_connection\">1000</limit>\n"
                "</busconfig>\n",
                f->dir);
        assert_int_equal(fclose(out), 0);

        snprintf(command, sizeof command, "dbus-daemon --config-file=%s --fork --print-address=1 --print-pid=1",
                 config);
        p = popen(command, "re");
        assert_non_null(p);
        assert_non_null(fgets(f->address, sizeof f->address, p));
        assert_non_null(fgets(pid_line, sizeof pid_line, p));
        assert_int_equal(pclose(p), 0);
        f->address[strcspn(f->address, "\n")] = '\0';
        f->bus_pid = (pid_t) atoi(pid_line);
        assert_true(f->bus_pid > 1);
}

static sd_bus *connect_bus(Fixture *f) {
        sd_bus *bus = NULL;

        assert_int_equal(sd_bus_new(&bus), 0);
        assert_true(sd_bus_set_address(bus, f->address) >= 0);
        assert_true(sd_bus_set_bus_client(bus, true) >= 0);
        assert_true(sd_bus_start(bus) >= 0);
        assert_true(sd_bus_attach_event(bus, f->event, SD_EVENT_PRIORITY_NORMAL) >= 0);
        return bus;
}

static int setup_with(void **state, bool enabled) {
        Fixture *f;

        /* dbus-daemon is a test dependency (make deps): without it these
         * tests must fail, not pass as skipped and prove nothing. */
        if (!find_dbus_daemon())
                fail_msg("dbus-daemon is not installed; run 'make deps'.");

        f = calloc(1, sizeof *f);
        assert_non_null(f);
        start_bus(f);
        assert_true(sd_event_new(&f->event) >= 0);

        f->polkit = connect_bus(f);
        assert_true(sd_bus_add_object_vtable(f->polkit, NULL, "/org/freedesktop/PolicyKit1/Authority",
                                             "org.freedesktop.PolicyKit1.Authority", fake_polkit_vtable, f) >= 0);
        assert_true(sd_bus_request_name(f->polkit, "org.freedesktop.PolicyKit1", 0) >= 0);

        f->service = connect_bus(f);
        assert_true(sd_bus_add_object_vtable(f->service, NULL, TEST_PATH, TEST_INTERFACE, service_vtable, f) >= 0);
        assert_int_equal(polkit_registry_new(f->service, enabled, &f->registry), 0);

        f->clients[0] = connect_bus(f);
        *state = f;
        return 0;
}

static int setup(void **state) {
        return setup_with(state, true);
}

static int setup_disabled(void **state) {
        return setup_with(state, false);
}

static int teardown(void **state) {
        Fixture *f = *state;
        char path[128];

        if (!f)
                return 0;
        polkit_registry_free(f->registry);
        for (unsigned i = 0; i < CLIENTS_MAX; i++)
                sd_bus_flush_close_unref(f->clients[i]);
        sd_bus_flush_close_unref(f->service);
        sd_bus_flush_close_unref(f->polkit);
        sd_event_unref(f->event);
        for (unsigned i = 0; i < f->n_requests; i++) {
                free(f->requests[i].subject_kind);
                free(f->requests[i].subject_name);
                free(f->requests[i].action);
                free(f->requests[i].details);
                free(f->requests[i].cancellation_id);
                sd_bus_message_unref(f->requests[i].held);
        }
        if (f->bus_pid > 1)
                kill(f->bus_pid, SIGTERM);
        snprintf(path, sizeof path, "%s/bus.conf", f->dir);
        unlink(path);
        snprintf(path, sizeof path, "%s/bus", f->dir);
        unlink(path);
        rmdir(f->dir);
        free(f);
        return 0;
}

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Reply *reply = userdata;

        reply->done = true;
        if (sd_bus_message_is_method_error(m, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(m);

                reply->error_name = xstrdup(e->name);
                reply->error_message = xstrdup(strempty(e->message));
                return 0;
        }
        assert_int_equal(sd_bus_message_read(m, "u", &reply->executed), 1);
        return 0;
}

static void call_async(Fixture *f, sd_bus *client, const char *method, bool interactive, Reply *reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        const char *service_name;

        assert_true(sd_bus_get_unique_name(f->service, &service_name) >= 0);
        assert_true(sd_bus_message_new_method_call(client, &m, service_name, TEST_PATH, TEST_INTERFACE, method) >= 0);
        assert_true(sd_bus_message_set_allow_interactive_authorization(m, interactive) >= 0);
        assert_true(sd_bus_call_async(client, NULL, m, on_reply, reply, 0) >= 0);
}

typedef bool (*Condition)(Fixture *f, void *userdata);

static void run_until(Fixture *f, Condition done, void *userdata) {
        uint64_t start, now;

        assert_true(sd_event_now(f->event, CLOCK_MONOTONIC, &start) >= 0);
        while (!done(f, userdata)) {
                assert_true(sd_event_run(f->event, 100 * USEC_PER_MSEC) >= 0);
                assert_true(sd_event_now(f->event, CLOCK_MONOTONIC, &now) >= 0);
                if (now - start > RUN_TIMEOUT_USEC)
                        fail_msg("timed out waiting for the bus");
        }
}

/* Runs the loop until nothing is left to do for a while. */
static void run_idle(Fixture *f) {
        for (unsigned i = 0; i < 50; i++)
                assert_true(sd_event_run(f->event, 2 * USEC_PER_MSEC) >= 0);
}

static bool reply_done(Fixture *f, void *userdata) {
        return ((Reply *) userdata)->done;
}

static bool requests_reached(Fixture *f, void *userdata) {
        return f->n_requests >= *(unsigned *) userdata;
}

static bool registry_empty(Fixture *f, void *userdata) {
        return polkit_registry_n_calls(f->registry) == 0;
}

static void reply_clear(Reply *reply) {
        free(reply->error_name);
        free(reply->error_message);
        *reply = (Reply) {};
}

static void call_and_wait(Fixture *f, const char *method, bool interactive, Reply *reply) {
        call_async(f, f->clients[0], method, interactive, reply);
        run_until(f, reply_done, reply);
}

/* ---- tests ---- */

static void test_disabled_always_authorizes(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        call_and_wait(f, "Load", false, &reply);
        assert_null(reply.error_name);
        assert_int_equal(reply.executed, 1);
        assert_int_equal(f->n_requests, 0);
        assert_int_equal(f->handler_runs, 1);
        reply_clear(&reply);
}

static void test_authorized(void **state) {
        Fixture *f = *state;
        const char *client_name;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_AUTHORIZED;
        call_and_wait(f, "Load", false, &reply);

        assert_null(reply.error_name);
        assert_int_equal(reply.executed, 1);
        assert_int_equal(f->executed, 1);
        /* Once to ask, once more with the answer. */
        assert_int_equal(f->handler_runs, 2);

        assert_int_equal(f->n_requests, 1);
        assert_true(sd_bus_get_unique_name(f->clients[0], &client_name) >= 0);
        assert_string_equal(f->requests[0].subject_kind, "system-bus-name");
        assert_string_equal(f->requests[0].subject_name, client_name);
        assert_string_equal(f->requests[0].action, "org.mpool.load");
        assert_string_equal(f->requests[0].details, "model=demo/tiny;");
        assert_int_equal(f->requests[0].flags, 0);
        assert_string_equal(f->requests[0].cancellation_id, "");

        run_until(f, registry_empty, NULL);
        reply_clear(&reply);
}

static void test_denied(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_DENIED;
        call_and_wait(f, "Load", false, &reply);

        assert_string_equal(reply.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(reply.error_message, "org.mpool.load"));
        assert_int_equal(f->executed, 0);
        assert_int_equal(f->handler_runs, 2);
        run_until(f, registry_empty, NULL);
        reply_clear(&reply);
}

static void test_challenge_without_interaction(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_CHALLENGE;
        call_and_wait(f, "Load", false, &reply);

        assert_string_equal(reply.error_name, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED);
        assert_int_equal(f->requests[0].flags, 0);
        assert_int_equal(f->executed, 0);
        reply_clear(&reply);
}

static void test_challenge_with_interaction(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        /* Interaction was allowed and still no authorization: a plain denial. */
        f->script[f->n_script++] = ANSWER_CHALLENGE;
        call_and_wait(f, "Load", true, &reply);

        assert_string_equal(reply.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_int_equal(f->requests[0].flags, 1);
        assert_int_equal(f->executed, 0);
        reply_clear(&reply);
}

static void test_interactive_authorized(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_AUTHORIZED;
        call_and_wait(f, "Load", true, &reply);

        assert_null(reply.error_name);
        assert_int_equal(f->requests[0].flags, 1);
        assert_int_equal(f->executed, 1);
        reply_clear(&reply);
}

static void test_authority_error(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_ERROR;
        call_and_wait(f, "Load", false, &reply);

        assert_string_equal(reply.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(reply.error_message, "Cannot ask polkit"));
        assert_non_null(strstr(reply.error_message, "Test failure of the authority"));
        assert_int_equal(f->executed, 0);
        reply_clear(&reply);
}

static void test_bus_limit(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_BUS_LIMIT;
        call_and_wait(f, "Load", false, &reply);

        assert_string_equal(reply.error_name, MPOOL_ERROR_LIMITS_EXCEEDED);
        assert_int_equal(f->executed, 0);
        reply_clear(&reply);
}

static void test_no_authority(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        assert_true(sd_bus_release_name(f->polkit, "org.freedesktop.PolicyKit1") >= 0);
        call_and_wait(f, "Load", false, &reply);

        assert_string_equal(reply.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(reply.error_message, "Cannot ask polkit"));
        assert_int_equal(f->n_requests, 0);
        assert_int_equal(f->executed, 0);
        run_until(f, registry_empty, NULL);
        reply_clear(&reply);
}

static void test_two_actions_authorized(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_AUTHORIZED;
        f->script[f->n_script++] = ANSWER_AUTHORIZED;
        call_and_wait(f, "LoadPinned", false, &reply);

        assert_null(reply.error_name);
        assert_int_equal(f->executed, 1);
        assert_int_equal(f->n_requests, 2);
        assert_string_equal(f->requests[0].action, "org.mpool.load");
        assert_string_equal(f->requests[1].action, "org.mpool.configure");
        assert_string_equal(f->requests[1].details, "");
        assert_int_equal(f->handler_runs, 3);

        /* No check is ever repeated. */
        run_until(f, registry_empty, NULL);
        run_idle(f);
        assert_int_equal(f->n_requests, 2);
        reply_clear(&reply);
}

static void test_two_actions_second_denied(void **state) {
        Fixture *f = *state;
        Reply reply = {};

        f->script[f->n_script++] = ANSWER_AUTHORIZED;
        f->script[f->n_script++] = ANSWER_DENIED;
        call_and_wait(f, "LoadPinned", false, &reply);

        assert_string_equal(reply.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(reply.error_message, "org.mpool.configure"));
        assert_int_equal(f->executed, 0);
        assert_int_equal(f->n_requests, 2);
        reply_clear(&reply);
}

static void test_caller_leaves(void **state) {
        Fixture *f = *state;
        unsigned one = 1;
        Reply reply = {};

        f->hold = true;
        call_async(f, f->clients[0], "Load", false, &reply);
        run_until(f, requests_reached, &one);
        assert_int_equal(polkit_registry_n_calls(f->registry), 1);

        f->clients[0] = sd_bus_flush_close_unref(f->clients[0]);
        run_until(f, registry_empty, NULL);

        /* polkit answers late: nobody is waiting, the handler stays quiet. */
        assert_true(send_answer(f->requests[0].held, ANSWER_AUTHORIZED) >= 0);
        run_idle(f);
        assert_int_equal(f->handler_runs, 1);
        assert_int_equal(f->executed, 0);
        assert_false(reply.done);
}

static void test_limit_per_peer(void **state) {
        Fixture *f = *state;
        Reply replies[POLKIT_CALLS_PER_PEER_MAX + 1] = {};
        unsigned n = POLKIT_CALLS_PER_PEER_MAX;

        f->hold = true;
        for (unsigned i = 0; i <= POLKIT_CALLS_PER_PEER_MAX; i++)
                call_async(f, f->clients[0], "Load", false, &replies[i]);
        run_until(f, requests_reached, &n);
        run_until(f, reply_done, &replies[POLKIT_CALLS_PER_PEER_MAX]);
        assert_string_equal(replies[POLKIT_CALLS_PER_PEER_MAX].error_name, MPOOL_ERROR_LIMITS_EXCEEDED);
        assert_int_equal(f->n_requests, POLKIT_CALLS_PER_PEER_MAX);

        /* Another peer is not affected. */
        f->clients[1] = connect_bus(f);
        {
                Reply other = {};
                unsigned more = POLKIT_CALLS_PER_PEER_MAX + 1;

                call_async(f, f->clients[1], "Load", false, &other);
                run_until(f, requests_reached, &more);
                assert_false(other.done);
                assert_true(send_answer(f->requests[POLKIT_CALLS_PER_PEER_MAX].held, ANSWER_AUTHORIZED) >= 0);
                run_until(f, reply_done, &other);
                assert_null(other.error_name);
                reply_clear(&other);
        }

        for (unsigned i = 0; i < POLKIT_CALLS_PER_PEER_MAX; i++)
                assert_true(send_answer(f->requests[i].held, ANSWER_AUTHORIZED) >= 0);
        for (unsigned i = 0; i < POLKIT_CALLS_PER_PEER_MAX; i++) {
                run_until(f, reply_done, &replies[i]);
                assert_null(replies[i].error_name);
        }
        assert_int_equal(f->executed, POLKIT_CALLS_PER_PEER_MAX + 1);
        run_until(f, registry_empty, NULL);
        for (unsigned i = 0; i <= POLKIT_CALLS_PER_PEER_MAX; i++)
                reply_clear(&replies[i]);
}

static void test_limit_total(void **state) {
        enum { PEERS = POLKIT_CALLS_MAX / POLKIT_CALLS_PER_PEER_MAX };
        Fixture *f = *state;
        static Reply replies[POLKIT_CALLS_MAX];
        Reply extra = {};
        unsigned n = POLKIT_CALLS_MAX;

        assert_true(PEERS + 1 <= CLIENTS_MAX);
        f->hold = true;
        for (unsigned p = 1; p <= PEERS; p++)
                f->clients[p] = connect_bus(f);
        for (unsigned p = 0; p < PEERS; p++)
                for (unsigned i = 0; i < POLKIT_CALLS_PER_PEER_MAX; i++)
                        call_async(f, f->clients[p + 1], "Load", false,
                                   &replies[p * POLKIT_CALLS_PER_PEER_MAX + i]);
        run_until(f, requests_reached, &n);
        assert_int_equal(polkit_registry_n_calls(f->registry), POLKIT_CALLS_MAX);

        call_async(f, f->clients[0], "Load", false, &extra);
        run_until(f, reply_done, &extra);
        assert_string_equal(extra.error_name, MPOOL_ERROR_LIMITS_EXCEEDED);
        assert_int_equal(f->n_requests, POLKIT_CALLS_MAX);
        reply_clear(&extra);

        /* Dropping every caller empties the registry. */
        for (unsigned p = 1; p <= PEERS; p++)
                f->clients[p] = sd_bus_flush_close_unref(f->clients[p]);
        run_until(f, registry_empty, NULL);
        for (unsigned i = 0; i < POLKIT_CALLS_MAX; i++) {
                assert_false(replies[i].done);
                reply_clear(&replies[i]);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_disabled_always_authorizes, setup_disabled, teardown),
                cmocka_unit_test_setup_teardown(test_authorized, setup, teardown),
                cmocka_unit_test_setup_teardown(test_denied, setup, teardown),
                cmocka_unit_test_setup_teardown(test_challenge_without_interaction, setup, teardown),
                cmocka_unit_test_setup_teardown(test_challenge_with_interaction, setup, teardown),
                cmocka_unit_test_setup_teardown(test_interactive_authorized, setup, teardown),
                cmocka_unit_test_setup_teardown(test_authority_error, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bus_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_authority, setup, teardown),
                cmocka_unit_test_setup_teardown(test_two_actions_authorized, setup, teardown),
                cmocka_unit_test_setup_teardown(test_two_actions_second_denied, setup, teardown),
                cmocka_unit_test_setup_teardown(test_caller_leaves, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_per_peer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_total, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
