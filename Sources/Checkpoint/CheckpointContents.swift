import PTQCore

/// A whole model in memory: what importers produce and `CheckpointWriter` stores.
public struct CheckpointContents: Sendable {
    public var config: ModelConfig
    public var tokenizer: TokenizerSpec
    /// Tensors by canonical name (see `TensorNames`), float32 in memory.
    public var tensors: [String: Tensor]
    /// How each tensor should be stored on disk; float32 when absent.
    public var storageTypes: [String: DType]
    /// Provenance shown by `ptq inspect`: source file, importer, original tensor types.
    public var metadata: [String: String]

    public init(config: ModelConfig, tokenizer: TokenizerSpec, tensors: [String: Tensor],
                storageTypes: [String: DType] = [:], metadata: [String: String] = [:]) {
        self.config = config
        self.tokenizer = tokenizer
        self.tensors = tensors
        self.storageTypes = storageTypes
        self.metadata = metadata
    }

    /// Checks that every tensor the config needs is present with the right shape, and that
    /// there are no unexpected tensors. `source` names the file in the error.
    public func validate(source: String) throws(PTQError) {
        do {
            try config.validate()
            try tokenizer.validate(for: config)
        } catch {
            throw PTQError.file(source, error.message)
        }
        var expected = Set<String>()
        for (name, shape) in config.expectedTensors {
            expected.insert(name)
            guard let tensor = tensors[name] else {
                throw PTQError.file(source, "missing tensor '\(name)' (expected shape \(shape))")
            }
            if tensor.shape != shape {
                throw PTQError.file(source, "tensor '\(name)' has shape \(tensor.shape), expected \(shape)")
            }
            guard tensor.data.count == tensor.count, Validation.checkedProduct(tensor.shape) == tensor.data.count else {
                throw PTQError.file(source, "tensor '\(name)' has \(tensor.data.count) values for shape \(tensor.shape)")
            }
            do {
                try Validation.requireFinite(tensor, name: name)
            } catch {
                throw PTQError.file(source, error.message)
            }
        }
        if let extra = tensors.keys.sorted().first(where: { !expected.contains($0) }) {
            throw PTQError.file(source, "unexpected tensor '\(extra)' for a \(config.architecture.rawValue) model")
        }
    }
}
