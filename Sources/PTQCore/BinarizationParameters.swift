/// PTQ1.61's learnable description of one linear layer `[rows = out, columns = in]` before it is
/// packed: the seam between the per-layer initialisation (mask, 4-bit salient part, signs, μ, α)
/// and the scale optimisers (layer-wise closed form, block-wise AdamW), which change only
/// `alpha`, `rowScale` and `columnScale`.
///
/// Element (i, j) is
/// - `outlierValues[i·k + t]` when column j is the t-th of the k `outlierColumns` (kept in float16;
///   this project's addition, not in the paper, see `outlierColumns`), else
/// - `salientScale[i] · (salientCodes[i·columns + j] − salientZero[i])` when column j is salient, else
/// - `rowScale[i] · columnScale[j] · (alpha[i] · signs[i·columns + j] + mean[i])`.
///
/// The packed form (`BinaryWeight`) folds `rowScale` into `alpha` and `mean`; this form keeps
/// them apart because they are learned separately (different learning rates).
public struct BinarizationParameters: Sendable, Equatable {
    public var rows: Int
    public var columns: Int
    /// Per input column: true = salient (kept at 4 bits, never binarized).
    public var salientMask: [Bool]
    /// Width of the salient codes (PTQ1.61: 4).
    public var salientBits: Int
    /// `rows × columns`: unsigned salient codes in `0 ..< 2^salientBits`; 0 in binarized columns.
    public var salientCodes: [UInt8]
    /// Per row: step Δ of the salient grid.
    public var salientScale: [Float]
    /// Per row: zero point z of the salient grid (an integer in `0 ..< 2^salientBits`).
    public var salientZero: [Float]
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
    /// Salient columns whose weights stay in float16 (ascending; empty in the paper's method).
    /// Not in PTQ1.61: a few input channels of some layers carry "massive activations" (SmolLM2
    /// layer 11 `down_proj`: channels 1229 and 1487 reach 3,569 and 1,347, over 500× the
    /// layer's median max |x|), and any grid error on their weights is multiplied by that. Their
    /// salient codes are the row's zero point, so the salient grid contributes exactly 0 there.
    public var outlierColumns: [Int]
    /// `rows × outlierColumns.count`, row-major: the float16-rounded weights of those columns (fixed).
    public var outlierValues: [Float]

    public init(rows: Int, columns: Int, salientMask: [Bool], salientBits: Int, salientCodes: [UInt8],
                salientScale: [Float], salientZero: [Float], signs: [Float],
                mean: [Float], alpha: [Float], rowScale: [Float], columnScale: [Float],
                outlierColumns: [Int] = [], outlierValues: [Float] = []) {
        precondition(salientMask.count == columns && columnScale.count == columns, "one mask bit and r2 per column")
        precondition(outlierValues.count == rows * outlierColumns.count
                     && outlierColumns.allSatisfy { (0..<columns).contains($0) && salientMask[$0] },
                     "outlier columns are salient columns with one value per row")
        precondition(salientCodes.count == rows * columns && signs.count == rows * columns, "rows × columns values")
        precondition(mean.count == rows && alpha.count == rows && rowScale.count == rows
                     && salientScale.count == rows && salientZero.count == rows, "one μ, α, r1, Δ, z per row")
        self.rows = rows
        self.columns = columns
        self.salientMask = salientMask
        self.salientBits = salientBits
        self.salientCodes = salientCodes
        self.salientScale = salientScale
        self.salientZero = salientZero
        self.signs = signs
        self.mean = mean
        self.alpha = alpha
        self.rowScale = rowScale
        self.columnScale = columnScale
        self.outlierColumns = outlierColumns
        self.outlierValues = outlierValues
    }

    /// The value of one element (the reference definition every other form must match).
    @inlinable
    public func value(row i: Int, column j: Int) -> Float {
        let k = i * columns + j
        if salientMask[j] {
            if !outlierColumns.isEmpty, let t = outlierColumns.firstIndex(of: j) {
                return outlierValues[i * outlierColumns.count + t]
            }
            return salientScale[i] * (Float(salientCodes[k]) - salientZero[i])
        }
        return rowScale[i] * columnScale[j] * (alpha[i] * signs[k] + mean[i])
    }

    /// The whole matrix in float, row-major (optimisers and tests; the runtime never does this).
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        for i in 0..<rows { for j in 0..<columns { out[i * columns + j] = value(row: i, column: j) } }
        return out
    }
}

extension BinarizationParameters {
    /// The salient input columns: the `ratio` share of channels with the largest calibration
    /// statistic (PTQ1.61's code: max |x| over all calibration tokens, clamped at 1e-5; its paper's
    /// pseudocode says mean |x|). As the reference: threshold t = the value at 0-based index
    /// ⌊ratio·m⌋ of the statistic sorted descending, and every channel with statistic ≥ t is salient,
    /// so ties and the `>=` make the count ⌊ratio·m⌋ + 1 or more.
    public static func salientMask(channelStatistic: [Float], ratio: Double) -> [Bool] {
        let m = channelStatistic.count
        guard m > 0, ratio > 0 else { return [Bool](repeating: false, count: m) }
        let clamped = channelStatistic.map { max($0, 1e-5) }
        let sorted = clamped.sorted(by: >)
        let t = sorted[min(m - 1, Int((ratio * Double(m)).rounded(.down)))]
        return clamped.map { $0 >= t }
    }

    /// PTQ1.61's initial parameters for one `[rows, columns]` weight (row-major) and mask, as the
    /// reference code initialises them (`high_quant`, `binary_temporary`):
    /// - salient columns: `salientBits`-bit asymmetric round-to-nearest per row, the range taken
    ///   over the whole row including binarized columns and always containing 0 (code, not paper);
    /// - binarized columns: μ = row mean over them, signs of W − μ (W == μ gives +1), α = mean |W|
    ///   over them (the code's initialisation; the paper and the issue write mean |W − μ|: α is
    ///   learned either way), r1 = r2 = 1.
    /// A row whose binarized columns are all excluded (every column salient) gets μ = α = 0.
    /// `outlierColumns` (salient columns, see the property) keep their weights as float16 values
    /// and get the zero point as their code; they still count in the salient grid's row range, so
    /// the other salient columns are quantized exactly as without them.
    /// The reference restricts μ and α to non-zero weights; a float checkpoint has exact zeros only
    /// in pruned weights, which SmolLM2 does not have, so all binarized columns count here.
    public static func initial(weight: [Float], rows: Int, columns: Int, salientMask: [Bool],
                               salientBits: Int = 4, outlierColumns: [Int] = []) -> BinarizationParameters {
        precondition(weight.count == rows * columns && salientMask.count == columns)
        let outliers = Set(outlierColumns)
        let levels = Float((1 << salientBits) - 1)
        var codes = [UInt8](repeating: 0, count: rows * columns)
        var signs = [Float](repeating: 0, count: rows * columns)
        var scale = [Float](repeating: 1, count: rows), zero = [Float](repeating: 0, count: rows)
        var mean = [Float](repeating: 0, count: rows), alpha = [Float](repeating: 0, count: rows)
        let binaryCount = salientMask.lazy.filter { !$0 }.count
        for i in 0..<rows {
            let row = weight[(i * columns)..<((i + 1) * columns)]
            var lo = min(0, row.min() ?? 0), hi = max(0, row.max() ?? 0)
            if lo == 0 && hi == 0 { lo = -1; hi = 1 }
            let delta = (hi - lo) / levels
            let z = (-lo / delta).rounded(.toNearestOrEven)
            scale[i] = delta
            zero[i] = z
            var sum: Double = 0, absSum: Double = 0
            for j in 0..<columns {
                let w = weight[i * columns + j]
                if outliers.contains(j) {
                    codes[i * columns + j] = UInt8(z)
                } else if salientMask[j] {
                    let q = min(max((w / delta).rounded(.toNearestOrEven) + z, 0), levels)
                    codes[i * columns + j] = UInt8(q)
                } else {
                    sum += Double(w)
                    absSum += Double(abs(w))
                }
            }
            guard binaryCount > 0 else { continue }
            let mu = Float(sum / Double(binaryCount))
            mean[i] = mu
            alpha[i] = Float(absSum / Double(binaryCount))
            for j in 0..<columns where !salientMask[j] {
                signs[i * columns + j] = weight[i * columns + j] >= mu ? 1 : -1
            }
        }
        return BinarizationParameters(
            rows: rows, columns: columns, salientMask: salientMask, salientBits: salientBits, salientCodes: codes,
            salientScale: scale, salientZero: zero, signs: signs, mean: mean, alpha: alpha,
            rowScale: [Float](repeating: 1, count: rows), columnScale: [Float](repeating: 1, count: columns),
            outlierColumns: outliers.sorted(),
            outlierValues: (0..<rows).flatMap { i in outliers.sorted().map { BinaryWeight.half(weight[i * columns + $0]) } })
    }

    /// The salient columns to keep in float16: those whose calibration statistic exceeds
    /// `threshold` × the layer's median statistic (0 = none). Massive activations stand out by
    /// orders of magnitude (SmolLM2: 1,335× and 504× in layer 11's `down_proj`, 218× in layer 28's;
    /// every other input channel of the model stays below 52×), so the threshold is not delicate.
    public static func outlierColumns(channelStatistic: [Float], threshold: Double, salientMask: [Bool]) -> [Int] {
        guard threshold > 0, !channelStatistic.isEmpty else { return [] }
        let sorted = channelStatistic.map { max($0, 1e-5) }.sorted()
        let median = Double(sorted[sorted.count / 2])
        return channelStatistic.indices.filter { salientMask[$0] && Double(channelStatistic[$0]) > threshold * median }
    }
}
