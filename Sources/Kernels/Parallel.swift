import Dispatch
import Foundation

/// A pointer that may cross into `concurrentPerform` workers. Each worker must touch a
/// disjoint range; that is what makes the unchecked conformance sound.
public struct SendablePointer<T>: @unchecked Sendable {
    public let base: UnsafeMutablePointer<T>
    public init(_ base: UnsafeMutablePointer<T>) { self.base = base }
}

public enum Parallel {
    /// Worker count for our own parallel loops (the machine's cores unless `setThreadCount`
    /// chose another number). Set it before parallel work starts, not while loops run.
    public nonisolated(unsafe) private(set) static var workerCount = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Sets the threads both our parallel loops and OpenBLAS may use (at least 1).
    public static func setThreadCount(_ threads: Int) {
        workerCount = max(1, threads)
        BLAS.threadCount = workerCount
    }

    /// Runs `body` over `0..<count` split into contiguous chunks, one per worker.
    /// concurrentPerform costs about a microsecond per fan-out; task groups cost ~25 µs.
    public static func forEachChunk(_ count: Int, minimumChunk: Int = 1,
                                    _ body: @Sendable (Range<Int>) -> Void) {
        let workers = min(workerCount, max(1, count / max(1, minimumChunk)))
        if workers <= 1 { body(0..<count); return }
        let chunk = (count + workers - 1) / workers
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            let start = w * chunk, end = min(count, start + chunk)
            if start < end { body(start..<end) }
        }
    }
}

