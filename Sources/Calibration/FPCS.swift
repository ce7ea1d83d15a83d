import Foundation

/// FPCS, AdaLog's Fast Progressive Combining Search for uniform asymmetric quantizers (Wu et al.,
/// ECCV 2024; reference code GoatWu/AdaLog `quant_layers/linear.py`, `matmul.py`, the
/// `*_fpcs` methods and `calculate_percentile_*` grids).
///
/// A candidate is a scale `s` and an integer zero point `z` (levels `s·(k − z)`). The search is a
/// beam search over a percentile-based grid, done independently per *group* (a weight row, a
/// head, or the whole tensor) but scored in one batch for all groups, so that the caller can push
/// every candidate of every group through one sgemm:
///
/// 1. score the grid (`total` = 128 candidates: `Ns` scales × `Nz` zero points), keep the top K;
/// 2. `steps − 1` times: every kept `(s, z)` spawns `C = total/K` scales `s + (t − ½)·δ`,
///    `t ∈ linspace(0, 1, C)`, with `z` inherited; `δ ← δ/(C − ½)`; keep the top K (top 1 at the
///    last step).
///
/// The defaults are the reference *configs* (`configs/{3,4,6}bit.py`: eq_n 128, steps 6,
/// top-K 16), not the paper's text (p = 4 steps): where they disagree we follow the code.
public enum FPCS {
    /// One uniform asymmetric quantizer candidate.
    public struct Candidate: Sendable, Equatable {
        public var scale: Float
        public var zero: Int
        public init(scale: Float, zero: Int) {
            self.scale = scale
            self.zero = zero
        }
    }

    /// The reference's `eq_n`: candidates per group and step.
    public static let candidatesPerStep = 128
    /// The reference's top-K kept between steps.
    public static let keep = 16
    /// The reference configs' `steps` (the paper says 4).
    public static let steps = 6

    /// The value at quantile `f` of `sorted` (linear interpolation, as `torch.quantile`).
    public static func quantile(_ sorted: [Float], _ f: Double) -> Float {
        guard sorted.count > 1 else { return sorted.first ?? 0 }
        let x = f * Double(sorted.count - 1), i = Int(x.rounded(.down)), j = min(i + 1, sorted.count - 1)
        return sorted[i] + Float(x - Double(i)) * (sorted[j] - sorted[i])
    }

    /// Where the `Nz` zero points of a grid lie.
    public enum ZeroPointWindow: String, Sendable, CaseIterable {
        /// The reference's `2^(n−1) − Nz/2 … 2^(n−1) + Nz/2 − 1`. With Nz = 16 this covers only
        /// rows whose min–max zero point is near the middle (at 8 bits 120…135 of 0…255), so a
        /// lopsided row is clipped at every candidate scale (docs/RESULTS.md, AdaLog).
        case reference
        /// `Nz` zero points centred on the group's min–max zero point `round(−min·(2^n − 1)/(max − min))`
        /// (min ≤ 0 ≤ max), moved inside `0 … 2^n − 1`: a deviation from the reference.
        case range
    }

    /// The reference's percentile grid (`calculate_percentile_candidates`): with
    /// `Δmin = Q₀.₉ − Q₀.₁`, `Δmax = max − min`, `Ns = total/Nz` scales
    /// `s_k = (Δmin + k/(Ns−1)·(Δmax − Δmin))/(2^n − 1)` and the `Nz` zero points
    /// `2^(n−1) − Nz/2 … 2^(n−1) + Nz/2 − 1` (clamped to the code range; with `window: .range`
    /// centred on the min–max zero point instead, see ``ZeroPointWindow``).
    /// `zeroPoints` is `min(16, 2^(n−1))` for weights and Q/K/V heads, `min(16, 2^n)` for
    /// activations (the reference's choices). Returns the grid and its scale step `δ`.
    public static func grid(p10: Float, p90: Float, minimum: Float, maximum: Float, bits: Int, zeroPoints: Int,
                            total: Int = candidatesPerStep, minimumScale: Float = 1e-8,
                            window: ZeroPointWindow = .reference) -> (candidates: [Candidate], step: Float) {
        let top = Float((1 << bits) - 1)
        let nz = max(1, min(zeroPoints, 1 << bits)), ns = max(2, total / nz)
        let dMin = max(p90 - p10, 0), dMax = max(maximum - minimum, dMin)
        var first = (1 << (bits - 1)) - nz / 2
        if window == .range {
            let lo = min(minimum, 0), hi = max(maximum, 0)
            let centre = hi > lo ? Int((-lo * top / (hi - lo)).rounded()) : 1 << (bits - 1)
            first = min(max(centre - nz / 2, 0), (1 << bits) - nz)
        }
        var out: [Candidate] = []
        out.reserveCapacity(nz * ns)
        for k in 0..<ns {
            let s = max((dMin + Float(k) / Float(ns - 1) * (dMax - dMin)) / top, minimumScale)
            for z in 0..<nz {
                let zero = min(max(first + z, 0), (1 << bits) - 1)
                out.append(Candidate(scale: s, zero: zero))
            }
        }
        return (out, max((dMax - dMin) / Float(ns - 1) / top, minimumScale))
    }

    /// The grid of `values` (sorted internally; `values` is not modified).
    public static func grid(of values: [Float], bits: Int, zeroPoints: Int, minimumScale: Float = 1e-8,
                            window: ZeroPointWindow = .reference) -> (candidates: [Candidate], step: Float) {
        let sorted = values.sorted()
        return grid(p10: quantile(sorted, 0.1), p90: quantile(sorted, 0.9), minimum: sorted.first ?? 0,
                    maximum: sorted.last ?? 0, bits: bits, zeroPoints: zeroPoints, minimumScale: minimumScale,
                    window: window)
    }

    /// Runs FPCS for `initial.count` groups at once. `score` receives one candidate list per
    /// group and returns their errors (lower is better; NaN counts as +∞). Returns each group's
    /// best candidate and its error. Ties keep the earlier candidate, so the result is
    /// deterministic.
    public static func search(initial: [[Candidate]], steps stepCount: Int = steps, keep keepCount: Int = keep,
                              total: Int = candidatesPerStep, initialStep: [Float], minimumScale: Float = 1e-8,
                              score: ([[Candidate]]) -> [[Double]]) -> [(candidate: Candidate, error: Double)] {
        let groups = initial.count
        var candidates = initial
        var errors = score(candidates)
        var delta = initialStep
        let spawn = max(2, total / max(keepCount, 1))
        for step in 1..<max(stepCount, 1) {
            _ = step
            var next = [[Candidate]](repeating: [], count: groups)
            for g in 0..<groups {
                for i in topIndices(errors[g], count: keepCount) {
                    let c = candidates[g][i]
                    for t in 0..<spawn {
                        let s = c.scale + (Float(t) / Float(spawn - 1) - 0.5) * delta[g]
                        next[g].append(Candidate(scale: max(s, minimumScale), zero: c.zero))
                    }
                }
                delta[g] /= Float(spawn) - 0.5
            }
            candidates = next
            errors = score(candidates)
        }
        return (0..<groups).map { g in
            let i = topIndices(errors[g], count: 1).first ?? 0
            return (candidates[g][i], errors[g][i])
        }
    }

    /// Indices of the `count` smallest errors, stable (NaN last).
    static func topIndices(_ errors: [Double], count: Int) -> [Int] {
        let key = errors.map { $0.isNaN ? Double.infinity : $0 }
        return Array(key.indices.sorted { key[$0] < key[$1] || (key[$0] == key[$1] && $0 < $1) }.prefix(count))
    }

    /// `clamp(round(v), 0, top)` for `v = x/s + z`: clamping first and rounding half up by
    /// truncation (the bounds are integers, so this equals rounding then clamping, half away
    /// from zero for the non-negative result). Written with a truncating conversion because the
    /// portable x86-64 build has no rounding instruction and `rounded()` is a libm call, which
    /// dominated the searches.
    @inline(__always)
    public static func code(_ v: Float, top: Float) -> Float {
        Float(Int32(min(max(v, 0), top) + 0.5))
    }

    /// `x` fake-quantized with candidate `c` at `bits` (codes `clamp(round(x/s) + z, 0, 2^n − 1)`,
    /// value `s·(code − z)`, the reference's uniform quantizer).
    @inline(__always)
    public static func fake(_ x: Float, _ c: Candidate, top: Float) -> Float {
        c.scale * (code(x / c.scale + Float(c.zero), top: top) - Float(c.zero))
    }
}
