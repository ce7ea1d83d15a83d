import Calibration
import Foundation
import Kernels
import PTQCore
import Recipes

/// AdaLog's uniform linear layers (Wu et al., ECCV 2024; GoatWu/AdaLog
/// `AsymmetricallyBatchingQuantLinear` and `AsymmetricallyChannelWiseBatchingQuantLinear`):
/// asymmetric per-output-channel weights and a per-tensor asymmetric activation quantizer, both
/// searched with FPCS (``FPCS``), in the reference's order:
///
/// 1. (layers fed by a norm) the RepQ-ViT reparameterisation: a per-channel `(s_c, z_c)` FPCS on
///    the activation MSE, then `ρ_c = s_c/s̄`, `β_c = −z_c·s_c/ρ_c + z̄·s̄` (s̄ the mean scale, z̄ the
///    rounded mean zero point), the input becomes `x/ρ − β`, the weight columns `W·diag(ρ)` and
///    the bias `b + W'·β`. BERT is post-norm, so ρ and β cannot go into the LayerNorm (its
///    output is also the residual); they live in the quantize op instead (`channelScales` = ρ,
///    `channelShift` = ρ·β plus the zero point's shift), which computes the same `x/ρ − β`;
/// 2. weights: FPCS on the weight MSE; activations: FPCS on the activation MSE;
/// 3. `rounds` (3, the configs' `search_round`) × [weights: FPCS on the layer-output MSE with the
///    input quantized by the current activation quantizer — scored through Gram matrices, see
///    ``WeightFPCS``; activations: FPCS on the layer-output MSE with the current quantized
///    weights, on `tokens` evenly spaced calibration rows, 16 candidates per sgemm].
///
/// FPCS defaults follow the reference configs, not the paper (128 candidates per step, top 16,
/// 6 steps; the paper says 4 steps). The layers are calibrated on full-precision inputs (the
/// calibration reservoir), as in the reference.
///
/// Differences (documented choices): the activation codes are the runtime's signed
/// `±(2^(n−1) − 1)` (one level fewer than the reference's `0 … 2^n − 1`; see ``ActivationFPCS``);
/// q, k and v share an input but are searched as three layers (the reference's timm `qkv` is one
/// linear); the Gram matrices and activation-MSE searches use up to `gram_tokens` reservoir rows,
/// the activation output search `tokens` of them. With `granularity: per_token` the activations
/// are the runtime's dynamic symmetric per-token codes (no activation search, no
/// reparameterisation) and one output-MSE weight round is run.
public struct FPCSLinearQuantizer: Quantizer {
    let weightBits: Int
    let activationBits: Int
    let perToken: Bool
    let rounds: Int
    let tokens: Int
    let gramTokens: Int
    let reparameterize: Bool
    /// Where the weight grid's zero points lie (``FPCS/ZeroPointWindow``; `zero_points`).
    let zeroPoints: FPCS.ZeroPointWindow
    let role: LayerRole

    public init(plan: LayerPlan) throws(PTQError) {
        let p = plan.parameters
        try p.rejectUnknown(allowed: ["rounds", "tokens", "gram_tokens", "reparameterize", "zero_points"])
        zeroPoints = FPCS.ZeroPointWindow(rawValue: try p.string("zero_points", default: "reference",
                                                                 oneOf: FPCS.ZeroPointWindow.allCases.map(\.rawValue)))!
        rounds = try p.int("rounds", default: 3, range: 0...10)
        tokens = try p.int("tokens", default: 128, range: 16...4096)
        gramTokens = try p.int("gram_tokens", default: 2048, range: 64...65536)
        reparameterize = try p.bool("reparameterize", default: true)
        let line = plan.ruleLine.map { "line \($0): " } ?? ""
        guard let activation = plan.activation else {
            throw PTQError("\(line)\(plan.name): method fpcs searches the input quantizer too: the recipe must give activation bits")
        }
        guard plan.weight.groupSize == nil else {
            throw PTQError("\(line)\(plan.name): method fpcs quantizes weights per output channel (group_size: channel)")
        }
        guard !plan.weight.symmetric else {
            throw PTQError("\(line)\(plan.name): method fpcs searches asymmetric weights (scale and zero point per row): "
                           + "set weight.symmetric: false")
        }
        weightBits = plan.weight.bits
        activationBits = activation.bits
        perToken = activation.granularity == .perToken
        role = plan.role
    }

    public var requiredStatistics: Set<StatisticKind> { [.reservoir] }

    /// The parameters FPCS found for one layer, before the zero point and ρ, β are folded for
    /// the runtime (kept apart so that tests can check each step of the fold on its own).
    struct Search {
        /// RepQ-ViT's reparameterisation; nil when the layer has none.
        var reparameterization: RepQReparameterization?
        /// `W·diag(ρ)` (row-major `out × m`) and `b + W·diag(ρ)·β`: the float layer on `x/ρ − β`.
        var weight: [Float]
        var bias: [Float]
        var weightChoice: [FPCS.Candidate]
        /// nil for per-token activations.
        var activationChoice: FPCS.Candidate?
        var details: [String: String]
    }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let found = try search(layer, statistics: statistics)
        return emit(found, layer: layer)
    }

    /// Steps 1–3 of the type's comment.
    func search(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> Search {
        guard let statistics, let reservoir = statistics.reservoir, statistics.reservoirCount > 0 else {
            throw PTQError("\(layer.name): method fpcs needs the input reservoir at \(layer.inputPoint); "
                           + "re-run `ptq calibrate` with this recipe")
        }
        let out = layer.weight.shape[0], m = layer.weight.shape[1]
        guard statistics.channels == m else {
            throw PTQError("\(layer.name): statistics have \(statistics.channels) channels, the weight has \(m) inputs")
        }
        // Evenly spaced reservoir rows for the Gram matrices and the MSE searches.
        let available = statistics.reservoirCount, n = min(gramTokens, available)
        var x = [Float](repeating: 0, count: n * m)
        for i in 0..<n {
            let row = i * available / n
            for j in 0..<m { x[i * m + j] = reservoir[row * m + j] }
        }
        // Evenly spaced `tokens` of those rows for the activation searches (per channel, per
        // tensor, on the output).
        let scoringRows = min(tokens, n)
        func subsample(_ x: [Float]) -> [Float] {
            var sample = [Float](repeating: 0, count: scoringRows * m)
            for i in 0..<scoringRows {
                let row = i * n / scoringRows
                for j in 0..<m { sample[i * m + j] = x[row * m + j] }
            }
            return sample
        }
        let clock = SearchClock(layer.name)
        var w = layer.weight.data
        var bias = layer.bias ?? [Float](repeating: 0, count: out)
        var details: [String: String] = ["rounds": "\(rounds)", "gram_tokens": "\(n)"]

        // 1. RepQ-ViT: per-channel search, then x/ρ − β with ρ into the weight columns.
        var repq: RepQReparameterization? = nil
        if !perToken && reparameterize && role.isFedByNorm {
            // q, k and v (and any layers sharing the input point) share this search.
            let key = "fpcs.channels|\(activationBits)|\(n)|\(scoringRows)"
            let flat = statistics.memoized(key) {
                let c = ActivationFPCS.searchChannels(subsample(x), rows: scoringRows, columns: m, bits: activationBits)
                let scales: [Float] = c.map(\.scale), zeros: [Float] = c.map { Float($0.zero) }
                return scales + zeros
            }
            let r = RepQReparameterization(channels: (0..<m).map { FPCS.Candidate(scale: flat[$0], zero: Int(flat[m + $0])) })
            r.transform(input: &x, rows: n)
            r.fold(weight: &w, bias: &bias, rows: out)
            repq = r
            details["reparameterization"] = String(format: "RepQ-ViT, rho %.3g…%.3g", r.rho.min() ?? 0, r.rho.max() ?? 0)
            clock.lap("per-channel search")
        }
        let sample = subsample(x)
        details["zero_points"] = zeroPoints.rawValue
        details["weight_rows_outside_reference_zero_points"] =
            "\(WeightFPCS.rowsOutsideReferenceWindow(w, rows: out, columns: m, bits: weightBits))/\(out)"

        // 2. Initialisation on the weight's and the activation's own MSE.
        var weightChoice = WeightFPCS.searchWeightMSE(w, rows: out, columns: m, bits: weightBits, window: zeroPoints)
        var activationChoice: FPCS.Candidate? = nil
        if !perToken {
            let key = "fpcs.activation|\(activationBits)|\(n)|\(scoringRows)|\(repq != nil)"
            let flat = statistics.memoized(key) {
                let c = ActivationFPCS.searchMSE(sample, bits: activationBits).candidate
                return [c.scale, Float(c.zero)]
            }
            activationChoice = FPCS.Candidate(scale: flat[0], zero: Int(flat[1]))
        }
        clock.lap("initial searches")

        // 3. Alternating rounds on the layer output.
        var weightError: Double = 0, activationError: Double = 0
        let weightRounds = perToken ? min(rounds, 1) : rounds
        for _ in 0..<weightRounds {
            let xHat = activationChoice.map { ActivationFPCS.fake(x, $0, bits: activationBits) }
                ?? ActivationFPCS.fakePerToken(x, rows: n, columns: m, bits: activationBits)
            let found = WeightFPCS.searchOutputMSE(w, rows: out, columns: m, bits: weightBits, xHat: xHat, x: x, n: n,
                                                   window: zeroPoints)
            weightChoice = found.candidates
            weightError = found.error
            clock.lap("weight output search")
            if !perToken {
                let wHat = WeightFPCS.integerWeight(w, rows: out, columns: m, bits: weightBits,
                                                    candidates: weightChoice).dequantizedReference()
                let a = ActivationFPCS.searchOutputMSE(sample, rows: scoringRows, columns: m, bits: activationBits,
                                                       w: w, wHat: wHat, out: out)
                activationChoice = a.candidate
                activationError = a.error
                clock.lap("activation output search")
            }
        }
        // Output energy of the scored rows, for relative errors in `ptq inspect`.
        var y = [Float](repeating: 0, count: n * out)
        x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in
            BLAS.linear(xp.baseAddress!, rows: n, inFeatures: m, weight: wp.baseAddress!, outFeatures: out, into: &y)
        }}
        let energy = y.reduce(0.0) { $0 + Double($1) * Double($1) }
        if weightRounds > 0 { details["weight_output_relative_mse"] = String(format: "%.3e", weightError / max(energy, 1e-30)) }
        if !perToken && rounds > 0 {
            let sampleEnergy = energy * Double(scoringRows) / Double(max(n, 1))
            details["activation_output_relative_mse"] = String(format: "%.3e", activationError / max(sampleEnergy, 1e-30))
        }
        return Search(reparameterization: repq, weight: w, bias: bias, weightChoice: weightChoice,
                      activationChoice: activationChoice, details: details)
    }

    /// The layer the runtime executes: integer weights, and the activation quantizer's zero
    /// point, ρ and β folded into the quantize op's shift and scale and into the bias.
    func emit(_ found: Search, layer: LinearLayer) -> QuantizedLinear {
        let out = layer.weight.shape[0], m = layer.weight.shape[1]
        var details = found.details, bias = found.bias
        let weight = WeightFPCS.integerWeight(found.weight, rows: out, columns: m, bits: weightBits,
                                              candidates: found.weightChoice)
        let weightScales = weight.scales
        details["weight"] = String(format: "int%d asymmetric per channel, FPCS scales %.3g…%.3g", weightBits,
                                   weightScales.min() ?? 0, weightScales.max() ?? 0)
        guard let a = found.activationChoice else {
            details["activation"] = "per_token dynamic"
            return QuantizedLinear(name: layer.name, method: "fpcs", weight: .integer(weight), bias: bias,
                                   activation: ActivationQuantization(bits: activationBits, granularity: .perToken),
                                   details: details)
        }
        details["activation"] = String(format: "per_tensor int%d asymmetric, FPCS scale %.4g zero point %d", activationBits,
                                       a.scale, a.zero)
        // The zero point as the runtime's shift: (x' − s·(2^(n−1) − z))/s rounded to ±(2^(n−1) − 1).
        let offset = a.scale * Float((1 << (activationBits - 1)) - a.zero)
        let wHat = weight.dequantizedReference()
        for o in 0..<out {
            var s: Double = 0
            for j in 0..<m { s += Double(wHat[o * m + j]) }
            bias[o] += Float(Double(offset) * s)
        }
        // x' = x/ρ − β − offset = (x − ρ·(β + offset))/ρ.
        let rho = found.reparameterization?.rho, beta = found.reparameterization?.beta
        let shift = (0..<m).map { j in (rho?[j] ?? 1) * ((beta?[j] ?? 0) + offset) }
        return QuantizedLinear(
            name: layer.name, method: "fpcs", weight: .integer(weight), bias: bias,
            activation: ActivationQuantization(bits: activationBits, granularity: .perTensor, scale: a.scale,
                                               channelScales: rho, channelShift: shift),
            details: details)
    }
}

/// RepQ-ViT's per-channel → per-tensor reparameterisation of a linear layer's input (GoatWu/AdaLog
/// `AsymmetricallyChannelWiseBatchingQuantLinear.reparam`): from per-channel quantizers
/// `(s_c, z_c)`, `ρ_c = s_c/s̄` and `β_c = −z_c·s_c/ρ_c + z̄·s̄` (s̄ the mean scale, z̄ the rounded
/// mean zero point). The input becomes `x/ρ − β` — every channel's grid `s_c·(k − z_c)` maps onto
/// the shared `s̄·(k − z̄)` — and the layer `W·diag(ρ)` with bias `b + W·diag(ρ)·β`, so the float
/// function is unchanged.
struct RepQReparameterization {
    let rho: [Float]
    let beta: [Float]

    init(channels: [FPCS.Candidate]) {
        let m = channels.count
        let meanScale = channels.reduce(Float(0)) { $0 + $1.scale } / Float(max(m, 1))
        let meanZero = (Double(channels.reduce(0) { $0 + $1.zero }) / Double(max(m, 1))).rounded()
        rho = channels.map { $0.scale / meanScale }
        let targetMin = -Float(meanZero) * meanScale
        beta = (0..<m).map { j in -Float(channels[j].zero) * channels[j].scale / (channels[j].scale / meanScale) - targetMin }
    }

    /// `x ← x/ρ − β` for `rows` rows.
    func transform(input x: inout [Float], rows: Int) {
        let m = rho.count
        for i in 0..<rows { for j in 0..<m { x[i * m + j] = x[i * m + j] / rho[j] - beta[j] } }
    }

    /// `W ← W·diag(ρ)`, `b ← b + W'·β` (`rows` output rows).
    func fold(weight w: inout [Float], bias: inout [Float], rows out: Int) {
        let m = rho.count
        for o in 0..<out { for j in 0..<m { w[o * m + j] *= rho[j] } }
        for o in 0..<out {
            var s: Double = 0
            for j in 0..<m { s += Double(w[o * m + j]) * Double(beta[j]) }
            bias[o] += Float(s)
        }
    }
}

/// Stage times of a layer's search on stderr when `PTQ_FPCS_TRACE` is set (never in the file:
/// two quantizations must give identical bytes).
final class SearchClock {
    let name: String
    let enabled = ProcessInfo.processInfo.environment["PTQ_FPCS_TRACE"] != nil
    var last = Date()
    init(_ name: String) { self.name = name }
    func lap(_ stage: String) {
        guard enabled else { return }
        let now = Date()
        FileHandle.standardError.write(Data(String(format: "\n[fpcs] %@ %@ %.2f s\n", name, stage, now.timeIntervalSince(last)).utf8))
        last = now
    }
}
