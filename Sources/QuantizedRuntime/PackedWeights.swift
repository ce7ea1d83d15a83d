import Models
import Packing
import PTQCore

/// A `WeightSource` over a packed model: float tensors for norms and embeddings, an
/// `IntegerLinear` for every quantized layer and a `FloatLinear` for layers left in float.
///
/// `linear(_:)` builds a new layer on each call (the model builder asks once per layer); the
/// `IntegerLinear` holds its own run-time copy of the codes, so a caller that wants the smallest
/// footprint can drop the `PackedModel` once the model is built.
public struct PackedWeights: WeightSource {
    public let model: PackedModel

    public init(_ model: PackedModel) { self.model = model }

    public var config: ModelConfig { model.config }
    public var tokenizer: TokenizerSpec { model.tokenizer }

    public func tensor(_ name: String) throws(PTQError) -> Tensor {
        guard let tensor = model.floatTensors[name] else {
            throw PTQError("packed model has no float tensor '\(name)'")
        }
        return tensor
    }

    public func linear(_ name: String) throws(PTQError) -> any LinearOp {
        if let q = model.quantizedLinears[name] {
            return try Self.linearOp(for: q)
        }
        guard let weight = model.floatTensors[name + "/weight"] else {
            throw PTQError("packed model has no linear layer '\(name)': neither a quantized layer nor a float tensor '\(name)/weight'")
        }
        guard weight.shape.count == 2 else {
            throw PTQError("packed float tensor '\(name)/weight' has shape \(weight.shape), expected [out, in]")
        }
        let bias = model.floatTensors[name + "/bias"]
        if let bias, bias.count != weight.shape[0] {
            throw PTQError("packed float tensor '\(name)/bias' has \(bias.count) values for \(weight.shape[0]) output features")
        }
        return FloatLinear(weight: weight, bias: bias?.data)
    }

    /// The run-time layer for a quantized linear: one kernel family per weight format.
    public static func linearOp(for q: QuantizedLinear) throws(PTQError) -> any LinearOp {
        switch q.weight {
        case .integer: q.activation?.logarithmic != nil ? try LogInputLinear(q) : try IntegerLinear(q)
        case .split: try SplitLinear(q)
        case .floatingPoint: try FloatingPointLinear(q)
        case .binary: try BinaryLinear(q)
        }
    }
}
