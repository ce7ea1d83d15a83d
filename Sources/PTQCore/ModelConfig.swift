/// The model families PTQKit can run.
public enum Architecture: String, Codable, Sendable, CaseIterable {
    /// Decoder-only LLaMA family: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.
    case llama
    /// BERT encoder: post-norm LayerNorm, absolute positions, GELU MLP.
    case bert
}

/// Activation function of the MLP.
public enum Activation: String, Codable, Sendable {
    /// SiLU gate times up projection (SwiGLU), LLaMA.
    case silu
    /// Exact erf GELU, BERT.
    case gelu
}

/// How an encoder turns token states into one sentence embedding.
public enum Pooling: String, Codable, Sendable {
    case mean, cls, none
}

/// Architecture hyper-parameters of a model, stored in every checkpoint and packed file.
public struct ModelConfig: Codable, Sendable, Equatable {
    public var architecture: Architecture
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layerCount: Int
    public var headCount: Int
    public var kvHeadCount: Int
    public var headDim: Int
    public var maxPositions: Int
    /// RoPE base frequency (LLaMA only).
    public var ropeTheta: Double
    /// Epsilon of RMSNorm (LLaMA) or LayerNorm (BERT).
    public var normEpsilon: Double
    public var activation: Activation
    /// LLaMA: the LM head reuses the token embedding matrix.
    public var tiedEmbeddings: Bool
    /// BERT: number of token types (segment embeddings).
    public var typeVocabSize: Int
    /// Encoders: sentence-embedding pooling.
    public var pooling: Pooling
    /// Encoders: L2-normalise sentence embeddings.
    public var normalizeEmbeddings: Bool
    /// Free-form model name for reports.
    public var name: String

    public init(
        architecture: Architecture, vocabSize: Int, hiddenSize: Int, intermediateSize: Int,
        layerCount: Int, headCount: Int, kvHeadCount: Int? = nil, headDim: Int? = nil,
        maxPositions: Int, ropeTheta: Double = 10_000, normEpsilon: Double,
        activation: Activation, tiedEmbeddings: Bool = false, typeVocabSize: Int = 0,
        pooling: Pooling = .none, normalizeEmbeddings: Bool = false, name: String = ""
    ) {
        self.architecture = architecture
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount ?? headCount
        self.headDim = headDim ?? (headCount > 0 ? hiddenSize / headCount : 0)
        self.maxPositions = maxPositions
        self.ropeTheta = ropeTheta
        self.normEpsilon = normEpsilon
        self.activation = activation
        self.tiedEmbeddings = tiedEmbeddings
        self.typeVocabSize = typeVocabSize
        self.pooling = pooling
        self.normalizeEmbeddings = normalizeEmbeddings
        self.name = name
    }

    /// Checks that the numbers describe a model PTQKit can build.
    public func validate() throws(PTQError) {
        func need(_ ok: Bool, _ what: String) throws(PTQError) {
            if !ok { throw PTQError("invalid model config: \(what)") }
        }
        try need(vocabSize > 0, "vocab_size must be positive (got \(vocabSize))")
        try need(hiddenSize > 0, "hidden_size must be positive (got \(hiddenSize))")
        try need(intermediateSize > 0, "intermediate_size must be positive (got \(intermediateSize))")
        try need(layerCount > 0, "layer_count must be positive (got \(layerCount))")
        try need(headCount > 0, "head_count must be positive (got \(headCount))")
        try need(kvHeadCount > 0 && headCount % kvHeadCount == 0,
                 "head_count \(headCount) must be a multiple of kv_head_count \(kvHeadCount)")
        try need(headDim > 0, "head_dim must be positive (got \(headDim))")
        try need(maxPositions > 0, "max_positions must be positive (got \(maxPositions))")
        try need(normEpsilon > 0, "norm_epsilon must be positive (got \(normEpsilon))")
        try validateLimits()
        switch architecture {
        case .llama:
            try need(headDim % 2 == 0, "head_dim must be even for RoPE (got \(headDim))")
            try need(ropeTheta > 0, "rope_theta must be positive (got \(ropeTheta))")
        case .bert:
            try need(kvHeadCount == headCount, "BERT has no grouped-query attention")
            try need(headCount * headDim == hiddenSize, "head_count × head_dim must equal hidden_size")
            try need(typeVocabSize > 0, "type_vocab_size must be positive for BERT")
        }
    }
}
