import Foundation
import Testing
import Kernels
import Packing
@testable import PTQKit
import Quantizers

/// SplitQuant: exact k-means split, the compact split format, its packing and its kernels.
@Suite("SplitQuant")
struct SplitQuantTests {
    // MARK: Helpers

    static func randomMatrix(rows: Int, columns: Int, seed: UInt64, outliers: Bool = true) -> Tensor {
        var rng = SeededGenerator(seed: seed)
        var data = (0..<(rows * columns)).map { _ in rng.float(in: -0.05...0.05) }
        if outliers {
            // A few large weights of both signs, as real layers have.
            for _ in 0..<max(1, data.count / 50) {
                data[Int(rng.next() % UInt64(data.count))] = rng.float(in: -0.6...0.6)
            }
        }
        return Tensor(shape: [rows, columns], data: data)
    }

    /// Runs `body` with `LowBit.bf16Decode` set to `on` (holding `TokenKernels.kernelSwitchLock`),
    /// then restores it.
    static func withBF16Decode<T>(_ on: Bool, _ body: () throws -> T) rethrows -> T {
        TokenKernels.kernelSwitchLock.lock()
        let saved = LowBit.bf16Decode
        LowBit.bf16Decode = on
        defer { LowBit.bf16Decode = saved; TokenKernels.kernelSwitchLock.unlock() }
        return try body()
    }

    /// `split` with its scales all zero, ×1e30, ×1e-30, or with cluster k emptied into k + 1 mod 3.
    static func scaleCase(_ split: SplitWeight, _ name: String) -> SplitWeight {
        var split = split
        switch name {
        case "zero": split.scales = split.scales.map { _ in 0 }
        case "huge": split.scales = split.scales.map { $0 * 1e30 }
        case "tiny": split.scales = split.scales.map { $0 * 1e-30 }
        case "no cluster 0", "no cluster 1", "no cluster 2":
            let empty = UInt8(name.last!.wholeNumberValue!)
            split.clusters = split.clusters.map { $0 == empty ? (empty + 1) % 3 : $0 }
        default: break
        }
        return split
    }

    /// Row `row` of the weights `w` (row-major, `columns` wide) times `x` in double precision, and
    /// Σ|w·x| (the scale of the kernels' error bounds).
    static func exactProduct(_ w: [Float], row: Int, columns: Int, x: [Float]) -> (value: Double, magnitude: Double) {
        var value = 0.0, magnitude = 0.0
        for j in 0..<columns {
            let t = Double(w[row * columns + j]) * Double(x[j])
            value += t
            magnitude += abs(t)
        }
        return (value, magnitude)
    }

    /// Sum of squares of a labelling of `x` into clusters 0…2 around each cluster's mean.
    static func sumOfSquares(_ x: [Float], labels: [Int]) -> Double {
        var n = [0.0, 0.0, 0.0], s = [0.0, 0.0, 0.0], s2 = [0.0, 0.0, 0.0]
        for (v, k) in zip(x, labels) {
            n[k] += 1; s[k] += Double(v); s2[k] += Double(v) * Double(v)
        }
        return (0..<3).reduce(0.0) { $0 + (n[$1] > 0 ? max(0, s2[$1] - s[$1] * s[$1] / n[$1]) : 0) }
    }

    /// One part quantized on its own, as the reference does with its dense copies: the part's
    /// weights (zeros elsewhere) through the base quantizer, then summed over the three parts.
    /// `with_zero` is literally `WeightQuantization` (RTN) of the masked dense copy; `cluster`
    /// min–max over the cluster's own weights in each row/group.
    static func simulatedSum(_ w: Tensor, clustering: SplitQuant.Clustering, bits: Int, groupSize: Int?,
                             range: SplitQuant.PartRange) -> [Float] {
        let rows = w.shape[0], columns = w.shape[1]
        let group = min(groupSize ?? columns, columns)
        var sum = [Float](repeating: 0, count: w.data.count)
        for k in 0..<3 {
            let mask = w.data.map { Int(clustering.cluster(of: $0)) == k }
            var part = [Float](repeating: 0, count: w.data.count)
            switch range {
            case .withZero:
                let dense = Tensor(shape: w.shape, data: zip(w.data, mask).map { $1 ? $0 : 0 })
                let q = WeightQuantization.quantize(dense, bits: bits, symmetric: false, groupSize: groupSize)
                part = q.dequantizedReference()
                // The masked zeros stay exact on the integer grid.
                for i in part.indices where !mask[i] { #expect(part[i] == 0) }
            case .cluster:
                let maxCode = Float((1 << bits) - 1)
                for r in 0..<rows {
                    for g0 in stride(from: 0, to: columns, by: group) {
                        let idx = (g0..<min(columns, g0 + group)).map { r * columns + $0 }.filter { mask[$0] }
                        guard let lo = idx.map({ w.data[$0] }).min(), let hi = idx.map({ w.data[$0] }).max() else { continue }
                        let scale = hi > lo ? (hi - lo) / maxCode : 1, zero = -lo / scale
                        for i in idx {
                            let u = min(max((w.data[i] / scale + zero).rounded(), 0), maxCode)
                            part[i] = scale * (u - zero)
                        }
                    }
                }
            }
            for i in sum.indices where mask[i] { sum[i] += part[i] }
        }
        return sum
    }

    static func linear(_ w: SplitWeight, bias: [Float]?) -> QuantizedLinear {
        QuantizedLinear(name: "layers/0/mlp/down_proj", method: "splitquant", weight: .split(w), bias: bias)
    }

    /// x·Ŵᵀ + b in double from the reference dequantizer.
    static func referenceProduct(_ w: SplitWeight, bias: [Float]?, x: [Float], rows: Int) -> [Float] {
        let weight = w.dequantizedReference()
        var y = [Float](repeating: 0, count: rows * w.rows)
        for i in 0..<rows {
            for o in 0..<w.rows {
                var s = Double(bias?[o] ?? 0)
                for j in 0..<w.columns { s += Double(x[i * w.columns + j]) * Double(weight[o * w.columns + j]) }
                y[i * w.rows + o] = Float(s)
            }
        }
        return y
    }

    // MARK: k-means and the split

    /// The exact 1-D 3-means equals the brute-force optimum over every labelling of small arrays
    /// (including ties, duplicates and fewer than three distinct values).
    @Test func kMeansOptimumEqualsBruteForce() {
        var rng = SeededGenerator(seed: 11)
        var cases: [[Float]] = [[0.5, 0.5, 0.5], [1, 2], [3, 3, 1, 1], [0, 0, 0, 1, 2], [-1, 0, 1], [5]]
        for n in 3...9 {
            for _ in 0..<6 {
                cases.append((0..<n).map { _ in (rng.float(in: -1...1) * 8).rounded() / 8 })  // duplicates likely
                cases.append((0..<n).map { _ in rng.float(in: -1...1) * rng.float(in: 0...1) * 3 })
            }
        }
        for x in cases {
            let clustering = SplitQuant.kMeans3(x)
            let labels = x.map { Int(clustering.cluster(of: $0)) }
            var best = Double.infinity
            var labelling = [Int](repeating: 0, count: x.count)
            for code in 0..<Int(pow(3, Double(x.count))) {
                var c = code
                for i in labelling.indices { labelling[i] = c % 3; c /= 3 }
                best = min(best, Self.sumOfSquares(x, labels: labelling))
            }
            let ours = Self.sumOfSquares(x, labels: labels)
            #expect(abs(ours - best) <= 1e-9 * max(1, best), "\(x): ours \(ours), brute force \(best)")
            #expect(abs(clustering.sumOfSquares - best) <= 1e-9 * max(1, best) || Set(x).count < 3)
            // Lower ≤ middle ≤ upper, as the thresholds say.
            for (a, la) in zip(x, labels) { for (b, lb) in zip(x, labels) where la < lb { #expect(a <= b) } }
        }
    }

    /// The three parts of weights and biases are disjoint and sum exactly to the original, and
    /// the large-array path agrees with a direct search over all split pairs.
    @Test func splitIsExactInFloat() {
        let w = Self.randomMatrix(rows: 24, columns: 40, seed: 3)
        let clustering = SplitQuant.kMeans3(w.data)
        let parts = SplitQuant.split(w.data, clustering: clustering)
        for i in w.data.indices {
            #expect(parts[0][i] + parts[1][i] + parts[2][i] == w.data[i])
            #expect(parts.filter { $0[i] != 0 }.count <= 1)
        }
        #expect(parts.allSatisfy { p in p.contains { $0 != 0 } })
        // O(n²) search over the sorted values' split points: the same optimum.
        let x = w.data.map(Double.init).sorted()
        var s1 = [0.0], s2 = [0.0]
        for v in x { s1.append(s1.last! + v); s2.append(s2.last! + v * v) }
        func sse(_ a: Int, _ b: Int) -> Double {
            let s = s1[b] - s1[a]
            return s2[b] - s2[a] - s * s / Double(b - a)
        }
        var best = Double.infinity
        for i in 1..<(x.count - 1) { for j in (i + 1)..<x.count { best = min(best, sse(0, i) + sse(i, j) + sse(j, x.count)) } }
        #expect(abs(clustering.sumOfSquares - best) <= 1e-7 * best)
        let bias: [Float] = [0.3, -0.2, 0.01, 0, 0.02, -0.5, 0.7]
        let biasParts = SplitQuant.split(bias, clustering: SplitQuant.kMeans3(bias))
        for i in bias.indices { #expect(biasParts[0][i] + biasParts[1][i] + biasParts[2][i] == bias[i]) }
    }

    // MARK: The format, packing and the runtime

    /// The packed runtime layer equals the three quantized parts summed (random and odd shapes,
    /// per row and per group, both part ranges, 2…8 bits), through pack → read, on the GEMV
    /// (AVX2 and scalar) and on the tiled path.
    @Test(arguments: [(7, 13, nil as Int?, 2), (5, 300, 128, 3), (33, 130, 32, 4), (9, 64, nil, 8), (16, 200, 64, 7)])
    func runtimeEqualsThreeQuantizedPartsSummed(rows: Int, columns: Int, groupSize: Int?, bits: Int) throws {
        let w = Self.randomMatrix(rows: rows, columns: columns, seed: UInt64(rows * 1000 + columns))
        var rng = SeededGenerator(seed: 9)
        let bias = (0..<rows).map { _ in rng.float(in: -0.1...0.1) }
        for range in SplitQuant.PartRange.allCases {
            let clustering = SplitQuant.kMeans3(w.data)
            let split = SplitQuant.quantize(w, clustering: clustering, bits: bits, groupSize: groupSize, range: range)
            let expected = Self.simulatedSum(w, clustering: clustering, bits: bits, groupSize: groupSize, range: range)
            let reference = split.dequantizedReference()
            let tolerance = range == .withZero ? 0 : 1e-6 * (w.data.map(abs).max() ?? 1)
            for i in expected.indices {
                #expect(abs(reference[i] - expected[i]) <= tolerance, "\(range) element \(i): \(reference[i]) vs \(expected[i])")
            }
            // The parts of the format are the parts of the reference.
            let parts = (0..<3).map { split.dequantizedPart($0) }
            for i in reference.indices { #expect(parts[0][i] + parts[1][i] + parts[2][i] == reference[i]) }
            // Quantization is close: at most half a step of the part's grid.
            let maxScale = split.scales.max()!
            for i in w.data.indices { #expect(abs(reference[i] - w.data[i]) <= 0.5001 * maxScale + 1e-7) }

            // Pack → read round trip.
            let q = Self.linear(split, bias: bias)
            let packed = PackedModel(config: SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(),
                                     floatTensors: [:], quantizedLinears: [q.name: q], recipe: "test", statsHash: nil,
                                     modelIdentity: "x", toolVersion: "test", metadata: [:])
            let path = SyntheticModels.temporaryPath("split.ptq")
            try PackedFile.write(packed, to: path)
            let read = try PackedFile.read(path: path)
            #expect(read.quantizedLinears[q.name] == q)
            let summary = try PackedFile.summary(path: path)
            let row = try #require(summary.tensors.first { $0.name == q.name })
            #expect(row.kind == "splitquant" && row.bits == bits)

            // Runtime: GEMV (one row), tiles + sgemm (12 rows), and the scalar twin; the float32
            // GEMV (the bf16 decode GEMV is checked in bf16DecodeGemv).
            let layer = try SplitLinear(read.quantizedLinears[q.name]!)
            TokenKernels.kernelSwitchLock.lock()
            let bf16Decode = LowBit.bf16Decode
            LowBit.bf16Decode = false
            defer { LowBit.bf16Decode = bf16Decode; TokenKernels.kernelSwitchLock.unlock() }
            for xRows in [1, 12] {
                let x = (0..<(xRows * columns)).map { _ in rng.float(in: -1...1) }
                var y = [Float](repeating: 0, count: xRows * rows)
                // float32 prefill tiles: the decoded format to float rounding (bf16 checked below).
                LowBit.$bf16PrefillOverride.withValue(false) {
                    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: xRows, into: $0.baseAddress!) } }
                }
                let want = Self.referenceProduct(split, bias: bias, x: x, rows: xRows)
                let scale = want.map(abs).max()! + 1e-3
                for i in want.indices { #expect(abs(y[i] - want[i]) <= 2e-5 * scale, "\(range) \(xRows) rows, output \(i)") }
                if xRows > 1 {
                    // The default bf16 prefill: within the bf16 product bound of the reference dequantizer.
                    var yb = [Float](repeating: .nan, count: xRows * rows)
                    LowBit.$bf16PrefillOverride.withValue(true) {
                        x.withUnsafeBufferPointer { xp in yb.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: xRows, into: $0.baseAddress!) } }
                    }
                    let failures = bf16PrefillViolations(y: yb, x: x, rows: xRows, weight: reference, out: rows, k: columns, bias: bias)
                    #expect(failures.isEmpty, "\(range) bf16 prefill: \(failures.prefix(3))")
                }
                if xRows == 1 {
                    var yRef = [Float](repeating: 0, count: rows)
                    x.withUnsafeBufferPointer { xp in yRef.withUnsafeMutableBufferPointer { layer.forwardReference(xp.baseAddress!, into: $0.baseAddress!) } }
                    for i in want.indices { #expect(abs(yRef[i] - want[i]) <= 2e-5 * scale) }
                }
            }
        }
    }

    /// Dequantized tiles are exact (AVX2 and scalar), for byte and two-byte indices.
    @Test func dequantizedTilesAreExact() {
        for bits in [2, 4, 8] {
            let w = Self.randomMatrix(rows: 6, columns: 70, seed: UInt64(bits))
            let split = SplitQuant.quantize(w, clustering: SplitQuant.kMeans3(w.data), bits: bits, groupSize: 32, range: .cluster)
            var layouts: [SplitKernels.Indices] = [bits <= 6
                ? .bytes(zip(split.clusters, split.codes).map { $0 << UInt8(bits) | $1 })
                : .halfwords(zip(split.clusters, split.codes).map { UInt16($0) << UInt16(bits) | UInt16($1) })]
            if bits <= SplitKernels.maxPackedBits {
                layouts.append(SplitKernels.pack4(clusters: split.clusters, codes: split.codes, rows: 6, columns: 70))
            }
            let want = split.dequantizedReference()
            for indices in layouts {
            for reference in [false, true] {
                var tile = [Float](repeating: .nan, count: 6 * 70)
                split.scales.withUnsafeBufferPointer { s in
                    split.zeros.withUnsafeBufferPointer { z in
                        tile.withUnsafeMutableBufferPointer { t in
                            SplitKernels.dequantizeRows(indices, rowRange: 0..<6, columns: 70, groupSize: 32, bits: bits,
                                                        scales: s.baseAddress!, zeros: z.baseAddress!, into: t.baseAddress!,
                                                        reference: reference)
                        }
                    }
                }
                #expect(tile == want, "\(bits) bits, reference \(reference)")
            }
            }
        }
    }

    /// The bf16 decode GEMV on the packed layout (`LowBit.bf16Decode`): the AVX-512 kernel gives
    /// its scalar twin's bits (the emulation of `vdpbf16ps`), and the result is within the two
    /// bf16 roundings (2^-7 of Σ|w·x|) of the double-precision product of the exact weights — on
    /// odd and ragged shapes (columns below, at and across 16, 32 and 96), groups of 32, 64 and 128
    /// and one per row, each cluster empty, all-zero activations, all-zero and extreme scales.
    @Test(arguments: [(5, 13, nil as Int?, 2), (7, 70, 32, 3), (9, 130, 64, 4), (4, 576, 128, 4), (2, 1536, 128, 4),
                      (1, 33, 32, 2), (4, 191, nil, 3), (3, 288, 96, 4), (2, 17, 32, 4), (1, 1, nil, 4),
                      (2, 384, 128, 4), (3, 97, 32, 4), (2, 160, 32, 4), (3, 250, 64, 2)])
    func bf16DecodeGemv(rows: Int, columns: Int, groupSize: Int?, bits: Int) {
        Self.withBF16Decode(true) {
        let w = Self.randomMatrix(rows: rows, columns: columns, seed: UInt64(rows * 131 + columns))
        let base = SplitQuant.quantize(w, clustering: SplitQuant.kMeans3(w.data), bits: bits, groupSize: groupSize,
                                       range: .cluster)
        var rng = SeededGenerator(seed: UInt64(columns * 7 + bits))
        for scaleCase in ["quantized", "zero", "huge", "tiny", "no cluster 0", "no cluster 1", "no cluster 2"] {
            let split = Self.scaleCase(base, scaleCase)
            let gs = min(split.groupSize, columns)
            let packed = SplitKernels.pack4(clusters: split.clusters, codes: split.codes, rows: rows, columns: columns)
            let want = split.dequantizedReference()
            for xCase in ["random", "zero", "wide"] {
                let x: [Float] = switch xCase {
                case "zero": [Float](repeating: 0, count: columns)
                case "wide": (0..<columns).map { j in rng.float(in: -1...1) * (j % 5 == 0 ? 300 : 1) }
                default: (0..<columns).map { _ in rng.float(in: -1...1) }
                }
                var y = [Float](repeating: .nan, count: rows), twin = y
                split.scales.withUnsafeBufferPointer { s in
                    split.zeros.withUnsafeBufferPointer { z in
                        SplitKernels.gemv(packed, rows: rows, columns: columns, groupSize: gs, bits: bits,
                                          scales: s.baseAddress!, zeros: z.baseAddress!, x: x, y: &y)
                        SplitKernels.gemvBF16Reference(packed, rows: rows, columns: columns, groupSize: gs, bits: bits,
                                                       scales: s.baseAddress!, zeros: z.baseAddress!, x: x, y: &twin)
                    }
                }
                for o in 0..<rows {
                    let (expected, magnitude) = Self.exactProduct(want, row: o, columns: columns, x: x)
                    #expect(y[o].bitPattern == twin[o].bitPattern,
                            "\(scaleCase) x \(xCase) row \(o): kernel \(y[o]) vs twin \(twin[o])")
                    // Two roundings to bf16 (8-bit significands: ≤ 2^-8 each) per product, then fp32 sums.
                    #expect(abs(Double(twin[o]) - expected) <= (0x1p-7 + 1e-5) * magnitude,
                            "\(scaleCase) x \(xCase) row \(o): \(twin[o]) vs \(expected)")
                }
            }
        }
        }
    }

    /// The packed layout (96-weight superblocks of 5-bit fields and cluster masks): pack →
    /// dequantize is the reference dequantizer (every shape, both kernel paths and the scalar
    /// twin), and its GEMV (AVX-512, scalar) matches the double-precision product and the twin on
    /// random and odd shapes (columns below, at and across 16, 32 and 96), groups that are and are
    /// not multiples of 16 (the latter run the twin), one group per row, all-zero activations, an
    /// all-zero row of codes in cluster 0 and one in cluster 2, all-zero and extreme scales.
    @Test(arguments: [(5, 13, nil as Int?, 2), (7, 70, 32, 3), (9, 130, 64, 4), (4, 576, 128, 4), (3, 100, 7, 4),
                      (2, 1536, 128, 4), (1, 33, 32, 2), (3, 96, 16, 4), (2, 97, 48, 4), (4, 191, nil, 3),
                      (2, 200, 16, 2), (3, 288, 96, 4), (2, 17, 16, 4), (1, 1, nil, 4), (2, 384, 128, 4)])
    func packedFourBitLayout(rows: Int, columns: Int, groupSize: Int?, bits: Int) {
        // The float32 GEMV (bf16DecodeGemv checks the bf16 one).
        Self.withBF16Decode(false) {
        let w = Self.randomMatrix(rows: rows, columns: columns, seed: UInt64(rows * 31 + columns))
        let base = SplitQuant.quantize(w, clustering: SplitQuant.kMeans3(w.data), bits: bits, groupSize: groupSize,
                                       range: .cluster)
        var rng = SeededGenerator(seed: UInt64(columns))
        for scaleCase in ["quantized", "zero", "huge", "tiny", "zero rows"] {
            var split = Self.scaleCase(base, scaleCase)
            switch scaleCase {
            case "zero rows":  // row 0: code 0 in cluster 0; the last row: code 0 in cluster 2
                for j in 0..<columns {
                    split.codes[j] = 0
                    split.clusters[j] = 0
                    split.codes[(rows - 1) * columns + j] = 0
                    split.clusters[(rows - 1) * columns + j] = 2
                }
            default: break
            }
            let gs = min(split.groupSize, columns)
            let packed = SplitKernels.pack4(clusters: split.clusters, codes: split.codes, rows: rows, columns: columns)
            let want = split.dequantizedReference()
            for vnni in [true, false] {
                TokenKernels.setVNNIEnabled(vnni)
                defer { TokenKernels.setVNNIEnabled(true) }
                for reference in [false, true] {
                    var tile = [Float](repeating: .nan, count: rows * columns)
                    split.scales.withUnsafeBufferPointer { s in
                        split.zeros.withUnsafeBufferPointer { z in
                            tile.withUnsafeMutableBufferPointer { t in
                                SplitKernels.dequantizeRows(packed, rowRange: 0..<rows, columns: columns, groupSize: gs,
                                                            bits: bits, scales: s.baseAddress!, zeros: z.baseAddress!,
                                                            into: t.baseAddress!, reference: reference)
                            }
                        }
                    }
                    #expect(tile == want, "\(scaleCase) tile, vnni \(vnni), reference \(reference)")
                }
                for xCase in ["random", "zero"] {
                    let x = xCase == "zero" ? [Float](repeating: 0, count: columns)
                                            : (0..<columns).map { _ in rng.float(in: -1...1) }
                    var twin = [Float](repeating: .nan, count: rows)
                    for reference in [true, false] {
                        var y = [Float](repeating: .nan, count: rows)
                        split.scales.withUnsafeBufferPointer { s in
                            split.zeros.withUnsafeBufferPointer { z in
                                SplitKernels.gemv(packed, rows: rows, columns: columns, groupSize: gs, bits: bits,
                                                  scales: s.baseAddress!, zeros: z.baseAddress!, x: x, y: &y,
                                                  reference: reference)
                            }
                        }
                        for o in 0..<rows {
                            let (expected, magnitude) = Self.exactProduct(want, row: o, columns: columns, x: x)
                            #expect(abs(Double(y[o]) - expected) <= 1e-5 * magnitude,
                                    "\(scaleCase) x \(xCase) row \(o): \(y[o]) vs \(expected), vnni \(vnni), reference \(reference)")
                            // The fast path against its scalar twin: same weights, other summation order.
                            if !reference {
                                #expect(abs(Double(y[o]) - Double(twin[o])) <= 1e-5 * magnitude,
                                        "\(scaleCase) x \(xCase) row \(o): \(y[o]) vs twin \(twin[o]), vnni \(vnni)")
                            }
                        }
                        if reference { twin = y }
                    }
                }
            }
        }
        }
    }

    /// Tiny layers (1×1, fewer than three rows or distinct values), an all-zero weight and an
    /// all-zero bias: split, quantized and run without special cases. The reference skips the
    /// split when the bias is all zeros; we do not.
    @Test func zeroBiasAndTinyLayers() throws {
        // Exact weights, float32 decode GEMV (bf16 rounds 0.12 and 0.11).
        TokenKernels.kernelSwitchLock.lock()
        let bf16Decode = LowBit.bf16Decode
        LowBit.bf16Decode = false
        defer { LowBit.bf16Decode = bf16Decode; TokenKernels.kernelSwitchLock.unlock() }
        let cases: [(Tensor, [Float]?)] = [
            (Tensor(shape: [1, 1], data: [0.25]), [0]),
            (Tensor(shape: [2, 3], data: [-0.9, 0.1, 0.12, 0.8, 0.11, -0.1]), [0, 0]),
            (Tensor(shape: [3, 2], data: [Float](repeating: 0, count: 6)), nil),
            (Tensor(shape: [2, 2], data: [0.5, -0.5, 0.5, -0.5]), [0.1, 0.1]),
        ]
        let plan = LayerPlan(name: "layers/0/mlp/up_proj", role: .mlpInputProjection, inputPoint: "layers.0.mlp.input",
                             method: "splitquant",
                             weight: WeightScheme(bits: 2, symmetric: false), activation: nil,
                             parameters: MethodParameters(source: "t", path: "p", method: "splitquant", line: 1),
                             ruleLine: nil, outFeatures: 1, inFeatures: 1, hasBias: true)
        let quantizer = try SplitQuantQuantizer(plan: plan)
        for (w, bias) in cases {
            let q = try quantizer.quantize(LinearLayer(plan, weight: w, bias: bias), statistics: nil)
            guard case .split(let split) = q.weight else { Issue.record("not split"); continue }
            #expect(q.bias == bias)
            // With ≤ 2 distinct values per cluster every weight is exact on its cluster's grid.
            let values = split.dequantizedReference()
            for i in values.indices { #expect(abs(values[i] - w.data[i]) <= 1e-7, "\(w.shape) element \(i)") }
            let layer = try SplitLinear(q)
            let x = [Float](repeating: 1, count: w.shape[1])
            var y = [Float](repeating: 0, count: w.shape[0])
            x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: 1, into: $0.baseAddress!) } }
            for o in 0..<w.shape[0] {
                let want = (0..<w.shape[1]).reduce(bias?[o] ?? 0) { $0 + w.data[o * w.shape[1] + $1] }
                #expect(abs(y[o] - want) <= 1e-6)
            }
        }
        // The all-zero-bias 2×3 layer is split into three clusters.
        let q = try quantizer.quantize(LinearLayer(plan, weight: cases[1].0, bias: [0, 0]), statistics: nil)
        guard case .split(let split) = q.weight else { Issue.record("not split"); return }
        #expect(Set(split.clusters) == [0, 1, 2])
        #expect(q.details["bias_split_counts"] == "0 / 2 / 0")
    }

    /// The one-pass load-time transform (`checkedPack4`, issue 13) writes exactly the bytes of the
    /// scalar reference (`pack4Reference`, the loop it replaced) on random ids and codes of every
    /// width, for columns below, at and across whole 96-weight superblocks; and it reports the
    /// first invalid element (cluster id 3 or above, a code wider than `bits`) in a whole
    /// superblock and in a row's partial tail, while `SplitLinear` names it.
    @Test func packTransformMatchesReference() throws {
        var rng = SeededGenerator(seed: 13)
        for (rows, columns) in [(1, 1), (3, 95), (2, 96), (4, 97), (2, 192), (3, 250), (5, 576)] {
            for bits in 2...4 {
                let count = rows * columns
                let clusters = (0..<count).map { _ in UInt8(rng.next() % 3) }
                let codes = (0..<count).map { _ in UInt8(rng.next() % UInt64(1 << bits)) }
                let (fast, firstInvalid) = SplitKernels.checkedPack4(clusters: clusters, codes: codes, rows: rows,
                                                                     columns: columns, bits: bits)
                #expect(firstInvalid == nil)
                guard case .packed4(let got) = fast,
                      case .packed4(let want) = SplitKernels.pack4Reference(clusters: clusters, codes: codes,
                                                                            rows: rows, columns: columns) else {
                    Issue.record("not the packed layout"); continue
                }
                #expect(got == want, "\(rows)×\(columns), \(bits) bits")
                // Invalid elements: a whole superblock (if any) and the last element (a tail when
                // columns is not a multiple of 96); the earlier of two is reported.
                let late = count - 1, early = columns >= 96 ? 40 : count - 1
                for (index, cluster, code) in [(late, UInt8(3), UInt8(0)), (late, 0, UInt8(1 << bits)),
                                                (early, 7, 0), (early, 1, UInt8(1 << bits) | 1)] {
                    var c = clusters, q = codes
                    c[index] = cluster; q[index] = code
                    if index == early && early != late { c[late] = 3 }
                    let (_, bad) = SplitKernels.checkedPack4(clusters: c, codes: q, rows: rows, columns: columns, bits: bits)
                    #expect(bad == index, "\(rows)×\(columns), \(bits) bits, cluster \(cluster) code \(code) at \(index)")
                }
            }
        }
        // Through the layer: the message names the layer, the element and what is wrong with it.
        let w = Self.randomMatrix(rows: 2, columns: 130, seed: 5)
        let good = SplitQuant.quantize(w, clustering: SplitQuant.kMeans3(w.data), bits: 4, groupSize: 32, range: .cluster)
        var badCluster = good; badCluster.clusters[200] = 3
        var badCode = good; badCode.bits = 3; badCode.codes = good.codes.map { $0 & 7 }; badCode.codes[17] = 9
        for (bad, expected) in [(badCluster, "cluster id 3 at element 200"), (badCode, "weight code 9 at element 17")] {
            do {
                _ = try SplitLinear(Self.linear(bad, bias: nil))
                Issue.record("accepted \(expected)")
            } catch {
                #expect(error.message.contains("layers/0/mlp/down_proj") && error.message.contains(expected), "\(error.message)")
            }
        }
    }

    /// Bad split payloads are refused with the layer named, never a crash.
    @Test func badSplitWeightsAreRefused() {
        let w = Self.randomMatrix(rows: 4, columns: 8, seed: 1)
        let good = SplitQuant.quantize(w, clustering: SplitQuant.kMeans3(w.data), bits: 3, groupSize: nil, range: .cluster)
        var badCluster = good; badCluster.clusters[5] = 3
        var badCode = good; badCode.codes[2] = 8
        var badScales = good; badScales.scales.removeLast()
        var nanZero = good; nanZero.zeros[0] = .nan
        for bad in [badCluster, badCode, badScales, nanZero] {
            #expect(throws: PTQError.self) { try SplitLinear(Self.linear(bad, bias: nil)) }
            do {
                _ = try SplitLinear(Self.linear(bad, bias: nil))
            } catch {
                #expect(error.message.contains("layers/0/mlp/down_proj"))
            }
        }
        var activation = Self.linear(good, bias: nil)
        activation.activation = ActivationQuantization(bits: 8, granularity: .perToken)
        #expect(throws: PTQError.self) { try SplitLinear(activation) }
        let packed = PackedModel(config: SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(),
                                 floatTensors: [:], quantizedLinears: ["layers/0/mlp/down_proj": Self.linear(badCluster, bias: nil)],
                                 recipe: "test", statsHash: nil, modelIdentity: "x", toolVersion: "test", metadata: [:])
        #expect(throws: PTQError.self) { try PackedFile.write(packed, to: SyntheticModels.temporaryPath("bad.ptq")) }
    }

    // MARK: Recipes and the pipeline

    /// Recipe fields are checked with the file and line.
    @Test func recipeErrorsNameTheField() throws {
        let config = SyntheticModels.llamaConfig()
        let bad = [
            ("weight: {bits: 2}\n  activation: none", "symmetric: false"),
            ("weight: {bits: 2, symmetric: false}\n  activation: {bits: 8}", "weight-only"),
            ("weight: {bits: 2, symmetric: false}\n  parameters: {range: wide}", "range"),
            ("weight: {bits: 2, symmetric: false}\n  parameters: {gptq_damping: 0.1}", "base: gptq"),
            ("weight: {bits: 2, symmetric: false}\n  parameters: {base: gptq, gptq_range_search: true}", "unknown parameter"),
        ]
        for (body, fragment) in bad {
            let recipe = try Recipe.parse("name: t\nmodel: llama\nscheme:\n  method: splitquant\n  \(body)\n", source: "r.yaml")
            let plan = try recipe.plan(for: config)
            #expect(throws: PTQError.self) { try QuantizerRegistry.quantizer(for: plan[0]) }
            do { _ = try QuantizerRegistry.quantizer(for: plan[0]) } catch {
                #expect(error.message.contains(fragment), "\(error.message)")
            }
        }
        // Dry-run storage: b + 2 bits per weight plus 3 scale/zero pairs per row.
        let recipe = try Recipe.parse("name: t\nmodel: llama\nscheme: {method: splitquant, weight: {bits: 2, symmetric: false}}\n", source: "r.yaml")
        let layer = try recipe.plan(for: config)[0]
        #expect(layer.storedBits == 4 * layer.outFeatures * layer.inFeatures + layer.outFeatures * 3 * 64)
    }

    /// SplitQuant with RTN and with GPTQ through quantize → pack → load → run on a synthetic
    /// model: the runtime matches the fake-quant simulation, and GPTQ lowers the layer output
    /// error against the calibration inputs compared with round to nearest on the same grids.
    @Test(arguments: ["rtn", "gptq"])
    func pipelineRoundTrip(base: String) throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let body = "scheme: {method: splitquant, weight: {bits: 3, symmetric: false, group_size: 32}, "
            + "parameters: {base: \(base)}}"
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "sq-\(base)", body: body))
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        #expect((outcome.statistics != nil) == (base == "gptq"))
        let path = folder + "/model.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let runtime = try #require(try PTQ.loadAnyModel(path: path) as? LlamaModel)
        let stored = try PackedFile.read(path: path)
        #expect(stored.quantizedLinears.values.allSatisfy { $0.weight.formatName == "split" })
        let simulated = try LlamaModel(weights: SimulatedWeights(packed: stored))
        let tokens = [3, 77, 201, 5, 19, 250, 42, 8, 100, 7, 9, 11]
        // The float32 decode GEMV too (one row): the simulation is float32.
        TokenKernels.kernelSwitchLock.lock()
        let bf16Decode = LowBit.bf16Decode
        LowBit.bf16Decode = false
        defer { LowBit.bf16Decode = bf16Decode; TokenKernels.kernelSwitchLock.unlock() }
        for rows in [tokens, [tokens[0]]] {
            // float32 prefill tiles, as the simulation (the bf16 product is checked per layer).
            let a = LowBit.$bf16PrefillOverride.withValue(false) { runtime.forward(rows) }, b = simulated.forward(rows)
            let scale = b.map(abs).max()!
            let error = zip(a, b).map { abs($0 - $1) }.max()!
            #expect(error <= 1e-4 * scale, "max |runtime − simulation| \(error) (logit scale \(scale))")
        }
        guard base == "gptq", let statistics = outcome.statistics else { return }
        // Output error Σ (w − ŵ)ᵀ H (w − ŵ) over rows, GPTQ against RTN on the same split grids.
        let reader = try CheckpointReader(path: checkpoint)
        var better = 0, layers = 0
        for (name, q) in stored.quantizedLinears {
            let w = try reader.tensor(name + "/weight")
            guard let point = stored.config.structure.linearLayer(named: name)?.inputPoint,
                  let h = statistics.points[point]?.hessian(),
                  case .split(let g) = q.weight else { continue }
            let r = SplitQuant.quantize(w, clustering: SplitQuant.kMeans3(w.data), bits: 3, groupSize: 32, range: .cluster)
            func error(_ d: [Float]) -> Double {
                let n = w.shape[1]
                var total = 0.0
                for o in 0..<w.shape[0] {
                    let e = (0..<n).map { Double(w.data[o * n + $0] - d[o * n + $0]) }
                    for i in 0..<n where e[i] != 0 { for j in 0..<n { total += e[i] * h[i * n + j] * e[j] } }
                }
                return total
            }
            layers += 1
            if error(g.dequantizedReference()) < error(r.dequantizedReference()) { better += 1 }
        }
        #expect(layers == 14 && better == layers, "GPTQ beat RTN on \(better) of \(layers) layers")
    }
}
