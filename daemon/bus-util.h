/* SPDX-License-Identifier: MIT */
#pragma once

/* Every unique name leaving the bus (its new owner is empty). Installed
 * before the daemon owns its name, so that no caller can leave unnoticed
 * between a call and what the daemon keeps for it. Names that start with
 * ':' are the callers; handlers skip well-known names. */
#define MATCH_UNIQUE_NAME_LEFT                                          \
        "type='signal',sender='org.freedesktop.DBus',"                  \
        "path='/org/freedesktop/DBus',interface='org.freedesktop.DBus',"  \
        "member='NameOwnerChanged',arg2=''"
