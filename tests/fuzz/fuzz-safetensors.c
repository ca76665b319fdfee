/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the safetensors header validator. `make fuzz` builds
 * and runs it; `make check` replays tests/fuzz/safetensors/.
 *
 * Input: 8 bytes of little-endian data-section length, then the header bytes.
 * The header is handed over in a buffer of exactly its size, so that any
 * read past it is caught by AddressSanitizer. The length's top 4 bits, when
 * not 0, are the question at which a cancellation callback stops the
 * validation, to exercise the paths that unwind from the middle. */

#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Cancel {
        unsigned calls;
        unsigned at;
} Cancel;

static bool cancel_at(void *userdata) {
        Cancel *c = userdata;

        return ++c->calls >= c->at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        SafetensorsInfo info = {};
        uint64_t data_length, file_size;
        char *header, *error = NULL;
        size_t header_length;
        Cancel c = {};
        int r;

        if (size < 8)
                return 0;

        memcpy(&data_length, data, sizeof data_length);
        data_length = le64toh(data_length);
        c.at = (unsigned) (data_length >> 60);
        data_length &= (UINT64_C(1) << 60) - 1;
        header_length = size - 8;
        if (__builtin_add_overflow(data_length, (uint64_t) header_length + 8, &file_size))
                return 0;

        header = malloc(header_length > 0 ? header_length : 1);
        if (!header)
                return 0;
        memcpy(header, data + 8, header_length);

        r = safetensors_validate_header(header, header_length, file_size,
                                        c.at > 0 ? cancel_at : NULL, &c, &info, &error);
        if (r == 0) {
                if (error || info.header_length != header_length || info.data_offset != 8 + header_length ||
                    info.data_length != data_length || info.n_tensors > SAFETENSORS_TENSORS_MAX ||
                    (c.at > 0 && c.calls >= c.at))
                        abort();
        } else if (r == -EBADMSG) {
                if (!error || strlen(error) == 0 || (c.at > 0 && c.calls >= c.at))
                        abort();
        } else if (r == -ECANCELED) {
                /* Stopped at the question that said so, and nothing to say. */
                if (c.at == 0 || c.calls != c.at || error)
                        abort();
        } else if (r != -ENOMEM)
                abort();

        free(error);
        free(header);
        return 0;
}
