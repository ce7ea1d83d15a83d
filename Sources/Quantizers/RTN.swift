import Calibration
import PTQCore
import Recipes

/// Round-to-nearest baseline: weights quantized per channel or per group (symmetric or
/// asymmetric); activations optionally quantized per token (dynamic) or per tensor (static
/// scale = calibration absmax / (2^(b-1) - 1)). The comparison row for every other method.
public struct RTNQuantizer: Quantizer {
    public let weight: WeightScheme
    public let activation: ActivationScheme?

    public init(plan: LayerPlan) throws(PTQError) {
        try plan.parameters.rejectUnknown(allowed: [])
        weight = plan.weight
        activation = plan.activation
    }

    public var requiredStatistics: Set<StatisticKind> {
        activation?.granularity == .perTensor ? [.channelRange] : []
    }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let w = WeightQuantization.quantize(layer.weight, scheme: weight)
        let act = try Self.activationQuantization(activation, layer: layer, statistics: statistics)
        return QuantizedLinear(name: layer.name, method: "rtn", weight: .integer(w), bias: layer.bias, activation: act)
    }

    /// Per-token (dynamic) or per-tensor (static: calibration absmax / (2^(b−1) − 1)) activation
    /// quantization for a layer, or nil for float activations. Shared by methods that quantize
    /// activations the plain way.
    static func activationQuantization(_ activation: ActivationScheme?, layer: LinearLayer,
                                       statistics: PointStatistics?) throws(PTQError) -> ActivationQuantization? {
        guard let activation else { return nil }
        switch activation.granularity {
        case .perToken:
            return ActivationQuantization(bits: activation.bits, granularity: .perToken)
        case .perTensor:
            guard let statistics else {
                throw PTQError("\(layer.name): per-tensor activation scales need calibration statistics at \(layer.inputPoint)")
            }
            let absMax = statistics.absMaximum.max() ?? 0
            let maxCode = Float((1 << (activation.bits - 1)) - 1)
            return ActivationQuantization(bits: activation.bits, granularity: .perTensor,
                                          scale: absMax > 0 ? absMax / maxCode : 1)
        }
    }
}
