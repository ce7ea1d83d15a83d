import PTQCore

/// Per-call instrumentation of a forward pass. Models keep no mutable state: calibration,
/// verification and searches pass what they need with each call, so one model can serve
/// several callers at once.
public struct ForwardHooks {
    /// Receives the activations at every quantization point; nil = none.
    public var observer: (any ActivationObserver)?
    /// Per layer, an op that replaces the model's own `P·V` for this call (a calibration search
    /// scoring candidate quantizers); nil = the model's own ops.
    public var attentionProbabilityOps: [(any AttentionProbabilityOp)?]?

    public init(observer: (any ActivationObserver)? = nil,
                attentionProbabilityOps: [(any AttentionProbabilityOp)?]? = nil) {
        self.observer = observer
        self.attentionProbabilityOps = attentionProbabilityOps
    }
}

/// Receives activations at a model's quantization points during a forward pass.
///
/// The model passes a view of its own buffers (no copy); an observer must not keep the
/// pointer. Points are named like `layers.3.attention.input` (see `QuantizationPoints`).
public protocol ActivationObserver: AnyObject {
    /// `values` holds `rows × columns` floats, row-major, one row per token (for attention
    /// probabilities: one row per query, `columns` keys, masked keys are exact zeros).
    func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int)
}

/// Names of the places where activations can be observed and quantized.
public enum QuantizationPoints {
    /// Normed input shared by q/k/v projections.
    public static func attentionInput(_ layer: Int) -> String { "layers.\(layer).attention.input" }
    /// Input of the attention output projection (concatenated heads).
    public static func attentionOutputInput(_ layer: Int) -> String { "layers.\(layer).attention.o_proj.input" }
    /// Post-softmax attention probabilities, per head.
    public static func attentionProbabilities(_ layer: Int) -> String { "layers.\(layer).attention.probs" }
    /// Normed input shared by the MLP's first projections (gate/up, or up for BERT).
    public static func mlpInput(_ layer: Int) -> String { "layers.\(layer).mlp.input" }
    /// Input of the down projection: SiLU(gate)·up (LLaMA) or GELU(up) (BERT).
    public static func mlpDownInput(_ layer: Int) -> String { "layers.\(layer).mlp.down_proj.input" }

    /// Final-normed hidden states, the LM head's input (LLaMA).
    public static let lmHeadInput = "lm_head.input"

    /// Residual stream after a whole block (not a quantization point: `verify` compares it
    /// between the float and the quantized model).
    public static func layerOutput(_ layer: Int) -> String { "layers.\(layer).output" }

}
