import PTQCore

/// What `ptq inspect` shows about a packed file, read from its header, section table, manifest
/// and tokenizer only (payload sections are neither decompressed nor checksummed).
/// Encodes with snake_case keys for `ptq inspect --json`.
public struct PackedFileSummary: Sendable, Encodable {
    /// One row per float tensor or quantized linear, in model order.
    public struct TensorRow: Sendable, Encodable, Equatable {
        public var name: String
        /// `float` for float tensors, otherwise the quantization method (`rtn`, `gptq`, …).
        public var kind: String
        /// Shape: the tensor's shape, or `[rows, columns]` of a quantized weight.
        public var shape: [Int]
        /// Weight bits: 32 (or 16 for float16-stored matrices) for float tensors.
        public var bits: Int
        /// Columns per quantization group; nil for float tensors.
        public var groupSize: Int?
        /// Activation quantization, e.g. `int8 per_token, channel scales, shift`; `float` for
        /// weight-only layers, `-` for float tensors.
        public var activation: String
        /// Elements: the tensor's, or a linear's weights plus its bias.
        public var parameterCount: Int
        /// Stored (compressed) bytes of all this tensor's sections.
        public var storedBytes: Int
        /// 8 × storedBytes / parameterCount (0 when there are no parameters).
        public var bitsPerWeight: Double
        /// What the method decided for this layer (searched ratios, range growth, …); empty for
        /// float tensors.
        public var details: [String: String] = [:]
        /// Weight format of a quantized linear other than integer codes (`fp4 e2m1`); nil otherwise.
        public var format: String?

        enum CodingKeys: String, CodingKey {
            case name, kind, shape, bits, activation, details, format
            case groupSize = "group_size"
            case parameterCount = "parameter_count"
            case storedBytes = "stored_bytes"
            case bitsPerWeight = "bits_per_weight"
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(kind, forKey: .kind)
            try c.encode(shape, forKey: .shape)
            try c.encode(bits, forKey: .bits)
            try c.encode(groupSize, forKey: .groupSize)  // null for float tensors
            try c.encode(activation, forKey: .activation)
            try c.encode(parameterCount, forKey: .parameterCount)
            try c.encode(storedBytes, forKey: .storedBytes)
            try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
            try c.encode(details, forKey: .details)
            try c.encodeIfPresent(format, forKey: .format)
        }
    }

    public var formatVersion: Int
    public var toolVersion: String
    public var config: ModelConfig
    public var modelIdentity: String
    public var statsHash: String?
    public var recipe: String
    public var metadata: [String: String]
    /// `bpe` or `wordpiece`.
    public var tokenizerKind: String
    public var vocabularySize: Int
    public var tensors: [TensorRow]
    /// Sum of the rows' parameter counts.
    public var parameterCount: Int
    /// Sum of the rows' stored bytes (payload sections only: no manifest, tokenizer, table).
    public var storedPayloadBytes: Int
    /// Size of the whole file.
    public var totalBytes: Int
    public var sectionCount: Int
    /// 8 × storedPayloadBytes / parameterCount for the whole model.
    public var bitsPerWeight: Double
    /// Quantized activation sites (post-softmax probabilities), in point order.
    public var activationSites: [QuantizedActivationSite] = []

    /// The quantized linears together: weights (and biases) of every non-float row.
    public var quantizedParameterCount: Int {
        tensors.lazy.filter { $0.kind != "float" }.reduce(0) { $0 + $1.parameterCount }
    }
    /// Stored bytes of the quantized linears' sections.
    public var quantizedStoredBytes: Int {
        tensors.lazy.filter { $0.kind != "float" }.reduce(0) { $0 + $1.storedBytes }
    }
    /// 8 × stored bytes / parameters over the quantized linears only (0 when there are none).
    public var quantizedBitsPerWeight: Double {
        quantizedParameterCount > 0 ? 8 * Double(quantizedStoredBytes) / Double(quantizedParameterCount) : 0
    }
    /// 8 × the whole file's size (header, manifest, tokenizer, table included) / all parameters.
    public var fileBitsPerWeight: Double {
        parameterCount > 0 ? 8 * Double(totalBytes) / Double(parameterCount) : 0
    }

    enum CodingKeys: String, CodingKey {
        case config, recipe, metadata, tensors
        case activationSites = "activation_sites"
        case formatVersion = "format_version"
        case toolVersion = "tool_version"
        case modelIdentity = "model_identity"
        case statsHash = "stats_hash"
        case tokenizerKind = "tokenizer_kind"
        case vocabularySize = "vocabulary_size"
        case parameterCount = "parameter_count"
        case storedPayloadBytes = "stored_payload_bytes"
        case totalBytes = "total_bytes"
        case sectionCount = "section_count"
        case bitsPerWeight = "bits_per_weight"
        case quantizedParameterCount = "quantized_parameter_count"
        case quantizedStoredBytes = "quantized_stored_bytes"
        case quantizedBitsPerWeight = "quantized_bits_per_weight"
        case fileBitsPerWeight = "file_bits_per_weight"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(formatVersion, forKey: .formatVersion)
        try c.encode(toolVersion, forKey: .toolVersion)
        try c.encode(config, forKey: .config)
        try c.encode(modelIdentity, forKey: .modelIdentity)
        try c.encode(statsHash, forKey: .statsHash)  // null when none
        try c.encode(recipe, forKey: .recipe)
        try c.encode(metadata, forKey: .metadata)
        try c.encode(tokenizerKind, forKey: .tokenizerKind)
        try c.encode(vocabularySize, forKey: .vocabularySize)
        try c.encode(activationSites, forKey: .activationSites)
        try c.encode(tensors, forKey: .tensors)
        try c.encode(parameterCount, forKey: .parameterCount)
        try c.encode(storedPayloadBytes, forKey: .storedPayloadBytes)
        try c.encode(totalBytes, forKey: .totalBytes)
        try c.encode(sectionCount, forKey: .sectionCount)
        try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
        try c.encode(quantizedParameterCount, forKey: .quantizedParameterCount)
        try c.encode(quantizedStoredBytes, forKey: .quantizedStoredBytes)
        try c.encode(quantizedBitsPerWeight, forKey: .quantizedBitsPerWeight)
        try c.encode(fileBitsPerWeight, forKey: .fileBitsPerWeight)
    }
}
