import CKernels
import Foundation
import Kernels
import PTQCore
import QuantizedRuntime
import Testing

/// The u4 decode GEMV on int8 activations (`ck_gemv_u4_i8`, `LowBit.gemv` with `u4Int8Decode`):
/// llama.cpp's Q4_0 × Q8_0 scheme on the W4A16 nibbles.
@Suite("u4 × int8 decode GEMV")
struct U4Int8GemvTests {
    typealias Case = BF16GemvTests.Case

    /// The bf16 suite's u4 shapes the VNNI kernel takes (g128 on 576/1536 columns with a ragged
    /// 64-column group, one group per row on odd widths, row counts off the blocks of four, groups
    /// of 256 / 512), plus one row of 1536 and one-group rows of 383 and 200 columns.
    static let cases: [Case] = BF16GemvTests.cases.filter {
        $0.format == .u4 && ($0.group % 128 == 0 || $0.group >= $0.columns)
    } + [Case(format: .u4, rows: 3, columns: 383, group: 383), Case(format: .u4, rows: 1, columns: 1536, group: 128),
         Case(format: .u4, rows: 2, columns: 200, group: 200)]

    /// x with a zero block, a block of one value, ±ties of the code rounding, a huge and a tiny
    /// (subnormal-scale) block where the width allows.
    static func input(columns: Int, seed: UInt64) -> [Float] {
        var x = BF16GemvTests.input(columns: columns, seed: seed)
        if columns >= 64 { for j in 32..<64 { x[j] = 0 } }
        if columns >= 96 { for j in 64..<96 { x[j] = j % 2 == 0 ? 0.75 : -0.75 } }
        if columns >= 128 { x[96] = 127; x[97] = 0.5; x[98] = -1.5; x[99] = 2.5 } // ties at scale 1
        if columns >= 192 { for j in 160..<192 { x[j] = Float(j - 170) * 1e30 } }
        if columns >= 224 { for j in 192..<224 { x[j] = Float(j - 200) * 1e-39 } } // below 2⁻¹⁰⁰: zero codes
        return x
    }

    /// The quantization the header specifies, in Swift: codes and the per-column scale d.
    static func quantized(_ x: [Float]) -> (a: [Int], d: [Float]) {
        var a = [Int](repeating: 0, count: x.count), d = [Float](repeating: 0, count: x.count)
        let qb = Int(CK_U4_I8_QBLOCK)
        for b in stride(from: 0, to: x.count, by: qb) {
            let end = min(x.count, b + qb)
            let amax = x[b..<end].reduce(Float(0)) { max($0, abs($1)) }
            guard amax >= 0x1p-100 else { continue }
            let id = 127 / amax
            for j in b..<end {
                a[j] = Int(max(-127, min(127, (x[j] * id).rounded(.toNearestOrEven))))
                d[j] = amax / 127
            }
        }
        return (a, d)
    }

    @Test("prepared activations: fast equals the scalar twin; codes and scales as specified")
    func prepare() {
        for c in Self.cases {
            let x = Self.input(columns: c.columns, seed: UInt64(c.columns))
            let bytes = ck_u4_i8_prepared_bytes(c.columns, c.group)
            var fast = [UInt8](repeating: 0xAB, count: bytes), ref = [UInt8](repeating: 0xCD, count: bytes)
            fast.withUnsafeMutableBytes { ck_u4_i8_prepare(x, c.columns, c.group, $0.baseAddress!) }
            ref.withUnsafeMutableBytes { ck_u4_i8_prepare_ref(x, c.columns, c.group, $0.baseAddress!) }
            let (a, d) = Self.quantized(x)
            let n = (c.columns + 127) / 128 * 128, groups = (c.columns + c.group - 1) / c.group
            let used = n + n / 128 * 64 + 4 * groups // codes, lane scales, X̂ (then padding)
            if LowBit.u4Int8Supported(columns: c.columns, groupSize: c.group) {
                #expect(fast[..<used] == ref[..<used], "\(c)")
            }
            for j in 0..<n {
                // Per 128 columns the 64 even then the 64 odd columns' codes; zero past the row.
                let col = (j & ~127) + 2 * (j & 63) + ((j >> 6) & 1)
                #expect(Int(Int8(bitPattern: ref[j])) == (col < c.columns ? a[col] : 0), "\(c) byte \(j)")
            }
            ref.withUnsafeBytes { p in
                let scales = p.baseAddress!.advanced(by: n).assumingMemoryBound(to: Float.self)
                for lane in 0..<(n / 8) where lane * 8 < c.columns {
                    #expect(scales[lane] == d[lane * 8], "\(c) lane \(lane)")
                }
            }
        }
    }

    @Test("VNNI kernel equals the scalar twin bit for bit, within fp32 rounding of the exact sum on x̂",
          arguments: [Float(1), 1e30, 1e-30])
    func kernelMatchesReference(scale: Float) {
        for (index, c) in Self.cases.enumerated() {
            let (codes, packed, s, z) = BF16GemvTests.layer(c, scale: scale, seed: UInt64(index + 1))
            var x = Self.input(columns: c.columns, seed: UInt64(index + 100))
            if scale != 1 { x = x.map { $0 == 0 ? 0 : max(-1e6, min(1e6, $0)) } } // no ∞ with huge scales
            var fast = [Float](repeating: .nan, count: c.rows), ref = fast
            LowBit.gemvU4Int8(codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s, zeros: z,
                              x: x, y: &fast)
            LowBit.gemvU4Int8(codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s, zeros: z,
                              x: x, y: &ref, reference: true)
            if LowBit.u4Int8Supported(columns: c.columns, groupSize: c.group) {
                #expect(fast.map(\.bitPattern) == ref.map(\.bitPattern), "\(c) scale \(scale)")
            }
            if c.rows > 2 { #expect(ref[2] == 0, "zero-scale row \(c)") }
            let (a, d) = Self.quantized(x)
            let xh = (0..<c.columns).map { Double(d[$0]) * Double(a[$0]) }
            let groups = (c.columns + c.group - 1) / c.group
            let steps = Double(c.columns / 8 + 2 * groups + 12) * 0x1p-24 * 1.001
            for o in 0..<c.rows {
                var exact = 0.0, m = 0.0
                for g in 0..<groups {
                    let sg = Double(s[o * groups + g]), zg = Double(z[o * groups + g])
                    var dot = 0.0, big = 0.0
                    for j in (g * c.group)..<min(c.columns, (g + 1) * c.group) {
                        let q = Double(codes[o * c.columns + j])
                        dot += (q - zg) * xh[j]
                        big += (q + abs(zg)) * abs(xh[j])
                    }
                    exact += sg * dot
                    m += abs(sg) * big
                }
                #expect(abs(Double(ref[o]) - exact) <= steps * m, "\(c) scale \(scale) row \(o)")
            }
        }
    }

    /// Against the exact Σ_g s·Σ (q − z)·x on the unrounded x: the int8 rounding of x (≤ max|x|/254
    /// of its block per activation) plus the kernel's fp32 summation error.
    @Test("int8-activation GEMV against the exact sum on x: within the rounding of x")
    func againstExact() {
        let qb = Int(CK_U4_I8_QBLOCK)
        for (index, c) in Self.cases.enumerated() {
            let (codes, packed, s, z) = BF16GemvTests.layer(c, scale: 1, seed: UInt64(index + 50))
            let x = Self.input(columns: c.columns, seed: UInt64(index + 150))
            var got = [Float](repeating: .nan, count: c.rows)
            LowBit.gemvU4Int8(codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s, zeros: z,
                              x: x, y: &got)
            let blockMax = stride(from: 0, to: c.columns, by: qb).map { b in
                x[b..<min(c.columns, b + qb)].reduce(0.0) { max($0, abs(Double($1))) }
            }
            let groups = (c.columns + c.group - 1) / c.group
            for o in 0..<c.rows {
                var exact = 0.0, rounding = 0.0, plain = 0.0
                for j in 0..<c.columns {
                    let sg = Double(s[o * groups + j / c.group]), zg = Double(z[o * groups + j / c.group])
                    let w = sg * (Double(codes[o * c.columns + j]) - zg), err = blockMax[j / qb] / 254
                    exact += w * Double(x[j])
                    rounding += abs(w) * err
                    plain += abs(sg) * (Double(codes[o * c.columns + j]) + abs(zg)) * (abs(Double(x[j])) + err)
                }
                let allowed = rounding * 1.001 + Double(c.columns / 8 + 2 * groups + 12) * 0x1p-24 * plain
                #expect(abs(Double(got[o]) - exact) <= allowed, "\(c) row \(o)")
            }
        }
    }

    @Test("all-zero x gives zero outputs; all-zero rows give −Σ s·z·X̂")
    func zeros() {
        let c = Case(format: .u4, rows: 6, columns: 576, group: 128)
        let (_, packed, s, z) = BF16GemvTests.layer(c, scale: 1, seed: 7)
        var y = [Float](repeating: .nan, count: c.rows)
        LowBit.gemvU4Int8(codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s, zeros: z,
                          x: [Float](repeating: 0, count: c.columns), y: &y)
        #expect(y.allSatisfy { $0 == 0 })
        // Row 0 of the layer has all codes 0: y = −Σ_g s·z·X̂_g.
        let x = Self.input(columns: c.columns, seed: 3)
        LowBit.gemvU4Int8(codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s, zeros: z,
                          x: x, y: &y)
        let (a, d) = Self.quantized(x)
        var want = 0.0
        for g in 0..<5 {
            let xs = (g * 128..<min(576, g * 128 + 128)).reduce(0.0) { $0 + Double(d[$1]) * Double(a[$1]) }
            want -= Double(s[g]) * Double(z[g]) * xs
        }
        #expect(abs(Double(y[0]) - want) <= 1e-5 * abs(want) + 1e-7)
    }

    /// `LowBit.gemv` (parallel over rows) runs the int8 kernel with `u4Int8Decode` on (and the
    /// bf16 one with it off) where it takes the shape: the twins' bits.
    @Test("LowBit.gemv(bf16: true) follows u4Int8Decode")
    func dispatch() {
        for (index, c) in Self.cases.enumerated() {
            let (_, packed, s, z) = BF16GemvTests.layer(c, scale: 1, seed: UInt64(index + 70))
            let x = Self.input(columns: c.columns, seed: UInt64(index + 170))
            for on in [true, false] {
                var got = [Float](repeating: .nan, count: c.rows), want = got
                LowBit.$u4Int8DecodeOverride.withValue(on) {
                    LowBit.$bf16DecodeOverride.withValue(true) {
                        LowBit.gemv(.u4, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s,
                                    zeros: z, x: x, y: &got, bf16: true)
                    }
                }
                guard LowBit.usesBF16Kernel, LowBit.u4Int8Supported(columns: c.columns, groupSize: c.group) else { continue }
                if on {
                    LowBit.gemvU4Int8(codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s,
                                      zeros: z, x: x, y: &want, reference: true)
                } else {
                    LowBit.gemvBF16(.u4, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group,
                                    scales: s, zeros: z, x: x, y: &want, reference: true)
                }
                #expect(got.map(\.bitPattern) == want.map(\.bitPattern), "\(c) int8 \(on)")
            }
        }
    }
}

extension U4Int8GemvTests {
    /// A W4A16 g128 layer decodes through the int8 kernel with the switch on: its output is the
    /// dequantized weights times x̂ (the int8-rounded x), within fp32 rounding.
    @Test("IntegerLinear W4A16 g128 decodes on int8 activations with u4Int8Decode")
    func integerLinear() throws {
        let q = makeLayer(out: 70, in: 576, bits: 4, groupSize: 128, symmetric: false, seed: 4)
        let layer = try IntegerLinear(q)
        let on = LowBit.bf16Decode && LowBit.usesBF16Kernel && LowBit.u4Int8Supported(columns: 576, groupSize: 128)
        guard case .integer(let w) = q.weight else { Issue.record("not integer"); return }
        var rng = SplitMix(seed: 9)
        let x = activations(rows: 1, columns: 576, rng: &rng)
        var y = [Float](repeating: .nan, count: 70)
        try LowBit.$u4Int8DecodeOverride.withValue(true) {
            #expect(layer.kernelDescription.contains("int8-x") == on, "\(layer.kernelDescription)")
            layer.forward(x, rows: 1, into: &y)
            try #require(!y.contains { $0.isNaN })
        }
        guard on else { return }
        let (a, d) = Self.quantized(x)
        let groups = w.groupsPerRow, zeros = w.zeros!
        for o in 0..<70 {
            var want = 0.0, mag = 0.0
            for j in 0..<576 {
                let g = j / w.groupSize, xh = Double(d[j]) * Double(a[j])
                let sg = Double(w.scales[o * groups + g]), zg = Double(zeros[o * groups + g])
                want += sg * (Double(w.codes[o * 576 + j]) - zg) * xh
                mag += abs(sg) * (Double(w.codes[o * 576 + j]) + abs(zg)) * abs(xh)
            }
            if let b = q.bias { want += Double(b[o]) }
            #expect(abs(Double(y[o]) - want) <= 1e-5 * mag + 1e-6, "row \(o)")
        }
    }
}
