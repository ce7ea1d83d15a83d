import PTQCore

/// The contents of a packed `.ptq` file: a quantized model ready for the runtime.
public struct PackedModel: Sendable, Equatable {
    public var config: ModelConfig
    public var tokenizer: TokenizerSpec
    /// Float tensors by canonical name: norms, embeddings, and the weights/biases of linear
    /// layers a recipe left in float (e.g. `layers/0/attention/q_proj/weight`).
    public var floatTensors: [String: Tensor]
    /// Quantized linear layers by canonical layer name (`layers/0/attention/q_proj`).
    public var quantizedLinears: [String: QuantizedLinear]
    /// The recipe text the model was quantized with.
    public var recipe: String
    /// Identity of the statistics file used (nil when none was needed).
    public var statsHash: String?
    /// `ModelConfig.identity` of the source checkpoint.
    public var modelIdentity: String
    /// PTQKit version that wrote the file.
    public var toolVersion: String
    /// Free-form provenance (source checkpoint path, date, …).
    public var metadata: [String: String]
    /// Quantized activation sites other than linear inputs (post-softmax probabilities), by
    /// quantization point (`layers.3.attention.probs`).
    public var activationSites: [String: QuantizedActivationSite] = [:]

    public init(config: ModelConfig, tokenizer: TokenizerSpec, floatTensors: [String: Tensor],
                quantizedLinears: [String: QuantizedLinear], recipe: String, statsHash: String?,
                modelIdentity: String, toolVersion: String, metadata: [String: String] = [:]) {
        self.config = config
        self.tokenizer = tokenizer
        self.floatTensors = floatTensors
        self.quantizedLinears = quantizedLinears
        self.recipe = recipe
        self.statsHash = statsHash
        self.modelIdentity = modelIdentity
        self.toolVersion = toolVersion
        self.metadata = metadata
    }
}
