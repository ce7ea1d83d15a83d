import Foundation
import Kernels
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
    /// Whether the logits came from token-by-token decoding (`decode`) instead of the batched
    /// forward pass (nil in results of earlier versions: the forward pass).
    public var decoded: Bool?

    enum CodingKeys: String, CodingKey {
        case perplexity, stderr, chunks, tokens, context, decoded
        case kvCache = "kv_cache"
        case meanNLL = "mean_nll"
    }
}

/// How far a model's default decode numerics move its logits from the float32 decode GEMVs
/// (`Perplexity.compareDecodeNumerics`): the same chunks decoded token by token twice.
public struct DecodeNumericsComparison: Codable, Sendable, Equatable {
    /// Perplexity through the default decode kernels (bf16 decode GEMVs where a format has them).
    public var perplexity: Double
    /// Perplexity through the float32 decode GEMVs (`LowBit.bf16Decode` off).
    public var referencePerplexity: Double
    /// Mean NLL per scored token, default and reference (nats).
    public var meanNLL: Double
    public var referenceMeanNLL: Double
    /// Mean over scored tokens of KL(reference ‖ default) of the next-token distributions (nats).
    public var meanKL: Double
    /// Largest per-token KL(reference ‖ default).
    public var maxKL: Double
    /// Fraction of scored tokens whose arg-max token is the same in both runs.
    public var top1Agreement: Double
    public var chunks: Int
    public var tokens: Int
    public var context: Int
    public var kvCache: KVCachePrecision

    enum CodingKeys: String, CodingKey {
        case perplexity, chunks, tokens, context
        case referencePerplexity = "reference_perplexity"
        case meanNLL = "mean_nll"
        case referenceMeanNLL = "reference_mean_nll"
        case meanKL = "mean_kl"
        case maxKL = "max_kl"
        case top1Agreement = "top1_agreement"
        case kvCache = "kv_cache"
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
    /// cache-less forward pass. With `decoded`, every chunk runs token by token through
    /// ``GenerativeModel/decode(_:cache:into:)`` (the path `ptq generate` and `ptq bench`'s decode
    /// take: one-row GEMVs, which may use other kernels and numerics than the batched forward).
    public static func evaluate(model: some LanguageModel, tokens: [Int], context: Int = 512, maxChunks: Int? = nil,
                                kvCache: KVCachePrecision = .f32, decoded: Bool = false, quiet: Bool = false,
                                perChunk: ((_ chunk: Int, _ logits: [Float], _ first: Int) -> Void)? = nil)
        throws(PTQError) -> PerplexityResult
    {
        let chunkCount = try checkedChunkCount(model: model, tokens: tokens, context: context, maxChunks: maxChunks)
        // Logits of the scored rows of one chunk, through a cache of the requested precision.
        let logitsOf: ([Int], Range<Int>) -> [Float]
        switch (kvCache, decoded) {
        case (.f32, false):
            logitsOf = { ids, rows in model.logits(for: ids, rows: rows, hooks: ForwardHooks()) }
        case (.f16, false):
            let generative = try generativeModel(model, for: "a half-precision KV cache", fix: "use --kv-cache f32")
            logitsOf = { ids, rows in cachedLogits(generative, ids, rows: rows, precision: kvCache) }
        case (_, true):
            let generative = try generativeModel(model, for: "perplexity through decode", fix: "drop --decode")
            logitsOf = { ids, rows in decodedLogits(generative, ids, rows: rows, precision: kvCache) }
        }
        let vocab = model.config.vocabSize
        let first = context / 2
        var nll = 0.0, nll2 = 0.0, count = 0
        let progress = ProgressReporter("perplexity", total: chunkCount, quiet: quiet)
        for chunk in 0..<chunkCount {
            let ids = chunkTokens(model: model, tokens: tokens, chunk: chunk, context: context)
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
                                tokens: count, context: context, kvCache: kvCache, decoded: decoded)
    }

    /// Decodes the same chunks as ``evaluate(model:tokens:context:maxChunks:kvCache:decoded:quiet:perChunk:)``
    /// twice, token by token: with the default decode kernels and with the float32 decode GEMVs
    /// (`LowBit.bf16Decode` off; restored afterwards), and compares the scored rows' next-token
    /// distributions. Measures what the bf16 decode GEMVs cost in quality; a model or process
    /// without them gives KL 0. Process-wide switch: nothing else may run a model meanwhile.
    public static func compareDecodeNumerics(model: some LanguageModel, tokens: [Int], context: Int = 512,
                                             maxChunks: Int? = nil, kvCache: KVCachePrecision = .f32,
                                             quiet: Bool = false) throws(PTQError) -> DecodeNumericsComparison
    {
        let chunkCount = try checkedChunkCount(model: model, tokens: tokens, context: context, maxChunks: maxChunks)
        let generative = try generativeModel(model, for: "comparing decode numerics", fix: "use a decoder model")
        let vocab = model.config.vocabSize
        let first = context / 2
        let rows = first ..< context - 1
        let wasOn = LowBit.bf16Decode
        defer { LowBit.bf16Decode = wasOn }
        var nll = 0.0, referenceNLL = 0.0, kl = 0.0, maxKL = 0.0, agree = 0, count = 0
        var logProbs = [Double](repeating: 0, count: vocab), referenceLogProbs = logProbs
        let progress = ProgressReporter("decode numerics", total: chunkCount, quiet: quiet)
        for chunk in 0..<chunkCount {
            let ids = chunkTokens(model: model, tokens: tokens, chunk: chunk, context: context)
            LowBit.bf16Decode = wasOn
            let logits = decodedLogits(generative, ids, rows: rows, precision: kvCache)
            LowBit.bf16Decode = false
            let reference = decodedLogits(generative, ids, rows: rows, precision: kvCache)
            for (row, j) in rows.enumerated() {
                logits.withUnsafeBufferPointer { logSoftmax($0.baseAddress! + row * vocab, count: vocab, into: &logProbs) }
                reference.withUnsafeBufferPointer {
                    logSoftmax($0.baseAddress! + row * vocab, count: vocab, into: &referenceLogProbs)
                }
                var rowKL = 0.0, best = 0, referenceBest = 0
                for v in 0..<vocab {
                    let lr = referenceLogProbs[v]
                    rowKL += Foundation.exp(lr) * (lr - logProbs[v])
                    if logProbs[v] > logProbs[best] { best = v }
                    if lr > referenceLogProbs[referenceBest] { referenceBest = v }
                }
                kl += rowKL
                maxKL = max(maxKL, rowKL)
                if best == referenceBest { agree += 1 }
                nll -= logProbs[ids[j + 1]]
                referenceNLL -= referenceLogProbs[ids[j + 1]]
                count += 1
            }
            progress.advance(detail: String(format: "mean KL %.3g", kl / Double(count)))
        }
        let n = Double(count)
        guard (nll / n).isFinite, (referenceNLL / n).isFinite else {
            throw PTQError("decode produced NaN or infinite logits: check the model's weights (e.g. `ptq inspect`)")
        }
        return DecodeNumericsComparison(perplexity: Foundation.exp(nll / n), referencePerplexity: Foundation.exp(referenceNLL / n),
                                        meanNLL: nll / n, referenceMeanNLL: referenceNLL / n, meanKL: kl / n, maxKL: maxKL,
                                        top1Agreement: Double(agree) / n, chunks: chunkCount, tokens: count,
                                        context: context, kvCache: kvCache)
    }

    /// The number of chunks `tokens` gives at `context` (at most `maxChunks`), or the error that
    /// says why there is none.
    static func checkedChunkCount(model: some LanguageModel, tokens: [Int], context: Int, maxChunks: Int?)
        throws(PTQError) -> Int
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
        return chunkCount
    }

    /// Chunk `chunk` of `tokens`, starting with BOS when the tokenizer adds one.
    static func chunkTokens(model: some LanguageModel, tokens: [Int], chunk: Int, context: Int) -> [Int] {
        var ids = Array(tokens[chunk * context ..< (chunk + 1) * context])
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosTokenID { ids[0] = bos }
        return ids
    }

    static func generativeModel(_ model: some LanguageModel, for purpose: String, fix: String)
        throws(PTQError) -> any GenerativeModel
    {
        guard let generative = model as? any GenerativeModel else {
            throw PTQError("\(purpose) needs a generative (decoder) model; this \(model.kindDescription) has no KV cache (\(fix))")
        }
        return generative
    }

    /// Logits of `rows` of `tokens` decoded one token at a time from position 0 through a fresh
    /// cache of `precision` (position j's logits predict token j + 1).
    static func decodedLogits<Model: GenerativeModel>(_ model: Model, _ tokens: [Int], rows: Range<Int>,
                                                      precision: KVCachePrecision) -> [Float] {
        let vocab = model.config.vocabSize
        let cache = model.makeCache(capacity: tokens.count, precision: precision)
        var out = [Float](repeating: 0, count: rows.count * vocab)
        var step = [Float](repeating: 0, count: vocab)
        out.withUnsafeMutableBufferPointer { outBuffer in
            step.withUnsafeMutableBufferPointer { stepBuffer in
                for j in 0 ..< rows.upperBound {
                    model.decode(tokens[j], cache: cache, into: stepBuffer)
                    guard j >= rows.lowerBound else { continue }
                    let row = UnsafeMutableBufferPointer(rebasing: outBuffer[(j - rows.lowerBound) * vocab ..< (j - rows.lowerBound + 1) * vocab])
                    _ = row.update(fromContentsOf: stepBuffer)
                }
            }
        }
        return out
    }

    /// Logits of `rows` of `tokens` run from position 0 through a fresh cache of `precision`.
    static func cachedLogits<Model: GenerativeModel>(_ model: Model, _ tokens: [Int], rows: Range<Int>,
                                                     precision: KVCachePrecision) -> [Float] {
        let cache = model.makeCache(capacity: tokens.count, precision: precision)
        return model.forward(tokens, cache: cache, logitRows: rows, hooks: ForwardHooks())
    }

    /// Every log p(v) of raw logits, with `logSoftmax(_:count:target:)`'s max and sum.
    static func logSoftmax(_ logits: UnsafePointer<Float>, count: Int, into out: inout [Double]) {
        let (maxLogit, logSum) = normalizer(logits, count: count)
        for i in 0..<count { out[i] = Double(logits[i] - maxLogit) - logSum }
    }

    /// log p(target) from raw logits, as llama.cpp computes it (float max, double sum of expf).
    static func logSoftmax(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        let (maxLogit, logSum) = normalizer(logits, count: count)
        return Double(logits[target] - maxLogit) - logSum
    }

    /// The largest logit and log Σ exp(logit − max) (float max, double sum of expf).
    private static func normalizer(_ logits: UnsafePointer<Float>, count: Int) -> (max: Float, logSum: Double) {
        var maxLogit = logits[0]
        for i in 1..<count { maxLogit = max(maxLogit, logits[i]) }
        var sum = 0.0
        for i in 0..<count { sum += Double(expf(logits[i] - maxLogit)) }
        return (maxLogit, Foundation.log(sum))
    }
}
