/* SPDX-License-Identifier: MIT */

/* libFuzzer entry point for the configuration parser (mpoold.conf).
 * `make fuzz` builds and runs it; `make check` replays tests/fuzz/config/.
 *
 * Input: the file's text. config_load_file() takes a path, so the text is
 * put in a memfd and the parser opens it by its /proc/self/fd/ path: the
 * daemon's own reading (stdio, inih's stream reader) is what runs. */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "strv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool write_all(int fd, const uint8_t *data, size_t size) {
        while (size > 0) {
                ssize_t n = write(fd, data, size);

                if (n <= 0)
                        return false;
                data += n;
                size -= (size_t) n;
        }
        return true;
}

/* What the rest of the daemon relies on from a loaded configuration. */
static void check_config(const Config *c) {
        size_t n;

        if (!c->model_dir || c->model_dir[0] != '/' || !c->hub_endpoint)
                abort();
        if (c->memory_limit.is_percent ? c->memory_limit.permyriad == 0 || c->memory_limit.permyriad > PERMYRIAD_MAX :
                                         c->memory_limit.bytes == 0)
                abort();
        if (c->idle_timeout_sec < -1 || c->idle_timeout_sec == 0)
                abort();
        if (c->idle_policy < 0 || c->idle_policy >= _IDLE_POLICY_MAX)
                abort();
        if (c->max_concurrent_loads < 1 || c->max_concurrent_loads > CONFIG_MAX_CONCURRENT_LOADS_MAX ||
            c->max_queued_loads > CONFIG_MAX_QUEUED_LOADS_MAX ||
            c->max_concurrent_downloads < 1 || c->max_concurrent_downloads > CONFIG_MAX_CONCURRENT_DOWNLOADS_MAX ||
            c->max_workers > CONFIG_MAX_WORKERS_MAX || c->max_queued_requests > CONFIG_MAX_QUEUED_REQUESTS_MAX ||
            c->cooldown_sec < 1 || c->cooldown_sec > CONFIG_COOLDOWN_SEC_MAX)
                abort();
        if (strlen(c->hub_endpoint) > CONFIG_HUB_ENDPOINT_MAX ||
            (strncmp(c->hub_endpoint, "http://", 7) != 0 && strncmp(c->hub_endpoint, "https://", 8) != 0))
                abort();
        if (c->hub_token_file && c->hub_token_file[0] != '/')
                abort();
        n = strv_length(c->preload);
        if (n > CONFIG_PRELOAD_MAX)
                abort();
        for (size_t i = 0; i < n; i++)
                for (size_t j = i + 1; j < n; j++)
                        if (strcmp(c->preload[i], c->preload[j]) == 0)
                                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char path[64], *error = NULL;
        Config c = {}, before;
        int fd, r;

        fd = memfd_create("mpoold.conf", MFD_CLOEXEC);
        if (fd < 0)
                return 0;
        if (!write_all(fd, data, size) || config_init_defaults(&c) < 0)
                goto finish;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

        before = c;
        r = config_load_file(&c, path, true, &error);
        if (r == 0) {
                if (error)
                        abort();
                check_config(&c);
        } else if (r == -EINVAL || r == -ERANGE) {
                /* Untouched, and a message that names the file. */
                if (memcmp(&before, &c, sizeof c) != 0 || !error || strncmp(error, path, strlen(path)) != 0)
                        abort();
        } else if (r != -ENOMEM)
                abort();

finish:
        config_done(&c);
        free(error);
        close(fd);
        return 0;
}
