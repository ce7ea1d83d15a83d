#define _GNU_SOURCE
#include "ck_probe.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

// Decode timing probe (ck_probe.h). A mark reads the wall clock (vDSO, ~25 ns) and the
// caller's CPU clock (a system call, ~0.3 µs: ~150 µs of a token's ~7 ms with the probe on);
// the CPU times show the phases without the time another process held the core. The caller's
// figures are plain globals (one decoding thread at a time: the bench and generate loops); the
// workers' are atomics.

static atomic_int active;
static long last_job_end_ns;
static atomic_int state;  // 0: environment not read, 1: off, 2: on (decoding threads may race to set it)
static long last_ns, token_start_ns, token_cpu_start_ns;
static long phase_ns[CK_PROBE_PHASES], phase_cpu_ns[CK_PROBE_PHASES], phase_count[CK_PROBE_PHASES];
static long last_cpu_ns, serial_jobs, serial_tasks, worker_cpu_ns, worker_cpu_start_ns;
#define MAX_WORKERS 8
static clockid_t worker_clocks[MAX_WORKERS];
static atomic_int worker_count;
static long tokens, depth_sum, token_ns, token_cpu_ns, involuntary;
static long jobs, tasks_total, own_ns_total, wait_ns_total, gap_ns_total, waited_jobs;
static long wait_hist[6];  // caller waits: <1, <2, <5, <10, <50, >=50 µs
static atomic_long worker_jobs, worker_tasks, worker_missed, worker_slept, worker_busy_ns;
// Pool jobs and the caller's waits since the last mark, charged to the phase that mark ends: which
// phase's jobs the caller waits in (load imbalance, a late worker).
static long pending_jobs, pending_wait_ns, phase_jobs[CK_PROBE_PHASES], phase_wait_ns[CK_PROBE_PHASES];
static long involuntary_start;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static long cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static long workers_cpu_ns(void) {
    long sum = 0;
    const int n = atomic_load(&worker_count);
    for (int i = 0; i < n && i < MAX_WORKERS; i++) {
        struct timespec ts;
        if (clock_gettime(worker_clocks[i], &ts) == 0) sum += (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
    }
    return sum;
}

void ck_probe_register_worker(void) {
    clockid_t c;
    if (pthread_getcpuclockid(pthread_self(), &c) != 0) return;
    const int i = atomic_fetch_add(&worker_count, 1);
    if (i < MAX_WORKERS) worker_clocks[i] = c;
    else atomic_fetch_sub(&worker_count, 1);
}

void ck_probe_serial_job(unsigned long tasks) {
    serial_jobs++;
    serial_tasks += (long)tasks;
}

static long involuntary_switches(void) {
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_nivcsw;
}

static const char *names[CK_PROBE_PHASES] = {
    "embedding row", "attention RMSNorm", "q/k/v GEMVs", "RoPE + KV append", "decode attention",
    "o_proj GEMV", "residual adds", "MLP RMSNorm", "gate/up GEMVs", "SiLU·up", "down_proj GEMV",
    "final RMSNorm", "LM head GEMV"};

static void report(void) {
    if (tokens == 0) return;
    const double t = (double)tokens;
    fprintf(stderr, "\n[decode probe] %ld tokens, mean depth %.0f, wall %.1f µs/token, caller CPU %.1f µs/token, "
            "caller involuntary switches %.2f/token\n", tokens, depth_sum / t, token_ns / t / 1e3,
            token_cpu_ns / t / 1e3, involuntary / t);
    fprintf(stderr, "[decode probe] worker CPU %.1f µs/token (its spinning included)\n", worker_cpu_ns / t / 1e3);
    fprintf(stderr, "[decode probe] %-20s %12s %8s %14s %8s %10s %9s %12s\n", "phase", "wall µs/tok", "share",
            "caller CPU µs", "share", "calls/tok", "jobs/tok", "wait µs/tok");
    for (int p = 0; p < CK_PROBE_PHASES; p++) {
        fprintf(stderr, "[decode probe] %-20s %12.1f %7.1f%% %14.1f %7.1f%% %10.1f %9.1f %12.1f\n", names[p],
                phase_ns[p] / t / 1e3, 100.0 * phase_ns[p] / (double)token_ns, phase_cpu_ns[p] / t / 1e3,
                100.0 * phase_cpu_ns[p] / (double)token_cpu_ns, phase_count[p] / t, phase_jobs[p] / t,
                phase_wait_ns[p] / t / 1e3);
    }
    fprintf(stderr, "[decode probe] pool: %.1f jobs/token ran on the caller alone (oversubscription guard), "
            "%.1f tasks/job\n", serial_jobs / t, serial_jobs ? (double)serial_tasks / serial_jobs : 0);
    fprintf(stderr, "[decode probe] pool: %.1f jobs/token, %.1f tasks/job, caller own share %.1f µs/token, "
            "caller wait for others %.1f µs/token (%.2f µs/job), caller time outside jobs %.1f µs/token\n",
            jobs / t, jobs ? (double)tasks_total / jobs : 0, own_ns_total / t / 1e3, wait_ns_total / t / 1e3,
            jobs ? wait_ns_total / (double)jobs / 1e3 : 0, gap_ns_total / t / 1e3);
    fprintf(stderr, "[decode probe] pool: caller waits per token <1 µs %.1f, 1-2 %.1f, 2-5 %.1f, 5-10 %.1f, "
            "10-50 %.1f, >=50 %.1f\n", wait_hist[0] / t, wait_hist[1] / t, wait_hist[2] / t, wait_hist[3] / t,
            wait_hist[4] / t, wait_hist[5] / t);
    fprintf(stderr, "[decode probe] pool: worker joined %.1f jobs/token, ran %.1f tasks/token, missed %.1f "
            "jobs/token, slept before %.1f jobs/token\n", atomic_load(&worker_jobs) / t,
            atomic_load(&worker_tasks) / t, atomic_load(&worker_missed) / t, atomic_load(&worker_slept) / t);
    const double busy = (double)atomic_load(&worker_busy_ns);
    fprintf(stderr, "[decode probe] pool: worker in jobs %.1f µs/token, idle (spinning, asleep or between jobs) "
            "%.1f µs/token (%.1f%% of the wall)\n", busy / t / 1e3, (token_ns - busy) / t / 1e3,
            100.0 * (token_ns - busy) / (double)token_ns);
}

void ck_probe_token_begin(int depth) {
    int on = atomic_load_explicit(&state, memory_order_relaxed);
    if (on == 0) {
        const char *e = getenv("PTQ_DECODE_PROFILE");
        const int want = e && strcmp(e, "1") == 0 ? 2 : 1;
        int expected = 0;
        if (atomic_compare_exchange_strong(&state, &expected, want) && want == 2) atexit(report);
        on = atomic_load(&state);
    }
    if (on != 2) return;
    depth_sum += depth;
    last_cpu_ns = token_cpu_start_ns = cpu_ns();
    worker_cpu_start_ns = workers_cpu_ns();
    involuntary_start = involuntary_switches();
    last_ns = token_start_ns = now_ns();
    last_job_end_ns = token_start_ns;
    pending_jobs = pending_wait_ns = 0;
    atomic_store_explicit(&active, 1, memory_order_relaxed);
}

int ck_probe_is_active(void) { return atomic_load_explicit(&active, memory_order_relaxed); }

void ck_probe_mark(int phase) {
    if (!ck_probe_is_active()) return;
    const long t = now_ns();
    const long c = cpu_ns();
    phase_ns[phase] += t - last_ns;
    phase_cpu_ns[phase] += c - last_cpu_ns;
    last_cpu_ns = c;
    phase_count[phase]++;
    phase_jobs[phase] += pending_jobs;
    phase_wait_ns[phase] += pending_wait_ns;
    pending_jobs = pending_wait_ns = 0;
    last_ns = t;
}

void ck_probe_token_end(void) {
    if (!ck_probe_is_active()) return;
    atomic_store_explicit(&active, 0, memory_order_relaxed);
    token_ns += now_ns() - token_start_ns;
    token_cpu_ns += cpu_ns() - token_cpu_start_ns;
    worker_cpu_ns += workers_cpu_ns() - worker_cpu_start_ns;
    involuntary += involuntary_switches() - involuntary_start;
    tokens++;
}

void ck_probe_job(unsigned long tasks, long start_ns, long own_end_ns, long end_ns) {
    const long own_ns = own_end_ns - start_ns, wait_ns = end_ns - own_end_ns, gap_ns = start_ns - last_job_end_ns;
    last_job_end_ns = end_ns;
    jobs++;
    pending_jobs++;
    pending_wait_ns += wait_ns;
    tasks_total += (long)tasks;
    own_ns_total += own_ns;
    wait_ns_total += wait_ns;
    gap_ns_total += gap_ns;
    if (wait_ns > 0) waited_jobs++;
    const int b = wait_ns < 1000 ? 0 : wait_ns < 2000 ? 1 : wait_ns < 5000 ? 2 : wait_ns < 10000 ? 3
                : wait_ns < 50000 ? 4 : 5;
    wait_hist[b]++;
}

void ck_probe_worker(unsigned long tasks, int slept, long busy_ns) {
    atomic_fetch_add_explicit(&worker_jobs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&worker_busy_ns, busy_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&worker_tasks, (long)tasks, memory_order_relaxed);
    if (tasks == 0) atomic_fetch_add_explicit(&worker_missed, 1, memory_order_relaxed);
    if (slept) atomic_fetch_add_explicit(&worker_slept, 1, memory_order_relaxed);
}
