import Foundation
import Kernels
import PTQCore
import Synchronization
import Testing

@Suite("Persistent pool")
struct PoolTests {
    /// Also with `sleepAfter` (the workers sleep at once after the job), alternating with
    /// ordinary jobs, so every job after one that put the workers to sleep has to wake them.
    @Test("forEachChunk covers every index exactly once", arguments: [1, 2, 3, 7, 64, 1000, 4097])
    func coversEveryIndex(count: Int) {
        for minimumChunk in [1, 3, 64] {
            for sleepAfter in [true, false, true, true] {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
                hits.initialize(repeating: 0, count: count)
                defer { hits.deallocate() }
                let p = SendablePointer(hits)
                Parallel.forEachChunk(count, minimumChunk: minimumChunk, sleepAfter: sleepAfter) { range in
                    for i in range { p.base[i] += 1 }
                }
                #expect((0..<count).allSatisfy { hits[$0] == 1 },
                        "count \(count) minimum chunk \(minimumChunk) sleep after \(sleepAfter)")
            }
        }
    }

    @Test("nested loops and loops from several threads at once complete")
    func nestedAndConcurrent() async {
        let outer = 6, inner = 50
        func job() -> Int {
            let sums = UnsafeMutablePointer<Int>.allocate(capacity: outer)
            defer { sums.deallocate() }
            let p = SendablePointer(sums)
            Parallel.forEach(outer) { o in
                // A nested loop runs inline on the calling worker.
                let part = UnsafeMutablePointer<Int>.allocate(capacity: inner)
                defer { part.deallocate() }
                let q = SendablePointer(part)
                Parallel.forEachChunk(inner) { r in for i in r { q.base[i] = i + o } }
                p.base[o] = (0..<inner).reduce(0) { $0 + part[$1] }
            }
            return (0..<outer).reduce(0) { $0 + sums[$1] }
        }
        let want = (0..<outer).reduce(0) { acc, o in acc + (0..<inner).reduce(0) { $0 + $1 + o } }
        await withTaskGroup(of: Int.self) { group in
            for _ in 0..<4 { group.addTask { (0..<20).map { _ in job() }.reduce(0, +) } }
            for await total in group { #expect(total == 20 * want) }
        }
    }
}

@Suite("Token-path kernels")
struct TokenKernelTests {
    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        let scale = max(1e-30, b.map { abs($0) }.max() ?? 0)
        return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    @Test("float GEMV matches the scalar twin", arguments: [1, 7, 8, 17, 576], [1, 5, 33, 1000])
    func sgemv(columns: Int, rows: Int) {
        var rng = SplitMix(seed: UInt64(columns * 10_000 + rows))
        var w = rng.floats(rows * columns)
        // An all-zero row must give exactly 0.
        for j in 0..<columns { w[j] = 0 }
        let x = rng.floats(columns, in: -3...3)
        var fast = [Float](repeating: .nan, count: rows), ref = fast
        TokenKernels.sgemv(w, rows: rows, columns: columns, x: x, y: &fast)
        TokenKernels.sgemvReference(w, rows: rows, columns: columns, x: x, y: &ref)
        #expect(fast[0] == 0 && ref[0] == 0)
        #expect(Self.relativeError(fast, ref) < 1e-5, "rows \(rows) columns \(columns)")
        // BLAS.linear takes this path for one row.
        var viaBLAS = [Float](repeating: .nan, count: rows)
        BLAS.linear(x, rows: 1, inFeatures: columns, weight: w, outFeatures: rows, into: &viaBLAS)
        #expect(viaBLAS == fast)
    }

    @Test("fused float GEMV parts equal one GEMV per part", arguments: [1, 9, 576])
    func sgemvParts(columns: Int) {
        var rng = SplitMix(seed: UInt64(columns))
        // q/k/v-like parts of unequal heights; the 1-row part straddles chunk boundaries.
        let heights = [576, 1, 192, 37]
        let weights = heights.map { rng.floats($0 * columns) }
        let x = rng.floats(columns, in: -3...3)
        var separate = heights.map { [Float](repeating: .nan, count: $0) }
        for i in heights.indices { TokenKernels.sgemv(weights[i], rows: heights[i], columns: columns, x: x, y: &separate[i]) }
        var fused = heights.map { [Float](repeating: .nan, count: $0) }
        let outputs = fused.indices.map { i in UnsafeMutablePointer<Float>.allocate(capacity: heights[i]) }
        defer { outputs.forEach { $0.deallocate() } }
        let pointers = weights.map { w in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: w.count)
            p.initialize(from: w, count: w.count)
            return p
        }
        defer { pointers.forEach { $0.deallocate() } }
        let parts = heights.indices.map {
            TokenKernels.GemvPart(weight: UnsafePointer(pointers[$0]), rows: heights[$0], output: outputs[$0])
        }
        TokenKernels.sgemv(parts: parts, columns: columns, x: x)
        for i in heights.indices { fused[i] = Array(UnsafeBufferPointer(start: outputs[i], count: heights[i])) }
        // Bit-identical: each row is the same kernel call's sum, whatever the split.
        #expect(fused == separate)
        var ref = [Float](repeating: 0, count: heights[0])
        TokenKernels.sgemvReference(weights[0], rows: heights[0], columns: columns, x: x, y: &ref)
        #expect(Self.relativeError(fused[0], ref) < 1e-5)
    }

    @Test("decode attention matches the scalar twin", arguments: [1, 2, 129, 640], [(9, 3, 64), (4, 4, 12), (2, 1, 7)])
    func attention(count: Int, shape: (heads: Int, kvHeads: Int, dim: Int)) {
        var rng = SplitMix(seed: UInt64(count * 31 + shape.dim))
        let stride = shape.kvHeads * shape.dim
        let q = rng.floats(shape.heads * shape.dim, in: -2...2)
        var keys = rng.floats(count * stride, in: -2...2)
        let values = rng.floats(count * stride, in: -2...2)
        // One huge score: softmax must stay finite (it subtracts the maximum).
        keys[0] = 1e4
        var scores = [Float](repeating: 0, count: shape.heads * count)
        var fast = [Float](repeating: .nan, count: shape.heads * shape.dim), ref = fast
        TokenKernels.attendOne(q: q, keys: keys, values: values, count: count, heads: shape.heads, kvHeads: shape.kvHeads,
                               dim: shape.dim, stride: stride, scale: 0.125, scores: &scores, out: &fast)
        TokenKernels.attendOne(q: q, keys: keys, values: values, count: count, heads: shape.heads, kvHeads: shape.kvHeads,
                               dim: shape.dim, stride: stride, scale: 0.125, scores: &scores, out: &ref, reference: true)
        #expect(fast.allSatisfy { $0.isFinite })
        #expect(Self.relativeError(fast, ref) < 1e-5, "count \(count) shape \(shape)")
        // One position: the output is that position's value row, exactly.
        if count == 1 {
            for h in 0..<shape.heads {
                let kv = h / (shape.heads / shape.kvHeads)
                #expect(Array(fast[(h * shape.dim)..<((h + 1) * shape.dim)])
                        == Array(values[(kv * shape.dim)..<((kv + 1) * shape.dim)]))
            }
        }
    }

    /// The grouped decode kernel (one call per run of query heads sharing a KV head) against its
    /// scalar twin and against the previous one-call-per-head split, for both cache types: a
    /// row's result must not depend on its block of rows, so the two fast paths agree exactly.
    @Test("grouped decode attention matches the scalar twin and the per-head kernel",
          arguments: [1, 2, 5, 129, 576, 2048], [(1, 7), (3, 12), (4, 24), (3, 64), (4, 128), (1, 64), (3, 7)])
    func groupedAttention(count: Int, shape: (group: Int, dim: Int)) {
        var rng = SplitMix(seed: UInt64(count * 977 + shape.group * 13 + shape.dim))
        let kvHeads = 3, heads = kvHeads * shape.group
        let stride = kvHeads * shape.dim
        let q = rng.floats(heads * shape.dim, in: -2...2)
        var floatKeys = rng.floats(count * stride, in: -4...4)
        floatKeys[0] = 6e4  // one huge score: softmax must stay finite
        let floatValues = rng.floats(count * stride, in: -3...3)
        var halfKeys = [UInt16](repeating: 0, count: floatKeys.count), halfValues = halfKeys
        TokenKernels.roundToHalf(floatKeys, into: &halfKeys, count: halfKeys.count)
        TokenKernels.roundToHalf(floatValues, into: &halfValues, count: halfValues.count)
        let scale: Float = 1 / Float(shape.dim).squareRoot()
        var scores = [Float](repeating: 0, count: heads * count)
        // The grouped kernels: the split by positions (the default, SplitAttentionTests) off.
        TokenKernels.kernelSwitchLock.lock()
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let splitWas = TokenKernels.splitAttention
        TokenKernels.splitAttention = false
        defer { TokenKernels.splitAttention = splitWas }
        for half in [false, true] {
            var outputs: [[Float]] = []
            for (reference, perHead) in [(true, false), (true, true), (false, false), (false, true)] {
                var out = [Float](repeating: .nan, count: heads * shape.dim)
                if half {
                    TokenKernels.attendOne(q: q, halfKeys: halfKeys, halfValues: halfValues, count: count, heads: heads,
                                           kvHeads: kvHeads, dim: shape.dim, stride: stride, scale: scale,
                                           scores: &scores, out: &out, reference: reference, perHead: perHead)
                } else {
                    TokenKernels.attendOne(q: q, keys: floatKeys, values: floatValues, count: count, heads: heads,
                                           kvHeads: kvHeads, dim: shape.dim, stride: stride, scale: scale,
                                           scores: &scores, out: &out, reference: reference, perHead: perHead)
                }
                outputs.append(out)
            }
            let label = "count \(count) group \(shape.group) dim \(shape.dim) half \(half)"
            #expect(outputs[0] == outputs[1], "\(label): grouped reference loops the one-head reference")
            #expect(outputs[2].allSatisfy { $0.isFinite }, "\(label)")
            #expect(Self.relativeError(outputs[2], outputs[0]) < 1e-5, "\(label)")
            #expect(outputs[2] == outputs[3], "\(label): grouped and per-head fast kernels agree bit for bit")
            // One position: every head's output is its KV head's value row, exactly.
            if count == 1 {
                var wide = [Float](repeating: 0, count: halfValues.count)
                TokenKernels.widenHalf(halfValues, into: &wide, count: wide.count)
                let rows = half ? wide : floatValues
                for h in 0..<heads {
                    let kv = h / shape.group
                    #expect(Array(outputs[2][(h * shape.dim)..<((h + 1) * shape.dim)])
                            == Array(rows[(kv * shape.dim)..<((kv + 1) * shape.dim)]), "\(label) head \(h)")
                }
            }
        }
    }

    /// Random nibble codes, the expanded int8 matrix and a 16-entry table.
    static func fp4Case(rows: Int, columns: Int, table: [Int8], rng: inout SplitMix) -> (nibbles: [UInt8], expanded: [Int8]) {
        let codes = rng.bytes(rows * columns, below: 16)
        let nibbles = LowBit.packNibbles(codes, rows: rows, columns: columns)
        return (nibbles, codes.map { table[Int($0)] })
    }

    static let e2m1Table: [Int8] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]

    @Test("FP4 nibble-table GEMV equals the grouped int8 GEMM reference bit for bit",
          arguments: [32, 64, 576, 1536], [32, 64, 0])
    func fp4Gemv(columns: Int, groupArgument: Int) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let group = groupArgument == 0 ? columns : groupArgument
        guard columns % group == 0 else { return }
        var rng = SplitMix(seed: UInt64(columns * 3 + group))
        for (rows, m) in [(1, 1), (5, 1), (64, 3), (193, 1)] {
            let (nibbles, expanded) = Self.fp4Case(rows: rows, columns: columns, table: Self.e2m1Table, rng: &rng)
            let a = rng.int8s(m * columns, in: -127...127)
            var scales = rng.floats(rows * columns / group, in: 0.001...0.1)
            scales[0] = 1e30   // extreme scales: the float epilogue must match too
            scales[scales.count - 1] = 1e-30
            var permuted = [Int8](repeating: 0, count: a.count)
            TokenKernels.fp4Permute(a, rows: m, columns: columns, into: &permuted)
            var want = [Float](repeating: 0, count: m * rows)
            LowBit.gemmI8GroupedReference(a: a, m: m, b: expanded, n: rows, k: columns, groupSize: group,
                                          weightScales: scales, c: &want, ldc: rows)
            var ref = [Float](repeating: .nan, count: m * rows)
            TokenKernels.fp4GemvReference(codes: nibbles, rows: rows, columns: columns, groupSize: group,
                                          table: Self.e2m1Table, scales: scales, permutedActivations: permuted, m: m,
                                          y: &ref, ldy: rows)
            #expect(ref == want)
            for vnni in [true, false] {
                TokenKernels.setVNNIEnabled(vnni)
                var fast = [Float](repeating: .nan, count: m * rows)
                TokenKernels.fp4Gemv(codes: nibbles, rows: rows, columns: columns, groupSize: group,
                                     table: Self.e2m1Table, scales: scales, permutedActivations: permuted, m: m,
                                     y: &fast, ldy: rows)
                #expect(fast == want, "rows \(rows) m \(m) columns \(columns) group \(group) vnni \(vnni)")
                var product = [Float](repeating: .nan, count: 12 * rows)
                let a12 = (0..<12).flatMap { _ in a[0..<columns] }
                TokenKernels.fp4Product(codes: nibbles, rows: rows, columns: columns, groupSize: group,
                                        table: Self.e2m1Table, scales: scales, activations: a12, m: 12, y: &product)
                #expect((0..<12).allSatisfy { i in Array(product[(i * rows)..<((i + 1) * rows)]) == Array(want[0..<rows]) })
            }
            TokenKernels.setVNNIEnabled(true)
        }
    }

    @Test("FP4 nibble-table GEMV at saturation bounds and on all-zero rows")
    func fp4Extremes() {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let columns = 96, rows = 9, group = 32
        // Table entries at ±127 with activations at ±127: the largest pair sum maddubs sees.
        let table: [Int8] = [127, -127, 0, 1, -1, 64, -64, 127, 0, 0, 0, 0, 0, 0, 0, -127]
        var rng = SplitMix(seed: 99)
        var (nibbles, expanded) = Self.fp4Case(rows: rows, columns: columns, table: table, rng: &rng)
        // Row 3: all code 2 (value 0) → exactly 0; row 4: all code 0 (127) against +127.
        for j in 0..<columns / 2 { nibbles[3 * columns / 2 + j] = 0x22; nibbles[4 * columns / 2 + j] = 0 }
        for j in 0..<columns { expanded[3 * columns + j] = 0; expanded[4 * columns + j] = 127 }
        let a = [Int8](repeating: 127, count: columns)
        let scales = [Float](repeating: 1, count: rows * columns / group)
        var permuted = a
        TokenKernels.fp4Permute(a, rows: 1, columns: columns, into: &permuted)
        var want = [Float](repeating: 0, count: rows)
        LowBit.gemmI8GroupedReference(a: a, m: 1, b: expanded, n: rows, k: columns, groupSize: group,
                                      weightScales: scales, c: &want, ldc: rows)
        #expect(want[3] == 0 && want[4] == Float(127 * 127 * columns))
        for vnni in [true, false] {
            TokenKernels.setVNNIEnabled(vnni)
            var fast = [Float](repeating: .nan, count: rows)
            TokenKernels.fp4Gemv(codes: nibbles, rows: rows, columns: columns, groupSize: group, table: table,
                                 scales: scales, permutedActivations: permuted, m: 1, y: &fast, ldy: rows)
            #expect(fast == want, "vnni \(vnni)")
        }
        TokenKernels.setVNNIEnabled(true)
    }

    // MARK: nibble-packed integer weights (W4A8)

    /// Expected output of `q4Gemv`: the grouped (or plain) int8 GEMM reference on the signed codes.
    static func q4Want(a: [Int8], m: Int, signed: [Int8], rows: Int, columns: Int, group: Int, scales: [Float]?) -> [Float] {
        var want = [Float](repeating: 0, count: m * rows)
        if let scales {
            LowBit.gemmI8GroupedReference(a: a, m: m, b: signed, n: rows, k: columns, groupSize: group,
                                          weightScales: scales, c: &want, ldc: rows)
        } else {
            var acc = [Int32](repeating: 0, count: m * rows)
            LowBit.gemmI8Reference(a: a, m: m, b: signed, n: rows, k: columns, c: &acc, ldc: rows)
            want = acc.map { Float($0) }
        }
        return want
    }

    /// Runs the reference, VNNI and AVX2 paths of `q4Gemv` (interleaved codes and scales), against `want`.
    static func checkQ4(codes: [UInt8], rows: Int, columns: Int, group: Int, offset: Int, scales: [Float]?,
                        a: [Int8], m: Int, want: [Float], label: String) {
        let groups = columns / group
        var sums = [Int32](repeating: 0, count: m * groups)
        TokenKernels.q4GroupSums(a, rows: m, columns: columns, groupSize: group, into: &sums)
        #expect(sums[0] == a[0..<group].reduce(0) { $0 + Int32($1) }, "\(label): group sum")
        let packed = TokenKernels.q4Pack(codes, rows: rows, columns: columns)
        #expect(packed.count == (rows + 7) / 8 * 8 * columns / 2, "\(label): packed size")
        let interleaved = scales.map { TokenKernels.q4Scales($0, rows: rows, groups: groups) }
        func run(_ body: (UnsafePointer<Float>?, inout [Float]) -> Void) -> [Float] {
            var y = [Float](repeating: .nan, count: m * rows)
            if let interleaved { interleaved.withUnsafeBufferPointer { body($0.baseAddress!, &y) } } else { body(nil, &y) }
            return y
        }
        let ref = run { s, y in
            TokenKernels.q4GemvReference(codes: packed, rows: rows, columns: columns, groupSize: group, offset: offset,
                                         scales: s, activations: a, groupSums: sums, m: m, y: &y, ldy: rows)
        }
        #expect(ref == want, "\(label): reference")
        for vnni in [true, false] {
            TokenKernels.setVNNIEnabled(vnni)
            let fast = run { s, y in
                TokenKernels.q4Gemv(codes: packed, rows: rows, columns: columns, groupSize: group, offset: offset,
                                    scales: s, activations: a, groupSums: sums, m: m, y: &y, ldy: rows)
            }
            #expect(fast == want, "\(label) vnni \(vnni)")
            // A row range that starts and ends inside 8-row blocks writes exactly its rows.
            if rows > 2 {
                let part = run { s, y in
                    TokenKernels.q4Gemv(range: 1..<(rows - 1), codes: packed, columns: columns, groupSize: group, offset: offset,
                                        scales: s, activations: a, groupSums: sums, m: m, y: &y, ldy: rows)
                }
                for i in 0..<m {
                    #expect(part[i * rows].isNaN && part[i * rows + rows - 1].isNaN, "\(label) vnni \(vnni): rows outside")
                    #expect(Array(part[(i * rows + 1)..<(i * rows + rows - 1)]) == Array(want[(i * rows + 1)..<(i * rows + rows - 1)]),
                            "\(label) vnni \(vnni): row range")
                }
            }
        }
        TokenKernels.setVNNIEnabled(true)
    }

    @Test("nibble int8 GEMV (decode and prefill rows) equals the int8 GEMM reference bit for bit",
          arguments: [32, 96, 576, 1536], [32, 64, 0])
    func q4Gemv(columns: Int, groupArgument: Int) {
        let group = groupArgument == 0 ? columns : groupArgument
        guard columns % group == 0 else { return }
        var rng = SplitMix(seed: UInt64(columns * 7 + group))
        for (rows, m, bits) in [(1, 1, 4), (5, 1, 4), (7, 3, 2), (64, 2, 4), (193, 1, 3), (33, 13, 4), (16, 9, 4)] {
            let offset = 1 << (bits - 1)
            let codes = rng.bytes(rows * columns, below: 1 << bits)
            let signed = codes.map { Int8(Int($0) - offset) }
            let a = rng.int8s(m * columns, in: -127...127)
            for grouped in [true, false] where grouped || group == columns {
                var scales: [Float]? = nil
                if grouped {
                    var s = rng.floats(rows * columns / group, in: 0.001...0.1)
                    s[0] = 1e30   // extreme scales: the float epilogue must match too
                    s[s.count - 1] = 1e-30
                    scales = s
                }
                let want = Self.q4Want(a: a, m: m, signed: signed, rows: rows, columns: columns, group: group, scales: scales)
                Self.checkQ4(codes: codes, rows: rows, columns: columns, group: group, offset: offset, scales: scales,
                             a: a, m: m, want: want, label: "rows \(rows) m \(m) W\(bits) columns \(columns) group \(group) scales \(grouped)")
            }
        }
    }

    @Test("nibble int8 GEMV at saturation bounds, on all-zero rows and all-zero activations")
    func q4Extremes() {
        let columns = 128, rows = 6, group = 64
        var rng = SplitMix(seed: 7)
        var codes = rng.bytes(rows * columns, below: 16)
        // Row 0: all 15 (+7), row 1: all 0 (−8, the most negative code), row 2: all 8 (value 0).
        for j in 0..<columns { codes[j] = 15; codes[columns + j] = 0; codes[2 * columns + j] = 8 }
        let signed = codes.map { Int8(Int($0) - 8) }
        for (label, a) in [("a = -127", [Int8](repeating: -127, count: 2 * columns)),
                           ("a = +127 / -127", [Int8](repeating: 127, count: columns) + [Int8](repeating: -127, count: columns)),
                           ("a = 0", [Int8](repeating: 0, count: 2 * columns))] {
            let scales = [Float](repeating: 1, count: rows * columns / group)
            let want = Self.q4Want(a: a, m: 2, signed: signed, rows: rows, columns: columns, group: group, scales: scales)
            if a[0] == -127 && a[columns] == -127 { #expect(want[0] == Float(-7 * 127 * columns) && want[1] == Float(8 * 127 * columns)) }
            #expect(want[2] == 0 && want[rows + 2] == 0)
            Self.checkQ4(codes: codes, rows: rows, columns: columns, group: group, offset: 8, scales: scales, a: a, m: 2,
                         want: want, label: label)
            let plain = Self.q4Want(a: a, m: 2, signed: signed, rows: rows, columns: columns, group: columns, scales: nil)
            Self.checkQ4(codes: codes, rows: rows, columns: columns, group: columns, offset: 8, scales: nil, a: a, m: 2,
                         want: plain, label: "\(label) per-channel")
        }
    }

    // MARK: per-token elementwise kernels

    /// Distance in units in the last place between two finite floats of the same sign.
    static func ulps(_ a: Float, _ b: Float) -> Int {
        if a == b { return 0 }
        return abs(Int(Int32(bitPattern: a.bitPattern)) - Int(Int32(bitPattern: b.bitPattern)))
    }

    @Test("vector expf is within 2 ulp of libm's, with libm's limits")
    func vectorExp() {
        var rng = SplitMix(seed: 5)
        var x = rng.floats(4001, in: -87...88)
        x += [0, -0.0, 1, -1, 1e-30, -1e-30, 88.7, 88.72, -87.3, -80, 88.8, 100, -88, -100, -.infinity, .infinity, .nan]
        var y = [Float](repeating: 0, count: x.count)
        Ops.exp(x, count: x.count, into: &y)
        for (v, e) in zip(x, y) {
            let want = expf(v)
            if v.isNaN { #expect(e.isNaN); continue }
            if want == .infinity || v > 88.73 { #expect(e == .infinity, "exp(\(v))"); continue }
            if want < Float.leastNormalMagnitude { #expect(e <= Float.leastNormalMagnitude, "exp(\(v))"); continue }
            #expect(Self.ulps(e, want) <= 2, "exp(\(v)) = \(e), libm \(want)")
        }
    }

    @Test("softmax, SiLU·up, RMSNorm and add + RMSNorm match their scalar twins", arguments: [1, 7, 8, 15, 64, 577, 1536])
    func elementwise(count: Int) {
        var rng = SplitMix(seed: UInt64(count))
        // Softmax: a wide spread of scores, including a very negative one (underflows to 0).
        var s = rng.floats(count, in: -30...30)
        if count > 2 { s[1] = -1e4 }
        var ref = s
        Ops.softmax(&s, count: count)
        Ops.softmaxReference(&ref, count: count)
        #expect(Self.relativeError(s, ref) < 1e-6, "softmax \(count)")
        #expect(abs(s.reduce(0, +) - 1) < 1e-5)
        // SwiGLU over the range where expf(-g) under- and overflows.
        var gate = rng.floats(count, in: -100...100), gateRef = gate
        let up = rng.floats(count, in: -3...3)
        Ops.siluMultiply(&gate, up, count: count)
        Ops.siluMultiplyReference(&gateRef, up, count: count)
        #expect(zip(gate, gateRef).allSatisfy { abs($0 - $1) <= 1e-6 * max(1, abs($1)) }, "silu \(count)")
        // RMSNorm of two rows, one of them all zero (epsilon keeps it finite and zero).
        var x = rng.floats(2 * count, in: -4...4)
        for j in 0..<count { x[count + j] = 0 }
        let w = rng.floats(count, in: 0.5...2)
        var y = [Float](repeating: .nan, count: 2 * count), yRef = y
        Ops.rmsNorm(x, weight: w, rows: 2, width: count, epsilon: 1e-5, into: &y)
        Ops.rmsNormReference(x, weight: w, rows: 2, width: count, epsilon: 1e-5, into: &yRef)
        #expect(Self.relativeError(y, yRef) < 1e-6, "rmsnorm \(count)")
        #expect(y[count...].allSatisfy { $0 == 0 })
        // The residual add fused into RMSNorm: bit for bit the add followed by `rmsNorm` (the
        // decoder's schedule relies on it), its twin the add followed by `rmsNormReference`; the
        // second row's residual cancels x to all zeros, a third row has extreme values.
        var x3 = rng.floats(3 * count, in: -4...4)
        var residual = rng.floats(3 * count, in: -4...4)
        for j in 0..<count { residual[count + j] = -x3[count + j]; x3[2 * count + j] *= 1e18; residual[2 * count + j] = 1e-20 }
        let w3 = rng.floats(count, in: 0.5...2)
        var xOld = x3, yOld = [Float](repeating: .nan, count: 3 * count)
        Ops.add(residual, into: &xOld, count: 3 * count)
        Ops.rmsNorm(xOld, weight: w3, rows: 3, width: count, epsilon: 1e-5, into: &yOld)
        var xFused = x3, yFused = [Float](repeating: .nan, count: 3 * count)
        Ops.addRMSNorm(residual, into: &xFused, weight: w3, rows: 3, width: count, epsilon: 1e-5, normed: &yFused)
        #expect(xFused.map(\.bitPattern) == xOld.map(\.bitPattern), "add+rmsnorm x \(count)")
        #expect(yFused.map(\.bitPattern) == yOld.map(\.bitPattern), "add+rmsnorm y \(count)")
        var xRef = x3, yRef3 = [Float](repeating: .nan, count: 3 * count), yRefOld = yRef3
        Ops.addRMSNormReference(residual, into: &xRef, weight: w3, rows: 3, width: count, epsilon: 1e-5, normed: &yRef3)
        Ops.rmsNormReference(xOld, weight: w3, rows: 3, width: count, epsilon: 1e-5, into: &yRefOld)
        #expect(xRef.map(\.bitPattern) == xOld.map(\.bitPattern) && yRef3.map(\.bitPattern) == yRefOld.map(\.bitPattern))
        #expect(Self.relativeError(yFused, yRef3) < 1e-6, "add+rmsnorm vs twin \(count)")
        #expect(yFused[count..<(2 * count)].allSatisfy { $0 == 0 })
    }

    @Test("a RoPE angle table applies the same rotation as the per-position call")
    func ropeTable() {
        let rope = RoPE(headDim: 64, theta: 100_000)
        var rng = SplitMix(seed: 3)
        let heads = 3, positions = 5..<12
        var table = [Float](repeating: 0, count: positions.count * 64)
        rope.fill(&table, positions: positions)
        for (t, p) in positions.enumerated() {
            var a = rng.floats(heads * 64, in: -2...2), b = a
            rope.apply(&a, heads: heads, position: p)
            table.withUnsafeBufferPointer { rope.apply(&b, heads: heads, angles: $0.baseAddress! + t * 64) }
            #expect(a == b, "position \(p)")
        }
    }

    @Test("shared activation quantization returns what a fresh quantization gives")
    func sharedQuantization() {
        var rng = SplitMix(seed: 17)
        let rows = 2, columns = 100
        var x = rng.floats(rows * columns, in: -4...4)
        var scales = rng.floats(columns, in: 0.5...2)
        func check(_ label: String, scaling: ActivationScaling = .perToken, channelScales: [Float]?) {
            let fresh = LowBit.quantizeRows(x, rows: rows, columns: columns, channelScales: channelScales, bits: 8,
                                            scaling: scaling)
            let shared = x.withUnsafeBufferPointer { xp in
                withOptionalScales(channelScales) { cs in
                    let r = LowBit.quantizeRowsShared(xp.baseAddress!, rows: rows, columns: columns, shift: nil,
                                                      channelScales: cs, bits: 8, scaling: scaling)
                    return (Array(UnsafeBufferPointer(start: r.codes, count: rows * columns)),
                            Array(UnsafeBufferPointer(start: r.rowScales, count: rows)))
                }
            }
            #expect(shared.0 == fresh.codes && shared.1 == fresh.rowScales, "\(label)")
        }
        check("first call", channelScales: nil)
        check("same input again", channelScales: nil)
        x[7] += 1
        check("one element changed", channelScales: nil)
        check("channel scales added", channelScales: scales)
        scales[3] *= 2
        check("channel scales changed", channelScales: scales)
        check("static step", scaling: .perTensor(0.05), channelScales: scales)
        check("per token again", channelScales: scales)
    }

    private func withOptionalScales<R>(_ a: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
        guard let a else { return body(nil) }
        return a.withUnsafeBufferPointer { body($0.baseAddress) }
    }

    @Test("int8 GEMM: the VNNI and AVX2 paths both equal the reference", arguments: [1, 31, 64, 577, 576])
    func gemmI8Paths(k: Int) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        var rng = SplitMix(seed: UInt64(k))
        let m = 7, n = 7
        var a = rng.int8s(m * k, in: -127...127)
        var b = rng.int8s(n * k, in: -128...127)
        for t in 0..<k { a[t] = -127; b[t] = -128 }  // row 0 × row 0 at the bound
        for t in 0..<k { b[k + t] = 0 }              // an all-zero weight row
        var ref = [Int32](repeating: 0, count: m * n)
        LowBit.gemmI8Reference(a: a, m: m, b: b, n: n, k: k, c: &ref, ldc: n)
        #expect(ref[0] == Int32(127 * 128 * k) && ref[1] == 0)
        let sums = LowBit.rowSumsI8(b, n: n, k: k)
        for vnni in [true, false] {
            TokenKernels.setVNNIEnabled(vnni)
            var fast = [Int32](repeating: -1, count: m * n)
            LowBit.gemmI8(a: a, m: m, b: b, n: n, k: k, c: &fast, ldc: n)
            #expect(fast == ref, "vnni \(vnni)")
            // Biased activations (a + 128) against the load-time row sums: the same exact sums.
            var biased = [Int32](repeating: -1, count: m * n)
            sums.withUnsafeBufferPointer { LowBit.gemmI8(a: a, m: m, b: b, n: n, k: k, rowSums: $0.baseAddress, c: &biased, ldc: n) }
            #expect(biased == ref, "vnni \(vnni) with row sums")
        }
        TokenKernels.setVNNIEnabled(true)
    }

    @Test("int8 decode GEMV: the VNNI (+128) and AVX2 paths equal the reference",
          arguments: [1, 31, 32, 64, 577, 1536], [1, 7, 8, 17, 64])
    func gemvI8Paths(k: Int, n: Int) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        var rng = SplitMix(seed: UInt64(k * 131 + n))
        for m in [1, 3] {
            var a = rng.int8s(m * k, in: -127...127)
            var b = rng.int8s(n * k, in: -128...127)
            for t in 0..<k { a[t] = -127; b[t] = -128 }           // row 0 × row 0 at the bound
            if n > 1 { for t in 0..<k { b[k + t] = 0 } }            // an all-zero weight row
            if n > 2 { for t in 0..<k { b[2 * k + t] = 127 } }      // all at the positive bound
            if m > 1 { for t in 0..<k { a[k + t] = 0 } }            // an all-zero activation row
            var ref = [Int32](repeating: 0, count: m * n)
            LowBit.gemvI8Reference(a: a, m: m, b: b, n: n, k: k, c: &ref, ldc: n)
            #expect(ref[0] == Int32(127 * 128 * k))
            if n > 1 { #expect(ref[1] == 0) }
            var gemm = [Int32](repeating: 0, count: m * n)
            LowBit.gemmI8Reference(a: a, m: m, b: b, n: n, k: k, c: &gemm, ldc: n)
            #expect(gemm == ref)
            let sums = LowBit.rowSumsI8(b, n: n, k: k)
            #expect(sums[0] == Int32(-128 * k))
            for vnni in [true, false] {
                TokenKernels.setVNNIEnabled(vnni)
                for withSums in [true, false] {
                    var fast = [Int32](repeating: -1, count: m * n)
                    sums.withUnsafeBufferPointer { s in
                        LowBit.gemvI8(a: a, m: m, b: b, n: n, k: k, rowSums: withSums ? s.baseAddress : nil, c: &fast, ldc: n)
                    }
                    #expect(fast == ref, "k \(k) n \(n) m \(m) vnni \(vnni) row sums \(withSums)")
                }
            }
            TokenKernels.setVNNIEnabled(true)
        }
    }

    @Test("int8 decode GEMV at the int32 limit: k = 131072, every product −127·−128 (the +128 sums wrap)")
    func gemvI8Wraparound() {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let k = 131_072, n = 9
        let a = [Int8](repeating: -127, count: k)
        var b = [Int8](repeating: -128, count: n * k)
        for t in 0..<k { b[k + t] = 127 }
        var ref = [Int32](repeating: 0, count: n)
        LowBit.gemvI8Reference(a: a, m: 1, b: b, n: n, k: k, c: &ref, ldc: n)
        #expect(ref[0] == Int32(127 * 128 * k) && ref[1] == Int32(-127 * 127 * k))
        let sums = LowBit.rowSumsI8(b, n: n, k: k)
        for vnni in [true, false] {
            TokenKernels.setVNNIEnabled(vnni)
            var fast = [Int32](repeating: 0, count: n)
            sums.withUnsafeBufferPointer { LowBit.gemvI8(a: a, m: 1, b: b, n: n, k: k, rowSums: $0.baseAddress, c: &fast, ldc: n) }
            #expect(fast == ref, "vnni \(vnni)")
        }
        TokenKernels.setVNNIEnabled(true)
    }
}

@Suite("Half-precision KV cache kernels")
struct HalfCacheKernelTests {
    /// Floats that exercise every branch of the rounding: zeros, the largest half and the overflow
    /// threshold, ties at both ends of the subnormal range, subnormals, infinities and NaN.
    static let edgeFloats: [Float] = [
        0, -0.0, 1, -1, 65504, -65504, 65519.996, 65520, -65520, 1e5, .infinity, -.infinity, .nan,
        Float(sign: .plus, exponent: -14, significand: 1),          // smallest normal half
        Float(sign: .plus, exponent: -24, significand: 1),          // smallest subnormal half
        Float(sign: .plus, exponent: -25, significand: 1),          // tie between 0 and it: → 0
        Float(sign: .minus, exponent: -25, significand: 1.5),       // above the tie: → −2^-24
        Float(sign: .plus, exponent: -24, significand: 1.5),        // tie between 1 and 2 units: → 2
        Float(sign: .plus, exponent: -15, significand: 1.999),      // rounds up to the smallest normal
        1 + Float(sign: .plus, exponent: -11, significand: 1),      // tie between 1 and 1+2^-10: → 1
        1 + Float(sign: .plus, exponent: -11, significand: 3),      // tie above an odd mantissa: → up
        Float.leastNonzeroMagnitude, -Float.greatestFiniteMagnitude, 1e-30,
    ]

    @Test("float → half matches F16C, the scalar twin and Float16 bit for bit")
    func roundToHalf() {
        var rng = SplitMix(seed: 16)
        var values = Self.edgeFloats
        // Random floats over the whole half range and beyond (magnitudes 2^-30 … 2^20).
        for _ in 0..<20_000 {
            let m = Float(bitPattern: 0x3f80_0000 | UInt32(truncatingIfNeeded: rng.next()) & 0x7f_ffff)
            values.append((rng.next() & 1 == 0 ? 1 : -1) * m * Float(sign: .plus, exponent: Int(rng.next() % 51) - 30, significand: 1))
        }
        var fast = [UInt16](repeating: 0xdead, count: values.count), ref = fast
        TokenKernels.roundToHalf(values, into: &fast, count: values.count)
        TokenKernels.roundToHalf(values, into: &ref, count: values.count, reference: true)
        for (i, x) in values.enumerated() {
            let want = Float16(x)
            if x.isNaN {
                #expect(Float16(bitPattern: fast[i]).isNaN && fast[i] == ref[i], "NaN → \(fast[i]) vs \(ref[i])")
            } else {
                #expect(fast[i] == want.bitPattern && ref[i] == want.bitPattern,
                        "\(x): fast \(fast[i]) ref \(ref[i]) Float16 \(want.bitPattern)")
            }
        }
        // Odd counts take the scalar tail of the fast path.
        var tail = [UInt16](repeating: 0, count: 7)
        TokenKernels.roundToHalf(values, into: &tail, count: 7)
        #expect(tail == Array(ref.prefix(7)))
    }

    /// NaNs come out quiet (signalling half NaNs get the float quiet bit, as vcvtph2ps sets it).
    @Test("half → float is exact for all 65536 bit patterns")
    func widenHalf() {
        let all = (0...UInt16.max).map { $0 }
        var fast = [Float](repeating: 0, count: all.count), ref = fast
        TokenKernels.widenHalf(all, into: &fast, count: all.count)
        TokenKernels.widenHalf(all, into: &ref, count: all.count, reference: true)
        for h in all {
            let want = Float(Float16(bitPattern: h))
            let i = Int(h)
            if want.isNaN {
                #expect(fast[i].isNaN && fast[i].bitPattern == ref[i].bitPattern, "pattern \(h)")
            } else {
                #expect(fast[i].bitPattern == want.bitPattern && ref[i].bitPattern == want.bitPattern, "pattern \(h)")
            }
        }
    }

    /// Random (or scaled) float keys/values rounded to half: the f16 kernel (AVX2)
    /// against its scalar twin and against the float kernel on the widened values.
    @Test("f16 decode attention matches the scalar twin and the float kernel on widened values",
          arguments: [1, 2, 5, 129, 576, 2048], [(9, 3, 64), (4, 4, 12), (2, 1, 7), (3, 1, 24), (2, 2, 128)])
    func attention(count: Int, shape: (heads: Int, kvHeads: Int, dim: Int)) {
        var rng = SplitMix(seed: UInt64(count * 131 + shape.dim))
        let stride = shape.kvHeads * shape.dim
        // Large-magnitude keys (near the top of the half range) in every fourth case, with a
        // small query so that scores stay in softmax's sensitive range.
        let large = count % 4 == 1
        let keyRange: ClosedRange<Float> = large ? -3e4...3e4 : -4...4
        let q = rng.floats(shape.heads * shape.dim, in: large ? -2e-4...2e-4 : -2...2)
        var floatKeys = rng.floats(count * stride, in: keyRange)
        floatKeys[0] = 60000  // one huge score: softmax must stay finite
        let floatValues = rng.floats(count * stride, in: -3...3)
        var keys = [UInt16](repeating: 0, count: floatKeys.count), values = keys
        TokenKernels.roundToHalf(floatKeys, into: &keys, count: keys.count)
        TokenKernels.roundToHalf(floatValues, into: &values, count: values.count)
        var wideKeys = [Float](repeating: 0, count: keys.count), wideValues = wideKeys
        TokenKernels.widenHalf(keys, into: &wideKeys, count: keys.count)
        TokenKernels.widenHalf(values, into: &wideValues, count: values.count)
        let scale: Float = 1 / Float(shape.dim).squareRoot()
        var scores = [Float](repeating: 0, count: shape.heads * count)
        var ref = [Float](repeating: .nan, count: shape.heads * shape.dim), viaFloat = ref
        TokenKernels.attendOne(q: q, halfKeys: keys, halfValues: values, count: count, heads: shape.heads,
                               kvHeads: shape.kvHeads, dim: shape.dim, stride: stride, scale: scale, scores: &scores,
                               out: &ref, reference: true)
        TokenKernels.attendOne(q: q, keys: wideKeys, values: wideValues, count: count, heads: shape.heads,
                               kvHeads: shape.kvHeads, dim: shape.dim, stride: stride, scale: scale, scores: &scores,
                               out: &viaFloat, reference: true)
        // The twins compute the same operations on the same values.
        #expect(ref == viaFloat, "count \(count) shape \(shape)")
        let bound: Float = large ? 1e-4 : 1e-5
        var fast = [Float](repeating: .nan, count: shape.heads * shape.dim)
        TokenKernels.attendOne(q: q, halfKeys: keys, halfValues: values, count: count, heads: shape.heads,
                               kvHeads: shape.kvHeads, dim: shape.dim, stride: stride, scale: scale, scores: &scores,
                               out: &fast)
        #expect(fast.allSatisfy { $0.isFinite })
        #expect(TokenKernelTests.relativeError(fast, ref) < bound, "count \(count) shape \(shape)")
        // The same cache head-major (KV, capacity, dim) with spare capacity, as LlamaModel keeps
        // it: the same rows through the same kernels, hence the same bits, fast and reference.
        let capacity = count + 3
        var headKeys = [UInt16](repeating: 0xFFFF, count: shape.kvHeads * capacity * shape.dim), headValues = headKeys
        for g in 0..<shape.kvHeads {
            for j in 0..<count {
                for d in 0..<shape.dim {
                    headKeys[(g * capacity + j) * shape.dim + d] = keys[j * stride + g * shape.dim + d]
                    headValues[(g * capacity + j) * shape.dim + d] = values[j * stride + g * shape.dim + d]
                }
            }
        }
        for reference in [false, true] {
            var headMajor = [Float](repeating: .nan, count: shape.heads * shape.dim)
            TokenKernels.attendOne(q: q, halfKeys: headKeys, halfValues: headValues, count: count, heads: shape.heads,
                                   kvHeads: shape.kvHeads, dim: shape.dim, stride: shape.dim,
                                   kvHeadStride: capacity * shape.dim, scale: scale, scores: &scores, out: &headMajor,
                                   reference: reference)
            #expect(headMajor == (reference ? ref : fast), "head-major, count \(count) shape \(shape)")
        }
        // One position: the output is that position's (widened) value row, exactly.
        if count == 1 {
            for h in 0..<shape.heads {
                let kv = h / (shape.heads / shape.kvHeads)
                #expect(Array(fast[(h * shape.dim)..<((h + 1) * shape.dim)])
                        == Array(wideValues[(kv * shape.dim)..<((kv + 1) * shape.dim)]))
            }
        }
    }
}
