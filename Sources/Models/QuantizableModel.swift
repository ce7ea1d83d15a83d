import PTQCore

/// What a model returns for verification: logits for every position, or one embedding.
public enum ModelOutput: Sendable {
    /// Next-token logits `(T, vocabSize)`, row-major.
    case logits([Float], vocabSize: Int)
    /// A sentence embedding (pooled and, when the config says so, L2-normalised).
    case embedding([Float])
}

/// A model family PTQKit can calibrate, quantize, run and verify.
///
/// The facade, calibration, the attention-probability search and verification work through
/// this protocol and never ask which family a model is. A family describes its structure from
/// its config alone (``structure(for:)``: linear layers with their roles and input points,
/// activation sites), so a recipe can be planned before the weights are loaded; it builds from
/// any ``WeightSource`` (HDF5 checkpoint or packed file); and it runs a forward pass with
/// per-call ``ForwardHooks``. What a family can do beyond that is a narrower protocol —
/// ``LanguageModel`` (logits), ``GenerativeModel`` (incremental decoding), ``SentenceEncoder``
/// (embeddings) — checked with ``QuantizableModel/languageModel(for:)`` and friends, which give a
/// clear error when the model lacks the capability.
///
/// To add a family: conform, and add one line to ``ModelFamilies/modelType(for:)``.
public protocol QuantizableModel: AnyObject, Sendable {
    /// The model's structure for `config` (which must be of this family's architecture).
    static func structure(for config: ModelConfig) -> ModelStructure

    /// Builds the model from float or quantized weights; throws when they do not fit.
    init(weights: some WeightSource) throws(PTQError)

    var config: ModelConfig { get }
    var tokenizer: TokenizerSpec { get }
    /// Structure and weight fingerprint (`ModelConfig.identity(weights:)`).
    var identity: String { get }

    /// Runs the transformer blocks over one sequence for the hooks' sake (calibration and
    /// searches): every quantization point and activation site is observed, the output head is
    /// skipped.
    func observe(_ tokens: [Int], hooks: ForwardHooks)

    /// The model's output for one sequence, as verification compares it.
    func run(_ tokens: [Int], hooks: ForwardHooks) -> ModelOutput
}

/// A model that predicts next-token logits.
public protocol LanguageModel: QuantizableModel {
    /// Logits `(rows.count, vocabSize)` for the given rows of `tokens` (all rows when nil),
    /// the tokens starting at position 0.
    func logits(for tokens: [Int], rows: Range<Int>?, hooks: ForwardHooks) -> [Float]
}

/// Keys and values of past positions for incremental decoding.
public protocol DecodingCache: AnyObject {
    /// Positions the cache can hold.
    var capacity: Int { get }
    /// Positions already in the cache.
    var count: Int { get }
    /// Element type of the stored keys and values.
    var precision: KVCachePrecision { get }
}

/// A language model that decodes incrementally with a cache of past positions.
public protocol GenerativeModel: LanguageModel {
    associatedtype Cache: DecodingCache

    /// An empty cache for at most `capacity` positions, its keys and values stored as `precision`.
    func makeCache(capacity: Int, precision: KVCachePrecision) -> Cache
    /// Runs `tokens` after the positions in `cache` (from position 0 without one) and returns
    /// logits for `logitRows` of them (all when nil).
    func forward(_ tokens: [Int], cache: Cache?, logitRows: Range<Int>?, hooks: ForwardHooks) -> [Float]
    /// Runs one `token` after the positions in `cache` and writes its logits (vocabulary size)
    /// into `logits`: `forward([token], cache:, logitRows: nil, hooks:)` without the arrays (a
    /// model may run it with no heap allocation after the first call on a cache).
    func decode(_ token: Int, cache: Cache, into logits: UnsafeMutableBufferPointer<Float>)
    /// Bytes one decoded token reads besides the KV cache (weights, parameters, one embedding row).
    var decodeWeightBytes: Int { get }
    /// Bytes of keys and values a token attending over `positions` cached positions reads from
    /// a cache of `precision`.
    func kvCacheBytes(positions: Int, precision: KVCachePrecision) -> Int
}

extension GenerativeModel {
    public func decode(_ token: Int, cache: Cache, into logits: UnsafeMutableBufferPointer<Float>) {
        let values = forward([token], cache: cache, logitRows: nil, hooks: ForwardHooks())
        precondition(values.count == logits.count, "decode: \(logits.count) logits for a vocabulary of \(values.count)")
        _ = logits.update(fromContentsOf: values)
    }

    /// An empty float (``KVCachePrecision/f32``) cache for at most `capacity` positions.
    public func makeCache(capacity: Int) -> Cache { makeCache(capacity: capacity, precision: .f32) }

    /// Bytes of float keys and values a token attending over `positions` cached positions reads.
    public func kvCacheBytes(positions: Int) -> Int { kvCacheBytes(positions: positions, precision: .f32) }
}

/// A model that turns a sequence into one sentence embedding.
public protocol SentenceEncoder: QuantizableModel {
    func embed(tokens: [Int], hooks: ForwardHooks) -> [Float]
}

extension LanguageModel {
    public func run(_ tokens: [Int], hooks: ForwardHooks) -> ModelOutput {
        .logits(logits(for: tokens, rows: nil, hooks: hooks), vocabSize: config.vocabSize)
    }
}

extension SentenceEncoder {
    public func run(_ tokens: [Int], hooks: ForwardHooks) -> ModelOutput {
        .embedding(embed(tokens: tokens, hooks: hooks))
    }
}

extension QuantizableModel {
    /// The model's structure (``structure(for:)`` of its own config).
    public var structure: ModelStructure { Self.structure(for: config) }

    /// What the model is, for errors: "llama language model".
    public var kindDescription: String { "\(config.architecture.rawValue) \(structure.task.rawValue)" }

    /// This model as a ``LanguageModel``, or an error saying that `purpose` needs one (naming
    /// the model file `source` when given).
    public func languageModel(for purpose: String, source: String? = nil) throws(PTQError) -> any LanguageModel {
        guard let model = self as? any LanguageModel else { throw lacking("a language model", purpose, source) }
        return model
    }

    /// This model as a ``GenerativeModel``, or an error saying that `purpose` needs one.
    public func generativeModel(for purpose: String, source: String? = nil) throws(PTQError) -> any GenerativeModel {
        guard let model = self as? any GenerativeModel else {
            throw lacking("a generative language model", purpose, source)
        }
        return model
    }

    /// This model as a ``SentenceEncoder``, or an error saying that `purpose` needs one.
    public func sentenceEncoder(for purpose: String, source: String? = nil) throws(PTQError) -> any SentenceEncoder {
        guard let model = self as? any SentenceEncoder else { throw lacking("a sentence encoder", purpose, source) }
        return model
    }

    private func lacking(_ capability: String, _ purpose: String, _ source: String?) -> PTQError {
        let message = "\(purpose) needs \(capability); this is a \(kindDescription)"
        return source.map { PTQError.file($0, message) } ?? PTQError(message)
    }
}

/// The model families PTQKit knows: the one place that maps an architecture to its model type.
public enum ModelFamilies {
    /// The model type of `architecture`.
    public static func modelType(for architecture: Architecture) -> any QuantizableModel.Type {
        switch architecture {
        case .llama: LlamaModel.self
        case .bert: BertModel.self
        }
    }

    /// Builds the model the weights' config names.
    public static func load(_ weights: some WeightSource) throws(PTQError) -> any QuantizableModel {
        try modelType(for: weights.config.architecture).init(weights: weights)
    }
}

extension ModelConfig {
    /// The structure of the model this config describes (its family's ``QuantizableModel/structure(for:)``).
    public var structure: ModelStructure {
        ModelFamilies.modelType(for: architecture).structure(for: self)
    }
}
