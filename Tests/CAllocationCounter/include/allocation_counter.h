#ifndef PTQ_ALLOCATION_COUNTER_H
#define PTQ_ALLOCATION_COUNTER_H

// Test support: counts heap allocations (malloc, calloc, realloc, aligned_alloc, memalign,
// posix_memalign) made by the calling thread. The test executable defines these functions and
// forwards them to glibc's (__libc_malloc and relatives), so every allocation in the process —
// Swift's runtime, Foundation, the C kernels — passes through here. Per thread, so that tests
// running in parallel on other threads do not disturb a measurement.

/// Allocations made by the calling thread since it started.
unsigned long long ptq_thread_allocations(void);

#endif
