/* SPDX-License-Identifier: MIT */

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "macro.h"
#include "verify.h"

#define READ_CHUNK (1024U * 1024U)

struct Sha256 {
        EVP_MD_CTX *ctx;
};

Sha256 *sha256_new(void) {
        Sha256 *s = calloc(1, sizeof *s);

        if (!s)
                return NULL;
        s->ctx = EVP_MD_CTX_new();
        if (!s->ctx || sha256_reset(s) < 0)
                return sha256_free(s);
        return s;
}

Sha256 *sha256_free(Sha256 *s) {
        if (s) {
                EVP_MD_CTX_free(s->ctx);
                free(s);
        }
        return NULL;
}

int sha256_reset(Sha256 *s) {
        return EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
}

int sha256_update(Sha256 *s, const void *data, size_t n) {
        return EVP_DigestUpdate(s->ctx, data, n) == 1 ? 0 : -ENOMEM;
}

int sha256_final(Sha256 *s, uint8_t ret_digest[static SHA256_SIZE]) {
        unsigned n = 0;

        if (EVP_DigestFinal_ex(s->ctx, ret_digest, &n) != 1 || n != SHA256_SIZE)
                return -ENOMEM;
        return 0;
}

int sha256_update_from_fd(Sha256 *s, int fd, uint64_t length) {
        _cleanup_free_ uint8_t *buffer = malloc(READ_CHUNK);
        uint64_t offset = 0;
        int r;

        if (!buffer)
                return -ENOMEM;
        while (offset < length) {
                ssize_t n = pread(fd, buffer, (size_t) MIN((uint64_t) READ_CHUNK, length - offset), (off_t) offset);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;
                r = sha256_update(s, buffer, (size_t) n);
                if (r < 0)
                        return r;
                offset += (uint64_t) n;
        }
        return 0;
}

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

int sha256_from_hex(const char *hex, size_t length, uint8_t ret_digest[static SHA256_SIZE]) {
        uint8_t digest[SHA256_SIZE];

        if (length != 2 * SHA256_SIZE)
                return -EINVAL;
        for (size_t i = 0; i < SHA256_SIZE; i++) {
                int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);

                if (high < 0 || low < 0)
                        return -EINVAL;
                digest[i] = (uint8_t) (high << 4 | low);
        }
        memcpy(ret_digest, digest, SHA256_SIZE);
        return 0;
}

void sha256_to_hex(const uint8_t digest[static SHA256_SIZE], char ret_hex[static SHA256_HEX_SIZE]) {
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < SHA256_SIZE; i++) {
                ret_hex[2 * i] = digits[digest[i] >> 4];
                ret_hex[2 * i + 1] = digits[digest[i] & 0xf];
        }
        ret_hex[2 * SHA256_SIZE] = '\0';
}

int verify_fd(int fd, uint64_t size, const uint8_t *digest) {
        _cleanup_(sha256_freep) Sha256 *s = NULL;
        uint8_t actual[SHA256_SIZE];
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size != size)
                return 0;
        if (!digest)
                return 1;

        s = sha256_new();
        if (!s)
                return -ENOMEM;
        r = sha256_update_from_fd(s, fd, size);
        if (r == -EIO)
                return 0;       /* shrank meanwhile */
        if (r < 0)
                return r;
        r = sha256_final(s, actual);
        if (r < 0)
                return r;
        return memcmp(actual, digest, SHA256_SIZE) == 0;
}
