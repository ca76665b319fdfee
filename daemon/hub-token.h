/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>

/* The hub's access token on its way to an mpool-pull helper: in a pipe
 * whose read end the helper inherits (pull/PROTOCOL.md, --token-fd), so
 * that it never passes through argv or the environment, which other local
 * users read in /proc, and is held by the kernel alone while the helper
 * waits its turn. The daemon keeps no copy. */

#define HUB_TOKEN_MAX 4096U

/* The read end of a pipe (O_CLOEXEC) holding the n bytes of token, n at
 * most HUB_TOKEN_MAX. */
int hub_token_pipe(const char *token, size_t n, int *ret_fd);

/* The same for the token of the file at path ([Hub] TokenFile=), read now:
 * -EFBIG when it is larger than HUB_TOKEN_MAX, or why it cannot be read
 * (logged, without the token). */
int hub_token_file_pipe(const char *path, int *ret_fd);
