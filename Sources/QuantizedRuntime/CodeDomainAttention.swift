import Kernels
import Models
import PTQCore

/// `P·V` of one attention head with `P` quantized to codes at run time (AdaLog or uniform):
/// each probability row is encoded by threshold comparisons (no logarithm), then
/// `CodeAttention.multiply` groups the value rows by code and applies each code's level once
/// (shift-and-mantissa levels for AdaLog). The probabilities never exist as dequantized floats.
public final class CodeDomainAttention: AttentionProbabilityOp {
    public let quantizer: PositiveActivationQuantizer
    let levels: [Float]
    let thresholds: [Float]
    let descending: Bool

    public init(_ quantizer: PositiveActivationQuantizer) {
        self.quantizer = quantizer
        levels = quantizer.levels
        switch quantizer {
        case .adalog(let a):
            thresholds = a.thresholds
            descending = true
        case .uniform(let u):
            thresholds = u.thresholds
            descending = false
        }
    }

    /// Codes of `count` probabilities.
    public func encode(_ x: UnsafePointer<Float>, count: Int, into codes: UnsafeMutablePointer<UInt8>) {
        thresholds.withUnsafeBufferPointer { t in
            if descending {
                CodeAttention.encodeDescending(x, count: count, thresholds: t, into: codes)
            } else {
                CodeAttention.encodeAscending(x, count: count, thresholds: t, into: codes)
            }
        }
    }

    public func multiply(probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                         valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
        guard rows > 0, columns > 0 else { return }
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: rows * columns)
        defer { codes.deallocate() }
        encode(probabilities, count: rows * columns, into: codes)
        levels.withUnsafeBufferPointer { l in
            CodeAttention.multiply(codes: codes, rows: rows, columns: columns, skipCode: quantizer.zeroCode, levels: l,
                                   values: values, valueStride: valueStride, width: width, into: out, outStride: outStride)
        }
    }
}

extension PackedWeights {
    /// The code-domain `P·V` of layer `layer` when the packed model quantizes its probabilities.
    public func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)? {
        guard let site = model.activationSites[QuantizationPoints.attentionProbabilities(layer)] else { return nil }
        return CodeDomainAttention(site.quantizer)
    }
}
