/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"
#include "strv.h"

/* The model store: maps model names to the files on disk. Three places are
 * searched. ModelDir holds one directory per model, named by its path
 * relative to the root ("name" or "org/name"). The registry,
 * ModelDir/.registered/, holds one small file per model registered from a
 * directory elsewhere (Register): named after the model ("org--name" for
 * "org/name"), holding the directory's absolute path, symlinks resolved. A
 * Hugging Face cache (the "hub" folder) holds models--ORG--NAME (or
 * models--NAME) directories whose refs/main names the snapshot in use;
 * those models are named "ORG/NAME". When several know a name, a
 * registration wins, then ModelDir: Register refuses names already known,
 * so that only a folder added later is hidden, and Remove of a registered
 * name never reaches a folder of the same name.
 *
 * A model directory holds either model.safetensors or
 * model.safetensors.index.json plus the shards its weight_map names. The
 * store only finds files and reads the index; the loader validates the
 * safetensors content.
 *
 * The index is read in place (json-scan.h), in one pass, keeping only the
 * distinct names of the shards: reading the largest index allowed, whatever
 * it holds, takes little memory beyond its text, which is mapped for the
 * read and given back to the kernel after it. Members other than
 * "weight_map" (such as the "metadata" transformers writes) are read past
 * and may hold any JSON.
 *
 * Everything below a root is resolved beneath it (openat2() with
 * RESOLVE_BENEATH, or the same walk done in resolve.c where openat2() is
 * missing): the root of ModelDir is ModelDir itself, the root of a
 * cached model is its models--* folder, so that the cache's relative symlinks
 * from snapshots/REV/FILE to ../../blobs/HASH work. A symlink that leads out
 * of its root, or any absolute symlink, is refused: the daemon reads files
 * for every local user and reports on them in Status, so it must not be
 * pointed at files those users could not read themselves. The roots
 * themselves come from the configuration and are opened as configured. A
 * registered model's root is its own directory, opened by the path
 * registered without following any symlink (the path was stored resolved;
 * a symlink met later makes the model invalid), so a symlink in it that
 * leads out of it is refused as in ModelDir.
 *
 * Messages name files by their place in the store, never by what a symlink
 * points to, and never quote what a file holds: an index's entries are
 * named by their number in weight_map, its syntax errors by byte offset. */

/* Bounds on what a store may make us read or hold. */
#define STORE_LIST_MAX          4096U
#define STORE_INDEX_SIZE_MAX    (UINT64_C(64) * 1024 * 1024)
#define STORE_SHARDS_MAX        10000U

#define STORE_SINGLE_WEIGHTS_FILE "model.safetensors"
#define STORE_INDEX_FILE          "model.safetensors.index.json"

/* The registry, inside ModelDir: at most STORE_REGISTRY_MAX entries, each
 * a path of at most STORE_REGISTERED_PATH_MAX bytes and a newline. */
#define STORE_REGISTRY_DIR        ".registered"
#define STORE_REGISTRY_MAX        1024U
#define STORE_REGISTERED_PATH_MAX 4095U

/* What Pull writes into a model it installed (download.h names it
 * DOWNLOAD_METADATA_FILE), read here for the commit; larger is not ours. */
#define STORE_PULL_METADATA_FILE  ".mpool-pull.json"
#define STORE_PULL_METADATA_MAX   (UINT64_C(4) * 1024 * 1024)

/* Where a model comes from, as Status says it. */
typedef enum ModelSource {
        MODEL_SOURCE_STORE,      /* a folder of ModelDir, copied there by hand */
        MODEL_SOURCE_HUB,        /* a folder of ModelDir that Pull installed (it has STORE_PULL_METADATA_FILE) */
        MODEL_SOURCE_LOCAL,      /* a directory elsewhere, registered */
        MODEL_SOURCE_HF_CACHE,   /* the Hugging Face cache */
        _MODEL_SOURCE_MAX,
} ModelSource;

/* "store", "hub", "local", "hf-cache". */
const char *model_source_to_string(ModelSource s);

/* A model's folder, to open files of it other than its weights
 * (config.json, tokenizer.json, sentence-transformers' files) as the
 * weights were opened: beneath the model's root (ModelDir, the models--*
 * folder of a cached model, a registered directory). */
typedef struct ModelFolder {
        int root_fd;             /* the root, or -1 */
        char *root;              /* its absolute path, for messages */
        char *subdir;            /* the model's folder relative to it: "org/name", "snapshots/REV", "." */
        char *directory;         /* its absolute path, for messages */
} ModelFolder;

#define MODEL_FOLDER_NULL ((ModelFolder) { .root_fd = -1 })

void model_folder_done(ModelFolder *f);
/* Hands *src over to *dst (which must be empty); *src is left empty. */
void model_folder_move(ModelFolder *dst, ModelFolder *src);

typedef struct ModelLocation {
        char *name;
        char *directory;         /* absolute; the snapshot directory for the HF cache */
        char **weight_paths;     /* absolute, sorted, no duplicates, NULL-terminated: where each
                                  * weights file is in the store, for messages */
        int *weight_fds;         /* one per path, opened beneath the store root (O_RDONLY,
                                  * O_CLOEXEC, O_NOCTTY, O_NONBLOCK), each a regular file; the
                                  * loader takes them (TAKE_FD) instead of opening the paths
                                  * again, which could reach another file */
        size_t n_weights;
        ModelSource source;
        char *revision;          /* the commit of a pulled or cached model; "" otherwise, never NULL */
        ModelFolder folder;      /* for the model's other files */
} ModelLocation;

/* Returns NULL. */
ModelLocation *model_location_free(ModelLocation *l);
static inline void model_location_freep(ModelLocation **l) {
        *l = model_location_free(*l);
}

/* Asked now and then while an index is read (about once per MiB of it, and
 * before each shard is opened); returning true stops the resolution, which
 * then returns -ECANCELED. Called on the resolving thread. */
typedef bool (*store_cancel_t)(void *userdata);

/* Finds the model's files. The name must already be valid
 * (model_name_validate()); either root may be NULL or missing (without
 * ModelDir there is no registry either). cancel (may
 * be NULL) and userdata: see above.
 * Returns 0 and a new ModelLocation in *ret, or
 *   -ENOENT     no root holds a model of that name, or the directory of a
 *               registered one is gone,
 *   -EBADMSG    the directory is there but is not a valid model (no weights
 *               file, malformed or oversized index, a shard missing or named
 *               with a path, a file or directory that leads out of its root,
 *               a damaged registration),
 *   -ECANCELED  cancel said so,
 *   another negative errno on I/O failure or lack of memory.
 * On failure, if ret_error is non-NULL it receives a message for people
 * saying what is wrong and where (NULL only if even that allocation
 * failed). */
int store_resolve_full(const char *model_dir, const char *hf_cache, const char *name, store_cancel_t cancel,
                       void *userdata, ModelLocation **ret, char **ret_error);

static inline int store_resolve(const char *model_dir, const char *hf_cache, const char *name, ModelLocation **ret,
                                char **ret_error) {
        return store_resolve_full(model_dir, hf_cache, name, NULL, NULL, ret, ret_error);
}

/* Opens the file at path in the model's folder (relative to it: plain
 * names separated by single slashes, none "." or "..") for reading,
 * beneath the model's root as its weights were opened: a symlink is
 * followed only when it is relative and stays beneath the root. Returns the
 * descriptor (O_RDONLY, O_CLOEXEC) with the file's size in *ret_size (may be
 * NULL), or
 *   -ENOENT   no such file (a dangling symlink too),
 *   -EFBIG    it is larger than max_size,
 *   -EBADMSG  it is not a regular file, or a symlink on its way leads out
 *             of the root,
 *   -EINVAL   path is not a relative path as above (a programming error
 *             or a file's doing: the caller decides),
 *   another negative errno when it cannot be opened.
 * Except for -ENOENT and -EFBIG, *ret_error (may be NULL) receives a
 * message naming the file by its place in the store. */
int store_open_model_file(const ModelFolder *folder, const char *path, uint64_t max_size, uint64_t *ret_size,
                          char **ret_error);

/* The same, reading the whole file: a malloc'd copy in *ret_text (one NUL
 * after its *ret_length bytes). For small files. */
int store_read_model_file(const ModelFolder *folder, const char *path, uint64_t max_size, char **ret_text,
                          size_t *ret_length, char **ret_error);

/* Reads the text of a model.safetensors.index.json (length bytes, need not
 * be NUL-terminated) as store_resolve() does: a JSON object whose
 * "weight_map" member, given once, is a non-empty object mapping tensor
 * names to the plain file names of at most STORE_SHARDS_MAX shards. Returns
 * 0 and the distinct shard names, sorted, in *ret_shards (NULL-terminated;
 * ret_shards may be NULL). On a violation returns -EBADMSG and, if
 * ret_error is non-NULL, a message without the file's path that says what
 * is wrong and where, quoting nothing of the text. -ECANCELED, -ENOMEM
 * otherwise. For tests and fuzzing: store_resolve() reads the file itself. */
int store_index_parse(const char *text, size_t length, store_cancel_t cancel, void *userdata, char ***ret_shards,
                      char **ret_error);

/* Lists the names of the models in the store: sorted, without duplicates,
 * NULL-terminated, at most STORE_LIST_MAX (a warning is logged about the
 * rest). Missing roots are not an error; entries that cannot be read are
 * logged and skipped, as are directories that are not models, directories
 * that lead out of their root, names starting with '.' and those that are
 * not valid model names. Lists only that models look present (by the names
 * of their files): a listed model can still fail store_resolve(). Every
 * registered name is listed, by its registry entry alone: one whose
 * directory is gone or damaged fails store_resolve() and so shows why. */
int store_list(const char *model_dir, const char *hf_cache, char ***ret_names);

/* Resolves the model whose root is the directory path (absolute, as
 * store_registered_path_is_valid() wants it), as a registered model is
 * resolved: path is opened without following any symlink, and nothing is
 * followed out of it. name only goes into the location and messages.
 * Errors as store_resolve_full(); -ENOENT when path does not exist,
 * -ENOTDIR when it is not a directory. */
int store_resolve_directory(const char *path, const char *name, store_cancel_t cancel, void *userdata,
                            ModelLocation **ret, char **ret_error);

/* Which place of the store holds the name, cheaply and by the rules of
 * store_list(): 1 and the source in *ret_source (STORE or HUB for a ModelDir
 * folder that holds model files), 0 when none does, negative errno when it
 * cannot be told. A cache folder counts whatever it holds. */
int store_locate(const char *model_dir, const char *hf_cache, const char *name, ModelSource *ret_source);

/* The registry entry's file name for a model name: "org/name" becomes
 * "org--name" ("--" is in no valid name). */
int store_registry_entry_name(const char *name, char **ret);
/* The inverse: 1 and the model name, or 0 when entry names no valid model
 * (hidden and temporary files included). */
int store_registry_model_name(const char *entry, char **ret);
/* What may be registered and read back: absolute, at most
 * STORE_REGISTERED_PATH_MAX bytes, no empty, "." or ".." component, no
 * trailing '/', valid UTF-8 without control characters (it goes into
 * messages sent over D-Bus). */
bool store_registered_path_is_valid(const char *path);
