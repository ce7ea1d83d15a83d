import Kernels
import Models
import PTQCore

/// `P·V` of one attention head with `P` quantized to codes at run time (AdaLog or uniform):
/// each probability row is encoded by threshold comparisons (no logarithm), then
/// `CodeAttention.multiply` groups the value rows by code and applies each code's level once
/// (shift-and-mantissa levels for AdaLog). The probabilities never exist as dequantized floats.
///
/// Fully quantized attention (encoders): with `query`/`key` set, `Q·Kᵀ` runs on per-head
/// uniform codes with integer dot products; with `value` set, `P·V` sums the V codes of keys
/// sharing a probability code as integers and applies each code's level and V's scale once.
public final class CodeDomainAttention: HeadAwareAttentionOp {
    public let quantizer: PositiveActivationQuantizer
    public let query: PerHeadUniformQuantizer?
    public let key: PerHeadUniformQuantizer?
    public let value: PerHeadUniformQuantizer?
    let levels: [Float]
    let thresholds: [Float]
    let descending: Bool

    public init(_ quantizer: PositiveActivationQuantizer, query: PerHeadUniformQuantizer? = nil,
                key: PerHeadUniformQuantizer? = nil, value: PerHeadUniformQuantizer? = nil) {
        self.quantizer = quantizer
        self.query = query
        self.key = key
        self.value = value
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

extension CodeDomainAttention {
    public func scores(head: Int, queries: UnsafePointer<Float>, rows: Int, keys: UnsafePointer<Float>, columns: Int,
                       width: Int, stride: Int, alpha: Float, into scores: UnsafeMutablePointer<Float>) -> Bool {
        guard let query, let key, rows > 0, columns > 0 else { return false }
        let queryCodes = UnsafeMutablePointer<UInt8>.allocate(capacity: rows * width)
        let keyCodes = UnsafeMutablePointer<UInt8>.allocate(capacity: columns * width)
        defer { queryCodes.deallocate(); keyCodes.deallocate() }
        CodeAttention.encodeUniform(queries, rows: rows, width: width, stride: stride, scale: query.scales[head],
                                    zero: query.zeroPoints[head], maxCode: query.maxCode, into: queryCodes)
        CodeAttention.encodeUniform(keys, rows: columns, width: width, stride: stride, scale: key.scales[head],
                                    zero: key.zeroPoints[head], maxCode: key.maxCode, into: keyCodes)
        CodeAttention.integerScores(queryCodes: queryCodes, rows: rows, keyCodes: keyCodes, columns: columns, width: width,
                                    queryScale: query.scales[head], queryZero: query.zeroPoints[head],
                                    keyScale: key.scales[head], keyZero: key.zeroPoints[head], alpha: alpha, into: scores)
        return true
    }

    public func multiply(head: Int, probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                         valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
        guard let value else {
            multiply(probabilities: probabilities, rows: rows, columns: columns, values: values, valueStride: valueStride,
                     width: width, into: out, outStride: outStride)
            return
        }
        guard rows > 0, columns > 0 else { return }
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: rows * columns)
        let valueCodes = UnsafeMutablePointer<UInt8>.allocate(capacity: columns * width)
        defer { codes.deallocate(); valueCodes.deallocate() }
        encode(probabilities, count: rows * columns, into: codes)
        CodeAttention.encodeUniform(values, rows: columns, width: width, stride: valueStride, scale: value.scales[head],
                                    zero: value.zeroPoints[head], maxCode: value.maxCode, into: valueCodes)
        levels.withUnsafeBufferPointer { l in
            CodeAttention.multiplyIntegerValues(codes: codes, rows: rows, columns: columns, skipCode: quantizer.zeroCode,
                                                levels: l, valueCodes: valueCodes, width: width,
                                                valueScale: value.scales[head], valueZero: value.zeroPoints[head],
                                                into: out, outStride: outStride)
        }
    }
}

extension PackedWeights {
    /// The code-domain `P·V` of layer `layer` when the packed model quantizes its probabilities.
    public func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)? {
        guard let site = model.activationSites[QuantizationPoints.attentionProbabilities(layer)] else { return nil }
        return CodeDomainAttention(site.quantizer, query: site.query, key: site.key, value: site.value)
    }
}
