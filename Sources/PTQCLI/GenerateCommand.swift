import ArgumentParser
import Foundation
import PTQKit

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Greedy text generation with a language model.")

    @Argument(help: "Model file: .h5 checkpoint or .ptq packed model.")
    var model: String

    @Option(name: .long, help: "Prompt text.")
    var prompt: String

    @Option(name: .long, help: "Maximum number of new tokens (1…1048576; generation also stops at the model's max_positions).")
    var maxTokens = 64

    @Option(name: .long, help: "Element type of the KV cache: f32 (exact) or f16 (keys and values rounded to IEEE half when stored, as llama.cpp's default cache; half the cache bytes per decoded token).")
    var kvCache: KVCachePrecision = .f32

    @OptionGroup var options: OutputOptions

    func validate() throws {
        guard OptionLimits.tokens.contains(maxTokens) else {
            throw ValidationError("--max-tokens must be between 1 and \(OptionLimits.tokens.upperBound) (got \(maxTokens))")
        }
    }

    func run() throws {
        let llm = try PTQ.loadAnyModel(path: model).generativeModel(for: "generate", source: model)
        let tokenizer = try makeTokenizer(llm.tokenizer)
        let promptLength = tokenizer.encode(prompt).count
        guard promptLength < llm.config.maxPositions else {
            throw usageError("--prompt is \(promptLength) tokens; \(model) has max_positions \(llm.config.maxPositions), "
                             + "so the prompt may have at most \(llm.config.maxPositions - 1)")
        }
        let start = Date()
        let ids = try PTQ.generate(model: llm, tokenizer: tokenizer, prompt: prompt, maxTokens: maxTokens,
                                      kvCache: kvCache) { piece in
            if !options.json { FileHandle.standardOutput.write(Data(piece.utf8)) }
        }
        let seconds = Date().timeIntervalSince(start)
        if options.json {
            struct Output: Encodable { let text: String, tokens: Int, seconds: Double }
            try printJSON(Output(text: tokenizer.decode(ids), tokens: ids.count, seconds: seconds))
        } else {
            print("")
            ProgressReporter.log(String(format: "%d tokens in %.2f s", ids.count, seconds), quiet: options.silent)
        }
    }
}
