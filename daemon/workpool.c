/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "time-util.h"
#include "workpool.h"

typedef enum MessageType {
        MESSAGE_PROGRESS,
        MESSAGE_DONE,
        MESSAGE_RETIRED,
} MessageType;

typedef struct Worker Worker;

/* Smaller than PIPE_BUF, so every write of one is atomic. */
typedef struct Message {
        WorkItem *item;           /* MESSAGE_RETIRED: NULL */
        Worker *worker;           /* MESSAGE_RETIRED */
        MessageType type;
        uint64_t done;
        uint64_t total;
} Message;

struct Worker {
        WorkPool *pool;
        pthread_t thread;
        void *state;              /* the owner's, handed to each item it runs */
        Worker *next;

        /* Under the pool's mutex. */
        bool busy;
        bool retire;              /* asked to stop once idle */
        uint64_t idle_since_usec; /* monotonic; when it last finished an item or started */
};

struct WorkPool {
        char *name;
        sd_event_source *pipe_source;
        sd_event_source *returned_source;   /* hands back items cancelled while queued */
        int read_fd;
        int write_fd;

        /* Shared with the workers, under mutex. */
        pthread_mutex_t mutex;
        pthread_cond_t wake;
        WorkItem *queue_head, *queue_tail;
        unsigned n_queued;
        bool stopping;

        Worker *workers;          /* linked here and unlinked by the loop only */

        /* The loop's alone. */
        unsigned n_threads;       /* workers not asked to retire */
        work_retired_t retired;
        void *retired_userdata;
        unsigned queue_max;
        unsigned n_in_flight;
        WorkItem *returned, *returned_tail; /* cancelled while queued, to hand back in order */
        unsigned n_returned;
};

static void post(WorkPool *p, WorkItem *item, Worker *worker, MessageType type, uint64_t done, uint64_t total) {
        Message message;
        ssize_t n;

        /* Zeroed whole, padding included: the bytes go through a pipe. */
        memset(&message, 0, sizeof message);
        message.item = item;
        message.worker = worker;
        message.type = type;
        message.done = done;
        message.total = total;

        /* The write end blocks: a slow loop slows the workers rather than
         * losing a message. Only EINTR is worth a retry. */
        do
                n = write(p->write_fd, &message, sizeof message);
        while (n < 0 && errno == EINTR);

        /* A lost DONE would leak the item and hang whoever waits for it;
         * there is no way to report it but to stop. */
        if (n != (ssize_t) sizeof message)
                abort();
}

void work_item_progress(WorkItem *item, uint64_t done, uint64_t total) {
        post(item->pool, item, NULL, MESSAGE_PROGRESS, done, total);
}

static WorkItem *dequeue_locked(WorkPool *p) {
        WorkItem *item = p->queue_head;

        if (!item)
                return NULL;
        p->queue_head = item->queue_next;
        if (!p->queue_head)
                p->queue_tail = NULL;
        item->queue_next = NULL;
        item->queued = false;
        p->n_queued--;
        return item;
}

static void *worker_main(void *userdata) {
        Worker *w = userdata;
        WorkPool *p = w->pool;

        for (;;) {
                WorkItem *item;

                pthread_mutex_lock(&p->mutex);
                while (!p->queue_head && !p->stopping && !w->retire)
                        pthread_cond_wait(&p->wake, &p->mutex);
                if (p->stopping || w->retire) {
                        bool retiring = !p->stopping;

                        pthread_mutex_unlock(&p->mutex);
                        if (retiring)
                                post(p, NULL, w, MESSAGE_RETIRED, 0, 0);
                        return NULL;
                }
                item = dequeue_locked(p);
                w->busy = true;
                pthread_mutex_unlock(&p->mutex);

                item->worker_state = w->state;
                item->run(item);

                pthread_mutex_lock(&p->mutex);
                w->busy = false;
                w->idle_since_usec = now_monotonic_usec();
                pthread_mutex_unlock(&p->mutex);
                post(p, item, NULL, MESSAGE_DONE, 0, 0);
        }
}

static void hand_back(WorkPool *p, WorkItem *item, bool ran) {
        assert(p->n_in_flight > 0);
        p->n_in_flight--;
        item->pool = NULL;
        item->done(item, ran);
}

/* A worker that stopped: joined (it posted its last message and only
 * returns, so this waits for nothing) and its state handed to the owner. */
static void worker_reap(WorkPool *p, Worker *w) {
        Worker **link = &p->workers;

        for (; *link != w; link = &(*link)->next)
                assert(*link);
        pthread_mutex_lock(&p->mutex);
        *link = w->next;
        pthread_mutex_unlock(&p->mutex);

        pthread_join(w->thread, NULL);
        if (p->retired)
                p->retired(w->state, p->retired_userdata);
        free(w);
}

static int on_pipe(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        WorkPool *p = userdata;

        for (;;) {
                Message message;
                ssize_t n = read(fd, &message, sizeof message);

                /* A pipe that cannot be read loses completions for good:
                 * every load would hang, and shutdown with them. As on the
                 * writing side, there is no way on but to stop. */
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        log_error_errno(errno, "Cannot read from the %s workers' pipe: %m", p->name);
                        abort();
                }
                if (n != (ssize_t) sizeof message) {
                        log_error("Short read from the %s workers' pipe (%zd bytes).", p->name, n);
                        abort();
                }

                switch (message.type) {
                case MESSAGE_PROGRESS:
                        if (message.item->progress)
                                message.item->progress(message.item, message.done, message.total);
                        break;
                case MESSAGE_DONE:
                        hand_back(p, message.item, true);
                        break;
                case MESSAGE_RETIRED:
                        worker_reap(p, message.worker);
                        break;
                }
        }
}

static int on_returned(sd_event_source *s, void *userdata) {
        WorkPool *p = userdata;

        while (p->returned) {
                WorkItem *item = p->returned;

                p->returned = item->queue_next;
                if (!p->returned)
                        p->returned_tail = NULL;
                item->queue_next = NULL;
                p->n_returned--;
                hand_back(p, item, false);
        }
        return sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

int workpool_new(sd_event *event, const char *name, unsigned n_threads, unsigned queue_max, WorkPool **ret) {
        WorkPool *p;
        int fds[2], r;

        assert(event);
        assert(name);
        assert(ret);

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->read_fd = p->write_fd = -1;
        p->queue_max = queue_max;
        pthread_mutex_init(&p->mutex, NULL);
        pthread_cond_init(&p->wake, NULL);

        p->name = strdup(name);
        if (!p->name) {
                r = -ENOMEM;
                goto fail;
        }
        if (pipe2(fds, O_CLOEXEC) < 0) {
                r = -errno;
                goto fail;
        }
        p->read_fd = fds[0];
        p->write_fd = fds[1];
        if (fcntl(p->read_fd, F_SETFL, O_NONBLOCK) < 0) {
                r = -errno;
                goto fail;
        }

        r = sd_event_add_io(event, &p->pipe_source, p->read_fd, EPOLLIN, on_pipe, p);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(p->pipe_source, p->name);
        r = sd_event_add_defer(event, &p->returned_source, on_returned, p);
        if (r >= 0)
                r = sd_event_source_set_enabled(p->returned_source, SD_EVENT_OFF);
        if (r < 0)
                goto fail;

        while (p->n_threads < n_threads) {
                r = workpool_add_worker(p, NULL);
                if (r < 0)
                        goto fail;
        }

        *ret = p;
        return 0;

fail:
        workpool_free(p);
        return r;
}

void workpool_set_retired(WorkPool *p, work_retired_t retired, void *userdata) {
        p->retired = retired;
        p->retired_userdata = userdata;
}

int workpool_add_worker(WorkPool *p, void *state) {
        sigset_t all, saved;
        Worker *w;
        int r;

        w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        *w = (Worker) {
                .pool = p,
                .state = state,
                .idle_since_usec = now_monotonic_usec(),
        };

        /* Signals belong to the loop (sd-event's signalfd), never to a
         * worker; but for the faults a worker raises itself, which blocked
         * would kill the process outright instead of reaching their handler
         * (sigbus.h). */
        sigfillset(&all);
        sigdelset(&all, SIGBUS);
        sigdelset(&all, SIGSEGV);
        sigdelset(&all, SIGFPE);
        sigdelset(&all, SIGILL);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = -pthread_create(&w->thread, NULL, worker_main, w);
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r < 0) {
                free(w);
                return r;
        }

        pthread_mutex_lock(&p->mutex);
        w->next = p->workers;
        p->workers = w;
        pthread_mutex_unlock(&p->mutex);
        p->n_threads++;
        return 0;
}

int workpool_retire_worker(WorkPool *p) {
        Worker *oldest = NULL;

        pthread_mutex_lock(&p->mutex);
        for (Worker *w = p->workers; w; w = w->next)
                if (!w->busy && !w->retire && (!oldest || w->idle_since_usec < oldest->idle_since_usec))
                        oldest = w;
        if (oldest) {
                oldest->retire = true;
                pthread_cond_broadcast(&p->wake);
        }
        pthread_mutex_unlock(&p->mutex);

        if (!oldest)
                return -EAGAIN;
        p->n_threads--;
        return 0;
}

WorkPool *workpool_free(WorkPool *p) {
        Worker *w;

        if (!p)
                return NULL;

        /* Workers still running an item would post into a closed pipe. */
        assert(p->n_in_flight == 0 || !p->workers);

        pthread_mutex_lock(&p->mutex);
        p->stopping = true;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mutex);

        /* Workers retired whose message was not read yet are joined here too;
         * every state goes back to the owner. */
        while ((w = p->workers)) {
                p->workers = w->next;
                pthread_join(w->thread, NULL);
                if (p->retired)
                        p->retired(w->state, p->retired_userdata);
                free(w);
        }

        sd_event_source_disable_unref(p->pipe_source);
        sd_event_source_disable_unref(p->returned_source);
        if (p->read_fd >= 0)
                close(p->read_fd);
        if (p->write_fd >= 0)
                close(p->write_fd);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mutex);
        free(p->name);
        free(p);
        return NULL;
}

int workpool_submit(WorkPool *p, WorkItem *item) {
        assert(p);
        assert(item);
        assert(item->run);
        assert(item->done);
        assert(!item->pool);

        if (workpool_full(p))
                return -EBUSY;

        atomic_init(&item->cancelled, false);
        item->pool = p;
        item->queue_next = NULL;
        item->queued = true;
        p->n_in_flight++;

        pthread_mutex_lock(&p->mutex);
        if (p->queue_tail)
                p->queue_tail->queue_next = item;
        else
                p->queue_head = item;
        p->queue_tail = item;
        p->n_queued++;
        pthread_cond_signal(&p->wake);
        pthread_mutex_unlock(&p->mutex);
        return 0;
}

/* Takes a queued item off the queue into the list handed back from the
 * loop's next turn. false when a worker has it already. */
static bool take_queued(WorkPool *p, WorkItem *item) {
        bool taken = false;

        /* Handed back from the loop's next turn. Should the defer source
         * fail to arm, the item stays queued: a worker then dequeues it,
         * its run function sees the flag at once, and it comes back
         * through the pipe instead. */
        if (sd_event_source_set_enabled(p->returned_source, SD_EVENT_ONESHOT) < 0)
                return false;

        pthread_mutex_lock(&p->mutex);
        if (item->queued) {
                WorkItem **link = &p->queue_head, *previous = NULL;

                for (; *link != item; previous = *link, link = &(*link)->queue_next)
                        assert(*link);
                *link = item->queue_next;
                if (p->queue_tail == item)
                        p->queue_tail = previous;
                item->queue_next = NULL;
                item->queued = false;
                p->n_queued--;
                taken = true;
        }
        pthread_mutex_unlock(&p->mutex);

        if (!taken)
                return false;

        if (p->returned_tail)
                p->returned_tail->queue_next = item;
        else
                p->returned = item;
        p->returned_tail = item;
        p->n_returned++;
        return true;
}

void workpool_cancel(WorkPool *p, WorkItem *item) {
        assert(p);
        assert(item);
        assert(item->pool == p);

        atomic_store(&item->cancelled, true);
        (void) take_queued(p, item);   /* running: its run function sees the flag */
}

bool workpool_cancel_queued(WorkPool *p, WorkItem *item) {
        assert(p);
        assert(item);
        assert(item->pool == p);

        if (!take_queued(p, item))
                return false;
        atomic_store(&item->cancelled, true);
        return true;
}

unsigned workpool_in_flight(const WorkPool *p) {
        return p->n_in_flight;
}

bool workpool_full(const WorkPool *p) {
        /* Items in flight beyond the threads are queued (or about to be
         * dequeued): counted from the loop's side without taking the lock.
         * Items cancelled while queued take no place any more. */
        return p->n_in_flight - p->n_returned >= p->n_threads + p->queue_max;
}

unsigned workpool_threads(const WorkPool *p) {
        return p->n_threads;
}

unsigned workpool_waiting(const WorkPool *p) {
        unsigned pending = p->n_in_flight - p->n_returned;

        return pending > p->n_threads ? pending - p->n_threads : 0;
}
