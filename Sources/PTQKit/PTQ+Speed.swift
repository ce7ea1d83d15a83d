import Kernels

extension PTQ {
    /// Memory read bandwidth in bytes per second with `threadCount` threads: the median of five
    /// parallel streaming reads of 256 MiB (pre-faulted, 8× a 32 MiB L3). `ptq bench` probes it
    /// before and after each repetition's decode and divides the median by the bytes a decoded
    /// token reads to give the memory-bandwidth bound of decode.
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

    /// Times the prefill GEMMs alone (`ptq bench --kernels --gemm`): float32 sgemm against the
    /// bf16 GEMM on SmolLM2's prefill shapes, one and two threads (`KernelBench.gemmTimings`).
    public static func benchmarkPrefillGEMMs(repeats: Int = 15) -> [PrefillGEMMTiming] {
        KernelBench.gemmTimings(repeats: repeats)
    }

    /// Whether the prefill of float-activation (weight-only) layers runs in bf16: activations
    /// and decoded weights rounded to bf16, fp32 sums (`LowBit.bf16Prefill`). On by default;
    /// `PTQ_PREFILL_BF16=0` in the environment starts a process with it off. Process-wide: set
    /// it before loading or running models, not while another thread runs a forward pass.
    public static var bf16Prefill: Bool {
        get { LowBit.bf16Prefill }
        set { LowBit.bf16Prefill = newValue }
    }

    /// Whether decode GEMVs of the weight-only formats that have a bf16 decode kernel run it:
    /// activations rounded to bf16, exact products with the codes, fp32 sums
    /// (`LowBit.bf16Decode`): u4/u8 weight-only layers and 8-bit heads, SplitQuant's packed
    /// layers and PTQ1.61's salient columns. On by default; `PTQ_DECODE_BF16=0` in the environment starts a
    /// process with it off. Process-wide: set it before running models.
    public static var bf16Decode: Bool {
        get { LowBit.bf16Decode }
        set { LowBit.bf16Decode = newValue }
    }

    /// How float-activation layers prefill with the current settings (`ptq bench` prints it).
    public static var prefillDescription: String { LowBit.prefillDescription }

    /// Waits for the background moves of loaded `.ptq` weights onto 2 MB pages
    /// (`loadPacked` starts one per model) and returns the seconds all of them took so far.
    /// Timing code calls it after a load so that timed runs see the weights' final pages.
    @discardableResult
    public static func waitForHugePages() -> Double { TokenKernels.waitForHugePages() }
}

/// The report of `PTQ.benchmarkKernels`.
public typealias KernelBenchReport = KernelBench.Report

/// One timing of `PTQ.benchmarkPrefillGEMMs`.
public typealias PrefillGEMMTiming = KernelBench.GemmTiming
