/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <systemd/sd-bus.h>

#include "bus-options.h"
#include "macro.h"
#include "pool.h"

/* Messages need a bus that has been started, but nothing has to answer: one
 * end of a socket pair will do, and sealing a message makes it readable. */
static sd_bus *bus;
static int peer_fd = -1;

static int setup_bus(void **state) {
        int fds[2];

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
                return -1;
        peer_fd = fds[1];
        if (sd_bus_new(&bus) < 0 || sd_bus_set_fd(bus, fds[0], fds[0]) < 0 || sd_bus_start(bus) < 0)
                return -1;
        return 0;
}

static int teardown_bus(void **state) {
        bus = sd_bus_close_unref(bus);
        if (peer_fd >= 0)
                close(peer_fd);
        return 0;
}

static sd_bus_message *new_call(void) {
        sd_bus_message *m = NULL;

        assert_int_equal(sd_bus_message_new_method_call(bus, &m, "org.mpool.Manager", "/org/mpool/Manager",
                                                        "org.mpool.Manager", "Load"), 0);
        return m;
}

static void seal(sd_bus_message *m) {
        assert_int_equal(sd_bus_message_seal(m, 1, 0), 0);
        assert_true(sd_bus_message_rewind(m, true) >= 0);
}

/* A Load call whose only option is keep_alive_sec of D-Bus type `type`. */
static sd_bus_message *keep_alive_call(char type, ...) {
        sd_bus_message *m = new_call();
        char signature[2] = { type, 0 };
        va_list ap;

        assert_true(sd_bus_message_open_container(m, 'a', "{sv}") >= 0);
        assert_true(sd_bus_message_open_container(m, 'e', "sv") >= 0);
        assert_true(sd_bus_message_append(m, "s", "keep_alive_sec") >= 0);
        assert_true(sd_bus_message_open_container(m, 'v', signature) >= 0);
        va_start(ap, type);
        assert_true(sd_bus_message_appendv(m, signature, ap) >= 0);
        va_end(ap);
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
        seal(m);
        return m;
}

static int read_load_options(sd_bus_message *m, RequestOptions *ret, sd_bus_error *error) {
        return request_options_read(m, request_options_load, ret, error);
}

static void check_keep_alive_ok(sd_bus_message *m, int64_t expected) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        RequestOptions options = {};

        if (read_load_options(m, &options, &error) < 0)
                fail_msg("refused: %s", strempty(error.message));
        assert_int_equal(options.keep_alive_sec, expected);
        assert_false(options.pin);
        sd_bus_message_unref(m);
}

static void check_refused(sd_bus_message *m, const BusOption *table, const char *expected) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        RequestOptions options = { .keep_alive_sec = 77, .pin = true, .force = true };

        assert_int_equal(request_options_read(m, table, &options, &error), -EINVAL);
        assert_string_equal(error.name, SD_BUS_ERROR_INVALID_ARGS);
        if (strcmp(error.message, expected) != 0)
                fail_msg("message \"%s\", expected \"%s\"", error.message, expected);
        /* Untouched on failure. */
        assert_int_equal(options.keep_alive_sec, 77);
        assert_true(options.pin && options.force);
        sd_bus_message_unref(m);
}

static void test_keep_alive_any_integer_type(void **state) {
        check_keep_alive_ok(keep_alive_call('y', (unsigned) 30), 30);
        check_keep_alive_ok(keep_alive_call('n', 30), 30);
        check_keep_alive_ok(keep_alive_call('q', (unsigned) 30), 30);
        check_keep_alive_ok(keep_alive_call('i', 30), 30);
        check_keep_alive_ok(keep_alive_call('u', UINT32_C(30)), 30);
        check_keep_alive_ok(keep_alive_call('x', INT64_C(30)), 30);
        check_keep_alive_ok(keep_alive_call('t', UINT64_C(30)), 30);

        check_keep_alive_ok(keep_alive_call('n', -1), KEEP_ALIVE_FOREVER);
        check_keep_alive_ok(keep_alive_call('i', -1), KEEP_ALIVE_FOREVER);
        check_keep_alive_ok(keep_alive_call('x', INT64_C(-1)), KEEP_ALIVE_FOREVER);

        check_keep_alive_ok(keep_alive_call('y', (unsigned) 1), 1);
        check_keep_alive_ok(keep_alive_call('x', KEEP_ALIVE_SEC_MAX), KEEP_ALIVE_SEC_MAX);
        check_keep_alive_ok(keep_alive_call('t', (uint64_t) KEEP_ALIVE_SEC_MAX), KEEP_ALIVE_SEC_MAX);
}

static void test_keep_alive_range(void **state) {
        const char *range = "Option 'keep_alive_sec' must be -1 (never unload) or between 1 and 316224000 seconds";
        char expected[256];

        assert_int_equal(KEEP_ALIVE_SEC_MAX, 316224000);

        snprintf(expected, sizeof expected, "%s, not 0.", range);
        check_refused(keep_alive_call('y', (unsigned) 0), request_options_load, expected);
        check_refused(keep_alive_call('i', 0), request_options_load, expected);
        check_refused(keep_alive_call('t', UINT64_C(0)), request_options_load, expected);

        snprintf(expected, sizeof expected, "%s, not -2.", range);
        check_refused(keep_alive_call('n', -2), request_options_load, expected);
        check_refused(keep_alive_call('x', INT64_C(-2)), request_options_load, expected);

        snprintf(expected, sizeof expected, "%s, not -2147483648.", range);
        check_refused(keep_alive_call('i', INT32_MIN), request_options_load, expected);
        snprintf(expected, sizeof expected, "%s, not -9223372036854775808.", range);
        check_refused(keep_alive_call('x', INT64_MIN), request_options_load, expected);

        snprintf(expected, sizeof expected, "%s, not 316224001.", range);
        check_refused(keep_alive_call('x', KEEP_ALIVE_SEC_MAX + 1), request_options_load, expected);
        snprintf(expected, sizeof expected, "%s, not 4294967295.", range);
        check_refused(keep_alive_call('u', UINT32_MAX), request_options_load, expected);
        snprintf(expected, sizeof expected, "%s, not 9223372036854775807.", range);
        check_refused(keep_alive_call('x', INT64_MAX), request_options_load, expected);
        /* Beyond int64_t: not wrapped around to -1 or any other value. */
        snprintf(expected, sizeof expected, "%s, not 18446744073709551615.", range);
        check_refused(keep_alive_call('t', UINT64_MAX), request_options_load, expected);
        snprintf(expected, sizeof expected, "%s, not 9223372036854775808.", range);
        check_refused(keep_alive_call('t', (uint64_t) INT64_MAX + 1), request_options_load, expected);
}

static void test_keep_alive_not_an_integer(void **state) {
        sd_bus_message *m;

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "keep_alive_sec", "s", "30") >= 0);
        seal(m);
        check_refused(m, request_options_load,
                      "Option 'keep_alive_sec' must be an integer (of type 'x'; any of y, n, q, i, u, x, t is "
                      "accepted), not of type 's'.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "keep_alive_sec", "d", 30.0) >= 0);
        seal(m);
        check_refused(m, request_options_load,
                      "Option 'keep_alive_sec' must be an integer (of type 'x'; any of y, n, q, i, u, x, t is "
                      "accepted), not of type 'd'.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "keep_alive_sec", "b", 1) >= 0);
        seal(m);
        check_refused(m, request_options_load,
                      "Option 'keep_alive_sec' must be an integer (of type 'x'; any of y, n, q, i, u, x, t is "
                      "accepted), not of type 'b'.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "keep_alive_sec", "ax", 1, INT64_C(30)) >= 0);
        seal(m);
        check_refused(m, request_options_load,
                      "Option 'keep_alive_sec' must be an integer (of type 'x'; any of y, n, q, i, u, x, t is "
                      "accepted), not of type 'ax'.");
}

static void test_booleans(void **state) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        RequestOptions options;
        sd_bus_message *m;

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 2, "pin", "b", 1, "keep_alive_sec", "i", -1) >= 0);
        seal(m);
        assert_int_equal(read_load_options(m, &options, &error), 0);
        assert_true(options.pin);
        assert_false(options.force);
        assert_int_equal(options.keep_alive_sec, KEEP_ALIVE_FOREVER);
        sd_bus_message_unref(m);

        /* A boolean is 'b' and nothing else. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "pin", "i", 1) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Option 'pin' must be of type 'b', not 'i'.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "force", "s", "yes") >= 0);
        seal(m);
        check_refused(m, request_options_unload, "Option 'force' must be of type 'b', not 's'.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "force", "b", 1) >= 0);
        seal(m);
        assert_int_equal(request_options_read(m, request_options_unload, &options, &error), 0);
        assert_true(options.force);
        assert_false(options.pin);
        assert_int_equal(options.keep_alive_sec, KEEP_ALIVE_DEFAULT);
        sd_bus_message_unref(m);
}

static void test_defaults_and_names(void **state) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        RequestOptions options = { .keep_alive_sec = 5, .pin = true, .force = true };
        sd_bus_message *m;

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 0) >= 0);
        seal(m);
        assert_int_equal(read_load_options(m, &options, &error), 0);
        assert_int_equal(options.keep_alive_sec, KEEP_ALIVE_DEFAULT);
        assert_false(options.pin || options.force);
        sd_bus_message_unref(m);

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "bogus", "b", 1) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Unknown option 'bogus' (known: keep_alive_sec, pin, precision, max_workers).");

        /* Options of another method are unknown here. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "force", "b", 1) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Unknown option 'force' (known: keep_alive_sec, pin, precision, max_workers).");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "pin", "b", 1) >= 0);
        seal(m);
        check_refused(m, request_options_unload, "Unknown option 'pin' (known: force).");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 2, "keep_alive_sec", "i", 5, "keep_alive_sec", "x",
                                          INT64_C(6)) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Option 'keep_alive_sec' is given twice.");
}

/* The kinds the methods do not use yet, through a table of their own. */
typedef struct TestOptions {
        uint64_t bytes;
        int64_t delta;
        const char *label;
        int maybe;
} TestOptions;

static const BusOption test_table[] = {
        { "bytes", BUS_OPTION_UINT64, offsetof(TestOptions, bytes),
          .uint64 = { .min = 16, .max = UINT64_MAX, .unit = "bytes" } },
        { "delta", BUS_OPTION_INT64, offsetof(TestOptions, delta), .int64 = { .min = -5, .max = 5 } },
        { "label", BUS_OPTION_STRING, offsetof(TestOptions, label), .string = { .max_length = 4 } },
        { "maybe", BUS_OPTION_TRISTATE, offsetof(TestOptions, maybe) },
        {}
};

static int read_test(sd_bus_message *m, TestOptions *o, sd_bus_error *error) {
        int r;

        seal(m);
        r = bus_options_read(m, test_table, o, error);
        sd_bus_message_unref(m);
        return r;
}

static void check_test_refused(sd_bus_message *m, const char *expected) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        TestOptions o = {};

        assert_int_equal(read_test(m, &o, &error), -EINVAL);
        if (strcmp(error.message, expected) != 0)
                fail_msg("message \"%s\", expected \"%s\"", error.message, expected);
}

static void test_other_kinds(void **state) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        TestOptions o = { .bytes = 1, .delta = 9, .label = "none" };
        sd_bus_message *m;

        /* A string option points into the message: it is read while the
         * message lives. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 3, "bytes", "t", UINT64_MAX, "delta", "n", -5,
                                          "label", "s", "abcd") >= 0);
        seal(m);
        assert_int_equal(bus_options_read(m, test_table, &o, &error), 0);
        assert_true(o.bytes == UINT64_MAX);
        assert_int_equal(o.delta, -5);
        assert_string_equal(o.label, "abcd");
        sd_bus_message_unref(m);

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "bytes", "i", 4096) >= 0);
        assert_int_equal(read_test(m, &o, &error), 0);
        assert_int_equal(o.bytes, 4096);

        /* Negative into unsigned: refused, never wrapped. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "bytes", "x", INT64_C(-1)) >= 0);
        check_test_refused(m, "Option 'bytes' must be between 16 and 18446744073709551615 bytes, not -1.");
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "bytes", "y", 15) >= 0);
        check_test_refused(m, "Option 'bytes' must be between 16 and 18446744073709551615 bytes, not 15.");
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "bytes", "s", "16") >= 0);
        check_test_refused(m, "Option 'bytes' must be an integer (of type 't'; any of y, n, q, i, u, x, t is "
                           "accepted), not of type 's'.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "delta", "q", 6) >= 0);
        check_test_refused(m, "Option 'delta' must be between -5 and 5, not 6.");
        /* -1 is only special where the table says so. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "delta", "i", -6) >= 0);
        check_test_refused(m, "Option 'delta' must be between -5 and 5, not -6.");

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "label", "s", "abcde") >= 0);
        check_test_refused(m, "Option 'label' is longer than 4 bytes.");
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "label", "o", "/a") >= 0);
        check_test_refused(m, "Option 'label' must be of type 's', not 'o'.");

        /* A tristate says whether it was given at all. */
        o.maybe = -1;
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 0) >= 0);
        assert_int_equal(read_test(m, &o, &error), 0);
        assert_int_equal(o.maybe, -1);
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "maybe", "b", 0) >= 0);
        assert_int_equal(read_test(m, &o, &error), 0);
        assert_int_equal(o.maybe, 0);
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "maybe", "b", 1) >= 0);
        assert_int_equal(read_test(m, &o, &error), 0);
        assert_int_equal(o.maybe, 1);
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "maybe", "i", 1) >= 0);
        check_test_refused(m, "Option 'maybe' must be of type 'b', not 'i'.");
}

/* A Pull or Inspect call's options: revision and token, or what is given. */
static void test_max_workers(void **state) {
        RequestOptions options;
        sd_bus_message *m;

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 0) >= 0);
        seal(m);
        assert_int_equal(read_load_options(m, &options, NULL), 0);
        assert_int_equal(options.max_workers, 0);
        sd_bus_message_unref(m);

        /* dbus-python's plain int is 'i'. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "max_workers", "i", 2) >= 0);
        seal(m);
        assert_int_equal(read_load_options(m, &options, NULL), 0);
        assert_int_equal(options.max_workers, 2);
        sd_bus_message_unref(m);

        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "max_workers", "u", 0) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Option 'max_workers' must be between 1 and 256 workers, not 0.");
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "max_workers", "t", UINT64_C(257)) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Option 'max_workers' must be between 1 and 256 workers, not 257.");
}

static void test_precision(void **state) {
        static const struct {
                const char *name;
                Precision precision;
        } ok[] = {
                { "f32", PRECISION_F32 }, { "f16", PRECISION_F16 }, { "q8", PRECISION_Q8 }, { "q4", PRECISION_Q4 },
        };
        const char *refused = "Option 'precision' must be one of f32, f16, q8 and q4.";
        RequestOptions options;
        sd_bus_message *m;

        /* Not given: not asked. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 0) >= 0);
        seal(m);
        assert_int_equal(read_load_options(m, &options, NULL), 0);
        assert_int_equal(options.precision, _PRECISION_INVALID);
        sd_bus_message_unref(m);

        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                m = new_call();
                assert_true(sd_bus_message_append(m, "a{sv}", 1, "precision", "s", ok[i].name) >= 0);
                seal(m);
                assert_int_equal(read_load_options(m, &options, NULL), 0);
                assert_int_equal(options.precision, ok[i].precision);
                sd_bus_message_unref(m);
        }

        static const char *const bad[] = { "F32", "q2", "", "f32 ", "fp16" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                m = new_call();
                assert_true(sd_bus_message_append(m, "a{sv}", 1, "precision", "s", bad[i]) >= 0);
                seal(m);
                check_refused(m, request_options_load, refused);
        }
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "precision", "s",
                                          "f32f32f32f32f32f32f32f32f32f32f32f32f32f32f32") >= 0);
        seal(m);
        check_refused(m, request_options_load, "Option 'precision' is longer than 16 bytes.");
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "precision", "i", 32) >= 0);
        seal(m);
        check_refused(m, request_options_load, "Option 'precision' must be of type 's', not 'i'.");
        /* Unload takes none. */
        m = new_call();
        assert_true(sd_bus_message_append(m, "a{sv}", 1, "precision", "s", "q8") >= 0);
        seal(m);
        check_refused(m, request_options_unload, "Unknown option 'precision' (known: force).");
}

static sd_bus_message *hub_call(const char *revision, const char *token) {
        sd_bus_message *m = new_call();

        if (revision && token)
                assert_true(sd_bus_message_append(m, "a{sv}", 2, "revision", "s", revision, "token", "s", token) >= 0);
        else if (revision)
                assert_true(sd_bus_message_append(m, "a{sv}", 1, "revision", "s", revision) >= 0);
        else if (token)
                assert_true(sd_bus_message_append(m, "a{sv}", 1, "token", "s", token) >= 0);
        else
                assert_true(sd_bus_message_append(m, "a{sv}", 0) >= 0);
        seal(m);
        return m;
}

static void check_hub_refused(const char *revision, const char *token, const char *expected) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *m = hub_call(revision, token);
        HubOptions options = { .revision = "untouched" };

        assert_int_equal(hub_options_read(m, &options, &error), -EINVAL);
        assert_string_equal(error.name, SD_BUS_ERROR_INVALID_ARGS);
        if (!strstr(error.message, expected))
                fail_msg("message \"%s\", expected \"%s\" in it", error.message, expected);
        assert_string_equal(options.revision, "untouched");
        sd_bus_message_unref(m);
}

static void test_hub_options(void **state) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        HubOptions options;
        sd_bus_message *m;
        char long_token[4098];

        m = hub_call(NULL, NULL);
        assert_int_equal(hub_options_read(m, &options, &error), 0);
        assert_string_equal(options.revision, "main");
        assert_null(options.token);
        sd_bus_message_unref(m);

        m = hub_call("refs/pr/1", "hf_abc");
        assert_int_equal(hub_options_read(m, &options, &error), 0);
        assert_string_equal(options.revision, "refs/pr/1");
        assert_string_equal(options.token, "hf_abc");
        sd_bus_message_unref(m);

        check_hub_refused("../x", NULL, "\"revision\"");
        check_hub_refused("", NULL, "\"revision\"");
        check_hub_refused("a b", NULL, "\"revision\"");
        check_hub_refused(NULL, "", "\"token\"");
        check_hub_refused(NULL, "a\nb", "\"token\"");
        memset(long_token, 'x', sizeof long_token - 1);
        long_token[sizeof long_token - 1] = '\0';
        check_hub_refused(NULL, long_token, "'token' is longer than 4096 bytes");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_keep_alive_any_integer_type),
                cmocka_unit_test(test_keep_alive_range),
                cmocka_unit_test(test_keep_alive_not_an_integer),
                cmocka_unit_test(test_booleans),
                cmocka_unit_test(test_defaults_and_names),
                cmocka_unit_test(test_other_kinds),
                cmocka_unit_test(test_precision),
                cmocka_unit_test(test_hub_options),
                cmocka_unit_test(test_max_workers),
        };

        return cmocka_run_group_tests(tests, setup_bus, teardown_bus);
}
