/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>

/* Embed(s name, as texts, a{sv} options) → aad on org.mpool.Manager: the
 * texts and options read and bounded, authorized as Load, then handed to
 * embed.h; the reply is one array of doubles per text. */
int bus_method_embed(sd_bus_message *message, void *userdata, sd_bus_error *error);
