/* SPDX-License-Identifier: MIT */
/* The daemon's downloads (daemon/download.c) without a bus: whole pulls
 * through the model core, with a stand-in helper (tests/tools/fake-pull.sh)
 * that plays each case by the repository's name, into a temporary store
 * watched as the daemon watches its own. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "download.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "model-lifecycle.h"
#include "request.h"
#include "service.h"
#include "time-util.h"

#define WAIT_USEC (60 * USEC_PER_SEC)
#define FAKE_HELPER "tests/tools/fake-pull.sh"
#define TOKEN "hf_secretTOKENforTheUnitTest"

/* What the core told its listeners, per model name. */
typedef struct Recorder {
        unsigned announced, removed, state_changes, finished, progress;
        char last_result[32];
        char last_message[512];
        char last_announced_state[32];
} Recorder;

static Recorder rec;
static char watched[64];      /* the model whose events rec counts */

static void on_announced(Manager *m, PoolModel *model) {
        if (strcmp(model->name, watched) != 0)
                return;
        rec.announced++;
        snprintf(rec.last_announced_state, sizeof rec.last_announced_state, "%s",
                 model_state_to_string(model->state));
}

static void on_removed(Manager *m, PoolModel *model) {
        /* Still findable, as sd-bus needs it to be. */
        assert_ptr_equal(pool_find(&m->pool, model->name), model);
        if (strcmp(model->name, watched) == 0)
                rec.removed++;
}

static void on_changed(Manager *m, PoolModel *model, ModelChange what) {
        if (strcmp(model->name, watched) == 0 && (what & MODEL_CHANGED_STATE))
                rec.state_changes++;
}

static void on_download_progress(Manager *m, const char *name, uint64_t done, uint64_t total) {
        if (strcmp(name, watched) == 0)
                rec.progress++;
}

static void on_download_finished(Manager *m, const char *name, const char *result, const char *message) {
        PoolModel *model = pool_find(&m->pool, name);

        if (strcmp(name, watched) != 0)
                return;
        rec.finished++;
        snprintf(rec.last_result, sizeof rec.last_result, "%s", result);
        snprintf(rec.last_message, sizeof rec.last_message, "%s", message);
        /* Callers told of the end find the model as it ends: there and
         * not downloading when done, gone if it was only downloading. */
        if (strcmp(result, "done") == 0)
                assert_true(model && model->state != MODEL_DOWNLOADING);
        else
                assert_true(!model || model->state != MODEL_DOWNLOADING);
}

static const ManagerEvents recorder_events = {
        .model_announced = on_announced,
        .model_removed = on_removed,
        .model_changed = on_changed,
        .download_progress = on_download_progress,
        .download_finished = on_download_finished,
};

typedef struct Fixture {
        char dir[64];
        Manager *m;
} Fixture;

/* A valid single-tensor model folder in the store. */
static void write_model(const char *dir, const char *name) {
        static const char header[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
        char path[512], zeros[16] = {};
        uint64_t length = sizeof header - 1;
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof path, "%s/%s/model.safetensors", dir, name);
        f = fopen(path, "we");
        assert_non_null(f);
        assert_int_equal(fwrite(&length, 8, 1, f), 1);
        assert_int_equal(fwrite(header, 1, length, f), length);
        assert_int_equal(fwrite(zeros, 1, sizeof zeros, f), sizeof zeros);
        assert_int_equal(fclose(f), 0);
}

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        assert_int_equal(fputs(text, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

static char *read_file(const char *path) {
        char *text = NULL;
        size_t n = 0;
        FILE *f = fopen(path, "re");

        if (!f)
                return NULL;
        assert_int_equal(getdelim(&text, &n, '\0', f) >= 0, 1);
        fclose(f);
        return text;
}

static bool exists(const char *dir, const char *name) {
        char path[512];

        snprintf(path, sizeof path, "%s/%s", dir, name);
        return access(path, F_OK) >= 0;
}

static Fixture *fixture_new(unsigned max_downloads, void (*prepare)(const char *dir)) {
        Fixture *f = calloc(1, sizeof *f);
        char org[96];
        Config config;

        assert_non_null(f);
        strcpy(f->dir, "/tmp/mpool-test-download-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(org, sizeof org, "%s/org", f->dir);
        assert_int_equal(mkdir(org, 0755), 0);
        if (prepare)
                prepare(f->dir);

        assert_int_equal(manager_new(&f->m), 0);
        assert_int_equal(config_init_defaults(&f->m->config), 0);
        free(f->m->config.model_dir);
        f->m->config.model_dir = strdup(f->dir);
        f->m->config.max_concurrent_downloads = max_downloads;
        f->m->pull_helper = FAKE_HELPER;
        config = f->m->config;
        assert_int_equal(manager_configure(f->m, &config), 0);
        assert_int_equal(sd_event_new(&f->m->event), 0);
        f->m->events = &recorder_events;
        memset(&rec, 0, sizeof rec);
        assert_int_equal(manager_scan_store(f->m), 0);
        assert_int_equal(manager_start(f->m), 0);
        return f;
}

static void run_until(Fixture *f, bool (*done)(Fixture *f, void *userdata), void *userdata) {
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        while (!done(f, userdata)) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        }
}

static bool is_set(Fixture *f, void *userdata) {
        return *(bool *) userdata;
}

static bool finished_count(Fixture *f, void *userdata) {
        return rec.finished >= *(unsigned *) userdata;
}

static bool workers_idle(Fixture *f, void *userdata) {
        return !downloads_busy(f->m);
}

static void wait_finished(Fixture *f, unsigned count) {
        run_until(f, finished_count, &count);
}

static void fixture_free(Fixture *f) {
        char command[128];

        manager_begin_shutdown(f->m);
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC;
             sd_event_get_state(f->m->event) != SD_EVENT_FINISHED && now_monotonic_usec() < end;)
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        assert_false(downloads_busy(f->m));
        manager_free(f->m);
        snprintf(command, sizeof command, "rm -rf '%s'", f->dir);
        assert_int_equal(system(command), 0);
        free(f);
}

/* One caller's reply. */
typedef struct Reply {
        bool called;
        int error;
        char message[512];
} Reply;

static void on_reply(int error, const char *message, const char *name, void *userdata) {
        Reply *r = userdata;

        assert_false(r->called);
        r->called = true;
        r->error = error;
        snprintf(r->message, sizeof r->message, "%s", strempty(message));
}

static void pull(Fixture *f, const char *repo, const char *token, Reply *r) {
        *r = (Reply) {};
        assert_int_equal(download_pull(f->m, repo, NULL, token, on_reply, r), 0);
}

static void wait_reply(Fixture *f, Reply *r) {
        run_until(f, is_set, &r->called);
}

static PoolModel *model(Fixture *f, const char *name) {
        return pool_find(&f->m->pool, name);
}

/* A model moved into the store by hand: once it is announced, the store
 * watch has looked at every change made before. */
static void wait_store_looked(Fixture *f) {
        write_model(f->dir, "marker");
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC;
             !(model(f, "marker") && model_is_announced(model(f, "marker")));) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        }
}

static void test_first_pull_installs_by_rename(void **state) {
        Fixture *f = fixture_new(2, NULL);
        char path[256], *text;
        cJSON *json, *files;
        Reply r;

        strcpy(watched, "org/write");
        pull(f, "org/write", TOKEN, &r);
        /* Known from the moment the pull is accepted, before any reply. */
        assert_non_null(model(f, "org/write"));
        assert_int_equal(model(f, "org/write")->state, MODEL_DOWNLOADING);
        assert_int_equal(rec.announced, 1);
        assert_string_equal(rec.last_announced_state, "downloading");
        assert_true(download_find(f->m, "org/write", NULL, NULL));

        wait_reply(f, &r);
        assert_int_equal(r.error, 0);
        wait_finished(f, 1);
        assert_string_equal(rec.last_result, "done");
        assert_true(rec.progress >= 1);
        assert_false(download_find(f->m, "org/write", NULL, NULL));

        assert_int_equal(model(f, "org/write")->state, MODEL_AVAILABLE);
        assert_int_equal(model(f, "org/write")->size_bytes, 80);
        assert_true(exists(f->dir, "org/write/model.safetensors"));
        assert_true(exists(f->dir, "org/write/config.json"));
        assert_false(exists(f->dir, ".staging/org--write"));

        /* The metadata: what was pulled, never the token. */
        snprintf(path, sizeof path, "%s/org/write/" DOWNLOAD_METADATA_FILE, f->dir);
        text = read_file(path);
        assert_non_null(text);
        assert_null(strstr(text, TOKEN));
        json = cJSON_Parse(text);
        assert_non_null(json);
        assert_string_equal(cJSON_GetObjectItem(json, "repo")->valuestring, "org/write");
        assert_string_equal(cJSON_GetObjectItem(json, "revision")->valuestring, "main");
        assert_string_equal(cJSON_GetObjectItem(json, "commit")->valuestring,
                            "0123456789abcdef0123456789abcdef01234567");
        assert_true(cJSON_GetObjectItem(json, "time")->valuedouble > 1.6e9);
        files = cJSON_GetObjectItem(json, "files");
        assert_int_equal(cJSON_GetArraySize(files), 2);
        assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(files, 1), "name")->valuestring,
                            "model.safetensors");
        assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(files, 1), "size")->valuedouble, 80);
        assert_int_equal(strlen(cJSON_GetObjectItem(cJSON_GetArrayItem(files, 1), "sha256")->valuestring), 64);
        cJSON_Delete(json);
        free(text);

        /* The store watch finds it known: no second announcement. */
        wait_store_looked(f);
        assert_int_equal(rec.announced, 1);
        assert_int_equal(rec.removed, 0);

        /* At that commit already: a reply, and nothing to do. */
        pull(f, "org/write", NULL, &r);
        wait_reply(f, &r);
        assert_int_equal(r.error, 0);
        wait_finished(f, 2);
        assert_string_equal(rec.last_result, "done");
        assert_int_equal(rec.announced, 1);
        fixture_free(f);
}

static void prepare_old_copy(const char *dir) {
        char path[512];

        /* An older pull of org/write-again, with a file the new one lacks. */
        write_model(dir, "org/write-again");
        snprintf(path, sizeof path, "%s/org/write-again/only-in-the-old-one.txt", dir);
        write_file(path, "old");
        snprintf(path, sizeof path, "%s/org/write-again/" DOWNLOAD_METADATA_FILE, dir);
        write_file(path, "{\"repo\": \"org/write-again\", \"commit\": \"ffffffffffffffffffffffffffffffffffffffff\"}");
}

static void test_pull_again_installs_by_exchange(void **state) {
        Fixture *f = fixture_new(2, prepare_old_copy);
        char path[512], *text;
        Reply r;

        strcpy(watched, "org/write-again");
        assert_int_equal(model(f, "org/write-again")->state, MODEL_AVAILABLE);
        pull(f, "org/write-again", NULL, &r);
        /* In the store already: it stays as it is, and usable. */
        assert_int_equal(model(f, "org/write-again")->state, MODEL_AVAILABLE);
        assert_int_equal(rec.announced, 0);

        wait_finished(f, 1);
        assert_int_equal(r.error, 0);
        assert_string_equal(rec.last_result, "done");
        assert_int_equal(model(f, "org/write-again")->state, MODEL_AVAILABLE);
        assert_true(exists(f->dir, "org/write-again/config.json"));
        assert_false(exists(f->dir, "org/write-again/only-in-the-old-one.txt"));
        snprintf(path, sizeof path, "%s/org/write-again/" DOWNLOAD_METADATA_FILE, f->dir);
        text = read_file(path);
        assert_non_null(strstr(text, "0123456789abcdef0123456789abcdef01234567"));
        free(text);

        /* The old files were moved aside and go on the worker. */
        run_until(f, workers_idle, NULL);
        snprintf(path, sizeof path, "%s/" DOWNLOAD_STAGING_DIR, f->dir);
        assert_true(access(path, F_OK) < 0 || rmdir(path) == 0);
        assert_int_equal(rec.announced, 0);
        assert_int_equal(rec.removed, 0);
        fixture_free(f);
}

typedef struct Outcome {
        bool completed;
        int error;
        char message[256];
} Outcome;

static void on_complete(Request *req, void *userdata) {
        Outcome *o = userdata;

        o->completed = true;
        o->error = req->error;
        snprintf(o->message, sizeof o->message, "%s", strempty(req->error_message));
}

static Request *submit(Fixture *f, RequestKind kind, const char *name, const char *owner, Outcome *o) {
        Request *req;

        *o = (Outcome) {};
        assert_int_equal(request_new(kind, name, owner, on_complete, o, &req), 0);
        manager_submit(f->m, req);
        return req;
}

static void prepare_loadable(const char *dir) {
        char path[512];

        write_model(dir, "org/write-loaded");
        snprintf(path, sizeof path, "%s/org/write-loaded/" DOWNLOAD_METADATA_FILE, dir);
        write_file(path, "{\"commit\": \"ffffffffffffffffffffffffffffffffffffffff\"}");
}

static void test_loaded_model_is_not_replaced(void **state) {
        Fixture *f = fixture_new(2, prepare_loadable);
        Outcome o;
        Request *req;
        Reply r;

        strcpy(watched, "org/write-loaded");
        pull(f, "org/write-loaded", NULL, &r);
        /* Loaded while its new files download (the download waits for the
         * staging folders' cleaning, so the load is first). */
        req = submit(f, REQUEST_LOAD, "org/write-loaded", NULL, &o);
        run_until(f, is_set, &o.completed);
        assert_int_equal(o.error, 0);
        request_unref(req);

        wait_finished(f, 1);
        assert_string_equal(rec.last_result, "failed");
        assert_non_null(strstr(rec.last_message, "is loaded"));
        assert_int_equal(model(f, "org/write-loaded")->state, MODEL_LOADED);
        assert_false(exists(f->dir, "org/write-loaded/config.json"));
        /* The verified files stay staged for a pull once it is unloaded. */
        assert_true(exists(f->dir, ".staging/org--write-loaded/model.safetensors"));
        fixture_free(f);
}

static void test_load_of_a_downloading_model_is_busy(void **state) {
        Fixture *f = fixture_new(2, NULL);
        Outcome o;
        Request *req;
        Reply r;

        strcpy(watched, "org/hang");
        pull(f, "org/hang", NULL, &r);
        wait_reply(f, &r);
        assert_int_equal(r.error, 0);

        for (RequestKind kind = REQUEST_LOAD; kind <= REQUEST_ACQUIRE; kind++) {
                req = submit(f, kind, "org/hang", kind == REQUEST_ACQUIRE ? ":1.42" : NULL, &o);
                assert_true(o.completed);
                assert_int_equal(o.error, -EBUSY);
                assert_non_null(strstr(o.message, "being downloaded"));
                request_unref(req);
        }
        assert_int_equal(model(f, "org/hang")->state, MODEL_DOWNLOADING);
        assert_int_equal(model(f, "org/hang")->holds, 0);
        assert_int_equal(pool_models_loaded(&f->m->pool), 0);
        /* Unload has nothing to do with it. */
        req = submit(f, REQUEST_UNLOAD, "org/hang", NULL, &o);
        assert_true(o.completed);
        assert_int_equal(o.error, 0);
        request_unref(req);

        assert_int_equal(download_cancel(f->m, "org/hang"), 0);
        wait_finished(f, 1);
        assert_string_equal(rec.last_result, "cancelled");
        assert_null(model(f, "org/hang"));
        assert_int_equal(rec.announced, 1);
        assert_int_equal(rec.removed, 1);
        fixture_free(f);
}

static void test_second_pull_joins(void **state) {
        Fixture *f = fixture_new(2, NULL);
        Reply first, second, third;
        uint64_t done = 0, total = 0;

        strcpy(watched, "org/hang");
        pull(f, "org/hang", NULL, &first);
        /* Before the plan is known: it waits with the first. */
        pull(f, "org/hang", NULL, &second);
        assert_false(first.called || second.called);
        /* Another revision of the same repository is refused. */
        assert_int_equal(download_pull(f->m, "org/hang", "v2", NULL, on_reply, &third), -EEXIST);
        wait_reply(f, &first);
        assert_true(second.called);
        assert_int_equal(first.error, 0);
        assert_int_equal(second.error, 0);
        /* After it: answered at once. */
        pull(f, "org/hang", NULL, &third);
        assert_true(third.called);
        assert_int_equal(third.error, 0);

        /* One download, its progress in one place. */
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC; done == 0;) {
                assert_true(now_monotonic_usec() < end);
                assert_true(download_find(f->m, "org/hang", &done, &total));
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        }
        assert_int_equal(done, 1000);
        assert_int_equal(total, 4196);
        assert_int_equal(rec.announced, 1);

        /* Cancelled while it runs: one end for all. */
        assert_int_equal(download_cancel(f->m, "org/hang"), 0);
        wait_finished(f, 1);
        assert_string_equal(rec.last_result, "cancelled");
        assert_int_equal(rec.removed, 1);
        assert_null(model(f, "org/hang"));
        assert_int_equal(download_cancel(f->m, "org/hang"), -ENOENT);
        fixture_free(f);
}

static void test_queue_and_cancel(void **state) {
        Fixture *f = fixture_new(1, NULL);
        Reply running, queued, joined, after;
        uint64_t done = 1, total = 1;

        strcpy(watched, "org/write");
        pull(f, "org/hang", NULL, &running);
        wait_reply(f, &running);
        assert_int_equal(running.error, 0);

        /* Beyond MaxConcurrentDownloads=1: it waits, known meanwhile. */
        pull(f, "org/write", NULL, &queued);
        pull(f, "org/write", NULL, &joined);
        run_until(f, workers_idle, NULL);
        for (int i = 0; i < 5; i++)
                assert_true(sd_event_run(f->m->event, 10 * USEC_PER_MSEC) >= 0);
        assert_false(queued.called || joined.called);
        assert_true(download_find(f->m, "org/write", &done, &total));
        assert_int_equal(done, 0);
        assert_int_equal(total, 0);
        assert_int_equal(model(f, "org/write")->state, MODEL_DOWNLOADING);
        assert_int_equal(rec.announced, 1);

        /* Cancelled while queued: its callers are told at once. */
        assert_int_equal(download_cancel(f->m, "org/write"), 0);
        assert_true(queued.called && joined.called);
        assert_int_equal(queued.error, -ECANCELED);
        assert_int_equal(joined.error, -ECANCELED);
        assert_int_equal(rec.finished, 1);
        assert_string_equal(rec.last_result, "cancelled");
        assert_int_equal(rec.removed, 1);
        assert_null(model(f, "org/write"));
        assert_false(exists(f->dir, ".staging/org--write"));

        /* Queued again; cancelling the one that runs lets it start. */
        pull(f, "org/write", NULL, &after);
        assert_false(after.called);
        assert_int_equal(download_cancel(f->m, "org/hang"), 0);
        wait_reply(f, &after);
        assert_int_equal(after.error, 0);
        wait_finished(f, 2);
        assert_string_equal(rec.last_result, "done");
        assert_int_equal(model(f, "org/write")->state, MODEL_AVAILABLE);
        assert_null(model(f, "org/hang"));
        fixture_free(f);
}

static void test_failures(void **state) {
        static const struct {
                const char *repo;
                int reply_error;          /* 0: replied, then failed */
                const char *words;
        } cases[] = {
                { "org/missing", -EREMOTEIO, "not-found" },
                { "org/huge", -EDQUOT, "free" },
                { "org/bad", 0, "hash-mismatch" },
                { "org/crash", 0, "internal" },
        };
        Fixture *f = fixture_new(2, NULL);

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Reply r;

                memset(&rec, 0, sizeof rec);
                strcpy(watched, cases[i].repo);
                pull(f, cases[i].repo, NULL, &r);
                wait_reply(f, &r);
                wait_finished(f, 1);
                if (r.error != cases[i].reply_error)
                        fail_msg("%s: reply %d, not %d: %s", cases[i].repo, r.error, cases[i].reply_error, r.message);
                if (r.error < 0)
                        assert_non_null(strstr(r.message, cases[i].words));
                assert_string_equal(rec.last_result, "failed");
                if (!strstr(rec.last_message, cases[i].words))
                        fail_msg("%s: \"%s\" does not say %s", cases[i].repo, rec.last_message, cases[i].words);
                /* Nothing is left: no model, no object, no empty folder. */
                assert_null(model(f, cases[i].repo));
                assert_int_equal(rec.announced, 1);
                assert_int_equal(rec.removed, 1);
        }
        assert_false(exists(f->dir, "org/missing"));
        assert_false(exists(f->dir, ".staging/org--missing"));
        assert_false(exists(f->dir, ".staging/org--huge"));
        fixture_free(f);
}

static void prepare_blocked_staging(const char *dir) {
        char path[512];

        /* A file where the staging folder goes. */
        snprintf(path, sizeof path, "%s/" DOWNLOAD_STAGING_DIR, dir);
        write_file(path, "in the way");
}

static void test_staging_folder_cannot_be_made(void **state) {
        Fixture *f = fixture_new(1, prepare_blocked_staging);
        Reply first, second, third;

        /* Each fails as it starts, and the next starts then: none is
         * left waiting. */
        strcpy(watched, "org/write3");
        pull(f, "org/write1", NULL, &first);
        pull(f, "org/write2", NULL, &second);
        pull(f, "org/write3", NULL, &third);
        wait_reply(f, &first);
        wait_reply(f, &second);
        wait_reply(f, &third);
        assert_int_equal(first.error, -EREMOTEIO);
        assert_int_equal(second.error, -EREMOTEIO);
        assert_int_equal(third.error, -EREMOTEIO);
        assert_non_null(strstr(third.message, "staging folder"));
        assert_int_equal(rec.finished, 1);
        assert_string_equal(rec.last_result, "failed");
        assert_null(model(f, "org/write1"));
        assert_null(model(f, "org/write3"));
        assert_false(download_find(f->m, "org/write2", NULL, NULL));
        fixture_free(f);
}

static void test_shutdown_stops_downloads(void **state) {
        Fixture *f = fixture_new(1, NULL);
        Reply running, queued;

        strcpy(watched, "org/write");
        pull(f, "org/hang", NULL, &running);
        wait_reply(f, &running);
        pull(f, "org/write", NULL, &queued);
        manager_begin_shutdown(f->m);
        assert_true(queued.called);
        assert_int_equal(queued.error, -EBUSY);
        assert_null(model(f, "org/write"));
        assert_int_equal(download_pull(f->m, "org/other", NULL, NULL, on_reply, &queued), -EBUSY);
        fixture_free(f);
}

static void test_metadata_write_is_complete_or_fails(void **state) {
        char dir[] = "/tmp/mpool-test-metadata-XXXXXX", path[128], big[4096], *text;
        struct rlimit old, small = { .rlim_cur = 1000, .rlim_max = RLIM_INFINITY };

        assert_non_null(mkdtemp(dir));
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';

        assert_int_equal(download_metadata_write(dir, big), 0);
        snprintf(path, sizeof path, "%s/" DOWNLOAD_METADATA_FILE, dir);
        text = read_file(path);
        assert_string_equal(text, big);
        free(text);

        /* A file size limit makes write() stop short: the rest is tried,
         * and what stops it is the answer, not a truncated file taken for
         * a whole one. */
        assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
        small.rlim_max = old.rlim_max;
        signal(SIGXFSZ, SIG_IGN);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
        assert_int_equal(download_metadata_write(dir, big), -EFBIG);
        assert_int_equal(download_metadata_write(dir, "{}"), 0);
        assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
        signal(SIGXFSZ, SIG_DFL);
        text = read_file(path);
        assert_string_equal(text, "{}");
        free(text);

        assert_int_equal(download_metadata_write("/nonexistent", "{}"), -ENOENT);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(rmdir(dir), 0);
}

static void make_folder(const char *staging, const char *name, int64_t mtime) {
        char path[512];
        struct timespec times[2] = { { .tv_sec = mtime }, { .tv_sec = mtime } };

        snprintf(path, sizeof path, "%s/%s", staging, name);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof path, "%s/%s/model.safetensors.part", staging, name);
        write_file(path, "partial");
        snprintf(path, sizeof path, "%s/%s", staging, name);
        assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
}

static void test_staging_clean(void **state) {
        char dir[] = "/tmp/mpool-test-staging-XXXXXX", staging[128], command[128];
        char *keep[] = { (char *) "org--kept", NULL };
        int64_t now = (int64_t) time(NULL), old = now - DOWNLOAD_STAGING_KEEP_SEC - 60;

        assert_non_null(mkdtemp(dir));
        /* No staging folder yet: nothing to do. */
        download_staging_clean(dir, NULL, now);

        snprintf(staging, sizeof staging, "%s/" DOWNLOAD_STAGING_DIR, dir);
        assert_int_equal(mkdir(staging, 0700), 0);
        make_folder(staging, "org--old", old);
        make_folder(staging, "org--fresh", now - 60);
        make_folder(staging, "org--kept", old);
        make_folder(staging, DOWNLOAD_REPLACED_PREFIX "org--x-1", now);
        make_folder(staging, ".other", old);

        download_staging_clean(dir, keep, now);
        assert_false(exists(staging, "org--old"));
        assert_false(exists(staging, DOWNLOAD_REPLACED_PREFIX "org--x-1"));
        assert_true(exists(staging, "org--fresh/model.safetensors.part"));
        assert_true(exists(staging, "org--kept/model.safetensors.part"));
        assert_true(exists(staging, ".other"));

        snprintf(command, sizeof command, "rm -rf '%s'", dir);
        assert_int_equal(system(command), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_metadata_write_is_complete_or_fails),
                cmocka_unit_test(test_staging_clean),
                cmocka_unit_test(test_first_pull_installs_by_rename),
                cmocka_unit_test(test_pull_again_installs_by_exchange),
                cmocka_unit_test(test_loaded_model_is_not_replaced),
                cmocka_unit_test(test_load_of_a_downloading_model_is_busy),
                cmocka_unit_test(test_second_pull_joins),
                cmocka_unit_test(test_queue_and_cancel),
                cmocka_unit_test(test_failures),
                cmocka_unit_test(test_staging_folder_cannot_be_made),
                cmocka_unit_test(test_shutdown_stops_downloads),
        };

        /* As in the daemon: a helper that went away is EPIPE, not a signal. */
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
