/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fetch.h"
#include "log.h"
#include "mpool-bus.h"
#include "time-util.h"

struct Fetcher {
        FetchOptions options;
        CURLM *multi;
        struct curl_slist *headers;     /* holds the token: wiped before it is freed */
        int signal_fd;
};

typedef enum JobState {
        JOB_QUEUED,
        JOB_RUNNING,
        JOB_WAITING,                    /* for its next attempt */
        JOB_DONE,
} JobState;

typedef struct Job {
        const FetchRequest *request;
        Fetcher *fetcher;
        PullError *error;
        fetch_progress_t progress;
        void *progress_userdata;

        JobState state;
        CURL *easy;
        char range[64];
        unsigned failures;              /* in a row, without a byte of progress */
        uint64_t retry_at;

        /* Of the attempt under way. */
        uint64_t from;                  /* the first byte asked for */
        uint64_t range_start;           /* what Content-Range said, UINT64_MAX: nothing */
        uint64_t skip;                  /* bytes of the body before the wanted range */
        bool started;                   /* the body of the final response has begun */
        bool progressed;
        bool failed;                    /* the sink failed: the failure is recorded */
        bool enough;                    /* the sink has all it wants */
} Job;

static void wipe_headers(struct curl_slist *l) {
        for (; l; l = l->next)
                explicit_bzero(l->data, strlen(l->data));
}

Fetcher *fetcher_free(Fetcher *f) {
        if (!f)
                return NULL;
        if (f->multi)
                curl_multi_cleanup(f->multi);
        wipe_headers(f->headers);
        curl_slist_free_all(f->headers);
        free(f);
        return NULL;
}

int fetcher_new(const FetchOptions *options, int signal_fd, Fetcher **ret) {
        Fetcher *f = calloc(1, sizeof *f);

        if (!f)
                return -ENOMEM;
        f->options = *options;
        f->options.token = NULL;        /* kept in the header list only */
        f->signal_fd = signal_fd;
        f->multi = curl_multi_init();
        if (!f->multi) {
                fetcher_free(f);
                return -ENOMEM;
        }
        if (options->token) {
                _cleanup_free_ char *header = NULL;
                struct curl_slist *l;
                int n = asprintf(&header, "Authorization: Bearer %s", options->token);

                if (n < 0) {
                        fetcher_free(f);
                        return -ENOMEM;
                }
                l = curl_slist_append(NULL, header);
                explicit_bzero(header, (size_t) n);
                if (!l) {
                        fetcher_free(f);
                        return -ENOMEM;
                }
                f->headers = l;
        }
        *ret = f;
        return 0;
}

/* 1 when a signal asks us to stop. */
static int check_cancel(Fetcher *f) {
        struct pollfd pfd = { .fd = f->signal_fd, .events = POLLIN };

        if (poll(&pfd, 1, 0) < 0)
                return errno == EINTR ? 0 : -errno;
        return !!(pfd.revents & POLLIN);
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata) {
        Job *j = userdata;
        size_t n = size * nmemb;
        char line[256];
        unsigned long long start;

        /* Each response of a redirect chain starts with its status line. */
        if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
                j->range_start = UINT64_MAX;
                return n;
        }
        if (n < strlen("content-range:") || strncasecmp(data, "content-range:", strlen("content-range:")) != 0)
                return n;
        memcpy(line, data, MIN(n, sizeof line - 1));
        line[MIN(n, sizeof line - 1)] = '\0';
        if (sscanf(line + strlen("content-range:"), " bytes %llu-", &start) == 1)
                j->range_start = start;
        return n;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata) {
        Job *j = userdata;
        const FetchRequest *q = j->request;
        size_t n = size * nmemb;
        int r;

        if (!j->started) {
                long code = 0;

                (void) curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
                if (code == 206) {
                        if (j->range_start != j->from) {
                                pull_error(j->error, PULL_PROTOCOL, -EBADMSG,
                                           "The server answered a request for %s with another range than asked.",
                                           q->what);
                                j->failed = true;
                                return 0;
                        }
                } else if (code == 200) {
                        /* Range ignored: the whole resource comes. */
                        if (j->from > 0) {
                                r = q->sink->reset(q->userdata, j->error);
                                if (r < 0) {
                                        j->failed = true;
                                        return 0;
                                }
                        }
                        j->skip = q->first;
                } else {
                        pull_error(j->error, PULL_PROTOCOL, -EBADMSG,
                                   "The server answered a request for %s with HTTP status %ld.", q->what, code);
                        j->failed = true;
                        return 0;
                }
                j->started = true;
        }

        if (j->skip > 0) {
                size_t k = (size_t) MIN((uint64_t) n, j->skip);

                j->skip -= k;
                data += k;
                if (k == n)
                        return size * nmemb;
                n -= k;
        }

        r = q->sink->write(q->userdata, data, n, j->error);
        if (r < 0) {
                j->failed = true;
                return 0;
        }
        j->progressed = true;
        if (j->progress && j->progress(j->progress_userdata, j->error) < 0) {
                j->failed = true;
                return 0;
        }
        if (r > 0) {
                j->enough = true;
                return 0;
        }
        return size * nmemb;
}

static int job_start(Job *j) {
        Fetcher *f = j->fetcher;
        const FetchRequest *q = j->request;
        uint64_t held = q->sink->held(q->userdata);
        CURL *e;

        j->from = q->first + held;
        j->range_start = UINT64_MAX;
        j->skip = 0;
        j->started = j->progressed = j->enough = false;

        if (q->exact_range && q->length != UINT64_MAX && q->length > 0)
                snprintf(j->range, sizeof j->range, "%" PRIu64 "-%" PRIu64, j->from, q->first + q->length - 1);
        else if (j->from > 0)
                snprintf(j->range, sizeof j->range, "%" PRIu64 "-", j->from);
        else
                j->range[0] = '\0';

        e = curl_easy_init();
        if (!e)
                return -ENOMEM;
        j->easy = e;

        if (curl_easy_setopt(e, CURLOPT_URL, q->url) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_PRIVATE, j) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            /* Neither the first URL nor any redirect may leave HTTP(S):
             * file://, for one, would read local files. */
            curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_MAXREDIRS, FETCH_MAX_REDIRECTS) != CURLE_OK ||
            /* The default, said aloud: the token stays with the host it was
             * given for. */
            curl_easy_setopt(e, CURLOPT_UNRESTRICTED_AUTH, 0L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, f->options.connect_timeout_sec) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, FETCH_LOW_SPEED_LIMIT) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, f->options.low_speed_time_sec) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_USERAGENT, "mpool-pull/" MPOOL_VERSION) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_HEADERDATA, j) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_WRITEDATA, j) != CURLE_OK ||
            (f->headers && curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers) != CURLE_OK) ||
            (j->range[0] && curl_easy_setopt(e, CURLOPT_RANGE, j->range) != CURLE_OK))
                return -ENOMEM;

        if (curl_multi_add_handle(f->multi, e) != CURLM_OK)
                return -ENOMEM;
        j->state = JOB_RUNNING;
        return 0;
}

/* Starts the next attempt, or finishes at once when the sink holds all it
 * wants already (a .part that is whole, a transfer dropped after its last
 * byte). */
static int job_begin(Job *j, PullError *e) {
        const FetchRequest *q = j->request;
        int r;

        if (q->length != UINT64_MAX && q->sink->held(q->userdata) >= q->length) {
                r = q->sink->finish(q->userdata, e);
                if (r < 0)
                        return r;
                j->state = JOB_DONE;
                return 0;
        }
        r = job_start(j);
        if (r == -ENOMEM)
                return pull_error(e, PULL_INTERNAL, r, "Cannot set up a transfer: out of memory.");
        return r;
}

static void job_stop(Job *j) {
        if (!j->easy)
                return;
        (void) curl_multi_remove_handle(j->fetcher->multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
}

/* A failure that may pass: try again later, or give up with kind. */
static int job_retry(Job *j, PullFailure kind, const char *reason) {
        Fetcher *f = j->fetcher;
        uint64_t delay;

        if (j->progressed)
                j->failures = 0;
        if (j->failures >= f->options.retries)
                return pull_error(j->error, kind, -EIO, "Cannot fetch %s: %s (tried %u times).", j->request->what,
                                  reason, j->failures + 1);
        delay = f->options.backoff_usec;
        for (unsigned i = 0; i < j->failures && delay < FETCH_BACKOFF_USEC_MAX; i++)
                delay *= 2;
        delay = MIN(delay, FETCH_BACKOFF_USEC_MAX);
        j->failures++;
        log_debug("Fetching %s failed (%s), trying again in %" PRIu64 " ms.", j->request->what, reason,
                  delay / USEC_PER_MSEC);
        j->retry_at = now_monotonic_usec() + delay;
        j->state = JOB_WAITING;
        return 0;
}

static int job_http_error(Job *j, long code) {
        const FetchRequest *q = j->request;
        char reason[64];

        if (code == 404 || code == 410)
                return pull_error(j->error, PULL_NOT_FOUND, -ENOENT, "%s was not found on the hub (HTTP %ld).",
                                  q->what, code);
        if (code == 401 || code == 403)
                return pull_error(j->error, PULL_UNAUTHORIZED, -EACCES,
                                  "Access to %s was refused (HTTP %ld): the repository is gated or private, or "
                                  "the token is missing or not allowed to read it.",
                                  q->what, code);
        snprintf(reason, sizeof reason, "HTTP status %ld", code);
        if (code == 416 && j->from > 0) {
                /* What we hold does not fit the file any more: start over. */
                int r = q->sink->reset(q->userdata, j->error);
                if (r < 0)
                        return r;
                return job_retry(j, PULL_PROTOCOL, reason);
        }
        if (code == 408 || code == 429 || code >= 500)
                return job_retry(j, PULL_NETWORK, reason);
        return pull_error(j->error, PULL_PROTOCOL, -EBADMSG, "Cannot fetch %s: the server answered with %s.",
                          q->what, reason);
}

static int job_finished(Job *j, CURLcode result) {
        const FetchRequest *q = j->request;
        long code = 0;
        int r;

        (void) curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
        job_stop(j);

        if (j->failed)
                return -EBADMSG;        /* recorded by the sink or on_write() */
        if (j->enough)
                result = CURLE_OK;

        switch (result) {
        case CURLE_OK:
                if (!j->enough && code != 200 && code != 206)
                        return pull_error(j->error, PULL_PROTOCOL, -EBADMSG,
                                          "The server answered a request for %s with HTTP status %ld.", q->what,
                                          code);
                r = q->sink->finish(q->userdata, j->error);
                if (r < 0)
                        return r;
                j->state = JOB_DONE;
                return 0;

        case CURLE_HTTP_RETURNED_ERROR:
                return job_http_error(j, code);

        case CURLE_UNSUPPORTED_PROTOCOL:
                return pull_error(j->error, PULL_PROTOCOL, -EPROTONOSUPPORT,
                                  "Fetching %s was redirected to a URL that is neither http nor https.", q->what);
        case CURLE_TOO_MANY_REDIRECTS:
                return pull_error(j->error, PULL_PROTOCOL, -ELOOP,
                                  "Fetching %s was redirected more than %ld times.", q->what, FETCH_MAX_REDIRECTS);
        case CURLE_URL_MALFORMAT:
                return pull_error(j->error, PULL_PROTOCOL, -EINVAL, "Fetching %s was redirected to a bad URL.",
                                  q->what);
        case CURLE_OUT_OF_MEMORY:
                return pull_error(j->error, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
                return pull_error(j->error, PULL_NETWORK, -EPERM, "Cannot fetch %s: %s.", q->what,
                                  curl_easy_strerror(result));
        default:
                /* Refused, reset or dropped connections, timeouts, a name
                 * that does not resolve yet: the network may come back. */
                return job_retry(j, PULL_NETWORK, curl_easy_strerror(result));
        }
}

static Job *job_from_easy(CURL *easy) {
        char *p = NULL;

        (void) curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p);
        return (Job *) p;
}

int fetch_run(Fetcher *f, const FetchRequest *requests, size_t n, unsigned parallel, fetch_progress_t progress,
              void *userdata, PullError *e) {
        _cleanup_free_ Job *jobs = calloc(n ?: 1, sizeof *jobs);
        size_t next = 0, done = 0, active = 0;
        int r = 0;

        assert(parallel > 0);
        if (!jobs)
                return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        for (size_t i = 0; i < n; i++)
                jobs[i] = (Job) {
                        .request = &requests[i],
                        .fetcher = f,
                        .error = e,
                        .progress = progress,
                        .progress_userdata = userdata,
                };

        while (done < n) {
                uint64_t now = now_monotonic_usec(), wake = UINT64_MAX;
                struct curl_waitfd extra = { .fd = f->signal_fd, .events = CURL_WAIT_POLLIN };
                int running, queued;
                CURLMsg *m;

                /* New transfers, and retries that are due. */
                for (size_t i = 0; i < n && r >= 0; i++) {
                        Job *j = &jobs[i];

                        if (j->state == JOB_WAITING && j->retry_at <= now) {
                                r = job_begin(j, e);
                                if (r >= 0 && j->state == JOB_DONE) {
                                        done++;
                                        active--;
                                }
                        } else if (j->state == JOB_WAITING)
                                wake = MIN(wake, j->retry_at);
                }
                while (r >= 0 && next < n && active < parallel) {
                        Job *j = &jobs[next++];
                        const FetchRequest *q = j->request;

                        if (q->sink->open) {
                                r = q->sink->open(q->userdata, e);
                                if (r < 0)
                                        break;
                        }
                        r = job_begin(j, e);
                        if (r >= 0 && j->state == JOB_DONE)
                                done++;
                        else
                                active++;
                }
                if (r < 0 || done >= n)
                        break;

                if (curl_multi_perform(f->multi, &running) != CURLM_OK) {
                        r = pull_error(e, PULL_INTERNAL, -EIO, "The transfers failed in libcurl.");
                        break;
                }
                while (r >= 0 && (m = curl_multi_info_read(f->multi, &queued))) {
                        Job *j;

                        if (m->msg != CURLMSG_DONE)
                                continue;
                        j = job_from_easy(m->easy_handle);
                        r = job_finished(j, m->data.result);
                        if (r >= 0 && j->state == JOB_DONE) {
                                done++;
                                active--;
                        }
                }
                if (r < 0 || done >= n)
                        break;
                /* A retry may have become due, or a slot free: no waiting then. */
                if (active < parallel && next < n)
                        continue;

                now = now_monotonic_usec();
                int timeout_ms = wake == UINT64_MAX ? 1000 :
                                 wake <= now ? 0 : (int) MIN((wake - now + 999) / 1000, (uint64_t) 1000);
                if (curl_multi_poll(f->multi, &extra, 1, timeout_ms, NULL) != CURLM_OK) {
                        r = pull_error(e, PULL_INTERNAL, -EIO, "Waiting for the transfers failed in libcurl.");
                        break;
                }
                r = check_cancel(f);
                if (r > 0)
                        r = pull_error(e, PULL_CANCELLED, -ECANCELED, "The download was cancelled.");
                if (r < 0)
                        break;
                /* Also while no byte comes (at least once a second): the
                 * last bytes before a stall were perhaps not reported yet. */
                if (progress) {
                        r = progress(userdata, e);
                        if (r < 0)
                                break;
                }
        }

        for (size_t i = 0; i < n; i++)
                job_stop(&jobs[i]);
        return r < 0 ? r : 0;
}

typedef struct MemorySink {
        const char *what;
        JsonBuffer buffer;
        size_t length;
        uint64_t want;                  /* UINT64_MAX: all there is, up to max */
        uint64_t max;
} MemorySink;

static uint64_t memory_held(void *userdata) {
        return ((MemorySink *) userdata)->length;
}

static int memory_reset(void *userdata, PullError *e) {
        ((MemorySink *) userdata)->length = 0;
        return 0;
}

static int memory_write(void *userdata, const void *data, size_t n, PullError *e) {
        MemorySink *s = userdata;
        uint64_t limit = s->want != UINT64_MAX ? s->want : s->max;
        size_t take = (size_t) MIN((uint64_t) n, limit - s->length);

        if (s->want == UINT64_MAX && n > limit - s->length)
                return pull_error(e, PULL_PROTOCOL, -EFBIG, "%s is larger than %" PRIu64 " bytes, the most accepted.",
                                  s->what, s->max);
        if (s->length + take > s->buffer.size) {
                size_t size = MAX(s->buffer.size, (size_t) 64 * 1024);

                while (size < s->length + take)
                        size = size > limit / 2 ? (size_t) limit : size * 2;
                if (json_buffer_resize(&s->buffer, size) < 0)
                        return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        }
        memcpy((uint8_t *) s->buffer.data + s->length, data, take);
        s->length += take;
        return s->want != UINT64_MAX && s->length >= s->want ? 1 : 0;
}

static int memory_finish(void *userdata, PullError *e) {
        MemorySink *s = userdata;

        if (s->want != UINT64_MAX && s->length != s->want)
                return pull_error(e, PULL_SIZE_MISMATCH, -EBADMSG,
                                  "The server sent %zu bytes of %s where %" PRIu64 " were asked for.", s->length,
                                  s->what, s->want);
        return 0;
}

static const FetchSink memory_sink = {
        .held = memory_held,
        .reset = memory_reset,
        .write = memory_write,
        .finish = memory_finish,
};

int fetch_to_memory(Fetcher *f, const char *what, const char *url, uint64_t first, uint64_t length, uint64_t max,
                    JsonBuffer *ret, size_t *ret_length, PullError *e) {
        MemorySink s = {
                .what = what,
                .want = length,
                .max = max,
        };
        FetchRequest q = {
                .what = what,
                .url = url,
                .first = first,
                .length = length,
                .exact_range = length != UINT64_MAX,
                .sink = &memory_sink,
                .userdata = &s,
        };
        int r;

        assert(length == UINT64_MAX || length <= max);
        r = fetch_run(f, &q, 1, 1, NULL, NULL, e);
        if (r < 0) {
                json_buffer_free(&s.buffer);
                return r;
        }
        if (!s.buffer.data && json_buffer_resize(&s.buffer, 1) < 0)
                return pull_error(e, PULL_INTERNAL, -ENOMEM, "Out of memory.");
        *ret = s.buffer;
        *ret_length = s.length;
        return 0;
}
