import Foundation
import Models
import PTQCore
import Tokenizers

/// Where calibration samples come from and how many.
public struct CalibrationSettings: Sendable, Equatable {
    /// Text file (language models) or STS-B tsv (encoders).
    public var dataPath: String
    public var samples: Int
    /// Tokens per sample (language models).
    public var sequenceLength: Int
    public var seed: UInt64

    public init(dataPath: String, samples: Int, sequenceLength: Int, seed: UInt64) {
        self.dataPath = dataPath
        self.samples = samples
        self.sequenceLength = sequenceLength
        self.seed = seed
    }
}

/// Draws calibration and held-out samples reproducibly.
public enum CalibrationSamples {
    /// Fraction of a language-model calibration text that calibration draws from; the rest is
    /// held out for `verify`, so verification never sees calibration tokens.
    public static let calibrationFraction = 0.9

    /// `count` windows of `length` tokens at seeded random offsets in the calibration part
    /// (or, with `heldOut`, the held-out tail) of `tokens`.
    public static func windows(of tokens: [Int], count: Int, length: Int, seed: UInt64,
                               heldOut: Bool = false) throws(PTQError) -> [[Int]] {
        let split = Int(Double(tokens.count) * calibrationFraction)
        let range = heldOut ? split..<tokens.count : 0..<split
        guard range.count >= length else {
            throw PTQError("calibration text too short: \(range.count) tokens available, \(length) per sample needed")
        }
        var rng = SplitMix(seed: seed)
        return (0..<count).map { _ in
            let start = range.lowerBound + Int(rng.next() % UInt64(range.count - length + 1))
            return Array(tokens[start ..< start + length])
        }
    }

    /// Sentences of STS-B pairs (both sides, in order) from the given half of the file.
    public static func sentences(stsPath: String, evaluationHalf: Bool) throws(PTQError) -> [String] {
        guard let text = try? String(contentsOfFile: stsPath, encoding: .utf8) else {
            throw PTQError.file(stsPath, "cannot read the calibration sentences")
        }
        var lines = text.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false) }
        guard lines.allSatisfy({ $0.count >= 7 }) else {
            throw PTQError.file(stsPath, "expected an STS-B tsv file with 7 tab-separated columns")
        }
        let half = lines.count / 2
        lines = evaluationHalf ? Array(lines[half...]) : Array(lines[..<half])
        return lines.flatMap { [String($0[5]), String($0[6])] }
    }
}

extension CalibrationSamples {
    /// `count` seeded windows of `settings.sequenceLength` tokens from the calibration text
    /// (tokenized whole), ready for a language model: the first token becomes BOS when its
    /// tokenizer adds one.
    public static func modelWindows(tokenizerSpec: TokenizerSpec, tokenizer: any Tokenizer, settings: CalibrationSettings,
                             count: Int) throws(PTQError) -> [[Int]] {
        let text: String
        do { text = try String(contentsOfFile: settings.dataPath, encoding: .utf8) } catch {
            throw PTQError.file(settings.dataPath, "cannot read calibration data")
        }
        let tokens = tokenizer.encode(text, addSpecialTokens: false)
        var windows = try windows(of: tokens, count: count, length: settings.sequenceLength, seed: settings.seed)
        if tokenizerSpec.addBOS, let bos = tokenizerSpec.bosTokenID {
            for i in windows.indices { windows[i][0] = bos }
        }
        return windows
    }

    /// The token sequences a model is calibrated on, by what it computes: seeded windows of the
    /// calibration text for a language model; for a sentence encoder, both sentences of the
    /// first `count` rows of the calibration half of an STS-B file (`samples` counts rows, as
    /// the recipe schema documents). Calibration and the attention-probability search read the
    /// same ones; `count` is checked against the file.
    public static func calibrationSequences(for model: some QuantizableModel, tokenizer: any Tokenizer,
                                            settings: CalibrationSettings, count: Int) throws(PTQError) -> [[Int]] {
        try calibrationSequences(task: model.structure.task, tokenizerSpec: model.tokenizer, tokenizer: tokenizer,
                                 settings: settings, count: count)
    }

    /// The calibration sequences of a model that computes `task` with tokenizer `tokenizerSpec`
    /// (what ``calibrationSequences(for:tokenizer:settings:count:)`` reads from a loaded model).
    public static func calibrationSequences(task: ModelTask, tokenizerSpec: TokenizerSpec, tokenizer: any Tokenizer,
                                            settings: CalibrationSettings, count: Int) throws(PTQError) -> [[Int]] {
        switch task {
        case .languageModeling:
            return try modelWindows(tokenizerSpec: tokenizerSpec, tokenizer: tokenizer, settings: settings, count: count)
        case .sentenceEmbedding:
            let all = try sentences(stsPath: settings.dataPath, evaluationHalf: false)
            guard count <= all.count / 2 else {
                throw PTQError.file(settings.dataPath, "calibration.samples is \(count) but the calibration half has only \(all.count / 2) rows")
            }
            return all.prefix(2 * count).map { tokenizer.encode($0) }
        }
    }
}

/// Runs the float model over calibration samples with a `StatisticsCollector` attached.
public enum Calibrator {
    /// Statistics of `request` over the model's calibration sequences
    /// (``CalibrationSamples/calibrationSequences(for:tokenizer:settings:count:)``), for any model
    /// family.
    public static func run(model: some QuantizableModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                           request: StatisticsRequest, quiet: Bool = false) throws(PTQError) -> CalibrationStatistics {
        let sequences = try CalibrationSamples.calibrationSequences(for: model, tokenizer: tokenizer, settings: settings,
                                                                    count: settings.samples)
        let collector = StatisticsCollector(request: request, seed: settings.seed)
        let hooks = ForwardHooks(observer: collector)
        let progress = ProgressReporter("calibrate", total: sequences.count, quiet: quiet)
        var tokens = 0
        for ids in sequences {
            tokens += ids.count
            model.observe(ids, hooks: hooks)
            progress.advance()
        }
        return CalibrationStatistics(modelIdentity: model.identity, settings: settings,
                                     tokens: tokens, points: collector.points)
    }
}

extension Calibrator {
    /// The statistics ``run(model:tokenizer:settings:request:quiet:)`` gathers, with the model
    /// streamed one block at a time (``BlockStreamingModel``): peak memory is one block's
    /// weights plus the hidden states of the calibration batch, not the model. The result is
    /// bit-identical to the whole-model run.
    public static func runBlockwise(_ family: any BlockStreamingModel.Type, weights: some WeightSource,
                                    tokenizer: any Tokenizer, settings: CalibrationSettings, request: StatisticsRequest,
                                    quiet: Bool = false) throws(PTQError) -> CalibrationStatistics {
        let config = weights.config
        let sequences = try CalibrationSamples.calibrationSequences(
            task: config.structure.task, tokenizerSpec: weights.tokenizer, tokenizer: tokenizer, settings: settings,
            count: settings.samples)
        let identity = try config.identity { (name) throws(PTQError) in try weights.tensor(name) }
        let collector = StatisticsCollector(request: request, seed: settings.seed)
        let progress = ProgressReporter("calibrate (block by block)", total: config.layerCount, quiet: quiet)
        try family.observeBlockwise(weights: weights, sequences: sequences, observer: collector) { layer in
            progress.advance(detail: "block \(layer)")
        }
        return CalibrationStatistics(modelIdentity: identity, settings: settings,
                                     tokens: sequences.reduce(0) { $0 + $1.count }, points: collector.points)
    }
}
