/* SPDX-License-Identifier: MIT */
#pragma once

#include "workpool.h"

/* Points where tests hold the daemon deterministically, compiled only into
 * the test build (mpoold-test, MPOOL_TEST_HOOKS defined): the installed
 * mpoold has none of them.
 *
 * The load gate: when $MPOOL_TEST_LOAD_GATE names a directory holding a
 * FIFO called after the model (with '/' as '%'), mapping that model waits,
 * after its first LoadProgress, until a byte is written to the FIFO or the
 * load is cancelled. Cancellation and Busy tests thereby hold a load for
 * as long as they need, whatever the speed of the disk.
 *
 * The compute gate: the same with $MPOOL_TEST_COMPUTE_GATE for the
 * requests a model's workers run (Embed): each waits, on its worker, until
 * a byte of its own comes through the FIFO. Tests of worker growth, queue
 * bounds and unloads with requests in flight hold requests that way.
 *
 * The inspection timeout: $MPOOL_TEST_INSPECTION_TIMEOUT_SEC replaces it,
 * so that a test of a hub that never answers need not wait minutes. */

#include <stdint.h>

#ifdef MPOOL_TEST_HOOKS
void test_hook_load_gate(const char *model_name, WorkItem *item);
void test_hook_compute_gate(const char *model_name, WorkItem *item);
uint64_t test_hook_inspection_timeout_usec(uint64_t usec);
#else
static inline void test_hook_load_gate(const char *model_name, WorkItem *item) {
}
static inline void test_hook_compute_gate(const char *model_name, WorkItem *item) {
}
static inline uint64_t test_hook_inspection_timeout_usec(uint64_t usec) {
        return usec;
}
#endif

/* The download helper's retries: when $MPOOL_TEST_PULL_BACKOFF_MSEC holds a
 * number of milliseconds (1 to 60000), mpoold-test passes
 * "--test-backoff-msec=N" to the helper, which only its own test build
 * (mpool-pull-test) accepts, so that tests of dropped connections wait
 * milliseconds. NULL otherwise, and always in the installed mpoold. */
#ifdef MPOOL_TEST_HOOKS
const char *test_hook_pull_argument(void);
#else
static inline const char *test_hook_pull_argument(void) {
        return NULL;
}
#endif
