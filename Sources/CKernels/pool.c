#define _GNU_SOURCE
#include <sched.h>
#include <unistd.h>
#include "ck_pool.h"
#include "ck_probe.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CK_PAUSE() _mm_pause()
#else
#define CK_PAUSE() ((void)0)
#endif

// Fork-join pool in the manner of ggml's threadpool, built so that a worker another process
// preempts (the machine is shared) never holds a job up unless it holds one of its tasks:
//
// - A job is published by storing its fields, then `claim = (job_id << 32) | 0`, then bumping
//   `generation` (which wakes waiting workers). Every thread, the caller included, claims task
//   indices by compare-and-swap on `claim`; a claim whose job id is not the current one fails,
//   so a worker that wakes late for an old job claims nothing and reads no stale fields.
// - The caller waits for `done == tasks` (tasks finished), not for the workers to check in.
// - Idle workers spin on `generation` for `spin_ns`, then sleep on `wake`. Sleep handshake: a
//   worker increments `sleepers` and re-checks `generation` under `lock` before it waits; the
//   caller bumps `generation` (seq_cst) before it reads `sleepers`, so either the worker sees
//   the new job or the caller sees the sleeper and broadcasts under the lock.
// - A spinning worker also watches the CPU clock of the thread that published the last job: if
//   that thread gained less than a quarter of the wall time over the last ≥ 20 µs, another
//   process has it off the core, no job can come soon, and the worker sleeps at once instead of
//   spinning out its budget. On a loaded 2-vCPU machine the worker and the caller share cores
//   with other processes, and a worker spinning while the caller waits for a core took the CPU
//   the caller needed (decode probe: ~6 ms of worker spin per ~7 ms token of caller work).
//   Idle, the caller is always on a core and the worker spins exactly as before.

#define CK_POOL_MAX 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;  // one job at a time
static pthread_once_t once = PTHREAD_ONCE_INIT;

static _Alignas(64) atomic_uint_fast64_t generation;
static _Alignas(64) atomic_uint_fast64_t claim;   // job id << 32 | next task index
static _Alignas(64) atomic_size_t done;
static _Alignas(64) atomic_int sleepers;
static _Atomic(ck_task_fn) job_fn;
static _Atomic(void *) job_ctx;
static atomic_size_t job_tasks;
static uint32_t job_id;                           // written by the caller under run_lock only
static atomic_int requested_threads = 0;          // 0: not set yet, use the core count
static atomic_long spin_ns = 200000;
static atomic_int job_sleep_after;                // the current job asked workers not to spin after it
static int started = 0;                           // workers created (under lock)
static atomic_ullong job_count, wakeup_count, stall_count, serial_count;
static _Atomic clockid_t caller_clock;            // CPU clock of the thread that published the last job
static atomic_int caller_clock_valid;
static int watch_caller = 1;                      // PTQ_POOL_WATCH_CALLER=0: spin on wall time only

// Oversubscription guard (caller side, under run_lock). A job "stalls" when the caller, done
// with its own share, waits more than 50 µs and more than half its own working time for tasks a
// worker claimed: the worker was preempted mid-task, which on a machine with more runnable
// threads than cores costs a scheduler time slice per job. When 8 of the last 64 jobs stalled,
// the next 512 jobs run on the caller alone (as the runtime did before the pool), then the pool
// is tried again. On an idle machine a job never waits that long (a task is a few µs at decode).
static uint64_t stall_history;
static int serial_jobs_left;

static _Thread_local int inside_task;
static _Thread_local int chunks_per_thread;       // 0: the loops' default

int ck_pool_in_task(void) { return inside_task; }

void ck_pool_set_chunks_per_thread(int chunks) { chunks_per_thread = chunks > 0 ? chunks : 0; }

int ck_pool_chunks_per_thread(void) { return chunks_per_thread; }

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/// CPU time of the last job's caller in ns, or -1 when unknown.
static long caller_cpu_ns(void) {
    if (!atomic_load_explicit(&caller_clock_valid, memory_order_acquire)) return -1;
    struct timespec ts;
    if (clock_gettime(atomic_load_explicit(&caller_clock, memory_order_relaxed), &ts) != 0) return -1;
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/// Claims and runs tasks of job `id` until none are left (or the job is no longer current);
/// returns how many it ran.
static size_t run_tasks(uint32_t id) {
    size_t ran = 0;
    for (;;) {
        uint_fast64_t v = atomic_load_explicit(&claim, memory_order_acquire);
        for (;;) {
            if ((uint32_t)(v >> 32) != id) return ran;
            const size_t tasks = atomic_load_explicit(&job_tasks, memory_order_relaxed);
            if ((size_t)(uint32_t)v >= tasks) return ran;
            // Success proves the job did not change between the load of v and here, so
            // `tasks` and the fields read below belong to job `id`, which cannot finish (and be
            // replaced) before this task is counted in `done`.
            if (atomic_compare_exchange_weak_explicit(&claim, &v, v + 1, memory_order_acq_rel,
                                                      memory_order_acquire))
                break;
        }
        const ck_task_fn fn = atomic_load_explicit(&job_fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&job_ctx, memory_order_relaxed);
        fn(ctx, (size_t)(uint32_t)v);
        atomic_fetch_add_explicit(&done, 1, memory_order_release);
        ran++;
    }
}

static void *worker_main(void *arg) {
    uint_fast64_t seen = (uint_fast64_t)(uintptr_t)arg;  // the generation before our first job
    inside_task = 1;
    ck_probe_register_worker();
    for (;;) {
        uint_fast64_t g = atomic_load_explicit(&generation, memory_order_acquire);
        int slept = 0;
        if (g == seen) {
            const long budget = atomic_load_explicit(&job_sleep_after, memory_order_relaxed)
                                    ? 0 : atomic_load_explicit(&spin_ns, memory_order_relaxed);
            const long start = budget > 0 ? now_ns() : 0;
            long window_wall = start, window_cpu = budget > 0 && watch_caller ? caller_cpu_ns() : -1;
            unsigned spins = 0;
            while (budget > 0 && (g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
                CK_PAUSE();
                if ((++spins & 255) == 0) {
                    const long t = now_ns();
                    if (t - start > budget) break;
                    if (window_cpu >= 0 && t - window_wall >= 20000) {
                        // The caller off its core for most of the window: sleep (see the top).
                        const long c = caller_cpu_ns();
                        if (c >= 0 && 4 * (c - window_cpu) < t - window_wall) break;
                        window_wall = t;
                        window_cpu = c;
                    }
                }
            }
            if (g == seen) {
                pthread_mutex_lock(&lock);
                atomic_fetch_add(&sleepers, 1);
                slept = 1;
                while ((g = atomic_load(&generation)) == seen) pthread_cond_wait(&wake, &lock);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&lock);
            }
        }
        seen = g;
        // The job id travels in `claim`; read it from there (any later job simply has a new id).
        const int probing = ck_probe_is_active();
        const long busy_start = probing ? now_ns() : 0;
        const size_t ran = run_tasks((uint32_t)(atomic_load_explicit(&claim, memory_order_acquire) >> 32));
        if (probing) ck_probe_worker(ran, slept, now_ns() - busy_start);
    }
    return NULL;
}

static int core_count(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void init_defaults(void) {
    const char *watch = getenv("PTQ_POOL_WATCH_CALLER");
    watch_caller = !(watch && strcmp(watch, "0") == 0);
    int expected = 0;
    atomic_compare_exchange_strong(&requested_threads, &expected, core_count());
}

void ck_pool_set_threads(int threads) {
    pthread_once(&once, init_defaults);
    if (threads < 1) threads = 1;
    if (threads > CK_POOL_MAX) threads = CK_POOL_MAX;
    atomic_store(&requested_threads, threads);
}

int ck_pool_threads(void) {
    pthread_once(&once, init_defaults);
    return atomic_load(&requested_threads);
}

void ck_pool_set_spin_microseconds(int microseconds) {
    atomic_store(&spin_ns, microseconds > 0 ? (long)microseconds * 1000L : 0L);
}

void ck_pool_counters(unsigned long long *jobs, unsigned long long *wakeups) {
    if (jobs) *jobs = atomic_load(&job_count);
    if (wakeups) *wakeups = atomic_load(&wakeup_count);
}

void ck_pool_stall_counters(unsigned long long *stalls, unsigned long long *serial_jobs) {
    if (stalls) *stalls = atomic_load(&stall_count);
    if (serial_jobs) *serial_jobs = atomic_load(&serial_count);
}

static void run_serially(size_t tasks, ck_task_fn fn, void *ctx) {
    for (size_t i = 0; i < tasks; i++) fn(ctx, i);
}

static void pool_run(size_t tasks, ck_task_fn fn, void *ctx, int sleep_after);

void ck_pool_run(size_t tasks, ck_task_fn fn, void *ctx) { pool_run(tasks, fn, ctx, 0); }

void ck_pool_run_then_sleep(size_t tasks, ck_task_fn fn, void *ctx) { pool_run(tasks, fn, ctx, 1); }

static void pool_run(size_t tasks, ck_task_fn fn, void *ctx, int sleep_after) {
    if (tasks == 0) return;
    const int threads = ck_pool_threads();
    if (tasks == 1 || threads <= 1 || tasks > UINT32_MAX || inside_task || pthread_mutex_trylock(&run_lock) != 0) {
        run_serially(tasks, fn, ctx);
        return;
    }
    if (serial_jobs_left > 0) {
        serial_jobs_left--;
        if (ck_probe_is_active()) ck_probe_serial_job(tasks);
        atomic_fetch_add_explicit(&serial_count, 1, memory_order_relaxed);
        pthread_mutex_unlock(&run_lock);
        run_serially(tasks, fn, ctx);
        return;
    }
    // Workers beyond the requested count stay parked only if they were never created; a pool
    // that once ran wider keeps its extra workers claiming tasks (harmless, and rare).
    const int workers = threads - 1;
    pthread_mutex_lock(&lock);
    while (started < workers) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1 << 20);
        const uint_fast64_t g = atomic_load(&generation);
        const int ok = pthread_create(&t, &attr, worker_main, (void *)(uintptr_t)g) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pthread_detach(t);
        started++;
    }
    const int active = started;
    pthread_mutex_unlock(&lock);
    if (active == 0) {
        pthread_mutex_unlock(&run_lock);
        run_serially(tasks, fn, ctx);
        return;
    }

    clockid_t clock;
    if (watch_caller && pthread_getcpuclockid(pthread_self(), &clock) == 0) {
        atomic_store_explicit(&caller_clock, clock, memory_order_relaxed);
        atomic_store_explicit(&caller_clock_valid, 1, memory_order_release);
    }
    const uint32_t id = ++job_id;
    atomic_store_explicit(&job_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&job_tasks, tasks, memory_order_relaxed);
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    atomic_store_explicit(&job_sleep_after, sleep_after, memory_order_relaxed);
    atomic_store_explicit(&claim, (uint_fast64_t)id << 32, memory_order_release);
    atomic_fetch_add(&generation, 1);  // seq_cst: wakes spinning workers
    atomic_fetch_add_explicit(&job_count, 1, memory_order_relaxed);
    if (atomic_load(&sleepers) > 0) {
        atomic_fetch_add_explicit(&wakeup_count, 1, memory_order_relaxed);
        pthread_mutex_lock(&lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&lock);
    }
    const long started_ns = now_ns();
    inside_task = 1;
    run_tasks(id);
    inside_task = 0;
    // Only tasks that a worker claimed and has not finished remain; on a loaded machine that
    // worker may be preempted, so after a short spin give the core away instead of burning it.
    int stalled = 0;
    const int probing = ck_probe_is_active();
    const long own_end_ns = probing ? now_ns() : 0;
    if (atomic_load_explicit(&done, memory_order_acquire) < tasks) {
        const long wait_start = probing ? own_end_ns : now_ns();
        unsigned spins = 0;
        while (atomic_load_explicit(&done, memory_order_acquire) < tasks) {
            if (++spins < 2048) CK_PAUSE();
            else sched_yield();
        }
        const long waited = now_ns() - wait_start, own = wait_start - started_ns;
        stalled = waited > 50000 && 2 * waited > own;
    }
    if (probing) ck_probe_job(tasks, started_ns, own_end_ns, now_ns());
    stall_history = (stall_history << 1) | (uint64_t)stalled;
    if (stalled) {
        atomic_fetch_add_explicit(&stall_count, 1, memory_order_relaxed);
        if (__builtin_popcountll(stall_history) >= 8) {
            serial_jobs_left = 512;
            stall_history = 0;
        }
    }
    pthread_mutex_unlock(&run_lock);
}
