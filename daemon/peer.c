/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "macro.h"
#include "peer.h"

/* Allocation failures in uthash fail the operation, never the daemon. */
#undef uthash_nonfatal_oom
#define uthash_nonfatal_oom(obj) (hash_oom = true)

typedef struct Hold {
        char *model_name;
        unsigned count;
        UT_hash_handle hh;
} Hold;

struct Peer {
        char *name;
        Hold *holds;          /* hash by model name */
        unsigned n_holds;     /* sum of the counts */
        unsigned n_pending;
        UT_hash_handle hh;
};

static Peer *peer_find(const PeerTable *t, const char *name) {
        Peer *p;

        HASH_FIND_STR(t->peers, name, p);
        return p;
}

static void peer_free(Peer *p) {
        Hold *h, *tmp;

        HASH_ITER(hh, p->holds, h, tmp) {
                HASH_DELETE(hh, p->holds, h);
                free(h->model_name);
                free(h);
        }
        free(p->name);
        free(p);
}

static int peer_get(PeerTable *t, const char *name, Peer **ret) {
        bool hash_oom = false;
        Peer *p = peer_find(t, name);

        if (p) {
                *ret = p;
                return 0;
        }
        if (peers_count(t) >= PEERS_MAX)
                return -EUSERS;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->name = strdup(name);
        if (!p->name) {
                free(p);
                return -ENOMEM;
        }
        HASH_ADD_KEYPTR(hh, t->peers, p->name, strlen(p->name), p);
        if (hash_oom) {
                peer_free(p);
                return -ENOMEM;
        }
        *ret = p;
        return 1;
}

/* An entry that neither holds nor waits is dropped, so that the table is
 * bounded by what peers have, not by who ever called. */
static void peer_forget_if_empty(PeerTable *t, Peer *p) {
        if (p->n_holds > 0 || p->n_pending > 0)
                return;
        HASH_DELETE(hh, t->peers, p);
        peer_free(p);
}

int peers_add_hold(PeerTable *t, const char *peer_name, const char *model_name) {
        bool hash_oom = false;
        Peer *p;
        Hold *h;
        int r;

        assert(t);
        assert(peer_name);
        assert(model_name);

        r = peer_get(t, peer_name, &p);
        if (r < 0)
                return r;
        if (p->n_holds >= HOLDS_PER_PEER_MAX)
                return -EBUSY;

        HASH_FIND_STR(p->holds, model_name, h);
        if (!h) {
                h = calloc(1, sizeof *h);
                if (h)
                        h->model_name = strdup(model_name);
                if (h && h->model_name)
                        HASH_ADD_KEYPTR(hh, p->holds, h->model_name, strlen(h->model_name), h);
                if (!h || !h->model_name || hash_oom) {
                        if (h)
                                free(h->model_name);
                        free(h);
                        peer_forget_if_empty(t, p);
                        return -ENOMEM;
                }
        }
        h->count++;
        p->n_holds++;
        return 0;
}

int peers_remove_hold(PeerTable *t, const char *peer_name, const char *model_name) {
        Peer *p = peer_find(t, peer_name);
        Hold *h = NULL;

        if (p)
                HASH_FIND_STR(p->holds, model_name, h);
        if (!h)
                return -ENOENT;

        p->n_holds--;
        if (--h->count == 0) {
                HASH_DELETE(hh, p->holds, h);
                free(h->model_name);
                free(h);
        }
        peer_forget_if_empty(t, p);
        return 0;
}

int peers_add_pending(PeerTable *t, const char *peer_name) {
        Peer *p;
        int r;

        r = peer_get(t, peer_name, &p);
        if (r < 0)
                return r;
        if (p->n_pending >= PENDING_CALLS_PER_PEER_MAX)
                return -EUSERS;
        p->n_pending++;
        return 0;
}

void peers_remove_pending(PeerTable *t, const char *peer_name) {
        Peer *p = peer_find(t, peer_name);

        if (!p)
                return;   /* dropped when it left; its calls end after */
        assert(p->n_pending > 0);
        p->n_pending--;
        peer_forget_if_empty(t, p);
}

unsigned peers_pending(const PeerTable *t, const char *peer_name) {
        Peer *p = peer_find(t, peer_name);

        return p ? p->n_pending : 0;
}

unsigned peers_drop(PeerTable *t, const char *peer_name, peer_hold_dropped_t dropped, void *userdata) {
        Peer *p = peer_find(t, peer_name);
        unsigned n;
        Hold *h, *tmp;

        if (!p)
                return 0;
        HASH_DELETE(hh, t->peers, p);
        n = p->n_holds;
        HASH_ITER(hh, p->holds, h, tmp)
                dropped(h->model_name, h->count, userdata);
        peer_free(p);
        return n;
}

unsigned peers_count(const PeerTable *t) {
        return HASH_COUNT(t->peers);
}

void peers_done(PeerTable *t) {
        Peer *p, *tmp;

        HASH_ITER(hh, t->peers, p, tmp) {
                HASH_DELETE(hh, t->peers, p);
                peer_free(p);
        }
}
