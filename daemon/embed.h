/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "embedding-model.h"
#include "manager.h"

/* Embeddings, on the loop thread and without D-Bus: a call loads the model
 * if need be (a Load request, which waits, emits LoadProgress and counts
 * against the caller's waiting calls as any Load), then runs its texts on
 * one of the model's workers (model-compute.h) and answers with one vector
 * per text, in order. */

/* Bounds on one call: texts, bytes of one text, bytes of all its texts. A
 * text longer than any model takes is truncated (or refused) by tokens;
 * these bound what the daemon holds for a call, not what a model reads. */
#define EMBED_TEXTS_MAX        1024U
#define EMBED_TEXT_BYTES_MAX   (UINT64_C(64) * 1024)
#define EMBED_CALL_BYTES_MAX   (UINT64_C(4) * 1024 * 1024)

/* The answer: error 0 and n × dims floats (row i text i's vector), or a
 * negative errno and a message:
 *   -ENOENT, -EBADMSG, -ENOSPC, -ECANCELED, -EBUSY, -EUSERS as for Load
 *   (request.h); -EOPNOTSUPP: a model the daemon does not run; -EINVAL:
 *   options the model refuses, or a text too long with truncation off. */
typedef void (*EmbedReply)(int error, const char *message, const float *vectors, size_t n, size_t dims,
                           void *userdata);

/* Takes texts (n of them, each lengths[i] bytes; the array and the strings
 * become the call's, freed with it) and the options (prompt_name is
 * copied). owner: the caller's bus name, for the bound on waiting calls.
 * reply is called exactly once, possibly before this returns. Returns 0,
 * or -ENOMEM (reply not called; the texts are freed). */
int embed_submit(Manager *m, const char *name, char **texts, size_t *lengths, size_t n, const EmbedOptions *options,
                 const char *owner, EmbedReply reply, void *userdata);
