import Foundation
import Testing
@testable import PTQKit

/// Imports each real model once per test run (a few seconds) into a temporary checkpoint.
enum RealModels {
    static let smolLM2: Result<String, PTQError> = Result { () throws(PTQError) -> String in
        let path = SyntheticModels.temporaryPath("smollm2.h5")
        try PTQ.importModel(from: ProjectPaths.smolGGUF, to: path)
        return path
    }
    static let miniLM: Result<String, PTQError> = Result { () throws(PTQError) -> String in
        let path = SyntheticModels.temporaryPath("minilm.h5")
        try PTQ.importModel(from: ProjectPaths.miniLMDirectory, to: path)
        return path
    }
}

/// Acceptance figures on the real models (docs/RESULTS.md has the full runs and commands).
@Suite("Real models", .enabled(if: ProjectPaths.modelsAvailable, "models not fetched: run scripts/fetch-models"))
struct RealModelTests {
    /// SmolLM2-135M-Instruct, F32 dequantized from the Q4_1 GGUF, WikiText-2 test, ctx 512,
    /// first 20 chunks: llama-perplexity gives 27.8419 on the same weights; we must be within 0.1 %.
    @Test func smolLM2PerplexityMatchesLlamaCpp() throws {
        let model = try PTQ.loadModel(path: try RealModels.smolLM2.get()).languageModel(for: "perplexity")
        #expect(model.config.layerCount == 30 && model.config.headCount == 9 && model.config.kvHeadCount == 3)
        #expect(model.config.tiedEmbeddings)
        let tokenizer = try makeTokenizer(model.tokenizer)
        let tokens = tokenizer.encode(try PTQ.readText(ProjectPaths.wikiTest))
        #expect(tokens.count == 304_830)
        let result = try Perplexity.evaluate(model: model, tokens: tokens, context: 512, maxChunks: 20, quiet: true)
        #expect(result.chunks == 20 && result.tokens == 20 * 255)
        let reference = 27.8419
        #expect(abs(result.perplexity / reference - 1) < 0.001, "perplexity \(result.perplexity) vs llama.cpp \(reference)")
    }

    /// Greedy generation says something sensible.
    @Test func smolLM2Generates() throws {
        let model = try PTQ.loadModel(path: try RealModels.smolLM2.get()).generativeModel(for: "generate")
        let tokenizer = try makeTokenizer(model.tokenizer)
        let ids = try PTQ.generate(model: model, tokenizer: tokenizer, prompt: "The capital of France is", maxTokens: 5)
        #expect(tokenizer.decode(ids).contains("Paris"), "got: \(tokenizer.decode(ids))")
    }

    /// Sentence embeddings of all-MiniLM-L6-v2 equal an independent numpy fp32 implementation
    /// (tokenizer.json via HF `tokenizers`, weights via safetensors; first 8 values and the sum
    /// of all 384 of the L2-normalised embedding). The values are the output of
    /// `python3 scripts/reference/minilm_numpy.py` (its header says how to run it and which
    /// package versions printed them: numpy 2.4.6, scipy 1.17.1, safetensors 0.8.0,
    /// tokenizers 0.23.3); another BLAS summation order moves them by ~1e-7, well inside 2e-6.
    static let numpyEmbeddings: [(String, [Int], [Double], Double)] = [
        ("A man with a hard hat is dancing.", [101, 1037, 2158, 2007, 1037, 2524, 6045, 2003, 5613, 1012, 102], [0.02971860, -0.06003958, -0.00981454, -0.02668881, -0.02426095, 0.01210191, 0.09069107, -0.05384167], 0.077760058),
        ("A man wearing a hard hat is dancing.", [101, 1037, 2158, 4147, 1037, 2524, 6045, 2003, 5613, 1012, 102], [0.02655675, -0.05465152, -0.00642743, -0.03321835, -0.02411876, 0.01569549, 0.09636824, -0.05793912], 0.079316263),
        ("A young child is riding a horse.", [101, 1037, 2402, 2775, 2003, 5559, 1037, 3586, 1012, 102], [-0.02565011, 0.00797088, 0.03227036, 0.03084031, 0.00002925, -0.01672059, 0.06077106, 0.06499977], 0.000029615),
    ]

    @Test func miniLMEmbeddingsMatchNumpyReference() throws {
        let loaded = try PTQ.loadModel(path: try RealModels.miniLM.get())
        let model = try loaded.sentenceEncoder(for: "embeddings")
        let tokenizer = try PTQ.tokenizer(for: loaded)
        for (text, ids, first8, sum) in Self.numpyEmbeddings {
            #expect(tokenizer.encode(text) == ids)
            let embedding = model.embed(tokens: ids, hooks: ForwardHooks())
            for i in 0..<8 { #expect(abs(Double(embedding[i]) - first8[i]) < 2e-6, "\(text)[\(i)]") }
            #expect(abs(embedding.map(Double.init).reduce(0, +) - sum) < 1e-4)
        }
    }

    /// all-MiniLM-L6-v2 on all 1,500 STS-B dev pairs. The independent numpy implementation above
    /// (`scripts/reference/minilm_numpy.py`) gives 86.7163 (scipy `spearmanr`, average ranks for ties). The issue quotes 86.60 from
    /// another implementation; 86.60 is reproduced only with non-average tie ranking of the
    /// 78 distinct gold scores (max ranks give 86.55, random tie-breaks 86.64 ± 0.04), so it
    /// differs in the metric, not the model (docs/RESULTS.md).
    @Test func miniLMSTSBMatchesReference() throws {
        let loaded = try PTQ.loadModel(path: try RealModels.miniLM.get())
        let model = try loaded.sentenceEncoder(for: "stsb")
        #expect(model.config.hiddenSize == 384 && model.config.layerCount == 6)
        let pairs = try STSB.load(path: ProjectPaths.stsDev)
        let result = try STSB.evaluate(model: model, tokenizer: try PTQ.tokenizer(for: loaded), pairs: pairs, quiet: true)
        #expect(result.pairs == 1500)
        #expect(abs(result.spearman - 86.7163) < 0.05, "Spearman \(result.spearman) vs numpy reference 86.7163")
    }
}
