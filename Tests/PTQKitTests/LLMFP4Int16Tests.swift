import Foundation
import Testing
@testable import Kernels
@testable import Models
@testable import PTQKit
@testable import Quantizers

/// FP4 weights × int16 activations (the W4A8 integer path): kernels against their scalar twin
/// bit for bit, the twin against exact integer arithmetic, and the runtime layer against the
/// simulated quantized layer.
extension LLMFP4Tests {
    static let e2m5 = FloatingPointFormat(exponentBits: 2, mantissaBits: 5)
    static let e3m4 = FloatingPointFormat(exponentBits: 3, mantissaBits: 4)

    /// The 16 weight integers of an FP4 format (code value / smallest step), as the runtime builds them.
    static func integerTable(_ format: FloatingPointFormat) -> [Int8] {
        format.codeValues.map { Int8($0 / format.unit) }
    }

    /// Random FP4 codes with the edge rows every kernel test needs (row 2 all zero codes, row 3
    /// the largest magnitudes ±max alternating, i.e. saturated), and their nibble-packed form.
    static func edgeCaseCodes(rows: Int, columns cols: Int,
                              using rng: inout SeededGenerator) -> (codes: [UInt8], packed: [UInt8]) {
        var codes = (0..<rows * cols).map { _ in UInt8.random(in: 0...15, using: &rng) }
        for o in [2, 3] where o < rows {
            for j in 0..<cols { codes[o * cols + j] = o == 2 ? 0 : (j % 2 == 0 ? 7 : 15) }
        }
        return (codes, LowBit.packNibbles(codes, rows: rows, columns: cols))
    }

    /// GEMM (AVX-512 VNNI panels, AVX2 panels) and GEMV (VNNI, AVX2) equal the scalar twin exactly,
    /// and the twin equals Σ_g scale·(exact Int64 group sum) within float rounding, on odd widths,
    /// widths that are not a multiple of 32, groups of 32/64/128/one per row, partial panels and
    /// partial activation-row tiles, all-zero rows, saturated codes against ±32767 activations.
    @Test(arguments: [(37, 64, 32, 5), (64, 576, 32, 19), (33, 63, 63, 3), (17, 100, 64, 9), (40, 96, 96, 7),
                      (1, 32, 32, 1), (48, 1536, 128, 13), (31, 70, 70, 2), (35, 130, 128, 33), (8, 1536, 1536, 4)])
    func int16KernelsMatchReference(shape: (Int, Int, Int, Int)) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (rows, cols, gs, m) = shape
        for format in [Self.e2m1, Self.e1m2, Self.e3m0] {
            let table = Self.integerTable(format)
            let maxWeight = table.map { abs(Int($0)) }.max()!
            var rng = SeededGenerator(seed: UInt64(rows * 1000 + cols))
            let (codes, packed) = Self.edgeCaseCodes(rows: rows, columns: cols, using: &rng)
            let groups = (cols + gs - 1) / gs
            var scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
            scales[0] = 0
            // The largest |a| the group bound allows (up to int16's limit).
            let limit = min(Int(Int16.max), (Int(Int32.max) - 1) / (maxWeight * gs))
            let lda = (cols + 1) & ~1
            var a = [Int16](repeating: 0, count: m * lda)
            for i in 0..<m {
                for j in 0..<cols {
                    a[i * lda + j] = i == 0 ? Int16(j % 2 == 0 ? limit : -limit) : Int16(Int.random(in: -limit...limit, using: &rng))
                }
            }
            var ref = [Float](repeating: .nan, count: m * rows)
            MiniFloat.fp4Int16Product(codes: packed, rows: rows, columns: cols, groupSize: gs, table: table, scales: scales,
                                      activations: a, lda: lda, m: m, y: &ref, ldy: rows, kernel: .reference)
            for vnni in [true, false] {
                TokenKernels.setVNNIEnabled(vnni)
                for kernel in [MiniFloat.Int16Kernel.gemm, .gemv] {
                    var y = [Float](repeating: .nan, count: m * rows)
                    MiniFloat.fp4Int16Product(codes: packed, rows: rows, columns: cols, groupSize: gs, table: table,
                                              scales: scales, activations: a, lda: lda, m: m, y: &y, ldy: rows, kernel: kernel)
                    #expect(y == ref, "\(format) \(shape) \(kernel) vnni \(vnni)")
                }
            }
            TokenKernels.setVNNIEnabled(true)
            Self.expectExactSums(ref, codes: codes, table: table, values: { Int64(a[$0]) }, scales: scales, m: m, rows: rows,
                                 cols: cols, groupSize: gs, lda: lda, label: "\(format) \(shape)",
                                 isZeroRow: { $0 == 2 || ($0 == 0 && groups == 1) })
        }
    }

    /// The FP8 byte-table GEMM (AVX-512 VNNI and AVX2 panels) equals its scalar twin bit for bit, and
    /// the twin equals the exact integer sums within float rounding, with sums over whole groups
    /// and over parts of them, odd widths, partial panels and tiles.
    @Test(arguments: [(37, 64, 32, 32, 5), (64, 576, 576, 64, 20), (33, 63, 63, 63, 3), (17, 100, 64, 32, 9),
                      (40, 96, 96, 32, 7), (48, 1536, 1536, 128, 13)])
    func fp8Int16GemmMatchesReference(shape: (Int, Int, Int, Int, Int)) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (rows, cols, gs, sumLength, m) = shape
        let format = Self.e3m4
        let table = format.codeValues.map { Int16($0 / format.unit) } + [Int16](repeating: 0, count: 256 - format.codeCount)
        var rng = SeededGenerator(seed: UInt64(cols * 7 + m))
        let codes = (0..<rows * cols).map { _ in UInt8(Int.random(in: 0..<format.codeCount, using: &rng)) }
        let groups = (cols + gs - 1) / gs
        let scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
        let limit = min(Int(Int16.max), (Int(Int32.max) - 1) / (1984 * sumLength))
        let lda = (cols + 1) & ~1
        var a = [Int16](repeating: 0, count: m * lda)
        for i in 0..<m { for j in 0..<cols { a[i * lda + j] = Int16(Int.random(in: -limit...limit, using: &rng)) } }
        var ref = [Float](repeating: .nan, count: m * rows)
        MiniFloat.fp8Int16Product(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength, table: table,
                                  scales: scales, activations: a, lda: lda, m: m, y: &ref, ldy: rows, reference: true)
        for vnni in [true, false] {
            TokenKernels.setVNNIEnabled(vnni)
            var y = [Float](repeating: .nan, count: m * rows)
            MiniFloat.fp8Int16Product(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength, table: table,
                                      scales: scales, activations: a, lda: lda, m: m, y: &y, ldy: rows)
            #expect(y == ref, "\(shape) vnni \(vnni)")
        }
        TokenKernels.setVNNIEnabled(true)
        for i in 0..<m {
            for o in 0..<rows {
                var expected = 0.0, magnitude = 0.0
                for j in 0..<cols {
                    let v = Double(scales[o * groups + j / gs]) * Double(table[Int(codes[o * cols + j])]) * Double(a[i * lda + j])
                    expected += v
                    magnitude += abs(v)
                }
                #expect(abs(Double(ref[i * rows + o]) - expected) <= 1e-6 * magnitude + 1e-30, "\(shape) [\(i), \(o)]")
            }
        }
    }

    /// The int16 activation quantizer (AVX2 and scalar) gives `grid(x / channelScale / alpha)·factor`
    /// exactly — the value `FloatingPointFormat.roundToGrid` gives, with NaN → 0, ±∞ and huge values
    /// clipped to ±max — and zero past the columns.
    @Test(arguments: [(Self.e2m5, 3), (Self.e3m4, 4), (Self.e2m5, 0)])
    func int16ActivationsMatchTheGrid(format: FloatingPointFormat, k: Int) {
        let cols = 53, rows = 3, ld = 56
        var rng = SeededGenerator(seed: 5)
        let shifts = (0..<cols).map { j in j % (k + 1) }
        let channelScales = shifts.map { Float(sign: .plus, exponent: -$0, significand: 1) }
        let factors = shifts.map { Float(sign: .plus, exponent: k - $0, significand: 1) / format.unit }
        let alpha: Float = 0.3
        var x = (0..<rows * cols).map { _ in rng.float(in: -8...8) }
        x[1] = .nan; x[2] = .infinity; x[3] = -.infinity; x[4] = 1e30; x[5] = 0; x[6] = -1e-30
        for reference in [false, true] {
            var codes = [Int16](repeating: 77, count: rows * ld)
            channelScales.withUnsafeBufferPointer { cs in
                MiniFloat.quantizeRowsInt16(x, rows: rows, columns: cols, channelScales: cs.baseAddress, alpha: alpha,
                                            exponentBits: format.exponentBits, mantissaBits: format.mantissaBits,
                                            factors: factors, into: &codes, ld: ld, reference: reference)
            }
            for i in 0..<rows {
                for j in 0..<cols {
                    let t = x[i * cols + j] / channelScales[j] / alpha
                    let grid = t.isNaN ? 0 : format.roundToGrid(t)
                    #expect(Float(codes[i * ld + j]) == grid * factors[j], "\(format) [\(i), \(j)] x \(x[i * cols + j])")
                }
                for j in cols..<ld { #expect(codes[i * ld + j] == 0) }
            }
            // ±∞ saturate at the format's largest grid integer times the channel's shift.
            #expect(Float(codes[2]) == format.maxValue * factors[2] && Float(codes[3]) == -format.maxValue * factors[3])
        }
    }

    // MARK: Split int16 activations (E3M4 with channel offsets K = 5…7)

    /// Checks `y` (m × rows, row stride `rows`) against the exact grouped integer sums
    /// Σ_g scale_{o,g}·Σ_j table[code_{o,j}]·value_{i,j}, within float rounding of their magnitude;
    /// rows for which `isZeroRow` holds must be exactly 0.
    static func expectExactSums(_ y: [Float], codes: [UInt8], table: [Int8], values: (Int) -> Int64, scales: [Float],
                                m: Int, rows: Int, cols: Int, groupSize gs: Int, lda: Int, label: String,
                                isZeroRow: (Int) -> Bool) {
        let groups = (cols + gs - 1) / gs
        for i in 0..<m {
            for o in 0..<rows {
                var expected = 0.0, magnitude = 0.0
                for g in 0..<groups {
                    var sum: Int64 = 0
                    for j in g * gs..<min(cols, (g + 1) * gs) {
                        sum += Int64(table[Int(codes[o * cols + j])]) * values(i * lda + j)
                    }
                    expected += Double(scales[o * groups + g]) * Double(sum)
                    magnitude += abs(Double(scales[o * groups + g]) * Double(sum))
                }
                #expect(abs(Double(y[i * rows + o]) - expected) <= 1e-6 * magnitude + 1e-30, "\(label) [\(i), \(o)]")
                if isZeroRow(o) { #expect(y[i * rows + o] == 0) }
            }
        }
    }

    /// Activation integers `v` split as the runtime does: `high = v / 2^shift` (toward zero),
    /// `low = v − 2^shift·high`.
    static func split(_ v: Int, shift: Int) -> (Int16, Int16) {
        let high = v / (1 << shift)
        return (Int16(v - high * (1 << shift)), Int16(high))
    }

    /// The split GEMM (AVX-512 VNNI + BW panels, AVX2 panels) and GEMV (VNNI, AVX2) equal the
    /// scalar twin bit for bit, and the twin equals Σ_g scale·(exact Int64 sum of t·v) within float
    /// rounding: E3M4 integers up to 1984·2^7 = 253,952 (shift 3) or as large as the group bound
    /// allows, saturated ±max rows, odd widths, groups of 32/64/128/one per row, all-zero rows.
    @Test(arguments: [(37, 64, 32, 5, 3), (64, 576, 32, 19, 3), (33, 63, 63, 3, 2), (17, 100, 64, 9, 1),
                      (40, 96, 96, 7, 3), (1, 32, 32, 1, 3), (48, 1536, 128, 13, 3), (35, 130, 128, 33, 2),
                      (8, 1536, 1536, 4, 3)])
    func splitKernelsMatchReference(shape: (Int, Int, Int, Int, Int)) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (rows, cols, gs, m, shift) = shape
        for format in [Self.e2m1, Self.e1m2, Self.e3m0] {
            let table = Self.integerTable(format)
            let maxWeight = table.map { abs(Int($0)) }.max()!
            var rng = SeededGenerator(seed: UInt64(rows * 977 + cols + shift))
            let (codes, packed) = Self.edgeCaseCodes(rows: rows, columns: cols, using: &rng)
            let groups = (cols + gs - 1) / gs
            let scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
            // The largest |v| both the split (high in int16) and the group bound allow.
            let limit = min(Int(Int16.max) << shift | ((1 << shift) - 1), (Int(Int32.max) - 1) / (maxWeight * gs))
            let lda = (cols + 1) & ~1
            var v = [Int](repeating: 0, count: m * lda)
            var low = [Int16](repeating: 0, count: m * lda), high = low
            for i in 0..<m {
                for j in 0..<cols {
                    v[i * lda + j] = i == 0 ? (j % 2 == 0 ? limit : -limit) : Int.random(in: -limit...limit, using: &rng)
                    (low[i * lda + j], high[i * lda + j]) = Self.split(v[i * lda + j], shift: shift)
                }
            }
            var ref = [Float](repeating: .nan, count: m * rows)
            high.withUnsafeBufferPointer { h in
                let parts = MiniFloat.HighParts(h.baseAddress!, shift: shift)
                MiniFloat.fp4Int16Product(codes: packed, rows: rows, columns: cols, groupSize: gs, table: table,
                                          scales: scales, activations: low, high: parts, lda: lda, m: m, y: &ref,
                                          ldy: rows, kernel: .reference)
                for vnni in [true, false] {
                    TokenKernels.setVNNIEnabled(vnni)
                    for kernel in [MiniFloat.Int16Kernel.gemm, .gemv] {
                        var y = [Float](repeating: .nan, count: m * rows)
                        MiniFloat.fp4Int16Product(codes: packed, rows: rows, columns: cols, groupSize: gs, table: table,
                                                  scales: scales, activations: low, high: parts, lda: lda, m: m,
                                                  y: &y, ldy: rows, kernel: kernel)
                        #expect(y == ref, "\(format) \(shape) \(kernel) vnni \(vnni)")
                    }
                }
                TokenKernels.setVNNIEnabled(true)
            }
            Self.expectExactSums(ref, codes: codes, table: table, values: { Int64(v[$0]) }, scales: scales, m: m, rows: rows,
                                 cols: cols, groupSize: gs, lda: lda, label: "\(format) \(shape)", isZeroRow: { $0 == 2 })
        }
    }

    /// The FP8 byte-table GEMM with split activations equals its scalar twin bit for bit (VNNI and
    /// AVX2) and the exact sums within float rounding, with sums over parts of a row.
    @Test(arguments: [(37, 64, 64, 32, 5), (64, 576, 576, 32, 20), (33, 63, 63, 63, 3), (40, 96, 96, 32, 9)])
    func fp8SplitGemmMatchesReference(shape: (Int, Int, Int, Int, Int)) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (rows, cols, gs, sumLength, m) = shape
        let format = Self.e2m5, shift = 3
        let table = format.codeValues.map { Int16($0 / format.unit) } + [Int16](repeating: 0, count: 256 - format.codeCount)
        var rng = SeededGenerator(seed: UInt64(cols * 13 + m))
        let codes = (0..<rows * cols).map { _ in UInt8(Int.random(in: 0..<format.codeCount, using: &rng)) }
        let groups = (cols + gs - 1) / gs
        let scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
        let limit = min(253_952, (Int(Int32.max) - 1) / (252 * sumLength))
        let lda = (cols + 1) & ~1
        var v = [Int](repeating: 0, count: m * lda)
        var low = [Int16](repeating: 0, count: m * lda), high = low
        for i in 0..<m {
            for j in 0..<cols {
                v[i * lda + j] = Int.random(in: -limit...limit, using: &rng)
                (low[i * lda + j], high[i * lda + j]) = Self.split(v[i * lda + j], shift: shift)
            }
        }
        var ref = [Float](repeating: .nan, count: m * rows)
        high.withUnsafeBufferPointer { h in
            let parts = MiniFloat.HighParts(h.baseAddress!, shift: shift)
            MiniFloat.fp8Int16Product(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength,
                                      table: table, scales: scales, activations: low, high: parts, lda: lda, m: m,
                                      y: &ref, ldy: rows, reference: true)
            for vnni in [true, false] {
                TokenKernels.setVNNIEnabled(vnni)
                var y = [Float](repeating: .nan, count: m * rows)
                MiniFloat.fp8Int16Product(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength,
                                          table: table, scales: scales, activations: low, high: parts, lda: lda, m: m,
                                          y: &y, ldy: rows)
                #expect(y == ref, "\(shape) vnni \(vnni)")
            }
            TokenKernels.setVNNIEnabled(true)
        }
        for i in 0..<m {
            for o in 0..<rows {
                var expected = 0.0, magnitude = 0.0
                for j in 0..<cols {
                    let t = Double(scales[o * groups + j / gs]) * Double(table[Int(codes[o * cols + j])]) * Double(v[i * lda + j])
                    expected += t
                    magnitude += abs(t)
                }
                #expect(abs(Double(ref[i * rows + o]) - expected) <= 1e-6 * magnitude + 1e-30, "\(shape) [\(i), \(o)]")
            }
        }
    }

    /// The FP8 decode GEMV (byte codes in place, magnitudes looked up in registers) equals the
    /// byte-table GEMM's scalar twin bit for bit, for FP8 E2M5/E3M4 and FP6 E2M3 codes (sign bit
    /// at 7 resp. 5), whole and split int32 sums, odd widths (scalar tails), saturated codes,
    /// all-zero rows and split activations; skipped where the kernel does not exist (no AVX-512
    /// VNNI + BW: the runtime keeps the float GEMV there).
    @Test(arguments: [(37, 64, 64, 64, 1), (64, 576, 576, 576, 2), (33, 63, 63, 63, 1), (40, 96, 96, 32, 3),
                      (9, 1536, 1536, 512, 1), (17, 100, 64, 32, 4)])
    func fp8Int16GemvMatchesReference(shape: (Int, Int, Int, Int, Int)) {
        let (rows, cols, gs, sumLength, m) = shape
        let e2m3 = FloatingPointFormat(exponentBits: 2, mantissaBits: 3)
        for (format, split) in [(Self.e2m5, false), (Self.e3m4, false), (e2m3, false), (Self.e2m5, true)] {
            let magnitudeBits = format.exponentBits + format.mantissaBits
            guard MiniFloat.fp8Int16GemvAvailable(magnitudeBits: magnitudeBits) else { continue }
            let table = format.codeValues.map { Int16($0 / format.unit) } + [Int16](repeating: 0, count: 256 - format.codeCount)
            let maxWeight = table.map { abs(Int($0)) }.max()!
            var rng = SeededGenerator(seed: UInt64(cols * 31 + m + magnitudeBits))
            var codes = (0..<rows * cols).map { _ in UInt8(Int.random(in: 0..<format.codeCount, using: &rng)) }
            // Row 1 all zero codes, row 2 the largest magnitude with alternating signs.
            for j in 0..<cols {
                codes[cols + j] = 0
                codes[2 * cols + j] = UInt8((1 << magnitudeBits) - 1 + (j % 2) * (1 << magnitudeBits))
            }
            let groups = (cols + gs - 1) / gs
            let scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
            let shift = split ? 3 : 0
            let limit = min((Int(Int16.max) << shift) | ((1 << shift) - 1), (Int(Int32.max) - 1) / (maxWeight * sumLength))
            let lda = (cols + 1) & ~1
            var low = [Int16](repeating: 0, count: m * lda), high = low
            for i in 0..<m {
                for j in 0..<cols {
                    let v = i == 0 ? (j % 2 == 0 ? limit : -limit) : Int.random(in: -limit...limit, using: &rng)
                    (low[i * lda + j], high[i * lda + j]) = split ? Self.split(v, shift: shift) : (Int16(v), 0)
                }
            }
            var ref = [Float](repeating: .nan, count: m * rows), y = ref
            high.withUnsafeBufferPointer { h in
                let parts: MiniFloat.HighParts? = split ? MiniFloat.HighParts(h.baseAddress!, shift: shift) : nil
                MiniFloat.fp8Int16Product(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength,
                                          table: table, scales: scales, activations: low, high: parts, lda: lda, m: m,
                                          y: &ref, ldy: rows, reference: true)
                MiniFloat.fp8Int16Gemv(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength,
                                       magnitudeBits: magnitudeBits, table: table, scales: scales, activations: low,
                                       high: parts, lda: lda, m: m, y: &y, ldy: rows)
            }
            #expect(y == ref, "\(format) split \(split) \(shape)")
            #expect((0..<m).allSatisfy { ref[$0 * rows + 1] == 0 })
            #expect(ref.allSatisfy { $0.isFinite })
        }
    }

    /// The magnitude-byte form of the FP8 decode GEMV (E2M5 / E2M3: byte magnitudes, the sign on
    /// the activation's byte planes) equals the scalar twin and the int16 form bit for bit: row
    /// counts off the 4-row pass (1, 5, 37), widths off the 64-column step (63, 100, 130), int32
    /// sums shorter than the group, ±0 / subnormal / largest codes, all-zero rows, activations at
    /// the two-plane limit ±32639 and past it (three planes), and split activations.
    @Test(arguments: [(37, 64, 64, 64, 1), (5, 576, 576, 288, 1), (1, 63, 63, 63, 2), (6, 130, 130, 26, 1),
                      (9, 100, 50, 10, 3), (40, 576, 576, 96, 1)])
    func fp8ByteGemvMatchesReference(shape: (Int, Int, Int, Int, Int)) {
        // E3M4 weight integers reach 1984: never the byte form.
        let e3m4 = Self.e3m4.codeValues.map { Int16($0 / Self.e3m4.unit) } + [Int16](repeating: 0, count: 256 - Self.e3m4.codeCount)
        #expect(!MiniFloat.fp8ByteGemvRuns(magnitudeBits: 7, table: e3m4))
        let (rows, cols, gs, sumLength, m) = shape
        let e2m3 = FloatingPointFormat(exponentBits: 2, mantissaBits: 3)
        for (format, limit, split) in [(Self.e2m5, 32639, false), (Self.e2m5, 32767, false), (e2m3, 32639, false),
                                       (Self.e2m5, 200_000, true)] {
            let magnitudeBits = format.exponentBits + format.mantissaBits
            guard MiniFloat.fp8Int16GemvAvailable(magnitudeBits: magnitudeBits) else { continue }
            let table = format.codeValues.map { Int16($0 / format.unit) } + [Int16](repeating: 0, count: 256 - format.codeCount)
            let maxWeight = table.map { abs(Int($0)) }.max()!
            var rng = SeededGenerator(seed: UInt64(cols * 7 + rows + magnitudeBits))
            let signBit = 1 << magnitudeBits
            var codes = (0..<rows * cols).map { _ in UInt8(Int.random(in: 0..<format.codeCount, using: &rng)) }
            for j in 0..<cols {
                // Row 0: ±0, subnormal and largest codes in turn; the last row all zero (if two rows).
                let edge = [0, signBit, 1, signBit | 1, (1 << format.mantissaBits) - 1, signBit - 1, 2 * signBit - 1]
                codes[j] = UInt8(edge[j % edge.count])
                if rows > 1 { codes[(rows - 1) * cols + j] = 0 }
            }
            let groups = (cols + gs - 1) / gs
            let scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
            let shift = split ? 3 : 0
            // Saturated activations within the bound that keeps every exact sum in int32.
            let top = min(limit, (Int(Int32.max) - 1) / (maxWeight * sumLength))
            let lda = (cols + 1) & ~1
            var low = [Int16](repeating: 0, count: m * lda), high = low
            for i in 0..<m {
                for j in 0..<cols {
                    let v = i == 0 ? (j % 3 == 0 ? top : -top) : Int.random(in: -top...top, using: &rng)
                    (low[i * lda + j], high[i * lda + j]) = split ? Self.split(v, shift: shift) : (Int16(v), 0)
                }
            }
            var ref = [Float](repeating: .nan, count: m * rows), y = ref, old = ref
            high.withUnsafeBufferPointer { h in
                let parts: MiniFloat.HighParts? = split ? MiniFloat.HighParts(h.baseAddress!, shift: shift) : nil
                MiniFloat.fp8Int16Product(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength,
                                          table: table, scales: scales, activations: low, high: parts, lda: lda, m: m,
                                          y: &ref, ldy: rows, reference: true)
                for enabled in [true, false] {
                    var out = [Float](repeating: .nan, count: m * rows)
                    MiniFloat.setFP8ByteGemvEnabled(enabled)
                    MiniFloat.fp8Int16Gemv(codes: codes, rows: rows, columns: cols, groupSize: gs, sumLength: sumLength,
                                           magnitudeBits: magnitudeBits, table: table, scales: scales, activations: low,
                                           high: parts, lda: lda, m: m, y: &out, ldy: rows)
                    if enabled { y = out } else { old = out }
                }
                MiniFloat.setFP8ByteGemvEnabled(true)
            }
            #expect(y == ref, "\(format) limit \(limit) split \(split) \(shape)")
            #expect(old == ref, "\(format) int16 form \(shape)")
            #expect(ref.allSatisfy { $0.isFinite })
            if rows > 1 { #expect((0..<m).allSatisfy { ref[$0 * rows + rows - 1] == 0 }) }
        }
    }

    /// The split activation quantizer (AVX2 and scalar) gives `low + 2^shift·high =
    /// grid(x / channelScale / alpha)·factor` exactly with `|low| < 2^shift`, `high` in int16 and
    /// both parts carrying the value's sign, for E3M4 at K = 7 with the smallest and largest
    /// offsets (k_j = 0 and 7), saturated (±∞, huge) and NaN inputs, and zero past the columns.
    @Test(arguments: [(Self.e3m4, 7, 3), (Self.e3m4, 5, 1), (Self.e4m3, 0, 3)])
    func splitActivationsMatchTheGrid(format: FloatingPointFormat, k: Int, shift: Int) {
        let cols = 53, rows = 3, ld = 56
        var rng = SeededGenerator(seed: 9)
        let shifts = (0..<cols).map { j in j % (k + 1) }
        let channelScales = shifts.map { Float(sign: .plus, exponent: -$0, significand: 1) }
        let factors = shifts.map { Float(sign: .plus, exponent: k - $0, significand: 1) / format.unit }
        let alpha: Float = 0.3
        var x = (0..<rows * cols).map { _ in rng.float(in: -80...80) }
        x[1] = .nan; x[2] = .infinity; x[3] = -.infinity; x[4] = 1e30; x[5] = 0; x[6] = -1e-30
        x[8] = -1e30; x[cols] = .infinity
        var outputs: [[Int16]] = []
        for reference in [false, true] {
            var low = [Int16](repeating: 77, count: rows * ld), high = low
            channelScales.withUnsafeBufferPointer { cs in
                MiniFloat.quantizeRowsInt16Split(x, rows: rows, columns: cols, channelScales: cs.baseAddress, alpha: alpha,
                                                 exponentBits: format.exponentBits, mantissaBits: format.mantissaBits,
                                                 factors: factors, shift: shift, low: &low, high: &high, ld: ld,
                                                 reference: reference)
            }
            for i in 0..<rows {
                for j in 0..<cols {
                    let t = x[i * cols + j] / channelScales[j] / alpha
                    let grid = t.isNaN ? 0 : format.roundToGrid(t)
                    let l = Int(low[i * ld + j]), h = Int(high[i * ld + j])
                    #expect(Float(l + (h << shift)) == grid * factors[j], "\(format) [\(i), \(j)] x \(x[i * cols + j])")
                    #expect(abs(l) < 1 << shift && (l == 0 || h == 0 || (l > 0) == (h > 0)))
                }
                for j in cols..<ld { #expect(low[i * ld + j] == 0 && high[i * ld + j] == 0) }
            }
            // Row 1 column 0 (+∞, k_0 = 0: the largest factor) and row 0 column 8 (−10^30) saturate at ±max·factor.
            let top = Int(format.maxValue * factors[0])
            #expect(Int(low[ld]) + Int(high[ld]) << shift == top)
            #expect(Int(high[8]) << shift + Int(low[8]) == -Int(format.maxValue * factors[8]))
            outputs.append(low + high)
        }
        #expect(outputs[0] == outputs[1])
    }

    /// The runtime layer takes the int16 path exactly when the shifted grid integers fit int16 and
    /// groups do not split a column pair, and equals the simulated quantized layer (reference
    /// dequantizer, fake-quantized activations) on decode- and prefill-sized inputs either way.
    @Test(arguments: [1, 3, 20])
    func runtimeInt16PathMatchesSimulation(rows: Int) throws {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        // (weight format, group size, activation format, largest channel offset K, columns, int16 path?)
        let cases: [(FloatingPointFormat, Int, FloatingPointFormat, Int, Int, Bool)] = [
            (Self.e2m1, 32, Self.e2m5, 3, 96, true), (Self.e1m2, 64, Self.e2m5, 3, 100, true),
            (Self.e2m1, 128, Self.e3m4, 4, 130, true), (Self.e2m1, 71, Self.e2m5, 2, 71, true),
            (Self.e2m1, 35, Self.e2m5, 3, 70, false), (Self.e2m1, 32, Self.e2m1, 3, 64, false),
            // Split int16 activations (E3M4 at K = 5…7, E4M3 at K = 0: integers past int16).
            (Self.e2m1, 32, Self.e3m4, 7, 96, true), (Self.e1m2, 64, Self.e3m4, 5, 130, true),
            (Self.e3m0, 128, Self.e3m4, 6, 256, true), (Self.e2m1, 71, Self.e3m4, 7, 71, true),
            (Self.e2m1, 32, Self.e4m3, 0, 64, true),
            // One group per row of 1536: 12·253,952·1536 ≥ 2^31, proven per row with the row's weights.
            (Self.e2m1, 1536, Self.e3m4, 7, 1536, true),
            // Even split does not fit: E4M3 at K = 7 (245,760·2^7 ≥ 2^24) keeps the float path.
            (Self.e2m1, 32, Self.e4m3, 7, 64, false),
            // FP8 weights per row (the W8A8 recipe): the byte-table GEMM at prefill, sums split
            // where a whole row's could leave int32 (E3M4 weights × E3M4 activations at K = 4).
            (Self.e2m5, 100, Self.e2m5, 3, 100, true), (Self.e3m4, 576, Self.e3m4, 4, 576, true),
            (Self.e2m5, 71, Self.e3m4, 2, 71, true), (Self.e4m3, 64, Self.e2m5, 3, 64, false),
            // FP8 weights × split activations (the W8A8 recipe's E3M4 inputs with K ≥ 5).
            (Self.e2m5, 576, Self.e3m4, 7, 576, true), (Self.e2m5, 64, Self.e3m4, 5, 128, true),
        ]
        for (format, gs, act, k, cols, wide) in cases {
            let out = 37
            let w = Self.randomWeight(rows: out, cols: cols, groupSize: gs, format: format, seed: UInt64(cols + k))
            var rng = SeededGenerator(seed: 21)
            let shifts = (0..<cols).map { j in j == 5 ? k : (j == 6 ? 0 : Int.random(in: 0...k, using: &rng)) }
            let quantization = ActivationQuantization(bits: act.bits, granularity: .perTensor, scale: 0.05,
                                                      channelScales: shifts.map { Float(sign: .plus, exponent: -$0, significand: 1) },
                                                      floatFormat: act)
            let q = QuantizedLinear(name: "l", method: "llmfp4", weight: .floatingPoint(w),
                                    bias: (0..<out).map { _ in rng.float(in: -1...1) }, activation: quantization)
            let op = try FloatingPointLinear(q, splitActivations: true)
            #expect(op.kernelDescription.contains("int16") == wide, "\(format) g\(gs) \(act) K=\(k): \(op.kernelDescription)")
            let maxInteger = Int(act.maxValue / act.unit) << k
            let split = wide && maxInteger > Int(Int16.max)
            #expect(op.kernelDescription.contains("split int16") == split, "\(format) g\(gs) \(act) K=\(k): \(op.kernelDescription)")
            // Without the split form those layers keep the float path (and equal the simulation too).
            let floatOp = try FloatingPointLinear(q, splitActivations: false)
            // …except at decode where the byte-plane GEMV runs them on integers (FP4 weights,
            // columns and group multiples of 8).
            let byteDecode = wide && format.bits == 4 && MiniFloat.fp4ByteGemvAvailable
                && FloatingPointLinear.byteGemvByDefault && MiniFloat.fp4ByteGemvSupports(columns: cols, groupSize: gs)
            #expect(floatOp.kernelDescription.contains("int16") == (wide && (!split || byteDecode)), "\(floatOp.kernelDescription)")
            #expect(op.kernelDescription.contains("byte-plane") == byteDecode, "\(op.kernelDescription)")
            // 1984·(1984·2^4)·32 < 2^31 ≤ 1984·(1984·2^4)·64.
            if format == Self.e3m4 { #expect(op.kernelDescription.contains("int32 sums of 32")) }
            // FP8 weights decode on the int16 byte GEMV where it exists (rows ≤ 8 below).
            if wide, format.bits > 4 {
                #expect(op.kernelDescription.contains("GEMM/GEMV") == MiniFloat.fp8Int16GemvAvailable(magnitudeBits: format.bits - 1))
            }
            // Inputs up to past the clipping point of the largest channel (saturated activations).
            let x = (0..<rows * cols).map { i in (i % cols == 6 ? 40 : 1) * rng.float(in: -1...1) }
            var y = [Float](repeating: .nan, count: rows * out), expected = y
            // Float tiles (the float path's prefill) in float32 here: the bf16 product of the
            // float tiles is checked in `floatTilePrefillInBF16`, and below for the byte layout.
            // The int16 GEMM at prefill (`PTQ_FP4_TILE_PREFILL=0`): exact sums.
            FloatingPointLinear.$tilePrefillOverride.withValue(false) {
                LowBit.$bf16PrefillOverride.withValue(false) { op.forward(x, rows: rows, into: &y) }
            }
            SimulatedLinear(q).forward(x, rows: rows, into: &expected)
            let scale = expected.map(abs).max()!
            for i in 0..<y.count {
                #expect(abs(y[i] - expected[i]) <= 1e-5 * scale, "\(format) g\(gs) \(act) K=\(k) [\(i / out), \(i % out)]")
            }
            // The byte-layout layers' default prefill (rows past the GEMV limit): the activations
            // rounded to their FP8 grid as floats, tile decode, bf16 GEMM with fp32 sums — within
            // the bf16 product bound of grid activations × the reference dequantized weight.
            if byteDecode {
                let tiles = FloatingPointLinear.$tilePrefillOverride.withValue(true) { op.kernelDescription }
                #expect(tiles.contains("tile-GEMM (prefill)"), "\(tiles)")
                #expect(FloatingPointLinear.$tilePrefillOverride.withValue(false) { op.kernelDescription }
                    .contains("int16 GEMM (prefill)"))
                var yTiles = [Float](repeating: .nan, count: rows * out)
                FloatingPointLinear.$tilePrefillOverride.withValue(true) {
                    LowBit.$bf16PrefillOverride.withValue(true) { op.forward(x, rows: rows, into: &yTiles) }
                }
                if rows > 8 {
                    var grid = [Float](repeating: .nan, count: rows * cols)
                    let alpha = try #require(quantization.scale), channel = try #require(quantization.channelScales)
                    MiniFloat.quantizeRows(x, rows: rows, columns: cols, channelScales: channel, alpha: alpha,
                                           exponentBits: act.exponentBits, mantissaBits: act.mantissaBits, into: &grid)
                    let failures = bf16PrefillViolations(y: yTiles, x: grid, rows: rows, weight: w.dequantizedReference(),
                                                         out: out, k: cols, bias: q.bias)
                    #expect(failures.isEmpty, "\(format) g\(gs) \(act) K=\(k): \(failures.prefix(3))")
                } else {
                    // Decode-sized inputs keep the byte GEMV whatever the switch says.
                    #expect(yTiles.map(\.bitPattern) == y.map(\.bitPattern), "\(format) g\(gs) \(act) K=\(k)")
                }
            }
            if split {
                var yFloat = [Float](repeating: .nan, count: rows * out)
                LowBit.$bf16PrefillOverride.withValue(false) { floatOp.forward(x, rows: rows, into: &yFloat) }
                for i in 0..<y.count { #expect(abs(yFloat[i] - expected[i]) <= 1e-5 * scale) }
            }
        }
    }

    /// `LlamaModel.kernelPaths` (what `ptq bench` prints) counts every decoder linear and the head
    /// once, under each op's own `kernelDescription`.
    @Test func kernelPathsCountEveryLinear() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipePath = try PipelineFixtures.recipe(folder, name: "fp4paths", body: """
        scheme:
          method: llmfp4
          weight: {bits: 4, group_size: 32}
          activation: {bits: 8, granularity: per_tensor}
          parameters: {setting: fast, intervals: 8}
        """)
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: try PTQ.RecipeContext(path: recipePath), quiet: true)
        let model = try LlamaModel(weights: PackedWeights(outcome.packed))
        let paths = model.kernelPaths
        #expect(paths.reduce(0) { $0 + $1.count } == 7 * model.layers.count + 1)
        #expect(paths.allSatisfy { !$0.description.isEmpty })
        #expect(zip(paths, paths.dropFirst()).allSatisfy { $0.count >= $1.count })
        var expected: [String: Int] = [:]
        for layer in model.layers {
            for op in [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down] {
                expected[op.kernelDescription, default: 0] += 1
            }
        }
        // Every decoder linear is minifloat here and says which kernel it runs.
        #expect(expected.keys.allSatisfy { $0.hasPrefix("fp4 e") })
        for (description, count) in expected {
            #expect(paths.first { $0.description == description }.map(\.count) ?? 0 >= count, "\(description)")
        }
    }
}
