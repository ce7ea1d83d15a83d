import Foundation
import PTQCore
import Recipes

/// Round-to-nearest integer quantization of weight matrices, shared by all integer methods.
public enum WeightQuantization {
    /// Quantizes `weight` (out × in) with `bits`, per output channel (`groupSize == nil`) or per
    /// group of columns. Symmetric: scale = absmax / (2^(b-1) - 1), codes in ±(2^(b-1) - 1).
    /// Asymmetric: scale = (max - min) / (2^b - 1) over a range that always contains 0, integer
    /// zero point round(-min / scale), codes in [0, 2^b - 1].
    public static func quantize(_ weight: Tensor, bits: Int, symmetric: Bool, groupSize: Int?) -> IntegerWeight {
        let rows = weight.shape[0], columns = weight.shape[1]
        let group = min(groupSize ?? columns, columns)
        let groups = (columns + group - 1) / group
        var codes = [UInt8](repeating: 0, count: rows * columns)
        var scales = [Float](repeating: 0, count: rows * groups)
        var zeros: [Float]? = symmetric ? nil : [Float](repeating: 0, count: rows * groups)
        let grid = WeightGrid(bits: bits, symmetric: symmetric)
        for r in 0..<rows {
            for g in 0..<groups {
                let start = r * columns + g * group, end = r * columns + min(columns, (g + 1) * group)
                var lo: Float = 0, hi: Float = 0
                for i in start..<end { lo = min(lo, weight.data[i]); hi = max(hi, weight.data[i]) }
                let (scale, zero) = grid.parameters(lo: lo, hi: hi)
                scales[r * groups + g] = scale
                zeros?[r * groups + g] = zero
                for i in start..<end { codes[i] = UInt8(grid.code(weight.data[i], scale: scale, zero: zero)) }
            }
        }
        return IntegerWeight(bits: bits, rows: rows, columns: columns, groupSize: group, symmetric: symmetric,
                             codes: codes, scales: scales, zeros: zeros)
    }

    public static func quantize(_ weight: Tensor, scheme: WeightScheme) -> IntegerWeight {
        quantize(weight, bits: scheme.bits, symmetric: scheme.symmetric, groupSize: scheme.groupSize)
    }
}
