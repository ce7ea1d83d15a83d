import Foundation
import PTQCore

/// Imports a llama.cpp GGUF file of a LLaMA-architecture model into canonical float32 tensors.
///
/// Quantized tensors (Q8_0, Q4_0, Q4_1) and F16/BF16 are dequantized bit-exactly as ggml does;
/// that float32 model is PTQKit's full-precision baseline. Q and K projection rows are put back in
/// Hugging Face order (llama.cpp's converter interleaves them for its RoPE).
public enum GGUFImporter {
    /// Loads and validates the model in the GGUF file at `path`.
    public static func load(path: String) throws(PTQError) -> CheckpointContents {
        let reader = try GGUFReader(path: path)
        let architecture = try reader.string("general.architecture")
        guard architecture == "llama" else {
            throw PTQError.file(path, "general.architecture is '\(architecture)'; only 'llama' GGUF models "
                + "can be imported")
        }
        var config = try readConfig(reader)
        let tokenizer = try readTokenizer(reader, vocabSize: config.vocabSize)

        // Every layer has 9 tensors: a larger block count is corrupt (and would make validation huge).
        guard config.layerCount <= reader.tensors.count else {
            throw PTQError.file(path, "llama.block_count is \(config.layerCount), but the file has only "
                + "\(reader.tensors.count) tensors")
        }
        // Map every tensor name before dequantizing anything, so naming errors come first.
        var mapped: [(info: GGUFTensorInfo, name: String)] = []
        for info in reader.tensors {
            guard let name = canonicalName(info.name) else {
                throw PTQError.file(path, "unsupported tensor '\(info.name)' (\(info.type.name), ne \(info.dimensions)) "
                    + "in a llama GGUF; PTQKit knows token_embd, blk.N.{attn_norm,attn_q,attn_k,attn_v,"
                    + "attn_output,ffn_norm,ffn_gate,ffn_up,ffn_down}, output_norm and output")
            }
            if let layer = layerIndex(info.name), layer >= config.layerCount {
                throw PTQError.file(path, "tensor '\(info.name)' belongs to layer \(layer), but llama.block_count "
                    + "is \(config.layerCount)")
            }
            mapped.append((info, name))
        }
        for (info, _) in mapped where !info.type.canDequantize {
            throw PTQError.file(path, "tensor '\(info.name)' has GGML type \(info.type.name), which PTQKit cannot "
                + "dequantize (supported: \(GGMLFormats.supportedTypes.map(\.name).joined(separator: ", ")))")
        }
        config.tiedEmbeddings = reader.tensor(named: "output.weight") == nil

        var tensors: [String: Tensor] = [:]
        var storageTypes: [String: DType] = [:]
        var typeCounts: [String: Int] = [:]
        for (info, name) in mapped {
            typeCounts[info.type.name, default: 0] += 1
            var tensor = try reader.loadTensor(info)
            let heads: Int? = name.hasSuffix("attention/q_proj/weight") ? config.headCount
                : name.hasSuffix("attention/k_proj/weight") ? config.kvHeadCount : nil
            if let heads {
                let expectedRows = heads * config.headDim
                guard tensor.shape.count == 2, tensor.shape[0] == expectedRows else {
                    throw PTQError.file(path, "tensor '\(info.name)' has shape \(tensor.shape) (ne \(info.dimensions)), "
                        + "expected \(expectedRows) rows (\(heads) heads × head_dim \(config.headDim))")
                }
                tensor = try undoRoPEPermutation(tensor, headCount: heads)
            }
            tensors[name] = tensor
            storageTypes[name] = .float32
        }

        let sourceTypes = typeCounts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .map { "\($0.key):\($0.value)" }.joined(separator: ",")
        var metadata: [String: String] = [
            "source": path,
            "importer": "gguf",
            "source_types": sourceTypes,
            "gguf_version": "\(reader.version)",
        ]
        if let fileType = reader.metadata["general.file_type"]?.intValue {
            metadata["gguf_file_type"] = "\(fileType)"
        }
        if let pre = reader.metadata["tokenizer.ggml.pre"]?.stringValue {
            metadata["gguf_tokenizer_pre"] = pre
        }
        let contents = CheckpointContents(config: config, tokenizer: tokenizer, tensors: tensors,
                                          storageTypes: storageTypes, metadata: metadata)
        try contents.validate(source: path)
        return contents
    }

    // MARK: - Config

    static func readConfig(_ reader: GGUFReader) throws(PTQError) -> ModelConfig {
        let path = reader.path
        for key in ["llama.attention.head_count", "llama.attention.head_count_kv", "llama.feed_forward_length"] {
            if case .array = reader.metadata[key] {
                throw PTQError.file(path, "metadata '\(key)' varies per layer; PTQKit needs one value for all layers")
            }
        }
        if let experts = reader.metadata["llama.expert_count"]?.intValue, experts > 0 {
            throw PTQError.file(path, "llama.expert_count is \(experts): mixture-of-experts models are not supported")
        }
        if let scaling = reader.metadata["llama.rope.scaling.type"]?.stringValue, scaling != "none" {
            throw PTQError.file(path, "llama.rope.scaling.type is '\(scaling)': RoPE scaling is not supported")
        }
        let layers = try reader.int("llama.block_count")
        let hidden = try reader.int("llama.embedding_length")
        let intermediate = try reader.int("llama.feed_forward_length")
        let heads = try reader.int("llama.attention.head_count")
        let kvHeads = try reader.int("llama.attention.head_count_kv", default: heads)
        let epsilon = try reader.double("llama.attention.layer_norm_rms_epsilon")
        let context = try reader.int("llama.context_length")
        let ropeTheta = try reader.double("llama.rope.freq_base", default: 10_000)
        guard heads > 0 else { throw PTQError.file(path, "llama.attention.head_count must be positive (got \(heads))") }
        var headDim = hidden / heads
        if let keyLength = reader.metadata["llama.attention.key_length"] {
            headDim = try reader.int("llama.attention.key_length")
            if let valueLength = reader.metadata["llama.attention.value_length"]?.intValue, valueLength != headDim {
                throw PTQError.file(path, "llama.attention.value_length \(valueLength) differs from key_length "
                    + "\(keyLength.summary); PTQKit needs equal head sizes")
            }
        } else if reader.metadata["llama.rope.dimension_count"] != nil {
            headDim = try reader.int("llama.rope.dimension_count")
        }
        guard let tokens = try reader.stringArray("tokenizer.ggml.tokens") else {
            throw PTQError.file(path, "missing metadata key 'tokenizer.ggml.tokens' (the vocabulary)")
        }
        let name = try reader.string("general.name",
                                     default: URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent)
        let config = ModelConfig(
            architecture: .llama, vocabSize: tokens.count, hiddenSize: hidden, intermediateSize: intermediate,
            layerCount: layers, headCount: heads, kvHeadCount: kvHeads, headDim: headDim,
            maxPositions: context, ropeTheta: ropeTheta, normEpsilon: epsilon, activation: .silu,
            tiedEmbeddings: false, name: name)
        do {
            try config.validate()
        } catch {
            throw PTQError.file(path, error.message)
        }
        return config
    }

    // MARK: - Tokenizer

    /// Pre-tokenizers for which llama.cpp adds BOS by default when `tokenizer.ggml.add_bos_token` is absent.
    static let addBOSByDefault: Set<String> = ["llama3", "llama-v3", "llama-bpe", "falcon3", "tekken", "chameleon"]

    static func readTokenizer(_ reader: GGUFReader, vocabSize: Int) throws(PTQError) -> TokenizerSpec {
        let path = reader.path
        let model = try reader.string("tokenizer.ggml.model")
        guard model == "gpt2" else {
            throw PTQError.file(path, "tokenizer.ggml.model is '\(model)'; only 'gpt2' (byte-level BPE) "
                + "tokenizers can be imported")
        }
        let tokens = try reader.stringArray("tokenizer.ggml.tokens") ?? []
        guard let merges = try reader.stringArray("tokenizer.ggml.merges") else {
            throw PTQError.file(path, "missing metadata key 'tokenizer.ggml.merges' (required for a gpt2 tokenizer)")
        }
        var tokenTypes: [Int32] = []
        if let types = try reader.intArray("tokenizer.ggml.token_type") {
            guard types.count == tokens.count else {
                throw PTQError.file(path, "tokenizer.ggml.token_type has \(types.count) entries for "
                    + "\(tokens.count) tokens")
            }
            tokenTypes = types.map { Int32(truncatingIfNeeded: $0) }
        }
        let ggmlPre = try reader.string("tokenizer.ggml.pre", default: "default")
        let pre = ggmlPre == "gpt-2" ? "gpt2" : ggmlPre
        func tokenID(_ key: String) throws(PTQError) -> Int? {
            guard reader.metadata[key] != nil else { return nil }
            let id = try reader.int(key)
            guard id >= 0, id < vocabSize else {
                throw PTQError.file(path, "metadata '\(key)' is \(id), outside the vocabulary of \(vocabSize) tokens")
            }
            return id
        }
        let addBOS = try reader.bool("tokenizer.ggml.add_bos_token") ?? addBOSByDefault.contains(ggmlPre)
        return TokenizerSpec(
            kind: .byteLevelBPE, tokens: tokens, merges: merges, tokenTypes: tokenTypes, preTokenizer: pre,
            bosTokenID: try tokenID("tokenizer.ggml.bos_token_id"),
            eosTokenID: try tokenID("tokenizer.ggml.eos_token_id"),
            unknownTokenID: try tokenID("tokenizer.ggml.unknown_token_id"),
            paddingTokenID: try tokenID("tokenizer.ggml.padding_token_id"),
            addBOS: addBOS)
    }

    // MARK: - Tensor names

    static let layerSuffixes: [String: String] = [
        "attn_norm.weight": "attention_norm/weight",
        "attn_q.weight": "attention/q_proj/weight",
        "attn_k.weight": "attention/k_proj/weight",
        "attn_v.weight": "attention/v_proj/weight",
        "attn_output.weight": "attention/o_proj/weight",
        "ffn_norm.weight": "mlp_norm/weight",
        "ffn_gate.weight": "mlp/gate_proj/weight",
        "ffn_up.weight": "mlp/up_proj/weight",
        "ffn_down.weight": "mlp/down_proj/weight",
    ]

    /// The canonical name of a llama.cpp tensor name, or nil when PTQKit has no use for it.
    public static func canonicalName(_ ggufName: String) -> String? {
        switch ggufName {
        case "token_embd.weight": return TensorNames.tokenEmbedding
        case "output_norm.weight": return TensorNames.finalNorm
        case "output.weight": return TensorNames.lmHead
        default: break
        }
        guard let layer = layerIndex(ggufName) else { return nil }
        let suffix = ggufName.split(separator: ".", maxSplits: 2).last.map(String.init) ?? ""
        return layerSuffixes[suffix].map { TensorNames.layer(layer, $0) }
    }

    /// N in `blk.N.*`.
    static func layerIndex(_ ggufName: String) -> Int? {
        let parts = ggufName.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "blk", let n = Int(parts[1]), n >= 0,
              String(n) == parts[1] else { return nil }
        return n
    }

    // MARK: - RoPE row order

    /// Undoes convert_hf_to_gguf.py's `permute(w, n_head, n_head_kv)` of Q/K rows.
    ///
    /// llama.cpp stores head `h`'s rows interleaved: GGUF row `h·d + 2i + j` is Hugging Face row
    /// `h·d + j·d/2 + i` (d = head_dim, i < d/2, j ∈ {0, 1}). The result is in Hugging Face order,
    /// where RoPE rotates the two halves of each head.
    public static func undoRoPEPermutation(_ tensor: Tensor, headCount: Int) throws(PTQError) -> Tensor {
        guard tensor.shape.count == 2, headCount > 0, tensor.shape[0] % (2 * headCount) == 0 else {
            throw PTQError("cannot undo the RoPE row permutation of a tensor of shape \(tensor.shape) "
                + "with \(headCount) heads: rows must be a multiple of 2 × heads")
        }
        let rows = tensor.shape[0], cols = tensor.shape[1]
        let headDim = rows / headCount, half = headDim / 2
        var out = [Float](repeating: 0, count: tensor.count)
        tensor.data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                guard let s = src.baseAddress, let d = dst.baseAddress, cols > 0 else { return }
                for h in 0..<headCount {
                    for j in 0..<2 {
                        for i in 0..<half {
                            let hfRow = h * headDim + j * half + i
                            let ggufRow = h * headDim + 2 * i + j
                            (d + hfRow * cols).update(from: s + ggufRow * cols, count: cols)
                        }
                    }
                }
            }
        }
        return Tensor(shape: tensor.shape, data: out)
    }
}
