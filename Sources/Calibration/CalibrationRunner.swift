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
    /// (tokenized whole), ready for the language model: the first token becomes BOS when its
    /// tokenizer adds one. Calibration and the attention-probability search read the same ones.
    static func modelWindows(for model: LlamaModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                             count: Int) throws(PTQError) -> [[Int]] {
        let text: String
        do { text = try String(contentsOfFile: settings.dataPath, encoding: .utf8) } catch {
            throw PTQError.file(settings.dataPath, "cannot read calibration data")
        }
        let tokens = tokenizer.encode(text, addSpecialTokens: false)
        var windows = try windows(of: tokens, count: count, length: settings.sequenceLength, seed: settings.seed)
        if model.tokenizer.addBOS, let bos = model.tokenizer.bosTokenID {
            for i in windows.indices { windows[i][0] = bos }
        }
        return windows
    }
}

/// Runs the float model over calibration samples with a `StatisticsCollector` attached.
public enum Calibrator {
    public static func run(model: LlamaModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                           request: StatisticsRequest, quiet: Bool = false) throws(PTQError) -> CalibrationStatistics {
        let windows = try CalibrationSamples.modelWindows(for: model, tokenizer: tokenizer, settings: settings,
                                                          count: settings.samples)
        let collector = StatisticsCollector(request: request, seed: settings.seed)
        let hooks = ForwardHooks(observer: collector)
        let progress = ProgressReporter("calibrate", total: windows.count, quiet: quiet)
        for ids in windows {
            _ = model.hiddenStates(ids, hooks: hooks)
            progress.advance()
        }
        return CalibrationStatistics(modelIdentity: model.identity, settings: settings,
                                     tokens: windows.count * settings.sequenceLength, points: collector.points)
    }

    public static func run(model: BertModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                           request: StatisticsRequest, quiet: Bool = false) throws(PTQError) -> CalibrationStatistics {
        // `samples` counts rows (sentence pairs) from the start of the calibration half, as the
        // recipe schema documents; each row contributes both of its sentences.
        let all = try CalibrationSamples.sentences(stsPath: settings.dataPath, evaluationHalf: false)
        guard settings.samples <= all.count / 2 else {
            throw PTQError.file(settings.dataPath, "calibration.samples is \(settings.samples) but the calibration half has only \(all.count / 2) rows")
        }
        let sentences = Array(all.prefix(2 * settings.samples))
        let collector = StatisticsCollector(request: request, seed: settings.seed)
        let hooks = ForwardHooks(observer: collector)
        let progress = ProgressReporter("calibrate", total: sentences.count, quiet: quiet)
        var tokens = 0
        for sentence in sentences {
            let ids = tokenizer.encode(sentence)
            tokens += ids.count
            _ = model.hiddenStates(ids, hooks: hooks)
            progress.advance()
        }
        return CalibrationStatistics(modelIdentity: model.identity, settings: settings,
                                     tokens: tokens, points: collector.points)
    }
}
