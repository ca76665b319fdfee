/* SPDX-License-Identifier: MIT */

/* A main() for a fuzz target built without libFuzzer: hands it each file
 * given, and each file in each directory given, once. `make check` runs
 * the seeds and the crashes found before through every target this way,
 * with the sanitizers when built with SANITIZE=1; finding no input at all
 * is a failure, so that an emptied corpus cannot pass for a clean one. */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Bigger inputs than libFuzzer's -max_len in `make fuzz` are never seeds. */
#define REPLAY_INPUT_MAX (1024 * 1024)

static int replay_file(int dir_fd, const char *name, const char *shown) {
        uint8_t *data;
        struct stat st;
        size_t size = 0;
        int fd;

        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0) {
                fprintf(stderr, "%s: %s\n", shown, strerror(errno));
                if (fd >= 0)
                        close(fd);
                return -1;
        }
        if (st.st_size > REPLAY_INPUT_MAX) {
                fprintf(stderr, "%s: larger than %d bytes\n", shown, REPLAY_INPUT_MAX);
                close(fd);
                return -1;
        }
        /* Exactly its size, as libFuzzer does, so that a read past the end
         * is caught by AddressSanitizer. */
        data = malloc(st.st_size > 0 ? (size_t) st.st_size : 1);
        if (!data) {
                close(fd);
                return -1;
        }
        while (size < (size_t) st.st_size) {
                ssize_t n = read(fd, data + size, (size_t) st.st_size - size);

                if (n <= 0) {
                        fprintf(stderr, "%s: %s\n", shown, n < 0 ? strerror(errno) : "shorter than its size");
                        free(data);
                        close(fd);
                        return -1;
                }
                size += (size_t) n;
        }
        close(fd);
        LLVMFuzzerTestOneInput(data, size);
        free(data);
        return 0;
}

int main(int argc, char *argv[]) {
        unsigned n = 0;
        int failed = 0;

        for (int i = 1; i < argc; i++) {
                struct dirent *de;
                DIR *d;

                d = opendir(argv[i]);
                if (!d) {
                        if (errno != ENOTDIR) {
                                fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
                                failed = 1;
                        } else if (replay_file(AT_FDCWD, argv[i], argv[i]) < 0)
                                failed = 1;
                        else
                                n++;
                        continue;
                }
                while ((de = readdir(d))) {
                        if (de->d_name[0] == '.')
                                continue;
                        if (replay_file(dirfd(d), de->d_name, de->d_name) < 0)
                                failed = 1;
                        else
                                n++;
                }
                closedir(d);
        }
        if (n == 0) {
                fprintf(stderr, "No input to replay.\n");
                return 1;
        }
        printf("%u inputs replayed%s.\n", n, failed ? ", some could not be read" : "");
        return failed;
}
