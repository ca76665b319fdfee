/* SPDX-License-Identifier: MIT */
#pragma once

/* Writes the store's registry of models kept in directories elsewhere
 * (ModelDir/.registered/, read by store.c): one file per model name,
 * holding the directory's absolute path and a newline. It is the daemon's
 * own state, changed only by Register and Remove, and it persists across
 * restarts, so each change is whole or absent after a crash: an entry is
 * written into an unnamed file (O_TMPFILE; a hidden temporary one where the
 * file system has none), synced, then given its name without replacing
 * anything, and the folder is synced after. Everything here does I/O:
 * worker threads only. */

/* Registers name (a valid model name) as the directory path, which
 * store_registered_path_is_valid() accepts. Creates the registry if
 * needed. -EEXIST when the name is registered already, -EUSERS when
 * STORE_REGISTRY_MAX names are, -EINVAL for a path that cannot be
 * registered, -ENOENT when ModelDir does not exist, other negative errnos
 * on I/O errors. */
int registry_add(const char *model_dir, const char *name, const char *path);

/* Drops the registration of name, never touching the directory it names.
 * -ENOENT when name is not registered. */
int registry_remove(const char *model_dir, const char *name);

/* Removes the temporary files a write interrupted by a crash left (hidden
 * files of the registry). Logs what fails; for start-up. */
void registry_clean(const char *model_dir);
