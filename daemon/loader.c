/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loader.h"
#include "log.h"
#include "macro.h"
#include "safetensors.h"
#include "store.h"
#include "time-util.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* Bytes brought in between two checks for cancellation and two progress
 * reports: small enough to cancel a load promptly, large enough that the
 * checks cost nothing next to the copy. */
#define MAP_CHUNK_BYTES (UINT64_C(32) << 20)
/* The loop emits at most 20 LoadProgress signals a second per model; the
 * thread reports a little more often so that the loop always has a fresh
 * figure, and no more, so the pipe never fills with stale ones. */
#define PROGRESS_INTERVAL_USEC (25 * USEC_PER_MSEC)

typedef enum LoaderMessageType {
        LOADER_MESSAGE_PROGRESS,
        LOADER_MESSAGE_DONE,
} LoaderMessageType;

/* Smaller than PIPE_BUF, so every write of one is atomic. */
typedef struct LoaderMessage {
        LoaderJob *job;
        LoaderMessageType type;
        uint64_t bytes_done;
        uint64_t bytes_total;
} LoaderMessage;

struct Loader {
        sd_event_source *source;
        int read_fd;
        int write_fd;
        unsigned n_running;
        loader_progress_handler_t on_progress;
        loader_done_handler_t on_done;
        void *userdata;
};

static void loader_files_free(LoaderFile *files, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(files[i].path);
                if (files[i].fd >= 0)
                        close(files[i].fd);
        }
        free(files);
}

void loader_mappings_release(LoaderMapping *mappings, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (mappings[i].address && munmap(mappings[i].address, mappings[i].length) < 0)
                        log_error_errno(errno, "Failed to unmap %zu bytes: %m", mappings[i].length);
        free(mappings);
}

LoaderJob *loader_job_free(LoaderJob *j) {
        if (!j)
                return NULL;
        free(j->name);
        free(j->model_dir);
        free(j->huggingface_cache);
        free(j->error_message);
        loader_files_free(j->files, j->n_files);
        loader_mappings_release(j->mappings, j->n_mappings);
        free(j);
        return NULL;
}

static void loader_job_freep(LoaderJob **j) {
        loader_job_free(*j);
}

int loader_job_new_probe(const char *name, const char *model_dir, const char *huggingface_cache,
                         void *userdata, LoaderJob **ret) {
        _cleanup_(loader_job_freep) LoaderJob *j = NULL;

        assert(name);
        assert(model_dir);
        assert(ret);

        j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->kind = LOADER_JOB_PROBE;
        j->userdata = userdata;
        atomic_init(&j->cancelled, false);
        j->name = strdup(name);
        j->model_dir = strdup(model_dir);
        if (!j->name || !j->model_dir)
                return -ENOMEM;
        if (huggingface_cache) {
                j->huggingface_cache = strdup(huggingface_cache);
                if (!j->huggingface_cache)
                        return -ENOMEM;
        }

        *ret = TAKE_PTR(j);
        return 0;
}

int loader_job_new_map(LoaderJob *probe, LoaderJob **ret) {
        _cleanup_(loader_job_freep) LoaderJob *j = NULL;

        assert(probe);
        assert(probe->kind == LOADER_JOB_PROBE);
        assert(probe->result == 0);
        assert(ret);

        j = calloc(1, sizeof *j);
        if (!j)
                return -ENOMEM;
        j->kind = LOADER_JOB_MAP;
        j->userdata = probe->userdata;
        atomic_init(&j->cancelled, false);
        j->name = strdup(probe->name);
        if (!j->name)
                return -ENOMEM;
        j->total_bytes = probe->total_bytes;
        j->files = TAKE_PTR(probe->files);
        j->n_files = probe->n_files;
        probe->n_files = 0;

        *ret = TAKE_PTR(j);
        return 0;
}

LoaderMapping *loader_job_steal_mappings(LoaderJob *j, size_t *ret_n) {
        assert(j);
        assert(ret_n);

        *ret_n = j->n_mappings;
        j->n_mappings = 0;
        return TAKE_PTR(j->mappings);
}

static void job_fail(LoaderJob *j, int error, const char *format, ...) _printf_(3, 4);
static void job_fail(LoaderJob *j, int error, const char *format, ...) {
        va_list ap;

        j->result = -abs(error);
        free(j->error_message);
        errno = abs(error);
        va_start(ap, format);
        if (vasprintf(&j->error_message, format, ap) < 0)
                j->error_message = NULL;
        va_end(ap);
}

static void post(Loader *l, LoaderJob *j, LoaderMessageType type, uint64_t done, uint64_t total) {
        LoaderMessage message;
        ssize_t n;

        /* Zeroed whole, padding included: the bytes go through a pipe. */
        memset(&message, 0, sizeof message);
        message.job = j;
        message.type = type;
        message.bytes_done = done;
        message.bytes_total = total;

        /* The write end blocks: a slow loop slows the loader rather than
         * losing a message. Only EINTR is worth a retry. */
        do
                n = write(l->write_fd, &message, sizeof message);
        while (n < 0 && errno == EINTR);

        /* A lost DONE would leak the job and hang its callers; there is no
         * way to report it but to stop. */
        if (n != (ssize_t) sizeof message)
                abort();
}

/* The validator asks this during a long parse of a header. */
static bool probe_cancelled(void *userdata) {
        LoaderJob *j = userdata;

        return atomic_load(&j->cancelled);
}

static void probe(LoaderJob *j) {
        _cleanup_(model_location_freep) ModelLocation *location = NULL;
        _cleanup_free_ char *error = NULL;
        LoaderFile *files;
        int r;

        r = store_resolve(j->model_dir, j->huggingface_cache, j->name, &location, &error);
        if (r < 0) {
                if (error)
                        return job_fail(j, r, "%s", error);
                return job_fail(j, r, "Cannot resolve the model's files: %m");
        }

        files = calloc(location->n_weights, sizeof *files);
        if (!files)
                return job_fail(j, ENOMEM, "Out of memory.");
        for (size_t i = 0; i < location->n_weights; i++)
                files[i].fd = -1;
        j->files = files;
        j->n_files = location->n_weights;

        for (size_t i = 0; i < location->n_weights; i++) {
                _cleanup_free_ char *header_error = NULL;
                SafetensorsInfo info;
                struct stat st;

                if (atomic_load(&j->cancelled))
                        return job_fail(j, ECANCELED, "The load was cancelled.");

                files[i].path = strdup(location->weight_paths[i]);
                if (!files[i].path)
                        return job_fail(j, ENOMEM, "Out of memory.");

                /* O_NONBLOCK: a FIFO swapped in since the store looked must not
                 * hang this thread (and with it shutdown) in open(). */
                files[i].fd = open(files[i].path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                if (files[i].fd < 0)
                        return job_fail(j, errno, "Cannot open %s: %m", files[i].path);
                if (fstat(files[i].fd, &st) < 0)
                        return job_fail(j, errno, "Cannot stat %s: %m", files[i].path);
                if (!S_ISREG(st.st_mode))
                        return job_fail(j, EBADMSG, "%s is not a regular file.", files[i].path);

                r = safetensors_validate_fd(files[i].fd, probe_cancelled, j, &info, &header_error);
                if (r == -ECANCELED)
                        return job_fail(j, ECANCELED, "The load was cancelled.");
                if (r < 0)
                        return job_fail(j, r == -EBADMSG ? EBADMSG : r, "%s: %s", files[i].path,
                                        header_error ?: "cannot read the safetensors header");

                files[i].size = (uint64_t) st.st_size;
                if (__builtin_add_overflow(j->total_bytes, files[i].size, &j->total_bytes))
                        return job_fail(j, EBADMSG, "The model's files are larger than any memory.");
        }
}

/* Faults the chunk in and keeps it resident. mlock() does both at once; where
 * RLIMIT_MEMLOCK forbids it, the pages are still read in, so the model is
 * resident but may be reclaimed under pressure (and reported so). */
static int populate(LoaderJob *j, uint8_t *address, size_t length, bool *lock) {
        if (*lock) {
                if (mlock(address, length) == 0)
                        return 0;
                if (errno != EPERM && errno != ENOMEM && errno != EAGAIN)
                        return -errno;
                *lock = false;
        }

        if (madvise(address, length, MADV_POPULATE_READ) == 0)
                return 0;
        if (errno != EINVAL)
                return -errno;

        /* Kernels before 5.14 lack MADV_POPULATE_READ: touch every page. */
        long page = sysconf(_SC_PAGESIZE);
        volatile uint8_t sink = 0;
        for (size_t o = 0; o < length; o += (size_t) page)
                sink ^= address[o];
        (void) sink;
        return 0;
}

static uint64_t page_align(uint64_t length) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (length + page - 1) / page * page;
}

static uint64_t resident_bytes(const LoaderMapping *mapping) {
        size_t page = (size_t) sysconf(_SC_PAGESIZE), n_pages = (mapping->length + page - 1) / page;
        _cleanup_free_ unsigned char *vector = malloc(n_pages ?: 1);
        uint64_t n = 0;

        if (!vector || mincore(mapping->address, mapping->length, vector) < 0)
                return mapping->length;    /* can't tell: count it all rather than too little */
        for (size_t i = 0; i < n_pages; i++)
                n += vector[i] & 1;
        return n * page;
}

static void map(Loader *l, LoaderJob *j) {
        uint64_t done = 0, last_post = 0, started = now_monotonic_usec();
        bool lock = true;

        j->mappings = calloc(j->n_files ?: 1, sizeof *j->mappings);
        if (!j->mappings)
                return job_fail(j, ENOMEM, "Out of memory.");

        post(l, j, LOADER_MESSAGE_PROGRESS, 0, j->total_bytes);

        for (size_t i = 0; i < j->n_files; i++) {
                LoaderFile *f = &j->files[i];
                LoaderMapping *m = &j->mappings[i];
                struct stat st;

                if (f->size == 0) {
                        j->n_mappings++;
                        continue;
                }
                /* The header was validated against this size: a file that
                 * changed since must be validated again, not trusted. */
                if (fstat(f->fd, &st) < 0)
                        return job_fail(j, errno, "Cannot stat %s: %m", f->path);
                if ((uint64_t) st.st_size != f->size)
                        return job_fail(j, EBADMSG, "%s changed size while it was being loaded.", f->path);

                m->address = mmap(NULL, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
                if (m->address == MAP_FAILED) {
                        m->address = NULL;
                        return job_fail(j, errno, "Cannot map %s: %m", f->path);
                }
                m->length = f->size;
                j->n_mappings++;

                for (uint64_t offset = 0; offset < f->size; offset += MAP_CHUNK_BYTES) {
                        size_t length = MIN(MAP_CHUNK_BYTES, f->size - offset);
                        int r;

                        if (atomic_load(&j->cancelled))
                                return job_fail(j, ECANCELED, "The load was cancelled.");

                        r = populate(j, (uint8_t *) m->address + offset, length, &lock);
                        if (r < 0)
                                return job_fail(j, r, "Cannot read %s into memory: %m", f->path);

                        done += length;
                        if (now_monotonic_usec() - last_post >= PROGRESS_INTERVAL_USEC && done < j->total_bytes) {
                                post(l, j, LOADER_MESSAGE_PROGRESS, done, j->total_bytes);
                                last_post = now_monotonic_usec();
                        }
                }

                /* The mapping keeps the file; the descriptor is not needed. */
                close(TAKE_FD(f->fd));
        }

        /* Locked pages are resident by definition; only unlocked ones need
         * counting, which costs a pass over every page. */
        j->locked = lock;
        for (size_t i = 0; i < j->n_mappings; i++)
                if (j->mappings[i].address)
                        j->resident_bytes += lock ? page_align(j->mappings[i].length)
                                                  : resident_bytes(&j->mappings[i]);
        post(l, j, LOADER_MESSAGE_PROGRESS, j->total_bytes, j->total_bytes);
        j->duration_usec = now_monotonic_usec() - started;
}

typedef struct ThreadArgs {
        Loader *loader;
        LoaderJob *job;
} ThreadArgs;

static void *loader_thread(void *p) {
        ThreadArgs args = *(ThreadArgs *) p;
        uint64_t started = now_monotonic_usec();

        free(p);

        if (args.job->kind == LOADER_JOB_PROBE)
                probe(args.job);
        else
                map(args.loader, args.job);

        if (args.job->kind == LOADER_JOB_PROBE)
                args.job->duration_usec = now_monotonic_usec() - started;
        post(args.loader, args.job, LOADER_MESSAGE_DONE, 0, 0);
        return NULL;
}

int loader_start(Loader *l, LoaderJob *job) {
        _cleanup_free_ ThreadArgs *args = NULL;
        pthread_attr_t attr;
        sigset_t all, saved;
        pthread_t thread;
        int r;

        assert(l);
        assert(job);

        args = malloc(sizeof *args);
        if (!args)
                return -ENOMEM;
        *args = (ThreadArgs) { .loader = l, .job = job };

        r = pthread_attr_init(&attr);
        if (r != 0)
                return -r;
        r = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (r != 0) {
                pthread_attr_destroy(&attr);
                return -r;
        }

        /* Signals belong to the loop (sd-event's signalfd), never to a loader. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = pthread_create(&thread, &attr, loader_thread, args);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        pthread_attr_destroy(&attr);
        if (r != 0)
                return -r;

        TAKE_PTR(args);
        l->n_running++;
        return 0;
}

static int on_loader_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Loader *l = userdata;

        for (;;) {
                LoaderMessage message;
                ssize_t n = read(fd, &message, sizeof message);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return log_error_errno(errno, "Failed to read from the loader pipe: %m");
                }
                if (n != (ssize_t) sizeof message)
                        return log_error_errno(EIO, "Short read from the loader pipe (%zd bytes).", n);

                if (message.type == LOADER_MESSAGE_PROGRESS)
                        l->on_progress(message.job, message.bytes_done, message.bytes_total, l->userdata);
                else {
                        assert(l->n_running > 0);
                        l->n_running--;
                        l->on_done(message.job, l->userdata);
                }
        }
}

int loader_new(sd_event *event, loader_progress_handler_t on_progress, loader_done_handler_t on_done,
               void *userdata, Loader **ret) {
        _cleanup_free_ Loader *l = NULL;
        int fds[2], r;

        assert(event);
        assert(on_progress);
        assert(on_done);
        assert(ret);

        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        l->read_fd = fds[0];
        l->write_fd = fds[1];
        if (fcntl(l->read_fd, F_SETFL, O_NONBLOCK) < 0) {
                r = -errno;
                goto fail;
        }
        l->on_progress = on_progress;
        l->on_done = on_done;
        l->userdata = userdata;

        r = sd_event_add_io(event, &l->source, l->read_fd, EPOLLIN, on_loader_io, l);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(l->source, "loader");

        *ret = TAKE_PTR(l);
        return 0;

fail:
        close(fds[0]);
        close(fds[1]);
        return r;
}

Loader *loader_free(Loader *l) {
        if (!l)
                return NULL;
        /* Threads still running hold the write end; freeing under them would
         * be a use after free, which the owner prevents by draining first. */
        assert(l->n_running == 0);
        sd_event_source_disable_unref(l->source);
        close(l->read_fd);
        close(l->write_fd);
        free(l);
        return NULL;
}

unsigned loader_running(const Loader *l) {
        return l->n_running;
}
