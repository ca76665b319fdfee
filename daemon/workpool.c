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
#include "workpool.h"

typedef enum MessageType {
        MESSAGE_PROGRESS,
        MESSAGE_DONE,
} MessageType;

/* Smaller than PIPE_BUF, so every write of one is atomic. */
typedef struct Message {
        WorkItem *item;
        MessageType type;
        uint64_t done;
        uint64_t total;
} Message;

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

        /* The loop's alone. */
        pthread_t *threads;
        unsigned n_threads;
        unsigned queue_max;
        unsigned n_in_flight;
        WorkItem *returned, *returned_tail; /* cancelled while queued, to hand back in order */
        unsigned n_returned;
};

static void post(WorkPool *p, WorkItem *item, MessageType type, uint64_t done, uint64_t total) {
        Message message;
        ssize_t n;

        /* Zeroed whole, padding included: the bytes go through a pipe. */
        memset(&message, 0, sizeof message);
        message.item = item;
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
        post(item->pool, item, MESSAGE_PROGRESS, done, total);
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

static void *worker(void *userdata) {
        WorkPool *p = userdata;

        for (;;) {
                WorkItem *item;

                pthread_mutex_lock(&p->mutex);
                while (!p->queue_head && !p->stopping)
                        pthread_cond_wait(&p->wake, &p->mutex);
                if (p->stopping) {
                        pthread_mutex_unlock(&p->mutex);
                        return NULL;
                }
                item = dequeue_locked(p);
                pthread_mutex_unlock(&p->mutex);

                item->run(item);
                post(p, item, MESSAGE_DONE, 0, 0);
        }
}

static void hand_back(WorkPool *p, WorkItem *item, bool ran) {
        assert(p->n_in_flight > 0);
        p->n_in_flight--;
        item->pool = NULL;
        item->done(item, ran);
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

                if (message.type == MESSAGE_PROGRESS) {
                        if (message.item->progress)
                                message.item->progress(message.item, message.done, message.total);
                } else
                        hand_back(p, message.item, true);
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
        sigset_t all, saved;
        int fds[2], r;

        assert(event);
        assert(name);
        assert(n_threads >= 1);
        assert(ret);

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->read_fd = p->write_fd = -1;
        p->queue_max = queue_max;
        pthread_mutex_init(&p->mutex, NULL);
        pthread_cond_init(&p->wake, NULL);

        p->name = strdup(name);
        p->threads = calloc(n_threads, sizeof *p->threads);
        if (!p->name || !p->threads) {
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

        /* Signals belong to the loop (sd-event's signalfd), never to a worker. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &saved);
        for (; p->n_threads < n_threads; p->n_threads++) {
                r = -pthread_create(&p->threads[p->n_threads], NULL, worker, p);
                if (r < 0)
                        break;
        }
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r < 0)
                goto fail;

        *ret = p;
        return 0;

fail:
        workpool_free(p);
        return r;
}

WorkPool *workpool_free(WorkPool *p) {
        if (!p)
                return NULL;

        /* Workers still running an item would post into a closed pipe. */
        assert(p->n_in_flight == 0 || p->n_threads == 0);

        pthread_mutex_lock(&p->mutex);
        p->stopping = true;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mutex);
        for (unsigned i = 0; i < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);

        sd_event_source_disable_unref(p->pipe_source);
        sd_event_source_disable_unref(p->returned_source);
        if (p->read_fd >= 0)
                close(p->read_fd);
        if (p->write_fd >= 0)
                close(p->write_fd);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mutex);
        free(p->threads);
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

void workpool_cancel(WorkPool *p, WorkItem *item) {
        bool taken = false;

        assert(p);
        assert(item);
        assert(item->pool == p);

        atomic_store(&item->cancelled, true);

        /* Handed back from the loop's next turn. Should the defer source
         * fail to arm, the item stays queued: a worker then dequeues it,
         * its run function sees the flag at once, and it comes back
         * through the pipe instead. */
        if (sd_event_source_set_enabled(p->returned_source, SD_EVENT_ONESHOT) < 0)
                return;

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
                return;   /* running: its run function sees the flag */

        if (p->returned_tail)
                p->returned_tail->queue_next = item;
        else
                p->returned = item;
        p->returned_tail = item;
        p->n_returned++;
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
