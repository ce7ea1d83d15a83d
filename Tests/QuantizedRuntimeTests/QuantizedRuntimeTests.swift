import Foundation
import Kernels
import Models
import Packing
import PTQCore
import QuantizedRuntime
import Testing

// MARK: - Helpers

/// Test helpers on PTQCore's seeded generator, so every run sees the same data.
extension SplitMix {
    mutating func floats(_ n: Int, in range: ClosedRange<Float> = -1...1) -> [Float] {
        (0..<n).map { _ in Float.random(in: range, using: &self) }
    }
    mutating func int8s(_ n: Int, in range: ClosedRange<Int8>) -> [Int8] {
        (0..<n).map { _ in Int8.random(in: range, using: &self) }
    }
    mutating func bytes(_ n: Int, below limit: Int) -> [UInt8] {
        (0..<n).map { _ in UInt8(Int.random(in: 0..<limit, using: &self)) }
    }
}

/// Activations with a few outlier channels, as real ones have.
func activations(rows: Int, columns: Int, rng: inout SplitMix) -> [Float] {
    var x = rng.floats(rows * columns)
    for j in stride(from: 3, to: columns, by: 37) {
        for i in 0..<rows { x[i * columns + j] *= 12 }
    }
    return x
}

/// A random quantized layer of the given scheme.
func makeLayer(name: String = "layers/0/mlp/up_proj", out: Int, in columns: Int, bits: Int, groupSize: Int? = nil,
               symmetric: Bool, activation: ActivationQuantization? = nil, bias: Bool = false,
               seed: UInt64) -> QuantizedLinear {
    var rng = SplitMix(seed: seed)
    let group = groupSize ?? columns
    let groups = (columns + group - 1) / group
    let scales = rng.floats(out * groups, in: 0.002...0.03)
    var codes = [UInt8](repeating: 0, count: out * columns)
    var zeros: [Float]?
    if symmetric {
        let zero = 1 << (bits - 1), maxCode = zero - 1
        for i in codes.indices { codes[i] = UInt8(zero + Int.random(in: -maxCode...maxCode, using: &rng)) }
    } else {
        codes = rng.bytes(out * columns, below: 1 << bits)
        zeros = (0..<(out * groups)).map { _ in Float(Int.random(in: 0..<(1 << bits), using: &rng)) }
    }
    let weight = IntegerWeight(bits: bits, rows: out, columns: columns, groupSize: group, symmetric: symmetric,
                               codes: codes, scales: scales, zeros: zeros)
    return QuantizedLinear(name: name, method: "test", weight: .integer(weight), bias: bias ? rng.floats(out) : nil,
                           activation: activation)
}

/// Plain-loop activation quantization, written from the `ActivationQuantization` contract:
/// x' = (x − shift) / channelScale, code = clamp(roundf(x' / step), ±maxCode).
func referenceQuantize(_ x: [Float], rows: Int, columns: Int, _ a: ActivationQuantization) -> (codes: [Int8], steps: [Float]) {
    let maxCode = Float(a.maxCode)
    var codes = [Int8](repeating: 0, count: rows * columns)
    var steps = [Float](repeating: 0, count: rows)
    for i in 0..<rows {
        var v = [Float](repeating: 0, count: columns)
        for j in 0..<columns {
            var t = x[i * columns + j]
            if let s = a.channelShift { t = t - s[j] }
            if let s = a.channelScales { t = t / s[j] }
            v[j] = t
        }
        let step: Float
        if a.granularity == .perTensor {
            step = a.scale!
        } else {
            var m: Float = 0
            for t in v { m = max(m, abs(t)) }
            step = m / maxCode
        }
        steps[i] = step
        for j in 0..<columns where step > 0 {
            codes[i * columns + j] = Int8(min(max(roundf(v[j] / step), -maxCode), maxCode))
        }
    }
    return (codes, steps)
}

/// The simulated fake-quant forward in Double: dequantized weights, activations quantized and
/// dequantized by the plain loop. Returns the outputs and, per output, Σ|terms| (the scale the
/// tolerance is relative to).
func fakeQuantForward(_ q: QuantizedLinear, x: [Float], rows: Int) -> (y: [Double], magnitude: [Double]) {
    let w = q.weight.dequantizedReference()
    let n = q.weight.rows, k = q.weight.columns
    var xd = x.map(Double.init)
    if let a = q.activation {
        let (codes, steps) = referenceQuantize(x, rows: rows, columns: k, a)
        for i in 0..<rows { for j in 0..<k { xd[i * k + j] = Double(codes[i * k + j]) * Double(steps[i]) } }
    }
    var y = [Double](repeating: 0, count: rows * n), mag = y
    for i in 0..<rows {
        for o in 0..<n {
            var s = 0.0, m = 0.0
            for j in 0..<k {
                let t = xd[i * k + j] * Double(w[o * k + j])
                s += t
                m += abs(t)
            }
            if let b = q.bias { s += Double(b[o]); m += abs(Double(b[o])) }
            y[i * n + o] = s
            mag[i * n + o] = m
        }
    }
    return (y, mag)
}

func run(_ op: any LinearOp, _ x: [Float], rows: Int) -> [Float] {
    var y = [Float](repeating: .nan, count: rows * op.outFeatures)
    x.withUnsafeBufferPointer { xp in
        y.withUnsafeMutableBufferPointer { op.forward(xp.baseAddress!, rows: rows, into: $0.baseAddress!) }
    }
    return y
}

/// Largest |got − want| / (Σ|terms| + tiny) over all outputs.
/// The tolerance of a float-activation (weight-only) layer's output over `rows` rows against
/// the float32 reference, relative to Σ|x·w|: float32 rounding (1e-5) for decode rows, and the
/// bf16 product bound (activations and weights rounded to bf16, 2⁻⁷ + k·2⁻²⁴) for prefill
/// (rows > the layers' GEMV limit of 8, `LowBit.tiledProduct`) while `LowBit.bf16Prefill` is on,
/// the default. The measured bf16 errors of these tests are 0.6–2.3e-3, the bound 7.8e-3.
/// Decode rows get the same bound where the bf16 decode GEMV runs (`LowBit.bf16Decode` on a CPU
/// with AVX512_BF16): x rounded to bf16 (2⁻⁸) plus fp32 sums with the +128 code offset, within
/// 2⁻⁸ + N·2⁻²⁴·~50 of Σ|x·w| (`ck_bf16_gemv.h`), below 2⁻⁷ for these depths.
func floatActivationTolerance(rows: Int, depth: Int) -> Double {
    let bf16 = rows > 8 ? (LowBit.bf16PrefillOverride ?? LowBit.bf16Prefill)
                        : (LowBit.bf16DecodeOverride ?? LowBit.bf16Decode) && LowBit.usesBF16Kernel
    return bf16 ? Double(LowBit.bf16ProductBound(depth: depth)) : 1e-5
}

func worstRelativeError(_ got: [Float], _ want: [Double], _ magnitude: [Double]) -> Double {
    var worst = 0.0
    for i in got.indices {
        let e = abs(Double(got[i]) - want[i]) / (magnitude[i] + 1e-12)
        worst = max(worst, e.isNaN ? .infinity : e)
    }
    return worst
}

// MARK: - C kernels against their reference twins

@Suite("Low-bit C kernels")
struct KernelTests {
    static let ks = [1, 31, 32, 33, 576, 1000]
    static let ms = [1, 3, 17]
    static let ns = [1, 5, 64]

    @Test("int8 GEMM equals the scalar reference exactly", arguments: ks, ms)
    func gemmI8(k: Int, m: Int) {
        var rng = SplitMix(seed: UInt64(k * 1000 + m))
        for n in Self.ns {
            let a = rng.int8s(m * k, in: -127...127)
            var b = rng.int8s(n * k, in: -128...127)
            if !b.isEmpty { b[0] = -128 }
            let ldc = n + 3
            var fast = [Int32](repeating: -1, count: m * ldc), ref = fast
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    LowBit.gemmI8(a: ap.baseAddress!, m: m, b: bp.baseAddress!, n: n, k: k, c: &fast, ldc: ldc)
                    LowBit.gemmI8Reference(a: ap.baseAddress!, m: m, b: bp.baseAddress!, n: n, k: k, c: &ref, ldc: ldc)
                }
            }
            #expect(fast == ref, "m=\(m) n=\(n) k=\(k)")
            // Untouched padding columns stay as they were.
            #expect((0..<m).allSatisfy { i in (n..<ldc).allSatisfy { fast[i * ldc + $0] == -1 } })
        }
    }

    @Test("int8 GEMM at extreme codes", arguments: [31, 64, 1000])
    func gemmI8Extremes(k: Int) {
        let m = 5, n = 3
        let a = [Int8](repeating: -127, count: m * k), b = [Int8](repeating: -128, count: n * k)
        var c = [Int32](repeating: 0, count: m * n)
        LowBit.gemmI8(a: a, m: m, b: b, n: n, k: k, c: &c, ldc: n)
        #expect(c.allSatisfy { $0 == Int32(127 * 128 * k) })
    }

    @Test("grouped int8 GEMM equals the reference bit for bit", arguments: ks, [32, 64, 7, 0])
    func gemmI8Grouped(k: Int, groupArgument: Int) {
        let group = groupArgument == 0 ? k : groupArgument
        let groups = (k + group - 1) / group
        var rng = SplitMix(seed: UInt64(k * 7 + group))
        for m in Self.ms {
            for n in Self.ns {
                let a = rng.int8s(m * k, in: -127...127), b = rng.int8s(n * k, in: -128...127)
                let ws = rng.floats(n * groups, in: 0.001...0.1)
                var fast = [Float](repeating: 0, count: m * n), ref = fast
                LowBit.gemmI8Grouped(a: a, m: m, b: b, n: n, k: k, groupSize: group, weightScales: ws, c: &fast, ldc: n)
                LowBit.gemmI8GroupedReference(a: a, m: m, b: b, n: n, k: k, groupSize: group, weightScales: ws,
                                              c: &ref, ldc: n)
                #expect(fast == ref, "m=\(m) n=\(n) k=\(k) group=\(group)")
            }
        }
    }

    @Test("weight-only GEMV matches the reference", arguments: [LowBit.CodeFormat.u4, .u8], ks)
    func gemv(format: LowBit.CodeFormat, k: Int) {
        var rng = SplitMix(seed: UInt64(k * 3 + (format == .u4 ? 1 : 2)))
        let limit = format == .u4 ? 16 : 256
        for n in Self.ns + [2100] { // 2100×1000 splits over workers
            for group in [32, 64, 128, 7, k] {
                let groups = (k + group - 1) / group
                let raw = rng.bytes(n * k, below: limit)
                let codes = format == .u4 ? LowBit.packNibbles(raw, rows: n, columns: k) : raw
                let scales = rng.floats(n * groups, in: 0.001...0.05)
                let zeros = (0..<(n * groups)).map { _ in Float(Int.random(in: 0..<limit, using: &rng)) }
                let x = activations(rows: 1, columns: k, rng: &rng)
                var fast = [Float](repeating: .nan, count: n), ref = fast
                LowBit.gemv(format, codes: codes, rows: n, columns: k, groupSize: group, scales: scales, zeros: zeros,
                            x: x, y: &fast)
                LowBit.gemvReference(format, codes: codes, rows: n, columns: k, groupSize: group, scales: scales,
                                     zeros: zeros, x: x, y: &ref)
                // Both sum in float in different orders: compare relative to Σ|terms|.
                var worst: Float = 0
                for o in 0..<n {
                    var mag: Float = 0
                    for j in 0..<k {
                        let g = j / group
                        mag += abs(x[j]) * scales[o * groups + g] * (Float(raw[o * k + j]) + zeros[o * groups + g])
                    }
                    worst = max(worst, abs(fast[o] - ref[o]) / (mag + 1e-20))
                }
                #expect(worst < 1e-5, "\(format) n=\(n) k=\(k) group=\(group): \(worst)")
            }
        }
    }

    /// Σ_j x_j·s·(u − z) in Double, and Σ_j |x_j|·|s|·(u + |z|) for a relative tolerance.
    static func dequantizedGemv(codes: [UInt8], rows n: Int, columns k: Int, group: Int, scales: [Float],
                                zeros: [Float], x: [Float]) -> (y: [Double], magnitude: [Double]) {
        let groups = (k + group - 1) / group
        var y = [Double](repeating: 0, count: n), mag = y
        for o in 0..<n {
            for j in 0..<k {
                let s = Double(scales[o * groups + j / group]), z = Double(zeros[o * groups + j / group])
                let u = Double(codes[o * k + j]), xj = Double(x[j])
                y[o] += xj * s * (u - z)
                mag[o] += abs(xj) * abs(s) * (u + abs(z))
            }
        }
        return (y, mag)
    }

    /// Runs the table-lookup GEMV and its scalar twin on one layout; both outputs.
    static func planeGemv(codes: [UInt8], rows n: Int, columns k: Int, group: Int, scales: [Float], zeros: [Float],
                          x: [Float]) -> (fast: [Float], ref: [Float]) {
        let layout = LowBit.PlaneLayout(codes: codes, rows: n, columns: k, groupSize: group, scales: scales, zeros: zeros)
        // One float past the rows: the fast path's masked store of a partial block must not write it.
        var fast = [Float](repeating: .nan, count: n + 1), ref = fast
        x.withUnsafeBufferPointer { xp in
            fast.withUnsafeMutableBufferPointer { LowBit.gemvPlanes(layout, x: xp.baseAddress!, y: $0.baseAddress!) }
            ref.withUnsafeMutableBufferPointer { LowBit.gemvPlanesReference(layout, x: xp.baseAddress!, y: $0.baseAddress!) }
        }
        #expect(fast[n].isNaN && ref[n].isNaN, "wrote past row \(n)")
        return (Array(fast[0..<n]), Array(ref[0..<n]))
    }

    @Test("table-lookup u4 GEMV equals its scalar twin exactly and the dequantized product",
          arguments: [1, 15, 17, 576, 1536], [4, 12, 201, 576, 1536])
    func planeGemv(rows n: Int, columns k: Int) {
        var rng = SplitMix(seed: UInt64(n * 10_007 + k))
        // 6: groups that split 4-column quads (each group is padded to whole quads); k: per row.
        for group in [32, 64, 128, 6, k] {
            let g = min(group, k), groups = (k + g - 1) / g
            let codes = rng.bytes(n * k, below: 16)
            let scales = rng.floats(n * groups, in: 0.001...0.05)
            let zeros = (0..<(n * groups)).map { _ in Float(Int.random(in: 0...15, using: &rng)) }
            let x = activations(rows: 1, columns: k, rng: &rng)
            let (fast, ref) = Self.planeGemv(codes: codes, rows: n, columns: k, group: g, scales: scales, zeros: zeros, x: x)
            #expect(fast == ref, "n=\(n) k=\(k) group=\(g)")
            let (want, mag) = Self.dequantizedGemv(codes: codes, rows: n, columns: k, group: g, scales: scales,
                                                   zeros: zeros, x: x)
            #expect(worstRelativeError(fast, want, mag) < 1e-5, "n=\(n) k=\(k) group=\(g)")
            #expect(worstRelativeError(ref, want, mag) < 1e-5, "n=\(n) k=\(k) group=\(g)")
        }
    }

    @Test("table-lookup u4 GEMV at extreme codes, zero points and scales",
          arguments: ["all-zero codes", "code 15 everywhere", "zero point 0", "zero point 15", "huge scales", "tiny scales"])
    func planeGemvExtremes(_ label: String) {
        for (n, k, group) in [(17, 576, 128), (33, 12, 12), (16, 1536, 32)] {
            var rng = SplitMix(seed: UInt64(n + k))
            let groups = (k + group - 1) / group
            var codes = rng.bytes(n * k, below: 16)
            var scales = rng.floats(n * groups, in: 0.001...0.05)
            var zeros = (0..<(n * groups)).map { _ in Float(Int.random(in: 0...15, using: &rng)) }
            switch label {
            case "all-zero codes": codes = [UInt8](repeating: 0, count: n * k)
            case "code 15 everywhere": codes = [UInt8](repeating: 15, count: n * k)
            case "zero point 0": zeros = [Float](repeating: 0, count: n * groups)
            case "zero point 15": zeros = [Float](repeating: 15, count: n * groups)
            case "huge scales": scales = scales.map { $0 * 1e30 }
            default: scales = scales.map { $0 * 1e-30 }
            }
            let x = activations(rows: 1, columns: k, rng: &rng)
            let (fast, ref) = Self.planeGemv(codes: codes, rows: n, columns: k, group: group, scales: scales,
                                             zeros: zeros, x: x)
            #expect(fast == ref, "\(label) n=\(n) k=\(k)")
            #expect(fast.allSatisfy { $0.isFinite }, "\(label) n=\(n) k=\(k)")
            let (want, mag) = Self.dequantizedGemv(codes: codes, rows: n, columns: k, group: group, scales: scales,
                                                   zeros: zeros, x: x)
            #expect(worstRelativeError(fast, want, mag) < 1e-5, "\(label) n=\(n) k=\(k)")
            if label == "all-zero codes" && zeros.allSatisfy({ $0 == 0 }) { #expect(fast.allSatisfy { $0 == 0 }) }
        }
    }

    @Test("plane layout: row l's plane-p index of quad k is nibble k / 4 of byte 4l + k mod 4")
    func planeLayout() {
        // 16 rows × 32 columns (one chunk of 8 quads), one group: code (l + 3j) mod 16.
        let codes: [UInt8] = (0..<(16 * 32)).map { (i: Int) -> UInt8 in
            let row = i / 32, column = i % 32
            return UInt8((row + 3 * column) % 16)
        }
        let layout = LowBit.PlaneLayout(codes: codes, rows: 16, columns: 32, groupSize: 32,
                                        scales: [Float](repeating: 1, count: 16), zeros: [Float](repeating: 0, count: 16))
        // 4 planes × 64 bytes, then 64 bytes of padding for the offset loads.
        #expect(layout.planes.count == 4 * 8 + 8)
        let bytes = layout.planes.withUnsafeBytes { Array($0) }
        for l in 0..<16 {
            for quad in 0..<8 {
                for p in 0..<4 {
                    let byte = Int(bytes[p * 64 + 4 * l + quad % 4])
                    let index = quad < 4 ? byte & 0xF : byte >> 4
                    var want = 0
                    for c in 0..<4 where (Int(codes[l * 32 + 4 * quad + c]) >> p) & 1 == 1 { want |= 1 << c }
                    #expect(index == want, "row \(l) quad \(quad) plane \(p)")
                }
            }
        }
        #expect(bytes[256...].allSatisfy { $0 == 0 })
    }

    @Test("tile dequantization is exact", arguments: [LowBit.CodeFormat.u4, .u8], ks)
    func dequantize(format: LowBit.CodeFormat, k: Int) {
        let bits = format == .u4 ? 4 : 8
        for (n, group) in [(5, 32), (64, 7), (17, 128), (9, k)] {
            let q = makeLayer(out: n, in: k, bits: bits, groupSize: group, symmetric: false, seed: UInt64(n * k))
            let w = q.weight.integer!
            let codes = format == .u4 ? LowBit.packNibbles(w.codes, rows: n, columns: k) : w.codes
            let zeros = w.zeros!
            let expected = w.dequantizedReference()
            for range in [0..<n, 1..<n, (n - 1)..<n] where !range.isEmpty {
                var fast = [Float](repeating: .nan, count: range.count * k), ref = fast
                LowBit.dequantizeRows(format, codes: codes, rowRange: range, columns: k, groupSize: group,
                                      scales: w.scales, zeros: zeros, into: &fast)
                LowBit.dequantizeRowsReference(format, codes: codes, rowRange: range, columns: k, groupSize: group,
                                               scales: w.scales, zeros: zeros, into: &ref)
                #expect(fast == ref, "\(format) n=\(n) k=\(k) group=\(group) rows=\(range)")
                #expect(fast == Array(expected[(range.lowerBound * k)..<(range.upperBound * k)]))
            }
        }
    }

    /// The prefill tile decoder on the plane layout (the only copy of u4 codes where the planes
    /// exist): the vector kernel and its scalar twin write exactly the reference dequantizer's
    /// values (`dequantizedReference`), for row ranges that start and end inside 16-row blocks,
    /// groups that split 32-column chunks and quads, and symmetric and asymmetric codes.
    @Test("plane-layout tile dequantization is exact", arguments: ks)
    func dequantizePlanes(k: Int) {
        for (n, group, symmetric) in [(5, 32, false), (64, 7, false), (37, 128, true), (33, k, false), (17, 6, true),
                                      (48, 96, false)] {
            let q = makeLayer(out: n, in: k, bits: 4, groupSize: group, symmetric: symmetric, seed: UInt64(n * k + group))
            let w = q.weight.integer!
            let g = min(group, k), groups = (k + g - 1) / g
            let zeros = w.zeros ?? [Float](repeating: Float(w.symmetricZero), count: n * groups)
            let layout = LowBit.PlaneLayout(codes: w.codes, rows: n, columns: k, groupSize: g, scales: w.scales,
                                            zeros: zeros)
            let expected = w.dequantizedReference()
            for range in [0..<n, 1..<n, (n - 1)..<n, min(n, 3)..<min(n, 20), min(n, 16)..<min(n, 33)] where !range.isEmpty {
                // One float past the tile: the masked stores must not write it.
                var fast = [Float](repeating: .nan, count: range.count * k + 1), ref = fast
                LowBit.dequantizeRows(layout, rowRange: range, into: &fast)
                LowBit.dequantizeRows(layout, rowRange: range, into: &ref, reference: true)
                let want = Array(expected[(range.lowerBound * k)..<(range.upperBound * k)])
                #expect(fast[range.count * k].isNaN && ref[range.count * k].isNaN, "wrote past the tile")
                #expect(Array(fast.prefix(range.count * k)).map(\.bitPattern) == want.map(\.bitPattern),
                        "n=\(n) k=\(k) group=\(g) rows=\(range)")
                #expect(Array(ref.prefix(range.count * k)).map(\.bitPattern) == want.map(\.bitPattern),
                        "reference n=\(n) k=\(k) group=\(g) rows=\(range)")
            }
            // The tiled product from the planes equals the one from the nibbles, bit for bit.
            var rng = SplitMix(seed: UInt64(k))
            let x = activations(rows: 11, columns: k, rng: &rng)
            var a = [Float](repeating: .nan, count: 11 * n), b = a
            LowBit.planesProduct(layout, x: x, rows: 11, y: &a, tileRows: 16)
            let nibbles = LowBit.packNibbles(w.codes, rows: n, columns: k)
            LowBit.dequantizedProduct(.u4, codes: nibbles, outFeatures: n, inFeatures: k, groupSize: g, scales: w.scales,
                                      zeros: zeros, x: x, rows: 11, y: &b, tileRows: 16)
            #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "product n=\(n) k=\(k) group=\(g)")
        }
    }

    /// Nibble rows back from a one-group plane layout (the binary layers' salient codes at
    /// prefill): exactly `packNibbles`' bytes, vector and scalar, for odd widths and row ranges
    /// inside 16-row blocks.
    @Test("plane-layout nibble unpacking is exact", arguments: [1, 31, 32, 33, 116, 307, 600])
    func unpackPlaneNibbles(k: Int) {
        var rng = SplitMix(seed: UInt64(k) &* 77)
        for n in [1, 16, 37] {
            let codes = rng.bytes(n * k, below: 16)
            let layout = LowBit.PlaneLayout(codes: codes, rows: n, columns: k, groupSize: k,
                                            scales: [Float](repeating: 1, count: n), zeros: [Float](repeating: 0, count: n))
            let want = LowBit.packNibbles(codes, rows: n, columns: k), stride = LowBit.nibbleRowBytes(k)
            for range in [0..<n, (n / 3)..<n, (n - 1)..<n] {
                for reference in [false, true] {
                    var back = [UInt8](repeating: 0xAB, count: range.count * stride)
                    layout.unpackNibbles(range, stride: stride, into: &back, reference: reference)
                    #expect(back == Array(want[(range.lowerBound * stride)..<(range.upperBound * stride)]),
                            "n=\(n) k=\(k) rows \(range) reference \(reference)")
                }
            }
        }
    }

    @Test("tiled dequantize + sgemm product", arguments: [LowBit.CodeFormat.u4, .u8], [1, 8, 16, 1000])
    func dequantizedProduct(format: LowBit.CodeFormat, tileRows: Int) {
        checkDequantizedProduct(format, out: 37, in: 96, rows: 5, tileRows: tileRows, seed: UInt64(tileRows), xSeed: 99)
    }

    /// `LowBit.dequantizedProduct` of a random asymmetric g32 layer equals the simulated layer.
    func checkDequantizedProduct(_ format: LowBit.CodeFormat, out n: Int, in k: Int, rows: Int, tileRows: Int,
                                 seed: UInt64, xSeed: UInt64) {
        let q = makeLayer(out: n, in: k, bits: format == .u4 ? 4 : 8, groupSize: 32, symmetric: false, seed: seed)
        let codes = format == .u4 ? LowBit.packNibbles(q.weight.integer!.codes, rows: n, columns: k) : q.weight.integer!.codes
        var rng = SplitMix(seed: xSeed)
        let x = activations(rows: rows, columns: k, rng: &rng)
        let (want, mag) = fakeQuantForward(q, x: x, rows: rows)
        // float32 tiles (sgemm) within float rounding; bf16 tiles within the bf16 product bound.
        for (bf16, tolerance) in [(false, 1e-5), (true, Double(LowBit.bf16ProductBound(depth: k)))] {
            var y = [Float](repeating: .nan, count: rows * n)
            LowBit.dequantizedProduct(format, codes: codes, outFeatures: n, inFeatures: k, groupSize: 32,
                                      scales: q.weight.integer!.scales, zeros: q.weight.integer!.zeros!, x: x, rows: rows,
                                      y: &y, tileRows: tileRows, bf16: bf16)
            #expect(worstRelativeError(y, want, mag) < tolerance, "bf16 \(bf16)")
        }
    }

    /// Products large enough that `tiledProduct` gives each pool thread its own slice of output
    /// features (decoded and multiplied there, OpenBLAS single-threaded), several tiles a slice
    /// with small `tileRows` (96 rows: above `BLAS.pooledMinimumRows`); the slices' edges fall
    /// inside and between groups.
    @Test("tiled product split over the pool", arguments: [LowBit.CodeFormat.u4, .u8], [24, 1000])
    func pooledDequantizedProduct(format: LowBit.CodeFormat, tileRows: Int) {
        let (n, k, rows) = (300, 256, 96)
        checkDequantizedProduct(format, out: n, in: k, rows: rows, tileRows: tileRows, seed: UInt64(tileRows + 7), xSeed: 5)
        if Parallel.workerCount > 1 { #expect(BLAS.pooledParts(rows: rows, columns: n, depth: k) > 1) }
    }

    @Test("nibble packing layout")
    func nibbles() {
        let codes: [UInt8] = [1, 2, 3, 4, 5, /* row 2 */ 6, 7, 8, 9, 10]
        #expect(LowBit.packNibbles(codes, rows: 2, columns: 5) == [0x21, 0x43, 0x05, 0x76, 0x98, 0x0A])
        #expect(LowBit.nibbleRowBytes(5) == 3)
    }

    @Test("activation quantization matches the plain loop and the C reference", arguments: [8, 6, 4], [false, true])
    func quantizeRows(bits: Int, perTensor: Bool) {
        var rng = SplitMix(seed: UInt64(bits * 2 + (perTensor ? 1 : 0)))
        for cols in [1, 31, 32, 33, 333] {
            let rows = 7
            var x = activations(rows: rows, columns: cols, rng: &rng)
            for j in 0..<cols { x[2 * cols + j] = 0 } // an all-zero row
            x[0] = 0.015 // with step 0.03: an exact half, rounded away from zero
            let shift = rng.floats(cols, in: -0.2...0.2), scales = rng.floats(cols, in: 0.5...2)
            for (s, c) in [(nil, nil), (shift, nil), (nil, scales), (shift, scales)] as [([Float]?, [Float]?)] {
                let a = ActivationQuantization(bits: bits, granularity: perTensor ? .perTensor : .perToken,
                                               scale: perTensor ? 0.03 : nil, channelScales: c, channelShift: s)
                let scaling: ActivationScaling = perTensor ? .perTensor(0.03) : .perToken
                let got = LowBit.quantizeRows(x, rows: rows, columns: cols, shift: s, channelScales: c, bits: bits,
                                              scaling: scaling)
                let want = referenceQuantize(x, rows: rows, columns: cols, a)
                #expect(got.codes == want.codes, "cols=\(cols)")
                #expect(got.rowScales == want.steps, "cols=\(cols)")
                #expect(got.codes.allSatisfy { abs(Int($0)) <= a.maxCode })
                var refCodes = [Int8](repeating: 0, count: rows * cols), refSteps = [Float](repeating: 0, count: rows)
                x.withUnsafeBufferPointer { xp in
                    LowBit.quantizeRowsReference(xp.baseAddress!, rows: rows, columns: cols, shift: s, channelScales: c,
                                                 bits: bits, scaling: scaling, codes: &refCodes, rowScales: &refSteps)
                }
                #expect(got.codes == refCodes && got.rowScales == refSteps, "cols=\(cols)")
            }
        }
        let half = LowBit.quantizeRows([0.5, -0.5, 1.5, -2.5, 1, 300, -300, 126.5, -126.5], rows: 1, columns: 9,
                                       bits: 8, scaling: .perTensor(1))
        #expect(half.codes == [1, -1, 2, -3, 1, 127, -127, 127, -127]) // half away from zero, like roundf
        let vector = LowBit.quantizeRows((0..<32).map { Float($0) - 15.5 }, rows: 1, columns: 32, bits: 8,
                                         scaling: .perTensor(1))
        #expect(vector.codes == (0..<32).map { Int8(roundf(Float($0) - 15.5)) })
    }
}

// MARK: - IntegerLinear against the fake-quant reference

struct LayerCase: Sendable, CustomTestStringConvertible {
    var label: String
    var out: Int
    var columns: Int
    var bits: Int
    var group: Int?
    var symmetric: Bool
    var activation: ActivationQuantization?
    var bias = false
    var testDescription: String { label }
}

func act(_ bits: Int, _ perTensor: Bool, channels: Int? = nil, seed: UInt64 = 1) -> ActivationQuantization {
    var rng = SplitMix(seed: seed)
    return ActivationQuantization(
        bits: bits, granularity: perTensor ? .perTensor : .perToken,
        // About 80% of the outlier absmax: some clipping at the top of the range.
        scale: perTensor ? 12 * 0.8 / Float((1 << (bits - 1)) - 1) : nil,
        channelScales: channels.map { rng.floats($0, in: 0.5...2) },
        channelShift: channels.map { rng.floats($0, in: -0.2...0.2) })
}

let layerCases: [LayerCase] = [
    // Integer activations, per-output-channel weights.
    LayerCase(label: "W8A8 per-token", out: 48, columns: 576, bits: 8, symmetric: true, activation: act(8, false)),
    LayerCase(label: "W8A8 per-tensor", out: 48, columns: 576, bits: 8, symmetric: true, activation: act(8, true)),
    LayerCase(label: "W6A6 per-token", out: 33, columns: 100, bits: 6, symmetric: true, activation: act(6, false)),
    LayerCase(label: "W6A6 per-tensor", out: 33, columns: 100, bits: 6, symmetric: true, activation: act(6, true)),
    LayerCase(label: "W4A8 per-token", out: 64, columns: 256, bits: 4, symmetric: true, activation: act(8, false)),
    LayerCase(label: "W4A8 g32 asymmetric (nibbles)", out: 40, columns: 192, bits: 4, group: 32, symmetric: false,
              activation: act(8, false), bias: true),
    LayerCase(label: "W4A8 g32 on 100 columns (int8 codes)", out: 24, columns: 100, bits: 4, group: 32, symmetric: true,
              activation: act(8, false)),
    LayerCase(label: "W4A8 per-tensor", out: 64, columns: 256, bits: 4, symmetric: true, activation: act(8, true)),
    LayerCase(label: "W4A4 per-token", out: 16, columns: 64, bits: 4, symmetric: true, activation: act(4, false)),
    LayerCase(label: "W8A8 per-token shift+scales+bias", out: 40, columns: 333, bits: 8, symmetric: true,
              activation: act(8, false, channels: 333), bias: true),
    LayerCase(label: "W8A8 per-tensor shift+scales+bias", out: 40, columns: 333, bits: 8, symmetric: true,
              activation: act(8, true, channels: 333), bias: true),
    LayerCase(label: "W6A6 per-tensor shift+scales+bias", out: 21, columns: 64, bits: 6, symmetric: true,
              activation: act(6, true, channels: 64), bias: true),
    // Integer activations, grouped weights.
    LayerCase(label: "W8A8 g32 per-token", out: 24, columns: 256, bits: 8, group: 32, symmetric: true,
              activation: act(8, false)),
    LayerCase(label: "W4A8 g64 per-tensor shift+scales+bias", out: 24, columns: 200, bits: 4, group: 64,
              symmetric: true, activation: act(8, true, channels: 200), bias: true),
    LayerCase(label: "W4A8 g128 per-token (large, parallel)", out: 2200, columns: 1000, bits: 4, group: 128,
              symmetric: true, activation: act(8, false)),
    // Integer activations, asymmetric weights (zero-point correction from activation code sums).
    LayerCase(label: "W8A8 asym per-token", out: 48, columns: 576, bits: 8, symmetric: false, activation: act(8, false)),
    LayerCase(label: "W6A6 asym per-tensor shift+scales+bias", out: 21, columns: 64, bits: 6, symmetric: false,
              activation: act(6, true, channels: 64), bias: true),
    LayerCase(label: "W4A8 asym g64 per-token", out: 24, columns: 200, bits: 4, group: 64, symmetric: false,
              activation: act(8, false)),
    // Float activations.
    LayerCase(label: "W4A16 asym g32", out: 48, columns: 256, bits: 4, group: 32, symmetric: false),
    LayerCase(label: "W4A16 asym g64 bias", out: 48, columns: 320, bits: 4, group: 64, symmetric: false, bias: true),
    LayerCase(label: "W4A16 asym g128", out: 48, columns: 576, bits: 4, group: 128, symmetric: false),
    LayerCase(label: "W4A16 asym g128 (large, parallel; 5 tiles at 12 rows)", out: 2200, columns: 1000, bits: 4, group: 128, symmetric: false),
    LayerCase(label: "W4A16 sym per-channel odd columns", out: 17, columns: 201, bits: 4, symmetric: true),
    LayerCase(label: "W4A16 asym g32 ragged last group", out: 19, columns: 200, bits: 4, group: 32, symmetric: false),
    LayerCase(label: "W8A16 asym per-channel", out: 48, columns: 576, bits: 8, symmetric: false),
    LayerCase(label: "W8A16 sym g64 bias", out: 48, columns: 256, bits: 8, group: 64, symmetric: true, bias: true),
    LayerCase(label: "W3A16 asym g32", out: 40, columns: 256, bits: 3, group: 32, symmetric: false),
    LayerCase(label: "W3A16 sym per-channel", out: 40, columns: 333, bits: 3, symmetric: true),
    LayerCase(label: "W6A16 asym g128", out: 40, columns: 384, bits: 6, group: 128, symmetric: false),
    LayerCase(label: "W2A16 asym g64", out: 40, columns: 256, bits: 2, group: 64, symmetric: false),
]

@Suite("IntegerLinear")
struct IntegerLinearTests {
    @Test("matches the simulated fake-quant forward", arguments: layerCases, [1, 7, 12])
    func matchesFakeQuant(_ c: LayerCase, rows: Int) throws {
        let q = makeLayer(out: c.out, in: c.columns, bits: c.bits, groupSize: c.group, symmetric: c.symmetric,
                          activation: c.activation, bias: c.bias, seed: UInt64(c.out * 31 + c.columns))
        let op = try IntegerLinear(q)
        #expect(op.inFeatures == c.columns && op.outFeatures == c.out)
        var rng = SplitMix(seed: UInt64(rows))
        let x = activations(rows: rows, columns: c.columns, rng: &rng)
        let y = run(op, x, rows: rows)
        let (want, mag) = fakeQuantForward(q, x: x, rows: rows)
        // Float rounding leaves ~1e-7 of Σ|terms|; a 0.1% scaling slip shows as ~1e-4. A16
        // layers prefill 12 rows in bf16 (≤ 2⁻⁷ of Σ|terms|), so there only a gross slip shows.
        let worst = worstRelativeError(y, want, mag)
        let tolerance = c.activation == nil ? floatActivationTolerance(rows: rows, depth: c.columns) : 1e-5
        #expect(worst < tolerance, "\(c.label) rows=\(rows): worst relative error \(worst)")
        // The runtime never keeps the float matrix, nor a second copy of the codes (with AVX-512,
        // ≤ 4-bit float-activation layers hold them only in bit planes, padded to 16 rows).
        #expect(op.storageBytes < c.out * c.columns * 2)
    }

    @Test("a row-batched forward equals row-by-row forwards", arguments: layerCases.filter { $0.activation != nil })
    func batchedEqualsSingle(_ c: LayerCase) throws {
        let q = makeLayer(out: c.out, in: c.columns, bits: c.bits, groupSize: c.group, symmetric: c.symmetric,
                          activation: c.activation, bias: c.bias, seed: 5)
        let op = try IntegerLinear(q)
        var rng = SplitMix(seed: 6)
        let rows = 7
        let x = activations(rows: rows, columns: c.columns, rng: &rng)
        let batched = run(op, x, rows: rows)
        var single: [Float] = []
        for i in 0..<rows { single += run(op, Array(x[(i * c.columns)..<((i + 1) * c.columns)]), rows: 1) }
        #expect(batched == single)
    }

    @Test("≤ 4-bit weights with int8 activations run on nibbles with the int8-per-weight path's output bits",
          arguments: [(4, 32, true), (4, 32, false), (4, 0, true), (4, 0, false), (3, 64, true)], [1, 3, 12])
    func nibblesMatchBytes(_ shape: (bits: Int, group: Int, symmetric: Bool), rows: Int) throws {
        let columns = 192, out = 40
        let group = shape.group == 0 ? columns : shape.group
        let a = act(8, false)
        let q = makeLayer(out: out, in: columns, bits: shape.bits, groupSize: group, symmetric: shape.symmetric,
                          activation: a, bias: true, seed: UInt64(shape.bits * 100 + group))
        // The same signed codes u − 2^(b−1) at 5 bits: u + 16 − 2^(b−1) with the zero points moved
        // as much; 5+ bits keep one int8 per weight, so this is the path the nibbles replace.
        guard case .integer(let w) = q.weight else { Issue.record("not integer"); return }
        let shift = 16 - (1 << (shape.bits - 1))
        let wide = IntegerWeight(bits: 5, rows: out, columns: columns, groupSize: group,
                                 symmetric: shape.symmetric, codes: w.codes.map { $0 + UInt8(shift) },
                                 scales: w.scales, zeros: w.zeros.map { $0.map { $0 + Float(shift) } })
        let qWide = QuantizedLinear(name: q.name, method: "test", weight: .integer(wide), bias: q.bias, activation: a)
        let nibbleOp = try IntegerLinear(q), byteOp = try IntegerLinear(qWide)
        #expect(nibbleOp.kernelDescription.hasPrefix("nibble int8"))
        #expect(byteOp.kernelDescription.hasPrefix("int8 GEMM"))
        #expect(nibbleOp.storageBytes < byteOp.storageBytes - out * columns / 3)
        var rng = SplitMix(seed: UInt64(rows))
        let x = activations(rows: rows, columns: columns, rng: &rng)
        #expect(run(nibbleOp, x, rows: rows) == run(byteOp, x, rows: rows))
    }

    @Test("storage: nibbles for ≤ 4 bits, bytes above, int8 with activations")
    func storage() throws {
        // With AVX-512 the ≤ 4-bit codes are held only in bit planes (the same bytes as the
        // nibbles here: 64 rows and 128 columns need no padding to 16-row × 32-column blocks)
        // with blocked scales and zeros, plus 64 bytes of padding after the planes; no nibbles.
        // (The bf16 decode GEMV, where it runs, keeps nibbles instead: the float32 decode path here.)
        let planes = LowBit.planeTablesSupported
        let (w4, w3) = try LowBit.$bf16DecodeOverride.withValue(false) {
            (try IntegerLinear(makeLayer(out: 64, in: 128, bits: 4, groupSize: 32, symmetric: false, seed: 1)),
             try IntegerLinear(makeLayer(out: 64, in: 128, bits: 3, symmetric: true, seed: 1)))
        }
        #expect(w4.storageBytes == 64 * 64 + 64 * 4 * 4 * 2 + (planes ? 64 : 0))
        #expect(w4.weightBytes == w4.storageBytes)
        #expect(w3.storageBytes == 64 * 64 + 64 * 4 * 2 + (planes ? 64 : 0))
        // One group per row: the bf16 decode GEMV takes it where the CPU has AVX512_BF16, on nibbles.
        let w3b = try IntegerLinear(makeLayer(out: 64, in: 128, bits: 3, symmetric: true, seed: 1))
        let bf16 = LowBit.bf16Decode && LowBit.usesBF16Kernel
        #expect(w3b.storageBytes == 64 * 64 + 64 * 4 * 2 + (planes && !bf16 ? 64 : 0))
        #expect(w3b.kernelDescription == (bf16 ? "u4 bf16" : planes ? "u4 plane-table" : "u4") + " GEMV/tile-GEMM W3A16 per-channel")
        // Decode reads one copy: the planes (with their padding) where they exist.
        #expect(w4.weightBytes == 64 * 64 + 64 * 4 * 4 * 2 + (planes ? 64 : 0))
        let w8 = try IntegerLinear(makeLayer(out: 64, in: 128, bits: 8, symmetric: false, bias: true, seed: 1))
        #expect(w8.storageBytes == 64 * 128 + 64 * 4 * 3)
        let a8 = try IntegerLinear(makeLayer(out: 64, in: 128, bits: 8, symmetric: true, activation: act(8, false), seed: 1))
        // Codes, one scale and one int32 code sum (the VNNI decode GEMV's +128 term) per row.
        #expect(a8.storageBytes == 64 * 128 + 64 * 4 + 64 * 4)
        #expect(a8.kernelDescription == "int8 GEMM W8A8 per-channel per-token")
        #expect(w4.kernelDescription == (planes ? "u4 plane-table" : "u4") + " GEMV/tile-GEMM W4A16 g32")
    }

    @Test("W4A16 decode on bit planes matches the nibble GEMV; prefill tiles are unchanged",
          arguments: [(576, 576, 128), (1536, 576, 128), (576, 1536, 128), (17, 201, 32), (15, 12, 0)])
    func weightOnlyDecodeOnPlanes(_ shape: (out: Int, columns: Int, group: Int)) throws {
        // The 12-row check compares two tile products bit for bit; the bf16 GEMM test's fallback
        // case turns the AVX512_BF16 kernel off process-wide for a moment (holding this lock), and
        // with it off in only one of the two products they differ in summation order.
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let group = shape.group == 0 ? shape.columns : shape.group
        let q = makeLayer(out: shape.out, in: shape.columns, bits: 4, groupSize: group, symmetric: false, bias: true,
                          seed: UInt64(shape.out + shape.columns))
        // The planes exist where the float32 decode path is chosen at load (the bf16 GEMV keeps nibbles).
        let op = try LowBit.$bf16DecodeOverride.withValue(false) { try IntegerLinear(q) }
        let w = q.weight.integer!, n = shape.out, k = shape.columns
        let nibbles = LowBit.packNibbles(w.codes, rows: n, columns: k)
        var rng = SplitMix(seed: 3)
        for rows in [1, 12] {
            let x = activations(rows: rows, columns: k, rng: &rng)
            let y = LowBit.$bf16DecodeOverride.withValue(false) { run(op, x, rows: rows) }
            var want = [Float](repeating: 0, count: rows * n)
            if rows <= 8 {
                for i in 0..<rows {
                    Array(x[(i * k)..<((i + 1) * k)]).withUnsafeBufferPointer { xp in
                        want.withUnsafeMutableBufferPointer { yp in
                            LowBit.gemv(.u4, codes: nibbles, rows: n, columns: k, groupSize: group, scales: w.scales,
                                        zeros: w.zeros!, x: xp.baseAddress!, y: yp.baseAddress! + i * n)
                        }
                    }
                }
            } else {
                LowBit.dequantizedProduct(.u4, codes: nibbles, outFeatures: n, inFeatures: k, groupSize: group,
                                          scales: w.scales, zeros: w.zeros!, x: x, rows: rows, y: &want)
            }
            for i in 0..<rows { for o in 0..<n { want[i * n + o] += q.bias![o] } }
            let (exact, mag) = fakeQuantForward(q, x: x, rows: rows)
            let tolerance = LowBit.$bf16DecodeOverride.withValue(false) { floatActivationTolerance(rows: rows, depth: k) }
            #expect(worstRelativeError(y, exact, mag) < tolerance, "rows=\(rows)")
            if rows > 8 {
                #expect(y == want, "prefill tiles changed")
            } else {
                #expect(worstRelativeError(y, want.map(Double.init), mag) < 1e-5, "rows=\(rows)")
            }
        }
    }

    @Test("unsupported or inconsistent layers throw errors naming the layer")
    func errors() {
        func expectError(_ q: QuantizedLinear, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try IntegerLinear(q)
                Issue.record("no error for \(fragment)", sourceLocation: sourceLocation)
            } catch {
                #expect(error.message.contains(q.name), "\(error.message)", sourceLocation: sourceLocation)
                #expect(error.message.contains(fragment), "\(error.message)", sourceLocation: sourceLocation)
            }
        }
        let name = "layers/2/attention/q_proj"
        expectError(makeLayer(name: name, out: 8, in: 32, bits: 8, symmetric: true,
                              activation: ActivationQuantization(bits: 8, granularity: .perTensor), seed: 1),
                    "positive static scale")
        expectError(makeLayer(name: name, out: 8, in: 32, bits: 8, symmetric: true,
                              activation: ActivationQuantization(bits: 12, granularity: .perToken), seed: 1),
                    "12-bit activations")
        expectError(makeLayer(name: name, out: 8, in: 32, bits: 8, symmetric: true,
                              activation: ActivationQuantization(bits: 8, granularity: .perToken,
                                                                 channelScales: [1, 2]), seed: 1),
                    "channel scales")
        var q = makeLayer(name: name, out: 8, in: 32, bits: 4, symmetric: true, seed: 1)
        q.weight.integer!.bits = 16
        expectError(q, "16-bit weights")
        q = makeLayer(name: name, out: 8, in: 32, bits: 4, symmetric: true, seed: 1)
        q.weight.integer!.codes[3] = 16
        expectError(q, "does not fit 4 bits")
        q = makeLayer(name: name, out: 8, in: 32, bits: 4, groupSize: 8, symmetric: false, seed: 1)
        q.weight.integer!.scales.removeLast()
        expectError(q, "weight scales")
        q = makeLayer(name: name, out: 8, in: 32, bits: 4, groupSize: 8, symmetric: false, seed: 1)
        q.weight.integer!.zeros = nil
        expectError(q, "zero points")
        q = makeLayer(name: name, out: 8, in: 32, bits: 4, symmetric: true, bias: true, seed: 1)
        q.bias = [1, 2, 3]
        expectError(q, "bias")
        q = makeLayer(name: name, out: 8, in: 32, bits: 8, symmetric: true, activation: act(8, false), seed: 1)
        q.weight.integer!.symmetric = false
        q.weight.integer!.zeros = [Float](repeating: .nan, count: 8)
        expectError(q, "not finite")
    }
}

// MARK: - PackedWeights

@Suite("PackedWeights")
struct PackedWeightsTests {
    static let config = ModelConfig(
        architecture: .llama, vocabSize: 40, hiddenSize: 64, intermediateSize: 96, layerCount: 1,
        headCount: 4, kvHeadCount: 2, maxPositions: 64, ropeTheta: 10_000, normEpsilon: 1e-5,
        activation: .silu, tiedEmbeddings: true, name: "tiny-llama")
    static let tokenizer = TokenizerSpec(kind: .byteLevelBPE, tokens: (0..<40).map { "t\($0)" },
                                         preTokenizer: "smollm")

    /// A one-layer llama: q/k/v W8A8 per-token (their input is the first norm's output, the same
    /// in both forwards), o_proj W4A16 g32, gate W3A16, up W8A16, down left in float with a bias.
    static func packed() -> PackedModel {
        var rng = SplitMix(seed: 11)
        var floats: [String: Tensor] = [:]
        floats["embeddings/token/weight"] = Tensor(shape: [40, 64], data: rng.floats(40 * 64))
        floats["layers/0/attention_norm/weight"] = Tensor(shape: [64], data: rng.floats(64, in: 0.5...1.5))
        floats["layers/0/mlp_norm/weight"] = Tensor(shape: [64], data: rng.floats(64, in: 0.5...1.5))
        floats["final_norm/weight"] = Tensor(shape: [64], data: rng.floats(64, in: 0.5...1.5))
        floats["layers/0/mlp/down_proj/weight"] = Tensor(shape: [64, 96], data: rng.floats(64 * 96, in: -0.1...0.1))
        floats["layers/0/mlp/down_proj/bias"] = Tensor(shape: [64], data: rng.floats(64, in: -0.1...0.1))
        var linears: [String: QuantizedLinear] = [:]
        func add(_ name: String, out: Int, in k: Int, bits: Int, group: Int? = nil, symmetric: Bool,
                 activation: ActivationQuantization? = nil) {
            linears[name] = makeLayer(name: name, out: out, in: k, bits: bits, groupSize: group, symmetric: symmetric,
                                      activation: activation, seed: UInt64(linears.count + 1))
        }
        add("layers/0/attention/q_proj", out: 64, in: 64, bits: 8, symmetric: true, activation: act(8, false))
        add("layers/0/attention/k_proj", out: 32, in: 64, bits: 8, symmetric: true, activation: act(8, false))
        add("layers/0/attention/v_proj", out: 32, in: 64, bits: 8, symmetric: true, activation: act(8, false))
        add("layers/0/attention/o_proj", out: 64, in: 64, bits: 4, group: 32, symmetric: false)
        add("layers/0/mlp/gate_proj", out: 96, in: 64, bits: 3, symmetric: true)
        add("layers/0/mlp/up_proj", out: 96, in: 64, bits: 8, group: 32, symmetric: false)
        return PackedModel(config: config, tokenizer: tokenizer, floatTensors: floats, quantizedLinears: linears,
                           recipe: "", statsHash: nil, modelIdentity: "test", toolVersion: "test")
    }

    /// The fake-quant reference: each quantized layer as a Double loop over dequantized weights.
    final class FakeQuantLinear: LinearOp {
        let q: QuantizedLinear
        init(_ q: QuantizedLinear) { self.q = q }
        var inFeatures: Int { q.weight.columns }
        var outFeatures: Int { q.weight.rows }
        func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
            let xs = Array(UnsafeBufferPointer(start: x, count: rows * inFeatures))
            let (want, _) = fakeQuantForward(q, x: xs, rows: rows)
            for i in want.indices { y[i] = Float(want[i]) }
        }
    }

    struct ReferenceWeights: WeightSource {
        let model: PackedModel
        var config: ModelConfig { model.config }
        var tokenizer: TokenizerSpec { model.tokenizer }
        func tensor(_ name: String) throws(PTQError) -> Tensor { try PackedWeights(model).tensor(name) }
        func linear(_ name: String) throws(PTQError) -> any LinearOp {
            if let q = model.quantizedLinears[name] { return FakeQuantLinear(q) }
            return try PackedWeights(model).linear(name)
        }
    }

    @Test("tensors, quantized and float layers, and missing names")
    func lookups() throws {
        let weights = PackedWeights(Self.packed())
        #expect(try weights.tensor("final_norm/weight").shape == [64])
        #expect(try weights.linear("layers/0/attention/o_proj") is IntegerLinear)
        let down = try weights.linear("layers/0/mlp/down_proj")
        #expect(down is FloatLinear)
        #expect((down as? FloatLinear)?.bias?.count == 64)
        #expect(throws: PTQError.self) { try weights.tensor("layers/9/attention_norm/weight") }
        do {
            _ = try weights.linear("layers/0/attention/x_proj")
            Issue.record("no error for a missing layer")
        } catch {
            #expect(error.message.contains("layers/0/attention/x_proj"))
        }
        do {
            _ = try weights.tensor("nope/weight")
            Issue.record("no error for a missing tensor")
        } catch {
            #expect(error.message.contains("nope/weight"))
        }
    }

    @Test("a llama model on packed weights matches the fake-quant model")
    func llamaForward() throws {
        let packed = Self.packed()
        let model = try LlamaModel(weights: PackedWeights(packed))
        let reference = try LlamaModel(weights: ReferenceWeights(model: packed))
        let tokens = [1, 5, 9, 2, 33, 7, 14, 3, 27, 8, 39, 11] // 12 rows: tile + product for A16 layers
        // 8 rows: every A16 layer runs its float32 GEMV, so only float rounding separates the two;
        // 12 rows: prefill tiles, multiplied in bf16 by default (`LowBit.bf16Prefill`): each A16
        // product within 2⁻⁷ of Σ|x·w|, measured 2.4e-3 of the logit scale here; a wrong code,
        // scale or layout would still show in the 8-row check.
        // With the bf16 decode GEMV (AVX512_BF16) the 8-row check gets the bf16 tolerance too.
        let decode: Float = LowBit.bf16Decode && LowBit.usesBF16Kernel ? 1e-2 : 1e-4
        for (count, tolerance) in [(8, decode), (12, LowBit.bf16Prefill ? 1e-2 : 1e-4)] as [(Int, Float)] {
            let prefix = Array(tokens.prefix(count))
            let got = model.forward(prefix), want = reference.forward(prefix)
            #expect(got.count == want.count && got.count == prefix.count * 40)
            let scale = want.map { abs($0) }.max() ?? 1
            let worst = zip(got, want).map { abs($0 - $1) }.max() ?? 0
            #expect(worst <= tolerance * scale, "\(count) rows: worst \(worst) vs logit scale \(scale)")
        }
    }
}
