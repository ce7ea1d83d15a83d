import Checkpoint
import Models
import PTQCore

/// A weight source over a checkpoint held in memory (what LoRA preprocessing returns), so a
/// merged model can be evaluated or quantized again without a round trip through a file.
public struct ContentsWeights: WeightSource {
    public let contents: CheckpointContents
    public init(_ contents: CheckpointContents) { self.contents = contents }
    public var config: ModelConfig { contents.config }
    public var tokenizer: TokenizerSpec { contents.tokenizer }

    public func tensor(_ name: String) throws(PTQError) -> Tensor {
        guard let t = contents.tensors[name] else { throw PTQError("tensor '\(name)' is missing from the checkpoint") }
        return t
    }

    public func linear(_ name: String) throws(PTQError) -> any LinearOp {
        FloatLinear(weight: try tensor(name + "/weight"), bias: contents.tensors[name + "/bias"]?.data)
    }
}
