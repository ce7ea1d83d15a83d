/// What a model calls, when set, instead of the float product `P·V` of one attention head's
/// post-softmax probabilities and values: the quantized runtime quantizes `P` to codes (AdaLog,
/// uniform) and multiplies in the code domain; calibration uses it to observe `P` and `V`
/// together (the probability quantizer is searched on the `P·V` error).
public protocol AttentionProbabilityOp: AnyObject, Sendable {
    /// `out[t, 0..<width] = Q(P)[t, :] · V` for one head.
    /// - Parameters:
    ///   - probabilities: `P`, `rows × columns` row-major (masked keys are exact zeros).
    ///   - values: `V`, `columns × width`, row stride `valueStride`.
    ///   - out: `rows × width`, row stride `outStride`.
    func multiply(probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                  valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int)
}

/// Head-aware entry points of the attention op (encoders with fully quantized attention: Q, K
/// and V quantized per head). The defaults keep Q·Kᵀ in float and ignore the head, so ops that
/// only quantize `P` need not implement them.
public protocol HeadAwareAttentionOp: AttentionProbabilityOp {
    /// Writes `scores[t, j] = alpha · Q_t·K_j` for head `head` and returns true, or returns
    /// false to let the model compute the float product.
    /// - Parameters:
    ///   - queries, keys: the head's slices (`rows × width`, `columns × width`), row stride `stride`.
    ///   - scores: `rows × columns`, row stride `columns`.
    func scores(head: Int, queries: UnsafePointer<Float>, rows: Int, keys: UnsafePointer<Float>, columns: Int,
                width: Int, stride: Int, alpha: Float, into scores: UnsafeMutablePointer<Float>) -> Bool
    /// `multiply(probabilities:…)` for head `head`.
    func multiply(head: Int, probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                  valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int)
}
