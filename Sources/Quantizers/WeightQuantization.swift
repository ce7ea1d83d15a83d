import Foundation
import PTQCore
import Recipes

/// Round-to-nearest integer quantization of weight matrices, shared by all integer methods.
public enum WeightQuantization {
    /// Quantizes `weight` (out × in) with `bits`, per output channel (`groupSize == nil`) or per
    /// group of columns. Symmetric: scale = absmax / (2^(b-1) - 1), codes in ±(2^(b-1) - 1);
    /// with `range: .full` (llama.cpp's Q4_0 grid for any width) scale = e / −2^(b−1) for the
    /// group's value e of largest magnitude, sign kept, and codes in −2^(b−1) … 2^(b−1) − 1, so
    /// e maps to −2^(b−1) exactly. Asymmetric: scale = (max - min) / (2^b - 1) over a range that
    /// always contains 0, integer zero point round(-min / scale), codes in [0, 2^b - 1].
    /// Every code is stored as u = code + zero in 0 ..< 2^b (`IntegerWeight`).
    public static func quantize(_ weight: Tensor, bits: Int, symmetric: Bool, groupSize: Int?,
                                range: WeightScheme.SymmetricRange = .restricted) -> IntegerWeight {
        let rows = weight.shape[0], columns = weight.shape[1]
        let group = min(groupSize ?? columns, columns)
        let groups = (columns + group - 1) / group
        var codes = [UInt8](repeating: 0, count: rows * columns)
        var scales = [Float](repeating: 0, count: rows * groups)
        var zeros: [Float]? = symmetric ? nil : [Float](repeating: 0, count: rows * groups)
        let grid = WeightGrid(bits: bits, symmetric: symmetric, range: range)
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
        quantize(weight, bits: scheme.bits, symmetric: scheme.symmetric, groupSize: scheme.groupSize, range: scheme.range)
    }
}

/// The integer grid of one weight scheme: parameters for a run of values and the code of one
/// value, shared by round to nearest (`WeightQuantization`) and GPTQ.
struct WeightGrid: Sendable {
    let bits: Int
    let symmetric: Bool
    /// Symmetric grids only: `.full` adds the code −2^(b−1).
    let fullRange: Bool
    var maxSigned: Float { Float((1 << (bits - 1)) - 1) }
    /// The most negative signed code: −2^(b−1) on the full grid, −(2^(b−1) − 1) otherwise.
    var minSigned: Float { fullRange ? -symmetricZero : -maxSigned }
    var maxUnsigned: Float { Float((1 << bits) - 1) }
    var symmetricZero: Float { Float(1 << (bits - 1)) }

    init(bits: Int, symmetric: Bool, range: WeightScheme.SymmetricRange = .restricted) {
        self.bits = bits
        self.symmetric = symmetric
        fullRange = symmetric && range == .full
    }

    /// (scale, zero) for a range [lo, hi] that contains 0.
    func parameters(lo: Float, hi: Float) -> (Float, Float) {
        if fullRange {
            // llama.cpp's quantize_row_q4_0_ref: d = max / −8 with max the value of largest
            // magnitude, sign kept. It takes the first such value in memory order; from [lo, hi]
            // a tie |lo| == hi takes lo (d > 0), so hi lands on 7 instead of −8 on the mirrored
            // grid — the same error either way. An all-zero group keeps scale 1 (all codes 0).
            let extreme = -lo >= hi ? lo : hi
            return (extreme != 0 ? extreme / -symmetricZero : 1, symmetricZero)
        }
        if symmetric {
            let absMax = max(abs(lo), abs(hi))
            return (absMax > 0 ? absMax / maxSigned : 1, symmetricZero)
        }
        let scale = hi > lo ? (hi - lo) / maxUnsigned : 1
        return (scale, min(max((-lo / scale).rounded(), 0), maxUnsigned))
    }

    /// Code in 0 ..< 2^bits of `v`.
    @inline(__always)
    func code(_ v: Float, scale: Float, zero: Float) -> Int {
        // Inputs are checked finite before quantization; a NaN from degenerate arithmetic must
        // still not trap in the integer conversion (it maps to the zero code).
        if (v / scale + zero).isNaN { return symmetric ? Int(symmetricZero) : (zero.isNaN ? 0 : Int(min(max(zero, 0), maxUnsigned))) }
        if symmetric {
            // Full grid: v / scale ∈ [−2^(b−1), 2^(b−1)] (the extreme gives −2^(b−1) exactly, the
            // value of the same magnitude and opposite sign +2^(b−1), clamped to 2^(b−1) − 1).
            // Rounding is to nearest, ties away from zero, as the restricted grid (llama.cpp
            // rounds ties up: only exact ties can differ).
            return Int(min(max((v / scale).rounded(), minSigned), maxSigned) + symmetricZero)
        }
        return Int(min(max((v / scale).rounded() + zero, 0), maxUnsigned))
    }

    /// Min–max parameters, or the shrink search of GPTQ's `quant.py` (`mse=True`): the range
    /// p·[lo, hi] for p = 1, 1 − 1/grid, … (maxShrink·grid steps) minimising Σ|Q(w) − w|^norm.
    func parameters(for values: ArraySlice<Float>, search: GPTQ.RangeSearch?) -> (Float, Float) {
        var lo: Float = 0, hi: Float = 0
        for v in values { lo = min(lo, v); hi = max(hi, v) }
        if lo == 0 && hi == 0 { lo = -1; hi = 1 }
        guard let search else { return parameters(lo: lo, hi: hi) }
        var best = parameters(lo: lo, hi: hi), bestError = Double.infinity
        let steps = Int(search.maxShrink * Double(search.grid))
        let exponent = Float(search.norm)
        for step in 0..<max(steps, 1) {
            let p = 1 - Float(step) / Float(search.grid)
            let (s, z) = parameters(lo: p * lo, hi: p * hi)
            var error = 0.0
            for v in values {
                let e = abs(s * (Float(code(v, scale: s, zero: z)) - z) - v)
                if e > 0 { error += Double(powf(e, exponent)) }
            }
            if error < bestError { bestError = error; best = (s, z) }
        }
        return best
    }
}
