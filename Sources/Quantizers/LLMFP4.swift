import Calibration
import Foundation
import Kernels
import PTQCore
import Recipes

/// LLM-FP4 (Liu, Liu, Huang, Dong, Cheng, EMNLP 2023; reference code nbasyl/LLM-FP4):
/// floating-point weights and activations with a searched format and exponent bias.
///
/// - **Format**: `FloatingPointFormat` (E + M = bits − 1, subnormals, ties to even, clip at the
///   format maximum); a real exponent bias b̃ is stored as the scale 2^(−b̃).
/// - **FPQ baseline search** (paper Alg. 1, `FPPTQSLBatchingQuantLinear_fpq_baseline`): for every
///   candidate format (4-bit E3M0/E2M1/E1M2, 6-bit m 0…4, 8-bit m 2…6) the bias is searched over
///   γ·b̃_init with γ = 0.01 + i·(1.2 − 0.01)/K, i = 0 … K−1 (K = 100 in the paper). The reference
///   builds K+1 points but loops over the first K, so γ = 1.2 is never tried; we match it.
///   Weights are scored per output row by that row's output MSE, activations per tensor by the
///   layer's output MSE; the weight format and the activation format are then chosen per layer by
///   the summed error. Order per round: weight biases (every format) → weight format → activation
///   bias (every format) → activation format, for `rounds` rounds (3 in the paper); the reference
///   output is always the float layer on float inputs (parallel, not sequential calibration).
/// - **FPQ per-channel activations** (pre-shifted exponent bias, Eq. 13–19): per input channel the
///   real bias b_j from the channel absmax, ρ searched over γ·min_j b_j, integer offsets
///   k_j = clamp(round(b_j) − round(ρ), 0, 2^e − 1) (the code rounds b_j and ρ separately and clips
///   at 2^e − 1 where Eq. 15 writes round(b_j − ρ) and 2^(e−1): we follow the code). The runtime
///   rounds x·2^(k_j) on the per-tensor grid 2^(−ρ) and multiplies the result by 2^(−k_j): the same
///   product as folding 2^(−k_j) into the weight columns.
/// - **Beyond the paper** (off by default): `tensor_candidates` lets the activation search also
///   score the baseline's per-tensor candidates, and runs the FPQ baseline's complete search (its
///   weights searched on its own X̂) as one more candidate; the layer keeps whichever final pair has
///   the lower output error, so its searched objective is never above the baseline's. Because the code
///   rounds b_j and ρ separately, a channel's effective bias ρ + k_j can exceed its own b_j by up to
///   1, clipping its absmax by up to 2×; on inputs with a few huge channels (SmolLM2's down_proj)
///   that clipping can cost more than k_j gains. `max_offset` lifts the 2^e − 1 cap on k_j.
///
/// Cost on 2 cores (our choices, documented in docs/recipes.md): the weight error of row o is
/// evaluated exactly in Gram form, `dᵀG d + 2 dᵀ r_o` with d = ŵ_o − w_o, G = X̂ᵀX̂ and
/// r_o = X̂ᵀ(X̂ − X) w_o over calibration reservoir rows (X̂ = the current quantized activations),
/// candidates batched through sgemm. The activation error is computed directly on a token
/// subsample. Beyond the paper, `group_size` 32/64/128 gives each group its own searched bias:
/// one Gauss–Seidel sweep over the groups of all rows per round, each group's candidates scored
/// by the exact change of its row's output error with the other groups held fixed.
public struct LLMFP4Quantizer: Quantizer {
    /// Named settings: `faithful` (K = 100, 3 rounds, every reservoir token), `fast` (K = 25,
    /// 1 round, 512 tokens for the activation search), `minmax` (no search: the MinMax FP baseline,
    /// default formats at the absmax bias).
    public enum Setting: String, Sendable, CaseIterable {
        case faithful, fast, minmax
    }

    public let setting: Setting
    public let weightBits: Int
    public let groupSize: Int?
    public let activationBits: Int?
    public let weightFormats: [FloatingPointFormat]
    public let activationFormats: [FloatingPointFormat]
    /// FPQ per-channel activation offsets k_j (false = the FPQ baseline's per-tensor bias).
    public let perChannel: Bool
    /// Beyond the paper: with `perChannel`, the activation search also scores the FPQ baseline's
    /// per-tensor candidates (no k_j) by the same output MSE, and the baseline's complete search
    /// (weights and activations) runs as one more candidate; the layer keeps the final pair with the
    /// lower output error, so it is never worse than the baseline on that objective (recipe key
    /// `tensor_candidates`; costs one more search per layer).
    public let tensorCandidates: Bool
    /// Beyond the paper: the cap on k_j (nil = 2^e − 1 of the activation format, as the reference
    /// clips). A larger cap lets ordinary channels of an input with huge outlier channels keep
    /// their precision (recipe key `max_offset`).
    public let maxOffset: Int?
    /// Beyond the paper: k_j = clamp(⌊b_j − ρ⌋, …) instead of the code's round(b_j) − round(ρ), so a
    /// channel's effective bias ρ + k_j never exceeds its own b_j and its absmax is never clipped
    /// by the rounding (recipe key `offset_rounding: floor`; default `code`).
    public let floorOffsets: Bool
    /// Beyond the paper: the activation search's token subsample. `first` (default) takes the
    /// first `tokens` reservoir rows; `outliers` takes half of them from the rows that come
    /// closest to some channel's reservoir absmax (rare massive activations a small uniform
    /// subsample misses, so that a clipping ρ is not chosen blind to them) and fills the rest with
    /// the first rows (recipe key `token_selection`).
    public let outlierTokens: Bool
    /// Beyond the paper: weight every token's output error by 1 / (its reference output's mean
    /// square + ε), in both searches (recipe key `objective: token_relative`; default `output_mse`,
    /// the paper's). The next RMSNorm divides each token's residual by its own norm, so an absolute
    /// error on a token with massive activations matters far less than the same error on an
    /// ordinary token; the plain output MSE is dominated by those few tokens.
    public let tokenRelative: Bool
    /// Beyond the paper: the fraction of the reservoir held out of the search (recipe key
    /// `holdout`, 0 ≤ h ≤ 0.9, default 0 = every row searched, as before). With h > 0 the last
    /// round(h·n) reservoir rows are held out: the weight search, the activation search and the
    /// channel absmax behind b_j (and the baseline's b̃_init) use the first rows only, and the
    /// per-layer choices — the activation format in every round and, with `tensor_candidates`,
    /// FPQ's final pair against the baseline's — are scored by the output error on the held-out
    /// rows (the first `tokens` of them). Layers without an activation quantizer have no such
    /// choice and search every row.
    public let holdout: Double
    public let intervals: Int
    public let rounds: Int
    /// Reservoir rows used by the activation search (the weight search uses every searched reservoir row).
    public let tokens: Int
    public let gammaRange: ClosedRange<Double>

    public init(plan: LayerPlan) throws(PTQError) {
        let p = plan.parameters
        let name = try p.string("setting", default: "faithful", oneOf: Setting.allCases.map(\.rawValue))
        setting = Setting(rawValue: name)!
        let searching = setting != .minmax
        intervals = try p.int("intervals", default: setting == .fast ? 25 : 100, range: 1...1000)
        rounds = try p.int("rounds", default: setting == .faithful ? 3 : 1, range: 1...10)
        tokens = try p.int("tokens", default: setting == .fast ? 512 : 1 << 20, range: 16...(1 << 20))
        perChannel = try p.bool("per_channel", default: searching)
        tensorCandidates = try p.bool("tensor_candidates", default: false)
        holdout = try p.double("holdout", default: 0, range: 0...0.9)
        if holdout > 0 && !searching { throw p.error("holdout", "holds reservoir rows out of the search; setting: minmax does not search") }
        maxOffset = p.has("max_offset") ? try p.int("max_offset", default: 0, range: 0...30) : nil
        outlierTokens = try p.string("token_selection", default: "first", oneOf: ["first", "outliers"]) == "outliers"
        tokenRelative = try p.string("objective", default: "output_mse", oneOf: ["output_mse", "token_relative"]) == "token_relative"
        floorOffsets = try p.string("offset_rounding", default: "code", oneOf: ["code", "floor"]) == "floor"
        if floorOffsets && !perChannel { throw p.error("offset_rounding", "rounds the per-channel offsets k_j; it needs per_channel: true") }
        if maxOffset != nil && !perChannel { throw p.error("max_offset", "caps the per-channel offsets k_j; it needs per_channel: true") }
        if tensorCandidates && !perChannel {
            throw p.error("tensor_candidates", "adds the per-tensor candidates to the per-channel (k_j) search; it needs per_channel: true")
        }
        let gammas = try p.doubles("gamma_range", default: [0.01, 1.2], range: 0.001...10)
        guard gammas.count == 2, gammas[0] < gammas[1] else {
            throw p.error("gamma_range", "must be [low, high] with low < high")
        }
        gammaRange = gammas[0]...gammas[1]
        let weightFormat = try p.string("weight_format", default: searching ? "search" : "default")
        let activationFormat = try p.string("activation_format", default: searching ? "search" : "default")
        try p.rejectUnknown(allowed: ["setting", "intervals", "rounds", "tokens", "per_channel", "tensor_candidates", "holdout", "max_offset",
                                      "offset_rounding", "token_selection", "objective",
                                      "gamma_range", "weight_format", "activation_format"])
        let line = plan.ruleLine.map { "line \($0): " } ?? ""
        guard plan.weight.symmetric else {
            throw PTQError("\(line)\(plan.name): llmfp4 weights are sign-magnitude minifloats; set symmetric: true")
        }
        weightBits = plan.weight.bits
        groupSize = plan.weight.groupSize
        activationBits = plan.activation?.bits
        if let a = plan.activation, a.granularity != .perTensor {
            throw PTQError("\(line)\(plan.name): llmfp4 activations use a static per-tensor bias; set granularity: per_tensor")
        }
        func formats(_ text: String, bits: Int, key: String) throws(PTQError) -> [FloatingPointFormat] {
            let candidates = FloatingPointFormat.searchCandidates(bits: bits)
            switch text {
            case "search":
                guard !candidates.isEmpty else { throw p.error(key, "no minifloat formats at \(bits) bits") }
                return candidates
            case "default": return [FloatingPointFormat.defaultFormat(bits: bits)]
            default:
                // One format, or a comma-separated shortlist searched like `search` (e.g. "e2m5,e3m4").
                var list: [FloatingPointFormat] = []
                for name in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                    guard let f = FloatingPointFormat(name: name) else {
                        throw p.error(key, "must be search, default, a format such as e2m1 or a list such as e2m5,e3m4 (got \"\(text)\")")
                    }
                    guard f.bits == bits else { throw p.error(key, "\(f) has \(f.bits) bits, the recipe asks for \(bits)") }
                    guard !list.contains(f) else { throw p.error(key, "lists \(f) twice") }
                    list.append(f)
                }
                guard !list.isEmpty else { throw p.error(key, "names no format") }
                return list
            }
        }
        guard (3...8).contains(weightBits) else {
            throw PTQError("\(line)\(plan.name): llmfp4 weights need 3…8 bits (got \(weightBits))")
        }
        weightFormats = try formats(weightFormat, bits: weightBits, key: "weight_format")
        if let bits = activationBits {
            guard (3...8).contains(bits) else {
                throw PTQError("\(line)\(plan.name): llmfp4 activations need 3…8 bits (got \(bits))")
            }
            activationFormats = try formats(activationFormat, bits: bits, key: "activation_format")
        } else {
            activationFormats = []
        }
    }

    public var requiredStatistics: Set<StatisticKind> {
        setting == .minmax && activationBits == nil ? [] : (setting == .minmax ? [.channelRange] : [.channelRange, .reservoir])
    }

    /// The γ grid: `γ1 + i·(γ2 − γ1)/K` for i = 0 … K−1 (γ2 itself is never tried, as in the reference).
    public static func gammas(intervals k: Int, range: ClosedRange<Double> = 0.01...1.2) -> [Double] {
        (0..<k).map { range.lowerBound + Double($0) * (range.upperBound - range.lowerBound) / Double(k) }
    }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let start = Date()
        let rows = layer.weight.shape[0], columns = layer.weight.shape[1]
        let gs = min(groupSize ?? columns, columns)
        let w = layer.weight.data
        if let statistics, statistics.channels != columns {
            throw PTQError("\(layer.name): statistics have \(statistics.channels) channels, the weight has \(columns) inputs")
        }
        var details: [String: String] = ["setting": setting.rawValue]

        // Activation quantizer at its initial (MinMax) state.
        var channelAbsMax: [Float] = []
        if activationBits != nil {
            guard let statistics else {
                throw PTQError("\(layer.name): llmfp4 activations need calibration statistics at \(layer.inputPoint)")
            }
            channelAbsMax = statistics.absMaximum
        }
        // holdout: rows [0, searchRows) are searched, [searchRows, reservoirCount) held out.
        var searchRows = statistics?.reservoirCount ?? 0
        var heldOutRows = 0
        if holdout > 0, activationBits != nil, let statistics, let reservoir = statistics.reservoir {
            let split = try Self.holdoutSplit(rows: statistics.reservoirCount, fraction: holdout,
                                              layer: layer.name, point: layer.inputPoint)
            searchRows = split.search
            heldOutRows = split.heldOut
            // b_j from the search rows only: the statistics' channel range covers every calibration
            // token, the held-out rows included, which would let k_j see the rows that judge them.
            channelAbsMax = Self.absMaximum(reservoir, rows: searchRows, columns: columns)
        }
        func initialActivation(perChannel channelWise: Bool) -> ActivationCandidate? {
            activationBits.map {
                ActivationCandidate(format: FloatingPointFormat.defaultFormat(bits: $0), gamma: 1, channelAbsMax: channelAbsMax,
                                    perChannel: channelWise, maxOffset: maxOffset, floorOffsets: floorOffsets)
            }
        }
        var act = initialActivation(perChannel: perChannel)
        var weightFormat = weightFormats[0]
        var scales = Self.initialScales(w, rows: rows, columns: columns, groupSize: gs, format: weightFormat, gamma: 1)

        if setting != .minmax {
            guard let statistics, let reservoir = statistics.reservoir, statistics.reservoirCount > 0 else {
                throw PTQError("\(layer.name): the llmfp4 search needs a calibration reservoir at \(layer.inputPoint) "
                               + "(recalibrate with this recipe)")
            }
            let n = searchRows
            let x = Array(reservoir.prefix(n * columns))
            // Held-out rows scored by the choices (the first `tokens` of them, as many as the activation
            // search scores), and the float layer's output on them.
            let heldOutCount = min(tokens, heldOutRows)
            let xh = Array(reservoir[(n * columns)..<((n + heldOutCount) * columns)])
            let heldOutReference = heldOutCount > 0
                ? Self.product(xh, rows: heldOutCount, weight: w, out: rows, columns: columns) : []
            let heldOutWeights = tokenRelative && heldOutCount > 0
                ? Self.tokenWeights(reference: heldOutReference, tokens: heldOutCount, out: rows) : nil
            /// Output error of weights `deq` and activations `c` on the held-out rows (the objective's
            /// token weights included), the score of every held-out choice.
            func heldOutError(_ deq: [Float], _ c: ActivationCandidate) -> Double {
                let y = Self.product(c.apply(xh, rows: heldOutCount, columns: columns), rows: heldOutCount,
                                     weight: deq, out: rows, columns: columns)
                return Self.outputError(y, heldOutReference, tokens: heldOutCount, out: rows, tokenWeights: heldOutWeights)
            }
            let gammas = Self.gammas(intervals: intervals, range: gammaRange)
            let tokenCount = min(tokens, n)
            let xs = outlierTokens ? Self.outlierRows(x, rows: n, columns: columns, count: tokenCount)
                                   : Array(x.prefix(tokenCount * columns))
            let reference = Self.product(xs, rows: tokenCount, weight: w, out: rows, columns: columns)
            // token_relative: per-token weights of the activation search (on its subsample) and the
            // square roots of those of the weight search (on every reservoir row), which scale the rows
            // of X and X̂ so that the Gram form computes the weighted error exactly.
            let tokenWeights = tokenRelative ? Self.tokenWeights(reference: reference, tokens: tokenCount, out: rows) : nil
            let rootWeights = tokenRelative
                ? Self.tokenWeights(reference: Self.product(x, rows: n, weight: w, out: rows, columns: columns), tokens: n, out: rows)
                    .map { Float($0.squareRoot()) }
                : nil

            /// One complete search (weight biases and format, activation bias and format, for
            /// `rounds` rounds) from the initial activation quantizer `start`; `kinds` lists the
            /// activation candidates' kinds (true = k_j, false = per tensor). Returns the final
            /// quantizers and the output error of the final pair on the activation-search tokens
            /// (nil when the layer has no activation quantizer).
            func search(from start: ActivationCandidate?, kinds: [Bool])
                -> (weightFormat: FloatingPointFormat, scales: [Float], act: ActivationCandidate?, error: Double?,
                    heldOutError: Double?, details: [String: String]) {
                var act = start
                var weightFormat = weightFormats[0]
                var scales: [Float] = []
                var finalError: Double?
                var finalHeldOutError: Double?
                var heldOutErrors: [String] = []
                var weightErrors: [String] = []
                var activationErrors: [String] = []
                // Wall time of the two searches (for profiling; `ptq inspect` shows them).
                var weightSeconds = 0.0, activationSeconds = 0.0
                var roundsRun = 0
                for _ in 0..<rounds {
                    roundsRun += 1
                    let weightStart = Date()
                    // The round's weight search depends only on `act`; remember it to detect a fixed point.
                    let actAtStart = act
                    // Weight biases for every format, then the weight format.
                    // q/k/v (gate/up) share an input point: their first round shares X̂ and so G and X̂ᵀX.
                    // Token weights depend on the layer's own outputs, so weighted moments are not shared.
                    let key = "llmfp4.moments|\(act.map { "\($0.format)|\($0.gamma)|\($0.offsets != nil)" } ?? "float")|\(n)"
                        + (tokenRelative ? "|\(layer.name)" : "") + (heldOutRows > 0 ? "|holdout \(heldOutRows)" : "")
                    let packed = statistics.memoized(key) { () -> [Float] in
                        var xq = act.map { $0.apply(x, rows: n, columns: columns) } ?? x
                        var xw = x
                        if let rw = rootWeights {
                            for t in 0..<n { for j in 0..<columns { xq[t * columns + j] *= rw[t]; xw[t * columns + j] *= rw[t] } }
                        }
                        let (g, c) = WeightSearch.moments(x: xw, xq: xq, tokens: n, columns: columns)
                        return g + (c ?? [])
                    }
                    let cc = columns * columns
                    let search = WeightSearch(gram: Array(packed[0..<cc]), cross: packed.count > cc ? Array(packed[cc...]) : nil,
                                              weight: w, rows: rows, columns: columns, groupSize: gs)
                    var best: (error: Double, format: FloatingPointFormat, scales: [Float])?
                    for f in weightFormats {
                        let (s, error) = search.run(format: f, gammas: gammas)
                        if best == nil || error < best!.error { best = (error, f, s) }
                    }
                    weightFormat = best!.format
                    scales = best!.scales
                    weightErrors.append(String(format: "%.4g", best!.error / Double(n * rows)))
                    // Activation bias for every format, then the activation format.
                    weightSeconds += Date().timeIntervalSince(weightStart)
                    // Weight-only: every round would search the same Gram matrices again; stop (exact).
                    guard activationBits != nil else { break }
                    let activationStart = Date()
                    let deq = FloatingPointWeight.quantize(w, rows: rows, columns: columns, groupSize: gs,
                                                           format: weightFormat, scales: scales).dequantizedReference()
                    var bestAct: (error: Double, candidate: ActivationCandidate)?
                    // holdout: every format's best candidate on the search tokens, in format order.
                    var formatBest: [(error: Double, candidate: ActivationCandidate)] = []
                    // With tensor_candidates the per-tensor (baseline) candidates follow the k_j ones, so
                    // ties keep k_j; each is scored on the same tokens by the same output MSE.
                    for f in activationFormats {
                        for channelWise in kinds {
                            for g in gammas {
                                let c = ActivationCandidate(format: f, gamma: g, channelAbsMax: channelAbsMax,
                                                            perChannel: channelWise, maxOffset: maxOffset,
                                                            floorOffsets: floorOffsets)
                                let y = Self.product(c.apply(xs, rows: tokenCount, columns: columns), rows: tokenCount,
                                                     weight: deq, out: rows, columns: columns)
                                let error = Self.outputError(y, reference, tokens: tokenCount, out: rows,
                                                             tokenWeights: tokenWeights)
                                if bestAct == nil || error < bestAct!.error { bestAct = (error, c) }
                                if heldOutCount > 0 {
                                    if formatBest.last?.candidate.format != f {
                                        formatBest.append((error, c))
                                    } else if error < formatBest[formatBest.count - 1].error {
                                        formatBest[formatBest.count - 1] = (error, c)
                                    }
                                }
                            }
                        }
                    }
                    if heldOutCount > 0 {
                        // Beyond the paper: the activation format is chosen by the held-out output error
                        // of each format's best candidate on the search tokens (ties keep the earlier format).
                        var chosen: (heldOut: Double, index: Int)?
                        for (i, b) in formatBest.enumerated() {
                            let e = heldOutError(deq, b.candidate)
                            if chosen == nil || e < chosen!.heldOut { chosen = (e, i) }
                        }
                        bestAct = formatBest[chosen!.index]
                        finalHeldOutError = chosen!.heldOut
                        heldOutErrors.append(String(format: "%.4g", chosen!.heldOut / Double(heldOutCount * rows)))
                    }
                    act = bestAct!.candidate
                    finalError = bestAct!.error
                    activationErrors.append(String(format: "%.4g", bestAct!.error / Double(tokenCount * rows)))
                    activationSeconds += Date().timeIntervalSince(activationStart)
                    // Fixed point: the activation search kept the quantizer this round's weight search
                    // used, so every further round would repeat this one exactly (same G, same X̂, same
                    // candidates, same ties). Stopping changes no result, only the time.
                    if let a = act, let b = actAtStart, a.sameQuantizer(as: b) { break }
                }
                var d: [String: String] = [:]
                d["rounds_run"] = "\(roundsRun) of \(rounds)"
                d["weight_mse_per_round"] = weightErrors.joined(separator: ",")
                if !activationErrors.isEmpty { d["output_mse_per_round"] = activationErrors.joined(separator: ",") }
                if !heldOutErrors.isEmpty { d["holdout_mse_per_round"] = heldOutErrors.joined(separator: ",") }
                d["search_seconds"] = String(format: "%.2f weight, %.2f activation", weightSeconds, activationSeconds)
                return (weightFormat, scales, act, finalError, finalHeldOutError, d)
            }

            var outcome = search(from: act, kinds: tensorCandidates ? [true, false] : [perChannel])
            if tensorCandidates, let fpqError = outcome.error {
                // Beyond the paper: the FPQ baseline's own complete search (per-tensor activations
                // from its own start, its weights searched on its own X̂) is one more candidate, scored
                // by the same output error of the final pair on the same tokens. The layer keeps the
                // lower, so its searched objective is never above the baseline's (ties keep k_j).
                let baseline = search(from: initialActivation(perChannel: false), kinds: [false])
                var kept = baseline.error.map { $0 < fpqError } ?? false
                details["baseline_output_mse"] = String(format: "%.4g", baseline.error! / Double(tokenCount * rows))
                details["fpq_output_mse"] = String(format: "%.4g", fpqError / Double(tokenCount * rows))
                if let fpqHeldOut = outcome.heldOutError, let baselineHeldOut = baseline.heldOutError {
                    // holdout: the two final pairs are compared on the held-out rows instead.
                    kept = baselineHeldOut < fpqHeldOut
                    details["fpq_holdout_mse"] = String(format: "%.6g", fpqHeldOut / Double(heldOutCount * rows))
                    details["baseline_holdout_mse"] = String(format: "%.6g", baselineHeldOut / Double(heldOutCount * rows))
                }
                if kept {
                    outcome = baseline
                    details["activation_offsets"] = "none (baseline search kept)"
                }
            }
            weightFormat = outcome.weightFormat
            scales = outcome.scales
            act = outcome.act
            details.merge(outcome.details) { $1 }
            if tokenRelative { details["objective"] = "token_relative" }
            details["search_tokens"] = "\(n) weight, \(tokenCount) activation"
            if heldOutCount > 0 {
                details["holdout_rows"] = "\(heldOutCount) of \(heldOutRows) held out (reservoir rows \(n)..<\(n + heldOutCount))"
                details["holdout_output_mse"] = String(format: "%.6g", outcome.heldOutError! / Double(heldOutCount * rows))
            }
        }
        let weight = FloatingPointWeight.quantize(w, rows: rows, columns: columns, groupSize: gs,
                                                  format: weightFormat, scales: scales)
        details["weight_format"] = weightFormat.description
        var activation: ActivationQuantization?
        if let a = act {
            activation = a.quantization
            details["activation_format"] = a.format.description
            details["activation_gamma"] = String(format: "%.4f", a.gamma)
            details["activation_bias"] = String(format: "%.4f", a.bias)
            if tensorCandidates {
                details["activation_offsets"] = a.offsets != nil ? "k_j" : (details["activation_offsets"] ?? "none (per-tensor kept)")
            }
            if let k = a.offsets {
                details["k_mean"] = String(format: "%.2f", Double(k.reduce(0, +)) / Double(max(k.count, 1)))
                details["k_max"] = "\(k.max() ?? 0)"
            }
        }
        details["seconds"] = String(format: "%.2f", Date().timeIntervalSince(start))
        return QuantizedLinear(name: layer.name, method: "llmfp4", weight: .floatingPoint(weight), bias: layer.bias,
                               activation: activation, details: details)
    }

    /// The holdout split of an `n`-row reservoir: the first `n − round(h·n)` rows are searched, the
    /// rest held out; both parts must be usable (at least 16 search rows and one held-out row).
    static func holdoutSplit(rows n: Int, fraction h: Double, layer: String, point: String) throws(PTQError)
        -> (search: Int, heldOut: Int) {
        let heldOut = Int((Double(n) * h).rounded(.toNearestOrEven))
        guard heldOut >= 1, n - heldOut >= 16 else {
            throw PTQError("\(layer): holdout \(h) splits the \(n)-row reservoir at \(point) into \(n - heldOut) search and "
                           + "\(heldOut) held-out rows; it needs at least 16 and 1 (recalibrate with more rows or change holdout)")
        }
        return (n - heldOut, heldOut)
    }

    /// max_t |x_tj| over the first `rows` rows of the row-major `x`.
    static func absMaximum(_ x: [Float], rows: Int, columns: Int) -> [Float] {
        var m = [Float](repeating: 0, count: columns)
        for t in 0..<rows { for j in 0..<columns { m[j] = max(m[j], abs(x[t * columns + j])) } }
        return m
    }

    /// Σ_t w_t Σ_o (y − ref)² (w_t = 1 without token weights), the activation search's objective.
    static func outputError(_ y: [Float], _ reference: [Float], tokens: Int, out: Int, tokenWeights tw: [Double]?) -> Double {
        var error = 0.0
        if let tw {
            for t in 0..<tokens {
                var e = 0.0
                for o in 0..<out { let d = Double(y[t * out + o] - reference[t * out + o]); e += d * d }
                error += tw[t] * e
            }
        } else {
            for i in 0..<y.count { let d = Double(y[i] - reference[i]); error += d * d }
        }
        return error
    }

    /// Per-token weights 1 / (m_t + ε) with m_t the mean square of token t's reference output and
    /// ε = 10⁻⁴ of the mean m_t (so near-zero outputs do not dominate), normalised to mean 1.
    static func tokenWeights(reference y: [Float], tokens: Int, out: Int) -> [Double] {
        let m = (0..<tokens).map { t in (0..<out).reduce(0.0) { $0 + Double(y[t * out + $1]) * Double(y[t * out + $1]) } / Double(out) }
        let eps = 1e-4 * m.reduce(0, +) / Double(max(tokens, 1)) + 1e-30
        let w = m.map { 1 / ($0 + eps) }
        let mean = w.reduce(0, +) / Double(max(tokens, 1))
        return w.map { $0 / mean }
    }

    /// `count` rows of `x`: the `count / 2` rows with the largest max_j |x_tj| / M_j (M_j = the
    /// channel's absmax over `x`), then the first rows not yet taken, in reservoir order.
    static func outlierRows(_ x: [Float], rows n: Int, columns: Int, count: Int) -> [Float] {
        guard count < n else { return x }
        var m = [Float](repeating: 0, count: columns)
        for t in 0..<n { for j in 0..<columns { m[j] = max(m[j], abs(x[t * columns + j])) } }
        let closeness = (0..<n).map { t in
            (0..<columns).reduce(Float(0)) { c, j in m[j] > 0 ? max(c, abs(x[t * columns + j]) / m[j]) : c }
        }
        let ranked = (0..<n).sorted { closeness[$0] != closeness[$1] ? closeness[$0] > closeness[$1] : $0 < $1 }
        var taken = Set(ranked.prefix(count / 2))
        for t in 0..<n where taken.count < count { taken.insert(t) }
        var out: [Float] = []
        out.reserveCapacity(count * columns)
        for t in taken.sorted() { out.append(contentsOf: x[(t * columns)..<((t + 1) * columns)]) }
        return out
    }

    /// Per-group scales 2^(−γ·b̃_init) with b̃_init from the group absmax (paper Eq. 7).
    static func initialScales(_ w: [Float], rows: Int, columns: Int, groupSize gs: Int, format: FloatingPointFormat,
                              gamma: Double) -> [Float] {
        let groups = (columns + gs - 1) / gs
        var scales = [Float](repeating: 1, count: rows * groups)
        for r in 0..<rows {
            for g in 0..<groups {
                var m: Float = 0
                for j in (g * gs)..<min(columns, (g + 1) * gs) { m = max(m, abs(w[r * columns + j])) }
                scales[r * groups + g] = m > 0 ? FloatingPointFormat.scale(bias: gamma * format.initialBias(absMax: m)) : 1
            }
        }
        return scales
    }

    /// `x[rows, columns] · wᵀ` with `w` `[out, columns]`.
    static func product(_ x: [Float], rows: Int, weight w: [Float], out: Int, columns: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * out)
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                y.withUnsafeMutableBufferPointer { yp in
                    BLAS.gemm(m: rows, n: out, k: columns, a: xp.baseAddress!, lda: columns, b: wp.baseAddress!,
                              ldb: columns, transposeB: true, c: yp.baseAddress!, ldc: out)
                }
            }
        }
        return y
    }
}

/// One candidate activation quantizer: format, γ, and the resulting per-tensor scale 2^(−ρ) and
/// (FPQ) per-channel offsets k_j.
struct ActivationCandidate: Sendable {
    let format: FloatingPointFormat
    let gamma: Double
    /// The real bias b̃ (per tensor) or ρ (per channel).
    let bias: Double
    let scale: Float
    /// k_j (FPQ); nil for the per-tensor baseline.
    let offsets: [Int]?

    init(format: FloatingPointFormat, gamma: Double, channelAbsMax: [Float], perChannel: Bool, maxOffset cap: Int? = nil,
         floorOffsets: Bool = false) {
        self.format = format
        self.gamma = gamma
        if perChannel {
            // b_j from each channel's absmax; ρ from the widest channel; k_j = clamp(round(b_j) − round(ρ), 0, 2^e − 1)
            // (the cap 2^e − 1 is the reference's; `max_offset` overrides it).
            let maxOffset = cap ?? (1 << format.exponentBits) - 1
            let b = channelAbsMax.map { $0 > 0 ? format.initialBias(absMax: $0) : Double.infinity }
            let rhoInit = b.min().map { $0.isFinite ? $0 : 0 } ?? 0
            let rho = gamma * rhoInit
            let z = rho.rounded(.toNearestOrEven)
            offsets = b.map { bj in
                guard bj.isFinite else { return maxOffset }
                let k = floorOffsets ? (bj - rho).rounded(.down) : bj.rounded(.toNearestOrEven) - z
                return Int(min(max(k, 0), Double(maxOffset)))
            }
            bias = rho
        } else {
            let absMax = channelAbsMax.max() ?? 0
            bias = gamma * format.initialBias(absMax: absMax)
            offsets = nil
        }
        scale = FloatingPointFormat.scale(bias: bias)
    }

    /// Whether `other` quantizes every input identically: the same format, bias and offsets.
    func sameQuantizer(as other: ActivationCandidate) -> Bool {
        format == other.format && bias == other.bias && scale == other.scale && offsets == other.offsets
    }

    /// 2^(−k_j), the stored per-channel factor.
    var channelScales: [Float]? {
        offsets?.map { Float(sign: .plus, exponent: -$0, significand: 1) }
    }

    var quantization: ActivationQuantization {
        ActivationQuantization(bits: format.bits, granularity: .perTensor, scale: scale, channelScales: channelScales,
                               floatFormat: format)
    }

    /// The fake-quantized activations, exactly as the runtime computes them.
    func apply(_ x: [Float], rows: Int, columns: Int) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        let cs = channelScales
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                withOptionalPointer(cs) { c in
                    MiniFloat.quantizeRows(xp.baseAddress!, rows: rows, columns: columns, channelScales: c, alpha: scale,
                                           exponentBits: format.exponentBits, mantissaBits: format.mantissaBits,
                                           into: op.baseAddress!)
                }
            }
        }
        return out
    }
}

func withOptionalPointer<R>(_ array: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let array else { return body(nil) }
    return array.withUnsafeBufferPointer { body($0.baseAddress) }
}

/// The per-row (per-group) weight bias search in Gram form.
///
/// For row o with d = ŵ_o − w_o, the squared output error over the calibration rows is
/// `‖X̂ŵ_o − X w_o‖² = dᵀG d + 2 dᵀr_o + ‖(X̂ − X) w_o‖²` with G = X̂ᵀX̂ and r_o = X̂ᵀ(X̂ − X) w_o; the
/// last term does not depend on the candidate. Each group's candidates are scored by the exact
/// error of its row with the other groups at their current values (Gauss–Seidel over groups);
/// with one group per row this is the paper's per-output-channel search.
struct WeightSearch {
    let rows: Int, columns: Int, groupSize: Int
    let weight: [Float]
    /// G = X̂ᵀX̂, `columns × columns`.
    var gram: [Float]
    /// r_o per row, `rows × columns`.
    var linear: [Float]

    init(x: [Float], xq: [Float], tokens n: Int, weight: [Float], rows: Int, columns: Int, groupSize: Int) {
        let (gram, cross) = Self.moments(x: x, xq: xq, tokens: n, columns: columns)
        self.init(gram: gram, cross: cross, weight: weight, rows: rows, columns: columns, groupSize: groupSize)
    }

    /// G = X̂ᵀX̂ and `cross` = G − XᵀX̂ (= (G − X̂ᵀX)ᵀ; nil when X̂ = X), so that R = W·cross holds
    /// r_o = (G − X̂ᵀX) w_o in row o. Layers that share an input point and an activation quantizer
    /// share these (memoized by the caller).
    static func moments(x: [Float], xq: [Float], tokens n: Int, columns: Int) -> (gram: [Float], cross: [Float]?) {
        var gram = [Float](repeating: 0, count: columns * columns)
        xq.withUnsafeBufferPointer { q in
            gram.withUnsafeMutableBufferPointer { g in
                BLAS.gemm(m: columns, n: columns, k: n, a: q.baseAddress!, lda: columns, transposeA: true,
                          b: q.baseAddress!, ldb: columns, transposeB: false, c: g.baseAddress!, ldc: columns)
            }
        }
        guard xq != x else { return (gram, nil) }
        // cross[a, b] = G[a, b] − Σ_t x[t, a]·x̂[t, b]  (= (G − X̂ᵀX)ᵀ).
        var cross = gram
        x.withUnsafeBufferPointer { xp in
            xq.withUnsafeBufferPointer { q in
                cross.withUnsafeMutableBufferPointer { c in
                    BLAS.gemm(m: columns, n: columns, k: n, alpha: -1, a: xp.baseAddress!, lda: columns, transposeA: true,
                              b: q.baseAddress!, ldb: columns, transposeB: false, beta: 1, c: c.baseAddress!, ldc: columns)
                }
            }
        }
        return (gram, cross)
    }

    init(gram: [Float], cross: [Float]?, weight: [Float], rows: Int, columns: Int, groupSize: Int) {
        self.rows = rows
        self.columns = columns
        self.groupSize = groupSize
        self.weight = weight
        self.gram = gram
        // r_o = (G − X̂ᵀX) w_o, i.e. R = W·(G − X̂ᵀX)ᵀ = W·cross; zero when the activations are float.
        var linear = [Float](repeating: 0, count: rows * columns)
        if let cross {
            weight.withUnsafeBufferPointer { wp in
                cross.withUnsafeBufferPointer { c in
                    linear.withUnsafeMutableBufferPointer { r in
                        BLAS.gemm(m: rows, n: columns, k: columns, a: wp.baseAddress!, lda: columns,
                                  b: c.baseAddress!, ldb: columns, transposeB: false, c: r.baseAddress!, ldc: columns)
                    }
                }
            }
        }
        self.linear = linear
    }

    /// The exact Gram-form error of each row for deltas `d` (`rows × columns`):
    /// `dᵀG d + 2 dᵀr_o` (tests compare it with the brute-force output error).
    func rowErrors(deltas d: [Float]) -> [Double] {
        var u = [Float](repeating: 0, count: rows * columns)
        gemm(d, rows, columns, gram, columns, &u)
        return (0..<rows).map { o in
            var e = 0.0
            for j in 0..<columns { e += Double(d[o * columns + j]) * Double(u[o * columns + j] + 2 * linear[o * columns + j]) }
            return e
        }
    }

    /// Searches every group's bias for `format`; returns the scales and the summed row error.
    func run(format: FloatingPointFormat, gammas: [Double]) -> (scales: [Float], error: Double) {
        let gs = groupSize, groups = (columns + gs - 1) / gs
        // Initial biases from the group absmax; start every group at γ = 1 (MinMax).
        var initBias = [Double](repeating: 0, count: rows * groups)
        for r in 0..<rows {
            for g in 0..<groups {
                var m: Float = 0
                for j in (g * gs)..<min(columns, (g + 1) * gs) { m = max(m, abs(weight[r * columns + j])) }
                initBias[r * groups + g] = m > 0 ? format.initialBias(absMax: m) : .nan
            }
        }
        func scale(_ r: Int, _ g: Int, _ gamma: Double) -> Float {
            let b = initBias[r * groups + g]
            return b.isNaN ? 1 : FloatingPointFormat.scale(bias: gamma * b)
        }
        var scales = [Float](repeating: 1, count: rows * groups)
        var d = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            for g in 0..<groups {
                let s = scale(r, g, 1)
                scales[r * groups + g] = s
                for j in (g * gs)..<min(columns, (g + 1) * gs) {
                    d[r * columns + j] = format.quantize(weight[r * columns + j], scale: s) - weight[r * columns + j]
                }
            }
        }
        var u = [Float](repeating: 0, count: rows * columns)  // U = D·G
        if groups > 1 { gemm(d, rows, columns, gram, columns, &u) }
        for g in 0..<groups {
            let j0 = g * gs, j1 = min(columns, j0 + gs), width = j1 - j0
            var block = [Float](repeating: 0, count: width * width)
            for a in 0..<width { for b in 0..<width { block[a * width + b] = gram[(j0 + a) * columns + j0 + b] } }
            var old = [Float](repeating: 0, count: rows * width)
            for r in 0..<rows { for j in 0..<width { old[r * width + j] = d[r * columns + j0 + j] } }
            // base = r_g + (U_g − D_g·G_gg): the row's linear term from r and from the other groups.
            var base = [Float](repeating: 0, count: rows * width)
            if groups > 1 { gemm(old, rows, width, block, width, &base) }
            for r in 0..<rows {
                for j in 0..<width {
                    let other = groups > 1 ? u[r * columns + j0 + j] - base[r * width + j] : 0
                    base[r * width + j] = linear[r * columns + j0 + j] + other
                }
            }
            var bestError = [Double](repeating: .infinity, count: rows)
            var bestScale = [Float](repeating: 1, count: rows)
            var candidate = [Float](repeating: 0, count: rows * width)
            var p = [Float](repeating: 0, count: rows * width)
            var scalesNow = [Float](repeating: 1, count: rows)
            for gamma in gammas {
                for r in 0..<rows { scalesNow[r] = scale(r, g, gamma) }
                weight.withUnsafeBufferPointer { wp in
                    MiniFloat.quantizationError(wp.baseAddress! + j0, rows: rows, ld: columns, width: width,
                                                alphas: scalesNow, exponentBits: format.exponentBits,
                                                mantissaBits: format.mantissaBits, into: &candidate)
                }
                gemm(candidate, rows, width, block, width, &p)
                for r in 0..<rows {
                    var e = 0.0
                    for j in 0..<width {
                        let c = candidate[r * width + j]
                        e += Double(c) * Double(p[r * width + j] + 2 * base[r * width + j])
                    }
                    if e < bestError[r] { bestError[r] = e; bestScale[r] = scalesNow[r] }  // ties: smallest γ
                }
            }
            var delta = [Float](repeating: 0, count: rows * width)
            for r in 0..<rows {
                let s = bestScale[r]
                scales[r * groups + g] = s
                for j in 0..<width {
                    let v = weight[r * columns + j0 + j]
                    let nd = format.quantize(v, scale: s) - v
                    delta[r * width + j] = nd - old[r * width + j]
                    d[r * columns + j0 + j] = nd
                }
            }
            if groups > 1 {
                // U += ΔD_g · G[g, :]
                var rowsOfGram = [Float](repeating: 0, count: width * columns)
                for a in 0..<width { for b in 0..<columns { rowsOfGram[a * columns + b] = gram[(j0 + a) * columns + b] } }
                gemm(delta, rows, width, rowsOfGram, columns, &u, accumulate: true)
            }
        }
        let errors = rowErrors(deltas: d)
        return (scales, errors.reduce(0, +))
    }

    /// c[m×n] (+)= a[m×k] · b[k×n].
    private func gemm(_ a: [Float], _ m: Int, _ k: Int, _ b: [Float], _ n: Int, _ c: inout [Float],
                      accumulate: Bool = false) {
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    BLAS.gemm(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                              transposeB: false, beta: accumulate ? 1 : 0, c: cp.baseAddress!, ldc: n)
                }
            }
        }
    }
}
