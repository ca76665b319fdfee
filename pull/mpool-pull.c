/* SPDX-License-Identifier: MIT */
/* mpool-pull: downloads one model from a Hugging Face-compatible hub into
 * a staging folder, for mpoold, which starts one per download and follows
 * it through the line protocol of pull/PROTOCOL.md. The daemon parses
 * nothing that came from the network: everything the hub sends is read,
 * bounded and checked here. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fetch.h"
#include "hub.h"
#include "inspect.h"
#include "log.h"
#include "parse-util.h"
#include "protocol.h"
#include "safetensors.h"
#include "staging.h"
#include "store.h"
#include "strv.h"

#define PARALLEL_DEFAULT 4U
#define PARALLEL_MAX 16U
#define TOKEN_MAX 4096U

typedef struct Arguments {
        const char *endpoint;
        const char *repo;
        const char *revision;
        const char *staging;
        int token_fd;
        unsigned parallel;
        bool inspect;
        unsigned test_backoff_msec;     /* 0: the real delays */
        unsigned test_low_speed_sec;
} Arguments;

/* One file of the plan as a transfer's sink. */
typedef struct Download {
        Target target;
        struct Pull *pull;
} Download;

typedef struct Pull {
        Arguments args;
        PullError error;
        int signal_fd;
        int staging_fd;
        Fetcher *fetcher;
        HubInfo info;
        Plan plan;
        JsonBuffer index;               /* the index's text, read before the plan was complete */
        size_t index_length;
        uint64_t done, total;
} Pull;

static void pull_done(Pull *p) {
        fetcher_free(p->fetcher);
        hub_info_done(&p->info);
        plan_done(&p->plan);
        json_buffer_free(&p->index);
        if (p->staging_fd >= 0)
                close(p->staging_fd);
        if (p->signal_fd >= 0)
                close(p->signal_fd);
}

static void help(void) {
        printf("Usage: mpool-pull --endpoint=URL --repo=[ORG/]NAME --revision=REV --staging=DIR\n"
               "                  [--token-fd=N] [--parallel=N] [--inspect]\n"
               "\n"
               "Downloads the files of a model that mpool uses from a Hugging Face-compatible\n"
               "hub into DIR, verifying each, and reports on stdout in the line protocol of\n"
               "pull/PROTOCOL.md; after READY it waits for GO on stdin. Started by mpoold.\n"
               "\n"
               "  --endpoint=URL   the hub, e.g. https://huggingface.co\n"
               "  --repo=ORG/NAME  the repository\n"
               "  --revision=REV   a branch, tag or commit\n"
               "  --staging=DIR    the folder the files go in (must exist)\n"
               "  --token-fd=N     read an access token from this inherited descriptor\n"
               "  --parallel=N     files fetched at once, 1-%u (default %u)\n"
               "  --inspect        print what the weights hold instead of downloading\n",
               PARALLEL_MAX, PARALLEL_DEFAULT);
}

static int parse_arguments(int argc, char *argv[], Arguments *ret, PullError *e) {
        enum { ARG_ENDPOINT = 0x100, ARG_REPO, ARG_REVISION, ARG_STAGING, ARG_TOKEN_FD, ARG_PARALLEL, ARG_INSPECT,
               ARG_TEST_BACKOFF_MSEC, ARG_TEST_LOW_SPEED_SEC };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "endpoint", required_argument, NULL, ARG_ENDPOINT },
                { "repo", required_argument, NULL, ARG_REPO },
                { "revision", required_argument, NULL, ARG_REVISION },
                { "staging", required_argument, NULL, ARG_STAGING },
                { "token-fd", required_argument, NULL, ARG_TOKEN_FD },
                { "parallel", required_argument, NULL, ARG_PARALLEL },
                { "inspect", no_argument, NULL, ARG_INSPECT },
#ifdef MPOOL_TEST_HOOKS
                /* Only the test build (mpool-pull-test) has these, so that
                 * tests need not wait for real delays; the installed
                 * helper refuses them as unknown options. */
                { "test-backoff-msec", required_argument, NULL, ARG_TEST_BACKOFF_MSEC },
                { "test-low-speed-sec", required_argument, NULL, ARG_TEST_LOW_SPEED_SEC },
#endif
                {}
        };
        Arguments a = { .token_fd = -1, .parallel = PARALLEL_DEFAULT };
        unsigned fd;
        int c;

        opterr = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        exit(EXIT_SUCCESS);
                case ARG_ENDPOINT:
                        a.endpoint = optarg;
                        break;
                case ARG_REPO:
                        a.repo = optarg;
                        break;
                case ARG_REVISION:
                        a.revision = optarg;
                        break;
                case ARG_STAGING:
                        a.staging = optarg;
                        break;
                case ARG_TOKEN_FD:
                        if (parse_unsigned(optarg, 3, INT32_MAX, &fd) < 0)
                                return pull_error(e, PULL_INTERNAL, -EINVAL, "--token-fd= takes a descriptor above 2.");
                        a.token_fd = (int) fd;
                        break;
                case ARG_PARALLEL:
                        if (parse_unsigned(optarg, 1, PARALLEL_MAX, &a.parallel) < 0)
                                return pull_error(e, PULL_INTERNAL, -EINVAL, "--parallel= takes 1 to %u.",
                                                  PARALLEL_MAX);
                        break;
                case ARG_INSPECT:
                        a.inspect = true;
                        break;
                case ARG_TEST_BACKOFF_MSEC:
                        if (parse_unsigned(optarg, 1, 60000, &a.test_backoff_msec) < 0)
                                return pull_error(e, PULL_INTERNAL, -EINVAL, "--test-backoff-msec= takes 1 to 60000.");
                        break;
                case ARG_TEST_LOW_SPEED_SEC:
                        if (parse_unsigned(optarg, 1, 3600, &a.test_low_speed_sec) < 0)
                                return pull_error(e, PULL_INTERNAL, -EINVAL, "--test-low-speed-sec= takes 1 to 3600.");
                        break;
                default:
                        return pull_error(e, PULL_INTERNAL, -EINVAL, "Unknown option or missing value: %s",
                                          argv[optind - 1]);
                }
        if (optind < argc)
                return pull_error(e, PULL_INTERNAL, -EINVAL, "Unexpected argument.");
        if (!a.endpoint || !a.repo || !a.revision || (!a.staging && !a.inspect))
                return pull_error(e, PULL_INTERNAL, -EINVAL,
                                  "--endpoint=, --repo=, --revision= and --staging= are required.");

        _cleanup_free_ char *why = NULL;
        if (model_name_validate(a.repo, &why) < 0)
                return pull_error(e, PULL_INTERNAL, -EINVAL, "Invalid repository name: %s", why ?: "out of memory");
        if (hub_endpoint_validate(a.endpoint, e) < 0 || hub_revision_validate(a.revision, e) < 0)
                return -EINVAL;

        *ret = a;
        return 0;
}

/* The token comes through a descriptor the daemon opened for us, never
 * argv or the environment, which other users can read in /proc. One line
 * of visible ASCII; it is never written anywhere but in the header. */
static int read_token(int fd, char token[static TOKEN_MAX + 2], PullError *e) {
        size_t n = 0;

        for (;;) {
                ssize_t k = read(fd, token + n, TOKEN_MAX + 1 - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return pull_error(e, PULL_INTERNAL, -errno, "Cannot read the token from its descriptor: %m");
                }
                if (k == 0)
                        break;
                n += (size_t) k;
                if (n > TOKEN_MAX)
                        return pull_error(e, PULL_INTERNAL, -E2BIG, "The token is longer than %u bytes.", TOKEN_MAX);
        }
        (void) close(fd);
        if (n > 0 && token[n - 1] == '\n')
                n--;
        if (n > 0 && token[n - 1] == '\r')
                n--;
        token[n] = '\0';
        if (n == 0)
                return pull_error(e, PULL_INTERNAL, -EINVAL, "The token is empty.");
        for (size_t i = 0; i < n; i++)
                if (token[i] <= 0x20 || token[i] >= 0x7f)
                        return pull_error(e, PULL_INTERNAL, -EINVAL,
                                          "The token holds a character that is not visible ASCII.");
        return 0;
}

/* Dies with the daemon: a download nobody follows is not wanted. */
static int follow_parent(PullError *e) {
        pid_t parent = getppid();

        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                return pull_error(e, PULL_INTERNAL, -errno, "Cannot ask to die with the daemon: %m");
        /* The parent may have gone before the request took effect. */
        if (getppid() != parent)
                return pull_error(e, PULL_CANCELLED, -ESRCH, "The daemon has gone.");
        return 0;
}

static int setup_signals(int *ret_fd, PullError *e) {
        sigset_t mask;
        int fd;

        /* A daemon that closed our stdout makes write() fail with EPIPE. */
        (void) signal(SIGPIPE, SIG_IGN);
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return pull_error(e, PULL_INTERNAL, -errno, "Cannot block signals: %m");
        fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        if (fd < 0)
                return pull_error(e, PULL_INTERNAL, -errno, "Cannot watch signals: %m");
        *ret_fd = fd;
        return 0;
}

static int fetch_plan(Pull *p) {
        _cleanup_free_ char *url = NULL, *what = NULL;
        _cleanup_(json_buffer_free) JsonBuffer text = {};
        _cleanup_strv_free_ char **shards = NULL;
        _cleanup_free_ char *why = NULL;
        size_t length = 0;
        int r;

        if (hub_info_url(p->args.endpoint, p->args.repo, p->args.revision, &url) < 0 ||
            asprintf(&what, "%s at revision %s", p->args.repo, p->args.revision) < 0)
                return pull_error(&p->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        r = fetch_to_memory(p->fetcher, what, url, 0, UINT64_MAX, HUB_INFO_SIZE_MAX, &text, &length, &p->error);
        if (r < 0)
                return r;
        r = hub_info_parse(text.data, length, &p->info, &p->error);
        if (r < 0)
                return r;
        r = hub_plan(&p->info, p->args.repo, p->args.revision, &p->plan, &p->error);
        if (r < 0)
                return r;
        if (!p->plan.index)
                return 0;

        /* Sharded: the index says which shards, and is read with the
         * daemon's own reader, so that what is fetched is what the store
         * will load; every other *.safetensors a repository holds (other
         * precisions, other layouts) is left alone. */
        const PlanFile *index = p->plan.index;
        if (index->size > STORE_INDEX_SIZE_MAX)
                return pull_error(&p->error, PULL_PROTOCOL, -EFBIG, "%s is larger than %" PRIu64 " MiB.", index->name,
                                  STORE_INDEX_SIZE_MAX / (1024 * 1024));
        free(url);
        url = NULL;
        if (hub_file_url(p->args.endpoint, p->args.repo, p->info.commit, index->name, &url) < 0)
                return pull_error(&p->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        r = fetch_to_memory(p->fetcher, index->name, url, 0, index->size, index->size, &p->index, &p->index_length,
                            &p->error);
        if (r < 0)
                return r;
        if (index->have_sha256) {
                _cleanup_(sha256_freep) Sha256 *s = sha256_new();
                uint8_t digest[SHA256_SIZE];

                if (!s || sha256_update(s, p->index.data, p->index_length) < 0 || sha256_final(s, digest) < 0)
                        return pull_error(&p->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
                if (memcmp(digest, index->sha256, SHA256_SIZE) != 0)
                        return pull_error(&p->error, PULL_HASH_MISMATCH, -EBADMSG,
                                          "%s does not have the SHA-256 the hub published for it.", index->name);
        }
        r = store_index_parse(p->index.data, p->index_length, NULL, NULL, &shards, &why);
        if (r == -EBADMSG)
                return pull_error(&p->error, PULL_PROTOCOL, r, "%s is not a valid index: %s.", index->name,
                                  strempty(why));
        if (r < 0)
                return pull_error(&p->error, PULL_INTERNAL, r, "Cannot read %s: %m", index->name);
        return hub_plan_add_shards(&p->plan, &p->info, shards, &p->error);
}

static int print_plan(Pull *p) {
        int r;

        r = protocol_commit(p->info.commit);
        for (size_t i = 0; r >= 0 && i < p->plan.n_files; i++) {
                const PlanFile *f = &p->plan.files[i];
                char hex[SHA256_HEX_SIZE];

                if (!staging_name_is_allowed(f->name))
                        return pull_error(&p->error, PULL_PROTOCOL, -EBADMSG, "Refusing a file named %s.", f->name);
                if (f->have_sha256)
                        sha256_to_hex(f->sha256, hex);
                r = protocol_file(f->size, f->have_sha256 ? hex : NULL, f->name);
        }
        if (r >= 0)
                r = protocol_total(plan_total_bytes(&p->plan), p->plan.n_files);
        if (r < 0)
                return pull_error(&p->error, PULL_CANCELLED, r, "Cannot write to the daemon: %m");
        return 0;
}

static int inspect(Pull *p) {
        InspectTotals t = {};
        int r;

        for (size_t i = 0; i < p->plan.n_files; i++) {
                const PlanFile *f = &p->plan.files[i];
                _cleanup_(json_buffer_free) JsonBuffer prefix = {}, header = {};
                _cleanup_free_ char *url = NULL;
                uint64_t header_length;
                size_t length;

                if (!f->weights)
                        continue;
                if (f->size < SAFETENSORS_PREFIX_SIZE)
                        return pull_error(&p->error, PULL_PROTOCOL, -EBADMSG,
                                          "%s is too short to be a safetensors file.", f->name);
                if (hub_file_url(p->args.endpoint, p->args.repo, p->info.commit, f->name, &url) < 0)
                        return pull_error(&p->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
                r = fetch_to_memory(p->fetcher, f->name, url, 0, SAFETENSORS_PREFIX_SIZE, SAFETENSORS_PREFIX_SIZE,
                                    &prefix, &length, &p->error);
                if (r < 0)
                        return r;
                r = inspect_header_length(prefix.data, f->size, f->name, &header_length, &p->error);
                if (r < 0)
                        return r;
                if (header_length > 0) {
                        r = fetch_to_memory(p->fetcher, f->name, url, SAFETENSORS_PREFIX_SIZE, header_length,
                                            header_length, &header, &length, &p->error);
                        if (r < 0)
                                return r;
                }
                r = inspect_add_file(&t, header.data, header_length, f->size, f->name, &p->error);
                if (r < 0)
                        return r;
        }

        r = inspect_print(&t);
        if (r < 0)
                return pull_error(&p->error, PULL_CANCELLED, r, "Cannot write to the daemon: %m");
        return 0;
}

static int on_progress(void *userdata, PullError *e) {
        Pull *p = userdata;
        int r;

        /* Nobody reads what we do any more. */
        r = protocol_progress(p->done, p->total, false);
        if (r < 0)
                return pull_error(e, PULL_CANCELLED, r, "Cannot write to the daemon: %m");
        return 0;
}

static int download_open(void *userdata, PullError *e) {
        Download *d = userdata;
        uint64_t before = d->target.have;
        int r;

        r = target_open(&d->target, e);
        /* target_open() may find the .part otherwise than it was seen. */
        d->pull->done = d->pull->done - before + d->target.have;
        return r;
}

static uint64_t download_held(void *userdata) {
        return ((Download *) userdata)->target.have;
}

static int download_reset(void *userdata, PullError *e) {
        Download *d = userdata;

        d->pull->done -= d->target.have;
        return target_reset(&d->target, e);
}

static int download_write(void *userdata, const void *data, size_t n, PullError *e) {
        Download *d = userdata;
        uint64_t before = d->target.have;
        int r;

        r = target_write(&d->target, data, n, e);
        d->pull->done += d->target.have - before;
        return r;
}

static int download_finish(void *userdata, PullError *e) {
        Download *d = userdata;
        int r;

        r = target_finish(&d->target, e);
        if (r < 0)
                return r;
        /* Done with it: its descriptor is not kept for the rest of the run. */
        target_done(&d->target);
        d->target.complete = true;
        return 0;
}

static const FetchSink download_sink = {
        .open = download_open,
        .held = download_held,
        .reset = download_reset,
        .write = download_write,
        .finish = download_finish,
};

static int download(Pull *p) {
        size_t n = p->plan.n_files, n_requests = 0;
        _cleanup_free_ Download *downloads = calloc(n ?: 1, sizeof *downloads);
        _cleanup_free_ FetchRequest *requests = calloc(n ?: 1, sizeof *requests);
        _cleanup_free_ char **urls = calloc(n ?: 1, sizeof *urls);
        int r = 0;

        if (!downloads || !requests || !urls)
                return pull_error(&p->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        for (size_t i = 0; i < n; i++)
                downloads[i].target = (Target) { .fd = -1, .dir_fd = -1, .staging_fd = -1 };

        p->total = plan_total_bytes(&p->plan);
        p->done = 0;
        for (size_t i = 0; i < n && r >= 0; i++) {
                Download *d = &downloads[i];
                const PlanFile *f = &p->plan.files[i];

                d->pull = p;
                r = target_check(&d->target, p->staging_fd, f, &p->error);
                if (r < 0)
                        break;
                p->done += d->target.complete ? f->size : d->target.have;
                if (d->target.complete) {
                        target_done(&d->target);
                        continue;
                }
                if (f == p->plan.index) {
                        uint64_t before = d->target.have;

                        r = target_write_whole(&d->target, p->index.data, p->index_length, &p->error);
                        p->done += f->size - before;
                        target_done(&d->target);
                        continue;
                }
                if (hub_file_url(p->args.endpoint, p->args.repo, p->info.commit, f->name, &urls[i]) < 0)
                        r = pull_error(&p->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
                requests[n_requests++] = (FetchRequest) {
                        .what = f->name,
                        .url = urls[i],
                        .first = 0,
                        .length = f->size,
                        .sink = &download_sink,
                        .userdata = d,
                };
        }
        if (r >= 0) {
                (void) protocol_progress(p->done, p->total, true);
                r = fetch_run(p->fetcher, requests, n_requests, p->args.parallel, on_progress, p, &p->error);
        }
        for (size_t i = 0; i < n; i++) {
                target_done(&downloads[i].target);
                free(urls[i]);
        }
        if (r < 0)
                return r;
        (void) protocol_progress(p->total, p->total, true);
        return 0;
}

static int run(Pull *p, int argc, char *argv[]) {
        char token[TOKEN_MAX + 2];
        FetchOptions options = {
                .retries = FETCH_RETRIES_DEFAULT,
                .backoff_usec = FETCH_BACKOFF_USEC_DEFAULT,
                .low_speed_time_sec = FETCH_LOW_SPEED_TIME_DEFAULT,
                .connect_timeout_sec = FETCH_CONNECT_TIMEOUT_DEFAULT,
        };
        int r;

        r = parse_arguments(argc, argv, &p->args, &p->error);
        if (r < 0)
                return r;
        r = follow_parent(&p->error);
        if (r < 0)
                return r;
        r = setup_signals(&p->signal_fd, &p->error);
        if (r < 0)
                return r;

        if (p->args.test_backoff_msec > 0)
                options.backoff_usec = p->args.test_backoff_msec * USEC_PER_MSEC;
        if (p->args.test_low_speed_sec > 0)
                options.low_speed_time_sec = p->args.test_low_speed_sec;

        if (p->args.token_fd >= 0) {
                r = read_token(p->args.token_fd, token, &p->error);
                if (r < 0) {
                        explicit_bzero(token, sizeof token);
                        return r;
                }
                options.token = token;
        }
        r = fetcher_new(&options, p->signal_fd, &p->fetcher);
        explicit_bzero(token, sizeof token);
        if (r < 0)
                return pull_error(&p->error, PULL_INTERNAL, r, "Cannot set up libcurl: %m");

        if (!p->args.inspect) {
                r = staging_open(p->args.staging, &p->staging_fd, &p->error);
                if (r < 0)
                        return r;
        }

        r = fetch_plan(p);
        if (r < 0)
                return r;
        r = print_plan(p);
        if (r < 0)
                return r;
        if (p->args.inspect)
                return inspect(p);

        /* The daemon checks the free space for TOTAL, then says GO. */
        r = protocol_ready();
        if (r < 0)
                return pull_error(&p->error, PULL_CANCELLED, r, "Cannot write to the daemon: %m");
        r = protocol_wait_answer(STDIN_FILENO, p->signal_fd);
        if (r == -EBADMSG)
                return pull_error(&p->error, PULL_INTERNAL, r, "Expected GO or CANCEL on stdin.");
        if (r < 0)
                return pull_error(&p->error, PULL_INTERNAL, r, "Cannot read stdin: %m");
        if (r == PROTOCOL_CANCEL)
                return pull_error(&p->error, PULL_CANCELLED, -ECANCELED, "The download was cancelled.");

        return download(p);
}

int main(int argc, char *argv[]) {
        Pull p = { .signal_fd = -1, .staging_fd = -1 };
        int r;

        log_setup();
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                pull_error(&p.error, PULL_INTERNAL, -EIO, "Cannot initialize libcurl.");
                (void) protocol_failed(&p.error);
                return EXIT_FAILURE;
        }

        r = run(&p, argc, argv);
        if (r < 0)
                (void) protocol_failed(&p.error);
        else
                (void) protocol_done();

        pull_done(&p);
        curl_global_cleanup();
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
