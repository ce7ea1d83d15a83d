/// A partially binarized weight matrix `[rows = out, columns = in]`: most elements are one sign
/// bit around a per-row mean, a salient minority keeps a low-bit integer code. One format serves
/// PTQ1.61 (a mask over input columns, 4-bit salient codes, per-column scales r2), PB-LLM-style
/// partial binarization (a mask over elements, 8-bit salient codes) and plain per-row
/// binarization (no salient element at all).
///
/// Element (i, j) is
/// - an outlier (column j is the t-th of the k `outlierColumns`; column masks only):
///   `outlierValues[i·k + t]`, a float16 weight (this project's addition to PTQ1.61 for input
///   channels with massive activations; the salient code stored there is the row's zero point);
/// - salient (`isSalient(row: i, column: j)`): `salientScale[i] · (code − salientZero[i])`, the
///   code being the next entry of `salientCodes` (row-major over salient positions);
/// - otherwise: `r2_j · (scale[i] · s + offset[i])`, with `s = +1` when the next entry of `signs`
///   (row-major over binarized positions) is 1 and `−1` when it is 0; `r2_j` is
///   `columnScale[k]` for the k-th binarized column (column masks only; 1 when nil).
///
/// `scale` and `offset` are PTQ1.61's `a = α·r1` and `b = μ·r1`: r1 folds exactly into both, so
/// the runtime computes `y = a ∘ (S x̃) + b · Σx̃` with `x̃ = r2 ∘ x` over the binarized columns.
/// Every float parameter is a float16 value (the packed file stores them as float16, and the
/// writer refuses values that would not survive that), so what is written is what runs.
public struct BinaryWeight: Sendable, Equatable {
    /// What the salient mask ranges over.
    public enum MaskKind: String, Sendable, Codable, CaseIterable {
        /// One flag per input column, shared by all rows (PTQ1.61's structured mask).
        case columns
        /// One flag per element (PB-LLM's unstructured mask).
        case elements
    }

    public var rows: Int
    public var columns: Int
    public var maskKind: MaskKind
    /// `columns` flags (`.columns`) or `rows × columns` row-major flags (`.elements`); true = salient.
    public var salientMask: [Bool]
    /// Width of the salient codes, 2…8 (PTQ1.61: 4, PB-LLM: 8).
    public var salientBits: Int
    /// Codes of the salient elements, row-major over salient positions, each `< 2^salientBits`.
    public var salientCodes: [UInt8]
    /// Per row: step Δ of the salient grid (float16 value).
    public var salientScale: [Float]
    /// Per row: integer zero point z of the salient grid, `< 2^salientBits`.
    public var salientZero: [UInt8]
    /// Sign bits of the binarized elements, row-major over binarized positions: 1 = +1, 0 = −1.
    public var signs: [UInt8]
    /// Per row: a = α·r1 (float16 value).
    public var scale: [Float]
    /// Per row: b = μ·r1 (float16 value).
    public var offset: [Float]
    /// Per binarized column (column masks only): r2 (float16 values); nil = all 1.
    public var columnScale: [Float]?
    /// Salient columns kept as float16 weights, ascending (column masks only; usually empty).
    public var outlierColumns: [Int]
    /// `rows × outlierColumns.count`, row-major: their float16 weights.
    public var outlierValues: [Float]

    public init(rows: Int, columns: Int, maskKind: MaskKind, salientMask: [Bool], salientBits: Int,
                salientCodes: [UInt8], salientScale: [Float], salientZero: [UInt8], signs: [UInt8],
                scale: [Float], offset: [Float], columnScale: [Float]?,
                outlierColumns: [Int] = [], outlierValues: [Float] = []) {
        self.rows = rows
        self.columns = columns
        self.maskKind = maskKind
        self.salientMask = salientMask
        self.salientBits = salientBits
        self.salientCodes = salientCodes
        self.salientScale = salientScale
        self.salientZero = salientZero
        self.signs = signs
        self.scale = scale
        self.offset = offset
        self.columnScale = columnScale
        self.outlierColumns = outlierColumns
        self.outlierValues = outlierValues
    }

    /// Rounds to the nearest float16 value (round to nearest even), as the packed file stores it.
    @inlinable
    public static func half(_ v: Float) -> Float { Float(Float16(v)) }

    /// The packed form of PTQ1.61's parameters: r1 folded into a = α·r1 and b = μ·r1, every scale
    /// rounded to float16, signs and salient codes listed over their positions. Equals
    /// `p.dequantized()` up to that rounding (relative 2^−11 per parameter).
    public init(_ p: BinarizationParameters) {
        let binaryColumns = p.salientMask.indices.filter { !p.salientMask[$0] }
        let salientColumns = p.salientMask.indices.filter { p.salientMask[$0] }
        var codes: [UInt8] = [], signs: [UInt8] = []
        codes.reserveCapacity(p.rows * salientColumns.count)
        signs.reserveCapacity(p.rows * binaryColumns.count)
        for i in 0..<p.rows {
            for j in salientColumns { codes.append(p.salientCodes[i * p.columns + j]) }
            for j in binaryColumns { signs.append(p.signs[i * p.columns + j] < 0 ? 0 : 1) }
        }
        self.init(rows: p.rows, columns: p.columns, maskKind: .columns, salientMask: p.salientMask,
                  salientBits: p.salientBits, salientCodes: codes, salientScale: p.salientScale.map(Self.half),
                  salientZero: p.salientZero.map { UInt8(max(0, min(255, $0.rounded()))) }, signs: signs,
                  scale: (0..<p.rows).map { Self.half(p.alpha[$0] * p.rowScale[$0]) },
                  offset: (0..<p.rows).map { Self.half(p.mean[$0] * p.rowScale[$0]) },
                  columnScale: binaryColumns.map { Self.half(p.columnScale[$0]) },
                  outlierColumns: p.outlierColumns, outlierValues: p.outlierValues.map(Self.half))
    }

    /// Whether element (i, j) is salient.
    @inlinable
    public func isSalient(row i: Int, column j: Int) -> Bool {
        maskKind == .columns ? salientMask[j] : salientMask[i * columns + j]
    }

    /// Salient elements in total (the length `salientCodes` must have).
    public var salientCount: Int {
        let flagged = salientMask.lazy.filter { $0 }.count
        return maskKind == .columns ? flagged * rows : flagged
    }

    /// Binarized elements in total (the length `signs` must have).
    public var binaryCount: Int { rows * columns - salientCount }

    /// Binarized columns of a column mask (the length `columnScale` must have); nil for element masks.
    public var binaryColumnCount: Int? {
        maskKind == .columns ? salientMask.lazy.filter { !$0 }.count : nil
    }

    /// The whole matrix in float, row-major (reference and tests only: the runtime computes from
    /// the bits and never does this).
    public func dequantizedReference() -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        var nextCode = 0, nextSign = 0
        for i in 0..<rows {
            var k = 0  // binarized column index within the row (column masks: r2's index)
            for j in 0..<columns {
                if isSalient(row: i, column: j) {
                    out[i * columns + j] = salientScale[i] * (Float(salientCodes[nextCode]) - Float(salientZero[i]))
                    nextCode += 1
                } else {
                    let s: Float = signs[nextSign] != 0 ? 1 : -1
                    let r2 = maskKind == .columns ? columnScale?[k] ?? 1 : 1
                    out[i * columns + j] = r2 * (scale[i] * s + offset[i])
                    nextSign += 1
                    k += 1
                }
            }
        }
        let k = outlierColumns.count
        for i in 0..<rows { for (t, j) in outlierColumns.enumerated() { out[i * columns + j] = outlierValues[i * k + t] } }
        return out
    }

    /// Row `r` in float into `out[0..<columns]` (embedding lookups), equal to row `r` of
    /// `dequantizedReference()`. Column masks start row r at a fixed offset; element masks count
    /// the salient flags of the rows before it (a linear scan: this format is not meant for
    /// embedding tables).
    public func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        var nextCode: Int, nextSign: Int
        if maskKind == .columns {
            let salientColumns = salientMask.lazy.filter { $0 }.count
            nextCode = r * salientColumns
            nextSign = r * (columns - salientColumns)
        } else {
            nextCode = salientMask[0..<(r * columns)].lazy.filter { $0 }.count
            nextSign = r * columns - nextCode
        }
        var k = 0
        for j in 0..<columns {
            if isSalient(row: r, column: j) {
                out[j] = salientScale[r] * (Float(salientCodes[nextCode]) - Float(salientZero[r]))
                nextCode += 1
            } else {
                let s: Float = signs[nextSign] != 0 ? 1 : -1
                let r2 = maskKind == .columns ? columnScale?[k] ?? 1 : 1
                out[j] = r2 * (scale[r] * s + offset[r])
                nextSign += 1
                k += 1
            }
        }
        let count = outlierColumns.count
        for (t, j) in outlierColumns.enumerated() { out[j] = outlierValues[r * count + t] }
    }
}
