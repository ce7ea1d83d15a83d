import CKernels
import Foundation
import Synchronization

/// `Parallel.decodeChunksPerThread` (the environment's `PTQ_DECODE_CHUNKS`, until set).
private let decodeChunksSetting = Atomic<Int>(max(1, Int(ProcessInfo.processInfo.environment["PTQ_DECODE_CHUNKS"] ?? "") ?? 1))

/// A pointer that may cross into parallel workers. Each worker must touch a disjoint range;
/// that is what makes the unchecked conformance sound.
public struct SendablePointer<T>: @unchecked Sendable {
    public let base: UnsafeMutablePointer<T>
    public init(_ base: UnsafeMutablePointer<T>) { self.base = base }
}

/// Row-parallel loops on a persistent thread pool (`ck_pool.h`).
///
/// The pool's workers are created once and spin briefly between jobs before they sleep, so
/// handing a decode-sized GEMV (tens of microseconds) to the second core costs well under a
/// microsecond, where `DispatchQueue.concurrentPerform` had to wake a GCD worker (10–30 µs).
/// The calling thread takes part in every job; nested calls (a loop started from inside a
/// task) and calls from a second thread while a job runs execute inline on the caller.
public enum Parallel {
    /// Threads our parallel loops use, the caller included (the machine's cores unless
    /// `setThreadCount` chose another number).
    public static var workerCount: Int { Int(ck_pool_threads()) }

    /// Chunks per thread of `forEachChunk` when the caller does not say: 8, or inside
    /// `withDecodeChunks` on this thread `decodeChunksPerThread`.
    public static var defaultChunksPerThread: Int {
        let chunks = Int(ck_pool_chunks_per_thread())
        return chunks > 0 ? chunks : 8
    }

    /// Chunks per thread of a decode step's row-parallel GEMVs (`withDecodeChunks`): 1 by default,
    /// i.e. each thread streams one contiguous range of a layer's rows. Every chunk starts a new
    /// weight stream that waits on DRAM until the prefetchers catch up; at decode a layer's chunk
    /// is only 10–60 KB, so eight chunks a thread spent a large share of each GEMV on those starts
    /// (`docs/RESULTS.md`, fourteenth pass: model-order layer GEMVs 2908 → 2541 µs a token at
    /// 2 threads with one chunk). `PTQ_DECODE_CHUNKS=8` in the environment starts the process
    /// with the old split. Results do not depend on it (loops split over output rows only).
    /// Process-wide.
    public static var decodeChunksPerThread: Int {
        get { decodeChunksSetting.load(ordering: .relaxed) }
        set { decodeChunksSetting.store(max(1, newValue), ordering: .relaxed) }
    }

    /// Runs `body` with `forEachChunk`'s default split on this thread set to
    /// `decodeChunksPerThread` (the previous setting is restored after it). Allocates nothing.
    @inline(__always)
    public static func withDecodeChunks<R>(_ body: () throws -> R) rethrows -> R {
        let saved = ck_pool_chunks_per_thread()
        ck_pool_set_chunks_per_thread(Int32(clamping: decodeChunksPerThread))
        defer { ck_pool_set_chunks_per_thread(saved) }
        return try body()
    }

    /// True on a pool worker running a task, and on the caller while its job runs: a parallel
    /// loop started here runs inline (and must not change process-wide state such as OpenBLAS's
    /// thread count).
    public static var isInsideTask: Bool { ck_pool_in_task() != 0 }

    /// Sets the threads both our parallel loops and OpenBLAS may use (at least 1).
    public static func setThreadCount(_ threads: Int) {
        ck_pool_set_threads(Int32(clamping: max(1, threads)))
        BLAS.threadCount = max(1, threads)
    }

    /// Runs `body` over `0..<count` split into contiguous chunks of at least `minimumChunk`
    /// elements (except the last), spread over the pool. Results must not depend on the split:
    /// callers split over output rows, never over a reduction.
    /// `sleepAfter`: the workers sleep as soon as the job is done instead of spinning for the
    /// next one (`ck_pool_run_then_sleep`), for a job followed by other threads' work.
    /// `chunksPerThread`: at most this many chunks per thread (default `defaultChunksPerThread`: 8,
    /// or a decode step's `decodeChunksPerThread`).
    public static func forEachChunk(_ count: Int, minimumChunk: Int = 1, sleepAfter: Bool = false,
                                    chunksPerThread: Int = Parallel.defaultChunksPerThread, _ body: @Sendable (Range<Int>) -> Void) {
        guard count > 0 else { return }
        guard let (tasks, chunk) = split(count, minimumChunk: minimumChunk, chunksPerThread: chunksPerThread) else {
            body(0..<count)
            return
        }
        forEach(tasks, sleepAfter: sleepAfter) { t in
            let start = t * chunk, end = min(count, start + chunk)
            if start < end { body(start..<end) }
        }
    }

    /// Runs `body(i)` for every `i` in `0..<tasks` on the pool (in no particular order);
    /// `sleepAfter` as in `forEachChunk`.
    public static func forEach(_ tasks: Int, sleepAfter: Bool = false, _ body: (Int) -> Void) {
        guard tasks > 0 else { return }
        if tasks == 1 { body(0); return }
        withoutActuallyEscaping(body) { escapable in
            var box = Box(body: escapable)
            withUnsafeMutablePointer(to: &box) { pointer in
                (sleepAfter ? ck_pool_run_then_sleep : ck_pool_run)(tasks, { context, index in
                    context!.assumingMemoryBound(to: Box.self).pointee.body(Int(index))
                }, pointer)
            }
        }
    }

    private struct Box { let body: (Int) -> Void }

    /// How `forEachChunk` splits `count` elements: nil when one thread runs them all, else the
    /// number of tasks and the chunk length.
    private static func split(_ count: Int, minimumChunk: Int, chunksPerThread: Int) -> (tasks: Int, chunk: Int)? {
        let workers = min(workerCount, max(1, count / max(1, minimumChunk)))
        if workers <= 1 { return nil }
        // Up to eight chunks per thread: chunks are claimed dynamically, so a thread that another
        // process preempts on a loaded machine holds up at most one small chunk. Streaming kernels
        // ask for fewer, longer chunks (each chunk restarts the hardware prefetcher's stream).
        let tasks = min(max(1, chunksPerThread) * workers, max(workers, count / max(1, minimumChunk)))
        return (tasks, (count + tasks - 1) / tasks)
    }

    /// A task body as a plain C function of a caller-owned context and a chunk `begin..<end`.
    ///
    /// The closure forms above hand the pool an escaping copy of their body
    /// (`withoutActuallyEscaping`), which costs one heap allocation per job; the decode token path
    /// runs ~250 jobs a token and must not allocate, so its kernels pass a context struct and a
    /// non-capturing `@convention(c)` body instead.
    public typealias ChunkFunction = @convention(c) (_ context: UnsafeRawPointer?, _ begin: Int, _ end: Int) -> Void

    private struct ChunkJob {
        let context: UnsafeRawPointer
        let body: ChunkFunction
        let chunk: Int
        let count: Int
    }

    /// `forEachChunk(_:minimumChunk:chunksPerThread:_:)` without a closure: runs
    /// `body(pointer to context, begin, end)` for every chunk (the same split), allocating nothing.
    /// `body` reads its inputs from `context` (`load(as:)`), which lives for the whole call.
    public static func forEachChunk<Context>(_ count: Int, minimumChunk: Int = 1, chunksPerThread: Int = Parallel.defaultChunksPerThread,
                                             context: Context, _ body: ChunkFunction) {
        guard count > 0 else { return }
        withUnsafePointer(to: context) { contextPointer in
            let raw = UnsafeRawPointer(contextPointer)
            guard let (tasks, chunk) = split(count, minimumChunk: minimumChunk, chunksPerThread: chunksPerThread) else {
                body(raw, 0, count)
                return
            }
            run(ChunkJob(context: raw, body: body, chunk: chunk, count: count), tasks: tasks)
        }
    }

    /// `forEach(_:_:)` without a closure: `body(pointer to context, i, i + 1)` for every i in
    /// `0..<tasks` on the pool, allocating nothing.
    public static func forEach<Context>(_ tasks: Int, context: Context, _ body: ChunkFunction) {
        guard tasks > 0 else { return }
        withUnsafePointer(to: context) { contextPointer in
            let raw = UnsafeRawPointer(contextPointer)
            if tasks == 1 { body(raw, 0, 1); return }
            run(ChunkJob(context: raw, body: body, chunk: 1, count: tasks), tasks: tasks)
        }
    }

    /// Runs `job` as `tasks` pool tasks, task t on the chunk starting at t·chunk (no allocation).
    private static func run(_ job: ChunkJob, tasks: Int) {
        withUnsafePointer(to: job) { jobPointer in
            ck_pool_run(tasks, { pointer, index in
                let job = pointer!.load(as: ChunkJob.self)
                let start = Int(index) * job.chunk, end = min(job.count, start + job.chunk)
                if start < end { job.body(job.context, start, end) }
            }, UnsafeMutableRawPointer(mutating: jobPointer))
        }
    }

    /// Parallel jobs run so far, how many had to wake a sleeping worker, how many waited long
    /// for a preempted worker (stalls), and how many ran on the caller alone because recent jobs
    /// stalled (a loaded machine: more runnable threads than cores).
    public static var poolCounters: (jobs: UInt64, wakeups: UInt64, stalls: UInt64, serialJobs: UInt64) {
        var jobs: UInt64 = 0, wakeups: UInt64 = 0, stalls: UInt64 = 0, serial: UInt64 = 0
        ck_pool_counters(&jobs, &wakeups)
        ck_pool_stall_counters(&stalls, &serial)
        return (jobs, wakeups, stalls, serial)
    }
}
