import CKernels
import Foundation
import Testing
@testable import Kernels
@testable import Models
@testable import PTQKit
@testable import Quantizers

/// The FP4 decode GEMV on byte-plane activations (int8 VNNI, `MiniFloat.fp4ByteGemv`): the vector
/// kernel and its scalar twin against the int16 kernels' scalar twin on the original codes, bit for
/// bit, and the twin against exact integer sums.
extension LLMFP4Tests {
    /// Whole and split activation integers at the extremes the planes hold (two planes:
    /// −32768…32639; three: the E3M4 K = 7 range ±253,952 through the split form), random ones,
    /// all-zero rows of codes, saturated codes, zero and huge scales, groups of 8/32/96/one per
    /// row, row counts that leave partial 16-row blocks, several activation rows.
    @Test(arguments: [(37, 64, 32, 3, 0), (64, 576, 32, 1, 0), (17, 1536, 1536, 2, 0), (33, 24, 8, 4, 0),
                      (40, 96, 96, 1, 0), (16, 40, 40, 2, 0), (37, 64, 32, 3, 3), (29, 1536, 32, 1, 3),
                      (5, 40, 40, 2, 2), (48, 192, 64, 2, 1)])
    func byteGemvMatchesInt16Reference(shape: (Int, Int, Int, Int, Int)) throws {
        let (rows, cols, gs, m, shift) = shape
        for format in [Self.e2m1, Self.e1m2, Self.e3m0] {
            let table = Self.integerTable(format)
            let maxWeight = table.map { abs(Int($0)) }.max()!
            var rng = SeededGenerator(seed: UInt64(rows * 31 + cols + shift))
            let (codes, packed) = Self.edgeCaseCodes(rows: rows, columns: cols, using: &rng)
            let groups = (cols + gs - 1) / gs
            var scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
            scales[0] = 0
            if rows > 4 { scales[4 * groups] = 1e25 }
            // The largest |v| the planes and the int32 group bound allow.
            let planeLimit = shift == 0 ? 32_639 : min(253_952, Int(Int16.max) << shift)
            let groupBound = (Int(Int32.max) - 1) / (maxWeight * gs)
            let limit = min(planeLimit, groupBound), negativeLimit = min(shift == 0 ? 32_768 : planeLimit, groupBound)
            let lda = cols
            var low = [Int16](repeating: 0, count: m * lda), high = low
            var whole = [Int](repeating: 0, count: m * lda)
            for i in 0..<m {
                for j in 0..<cols {
                    let v: Int
                    switch i {
                    case 0: v = j % 3 == 0 ? -negativeLimit : limit // the extremes
                    case 1 where m > 2: v = 0 // all-zero activations
                    default: v = Int.random(in: -limit...limit, using: &rng)
                    }
                    whole[i * lda + j] = v
                    if shift == 0 {
                        low[i * lda + j] = Int16(v)
                    } else {
                        (low[i * lda + j], high[i * lda + j]) = Self.split(v, shift: shift)
                    }
                }
            }
            let parts = shift == 0 ? nil : high
            var ref = [Float](repeating: .nan, count: m * rows)
            try withOptionalHigh(parts, shift: shift) { h in
                MiniFloat.fp4Int16Product(codes: packed, rows: rows, columns: cols, groupSize: gs, table: table,
                                          scales: scales, activations: low, high: h, lda: lda, m: m, y: &ref,
                                          ldy: rows, kernel: .reference)
                let layout = try #require(MiniFloat.FP4ByteLayout(codes: packed, rows: rows, columns: cols, groupSize: gs,
                                                                  table: table, scales: scales, planes: shift == 0 ? 2 : 3))
                #expect(layout.offset == maxWeight)
                for reference in [false, true] {
                    var y = [Float](repeating: .nan, count: m * rows)
                    MiniFloat.fp4ByteGemv(layout, activations: low, high: h, lda: lda, m: m, y: &y, ldy: rows,
                                          reference: reference)
                    #expect(y.map(\.bitPattern) == ref.map(\.bitPattern), "\(format) \(shape) reference \(reference)")
                }
            }
            Self.expectExactSums(ref, codes: codes, table: table, values: { Int64(whole[$0]) }, scales: scales, m: m,
                                 rows: rows, cols: cols, groupSize: gs, lda: lda, label: "\(format) \(shape)",
                                 isZeroRow: { $0 == 2 || ($0 == 0 && groups == 1) })
        }
    }

    /// Prefill on the byte-plane layout (issue 13: the layout is the layer's only copy of the
    /// codes): the int16 panel GEMM whose panels are built from the layout (vector and scalar)
    /// writes the bits of the int16 reference on the nibble codes, and the float tile decoder
    /// (vector and scalar) writes exactly what the nibble-code reference dequantizer writes, for
    /// row counts with partial 16-row and 32-row panels, several groupings, whole and split
    /// activations, and tiles that start inside a block.
    @Test(arguments: [(37, 64, 32, 13, 0), (64, 576, 32, 9, 0), (17, 1536, 1536, 20, 0), (33, 24, 8, 11, 3),
                      (48, 192, 64, 12, 1), (29, 1536, 32, 10, 3), (16, 40, 40, 9, 2)])
    func layoutPrefillMatchesNibbleReference(shape: (Int, Int, Int, Int, Int)) throws {
        let (rows, cols, gs, m, shift) = shape
        for format in [Self.e2m1, Self.e1m2, Self.e3m0] {
            let table = Self.integerTable(format)
            var rng = SeededGenerator(seed: UInt64(rows * 7 + cols + shift))
            let (codes, packed) = Self.edgeCaseCodes(rows: rows, columns: cols, using: &rng)
            let groups = (cols + gs - 1) / gs
            let scales = (0..<rows * groups).map { _ in rng.float(in: 0.01...2) }
            let maxWeight = table.map { abs(Int($0)) }.max()!
            let limit = min(shift == 0 ? 32_639 : Int(Int16.max) << shift, (Int(Int32.max) - 1) / (maxWeight * gs))
            let lda = cols
            var low = [Int16](repeating: 0, count: m * lda), high = low
            for i in 0..<(m * lda) {
                let v = Int.random(in: -limit...limit, using: &rng)
                if shift == 0 { low[i] = Int16(v) } else { (low[i], high[i]) = Self.split(v, shift: shift) }
            }
            let layout = try #require(MiniFloat.FP4ByteLayout(codes: packed, rows: rows, columns: cols, groupSize: gs,
                                                              table: table, scales: scales, planes: shift == 0 ? 2 : 3))
            try withOptionalHigh(shift == 0 ? nil : high, shift: shift) { h in
                var want = [Float](repeating: .nan, count: m * rows)
                MiniFloat.fp4Int16Product(codes: packed, rows: rows, columns: cols, groupSize: gs, table: table,
                                          scales: scales, activations: low, high: h, lda: lda, m: m, y: &want,
                                          ldy: rows, kernel: .reference)
                // VNNI off: the AVX2 panel GEMM with the scalar panel builder (the switch is
                // process-wide: hold the lock).
                TokenKernels.kernelSwitchLock.lock()
                defer { TokenKernels.setVNNIEnabled(true); TokenKernels.kernelSwitchLock.unlock() }
                for (reference, vnni) in [(false, true), (true, true), (false, false)] {
                    TokenKernels.setVNNIEnabled(vnni)
                    var y = [Float](repeating: .nan, count: m * rows)
                    table.withUnsafeBufferPointer { t in
                        MiniFloat.fp4Int16Product(layout, table: t.baseAddress!, activations: low, high: h, lda: lda,
                                                  m: m, y: &y, ldy: rows, reference: reference)
                    }
                    #expect(y.map(\.bitPattern) == want.map(\.bitPattern),
                            "\(format) \(shape) reference \(reference) vnni \(vnni)")
                }
            }
            // Float tiles: the nibble decoder's reference values (`scale · value(code)`).
            let values = format.codeValues
            for range in [0..<rows, min(rows, 5)..<rows, (rows - 1)..<rows, min(rows, 16)..<min(rows, 35)] where !range.isEmpty {
                var want = [Float](repeating: .nan, count: range.count * cols)
                MiniFloat.decodeRows(codes: packed, nibbles: true, rowRange: range, columns: cols, groupSize: gs,
                                     table: values, scales: scales, into: &want, reference: true)
                for reference in [false, true] {
                    var tile = [Float](repeating: .nan, count: range.count * cols + 1)
                    values.withUnsafeBufferPointer { t in
                        MiniFloat.decodeRows(layout, rowRange: range, table: t.baseAddress!, into: &tile,
                                             reference: reference)
                    }
                    #expect(tile[range.count * cols].isNaN, "wrote past the tile")
                    #expect(Array(tile.prefix(range.count * cols)).map(\.bitPattern) == want.map(\.bitPattern),
                            "\(format) \(shape) rows \(range) reference \(reference)")
                }
            }
            // And the plain dequantization of the weight (value(code) · scale) is what both decode.
            let w = FloatingPointWeight(format: format, rows: rows, columns: cols, groupSize: gs, codes: codes,
                                        scales: scales)
            var tile = [Float](repeating: .nan, count: rows * cols)
            values.withUnsafeBufferPointer { t in MiniFloat.decodeRows(layout, rowRange: 0..<rows, table: t.baseAddress!, into: &tile) }
            #expect(tile.map(\.bitPattern) == w.dequantizedReference().map(\.bitPattern), "\(format) \(shape)")
        }
    }

    /// The byte planes and per-group corrections (vector and scalar) hold every activation
    /// integer exactly: Σ_p 256^p·b_p = v, and corr[g] = c·Σ_{j∈g} v.
    @Test func byteActivationPlanesAreExact() {
        let cols = 72, gs = 24, groups = 3
        for (shift, planes, limit) in [(0, 2, 32_639), (3, 3, 253_952), (1, 3, 65_534)] {
            var rng = SeededGenerator(seed: UInt64(shift + 40))
            let v = (0..<cols).map { j in j == 0 ? -limit : (j == 1 ? limit : (j == 2 ? 0 : Int.random(in: -limit...limit, using: &rng))) }
            let parts = v.map { shift == 0 ? (Int16(clamping: $0), Int16(0)) : Self.split($0, shift: shift) }
            let low = parts.map(\.0), high = parts.map(\.1)
            for reference in [false, true] {
                var out = [Int8](repeating: 99, count: planes * cols), corr = [Int32](repeating: 7, count: groups)
                high.withUnsafeBufferPointer { h in
                    let hp = shift == 0 ? nil : h.baseAddress
                    if reference {
                        ck_fp4_u8_activations_ref(low, hp, Int32(shift), cols, gs, Int32(planes), 12, &out, &corr)
                    } else {
                        ck_fp4_u8_activations(low, hp, Int32(shift), cols, gs, Int32(planes), 12, &out, &corr)
                    }
                }
                for j in 0..<cols {
                    let value = (0..<planes).reduce(0) { $0 + Int(out[$1 * cols + j]) << (8 * $1) }
                    #expect(value == v[j], "shift \(shift) reference \(reference) column \(j)")
                }
                for g in 0..<groups {
                    let sum = v[g * gs..<(g + 1) * gs].reduce(0, +)
                    #expect(Int(corr[g]) == 12 * sum, "group \(g)")
                }
            }
        }
    }

    /// Shapes the packed layout cannot hold are refused (the caller keeps the int16 GEMV).
    @Test func byteLayoutRefusesUnsupportedShapes() {
        let table = Self.integerTable(Self.e2m1)
        let codes = [UInt8](repeating: 0x21, count: 64), scales = [Float](repeating: 1, count: 64)
        #expect(MiniFloat.FP4ByteLayout(codes: codes, rows: 2, columns: 63, groupSize: 63, table: table, scales: scales, planes: 2) == nil)
        #expect(MiniFloat.FP4ByteLayout(codes: codes, rows: 2, columns: 48, groupSize: 12, table: table, scales: scales, planes: 2) == nil)
        #expect(MiniFloat.FP4ByteLayout(codes: codes, rows: 2, columns: 48, groupSize: 16, table: table, scales: scales, planes: 4) == nil)
        #expect(MiniFloat.FP4ByteLayout(codes: codes, rows: 2, columns: 48, groupSize: 16, table: [Int8](repeating: -128, count: 16),
                                        scales: scales, planes: 2) == nil)
        #expect(MiniFloat.FP4ByteLayout(codes: codes, rows: 2, columns: 48, groupSize: 16, table: table, scales: scales, planes: 2) != nil)
    }

    private func withOptionalHigh(_ high: [Int16]?, shift: Int, _ body: (MiniFloat.HighParts?) throws -> Void) rethrows {
        guard let high else { return try body(nil) }
        try high.withUnsafeBufferPointer { try body(MiniFloat.HighParts($0.baseAddress!, shift: shift)) }
    }
}
