import Foundation
import Kernels
import Models
import PTQCore

/// A partially binarized linear layer (`BinaryWeight`: PTQ1.61, PB-LLM-style, plain
/// binarization) with float activations, computed from the packed bits.
///
/// Column masks (PTQ1.61): per activation row, x̃ = r2 ∘ x over the binarized columns (gathered,
/// zero-padded to whole 64-bit words) and Σx̃ are formed once; then
/// `y = a ∘ (S x̃) + b · Σx̃` runs on the sign bits (`BinaryKernels`; where the CPU has AVX-512
/// VNNI + BW, `BinaryKernels.signInt8Decode` is on at load (on by default; `PTQ_SIGN_I8=0` turns it off) and
/// the bf16 decode kernels are on, `gemvSignInt8` gathers x̃ and rounds it to int8 itself; else
/// the float sign-plane tables), and the salient columns'
/// 4-bit (or 8-bit) codes run the existing weight-only integer GEMV on the gathered salient
/// inputs: `Δ ∘ (Q x_s − z · Σx_s)` (≤ 4-bit codes on AVX-512: the u4 plane-table GEMV; with
/// AVX512_BF16 and `LowBit.bf16Decode` on at load, the bf16 salient GEMV, which rounds x_s to
/// bf16 — `PTQ_DECODE_BF16=0` keeps the float32 planes).
///
/// Element masks (PB-LLM-style): the sign bits and the mask are laid out over all columns; the
/// kernel skips masked lanes and returns each row's Σ over its binarized inputs, and the salient
/// codes (CSR: per-row start, column, code) add `Δ ∘ (Σ q·x − z · Σ_salient x)`.
///
/// Outlier columns (format version 2; column masks) add `Σ_t v[o, t] · x[j_t]` over their few
/// float16 weights; their salient codes are the zero point, so the salient GEMV adds 0 there.
///
/// One activation row runs the GEMVs; more rows dequantize tiles of output rows into scratch
/// and multiply them with sgemm (as the other weight-only layers do), so prefill decodes each
/// tile's bits once for all rows. Where the sign bits (and ≤ 4-bit salient codes) are held as
/// bit planes for the table-lookup GEMVs, the planes are their only copy: each prefill tile
/// unpacks its rows' words and nibbles from them into scratch first (eighth speed pass; until
/// then the row-major words and nibbles stayed beside the planes).
public final class BinaryLinear: LinearOp {
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let maskKind: BinaryWeight.MaskKind
    public let salientBits: Int
    public let bias: [Float]?

    /// Sign bits, `outFeatures × wordsPerRow` words; bit c of a row is binarized column c
    /// (column masks: c counts binarized columns only; element masks: all columns). Empty where
    /// `signPlanes` holds them.
    private let signWords: [UInt64]
    /// Element masks: salient flags in the same layout; nil for column masks.
    private let maskWords: [UInt64]?
    private let wordsPerRow: Int
    private let scale: [Float], offset: [Float]
    // Column masks.
    private let binaryColumns: [Int]
    private let salientColumns: [Int]
    private let columnScale: [Float]
    /// Salient codes `[outFeatures, salientColumns.count]`: nibbles (≤ 4 bits) or bytes. Empty
    /// where `salientPlanes` holds them.
    private let salientCodes: [UInt8]
    private let salientFormat: LowBit.CodeFormat
    // Element masks (CSR over rows).
    private let rowStart: [Int]
    private let salientColumnIndex: [Int32]
    private let salientScale: [Float], salientZero: [Float]
    /// Salient columns kept as float weights and their values `[outFeatures, outlierColumns.count]`.
    private let outlierColumns: [Int], outlierValues: [Float]
    /// Column masks, for prefill tiles (`BinaryKernels.decodeRows`): the binarized columns as bits
    /// over the natural columns, and r2 at those columns (0 elsewhere).
    private let naturalBinaryMask: [UInt64]
    private let naturalColumnScale: [Float]
    /// Column masks on AVX-512: the sign bits as one bit plane for the table-lookup decode GEMV
    /// (`BinaryKernels.gemvPlanes`), their only copy (prefill tiles unpack rows from it).
    private let signPlanes: BinaryKernels.SignPlaneLayout?
    /// Column masks where the CPU has the int8 sign GEMV and `BinaryKernels.decodesSignsInInt8` was on
    /// at load: `signWords` are held row-major for `BinaryKernels.gemvSignInt8` (no sign planes).
    private let signInt8: Bool
    /// `signInt8` layers where `BinaryKernels.decodesSignsWithTables` was on at load: `signWords`
    /// are re-laid in place for the lookup-table sign GEMV (`BinaryKernels.repackSignTables`);
    /// row-major readers unpack rows from them.
    private let signTables: Bool
    /// Column masks with ≤ 4-bit salient codes on AVX-512: the salient codes as bit planes for
    /// the u4 table-lookup GEMV (`LowBit.gemvPlanes`, one group per row: the salient part has one
    /// Δ and z per row), their only copy (prefill tiles unpack nibble rows from it).
    private let salientPlanes: LowBit.PlaneLayout?
    /// Column masks with ≤ 4-bit salient codes where the CPU has AVX512_BF16 and
    /// `LowBit.bf16Decode` is on at load: the codes for the bf16 salient GEMV
    /// (`BinaryKernels.gemvSalientBF16`), their only copy (then `salientPlanes` is nil).
    private let salientBF16: BinaryKernels.SalientBF16Layout?

    /// Bytes held for this layer at run time (bits, codes, per-row and per-column parameters).
    public var storageBytes: Int {
        8 * (signWords.count + (maskWords?.count ?? 0)) + salientCodes.count + 4 * salientColumnIndex.count
            + 4 * (scale.count + offset.count + columnScale.count + salientScale.count + salientZero.count
                   + (bias?.count ?? 0) + outlierValues.count) + 8 * outlierColumns.count + (signPlanes?.bytes ?? 0)
            + (salientPlanes?.bytes ?? 0) + (salientBF16?.bytes ?? 0)
    }

    /// Bytes a decoded token reads from this layer (the bench's bandwidth bound): with salient
    /// planes, not the per-row Δ and z (which the planes hold a copy of and which `storageBytes`
    /// counts once per copy).
    public var weightBytes: Int {
        storageBytes - (salientPlanes == nil ? 0 : 4 * (salientScale.count + salientZero.count))
    }

    /// What runs, for reports: `binary 1-bit + 4-bit salient columns (20.1 %)` (`binary 1-bit
    /// sign-plane tables + …` where the decode GEMV runs on sign planes, `… salient columns on
    /// plane tables (20.1 %)` where the salient codes do too, `… on the bf16 GEMV` where they
    /// decode with `ck_gemv_salient_bf16`).
    public var kernelDescription: String {
        let share = maskKind == .columns
            ? Double(salientColumns.count) / Double(max(1, inFeatures))
            : Double(salientColumnIndex.count) / Double(max(1, inFeatures * outFeatures))
        let outliers = outlierColumns.isEmpty ? "" : " + \(outlierColumns.count) float16 columns"
        let signs = signPlanes != nil ? "binary 1-bit sign-plane tables"
            : signTables ? "binary 1-bit int8-x lookup tables" : signInt8 ? "binary 1-bit int8-x VNNI" : "binary 1-bit"
        let salientKernel = salientPlanes != nil ? " on plane tables" : salientBF16 != nil ? " on the bf16 GEMV" : ""
        return "\(signs) + \(salientBits)-bit salient \(maskKind.rawValue)\(salientKernel) (\(String(format: "%.1f", 100 * share)) %)\(outliers)"
    }

    /// Converts a binary `QuantizedLinear` to run-time storage; throws a `PTQError` naming the
    /// layer for inconsistent sizes, codes out of range, non-finite parameters or quantized
    /// activations.
    public init(_ q: QuantizedLinear) throws(PTQError) {
        let layer = q.name.isEmpty ? "quantized linear" : q.name
        guard case .binary(let w) = q.weight else {
            throw PTQError("\(layer): weight format '\(q.weight.formatName)' is not binary")
        }
        do { try q.validate() } catch { throw PTQError("\(layer): \(error.message)") }
        name = q.name
        inFeatures = w.columns
        outFeatures = w.rows
        maskKind = w.maskKind
        salientBits = w.salientBits
        bias = q.bias
        scale = w.scale
        offset = w.offset
        salientScale = w.salientScale
        salientZero = w.salientZero.map { Float($0) }
        outlierColumns = w.outlierColumns
        outlierValues = w.outlierValues
        let rows = w.rows, columns = w.columns
        switch w.maskKind {
        case .columns:
            binaryColumns = (0..<columns).filter { !w.salientMask[$0] }
            salientColumns = (0..<columns).filter { w.salientMask[$0] }
            let nb = binaryColumns.count, ns = salientColumns.count
            wordsPerRow = BinaryKernels.wordsPerRow(nb)
            // The int8 sign GEMV runs on row-major words; else the sign-plane table GEMV.
            let useSignInt8 = BinaryKernels.signInt8Supported && BinaryKernels.decodesSignsInInt8 && nb > 0 && rows > 0
            let useSignPlanes = BinaryKernels.planesSupported && nb > 0 && rows > 0 && !useSignInt8
            signInt8 = useSignInt8
            let useSignTables = useSignInt8 && BinaryKernels.decodesSignsWithTables
            signTables = useSignTables
            // One copy of the bits and codes: the planes where the table GEMVs run on them.
            var words = useSignPlanes ? [] : BinaryKernels.packBits(bytes: w.signs, rows: rows, columns: nb)
            if useSignTables && !BinaryKernels.repackSignTables(&words, rows: rows, wordsPerRow: wordsPerRow) {
                throw PTQError("\(layer): out of memory re-laying the sign bits for the lookup-table GEMV")
            }
            signWords = words
            maskWords = nil
            columnScale = w.columnScale ?? [Float](repeating: 1, count: nb)
            salientFormat = w.salientBits <= 4 ? .u4 : .u8
            // ≤ 4-bit codes: the bf16 salient layout where that GEMV runs (AVX512_BF16,
            // `LowBit.bf16Decode` on at load), else planes for the table GEMV where AVX-512 has it.
            let useSalientBF16 = BinaryKernels.salientBF16Supported && LowBit.decodesInBF16 && salientFormat == .u4
                && ns > 0 && rows > 0
            let useSalientPlanes = LowBit.planeTablesSupported && salientFormat == .u4 && ns > 0 && rows > 0
                && !useSalientBF16
            salientCodes = useSalientPlanes || useSalientBF16 ? []
                : salientFormat == .u4 ? LowBit.packNibbles(w.salientCodes, rows: rows, columns: ns) : w.salientCodes
            rowStart = []
            salientColumnIndex = []
            var mask = [UInt64](repeating: 0, count: BinaryKernels.wordsPerRow(columns))
            var natural = [Float](repeating: 0, count: columns)
            for (c, j) in binaryColumns.enumerated() {
                mask[j >> 6] |= 1 << UInt64(j & 63)
                natural[j] = columnScale[c]
            }
            naturalBinaryMask = mask
            naturalColumnScale = natural
            let signs = useSignPlanes ? BinaryKernels.SignPlaneLayout(signs: w.signs, rows: rows, columns: nb) : nil
            // One group spanning all salient columns: the codes' Δ and z are per row.
            let salient = useSalientPlanes
                ? LowBit.PlaneLayout(codes: w.salientCodes, rows: rows, columns: ns, groupSize: ns,
                                     scales: salientScale, zeros: salientZero)
                : nil
            signPlanes = signs
            salientPlanes = salient
            salientBF16 = useSalientBF16 ? BinaryKernels.SalientBF16Layout(codes: w.salientCodes, rows: rows, columns: ns) : nil
        case .elements:
            binaryColumns = []
            salientColumns = []
            columnScale = []
            wordsPerRow = BinaryKernels.wordsPerRow(columns)
            // Scatter the position-ordered signs onto the full column grid (salient lanes 0, masked).
            var signs = [UInt64](repeating: 0, count: rows * wordsPerRow)
            var next = 0
            var starts = [Int](repeating: 0, count: rows + 1)
            var index: [Int32] = []
            index.reserveCapacity(w.salientCodes.count)
            for r in 0..<rows {
                for c in 0..<columns {
                    if w.salientMask[r * columns + c] {
                        index.append(Int32(c))
                    } else {
                        if w.signs[next] != 0 { signs[r * wordsPerRow + c >> 6] |= 1 << UInt64(c & 63) }
                        next += 1
                    }
                }
                starts[r + 1] = index.count
            }
            signWords = signs
            maskWords = BinaryKernels.packBits(rows: rows, columns: columns) { r, c in w.salientMask[r * columns + c] }
            salientFormat = .u8
            salientCodes = w.salientCodes
            rowStart = starts
            salientColumnIndex = index
            naturalBinaryMask = []
            naturalColumnScale = []
            signPlanes = nil
            signInt8 = false
            signTables = false
            salientPlanes = nil
            salientBF16 = nil
        }
    }

    /// Rows up to which one GEMV per row beats dequantized tiles + sgemm (as `IntegerLinear`).
    static let gemvRowLimit = 8

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        if rows <= Self.gemvRowLimit {
            for t in 0..<rows { gemv(x + t * inFeatures, y + t * outFeatures, reference: false, salientTables: true) }
        } else {
            dequantizedProduct(x, rows: rows, y)
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: outFeatures, into: y) }
        }
    }

    /// One activation row through the scalar reference kernels (tests).
    public func forwardReference(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        gemv(x, y, reference: true, salientTables: false)
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: 1, width: outFeatures, into: y) }
        }
    }

    /// One activation row through the fast kernels with the salient part on the nibble GEMV even
    /// where salient planes exist (tests compare the two salient paths).
    func forwardNibbleSalient(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        gemv(x, y, reference: false, salientTables: false)
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: 1, width: outFeatures, into: y) }
        }
    }

    /// Whether the salient codes have a plane-table copy (tests).
    var hasSalientPlanes: Bool { salientPlanes != nil }

    /// Whether the sign bits are held for the int8 sign GEMV (tests).
    var hasSignInt8: Bool { signInt8 }

    /// Whether the salient codes are held for the bf16 salient GEMV (tests).
    var hasSalientBF16: Bool { salientBF16 != nil }

    /// `y = W x` for one activation row, from the bits and codes; `salientTables` lets the
    /// salient part run on its bit planes where it has them.
    private func gemv(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, reference: Bool, salientTables: Bool) {
        let n = outFeatures
        // Per-thread scratch (slots 10–12, no other kernel's), not arrays: a decode step allocates
        // nothing. Zeroed: the sign kernels read all 64·wordsPerRow inputs.
        let padded = LowBit.threadScratch(slot: 10, count: 64 * wordsPerRow, of: Float.self)
        switch maskKind {
        case .columns:
            // The int8 sign GEMV gathers and quantizes x̃ itself (while the reduced-precision
            // decode kernels are on: `bf16Decode` off runs the exact float GEMV on the same words).
            let int8Signs = signInt8 && !reference && BinaryKernels.decodesSignsInInt8 && LowBit.decodesInBF16
            var sum: Float = 0
            if !int8Signs {
                padded.update(repeating: 0, count: 64 * wordsPerRow)
                for (k, j) in binaryColumns.enumerated() {
                    let v = columnScale[k] * x[j]
                    padded[k] = v
                    sum += v
                }
            }
            scale.withUnsafeBufferPointer { a in
                offset.withUnsafeBufferPointer { b in
                    if int8Signs {
                        signWords.withUnsafeBufferPointer { s in
                            binaryColumns.withUnsafeBufferPointer { cols in
                                columnScale.withUnsafeBufferPointer { r2 in
                                    BinaryKernels.gemvSignInt8(
                                        signs: s.baseAddress!, wordsPerRow: wordsPerRow, rows: n, x: x,
                                        columns: cols.baseAddress!, columnScale: r2.baseAddress!, count: cols.count,
                                        a: a.baseAddress!, b: b.baseAddress!, y: y, tables: signTables)
                                }
                            }
                        }
                        return
                    }
                    if let signPlanes, !reference {
                        BinaryKernels.gemvPlanes(signPlanes, x: padded, a: a.baseAddress!, b: b.baseAddress!, y: y)
                        return
                    }
                    rowMajorSignWords().withUnsafeBufferPointer { s in
                        BinaryKernels.gemv(signs: s.baseAddress!, mask: nil, wordsPerRow: wordsPerRow, rows: n,
                                           x: padded, xSum: sum, a: a.baseAddress!, b: b.baseAddress!, y: y,
                                           rest: nil, reference: reference)
                    }
                }
            }
            let ns = salientColumns.count
            guard ns > 0 else { return }
            let xs = LowBit.threadScratch(slot: 11, count: ns, of: Float.self)
            for (k, j) in salientColumns.enumerated() { xs[k] = x[j] }
            let ys = LowBit.threadScratch(slot: 12, count: n, of: Float.self)
            // The bf16 salient GEMV adds into y itself (no ys pass); the others write ys.
            var addedIntoY = false
            if let salientPlanes, salientTables, !reference {
                // The gathered salient inputs x_s (natural column order, as the codes' columns).
                LowBit.gemvPlanes(salientPlanes, x: xs, y: ys)
            } else if let salientBF16, !reference, LowBit.decodesInBF16 {
                // x_s rounded to bf16 once, exact code products, fp32 sums. With `bf16Decode`
                // turned off after load (the `--decode-kl` comparison) the unpacked nibbles run
                // the float32 GEMV below.
                salientScale.withUnsafeBufferPointer { d in
                    salientZero.withUnsafeBufferPointer { z in
                        BinaryKernels.gemvSalientBF16(salientBF16, x: xs, scales: d.baseAddress!, zeros: z.baseAddress!, y: y,
                                                      accumulate: true)
                    }
                }
                addedIntoY = true
            } else {
                rowMajorSalientCodes().withUnsafeBufferPointer { c in
                    salientScale.withUnsafeBufferPointer { d in
                        salientZero.withUnsafeBufferPointer { z in
                            if reference {
                                LowBit.gemvReference(salientFormat, codes: c.baseAddress!, rows: n, columns: ns, groupSize: ns,
                                                     scales: d.baseAddress!, zeros: z.baseAddress!, x: xs, y: ys)
                            } else {
                                LowBit.gemv(salientFormat, codes: c.baseAddress!, rows: n, columns: ns, groupSize: ns,
                                            scales: d.baseAddress!, zeros: z.baseAddress!, x: xs, y: ys)
                            }
                        }
                    }
                }
            }
            if !addedIntoY { for o in 0..<n { y[o] += ys[o] } }
            addOutlierColumns(x, y)
        case .elements:
            padded.update(repeating: 0, count: 64 * wordsPerRow)
            var total: Float = 0
            for j in 0..<inFeatures {
                padded[j] = x[j]
                total += x[j]
            }
            let rest = LowBit.threadScratch(slot: 12, count: n, of: Float.self)
            signWords.withUnsafeBufferPointer { s in
                maskWords!.withUnsafeBufferPointer { m in
                    scale.withUnsafeBufferPointer { a in
                        offset.withUnsafeBufferPointer { b in
                            BinaryKernels.gemv(signs: s.baseAddress!, mask: m.baseAddress!, wordsPerRow: wordsPerRow,
                                               rows: n, x: padded, xSum: total, a: a.baseAddress!, b: b.baseAddress!,
                                               y: y, rest: rest, reference: reference)
                        }
                    }
                }
            }
            // Sparse salient part: Δ·(Σ q·x − z·Σ_salient x), Σ_salient x = Σx − Σ_binarized x.
            for o in 0..<n {
                var dot: Float = 0
                for e in rowStart[o]..<rowStart[o + 1] { dot += Float(salientCodes[e]) * x[Int(salientColumnIndex[e])] }
                y[o] += salientScale[o] * (dot - salientZero[o] * (total - rest[o]))
            }
        }
    }

    /// Column masks: `y += V x` over the outlier columns' float weights (none in most layers).
    private func addOutlierColumns(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let kOut = outlierColumns.count
        guard kOut > 0 else { return }
        outlierValues.withUnsafeBufferPointer { v in
            outlierColumns.withUnsafeBufferPointer { cols in
                for o in 0..<outFeatures {
                    var dot: Float = 0
                    for t in 0..<kOut { dot += v[o * kOut + t] * x[cols[t]] }
                    y[o] += dot
                }
            }
        }
    }

    /// Output rows `range` as float into `tile[range.count, inFeatures]` (the same values as
    /// `BinaryWeight.dequantizedReference`). Runs on raw pointers: it is the prefill path.
    func dequantizeRows(_ range: Range<Int>, into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        if maskKind == .columns {
            decodeColumnMaskedRows(range, into: tile, reference: reference)
            return
        }
        let k = inFeatures, wpr = wordsPerRow
        signWords.withUnsafeBufferPointer { sw in
        salientCodes.withUnsafeBufferPointer { codes in
        scale.withUnsafeBufferPointer { a in
        offset.withUnsafeBufferPointer { b in
        salientScale.withUnsafeBufferPointer { d in
        salientZero.withUnsafeBufferPointer { z in
            let sw = sw.baseAddress!, a = a.baseAddress!, b = b.baseAddress!, d = d.baseAddress!, z = z.baseAddress!
            for (t, o) in range.enumerated() {
                let row = tile + t * k
                let words = sw + o * wpr
                let plus = a[o] + b[o], minus = b[o] - a[o]
                switch maskKind {
                case .columns:
                    binaryColumns.withUnsafeBufferPointer { cols in
                        columnScale.withUnsafeBufferPointer { r2 in
                            for c in 0..<cols.count {
                                let bit = (words[c >> 6] >> UInt64(c & 63)) & 1
                                row[cols[c]] = r2[c] * (bit != 0 ? plus : minus)
                            }
                        }
                    }
                    let ns = salientColumns.count
                    guard ns > 0, let codes = codes.baseAddress else { continue }
                    salientColumns.withUnsafeBufferPointer { cols in
                        if salientFormat == .u4 {
                            let p = codes + o * LowBit.nibbleRowBytes(ns)
                            for c in 0..<ns {
                                let byte = p[c >> 1]
                                let u = c & 1 == 0 ? byte & 0x0F : byte >> 4
                                row[cols[c]] = d[o] * (Float(u) - z[o])
                            }
                        } else {
                            let p = codes + o * ns
                            for c in 0..<ns { row[cols[c]] = d[o] * (Float(p[c]) - z[o]) }
                        }
                    }
                    let kOut = outlierColumns.count
                    for (t, j) in outlierColumns.enumerated() { row[j] = outlierValues[o * kOut + t] }
                case .elements:
                    for j in 0..<k {
                        let bit = (words[j >> 6] >> UInt64(j & 63)) & 1
                        row[j] = bit != 0 ? plus : minus
                    }
                    guard let codes = codes.baseAddress else { continue }
                    salientColumnIndex.withUnsafeBufferPointer { idx in
                        for e in rowStart[o]..<rowStart[o + 1] {
                            row[Int(idx[e])] = d[o] * (Float(codes[e]) - z[o])
                        }
                    }
                }
            }
        }}}}}}
    }

    /// The row-major sign words: `signWords`, or all rows unpacked from the sign planes (the
    /// scalar reference paths only; prefill tiles unpack their own rows).
    private func rowMajorSignWords() -> [UInt64] {
        var words = [UInt64](repeating: 0, count: outFeatures * wordsPerRow)
        if signTables {
            signWords.withUnsafeBufferPointer { s in
                words.withUnsafeMutableBufferPointer { w in
                    BinaryKernels.unpackSignTables(s.baseAddress!, rows: outFeatures, wordsPerRow: wordsPerRow,
                                                   range: 0..<outFeatures, into: w.baseAddress!)
                }
            }
            return words
        }
        guard let signPlanes else { return signWords }
        signPlanes.unpackWords(0..<outFeatures, wordsPerRow: wordsPerRow, into: &words, reference: true)
        return words
    }

    /// The row-major salient codes: `salientCodes`, or all rows unpacked from the salient planes
    /// or the bf16 salient layout (the reference and nibble-GEMV test paths, and the float32
    /// decode of a layer loaded for the bf16 salient GEMV).
    private func rowMajorSalientCodes() -> [UInt8] {
        let stride = LowBit.nibbleRowBytes(salientColumns.count)
        var codes = [UInt8](repeating: 0, count: outFeatures * stride)
        if let salientPlanes {
            salientPlanes.unpackNibbles(0..<outFeatures, stride: stride, into: &codes, reference: true)
        } else if let salientBF16 {
            salientBF16.unpackNibbles(0..<outFeatures, stride: stride, into: &codes)
        } else {
            return salientCodes
        }
        return codes
    }

    /// Column masks: the C tile decoder (AVX-512: pdep + blend + expand per 16 columns), then the
    /// outlier columns' float weights over their (zero-point) salient values. Bits and codes held
    /// only as planes are first unpacked for the tile's rows into per-thread scratch (slots 15
    /// and 16), and the decoder reads them as rows 0… with the per-row parameters offset to match.
    private func decodeColumnMaskedRows(_ range: Range<Int>, into tile: UnsafeMutablePointer<Float>, reference: Bool) {
        let k = inFeatures, ns = salientColumns.count, wpr = wordsPerRow
        let stride = salientFormat == .u4 ? LowBit.nibbleRowBytes(ns) : ns
        let none: [Float] = [0]
        let o0 = range.lowerBound
        var unpackedSigns: UnsafeMutablePointer<UInt64>? = nil
        if let signPlanes {
            let words = LowBit.threadScratch(slot: 15, count: range.count * wpr, of: UInt64.self)
            signPlanes.unpackWords(range, wordsPerRow: wpr, into: words, reference: reference)
            unpackedSigns = words
        } else if signTables {
            let words = LowBit.threadScratch(slot: 15, count: range.count * wpr, of: UInt64.self)
            signWords.withUnsafeBufferPointer { s in
                BinaryKernels.unpackSignTables(s.baseAddress!, rows: outFeatures, wordsPerRow: wpr, range: range, into: words)
            }
            unpackedSigns = words
        }
        var unpackedCodes: UnsafeMutablePointer<UInt8>? = nil
        if let salientPlanes {
            let codes = LowBit.threadScratch(slot: 16, count: range.count * stride, of: UInt8.self)
            salientPlanes.unpackNibbles(range, stride: stride, into: codes, reference: reference)
            unpackedCodes = codes
        } else if let salientBF16 {
            let codes = LowBit.threadScratch(slot: 16, count: range.count * stride, of: UInt8.self)
            salientBF16.unpackNibbles(range, stride: stride, into: codes)
            unpackedCodes = codes
        }
        signWords.withUnsafeBufferPointer { sw in
        naturalBinaryMask.withUnsafeBufferPointer { mask in
        naturalColumnScale.withUnsafeBufferPointer { r2 in
        scale.withUnsafeBufferPointer { a in
        offset.withUnsafeBufferPointer { b in
        salientCodes.withUnsafeBufferPointer { codes in
        (salientScale.isEmpty ? none : salientScale).withUnsafeBufferPointer { d in
        (salientZero.isEmpty ? none : salientZero).withUnsafeBufferPointer { z in
            // Unpacked rows start at row 0: the kernel then reads rows 0..<count, and the
            // per-row parameters from the tile's first row.
            let local = unpackedSigns != nil || unpackedCodes != nil
            let first = local ? o0 : 0
            let signs = unpackedSigns.map { UnsafePointer($0) } ?? sw.baseAddress! + first * wpr
            let codeRows = unpackedCodes.map { UnsafePointer($0) } ?? codes.baseAddress.map { $0 + first * stride }
            let dz = salientScale.isEmpty ? 0 : first
            BinaryKernels.decodeRows(signs: signs, wordsPerRow: wpr, binaryMask: mask.baseAddress!,
                                     columnScale: r2.baseAddress!, a: a.baseAddress! + first, b: b.baseAddress! + first,
                                     codes: codeRows, nibbles: salientFormat == .u4, codeStride: stride,
                                     salientCount: ns, d: d.baseAddress! + dz, z: z.baseAddress! + dz,
                                     rowRange: local ? 0..<range.count : range,
                                     columns: k, into: tile, reference: reference)
        }}}}}}}}
        let kOut = outlierColumns.count
        guard kOut > 0 else { return }
        outlierValues.withUnsafeBufferPointer { v in
            outlierColumns.withUnsafeBufferPointer { cols in
                for (t, o) in range.enumerated() {
                    let row = tile + t * k, values = v.baseAddress! + o * kOut
                    for u in 0..<kOut { row[cols[u]] = values[u] }
                }
            }
        }
    }

    /// Several activation rows: tiles of output rows decoded into scratch, one sgemm each
    /// (`LowBit.tiledProduct`, as the other weight-only layers).
    private func dequantizedProduct(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
        LowBit.tiledProduct(outFeatures: outFeatures, inFeatures: inFeatures, x: x, rows: rows, y: y,
                            tileRows: LowBit.defaultTileRows(inFeatures: inFeatures)) { range, tile in
            self.dequantizeRows(range, into: tile)
        }
    }
}
