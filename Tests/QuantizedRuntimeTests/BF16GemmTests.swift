import CKernels
import Foundation
import Kernels
import PTQCore
import Testing

/// The bf16 prefill GEMM (`ck_bf16_*`, `LowBit.bf16Product`, `LowBit.tiledProduct(bf16:)`).
@Suite("bf16 prefill GEMM")
struct BF16GemmTests {
    /// float → bf16 → float, as the reference rounds (round to nearest even, subnormals → ±0).
    static func rounded(_ v: Float) -> Float {
        var x = [v]
        ck_bf16_round_f32(&x, 1)
        return x[0]
    }

    /// Σ_t x[i,t]·w[j,t] in double, and Σ|x·w| (the scale of the error bound).
    static func exact(_ x: [Float], _ w: [Float], rows: Int, n: Int, k: Int) -> (y: [Double], magnitude: [Double]) {
        var y = [Double](repeating: 0, count: rows * n), mag = y
        for i in 0..<rows {
            for j in 0..<n {
                var s = 0.0, a = 0.0
                for t in 0..<k {
                    let p = Double(x[i * k + t]) * Double(w[j * k + t])
                    s += p
                    a += abs(p)
                }
                y[i * n + j] = s
                mag[i * n + j] = a
            }
        }
        return (y, mag)
    }

    /// Random operands with an all-zero activation row, an all-zero weight row and a few
    /// large columns, x scaled by `xScale` and w by `wScale`.
    static func operands(rows: Int, n: Int, k: Int, xScale: Float, wScale: Float, seed: UInt64) -> (x: [Float], w: [Float]) {
        var rng = SplitMix(seed: seed)
        var x = activations(rows: rows, columns: k, rng: &rng).map { $0 * xScale }
        var w = rng.floats(n * k, in: -0.2...0.2).map { $0 * wScale }
        if rows > 2 { for t in 0..<k { x[2 * k + t] = 0 } }
        if n > 3 { for t in 0..<k { w[3 * k + t] = 0 } }
        return (x, w)
    }

    static let shapes: [(rows: Int, n: Int, k: Int)] = [
        (1, 1, 1), (1, 1, 2), (3, 5, 7), (8, 32, 64), (9, 33, 65), (17, 70, 1), (13, 31, 2), (7, 16, 33),
        (16, 48, 31), (64, 96, 576), (130, 40, 33), (12, 64, 1536),
    ]

    /// Scales (x, w): plain; huge activations with tiny weights and the reverse (products ≈ 1);
    /// both tiny, so that some products fall below fp32's normal range and are flushed (FTZ).
    static let scales: [(x: Float, w: Float)] = [(1, 1), (1e30, 1e-30), (1e-30, 1e30), (1e-19, 1e-19)]

    @Test("AVX512_BF16 kernel equals the scalar emulation bit for bit, within the bound of the exact product",
          arguments: 0..<4)
    func kernelMatchesReference(scaleIndex: Int) {
        // The fallback test switches the kernel off process-wide; bit-exact checks hold the lock.
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let scale = Self.scales[scaleIndex]
        for (index, s) in Self.shapes.enumerated() {
            let (x, w) = Self.operands(rows: s.rows, n: s.n, k: s.k, xScale: scale.x, wScale: scale.w, seed: UInt64(index + 1))
            var fast = [Float](repeating: .nan, count: s.rows * s.n), ref = fast
            LowBit.bf16Product(x: x, rows: s.rows, w: w, n: s.n, k: s.k, y: &fast)
            LowBit.bf16ProductReference(x: x, rows: s.rows, w: w, n: s.n, k: s.k, y: &ref)
            if LowBit.usesBF16Kernel {
                #expect(fast.map(\.bitPattern) == ref.map(\.bitPattern), "shape \(s) scale \(scale)")
            }
            // The zero rows give exact zeros, and nothing is NaN.
            #expect(!ref.contains { $0.isNaN })
            if s.rows > 2 { #expect(ref[(2 * s.n)..<(3 * s.n)].allSatisfy { $0 == 0 }) }
            // The bound holds where the products are normal floats (FTZ drops the rest).
            guard scaleIndex < 3 else { continue }
            let (want, mag) = Self.exact(x, w, rows: s.rows, n: s.n, k: s.k)
            let bound = Double(LowBit.bf16ProductBound(depth: s.k))
            for i in ref.indices {
                #expect(abs(Double(ref[i]) - want[i]) <= bound * mag[i], "shape \(s) scale \(scale) output \(i)")
            }
        }
    }

    /// Products below fp32's normal range are flushed (VDPBF16PS's FTZ), and subnormal inputs
    /// convert to zero: products of 3e-21-scaled operands are ≤ 2e-41, so every output is ±0.
    @Test("flush to zero of subnormal products and inputs")
    func flushToZero() {
        // The fallback test switches the kernel off process-wide; bit-exact checks hold the lock.
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (x, w) = Self.operands(rows: 9, n: 33, k: 65, xScale: 3e-21, wScale: 3e-21, seed: 7)
        var ref = [Float](repeating: .nan, count: 9 * 33), fast = ref
        LowBit.bf16ProductReference(x: x, rows: 9, w: w, n: 33, k: 65, y: &ref)
        LowBit.bf16Product(x: x, rows: 9, w: w, n: 33, k: 65, y: &fast)
        #expect(ref.allSatisfy { $0 == 0 })
        if LowBit.usesBF16Kernel { #expect(fast.allSatisfy { $0 == 0 }) }
        #expect(Self.rounded(1e-40) == 0 && Self.rounded(-1e-40).sign == .minus)
    }

    @Test("conversion and packing: fast equals reference, rounding to nearest even")
    func conversionAndPacking() {
        let specials: [UInt32] = [0x3F80_8000, 0x3F81_8000, 0x3F80_8001, 0x3F80_7FFF, 0x0000_0001, 0x8000_0001,
                                  0x0080_0000, 0x8000_0000, 0x7F7F_FFFF, 0xFF80_0000, 0x7F80_0000, 0x3F7F_FFFF]
        #expect(specials.map { Self.rounded(Float(bitPattern: $0)).bitPattern } ==
                [0x3F80_0000, 0x3F82_0000, 0x3F81_0000, 0x3F80_0000, 0, 0x8000_0000,
                 0x0080_0000, 0x8000_0000, 0x7F80_0000, 0xFF80_0000, 0x7F80_0000, 0x3F80_0000])
        var rng = SplitMix(seed: 11)
        for (n, k) in [(1, 1), (5, 7), (32, 32), (33, 63), (70, 100), (31, 2)] {
            var w = rng.floats(n * k, in: -3...3)
            for (i, bits) in specials.enumerated() where i < w.count { w[(i * 7) % w.count] = Float(bitPattern: bits) }
            let count = ck_bf16_packed_count(n, k)
            var fast = [UInt16](repeating: 0xFFFF, count: count), ref = [UInt16](repeating: 0xEEEE, count: count)
            ck_bf16_pack(w, n, k, k, &fast)
            ck_bf16_pack_ref(w, n, k, k, &ref)
            #expect(fast == ref, "pack \(n)×\(k)")
            let ld = (k + 1) & ~1
            var xf = [UInt16](repeating: 0xFFFF, count: n * ld), xr = [UInt16](repeating: 0xEEEE, count: n * ld)
            ck_bf16_from_f32(w, n, k, k, &xf, ld)
            ck_bf16_from_f32_ref(w, n, k, k, &xr, ld)
            #expect(xf == xr, "convert \(n)×\(k)")
        }
    }

    /// With the kernel off (as on a CPU without AVX512_BF16) the operands are rounded the same
    /// way and sgemm sums them: only the summation order differs from the kernel.
    @Test("fallback without AVX512_BF16 is within summation-order error of the kernel's numbers")
    func fallback() {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        LowBit.setBF16KernelEnabled(false)
        defer { LowBit.setBF16KernelEnabled(true) }
        #expect(!LowBit.usesBF16Kernel)
        for (index, s) in Self.shapes.enumerated() {
            let (x, w) = Self.operands(rows: s.rows, n: s.n, k: s.k, xScale: 1, wScale: 1, seed: UInt64(index + 40))
            var got = [Float](repeating: .nan, count: s.rows * s.n), ref = got
            LowBit.bf16Product(x: x, rows: s.rows, w: w, n: s.n, k: s.k, y: &got)
            LowBit.bf16ProductReference(x: x, rows: s.rows, w: w, n: s.n, k: s.k, y: &ref)
            let (_, mag) = Self.exact(x.map(Self.rounded), w.map(Self.rounded), rows: s.rows, n: s.n, k: s.k)
            for i in got.indices {
                // Two fp32 sums of the same exact products: each within k·2⁻²⁴·Σ|terms|.
                #expect(abs(Double(got[i]) - Double(ref[i])) <= 2 * Double(s.k + 2) * 0x1p-24 * mag[i],
                        "shape \(s) output \(i)")
            }
        }
    }

    /// `tiledProduct` (through `dequantizedProduct`) with bf16 on equals the scalar emulation of
    /// the same dequantized W bit for bit (each output is one accumulator over all of k, so tiles
    /// and pool slices do not change it), and stays within the bf16 bound of the float32 path.
    @Test("tiledProduct: bf16 on vs off", arguments: [LowBit.CodeFormat.u4, .u8], [(5, 24), (12, 1000), (96, 24), (96, 1000)])
    func tiledOnOff(format: LowBit.CodeFormat, shape: (rows: Int, tileRows: Int)) {
        // The fallback test switches the kernel off process-wide; bit-exact checks hold the lock.
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (n, k, rows) = (300, 256, shape.rows)
        let q = makeLayer(out: n, in: k, bits: format == .u4 ? 4 : 8, groupSize: 32, symmetric: false, seed: 3)
        let integer = q.weight.integer!
        let codes = format == .u4 ? LowBit.packNibbles(integer.codes, rows: n, columns: k) : integer.codes
        var rng = SplitMix(seed: 17)
        let x = activations(rows: rows, columns: k, rng: &rng)
        var on = [Float](repeating: .nan, count: rows * n), off = on, ref = on
        for (flag, out) in [(true, 0), (false, 1)] {
            var y = [Float](repeating: .nan, count: rows * n)
            LowBit.dequantizedProduct(format, codes: codes, outFeatures: n, inFeatures: k, groupSize: 32,
                                      scales: integer.scales, zeros: integer.zeros!, x: x, rows: rows, y: &y,
                                      tileRows: shape.tileRows, bf16: flag)
            if out == 0 { on = y } else { off = y }
        }
        var w = [Float](repeating: 0, count: n * k)
        LowBit.dequantizeRowsReference(format, codes: codes, rowRange: 0..<n, columns: k, groupSize: 32,
                                       scales: integer.scales, zeros: integer.zeros!, into: &w)
        LowBit.bf16ProductReference(x: x, rows: rows, w: w, n: n, k: k, y: &ref)
        if LowBit.usesBF16Kernel { #expect(on.map(\.bitPattern) == ref.map(\.bitPattern)) }
        let (want, mag) = Self.exact(x, w, rows: rows, n: n, k: k)
        let bound = Double(LowBit.bf16ProductBound(depth: k))
        var worstOn = 0.0, worstOff = 0.0
        for i in on.indices {
            worstOn = max(worstOn, abs(Double(on[i]) - want[i]) / mag[i])
            worstOff = max(worstOff, abs(Double(off[i]) - want[i]) / mag[i])
        }
        #expect(worstOn <= bound)
        #expect(worstOff < 1e-5)
        // The bf16 error is real (not an accidental float32 path): far above float32's.
        #expect(worstOn > 10 * worstOff)
    }
}
