/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json-scan.h"
#include "log.h"
#include "parse-util.h"
#include "resolve.h"
#include "store.h"

#define HF_REPO_PREFIX "models--"
#define HF_REF_FILE "refs/main"
/* refs/main holds one commit hash (40 hex digits for SHA-1, 64 for SHA-256)
 * and perhaps a newline; anything longer is not one. */
#define HF_REF_SIZE_MAX 128U

/* How much of a directory entry's name a log message quotes. */
#define QUOTE_MAX 64U

/* Reads of an index are split in chunks of this size, with a question to
 * the cancellation callback between two: a slow disk must not keep a
 * cancelled probe waiting for all of 64 MiB. */
#define READ_CHUNK_BYTES (UINT64_C(8) << 20)

/* openat2() answers EAGAIN when a rename elsewhere raced its check of a ".."
 * component: worth a few more tries, not an endless stream of them. */
#define OPEN_BENEATH_ATTEMPTS 16U

typedef enum Lookup {
        LOOKUP_ABSENT,          /* no directory of that name */
        LOOKUP_NOT_A_MODEL,     /* a directory, but without any weights file */
        LOOKUP_FOUND,
} Lookup;

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}
#define _cleanup_closedir_ _cleanup_(closedirp)

static bool isempty(const char *s) {
        return !s || !*s;
}

static bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}

static bool dot_or_dot_dot(const char *s) {
        return streq(s, ".") || streq(s, "..");
}

static const char *const model_source_table[_MODEL_SOURCE_MAX] = {
        [MODEL_SOURCE_STORE] = "store",
        [MODEL_SOURCE_HUB] = "hub",
        [MODEL_SOURCE_LOCAL] = "local",
        [MODEL_SOURCE_HF_CACHE] = "hf-cache",
};

const char *model_source_to_string(ModelSource s) {
        assert(s >= 0 && s < _MODEL_SOURCE_MAX);
        return model_source_table[s];
}

void model_folder_done(ModelFolder *f) {
        if (f->root_fd >= 0)
                close(f->root_fd);
        free(f->root);
        free(f->subdir);
        free(f->directory);
        *f = MODEL_FOLDER_NULL;
}

void model_folder_move(ModelFolder *dst, ModelFolder *src) {
        assert(dst->root_fd < 0 && !dst->root && !dst->subdir && !dst->directory);
        *dst = *src;
        *src = MODEL_FOLDER_NULL;
}

ModelLocation *model_location_free(ModelLocation *l) {
        if (!l)
                return NULL;

        free(l->name);
        free(l->directory);
        free(l->revision);
        strv_free(l->weight_paths);
        for (size_t i = 0; l->weight_fds && i < l->n_weights; i++)
                if (l->weight_fds[i] >= 0)
                        close(l->weight_fds[i]);
        free(l->weight_fds);
        model_folder_done(&l->folder);
        free(l);
        return NULL;
}

/* Stores a message in *ret_error (replacing any earlier one) if the caller
 * wants it, and returns error. "%m" names the error. */
_printf_(3, 4) static int set_error(char **ret_error, int error, const char *format, ...) {
        char *message;
        va_list ap;

        assert(error < 0);

        if (!ret_error)
                return error;

        errno = -error;
        va_start(ap, format);
        if (vasprintf(&message, format, ap) < 0)
                message = NULL;
        va_end(ap);

        free(*ret_error);
        *ret_error = message;
        return error;
}

/* Directory entries are not ours: their names may hold anything, while
 * messages travel over D-Bus, which insists on UTF-8. Keeps printable ASCII,
 * replaces the rest with '?' and cuts long strings. */
static const char *quote(const char *s, char buffer[static QUOTE_MAX + 4]) {
        size_t i;

        for (i = 0; s[i] && i < QUOTE_MAX; i++)
                buffer[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
        if (s[i]) {
                memcpy(buffer + i, "...", 3);
                i += 3;
        }
        buffer[i] = 0;
        return buffer;
}

static char *path_join(const char *a, const char *b) {
        size_t n = strlen(a);
        char *p;

        if (asprintf(&p, "%s%s%s", a, n > 0 && a[n - 1] == '/' ? "" : "/", b) < 0)
                return NULL;
        return p;
}

/* The paths the store hands out are absolute, so that they mean the same
 * thing to every thread and to messages read later. */
static int make_absolute(const char *path, char **ret) {
        _cleanup_free_ char *cwd = NULL;
        char *p;
        size_t n;

        if (path[0] == '/')
                p = strdup(path);
        else {
                cwd = get_current_dir_name();
                if (!cwd)
                        return negative_errno();
                p = path_join(cwd, path);
        }
        if (!p)
                return -ENOMEM;

        n = strlen(p);
        while (n > 1 && p[n - 1] == '/')
                p[--n] = 0;

        *ret = p;
        return 0;
}

/* openat2() with RESOLVE_* flags (magic links never followed). */
static int open_resolving(int dir_fd, const char *path, int flags, uint64_t resolve) {
        for (unsigned attempt = 1;; attempt++) {
                int fd = open_resolved(dir_fd, path, flags, resolve | RESOLVE_NO_MAGICLINKS);

                if (fd >= 0)
                        return fd;
                if ((fd == -EAGAIN || fd == -EINTR) && attempt < OPEN_BENEATH_ATTEMPTS)
                        continue;
                return fd;
        }
}

/* Opens path, relative to root_fd, without ever leaving root_fd: a symlink is
 * followed only when it is relative and stays beneath root_fd (-EXDEV
 * otherwise). */
static int open_beneath(int root_fd, const char *path, int flags) {
        return open_resolving(root_fd, path, flags, RESOLVE_BENEATH);
}

/* A root of the store, as the configuration names it: it may itself be a
 * symlink. -ENOENT when there is nothing, a dangling symlink or a
 * non-directory of that name. */
static int open_root(const char *path) {
        int fd;

        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOTDIR ? -ENOENT : -errno;
        return fd;
}

/* A directory below a root, opened beneath it. -ENOENT as for open_root(). */
static int open_directory_beneath(int root_fd, const char *path) {
        int fd;

        fd = open_beneath(root_fd, path, O_RDONLY | O_DIRECTORY);
        return fd == -ENOTDIR ? -ENOENT : fd;
}

/* The message for a failure of open_beneath() on directory/filename (filename
 * NULL for the directory itself) below root. Says where the file is in the
 * store, never where a symlink points: that is outside, and none of the
 * callers' business. */
static int set_open_error(char **ret_error, int error, const char *directory, const char *filename,
                          const char *root) {
        const char *slash = filename ? "/" : "";

        filename = strempty(filename);
        switch (error) {
        case -EXDEV:
                return set_error(ret_error, -EBADMSG,
                                 "%s%s%s: a symlink on the way is absolute or leads out of %s; only relative "
                                 "symlinks that stay inside it are followed.", directory, slash, filename, root);
        case -ELOOP:
                return set_error(ret_error, -EBADMSG, "%s%s%s: too many levels of symlinks.", directory, slash,
                                 filename);
        default:
                return set_error(ret_error, error, "Cannot open %s%s%s: %m", directory, slash, filename);
        }
}

static bool is_open_beneath_error(int error) {
        return error == -EXDEV || error == -ELOOP;
}

/* Opens a regular file of at most max_size bytes below root_fd for reading,
 * and says its size. -EFBIG if it is larger, -EBADFD if it is not a regular
 * file, open_beneath()'s errors if it cannot be opened. */
static int open_regular_beneath(int root_fd, const char *path, uint64_t max_size, size_t *ret_size) {
        _cleanup_close_ int fd = -1;
        struct stat st;

        /* O_NONBLOCK so that a FIFO planted in the store cannot hang us before
         * fstat() says what it is. */
        fd = open_beneath(root_fd, path, O_RDONLY | O_NONBLOCK);
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if ((uint64_t) st.st_size > max_size)
                return -EFBIG;

        *ret_size = (size_t) st.st_size;
        return TAKE_FD(fd);
}

/* Reads up to n bytes into buffer, in chunks between which cancel (may be
 * NULL) is asked. Says in *ret_done how many bytes were read: fewer than n
 * only when the file ended first (a file that grows meanwhile is read only
 * up to the size checked, one that shrinks up to its end). */
static int read_full(int fd, void *buffer, size_t n, store_cancel_t cancel, void *userdata, size_t *ret_done) {
        size_t done = 0;

        while (done < n) {
                ssize_t k;

                if (cancel && cancel(userdata))
                        return -ECANCELED;
                k = read(fd, (uint8_t *) buffer + done, MIN(n - done, (size_t) READ_CHUNK_BYTES));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (k == 0)
                        break;
                done += (size_t) k;
        }

        *ret_done = done;
        return 0;
}

/* Reads a whole regular file of at most max_size bytes below root_fd,
 * NUL-terminated; for small files. Errors as open_regular_beneath(). */
static int read_file_beneath(int root_fd, const char *path, uint64_t max_size, char **ret_contents,
                             size_t *ret_size) {
        _cleanup_free_ char *contents = NULL;
        _cleanup_close_ int fd = -1;
        size_t expected, size = 0;
        int r;

        fd = open_regular_beneath(root_fd, path, max_size, &expected);
        if (fd < 0)
                return fd;

        contents = malloc(expected + 1);
        if (!contents)
                return -ENOMEM;
        r = read_full(fd, contents, expected, NULL, NULL, &size);
        if (r < 0)
                return r;
        contents[size] = 0;

        *ret_contents = TAKE_PTR(contents);
        if (ret_size)
                *ret_size = size;
        return 0;
}

/* Records where the model's other files are: takes root_fd. */
static int folder_set(ModelFolder *f, int *root_fd, const char *root, const char *subdir, const char *directory) {
        char *r = strdup(root), *s = strdup(subdir), *d = strdup(directory);

        if (!r || !s || !d) {
                free(r);
                free(s);
                free(d);
                return -ENOMEM;
        }
        model_folder_done(f);
        *f = (ModelFolder) { .root_fd = TAKE_FD(*root_fd), .root = r, .subdir = s, .directory = d };
        return 0;
}

/* A path inside a model's folder, as the callers name files there: plain
 * names separated by single slashes, none "." or "..". */
static bool model_file_path_is_valid(const char *path) {
        size_t n = strlen(path), segment = 0;

        if (n == 0 || n >= PATH_MAX)
                return false;
        for (size_t i = 0; i <= n; i++) {
                if (path[i] != '/' && path[i] != 0) {
                        segment++;
                        continue;
                }
                if (segment == 0 || (segment == 1 && path[i - 1] == '.') ||
                    (segment == 2 && path[i - 1] == '.' && path[i - 2] == '.'))
                        return false;
                segment = 0;
        }
        return true;
}

int store_open_model_file(const ModelFolder *folder, const char *path, uint64_t max_size, uint64_t *ret_size,
                          char **ret_error) {
        _cleanup_free_ char *relative = NULL;
        size_t size = 0;
        int fd;

        assert(folder);
        assert(path);

        if (folder->root_fd < 0 || !folder->root || !folder->subdir || !folder->directory)
                return set_error(ret_error, -EBADF, "The model's folder is not known.");
        if (!model_file_path_is_valid(path))
                return set_error(ret_error, -EINVAL, "%s: a file of the model must be named by a relative path "
                                 "without \".\" or \"..\".", folder->directory);

        relative = path_join(folder->subdir, path);
        if (!relative)
                return -ENOMEM;
        fd = open_regular_beneath(folder->root_fd, relative, max_size, &size);
        if (fd == -ENOENT || fd == -EFBIG)
                return fd;
        if (fd == -EBADFD)
                return set_error(ret_error, -EBADMSG, "%s/%s is not a regular file.", folder->directory, path);
        if (fd == -ENOTDIR)   /* a file where a folder on the way should be: nothing of that name */
                return -ENOENT;
        if (fd < 0)
                return set_open_error(ret_error, fd, folder->directory, path, folder->root);

        if (ret_size)
                *ret_size = size;
        return fd;
}

int store_read_model_file(const ModelFolder *folder, const char *path, uint64_t max_size, char **ret_text,
                          size_t *ret_length, char **ret_error) {
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -1;
        uint64_t size = 0;
        size_t done = 0;
        int r;

        assert(ret_text);

        fd = store_open_model_file(folder, path, max_size, &size, ret_error);
        if (fd < 0)
                return fd;
        text = malloc(size + 1);
        if (!text)
                return -ENOMEM;
        r = read_full(fd, text, size, NULL, NULL, &done);
        if (r < 0)
                return set_error(ret_error, r, "Cannot read %s/%s: %m", folder->directory, path);
        text[done] = 0;

        *ret_text = TAKE_PTR(text);
        if (ret_length)
                *ret_length = done;
        return 0;
}

/* Where a model's files are looked up. Every path is resolved beneath
 * root_fd: ModelDir, or the models--* folder of a cached model. */
typedef struct Place {
        int root_fd;
        const char *root;        /* absolute, for messages */
        const char *subdir;      /* the model's directory, relative to root_fd */
        int dir_fd;              /* that directory, opened beneath root_fd */
        const char *directory;   /* its absolute path, for messages */
        store_cancel_t cancel;   /* may be NULL */
        void *userdata;
} Place;

/* The weights files found: where each is in the store, and open. */
typedef struct Weights {
        char **paths;            /* NULL-terminated */
        int *fds;
        size_t n;
} Weights;

static void weights_done(Weights *w) {
        strv_free(w->paths);
        for (size_t i = 0; w->fds && i < w->n; i++)
                if (w->fds[i] >= 0)
                        close(w->fds[i]);
        free(w->fds);
        *w = (Weights) {};
}

static int weights_allocate(Weights *w, size_t n) {
        assert(!w->paths && !w->fds);

        w->paths = calloc(n + 1, sizeof *w->paths);
        w->fds = malloc(n * sizeof *w->fds);
        if (!w->paths || !w->fds)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                w->fds[i] = -1;
        w->n = n;
        return 0;
}

/* Opens one weights file of the model and records it as the i-th. */
static int weights_open(Weights *w, size_t i, const Place *p, const char *filename, char **ret_error) {
        _cleanup_free_ char *relative = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;

        assert(i < w->n);

        relative = path_join(p->subdir, filename);
        w->paths[i] = path_join(p->directory, filename);
        if (!relative || !w->paths[i])
                return -ENOMEM;

        /* O_NONBLOCK: a FIFO in the store must not hang us in open() before
         * fstat() says what it is. */
        fd = open_beneath(p->root_fd, relative, O_RDONLY | O_NONBLOCK);
        if (fd == -ENOENT) {
                /* Nothing there, or a symlink to nothing: say which. */
                if (fstatat(p->dir_fd, filename, &st, AT_SYMLINK_NOFOLLOW) >= 0 && S_ISLNK(st.st_mode))
                        return set_error(ret_error, -EBADMSG, "%s is a dangling symlink.", w->paths[i]);
                return set_error(ret_error, -EBADMSG, "%s is missing.", w->paths[i]);
        }
        if (fd < 0)
                return set_open_error(ret_error, fd, p->directory, filename, p->root);
        if (fstat(fd, &st) < 0)
                return set_error(ret_error, -errno, "Cannot access %s: %m", w->paths[i]);
        if (!S_ISREG(st.st_mode))
                return set_error(ret_error, -EBADMSG, "%s is not a regular file.", w->paths[i]);

        w->fds[i] = TAKE_FD(fd);
        return 0;
}

/* Shard names come from a file in the store and are joined to the model's
 * directory: only plain file names in printable ASCII, so that an index
 * cannot point outside its directory nor smuggle bytes into messages. */
static bool shard_name_is_valid(const char *s) {
        size_t n = strlen(s);

        if (n == 0 || n > NAME_MAX || dot_or_dot_dot(s))
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] < 0x20 || s[i] >= 0x7f || s[i] == '/')
                        return false;
        return true;
}

static int compare_string_pointers(const void *a, const void *b) {
        return strcmp(*(const char * const *) a, *(const char * const *) b);
}

/* ---- the index ---- */

/* The distinct shard names of an index, kept as they are read: sorted, each
 * once. Mapped, not malloc'd, as the index's text is (see JsonBuffer). */
typedef struct ShardSet {
        JsonBuffer names;       /* NUL-terminated names, one after the other */
        size_t names_used;
        JsonBuffer sorted;      /* uint32_t offsets into names, in the order of the names */
        size_t n;
        size_t last;            /* offset of the name found or added last, for runs of one shard */
        bool full;              /* a name beyond STORE_SHARDS_MAX was not kept */
} ShardSet;

static void shard_set_done(ShardSet *s) {
        json_buffer_free(&s->names);
        json_buffer_free(&s->sorted);
}

static const char *shard_set_name(const ShardSet *s, size_t i) {
        assert(i < s->n);
        return (const char *) s->names.data + ((const uint32_t *) s->sorted.data)[i];
}

/* Makes room for size bytes, doubling from a page. */
static int buffer_reserve(JsonBuffer *b, size_t size) {
        if (size <= b->size)
                return 0;
        return json_buffer_resize(b, MAX(size, MAX(b->size * 2, (size_t) 4096)));
}

static int shard_set_add(ShardSet *s, const char *name) {
        size_t length = strlen(name), low = 0, high = s->n;
        uint32_t *sorted;
        int r;

        /* Indexes list tensors by name, and a shard's tensors mostly come
         * one after the other. */
        if (s->n > 0 && streq((const char *) s->names.data + s->last, name))
                return 0;

        while (low < high) {
                size_t middle = low + (high - low) / 2;
                int c = strcmp(name, shard_set_name(s, middle));

                if (c == 0) {
                        s->last = ((const uint32_t *) s->sorted.data)[middle];
                        return 0;
                }
                if (c < 0)
                        high = middle;
                else
                        low = middle + 1;
        }

        if (s->n >= STORE_SHARDS_MAX) {
                s->full = true;
                return 0;
        }

        /* At most STORE_SHARDS_MAX names of at most NAME_MAX bytes: offsets
         * fit in 32 bits. */
        r = buffer_reserve(&s->names, s->names_used + length + 1);
        if (r < 0)
                return r;
        r = buffer_reserve(&s->sorted, (s->n + 1) * sizeof(uint32_t));
        if (r < 0)
                return r;

        memcpy((char *) s->names.data + s->names_used, name, length + 1);
        sorted = s->sorted.data;
        memmove(sorted + low + 1, sorted + low, (s->n - low) * sizeof *sorted);
        sorted[low] = (uint32_t) s->names_used;
        s->last = s->names_used;
        s->names_used += length + 1;
        s->n++;
        return 0;
}

/* An index read in place: the shards its weight_map names, and the first
 * thing wrong with it. */
typedef struct IndexReader {
        JsonScan json;
        ShardSet shards;
        unsigned n_weight_maps; /* members of that name, whatever their value */
        bool have_weight_map;   /* the first of them, as an object */
        size_t n_entries;       /* in its object */
        size_t bad_entry;       /* the first entry that names no plain file, from 1; 0 if none */
        JsonKind bad_entry_kind;
} IndexReader;

static void index_reader_done(IndexReader *x) {
        shard_set_done(&x->shards);
}

/* weight_map's object, json.pos at it. */
static int index_read_weight_map(IndexReader *x) {
        size_t n = 0;
        int r;

        r = json_enter(&x->json);
        while (r >= 0 && (r = json_object_next(&x->json, &n, NULL)) > 0) {
                char name[NAME_MAX + 1];
                JsonString value;
                JsonKind kind;

                /* The tensor's name, the key, is not needed: nothing is kept
                 * per tensor. */
                r = json_read_value(&x->json, &kind, NULL, &value);
                if (r < 0 || x->bad_entry > 0)
                        continue;

                if (kind != JSON_STRING) {
                        x->bad_entry = n;
                        x->bad_entry_kind = kind;
                        continue;
                }
                if (json_string_decode(&x->json, &value, name, sizeof name) >= sizeof name ||
                    !shard_name_is_valid(name)) {
                        x->bad_entry = n;
                        x->bad_entry_kind = JSON_STRING;
                        continue;
                }
                r = shard_set_add(&x->shards, name);
        }
        x->n_entries = n;
        return r;
}

/* Reads the whole text, keeping only weight_map's distinct shards. Members
 * other than weight_map (metadata, and anything else) are read past,
 * keeping nothing of them. */
static int index_read(IndexReader *x) {
        JsonString key;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(&x->json);
        if (r < 0)
                return r;

        if (json_peek(&x->json) != '{')
                r = json_read_value(&x->json, NULL, NULL, NULL);
        else {
                r = json_enter(&x->json);
                while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                        bool first_weight_map = json_string_equal(&x->json, &key, "weight_map") &&
                                x->n_weight_maps++ == 0;

                        if (first_weight_map && json_peek(&x->json) == '{') {
                                x->have_weight_map = true;
                                r = index_read_weight_map(x);
                        } else
                                r = json_read_value(&x->json, NULL, NULL, NULL);
                }
        }
        if (r < 0)
                return r;

        r = json_skip_whitespace(&x->json);
        if (r < 0)
                return r;
        if (x->json.pos < x->json.length)
                return json_syntax_error_at(&x->json, x->json.pos, "more than whitespace after the JSON value");
        return 0;
}

/* The room a message about an index takes, without the index's path: it
 * quotes nothing of the file, so its length is known. */
#define INDEX_DETAIL_MAX 256U

/* Reads the index as index_read() does and judges it: 0 when it is valid,
 * -EBADMSG with what is wrong in detail, -ECANCELED, or -ENOMEM. */
static int index_parse(IndexReader *x, char detail[static INDEX_DETAIL_MAX]) {
        int r;

        r = index_read(x);
        if (r == -EBADMSG) {
                snprintf(detail, INDEX_DETAIL_MAX, "not valid JSON: %s at byte %zu", x->json.syntax_error,
                         x->json.syntax_error_at);
                return r;
        }
        if (r < 0)
                return r;

        if (x->n_weight_maps > 1)
                /* Readers differ on which one counts. */
                snprintf(detail, INDEX_DETAIL_MAX, "\"weight_map\" appears more than once");
        else if (!x->have_weight_map)
                snprintf(detail, INDEX_DETAIL_MAX, "no \"weight_map\" object");
        else if (x->bad_entry > 0 && x->bad_entry_kind != JSON_STRING)
                snprintf(detail, INDEX_DETAIL_MAX, "entry %zu of \"weight_map\" is %s, not a file name",
                         x->bad_entry, json_kind_to_string(x->bad_entry_kind));
        else if (x->bad_entry > 0)
                snprintf(detail, INDEX_DETAIL_MAX,
                         "the shard of entry %zu of \"weight_map\" is not a plain file name", x->bad_entry);
        else if (x->n_entries == 0)
                snprintf(detail, INDEX_DETAIL_MAX, "\"weight_map\" names no tensors");
        else if (x->shards.full)
                snprintf(detail, INDEX_DETAIL_MAX, "\"weight_map\" names more than %u shards, the most allowed",
                         STORE_SHARDS_MAX);
        else
                return 0;
        return -EBADMSG;
}

static IndexReader index_reader(const void *text, size_t length, store_cancel_t cancel, void *userdata) {
        return (IndexReader) {
                .json = {
                        .text = text,
                        .length = length,
                        .cancel = cancel,
                        .userdata = userdata,
                        .end_of_text = "the end of the file where a value must be",
                },
        };
}

int store_index_parse(const char *text, size_t length, store_cancel_t cancel, void *userdata, char ***ret_shards,
                      char **ret_error) {
        _cleanup_(index_reader_done) IndexReader x = index_reader(text, length, cancel, userdata);
        _cleanup_strv_free_ char **shards = NULL;
        char detail[INDEX_DETAIL_MAX];
        int r;

        assert(text || length == 0);

        r = index_parse(&x, detail);
        if (r == -EBADMSG && ret_error) {
                *ret_error = strdup(detail);
                if (!*ret_error)
                        return -ENOMEM;
        }
        if (r < 0)
                return r;

        shards = calloc(x.shards.n + 1, sizeof *shards);
        if (!shards)
                return -ENOMEM;
        for (size_t i = 0; i < x.shards.n; i++) {
                shards[i] = strdup(shard_set_name(&x.shards, i));
                if (!shards[i])
                        return -ENOMEM;
        }

        if (ret_shards)
                *ret_shards = TAKE_PTR(shards);
        return 0;
}

/* Reads the index into memory of its own, asking cancel as it goes. */
static int read_index_text(const Place *p, JsonBuffer *ret_text, size_t *ret_length, char **ret_error) {
        _cleanup_(json_buffer_free) JsonBuffer text = {};
        _cleanup_free_ char *index = NULL;
        _cleanup_close_ int fd = -1;
        size_t size, length;
        int r;

        index = path_join(p->subdir, STORE_INDEX_FILE);
        if (!index)
                return -ENOMEM;

        fd = open_regular_beneath(p->root_fd, index, STORE_INDEX_SIZE_MAX, &size);
        if (fd == -EFBIG)
                return set_error(ret_error, -EBADMSG, "%s/%s is larger than %" PRIu64 " MiB.", p->directory,
                                 STORE_INDEX_FILE, STORE_INDEX_SIZE_MAX / (1024 * 1024));
        if (fd == -EBADFD)
                return set_error(ret_error, -EBADMSG, "%s/%s is not a regular file.", p->directory,
                                 STORE_INDEX_FILE);
        if (fd == -ENOENT)
                return set_error(ret_error, -EBADMSG, "%s/%s is a dangling symlink.", p->directory,
                                 STORE_INDEX_FILE);
        if (is_open_beneath_error(fd))
                return set_open_error(ret_error, fd, p->directory, STORE_INDEX_FILE, p->root);
        if (fd < 0)
                return set_error(ret_error, fd, "Cannot read %s/%s: %m", p->directory, STORE_INDEX_FILE);

        if (json_buffer_resize(&text, MAX(size, (size_t) 1)) < 0)
                return -ENOMEM;
        r = read_full(fd, text.data, size, p->cancel, p->userdata, &length);
        if (r == -ECANCELED)
                return set_error(ret_error, r, "Reading %s/%s was cancelled.", p->directory, STORE_INDEX_FILE);
        if (r < 0)
                return set_error(ret_error, r, "Cannot read %s/%s: %m", p->directory, STORE_INDEX_FILE);

        *ret_text = text;
        text = (JsonBuffer) {};
        *ret_length = length;
        return 0;
}

/* Reads the index's weight_map and opens the shards it names: sorted, each
 * once. Messages point into the index by position, never by quoting it: its
 * strings are what the file holds, and only a shard name that passed as a
 * plain file name (so names a file beside the index) is repeated. */
static int read_index_shards(const Place *p, Weights *w, char **ret_error) {
        _cleanup_(index_reader_done) IndexReader x = {};
        _cleanup_(json_buffer_free) JsonBuffer text = {};
        char detail[INDEX_DETAIL_MAX];
        size_t length = 0;
        int r;

        r = read_index_text(p, &text, &length, ret_error);
        if (r < 0)
                return r;

        x = index_reader(text.data, length, p->cancel, p->userdata);
        r = index_parse(&x, detail);
        if (r == -EBADMSG)
                return set_error(ret_error, r, "%s/%s: %s.", p->directory, STORE_INDEX_FILE, detail);
        if (r == -ECANCELED)
                return set_error(ret_error, r, "Reading %s/%s was cancelled.", p->directory, STORE_INDEX_FILE);
        if (r < 0)
                return r;
        /* Only the shards' names are needed from here on. */
        json_buffer_free(&text);

        r = weights_allocate(w, x.shards.n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < x.shards.n; i++) {
                if (p->cancel && p->cancel(p->userdata))
                        return set_error(ret_error, -ECANCELED, "Opening the shards named by %s/%s was cancelled.",
                                         p->directory, STORE_INDEX_FILE);
                r = weights_open(w, i, p, shard_set_name(&x.shards, i), ret_error);
                if (r < 0)
                        return r;
        }

        return 0;
}

/* 1 if something of that name is in the directory (of any kind, a dangling
 * symlink too, so that it is reported rather than taken for absence), 0 if
 * not, negative errno if that cannot be told. Follows nothing. */
static int name_exists(int dir_fd, const char *filename) {
        struct stat st;

        if (fstatat(dir_fd, filename, &st, AT_SYMLINK_NOFOLLOW) >= 0)
                return 1;
        return errno == ENOENT ? 0 : -errno;
}

/* Returns 1 if dir_fd holds a weights file or an index, 0 if it holds
 * neither. Cheap: looks at names only, for listing. */
static int has_model_files(int dir_fd) {
        int r;

        r = name_exists(dir_fd, STORE_SINGLE_WEIGHTS_FILE);
        if (r != 0)
                return r;
        return name_exists(dir_fd, STORE_INDEX_FILE);
}

/* Returns LOOKUP_FOUND with the weights open, LOOKUP_NOT_A_MODEL if the
 * directory has no weights file at all, or a negative errno. A single file
 * wins over an index, as in the transformers library. */
static int find_weights(const Place *p, Weights *w, char **ret_error) {
        int r;

        r = name_exists(p->dir_fd, STORE_SINGLE_WEIGHTS_FILE);
        if (r < 0)
                return set_error(ret_error, r, "Cannot access %s/%s: %m", p->directory,
                                 STORE_SINGLE_WEIGHTS_FILE);
        if (r > 0) {
                r = weights_allocate(w, 1);
                if (r < 0)
                        return r;
                r = weights_open(w, 0, p, STORE_SINGLE_WEIGHTS_FILE, ret_error);
                if (r < 0)
                        return r;
                return LOOKUP_FOUND;
        }

        r = name_exists(p->dir_fd, STORE_INDEX_FILE);
        if (r < 0)
                return set_error(ret_error, r, "Cannot access %s/%s: %m", p->directory, STORE_INDEX_FILE);
        if (r == 0)
                return LOOKUP_NOT_A_MODEL;

        r = read_index_shards(p, w, ret_error);
        if (r < 0)
                return r;
        return LOOKUP_FOUND;
}

static bool is_commit_hash(const char *s) {
        size_t n = strlen(s);

        if (n != 40 && n != 64)
                return false;
        return strspn(s, "0123456789abcdefABCDEF") == n;
}

/* ---- what Pull left in a model ---- */

/* The top-level "commit" member of the metadata text, if it is a commit
 * hash; NULL otherwise (also when the text is not JSON). */
static char *pull_metadata_commit(const void *text, size_t length) {
        JsonScan json = { .text = text, .length = length };
        char commit[HF_REF_SIZE_MAX + 1] = "";
        JsonString key, value;
        JsonKind kind;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(&json);
        if (r < 0 || json_peek(&json) != '{')
                return NULL;
        r = json_enter(&json);
        while (r >= 0 && (r = json_object_next(&json, &n, &key)) > 0) {
                bool wanted = json_string_equal(&json, &key, "commit");

                r = json_read_value(&json, &kind, NULL, &value);
                if (r < 0)
                        return NULL;
                if (!wanted || kind != JSON_STRING)
                        continue;
                if (json_string_decode(&json, &value, commit, sizeof commit) >= sizeof commit)
                        commit[0] = 0;
        }
        if (r < 0 || !is_commit_hash(commit))
                return NULL;
        return strdup(commit);
}

/* A ModelDir model with the metadata file was installed by Pull. Returns
 * MODEL_SOURCE_HUB with its commit (or "") in *ret_revision, or
 * MODEL_SOURCE_STORE with "". Only -ENOMEM fails: a file that cannot be
 * read leaves the commit unknown, nothing more. */
static int read_source(int root_fd, const char *subdir, ModelSource *ret_source, char **ret_revision) {
        _cleanup_(json_buffer_free) JsonBuffer text = {};
        _cleanup_free_ char *relative = NULL, *commit = NULL;
        _cleanup_close_ int fd = -1;
        size_t size = 0, length = 0;
        ModelSource source = MODEL_SOURCE_HUB;

        relative = path_join(subdir, STORE_PULL_METADATA_FILE);
        if (!relative)
                return -ENOMEM;

        fd = open_regular_beneath(root_fd, relative, STORE_PULL_METADATA_MAX, &size);
        if (fd == -ENOENT)
                source = MODEL_SOURCE_STORE;
        else if (fd < 0)
                log_debug_errno(fd, "Cannot open %s of model %s, its commit is not known: %m",
                                STORE_PULL_METADATA_FILE, subdir);
        else if (size > 0) {
                if (json_buffer_resize(&text, size) < 0)
                        return -ENOMEM;
                if (read_full(fd, text.data, size, NULL, NULL, &length) >= 0) {
                        commit = pull_metadata_commit(text.data, length);
                        if (!commit)
                                log_debug("%s of model %s names no commit.", STORE_PULL_METADATA_FILE, subdir);
                }
        }

        if (!commit) {
                commit = strdup("");
                if (!commit)
                        return -ENOMEM;
        }
        *ret_source = source;
        *ret_revision = TAKE_PTR(commit);
        return 0;
}

static int lookup_in_model_dir(const char *root, const char *name, store_cancel_t cancel, void *userdata,
                               char **ret_directory, Weights *w, ModelSource *ret_source, char **ret_revision,
                               ModelFolder *ret_folder, char **ret_error) {
        _cleanup_close_ int root_fd = -1, dir_fd = -1;
        _cleanup_free_ char *directory = NULL;
        int r;

        root_fd = open_root(root);
        if (root_fd == -ENOENT)
                return LOOKUP_ABSENT;
        if (root_fd < 0)
                return set_error(ret_error, root_fd, "Cannot open the model directory %s: %m", root);

        directory = path_join(root, name);
        if (!directory)
                return -ENOMEM;

        dir_fd = open_directory_beneath(root_fd, name);
        if (dir_fd == -ENOENT)
                return LOOKUP_ABSENT;
        if (dir_fd < 0)
                return set_open_error(ret_error, dir_fd, directory, NULL, root);

        r = find_weights(&(const Place) {
                        .root_fd = root_fd,
                        .root = root,
                        .subdir = name,
                        .dir_fd = dir_fd,
                        .directory = directory,
                        .cancel = cancel,
                        .userdata = userdata,
                }, w, ret_error);
        if (r != LOOKUP_FOUND)
                return r;
        r = read_source(root_fd, name, ret_source, ret_revision);
        if (r < 0)
                return r;
        r = folder_set(ret_folder, &root_fd, root, name, directory);
        if (r < 0)
                return r;

        *ret_directory = TAKE_PTR(directory);
        return LOOKUP_FOUND;
}

/* "org/name" → "models--org--name", "name" → "models--name". Returns 0
 * when the name cannot have come from such a directory name (a segment that
 * holds "--" or ends in '-', which Hugging Face does not allow either), so
 * that the mapping stays one to one. */
static int hf_repo_directory_name(const char *name, char **ret) {
        const char *slash = strchr(name, '/');
        size_t n = strlen(name);
        char *p;
        int r;

        if (n == 0 || strstr(name, "--") || name[n - 1] == '-' ||
            (slash && slash > name && slash[-1] == '-'))
                return 0;

        if (slash)
                r = asprintf(&p, HF_REPO_PREFIX "%.*s--%s", (int) (slash - name), name, slash + 1);
        else
                r = asprintf(&p, HF_REPO_PREFIX "%s", name);
        if (r < 0)
                return -ENOMEM;

        *ret = p;
        return 1;
}

/* The inverse of hf_repo_directory_name(): 0 if the directory is not one of
 * a model we could name. */
static int hf_model_name(const char *directory_name, char **ret) {
        _cleanup_free_ char *name = NULL, *roundtrip = NULL;
        const char *rest, *separator;
        int r;

        if (strncmp(directory_name, HF_REPO_PREFIX, strlen(HF_REPO_PREFIX)) != 0)
                return 0;
        rest = directory_name + strlen(HF_REPO_PREFIX);
        if (isempty(rest))
                return 0;

        separator = strstr(rest, "--");
        if (separator)
                r = asprintf(&name, "%.*s/%s", (int) (separator - rest), rest, separator + 2);
        else
                r = asprintf(&name, "%s", rest);
        if (r < 0)
                return -ENOMEM;

        r = hf_repo_directory_name(name, &roundtrip);
        if (r <= 0)
                return r;
        if (!streq(roundtrip, directory_name))
                return 0;

        *ret = TAKE_PTR(name);
        return 1;
}

/* Opens the snapshot refs/main points to in a models--* directory, beneath
 * it. Returns the snapshot's path relative to the repo in *ret_relative and
 * its absolute path in *ret_path (each if wanted). -EBADMSG (with a message)
 * when the layout is broken. */
static int hf_open_snapshot(int repo_fd, const char *repo_path, int *ret_fd, char **ret_relative,
                            char **ret_path, char **ret_error) {
        _cleanup_free_ char *ref = NULL, *snapshot = NULL, *path = NULL;
        _cleanup_close_ int fd = -1;
        size_t n = 0;
        int r;

        r = read_file_beneath(repo_fd, HF_REF_FILE, HF_REF_SIZE_MAX, &ref, &n);
        if (r == -ENOENT)
                return set_error(ret_error, -EBADMSG, "%s has no " HF_REF_FILE ".", repo_path);
        if (r == -EFBIG || r == -EBADFD)
                return set_error(ret_error, -EBADMSG, "%s/" HF_REF_FILE " does not hold a commit hash.",
                                 repo_path);
        if (is_open_beneath_error(r))
                return set_open_error(ret_error, r, repo_path, HF_REF_FILE, repo_path);
        if (r < 0)
                return set_error(ret_error, r, "Cannot read %s/" HF_REF_FILE ": %m", repo_path);

        while (n > 0 && strchr(" \t\r\n", ref[n - 1]))
                ref[--n] = 0;
        if (!is_commit_hash(ref))
                return set_error(ret_error, -EBADMSG, "%s/" HF_REF_FILE " does not hold a commit hash.",
                                 repo_path);

        if (asprintf(&snapshot, "snapshots/%s", ref) < 0)
                return -ENOMEM;
        path = path_join(repo_path, snapshot);
        if (!path)
                return -ENOMEM;

        fd = open_directory_beneath(repo_fd, snapshot);
        if (fd == -ENOENT)
                return set_error(ret_error, -EBADMSG, "%s, named by " HF_REF_FILE ", is missing.", path);
        if (fd < 0)
                return set_open_error(ret_error, fd, path, NULL, repo_path);

        *ret_fd = TAKE_FD(fd);
        if (ret_relative)
                *ret_relative = TAKE_PTR(snapshot);
        if (ret_path)
                *ret_path = TAKE_PTR(path);
        return 0;
}

static int lookup_in_hf_cache(const char *root, const char *name, store_cancel_t cancel, void *userdata,
                              char **ret_directory, Weights *w, char **ret_revision, ModelFolder *ret_folder,
                              char **ret_error) {
        _cleanup_close_ int root_fd = -1, repo_fd = -1, snapshot_fd = -1;
        _cleanup_free_ char *repo = NULL, *repo_path = NULL, *snapshot = NULL, *snapshot_path = NULL;
        int r;

        r = hf_repo_directory_name(name, &repo);
        if (r <= 0)
                return r < 0 ? r : LOOKUP_ABSENT;

        root_fd = open_root(root);
        if (root_fd == -ENOENT)
                return LOOKUP_ABSENT;
        if (root_fd < 0)
                return set_error(ret_error, root_fd, "Cannot open the Hugging Face cache %s: %m", root);

        repo_path = path_join(root, repo);
        if (!repo_path)
                return -ENOMEM;

        repo_fd = open_directory_beneath(root_fd, repo);
        if (repo_fd == -ENOENT)
                return LOOKUP_ABSENT;
        if (repo_fd < 0)
                return set_open_error(ret_error, repo_fd, repo_path, NULL, root);

        r = hf_open_snapshot(repo_fd, repo_path, &snapshot_fd, &snapshot, &snapshot_path, ret_error);
        if (r < 0)
                return r;

        /* The repo folder is the root: the snapshot's files are symlinks into
         * its blobs/. */
        r = find_weights(&(const Place) {
                        .root_fd = repo_fd,
                        .root = repo_path,
                        .subdir = snapshot,
                        .dir_fd = snapshot_fd,
                        .directory = snapshot_path,
                        .cancel = cancel,
                        .userdata = userdata,
                }, w, ret_error);
        if (r < 0)
                return r;
        if (r == LOOKUP_NOT_A_MODEL)
                return set_error(ret_error, -EBADMSG, "%s has neither %s nor %s.", snapshot_path,
                                 STORE_SINGLE_WEIGHTS_FILE, STORE_INDEX_FILE);

        /* Its other files are symlinks into blobs/ as well. */
        r = folder_set(ret_folder, &repo_fd, repo_path, snapshot, snapshot_path);
        if (r < 0)
                return r;

        /* "snapshots/REV": the commit refs/main names. */
        *ret_revision = strdup(strchr(snapshot, '/') + 1);
        if (!*ret_revision)
                return -ENOMEM;
        *ret_directory = TAKE_PTR(snapshot_path);
        return LOOKUP_FOUND;
}

/* Takes directory, the weights and the revision (NULL: "") on success. */
static int build_location(const char *name, char **directory, Weights *w, ModelSource source, char **revision,
                          ModelFolder *folder, ModelLocation **ret) {
        _cleanup_free_ char *copy = NULL;
        ModelLocation *l;

        copy = strdup(name);
        if (!copy)
                return -ENOMEM;
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        l->revision = revision && *revision ? TAKE_PTR(*revision) : strdup("");
        if (!l->revision) {
                free(l);
                return -ENOMEM;
        }
        l->name = TAKE_PTR(copy);
        l->directory = TAKE_PTR(*directory);
        l->weight_paths = TAKE_PTR(w->paths);
        l->weight_fds = TAKE_PTR(w->fds);
        l->n_weights = w->n;
        l->source = source;
        w->n = 0;
        l->folder = MODEL_FOLDER_NULL;
        model_folder_move(&l->folder, folder);

        *ret = l;
        return 0;
}

/* ---- registered models ---- */

int store_registry_entry_name(const char *name, char **ret) {
        const char *slash = strchr(name, '/');
        char *p;
        int r;

        if (slash)
                r = asprintf(&p, "%.*s--%s", (int) (slash - name), name, slash + 1);
        else
                r = asprintf(&p, "%s", name);
        if (r < 0)
                return -ENOMEM;
        *ret = p;
        return 0;
}

int store_registry_model_name(const char *entry, char **ret) {
        _cleanup_free_ char *name = NULL, *problem = NULL;
        const char *separator = strstr(entry, "--");
        int r;

        if (separator)
                r = asprintf(&name, "%.*s/%s", (int) (separator - entry), entry, separator + 2);
        else
                r = asprintf(&name, "%s", entry);
        if (r < 0)
                return -ENOMEM;

        r = model_name_validate(name, &problem);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return 0;

        *ret = TAKE_PTR(name);
        return 1;
}

bool store_registered_path_is_valid(const char *path) {
        size_t n = strlen(path);

        if (n == 0 || n > STORE_REGISTERED_PATH_MAX || path[0] != '/')
                return false;
        if (n > 1 && path[n - 1] == '/')
                return false;
        if (strstr(path, "//") || strstr(path, "/./") || strstr(path, "/../"))
                return false;
        if ((n >= 2 && streq(path + n - 2, "/.")) || (n >= 3 && streq(path + n - 3, "/..")))
                return false;

        for (size_t i = 0; i < n;) {
                size_t k;

                if ((uint8_t) path[i] < 0x20 || path[i] == 0x7f)
                        return false;
                k = json_utf8_sequence_length((const uint8_t *) path + i, n - i);
                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}

/* A registered root: the path as it was stored, resolved then, so no
 * symlink may be on its way now (-ELOOP). */
static int open_registered_root(const char *path) {
        return open_resolving(AT_FDCWD, path, O_RDONLY | O_DIRECTORY, RESOLVE_NO_SYMLINKS);
}

/* The model at a registered directory: its root and the model's directory
 * at once. registered_as: the registry entry, for messages, or NULL when
 * the directory is being registered. */
static int lookup_in_directory(const char *path, const char *name, const char *registered_as, store_cancel_t cancel,
                               void *userdata, char **ret_directory, Weights *w, ModelFolder *ret_folder,
                               char **ret_error) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *directory = NULL;
        int r;

        fd = open_registered_root(path);
        if (fd == -ENOENT) {
                if (registered_as)
                        return set_error(ret_error, -ENOENT, "Model '%s' is registered (%s) at %s, which does not "
                                         "exist any more.", name, registered_as, path);
                return set_error(ret_error, -ENOENT, "%s does not exist.", path);
        }
        if (fd == -ENOTDIR)
                return set_error(ret_error, -ENOTDIR, "%s is not a directory.", path);
        if (fd == -ELOOP)
                return set_error(ret_error, -EBADMSG, "%s: a symlink is on its way now; it was registered with "
                                 "every symlink resolved. Register it again.", path);
        if (fd < 0)
                return set_error(ret_error, fd, "Cannot open %s: %m", path);

        directory = strdup(path);
        if (!directory)
                return -ENOMEM;

        r = find_weights(&(const Place) {
                        .root_fd = fd,
                        .root = path,
                        .subdir = ".",
                        .dir_fd = fd,
                        .directory = path,
                        .cancel = cancel,
                        .userdata = userdata,
                }, w, ret_error);
        if (r < 0)
                return r;
        if (r == LOOKUP_NOT_A_MODEL)
                return set_error(ret_error, -EBADMSG, "%s has neither %s nor %s.", path, STORE_SINGLE_WEIGHTS_FILE,
                                 STORE_INDEX_FILE);
        r = folder_set(ret_folder, &fd, path, ".", path);
        if (r < 0)
                return r;

        *ret_directory = TAKE_PTR(directory);
        return LOOKUP_FOUND;
}

/* The registry's entry for name, below ModelDir: LOOKUP_ABSENT when there is
 * none; otherwise what the registered directory holds, which a damaged or
 * dangling entry does not let fall through to ModelDir. */
static int lookup_registered(const char *root, const char *name, store_cancel_t cancel, void *userdata,
                             char **ret_directory, Weights *w, ModelFolder *ret_folder, char **ret_error) {
        _cleanup_free_ char *entry = NULL, *relative = NULL, *registered_as = NULL, *path = NULL;
        _cleanup_close_ int root_fd = -1;
        size_t n = 0;
        int r;

        root_fd = open_root(root);
        if (root_fd == -ENOENT)
                return LOOKUP_ABSENT;
        if (root_fd < 0)
                return set_error(ret_error, root_fd, "Cannot open the model directory %s: %m", root);

        r = store_registry_entry_name(name, &entry);
        if (r < 0)
                return r;
        if (asprintf(&relative, STORE_REGISTRY_DIR "/%s", entry) < 0)
                return -ENOMEM;
        registered_as = path_join(root, relative);
        if (!registered_as)
                return -ENOMEM;

        /* Ours, but in a folder others with access to ModelDir may write. */
        r = read_file_beneath(root_fd, relative, STORE_REGISTERED_PATH_MAX + 1, &path, &n);
        if (r == -ENOENT)
                return LOOKUP_ABSENT;
        if (r == -EFBIG || r == -EBADFD || is_open_beneath_error(r))
                return set_error(ret_error, -EBADMSG, "The registration of model '%s' (%s) is damaged: not a "
                                 "small regular file. Remove the model and register it again.", name, registered_as);
        if (r < 0)
                return set_error(ret_error, r, "Cannot read the registration of model '%s' (%s): %m", name,
                                 registered_as);

        if (n > 0 && path[n - 1] == '\n')
                path[--n] = 0;
        if (strlen(path) != n || !store_registered_path_is_valid(path))
                return set_error(ret_error, -EBADMSG, "The registration of model '%s' (%s) is damaged: it holds "
                                 "no absolute path. Remove the model and register it again.", name, registered_as);

        return lookup_in_directory(path, name, registered_as, cancel, userdata, ret_directory, w, ret_folder,
                                   ret_error);
}

int store_resolve_directory(const char *path, const char *name, store_cancel_t cancel, void *userdata,
                            ModelLocation **ret, char **ret_error) {
        _cleanup_(weights_done) Weights weights = {};
        _cleanup_(model_folder_done) ModelFolder folder = MODEL_FOLDER_NULL;
        _cleanup_free_ char *error = NULL, *directory = NULL;
        int r;

        assert(path);
        assert(name);
        assert(ret);

        if (!store_registered_path_is_valid(path)) {
                r = set_error(&error, -EINVAL, "A model directory must be given by an absolute path without "
                              "\".\" or \"..\" in it, in UTF-8, of at most %u bytes.", STORE_REGISTERED_PATH_MAX);
                goto fail;
        }
        r = lookup_in_directory(path, name, NULL, cancel, userdata, &directory, &weights, &folder, &error);
        if (r < 0)
                goto fail;
        r = build_location(name, &directory, &weights, MODEL_SOURCE_LOCAL, NULL, &folder, ret);
        if (r < 0)
                goto fail;
        return 0;

fail:
        if (r == -ENOMEM && !error)
                set_error(&error, r, "Out of memory.");
        if (ret_error)
                *ret_error = TAKE_PTR(error);
        return r;
}

/* Says where a model that was not found was looked for. */
static int set_not_found_error(char **ret_error, const char *model_dir, const char *hf_cache,
                               const char *name) {
        _cleanup_free_ char *in_model_dir = NULL, *in_hf_cache = NULL, *repo = NULL;

        if (!ret_error)
                return -ENOENT;

        if (model_dir && asprintf(&in_model_dir, "%s/%s", model_dir, name) < 0)
                return -ENOMEM;
        if (hf_cache && hf_repo_directory_name(name, &repo) > 0 &&
            asprintf(&in_hf_cache, "%s/%s", hf_cache, repo) < 0)
                return -ENOMEM;

        if (in_model_dir && in_hf_cache)
                return set_error(ret_error, -ENOENT, "Model '%s' not found: neither %s nor %s exists.", name,
                                 in_model_dir, in_hf_cache);
        if (in_model_dir || in_hf_cache)
                return set_error(ret_error, -ENOENT, "Model '%s' not found: %s does not exist.", name,
                                 in_model_dir ?: in_hf_cache);
        return set_error(ret_error, -ENOENT, "Model '%s' not found: no store is configured to hold it.",
                         name);
}

int store_resolve_full(const char *model_dir, const char *hf_cache, const char *name, store_cancel_t cancel,
                       void *userdata, ModelLocation **ret, char **ret_error) {
        _cleanup_free_ char *error = NULL, *model_dir_absolute = NULL, *hf_cache_absolute = NULL,
                            *directory = NULL, *revision = NULL;
        _cleanup_(weights_done) Weights weights = {};
        _cleanup_(model_folder_done) ModelFolder folder = MODEL_FOLDER_NULL;
        int r, registered = LOOKUP_ABSENT, in_model_dir = LOOKUP_ABSENT, in_hf_cache = LOOKUP_ABSENT;
        ModelSource source = MODEL_SOURCE_STORE;

        assert(name);
        assert(ret);

        if (!isempty(model_dir)) {
                r = make_absolute(model_dir, &model_dir_absolute);
                if (r < 0) {
                        set_error(&error, r, "Cannot make the model directory %s absolute: %m", model_dir);
                        goto fail;
                }

                /* A registration wins over everything, even when it is broken:
                 * it says why, rather than another model answering instead. */
                r = registered = lookup_registered(model_dir_absolute, name, cancel, userdata, &directory, &weights,
                                                   &folder, &error);
                if (r < 0)
                        goto fail;
                if (registered == LOOKUP_FOUND)
                        source = MODEL_SOURCE_LOCAL;
                else {
                        r = in_model_dir = lookup_in_model_dir(model_dir_absolute, name, cancel, userdata,
                                                               &directory, &weights, &source, &revision, &folder,
                                                               &error);
                        if (r < 0)
                                goto fail;
                }
        }

        /* ModelDir wins; a directory there without weights does not hide a
         * model of the same name in the cache. */
        if (registered != LOOKUP_FOUND && in_model_dir != LOOKUP_FOUND && !isempty(hf_cache)) {
                r = make_absolute(hf_cache, &hf_cache_absolute);
                if (r < 0) {
                        set_error(&error, r, "Cannot make the Hugging Face cache path %s absolute: %m",
                                  hf_cache);
                        goto fail;
                }

                r = in_hf_cache = lookup_in_hf_cache(hf_cache_absolute, name, cancel, userdata, &directory,
                                                     &weights, &revision, &folder, &error);
                if (r < 0)
                        goto fail;
                source = MODEL_SOURCE_HF_CACHE;
        }

        if (registered != LOOKUP_FOUND && in_model_dir != LOOKUP_FOUND && in_hf_cache != LOOKUP_FOUND) {
                if (in_model_dir == LOOKUP_NOT_A_MODEL)
                        r = set_error(&error, -EBADMSG, "%s/%s has neither %s nor %s.", model_dir_absolute,
                                      name, STORE_SINGLE_WEIGHTS_FILE, STORE_INDEX_FILE);
                else
                        r = set_not_found_error(&error, model_dir_absolute, hf_cache_absolute, name);
                goto fail;
        }

        r = build_location(name, &directory, &weights, source, &revision, &folder, ret);
        if (r < 0)
                goto fail;
        return 0;

fail:
        if (r == -ENOMEM && !error)
                set_error(&error, r, "Out of memory.");
        if (ret_error)
                *ret_error = TAKE_PTR(error);
        return r;
}

typedef struct NameList {
        char **names;           /* NULL-terminated once anything is in it */
        size_t n;
        size_t allocated;
        bool truncated;
} NameList;

static void name_list_done(NameList *l) {
        strv_free(l->names);
}

static bool name_list_contains_sorted(const NameList *l, size_t n_sorted, const char *name) {
        return n_sorted > 0 &&
                bsearch(&name, l->names, n_sorted, sizeof *l->names, compare_string_pointers);
}

/* Adds a copy of name unless it is not a valid model name or the list is
 * full. Fails only for lack of memory. */
static int name_list_add(NameList *l, const char *name) {
        _cleanup_free_ char *error = NULL;
        char q[QUOTE_MAX + 4];
        int r;

        r = model_name_validate(name, &error);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                log_debug("Ignoring '%s' in the store: %s", quote(name, q),
                          error ?: "not a valid model name");
                return 0;
        }

        if (l->n >= STORE_LIST_MAX) {
                if (!l->truncated)
                        log_warning("The store holds more than %u models; listing only %u of them.",
                                    STORE_LIST_MAX, STORE_LIST_MAX);
                l->truncated = true;
                return 0;
        }

        if (l->n + 2 > l->allocated) {
                size_t allocated = MAX(l->allocated * 2, (size_t) 16);
                char **names = reallocarray(l->names, allocated, sizeof *names);
                if (!names)
                        return -ENOMEM;
                l->names = names;
                l->allocated = allocated;
        }

        l->names[l->n] = strdup(name);
        if (!l->names[l->n])
                return -ENOMEM;
        l->names[++l->n] = NULL;
        return 0;
}

/* Entries known not to be directories (nor symlinks to one) are not worth
 * opening. */
static bool may_be_directory(const struct dirent *de) {
        return de->d_type == DT_DIR || de->d_type == DT_LNK || de->d_type == DT_UNKNOWN;
}

/* Opens a directory below a root while listing (entry is relative to the
 * root, and resolved beneath it). Returns the fd, or a negative errno once
 * dealt with: non-directories are skipped quietly, failures logged. */
static int open_listed_directory(int root_fd, const char *root, const char *entry) {
        char q[QUOTE_MAX + 4];
        int fd;

        fd = open_directory_beneath(root_fd, entry);
        if (fd == -EXDEV)
                log_warning("Skipping %s/%s: a symlink on the way is absolute or leads out of %s; only relative "
                            "symlinks that stay inside it are followed.", root, quote(entry, q), root);
        else if (fd < 0 && fd != -ENOENT)
                log_warning_errno(fd, "Cannot open %s/%s, skipping: %m", root, quote(entry, q));
        return fd;
}

/* 1 if the directory is a model, 0 if not, negative errno (logged) if that
 * cannot be told. */
static int listed_directory_is_model(int dir_fd, const char *parent_path, const char *entry) {
        char q[QUOTE_MAX + 4];
        int r;

        r = has_model_files(dir_fd);
        if (r < 0)
                log_warning_errno(r, "Cannot look into %s/%s, skipping: %m", parent_path, quote(entry, q));
        return r;
}

/* Reads the next entry that is worth a look, or NULL at the end (errors
 * logged: what was read so far is still listed). */
static struct dirent *read_directory(DIR *d, const char *path) {
        struct dirent *de;

        for (;;) {
                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                log_warning_errno(errno, "Cannot read directory %s: %m", path);
                        return NULL;
                }
                if (!dot_or_dot_dot(de->d_name) && may_be_directory(de))
                        return de;
        }
}

/* Opens a root for listing; NULL (logged unless it is merely missing) if
 * that fails. */
static DIR *open_listed_root(const char *path) {
        DIR *d;
        int fd;

        fd = open_root(path);
        if (fd < 0) {
                if (fd != -ENOENT)
                        log_warning_errno(fd, "Cannot open %s, not listing models from it: %m", path);
                return NULL;
        }

        d = fdopendir(fd);
        if (!d) {
                log_warning_errno(errno, "Cannot read directory %s, not listing models from it: %m", path);
                close(fd);
        }
        return d;
}

/* An entry of ModelDir: a model itself, or an organisation whose
 * subdirectories are models. */
static int scan_model_dir_entry(int root_fd, const char *root, const char *entry, NameList *list) {
        _cleanup_free_ char *org_path = NULL;
        _cleanup_closedir_ DIR *d = NULL;
        _cleanup_close_ int fd = -1;
        struct dirent *de;
        int r;

        fd = open_listed_directory(root_fd, root, entry);
        if (fd < 0)
                return 0;

        r = listed_directory_is_model(fd, root, entry);
        if (r < 0)
                return 0;
        if (r > 0)
                return name_list_add(list, entry);

        org_path = path_join(root, entry);
        if (!org_path)
                return -ENOMEM;

        d = fdopendir(fd);
        if (!d) {
                log_warning_errno(errno, "Cannot read directory %s, skipping: %m", org_path);
                return 0;
        }
        TAKE_FD(fd);

        while (!list->truncated && (de = read_directory(d, org_path))) {
                _cleanup_close_ int model_fd = -1;
                _cleanup_free_ char *name = NULL;

                if (asprintf(&name, "%s/%s", entry, de->d_name) < 0)
                        return -ENOMEM;

                /* Beneath the root, not the organisation: models may link to
                 * each other's files anywhere in ModelDir. */
                model_fd = open_listed_directory(root_fd, root, name);
                if (model_fd < 0)
                        continue;
                if (listed_directory_is_model(model_fd, root, name) <= 0)
                        continue;

                r = name_list_add(list, name);
                if (r < 0)
                        return r;
        }

        return 0;
}

static int scan_model_dir(const char *root, NameList *list) {
        _cleanup_closedir_ DIR *d = NULL;
        struct dirent *de;
        int r;

        d = open_listed_root(root);
        if (!d)
                return 0;

        while (!list->truncated && (de = read_directory(d, root))) {
                /* The registry, the trash of removed models, staging folders:
                 * the store's own, and no model's name starts with '.'. */
                if (de->d_name[0] == '.')
                        continue;
                r = scan_model_dir_entry(dirfd(d), root, de->d_name, list);
                if (r < 0)
                        return r;
        }

        return 0;
}

/* The registry's names, whatever their entries hold: a registration that
 * is damaged or whose directory went says so when it is resolved. */
static int scan_registry(const char *root, NameList *list) {
        _cleanup_close_ int root_fd = -1, fd = -1;
        _cleanup_closedir_ DIR *d = NULL;
        char q[QUOTE_MAX + 4];
        struct dirent *de;
        unsigned n = 0;
        int r;

        root_fd = open_root(root);
        if (root_fd < 0)
                return 0;   /* scan_model_dir() said why */
        fd = open_directory_beneath(root_fd, STORE_REGISTRY_DIR);
        if (fd < 0) {
                if (fd != -ENOENT)
                        log_warning_errno(fd, "Cannot open the registry %s/" STORE_REGISTRY_DIR ", not listing "
                                          "registered models: %m", root);
                return 0;
        }
        d = fdopendir(fd);
        if (!d) {
                log_warning_errno(errno, "Cannot read the registry %s/" STORE_REGISTRY_DIR ": %m", root);
                return 0;
        }
        TAKE_FD(fd);

        while (!list->truncated) {
                _cleanup_free_ char *name = NULL;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                log_warning_errno(errno, "Cannot read the registry %s/" STORE_REGISTRY_DIR ": %m",
                                                  root);
                        break;
                }
                /* Hidden: an entry being written. */
                if (de->d_name[0] == '.')
                        continue;
                r = store_registry_model_name(de->d_name, &name);
                if (r < 0)
                        return r;
                if (r == 0) {
                        log_warning("Ignoring %s/" STORE_REGISTRY_DIR "/%s: it names no model.", root,
                                    quote(de->d_name, q));
                        continue;
                }
                if (++n > STORE_REGISTRY_MAX) {
                        log_warning("The registry %s/" STORE_REGISTRY_DIR " holds more than %u entries; listing "
                                    "only %u of them.", root, STORE_REGISTRY_MAX, STORE_REGISTRY_MAX);
                        break;
                }
                r = name_list_add(list, name);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Lists the cache's models unless ModelDir or the registry has one of the
 * same name (the first n_model_dir names of the list, sorted). */
static int scan_hf_cache(const char *root, NameList *list, size_t n_model_dir) {
        _cleanup_closedir_ DIR *d = NULL;
        struct dirent *de;
        int r;

        d = open_listed_root(root);
        if (!d)
                return 0;

        while (!list->truncated && (de = read_directory(d, root))) {
                _cleanup_free_ char *name = NULL, *repo_path = NULL, *error = NULL;
                _cleanup_close_ int repo_fd = -1, snapshot_fd = -1;

                r = hf_model_name(de->d_name, &name);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue;   /* datasets--*, spaces--*, .locks and the like */

                if (name_list_contains_sorted(list, n_model_dir, name))
                        continue;

                repo_fd = open_listed_directory(dirfd(d), root, de->d_name);
                if (repo_fd < 0)
                        continue;

                repo_path = path_join(root, de->d_name);
                if (!repo_path)
                        return -ENOMEM;

                r = hf_open_snapshot(repo_fd, repo_path, &snapshot_fd, NULL, NULL, &error);
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        /* Downloads under way look like this too, hence only debug. */
                        log_full_errno(r == -EBADMSG ? LOG_DEBUG : LOG_WARNING, r, "Skipping %s: %s",
                                       repo_path, error ?: "cannot open its snapshot");
                        continue;
                }

                if (listed_directory_is_model(snapshot_fd, repo_path, "snapshot") <= 0)
                        continue;

                r = name_list_add(list, name);
                if (r < 0)
                        return r;
        }

        return 0;
}

int store_list(const char *model_dir, const char *hf_cache, char ***ret_names) {
        _cleanup_(name_list_done) NameList list = {};
        size_t n_model_dir, n_unique = 0;
        int r;

        assert(ret_names);

        if (!isempty(model_dir)) {
                r = scan_model_dir(model_dir, &list);
                if (r < 0)
                        return r;
                r = scan_registry(model_dir, &list);
                if (r < 0)
                        return r;
        }

        if (list.n > 1)
                qsort(list.names, list.n, sizeof *list.names, compare_string_pointers);
        n_model_dir = list.n;

        if (!isempty(hf_cache)) {
                r = scan_hf_cache(hf_cache, &list, n_model_dir);
                if (r < 0)
                        return r;
        }

        if (!list.names) {
                list.names = calloc(1, sizeof *list.names);
                if (!list.names)
                        return -ENOMEM;
        }

        /* A registered name may also be a folder of ModelDir (one added
         * since): listed once. */
        if (list.n > 1)
                qsort(list.names, list.n, sizeof *list.names, compare_string_pointers);
        for (size_t i = 0; i < list.n; i++)
                if (n_unique > 0 && streq(list.names[n_unique - 1], list.names[i]))
                        free(list.names[i]);
                else
                        list.names[n_unique++] = list.names[i];
        list.names[n_unique] = NULL;

        *ret_names = TAKE_PTR(list.names);
        return 0;
}

int store_locate(const char *model_dir, const char *hf_cache, const char *name, ModelSource *ret_source) {
        int r;

        assert(name);
        assert(ret_source);

        if (!isempty(model_dir)) {
                _cleanup_close_ int root_fd = -1, registry_fd = -1, dir_fd = -1;
                _cleanup_free_ char *entry = NULL;

                root_fd = open_root(model_dir);
                if (root_fd < 0 && root_fd != -ENOENT)
                        return root_fd;
                if (root_fd >= 0) {
                        r = store_registry_entry_name(name, &entry);
                        if (r < 0)
                                return r;
                        registry_fd = open_directory_beneath(root_fd, STORE_REGISTRY_DIR);
                        if (registry_fd < 0 && registry_fd != -ENOENT)
                                return registry_fd;
                        if (registry_fd >= 0) {
                                r = name_exists(registry_fd, entry);
                                if (r < 0)
                                        return r;
                                if (r > 0) {
                                        *ret_source = MODEL_SOURCE_LOCAL;
                                        return 1;
                                }
                        }

                        /* As listed: a directory beneath the root, with model files. */
                        dir_fd = open_directory_beneath(root_fd, name);
                        if (dir_fd >= 0) {
                                r = has_model_files(dir_fd);
                                if (r < 0)
                                        return r;
                                if (r > 0) {
                                        r = name_exists(dir_fd, STORE_PULL_METADATA_FILE);
                                        if (r < 0)
                                                return r;
                                        *ret_source = r > 0 ? MODEL_SOURCE_HUB : MODEL_SOURCE_STORE;
                                        return 1;
                                }
                        } else if (dir_fd != -ENOENT && !is_open_beneath_error(dir_fd))
                                return dir_fd;
                }
        }

        if (!isempty(hf_cache)) {
                _cleanup_close_ int root_fd = -1, repo_fd = -1;
                _cleanup_free_ char *repo = NULL;

                r = hf_repo_directory_name(name, &repo);
                if (r < 0)
                        return r;
                if (r > 0) {
                        root_fd = open_root(hf_cache);
                        if (root_fd < 0 && root_fd != -ENOENT)
                                return root_fd;
                        if (root_fd >= 0) {
                                repo_fd = open_directory_beneath(root_fd, repo);
                                if (repo_fd >= 0) {
                                        *ret_source = MODEL_SOURCE_HF_CACHE;
                                        return 1;
                                }
                                if (repo_fd != -ENOENT && !is_open_beneath_error(repo_fd))
                                        return repo_fd;
                        }
                }
        }

        return 0;
}
