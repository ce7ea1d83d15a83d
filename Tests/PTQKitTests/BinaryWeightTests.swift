import Foundation
import Testing
import Kernels
import Packing
@testable import PTQKit
import Quantizers
@testable import QuantizedRuntime

/// PTQ1.61's packed binary format, its packing and its bit-level kernel.
@Suite("BinaryWeight")
struct BinaryWeightTests {
    static func randomWeight(rows: Int, columns: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<(rows * columns)).map { _ in rng.float(in: -0.05...0.05) }
    }

    /// PTQ1.61 parameters with non-trivial learned scales (α, r1, r2 moved off their start).
    static func parameters(rows: Int, columns: Int, salientColumns: Int, seed: UInt64) -> BinarizationParameters {
        var rng = SeededGenerator(seed: seed &+ 1)
        let w = randomWeight(rows: rows, columns: columns, seed: seed)
        let statistic = (0..<columns).map { _ in rng.float(in: 0...10) }
        var mask = [Bool](repeating: false, count: columns)
        if salientColumns >= columns {
            mask = [Bool](repeating: true, count: columns)
        } else if salientColumns > 0 {
            mask = BinarizationParameters.salientMask(channelStatistic: statistic,
                                                      ratio: Double(salientColumns) / Double(columns))
        }
        var p = BinarizationParameters.initial(weight: w, rows: rows, columns: columns, salientMask: mask)
        p.alpha = p.alpha.map { $0 * rng.float(in: 0.8...1.2) }
        p.rowScale = p.rowScale.map { _ in rng.float(in: 0.7...1.3) }
        p.columnScale = p.columnScale.map { _ in rng.float(in: 0.7...1.3) }
        return p
    }

    static func linear(_ w: BinaryWeight, bias: [Float]?) -> QuantizedLinear {
        QuantizedLinear(name: "layers/0/mlp/up_proj", method: "ptq161", weight: .binary(w), bias: bias)
    }

    /// y = W x + bias with W from the reference dequantizer, in double.
    static func product(_ w: [Float], rows: Int, columns: Int, x: [Float], xRows: Int, bias: [Float]?) -> [Float] {
        var y = [Float](repeating: 0, count: xRows * rows)
        for t in 0..<xRows {
            for o in 0..<rows {
                var s = 0.0
                for j in 0..<columns { s += Double(w[o * columns + j]) * Double(x[t * columns + j]) }
                y[t * rows + o] = Float(s) + (bias?[o] ?? 0)
            }
        }
        return y
    }

    @Test func signPackingAndMeanTies() throws {
        // Row 0 has an element exactly at its mean: sign(0) packs as +1 (the reference's
        // torch.sign gives 0; the code maps it to +1).
        let w: [Float] = [1, 2, 3, 0.5, 0.5, 0.5]
        let p = BinarizationParameters.initial(weight: w, rows: 2, columns: 3, salientMask: [false, false, false])
        #expect(p.mean == [2, 0.5])
        let b = BinaryWeight(p)
        #expect(b.signs == [0, 1, 1, 1, 1, 1])
        // Row 1 is W == μ everywhere: every sign +1, value = α + μ.
        let d = b.dequantizedReference()
        #expect(d[3] == BinaryWeight.half(p.alpha[1]) + 0.5)
        #expect(b.salientCount == 0 && b.binaryCount == 6 && b.binaryColumnCount == 3)
    }

    @Test func maskSelection() {
        // ⌊0.2·10⌋ = 2 → threshold is the third largest; ties at the threshold join the mask.
        let stat: [Float] = [1, 9, 3, 9, 2, 7, 7, 0, 5, 4]
        let mask = BinarizationParameters.salientMask(channelStatistic: stat, ratio: 0.2)
        #expect(mask == [false, true, false, true, false, true, true, false, false, false])
        #expect(BinarizationParameters.salientMask(channelStatistic: stat, ratio: 0).allSatisfy { !$0 })
    }

    @Test(arguments: [(7, 100, 20), (1, 64, 13), (5, 33, 0), (4, 20, 20), (9, 130, 1)])
    func referenceDequantizerMatchesParameters(rows: Int, columns: Int, salient: Int) {
        let p = Self.parameters(rows: rows, columns: columns, salientColumns: salient, seed: UInt64(rows * 1000 + columns))
        let want = p.dequantized()
        let got = BinaryWeight(p).dequantizedReference()
        // Only the float16 rounding of a, b, Δ, r2 separates them (relative 2^-11 each).
        for i in want.indices {
            #expect(abs(got[i] - want[i]) <= 3e-3 * abs(want[i]) + 1e-7, "element \(i): \(got[i]) vs \(want[i])")
        }
    }

    @Test func packRoundTripAndValidation() throws {
        let p = Self.parameters(rows: 6, columns: 70, salientColumns: 14, seed: 11)
        let b = BinaryWeight(p)
        let q = Self.linear(b, bias: (0..<6).map { Float($0) * 0.1 })
        let packed = PackedModel(config: SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(),
                                 floatTensors: [:], quantizedLinears: [q.name: q], recipe: "test", statsHash: nil,
                                 modelIdentity: "x", toolVersion: "test", metadata: [:])
        let path = SyntheticModels.temporaryPath("binary.ptq")
        try PackedFile.write(packed, to: path)
        let read = try PackedFile.read(path: path)
        #expect(read.quantizedLinears[q.name] == q)
        let summary = try PackedFile.summary(path: path)
        let row = try #require(summary.tensors.first { $0.name == q.name })
        #expect(row.format == "binary" && row.bits == 4)
        // Bits per weight from the stored bytes: the layer, the quantized linears, the file.
        let sections = try PackedFile.sections(path: path).filter { $0.name.hasPrefix("linear:\(q.name):") }
        #expect(sections.count == 9)  // mask, signs, codes, zeros, scales, a, b, r2, bias
        #expect(row.storedBytes == sections.reduce(0) { $0 + $1.storedSize })
        #expect(summary.quantizedStoredBytes == row.storedBytes && summary.quantizedParameterCount == 6 * 70 + 6)
        #expect(summary.quantizedBitsPerWeight == 8 * Double(row.storedBytes) / Double(6 * 70 + 6))
        #expect(summary.fileBitsPerWeight == 8 * Double(summary.totalBytes) / Double(summary.parameterCount))

        // Writer refuses what the file could not hold exactly.
        var bad = b
        bad.scale[0] = 0.1  // not a float16 value
        #expect(throws: PTQError.self) { try Self.linear(bad, bias: nil).validate() }
        bad = b
        bad.signs[3] = 2
        #expect(throws: PTQError.self) { try Self.linear(bad, bias: nil).validate() }
        bad = b
        bad.salientCodes.removeLast()
        #expect(throws: PTQError.self) { try PackedFile.write(PackedModel(
            config: SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(), floatTensors: [:],
            quantizedLinears: [q.name: Self.linear(bad, bias: nil)], recipe: "t", statsHash: nil, modelIdentity: "x",
            toolVersion: "t", metadata: [:]), to: SyntheticModels.temporaryPath("bad-binary.ptq")) }
    }

    /// Salient columns with massive activations stay float16 (`outlier_threshold`): selection by
    /// the multiple of the median, their codes at the zero point, exact values, and format version 2
    /// only for files that have them.
    @Test func outlierColumnsSelectionPackingAndKernel() throws {
        let rows = 9, columns = 70
        var rng = SeededGenerator(seed: 5)
        var w = Self.randomWeight(rows: rows, columns: columns, seed: 5)
        var statistic = (0..<columns).map { _ in rng.float(in: 1...4) }
        statistic[17] = 900  // a massive-activation channel (≈ 360× the median)
        statistic[40] = 300
        statistic[3] = 20    // large but ordinary: salient, not an outlier
        w[4 * columns + 17] = 0.731  // a "super weight", far outside the row's other values
        let mask = BinarizationParameters.salientMask(channelStatistic: statistic, ratio: 0.2)
        let outliers = BinarizationParameters.outlierColumns(channelStatistic: statistic, threshold: 100, salientMask: mask)
        #expect(outliers == [17, 40])
        #expect(BinarizationParameters.outlierColumns(channelStatistic: statistic, threshold: 0, salientMask: mask).isEmpty)
        var p = BinarizationParameters.initial(weight: w, rows: rows, columns: columns, salientMask: mask,
                                               outlierColumns: outliers)
        p.columnScale = p.columnScale.map { _ in rng.float(in: 0.8...1.2) }
        for i in 0..<rows {
            for (t, j) in outliers.enumerated() {
                #expect(p.value(row: i, column: j) == BinaryWeight.half(w[i * columns + j]))
                #expect(p.outlierValues[i * outliers.count + t] == BinaryWeight.half(w[i * columns + j]))
                #expect(Float(p.salientCodes[i * columns + j]) == p.salientZero[i])
            }
        }
        // Without the outliers the super weight's grid error is what the column's activation multiplies.
        let plain = BinarizationParameters.initial(weight: w, rows: rows, columns: columns, salientMask: mask)
        #expect(abs(plain.value(row: 4, column: 17) - 0.731) > abs(p.value(row: 4, column: 17) - 0.731))

        let b = BinaryWeight(p)
        #expect(b.outlierColumns == outliers)
        let dense = b.dequantizedReference(), reference = p.dequantized()
        for k in dense.indices { #expect(abs(dense[k] - reference[k]) <= 2e-3 * (abs(reference[k]) + 1e-2)) }
        var row = [Float](repeating: 0, count: columns)
        row.withUnsafeMutableBufferPointer { b.decodeRow(4, into: $0.baseAddress!) }
        #expect(Array(row) == Array(dense[(4 * columns)..<(5 * columns)]))
        try checkKernel(b, bias: (0..<rows).map { Float($0) * 0.01 }, seed: 8)
        // Prefill tiles carry the outlier columns' float weights too, bit for bit.
        let layer = try BinaryLinear(Self.linear(b, bias: nil))
        var tile = [Float](repeating: .nan, count: rows * columns)
        tile.withUnsafeMutableBufferPointer { layer.dequantizeRows(0..<rows, into: $0.baseAddress!) }
        #expect(tile.map(\.bitPattern) == dense.map(\.bitPattern))

        // Round trip: version 2 with the outliers, version 1 without.
        func write(_ weight: BinaryWeight, _ name: String) throws -> (String, QuantizedLinear) {
            let q = Self.linear(weight, bias: nil)
            let path = SyntheticModels.temporaryPath(name)
            try PackedFile.write(PackedModel(config: SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(),
                                             floatTensors: [:], quantizedLinears: [q.name: q], recipe: "test", statsHash: nil,
                                             modelIdentity: "x", toolVersion: "test", metadata: [:]), to: path)
            return (path, q)
        }
        let (path, q) = try write(b, "outliers.ptq")
        #expect(try PackedFile.read(path: path).quantizedLinears[q.name] == q)
        #expect(try PackedFile.summary(path: path).formatVersion == 2)
        let (plainPath, _) = try write(BinaryWeight(plain), "no-outliers.ptq")
        #expect(try PackedFile.summary(path: plainPath).formatVersion == 1)
        // The same file relabelled version 1 in its header (checksum recomputed) is refused.
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[8] = 1
        let headerCRC = CRC32.checksum(Array(bytes[0..<60]))
        for k in 0..<4 { bytes[60 + k] = UInt8(truncatingIfNeeded: headerCRC >> (8 * k)) }
        let relabelled = SyntheticModels.temporaryPath("outliers-v1.ptq")
        try Data(bytes).write(to: URL(fileURLWithPath: relabelled))
        #expect { try PackedFile.read(path: relabelled) } throws: { error in
            (error as? PTQError)?.message.contains("format version") == true
        }

        // The writer refuses outlier columns the kernels could not run as described.
        var bad = b
        let position = (0..<columns).filter { mask[$0] }.firstIndex(of: 17)!
        let salientCount = mask.filter { $0 }.count
        bad.salientCodes[2 * salientCount + position] = bad.salientZero[2] == 0 ? 1 : 0
        #expect(throws: PTQError.self) { try Self.linear(bad, bias: nil).validate() }
        bad = b
        bad.outlierColumns = [17, 41]  // 41 is not salient
        #expect(throws: PTQError.self) { try Self.linear(bad, bias: nil).validate() }
        bad = b
        bad.outlierValues.removeLast()
        #expect(throws: PTQError.self) { try Self.linear(bad, bias: nil).validate() }
    }

    /// Kernel against the reference dequantized layer: random and odd shapes, all-salient,
    /// no-salient, rows with W == μ, one row; GEMV, tiles + sgemm, and the scalar twins.
    @Test(arguments: [(16, 200, 40), (1, 64, 12), (5, 33, 0), (8, 20, 20), (3, 129, 1), (24, 576, 116)])
    func kernelMatchesReference(rows: Int, columns: Int, salient: Int) throws {
        var p = Self.parameters(rows: rows, columns: columns, salientColumns: salient, seed: UInt64(rows + columns))
        if rows > 2 {
            // A row with W == μ everywhere: all signs +1.
            for j in 0..<columns where !p.salientMask[j] { p.signs[columns + j] = 1 }
        }
        let b = BinaryWeight(p)
        let bias: [Float]? = rows % 2 == 0 ? (0..<rows).map { Float($0) * 0.01 } : nil
        try checkKernel(b, bias: bias, seed: UInt64(columns))
    }

    /// Prefill tiles (`ck_binary_decode_rows`, AVX-512 and the scalar twin) equal the reference
    /// dequantizer bit for bit: odd widths (tails inside 16- and 64-column words), no salient
    /// columns, all salient, more than 512 salient columns (the kernel's heap buffer), 4- and 8-bit
    /// salient codes, extreme and zero scales, partial row ranges.
    @Test(arguments: [(16, 200, 40, 4), (1, 64, 12, 4), (5, 33, 0, 4), (8, 20, 20, 4), (3, 129, 1, 4),
                      (24, 576, 116, 4), (7, 1536, 307, 4), (9, 77, 30, 8), (4, 600, 0, 8),
                      (2, 3000, 600, 4)])
    func prefillTilesMatchReference(rows: Int, columns: Int, salient: Int, bits: Int) throws {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        var rng = SeededGenerator(seed: UInt64(rows * 1000 + columns))
        var mask = [Bool](repeating: false, count: columns)
        for j in (0..<columns).shuffled(using: &rng).prefix(salient) { mask[j] = true }
        let ns = salient, nb = columns - salient, top = (1 << bits) - 1
        // Row 0: zero scales; row 1 (if any): extreme half-precision scales; the rest random.
        func half(_ v: Float, _ o: Int) -> Float { BinaryWeight.half(o == 0 ? 0 : o == 1 ? v * 60000 : v) }
        let w = BinaryWeight(
            rows: rows, columns: columns, maskKind: .columns, salientMask: mask, salientBits: bits,
            salientCodes: (0..<(rows * ns)).map { _ in UInt8(Int(rng.next() % UInt64(top + 1))) },
            salientScale: (0..<rows).map { half(rng.float(in: 0.001...0.01), $0) },
            salientZero: (0..<rows).map { _ in UInt8(Int(rng.next() % UInt64(top + 1))) },
            signs: (0..<(rows * nb)).map { _ in UInt8(rng.next() % 2) },
            scale: (0..<rows).map { half(rng.float(in: 0.01...0.05), $0) },
            offset: (0..<rows).map { half(rng.float(in: -0.01...0.01), $0) },
            columnScale: (0..<nb).map { _ in BinaryWeight.half(rng.float(in: 0.7...1.3)) })
        try Self.linear(w, bias: nil).validate()
        let layer = try BinaryLinear(Self.linear(w, bias: nil))
        let dense = w.dequantizedReference()
        // Ranges that start and end inside 16-row blocks (the tiles unpack planes per row).
        let ranges = [0..<rows, (rows / 2)..<rows, 0..<min(rows, 1), min(rows, 3)..<min(rows, 21)].filter { !$0.isEmpty }
        for vnni in [true, false] {
            TokenKernels.setVNNIEnabled(vnni)
            for range in ranges {
                for reference in [false, true] {
                    var tile = [Float](repeating: .nan, count: range.count * columns)
                    tile.withUnsafeMutableBufferPointer { layer.dequantizeRows(range, into: $0.baseAddress!, reference: reference) }
                    for (t, o) in range.enumerated() {
                        for j in 0..<columns {
                            #expect(tile[t * columns + j].bitPattern == dense[o * columns + j].bitPattern,
                                    "vnni \(vnni) ref \(reference) row \(o) column \(j): \(tile[t * columns + j]) vs \(dense[o * columns + j])")
                        }
                    }
                }
            }
        }
        TokenKernels.setVNNIEnabled(true)
    }

    /// The table-lookup sign GEMV (one bit plane in the u4 table GEMV's blocks): its AVX-512
    /// kernel and scalar twin agree bit for bit, and both match `ck_binary_gemv_ref` up to float
    /// summation order, on odd sizes (rows off the 16-row blocks, columns off the 32-column
    /// chunks), all −1 and all +1 rows, zero scales, extreme scales and activations, and x = 0.
    @Test(arguments: [(37, 100), (16, 32), (1, 1), (17, 33), (5, 31), (40, 577)])
    func signPlanesMatchBinaryReference(rows: Int, columns: Int) {
        var rng = SeededGenerator(seed: 7 + UInt64(rows * 1000 + columns))
        for variant in 0..<3 {
            var signs = (0..<(rows * columns)).map { _ in UInt8(rng.next() % 2) }
            for j in 0..<columns { signs[j] = 0 }                                        // row 0: all −1
            if rows > 2 { for j in 0..<columns { signs[2 * columns + j] = 1 } }            // row 2: all +1
            var a = (0..<rows).map { _ in rng.float(in: 0...1) }, b = (0..<rows).map { _ in rng.float(in: -1...1) }
            if rows > 1 { a[1] = 0; b[1] = 0 }
            // Extreme scales with ordinary x (with x near 1e30 they would overflow any sum order).
            if rows > 3 && variant != 1 { a[3] = 1e30; b[3] = -1e-30 }
            if rows > 4 && variant != 1 { a[4] = 1e-30; b[4] = 1e20 }
            let magnitude: Float = variant == 1 ? 1e30 / Float(columns) : 1
            let x: [Float] = variant == 2 ? [Float](repeating: 0, count: columns)
                : (0..<columns).map { _ in rng.float(in: -1...1) * magnitude }
            let words = BinaryKernels.wordsPerRow(columns)
            let packed = BinaryKernels.packBits(rows: rows, columns: columns) { r, c in signs[r * columns + c] != 0 }
            let padded = x + [Float](repeating: 0, count: 64 * words - columns)
            let xSum = x.reduce(0, +)
            var want = [Float](repeating: 0, count: rows)
            BinaryKernels.gemv(signs: packed, mask: nil, wordsPerRow: words, rows: rows, x: padded, xSum: xSum, a: a, b: b,
                               y: &want, rest: nil, reference: true)
            let layout = BinaryKernels.SignPlaneLayout(signs: signs, rows: rows, columns: columns)
            #expect(layout.planes.count == ((rows + 15) / 16) * ((columns + 31) / 32) * 8 + 8)
            // The row-major words back from the planes (the prefill tiles' copy), exactly, for
            // every row range shape: whole, from inside a block, one row.
            for range in [0..<rows, (rows / 3)..<rows, (rows - 1)..<rows] {
                for reference in [false, true] {
                    var back = [UInt64](repeating: 0xDEAD, count: range.count * words)
                    layout.unpackWords(range, wordsPerRow: words, into: &back, reference: reference)
                    #expect(back == Array(packed[(range.lowerBound * words)..<(range.upperBound * words)]),
                            "\(rows)×\(columns) rows \(range) reference \(reference)")
                }
            }
            var fast = [Float](repeating: .nan, count: rows), ref = fast
            BinaryKernels.gemvPlanes(layout, x: x, a: a, b: b, y: &fast)
            BinaryKernels.gemvPlanes(layout, x: x, a: a, b: b, y: &ref, reference: true)
            let absSum = x.reduce(Float(0)) { $0 + abs($1) }
            for o in 0..<rows {
                #expect(fast[o].bitPattern == ref[o].bitPattern, "\(rows)×\(columns) v\(variant) row \(o): \(fast[o]) vs \(ref[o])")
                let bound = 4e-6 * (abs(a[o]) * 3 * absSum + abs(b[o]) * absSum) + 1e-30
                #expect(abs(ref[o] - want[o]) <= bound, "\(rows)×\(columns) v\(variant) row \(o): \(ref[o]) vs \(want[o])")
            }
            // Row 0 (all −1) by hand: y = −a·Σx + b·Σx.
            if variant == 0 { #expect(abs(ref[0] - (b[0] - a[0]) * xSum) <= 1e-5 * (absSum + 1)) }
        }
    }

    /// The int8-activation sign GEMV (`gemvSignInt8`): its AVX-512 VNNI kernel (through the pool)
    /// and scalar twins agree bit for bit, and both match the float GEMV on the gathered
    /// x̃ = r2 ∘ x within the int8 rounding bound of `binary_kernels.h` (|a|·nb·scale/2): odd sizes
    /// (columns off the 64-column words, rows off the 4-row groups, one row, one column),
    /// SmolLM2's q (460 of 576 binarized) and down (1228 of 1536) shapes, all −1 / all +1 rows,
    /// zero and extreme scales, zero r2, x = 0, extreme x and a lone outlier. The lookup-table
    /// kernel on the re-laid words (`repackSignTables`; rows off and on the 16-row blocks, columns
    /// off the 4- and 32-column groups) gives the same bits, and the words unpack back.
    @Test(arguments: [(37, 100, 80), (1, 1, 1), (1, 64, 64), (5, 70, 65), (6, 576, 460), (9, 1536, 1228), (17, 33, 31),
                      (48, 576, 460), (192, 576, 460), (35, 1536, 1229), (16, 3, 2), (33, 130, 127)])
    func signInt8MatchesTwinAndFloat(rows: Int, inputs: Int, binarized: Int) {
        var rng = SeededGenerator(seed: 101 + UInt64(rows * 10_000 + inputs))
        let columns = Array((0..<inputs).shuffled(using: &rng).prefix(binarized))
        let nb = columns.count, words = BinaryKernels.wordsPerRow(nb)
        for variant in 0..<4 {
            var signs = (0..<(rows * nb)).map { _ in UInt8(rng.next() % 2) }
            for c in 0..<nb { signs[c] = 0 }                                           // row 0: all −1
            if rows > 2 { for c in 0..<nb { signs[2 * nb + c] = 1 } }                  // row 2: all +1
            var a = (0..<rows).map { _ in rng.float(in: 0...1) }, b = (0..<rows).map { _ in rng.float(in: -1...1) }
            if rows > 1 { a[1] = 0; b[1] = 0 }
            if rows > 3 && variant != 2 { a[3] = 1e30; b[3] = -1e-30 }
            if rows > 4 && variant != 2 { a[4] = 1e-30; b[4] = 1e20 }
            var r2 = (0..<nb).map { _ in rng.float(in: 0.5...1.5) }
            if nb > 3 { r2[nb / 2] = 0 }
            // 0: ordinary x; 1: x = 0; 2: extreme magnitudes; 3: one ±1e4 outlier.
            let magnitude: Float = variant == 2 ? 1e30 / Float(inputs) : 1
            var x = (0..<inputs).map { _ in variant == 1 ? 0 : rng.float(in: -1...1) * magnitude }
            if variant == 3 { x[columns[0]] = -1e4 }
            let packed = BinaryKernels.packBits(rows: rows, columns: nb) { r, c in signs[r * nb + c] != 0 }
            var fast = [Float](repeating: .nan, count: rows), ref = fast, want = fast
            BinaryKernels.gemvSignInt8(signs: packed, wordsPerRow: words, rows: rows, x: x, columns: columns, columnScale: r2,
                                       count: nb, a: a, b: b, y: &fast)
            BinaryKernels.gemvSignInt8(signs: packed, wordsPerRow: words, rows: rows, x: x, columns: columns, columnScale: r2,
                                       count: nb, a: a, b: b, y: &ref, reference: true)
            var relaid = packed
            #expect(BinaryKernels.repackSignTables(&relaid, rows: rows, wordsPerRow: words))
            #expect(rows < 16 || relaid != packed)
            var unpacked = [UInt64](repeating: 0, count: packed.count)
            BinaryKernels.unpackSignTables(relaid, rows: rows, wordsPerRow: words, range: 0..<rows, into: &unpacked)
            #expect(unpacked == packed, "\(rows)×\(nb): table layout round trip")
            if rows > 2 {
                var middle = [UInt64](repeating: 0, count: 2 * words)
                BinaryKernels.unpackSignTables(relaid, rows: rows, wordsPerRow: words, range: rows - 2..<rows, into: &middle)
                #expect(middle[...] == packed[(rows - 2) * words..<rows * words])
            }
            var table = [Float](repeating: .nan, count: rows), tableRef = table
            BinaryKernels.gemvSignInt8(signs: relaid, wordsPerRow: words, rows: rows, x: x, columns: columns, columnScale: r2,
                                       count: nb, a: a, b: b, y: &table, tables: true)
            BinaryKernels.gemvSignInt8(signs: relaid, wordsPerRow: words, rows: rows, x: x, columns: columns, columnScale: r2,
                                       count: nb, a: a, b: b, y: &tableRef, tables: true, reference: true)
            #expect(table.map(\.bitPattern) == ref.map(\.bitPattern), "\(rows)×\(nb) v\(variant): lookup tables vs twin")
            #expect(tableRef.map(\.bitPattern) == ref.map(\.bitPattern), "\(rows)×\(nb) v\(variant): table twin vs twin")
            let gathered = (0..<nb).map { r2[$0] * x[columns[$0]] }
            let padded = gathered + [Float](repeating: 0, count: 64 * words - nb)
            BinaryKernels.gemv(signs: packed, mask: nil, wordsPerRow: words, rows: rows, x: padded,
                               xSum: gathered.reduce(0, +), a: a, b: b, y: &want, rest: nil, reference: true)
            let scale = gathered.reduce(Float(0)) { max($0, abs($1)) } / 127
            let absSum = gathered.reduce(Float(0)) { $0 + abs($1) }
            for o in 0..<rows {
                #expect(fast[o].bitPattern == ref[o].bitPattern, "\(rows)×\(nb) v\(variant) row \(o): \(fast[o]) vs \(ref[o])")
                let bound = abs(a[o]) * (Float(nb) * scale / 2 * 1.001 + 4e-6 * absSum) + 4e-6 * abs(b[o]) * absSum + 1e-30
                #expect(abs(ref[o] - want[o]) <= bound, "\(rows)×\(nb) v\(variant) row \(o): \(ref[o]) vs \(want[o])")
            }
            if variant == 1 { #expect(fast.allSatisfy { $0 == 0 }) }
        }
    }

    /// The salient columns' ≤ 4-bit codes on the u4 plane-table GEMV (AVX-512) against the
    /// nibble GEMV they replace at decode, on SmolLM2's real layer shapes (q/o, k/v, gate/up,
    /// down with PTQ1.61's 20 % salient columns) and small odd ones (salient counts off the
    /// 32-column chunks, rows off the 16-row blocks, one salient column, all salient, 2-bit
    /// codes): equal up to float summation order, both close to the dense double product.
    @Test(arguments: [(576, 576, 116, 4), (192, 576, 116, 4), (1536, 576, 116, 4), (576, 1536, 308, 4),
                      (5, 33, 7, 4), (17, 70, 1, 4), (3, 40, 40, 4), (19, 100, 37, 2)])
    func salientPlanesMatchNibbleGEMV(rows: Int, columns: Int, salient: Int, bits: Int) throws {
        // Planes are held only while the bf16 salient GEMV is off at load (bf16SalientColumns covers it).
        try LowBit.$bf16DecodeOverride.withValue(false) {
            var rng = SeededGenerator(seed: 31 + UInt64(rows * 10_000 + columns))
            var mask = [Bool](repeating: false, count: columns)
            for j in (0..<columns).shuffled(using: &rng).prefix(salient) { mask[j] = true }
            let ns = salient, nb = columns - salient, top = (1 << bits) - 1
            let w = BinaryWeight(
                rows: rows, columns: columns, maskKind: .columns, salientMask: mask, salientBits: bits,
                salientCodes: (0..<(rows * ns)).map { _ in UInt8(Int(rng.next() % UInt64(top + 1))) },
                salientScale: (0..<rows).map { o in o == 0 ? 0 : BinaryWeight.half(rng.float(in: 0.001...0.01)) },
                salientZero: (0..<rows).map { _ in UInt8(Int(rng.next() % UInt64(top + 1))) },
                signs: (0..<(rows * nb)).map { _ in UInt8(rng.next() % 2) },
                scale: (0..<rows).map { _ in BinaryWeight.half(rng.float(in: 0.01...0.05)) },
                offset: (0..<rows).map { _ in BinaryWeight.half(rng.float(in: -0.01...0.01)) },
                columnScale: (0..<nb).map { _ in BinaryWeight.half(rng.float(in: 0.7...1.3)) })
            try Self.linear(w, bias: nil).validate()
            let bias = (0..<rows).map { Float($0 % 7) * 0.01 }
            let layer = try BinaryLinear(Self.linear(w, bias: bias))
            #expect(layer.hasSalientPlanes == LowBit.planeTablesSupported)
            #expect(layer.kernelDescription.contains("on plane tables") == LowBit.planeTablesSupported)
            let dense = w.dequantizedReference()
            for trial in 0..<2 {
                // Trial 1: one large salient activation (an outlier channel, as PTQ1.61 selects them).
                var x = (0..<columns).map { _ in rng.float(in: -2...2) }
                if trial == 1, let j = mask.firstIndex(of: true) { x[j] = 300 }
                var fast = [Float](repeating: .nan, count: rows), nibble = fast
                x.withUnsafeBufferPointer { xp in
                    fast.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: 1, into: $0.baseAddress!) }
                    nibble.withUnsafeMutableBufferPointer { layer.forwardNibbleSalient(xp.baseAddress!, into: $0.baseAddress!) }
                }
                let want = Self.product(dense, rows: rows, columns: columns, x: x, xRows: 1, bias: bias)
                let salientAbs = (0..<columns).filter { mask[$0] }.reduce(Float(0)) { $0 + abs(x[$1]) }
                let allAbs = x.reduce(Float(0)) { $0 + abs($1) }
                for o in 0..<rows {
                    // Only the salient part's summation order differs: Δ·(Σ|x_s|·(top + z)) times a few ε,
                    // plus one rounding of the sum into y.
                    let d = abs(w.salientScale[o]), z = Float(w.salientZero[o])
                    let bound = 4e-6 * d * salientAbs * (Float(top) + z) + 2 * abs(nibble[o]).ulp + 1e-30
                    #expect(abs(fast[o] - nibble[o]) <= bound,
                            "\(rows)×\(columns)/\(ns) t\(trial) row \(o): \(fast[o]) vs \(nibble[o])")
                    let loose = 1e-5 * (allAbs * 0.1 + d * salientAbs * (Float(top) + z)) + 1e-6
                    #expect(abs(fast[o] - want[o]) <= loose, "\(rows)×\(columns)/\(ns) row \(o) vs dense: \(fast[o]) vs \(want[o])")
                }
                // Row 0 has Δ = 0: its salient part adds nothing on either path.
                #expect(fast[0].bitPattern == nibble[0].bitPattern)
            }
        }
    }

    /// A column-masked layer with the given salient columns (4-bit codes), random signs and
    /// scales; `zeroRows` get a = b = Δ = 0.
    static func columnMasked(rows: Int, columns: Int, salient: [Int], zeroRows: Set<Int> = [],
                             rng: inout SeededGenerator) -> BinaryWeight {
        var mask = [Bool](repeating: false, count: columns)
        for j in salient { mask[j] = true }
        let ns = salient.count, nb = columns - ns
        return BinaryWeight(
            rows: rows, columns: columns, maskKind: .columns, salientMask: mask, salientBits: 4,
            salientCodes: (0..<(rows * ns)).map { _ in UInt8(rng.next() % 16) },
            salientScale: (0..<rows).map { o in zeroRows.contains(o) ? 0 : BinaryWeight.half(rng.float(in: 0.001...0.01)) },
            salientZero: (0..<rows).map { _ in UInt8(rng.next() % 16) },
            signs: (0..<(rows * nb)).map { _ in UInt8(rng.next() % 2) },
            scale: (0..<rows).map { o in zeroRows.contains(o) ? 0 : BinaryWeight.half(rng.float(in: 0.01...0.05)) },
            offset: (0..<rows).map { o in zeroRows.contains(o) ? 0 : BinaryWeight.half(rng.float(in: -0.01...0.01)) },
            columnScale: (0..<nb).map { _ in BinaryWeight.half(rng.float(in: 0.7...1.3)) })
    }

    /// The salient columns' 4-bit codes on the bf16 salient GEMV (its layout kept at load while
    /// `bf16Decode` is on, AVX512_BF16): against the dense double product with x_s rounded to
    /// bf16, and against the same layer with `bf16Decode` off (the float32 nibble GEMV; the sign
    /// part is the same code path, so the two differ by the salient part's rounding of x_s only):
    /// SmolLM2's q/k/v, gate/up and down shapes, odd sizes (salient counts off the 64-column
    /// blocks, rows off the 16-row blocks), one salient column, none, all, zero-scale rows, extreme
    /// and outlier x.
    @Test(arguments: [(576, 576, 116), (192, 576, 116), (576, 1536, 308), (5, 33, 7), (17, 70, 1), (33, 97, 0),
                      (1, 5, 2), (40, 64, 64), (9, 130, 65)])
    func bf16SalientColumns(rows: Int, columns: Int, salient: Int) throws {
        // Both sign layouts: the sign-plane tables (default) and the int8 sign GEMV's words.
        // (and those words re-laid for the lookup-table kernel, or kept row-major).
        for (int8Signs, tables) in [(false, false), (true, false), (true, true)] {
            try BinaryKernels.$signInt8Override.withValue(int8Signs) {
                try BinaryKernels.$signTableOverride.withValue(tables) {
                    try bf16SalientColumnsCase(rows: rows, columns: columns, salient: salient)
                }
            }
        }
    }

    func bf16SalientColumnsCase(rows: Int, columns: Int, salient: Int) throws {
        var rng = SeededGenerator(seed: 77 + UInt64(rows * 10_000 + columns))
        let cols = Array((0..<columns).shuffled(using: &rng).prefix(salient))
        let w = Self.columnMasked(rows: rows, columns: columns, salient: cols, zeroRows: [0, rows / 2], rng: &rng)
        try Self.linear(w, bias: nil).validate()
        let bias = (0..<rows).map { Float($0 % 5) * 0.02 }
        let layer = try LowBit.$bf16DecodeOverride.withValue(true) { try BinaryLinear(Self.linear(w, bias: bias)) }
        let inBF16 = salient > 0 && BinaryKernels.salientBF16Supported
        #expect(layer.hasSalientBF16 == inBF16)
        #expect(layer.hasSignInt8 == (BinaryKernels.decodesSignsInInt8 && BinaryKernels.signInt8Supported && salient < columns))
        #expect(layer.kernelDescription.contains("lookup tables") == (layer.hasSignInt8 && BinaryKernels.decodesSignsWithTables))
        #expect(layer.hasSalientPlanes == (salient > 0 && LowBit.planeTablesSupported && !inBF16))
        #expect(layer.kernelDescription.contains("on the bf16 GEMV") == inBF16)
        let dense = w.dequantizedReference()
        for variant in 0..<3 {
            // 0: ordinary x; 1: extreme magnitudes (1e30 / columns, finite sums); 2: a ±1e4 outlier.
            let magnitude: Float = variant == 1 ? 1e30 / Float(columns) : 1
            var x = (0..<columns).map { _ in rng.float(in: -2...2) * magnitude }
            if variant == 2 { x[columns / 2] = 1e4; x[0] = -1e4 }
            var fast = [Float](repeating: .nan, count: rows), float32 = fast
            x.withUnsafeBufferPointer { xp in
                LowBit.$bf16DecodeOverride.withValue(true) {
                    fast.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: 1, into: $0.baseAddress!) }
                }
                LowBit.$bf16DecodeOverride.withValue(false) {
                    float32.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: 1, into: $0.baseAddress!) }
                }
            }
            // x with the salient columns rounded to bf16 (round to nearest even), as the kernel reads them.
            var xr = x
            if inBF16 { for j in cols { xr[j] = Self.bf16(x[j]) } }
            let want = Self.product(dense, rows: rows, columns: columns, x: xr, xRows: 1, bias: bias)
            let binaryAbs = (0..<columns).filter { !cols.contains($0) }.reduce(Float(0)) { $0 + abs(x[$1]) }
            let salientAbs = cols.reduce(Float(0)) { $0 + abs(x[$1]) }
            let terms = Float(salient / 8 + 9) * 0x1p-24 * 1.001  // binary_kernels.h's bound
            // The int8 sign GEMV (where it runs): x̃ = r2 ∘ x rounded to int8, |a|·nb·scale/2.
            let binary = (0..<columns).filter { !cols.contains($0) }
            let r2 = w.columnScale ?? [Float](repeating: 1, count: binary.count)
            let int8Scale = layer.hasSignInt8
                ? binary.enumerated().reduce(Float(0)) { max($0, abs(r2[$1.offset] * x[$1.element])) } / 127 : 0
            for o in 0..<rows {
                // Sign part: float32 sums of ≤ 0.05·1.3·|x| terms; salient part: the bf16 GEMV's bound
                // (offset 128 included) plus the float32 kernels' few ε.
                let d = abs(w.salientScale[o])
                let salientBound = d * salientAbs * (terms * (128 + 15 + 128 + 15) + 4e-6 * 30)
                let int8Bound = abs(w.scale[o]) * Float(binary.count) * int8Scale / 2 * 1.001
                let tolerance = 1e-5 * 0.07 * binaryAbs + salientBound + int8Bound + 2 * abs(want[o]).ulp + 1e-30
                #expect(abs(fast[o] - want[o]) <= tolerance,
                        "\(rows)×\(columns)/\(salient) v\(variant) row \(o): \(fast[o]) vs \(want[o])")
                // bf16 vs float32 salient part: at most the rounding of x_s, 2⁻⁸·Σ|Δ(q − z)x_s|, plus the above.
                let rounding = inBF16 ? 0x1p-8 * d * 15 * salientAbs : 0
                #expect(abs(fast[o] - float32[o]) <= rounding + 2 * tolerance,
                        "\(rows)×\(columns)/\(salient) v\(variant) row \(o) vs float32: \(fast[o]) vs \(float32[o])")
            }
            // Zero-scale rows: a = b = Δ = 0 leave only the bias.
            #expect(fast[0] == bias[0] && fast[rows / 2] == bias[rows / 2])
            if !inBF16 && !layer.hasSignInt8 { #expect(fast.map(\.bitPattern) == float32.map(\.bitPattern)) }
        }
    }

    /// The bf16 salient GEMV's AVX512_BF16 kernel (through the pool) against its scalar twin,
    /// bit for bit, and its layout's nibble rows against `LowBit.packNibbles`: SmolLM2's shapes
    /// and odd ones (rows off the 16-row blocks, columns off the 8-column chunks), zero scales,
    /// codes 0 and 15 only, extreme and outlier x.
    @Test(arguments: [(576, 116), (192, 116), (1536, 308), (5, 7), (17, 1), (33, 9), (1, 2), (40, 64), (16, 8)])
    func salientBF16KernelMatchesTwin(rows: Int, columns: Int) {
        var rng = SeededGenerator(seed: 555 + UInt64(rows * 1000 + columns))
        for variant in 0..<3 {
            let codes = (0..<(rows * columns)).map { _ in variant == 1 ? UInt8(rng.next() % 2) * 15 : UInt8(rng.next() % 16) }
            let layout = BinaryKernels.SalientBF16Layout(codes: codes, rows: rows, columns: columns)
            let scales = (0..<rows).map { o in o % 7 == 3 ? 0 : rng.float(in: -0.02...0.02) }
            let zeros = (0..<rows).map { _ in Float(rng.next() % 16) }
            let magnitude: Float = variant == 2 ? 1e30 / Float(columns) : 1
            var x = (0..<columns).map { _ in rng.float(in: -3...3) * magnitude }
            if variant == 1 { x[columns / 2] = 1e4 }
            var fast = [Float](repeating: .nan, count: rows), twin = fast
            fast.withUnsafeMutableBufferPointer {
                BinaryKernels.gemvSalientBF16(layout, x: x, scales: scales, zeros: zeros, y: $0.baseAddress!)
            }
            twin.withUnsafeMutableBufferPointer {
                BinaryKernels.gemvSalientBF16(layout, x: x, scales: scales, zeros: zeros, y: $0.baseAddress!, reference: true)
            }
            #expect(fast.map(\.bitPattern) == twin.map(\.bitPattern), "\(rows)×\(columns) v\(variant)")
            for o in 0..<rows where scales[o] == 0 { #expect(fast[o] == 0) }
            // accumulate: y + result with the bits of the separate add, kernel and twin.
            let base = (0..<rows).map { _ in rng.float(in: -1...1) }
            var added = base, addedTwin = base
            added.withUnsafeMutableBufferPointer {
                BinaryKernels.gemvSalientBF16(layout, x: x, scales: scales, zeros: zeros, y: $0.baseAddress!, accumulate: true)
            }
            addedTwin.withUnsafeMutableBufferPointer {
                BinaryKernels.gemvSalientBF16(layout, x: x, scales: scales, zeros: zeros, y: $0.baseAddress!, accumulate: true,
                                              reference: true)
            }
            let want = zip(base, fast).map { $0 + $1 }
            #expect(added.map(\.bitPattern) == want.map(\.bitPattern), "\(rows)×\(columns) v\(variant) accumulate")
            #expect(addedTwin.map(\.bitPattern) == want.map(\.bitPattern), "\(rows)×\(columns) v\(variant) accumulate twin")
            // Close to the double product on the rounded x (the bound of binary_kernels.h).
            let xr = x.map { Self.bf16($0) }
            for o in 0..<rows {
                var exact = 0.0, m = 0.0
                for j in 0..<columns {
                    let q = Double(codes[o * columns + j]), v = Double(xr[j])
                    exact += (q - Double(zeros[o])) * v
                    m += (256 + q + Double(zeros[o])) * abs(v)
                }
                let bound = Double(columns / 8 + 9) * 0x1p-24 * 1.001 * abs(Double(scales[o])) * m
                #expect(abs(Double(fast[o]) - Double(scales[o]) * exact) <= bound + 1e-30, "\(rows)×\(columns) row \(o)")
            }
            let stride = LowBit.nibbleRowBytes(columns)
            var unpacked = [UInt8](repeating: 0xAA, count: rows * stride)
            unpacked.withUnsafeMutableBufferPointer { layout.unpackNibbles(0..<rows, stride: stride, into: $0.baseAddress!) }
            #expect(unpacked == LowBit.packNibbles(codes, rows: rows, columns: columns))
        }
    }

    /// `v` rounded to bf16 (nearest, ties to even), as a float; finite normal inputs.
    static func bf16(_ v: Float) -> Float {
        let bits = v.bitPattern
        return Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
    }

    /// Element masks with 8-bit salient codes (PB-LLM-style) through the same kernel.
    @Test(arguments: [(6, 100), (1, 64), (9, 131)])
    func elementMaskKernel(rows: Int, columns: Int) throws {
        var rng = SeededGenerator(seed: UInt64(rows * columns))
        let count = rows * columns
        let mask = (0..<count).map { _ in rng.next() % 10 == 0 }
        let salient = mask.filter { $0 }.count
        let w = BinaryWeight(
            rows: rows, columns: columns, maskKind: .elements, salientMask: mask, salientBits: 8,
            salientCodes: (0..<salient).map { _ in UInt8(rng.next() % 256) },
            salientScale: (0..<rows).map { _ in BinaryWeight.half(rng.float(in: 0.001...0.01)) },
            salientZero: (0..<rows).map { _ in UInt8(rng.next() % 256) },
            signs: (0..<(count - salient)).map { _ in UInt8(rng.next() % 2) },
            scale: (0..<rows).map { _ in BinaryWeight.half(rng.float(in: 0.01...0.05)) },
            offset: (0..<rows).map { _ in BinaryWeight.half(rng.float(in: -0.01...0.01)) }, columnScale: nil)
        try Self.linear(w, bias: nil).validate()
        try checkKernel(w, bias: nil, seed: 3)
    }

    func checkKernel(_ b: BinaryWeight, bias: [Float]?, seed: UInt64) throws {
        // float32 decode GEMVs throughout (the bf16 salient GEMV has its own test, bf16SalientColumns).
        try LowBit.$bf16DecodeOverride.withValue(false) { try checkFloat32Kernel(b, bias: bias, seed: seed) }
    }

    func checkFloat32Kernel(_ b: BinaryWeight, bias: [Float]?, seed: UInt64) throws {
        let rows = b.rows, columns = b.columns
        let layer = try BinaryLinear(Self.linear(b, bias: bias))
        let dense = b.dequantizedReference()
        var rng = SeededGenerator(seed: seed)
        for xRows in [1, 3, 12] {
            let x = (0..<(xRows * columns)).map { _ in rng.float(in: -2...2) }
            var y = [Float](repeating: 0, count: xRows * rows)
            // float32 prefill tiles: the decoded format to float rounding (bf16 checked below).
            LowBit.$bf16PrefillOverride.withValue(false) {
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: xRows, into: $0.baseAddress!) }
                }
            }
            let want = Self.product(dense, rows: rows, columns: columns, x: x, xRows: xRows, bias: bias)
            if xRows > 8 {
                // The default bf16 prefill: within the bf16 product bound of the reference dequantizer.
                var yb = [Float](repeating: .nan, count: xRows * rows)
                LowBit.$bf16PrefillOverride.withValue(true) {
                    x.withUnsafeBufferPointer { xp in
                        yb.withUnsafeMutableBufferPointer { layer.forward(xp.baseAddress!, rows: xRows, into: $0.baseAddress!) }
                    }
                }
                let failures = bf16PrefillViolations(y: yb, x: x, rows: xRows, weight: dense, out: rows, k: columns, bias: bias)
                #expect(failures.isEmpty, "\(rows)×\(columns) bf16 prefill: \(failures.prefix(3))")
            }
            let scale = (want.map(abs).max() ?? 0) + 1e-3
            for i in want.indices {
                #expect(abs(y[i] - want[i]) <= 1e-4 * scale, "\(rows)×\(columns) \(xRows) rows, output \(i): \(y[i]) vs \(want[i])")
            }
            if xRows == 1 {
                var yRef = [Float](repeating: 0, count: rows)
                x.withUnsafeBufferPointer { xp in
                    yRef.withUnsafeMutableBufferPointer { layer.forwardReference(xp.baseAddress!, into: $0.baseAddress!) }
                }
                for i in want.indices {
                    #expect(abs(yRef[i] - want[i]) <= 1e-4 * scale)
                    #expect(abs(yRef[i] - y[i]) <= 1e-5 * scale, "fast vs _ref, output \(i)")
                }
            }
        }
    }

    /// The C kernel alone: the AVX-512 path (8 rows per pass), the AVX2 path and the scalar twin
    /// sum in the same order, so they agree bit for bit on random bits, with and without a mask,
    /// for row counts on and off the 8-row blocks (and, with the pool, ranges starting inside one).
    @Test(arguments: [37, 8, 3])
    func fastKernelEqualsReference(rows: Int) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        var rng = SeededGenerator(seed: 99 + UInt64(rows))
        let words = 5
        let signs = (0..<(rows * words)).map { _ in rng.next() }
        let mask = (0..<(rows * words)).map { _ in rng.next() & rng.next() }
        let x = (0..<(64 * words)).map { _ in rng.float(in: -1...1) }
        let a = (0..<rows).map { _ in rng.float(in: 0...1) }, b = (0..<rows).map { _ in rng.float(in: -1...1) }
        for useMask in [false, true] {
            var ref = [Float](repeating: 0, count: rows), restRef = ref
            mask.withUnsafeBufferPointer { m in
                BinaryKernels.gemv(signs: signs, mask: useMask ? m.baseAddress : nil, wordsPerRow: words, rows: rows, x: x,
                                   xSum: 0.5, a: a, b: b, y: &ref, rest: &restRef, reference: true)
            }
            for vnni in [true, false] {
                TokenKernels.setVNNIEnabled(vnni)
                var fast = [Float](repeating: 0, count: rows), restFast = fast
                mask.withUnsafeBufferPointer { m in
                    BinaryKernels.gemv(signs: signs, mask: useMask ? m.baseAddress : nil, wordsPerRow: words, rows: rows,
                                       x: x, xSum: 0.5, a: a, b: b, y: &fast, rest: &restFast)
                }
                for o in 0..<rows {
                    #expect(fast[o].bitPattern == ref[o].bitPattern, "mask \(useMask) vnni \(vnni) row \(o): \(fast[o]) vs \(ref[o])")
                    if useMask { #expect(restFast[o].bitPattern == restRef[o].bitPattern) }
                }
            }
            TokenKernels.setVNNIEnabled(true)
            // Row 0 by hand.
            var acc: Float = 0, n: Float = 0
            for k in 0..<(64 * words) {
                if useMask && (mask[k >> 6] >> UInt64(k & 63)) & 1 == 1 { continue }
                acc += (signs[k >> 6] >> UInt64(k & 63)) & 1 == 1 ? x[k] : -x[k]
                n += x[k]
            }
            #expect(abs(ref[0] - (a[0] * acc + b[0] * (useMask ? n : 0.5))) <= 1e-4)
        }
    }
}
