import Checkpoint
import PTQCore

/// Where a model gets its parameters: float tensors for norms and embeddings, `LinearOp`s for
/// matmuls. The checkpoint reader gives float layers; the packed-file loader gives quantized ones.
public protocol WeightSource {
    var config: ModelConfig { get }
    var tokenizer: TokenizerSpec { get }
    func tensor(_ name: String) throws(PTQError) -> Tensor
    /// The linear layer `name` (canonical prefix such as `layers/0/attention/q_proj`).
    func linear(_ name: String) throws(PTQError) -> any LinearOp
    /// The quantized `P·V` of layer `layer`'s attention, nil for float (the default).
    func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)?
}

extension WeightSource {
    public func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)? { nil }
    func vector(_ name: String) throws(PTQError) -> [Float] { try tensor(name).data }
}

/// Float32 weights straight from an HDF5 checkpoint.
public struct CheckpointWeights: WeightSource {
    public let reader: CheckpointReader
    public init(_ reader: CheckpointReader) { self.reader = reader }
    public var config: ModelConfig { reader.config }
    public var tokenizer: TokenizerSpec { reader.tokenizer }

    public func tensor(_ name: String) throws(PTQError) -> Tensor { try reader.tensor(name) }

    public func linear(_ name: String) throws(PTQError) -> any LinearOp {
        let weight = try reader.tensor(name + "/weight")
        let biasName = name + "/bias"
        let bias = reader.tensorNames.contains(biasName) ? try reader.tensor(biasName).data : nil
        return FloatLinear(weight: weight, bias: bias)
    }
}
