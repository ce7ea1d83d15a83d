import Foundation
import PTQCore

/// Writes a `CheckpointContents` as an HDF5 checkpoint.
///
/// The file is written under a temporary name beside the destination and renamed into place
/// only when complete, so a crash never leaves a half-written checkpoint at `path`.
public enum CheckpointWriter {
    public static func write(_ contents: CheckpointContents, to path: String) throws(PTQError) {
        try contents.validate(source: path)
        try write(config: contents.config, tokenizer: contents.tokenizer, metadata: contents.metadata,
                  storageTypes: contents.storageTypes, to: path) { (name, _) throws(PTQError) in
            contents.tensors[name]!  // validate() guarantees presence
        }
    }

    /// Writes a checkpoint whose tensors `tensor` produces one at a time, in the config's
    /// `expectedTensors` order, so that a model larger than memory can be written: only one
    /// tensor is held at once. Each tensor must have the shape it is asked for and be finite.
    public static func write(config: ModelConfig, tokenizer: TokenizerSpec, metadata: [String: String] = [:],
                             storageTypes: [String: DType] = [:], to path: String,
                             tensor: (_ name: String, _ shape: [Int]) throws(PTQError) -> Tensor) throws(PTQError) {
        do {
            try config.validate()
            try tokenizer.validate(for: config)
        } catch {
            throw PTQError.file(path, error.message)
        }
        try AtomicFile.write(to: path) { (temp: String) throws(PTQError) in
            let file = try HDF5File.create(temp)
            try file.setAttribute(".", "format", CheckpointFormat.formatName)
            try file.setAttribute(".", "format_version", CheckpointFormat.version)
            for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
                try file.setAttribute(".", "meta_\(key)", value)
            }
            try writeConfig(config, file)
            try writeTokenizer(tokenizer, file)
            for (name, shape) in config.expectedTensors {
                let t = try tensor(name, shape)
                guard t.shape == shape, t.data.count == Validation.checkedProduct(shape) else {
                    throw PTQError.file(path, "tensor '\(name)' has shape \(t.shape) (\(t.data.count) values), expected \(shape)")
                }
                do throws(PTQError) { try Validation.requireFinite(t, name: name) } catch { throw PTQError.file(path, error.message) }
                let stored: HDF5File.StoredFloat
                switch storageTypes[name] ?? .float32 {
                case .float32: stored = .float32
                case .float16: stored = .float16
                case .bfloat16: stored = .bfloat16
                }
                try file.writeFloats(name, shape: t.shape, data: t.data, as: stored)
            }
            try file.flush()
        }
    }

    private static func writeConfig(_ c: ModelConfig, _ file: HDF5File) throws(PTQError) {
        let g = CheckpointFormat.configGroup
        _ = try file.createGroup(g)
        typealias F = ModelConfig.Field
        try file.setAttribute(g, F.architecture.rawValue, c.architecture.rawValue)
        try file.setAttribute(g, F.name.rawValue, c.name)
        try file.setAttribute(g, F.vocab_size.rawValue, c.vocabSize)
        try file.setAttribute(g, F.hidden_size.rawValue, c.hiddenSize)
        try file.setAttribute(g, F.intermediate_size.rawValue, c.intermediateSize)
        try file.setAttribute(g, F.layer_count.rawValue, c.layerCount)
        try file.setAttribute(g, F.head_count.rawValue, c.headCount)
        try file.setAttribute(g, F.kv_head_count.rawValue, c.kvHeadCount)
        try file.setAttribute(g, F.head_dim.rawValue, c.headDim)
        try file.setAttribute(g, F.max_positions.rawValue, c.maxPositions)
        try file.setAttribute(g, F.rope_theta.rawValue, c.ropeTheta)
        try file.setAttribute(g, F.norm_epsilon.rawValue, c.normEpsilon)
        try file.setAttribute(g, F.activation.rawValue, c.activation.rawValue)
        try file.setAttribute(g, F.tied_embeddings.rawValue, c.tiedEmbeddings ? 1 : 0)
        try file.setAttribute(g, F.type_vocab_size.rawValue, c.typeVocabSize)
        try file.setAttribute(g, F.pooling.rawValue, c.pooling.rawValue)
        try file.setAttribute(g, F.normalize_embeddings.rawValue, c.normalizeEmbeddings ? 1 : 0)
    }

    private static func writeTokenizer(_ t: TokenizerSpec, _ file: HDF5File) throws(PTQError) {
        let g = CheckpointFormat.tokenizerGroup
        _ = try file.createGroup(g)
        try file.setAttribute(g, "kind", t.kind.rawValue)
        try file.setAttribute(g, "pre_tokenizer", t.preTokenizer)
        let ids: [(String, Int?)] = [("bos_token_id", t.bosTokenID), ("eos_token_id", t.eosTokenID),
                                     ("unknown_token_id", t.unknownTokenID), ("padding_token_id", t.paddingTokenID),
                                     ("cls_token_id", t.clsTokenID), ("sep_token_id", t.sepTokenID)]
        for (key, id) in ids { try file.setAttribute(g, key, id ?? CheckpointFormat.noID) }
        try file.setAttribute(g, "add_bos", t.addBOS ? 1 : 0)
        try file.setAttribute(g, "lowercase", t.lowercase ? 1 : 0)
        try file.setAttribute(g, "strip_accents", t.stripAccents ? 1 : 0)
        try file.setAttribute(g, "split_chinese_characters", t.splitChineseCharacters ? 1 : 0)
        try file.setAttribute(g, "max_input_chars_per_word", t.maxInputCharsPerWord)
        try file.setAttribute(g, "continuing_subword_prefix", t.continuingSubwordPrefix)
        try file.setAttribute(g, "max_length", t.maxLength)
        try file.writeStrings("\(g)/tokens", t.tokens)
        try file.writeStrings("\(g)/merges", t.merges)
        try file.writeInt32s("\(g)/token_types", t.tokenTypes)
    }
}

/// Writes a file under a temporary name in the destination's folder and renames it into place.
public enum AtomicFile {
    public static func write(to path: String, _ body: (String) throws(PTQError) -> Void) throws(PTQError) {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        guard FileManager.default.fileExists(atPath: directory) else {
            throw PTQError.file(path, "output folder '\(directory)' does not exist")
        }
        let temp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())").path
        do {
            try body(temp)
        } catch {
            try? FileManager.default.removeItem(atPath: temp)
            throw error
        }
        if rename(temp, path) != 0 {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: temp)
            throw PTQError.file(path, "cannot move the finished file into place: \(reason)")
        }
    }
}
