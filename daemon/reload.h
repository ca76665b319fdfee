/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

#include "manager.h"

/* Re-reading the configuration file at run time (SIGHUP, `systemctl reload`).
 *
 * MemoryLimit= and IdleTimeoutSec= take effect at once, with the same
 * consequences as writing the D-Bus properties of the same names (a lower
 * limit unloads idle models). Every other setting (ModelDir=,
 * HuggingFaceCache=, MaxLoadedModels=, IdlePolicy=, MemoryAvailableMin=,
 * Preload=, MaxConcurrentLoads=) takes effect only when mpoold restarts; a
 * reload that finds one of them changed says so in the log. */

/* Reads the file at path as start-up does (must_exist as there) and applies
 * what can change at run time; logs what it did. Returns 0 when every
 * setting that can change was applied; -EBUSY when MemoryLimit= was kept
 * because pinned models hold more than the new limit (the rest applied);
 * any other negative errno when the file is unusable, and then nothing
 * changed. */
int reload_config(Manager *m, const char *path, bool must_exist);
