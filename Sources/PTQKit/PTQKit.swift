@_exported import Checkpoint
@_exported import Evaluation
@_exported import Models
@_exported import PTQCore
@_exported import Tokenizers
import Foundation
import Kernels

/// The library facade: the same operations as the `ptq` command, for Swift programs.
public enum PTQ {
    /// The toolkit version written into files it produces.
    public static let version = "0.1.0"

    /// Whether the kernels run their AVX2/FMA/F16C bodies on this CPU (chosen at run time; on
    /// other CPUs the portable reference kernels run and give the same results).
    public static var usesAVX2Kernels: Bool { Int8Dot.usesAVX2 }

    /// Threads PTQKit's parallel loops and OpenBLAS use (the machine's cores by default).
    /// Set it before running a model, not while one runs.
    public static var threadCount: Int {
        get { Parallel.workerCount }
        set { Parallel.setThreadCount(newValue) }
    }

    /// Reads a GGUF file or a Hugging Face safetensors directory.
    public static func importModel(from source: String) throws(PTQError) -> CheckpointContents {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: source, isDirectory: &isDirectory) else {
            throw PTQError.file(source, "no such file or directory")
        }
        if isDirectory.boolValue { return try SafetensorsImporter.load(directory: source) }
        if source.hasSuffix(".safetensors") {
            return try SafetensorsImporter.load(directory: (source as NSString).deletingLastPathComponent)
        }
        return try GGUFImporter.load(path: source)
    }

    /// Imports `source` and writes it as an HDF5 checkpoint at `output` (atomically).
    @discardableResult
    public static func importModel(from source: String, to output: String) throws(PTQError) -> CheckpointContents {
        let contents = try importModel(from: source)
        try CheckpointWriter.write(contents, to: output)
        return contents
    }

    /// Loads an HDF5 checkpoint for running, as the model family its config names
    /// (`ModelFamilies`). Cast to a capability (`as? any LanguageModel`) or ask for one with
    /// `languageModel(for:)` for an error that says what the model is.
    public static func loadModel(path: String) throws(PTQError) -> any QuantizableModel {
        // No `TokenKernels.collapseToHugePages()` here, unlike `loadPacked`: collapsing the float
        // checkpoint's ~540 MB of copied pages took 0.4–1.4 s (load 0.6 → 1.0–2.1 s) for no
        // FP32 decode gain we could measure (it already runs at ~96 % of the bandwidth bound).
        try ModelFamilies.load(CheckpointWeights(try CheckpointReader(path: path)))
    }

    /// Builds the tokenizer a model file carries.
    public static func tokenizer(for model: some QuantizableModel) throws(PTQError) -> any Tokenizer {
        try makeTokenizer(model.tokenizer)
    }

    /// Reads a UTF-8 text file, with an error naming it.
    public static func readText(_ path: String) throws(PTQError) -> String {
        guard FileManager.default.fileExists(atPath: path) else { throw PTQError.file(path, "no such file") }
        guard let data = FileManager.default.contents(atPath: path) else { throw PTQError.file(path, "cannot read the file") }
        guard let text = String(data: data, encoding: .utf8) else { throw PTQError.file(path, "not valid UTF-8 text") }
        return text
    }

    /// Greedy decoding with a KV cache of `kvCache` precision (float by default; `KVCachePrecision.f16`
    /// stores half keys and values, as llama.cpp does); stops at EOS, after `maxTokens`, or at the
    /// model's `max_positions`. Throws when the prompt alone does not fit.
    public static func generate<Model: GenerativeModel>(model: Model, tokenizer: any Tokenizer, prompt: String,
                                                        maxTokens: Int, kvCache: KVCachePrecision = .f32,
                                                        onToken: ((String) -> Void)? = nil)
        throws(PTQError) -> [Int]
    {
        var ids = tokenizer.encode(prompt)
        if ids.isEmpty, let bos = model.tokenizer.bosTokenID { ids = [bos] }
        guard !ids.isEmpty else { throw PTQError("the prompt encodes to no tokens and the tokenizer has no BOS token") }
        guard ids.count < model.config.maxPositions else {
            throw PTQError("the prompt is \(ids.count) tokens; the model's max_positions is \(model.config.maxPositions), "
                           + "so at most \(model.config.maxPositions - 1) prompt tokens leave room to generate")
        }
        guard maxTokens > 0 else { throw PTQError("maxTokens must be positive (got \(maxTokens))") }
        if let bad = ids.first(where: { $0 < 0 || $0 >= model.config.vocabSize }) {
            throw PTQError("token id \(bad) is outside the model's vocabulary (0..<\(model.config.vocabSize))")
        }
        let capacity = min(model.config.maxPositions, ids.count + min(maxTokens, model.config.maxPositions))
        let cache = model.makeCache(capacity: capacity, precision: kvCache)
        var generated: [Int] = []
        var logits = model.forward(ids, cache: cache, logitRows: (ids.count - 1)..<ids.count, hooks: ForwardHooks())
        var emittedText = ""
        while generated.count < maxTokens && cache.count < capacity {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            if best == model.tokenizer.eosTokenID { break }
            generated.append(best)
            // Decode the whole continuation so multi-byte characters split over tokens print whole.
            let text = tokenizer.decode(generated)
            if text.count > emittedText.count, !text.hasSuffix("\u{FFFD}") {
                onToken?(String(text.dropFirst(emittedText.count)))
                emittedText = text
            }
            if cache.count >= capacity { break }
            logits.withUnsafeMutableBufferPointer { model.decode(best, cache: cache, into: $0) }
        }
        return generated
    }
}
