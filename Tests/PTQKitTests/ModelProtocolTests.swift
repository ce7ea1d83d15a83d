import Foundation
import PTQCLI
import Testing
@testable import PTQKit

/// A model family written outside the package, to prove the seam: one residual block with no
/// attention, `x += contract(GELU(expand(rms(x))))`, and a head tied to the embedding. Its layers
/// and points are named nothing like LLaMA's or BERT's, so anything that still guessed a role
/// from a name, or switched on the family, would miss them.
final class ToyDecoder: LanguageModel {
    static let expand = "toy/0/expand", contract = "toy/0/contract", embedding = "toy/embedding"
    static let normedPoint = "toy.0.normed", activatedPoint = "toy.0.activated"

    static func structure(for config: ModelConfig) -> ModelStructure {
        let (D, F) = (config.hiddenSize, config.intermediateSize)
        return ModelStructure(
            architecture: config.architecture, task: .languageModeling,
            linearLayers: [
                LinearLayerDescription(name: expand, role: .mlpInputProjection, inputPoint: normedPoint, block: 0,
                                       outFeatures: F, inFeatures: D, hasBias: false),
                LinearLayerDescription(name: contract, role: .mlpOutputProjection(.gelu), inputPoint: activatedPoint,
                                       block: 0, outFeatures: D, inFeatures: F, hasBias: false),
            ],
            outputHead: nil,
            activationSites: [ActivationSiteDescription(point: activatedPoint, block: 0, kind: .mlpActivation(.gelu))])
    }

    let config: ModelConfig
    let tokenizer: TokenizerSpec
    let identity: String
    let embeddingTable: [Float]
    let expandOp: any LinearOp, contractOp: any LinearOp

    init(weights: some WeightSource) throws(PTQError) {
        config = weights.config
        tokenizer = weights.tokenizer
        embeddingTable = try weights.tensor(Self.embedding).data
        expandOp = try weights.linear(Self.expand)
        contractOp = try weights.linear(Self.contract)
        identity = "toy-\(embeddingTable.prefix(4).map { $0.bitPattern })"
    }

    /// The residual stream after the block `(T, D)`.
    func block(_ tokens: [Int], hooks: ForwardHooks) -> [Float] {
        let D = config.hiddenSize, F = config.intermediateSize, T = tokens.count
        var x = tokens.flatMap { embeddingTable[($0 * D)..<(($0 + 1) * D)] }
        var normed = x
        for t in 0..<T {
            let row = x[(t * D)..<((t + 1) * D)]
            let rms = (row.reduce(0) { $0 + $1 * $1 } / Float(D) + 1e-5).squareRoot()
            for i in 0..<D { normed[t * D + i] = x[t * D + i] / rms }
        }
        observe(hooks, Self.normedPoint, normed, rows: T, columns: D)
        var hidden = apply(expandOp, normed, rows: T, out: F)
        for i in hidden.indices { hidden[i] = 0.5 * hidden[i] * (1 + erf(hidden[i] / Float(2).squareRoot())) }
        observe(hooks, Self.activatedPoint, hidden, rows: T, columns: F)
        let y = apply(contractOp, hidden, rows: T, out: D)
        for i in x.indices { x[i] += y[i] }
        observe(hooks, QuantizationPoints.layerOutput(0), x, rows: T, columns: D)
        return x
    }

    func observe(_ tokens: [Int], hooks: ForwardHooks) {
        _ = block(tokens, hooks: hooks)
    }

    func logits(for tokens: [Int], rows: Range<Int>?, hooks: ForwardHooks) -> [Float] {
        let x = block(tokens, hooks: hooks)
        let D = config.hiddenSize, V = config.vocabSize
        let rows = rows ?? 0..<tokens.count
        var logits = [Float](repeating: 0, count: rows.count * V)
        for (r, t) in rows.enumerated() {
            for v in 0..<V {
                var s: Float = 0
                for i in 0..<D { s += x[t * D + i] * embeddingTable[v * D + i] }
                logits[r * V + v] = s
            }
        }
        return logits
    }

    private func apply(_ op: any LinearOp, _ x: [Float], rows: Int, out: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * out)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { op.forward(xp.baseAddress!, rows: rows, into: $0.baseAddress!) }
        }
        return y
    }

    private func observe(_ hooks: ForwardHooks, _ point: String, _ values: [Float], rows: Int, columns: Int) {
        values.withUnsafeBufferPointer { hooks.observer?.observe(point: point, values: $0, rows: rows, columns: columns) }
    }
}

/// Float tensors, plus quantized linears run on the packed runtime's kernels.
struct ToyWeights: WeightSource {
    var config: ModelConfig
    var tokenizer: TokenizerSpec
    var tensors: [String: Tensor]
    var quantized: [String: QuantizedLinear] = [:]

    static func random(_ config: ModelConfig, seed: UInt64) -> ToyWeights {
        var rng = SeededGenerator(seed: seed)
        func tensor(_ rows: Int, _ columns: Int, scale: Float) -> Tensor {
            Tensor(shape: [rows, columns], data: (0..<rows * columns).map { _ in rng.float(in: -scale...scale) })
        }
        let (V, D, F) = (config.vocabSize, config.hiddenSize, config.intermediateSize)
        var tensors = [ToyDecoder.embedding: tensor(V, D, scale: 1),
                       ToyDecoder.expand + "/weight": tensor(F, D, scale: 2 / Float(D).squareRoot()),
                       ToyDecoder.contract + "/weight": tensor(D, F, scale: 2 / Float(F).squareRoot())]
        // An outlier input channel, as real norms produce: per-channel scales matter.
        for o in 0..<F { tensors[ToyDecoder.expand + "/weight"]!.data[o * D + 3] *= 0.1 }
        return ToyWeights(config: config, tokenizer: SyntheticModels.llamaTokenizer(), tensors: tensors)
    }

    func tensor(_ name: String) throws(PTQError) -> Tensor {
        guard let t = tensors[name] else { throw PTQError("toy: no tensor \(name)") }
        return t
    }

    func linear(_ name: String) throws(PTQError) -> any LinearOp {
        if let q = quantized[name] { return try PackedWeights.linearOp(for: q) }
        return FloatLinear(weight: try tensor(name + "/weight"))
    }
}

@Suite("Model protocol")
struct ModelProtocolTests {
    static let toyConfig = ModelConfig(architecture: .llama, vocabSize: 260, hiddenSize: 16, intermediateSize: 24,
                                       layerCount: 1, headCount: 2, maxPositions: 64, normEpsilon: 1e-5,
                                       activation: .gelu, name: "toy")

    /// KL(P‖Q) per position, computed here from the two models' logits in double precision.
    static func meanKL(_ p: [Float], _ q: [Float], vocab: Int) -> Double {
        var total = 0.0
        let rows = p.count / vocab
        for r in 0..<rows {
            let a = p[(r * vocab)..<((r + 1) * vocab)].map(Double.init), b = q[(r * vocab)..<((r + 1) * vocab)].map(Double.init)
            let za = log(a.map { exp($0 - a.max()!) }.reduce(0, +)) + a.max()!
            let zb = log(b.map { exp($0 - b.max()!) }.reduce(0, +)) + b.max()!
            for i in 0..<vocab { total += exp(a[i] - za) * ((a[i] - za) - (b[i] - zb)) }
        }
        return total
    }

    /// The toy family goes through planning, calibration, quantization, verification samples and
    /// verification with no line of family-specific code: roles and points come from its
    /// structure, and OutlierTune treats its two layers by role.
    @Test func foreignFamilyCalibratesQuantizesAndVerifies() throws {
        let config = Self.toyConfig
        let floatWeights = ToyWeights.random(config, seed: 11)
        let float = try ToyDecoder(weights: floatWeights)
        let folder = SyntheticModels.temporaryPath("toy")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var rng = SeededGenerator(seed: 5)
        let words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "big", "red", "small", ".", ","]
        let text = (0..<2000).map { _ in words[Int(rng.next() % UInt64(words.count))] }.joined(separator: " ")
        try text.write(toFile: folder + "/calib.txt", atomically: true, encoding: .utf8)
        let recipe = try Recipe.parse("""
            name: toy
            model: llama
            calibration: {data: \(folder)/calib.txt, samples: 6, seq_len: 24, seed: 3}
            scheme:
              method: outliertune
              weight: {bits: 8}
              activation: {bits: 8, granularity: per_tensor}
            """, source: folder + "/toy.yaml")
        let context = PTQ.RecipeContext(recipe: recipe, path: folder + "/toy.yaml")

        let plan = try recipe.plan(for: config, structure: float.structure)
        #expect(plan.map(\.name) == [ToyDecoder.expand, ToyDecoder.contract])
        #expect(plan.map(\.role) == [.mlpInputProjection, .mlpOutputProjection(.gelu)])
        // OutlierTune asks for statistics only where a norm feeds the layer.
        let request = try PTQ.statisticsRequest(plan: plan)
        #expect(Set(request.kinds.keys) == [ToyDecoder.normedPoint])

        let statistics = try Calibrator.run(model: float, tokenizer: try PTQ.tokenizer(for: float),
                                            settings: context.calibrationSettings(for: config), request: request,
                                            quiet: true)
        #expect(statistics.tokens == 6 * 24 && statistics.points[ToyDecoder.normedPoint]?.channels == 16)
        var quantized = floatWeights
        for layer in plan {
            let quantizer = try QuantizerRegistry.quantizer(for: layer)
            quantized.quantized[layer.name] = try quantizer.quantize(
                LinearLayer(layer, weight: try floatWeights.tensor(layer.name + "/weight"), bias: nil),
                statistics: statistics.points[layer.inputPoint])
        }
        #expect(quantized.quantized[ToyDecoder.expand]?.activation?.channelScales?.count == 16)
        #expect(quantized.quantized[ToyDecoder.contract]?.activation?.granularity == .perToken)
        let model = try ToyDecoder(weights: quantized)

        let samples = try PTQ.verificationSamples(model: float, recipe: context, count: 3)
        #expect(samples.count == 3 && samples.allSatisfy { $0.count == 24 })
        let report = try PTQ.verify(quantized: model, reference: float, samples: samples,
                                    thresholds: VerificationThresholds(maxKL: 0.05, minTop1: 0.5))
        var kl = 0.0
        for sample in samples {
            kl += Self.meanKL(float.logits(for: sample, rows: nil, hooks: ForwardHooks()),
                              model.logits(for: sample, rows: nil, hooks: ForwardHooks()), vocab: config.vocabSize)
        }
        kl /= Double(3 * 24)
        #expect(report.passed && report.tokens == 3 * 24 && report.layers.count == 1)
        #expect(report.meanCosine == nil && report.layers[0].relativeMSE > 0 && report.layers[0].relativeMSE < 1e-3)
        // W8A8: the report's KL is the one computed here (to the float32 exponentials it sums),
        // and small but not zero.
        #expect(kl > 1e-7 && kl < 0.05, "KL \(kl)")
        #expect(abs(report.meanKL! - kl) <= 1e-4 * kl, "report \(report.meanKL!) vs direct \(kl)")
        let same = try PTQ.verify(quantized: float, reference: float, samples: samples,
                                  thresholds: VerificationThresholds(maxKL: 1e-12, minTop1: 1))
        #expect(same.passed && same.meanKL! == 0 && same.top1Agreement! == 1)
    }

    /// What a family cannot do is an error from a capability check, naming what it is.
    @Test func capabilityChecks() throws {
        let toy = try ToyDecoder(weights: ToyWeights.random(Self.toyConfig, seed: 1))
        #expect { try toy.generativeModel(for: "generate", source: "toy.bin") } throws: {
            ($0 as? PTQError)?.message == "toy.bin: generate needs a generative language model; this is a llama language model"
        }
        #expect { try toy.sentenceEncoder(for: "stsb") } throws: {
            ($0 as? PTQError)?.message == "stsb needs a sentence encoder; this is a llama language model"
        }
        #expect(try toy.languageModel(for: "perplexity") === toy)
        let bert = try PTQ.loadModel(path: try SyntheticModels.writeCheckpoint(
            SyntheticModels.contents(SyntheticModels.bertConfig(), tokenizer: SyntheticModels.bertTokenizer())))
        #expect { try bert.languageModel(for: "perplexity") } throws: {
            ($0 as? PTQError)?.message == "perplexity needs a language model; this is a bert sentence encoder"
        }
        // The CLI commands get the same checks.
        let path = try SyntheticModels.writeCheckpoint(
            SyntheticModels.contents(SyntheticModels.bertConfig(), tokenizer: SyntheticModels.bertTokenizer()))
        var generate = try PTQCommand.parseAsRoot(["generate", path, "--prompt", "hi", "--quiet"])
        #expect { try generate.run() } throws: {
            ($0 as? PTQError)?.message.contains("generate needs a generative language model; this is a bert") == true
        }
    }

    /// The search of attention-probability quantizers scores the sites the structure lists and
    /// none other: the toy family has none, LLaMA one per block.
    @Test func attentionSearchFollowsTheStructure() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let settings = CalibrationSettings(dataPath: folder + "/calib.txt", samples: 2, sequenceLength: 16, seed: 1)
        let llama = try PTQ.loadModel(path: checkpoint)
        let tokenizer = try PTQ.tokenizer(for: llama)
        let sites = try AttentionProbabilitySearch.run(model: llama, tokenizer: tokenizer, settings: settings,
                                                       method: "log2", bits: 4, samples: 2, rowsPerHead: 4)
        #expect(sites.map(\.point) == llama.structure.activationSites(.attentionProbabilities).map(\.point))
        #expect(sites.map(\.point) == ["layers.0.attention.probs", "layers.1.attention.probs"])
        let toy = try ToyDecoder(weights: ToyWeights.random(Self.toyConfig, seed: 1))
        #expect(try AttentionProbabilitySearch.run(model: toy, tokenizer: tokenizer, settings: settings,
                                                   method: "log2", bits: 4, samples: 2, rowsPerHead: 4).isEmpty)
    }
}
