import CKernels
import Dispatch

/// Times each decode GEMV kernel on a decoder's shapes (`ptq bench --kernels`): one "token" is
/// every linear of every layer once, each through the same pool-split wrapper the runtime calls,
/// on random codes in a buffer as large as the model's layers (so the weights stream from memory
/// as in decode, not from cache). Reported against the read bandwidth measured in the same run.
public enum KernelBench {
    /// Wall milliseconds of `repeats` (≥ 1) runs of `body` after one warm-up run, ascending
    /// (median at `count / 2`).
    static func sortedMilliseconds(repeats: Int, _ body: () -> Void) -> [Double] {
        body()
        var ms: [Double] = []
        for _ in 0..<max(1, repeats) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            ms.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
        }
        return ms.sorted()
    }

    /// One kernel's timing over a token's worth of layers (or the LM head).
    public struct Timing: Encodable, Sendable {
        /// Kernel and format, e.g. `nibble W4A8 g32 (q4Gemv)`.
        public let kernel: String
        /// What one pass covers, e.g. `30 layers × 7 linears` or `head 49152×576`.
        public let pass: String
        /// Bytes one pass reads (codes, scales, row sums).
        public let bytes: Int
        /// Median, minimum and maximum milliseconds per pass.
        public let milliseconds: Double, minMilliseconds: Double, maxMilliseconds: Double
        /// bytes / median time.
        public let gigabytesPerSecond: Double
        /// `gigabytesPerSecond` as a fraction of the measured read bandwidth.
        public let bandwidthFraction: Double
    }

    /// The whole report.
    public struct Report: Encodable, Sendable {
        public let threads: Int
        public let vnni: Bool
        public let readBandwidthBytesPerSecond: Double
        /// Median microseconds of an empty two-task pool job (dispatch + join).
        public let poolJobMicroseconds: Double
        public let timings: [Timing]
        /// Prefill GEMMs, float32 sgemm against bf16 (`gemmTimings`).
        public var gemms: [GemmTiming] = []
    }

    /// Linear shapes `(rows, columns)` of one decoder layer and the layer count (SmolLM2-135M).
    public static let layerShapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    public static let layers = 30
    public static let headShape = (49152, 576)
    /// Attention heads, KV heads and head size (SmolLM2-135M), and the decode depth timed: the
    /// mean depth of llama-bench's tg128 after a 512-token prompt.
    public static let attentionShape = (heads: 9, kvHeads: 3, dim: 64)
    public static let attentionDepth = 576

    /// Runs every kernel `repeats` times (after one warm-up pass) on the pool's threads.
    public static func run(repeats: Int = 15) -> Report {
        let bandwidth = TokenKernels.measureReadBandwidth()
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            rng &+= 0x9E37_79B9_7F4A_7C15
            var z = rng
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        func bytes(_ count: Int, below limit: Int) -> [UInt8] { (0..<count).map { _ in UInt8(next() % UInt64(limit)) } }
        func floats(_ count: Int) -> [Float] { (0..<count).map { _ in Float(next() % 1000) / 1000 + 0.001 } }

        var timings: [Timing] = []
        // Kernels with an AVX-512 (VNNI) and an AVX2 path are timed on both where the CPU has VNNI.
        let vnniAvailable = TokenKernels.usesVNNI
        let paths: [(vnni: Bool, label: String)] = vnniAvailable ? [(true, " [AVX-512]"), (false, " [AVX2]")] : [(false, "")]
        // The weight-only GEMVs with the bf16 decode kernel (AVX512_BF16 only) and without.
        let decodePaths: [(bf16: Bool, label: String)] =
            LowBit.usesBF16Kernel ? [(true, " [bf16]"), (false, " [fp32]")] : [(false, "")]
        func time(_ kernel: String, _ pass: String, bytes: Int, _ body: () -> Void) {
            let ms = sortedMilliseconds(repeats: repeats, body)
            let median = ms[ms.count / 2]
            let gbps = Double(bytes) / (median / 1e3) / 1e9
            timings.append(Timing(kernel: kernel, pass: pass, bytes: bytes, milliseconds: median,
                                  minMilliseconds: ms.first!, maxMilliseconds: ms.last!, gigabytesPerSecond: gbps,
                                  bandwidthFraction: bandwidth > 0 ? gbps * 1e9 / bandwidth : 0))
        }
        let shapes = (0..<layers).flatMap { _ in layerShapes }
        let layerPass = "\(layers) layers × \(layerShapes.count) linears"
        let maxColumns = 1536, maxRows = 49152
        let x = floats(maxColumns).map { $0 - 0.5 }
        let a = bytes(maxColumns, below: 255).map { Int8(Int($0) - 127) }
        var y = [Float](repeating: 0, count: maxRows)
        var acc = [Int32](repeating: 0, count: maxRows)
        var sums = [Int32](repeating: 0, count: maxColumns / 32)

        // Offsets of each matrix in one buffer for all layers.
        func offsets(_ bytesPerMatrix: (Int, Int) -> Int) -> (offsets: [Int], total: Int) {
            var o: [Int] = [], t = 0
            for (n, k) in shapes { o.append(t); t += bytesPerMatrix(n, k) }
            return (o, t)
        }

        // FP32: sgemv on the float matrices.
        do {
            let (off, total) = offsets { n, k in n * k }
            let w = floats(total)
            w.withUnsafeBufferPointer { w in
                time("f32 sgemv (TokenKernels.sgemv)", layerPass, bytes: total * 4) {
                    for (i, (n, k)) in shapes.enumerated() {
                        TokenKernels.sgemv(w.baseAddress! + off[i], rows: n, columns: k, x: x, y: &y)
                    }
                }
            }
        }
        // Decode attention at llama-bench's mean tg128 depth after a 512-token prompt (576
        // positions), every layer's cache in its own buffer, f32 and f16 (TokenKernels.attendOne): one kernel
        // call per query head, the grouped kernels (PTQ_ATTEND_SPLIT=0) and the default split by positions.
        do {
            let splitWas = TokenKernels.splitAttention
            defer { TokenKernels.splitAttention = splitWas }
            let attentionModes = [(true, false), (false, false), (false, true)]
            func attentionModeLabel(_ perHead: Bool, _ split: Bool) -> String {
                perHead ? ", one call per head" : split ? ", split by positions" : ", grouped, PTQ_ATTEND_SPLIT=0"
            }
            let (heads, kvHeads, dim, depth) = (attentionShape.heads, attentionShape.kvHeads, attentionShape.dim, attentionDepth)
            let width = kvHeads * dim, perLayer = depth * width
            let keys = floats(layers * perLayer).map { $0 - 0.5 }, values = floats(layers * perLayer).map { $0 - 0.5 }
            var halfKeys = [UInt16](repeating: 0, count: keys.count), halfValues = halfKeys
            TokenKernels.roundToHalf(keys, into: &halfKeys, count: keys.count)
            TokenKernels.roundToHalf(values, into: &halfValues, count: values.count)
            let q = floats(heads * dim).map { $0 - 0.5 }
            var scores = [Float](repeating: 0, count: heads * depth), out = [Float](repeating: 0, count: heads * dim)
            let pass = "\(layers) layers, depth \(depth), \(heads)/\(kvHeads) heads × \(dim)"
            let scale = 1 / Float(dim).squareRoot()
            keys.withUnsafeBufferPointer { k in
                values.withUnsafeBufferPointer { v in
                    for (perHead, split) in attentionModes {
                        TokenKernels.splitAttention = split
                        time("attention, f32 cache (attendOne\(attentionModeLabel(perHead, split)))", pass,
                             bytes: 2 * layers * perLayer * 4) {
                            for l in 0..<layers {
                                TokenKernels.attendOne(q: q, keys: k.baseAddress! + l * perLayer,
                                                       values: v.baseAddress! + l * perLayer, count: depth, heads: heads,
                                                       kvHeads: kvHeads, dim: dim, stride: width, scale: scale,
                                                       scores: &scores, out: &out, perHead: perHead)
                            }
                        }
                    }
                }
            }
            halfKeys.withUnsafeBufferPointer { k in
                halfValues.withUnsafeBufferPointer { v in
                    for (perHead, split) in attentionModes {
                        TokenKernels.splitAttention = split
                        time("attention, f16 cache (attendOne halfKeys:\(attentionModeLabel(perHead, split)))", pass,
                             bytes: 2 * layers * perLayer * 2) {
                            for l in 0..<layers {
                                TokenKernels.attendOne(q: q, halfKeys: k.baseAddress! + l * perLayer,
                                                       halfValues: v.baseAddress! + l * perLayer, count: depth,
                                                       heads: heads, kvHeads: kvHeads, dim: dim, stride: width,
                                                       scale: scale, scores: &scores, out: &out, perHead: perHead)
                            }
                        }
                    }
                }
            }
        }
        // int8 per-channel codes: the prefill GEMM at one row (the decode path before) and the GEMV.
        do {
            let (off, total) = offsets { n, k in n * k }
            let w = bytes(total, below: 255).map { Int8(Int($0) - 127) }
            var rowSums: [[Int32]] = []
            for (i, (n, k)) in shapes.enumerated() { rowSums.append(LowBit.rowSumsI8(Array(w[off[i]..<off[i] + n * k]), n: n, k: k)) }
            let sumBytes = shapes.reduce(0) { $0 + $1.0 * 4 }
            w.withUnsafeBufferPointer { w in
                time("int8 GEMM at m = 1 (LowBit.gemmI8)", layerPass, bytes: total) {
                    for (i, (n, k)) in shapes.enumerated() {
                        LowBit.gemmI8(a: a, m: 1, b: w.baseAddress! + off[i], n: n, k: k, c: &acc, ldc: n)
                    }
                }
                for path in paths {
                    TokenKernels.setVNNIEnabled(path.vnni)
                    time("int8 GEMV, 8 rows per pass (LowBit.gemvI8)\(path.label)", layerPass, bytes: total + sumBytes) {
                        for (i, (n, k)) in shapes.enumerated() {
                            rowSums[i].withUnsafeBufferPointer { s in
                                LowBit.gemvI8(a: a, m: 1, b: w.baseAddress! + off[i], n: n, k: k, rowSums: s.baseAddress,
                                              c: &acc, ldc: n)
                            }
                        }
                    }
                }
                TokenKernels.setVNNIEnabled(vnniAvailable)
            }
        }
        // Nibble W4A8 g32: group sums + q4Gemv, as IntegerLinear runs them.
        do {
            let group = 32
            let (off, total) = offsets { n, k in ck_q4x8_bytes(n, k) }
            let (soff, stotal) = offsets { n, k in (n + 7) / 8 * 8 * (k / group) }
            let w = bytes(total, below: 256)
            let s = floats(stotal)
            w.withUnsafeBufferPointer { w in
                s.withUnsafeBufferPointer { s in
                    for path in paths {
                        TokenKernels.setVNNIEnabled(path.vnni)
                        time("nibble W4A8 g32 (q4GroupSums + q4Gemv)\(path.label)", layerPass, bytes: total + stotal * 4) {
                            for (i, (n, k)) in shapes.enumerated() {
                                TokenKernels.q4GroupSums(a, rows: 1, columns: k, groupSize: group, into: &sums)
                                TokenKernels.q4Gemv(codes: w.baseAddress! + off[i], rows: n, columns: k, groupSize: group,
                                                    offset: 8, scales: s.baseAddress! + soff[i], activations: a,
                                                    groupSums: sums, m: 1, y: &y, ldy: n)
                            }
                        }
                    }
                    TokenKernels.setVNNIEnabled(vnniAvailable)
                }
            }
        }
        // W4A16 g128: u4 codes with float activations.
        do {
            let group = 128
            let (off, total) = offsets { n, k in n * k / 2 }
            let (soff, stotal) = offsets { n, k in n * (k / group) }
            let w = bytes(total, below: 256)
            let s = floats(stotal), z = floats(stotal)
            w.withUnsafeBufferPointer { w in
                s.withUnsafeBufferPointer { s in
                    z.withUnsafeBufferPointer { z in
                        // The bf16 decode kernel (where the CPU has AVX512_BF16) and the float32 one.
                        for (bf16, label) in decodePaths {
                            time("u4 W4A16 g128 (LowBit.gemv)\(label)", layerPass, bytes: total + stotal * 8) {
                                for (i, (n, k)) in shapes.enumerated() {
                                    LowBit.gemv(.u4, codes: w.baseAddress! + off[i], rows: n, columns: k, groupSize: group,
                                                scales: s.baseAddress! + soff[i], zeros: z.baseAddress! + soff[i], x: x, y: &y,
                                                bf16: bf16)
                                }
                            }
                        }
                    }
                }
            }
            // The same codes in bit planes through the table-lookup GEMV (AVX-512 only), timed in
            // the same run as the nibble kernel above.
            if LowBit.planeTablesSupported {
                let layouts = shapes.enumerated().map { i, shape in
                    let (n, k) = shape
                    var codes = [UInt8](repeating: 0, count: n * k)
                    for r in 0..<n {
                        for j in 0..<k {
                            let byte = w[off[i] + r * (k / 2) + j / 2]
                            codes[r * k + j] = j & 1 == 0 ? byte & 0x0F : byte >> 4
                        }
                    }
                    // ceil(k / group) groups per row (576 columns: 4 of 128 and one of 64).
                    let g = soff[i], count = n * ((k + group - 1) / group)
                    return LowBit.PlaneLayout(codes: codes, rows: n, columns: k, groupSize: group,
                                              scales: (0..<count).map { s[(g + $0) % s.count] },
                                              zeros: (0..<count).map { z[(g + $0) % z.count] })
                }
                let bytes = layouts.reduce(0) { $0 + $1.bytes }
                time("u4 W4A16 g128 plane tables (LowBit.gemvPlanes)", layerPass, bytes: bytes) {
                    for layout in layouts { LowBit.gemvPlanes(layout, x: x, y: &y) }
                }
            }
        }
        // FP4 (E2M1) codes with float (FP8-rounded) activations through the float table GEMV, g32
        // (the LLM-FP4 recipes' grouping).
        do {
            let group = 32
            let (off, total) = offsets { n, k in n * k / 2 }
            let (soff, stotal) = offsets { n, k in n * (k / group) }
            let w = bytes(total, below: 256)
            let s = floats(stotal)
            let table: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
            w.withUnsafeBufferPointer { w in
                s.withUnsafeBufferPointer { s in
                    // With VNNI off this is the AVX2 kernel (one horizontal sum per group), the path
                    // every CPU took before the AVX-512 one.
                    for path in paths {
                        TokenKernels.setVNNIEnabled(path.vnni)
                        time("FP4 float-table GEMV g32 (MiniFloat.gemv)\(path.label)", layerPass, bytes: total + stotal * 4) {
                            for (i, (n, k)) in shapes.enumerated() {
                                MiniFloat.gemv(codes: w.baseAddress! + off[i], nibbles: true, rows: n, columns: k,
                                               groupSize: group, table: table, scales: s.baseAddress! + soff[i], x: x, y: &y)
                            }
                        }
                    }
                    // The same codes as integers (E2M1 in half units) against int16 activations (FP8
                    // grid integers times the channel shifts, the W4A8 recipe's integer path).
                    let itable: [Int8] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]
                    let a16 = (0..<maxColumns).map { _ in Int16(Int(next() % 4033) - 2016) }
                    for path in paths {
                        TokenKernels.setVNNIEnabled(path.vnni)
                        time("FP4 int16-activation GEMV g32 (MiniFloat.fp4Int16Product)\(path.label)", layerPass,
                             bytes: total + stotal * 4) {
                            for (i, (n, k)) in shapes.enumerated() {
                                MiniFloat.fp4Int16Product(codes: w.baseAddress! + off[i], rows: n, columns: k, groupSize: group,
                                                          table: itable, scales: s.baseAddress! + soff[i], activations: a16,
                                                          lda: k, m: 1, y: &y, ldy: n, kernel: .gemv)
                            }
                        }
                    }
                    // Split int16 activations (E3M4 at K = 7: integers up to 253,952 as low + 8·high,
                    // the 39 layers of the W4A8 model that took the float path before): two int16
                    // products per weight.
                    let hi16 = (0..<maxColumns).map { _ in Int16(Int(next() % 63489) - 31744) }
                    let lo16 = (0..<maxColumns).map { _ in Int16(Int(next() % 15) - 7) }
                    for path in paths {
                        TokenKernels.setVNNIEnabled(path.vnni)
                        time("FP4 split-int16 GEMV g32 (fp4Int16Product, high parts)\(path.label)", layerPass,
                             bytes: total + stotal * 4) {
                            hi16.withUnsafeBufferPointer { h in
                                for (i, (n, k)) in shapes.enumerated() {
                                    MiniFloat.fp4Int16Product(codes: w.baseAddress! + off[i], rows: n, columns: k,
                                                              groupSize: group, table: itable, scales: s.baseAddress! + soff[i],
                                                              activations: lo16, high: .init(h.baseAddress!, shift: 3),
                                                              lda: k, m: 1, y: &y, ldy: n, kernel: .gemv)
                                }
                            }
                        }
                    }
                    // The decode GEMV on byte planes (int8 VNNI, AVX-512 VNNI + BW): the same codes
                    // re-laid out in 16-row blocks at load, the int16 activations as two signed
                    // bytes, and the split ones (E3M4 at K = 7) as three.
                    TokenKernels.setVNNIEnabled(vnniAvailable)
                    if MiniFloat.fp4ByteGemvAvailable {
                        for planes in [2, 3] {
                            let layouts = shapes.enumerated().map { i, shape in
                                MiniFloat.FP4ByteLayout(codes: w.baseAddress! + off[i], rows: shape.0, columns: shape.1,
                                                        groupSize: group, table: itable, scales: s.baseAddress! + soff[i],
                                                        planes: planes)!
                            }
                            let label = planes == 2 ? "FP4 byte-plane GEMV g32 (MiniFloat.fp4ByteGemv, int16 activations)"
                                : "FP4 byte-plane GEMV g32 (fp4ByteGemv, split activations, 3 planes)"
                            time(label, layerPass, bytes: layouts.reduce(0) { $0 + $1.bytes }) {
                                hi16.withUnsafeBufferPointer { h in
                                    for layout in layouts {
                                        if planes == 2 {
                                            MiniFloat.fp4ByteGemv(layout, activations: a16, lda: layout.columns, m: 1, y: &y,
                                                                  ldy: layout.rows)
                                        } else {
                                            MiniFloat.fp4ByteGemv(layout, activations: lo16, high: .init(h.baseAddress!, shift: 3),
                                                                  lda: layout.columns, m: 1, y: &y, ldy: layout.rows)
                                        }
                                    }
                                }
                            }
                        }
                    }
                    // Prefill (512 rows) per layer shape: the float path (weight tiles decoded for
                    // sgemm) against the int16 panel GEMM on the same codes, same run.
                    let m = 512
                    let xs = (0..<m * maxColumns).map { _ in Float(Int(next() % 4033) - 2016) / 64 }
                    let as16 = (0..<m * maxColumns).map { _ in Int16(Int(next() % 4033) - 2016) }
                    let hs16 = (0..<m * maxColumns).map { _ in Int16(Int(next() % 63489) - 31744) }
                    let ls16 = (0..<m * maxColumns).map { _ in Int16(Int(next() % 15) - 7) }
                    var ys = [Float](repeating: 0, count: m * 1536)
                    for (n, k) in [(576, 576), (192, 576), (1536, 576), (576, 1536)] {
                        let i = layerShapes.firstIndex { $0 == (n, k) }!
                        let pass = "prefill \(m) rows, one \(n)×\(k) layer"
                        time("FP4 g32 tile decode + sgemm (MiniFloat.product)", pass, bytes: n * k / 2 + n * (k / group) * 4) {
                            MiniFloat.product(codes: w.baseAddress! + off[i], nibbles: true, outFeatures: n, inFeatures: k,
                                              groupSize: group, table: table, scales: s.baseAddress! + soff[i], x: xs,
                                              rows: m, y: &ys)
                        }
                        for path in paths {
                            TokenKernels.setVNNIEnabled(path.vnni)
                            time("FP4 g32 int16 panel GEMM (MiniFloat.fp4Int16Product)\(path.label)", pass,
                                 bytes: n * k / 2 + n * (k / group) * 4) {
                                MiniFloat.fp4Int16Product(codes: w.baseAddress! + off[i], rows: n, columns: k, groupSize: group,
                                                          table: itable, scales: s.baseAddress! + soff[i], activations: as16,
                                                          lda: k, m: m, y: &ys, ldy: n, kernel: .gemm)
                            }
                            time("FP4 g32 split-int16 panel GEMM (fp4Int16Product, high parts)\(path.label)", pass,
                                 bytes: n * k / 2 + n * (k / group) * 4) {
                                hs16.withUnsafeBufferPointer { h in
                                    MiniFloat.fp4Int16Product(codes: w.baseAddress! + off[i], rows: n, columns: k,
                                                              groupSize: group, table: itable, scales: s.baseAddress! + soff[i],
                                                              activations: ls16, high: .init(h.baseAddress!, shift: 3),
                                                              lda: k, m: m, y: &ys, ldy: n, kernel: .gemm)
                                }
                            }
                        }
                    }
                    TokenKernels.setVNNIEnabled(vnniAvailable)
                }
            }
        }
        // PTQ1.61 binary GEMV (column masks: no element mask, x already scaled and gathered):
        // sign bits, 64 per word, plus the row scale and offset.
        do {
            let (off, total) = offsets { n, k in n * BinaryKernels.wordsPerRow(k) }
            let signs = (0..<total).map { _ in next() }
            let ab = floats(shapes.reduce(0) { $0 + $1.0 })
            var abOff: [Int] = [], t = 0
            for (n, _) in shapes { abOff.append(t); t += n }
            signs.withUnsafeBufferPointer { w in
                ab.withUnsafeBufferPointer { ab in
                    for path in paths {
                        TokenKernels.setVNNIEnabled(path.vnni)
                        time("binary 1-bit GEMV (BinaryKernels.gemv)\(path.label)", layerPass, bytes: total * 8 + t * 8) {
                            for (i, (n, k)) in shapes.enumerated() {
                                BinaryKernels.gemv(signs: w.baseAddress! + off[i], mask: nil, wordsPerRow: BinaryKernels.wordsPerRow(k),
                                                   rows: n, x: x, xSum: 0.5, a: ab.baseAddress! + abOff[i],
                                                   b: ab.baseAddress! + abOff[i], y: &y, rest: nil)
                            }
                        }
                    }
                    TokenKernels.setVNNIEnabled(vnniAvailable)
                    // The same words on int8 activations (AVX-512 VNNI): its gather of x included.
                    if BinaryKernels.signInt8Supported {
                        let identity = Array(0..<maxColumns), ones = [Float](repeating: 1, count: maxColumns)
                        time("binary 1-bit int8-x GEMV (BinaryKernels.gemvSignInt8)", layerPass, bytes: total * 8 + t * 8) {
                            for (i, (n, k)) in shapes.enumerated() {
                                BinaryKernels.gemvSignInt8(signs: w.baseAddress! + off[i], wordsPerRow: BinaryKernels.wordsPerRow(k),
                                                           rows: n, x: x, columns: identity, columnScale: ones, count: k,
                                                           a: ab.baseAddress! + abOff[i], b: ab.baseAddress! + abOff[i], y: &y)
                            }
                        }
                        // The same bits re-laid for the lookup-table kernel (what BinaryLinear keeps
                        // with `signTableDecode` on), its table build included.
                        let relaid = shapes.enumerated().map { i, shape in
                            var words = Array(w[off[i]..<off[i] + shape.0 * BinaryKernels.wordsPerRow(shape.1)])
                            _ = BinaryKernels.repackSignTables(&words, rows: shape.0, wordsPerRow: BinaryKernels.wordsPerRow(shape.1))
                            return words
                        }
                        time("binary 1-bit int8-x lookup-table GEMV (gemvSignInt8, tables)", layerPass, bytes: total * 8 + t * 8) {
                            for (i, (n, k)) in shapes.enumerated() {
                                BinaryKernels.gemvSignInt8(signs: relaid[i], wordsPerRow: BinaryKernels.wordsPerRow(k),
                                                           rows: n, x: x, columns: identity, columnScale: ones, count: k,
                                                           a: ab.baseAddress! + abOff[i], b: ab.baseAddress! + abOff[i], y: &y,
                                                           tables: true)
                            }
                        }
                    }
                    // The same bits as one plane through the table-lookup GEMV (AVX-512 only),
                    // timed in the same run as the bit-mask kernel above.
                    if BinaryKernels.planesSupported {
                        let layouts = shapes.enumerated().map { i, shape in
                            let (n, k) = shape, wpr = BinaryKernels.wordsPerRow(k)
                            var bits = [UInt8](repeating: 0, count: n * k)
                            for r in 0..<n {
                                for j in 0..<k { bits[r * k + j] = UInt8((w[off[i] + r * wpr + j >> 6] >> UInt64(j & 63)) & 1) }
                            }
                            return BinaryKernels.SignPlaneLayout(signs: bits, rows: n, columns: k)
                        }
                        let bytes = layouts.reduce(0) { $0 + $1.bytes } + t * 8
                        time("binary 1-bit sign-plane tables (BinaryKernels.gemvPlanes)", layerPass, bytes: bytes) {
                            for (i, layout) in layouts.enumerated() {
                                BinaryKernels.gemvPlanes(layout, x: x, a: ab.baseAddress! + abOff[i], b: ab.baseAddress! + abOff[i],
                                                         y: &y)
                            }
                        }
                    }
                }
            }
        }
        // PTQ1.61 decode rows (AVX-512): every 5th column salient (4-bit codes, 116 of 576, 308
        // of 1536), the rest binarized. Per layer the sign planes on the gathered r2 ∘ x, then the
        // salient codes on the gathered x_s (plane tables, or the bf16 salient GEMV where the CPU
        // has AVX512_BF16: what BinaryLinear keeps while `bf16Decode` is on), then an add.
        if BinaryKernels.planesSupported {
            struct Part {
                let signs: BinaryKernels.SignPlaneLayout, words: [UInt64], planes: LowBit.PlaneLayout
                let salientBF16: BinaryKernels.SalientBF16Layout
                let binary: [Int], salient: [Int], r2: [Float], a: [Float], b: [Float], d: [Float], z: [Float]
            }
            let parts = shapes.map { n, k in
                let salient = (0..<k).filter { $0 % 5 == 0 }, binary = (0..<k).filter { $0 % 5 != 0 }
                let codes = bytes(n * salient.count, below: 16), d = floats(n), z = floats(n).map { $0 * 15 }
                let bits = bytes(n * binary.count, below: 2), nb = binary.count
                return Part(signs: BinaryKernels.SignPlaneLayout(signs: bits, rows: n, columns: nb),
                            words: BinaryKernels.packBits(rows: n, columns: nb) { r, c in bits[r * nb + c] != 0 },
                            planes: LowBit.PlaneLayout(codes: codes, rows: n, columns: salient.count,
                                                       groupSize: salient.count, scales: d, zeros: z),
                            salientBF16: BinaryKernels.SalientBF16Layout(codes: codes, rows: n, columns: salient.count),
                            binary: binary, salient: salient, r2: floats(binary.count), a: floats(n), b: floats(n),
                            d: d, z: z)
            }
            var gathered = [Float](repeating: 0, count: maxColumns), ys = [Float](repeating: 0, count: maxRows)
            func signs(_ part: Part) {
                for (k, j) in part.binary.enumerated() { gathered[k] = part.r2[k] * x[j] }
                BinaryKernels.gemvPlanes(part.signs, x: gathered, a: part.a, b: part.b, y: &y)
                for (k, j) in part.salient.enumerated() { gathered[k] = x[j] }
            }
            let signBytes = parts.reduce(0) { $0 + $1.signs.bytes + 8 * $1.signs.rows }
            time("PTQ1.61 row, sign + salient planes as 2 jobs a layer (gemvPlanes ×2)", layerPass,
                 bytes: signBytes + parts.reduce(0) { $0 + $1.planes.bytes }) {
                for part in parts {
                    signs(part)
                    LowBit.gemvPlanes(part.planes, x: gathered, y: &ys)
                    for o in 0..<part.signs.rows { y[o] += ys[o] }
                }
            }
            if BinaryKernels.salientBF16Supported {
                time("PTQ1.61 row, sign planes + bf16 salient columns (gemvPlanes + gemvSalientBF16)", layerPass,
                     bytes: signBytes + parts.reduce(0) { $0 + $1.salientBF16.bytes + 8 * $1.signs.rows }) {
                    for part in parts {
                        signs(part)
                        BinaryKernels.gemvSalientBF16(part.salientBF16, x: gathered, scales: part.d, zeros: part.z, y: &ys)
                        for o in 0..<part.signs.rows { y[o] += ys[o] }
                    }
                }
                if BinaryKernels.signInt8Supported {
                    var rowBytes = 0
                    for part in parts { rowBytes += 8 * part.words.count + part.salientBF16.bytes + 16 * part.signs.rows }
                    time("PTQ1.61 row, int8-x signs + bf16 salient columns (gemvSignInt8 + gemvSalientBF16)", layerPass,
                         bytes: rowBytes) {
                        for part in parts {
                            BinaryKernels.gemvSignInt8(signs: part.words, wordsPerRow: BinaryKernels.wordsPerRow(part.binary.count),
                                                       rows: part.signs.rows, x: x, columns: part.binary, columnScale: part.r2,
                                                       count: part.binary.count, a: part.a, b: part.b, y: &y)
                            for (k, j) in part.salient.enumerated() { gathered[k] = x[j] }
                            BinaryKernels.gemvSalientBF16(part.salientBF16, x: gathered, scales: part.d, zeros: part.z, y: &ys)
                            for o in 0..<part.signs.rows { y[o] += ys[o] }
                        }
                    }
                }
            }
        }
        // SplitQuant INT4 g128 (the smollm2-splitquant-int4 recipe): one index byte per weight (the
        // layout before) and the packed 4+2-bit layout (5-bit fields + cluster masks, what SplitLinear
        // keeps).
        do {
            let group = 128, bits = 4
            let clusters = shapes.map { n, k in bytes(n * k, below: 3) }
            let codes = shapes.map { n, k in bytes(n * k, below: 1 << bits) }
            let byteIndices = shapes.indices.map { i in
                SplitKernels.Indices.bytes(zip(clusters[i], codes[i]).map { $0 << UInt8(bits) | $1 })
            }
            let packed = shapes.indices.map { i in
                SplitKernels.pack4(clusters: clusters[i], codes: codes[i], rows: shapes[i].0, columns: shapes[i].1)
            }
            let (soff, stotal) = offsets { n, k in n * (k / group) * 3 }
            let s = floats(stotal), z = floats(stotal)
            s.withUnsafeBufferPointer { s in
                z.withUnsafeBufferPointer { z in
                    for (label, indices, vnniPaths) in [("byte indices", byteIndices, [(false, "")]),
                                                        ("packed 4+2 bits", packed, paths)] {
                        let indexBytes = indices.reduce(0) { $0 + $1.byteCount }
                        for path in vnniPaths {
                            TokenKernels.setVNNIEnabled(path.0)
                            time("SplitQuant INT4 g128, \(label) (SplitKernels.gemv)\(path.1)", layerPass,
                                 bytes: indexBytes + stotal * 8) {
                                for (i, (n, k)) in shapes.enumerated() {
                                    SplitKernels.gemv(indices[i], rows: n, columns: k, groupSize: group, bits: bits,
                                                      scales: s.baseAddress! + soff[i], zeros: z.baseAddress! + soff[i],
                                                      x: x, y: &y)
                                }
                            }
                        }
                    }
                    TokenKernels.setVNNIEnabled(vnniAvailable)
                }
            }
        }
        // An FP8 (E2M5, per-row scale) LM head, as smollm2-llmfp4-w4a8-head stores it: codes gathered
        // from the 256-entry table (format unknown: the path before) and decoded from their bits.
        do {
            let (n, k) = headShape
            let e = 2, m = 5
            let table: [Float] = (0..<256).map { code in
                let magnitude = code & 127, ex = magnitude >> m, mant = magnitude & 31
                let v: Float = ex == 0 ? Float(sign: .plus, exponent: 1 - m, significand: Float(mant))
                    : Float(sign: .plus, exponent: ex, significand: 1 + Float(mant) / 32)
                return code >= 128 ? -v : v
            }
            let w = bytes(n * k, below: 256)
            let s = floats(n)
            let pass = "head \(n)×\(k)"
            for (label, format) in [("table gather", nil), ("decoded in registers", (e, m))] as [(String, (Int, Int)?)] {
                time("FP8 e2m5 head GEMV, \(label) (MiniFloat.gemv)", pass, bytes: n * k + n * 4) {
                    MiniFloat.gemv(codes: w, nibbles: false, rows: n, columns: k, groupSize: k, table: table, scales: s,
                                   x: x, y: &y, format: format.map { (exponentBits: $0.0, mantissaBits: $0.1) })
                }
            }
            // The same codes as weight integers (units of 1/16) against int16 activations (E2M5
            // grid integers times 2^K, K = 3), on the int16 byte GEMV where it exists.
            if MiniFloat.fp8Int16GemvAvailable(magnitudeBits: e + m) {
                let t16 = table.map { Int16($0 * 16) }
                let a16 = (0..<k).map { _ in Int16(Int(next() % 4033) - 2016) }
                time("FP8 e2m5 head GEMV, int16 activations (MiniFloat.fp8Int16Gemv)", pass, bytes: n * k + n * 4) {
                    MiniFloat.fp8Int16Gemv(codes: w, rows: n, columns: k, groupSize: k, sumLength: k, magnitudeBits: e + m,
                                           table: t16, scales: s, activations: a16, lda: k, m: 1, y: &y, ldy: n)
                }
            }
        }
        // The 8-bit per-row weight-only LM head of the `*-head8` recipes (u8 codes, float
        // activations), bf16 and float32 decode kernels.
        do {
            let (n, k) = headShape
            let w = bytes(n * k, below: 256), s = floats(n), z = floats(n).map { ($0 * 255).rounded() }
            for (bf16, label) in decodePaths {
                time("u8 W8A16 per-row head (LowBit.gemv)\(label)", "head \(n)×\(k)", bytes: n * k + n * 8) {
                    LowBit.gemv(.u8, codes: w, rows: n, columns: k, groupSize: k, scales: s, zeros: z, x: x, y: &y,
                                bf16: bf16)
                }
            }
        }
        // The tied LM head: int8 per channel (before / after) and float.
        do {
            let (n, k) = headShape
            let w = bytes(n * k, below: 255).map { Int8(Int($0) - 127) }
            let rowSums = LowBit.rowSumsI8(w, n: n, k: k)
            let pass = "head \(n)×\(k)"
            time("int8 GEMM at m = 1 (LowBit.gemmI8)", pass, bytes: n * k) {
                LowBit.gemmI8(a: a, m: 1, b: w, n: n, k: k, c: &acc, ldc: n)
            }
            time("int8 GEMV, 8 rows per pass (LowBit.gemvI8)", pass, bytes: n * k + n * 4) {
                rowSums.withUnsafeBufferPointer { LowBit.gemvI8(a: a, m: 1, b: w, n: n, k: k, rowSums: $0.baseAddress, c: &acc, ldc: n) }
            }
        }
        // An empty job of two tasks: what each parallel matmul pays for dispatch and join.
        var jobs: [Double] = []
        for _ in 0..<2000 {
            let t0 = DispatchTime.now().uptimeNanoseconds
            Parallel.forEach(2) { _ in }
            jobs.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e3)
        }
        jobs.sort()
        return Report(threads: Parallel.workerCount, vnni: TokenKernels.usesVNNI, readBandwidthBytesPerSecond: bandwidth,
                      poolJobMicroseconds: jobs[jobs.count / 2], timings: timings,
                      gemms: gemmTimings(repeats: repeats))
    }
}
