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
    /// The token embedding table (`embeddings/token/weight`): float by default, a quantized
    /// table when the source stores one.
    func tokenEmbedding() throws(PTQError) -> any EmbeddingTable
    /// A tied model's LM head when the source stores one of its own (a quantized `lm_head`, or
    /// a float `lm_head/weight` kept because the embedding table was quantized); nil = the head
    /// is the float embedding table (the default).
    func tiedLMHead() throws(PTQError) -> (any LinearOp)?
}

extension WeightSource {
    public func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)? { nil }
    public func tiedLMHead() throws(PTQError) -> (any LinearOp)? { nil }
    public func tokenEmbedding() throws(PTQError) -> any EmbeddingTable {
        let shape = try expectedShape(TensorNames.tokenEmbedding)
        return FloatEmbedding(table: try checkedVector(TensorNames.tokenEmbedding), rows: shape[0], width: shape[1])
    }
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
