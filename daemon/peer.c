/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "peer.h"

typedef struct Hold {
        char *model_name;
        unsigned count;
} Hold;

struct Peer {
        char *name;
        Hold *holds;
        size_t n_holds;
        unsigned n_total;    /* sum of the counts */
        Peer *next;
};

static Peer *peer_find(const Manager *m, const char *name) {
        for (Peer *p = m->peers; p; p = p->next)
                if (strcmp(p->name, name) == 0)
                        return p;
        return NULL;
}

static void peer_free(Peer *p) {
        if (!p)
                return;
        for (size_t i = 0; i < p->n_holds; i++)
                free(p->holds[i].model_name);
        free(p->holds);
        free(p->name);
        free(p);
}

static void peer_unlink(Manager *m, Peer *p) {
        for (Peer **link = &m->peers; *link; link = &(*link)->next)
                if (*link == p) {
                        *link = p->next;
                        m->n_peers--;
                        return;
                }
}

static Hold *hold_find(Peer *p, const char *model_name) {
        for (size_t i = 0; p && i < p->n_holds; i++)
                if (strcmp(p->holds[i].model_name, model_name) == 0)
                        return &p->holds[i];
        return NULL;
}

int peer_add_hold(Manager *m, const char *peer_name, const char *model_name) {
        _cleanup_free_ char *model_copy = NULL;
        Peer *p, *created = NULL;
        Hold *hold, *holds;

        assert(m);
        assert(peer_name);
        assert(model_name);

        p = peer_find(m, peer_name);
        if (p && p->n_total >= HOLDS_PER_PEER_MAX)
                return -EBUSY;

        hold = hold_find(p, model_name);
        if (hold) {
                hold->count++;
                p->n_total++;
                return 0;
        }

        if (!p) {
                if (m->n_peers >= PEERS_MAX)
                        return -EUSERS;
                created = calloc(1, sizeof *created);
                if (!created)
                        return -ENOMEM;
                created->name = strdup(peer_name);
                if (!created->name) {
                        peer_free(created);
                        return -ENOMEM;
                }
                p = created;
        }

        /* Everything that can fail happens before the peer is linked, so a
         * failure leaves no holdless peer behind. */
        model_copy = strdup(model_name);
        holds = model_copy ? reallocarray(p->holds, p->n_holds + 1, sizeof *holds) : NULL;
        if (!holds) {
                peer_free(created);
                return -ENOMEM;
        }
        p->holds = holds;
        p->holds[p->n_holds++] = (Hold) { .model_name = TAKE_PTR(model_copy), .count = 1 };
        p->n_total++;

        if (created) {
                created->next = m->peers;
                m->peers = created;
                m->n_peers++;
        }
        return 0;
}

int peer_remove_hold(Manager *m, const char *peer_name, const char *model_name) {
        Peer *p = peer_find(m, peer_name);
        Hold *hold = hold_find(p, model_name);

        if (!hold)
                return -ENOENT;

        p->n_total--;
        if (--hold->count == 0) {
                free(hold->model_name);
                *hold = p->holds[--p->n_holds];
        }
        if (p->n_holds == 0) {
                peer_unlink(m, p);
                peer_free(p);
        }
        return 0;
}

void peer_left(Manager *m, const char *peer_name) {
        Peer *p = peer_find(m, peer_name);

        if (!p)
                return;

        log_info("Peer %s left the bus; dropping its %u hold(s).", p->name, p->n_total);
        peer_unlink(m, p);
        for (size_t i = 0; i < p->n_holds; i++)
                manager_drop_holds(m, p->holds[i].model_name, p->holds[i].count);
        peer_free(p);
}

void peers_free(Manager *m) {
        while (m->peers) {
                Peer *p = m->peers;
                m->peers = p->next;
                peer_free(p);
        }
        m->n_peers = 0;
}
