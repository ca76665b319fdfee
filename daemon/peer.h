/* SPDX-License-Identifier: MIT */
#pragma once

#include "manager.h"

/* Holds per bus peer. Each peer that holds a model is tracked with
 * sd_bus_track, so when it leaves the bus (exits, crashes, is killed) its
 * holds are dropped without any call from it. */

/* -EBUSY when the peer holds HOLDS_PER_PEER_MAX models already or
 * PEERS_MAX peers hold models; -ENXIO when the peer has left the bus. */
int peer_add_hold(Manager *m, const char *peer_name, const char *model_name);
/* -ENOENT when the peer holds no hold on the model. */
int peer_remove_hold(Manager *m, const char *peer_name, const char *model_name);
unsigned peer_count_holds(const Manager *m, const char *peer_name, const char *model_name);
void peers_free(Manager *m);
