import Kernels

extension PTQ {
    /// Memory read bandwidth in bytes per second with `threadCount` threads: the best of five
    /// parallel streaming reads of 256 MiB. `ptq bench` divides it by the bytes a decoded token
    /// reads to give the memory-bandwidth bound of decode.
    public static func measureReadBandwidth() -> Double { TokenKernels.measureReadBandwidth() }

    /// The thread pool's counters: parallel jobs, jobs that woke a sleeping worker, jobs that
    /// waited long for a preempted worker, and jobs run on the caller alone after such stalls.
    public static var poolCounters: (jobs: UInt64, wakeups: UInt64, stalls: UInt64, serialJobs: UInt64) {
        Parallel.poolCounters
    }

    /// Whether the int8 kernels use AVX-512 VNNI (`vpdpbusd`) on this CPU (chosen at run time).
    public static var usesVNNIKernels: Bool { TokenKernels.usesVNNI }

    /// Times each decode GEMV kernel on SmolLM2's layer shapes against the read bandwidth of the
    /// same run (`ptq bench --kernels`; see `KernelBench`).
    public static func benchmarkKernels(repeats: Int = 15) -> KernelBenchReport { KernelBench.run(repeats: repeats) }
}

/// The report of `PTQ.benchmarkKernels`.
public typealias KernelBenchReport = KernelBench.Report
