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
        Manager *manager;
        char *name;
        sd_bus_track *track;
        Hold *holds;
        size_t n_holds;
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
        sd_bus_track_unref(p->track);
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

static int on_peer_gone(sd_bus_track *track, void *userdata) {
        Peer *p = userdata;
        Manager *m = p->manager;

        log_info("Peer %s left the bus; dropping its %zu hold(s).", p->name, p->n_holds);
        peer_unlink(m, p);
        for (size_t i = 0; i < p->n_holds; i++)
                manager_drop_holds(m, p->holds[i].model_name, p->holds[i].count);
        peer_free(p);
        return 0;
}

static int peer_get(Manager *m, const char *name, Peer **ret) {
        Peer *p;
        int r;

        p = peer_find(m, name);
        if (p) {
                *ret = p;
                return 0;
        }
        if (m->n_peers >= PEERS_MAX)
                return -EBUSY;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->manager = m;
        p->name = strdup(name);
        if (!p->name) {
                peer_free(p);
                return -ENOMEM;
        }
        r = sd_bus_track_new(m->bus, &p->track, on_peer_gone, p);
        if (r >= 0)
                /* Also checks that the peer is still on the bus. */
                r = sd_bus_track_add_name(p->track, name);
        if (r < 0) {
                peer_free(p);
                return r;
        }

        p->next = m->peers;
        m->peers = p;
        m->n_peers++;
        *ret = p;
        return 0;
}

int peer_add_hold(Manager *m, const char *peer_name, const char *model_name) {
        Peer *p;
        Hold *holds;
        int r;

        assert(m);
        assert(peer_name);
        assert(model_name);

        r = peer_get(m, peer_name, &p);
        if (r < 0)
                return r;

        for (size_t i = 0; i < p->n_holds; i++)
                if (strcmp(p->holds[i].model_name, model_name) == 0) {
                        if (p->holds[i].count >= HOLDS_PER_PEER_MAX)
                                return -EBUSY;
                        p->holds[i].count++;
                        return 0;
                }

        if (p->n_holds >= HOLDS_PER_PEER_MAX)
                return -EBUSY;
        holds = reallocarray(p->holds, p->n_holds + 1, sizeof *holds);
        if (!holds)
                return -ENOMEM;
        p->holds = holds;
        p->holds[p->n_holds].model_name = strdup(model_name);
        if (!p->holds[p->n_holds].model_name)
                return -ENOMEM;
        p->holds[p->n_holds++].count = 1;
        return 0;
}

int peer_remove_hold(Manager *m, const char *peer_name, const char *model_name) {
        Peer *p = peer_find(m, peer_name);

        if (!p)
                return -ENOENT;
        for (size_t i = 0; i < p->n_holds; i++) {
                if (strcmp(p->holds[i].model_name, model_name) != 0)
                        continue;
                if (--p->holds[i].count == 0) {
                        free(p->holds[i].model_name);
                        p->holds[i] = p->holds[--p->n_holds];
                }
                if (p->n_holds == 0) {
                        peer_unlink(m, p);
                        peer_free(p);
                }
                return 0;
        }
        return -ENOENT;
}

unsigned peer_count_holds(const Manager *m, const char *peer_name, const char *model_name) {
        Peer *p = peer_find(m, peer_name);

        if (!p)
                return 0;
        for (size_t i = 0; i < p->n_holds; i++)
                if (strcmp(p->holds[i].model_name, model_name) == 0)
                        return p->holds[i].count;
        return 0;
}

void peers_free(Manager *m) {
        while (m->peers) {
                Peer *p = m->peers;
                m->peers = p->next;
                peer_free(p);
        }
        m->n_peers = 0;
}
