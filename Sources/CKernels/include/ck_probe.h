#ifndef CK_PROBE_H
#define CK_PROBE_H

// Opt-in timing probe of a decode token (decode_probe.c), for finding the fixed cost between
// and around the GEMVs. Off unless the environment has PTQ_DECODE_PROFILE=1 when the first token
// runs; off, every call below is one load and a branch. On, it accumulates the wall time
// (CLOCK_MONOTONIC, ~25 ns a reading) of each phase of `LlamaModel`'s decode, the pool's
// per-job figures (caller's own share, its wait for the other threads, the gap between jobs,
// tasks, worker misses and sleeps), and prints a table to stderr at exit. On, it assumes one
// decoding thread at a time (the bench and generate loops); its sums are not synchronised.

/// Phases of a decode token, in the order they run in a layer.
enum ck_probe_phase {
    CK_PROBE_EMBED, CK_PROBE_ATTN_NORM, CK_PROBE_QKV, CK_PROBE_ROPE_KV, CK_PROBE_ATTENTION,
    CK_PROBE_O, CK_PROBE_RESIDUAL, CK_PROBE_MLP_NORM, CK_PROBE_GATE_UP, CK_PROBE_SILU,
    CK_PROBE_DOWN, CK_PROBE_FINAL_NORM, CK_PROBE_HEAD, CK_PROBE_PHASES
};

/// Starts a decode token at `depth` cached positions (reads the environment on the first call).
void ck_probe_token_begin(int depth);
/// Charges the time since the previous mark (or the token's start) to `phase`.
void ck_probe_mark(int phase);
/// Ends the token (charges the rest to nothing: the marks cover the token).
void ck_probe_token_end(void);

/// For the pool (pool.c): 1 while a probed token runs (the pool records its figures only then).
int ck_probe_is_active(void);
/// For the pool: one job of `tasks` tasks published at `start_ns`, the caller's own share done at
/// `own_end_ns`, all tasks done at `end_ns` (CLOCK_MONOTONIC).
void ck_probe_job(unsigned long tasks, long start_ns, long own_end_ns, long end_ns);
/// For the pool: a job of `tasks` tasks that ran on the caller alone (the oversubscription guard).
void ck_probe_serial_job(unsigned long tasks);
/// For the pool: registers the calling worker thread (its CPU time is summed per token).
void ck_probe_register_worker(void);
/// For the pool: a worker's part in one job, tasks it ran (0 = it missed the job), whether it
/// slept before the job, and the wall time it spent claiming and running the job's tasks.
void ck_probe_worker(unsigned long tasks, int slept, long busy_ns);

#endif
