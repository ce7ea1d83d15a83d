import ArgumentParser
import Foundation
import PTQKit

struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Measure model quality: perplexity (llama.cpp protocol) or STS-B Spearman.")

    enum Task: String, ExpressibleByArgument, CaseIterable {
        case perplexity, stsb
    }

    @Argument(help: "Model file: .h5 checkpoint or .ptq packed model.")
    var model: String

    @Option(name: .long, help: "perplexity (language models) or stsb (sentence encoders).")
    var task: Task

    @Option(name: .long, help: "Text file (perplexity) or STS-B tsv file (stsb).")
    var data: String

    @Option(name: .long, help: "Perplexity context length in tokens (4 up to the model's max_positions).")
    var ctx = 512

    @Option(name: .long, help: "Evaluate at most this many chunks, at least 1 (perplexity).")
    var chunks: Int?

    @Option(name: .long, help: "STS-B pairs: all, calibration (first half) or evaluation (second half).")
    var split: String = "all"

    @Option(name: .long, help: "Perplexity: element type of the KV cache: f32 (exact) or f16 (keys and values rounded to IEEE half when stored, as llama.cpp's default cache; half the cache bytes per decoded token). f16 runs every chunk through a cache; f32 is the exact cache-less pass.")
    var kvCache: KVCachePrecision = .f32

    @Flag(name: .long, help: "Perplexity: run every chunk token by token through the decode path (the one-row GEMVs `ptq generate` uses) instead of the batched forward pass.")
    var decode = false

    @Flag(name: .long, help: "Perplexity: decode every chunk twice, with the default decode kernels and with the float32 decode GEMVs (PTQ_DECODE_BF16=0), and report both perplexities, the mean and largest KL divergence of the next-token distributions and the top-1 agreement.")
    var decodeKl = false

    @OptionGroup var options: OutputOptions

    func validate() throws {
        guard ctx >= 4, ctx <= OptionLimits.tokens.upperBound else {
            throw ValidationError("--ctx must be between 4 and \(OptionLimits.tokens.upperBound) (got \(ctx))")
        }
        if let chunks, chunks <= 0 { throw ValidationError("--chunks must be positive") }
        if task == .stsb, decode || decodeKl {
            throw ValidationError("--decode and --decode-kl apply to --task perplexity only (a sentence encoder does not decode)")
        }
        if decode, decodeKl { throw ValidationError("--decode-kl already decodes; give one of --decode and --decode-kl") }
        guard STSB.Split(rawValue: split) != nil else {
            throw ValidationError("--split must be one of \(STSB.Split.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let loaded = try PTQ.loadAnyModel(path: model)
        let tokenizer = try PTQ.tokenizer(for: loaded)
        switch task {
        case .perplexity:
            let llm = try loaded.languageModel(for: "perplexity (use --task stsb for a sentence encoder)", source: model)
            guard ctx <= llm.config.maxPositions else {
                throw usageError("--ctx \(ctx) is longer than the max_positions \(llm.config.maxPositions) of \(model)")
            }
            let text = try PTQ.readText(data)
            let tokens = tokenizer.encode(text)
            if decodeKl {
                let result = try Perplexity.compareDecodeNumerics(model: llm, tokens: tokens, context: ctx, maxChunks: chunks,
                                                                  kvCache: kvCache, quiet: options.silent)
                if options.json {
                    try printJSON(result)
                } else {
                    print(String(format: "decode perplexity %.4f (float32 decode GEMVs %.4f); KL %.3g mean, %.3g max; "
                                 + "top-1 agreement %.2f %% over %d tokens of %d chunks (",
                                 result.perplexity, result.referencePerplexity, result.meanKL, result.maxKL,
                                 100 * result.top1Agreement, result.tokens, result.chunks)
                          + "\(kvCache.rawValue) KV cache)")
                }
                return
            }
            let result = try Perplexity.evaluate(model: llm, tokens: tokens, context: ctx, maxChunks: chunks,
                                                 kvCache: kvCache, decoded: decode, quiet: options.silent)
            if options.json {
                try printJSON(result)
            } else {
                print(String(format: "perplexity %.4f ± %.5f over %d chunks of %d tokens (%d tokens scored, ",
                             result.perplexity, result.stderr, result.chunks, result.context, result.tokens)
                      + "\(kvCache.rawValue) KV cache\(decode ? ", token-by-token decode" : ""))")
            }
        case .stsb:
            guard kvCache == .f32 else {
                throw usageError("--kv-cache \(kvCache.rawValue) applies to --task perplexity only (a sentence encoder has no KV cache)")
            }
            let encoder = try loaded.sentenceEncoder(for: "stsb (use --task perplexity for a language model)", source: model)
            let pairs = try STSB.load(path: data, split: STSB.Split(rawValue: split) ?? .all)
            let result = try STSB.evaluate(model: encoder, tokenizer: tokenizer, pairs: pairs, quiet: options.silent)
            if options.json {
                try printJSON(result)
            } else {
                print(String(format: "STS-B Spearman %.2f over %d pairs", result.spearman, result.pairs))
            }
        }
    }
}
