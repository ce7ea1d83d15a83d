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
