import Calibration
import Foundation
import Kernels
import PTQCore
import Recipes

/// AdaLog for a linear layer fed by GELU (Wu et al., ECCV 2024; GoatWu/AdaLog
/// `PostGeluLogBasedBatchingQuantLinear`): the input is shifted by δ = −min GELU ≈ 0.16997 so it
/// is positive, quantized with an AdaLog quantizer (searched q and scale), and the shift is
/// folded into the bias with the *quantized* weights, `b' ← b − Ŵ·δ1`, so
/// `Ŵ(x̂' − δ1) + b = Ŵx̂' + b'` exactly. At run time `LogInputLinear` multiplies the codes
/// in the code domain.
///
/// Search (the reference's FPCS for AdaLog, scored by layer-output MSE ‖Ŵ(x̂'−δ) − Wx‖² on up to
/// `tokens` calibration rows from the input reservoir, candidates evaluated in batches through
/// sgemm): scale candidates are 16 values spaced linearly over [P90, max] of the positive
/// shifted inputs, starting from the second largest; all q ∈ 10…137 are scanned at that scale and
/// the best 8 kept; the 8 × 16 (q, s) grid keeps the best 32; then 5 refinement steps spawn 4
/// scales s + (t − ½)·Δ around each kept pair (Δ /= 3.5 per step), keeping 32, finally 1.
///
/// Weights: asymmetric per output channel, FPCS-searched on the layer output and alternating
/// with the activation search for `rounds` rounds, as the reference (`weight_search: minmax`
/// gives min–max RTN instead). Where we differ from the reference (documented choices): the
/// adaptive search also runs the base-2 scale search and keeps the better, `zero_points: range`
/// may centre the weight grid on each row; `base: log2 | log_sqrt2` fix the base (q = r = 1 /
/// q = 1, r = 2) and search the scale only — the fixed-base ablation of the paper.
public struct AdaLogLinearQuantizer: Quantizer {
    let weight: WeightScheme
    let bits: Int
    let base: String
    let offset: Float
    let tokens: Int
    /// `fpcs` (the reference: per-row FPCS, alternating with the activation search) or `minmax`.
    let weightSearch: String
    /// Where the FPCS weight grid's zero points lie (``FPCS/ZeroPointWindow``; `zero_points`).
    let zeroPoints: FPCS.ZeroPointWindow
    let rounds: Int
    let gramTokens: Int

    /// δ = −min_x GELU(x), the reference's constant.
    public static let geluOffset: Float = 0.16997124254703522

    public init(plan: LayerPlan) throws(PTQError) {
        let p = plan.parameters
        try p.rejectUnknown(allowed: ["base", "offset", "tokens", "weight_search", "rounds", "gram_tokens", "zero_points"])
        zeroPoints = FPCS.ZeroPointWindow(rawValue: try p.string("zero_points", default: "reference",
                                                                 oneOf: FPCS.ZeroPointWindow.allCases.map(\.rawValue)))!
        weightSearch = try p.string("weight_search", default: "fpcs", oneOf: ["fpcs", "minmax"])
        rounds = try p.int("rounds", default: 3, range: 0...10)
        gramTokens = try p.int("gram_tokens", default: 2048, range: 64...65536)
        base = try p.string("base", default: "adaptive", oneOf: ["adaptive", "log2", "log_sqrt2"])
        offset = Float(try p.double("offset", default: Double(Self.geluOffset), range: 0...16))
        tokens = try p.int("tokens", default: 64, range: 16...4096)
        guard let activation = plan.activation else {
            throw PTQError("\(plan.name): method adalog quantizes the layer's input: the recipe must give activation bits")
        }
        guard activation.granularity == .perTensor else {
            throw PTQError("\(plan.name): method adalog needs activation granularity per_tensor (one log quantizer per layer)")
        }
        guard plan.weight.groupSize == nil else {
            throw PTQError("\(plan.name): method adalog needs weight group_size channel")
        }
        // The shift by δ and the log grid assume a GELU output (nothing below −δ, a long right tail).
        guard plan.role.inputActivation == .gelu else {
            let line = plan.ruleLine.map { "line \($0): " } ?? ""
            throw PTQError("\(line)\(plan.name): method adalog quantizes a GELU output, but this layer's input is "
                           + "\(plan.role.name) (target the MLP output projections of a GELU model, e.g. layers/*/mlp/down_proj)")
        }
        if weightSearch == "fpcs" && plan.weight.symmetric {
            let line = plan.ruleLine.map { "line \($0): " } ?? ""
            throw PTQError("\(line)\(plan.name): method adalog with weight_search fpcs searches asymmetric weights: "
                           + "set weight.symmetric: false (or parameters.weight_search: minmax)")
        }
        bits = activation.bits
        weight = plan.weight
    }

    public var requiredStatistics: Set<StatisticKind> { [.reservoir] }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        guard let statistics, let reservoir = statistics.reservoir, statistics.reservoirCount > 0 else {
            throw PTQError("\(layer.name): method adalog needs the input reservoir at \(layer.inputPoint)")
        }
        let out = layer.weight.shape[0], k = layer.weight.shape[1]

        // Evenly spaced calibration rows: `tokens` for the activation search, up to
        // `gram_tokens` for the weight search's Gram matrices.
        let available = statistics.reservoirCount, n = min(tokens, available)
        func rows(_ count: Int) -> [Float] {
            var x = [Float](repeating: 0, count: count * k)
            for i in 0..<count {
                let row = i * available / count
                for j in 0..<k { x[i * k + j] = reservoir[row * k + j] }
            }
            return x
        }
        let x = rows(n)
        var reference = [Float](repeating: 0, count: n * out)   // X·Wᵀ (float weights, float input)
        x.withUnsafeBufferPointer { xp in layer.weight.data.withUnsafeBufferPointer { wp in
            reference.withUnsafeMutableBufferPointer { rp in
                BLAS.linear(xp.baseAddress!, rows: n, inFeatures: k, weight: wp.baseAddress!, outFeatures: out, into: rp.baseAddress!)
            }
        }}
        let shifted = x.map { $0 + offset }
        let logs = shifted.map { $0 > 0 ? log2($0) : -Float.infinity }

        // Scale grid over [P90, max] of the positive shifted inputs.
        let positive = shifted.filter { $0 > 0 }.sorted()
        guard let top = positive.last, top > 0 else {
            throw PTQError("\(layer.name): the calibration inputs have no positive value after the shift \(offset)")
        }
        let p90 = positive[min(positive.count - 1, Int(0.9 * Double(positive.count)))]
        let grid = (0..<16).map { p90 + (top - p90) * Float($0) / 15 }
        let (r, qs): (Int, [Int]) = switch base {
        case "log2": (1, [1])
        case "log_sqrt2": (2, [1])
        default: (AdaLogQuantizer.referenceResolution, Array(AdaLogQuantizer.referenceSearchRange))
        }

        // The reference's order (`PostGeluLogBasedBatchingQuantLinear.hyperparameter_searching`):
        // weights by FPCS on their own MSE, the activation scale at the grid's second-largest
        // value, then `rounds` × [FPCS for AdaLog on the output, weight FPCS on the output].
        var w: IntegerWeight
        if weightSearch == "fpcs" {
            let choice = WeightFPCS.searchWeightMSE(layer.weight.data, rows: out, columns: k, bits: weight.bits,
                                                    window: zeroPoints)
            w = WeightFPCS.integerWeight(layer.weight.data, rows: out, columns: k, bits: weight.bits, candidates: choice)
        } else {
            w = WeightQuantization.quantize(layer.weight, scheme: weight)
        }
        var wHat = w.dequantizedReference()
        var choice = (q: qs.contains(37) ? 37 : qs[0], r: r, s: grid[14])
        var bestScore = Double.infinity
        let gramRows = weightSearch == "fpcs" ? rows(min(gramTokens, available)) : []
        let gramCount = gramRows.count / k
        var weightError: Double?
        let clock = SearchClock(layer.name)
        for _ in 0..<max(rounds, 1) {
            let search = Search(shifted: shifted, logs: logs, rows: n, columns: k, offset: offset, wHat: wHat,
                                out: out, reference: reference, bits: bits)
            (choice, bestScore) = Self.searchActivation(search, grid: grid, qs: qs, r: r)
            if base == "adaptive" {
                // Not in the reference: its FPCS keeps only the 8 best q at the grid's second-largest
                // scale, which can drop base 2 (q = 37) before the scale search. The log2 variant's
                // search (base 2, every grid scale, refined) is run as well and the better kept, so
                // AdaLog's search never ends worse than log2's on the same objective (measured: it
                // did in one MiniLM W6A6 layer, docs/RESULTS.md).
                let baseTwo = Self.searchActivation(search, grid: grid, qs: [r], r: r)
                if baseTwo.score < bestScore { (choice, bestScore) = baseTwo }
            }
            clock.lap("adalog activation search")
            guard weightSearch == "fpcs", rounds > 0 else { break }
            // Weight FPCS on the output, the input quantized with the chosen AdaLog quantizer.
            let log = try AdaLogQuantizer(bits: bits, q: choice.q, r: choice.r, scale: choice.s, what: "\(layer.name): adalog")
            let levels = log.levels, thresholds = log.thresholds
            let xHat = gramRows.map { v -> Float in
                let shiftedValue = v + offset
                var code = 0
                for t in thresholds where shiftedValue <= t { code += 1 }
                return levels[code] - offset
            }
            let found = WeightFPCS.searchOutputMSE(layer.weight.data, rows: out, columns: k, bits: weight.bits,
                                                   xHat: xHat, x: gramRows, n: gramCount, window: zeroPoints)
            w = WeightFPCS.integerWeight(layer.weight.data, rows: out, columns: k, bits: weight.bits, candidates: found.candidates)
            wHat = w.dequantizedReference()
            weightError = found.error
            clock.lap("weight output search")
        }
        if weightSearch == "fpcs", rounds > 0 {
            // The activation search's score is for the weights before the last weight round: re-score.
            let search = Search(shifted: shifted, logs: logs, rows: n, columns: k, offset: offset, wHat: wHat,
                                out: out, reference: reference, bits: bits)
            bestScore = search.scores([choice])[0]
        }
        let log = try AdaLogQuantizer(bits: bits, q: choice.q, r: choice.r, scale: choice.s, what: "\(layer.name): adalog")

        // b' = b − Ŵ·δ1 with the quantized weights.
        var bias = layer.bias ?? [Float](repeating: 0, count: out)
        for o in 0..<out {
            var s: Double = 0
            for j in 0..<k { s += Double(wHat[o * k + j]) }
            bias[o] -= Float(Double(offset) * s)
        }
        _ = weightError
        var activation = ActivationQuantization(bits: bits, granularity: .perTensor)
        activation.logarithmic = log
        activation.inputOffset = offset
        var energy: Double = 0
        for v in reference { energy += Double(v * v) }
        let details = ["base": String(format: "2^(%d/%d)=%.4f", choice.q, choice.r, log.base),
                       "scale": "\(choice.s)", "offset": "\(offset)", "tokens": "\(n)",
                       "output_relative_mse": String(format: "%.3e", bestScore / max(energy, 1e-30)),
                       "weight": weightSearch == "fpcs" ? "FPCS per channel, \(rounds) output rounds" : "min–max per channel"]
        // No search time in the details: they are stored, and two quantizations must give
        // identical bytes (`ptq quantize` prints the total time).
        return QuantizedLinear(name: layer.name, method: "adalog", weight: .integer(w), bias: bias,
                               activation: activation, details: details)
    }

    /// FPCS for AdaLog (the reference's `PostGeluLogBasedBatchingQuantLinear`): all q at the
    /// grid's second-largest scale, keep 8; the 8 × 16 (q, s) grid, keep 32; five refinements of
    /// the scale (4 new scales s + (t − ½)·Δ per kept pair, Δ /= 3.5), keep 32, finally 1.
    static func searchActivation(_ search: Search, grid: [Float], qs: [Int], r: Int)
        -> (choice: (q: Int, r: Int, s: Float), score: Double) {
        let initial = search.scores(qs.map { (q: $0, r: r, s: grid[14]) })
        let bestQ = initial.indices.sorted { initial[$0] < initial[$1] }.prefix(8).map { qs[$0] }
        var kept = bestQ.flatMap { q in grid.map { (q: q, r: r, s: $0) } }
        var keptScores = search.scores(kept)
        var delta = grid[1] - grid[0]
        for _ in 0..<5 {
            let order = kept.indices.sorted { keptScores[$0] < keptScores[$1] }.prefix(32)
            var next: [(q: Int, r: Int, s: Float)] = []
            for i in order {
                next.append(kept[i])
                for t in [0, 1.0 / 3, 2.0 / 3, 1] as [Float] {
                    let s = kept[i].s + (t - 0.5) * delta
                    if s > 0 { next.append((q: kept[i].q, r: r, s: s)) }
                }
            }
            delta /= 3.5
            kept = next
            keptScores = search.scores(kept)
        }
        let best = kept.indices.min { keptScores[$0] < keptScores[$1] }!
        return (kept[best], keptScores[best])
    }

    /// Scores (q, r, s) candidates by ‖(X̂' − δ)·Ŵᵀ − X·Wᵀ‖², 16 candidates per sgemm.
    struct Search {
        let shifted: [Float], logs: [Float]
        let rows: Int, columns: Int
        let offset: Float
        let wHat: [Float]
        let out: Int
        let reference: [Float]
        let bits: Int

        /// The dequantized shifted-back input of one candidate, by the table the runtime uses.
        func fill(_ c: (q: Int, r: Int, s: Float), into x: UnsafeMutablePointer<Float>) {
            let zero = (1 << bits) - 1
            guard let quantizer = try? AdaLogQuantizer(bits: bits, q: c.q, r: c.r, scale: c.s) else {
                for i in 0..<(rows * columns) { x[i] = .nan }
                return
            }
            let levels = quantizer.levels
            let factor = Float(c.r) / Float(c.q), logScale = log2(c.s)
            for i in 0..<(rows * columns) {
                // k = round(−log2(x/s)·r/q), clamped at 0; k ≥ 2^n − 1 is the zero code.
                let kf = ((logScale - logs[i]) * factor).rounded()
                let code = kf >= Float(zero) ? zero : max(0, Int(kf))
                x[i] = levels[code] - offset
            }
        }

        func scores(_ candidates: [(q: Int, r: Int, s: Float)]) -> [Double] {
            let batch = 16
            var result = [Double](repeating: .infinity, count: candidates.count)
            let x = UnsafeMutablePointer<Float>.allocate(capacity: batch * rows * columns)
            let y = UnsafeMutablePointer<Float>.allocate(capacity: batch * rows * out)
            defer { x.deallocate(); y.deallocate() }
            var startIndex = 0
            while startIndex < candidates.count {
                let count = min(batch, candidates.count - startIndex)
                for b in 0..<count { fill(candidates[startIndex + b], into: x + b * rows * columns) }
                wHat.withUnsafeBufferPointer { w in
                    BLAS.linear(x, rows: count * rows, inFeatures: columns, weight: w.baseAddress!, outFeatures: out, into: y)
                }
                for b in 0..<count {
                    var e: Double = 0
                    let yb = y + b * rows * out
                    for i in 0..<(rows * out) { let d = Double(yb[i] - reference[i]); e += d * d }
                    result[startIndex + b] = e.isNaN ? .infinity : e
                }
                startIndex += count
            }
            return result
        }
    }
}
