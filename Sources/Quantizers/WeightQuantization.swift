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

/// The integer grid of one weight scheme: parameters for a run of values and the code of one
/// value, shared by round to nearest (`WeightQuantization`) and GPTQ.
struct WeightGrid: Sendable {
    let bits: Int
    let symmetric: Bool
    var maxSigned: Float { Float((1 << (bits - 1)) - 1) }
    var maxUnsigned: Float { Float((1 << bits) - 1) }
    var symmetricZero: Float { Float(1 << (bits - 1)) }

    /// (scale, zero) for a range [lo, hi] that contains 0.
    func parameters(lo: Float, hi: Float) -> (Float, Float) {
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
            return Int(min(max((v / scale).rounded(), -maxSigned), maxSigned) + symmetricZero)
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
