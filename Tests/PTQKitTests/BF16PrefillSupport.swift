import Kernels

/// Outputs of a float-activation layer's bf16 prefill that miss the bf16 product bound:
/// |y − (x·Wᵀ + b)| ≤ `LowBit.bf16ProductBound(depth: k)`·Σ_t|x_t·w_t| + 1e-6·(|b| + Σ_t|x_t·w_t|),
/// with W the format's reference dequantizer (the 1e-6 covers float32 rounding of the decoded
/// tile, the bias add and the double reference). Empty when every output is within it.
func bf16PrefillViolations(y: [Float], x: [Float], rows: Int, weight: [Float], out: Int, k: Int,
                           bias: [Float]?) -> [String] {
    let bound = Double(LowBit.bf16ProductBound(depth: k))
    var failures: [String] = []
    for i in 0..<rows {
        for o in 0..<out {
            var s = Double(bias?[o] ?? 0), magnitude = 0.0
            for t in 0..<k {
                let p = Double(x[i * k + t]) * Double(weight[o * k + t])
                s += p
                magnitude += abs(p)
            }
            let error = abs(Double(y[i * out + o]) - s)
            let allowed = bound * magnitude + 1e-6 * (abs(Double(bias?[o] ?? 0)) + magnitude)
            if !(error <= allowed) { failures.append("[\(i), \(o)]: error \(error) > \(allowed)") }
        }
    }
    return failures
}
