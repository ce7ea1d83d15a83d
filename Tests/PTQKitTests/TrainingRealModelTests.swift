import Foundation
import Testing
@testable import PTQKit
@testable import Training

/// PTQ1.61 training on SmolLM2 in simulation (Ŵ served as float layers): masks from max |x| on
/// WikiText-2 validation windows, perplexity of the initial parameters, block-wise optimisation,
/// perplexity again, then optionally LoRA preprocessing and a second pass reusing the masks.
/// Opt-in (tens of minutes on 2 cores): `PTQ_TRAINING_REAL=1`; budget through PTQ_TRAINING_WINDOWS,
/// PTQ_TRAINING_LENGTH, PTQ_TRAINING_EPOCHS, PTQ_TRAINING_LORA_STEPS (0 = skip preprocessing);
/// figures go to stderr and to PTQ_TRAINING_LOG (default /tmp/training/real-model.log).
@Suite("PTQ1.61 training on SmolLM2", .enabled(if: ProcessInfo.processInfo.environment["PTQ_TRAINING_REAL"] == "1"))
struct TrainingRealModelTests {
    static let environment = ProcessInfo.processInfo.environment
    static func setting(_ name: String, _ fallback: Int) -> Int { environment[name].flatMap(Int.init) ?? fallback }

    @Test func smolLM2Blockwise() throws {
        let log = Self.environment["PTQ_TRAINING_LOG"] ?? "/tmp/training/real-model.log"
        try? FileManager.default.createDirectory(atPath: (log as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        guard let handle = FileHandle(forWritingAtPath: log) else { Issue.record("cannot write \(log)"); return }
        func say(_ line: String) {
            handle.write(Data((line + "\n").utf8))
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
        let windowCount = Self.setting("PTQ_TRAINING_WINDOWS", BlockwiseSettings.defaultWindowCount)
        let length = Self.setting("PTQ_TRAINING_LENGTH", BlockwiseSettings.defaultWindowLength)
        let epochs = Self.setting("PTQ_TRAINING_EPOCHS", BlockwiseSettings().epochs)
        let loraSteps = Self.setting("PTQ_TRAINING_LORA_STEPS", 0)
        let outlierThreshold = Double(Self.setting("PTQ_TRAINING_OUTLIER_THRESHOLD", 0))
        let base = CheckpointWeights(try CheckpointReader(path: ProjectPaths.root + "/models/smollm2.h5"))
        let floatModel = try LlamaModel(weights: base)
        let tokenizer = try makeTokenizer(base.tokenizer)
        let calibrationText = try PTQ.readText(ProjectPaths.shared + "/data/wikitext-2/valid.txt")
        var windows = try CalibrationSamples.windows(of: tokenizer.encode(calibrationText, addSpecialTokens: false),
                                                     count: windowCount, length: length, seed: 0)
        if base.tokenizer.addBOS, let bos = base.tokenizer.bosTokenID { for i in windows.indices { windows[i][0] = bos } }
        let testTokens = tokenizer.encode(try PTQ.readText(ProjectPaths.wikiTest))
        say("budget: \(windowCount) windows × \(length) tokens × \(epochs) epochs; LoRA steps \(loraSteps)")

        func masks(_ model: LlamaModel) -> [String: [Float]] {
            final class MaxRecorder: ActivationObserver {
                var maxima: [String: [Float]] = [:]
                func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
                    guard point.hasSuffix("input") else { return }
                    var m = maxima[point] ?? [Float](repeating: 0, count: columns)
                    for r in 0..<rows { for j in 0..<columns { m[j] = max(m[j], abs(values[r * columns + j])) } }
                    maxima[point] = m
                }
            }
            let recorder = MaxRecorder()
            for w in windows { _ = model.hiddenStates(w, hooks: ForwardHooks(observer: recorder)) }
            return recorder.maxima
        }
        func initial(_ weights: some WeightSource, statistics: [String: [Float]]) throws -> [String: BinarizationParameters] {
            var parameters: [String: BinarizationParameters] = [:]
            for l in 0..<weights.config.layerCount {
                for kind in TensorNames.linearKinds {
                    let name = TensorNames.layer(l, kind)
                    let t = try weights.tensor(name + "/weight")
                    let statistic = statistics[weights.config.structure.linearLayer(named: name)!.inputPoint]!
                    let mask = BinarizationParameters.salientMask(channelStatistic: statistic, ratio: 0.2)
                    let outliers = BinarizationParameters.outlierColumns(channelStatistic: statistic,
                                                                         threshold: outlierThreshold, salientMask: mask)
                    if !outliers.isEmpty { say("\(name): float16 outlier columns \(outliers)") }
                    parameters[name] = .initial(weight: t.data, rows: t.shape[0], columns: t.shape[1], salientMask: mask,
                                                outlierColumns: outliers)
                }
            }
            return parameters
        }
        func perplexity(_ weights: some WeightSource) throws -> Double {
            try Perplexity.evaluate(model: try LlamaModel(weights: weights), tokens: testTokens, context: 512,
                                    maxChunks: 20, quiet: true).perplexity
        }
        func blockwise(_ weights: some WeightSource, _ parameters: [String: BinarizationParameters], label: String)
            throws -> [String: BinarizationParameters] {
            let started = Date()
            let result = try BlockwiseScaleOptimizer.optimize(
                weights: weights, parameters: parameters, windows: windows,
                settings: BlockwiseSettings(epochs: epochs, evaluateInitialLoss: true, quiet: true)) { r in
                say(String(format: "%@ block %2d: loss %.5f → %.5f (first epoch mean %.5f), %d steps, %.1f s (%.3f s/step)",
                           label, r.layer, r.initialLoss ?? .nan, r.finalLoss, r.firstEpochLoss, r.steps, r.seconds,
                           r.seconds / Double(max(1, r.steps))))
            }
            say(String(format: "%@ blockwise wall time: %.1f s", label, Date().timeIntervalSince(started)))
            return result
        }

        let statistics = masks(floatModel)
        let pass1Initial = try initial(base, statistics: statistics)
        let bits = pass1Initial.values.reduce(0.0) { $0 + Double($1.rows) * Double($1.salientMask.filter { $0 }.count) }
            / pass1Initial.values.reduce(0.0) { $0 + Double($1.rows * $1.columns) }
        say(String(format: "salient share of linear weights: %.4f", bits))
        let initialPerplexity = try perplexity(SimulatedBinarizationWeights(base: base, parameters: pass1Initial))
        say(String(format: "perplexity, initial parameters (no optimisation): %.4f", initialPerplexity))
        let pass1 = try blockwise(base, pass1Initial, label: "pass 1")
        let pass1Perplexity = try perplexity(SimulatedBinarizationWeights(base: base, parameters: pass1))
        say(String(format: "perplexity, blockwise: %.4f", pass1Perplexity))
        #expect(pass1Perplexity < initialPerplexity)

        guard loraSteps > 0 else { return }
        let started = Date()
        let merged = try LoRAPreprocessing.train(
            weights: base, parameters: pass1, windows: windows,
            settings: LoRASettings(steps: loraSteps, quiet: true)) { step, loss in
            if step % 10 == 0 || step == loraSteps - 1 {
                say(String(format: "LoRA step %d: loss %.4f (%.1f s elapsed)", step + 1, loss, Date().timeIntervalSince(started)))
            }
        }
        say(String(format: "LoRA wall time: %.1f s (%.2f s/step)", Date().timeIntervalSince(started),
                   Date().timeIntervalSince(started) / Double(loraSteps)))
        let mergedWeights = ContentsWeights(merged)
        say(String(format: "perplexity, preprocessed (Ŵ + LoRA merged, float): %.4f", try perplexity(mergedWeights)))
        // Pass 2 reuses the pass-1 masks (reference remain.py / reptq.py).
        let pass2Initial = try initial(mergedWeights, statistics: statistics)
        say(String(format: "perplexity, pass 2 initial parameters: %.4f",
                   try perplexity(SimulatedBinarizationWeights(base: mergedWeights, parameters: pass2Initial))))
        let pass2 = try blockwise(mergedWeights, pass2Initial, label: "pass 2")
        say(String(format: "perplexity, preprocessing + blockwise: %.4f",
                   try perplexity(SimulatedBinarizationWeights(base: mergedWeights, parameters: pass2))))
    }
}
