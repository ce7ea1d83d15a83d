import CKernels
import Foundation
import Kernels
import PTQCore
import QuantizedRuntime
import Testing

/// The bf16 decode GEMVs of weight-only u4/u8 layers (`ck_gemv_u4_bf16`, `ck_gemv_u8_bf16`,
/// `LowBit.gemv` with `bf16Decode`).
@Suite("bf16 decode GEMV")
struct BF16GemvTests {
    struct Case {
        let format: LowBit.CodeFormat
        let rows: Int, columns: Int, group: Int
        var bits: Int { format == .u4 ? 4 : 8 }
    }

    /// Shapes the fast kernel takes (g128 on 576/1536 columns with a ragged 64-column group,
    /// one group per row, odd column counts, ragged last groups; row counts that leave 1, 2 or 3
    /// rows past the kernel's blocks of four) and ones it leaves to the scalar twin (u4 g32, g64).
    static let cases: [Case] = [
        Case(format: .u4, rows: 1, columns: 1, group: 1), Case(format: .u4, rows: 3, columns: 64, group: 64),
        Case(format: .u4, rows: 37, columns: 576, group: 128), Case(format: .u4, rows: 17, columns: 576, group: 576),
        Case(format: .u4, rows: 5, columns: 1536, group: 128), Case(format: .u4, rows: 9, columns: 65, group: 65),
        Case(format: .u4, rows: 7, columns: 191, group: 64), Case(format: .u4, rows: 6, columns: 257, group: 256),
        Case(format: .u4, rows: 4, columns: 96, group: 32), Case(format: .u4, rows: 8, columns: 128, group: 128),
        Case(format: .u4, rows: 14, columns: 1536, group: 512), Case(format: .u4, rows: 11, columns: 383, group: 128),
        Case(format: .u8, rows: 1, columns: 1, group: 1), Case(format: .u8, rows: 41, columns: 576, group: 576),
        Case(format: .u8, rows: 4, columns: 33, group: 33), Case(format: .u8, rows: 6, columns: 100, group: 32),
        Case(format: .u8, rows: 5, columns: 1536, group: 64), Case(format: .u8, rows: 3, columns: 300, group: 128),
        Case(format: .u8, rows: 2, columns: 47, group: 47), Case(format: .u8, rows: 4, columns: 64, group: 64),
        Case(format: .u8, rows: 10, columns: 191, group: 192), Case(format: .u8, rows: 13, columns: 600, group: 600),
    ]

    /// Codes, scales and zeros with edge rows: row 0 all q = 0, row 1 all q = max, row 2 zero
    /// scales (a zero output), the rest random; scales multiplied by `scale`.
    static func layer(_ c: Case, scale: Float, seed: UInt64) -> (codes: [UInt8], packed: [UInt8], s: [Float], z: [Float]) {
        var rng = SplitMix(seed: seed)
        let top = (1 << c.bits) - 1, groups = (c.columns + c.group - 1) / c.group
        var codes = rng.bytes(c.rows * c.columns, below: top + 1)
        for j in 0..<c.columns {
            codes[j] = 0
            if c.rows > 1 { codes[c.columns + j] = UInt8(top) }
        }
        var s = rng.floats(c.rows * groups, in: 0.002...0.03).map { $0 * scale }
        let z = rng.floats(c.rows * groups, in: 0...Float(top)).map { $0.rounded() }
        if c.rows > 2 { for g in 0..<groups { s[2 * groups + g] = 0 } }
        let packed = c.format == .u4 ? LowBit.packNibbles(codes, rows: c.rows, columns: c.columns) : codes
        return (codes, packed, s, z)
    }

    static func input(columns: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix(seed: seed)
        var x = activations(rows: 1, columns: columns, rng: &rng)
        // Ties and a subnormal: the conversion's round-to-even and flush.
        if columns > 3 { x[1] = Float(bitPattern: 0x3F80_8000); x[2] = Float(bitPattern: 0x0001_16C2); x[3] = -Float(bitPattern: 0x3F81_8000) }
        return x
    }

    static func rounded(_ x: [Float]) -> [Float] {
        var r = x
        ck_bf16_round_f32(&r, r.count)
        return r
    }

    @Test("prepared activations: fast equals the scalar twin bit for bit")
    func prepare() {
        for c in Self.cases {
            let x = Self.input(columns: c.columns, seed: UInt64(c.columns))
            let n = ck_bf16_gemv_x_count(c.columns), groups = (c.columns + c.group - 1) / c.group
            let u4: Int32 = c.format == .u4 ? 1 : 0
            var fb = [UInt16](repeating: 0xFFFF, count: n), rb = [UInt16](repeating: 0xEEEE, count: n)
            var fs = [Float](repeating: .nan, count: groups), rs = fs
            ck_bf16_gemv_prepare(u4, x, c.columns, c.group, &fb, &fs)
            ck_bf16_gemv_prepare_ref(u4, x, c.columns, c.group, &rb, &rs)
            #expect(fb == rb, "\(c)")
            #expect(fs.map(\.bitPattern) == rs.map(\.bitPattern), "\(c)")
            // Every column's bf16 value appears once, in the layout's place; the rest is zero.
            let xr = Self.rounded(x)
            for j in 0..<n {
                // u4: per 128 columns four runs of 32 (columns 4k + run); u8: per 64 the even then odd.
                let col = c.format == .u4 ? (j & ~127) + 4 * (j & 31) + ((j >> 5) & 3)
                                          : (j & ~63) + 2 * (j & 31) + ((j >> 5) & 1)
                let want: Float = col < c.columns ? xr[col] : 0
                #expect(Float(bitPattern: UInt32(rb[j]) << 16) == want)
            }
        }
    }

    @Test("AVX512_BF16 kernel equals the scalar twin bit for bit, within the bound of the exact sum",
          arguments: [Float(1), 1e30, 1e-30])
    func kernelMatchesReference(scale: Float) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        for (index, c) in Self.cases.enumerated() {
            let (codes, packed, s, z) = Self.layer(c, scale: scale, seed: UInt64(index + 1))
            let x = Self.input(columns: c.columns, seed: UInt64(index + 100))
            var fast = [Float](repeating: .nan, count: c.rows), ref = fast
            LowBit.gemvBF16(c.format, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s,
                            zeros: z, x: x, y: &fast)
            LowBit.gemvBF16(c.format, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s,
                            zeros: z, x: x, y: &ref, reference: true)
            if LowBit.usesBF16Kernel {
                #expect(fast.map(\.bitPattern) == ref.map(\.bitPattern), "\(c) scale \(scale)")
            }
            if c.rows > 2 { #expect(ref[2] == 0, "zero-scale row \(c)") }
            // Against Σ_g s·Σ (q − z)·x̃ in double: within N·2⁻²⁴·M (ck_bf16_gemv.h).
            let xr = Self.rounded(x).map(Double.init)
            let offset = c.format == .u4 ? 128.0 : 2176.0
            let groups = (c.columns + c.group - 1) / c.group
            let bound = Double(LowBit.bf16GemvBound(columns: c.columns, groupSize: c.group))
            for o in 0..<c.rows {
                var exact = 0.0, m = 0.0
                for g in 0..<groups {
                    let sg = Double(s[o * groups + g]), zg = Double(z[o * groups + g])
                    var dot = 0.0, big = 0.0, xabs = 0.0
                    for j in (g * c.group)..<min(c.columns, (g + 1) * c.group) {
                        let q = Double(codes[o * c.columns + j])
                        dot += (q - zg) * xr[j]
                        big += (offset + q) * abs(xr[j])
                        xabs += abs(xr[j])
                    }
                    exact += sg * dot
                    m += abs(sg) * (big + abs(offset + zg) * xabs)
                }
                #expect(abs(Double(ref[o]) - exact) <= bound * m, "\(c) scale \(scale) row \(o)")
            }
        }
    }

    /// The change from the float32 kernels is the rounding of x to bf16 (≤ 2⁻⁹ relative per
    /// activation) plus the two kernels' fp32 summation errors.
    @Test("bf16 GEMV against the float32 GEMV: within the rounding of x plus both summation bounds")
    func againstFloat32() {
        for (index, c) in Self.cases.enumerated() {
            let (codes, packed, s, z) = Self.layer(c, scale: 1, seed: UInt64(index + 50))
            let x = Self.input(columns: c.columns, seed: UInt64(index + 150))
            var got = [Float](repeating: .nan, count: c.rows), f32 = got
            LowBit.gemvBF16(c.format, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s,
                            zeros: z, x: x, y: &got)
            LowBit.gemvReference(c.format, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group,
                                 scales: s, zeros: z, x: x, y: &f32)
            let offset = c.format == .u4 ? 128.0 : 2176.0
            let groups = (c.columns + c.group - 1) / c.group
            let bound = Double(LowBit.bf16GemvBound(columns: c.columns, groupSize: c.group))
            for o in 0..<c.rows {
                var centred = 0.0, m = 0.0, plain = 0.0
                for g in 0..<groups {
                    let sg = abs(Double(s[o * groups + g])), zg = Double(z[o * groups + g])
                    for j in (g * c.group)..<min(c.columns, (g + 1) * c.group) {
                        let q = Double(codes[o * c.columns + j]), xa = abs(Double(x[j]))
                        centred += sg * abs(q - zg) * xa
                        m += sg * ((offset + q) + abs(offset + zg)) * xa * 1.01
                        plain += sg * (q + abs(zg)) * xa
                    }
                }
                let allowed = 0x1p-8 * 1.001 * centred + bound * m + Double(c.columns + groups + 4) * 0x1p-24 * plain
                #expect(abs(Double(got[o]) - Double(f32[o])) <= allowed, "\(c) row \(o)")
            }
        }
    }

    /// `LowBit.gemv` (parallel over rows) runs the bf16 kernel where it takes the shape: the
    /// same bits as the scalar twin on one thread.
    @Test("LowBit.gemv(bf16: true) runs the bf16 kernel where it takes the shape")
    func dispatch() {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        for (index, c) in Self.cases.enumerated() {
            let (_, packed, s, z) = Self.layer(c, scale: 1, seed: UInt64(index + 70))
            let x = Self.input(columns: c.columns, seed: UInt64(index + 170))
            var got = [Float](repeating: .nan, count: c.rows), want = got
            LowBit.gemv(c.format, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group, scales: s,
                        zeros: z, x: x, y: &got, bf16: true)
            if LowBit.usesBF16Gemv(c.format, columns: c.columns, groupSize: c.group) {
                LowBit.gemvBF16(c.format, codes: packed, rows: c.rows, columns: c.columns, groupSize: c.group,
                                scales: s, zeros: z, x: x, y: &want, reference: true)
                #expect(got.map(\.bitPattern) == want.map(\.bitPattern), "\(c)")
            } else {
                #expect(!(LowBit.usesBF16Kernel && LowBit.bf16Decode) || (c.group % (c.format == .u4 ? 128 : 64) != 0
                                                                           && c.group < c.columns), "\(c)")
            }
        }
    }

    /// Weight-only u4 layers keep nibbles (no bit planes) where the bf16 kernel takes them, and
    /// decode through it; several rows (prefill) still match the dequantized float product.
    @Test("IntegerLinear W4A16 g128 and W8A16 per-channel decode through the bf16 GEMV")
    func integerLinear() throws {
        for (bits, group) in [(4, 128), (8, 576)] {
            let q = makeLayer(out: 70, in: 576, bits: bits, groupSize: group, symmetric: false, seed: UInt64(bits))
            let layer = try IntegerLinear(q)
            let expectBF16 = LowBit.bf16Decode && LowBit.usesBF16Kernel
            #expect(layer.kernelDescription.contains("bf16") == expectBF16, "\(layer.kernelDescription)")
            guard case .integer(let w) = q.weight else { Issue.record("not integer"); return }
            var rng = SplitMix(seed: 9)
            let x = activations(rows: 1, columns: 576, rng: &rng)
            var y = [Float](repeating: .nan, count: 70)
            layer.forward(x, rows: 1, into: &y)
            let xr = expectBF16 ? Self.rounded(x) : x
            let groups = w.groupsPerRow, zeros = w.zeros!
            for o in 0..<70 {
                var want = 0.0, mag = 0.0
                for j in 0..<576 {
                    let g = j / w.groupSize
                    let v = Double(w.scales[o * groups + g]) * (Double(w.codes[o * 576 + j]) - Double(zeros[o * groups + g]))
                    want += v * Double(xr[j])
                    mag += abs(v * Double(xr[j])) + Double(w.scales[o * groups + g]) * 2200 * abs(Double(xr[j]))
                }
                if let b = q.bias { want += Double(b[o]) }
                #expect(abs(Double(y[o]) - want) <= 1e-4 * mag + 1e-6, "bits \(bits) row \(o)")
            }
        }
    }
}
