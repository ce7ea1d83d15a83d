import ArgumentParser
import Foundation
import PTQKit

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure prefill and decode speed of a model, with the float reference measured in the same run.")

    @Argument(help: "Model file (.ptq or .h5).")
    var model: String

    @Option(name: .long, help: "Float reference checkpoint (.h5) measured in the same run, for ratios.")
    var reference: String?

    @Option(name: .long, help: "Prompt tokens for prefill (at least 1; prompt + decode tokens must fit the model's max_positions).")
    var promptTokens = 128

    @Option(name: .long, help: "Tokens to decode one by one (0 or more).")
    var decodeTokens = 64

    @Option(name: .long, help: "Repetitions, the best is reported (1…1000).")
    var repeats = 3

    func validate() throws {
        guard OptionLimits.tokens.contains(promptTokens) else {
            throw ValidationError("--prompt-tokens must be between 1 and \(OptionLimits.tokens.upperBound) (got \(promptTokens))")
        }
        guard decodeTokens >= 0, decodeTokens <= OptionLimits.tokens.upperBound else {
            throw ValidationError("--decode-tokens must be between 0 and \(OptionLimits.tokens.upperBound) (got \(decodeTokens))")
        }
        guard OptionLimits.repeats.contains(repeats) else {
            throw ValidationError("--repeats must be between 1 and \(OptionLimits.repeats.upperBound) (got \(repeats))")
        }
    }

    @OptionGroup var options: OutputOptions

    struct Speed: Encodable {
        let model: String
        let prefill_tokens_per_second: Double
        let decode_tokens_per_second: Double
    }

    func measure(_ path: String) throws -> Speed {
        guard case .language(let llm) = try PTQ.loadAnyModel(path: path) else {
            throw PTQError.file(path, "bench measures language models")
        }
        guard promptTokens + decodeTokens <= llm.config.maxPositions else {
            throw usageError("--prompt-tokens \(promptTokens) + --decode-tokens \(decodeTokens) exceed the max_positions "
                             + "\(llm.config.maxPositions) of \(path)")
        }
        var rng = SplitMix(seed: 1)
        let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(llm.config.vocabSize)) }
        var bestPrefill = Double.infinity, bestDecode = Double.infinity
        for _ in 0..<repeats {
            let cache = LlamaModel.KVCache(config: llm.config, capacity: promptTokens + decodeTokens)
            var t0 = Date()
            var logits = llm.forward(prompt, cache: cache, logitRows: (promptTokens - 1)..<promptTokens)
            bestPrefill = min(bestPrefill, Date().timeIntervalSince(t0))
            t0 = Date()
            for _ in 0..<decodeTokens {
                var best = 0
                for i in 1..<logits.count where logits[i] > logits[best] { best = i }
                logits = llm.forward([best], cache: cache)
            }
            bestDecode = min(bestDecode, Date().timeIntervalSince(t0))
        }
        return Speed(model: path, prefill_tokens_per_second: Double(promptTokens) / bestPrefill,
                     decode_tokens_per_second: Double(decodeTokens) / bestDecode)
    }

    func run() throws {
        let speed = try measure(model)
        let base = try reference.map { try measure($0) }
        if options.json {
            struct Output: Encodable {
                let model: Speed, reference: Speed?, prefill_ratio: Double?, decode_ratio: Double?
                let prompt_tokens: Int, decode_tokens: Int
            }
            try printJSON(Output(model: speed, reference: base,
                                 prefill_ratio: base.map { speed.prefill_tokens_per_second / $0.prefill_tokens_per_second },
                                 decode_ratio: base.map { speed.decode_tokens_per_second / $0.decode_tokens_per_second },
                                 prompt_tokens: promptTokens, decode_tokens: decodeTokens))
            return
        }
        func line(_ s: Speed) -> String {
            String(format: "prefill %.1f tok/s, decode %.1f tok/s", s.prefill_tokens_per_second, s.decode_tokens_per_second)
        }
        print("\(model): \(line(speed))")
        if let base {
            print("\(base.model): \(line(base))")
            print(String(format: "ratio: prefill %.2fx, decode %.2fx",
                         speed.prefill_tokens_per_second / base.prefill_tokens_per_second,
                         speed.decode_tokens_per_second / base.decode_tokens_per_second))
        }
    }
}
