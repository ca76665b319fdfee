/* SPDX-License-Identifier: MIT */
#pragma once

#include "manager.h"

/* Holds per bus peer. A peer that leaves the bus (exits, crashes, is
 * killed) loses its holds: the manager watches every unique name leaving
 * (MATCH_UNIQUE_NAME_LEFT) and calls peer_left(). Holds are only ever
 * taken for the sender of a call being handled, which the bus delivered
 * before any NameOwnerChanged about that sender leaving. */

/* -EBUSY when the peer holds HOLDS_PER_PEER_MAX already; -EUSERS when
 * PEERS_MAX other peers hold models. */
int peer_add_hold(Manager *m, const char *peer_name, const char *model_name);
/* -ENOENT when the peer holds no hold on the model. */
int peer_remove_hold(Manager *m, const char *peer_name, const char *model_name);
/* The peer left the bus: drops its holds through manager_drop_holds(). */
void peer_left(Manager *m, const char *peer_name);
void peers_free(Manager *m);
