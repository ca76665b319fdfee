/* SPDX-License-Identifier: MIT */
/* mpool-mkmodel: writes a small but valid model for tests and benchmarks,
 * either as a plain model directory or in a Hugging Face cache. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "macro.h"
#include "parse-util.h"
#include "safetensors.h"

/* Every tensor is a [rows, COLUMNS] matrix; config.json calls COLUMNS the
 * hidden size. */
#define COLUMNS 64U
#define TENSORS_MAX 100000U
/* Shard file names have five digits, as in Hugging Face repositories. */
#define SHARDS_MAX 99999U
#define CHUNK_SIZE (1024U * 1024U)
/* Byte k of each file's data section is k % PATTERN_PERIOD + 1: never zero,
 * and a prime period so that neighbouring tensors differ. */
#define PATTERN_PERIOD 251U

typedef struct Options {
        uint64_t size;
        unsigned n_tensors;
        unsigned n_shards;
        const char *dtype;
        const char *directory;
        const char *hf_cache;
        const char *name;
} Options;

/* Where files go. For a plain model everything is written into directory;
 * in a Hugging Face cache, contents go to blobs/ and the snapshot gets
 * relative symlinks to them. */
typedef struct Output {
        char *directory;
        char *snapshot;         /* NULL for a plain model */
        const char *name;       /* seeds the fake hashes */
} Output;

static void output_done(Output *o) {
        free(o->directory);
        free(o->snapshot);
}

static void cjson_deletep(cJSON **j) {
        cJSON_Delete(*j);
}

static void help(void) {
        printf("Usage: mpool-mkmodel [OPTIONS] DIR\n"
               "       mpool-mkmodel [OPTIONS] --hf-cache=HUBDIR --name=[ORG/]NAME\n"
               "\n"
               "Creates a small valid safetensors model in DIR (created with its parents),\n"
               "or in the Hugging Face cache HUBDIR as models--ORG--NAME.\n"
               "\n"
               "  --size=BYTES     approximate total tensor data, K/M/G suffixes (default 1M)\n"
               "  --tensors=N      number of tensors (default 4)\n"
               "  --shards=N       number of weights files (default 1: model.safetensors;\n"
               "                   more: model-0000i-of-0000N.safetensors plus an index)\n"
               "  --dtype=DTYPE    element type, e.g. F32, F16, BF16, I8 (default F32)\n"
               "  --hf-cache=DIR   write into this Hugging Face cache (the hub/ folder)\n"
               "  --name=ORG/NAME  the model's name in the cache (with --hf-cache)\n"
               "  --help           show this help\n"
               "\n"
               "Byte k of each file's data section is k %% %u + 1.\n",
               PATTERN_PERIOD);
}

static int parse_options(int argc, char *argv[], Options *o) {
        enum { OPT_SIZE = 0x100, OPT_TENSORS, OPT_SHARDS, OPT_DTYPE, OPT_HF_CACHE, OPT_NAME, OPT_HELP };
        static const struct option options[] = {
                { "size",     required_argument, NULL, OPT_SIZE },
                { "tensors",  required_argument, NULL, OPT_TENSORS },
                { "shards",   required_argument, NULL, OPT_SHARDS },
                { "dtype",    required_argument, NULL, OPT_DTYPE },
                { "hf-cache", required_argument, NULL, OPT_HF_CACHE },
                { "name",     required_argument, NULL, OPT_NAME },
                { "help",     no_argument,       NULL, OPT_HELP },
                {}
        };
        int c;

        *o = (Options) {
                .size = 1024 * 1024,
                .n_tensors = 4,
                .n_shards = 1,
                .dtype = "F32",
        };

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case OPT_SIZE:
                        if (parse_size(optarg, &o->size) < 0) {
                                fprintf(stderr, "mpool-mkmodel: invalid size: %s\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_TENSORS:
                        if (parse_unsigned(optarg, 1, TENSORS_MAX, &o->n_tensors) < 0) {
                                fprintf(stderr, "mpool-mkmodel: --tensors must be 1..%u: %s\n", TENSORS_MAX,
                                        optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_SHARDS:
                        if (parse_unsigned(optarg, 1, SHARDS_MAX, &o->n_shards) < 0) {
                                fprintf(stderr, "mpool-mkmodel: --shards must be 1..%u: %s\n", SHARDS_MAX,
                                        optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_DTYPE:
                        o->dtype = optarg;
                        break;
                case OPT_HF_CACHE:
                        o->hf_cache = optarg;
                        break;
                case OPT_NAME:
                        o->name = optarg;
                        break;
                case OPT_HELP:
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'mpool-mkmodel --help'.\n");
                        return -EINVAL;
                }

        if (safetensors_dtype_bits(o->dtype) == 0) {
                fprintf(stderr, "mpool-mkmodel: unknown dtype: %s\n", o->dtype);
                return -EINVAL;
        }
        if (o->n_shards > o->n_tensors) {
                fprintf(stderr, "mpool-mkmodel: --shards (%u) may not exceed --tensors (%u).\n", o->n_shards,
                        o->n_tensors);
                return -EINVAL;
        }

        if (o->hf_cache || o->name) {
                _cleanup_free_ char *error = NULL;
                const char *slash;

                if (!o->hf_cache || !o->name || optind != argc) {
                        fprintf(stderr, "mpool-mkmodel: --hf-cache and --name go together, without DIR.\n");
                        return -EINVAL;
                }
                if (model_name_validate(o->name, &error) < 0) {
                        fprintf(stderr, "mpool-mkmodel: invalid name: %s\n", error ?: o->name);
                        return -EINVAL;
                }
                /* The cache joins ORG and NAME with "--", so they cannot hold it. */
                slash = strchr(o->name, '/');
                if (strstr(o->name, "--") || o->name[strlen(o->name) - 1] == '-' ||
                    (slash && slash[-1] == '-')) {
                        fprintf(stderr, "mpool-mkmodel: %s cannot be named in a Hugging Face cache.\n",
                                o->name);
                        return -EINVAL;
                }
        } else {
                if (optind != argc - 1) {
                        fprintf(stderr, "mpool-mkmodel: expected one DIR. Try 'mpool-mkmodel --help'.\n");
                        return -EINVAL;
                }
                o->directory = argv[optind];
        }

        if ((o->directory && !*o->directory) || (o->hf_cache && !*o->hf_cache)) {
                fprintf(stderr, "mpool-mkmodel: empty directory name.\n");
                return -EINVAL;
        }

        return 1;
}

static int mkdir_parents(const char *path) {
        _cleanup_free_ char *buffer = strdup(path);

        if (!buffer)
                return -ENOMEM;

        for (char *p = buffer + 1;; p++) {
                bool end = *p == 0;

                if (*p != '/' && !end)
                        continue;
                *p = 0;
                if (mkdir(buffer, 0755) < 0 && errno != EEXIST) {
                        fprintf(stderr, "mpool-mkmodel: cannot create %s: %m\n", buffer);
                        return -errno;
                }
                if (end)
                        return 0;
                *p = '/';
        }
}

static int write_all(int fd, const void *data, size_t size, const char *filename) {
        const uint8_t *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        fprintf(stderr, "mpool-mkmodel: cannot write %s: %m\n", filename);
                        return -errno;
                }
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

static int close_output(int fd, const char *filename) {
        if (close(fd) < 0) {
                fprintf(stderr, "mpool-mkmodel: cannot write %s: %m\n", filename);
                return -errno;
        }
        return 0;
}

/* A deterministic stand-in for a git or LFS hash: hex_digits hex digits
 * derived from the two strings (FNV-1a). */
static void fake_hash(const char *a, const char *b, unsigned hex_digits, char *ret) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (const char *s = a; *s; s++)
                h = (h ^ (uint8_t) *s) * UINT64_C(0x100000001b3);
        h = (h ^ '/') * UINT64_C(0x100000001b3);
        for (const char *s = b; *s; s++)
                h = (h ^ (uint8_t) *s) * UINT64_C(0x100000001b3);

        for (unsigned i = 0; i < hex_digits; i++) {
                if (i % 16 == 0)
                        h = (h ^ i) * UINT64_C(0x100000001b3);
                ret[i] = "0123456789abcdef"[(h >> (4 * (i % 16))) & 0xf];
        }
        ret[hex_digits] = 0;
}

static int output_init(const Options *opts, Output *o) {
        _cleanup_free_ char *repo = NULL, *refs = NULL, *ref_path = NULL;
        _cleanup_close_ int fd = -1;
        char commit[41];
        const char *slash;
        int r;

        *o = (Output) {};

        if (!opts->hf_cache) {
                o->directory = strdup(opts->directory);
                if (!o->directory)
                        return -ENOMEM;
                return mkdir_parents(o->directory);
        }

        slash = strchr(opts->name, '/');
        if (slash)
                r = asprintf(&repo, "%s/models--%.*s--%s", opts->hf_cache, (int) (slash - opts->name),
                             opts->name, slash + 1);
        else
                r = asprintf(&repo, "%s/models--%s", opts->hf_cache, opts->name);
        if (r < 0)
                return -ENOMEM;

        fake_hash(opts->name, "commit", 40, commit);
        o->name = opts->name;
        if (asprintf(&o->directory, "%s/blobs", repo) < 0 ||
            asprintf(&o->snapshot, "%s/snapshots/%s", repo, commit) < 0 ||
            asprintf(&refs, "%s/refs", repo) < 0 ||
            asprintf(&ref_path, "%s/main", refs) < 0)
                return -ENOMEM;

        r = mkdir_parents(o->directory);
        if (r < 0)
                return r;
        r = mkdir_parents(o->snapshot);
        if (r < 0)
                return r;
        r = mkdir_parents(refs);
        if (r < 0)
                return r;

        fd = open(ref_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0644);
        if (fd < 0) {
                fprintf(stderr, "mpool-mkmodel: cannot create %s: %m\n", ref_path);
                return -errno;
        }
        r = write_all(fd, commit, strlen(commit), ref_path);
        if (r < 0)
                return r;
        return close_output(TAKE_FD(fd), ref_path);
}

/* Opens a file of the model for writing; in a cache, also links it into
 * the snapshot. */
static int output_open(const Output *o, const char *filename) {
        _cleanup_free_ char *path = NULL, *link_path = NULL, *target = NULL;
        char blob[65];
        int fd;

        if (o->snapshot) {
                fake_hash(o->name, filename, 64, blob);
                if (asprintf(&path, "%s/%s", o->directory, blob) < 0 ||
                    asprintf(&link_path, "%s/%s", o->snapshot, filename) < 0 ||
                    asprintf(&target, "../../blobs/%s", blob) < 0)
                        return -ENOMEM;
        } else if (asprintf(&path, "%s/%s", o->directory, filename) < 0)
                return -ENOMEM;

        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0644);
        if (fd < 0) {
                fprintf(stderr, "mpool-mkmodel: cannot create %s: %m\n", path);
                return -errno;
        }

        if (link_path) {
                if ((unlink(link_path) < 0 && errno != ENOENT) || symlink(target, link_path) < 0) {
                        fprintf(stderr, "mpool-mkmodel: cannot link %s: %m\n", link_path);
                        close(fd);
                        return -errno;
                }
        }

        return fd;
}

/* Removes a file an earlier run may have left that would change what the
 * model is (a single file next to shards, or an index next to one file). */
static int output_remove(const Output *o, const char *filename) {
        _cleanup_free_ char *path = NULL;

        if (asprintf(&path, "%s/%s", o->snapshot ?: o->directory, filename) < 0)
                return -ENOMEM;
        if (unlink(path) < 0 && errno != ENOENT) {
                fprintf(stderr, "mpool-mkmodel: cannot remove %s: %m\n", path);
                return -errno;
        }
        return 0;
}

static int write_json(const Output *o, const char *filename, const cJSON *json) {
        _cleanup_free_ char *text = NULL;
        int fd, r;

        text = cJSON_Print(json);
        if (!text)
                return -ENOMEM;

        fd = output_open(o, filename);
        if (fd < 0)
                return fd;
        r = write_all(fd, text, strlen(text), filename);
        if (r >= 0)
                r = write_all(fd, "\n", 1, filename);
        if (r < 0) {
                close(fd);
                return r;
        }
        return close_output(fd, filename);
}

static int write_safetensors(const Output *o, const char *filename, const SafetensorsTensorSpec *specs,
                             size_t n_specs, const uint8_t *pattern, uint64_t *ret_data_length) {
        _cleanup_free_ char *header = NULL;
        uint64_t data_length, header_length, written = 0;
        uint8_t prefix[SAFETENSORS_PREFIX_SIZE];
        int fd, r;

        r = safetensors_build_header(specs, n_specs, &header, &data_length);
        if (r < 0) {
                fprintf(stderr, "mpool-mkmodel: cannot build the header of %s: %s\n", filename,
                        strerror(-r));
                return r;
        }

        header_length = strlen(header);
        for (unsigned i = 0; i < sizeof prefix; i++)
                prefix[i] = (uint8_t) (header_length >> (8 * i));

        fd = output_open(o, filename);
        if (fd < 0)
                return fd;

        r = write_all(fd, prefix, sizeof prefix, filename);
        if (r >= 0)
                r = write_all(fd, header, header_length, filename);
        while (r >= 0 && written < data_length) {
                size_t n = (size_t) MIN(data_length - written, (uint64_t) CHUNK_SIZE);

                r = write_all(fd, pattern + written % PATTERN_PERIOD, n, filename);
                written += n;
        }
        if (r < 0) {
                close(fd);
                return r;
        }

        *ret_data_length = data_length;
        return close_output(fd, filename);
}

static int write_config(const Output *o, const Options *opts) {
        _cleanup_(cjson_deletep) cJSON *config = cJSON_CreateObject();

        if (!config ||
            !cJSON_AddStringToObject(config, "model_type", "mpool-test") ||
            !cJSON_AddNumberToObject(config, "hidden_size", COLUMNS) ||
            !cJSON_AddNumberToObject(config, "num_hidden_layers", opts->n_tensors) ||
            !cJSON_AddStringToObject(config, "torch_dtype", opts->dtype))
                return -ENOMEM;

        return write_json(o, "config.json", config);
}

static int write_model(const Options *opts, const Output *o) {
        _cleanup_(cjson_deletep) cJSON *index = NULL;
        _cleanup_free_ SafetensorsTensorSpec *specs = NULL;
        _cleanup_free_ uint64_t *shapes = NULL;
        _cleanup_free_ char *names = NULL;
        _cleanup_free_ uint8_t *pattern = NULL;
        cJSON *metadata, *weight_map;
        uint64_t row_bytes, total_rows, total_bytes = 0;
        size_t name_size = 32;
        int r;

        /* 64 columns make whole bytes for every dtype, down to 1 bit. */
        row_bytes = COLUMNS * safetensors_dtype_bits(opts->dtype) / 8;
        total_rows = MAX(opts->size / row_bytes, (uint64_t) opts->n_tensors);

        specs = calloc(opts->n_tensors, sizeof *specs);
        shapes = calloc(2 * (size_t) opts->n_tensors, sizeof *shapes);
        names = calloc(opts->n_tensors, name_size);
        pattern = malloc(CHUNK_SIZE + PATTERN_PERIOD);
        if (!specs || !shapes || !names || !pattern)
                return -ENOMEM;

        for (size_t i = 0; i < CHUNK_SIZE + PATTERN_PERIOD; i++)
                pattern[i] = (uint8_t) (i % PATTERN_PERIOD + 1);

        for (unsigned i = 0; i < opts->n_tensors; i++) {
                char *name = names + i * name_size;

                snprintf(name, name_size, "model.layers.%u.weight", i);
                shapes[2 * i] = total_rows / opts->n_tensors + (i < total_rows % opts->n_tensors);
                shapes[2 * i + 1] = COLUMNS;
                specs[i] = (SafetensorsTensorSpec) {
                        .name = name,
                        .dtype = opts->dtype,
                        .shape = shapes + 2 * i,
                        .n_dims = 2,
                };
        }

        if (opts->n_shards == 1) {
                uint64_t data_length;

                r = output_remove(o, "model.safetensors.index.json");
                if (r < 0)
                        return r;
                return write_safetensors(o, "model.safetensors", specs, opts->n_tensors, pattern,
                                         &data_length);
        }

        r = output_remove(o, "model.safetensors");
        if (r < 0)
                return r;

        /* The layout Hugging Face writes: metadata first, then the map. */
        index = cJSON_CreateObject();
        if (!index)
                return -ENOMEM;
        metadata = cJSON_AddObjectToObject(index, "metadata");
        weight_map = cJSON_AddObjectToObject(index, "weight_map");
        if (!metadata || !weight_map)
                return -ENOMEM;

        for (unsigned s = 0; s < opts->n_shards; s++) {
                /* Contiguous runs of tensors, as evenly as they divide. */
                unsigned first = (unsigned) ((uint64_t) s * opts->n_tensors / opts->n_shards);
                unsigned end = (unsigned) ((uint64_t) (s + 1) * opts->n_tensors / opts->n_shards);
                uint64_t data_length;
                char filename[64];

                snprintf(filename, sizeof filename, "model-%05u-of-%05u.safetensors", s + 1, opts->n_shards);
                r = write_safetensors(o, filename, specs + first, end - first, pattern, &data_length);
                if (r < 0)
                        return r;
                total_bytes += data_length;

                for (unsigned i = first; i < end; i++)
                        if (!cJSON_AddStringToObject(weight_map, specs[i].name, filename))
                                return -ENOMEM;
        }

        if (!cJSON_AddNumberToObject(metadata, "total_size", (double) total_bytes))
                return -ENOMEM;

        return write_json(o, "model.safetensors.index.json", index);
}

int main(int argc, char *argv[]) {
        _cleanup_(output_done) Output output = {};
        Options opts;
        int r;

        r = parse_options(argc, argv, &opts);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;

        r = output_init(&opts, &output);
        if (r >= 0)
                r = write_model(&opts, &output);
        if (r >= 0)
                r = write_config(&output, &opts);
        if (r < 0) {
                if (r == -ENOMEM)
                        fprintf(stderr, "mpool-mkmodel: out of memory\n");
                return EXIT_FAILURE;
        }

        return EXIT_SUCCESS;
}
