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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "loader.h"
#include "log.h"
#include "macro.h"
#include "safetensors.h"
#include "store.h"
#include "tensor-list.h"
#include "test-hooks.h"
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

static void loader_files_free(LoaderFile *files, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(files[i].path);
                if (files[i].fd >= 0)
                        close(files[i].fd);
        }
        free(files);
}

void loader_mappings_release(LoaderMapping *mappings, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (mappings[i].address && munmap(mappings[i].address, mappings[i].length) < 0)
                        log_error_errno(errno, "Failed to unmap %zu bytes: %m", mappings[i].length);
                if (mappings[i].fd >= 0)
                        close(mappings[i].fd);
                free(mappings[i].name);
        }
        free(mappings);
}

static void run(WorkItem *item);

LoaderJob *loader_job_free(LoaderJob *j) {
        if (!j)
                return NULL;
        free(j->name);
        free(j->model_dir);
        free(j->huggingface_cache);
        free(j->error_message);
        free(j->revision);
        loader_files_free(j->files, j->n_files);
        /* It points into the mappings. */
        embedding_model_free(j->embedding);
        free(j->embedding_message);
        loader_mappings_release(j->mappings, j->n_mappings);
        model_folder_done(&j->folder);
        model_profile_done(&j->profile);
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
        j->item.run = run;
        j->userdata = userdata;
        j->precision = PRECISION_F32;
        j->folder = MODEL_FOLDER_NULL;
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
        j->item = (WorkItem) {
                .run = run,
                .done = probe->item.done,
                .progress = probe->item.progress,
        };
        j->userdata = probe->userdata;
        j->folder = MODEL_FOLDER_NULL;
        j->name = strdup(probe->name);
        if (!j->name)
                return -ENOMEM;
        j->precision = probe->precision;
        j->precision_asked = probe->precision_asked;
        j->runnable = probe->runnable;
        model_folder_move(&j->folder, &probe->folder);
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

/* 1 if the file's size is no longer expected, 0 if it still is, negative
 * errno if that cannot be told. */
static int file_changed_size(int fd, uint64_t expected) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return -errno;
        return (uint64_t) st.st_size != expected;
}

/* A header that did not validate. The validator names what is wrong by
 * position (tensor index, header byte), never by quoting the file, so its
 * words can go to callers: the message is read by every local user. */
static void fail_header(LoaderJob *j, const LoaderFile *f, uint64_t size, int error, const char *detail) {
        if (error == -ENOMEM)
                return job_fail(j, ENOMEM, "Out of memory.");
        if (file_changed_size(f->fd, size) > 0)
                return job_fail(j, EBADMSG, "%s changed size while it was being loaded.", f->path);
        if (error == -EBADMSG)
                return job_fail(j, EBADMSG, "%s: %s", f->path, detail ?: "not a valid safetensors file");
        return job_fail(j, error, "Cannot read the safetensors header of %s: %m", f->path);
}

/* The store and the validator ask this during a long read of an index or a
 * header. */
static bool probe_cancelled(void *userdata) {
        LoaderJob *j = userdata;

        return work_item_cancelled(&j->item);
}

/* What kind of model the files hold: read again at every load, since
 * files may have come or gone since the store was listed. */
static void read_profile(LoaderJob *j, ModelLocation *location) {
        _cleanup_free_ int *fds = NULL;
        _cleanup_free_ char **paths = NULL;
        int r;

        fds = calloc(j->n_files ?: 1, sizeof *fds);
        paths = calloc(j->n_files ?: 1, sizeof *paths);
        if (!fds || !paths)
                return job_fail(j, ENOMEM, "Out of memory.");
        for (size_t i = 0; i < j->n_files; i++) {
                fds[i] = j->files[i].fd;
                paths[i] = j->files[i].path;
        }
        r = model_profile_read(&location->folder, j->name, fds, paths, j->n_files, probe_cancelled, j, &j->profile);
        if (r == -ECANCELED)
                return job_fail(j, ECANCELED, "The load was cancelled.");
        if (r < 0)
                return job_fail(j, r, "Out of memory.");
        model_folder_move(&j->folder, &location->folder);
        j->runnable = j->profile.kind == MODEL_KIND_EMBEDDING;
}

static void probe(LoaderJob *j) {
        _cleanup_(model_location_freep) ModelLocation *location = NULL;
        _cleanup_free_ char *error = NULL;
        LoaderFile *files;
        int r;

        r = store_resolve_full(j->model_dir, j->huggingface_cache, j->name, probe_cancelled, j, &location, &error);
        if (r < 0) {
                if (error)
                        return job_fail(j, r, "%s", error);
                return job_fail(j, r, "Cannot resolve the model's files: %m");
        }

        j->source = location->source;
        j->revision = TAKE_PTR(location->revision);

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

                if (work_item_cancelled(&j->item))
                        return job_fail(j, ECANCELED, "The load was cancelled.");

                files[i].path = strdup(location->weight_paths[i]);
                if (!files[i].path)
                        return job_fail(j, ENOMEM, "Out of memory.");

                /* The store opened the file beneath its root and checked it is
                 * a regular file; opening the path again could reach another. */
                files[i].fd = TAKE_FD(location->weight_fds[i]);
                if (fstat(files[i].fd, &st) < 0)
                        return job_fail(j, errno, "Cannot stat %s: %m", files[i].path);

                r = safetensors_validate_fd(files[i].fd, probe_cancelled, j, &info, &header_error);
                if (r == -ECANCELED)
                        return job_fail(j, ECANCELED, "The load was cancelled.");
                if (r < 0)
                        return fail_header(j, &files[i], (uint64_t) st.st_size, r, header_error);

                files[i].size = (uint64_t) st.st_size;
                if (__builtin_add_overflow(j->total_bytes, files[i].size, &j->total_bytes))
                        return job_fail(j, EBADMSG, "The model's files are larger than any memory.");
        }

        read_profile(j, location);
}

/* Brings [offset, offset + length) of the file into the page cache by
 * reading it. -EFAULT, as from populating a mapping, when the file ends
 * first. */
static int read_into_page_cache(int fd, uint64_t offset, size_t length) {
        const size_t buffer_size = 1U << 20;
        _cleanup_free_ uint8_t *buffer = malloc(buffer_size);
        size_t done = 0;

        if (!buffer)
                return -ENOMEM;
        while (done < length) {
                ssize_t n = pread(fd, buffer, MIN(buffer_size, length - done), (off_t) (offset + done));

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EFAULT;
                done += (size_t) n;
        }
        return 0;
}

/* Faults the chunk in and keeps it resident. mlock() does both at once; where
 * RLIMIT_MEMLOCK forbids it, the pages are still read in, so the model is
 * resident but may be reclaimed under pressure (and reported so). Never
 * touches the mapped bytes: past the end of a file truncated meanwhile that
 * would be SIGBUS, where these calls fail with EFAULT.
 *
 * The system call is made directly: AddressSanitizer replaces mlock() with a
 * stub that returns 0 and neither reads nor locks anything, so a sanitized
 * daemon would report models as loaded and locked that were never read.
 * glibc's mlock() is the bare system call, so nothing else changes. */
static int populate(int fd, uint8_t *address, uint64_t offset, size_t length, bool *lock) {
        if (*lock) {
                if (syscall(SYS_mlock, address, length) == 0)
                        return 0;
                /* ENOMEM is also how mlock() reports pages past the end of a
                 * file that shrank; populating below then says EFAULT. */
                if (errno != EPERM && errno != ENOMEM && errno != EAGAIN)
                        return -errno;
                *lock = false;
        }

        if (madvise(address, length, MADV_POPULATE_READ) == 0)
                return 0;
        if (errno != EINVAL)
                return -errno;

        /* Kernels before 5.14 lack MADV_POPULATE_READ. Reading the file puts
         * the same pages in the page cache, where the mapping finds them. */
        return read_into_page_cache(fd, offset, length);
}

static uint64_t page_align(uint64_t length) {
        uint64_t page = (uint64_t) sysconf(_SC_PAGESIZE);

        return (length + page - 1) / page * page;
}

uint64_t loader_job_memory_bytes(const LoaderJob *probe) {
        uint64_t sum = 0;

        for (size_t i = 0; i < probe->n_files; i++)
                if (__builtin_add_overflow(sum, page_align(probe->files[i].size), &sum))
                        return UINT64_MAX;
        return sum;
}

static uint64_t mapping_resident_bytes(const LoaderMapping *mapping) {
        size_t page = (size_t) sysconf(_SC_PAGESIZE), n_pages = (mapping->length + page - 1) / page;
        _cleanup_free_ unsigned char *vector = malloc(n_pages ?: 1);
        uint64_t n = 0;

        if (!vector || mincore(mapping->address, mapping->length, vector) < 0)
                return mapping->length;    /* can't tell: count it all rather than too little */
        for (size_t i = 0; i < n_pages; i++)
                n += vector[i] & 1;
        return n * page;
}

static bool timespec_equal(struct timespec a, struct timespec b) {
        return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static void mapping_record(LoaderMapping *m, const struct stat *st) {
        m->size = (uint64_t) st->st_size;
        m->mtime = st->st_mtim;
        m->ctime = st->st_ctim;
}

/* Truncation changes the size, or at least ctime when the file is extended
 * back to the same size; a rewrite in place changes mtime. */
static bool mapping_file_changed(const LoaderMapping *m, const struct stat *st) {
        return (uint64_t) st->st_size != m->size || !timespec_equal(st->st_mtim, m->mtime) ||
                !timespec_equal(st->st_ctim, m->ctime);
}

int loader_mappings_measure(LoaderMapping *mappings, size_t n, uint64_t *ret_resident_bytes) {
        uint64_t total = 0;
        bool changed = false;

        assert(mappings || n == 0);
        assert(ret_resident_bytes);

        for (size_t i = 0; i < n; i++) {
                LoaderMapping *m = &mappings[i];
                struct stat st;

                /* fstat() of an open descriptor does not fail but for a bug;
                 * the last figure stands then. */
                if (m->address && m->fd >= 0 && fstat(m->fd, &st) >= 0) {
                        if (mapping_file_changed(m, &st)) {
                                mapping_record(m, &st);
                                changed = true;
                                /* The size and times change before the kernel
                                 * has dropped the pages past the new end: the
                                 * next call measures again, when it has. */
                                m->remeasure = 2;
                        }
                        if (m->remeasure > 0) {
                                m->remeasure--;
                                m->resident_bytes = mapping_resident_bytes(m);
                        }
                }
                total += m->resident_bytes;
        }

        *ret_resident_bytes = total;
        return changed;
}

/* The model's small files, read beneath its root (EmbeddingSource). */
static int folder_read_file(const char *path, uint64_t max_size, char **ret_text, size_t *ret_length, void *userdata,
                            char **ret_error) {
        return store_read_model_file(userdata, path, max_size, ret_text, ret_length, ret_error);
}

static int folder_open_file(const char *path, void *userdata, char **ret_error) {
        return store_open_model_file(userdata, path, TOKENIZER_FILE_SIZE_MAX, NULL, ret_error);
}

/* What could not be made runnable loads as weights when no precision was
 * asked, with the reason kept for whoever asks it to run. */
static void runnable_failed(LoaderJob *j, int r, char **message) {
        if (r == -ECANCELED)
                return job_fail(j, ECANCELED, "The load was cancelled.");
        if (r == -ENOMEM)
                return job_fail(j, r, "Out of memory.");

        /* Why, for the model's kind either way. */
        j->embedding_error = r;
        j->embedding_message = TAKE_PTR(*message);
        if (j->precision_asked)
                return job_fail(j, r, "%s", j->embedding_message ?: "Out of memory.");
        log_warning("Model %s cannot be run, it loads as weights only: %s", j->name, strempty(j->embedding_message));
}

/* Makes the mapped model runnable, in its precision, and lets the
 * mappings go when nothing reads them any more. */
static void make_runnable(LoaderJob *j) {
        _cleanup_(tensor_list_done) TensorList tensors = {};
        _cleanup_free_ char *message = NULL;
        EmbeddingSource source;
        int r;

        for (size_t i = 0; i < j->n_mappings; i++) {
                LoaderMapping *m = &j->mappings[i];

                if (!m->address)   /* an empty file, which no valid model has */
                        continue;
                r = tensor_list_add_mapped(&tensors, m->address, m->length, j->files[i].path, probe_cancelled, j,
                                           &message);
                if (r < 0)
                        return runnable_failed(j, r, &message);
        }

        source = (EmbeddingSource) {
                .name = j->name,
                .read_file = folder_read_file,
                .open_file = folder_open_file,
                .userdata = &j->folder,
                .tensors = tensors.tensors,
                .n_tensors = tensors.n_tensors,
        };
        r = embedding_model_new(&source, j->precision, probe_cancelled, j, &j->embedding, &message);
        if (r < 0)
                return runnable_failed(j, r, &message);
        if (embedding_model_needs_mappings(j->embedding))
                return;

        /* Every weight was converted: the files' pages need not be held.
         * The descriptors stay, for OpenFiles and for telling changes. */
        j->resident_bytes = 0;
        for (size_t i = 0; i < j->n_mappings; i++) {
                LoaderMapping *m = &j->mappings[i];

                if (m->address && munmap(m->address, m->length) < 0)
                        log_warning_errno(errno, "Cannot unmap %s, converted: %m", j->files[i].path);
                m->address = NULL;
                m->length = 0;
                m->resident_bytes = 0;
        }
}

static void map(LoaderJob *j) {
        uint64_t done = 0, last_post = 0;
        bool lock = true;
        int r;

        j->mappings = calloc(j->n_files ?: 1, sizeof *j->mappings);
        if (!j->mappings)
                return job_fail(j, ENOMEM, "Out of memory.");
        for (size_t i = 0; i < j->n_files; i++)
                j->mappings[i].fd = -1;

        work_item_progress(&j->item, 0, j->total_bytes);
        test_hook_load_gate(j->name, &j->item);

        for (size_t i = 0; i < j->n_files; i++) {
                LoaderFile *f = &j->files[i];
                LoaderMapping *m = &j->mappings[i];
                struct stat st;

                j->n_mappings++;
                m->name = strdup(basename(f->path));
                if (!m->name)
                        return job_fail(j, ENOMEM, "Out of memory.");
                if (f->size == 0)
                        continue;

                /* The header was validated against this size: a file that
                 * changed since must be validated again, not trusted. What
                 * is seen here is what loader_mappings_measure() compares
                 * with, so that any change from now on is measured. */
                if (fstat(f->fd, &st) < 0)
                        return job_fail(j, errno, "Cannot stat %s: %m", f->path);
                if ((uint64_t) st.st_size != f->size)
                        return job_fail(j, EBADMSG, "%s changed size while it was being loaded.", f->path);
                mapping_record(m, &st);

                m->address = mmap(NULL, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
                if (m->address == MAP_FAILED) {
                        m->address = NULL;
                        return job_fail(j, errno, "Cannot map %s: %m", f->path);
                }
                m->length = f->size;
                m->fd = TAKE_FD(f->fd);

                for (uint64_t offset = 0; offset < f->size; offset += MAP_CHUNK_BYTES) {
                        size_t length = MIN(MAP_CHUNK_BYTES, f->size - offset);

                        if (work_item_cancelled(&j->item))
                                return job_fail(j, ECANCELED, "The load was cancelled.");

                        r = populate(m->fd, (uint8_t *) m->address + offset, offset, length, &lock);
                        if (r < 0) {
                                /* Pages past the end of a file that shrank cannot
                                 * be read in (EFAULT): the file's doing, not
                                 * the disk's. */
                                if (file_changed_size(m->fd, f->size) > 0)
                                        return job_fail(j, EBADMSG, "%s changed size while it was being loaded.",
                                                        f->path);
                                return job_fail(j, r == -EFAULT ? EIO : r, "Cannot read %s into memory: %m",
                                                f->path);
                        }

                        done += length;
                        if (now_monotonic_usec() - last_post >= PROGRESS_INTERVAL_USEC && done < j->total_bytes) {
                                work_item_progress(&j->item, done, j->total_bytes);
                                last_post = now_monotonic_usec();
                        }
                }
        }

        /* A file truncated while later ones were read in has lost its pages
         * already, locked or not: every file must still have the size its
         * header was validated against. Locked pages are resident by
         * definition; only unlocked ones need counting, which costs a pass
         * over every page. */
        for (size_t i = 0; i < j->n_mappings; i++) {
                LoaderMapping *m = &j->mappings[i];

                if (!m->address)
                        continue;
                r = file_changed_size(m->fd, m->length);
                if (r < 0)
                        return job_fail(j, r, "Cannot stat %s: %m", j->files[i].path);
                if (r > 0)
                        return job_fail(j, EBADMSG, "%s changed size while it was being loaded.", j->files[i].path);
                m->resident_bytes = lock ? page_align(m->length) : mapping_resident_bytes(m);
                j->resident_bytes += m->resident_bytes;
        }
        j->locked = lock;

        if (j->runnable) {
                make_runnable(j);
                if (j->result < 0)
                        return;
        }
        work_item_progress(&j->item, j->total_bytes, j->total_bytes);
}

static void run(WorkItem *item) {
        LoaderJob *j = loader_job_from_item(item);
        uint64_t started = now_monotonic_usec();

        if (j->kind == LOADER_JOB_PROBE)
                probe(j);
        else
                map(j);
        j->duration_usec = now_monotonic_usec() - started;
}
