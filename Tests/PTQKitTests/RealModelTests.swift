import Foundation
import Testing
@testable import PTQKit

/// Imports each real model once per test run (a few seconds) into a temporary checkpoint.
enum RealModels {
    static let smolLM2: Result<String, PTQError> = Result { () throws(PTQError) -> String in
        let path = SyntheticModels.temporaryPath("smollm2.h5")
        try PTQKit.importModel(from: ProjectPaths.smolGGUF, to: path)
        return path
    }
    static let miniLM: Result<String, PTQError> = Result { () throws(PTQError) -> String in
        let path = SyntheticModels.temporaryPath("minilm.h5")
        try PTQKit.importModel(from: ProjectPaths.miniLMDirectory, to: path)
        return path
    }
}

/// Acceptance figures on the real models (docs/RESULTS.md has the full runs and commands).
@Suite("Real models", .enabled(if: ProjectPaths.modelsAvailable, "models not fetched: run scripts/fetch-models"))
struct RealModelTests {
    /// SmolLM2-135M-Instruct, F32 dequantized from the Q4_1 GGUF, WikiText-2 test, ctx 512,
    /// first 20 chunks: llama-perplexity gives 27.8419 on the same weights; we must be within 0.1 %.
    @Test func smolLM2PerplexityMatchesLlamaCpp() throws {
        guard case .language(let model) = try PTQKit.loadModel(path: try RealModels.smolLM2.get()) else {
            Issue.record("SmolLM2 must load as a language model"); return
        }
        #expect(model.config.layerCount == 30 && model.config.headCount == 9 && model.config.kvHeadCount == 3)
        #expect(model.config.tiedEmbeddings)
        let tokenizer = try makeTokenizer(model.tokenizer)
        let tokens = tokenizer.encode(try PTQKit.readText(ProjectPaths.wikiTest))
        #expect(tokens.count == 304_830)
        let result = try Perplexity.evaluate(model: model, tokens: tokens, context: 512, maxChunks: 20, quiet: true)
        #expect(result.chunks == 20 && result.tokens == 20 * 255)
        let reference = 27.8419
        #expect(abs(result.perplexity / reference - 1) < 0.001, "perplexity \(result.perplexity) vs llama.cpp \(reference)")
    }

    /// Greedy generation says something sensible.
    @Test func smolLM2Generates() throws {
        guard case .language(let model) = try PTQKit.loadModel(path: try RealModels.smolLM2.get()) else { return }
        let tokenizer = try makeTokenizer(model.tokenizer)
        let ids = PTQKit.generate(model: model, tokenizer: tokenizer, prompt: "The capital of France is", maxTokens: 5)
        #expect(tokenizer.decode(ids).contains("Paris"), "got: \(tokenizer.decode(ids))")
    }

    /// all-MiniLM-L6-v2 on all 1,500 STS-B dev pairs: the reference implementation gives 86.60.
    @Test func miniLMSTSBMatchesReference() throws {
        let loaded = try PTQKit.loadModel(path: try RealModels.miniLM.get())
        guard case .encoder(let model) = loaded else { Issue.record("MiniLM must load as an encoder"); return }
        #expect(model.config.hiddenSize == 384 && model.config.layerCount == 6)
        let pairs = try STSB.load(path: ProjectPaths.stsDev)
        let result = STSB.evaluate(model: model, tokenizer: try PTQKit.tokenizer(for: loaded), pairs: pairs, quiet: true)
        #expect(result.pairs == 1500)
        #expect(abs(result.spearman - 86.60) < 0.05, "Spearman \(result.spearman) vs reference 86.60")
    }
}
