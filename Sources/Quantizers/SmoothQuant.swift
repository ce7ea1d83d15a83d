import Calibration
import Foundation
import PTQCore
import Recipes

/// SmoothQuant (Xiao et al., 2023), the standard baseline for static W8A8: per input channel,
/// `s_j = max|X_j|^α / max|W_:,j|^(1−α)` migrates activation range into the weights
/// (x' = x / s, W' = W·diag(s)); activations are then quantized with one static per-tensor
/// scale from calibration (max_j max|X_j| / s_j over 2^(b−1) − 1) and W' per output row.
/// The division by `s` lives in the quantize op (channel scales), so nothing is folded into the
/// preceding norm and every linear can be smoothed.
public struct SmoothQuantQuantizer: Quantizer {
    public let alpha: Double
    public let weightBits: Int
    public let activationBits: Int

    public init(plan: LayerPlan) throws(PTQError) {
        alpha = try plan.parameters.double("alpha", default: 0.5, range: 0...1)
        try plan.parameters.rejectUnknown(allowed: ["alpha"])
        let line = plan.ruleLine.map { "line \($0): " } ?? ""
        guard let activation = plan.activation else {
            throw PTQError("\(line)\(plan.name): smoothquant quantizes activations; set activation bits")
        }
        guard plan.weight.symmetric, plan.weight.groupSize == nil else {
            throw PTQError("\(line)\(plan.name): smoothquant quantizes weights symmetric per output channel")
        }
        weightBits = plan.weight.bits
        activationBits = activation.bits
    }

    public var requiredStatistics: Set<StatisticKind> { [.channelRange] }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        guard let statistics else {
            throw PTQError("\(layer.name): smoothquant needs calibration statistics at \(layer.inputPoint)")
        }
        let rows = layer.weight.shape[0], columns = layer.weight.shape[1]
        let activationMax = statistics.absMaximum
        var weightMax = [Float](repeating: 0, count: columns)
        for o in 0..<rows { for j in 0..<columns { weightMax[j] = max(weightMax[j], abs(layer.weight.data[o * columns + j])) } }
        let scales: [Float] = (0..<columns).map { j in
            guard activationMax[j] > 0, weightMax[j] > 0 else { return 1 }
            return Float(pow(Double(activationMax[j]), alpha) / pow(Double(weightMax[j]), 1 - alpha))
        }
        var folded = layer.weight
        for o in 0..<rows { for j in 0..<columns { folded.data[o * columns + j] *= scales[j] } }
        let smoothedMax = (0..<columns).map { activationMax[$0] / scales[$0] }.max() ?? 0
        let maxCode = Float((1 << (activationBits - 1)) - 1)
        return QuantizedLinear(
            name: layer.name, method: "smoothquant",
            weight: .integer(WeightQuantization.quantize(folded, bits: weightBits, symmetric: true, groupSize: nil)),
            bias: layer.bias,
            activation: ActivationQuantization(bits: activationBits, granularity: .perTensor,
                                               scale: smoothedMax > 0 ? smoothedMax / maxCode : 1, channelScales: scales),
            details: ["alpha": String(alpha)])
    }
}
