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
        if activation != nil && !weight.symmetric {
            let line = plan.ruleLine.map { "line \($0): " } ?? ""
            throw PTQError("\(line)\(plan.name): integer activations need symmetric weights (set weight.symmetric: true)")
        }
    }

    public var requiredStatistics: Set<StatisticKind> {
        activation?.granularity == .perTensor ? [.channelRange] : []
    }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let w = WeightQuantization.quantize(layer.weight, scheme: weight)
        var act: ActivationQuantization?
        if let activation {
            switch activation.granularity {
            case .perToken:
                act = ActivationQuantization(bits: activation.bits, granularity: .perToken)
            case .perTensor:
                guard let statistics else {
                    throw PTQError("\(layer.name): per-tensor activation scales need calibration statistics at \(layer.inputPoint)")
                }
                let absMax = statistics.absMaximum.max() ?? 0
                let maxCode = Float((1 << (activation.bits - 1)) - 1)
                act = ActivationQuantization(bits: activation.bits, granularity: .perTensor,
                                             scale: absMax > 0 ? absMax / maxCode : 1)
            }
        }
        return QuantizedLinear(name: layer.name, method: "rtn", weight: w, bias: layer.bias, activation: act)
    }
}
