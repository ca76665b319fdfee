/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sigbus.h"

static atomic_uint_fast64_t replaced;
static long page_size;

static void die_of_it(int sig) {
        /* Not ours to paper over: end as the default action would. */
        signal(sig, SIG_DFL);
        raise(sig);
}

static void on_sigbus(int sig, siginfo_t *si, void *context) {
        uintptr_t page;

        if (!si || si->si_code != BUS_ADRERR || !si->si_addr || page_size <= 0)
                return die_of_it(sig);
        page = (uintptr_t) si->si_addr & ~((uintptr_t) page_size - 1);
        /* mmap() is a system call, safe in a signal handler. */
        if (mmap((void *) page, (size_t) page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
            MAP_FAILED)
                return die_of_it(sig);
        atomic_fetch_add(&replaced, 1);
}

int sigbus_install(void) {
        struct sigaction sa = {
                .sa_sigaction = on_sigbus,
                .sa_flags = SA_SIGINFO,
        };

        page_size = sysconf(_SC_PAGESIZE);
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, NULL) < 0)
                return -errno;
        return 0;
}

uint64_t sigbus_count(void) {
        return atomic_load(&replaced);
}
