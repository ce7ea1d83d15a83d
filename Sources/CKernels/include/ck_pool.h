#ifndef CK_POOL_H
#define CK_POOL_H
#include <stddef.h>

// A persistent thread pool for the runtime's row-parallel loops (pool.c).
//
// Workers are created once (lazily, on the first parallel call) and wait for work by spinning
// for a short while (`ck_pool_set_spin_microseconds`, 200 µs by default) before they sleep on a
// condition variable, so back-to-back decode GEMVs (20–100 µs each) hand work over in well
// under a microsecond while an idle process does not burn a core. The calling thread takes part
// in every job. Tasks are claimed from an atomic counter, so a worker descheduled by another
// process on a loaded machine delays only the tasks it holds.
//
// A call from inside a task, or while another thread's job holds the pool, runs its tasks on
// the calling thread in order: nested or concurrent callers stay correct, only not parallel.

/// A task body: `fn(ctx, index)` for index in [0, tasks).
typedef void (*ck_task_fn)(void *ctx, size_t index);

/// Threads a job uses, the caller included (1 = everything runs on the caller). Takes effect
/// on the next job; surplus workers stay parked.
void ck_pool_set_threads(int threads);
int ck_pool_threads(void);

/// How long an idle worker spins before it sleeps (0 = sleep at once).
void ck_pool_set_spin_microseconds(int microseconds);

/// 1 while the calling thread runs a pool task (a worker, or the caller during its job), else 0.
int ck_pool_in_task(void);

/// Runs fn(ctx, i) for every i in [0, tasks) across the pool and returns when all are done.
void ck_pool_run(size_t tasks, ck_task_fn fn, void *ctx);

/// ck_pool_run, after which the workers sleep at once instead of spinning: for a job followed
/// by work on other threads (OpenBLAS's, in the prefill tiles), where a spinning worker would
/// take a core from them.
void ck_pool_run_then_sleep(size_t tasks, ck_task_fn fn, void *ctx);

/// Chunks per thread that row-parallel loops on this thread use when their caller does not say
/// (`Parallel.forEachChunk`); 0 = the loops' own default. Thread-local: a decode step sets it on
/// its thread for its GEMVs only (`Parallel.withDecodeChunks`), other threads' loops keep theirs.
void ck_pool_set_chunks_per_thread(int chunks);
int ck_pool_chunks_per_thread(void);

/// Jobs run in parallel so far and jobs that found a worker asleep (had to wake it):
/// diagnostics for the benchmark.
void ck_pool_counters(unsigned long long *jobs, unsigned long long *wakeups);

/// Jobs whose caller waited long for a preempted worker, and jobs run on the caller alone
/// because recent jobs stalled (the oversubscription guard in pool.c).
void ck_pool_stall_counters(unsigned long long *stalls, unsigned long long *serial_jobs);

#endif
