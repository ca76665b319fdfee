/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "bus-util.h"
#include "log.h"
#include "macro.h"
#include "mpool-bus.h"
#include "polkit.h"
#include "strv.h"

#define POLKIT_BUS_NAME   "org.freedesktop.PolicyKit1"
#define POLKIT_PATH       "/org/freedesktop/PolicyKit1/Authority"
#define POLKIT_INTERFACE  "org.freedesktop.PolicyKit1.Authority"

/* CheckAuthorization flags: polkit may ask the user to authenticate. */
#define POLKIT_CHECK_ALLOW_USER_INTERACTION 1U

/* A non-interactive check takes polkit milliseconds and gets sd-bus's
 * default timeout; one that may show an authentication dialog waits for a
 * person typing a password. */
#define POLKIT_INTERACTIVE_TIMEOUT_USEC (5 * 60 * USEC_PER_SEC)

typedef enum Verdict {
        VERDICT_PENDING,
        VERDICT_AUTHORIZED,
        VERDICT_DENIED,
        VERDICT_CHALLENGE,   /* authentication could succeed, but the call did not allow interaction */
        VERDICT_FAILED,      /* polkit could not be asked */
        VERDICT_OVERLOADED,  /* the bus refused to pass on one more check */
} Verdict;

typedef struct ActionCheck {
        char *action;
        char **details;      /* key, value, ..., NULL; NULL when none */
        bool interactive;
        Verdict verdict;
        char *failure;       /* VERDICT_FAILED: why, for the caller and the log */
} ActionCheck;

/* One method call that waits for polkit, or has its answers and waits for
 * its second dispatch. */
typedef struct WaitingCall WaitingCall;
struct WaitingCall {
        PolkitRegistry *registry;
        sd_bus_message *call;
        char *sender;
        ActionCheck checks[POLKIT_ACTIONS_PER_CALL_MAX];
        unsigned n_checks;
        /* The CheckAuthorization under way, for checks[n_checks - 1]. */
        sd_bus_slot *polkit_slot;
        /* Idle-priority: runs once the call has been dispatched again and
         * frees this, unless that dispatch asked for another action. */
        sd_event_source *release_source;
        bool sender_gone;
        WaitingCall *previous, *next;
};

struct PolkitRegistry {
        sd_bus *bus;
        bool enabled;
        sd_bus_slot *caller_left_slot;
        WaitingCall *calls;
        unsigned n_calls;
};

static void action_check_clear(ActionCheck *check) {
        free(check->action);
        strv_free(check->details);
        free(check->failure);
        *check = (ActionCheck) {};
}

static WaitingCall *waiting_call_free(WaitingCall *w) {
        if (!w)
                return NULL;

        if (w->registry) {
                if (w->previous)
                        w->previous->next = w->next;
                else
                        w->registry->calls = w->next;
                if (w->next)
                        w->next->previous = w->previous;
                w->registry->n_calls--;
        }

        sd_bus_slot_unref(w->polkit_slot);
        sd_event_source_disable_unref(w->release_source);
        sd_bus_message_unref(w->call);
        free(w->sender);
        for (unsigned i = 0; i < w->n_checks; i++)
                action_check_clear(&w->checks[i]);
        free(w);
        return NULL;
}

static void waiting_call_freep(WaitingCall **w) {
        waiting_call_free(*w);
}

static size_t details_length(const char *const *details) {
        size_t n = 0;

        if (details)
                while (details[n])
                        n++;
        return n;
}

static bool details_equal(char **stored, const char *const *details) {
        size_t n = details_length(details);

        if (strv_length(stored) != n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (strcmp(stored[i], details[i]) != 0)
                        return false;
        return true;
}

static int details_copy(const char *const *details, char ***ret) {
        _cleanup_strv_free_ char **copy = NULL;
        int r;

        for (size_t i = 0; details && details[i]; i++) {
                r = strv_extend(&copy, details[i]);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(copy);
        return 0;
}

static WaitingCall *registry_find(PolkitRegistry *registry, sd_bus_message *call) {
        for (WaitingCall *w = registry->calls; w; w = w->next)
                if (w->call == call)
                        return w;
        return NULL;
}

static unsigned registry_count_sender(const PolkitRegistry *registry, const char *sender) {
        unsigned n = 0;

        for (const WaitingCall *w = registry->calls; w; w = w->next)
                if (strcmp(w->sender, sender) == 0)
                        n++;
        return n;
}

static void registry_link(PolkitRegistry *registry, WaitingCall *w) {
        w->registry = registry;
        w->previous = NULL;
        w->next = registry->calls;
        if (registry->calls)
                registry->calls->previous = w;
        registry->calls = w;
        registry->n_calls++;
}

static void check_fail(WaitingCall *w, ActionCheck *check, const char *reason) {
        check->verdict = VERDICT_FAILED;
        free(check->failure);
        check->failure = strdup(reason);
        log_warning("Cannot ask polkit whether %s may use %s: %s", w->sender, check->action, reason);
}

static void check_read_reply(WaitingCall *w, ActionCheck *check, sd_bus_message *reply) {
        int authorized, challenge, r;

        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);
                _cleanup_free_ char *reason = NULL;

                /* Too many calls of ours wait for replies: the caller may
                 * try again, and a busy daemon should not flood the log. */
                if (sd_bus_error_has_name(e, SD_BUS_ERROR_LIMITS_EXCEEDED)) {
                        check->verdict = VERDICT_OVERLOADED;
                        log_debug("The bus refused to pass on the polkit check of %s for %s.", check->action,
                                  w->sender);
                        return;
                }

                if (asprintf(&reason, "%s (%s)", e && e->message ? e->message : "no reason given",
                             e && e->name ? e->name : "unknown error") < 0)
                        reason = NULL;
                check_fail(w, check, reason ?: "out of memory");
                return;
        }

        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0) {
                check_fail(w, check, "polkit's answer is malformed");
                return;
        }

        if (authorized) {
                check->verdict = VERDICT_AUTHORIZED;
                log_debug("polkit authorized %s for %s.", check->action, w->sender);
        } else if (challenge && !check->interactive) {
                check->verdict = VERDICT_CHALLENGE;
                log_info("polkit requires %s to authenticate for %s, but the call does not allow it.",
                         w->sender, check->action);
        } else {
                check->verdict = VERDICT_DENIED;
                log_info("polkit denied %s to %s.", check->action, w->sender);
        }
}

static int check_result(const ActionCheck *check, sd_bus_error *error) {
        switch (check->verdict) {
        case VERDICT_PENDING:
                return 0;
        case VERDICT_AUTHORIZED:
                return 1;
        case VERDICT_CHALLENGE:
                return sd_bus_error_setf(error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                         "Authentication is required for this (polkit action %s); "
                                         "call again allowing interactive authorization.", check->action);
        case VERDICT_FAILED:
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Cannot ask polkit whether you may do this (polkit action %s): %s",
                                         check->action, check->failure ?: "out of memory");
        case VERDICT_OVERLOADED:
                return sd_bus_error_set(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                        "Too many calls are waiting for authorization; try again later.");
        case VERDICT_DENIED:
        default:
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "You are not allowed to do this (polkit action %s).", check->action);
        }
}

static int on_release(sd_event_source *source, void *userdata) {
        WaitingCall *w = userdata;

        /* The second dispatch asked for one more action: keep the answers
         * so far for the third. */
        if (w->polkit_slot)
                return 0;

        waiting_call_free(w);
        return 0;
}

/* Puts the call back into the bus's read queue. The release source has idle
 * priority, below the bus's, so it runs only after the bus has dispatched the
 * call again. */
static int schedule_second_dispatch(WaitingCall *w) {
        sd_bus *bus = w->registry->bus;
        int r;

        if (!w->release_source) {
                r = sd_event_add_defer(sd_bus_get_event(bus), &w->release_source, on_release, w);
                if (r < 0)
                        return r;
                r = sd_event_source_set_priority(w->release_source, SD_EVENT_PRIORITY_IDLE);
                if (r < 0)
                        return r;
        }
        r = sd_event_source_set_enabled(w->release_source, SD_EVENT_ONESHOT);
        if (r < 0)
                return r;

        r = sd_bus_message_rewind(w->call, true);
        if (r < 0)
                return r;
        return sd_bus_enqueue_for_read(bus, w->call);
}

static int on_polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        WaitingCall *w = userdata;
        ActionCheck *check;
        int r;

        assert(w->n_checks > 0);
        check = &w->checks[w->n_checks - 1];
        assert(check->verdict == VERDICT_PENDING);

        w->polkit_slot = sd_bus_slot_unref(w->polkit_slot);
        check_read_reply(w, check, reply);

        r = schedule_second_dispatch(w);
        if (r < 0) {
                log_error_errno(r, "Cannot resume the call of %s after asking polkit: %m", w->sender);
                r = sd_bus_reply_method_errnof(w->call, r, "Cannot resume the call after authorization: %m");
                if (r < 0)
                        log_warning_errno(r, "Cannot reply to %s: %m", w->sender);
                waiting_call_free(w);
        }
        return 0;
}

static int append_details(sd_bus_message *m, char **details) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{ss}");
        if (r < 0)
                return r;
        for (size_t i = 0; details && details[i] && details[i + 1]; i += 2) {
                r = sd_bus_message_append(m, "{ss}", details[i], details[i + 1]);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(m);
}

/* Adds a check of action to w and asks polkit about it. */
static int check_start(WaitingCall *w, sd_bus *bus, const char *action, const char *const *details) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *request = NULL;
        ActionCheck check = {};
        int r;

        assert(w->n_checks < POLKIT_ACTIONS_PER_CALL_MAX);
        assert(!w->polkit_slot);

        r = sd_bus_message_get_allow_interactive_authorization(w->call);
        if (r < 0)
                return r;
        check.interactive = r > 0;
        check.action = strdup(action);
        if (!check.action)
                return -ENOMEM;
        r = details_copy(details, &check.details);
        if (r < 0)
                goto fail;

        r = sd_bus_message_new_method_call(bus, &request, POLKIT_BUS_NAME, POLKIT_PATH, POLKIT_INTERFACE,
                                           "CheckAuthorization");
        if (r < 0)
                goto fail;
        /* The subject is the caller's connection: polkit looks up its
         * process, user and session itself, so nothing the caller claims
         * is trusted. */
        r = sd_bus_message_append(request, "(sa{sv})s", "system-bus-name", 1, "name", "s", w->sender, action);
        if (r < 0)
                goto fail;
        r = append_details(request, check.details);
        if (r < 0)
                goto fail;
        r = sd_bus_message_append(request, "us", check.interactive ? POLKIT_CHECK_ALLOW_USER_INTERACTION : 0U,
                                  /* cancellation_id */ "");
        if (r < 0)
                goto fail;

        r = sd_bus_call_async(bus, &w->polkit_slot, request, on_polkit_reply, w,
                              check.interactive ? POLKIT_INTERACTIVE_TIMEOUT_USEC : 0);
        if (r < 0)
                goto fail;

        w->checks[w->n_checks++] = check;
        return 0;

fail:
        action_check_clear(&check);
        return r;
}

int polkit_verify_async(PolkitRegistry *registry, sd_bus_message *call, const char *action,
                        const char *const *details, sd_bus_error *error) {
        _cleanup_(waiting_call_freep) WaitingCall *created = NULL;
        const char *sender;
        WaitingCall *w;
        unsigned n;
        int r;

        assert(registry);
        assert(call);
        assert(action);
        assert(details_length(details) % 2 == 0);
        assert(details_length(details) <= 2 * POLKIT_DETAILS_MAX);

        if (!registry->enabled)
                return 1;

        assert(sd_bus_message_get_bus(call) == registry->bus);

        w = registry_find(registry, call);
        if (w) {
                if (w->sender_gone)
                        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "The caller left the bus.");

                for (unsigned i = 0; i < w->n_checks; i++)
                        if (strcmp(w->checks[i].action, action) == 0 && details_equal(w->checks[i].details, details))
                                return check_result(&w->checks[i], error);

                /* The handler asked for another action while one is being
                 * checked, instead of returning on 0. */
                if (w->polkit_slot)
                        return -EBUSY;
                if (w->n_checks >= POLKIT_ACTIONS_PER_CALL_MAX)
                        return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                                 "A call may need at most %u authorizations.",
                                                 POLKIT_ACTIONS_PER_CALL_MAX);

                r = check_start(w, registry->bus, action, details);
                if (r < 0)
                        return r;
                return 0;
        }

        sender = sd_bus_message_get_sender(call);
        if (!sender)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED,
                                        "Only calls that come through a bus can be authorized.");

        if (registry->n_calls >= POLKIT_CALLS_MAX)
                return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                         "%u calls are waiting for authorization already; try again later.",
                                         registry->n_calls);
        n = registry_count_sender(registry, sender);
        if (n >= POLKIT_CALLS_PER_PEER_MAX)
                return sd_bus_error_setf(error, MPOOL_ERROR_LIMITS_EXCEEDED,
                                         "You have %u calls waiting for authorization already.", n);

        created = calloc(1, sizeof *created);
        if (!created)
                return -ENOMEM;
        created->call = sd_bus_message_ref(call);
        created->sender = strdup(sender);
        if (!created->sender)
                return -ENOMEM;

        r = check_start(created, registry->bus, action, details);
        if (r < 0)
                return r;

        registry_link(registry, TAKE_PTR(created));
        return 0;
}

static int on_caller_left(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        PolkitRegistry *registry = userdata;
        const char *name, *old_owner, *new_owner;
        WaitingCall *next;
        int r;

        r = sd_bus_message_read(message, "sss", &name, &old_owner, &new_owner);
        if (r < 0) {
                log_warning_errno(r, "Cannot read a NameOwnerChanged signal: %m");
                return 0;
        }
        if (name[0] != ':' || new_owner[0] != '\0')
                return 0;

        for (WaitingCall *w = registry->calls; w; w = next) {
                next = w->next;
                if (strcmp(w->sender, name) != 0)
                        continue;
                if (w->polkit_slot) {
                        log_debug("%s left the bus while polkit was asked about its call; dropping the call.", name);
                        waiting_call_free(w);
                } else
                        /* Already queued for its second dispatch: let that
                         * refuse it, then release it as usual. */
                        w->sender_gone = true;
        }
        return 0;
}

static int on_caller_left_installed(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        const sd_bus_error *e;

        if (!sd_bus_message_is_method_error(reply, NULL))
                return 0;
        e = sd_bus_message_get_error(reply);
        log_warning("Cannot watch for callers leaving the bus (%s); a call whose caller left waits for polkit's "
                    "answer before it is dropped.", e && e->message ? e->message : "no reason given");
        return 0;
}

int polkit_registry_new(sd_bus *bus, bool enabled, PolkitRegistry **ret) {
        _cleanup_(polkit_registry_freep) PolkitRegistry *registry = NULL;
        int r;

        assert(ret);
        assert(bus || !enabled);

        if (enabled && !sd_bus_get_event(bus))
                return -EINVAL;

        registry = calloc(1, sizeof *registry);
        if (!registry)
                return -ENOMEM;
        registry->enabled = enabled;
        registry->bus = bus ? sd_bus_ref(bus) : NULL;

        if (enabled) {
                r = sd_bus_add_match_async(bus, &registry->caller_left_slot, MATCH_UNIQUE_NAME_LEFT, on_caller_left,
                                           on_caller_left_installed, registry);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(registry);
        return 0;
}

PolkitRegistry *polkit_registry_free(PolkitRegistry *registry) {
        if (!registry)
                return NULL;

        while (registry->calls)
                waiting_call_free(registry->calls);
        sd_bus_slot_unref(registry->caller_left_slot);
        sd_bus_unref(registry->bus);
        free(registry);
        return NULL;
}

unsigned polkit_registry_n_calls(const PolkitRegistry *registry) {
        return registry ? registry->n_calls : 0;
}
