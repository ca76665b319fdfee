/* SPDX-License-Identifier: MIT */
#pragma once

/* The model core without a bus, for the unit tests that drive it: a store
 * of small safetensors models in a temporary folder, a Manager configured
 * on it with events recorded, requests submitted and the loop run until
 * they complete. Include after cmocka.h. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "macro.h"
#include "manager.h"
#include "model-lifecycle.h"
#include "request.h"
#include "service.h"
#include "time-util.h"

/* Generous: a loaded two-core machine may be slow, never this slow. */
#define WAIT_USEC (60 * USEC_PER_SEC)

typedef struct Recorder {
        unsigned loaded, unloaded, failed, announced, progress, removed, expires_changed;
        char last_unload_reason[64];
        int last_failure;
} Recorder;

static Recorder rec;

static void on_model_loaded(Manager *m, PoolModel *model) {
        rec.loaded++;
}

static void on_model_unloaded(Manager *m, PoolModel *model, const char *reason) {
        rec.unloaded++;
        snprintf(rec.last_unload_reason, sizeof rec.last_unload_reason, "%s", reason);
}

static void on_load_failed(Manager *m, PoolModel *model, int error, const char *message) {
        rec.failed++;
        rec.last_failure = error;
}

static void on_announced(Manager *m, PoolModel *model) {
        rec.announced++;
}

static void on_progress(Manager *m, PoolModel *model, uint64_t done, uint64_t total) {
        rec.progress++;
}

static void on_removed(Manager *m, PoolModel *model) {
        /* Still findable, as sd-bus needs it to be. */
        assert_ptr_equal(pool_find(&m->pool, model->name), model);
        assert_true(model_is_announced(model));
        rec.removed++;
}

static void on_model_changed(Manager *m, PoolModel *model, ModelChange what) {
        if (what & MODEL_CHANGED_EXPIRES)
                rec.expires_changed++;
}

static const ManagerEvents recorder_events = {
        .model_changed = on_model_changed,
        .model_loaded = on_model_loaded,
        .model_unloaded = on_model_unloaded,
        .load_failed = on_load_failed,
        .model_announced = on_announced,
        .load_progress = on_progress,
        .model_removed = on_removed,
};

typedef struct Fixture {
        char dir[64];
        Manager *m;
} Fixture;

/* A valid single-tensor safetensors file of n floats. */
static void write_model(const char *dir, const char *name, size_t n_floats) {
        char path[256], header[256];
        size_t header_len;
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof path, "%s/%s/model.safetensors", dir, name);
        header_len = (size_t) snprintf(header, sizeof header,
                                       "{\"w\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[0,%zu]}}",
                                       n_floats, n_floats * 4);
        while (header_len % 8 != 0)
                header[header_len++] = ' ';
        f = fopen(path, "we");
        assert_non_null(f);
        uint64_t le = header_len;
        assert_int_equal(fwrite(&le, 8, 1, f), 1);
        assert_int_equal(fwrite(header, 1, header_len, f), header_len);
        for (size_t i = 0; i < n_floats; i++) {
                float v = (float) i;
                assert_int_equal(fwrite(&v, 4, 1, f), 1);
        }
        assert_int_equal(fclose(f), 0);
}

static Fixture *fixture_new(const char *memory_limit, unsigned threads, unsigned queued) {
        Fixture *f = calloc(1, sizeof *f);
        Config config;
        char *error = NULL;

        assert_non_null(f);
        strcpy(f->dir, "/tmp/mpool-test-lifecycle-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        write_model(f->dir, "alpha", 256 * 1024);    /* 1 MiB */
        write_model(f->dir, "beta", 256 * 1024);

        assert_int_equal(manager_new(&f->m), 0);
        assert_int_equal(config_init_defaults(&f->m->config), 0);
        free(f->m->config.model_dir);
        f->m->config.model_dir = strdup(f->dir);
        assert_int_equal(parse_size_or_percent(memory_limit, &f->m->config.memory_limit), 0);
        f->m->config.max_concurrent_loads = threads;
        f->m->config.max_queued_loads = queued;
        (void) error;
        config = f->m->config;
        assert_int_equal(manager_configure(f->m, &config), 0);
        assert_int_equal(sd_event_new(&f->m->event), 0);
        f->m->events = &recorder_events;
        memset(&rec, 0, sizeof rec);
        assert_int_equal(manager_scan_store(f->m), 0);
        assert_int_equal(manager_start(f->m), 0);
        return f;
}

static void fixture_free(Fixture *f) {
        char command[128];

        manager_begin_shutdown(f->m);
        /* Shutdown ends when every worker has let go. */
        for (uint64_t end = now_monotonic_usec() + WAIT_USEC;
             sd_event_get_state(f->m->event) != SD_EVENT_FINISHED && now_monotonic_usec() < end;)
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        assert_int_equal(workpool_in_flight(f->m->loaders), 0);
        manager_free(f->m);
        snprintf(command, sizeof command, "rm -rf '%s'", f->dir);
        assert_int_equal(system(command), 0);
        free(f);
}

typedef struct Outcome {
        bool completed;
        int error;
        bool was_loaded;
        char **unloaded;
} Outcome;

static void on_complete(Request *req, void *userdata) {
        Outcome *o = userdata;

        o->completed = true;
        o->error = req->error;
        o->was_loaded = req->was_loaded;
        o->unloaded = req->unloaded;
        req->unloaded = NULL;
}

static Request *submit(Fixture *f, RequestKind kind, const char *model, const char *owner, Outcome *o) {
        Request *req;

        memset(o, 0, sizeof *o);
        assert_int_equal(request_new(kind, model, owner, on_complete, o, &req), 0);
        manager_submit(f->m, req);
        return req;
}

static void run_until(Fixture *f, const bool *flag) {
        uint64_t end = now_monotonic_usec() + WAIT_USEC;

        while (!*flag) {
                assert_true(now_monotonic_usec() < end);
                assert_true(sd_event_run(f->m->event, 100 * USEC_PER_MSEC) >= 0);
        }
}

static PoolModel *load(Fixture *f, const char *name) {
        Outcome o;
        Request *req = submit(f, REQUEST_LOAD, name, NULL, &o);

        run_until(f, &o.completed);
        assert_int_equal(o.error, 0);
        request_unref(req);
        return pool_find(&f->m->pool, name);
}
