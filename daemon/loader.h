/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "embedding-model.h"
#include "model-profile.h"
#include "precision.h"
#include "store.h"
#include "workpool.h"

/* The two jobs a load is made of, run on a WorkPool: a probe (find the
 * files, validate every header, learn the size, and read what kind of
 * model they hold: model-profile.h) and, once the pool has admitted that
 * size, a map (bring the weights into memory and keep them there, and make
 * a runnable model an EmbeddingModel in the load's precision). Inputs are
 * fixed before the job is submitted; the worker writes only the results.
 *
 * When the EmbeddingModel needs no mapping (every weight converted: f16,
 * q8, q4, or f32 over files without F32 tensors), the map job unmaps the
 * files once it is made: their pages are no longer held, and the mappings
 * keep only their descriptors (address NULL), for OpenFiles. */

typedef enum LoaderJobKind {
        LOADER_JOB_PROBE,
        LOADER_JOB_MAP,
} LoaderJobKind;

typedef struct LoaderFile {
        char *path;
        int fd;
        uint64_t size;
} LoaderFile;

typedef struct LoaderMapping {
        char *name;               /* the file's name in the model's folder, as OpenFiles gives it */
        void *address;
        size_t length;
        /* A file truncated under its mapping takes the pages past its new end
         * with it, locked or not. The descriptor is kept (-1 when there is
         * none) so that fstat() can tell cheaply whether the file changed
         * since it was last measured: size, mtime and ctime as seen then. */
        int fd;
        uint64_t size;
        struct timespec mtime;
        struct timespec ctime;
        uint64_t resident_bytes;  /* as last measured */
        unsigned remeasure;       /* measure again this many times even if nothing changed */
} LoaderMapping;

typedef struct LoaderJob {
        WorkItem item;            /* the owner sets item.done and item.progress */

        /* Inputs, fixed before the job starts. */
        LoaderJobKind kind;
        char *name;
        char *model_dir;          /* probe */
        char *huggingface_cache;  /* probe, may be NULL */
        Precision precision;      /* of a runnable model: what the load asked, or PRECISION_F32 */
        bool precision_asked;     /* asked: a model that cannot be made runnable then fails to load */
        bool runnable;            /* the probe found the model runnable: the map makes the EmbeddingModel */
        void *userdata;

        /* Results, read by the loop once the job is posted back done. The
         * probe's files become the map job's input (loader_job_new_map). */
        int result;               /* 0 or negative errno */
        char *error_message;      /* what went wrong, for people */
        LoaderFile *files;
        size_t n_files;
        uint64_t total_bytes;
        LoaderMapping *mappings;
        size_t n_mappings;
        uint64_t resident_bytes;  /* pages of the mappings really in memory */
        bool locked;              /* mlock() succeeded for every mapping */
        uint64_t duration_usec;
        ModelSource source;       /* probe: where the files were found */
        char *revision;           /* probe: the model's commit, or "" */
        ModelFolder folder;       /* probe, then map: where the model's other files are */
        ModelProfile profile;     /* probe: what kind of model, what it takes */
        EmbeddingModel *embedding;     /* map: the model made runnable (points into the mappings) */
        int embedding_error;      /* map: why it could not be made runnable (the load fails too if a
                                   * precision was asked) */
        char *embedding_message;
} LoaderJob;

int loader_job_new_probe(const char *name, const char *model_dir, const char *huggingface_cache,
                         void *userdata, LoaderJob **ret);
/* What the probe's files will hold once mapped and locked, as the loaded
 * model's memory is counted: each file whole, in pages. Admission reserves
 * this, so that a loaded model never holds more than it was admitted for;
 * mpool-pull --inspect counts the same (pull/PROTOCOL.md). */
uint64_t loader_job_memory_bytes(const LoaderJob *probe);
/* Moves the probe's files and folder into a new map job, with the probe's
 * callbacks and precision. */
int loader_job_new_map(LoaderJob *probe, LoaderJob **ret);
LoaderJob *loader_job_free(LoaderJob *j);
/* Takes the job's mappings (the caller now owns them and unmaps with
 * loader_mappings_release, after freeing the EmbeddingModel made over
 * them, which it takes with TAKE_PTR(j->embedding)). */
LoaderMapping *loader_job_steal_mappings(LoaderJob *j, size_t *ret_n);
void loader_mappings_release(LoaderMapping *mappings, size_t n);
/* Follows what a loaded model really holds when its files change under it:
 * fstat()s each file and measures again (mincore(), which never touches the
 * mapped bytes) the mappings whose file changed since the load or the last
 * call, and once more on the next call, by when the kernel has surely
 * dropped what a truncation cut off. Cheap when nothing changed: one fstat()
 * per file. Sets *ret_resident_bytes to the mappings' resident bytes and
 * returns 1 when a file changed since the last call, 0 otherwise. */
int loader_mappings_measure(LoaderMapping *mappings, size_t n, uint64_t *ret_resident_bytes);

static inline LoaderJob *loader_job_from_item(WorkItem *item) {
        return (LoaderJob *) ((char *) item - offsetof(LoaderJob, item));
}
