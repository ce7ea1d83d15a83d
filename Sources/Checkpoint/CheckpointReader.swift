import CHDF5
import PTQCore

/// Reads an HDF5 checkpoint lazily: config and tokenizer at open, tensors on demand.
///
/// Opening checks the format marker and version, every config field, and the shape and
/// storage type of every tensor the config requires, without reading tensor data.
public final class CheckpointReader {
    public let path: String
    public let config: ModelConfig
    public let tokenizer: TokenizerSpec
    /// Root `meta_*` attributes (provenance).
    public let metadata: [String: String]
    private let file: HDF5File

    public init(path: String) throws(PTQError) {
        self.path = path
        let file = try HDF5File.open(path)
        self.file = file
        guard file.hasAttribute(".", "format"),
              (try? file.stringAttribute(".", "format")) == CheckpointFormat.formatName else {
            throw PTQError.file(path, "not a PTQKit checkpoint (root attribute 'format' must be '\(CheckpointFormat.formatName)')")
        }
        let version = try file.intAttribute(".", "format_version")
        guard version >= 1, version <= CheckpointFormat.version else {
            throw PTQError.file(path, "checkpoint format version \(version) is not supported (this build reads 1...\(CheckpointFormat.version))")
        }
        self.config = try Self.readConfig(file)
        self.tokenizer = try Self.readTokenizer(file)
        do {
            try tokenizer.validate(for: config)
        } catch {
            throw PTQError.file(path, error.message)
        }
        var metadata: [String: String] = [:]
        for key in Self.rootAttributeNames(file) where key.hasPrefix("meta_") {
            metadata[String(key.dropFirst(5))] = try? file.stringAttribute(".", key)
        }
        self.metadata = metadata
        try checkTensors()
    }

    /// Canonical names of all tensors the model has, in a stable order.
    public var tensorNames: [String] { config.expectedTensors.map(\.name) }

    /// Reads one tensor as float32.
    public func tensor(_ name: String) throws(PTQError) -> Tensor {
        guard let shape = config.expectedTensors.first(where: { $0.name == name })?.shape else {
            throw PTQError.file(path, "'\(name)' is not a tensor of this \(config.architecture.rawValue) model")
        }
        let data = try file.readFloats(name, count: shape.reduce(1, *))
        let tensor = Tensor(shape: shape, data: data)
        do {
            try Validation.requireFinite(tensor, name: name)
        } catch {
            throw PTQError.file(path, error.message)
        }
        return tensor
    }

    /// Storage type of a tensor on disk.
    public func storageType(of name: String) throws(PTQError) -> DType {
        switch try file.datasetInfo(name).dtype {
        case "float16": .float16
        case "bfloat16": .bfloat16
        default: .float32
        }
    }

    /// Loads everything into memory.
    public func readAll() throws(PTQError) -> CheckpointContents {
        var tensors: [String: Tensor] = [:]
        var types: [String: DType] = [:]
        for name in tensorNames {
            tensors[name] = try tensor(name)
            types[name] = try storageType(of: name)
        }
        return CheckpointContents(config: config, tokenizer: tokenizer, tensors: tensors,
                                  storageTypes: types, metadata: metadata)
    }

    private func checkTensors() throws(PTQError) {
        for (name, shape) in config.expectedTensors {
            guard file.isDataset(name) else {
                throw PTQError.file(path, "missing tensor '\(name)' (expected shape \(shape))")
            }
            let info = try file.datasetInfo(name)
            guard ["float32", "float16", "bfloat16"].contains(info.dtype) else {
                throw PTQError.file(path, "tensor '\(name)' has unsupported dtype \(info.dtype) (expected float32, float16 or bfloat16)")
            }
            guard info.shape == shape else {
                throw PTQError.file(path, "tensor '\(name)' has shape \(info.shape), expected \(shape)")
            }
        }
    }

    private static func rootAttributeNames(_ file: HDF5File) -> [String] {
        final class Box { var names: [String] = [] }
        let box = Box()
        var index: hsize_t = 0
        _ = H5Aiterate2(file.handle.id, H5_INDEX_NAME, H5_ITER_INC, &index, { _, name, _, op in
            guard let name, let op else { return 0 }
            Unmanaged<Box>.fromOpaque(op).takeUnretainedValue().names.append(String(cString: name))
            return 0
        }, Unmanaged.passUnretained(box).toOpaque())
        return box.names
    }

    private static func readConfig(_ file: HDF5File) throws(PTQError) -> ModelConfig {
        let g = CheckpointFormat.configGroup
        guard file.exists(g) else { throw PTQError.file(file.path, "missing config group '/\(g)'") }
        typealias F = ModelConfig.Field
        func int(_ f: F) throws(PTQError) -> Int {
            guard file.hasAttribute(g, f.rawValue) else { throw missing(f) }
            return try file.intAttribute(g, f.rawValue)
        }
        func double(_ f: F) throws(PTQError) -> Double {
            guard file.hasAttribute(g, f.rawValue) else { throw missing(f) }
            return try file.doubleAttribute(g, f.rawValue)
        }
        func string(_ f: F) throws(PTQError) -> String {
            guard file.hasAttribute(g, f.rawValue) else { throw missing(f) }
            return try file.stringAttribute(g, f.rawValue)
        }
        func missing(_ f: F) -> PTQError {
            PTQError.file(file.path, "missing config field '\(f.rawValue)' (attribute of /\(g))")
        }
        func parse<T: RawRepresentable<String>>(_ f: F, _: T.Type) throws(PTQError) -> T {
            let raw = try string(f)
            guard let value = T(rawValue: raw) else {
                throw PTQError.file(file.path, "config field '\(f.rawValue)' has unknown value '\(raw)'")
            }
            return value
        }
        let config = ModelConfig(
            architecture: try parse(.architecture, Architecture.self),
            vocabSize: try int(.vocab_size), hiddenSize: try int(.hidden_size),
            intermediateSize: try int(.intermediate_size), layerCount: try int(.layer_count),
            headCount: try int(.head_count), kvHeadCount: try int(.kv_head_count),
            headDim: try int(.head_dim), maxPositions: try int(.max_positions),
            ropeTheta: try double(.rope_theta), normEpsilon: try double(.norm_epsilon),
            activation: try parse(.activation, Activation.self),
            tiedEmbeddings: try int(.tied_embeddings) != 0, typeVocabSize: try int(.type_vocab_size),
            pooling: try parse(.pooling, Pooling.self),
            normalizeEmbeddings: try int(.normalize_embeddings) != 0, name: try string(.name))
        do {
            try config.validate()
        } catch {
            throw PTQError.file(file.path, error.message)
        }
        return config
    }

    private static func readTokenizer(_ file: HDF5File) throws(PTQError) -> TokenizerSpec {
        let g = CheckpointFormat.tokenizerGroup
        guard file.exists(g) else { throw PTQError.file(file.path, "missing tokenizer group '/\(g)'") }
        func int(_ key: String) throws(PTQError) -> Int {
            guard file.hasAttribute(g, key) else {
                throw PTQError.file(file.path, "missing tokenizer field '\(key)' (attribute of /\(g))")
            }
            return try file.intAttribute(g, key)
        }
        func id(_ key: String) throws(PTQError) -> Int? {
            let v = try int(key)
            return v == CheckpointFormat.noID ? nil : v
        }
        let kindRaw = try file.stringAttribute(g, "kind")
        guard let kind = TokenizerSpec.Kind(rawValue: kindRaw) else {
            throw PTQError.file(file.path, "tokenizer field 'kind' has unknown value '\(kindRaw)'")
        }
        return TokenizerSpec(
            kind: kind, tokens: try file.readStrings("\(g)/tokens"),
            merges: try file.readStrings("\(g)/merges"),
            tokenTypes: try file.readInt32s("\(g)/token_types"),
            preTokenizer: try file.stringAttribute(g, "pre_tokenizer"),
            bosTokenID: try id("bos_token_id"), eosTokenID: try id("eos_token_id"),
            unknownTokenID: try id("unknown_token_id"), paddingTokenID: try id("padding_token_id"),
            clsTokenID: try id("cls_token_id"), sepTokenID: try id("sep_token_id"),
            addBOS: try int("add_bos") != 0, lowercase: try int("lowercase") != 0,
            stripAccents: try int("strip_accents") != 0,
            splitChineseCharacters: try int("split_chinese_characters") != 0,
            maxInputCharsPerWord: try int("max_input_chars_per_word"),
            continuingSubwordPrefix: try file.stringAttribute(g, "continuing_subword_prefix"),
            maxLength: try int("max_length"))
    }
}
