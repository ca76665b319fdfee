/* SPDX-License-Identifier: MIT */
#pragma once

/* What each bus peer has with the daemon: its holds on models and its calls
 * still waiting for an answer. A plain table keyed by the peer's unique
 * name, knowing nothing of the manager: whoever drops a peer is told which
 * holds went with it. Peers leave through the manager, which watches every
 * unique name leaving the bus; a peer's entry exists only while it holds
 * something or waits for something. */

#define PEERS_MAX 4096U
#define HOLDS_PER_PEER_MAX 1024U
#define PENDING_CALLS_PER_PEER_MAX 64U

typedef struct Peer Peer;
typedef struct PeerTable {
        Peer *peers;    /* hash by name */
} PeerTable;

/* -EBUSY when the peer holds HOLDS_PER_PEER_MAX already; -EUSERS when
 * PEERS_MAX other peers are known. */
int peers_add_hold(PeerTable *t, const char *peer_name, const char *model_name);
/* -ENOENT when the peer holds no hold on the model. */
int peers_remove_hold(PeerTable *t, const char *peer_name, const char *model_name);

/* A call of the peer starts or stops waiting. -EUSERS when it has
 * PENDING_CALLS_PER_PEER_MAX waiting already (or PEERS_MAX peers are known). */
int peers_add_pending(PeerTable *t, const char *peer_name);
void peers_remove_pending(PeerTable *t, const char *peer_name);
unsigned peers_pending(const PeerTable *t, const char *peer_name);

typedef void (*peer_hold_dropped_t)(const char *model_name, unsigned count, void *userdata);
/* Forgets the peer, calling dropped for each model it held. Returns the
 * number of holds dropped. */
unsigned peers_drop(PeerTable *t, const char *peer_name, peer_hold_dropped_t dropped, void *userdata);

unsigned peers_count(const PeerTable *t);
void peers_done(PeerTable *t);
