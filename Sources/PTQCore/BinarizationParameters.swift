/// PTQ1.61's learnable description of one linear layer `[rows = out, columns = in]` before it is
/// packed: the seam between the per-layer initialisation (mask, 4-bit salient part, signs, μ, α)
/// and the scale optimisers (layer-wise closed form, block-wise AdamW), which change only
/// `alpha`, `rowScale` and `columnScale`.
///
/// Element (i, j) is
/// - `salientValues[i·columns + j]` when column j is salient (its dequantized 4-bit value), else
/// - `rowScale[i] · columnScale[j] · (alpha[i] · signs[i·columns + j] + mean[i])`.
///
/// The packed form (`BinaryWeight`) folds `rowScale` into `alpha` and `mean`; this form keeps
/// them apart because they are learned separately (different learning rates).
public struct BinarizationParameters: Sendable, Equatable {
    public var rows: Int
    public var columns: Int
    /// Per input column: true = salient (kept at 4 bits, never binarized).
    public var salientMask: [Bool]
    /// `rows × columns`: the dequantized salient values; 0 in binarized columns.
    public var salientValues: [Float]
    /// `rows × columns`: +1 or −1 in binarized columns (W == μ gives +1); 0 in salient columns.
    public var signs: [Float]
    /// Per row: the fixed mean μ of the binarized columns (not learned).
    public var mean: [Float]
    /// Per row: the binarization scale α (learned).
    public var alpha: [Float]
    /// Per row: r1 (learned, starts at 1).
    public var rowScale: [Float]
    /// Per input column: r2 (learned, starts at 1; unused in salient columns).
    public var columnScale: [Float]

    public init(rows: Int, columns: Int, salientMask: [Bool], salientValues: [Float], signs: [Float],
                mean: [Float], alpha: [Float], rowScale: [Float], columnScale: [Float]) {
        precondition(salientMask.count == columns && columnScale.count == columns, "one mask bit and r2 per column")
        precondition(salientValues.count == rows * columns && signs.count == rows * columns, "rows × columns values")
        precondition(mean.count == rows && alpha.count == rows && rowScale.count == rows, "one μ, α, r1 per row")
        self.rows = rows
        self.columns = columns
        self.salientMask = salientMask
        self.salientValues = salientValues
        self.signs = signs
        self.mean = mean
        self.alpha = alpha
        self.rowScale = rowScale
        self.columnScale = columnScale
    }

    /// The value of one element (the reference definition every other form must match).
    @inlinable
    public func value(row i: Int, column j: Int) -> Float {
        let k = i * columns + j
        if salientMask[j] { return salientValues[k] }
        return rowScale[i] * columnScale[j] * (alpha[i] * signs[k] + mean[i])
    }

    /// The whole matrix in float, row-major (optimisers and tests; the runtime never does this).
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        for i in 0..<rows { for j in 0..<columns { out[i * columns + j] = value(row: i, column: j) } }
        return out
    }
}
