/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What makes a downloaded file trusted: its size and, for files the hub
 * keeps in LFS (the weights), the SHA-256 the hub published. The digest is
 * computed as the bytes arrive, and over what a resumed file held before. */

#define SHA256_SIZE 32U
#define SHA256_HEX_SIZE (2 * SHA256_SIZE + 1)

typedef struct Sha256 Sha256;

/* Returns NULL when out of memory. */
Sha256 *sha256_new(void);
Sha256 *sha256_free(Sha256 *s);
static inline void sha256_freep(Sha256 **s) {
        *s = sha256_free(*s);
}

/* Starts over, as for an empty input. 0 or -ENOMEM. */
int sha256_reset(Sha256 *s);
int sha256_update(Sha256 *s, const void *data, size_t n);
/* The digest of everything given since the last reset; the state is then
 * spent until the next reset. */
int sha256_final(Sha256 *s, uint8_t ret_digest[static SHA256_SIZE]);

/* Feeds the first length bytes of fd (read with pread(), the offset
 * untouched) into s. -EIO when the file is shorter. */
int sha256_update_from_fd(Sha256 *s, int fd, uint64_t length);

/* 64 lowercase or uppercase hex digits → digest. -EINVAL otherwise. */
int sha256_from_hex(const char *hex, size_t length, uint8_t ret_digest[static SHA256_SIZE]);
void sha256_to_hex(const uint8_t digest[static SHA256_SIZE], char ret_hex[static SHA256_HEX_SIZE]);

/* Whether the file at fd is exactly size bytes long and, if digest is not
 * NULL, has that SHA-256. 1 if so, 0 if not, negative errno on failure to
 * read it. */
int verify_fd(int fd, uint64_t size, const uint8_t *digest);
