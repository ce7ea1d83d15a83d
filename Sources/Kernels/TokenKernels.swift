import CKernels
import Dispatch
import Foundation
import Synchronization

/// Token-path kernels (`ck_runtime.h`): float GEMV for one activation row, decode attention,
/// and the FP4 nibble-table int8 GEMV, each on the persistent pool with a scalar `…Reference`
/// twin for tests.
public enum TokenKernels {
    /// Output rows per pool task below which a GEMV stays on one thread.
    static func minimumRows(columns: Int) -> Int { LowBit.chunk(workPerRow: columns, atLeast: 16) }

    /// `y[o] = Σ_j w[o, j]·x[j]` for all `rows` outputs (`w` row-major `[rows, columns]`),
    /// split over output rows on the pool. Replaces OpenBLAS sgemv on the decode path, so that
    /// OpenBLAS's own threads (which spin after each call) never compete with the pool.
    public static func sgemv(_ w: UnsafePointer<Float>, rows: Int, columns: Int, x: UnsafePointer<Float>,
                             y: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        if columns == 0 { y.update(repeating: 0, count: rows); return }
        // A context struct and a C body, not a closure: no allocation per call (decode path).
        let job = SgemvJob(w: w, columns: columns, x: x, y: y)
        Parallel.forEachChunk(rows, minimumChunk: minimumRows(columns: columns), chunksPerThread: sgemvChunksPerThread,
                              context: job) { context, begin, end in
            let j = context!.load(as: SgemvJob.self)
            ck_sgemv_f32(j.w, begin, end - begin, j.columns, j.x, j.y)
        }
    }

    private struct SgemvJob {
        let w: UnsafePointer<Float>, columns: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    }

    /// Pool chunks per thread for the float GEMV: long contiguous row ranges keep each core on one
    /// sequential stream (eight chunks per thread streamed ~10 % slower on an idle machine), while
    /// two still let one thread take over part of a preempted thread's share.
    static let sgemvChunksPerThread = 2

    /// One float GEMV of a row-major `[rows, columns]` matrix (`weight`) into `output`, as one
    /// part of `sgemv(parts:columns:x:)`.
    public struct GemvPart {
        public let weight: UnsafePointer<Float>
        public let rows: Int
        public let output: UnsafeMutablePointer<Float>
        public init(weight: UnsafePointer<Float>, rows: Int, output: UnsafeMutablePointer<Float>) {
            self.weight = weight
            self.rows = rows
            self.output = output
        }
    }

    /// `sgemv` of the same `x` through several matrices of `columns` columns (q/k/v, gate/up) in
    /// one pool job: the parts' rows are split as one row space, so the layers that read the same
    /// input cost one dispatch (and one wait for the slower thread) instead of one each. Every
    /// output equals what `sgemv` gives for its part alone (rows never split across a reduction).
    public static func sgemv(parts: [GemvPart], columns: Int, x: UnsafePointer<Float>) {
        parts.withUnsafeBufferPointer { sgemv(parts: $0, columns: columns, x: x) }
    }

    /// `sgemv(parts:columns:x:)` on a buffer of parts (the decode path keeps them on the stack:
    /// no allocation).
    public static func sgemv(parts: UnsafeBufferPointer<GemvPart>, columns: Int, x: UnsafePointer<Float>) {
        let total = parts.reduce(0) { $0 + $1.rows }
        guard total > 0, let base = parts.baseAddress else { return }
        if columns == 0 { for p in parts { p.output.update(repeating: 0, count: p.rows) }; return }
        let job = PartsJob(parts: base, count: parts.count, columns: columns, x: x)
        Parallel.forEachChunk(total, minimumChunk: minimumRows(columns: columns), chunksPerThread: sgemvChunksPerThread,
                              context: job) { context, rowBegin, rowEnd in
            let j = context!.load(as: PartsJob.self)
            // Walk the parts that overlap rows rowBegin..<rowEnd of the concatenated row space.
            var first = 0
            for i in 0..<j.count {
                let part = j.parts[i], last = first + part.rows
                let begin = max(first, rowBegin), end = min(last, rowEnd)
                if begin < end {
                    ck_sgemv_f32(part.weight, begin - first, end - begin, j.columns, j.x, part.output)
                }
                if last >= rowEnd { break }
                first = last
            }
        }
    }

    private struct PartsJob {
        let parts: UnsafePointer<GemvPart>, count: Int, columns: Int, x: UnsafePointer<Float>
    }

    /// Scalar twin of `sgemv`.
    public static func sgemvReference(_ w: UnsafePointer<Float>, rows: Int, columns: Int, x: UnsafePointer<Float>,
                                      y: UnsafeMutablePointer<Float>) {
        ck_sgemv_f32_ref(w, 0, rows, columns, x, y)
    }

    /// Decode attention: one query row of `heads` heads (`q` = heads × dim) over `count` cached
    /// positions, grouped-query (head h reads KV head h / (heads / kvHeads)); `keys`/`values`
    /// rows have `stride` floats (kvHeads × dim). `scores` is scratch of heads × count floats.
    /// Where `splitAttention` holds (AVX-512, the default) the KV heads' cached positions are cut
    /// into one range per pool thread (head-major, `attentionHeadMajor`), each running the query
    /// heads of its KV heads (`ck_attend_part`: each key and value row read once for the query
    /// heads of its KV head), and the ranges' softmax partials are merged (flash-decoding;
    /// results differ from the grouped kernels in summation order only).
    /// Otherwise the heads that share a KV head run in one kernel call that reads each key and value row
    /// once for all of them (`ck_attend_group`, blocks of 2 heads on the pool, see
    /// `attend`). Softmax is `Ops.softmax`'s kernel (the reference
    /// twin keeps the scalar `expf` loop). `perHead` runs the previous split, one kernel call per
    /// query head (each re-reading its KV head), kept for `ptq bench --kernels`' comparison; it is
    /// also taken on a one-thread pool without the split kernel, where it was faster for this float cache.
    public static func attendOne(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                 count: Int, heads: Int, kvHeads: Int, dim: Int, stride: Int, scale: Float,
                                 scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>,
                                 reference: Bool = false, perHead: Bool = false) {
        // On one thread the per-head calls were 4–17 % faster for the float cache in 3 of 4
        // runs of `ptq bench --kernels --threads 1` (the grouped kernel wins on 2 threads and for
        // the half cache on both; RESULTS "Grouped decode attention").
        attend(q: q, keys: keys, values: values, count: count, heads: heads, kvHeads: kvHeads, dim: dim,
               stride: stride, kvHeadStride: dim, scale: scale, scores: scores, out: out, reference: reference,
               perHead: perHead || (!reference && Parallel.workerCount == 1 && !splitsAttention(dim: dim)),
               kernels: reference ? .float(ck_attend_one_ref, ck_attend_group_ref) : .float(ck_attend_one, ck_attend_group))
    }

    /// Whether decode attention runs split by cached positions (`ck_attend_part`, AVX-512): on by
    /// default where the CPU has AVX-512 (F/BW/VL, and the VNNI switch on); `PTQ_ATTEND_SPLIT=0`
    /// in the environment starts the process on the grouped kernels (`ck_attend_group`), whose
    /// results differ from the split ones in summation order only. Process-wide: tests that
    /// flip it hold `kernelSwitchLock`.
    public static var splitAttention: Bool {
        get { ck_attend_split_enabled() != 0 }
        set { ck_set_attend_split_enabled(newValue ? 1 : 0) }
    }

    /// Whether a decode attention call of heads of `dim` values takes the split kernel.
    static func splitsAttention(dim: Int) -> Bool { splitAttention && ck_attend_part_fast(dim) != 0 }

    typealias FloatOne = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?, Int, Int,
                                         Int, Float, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void
    typealias FloatGroup = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?, Int, Int,
                                           Int, Int, Float, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void
    typealias HalfOne = @convention(c) (UnsafePointer<Float>?, UnsafePointer<UInt16>?, UnsafePointer<UInt16>?, Int, Int,
                                        Int, Float, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void
    typealias HalfGroup = @convention(c) (UnsafePointer<Float>?, UnsafePointer<UInt16>?, UnsafePointer<UInt16>?, Int, Int,
                                          Int, Int, Float, UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void

    /// The decode attention kernels of one call: the one-head kernel (per-head split) and the
    /// grouped one, for a float cache or a half cache (C function pointers, so that a pool job
    /// carries them in its context without a closure allocation).
    enum AttentionKernels {
        case float(FloatOne, FloatGroup)
        case half(HalfOne, HalfGroup)
    }

    typealias FloatPart = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?, Int, Int,
                                          Int, Int, Int, Int, Int, Float, UnsafeMutablePointer<Float>?, Int,
                                          UnsafeMutablePointer<Float>?) -> Void
    typealias HalfPart = @convention(c) (UnsafePointer<Float>?, UnsafePointer<UInt16>?, UnsafePointer<UInt16>?, Int, Int,
                                         Int, Int, Int, Int, Int, Float, UnsafeMutablePointer<Float>?, Int,
                                         UnsafeMutablePointer<Float>?) -> Void

    /// Scratch slot of the split attention's per-range partials (`ck_thread_scratch`; slot 24 is
    /// this file's), taken on the calling thread and written by every range's task.
    static let attentionPartialSlot = 24

    /// One split decode attention call. Head-major (`headMajor`, the default): the KV heads'
    /// positions, each head padded to whole 16-position tiles, laid end to end, and range t
    /// covers t·chunk ..< (t + 1)·chunk of that sequence: whole KV heads and at most two partial
    /// ones (SmolLM2, 2 ranges: head 0 and the first half of head 1, the rest of head 1 and head 2).
    /// Otherwise range t covers positions t·chunk ..< (t + 1)·chunk of every head. Either way
    /// range t leaves its partials at partial + t·heads·(dim + 2) (`ck_attend_part`), empty
    /// (l = 0, skipped by the merge) for the heads it does not touch.
    private struct SplitAttentionJob {
        let q: UnsafePointer<Float>, keys: UnsafeRawPointer, values: UnsafeRawPointer
        let count: Int, chunk: Int, heads: Int, kvHeads: Int, dim: Int, stride: Int, kvHeadStride: Int, scale: Float
        let scores: UnsafeMutablePointer<Float>, partial: UnsafeMutablePointer<Float>
        /// The half cache's range kernel (`ck_attend_part_f16`, or `ck_attend_part_f16t` for
        /// tiled keys), nil for a float cache.
        let halfPart: HalfPart?
        let headMajor: Bool

        /// Positions [begin, end) of query heads first ..< first + heads (KV heads kv ..< kv + kvHeads).
        func run(firstHead h: Int, heads: Int, kvHead kv: Int, kvHeads: Int, begin: Int, end: Int,
                 partial: UnsafeMutablePointer<Float>) {
            let q = q + h * dim, scores = scores + h * count, partial = partial + h * (dim + 2)
            if let halfPart {
                halfPart(q, keys.assumingMemoryBound(to: UInt16.self) + kv * kvHeadStride,
                         values.assumingMemoryBound(to: UInt16.self) + kv * kvHeadStride, begin, end, stride,
                         kvHeadStride, dim, heads, kvHeads, scale, scores, count, partial)
            } else {
                ck_attend_part(q, keys.assumingMemoryBound(to: Float.self) + kv * kvHeadStride,
                               values.assumingMemoryBound(to: Float.self) + kv * kvHeadStride, begin, end, stride,
                               kvHeadStride, dim, heads, kvHeads, scale, scores, count, partial)
            }
        }

        func range(_ t: Int) {
            let partial = partial + t * heads * (dim + 2)
            guard headMajor else {
                let begin = min(count, t * chunk), end = min(count, begin + chunk)
                run(firstHead: 0, heads: heads, kvHead: 0, kvHeads: kvHeads, begin: begin, end: end, partial: partial)
                return
            }
            let padded = (count + 15) & ~15, group = heads / kvHeads, first = t * chunk, last = first + chunk
            for kv in 0..<kvHeads {
                let begin = min(count, max(0, first - kv * padded)), end = min(count, max(0, last - kv * padded))
                if begin < end {
                    run(firstHead: kv * group, heads: group, kvHead: kv, kvHeads: 1, begin: begin, end: end,
                        partial: partial)
                } else {
                    for h in (kv * group)..<((kv + 1) * group) {
                        partial[h * (dim + 2)] = -.infinity
                        partial[h * (dim + 2) + 1] = 0
                    }
                }
            }
        }
    }

    /// Decode attention split into ranges (flash-decoding): one range per pool thread (see
    /// `SplitAttentionJob` for the head-major cut), each running its query heads over its
    /// positions (`ck_attend_part`: every key and value row read once for the query heads of its
    /// KV head), then `ck_attend_merge` on the calling thread. SmolLM2's 3 KV heads cannot be
    /// shared evenly by 2 threads whole; cut head-major, each thread reads 2 long streams of keys
    /// and values where the position cut gave it 3 short ones. Ranges are multiples of 16
    /// positions (a key tile). One pool job, no allocation (slot 24).
    private static func attendSplit(
        q: UnsafePointer<Float>, keys: UnsafeRawPointer, values: UnsafeRawPointer, count: Int, heads: Int,
        kvHeads: Int, dim: Int, stride: Int, kvHeadStride: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
        out: UnsafeMutablePointer<Float>, halfPart: HalfPart?, serial: Bool
    ) {
        // One range per thread by default (`attentionRangesPerThread`), claimed dynamically; at
        // least 64 positions a range (each range re-reads the queries and pays a softmax tail and
        // a merge term).
        let headMajor = attentionHeadMajor
        let length = headMajor ? kvHeads * ((count + 15) & ~15) : count
        let parts = serial ? 1 : max(1, min(attentionRangesPerThread * Parallel.workerCount, length / 64))
        let chunk = ((length + parts - 1) / parts + 15) & ~15
        let partial = LowBit.threadScratch(slot: attentionPartialSlot, count: parts * heads * (dim + 2), of: Float.self)
        let job = SplitAttentionJob(q: q, keys: keys, values: values, count: count, chunk: chunk, heads: heads,
                                    kvHeads: kvHeads, dim: dim, stride: stride, kvHeadStride: kvHeadStride, scale: scale,
                                    scores: scores, partial: partial, halfPart: halfPart, headMajor: headMajor)
        if parts == 1 {
            job.range(0)
        } else {
            Parallel.forEach(parts, context: job) { context, t, _ in context!.load(as: SplitAttentionJob.self).range(t) }
        }
        ck_attend_merge(partial, parts, heads, dim, out)
    }

    /// Whether the split decode attention cuts the KV heads' positions head-major
    /// (`SplitAttentionJob`): on, unless `PTQ_ATTEND_HEAD_MAJOR=0` was in the environment at
    /// start (then every range runs every head over a range of positions, as before). From DRAM,
    /// 2 threads: 9–18 % less CPU a layer (kernel harness, RESULTS thirteenth pass). Results
    /// differ from the position cut in summation order only (other ranges merged).
    /// Process-wide: tests that flip it hold `kernelSwitchLock`.
    public static var attentionHeadMajor: Bool {
        get { ck_attend_head_major_enabled() != 0 }
        set { ck_set_attend_head_major_enabled(newValue ? 1 : 0) }
    }

    /// Position ranges per pool thread of the split decode attention: 1, or `PTQ_ATTEND_RANGES`
    /// (1–8) from the environment at start. Each range starts 2 new DRAM streams per KV head
    /// (keys, then values); from DRAM, 2 ranges per thread cost 15–25 % more CPU than 1 (kernel
    /// harness, 240 layers, RESULTS thirteenth pass), which outweighs what the second range
    /// bought: a preempted thread holding up half its share instead of all of it.
    static let attentionRangesPerThread: Int = {
        guard let text = ProcessInfo.processInfo.environment["PTQ_ATTEND_RANGES"], let n = Int(text) else { return 1 }
        return min(max(n, 1), 8)
    }()

    /// One decode attention call's operands.
    private struct AttentionJob {
        let q: UnsafePointer<Float>, keys: UnsafeRawPointer, values: UnsafeRawPointer
        let count: Int, heads: Int, kvHeads: Int, dim: Int, stride: Int, kvHeadStride: Int, scale: Float
        let scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>
        let kernels: AttentionKernels

        /// Query heads per KV head and blocks of 2 rows per group.
        var group: Int { heads / max(1, kvHeads) }
        var blocksPerGroup: Int { (group + 1) / 2 }

        /// Runs block t of the grouped split: up to 2 consecutive query heads of one KV head.
        func block(_ t: Int) {
            let kv = t / blocksPerGroup, first = 2 * (t % blocksPerGroup)
            let h = kv * group + first, rows = min(2, group - first)
            switch kernels {
            case .float(_, let run):
                run(q + h * dim, keys.assumingMemoryBound(to: Float.self) + kv * kvHeadStride,
                    values.assumingMemoryBound(to: Float.self) + kv * kvHeadStride, count, stride, dim, rows, scale,
                    scores + h * count, out + h * dim)
            case .half(_, let run):
                run(q + h * dim, keys.assumingMemoryBound(to: UInt16.self) + kv * kvHeadStride,
                    values.assumingMemoryBound(to: UInt16.self) + kv * kvHeadStride, count, stride, dim, rows, scale,
                    scores + h * count, out + h * dim)
            }
        }

        /// Runs query head h alone (the per-head split).
        func head(_ h: Int) {
            let kv = h / group
            switch kernels {
            case .float(let run, _):
                run(q + h * dim, keys.assumingMemoryBound(to: Float.self) + kv * kvHeadStride,
                    values.assumingMemoryBound(to: Float.self) + kv * kvHeadStride, count, stride, dim, scale,
                    scores + h * count, out + h * dim)
            case .half(let run, _):
                run(q + h * dim, keys.assumingMemoryBound(to: UInt16.self) + kv * kvHeadStride,
                    values.assumingMemoryBound(to: UInt16.self) + kv * kvHeadStride, count, stride, dim, scale,
                    scores + h * count, out + h * dim)
            }
        }
    }

    /// Decode attention over a float or half cache (`kernels`).
    ///
    /// The heads run in blocks of up to 2 consecutive query heads that share KV head kvHead
    /// (`ck_attend_group`'s block: each block reads its KV head once), covering every head once;
    /// the blocks run on the pool unless `reference` or the work is small (a head is
    /// ~2·count·dim multiply-adds). SmolLM2's 9 heads over 3 KV heads make 6 blocks of 2, 1, 2,
    /// 1, 2, 1 rows, claimed dynamically (the pool's policy in `forEachChunk`): a static cut into
    /// one range per thread (5 and 4 heads) reads no fewer KV rows, and a worker that another
    /// process preempts would hold up its whole range. Query rows rather than positions are
    /// split, so no partial softmax sums need merging and a row's result does not depend on the
    /// thread count. `perHead` runs one kernel call per query head instead. A context struct
    /// and C bodies, not closures: no allocation per call.
    private static func attend(
        q: UnsafePointer<Float>, keys: UnsafeRawPointer, values: UnsafeRawPointer, count: Int, heads: Int,
        kvHeads: Int, dim: Int, stride: Int, kvHeadStride: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
        out: UnsafeMutablePointer<Float>, reference: Bool, perHead: Bool, kernels: AttentionKernels
    ) {
        guard heads > 0, count > 0 else { return }
        let serial = reference || count * dim * heads < 1 << 14
        if !reference, !perHead, kvHeads > 0, heads % kvHeads == 0, splitsAttention(dim: dim) {
            let halfPart: HalfPart?
            switch kernels {
            case .float: halfPart = nil
            case .half: halfPart = ck_attend_part_f16
            }
            attendSplit(q: q, keys: keys, values: values, count: count, heads: heads, kvHeads: kvHeads, dim: dim,
                        stride: stride, kvHeadStride: kvHeadStride, scale: scale, scores: scores, out: out,
                        halfPart: halfPart, serial: serial)
            return
        }
        let job = AttentionJob(q: q, keys: keys, values: values, count: count, heads: heads, kvHeads: kvHeads, dim: dim,
                               stride: stride, kvHeadStride: kvHeadStride, scale: scale, scores: scores, out: out,
                               kernels: kernels)
        if perHead {
            if serial {
                for h in 0..<heads { job.head(h) }
            } else {
                Parallel.forEach(heads, context: job) { context, h, _ in context!.load(as: AttentionJob.self).head(h) }
            }
        } else {
            let tasks = max(1, kvHeads) * job.blocksPerGroup
            if serial {
                for t in 0..<tasks { job.block(t) }
            } else {
                Parallel.forEach(tasks, context: job) { context, t, _ in context!.load(as: AttentionJob.self).block(t) }
            }
        }
    }

    /// `attendOne` over a half-precision cache: `keys`/`values` hold IEEE binary16 bit patterns
    /// (`stride` halves per position), widened to float in registers (AVX2+F16C; the
    /// reference twin converts one element at a time).
    ///
    /// `kvHeadStride` (halves; default `dim`, KV heads interleaved in each position's row) is the
    /// distance from one KV head's first position to the next head's: a head-major cache
    /// (`LlamaModel`'s: KV, capacity, dim) passes `stride: dim, kvHeadStride: capacity·dim`.
    public static func attendOne(q: UnsafePointer<Float>, halfKeys keys: UnsafePointer<UInt16>,
                                 halfValues values: UnsafePointer<UInt16>, count: Int, heads: Int, kvHeads: Int,
                                 dim: Int, stride: Int, kvHeadStride: Int? = nil, scale: Float,
                                 scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>,
                                 reference: Bool = false, perHead: Bool = false) {
        attend(q: q, keys: keys, values: values, count: count, heads: heads, kvHeads: kvHeads, dim: dim,
               stride: stride, kvHeadStride: kvHeadStride ?? dim, scale: scale, scores: scores, out: out,
               reference: reference, perHead: perHead,
               kernels: reference ? .half(ck_attend_one_f16_ref, ck_attend_group_f16_ref)
                                  : .half(ck_attend_one_f16, ck_attend_group_f16))
    }

    /// Whether a new half KV cache keeps its keys in tiles of 16 positions, dimension-major inside
    /// a tile (`ck_attend_part_f16t`: the scores of 16 positions come out of one vector of FMAs,
    /// no horizontal sums): on where decode attention runs split by positions (AVX-512) for heads
    /// of `dim` values, unless `PTQ_KV_TILED=0` was in the environment at start or
    /// `tiledHalfKeys` is off. Decided when a cache is made; the cache remembers its layout.
    public static func tilesHalfKeys(dim: Int) -> Bool { tiledHalfKeys && splitsAttention(dim: dim) }

    /// The tiled-key switch (`PTQ_KV_TILED=0` starts the process with it off). Process-wide:
    /// tests that flip it hold `kernelSwitchLock`.
    public static var tiledHalfKeys: Bool {
        get { ck_kv_tiled_enabled() != 0 }
        set { ck_set_kv_tiled_enabled(newValue ? 1 : 0) }
    }

    /// The tiled-key range kernel and its twin as C function pointers.
    private static let tiledPart: HalfPart = ck_attend_part_f16t
    private static let tiledPartReference: HalfPart = ck_attend_part_f16t_ref

    /// `attendOne(halfKeys:)` over a half cache whose keys are tiled (`tilesHalfKeys`; key (j, d)
    /// of KV head g at keys + g·kvHeadStride + (j − j mod 16)·dim + 16·d + j mod 16; values
    /// head-major, `dim` halves a position): always split by positions (`ck_attend_part_f16t`,
    /// its scalar twin with `reference` or without AVX-512), ranges of whole tiles. kvHeadStride
    /// covers whole tiles. Matches `attendOne(halfKeys:)` on the same values to the split
    /// kernel's tolerance (summation order).
    public static func attendOne(q: UnsafePointer<Float>, tiledHalfKeys keys: UnsafePointer<UInt16>,
                                 halfValues values: UnsafePointer<UInt16>, count: Int, heads: Int, kvHeads: Int,
                                 dim: Int, kvHeadStride: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                                 out: UnsafeMutablePointer<Float>, reference: Bool = false) {
        guard heads > 0, count > 0 else { return }
        precondition(kvHeads > 0 && heads % kvHeads == 0 && kvHeadStride % (16 * dim) == 0,
                     "tiled attention: \(heads) heads over \(kvHeads) KV heads, KV head stride \(kvHeadStride)")
        attendSplit(q: q, keys: keys, values: values, count: count, heads: heads, kvHeads: kvHeads, dim: dim,
                    stride: dim, kvHeadStride: kvHeadStride, scale: scale, scores: scores, out: out,
                    halfPart: reference ? TokenKernels.tiledPartReference : TokenKernels.tiledPart,
                    serial: reference || count * dim * heads < 1 << 14)
    }

    /// Rounds `count` floats to IEEE half bit patterns, to nearest even (F16C `vcvtps2ph`, or
    /// the bit-exact scalar twin with `reference`).
    public static func roundToHalf(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>,
                                   count: Int, reference: Bool = false) {
        guard count > 0 else { return }
        if reference { ck_f32_to_f16_ref(source, destination, count) } else { ck_f32_to_f16(source, destination, count) }
    }

    /// Rounds one position's `dim` floats into a tiled half key head (`attendOne(tiledHalfKeys:)`'s
    /// layout) at `position`, as `roundToHalf` rounds (`ck_f32_to_f16_tiled`).
    package static func roundToHalf(_ source: UnsafePointer<Float>, intoTiledHead head: UnsafeMutablePointer<UInt16>,
                                    position: Int, dim: Int) {
        ck_f32_to_f16_tiled(source, head, position, dim)
    }

    /// Widens position `position` of a tiled half key head into `dim` floats (exact).
    package static func widenHalf(tiledHead head: UnsafePointer<UInt16>, position: Int, dim: Int,
                                  into destination: UnsafeMutablePointer<Float>) {
        ck_f16_tiled_to_f32(head, position, dim, destination)
    }

    /// Widens `count` IEEE half bit patterns to floats (exact).
    public static func widenHalf(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>,
                                 count: Int, reference: Bool = false) {
        guard count > 0 else { return }
        if reference { ck_f16_to_f32_ref(source, destination, count) } else { ck_f16_to_f32(source, destination, count) }
    }

    // MARK: FP4 nibble-table int8 GEMV

    /// Whether the FP4 int8 kernels take a matrix of `columns` inputs and `groupSize` groups.
    public static func fp4Supports(columns: Int, groupSize: Int) -> Bool {
        columns > 0 && columns % 32 == 0 && groupSize % 32 == 0 && columns % groupSize == 0
    }

    /// Within every 32 columns: even columns first, then odd (the order `fp4Gemv` reads).
    public static func fp4Permute(_ a: UnsafePointer<Int8>, rows: Int, columns: Int, into out: UnsafeMutablePointer<Int8>) {
        ck_fp4_permute_i8(a, rows, columns, out)
    }

    /// `y[i·ldy + o] = Σ_g wscale[o, g]·Σ_{j∈g} table[code(o, j)]·a[i, j]` for `m` activation rows
    /// (block-permuted by `fp4Permute`) and all `rows` outputs, on the pool; VNNI, AVX2 or scalar.
    /// Bit-identical to `LowBit.gemmI8GroupedReference` on the expanded codes.
    public static func fp4Gemv(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int,
                               table: UnsafePointer<Int8>, scales: UnsafePointer<Float>,
                               permutedActivations a: UnsafePointer<Int8>, m: Int,
                               y: UnsafeMutablePointer<Float>, ldy: Int) {
        precondition(fp4Supports(columns: columns, groupSize: groupSize), "fp4Gemv: unsupported shape")
        guard rows > 0, m > 0 else { return }
        let pc = SendableConstPointer(codes), pt = SendableConstPointer(table), ps = SendableConstPointer(scales)
        let pa = SendableConstPointer(a), py = SendablePointer(y)
        Parallel.forEachChunk(rows, minimumChunk: max(4, LowBit.chunk(workPerRow: m * columns, atLeast: 8)) / 4 * 4) { r in
            ck_fp4_gemv_i8(pc.base, r.lowerBound, r.count, columns, groupSize, pt.base, ps.base, pa.base, m,
                           py.base, ldy)
        }
    }

    /// Scalar twin of `fp4Gemv`.
    public static func fp4GemvReference(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int,
                                        table: UnsafePointer<Int8>, scales: UnsafePointer<Float>,
                                        permutedActivations a: UnsafePointer<Int8>, m: Int,
                                        y: UnsafeMutablePointer<Float>, ldy: Int) {
        ck_fp4_gemv_i8_ref(codes, 0, rows, columns, groupSize, table, scales, a, m, y, ldy)
    }

    /// Several activation rows (prefill): each pool task expands its weight rows to int8 in a
    /// scratch tile and runs the grouped int8 GEMM on it (natural column order `a`).
    public static func fp4Product(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int,
                                  table: UnsafePointer<Int8>, scales: UnsafePointer<Float>,
                                  activations a: UnsafePointer<Int8>, m: Int, y: UnsafeMutablePointer<Float>) {
        guard rows > 0, m > 0 else { return }
        let groups = columns / groupSize
        let pc = SendableConstPointer(codes), pt = SendableConstPointer(table), ps = SendableConstPointer(scales)
        let pa = SendableConstPointer(a), py = SendablePointer(y)
        let tileRows = max(8, (256 * 1024) / max(1, columns))
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: m * columns, atLeast: 8)) { r in
            let tile = LowBit.threadScratch(slot: 3, count: min(tileRows, r.count) * columns, of: Int8.self)
            for r0 in stride(from: r.lowerBound, to: r.upperBound, by: tileRows) {
                let count = min(tileRows, r.upperBound - r0)
                ck_fp4_expand_i8(pc.base, r0, count, columns, pt.base, tile)
                ck_gemm_i8_grouped(pa.base, m, tile, count, columns, groupSize, ps.base + r0 * groups, py.base + r0, rows)
            }
        }
    }

    // MARK: nibble-packed integer weights × int8 activations (W4A8)

    /// Packs one-byte codes `[rows, columns]` (each < 16) into the 8-row interleaved nibble
    /// layout `q4Gemv` reads (`ck_q4x8_pack`: rows padded to a multiple of 8).
    public static func q4Pack(_ codes: [UInt8], rows: Int, columns: Int) -> [UInt8] {
        precondition(codes.count == rows * columns && columns % 8 == 0, "q4Pack: \(codes.count) codes for \(rows)×\(columns)")
        var out = [UInt8](repeating: 0, count: ck_q4x8_bytes(rows, columns))
        codes.withUnsafeBufferPointer { c in out.withUnsafeMutableBufferPointer { ck_q4x8_pack(c.baseAddress!, rows, columns, $0.baseAddress!) } }
        return out
    }

    /// Interleaves group scales `[rows, groups]` as `q4Gemv` reads them (`[block of 8 rows][group][8]`).
    public static func q4Scales(_ scales: [Float], rows: Int, groups: Int) -> [Float] {
        precondition(scales.count == rows * groups, "q4Scales: \(scales.count) scales for \(rows)×\(groups)")
        var out = [Float](repeating: 0, count: (rows + 7) / 8 * 8 * groups)
        scales.withUnsafeBufferPointer { s in out.withUnsafeMutableBufferPointer { ck_q4x8_scales(s.baseAddress!, rows, groups, $0.baseAddress!) } }
        return out
    }

    /// Per-group sums of `rows` activation rows (natural order), the `groupSums` input of `q4Gemv`.
    public static func q4GroupSums(_ a: UnsafePointer<Int8>, rows: Int, columns: Int, groupSize: Int,
                                   into groupSums: UnsafeMutablePointer<Int32>) {
        precondition(fp4Supports(columns: columns, groupSize: groupSize), "q4GroupSums: unsupported shape")
        ck_group_sums_i8(a, rows, columns, groupSize, groupSums)
    }

    /// `y[i·ldy + o] = Σ_g scale(o, g)·Σ_{j∈g} (u[o, j] − offset)·a[i, j]` for `m` activation rows
    /// (natural order) and all `rows` outputs, on codes packed by `q4Pack`, split over blocks of
    /// 8 output rows on the pool; `scales` (interleaved by `q4Scales`) nil means one group per row
    /// and the exact int32 sums as floats. Decode (m = 1) and prefill alike. VNNI, AVX2 or
    /// scalar; bit-identical to `LowBit.gemmI8GroupedReference` on the expanded codes.
    public static func q4Gemv(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int, offset: Int,
                              scales: UnsafePointer<Float>?, activations a: UnsafePointer<Int8>,
                              groupSums: UnsafePointer<Int32>, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int) {
        precondition(fp4Supports(columns: columns, groupSize: groupSize), "q4Gemv: unsupported shape")
        guard rows > 0, m > 0 else { return }
        // Split over whole 8-row blocks, so no block is computed by two tasks.
        let blocks = (rows + 7) / 8
        let job = Q4Job(codes: codes, rows: rows, columns: columns, groupSize: groupSize, offset: Int32(offset),
                        scales: scales, a: a, groupSums: groupSums, m: m, y: y, ldy: ldy)
        Parallel.forEachChunk(blocks, minimumChunk: LowBit.chunk(workPerRow: 8 * m * columns, atLeast: 1),
                              context: job) { context, b0, b1 in
            let j = context!.load(as: Q4Job.self)
            let begin = 8 * b0, end = min(j.rows, 8 * b1)
            ck_q4_gemv_i8(j.codes, begin, end - begin, j.columns, j.groupSize, j.offset, j.scales, j.a, j.groupSums,
                          j.m, j.y, j.ldy)
        }
    }

    private struct Q4Job {
        let codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int, offset: Int32
        let scales: UnsafePointer<Float>?, a: UnsafePointer<Int8>, groupSums: UnsafePointer<Int32>, m: Int
        let y: UnsafeMutablePointer<Float>, ldy: Int
    }

    /// `q4Gemv` for the output rows `range` only, on the calling thread (a range may start and end
    /// inside an 8-row block: the block is computed whole and only the range's rows are written).
    public static func q4Gemv(range: Range<Int>, codes: UnsafePointer<UInt8>, columns: Int, groupSize: Int, offset: Int,
                              scales: UnsafePointer<Float>?, activations a: UnsafePointer<Int8>,
                              groupSums: UnsafePointer<Int32>, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int) {
        precondition(fp4Supports(columns: columns, groupSize: groupSize), "q4Gemv: unsupported shape")
        ck_q4_gemv_i8(codes, range.lowerBound, range.count, columns, groupSize, Int32(offset), scales, a, groupSums, m, y, ldy)
    }

    /// Scalar twin of `q4Gemv`.
    public static func q4GemvReference(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int, offset: Int,
                                       scales: UnsafePointer<Float>?, activations a: UnsafePointer<Int8>,
                                       groupSums: UnsafePointer<Int32>, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int) {
        ck_q4_gemv_i8_ref(codes, 0, rows, columns, groupSize, Int32(offset), scales, a, groupSums, m, y, ldy)
    }

    /// Whether the int8 kernels use AVX-512 VNNI on this CPU (false also when disabled).
    public static var usesVNNI: Bool { ck_cpu_has_avx512vnni() != 0 }

    /// Turns the VNNI paths off (AVX2 instead) or back on, for tests and measurements.
    public static func setVNNIEnabled(_ enabled: Bool) { ck_set_vnni_enabled(enabled ? 1 : 0) }

    /// Held by code that switches the VNNI paths off for a while and by code whose result depends
    /// on which paths are on (tests: Swift Testing runs them in parallel, and the switch is
    /// process-wide, so a layer built while another test had VNNI off would pick other kernels).
    public static let kernelSwitchLock = NSLock()
}

extension TokenKernels {
    /// Memory read bandwidth in bytes per second: the median of `repeats` parallel streaming reads
    /// of a `bytes`-sized buffer (far larger than the caches) on the pool's threads
    /// (`readBandwidthPasses`).
    public static func measureReadBandwidth(bytes: Int = 256 << 20, repeats: Int = 5) -> Double {
        let passes = readBandwidthPasses(bytes: bytes, passes: repeats).sorted()
        let n = passes.count
        return n % 2 == 1 ? passes[n / 2] : (passes[n / 2 - 1] + passes[n / 2]) / 2
    }

    /// Read bandwidth of each of `passes` parallel streaming reads of one `bytes`-sized buffer on
    /// the pool's threads, bytes per second. The buffer is written once first, so every page is
    /// faulted in before the first timed pass; the 256 MiB default is 8× the 32 MiB L3 of the
    /// machine this was tuned on, so the passes read DRAM rather than cache. The caller takes the
    /// median: the best pass of a VM on a shared host can be a brief burst the decode never sees.
    public static func readBandwidthPasses(bytes: Int = 256 << 20, passes: Int = 5) -> [Double] {
        let count = max(1 << 20, bytes / 4)
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: 1, count: count)
        let base = SendableConstPointer(UnsafePointer(buffer))
        let chunk = 1 << 20, chunks = (count + chunk - 1) / chunk
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: chunks)
        defer { partial.deallocate() }
        let pp = SendablePointer(partial)
        var rates: [Double] = []
        var sink: Float = 0
        for _ in 0..<max(1, passes) {
            let start = DispatchTime.now().uptimeNanoseconds
            Parallel.forEachChunk(chunks) { r in
                for c in r { pp.base[c] = ck_stream_sum(base.base + c * chunk, min(chunk, count - c * chunk)) }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            for c in 0..<chunks { sink += partial[c] }
            rates.append(Double(count * 4) / seconds)
        }
        // Keeps the reads observable (the sum of ones equals the element count per pass).
        precondition(sink > 0, "bandwidth probe read nothing")
        return rates
    }
}

extension TokenKernels {
    /// Puts the process's large anonymous memory — a just-loaded model's weights — on 2 MB pages
    /// (`ck_collapse_anonymous_hugepages`: `MADV_HUGEPAGE`, then `MADV_COLLAPSE`, on every private
    /// anonymous mapping of at least `minimumBytes`). Decode streams every weight from DRAM once a
    /// token; on 4 KB pages each 4 KB of a stream costs a TLB miss and a page walk. The packed
    /// model loader (`PTQ.loadPacked`) runs it in the background after building a model
    /// (`collapseToHugePagesInBackground`); `PTQ_WEIGHT_HUGEPAGES=0` in the environment turns
    /// it off. Returns the bytes collapsed (0 where the kernel does not support it).
    @discardableResult
    public static func collapseToHugePages(minimumBytes: Int = 4 << 20) -> Int {
        Int(ck_collapse_anonymous_hugepages(minimumBytes))
    }

    /// Runs `collapseToHugePages()` on a background thread and returns at once, so a loaded model
    /// is usable while its weights move onto 2 MB pages. On this VM getting 2 MB pages costs
    /// 0.3–4 GB/s (0.05–1 s for a SmolLM2 `.ptq`, RESULTS thirteenth pass), which made a `.ptq`
    /// load slower than the HDF5 one when the loader waited for it. The kernel keeps the
    /// weights readable (and their values unchanged) while it collapses them.
    /// `waitForHugePages()` waits for every collapse started so far.
    public static func collapseToHugePagesInBackground() {
        hugePageWork.enter()
        DispatchQueue.global(qos: .utility).async {
            let start = DispatchTime.now().uptimeNanoseconds
            collapseToHugePages()
            hugePageNanoseconds.add(DispatchTime.now().uptimeNanoseconds - start, ordering: .relaxed)
            hugePageWork.leave()
        }
    }

    /// Waits until every `collapseToHugePagesInBackground()` started so far has finished and
    /// returns the seconds they spent in total (for `ptq bench`, which times decode on the final
    /// pages and reports this beside the load time).
    @discardableResult
    public static func waitForHugePages() -> Double {
        hugePageWork.wait()
        return Double(hugePageNanoseconds.load(ordering: .relaxed)) / 1e9
    }

    private static let hugePageWork = DispatchGroup()
    private static let hugePageNanoseconds = Atomic<UInt64>(0)
}

/// A half-precision KV cache's storage: `layers` runs of `count` IEEE half bit patterns, zeroed,
/// in one arena on 2 MB pages where the kernel grants them (`ck_kv_arena_alloc`: 2 MB-aligned,
/// MADV_HUGEPAGE before the first touch). Decode attention streams every layer's cache from
/// DRAM once a token; on 4 KB pages each 4 KB of a stream paid a page walk and a restarted
/// hardware prefetch (cold kernel 6–12 % slower on 4 KB pages, RESULTS twelfth pass). A class:
/// the arena is freed with the last reference; layers hand out pointers only inside `with…`.
package final class HalfCacheArena: @unchecked Sendable {
    package let layers: Int, count: Int
    private let base: UnsafeMutablePointer<UInt16>
    private let fromArena: Bool

    package init(layers: Int, count: Int) {
        self.layers = layers
        self.count = count
        let elements = max(1, layers * count)
        // An empty cache (the float cache's placeholder) takes no 2 MB arena.
        if layers * count > 0, let raw = ck_kv_arena_alloc(elements * MemoryLayout<UInt16>.stride) {
            base = raw.bindMemory(to: UInt16.self, capacity: elements)
            fromArena = true
        } else {
            base = .allocate(capacity: elements)
            base.initialize(repeating: 0, count: elements)
            fromArena = false
        }
    }

    deinit {
        if fromArena { ck_kv_arena_free(base) } else { base.deallocate() }
    }

    /// Layer `layer`'s halves.
    package subscript(layer: Int) -> Layer {
        precondition(layer >= 0 && layer < layers, "KV cache layer \(layer) out of 0..<\(layers)")
        return Layer(arena: self, start: base + layer * count)
    }

    /// One layer's run of `count` halves (keeps the arena alive while it exists).
    package struct Layer {
        let arena: HalfCacheArena, start: UnsafeMutablePointer<UInt16>

        package func withUnsafeBufferPointer<R>(_ body: (UnsafeBufferPointer<UInt16>) throws -> R) rethrows -> R {
            try withExtendedLifetime(arena) { try body(UnsafeBufferPointer(start: start, count: arena.count)) }
        }

        package func withUnsafeMutableBufferPointer<R>(
            _ body: (inout UnsafeMutableBufferPointer<UInt16>) throws -> R
        ) rethrows -> R {
            try withExtendedLifetime(arena) {
                var buffer = UnsafeMutableBufferPointer(start: start, count: arena.count)
                return try body(&buffer)
            }
        }
    }
}
