/* SPDX-License-Identifier: MIT */
#pragma once

/* Removing a model folder of ModelDir: first renamed into ModelDir/.trash/
 * under a name of its own, so that it leaves the store at once and whole
 * (nothing lists it or loads from it half deleted, and the store's watch
 * sees one rename), then deleted there at leisure. A deletion cut short by
 * a crash leaves its folder in the trash, emptied at the next start. Never
 * follows a symlink: a model folder that is a symlink loses only the
 * symlink. Everything here does I/O: worker threads only. */

#define TRASH_DIR ".trash"

/* Folders deeper than this inside a model are not deleted (a model holds
 * files and a folder or two, such as 1_Pooling/); what is left stays in
 * the trash, and the deletion fails with -ELOOP. */
#define TRASH_DEPTH_MAX 16U

/* Moves ModelDir/NAME into the trash and returns the trash entry's name in
 * *ret_entry. The organisation folder of "org/name" goes too if it is left
 * empty. -ENOENT when ModelDir holds nothing of that name; -EXDEV when the
 * model's folder is reached through a symlink or is on another file system
 * than ModelDir (mpool leaves those to be removed by hand); other negative
 * errnos on I/O errors. */
int trash_move(const char *model_dir, const char *name, char **ret_entry);

/* Deletes name in dir_fd, whatever it is, without following symlinks, at
 * most depth levels of folders deep (-ELOOP beyond). Goes on past failures
 * and returns the first; 0 when nothing was there. */
int trash_remove_tree(int dir_fd, const char *name, unsigned depth);

/* Deletes an entry of the trash. */
int trash_delete(const char *model_dir, const char *entry);

/* Deletes whatever is in the trash. Logs what fails; for start-up. */
void trash_empty(const char *model_dir);
