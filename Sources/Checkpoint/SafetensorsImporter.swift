import Foundation
import PTQCore

/// Imports a Hugging Face model directory (`config.json` + `model.safetensors` + tokenizer files)
/// of a BERT encoder or a LLaMA decoder into canonical tensors.
///
/// Tensors keep their float32 values exactly (F16/BF16 are widened); `storageTypes` records each
/// tensor's source dtype. LLaMA weights are already in Hugging Face row order, so nothing is permuted.
public enum SafetensorsImporter {
    /// Loads and validates the model in `directory`.
    public static func load(directory: String) throws(PTQError) -> CheckpointContents {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw PTQError.file(directory, "no such directory")
        }
        guard isDirectory.boolValue else {
            throw PTQError.file(directory, "is not a directory; expected a Hugging Face model directory "
                + "with config.json and model.safetensors")
        }
        let configPath = join(directory, "config.json")
        let config = try JSONFile(path: configPath)
        let modelType = try config.string("model_type")
        switch modelType {
        case "bert":
            return try loadBERT(directory: directory, config: config)
        case "llama", "mistral":
            return try loadLLaMA(directory: directory, config: config, modelType: modelType)
        default:
            throw PTQError.file(configPath, "model_type '\(modelType)' is not supported "
                + "(supported: bert, llama, mistral)")
        }
    }

    // MARK: - BERT

    static let bertLayerModules: [String: String] = [
        "attention.self.query": "attention/q_proj",
        "attention.self.key": "attention/k_proj",
        "attention.self.value": "attention/v_proj",
        "attention.output.dense": "attention/o_proj",
        "attention.output.LayerNorm": "attention_norm",
        "intermediate.dense": "mlp/up_proj",
        "output.dense": "mlp/down_proj",
        "output.LayerNorm": "mlp_norm",
    ]

    static let bertEmbeddingNames: [String: String] = [
        "embeddings.word_embeddings.weight": TensorNames.tokenEmbedding,
        "embeddings.position_embeddings.weight": TensorNames.positionEmbedding,
        "embeddings.token_type_embeddings.weight": TensorNames.tokenTypeEmbedding,
        "embeddings.LayerNorm.weight": TensorNames.embeddingNormWeight,
        "embeddings.LayerNorm.gamma": TensorNames.embeddingNormWeight,
        "embeddings.LayerNorm.bias": TensorNames.embeddingNormBias,
        "embeddings.LayerNorm.beta": TensorNames.embeddingNormBias,
    ]

    /// What a BERT checkpoint name becomes: a canonical name, nil to ignore, or an error.
    enum Mapping: Equatable {
        case tensor(String, layer: Int?)
        case ignored
        case unknown
    }

    static func bertMapping(_ sourceName: String) -> Mapping {
        var name = sourceName
        if name.hasPrefix("bert.") { name.removeFirst(5) }
        if name == "embeddings.position_ids" || name.hasPrefix("pooler.") || name.hasPrefix("cls.") {
            return .ignored
        }
        if let canonical = bertEmbeddingNames[name] { return .tensor(canonical, layer: nil) }
        guard name.hasPrefix("encoder.layer.") else { return .unknown }
        let rest = name.dropFirst("encoder.layer.".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0,
              String(layer) == rest[..<dot] else { return .unknown }
        let tail = rest[rest.index(after: dot)...]
        guard let lastDot = tail.lastIndex(of: ".") else { return .unknown }
        let module = String(tail[..<lastDot])
        let parameter: String
        switch tail[tail.index(after: lastDot)...] {
        case "weight", "gamma": parameter = "weight"
        case "bias", "beta": parameter = "bias"
        default: return .unknown
        }
        guard let canonical = bertLayerModules[module] else { return .unknown }
        return .tensor(TensorNames.layer(layer, "\(canonical)/\(parameter)"), layer: layer)
    }

    static func loadBERT(directory: String, config: JSONFile) throws(PTQError) -> CheckpointContents {
        let activation = try config.string("hidden_act", default: "gelu")
        guard activation == "gelu" else {
            throw PTQError.file(config.path, "hidden_act '\(activation)' is not supported for BERT "
                + "(PTQKit implements the exact erf 'gelu')")
        }
        let positionType = try config.string("position_embedding_type", default: "absolute")
        guard positionType == "absolute" else {
            throw PTQError.file(config.path, "position_embedding_type '\(positionType)' is not supported "
                + "(only 'absolute')")
        }
        let hidden = try config.int("hidden_size")
        let heads = try config.int("num_attention_heads")
        let pooling = try detectPooling(directory: directory)
        var modelConfig = ModelConfig(
            architecture: .bert, vocabSize: try config.int("vocab_size"), hiddenSize: hidden,
            intermediateSize: try config.int("intermediate_size"), layerCount: try config.int("num_hidden_layers"),
            headCount: heads, kvHeadCount: heads, headDim: heads > 0 ? hidden / heads : 0,
            maxPositions: try config.int("max_position_embeddings"),
            normEpsilon: try config.double("layer_norm_eps", default: 1e-12), activation: .gelu,
            typeVocabSize: try config.int("type_vocab_size", default: 2),
            pooling: pooling.pooling, normalizeEmbeddings: pooling.normalize,
            name: try modelName(config: config, directory: directory))
        let weights = try WeightFiles(validating: modelConfig, configPath: config.path, directory: directory)
        var loaded = try weights.load { (name) throws(PTQError) -> String? in
            switch bertMapping(name) {
            case .ignored: return nil
            case .unknown:
                throw PTQError.file(weights.path(of: name), "unexpected tensor '\(name)' in a BERT checkpoint")
            case .tensor(let canonical, let layer):
                if let layer, layer >= modelConfig.layerCount {
                    throw PTQError.file(weights.path(of: name), "tensor '\(name)' belongs to layer \(layer), but "
                        + "num_hidden_layers is \(modelConfig.layerCount)")
                }
                return canonical
            }
        }
        modelConfig.tiedEmbeddings = false
        let tokenizer = try readWordPieceTokenizer(directory: directory, maxPositions: modelConfig.maxPositions,
                                                   vocabSize: modelConfig.vocabSize)
        loaded.metadata["pooling"] = modelConfig.pooling.rawValue
        loaded.metadata["normalize_embeddings"] = "\(modelConfig.normalizeEmbeddings)"
        loaded.metadata["pooling_source"] = pooling.source
        loaded.metadata["tokenizer_source"] = tokenizer.source
        loaded.metadata["max_length_source"] = tokenizer.maxLengthSource
        let contents = CheckpointContents(config: modelConfig, tokenizer: tokenizer.spec, tensors: loaded.tensors,
                                          storageTypes: loaded.storageTypes, metadata: loaded.metadata)
        try contents.validate(source: directory)
        return contents
    }

    /// Sentence-embedding pooling from sentence-transformers files; mean + normalize when there are none.
    static func detectPooling(directory: String) throws(PTQError)
        -> (pooling: Pooling, normalize: Bool, source: String) {
        func poolingMode(_ configPath: String) throws(PTQError) -> Pooling {
            let file = try JSONFile(path: configPath)
            if try file.bool("pooling_mode_mean_tokens", default: false) { return .mean }
            if try file.bool("pooling_mode_cls_token", default: false) { return .cls }
            let modes = file.object.keys.filter { $0.hasPrefix("pooling_mode_") && (file.object[$0] as? Bool) == true }
            throw PTQError.file(configPath, "pooling mode \(modes.sorted()) is not supported "
                + "(PTQKit supports pooling_mode_mean_tokens and pooling_mode_cls_token)")
        }
        let modulesPath = join(directory, "modules.json")
        if FileManager.default.fileExists(atPath: modulesPath) {
            let json = try readJSON(modulesPath)
            guard let modules = json as? [[String: Any]] else {
                throw PTQError.file(modulesPath, "expected a JSON array of module objects")
            }
            var pooling: Pooling?
            var normalize = false
            for module in modules {
                let type = module["type"] as? String ?? ""
                if type.hasSuffix(".Pooling") || type == "Pooling" {
                    let sub = module["path"] as? String ?? ""
                    pooling = try poolingMode(join(join(directory, sub), "config.json"))
                } else if type.hasSuffix(".Normalize") || type == "Normalize" {
                    normalize = true
                }
            }
            if let pooling {
                return (pooling, normalize, "sentence-transformers modules.json")
            }
            return (.mean, normalize, "modules.json has no Pooling module; defaulted to mean pooling")
        }
        let poolingConfig = join(join(directory, "1_Pooling"), "config.json")
        if FileManager.default.fileExists(atPath: poolingConfig) {
            return (try poolingMode(poolingConfig), true,
                    "1_Pooling/config.json without modules.json; defaulted to normalize")
        }
        return (.mean, true, "default for a bare BERT (no sentence-transformers files): mean pooling, normalize")
    }

    /// WordPiece from tokenizer.json or vocab.txt. The maximum length is sentence-transformers'
    /// `max_seq_length` (sentence_bert_config.json) when present, as sentence-transformers truncates to it;
    /// else tokenizer.json's truncation.max_length or tokenizer_config's model_max_length; else 512;
    /// never more than max_position_embeddings.
    static func readWordPieceTokenizer(directory: String, maxPositions: Int, vocabSize: Int) throws(PTQError)
        -> (spec: TokenizerSpec, source: String, maxLengthSource: String) {
        let tokenizerConfigPath = join(directory, "tokenizer_config.json")
        let tokenizerConfig = FileManager.default.fileExists(atPath: tokenizerConfigPath)
            ? try JSONFile(path: tokenizerConfigPath) : nil
        func specialToken(_ key: String, _ fallback: String) -> String {
            tokenizerConfig.flatMap { tokenString($0.object[key]) } ?? fallback
        }
        let tokenizerJSONPath = join(directory, "tokenizer.json")
        let vocabPath = join(directory, "vocab.txt")
        var spec: TokenizerSpec
        var ids: [String: Int] = [:]
        let source: String
        var maxLengthSource = "default 512"
        if FileManager.default.fileExists(atPath: tokenizerJSONPath) {
            let file = try JSONFile(path: tokenizerJSONPath)
            let path = file.path
            guard let model = file.object["model"] as? [String: Any] else {
                throw PTQError.file(path, "missing 'model' object")
            }
            let type = model["type"] as? String ?? "(none)"
            guard type == "WordPiece" else {
                throw PTQError.file(path, "model type '\(type)' is not WordPiece; a BERT model needs a WordPiece tokenizer")
            }
            guard let vocab = model["vocab"] as? [String: Any] else {
                throw PTQError.file(path, "missing 'model.vocab' object")
            }
            let built = try tokenArray(vocab: vocab, addedTokens: file.object["added_tokens"] as? [[String: Any]] ?? [],
                                       path: path)
            ids = built.ids
            var lowercase = false, stripAccents = false, chinese = false
            switch file.object["normalizer"] {
            case nil, is NSNull:
                break
            case let normalizer as [String: Any]:
                let kind = normalizer["type"] as? String ?? "(none)"
                guard kind == "BertNormalizer" else {
                    throw PTQError.file(path, "normalizer '\(kind)' is not supported (only BertNormalizer)")
                }
                lowercase = normalizer["lowercase"] as? Bool ?? true
                stripAccents = normalizer["strip_accents"] as? Bool ?? lowercase
                chinese = normalizer["handle_chinese_chars"] as? Bool ?? true
            default:
                throw PTQError.file(path, "invalid 'normalizer'")
            }
            if let pre = file.object["pre_tokenizer"] as? [String: Any],
               let kind = pre["type"] as? String, kind != "BertPreTokenizer" {
                throw PTQError.file(path, "pre_tokenizer '\(kind)' is not supported for WordPiece (only BertPreTokenizer)")
            }
            var maxLength = 512
            if let truncation = file.object["truncation"] as? [String: Any],
               let length = SafetensorsReader.integer(truncation["max_length"] ?? NSNull()), length > 0 {
                maxLength = length
                maxLengthSource = "tokenizer.json truncation.max_length"
            }
            let unknown = model["unk_token"] as? String ?? specialToken("unk_token", "[UNK]")
            spec = TokenizerSpec(
                kind: .wordPiece, tokens: built.tokens, preTokenizer: "bert",
                unknownTokenID: ids[unknown], lowercase: lowercase, stripAccents: stripAccents,
                splitChineseCharacters: chinese,
                maxInputCharsPerWord: SafetensorsReader.integer(model["max_input_chars_per_word"] ?? NSNull()) ?? 100,
                continuingSubwordPrefix: model["continuing_subword_prefix"] as? String ?? "##",
                maxLength: maxLength)
            guard spec.unknownTokenID != nil else {
                throw PTQError.file(path, "unknown token '\(unknown)' is not in the vocabulary")
            }
            source = "tokenizer.json"
        } else if FileManager.default.fileExists(atPath: vocabPath) {
            let text: String
            do {
                text = try String(contentsOfFile: vocabPath, encoding: .utf8)
            } catch {
                throw PTQError.file(vocabPath, "cannot read as UTF-8 text: \(error.localizedDescription)")
            }
            var tokens = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if tokens.last == "" { tokens.removeLast() }
            guard !tokens.isEmpty else { throw PTQError.file(vocabPath, "empty vocabulary") }
            for (i, token) in tokens.enumerated() { ids[token] = i }
            let lowercase = try tokenizerConfig?.bool("do_lower_case", default: true) ?? true
            let stripAccents = (tokenizerConfig?.object["strip_accents"] as? Bool) ?? lowercase
            let chinese = try tokenizerConfig?.bool("tokenize_chinese_chars", default: true) ?? true
            var maxLength = 512
            if let length = tokenizerConfig.flatMap({ SafetensorsReader.integer($0.object["model_max_length"] ?? NSNull()) }),
               length > 0, length <= 1_000_000 {
                maxLength = length
                maxLengthSource = "tokenizer_config.json model_max_length"
            }
            let unknown = specialToken("unk_token", "[UNK]")
            spec = TokenizerSpec(
                kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: ids[unknown],
                lowercase: lowercase, stripAccents: stripAccents, splitChineseCharacters: chinese,
                maxLength: maxLength)
            guard spec.unknownTokenID != nil else {
                throw PTQError.file(vocabPath, "unknown token '\(unknown)' is not in the vocabulary")
            }
            source = "vocab.txt"
        } else {
            throw PTQError.file(directory, "no tokenizer: expected tokenizer.json or vocab.txt")
        }
        let where_ = source == "vocab.txt" ? vocabPath : tokenizerJSONPath
        guard spec.tokens.count <= vocabSize else {
            throw PTQError.file(where_, "tokenizer has \(spec.tokens.count) tokens, more than vocab_size \(vocabSize) "
                + "in config.json")
        }
        let sentenceBertPath = join(directory, "sentence_bert_config.json")
        if FileManager.default.fileExists(atPath: sentenceBertPath) {
            let sentenceBert = try JSONFile(path: sentenceBertPath)
            if sentenceBert.object["max_seq_length"] != nil, !(sentenceBert.object["max_seq_length"] is NSNull) {
                let length = try sentenceBert.int("max_seq_length")
                guard length > 0 else {
                    throw PTQError.file(sentenceBertPath, "max_seq_length must be positive (got \(length))")
                }
                spec.maxLength = length
                maxLengthSource = "sentence_bert_config.json max_seq_length"
            }
        }
        if spec.maxLength > maxPositions {
            spec.maxLength = maxPositions
            maxLengthSource += ", capped at max_position_embeddings"
        }
        for (key, fallback) in [("cls_token", "[CLS]"), ("sep_token", "[SEP]")] {
            let token = specialToken(key, fallback)
            guard let id = ids[token] else {
                throw PTQError.file(where_, "\(key) '\(token)' is not in the vocabulary")
            }
            if key == "cls_token" { spec.clsTokenID = id } else { spec.sepTokenID = id }
        }
        spec.paddingTokenID = ids[specialToken("pad_token", "[PAD]")]
        return (spec, source, maxLengthSource)
    }

    // MARK: - LLaMA

    static let llamaLayerNames: [String: String] = [
        "input_layernorm.weight": "attention_norm/weight",
        "self_attn.q_proj.weight": "attention/q_proj/weight",
        "self_attn.k_proj.weight": "attention/k_proj/weight",
        "self_attn.v_proj.weight": "attention/v_proj/weight",
        "self_attn.o_proj.weight": "attention/o_proj/weight",
        "post_attention_layernorm.weight": "mlp_norm/weight",
        "mlp.gate_proj.weight": "mlp/gate_proj/weight",
        "mlp.up_proj.weight": "mlp/up_proj/weight",
        "mlp.down_proj.weight": "mlp/down_proj/weight",
    ]

    static func llamaMapping(_ name: String) -> Mapping {
        switch name {
        case "model.embed_tokens.weight": return .tensor(TensorNames.tokenEmbedding, layer: nil)
        case "model.norm.weight": return .tensor(TensorNames.finalNorm, layer: nil)
        case "lm_head.weight": return .tensor(TensorNames.lmHead, layer: nil)
        default: break
        }
        guard name.hasPrefix("model.layers.") else { return .unknown }
        let rest = name.dropFirst("model.layers.".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), layer >= 0,
              String(layer) == rest[..<dot] else { return .unknown }
        let tail = String(rest[rest.index(after: dot)...])
        if tail == "self_attn.rotary_emb.inv_freq" { return .ignored }
        guard let canonical = llamaLayerNames[tail] else { return .unknown }
        return .tensor(TensorNames.layer(layer, canonical), layer: layer)
    }

    static func loadLLaMA(directory: String, config: JSONFile, modelType: String) throws(PTQError) -> CheckpointContents {
        let activation = try config.string("hidden_act", default: "silu")
        guard activation == "silu" else {
            throw PTQError.file(config.path, "hidden_act '\(activation)' is not supported for LLaMA (only 'silu')")
        }
        switch config.object["rope_scaling"] {
        case nil, is NSNull: break
        case let scaling as [String: Any]:
            let kind = scaling["rope_type"] as? String ?? scaling["type"] as? String ?? "(unknown)"
            guard kind == "default" else {
                throw PTQError.file(config.path, "rope_scaling of type '\(kind)' is not supported")
            }
        default:
            throw PTQError.file(config.path, "invalid rope_scaling")
        }
        for key in ["attention_bias", "mlp_bias"] {
            if try config.bool(key, default: false) {
                throw PTQError.file(config.path, "\(key) = true is not supported (LLaMA projections have no bias)")
            }
        }
        let hidden = try config.int("hidden_size")
        let heads = try config.int("num_attention_heads")
        let headDimDefault = heads > 0 ? hidden / heads : 0
        let headDim = config.object["head_dim"] is NSNull ? headDimDefault
            : try config.int("head_dim", default: headDimDefault)
        let tieKey = try config.bool("tie_word_embeddings", default: false)
        var modelConfig = ModelConfig(
            architecture: .llama, vocabSize: try config.int("vocab_size"), hiddenSize: hidden,
            intermediateSize: try config.int("intermediate_size"), layerCount: try config.int("num_hidden_layers"),
            headCount: heads, kvHeadCount: try config.int("num_key_value_heads", default: heads), headDim: headDim,
            maxPositions: try config.int("max_position_embeddings"),
            ropeTheta: try config.double("rope_theta", default: 10_000),
            normEpsilon: try config.double("rms_norm_eps", default: 1e-6), activation: .silu,
            tiedEmbeddings: tieKey, name: try modelName(config: config, directory: directory))
        let weights = try WeightFiles(validating: modelConfig, configPath: config.path, directory: directory)
        let tied = tieKey || weights.entry(named: "lm_head.weight") == nil
        var loaded = try weights.load { (name) throws(PTQError) -> String? in
            switch llamaMapping(name) {
            case .ignored: return nil
            case .unknown:
                throw PTQError.file(weights.path(of: name), "unexpected tensor '\(name)' in a LLaMA checkpoint")
            case .tensor(let canonical, let layer):
                if let layer, layer >= modelConfig.layerCount {
                    throw PTQError.file(weights.path(of: name), "tensor '\(name)' belongs to layer \(layer), but "
                        + "num_hidden_layers is \(modelConfig.layerCount)")
                }
                // A tied checkpoint may still store lm_head (a copy of the embeddings): drop it.
                if canonical == TensorNames.lmHead && tied { return nil }
                return canonical
            }
        }
        modelConfig.tiedEmbeddings = tied
        let tokenizer = try readBPETokenizer(directory: directory, config: config, vocabSize: modelConfig.vocabSize)
        loaded.metadata["tokenizer_source"] = "tokenizer.json"
        loaded.metadata["model_type"] = modelType
        if let window = SafetensorsReader.integer(config.object["sliding_window"] ?? NSNull()) {
            loaded.metadata["sliding_window_ignored"] = "\(window)"
        }
        let contents = CheckpointContents(config: modelConfig, tokenizer: tokenizer, tensors: loaded.tensors,
                                          storageTypes: loaded.storageTypes, metadata: loaded.metadata)
        try contents.validate(source: directory)
        return contents
    }

    static func readBPETokenizer(directory: String, config: JSONFile, vocabSize: Int) throws(PTQError) -> TokenizerSpec {
        let tokenizerPath = join(directory, "tokenizer.json")
        guard FileManager.default.fileExists(atPath: tokenizerPath) else {
            throw PTQError.file(directory, "no tokenizer.json (a LLaMA model needs its byte-level BPE tokenizer.json)")
        }
        let file = try JSONFile(path: tokenizerPath)
        guard let model = file.object["model"] as? [String: Any] else {
            throw PTQError.file(tokenizerPath, "missing 'model' object")
        }
        let type = model["type"] as? String ?? "(none)"
        guard type == "BPE" else {
            throw PTQError.file(tokenizerPath, "model type '\(type)' is not supported (only byte-level BPE)")
        }
        if model["ignore_merges"] as? Bool == true {
            throw PTQError.file(tokenizerPath, "BPE with ignore_merges = true is not supported")
        }
        guard let vocab = model["vocab"] as? [String: Any] else {
            throw PTQError.file(tokenizerPath, "missing 'model.vocab' object")
        }
        guard let rawMerges = model["merges"] as? [Any] else {
            throw PTQError.file(tokenizerPath, "missing 'model.merges' array")
        }
        var merges: [String] = []
        merges.reserveCapacity(rawMerges.count)
        for (i, merge) in rawMerges.enumerated() {
            if let s = merge as? String {
                merges.append(s)
            } else if let pair = merge as? [Any], pair.count == 2, let a = pair[0] as? String, let b = pair[1] as? String {
                merges.append("\(a) \(b)")
            } else {
                throw PTQError.file(tokenizerPath, "merge #\(i) is neither \"a b\" nor [\"a\", \"b\"]")
            }
        }
        switch file.object["normalizer"] {
        case nil, is NSNull: break
        default:
            let kind = (file.object["normalizer"] as? [String: Any])?["type"] as? String ?? "(unknown)"
            throw PTQError.file(tokenizerPath, "normalizer '\(kind)' is not supported for byte-level BPE")
        }
        let preTokenizer = try detectBPEPreTokenizer(file.object["pre_tokenizer"], path: tokenizerPath)

        let added = file.object["added_tokens"] as? [[String: Any]] ?? []
        let built = try tokenArray(vocab: vocab, addedTokens: added, path: tokenizerPath, padTo: vocabSize)
        guard built.tokens.count == vocabSize else {
            throw PTQError.file(tokenizerPath, "tokenizer has \(built.tokens.count) tokens, more than vocab_size "
                + "\(vocabSize) in config.json")
        }

        let tokenizerConfigPath = join(directory, "tokenizer_config.json")
        let tokenizerConfig = FileManager.default.fileExists(atPath: tokenizerConfigPath)
            ? try JSONFile(path: tokenizerConfigPath) : nil
        func id(tokenKey: String, configKey: String) throws(PTQError) -> Int? {
            if let token = tokenizerConfig.flatMap({ tokenString($0.object[tokenKey]) }) {
                guard let id = built.ids[token] else {
                    throw PTQError.file(tokenizerConfigPath, "\(tokenKey) '\(token)' is not in the vocabulary")
                }
                return id
            }
            var value = config.object[configKey]
            if let list = value as? [Any] { value = list.first }
            guard let value, !(value is NSNull) else { return nil }
            guard let id = SafetensorsReader.integer(value), id >= 0, id < vocabSize else {
                throw PTQError.file(config.path, "\(configKey) \(value) is not a token id below vocab_size \(vocabSize)")
            }
            return id
        }
        let unknown = (model["unk_token"] as? String).flatMap { built.ids[$0] }
        return TokenizerSpec(
            kind: .byteLevelBPE, tokens: built.tokens, merges: merges, tokenTypes: built.types,
            preTokenizer: preTokenizer,
            bosTokenID: try id(tokenKey: "bos_token", configKey: "bos_token_id"),
            eosTokenID: try id(tokenKey: "eos_token", configKey: "eos_token_id"),
            unknownTokenID: unknown,
            paddingTokenID: try id(tokenKey: "pad_token", configKey: "pad_token_id"),
            addBOS: try tokenizerConfig?.bool("add_bos_token", default: false) ?? false)
    }

    /// `smollm` for Digits(individual_digits) + ByteLevel, `gpt2` for plain ByteLevel.
    static func detectBPEPreTokenizer(_ value: Any?, path: String) throws(PTQError) -> String {
        func describe(_ v: Any?) -> String {
            guard let object = v as? [String: Any] else { return "none" }
            let kind = object["type"] as? String ?? "?"
            if kind == "Sequence", let list = object["pretokenizers"] as? [Any] {
                return "Sequence[\(list.map(describe).joined(separator: ", "))]"
            }
            return kind
        }
        func checkByteLevel(_ object: [String: Any]) throws(PTQError) {
            if object["add_prefix_space"] as? Bool == true {
                throw PTQError.file(path, "ByteLevel pre_tokenizer with add_prefix_space = true is not supported")
            }
            if object["use_regex"] as? Bool == false {
                throw PTQError.file(path, "ByteLevel pre_tokenizer with use_regex = false is not supported")
            }
        }
        guard let object = value as? [String: Any], let kind = object["type"] as? String else {
            throw PTQError.file(path, "pre_tokenizer \(describe(value)) is not supported "
                + "(expected ByteLevel, or Sequence[Digits(individual_digits), ByteLevel])")
        }
        if kind == "ByteLevel" {
            try checkByteLevel(object)
            return "gpt2"
        }
        if kind == "Sequence", let list = object["pretokenizers"] as? [[String: Any]], list.count == 2,
           list[0]["type"] as? String == "Digits", list[0]["individual_digits"] as? Bool == true,
           list[1]["type"] as? String == "ByteLevel" {
            try checkByteLevel(list[1])
            return "smollm"
        }
        throw PTQError.file(path, "pre_tokenizer \(describe(value)) is not supported "
            + "(expected ByteLevel, or Sequence[Digits(individual_digits), ByteLevel])")
    }

    // MARK: - Shared helpers

    /// Builds the id-indexed token list from a tokenizer.json vocab plus added tokens.
    /// Ids missing below `padTo` become unused `[PAD<i>]` placeholders (as llama.cpp's converter does).
    static func tokenArray(vocab: [String: Any], addedTokens: [[String: Any]], path: String,
                           padTo minimumCount: Int = 0) throws(PTQError)
        -> (tokens: [String], types: [Int32], ids: [String: Int]) {
        var byID: [Int: (String, Int32)] = [:]
        var ids: [String: Int] = [:]
        var maxID = -1
        for (token, rawID) in vocab {
            guard let id = SafetensorsReader.integer(rawID), id >= 0, id < 100_000_000 else {
                throw PTQError.file(path, "vocabulary entry '\(token)' has invalid id \(rawID)")
            }
            if let other = byID[id], other.0 != token {
                throw PTQError.file(path, "tokens '\(other.0)' and '\(token)' share id \(id)")
            }
            byID[id] = (token, 1)
            ids[token] = id
            maxID = max(maxID, id)
        }
        for added in addedTokens {
            guard let content = added["content"] as? String,
                  let id = SafetensorsReader.integer(added["id"] ?? NSNull()), id >= 0, id < 100_000_000 else {
                throw PTQError.file(path, "added token \(added) has no valid 'content' and 'id'")
            }
            if let other = byID[id], other.0 != content {
                throw PTQError.file(path, "added token '\(content)' reuses id \(id) of '\(other.0)'")
            }
            let special = added["special"] as? Bool ?? false
            byID[id] = (content, special ? 3 : 4)
            ids[content] = id
            maxID = max(maxID, id)
        }
        let count = max(maxID + 1, minimumCount)
        var tokens: [String] = []
        var types: [Int32] = []
        tokens.reserveCapacity(count)
        types.reserveCapacity(count)
        for id in 0..<count {
            if let (token, type) = byID[id] {
                tokens.append(token)
                types.append(type)
            } else {
                tokens.append("[PAD\(id)]")
                types.append(5)
            }
        }
        return (tokens, types, ids)
    }

    /// A special token given as a string or as an AddedToken object `{"content": ...}`.
    static func tokenString(_ value: Any?) -> String? {
        if let s = value as? String { return s }
        if let object = value as? [String: Any] { return object["content"] as? String }
        return nil
    }

    static func modelName(config: JSONFile, directory: String) throws(PTQError) -> String {
        if let name = config.object["_name_or_path"] as? String, !name.isEmpty { return name }
        return URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
    }

    static func join(_ directory: String, _ name: String) -> String {
        name.isEmpty ? directory : URL(fileURLWithPath: directory).appendingPathComponent(name).path
    }

    static func readJSON(_ path: String) throws(PTQError) -> Any {
        guard FileManager.default.fileExists(atPath: path) else { throw PTQError.file(path, "no such file") }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw PTQError.file(path, "cannot read: \(error.localizedDescription)")
        }
        do {
            return try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw PTQError.file(path, "invalid JSON: \(error.localizedDescription)")
        }
    }
}

/// A JSON object file with typed field access; errors name the file and the field.
struct JSONFile {
    let path: String
    let object: [String: Any]

    init(path: String) throws(PTQError) {
        let json = try SafetensorsImporter.readJSON(path)
        guard let object = json as? [String: Any] else { throw PTQError.file(path, "expected a JSON object") }
        self.path = path
        self.object = object
    }

    func int(_ key: String, default defaultValue: Int? = nil) throws(PTQError) -> Int {
        guard let value = object[key], !(value is NSNull) else {
            if let defaultValue { return defaultValue }
            throw PTQError.file(path, "missing required field '\(key)'")
        }
        guard let i = SafetensorsReader.integer(value) else {
            throw PTQError.file(path, "field '\(key)' must be an integer, found \(value)")
        }
        return i
    }

    func double(_ key: String, default defaultValue: Double? = nil) throws(PTQError) -> Double {
        guard let value = object[key], !(value is NSNull) else {
            if let defaultValue { return defaultValue }
            throw PTQError.file(path, "missing required field '\(key)'")
        }
        guard let n = value as? NSNumber, !SafetensorsReader.isBoolean(n) else {
            throw PTQError.file(path, "field '\(key)' must be a number, found \(value)")
        }
        return n.doubleValue
    }

    func string(_ key: String, default defaultValue: String? = nil) throws(PTQError) -> String {
        guard let value = object[key], !(value is NSNull) else {
            if let defaultValue { return defaultValue }
            throw PTQError.file(path, "missing required field '\(key)'")
        }
        guard let s = value as? String else {
            throw PTQError.file(path, "field '\(key)' must be a string, found \(value)")
        }
        return s
    }

    func bool(_ key: String, default defaultValue: Bool) throws(PTQError) -> Bool {
        guard let value = object[key], !(value is NSNull) else { return defaultValue }
        guard let b = SafetensorsReader.boolean(value) else {
            throw PTQError.file(path, "field '\(key)' must be true or false, found \(value)")
        }
        return b
    }
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
struct WeightFiles {
    let directory: String
    private let readers: [SafetensorsReader]
    /// Tensor name → reader index, in a stable order.
    private let owners: [(name: String, reader: Int)]
    private let ownerIndex: [String: Int]

    init(directory: String) throws(PTQError) {
        self.directory = directory
        let single = SafetensorsImporter.join(directory, "model.safetensors")
        let indexPath = SafetensorsImporter.join(directory, "model.safetensors.index.json")
        var readers: [SafetensorsReader] = []
        var owners: [(String, Int)] = []
        var ownerIndex: [String: Int] = [:]
        if FileManager.default.fileExists(atPath: single) {
            let reader = try SafetensorsReader(path: single)
            readers = [reader]
            for name in reader.names { owners.append((name, 0)) }
        } else if FileManager.default.fileExists(atPath: indexPath) {
            let index = try JSONFile(path: indexPath)
            guard let map = index.object["weight_map"] as? [String: String] else {
                throw PTQError.file(indexPath, "missing 'weight_map' object of tensor name → file")
            }
            var shardIndex: [String: Int] = [:]
            for shard in Set(map.values).sorted() {
                guard !shard.contains("/") && shard != ".." else {
                    throw PTQError.file(indexPath, "shard '\(shard)' is not a file name in the directory")
                }
                shardIndex[shard] = readers.count
                readers.append(try SafetensorsReader(path: SafetensorsImporter.join(directory, shard)))
            }
            for (name, shard) in map.sorted(by: { $0.key < $1.key }) {
                let r = shardIndex[shard]!
                guard readers[r].entry(named: name) != nil else {
                    throw PTQError.file(readers[r].path, "tensor '\(name)' listed in model.safetensors.index.json "
                        + "is not in this shard")
                }
                owners.append((name, r))
            }
        } else {
            throw PTQError.file(directory, "no model.safetensors (or model.safetensors.index.json) in the directory")
        }
        for (i, owner) in owners.enumerated() { ownerIndex[owner.0] = i }
        self.readers = readers
        self.owners = owners
        self.ownerIndex = ownerIndex
    }

    /// Opens the weight files of `directory` after validating `config` (read from `configPath`)
    /// against them; errors name the config file.
    init(validating config: ModelConfig, configPath: String, directory: String) throws(PTQError) {
        do { try config.validate() } catch {
            // An absurd layer count: the tensor count makes the better message.
            if let weights = try? WeightFiles(directory: directory) {
                try weights.checkLayerCount(config.layerCount, configPath: configPath)
            }
            throw PTQError.file(configPath, error.message)
        }
        self = try WeightFiles(directory: directory)
        try checkLayerCount(config.layerCount, configPath: configPath)
    }

    /// Every layer has several tensors: a larger layer count is corrupt (and would make validation huge).
    func checkLayerCount(_ layers: Int, configPath: String) throws(PTQError) {
        guard layers <= owners.count else {
            throw PTQError.file(configPath, "num_hidden_layers is \(layers), but the checkpoint has only "
                + "\(owners.count) tensors")
        }
    }

    func entry(named name: String) -> SafetensorsEntry? {
        ownerIndex[name].flatMap { readers[owners[$0].reader].entry(named: name) }
    }

    /// The file holding `name` (for error messages).
    func path(of name: String) -> String {
        ownerIndex[name].map { readers[owners[$0].reader].path } ?? directory
    }

    struct Loaded {
        var tensors: [String: Tensor] = [:]
        var storageTypes: [String: DType] = [:]
        var metadata: [String: String] = [:]
    }

    /// Loads every tensor that `map` names (nil = ignore), recording dtypes and provenance.
    func load(_ map: (String) throws(PTQError) -> String?) throws(PTQError) -> Loaded {
        var loaded = Loaded()
        var sources: [String: String] = [:]
        var dtypeCounts: [String: Int] = [:]
        var ignored: [String] = []
        for (name, r) in owners {
            let reader = readers[r]
            guard let entry = reader.entry(named: name) else { continue }
            guard let canonical = try map(name) else {
                ignored.append(name)
                continue
            }
            if let previous = sources[canonical] {
                throw PTQError.file(reader.path, "tensors '\(previous)' and '\(name)' both map to '\(canonical)'")
            }
            sources[canonical] = name
            guard let dtype = entry.storageType else {
                throw PTQError.file(reader.path, "tensor '\(name)' has dtype \(entry.dtype); only F32, F16 and BF16 "
                    + "tensors can be imported")
            }
            loaded.tensors[canonical] = try reader.tensor(entry)
            loaded.storageTypes[canonical] = dtype
            dtypeCounts[entry.dtype, default: 0] += 1
        }
        loaded.metadata["source"] = directory
        loaded.metadata["importer"] = "safetensors"
        loaded.metadata["source_types"] = dtypeCounts
            .sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .map { "\($0.key):\($0.value)" }.joined(separator: ",")
        if !ignored.isEmpty {
            loaded.metadata["ignored_tensors"] = ignored.joined(separator: ",")
        }
        return loaded
    }
}
