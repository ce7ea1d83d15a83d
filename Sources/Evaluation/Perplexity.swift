import Foundation
import Models
import PTQCore

/// Perplexity figures, in llama-perplexity's terms.
public struct PerplexityResult: Codable, Sendable, Equatable {
    public var perplexity: Double
    /// Standard error of the perplexity (llama.cpp's `±`).
    public var stderr: Double
    /// Mean negative log-likelihood per scored token (nats).
    public var meanNLL: Double
    public var chunks: Int
    /// Tokens scored (second half of every chunk).
    public var tokens: Int
    public var context: Int
    /// KV cache element type the logits were computed with (nil in results of earlier versions).
    public var kvCache: KVCachePrecision?

    enum CodingKeys: String, CodingKey {
        case perplexity, stderr, chunks, tokens, context
        case kvCache = "kv_cache"
        case meanNLL = "mean_nll"
    }
}

/// llama.cpp-compatible perplexity (`llama-perplexity` protocol).
///
/// The text is tokenized at once and cut into non-overlapping chunks of `context` tokens; a
/// chunk starts with BOS only when the tokenizer adds BOS; only the second half of each chunk
/// is scored, so every scored token has at least `context/2` tokens of history.
public enum Perplexity {
    /// Perplexity of `model` over `tokens`. With `kvCache` ``KVCachePrecision/f16`` every chunk
    /// runs through a half-precision KV cache (keys and values rounded when stored, as llama.cpp's
    /// default cache does), which needs a ``GenerativeModel``; `f32` (the default) is the exact
    /// cache-less forward pass.
    public static func evaluate(model: some LanguageModel, tokens: [Int], context: Int = 512, maxChunks: Int? = nil,
                                kvCache: KVCachePrecision = .f32, quiet: Bool = false,
                                perChunk: ((_ chunk: Int, _ logits: [Float], _ first: Int) -> Void)? = nil)
        throws(PTQError) -> PerplexityResult
    {
        guard context >= 4 else { throw PTQError("--ctx must be at least 4 (got \(context))") }
        guard context <= model.config.maxPositions else {
            throw PTQError("--ctx \(context) is longer than the model's max_positions \(model.config.maxPositions)")
        }
        if let maxChunks, maxChunks <= 0 { throw PTQError("--chunks must be positive (got \(maxChunks))") }
        if let bad = tokens.first(where: { $0 < 0 || $0 >= model.config.vocabSize }) {
            throw PTQError("token id \(bad) is outside the model's vocabulary (0..<\(model.config.vocabSize))")
        }
        var chunkCount = tokens.count / context
        if let maxChunks { chunkCount = min(chunkCount, maxChunks) }
        guard chunkCount > 0 else {
            throw PTQError("need at least \(context) tokens for one chunk of --ctx \(context); the text has \(tokens.count)")
        }
        // Logits of the scored rows of one chunk, through a cache of the requested precision.
        let logitsOf: ([Int], Range<Int>) -> [Float]
        switch kvCache {
        case .f32:
            logitsOf = { ids, rows in model.logits(for: ids, rows: rows, hooks: ForwardHooks()) }
        case .f16:
            guard let generative = model as? any GenerativeModel else {
                throw PTQError("a half-precision KV cache needs a generative (decoder) model; this \(model.kindDescription) "
                               + "has no KV cache (use --kv-cache f32)")
            }
            logitsOf = { ids, rows in cachedLogits(generative, ids, rows: rows, precision: kvCache) }
        }
        let vocab = model.config.vocabSize
        let first = context / 2
        var nll = 0.0, nll2 = 0.0, count = 0
        let progress = ProgressReporter("perplexity", total: chunkCount, quiet: quiet)
        for chunk in 0..<chunkCount {
            var ids = Array(tokens[chunk * context ..< (chunk + 1) * context])
            if model.tokenizer.addBOS, let bos = model.tokenizer.bosTokenID { ids[0] = bos }
            // Logits only for the scored rows: position j predicts token j+1.
            let logits = logitsOf(ids, first ..< context - 1)
            logits.withUnsafeBufferPointer { lp in
                for (row, j) in (first ..< context - 1).enumerated() {
                    let value = logSoftmax(lp.baseAddress! + row * vocab, count: vocab, target: ids[j + 1])
                    nll -= value
                    nll2 += value * value
                    count += 1
                }
            }
            perChunk?(chunk, logits, first)
            progress.advance(detail: String(format: "ppl %.4f", Foundation.exp(nll / Double(count))))
        }
        let mean = nll / Double(count)
        let ppl = Foundation.exp(mean)
        let variance = nll2 / Double(count) - mean * mean
        let stderr = variance > 0 && count > 1 ? (variance / Double(count - 1)).squareRoot() * ppl : 0
        guard ppl.isFinite, mean.isFinite else {
            throw PTQError("perplexity is not finite (mean NLL \(mean)): the model produces NaN or infinite logits; "
                           + "check its weights (e.g. `ptq inspect`) or the quantization recipe")
        }
        return PerplexityResult(perplexity: ppl, stderr: stderr, meanNLL: mean, chunks: chunkCount,
                                tokens: count, context: context, kvCache: kvCache)
    }

    /// Logits of `rows` of `tokens` run from position 0 through a fresh cache of `precision`.
    static func cachedLogits<Model: GenerativeModel>(_ model: Model, _ tokens: [Int], rows: Range<Int>,
                                                     precision: KVCachePrecision) -> [Float] {
        let cache = model.makeCache(capacity: tokens.count, precision: precision)
        return model.forward(tokens, cache: cache, logitRows: rows, hooks: ForwardHooks())
    }

    /// log p(target) from raw logits, as llama.cpp computes it (float max, double sum of expf).
    static func logSoftmax(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        var maxLogit = logits[0]
        for i in 1..<count { maxLogit = max(maxLogit, logits[i]) }
        var sum = 0.0
        for i in 0..<count { sum += Double(expf(logits[i] - maxLogit)) }
        return Double(logits[target] - maxLogit) - Foundation.log(sum)
    }
}
