import Calibration
import Foundation
import PTQCore
import Recipes

/// OutlierTune (Wang et al., arXiv 2406.18832; reference code aIiKkkk/OutlierTune "OT-May" and
/// aIiKkkk/Outliertune "OT-Aug").
///
/// For linears fed by a norm (q/k/v, gate/up; MiniLM's q/k/v and up), activations are quantized
/// statically **per input channel** after **symmetrization**:
///
/// - shift `z_j` = mean over calibration samples of the sample's (max_j + min_j)/2 (one
///   streaming pass; the reference divides by a hard-coded 512, we divide by the sample count),
/// - scale `s_j` = max(|max_j − z_j|, |min_j − z_j|)·p_j / (2^(b−1) − 1), with `p_j = 1` or, with
///   `clip_search: true`, OT-Aug's per-channel clipping search (p ∈ 1.00, 0.99 … 0.21 minimising
///   Σ|Q(x) − x|^2.4; the reference hard-codes 6 bits there, we use the recipe's activation bits)
///   evaluated on the calibration reservoir,
/// - "pre-executed dequantization": `s_j` is folded into the weight columns, W'[:, j] = s_j·W[:, j],
///   and W' is quantized per output row, so the runtime quantizes `(x − z)/s` with one integer
///   GEMM and one per-output rescale — the cost of per-tensor W8A8,
/// - the shift is compensated by the bias `b' = b + W·z`, computed with the original float W, so
///   the layer's function is unchanged before rounding.
///
/// The shift and scale live in the quantize op, not in the norm (OT-Aug adds a bias to RMSNorm),
/// so the same code is exact for pre-norm LLaMA and post-norm BERT, whose LayerNorm output also
/// feeds the residual.
///
/// o_proj and down_proj (BERT: attention output and FFN output denses) use dynamic per-token
/// symmetric activation quantization, as both reference uploads do: every layer the model's
/// structure says is not fed by a norm (`LayerRole.isFedByNorm`).
///
/// Weights: per-row RTN of the folded weights, symmetric or asymmetric as the recipe says
/// (OT-May: asymmetric min–max; the integer GEMM takes the zero point as a per-row correction),
/// or, with `gptq: true`, GPTQ on the folded weights (OT-Aug: asymmetric per channel, act-order,
/// 1 % damping, block 128, MSE range search with norm 2.4). The Hessian is that of the folded
/// layer's input (x − z)/s, derived from calibration's X·Xᵀ and channel sums; OT-Aug measures it
/// on the already-rounded integer inputs, we use the unrounded ones (one calibration pass).
public struct OutlierTuneQuantizer: Quantizer {
    public let weightBits: Int
    public let activationBits: Int
    public let symmetrize: Bool
    public let clipSearch: Bool
    public let errorNorm: Double
    /// GPTQ for the folded weights (nil = round to nearest).
    public let gptq: GPTQ?
    public let weightSymmetric: Bool
    /// Extension, not in the reference (recipe `output_smoothing: α`): o_proj/down_proj inputs
    /// are divided per channel by (absmax_j / mean absmax)^α before the per-token quantization,
    /// the scales folded into the weight columns as for the norm-fed layers, so the per-token
    /// step sees channels of similar range. nil = plain per-token, as both reference uploads do.
    /// Measured in docs/RESULTS.md (α 0.5 best of 0.35…1 on SmolLM2 W8A8).
    public let outputSmoothing: Double?
    /// The planned layer's role: the per-token path for layers not fed by a norm.
    let role: LayerRole

    public init(plan: LayerPlan) throws(PTQError) {
        symmetrize = try plan.parameters.bool("symmetrize", default: true)
        clipSearch = try plan.parameters.bool("clip_search", default: false)
        errorNorm = try plan.parameters.double("error_norm", default: 2.4, range: 1...4)
        let useGPTQ = try plan.parameters.bool("gptq", default: false)
        outputSmoothing = try plan.parameters.has("output_smoothing")
            ? plan.parameters.double("output_smoothing", range: 0...1) : nil
        try plan.parameters.rejectUnknown(allowed: Set(["symmetrize", "clip_search", "error_norm", "gptq", "output_smoothing"])
                                            .union(GPTQ.parameterKeys(prefix: "gptq_")))
        gptq = useGPTQ ? try GPTQ(weight: plan.weight, parameters: plan.parameters, prefix: "gptq_",
                                  rangeSearchByDefault: true) : nil
        let line = plan.ruleLine.map { "line \($0): " } ?? ""
        guard let activation = plan.activation else {
            throw PTQError("\(line)\(plan.name): outliertune quantizes activations; set activation bits")
        }
        guard plan.weight.groupSize == nil else {
            throw PTQError("\(line)\(plan.name): outliertune quantizes folded weights per output channel (group_size: channel)")
        }
        weightBits = plan.weight.bits
        weightSymmetric = plan.weight.symmetric
        activationBits = activation.bits
        role = plan.role
    }

    /// Whether the layer's input is quantized dynamically per token: inputs that no norm
    /// produces (attention output, MLP activation), whose channel ranges a static per-channel
    /// scale does not fit.
    static func isPerTokenLayer(_ role: LayerRole) -> Bool {
        !role.isFedByNorm
    }

    public var requiredStatistics: Set<StatisticKind> {
        if Self.isPerTokenLayer(role) {
            var kinds: Set<StatisticKind> = gptq == nil && outputSmoothing == nil ? [] : [.channelRange]
            if gptq != nil { kinds.insert(.gram) }
            return kinds
        }
        var kinds: Set<StatisticKind> = [.channelRange]
        if gptq != nil { kinds.insert(.gram) }
        if symmetrize { kinds.insert(.sampleMidpoint) }
        if clipSearch { kinds.insert(.reservoir) }
        return kinds
    }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let maxCode = Float((1 << (activationBits - 1)) - 1)
        if Self.isPerTokenLayer(layer.role) {
            var details = ["activation": "per_token dynamic"]
            guard let alpha = outputSmoothing else {
                let w = try quantizeWeight(layer.weight, layer: layer, hessian: { statistics?.hessian() }, details: &details)
                return QuantizedLinear(name: layer.name, method: "outliertune", weight: .integer(w), bias: layer.bias,
                                       activation: ActivationQuantization(bits: activationBits, granularity: .perToken),
                                       details: details)
            }
            guard let statistics else {
                throw PTQError("\(layer.name): output_smoothing needs calibration statistics at \(layer.inputPoint)")
            }
            let absMax = statistics.absMaximum
            let mean = absMax.reduce(0, +) / Float(max(absMax.count, 1))
            // Normalised so that a typical channel keeps its scale: only the per-token step cancels it.
            let scales = absMax.map { max(powf($0 / max(mean, 1e-8), Float(alpha)), 1e-4) }
            let (folded, _) = Self.fold(layer.weight, bias: layer.bias, shift: nil, scales: scales)
            details["activation"] = "per_token dynamic, channel-smoothed (alpha \(alpha))"
            let w = try quantizeWeight(folded, layer: layer, hessian: { statistics.hessian(scales: scales) }, details: &details)
            return QuantizedLinear(name: layer.name, method: "outliertune", weight: .integer(w), bias: layer.bias,
                                   activation: ActivationQuantization(bits: activationBits, granularity: .perToken,
                                                                      channelScales: scales),
                                   details: details)
        }
        guard let statistics else {
            throw PTQError("\(layer.name): outliertune needs calibration statistics at \(layer.inputPoint)")
        }
        let columns = layer.weight.shape[1]
        guard statistics.channels == columns else {
            throw PTQError("\(layer.name): statistics have \(statistics.channels) channels, the weight has \(columns) inputs")
        }
        let shift: [Float] = symmetrize ? (statistics.sampleMidpoint ?? [Float](repeating: 0, count: columns))
                                        : [Float](repeating: 0, count: columns)
        var range = (0..<columns).map { j in
            max(abs(statistics.maximum[j] - shift[j]), abs(statistics.minimum[j] - shift[j]))
        }
        var clipRatios: [Float]?
        if clipSearch, let reservoir = statistics.reservoir, statistics.reservoirCount > 0 {
            // q/k/v (and gate/up) share one input point: search once per point and bit width.
            let key = "outliertune.clip|\(activationBits)|\(errorNorm)|\(symmetrize)"
            let ratios = statistics.memoized(key) {
                Self.searchClipping(reservoir: reservoir, rows: statistics.reservoirCount, channels: columns,
                                    shift: shift, range: range, maxCode: maxCode, norm: errorNorm)
            }
            for j in 0..<columns { range[j] *= ratios[j] }
            clipRatios = ratios
        }
        // A channel that never moved from its shift would give s = 0; any positive scale is exact there.
        let scales = range.map { max($0, 1e-8) / maxCode }

        let (folded, bias) = Self.fold(layer.weight, bias: layer.bias, shift: symmetrize ? shift : nil, scales: scales)
        var details = [
            "activation": "per_channel static" + (symmetrize ? ", symmetrized" : ""),
            "row_peak_to_rms_before": String(format: "%.3f", Self.meanPeakToRMS(layer.weight)),
            "row_peak_to_rms_after_folding": String(format: "%.3f", Self.meanPeakToRMS(folded)),
            "mean_channel_scale": String(format: "%.5g", scales.reduce(0, +) / Float(columns)),
        ]
        if let clipRatios { details["mean_clip_ratio"] = String(format: "%.4f", clipRatios.reduce(0, +) / Float(columns)) }
        let weight = try quantizeWeight(folded, layer: layer, hessian: {
            statistics.hessian(shift: symmetrize ? shift : nil, scales: scales)
        }, details: &details)
        let needsBias = layer.bias != nil || symmetrize
        return QuantizedLinear(
            name: layer.name, method: "outliertune", weight: .integer(weight), bias: needsBias ? bias : nil,
            activation: ActivationQuantization(bits: activationBits, granularity: .perTensor, scale: 1,
                                               channelScales: scales, channelShift: symmetrize ? shift : nil),
            details: details)
    }

    /// Round to nearest, or GPTQ against the Hessian of the weight's input.
    private func quantizeWeight(_ weight: Tensor, layer: LinearLayer, hessian: () -> [Double]?,
                                details: inout [String: String]) throws(PTQError) -> IntegerWeight {
        guard let gptq else {
            return WeightQuantization.quantize(weight, bits: weightBits, symmetric: weightSymmetric, groupSize: nil)
        }
        guard let h = hessian() else {
            throw PTQError("\(layer.name): outliertune with gptq needs the X·Xᵀ ('gram') statistic at \(layer.inputPoint); "
                           + "re-run `ptq calibrate` with this recipe")
        }
        let result = try gptq.quantize(weight, hessian: h, layer: layer.name)
        details.merge(gptq.details(result)) { $1 }
        return result.weight
    }

    /// Symmetrization and pre-executed dequantization in float: returns W' (W'[:, j] = s_j·W[:, j])
    /// and b' = b + W·z, so that ((x − z) / s)·W'ᵀ + b' = x·Wᵀ + b exactly (before rounding).
    /// Without a shift, b' is the bias (zeros when there is none).
    public static func fold(_ weight: Tensor, bias: [Float]?, shift: [Float]?, scales: [Float]) -> (Tensor, [Float]) {
        let rows = weight.shape[0], columns = weight.shape[1]
        var newBias = bias ?? [Float](repeating: 0, count: rows)
        var folded = weight
        for o in 0..<rows {
            var shiftSum: Double = 0
            for j in 0..<columns {
                let w = weight.data[o * columns + j]
                if let shift { shiftSum += Double(w) * Double(shift[j]) }
                folded.data[o * columns + j] = w * scales[j]
            }
            newBias[o] += Float(shiftSum)
        }
        return (folded, newBias)
    }

    /// Mean over rows of max|w| / rms(w): how much a row's extreme values dominate its int grid.
    /// Folding scales into columns changes it; the ratio is logged per layer in the manifest.
    static func meanPeakToRMS(_ w: Tensor) -> Double {
        let rows = w.shape[0], columns = w.shape[1]
        var total = 0.0
        for o in 0..<rows {
            var peak: Float = 0, squares = 0.0
            for j in 0..<columns {
                let v = w.data[o * columns + j]
                peak = max(peak, abs(v))
                squares += Double(v * v)
            }
            let rms = (squares / Double(columns)).squareRoot()
            total += rms > 0 ? Double(peak) / rms : 0
        }
        return total / Double(max(rows, 1))
    }

    /// OT-Aug's per-channel clipping search on sampled rows: for each channel the ratio
    /// p ∈ {1.00, 0.99, …, 0.21} whose symmetric RTN minimises Σ|Q_p(x) − x|^norm.
    static func searchClipping(reservoir: [Float], rows: Int, channels: Int, shift: [Float], range: [Float],
                               maxCode: Float, norm: Double) -> [Float] {
        var ratios = [Float](repeating: 1, count: channels)
        var column = [Float](repeating: 0, count: rows)
        for j in 0..<channels where range[j] > 0 {
            for t in 0..<rows { column[t] = reservoir[t * channels + j] - shift[j] }
            var bestError = Double.infinity
            for step in 0..<80 {
                let p = Float(100 - step) / 100
                let scale = range[j] * p / maxCode
                let exponent = Float(norm)
                var error = 0.0
                for v in column {
                    let q = min(max((v / scale).rounded(.toNearestOrAwayFromZero), -maxCode), maxCode) * scale
                    let e = abs(q - v)
                    if e > 0 { error += Double(powf(e, exponent)) }
                }
                if error < bestError { bestError = error; ratios[j] = p }
            }
        }
        return ratios
    }
}

