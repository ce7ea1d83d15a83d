import Foundation
@testable import PTQKit

/// Deterministic pseudo-random numbers: the calibration sampler's SplitMix64, so synthetic
/// models are identical every run.
typealias SeededGenerator = SplitMix

extension SplitMix {
    mutating func float(in range: ClosedRange<Float>) -> Float { Float.random(in: range, using: &self) }
}

/// Small models that tests build themselves: fast, and with every edge a real model has
/// (GQA, tied head, biases, LayerNorm).
enum SyntheticModels {
    static let vocab: [String] = {
        // Byte-level BPE needs all 256 byte symbols; a few merges on top.
        var tokens: [String] = []
        for b in 0..<256 { tokens.append(gpt2Symbol(UInt8(b))) }
        return tokens
    }()

    /// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100….
    static func gpt2Symbol(_ byte: UInt8) -> String {
        let printable = (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
        if printable { return String(UnicodeScalar(byte)) }
        var shifted = 0
        for b in 0..<Int(byte) where !((33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)) {
            shifted += 1
        }
        return String(UnicodeScalar(UInt32(256 + shifted))!)
    }

    static func llamaConfig(tied: Bool = true) -> ModelConfig {
        ModelConfig(architecture: .llama, vocabSize: 260, hiddenSize: 32, intermediateSize: 48, layerCount: 2,
                    headCount: 4, kvHeadCount: 2, headDim: 8, maxPositions: 128, ropeTheta: 10_000,
                    normEpsilon: 1e-5, activation: .silu, tiedEmbeddings: tied, name: "tiny-llama")
    }

    static func bertConfig() -> ModelConfig {
        ModelConfig(architecture: .bert, vocabSize: 40, hiddenSize: 16, intermediateSize: 32, layerCount: 2,
                    headCount: 2, maxPositions: 32, normEpsilon: 1e-12, activation: .gelu, typeVocabSize: 2,
                    pooling: .mean, normalizeEmbeddings: true, name: "tiny-bert")
    }

    static func llamaTokenizer() -> TokenizerSpec {
        var tokens = vocab
        tokens += ["<s>", "</s>", "<unk>", "<pad>"]
        return TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, merges: [],
                             tokenTypes: Array(repeating: 1, count: 256) + [3, 3, 2, 3],
                             preTokenizer: "gpt2", bosTokenID: 256, eosTokenID: 257, unknownTokenID: 258,
                             paddingTokenID: 259, addBOS: false)
    }

    static func bertTokenizer() -> TokenizerSpec {
        var tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokens += ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", ".", ",", "##s", "##ing", "big", "small", "red"]
        while tokens.count < 40 { tokens.append("w\(tokens.count)") }
        return TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: 1,
                             paddingTokenID: 0, clsTokenID: 2, sepTokenID: 3, lowercase: true, stripAccents: true,
                             splitChineseCharacters: true, maxLength: 32)
    }

    /// Random weights with realistic scales; norm weights near 1.
    static func contents(_ config: ModelConfig, tokenizer: TokenizerSpec, seed: UInt64 = 42) -> CheckpointContents {
        var rng = SeededGenerator(seed: seed)
        var tensors: [String: Tensor] = [:]
        for (name, shape) in config.expectedTensors {
            let count = shape.reduce(1, *)
            let isNorm = name.contains("norm/weight")
            let scale: Float = shape.count == 2 ? 1 / Float(shape[1]).squareRoot() : 0.1
            let data = (0..<count).map { _ in (isNorm ? 1 : 0) + rng.float(in: -scale...scale) * (isNorm ? 0.5 : 1.7) }
            tensors[name] = Tensor(shape: shape, data: data)
        }
        return CheckpointContents(config: config, tokenizer: tokenizer, tensors: tensors,
                                  metadata: ["source": "synthetic"])
    }

    /// One folder per test process, removed when the process exits: tests leave nothing behind.
    static let temporaryRoot: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ptqkit-tests-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: SyntheticModels.temporaryRoot) }
        return dir
    }()

    static func temporaryPath(_ name: String) -> String {
        temporaryRoot + "/\(UUID().uuidString)-\(name)"
    }

    /// Writes a synthetic checkpoint and returns its path.
    static func writeCheckpoint(_ contents: CheckpointContents, name: String = "model.h5") throws -> String {
        let path = temporaryPath(name)
        try CheckpointWriter.write(contents, to: path)
        return path
    }
}

/// Where the project's shared data and fetched models live, found from this file's path.
enum ProjectPaths {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    static var shared: String { root + "/../shared" }
    static var wikiTest: String { shared + "/data/wikitext-2-raw/wiki.test.raw" }
    static var stsDev: String { shared + "/data/stsb/sts-dev.tsv" }
    static var smolGGUF: String { root + "/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
    static var miniLMDirectory: String { root + "/models/minilm" }

    /// Real-model tests run when the models are present; with PTQ_REQUIRE_MODELS=1 (CI, the
    /// test script) their absence is a failure instead of a skip.
    static var modelsAvailable: Bool {
        let present = FileManager.default.fileExists(atPath: smolGGUF)
            && FileManager.default.fileExists(atPath: miniLMDirectory + "/model.safetensors")
        if !present && ProcessInfo.processInfo.environment["PTQ_REQUIRE_MODELS"] == "1" { return true }
        return present
    }
}
