/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

#include "manager.h"

/* Register and Remove: the changes callers make to which models the store
 * holds, on the loop thread and without D-Bus. Each decides on the loop
 * what it may (names known, models busy, downloads under way), does its file
 * system work on a worker of its own (one thread, so that registrations
 * and removals never race each other), then announces or withdraws the
 * model's object on the loop.
 *
 * Register adds a model from a directory elsewhere: the path must be
 * absolute; resolved with every symlink, it must be a directory outside
 * ModelDir holding a valid model (found as a load would find it, and its
 * headers validated), under a valid name nothing else has (ModelDir, the
 * registry, the cache, the pool, a download). Its registry entry
 * (registry.h) keeps it across restarts.
 *
 * Remove deletes a model of ModelDir (pulled or copied there; through the
 * trash, trash.h) or drops a registration, never the registered directory
 * itself. A model of the Hugging Face cache is refused: it is not mpool's.
 * A model that is loaded, loading, unloading, held or waited for is busy;
 * with force it is unloaded first, through an Unload request with force,
 * as Unload with force would (holds stay with their holders; its object
 * goes once they let go, as for a folder removed by hand). A model being
 * downloaded is busy even with force: cancelling a download is Cancel's
 * business. What it removes is decided again on the worker, by the
 * store's precedence, and must be of the kind Status showed (a
 * registration, or a folder of ModelDir); otherwise the store changed
 * meanwhile and Remove fails with -EAGAIN rather than delete what the
 * caller did not see.
 *
 * Both reply exactly once, possibly before they return, with 0 or a
 * negative errno and a message for people:
 *   -EINVAL, -ENOTDIR  the path cannot be registered (relative, too long,
 *                      not a directory, inside ModelDir, not UTF-8)
 *   -ENOENT            no such directory, or no such model
 *   -EBADMSG           the directory holds no valid model
 *   -EEXIST            the name is known already
 *   -EBUSY             loaded, held, being removed, downloaded; a full
 *                      queue; shutting down
 *   -EAGAIN            the model changed in the store while Remove decided
 *   -EUSERS            the registry is full
 *   -EOPNOTSUPP        the model is in the Hugging Face cache
 *   -ENOMEM, others    I/O errors, said in the message */

/* Register and Remove calls waiting for the worker, all callers together. */
#define CATALOG_QUEUE_MAX 64U

typedef struct Catalog Catalog;

typedef void (*CatalogReply)(int error, const char *message, void *userdata);

/* Starts the worker and has it empty the trash and the registry's
 * temporary files left by a crash. */
int catalog_new(Manager *m, Catalog **ret);
/* Shutdown: what waits for the worker is answered -EBUSY; what runs
 * finishes. */
void catalog_stop(Catalog *c);
/* Work handed to the worker and not yet back: shutdown waits for it. */
bool catalog_busy(const Catalog *c);
/* Frees once nothing is in flight (catalog_busy() false). */
Catalog *catalog_free(Catalog *c);

/* owner: the caller, whose waiting calls are bounded (an Unload with force
 * waits as its call); NULL for the daemon. */
void catalog_register(Manager *m, const char *name, const char *path, CatalogReply reply, void *userdata);
void catalog_remove(Manager *m, const char *name, bool force, const char *owner, CatalogReply reply,
                    void *userdata);
