import Foundation
import Testing
@testable import PTQKit
@testable import Training

/// The training target: block backward pass against finite differences, the PTQ1.61 loss and
/// AdamW, block-wise scale optimisation and LoRA preprocessing on tiny synthetic models.
@Suite struct TrainingTests {
    static let config = SyntheticModels.llamaConfig()   // D 32, F 48, 4 heads, 2 KV heads, Dh 8

    static func randoms(_ count: Int, _ rng: inout SeededGenerator, scale: Float = 1) -> [Float] {
        (0..<count).map { _ in rng.float(in: -scale...scale) }
    }

    /// A block of the synthetic model's layer `l` with dense, gradient-tracking weights.
    static func block(_ contents: CheckpointContents, layer l: Int) -> LlamaBlock {
        let linears = TensorNames.linearKinds.map { kind in
            let t = contents.tensors[TensorNames.layer(l, kind) + "/weight"]!
            return DenseLinear(weight: t.data, outFeatures: t.shape[0], inFeatures: t.shape[1])
        }
        return LlamaBlock(config: config, attentionNorm: contents.tensors[TensorNames.layer(l, "attention_norm/weight")]!.data,
                          mlpNorm: contents.tensors[TensorNames.layer(l, "mlp_norm/weight")]!.data, linears: linears)
    }

    static func forward(_ block: LlamaBlock, _ x: [Float]) -> [Float] {
        BlockwiseScaleOptimizer.run(block, x, config.hiddenSize)
    }

    final class OutputRecorder: ActivationObserver {
        var outputs: [String: [Float]] = [:]
        func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
            if point.hasSuffix(".output") { outputs[point] = Array(values) }
        }
    }

    @Test func blockForwardMatchesModel() throws {
        let contents = SyntheticModels.contents(Self.config, tokenizer: SyntheticModels.llamaTokenizer())
        let model = try LlamaModel(weights: ContentsWeights(contents))
        let tokens = [3, 17, 200, 45, 45, 9, 120, 255, 1, 64, 77]
        let recorder = OutputRecorder()
        _ = model.hiddenStates(tokens, hooks: ForwardHooks(observer: recorder))
        let D = Self.config.hiddenSize
        let embedding = contents.tensors[TensorNames.tokenEmbedding]!.data
        var x = tokens.flatMap { embedding[($0 * D)..<(($0 + 1) * D)] }
        for l in 0..<Self.config.layerCount {
            x = Self.forward(Self.block(contents, layer: l), x)
            let expected = try #require(recorder.outputs[QuantizationPoints.layerOutput(l)])
            let worst = zip(x, expected).map { abs($0 - $1) }.max()!
            // The model's RMSNorm, SiLU and softmax kernels sum in vector lanes and use a vector
            // expf (within 2 ulp); the block keeps scalar loops: a few ulp apart, not more.
            #expect(worst <= 1e-5, "layer \(l): max |difference| \(worst)")
            #expect(expected.map(abs).max()! > 0.1)
        }
    }

    /// Every gradient of the block (input and the 7 weights) against central differences of the
    /// scalar L = Σ c ∘ y along random directions, summed in Double. With h = 1e-2 the float
    /// rounding of L contributes ~1e-4 of the derivative and truncation ~h², so 2e-3 is tight.
    @Test func blockBackwardMatchesFiniteDifferences() throws {
        let contents = SyntheticModels.contents(Self.config, tokenizer: SyntheticModels.llamaTokenizer(), seed: 7)
        let block = Self.block(contents, layer: 1)
        let D = Self.config.hiddenSize, T = 7
        var rng = SeededGenerator(seed: 11)
        let x = Self.randoms(T * D, &rng, scale: 2)
        let c = Self.randoms(T * D, &rng)
        func scalar(_ input: [Float]) -> Double {
            zip(Self.forward(block, input), c).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        _ = Self.forward(block, x)
        var dx = [Float](repeating: 0, count: T * D)
        c.withUnsafeBufferPointer { cp in
            dx.withUnsafeMutableBufferPointer { block.backward(outputGradient: cp.baseAddress!, inputGradient: $0.baseAddress!) }
        }
        let h: Float = 1e-2
        func check(_ analytic: Double, _ plus: Double, _ minus: Double, _ what: String) {
            let numeric = (plus - minus) / (2 * Double(h))
            #expect(abs(analytic - numeric) <= 2e-3 * max(abs(numeric), 1e-2), "\(what): analytic \(analytic), numeric \(numeric)")
            #expect(abs(numeric) > 1e-2, "\(what): a zero derivative checks nothing")
        }
        for trial in 0..<3 {
            let d = Self.randoms(T * D, &rng)
            let analytic = zip(dx, d).reduce(0) { $0 + Double($1.0) * Double($1.1) }
            check(analytic, scalar(zip(x, d).map { $0 + h * $1 }), scalar(zip(x, d).map { $0 - h * $1 }), "dX \(trial)")
        }
        // A few single input elements too (a directional check could hide a wrong token).
        for index in [0, D + 5, 3 * D + 31, (T - 1) * D + 2] {
            var plus = x, minus = x
            plus[index] += h; minus[index] -= h
            check(Double(dx[index]), scalar(plus), scalar(minus), "dX[\(index)]")
        }
        let linears = block.linears.map { $0 as! DenseLinear }
        let gradients = linears.map(\.gradient)
        for (i, layer) in linears.enumerated() {
            let original = layer.weight
            for trial in 0..<2 {
                let d = Self.randoms(original.count, &rng)
                let analytic = zip(gradients[i], d).reduce(0) { $0 + Double($1.0) * Double($1.1) }
                layer.weight = zip(original, d).map { $0 + h * $1 }
                let plus = scalar(x)
                layer.weight = zip(original, d).map { $0 - h * $1 }
                let minus = scalar(x)
                layer.weight = original
                check(analytic, plus, minus, "d\(TensorNames.linearKinds[i]) \(trial)")
            }
        }
    }

    @Test func lossGradientMatchesFiniteDifferences() {
        let T = 5, D = 16
        var rng = SeededGenerator(seed: 3)
        let yfp = Self.randoms(T * D, &rng)
        let yfq = zip(yfp, Self.randoms(T * D, &rng, scale: 0.3)).map { $0 + $1 }
        let yq = zip(yfp, Self.randoms(T * D, &rng, scale: 0.6)).map { $0 + $1 }
        func loss(_ q: [Float], gradient: UnsafeMutablePointer<Float>? = nil) -> Double {
            q.withUnsafeBufferPointer { a in yfp.withUnsafeBufferPointer { b in yfq.withUnsafeBufferPointer { c in
                BlockLoss.evaluate(quantized: a.baseAddress!, fullPrecision: b.baseAddress!,
                                   fullPrecisionOnQuantizedInput: c.baseAddress!, rows: T, width: D, gradient: gradient)
            }}}
        }
        var gradient = [Float](repeating: 0, count: T * D)
        let value = gradient.withUnsafeMutableBufferPointer { loss(yq, gradient: $0.baseAddress!) }
        // The loss by its definition, written out independently.
        var mse = 0.0, cosFp = 0.0, cosFq = 0.0
        for t in 0..<T {
            var dot1 = 0.0, dot2 = 0.0, nq = 0.0, nfp = 0.0, nfq = 0.0
            for i in 0..<D {
                let q = Double(yq[t * D + i]), a = Double(yfp[t * D + i]), b = Double(yfq[t * D + i])
                mse += ((q - a) * (q - a) + (q - b) * (q - b)) / Double(T * D)
                dot1 += q * a; dot2 += q * b; nq += q * q; nfp += a * a; nfq += b * b
            }
            cosFp += dot1 / (nq * nfp).squareRoot() / Double(T)
            cosFq += dot2 / (nq * nfq).squareRoot() / Double(T)
        }
        #expect(abs(value - (mse - log(abs(cosFp)) - log(abs(cosFq)))) < 1e-9)
        let h: Float = 1e-3
        for index in [0, 7, 33, T * D - 1] {
            var plus = yq, minus = yq
            plus[index] += h; minus[index] -= h
            let numeric = (loss(plus) - loss(minus)) / Double(plus[index] - minus[index])
            #expect(abs(Double(gradient[index]) - numeric) <= 1e-4 * max(abs(numeric), 1e-3), "index \(index)")
        }
        let d = Self.randoms(T * D, &rng)
        let numeric = (loss(zip(yq, d).map { $0 + h * $1 }) - loss(zip(yq, d).map { $0 - h * $1 })) / (2 * Double(h))
        let analytic = zip(gradient, d).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        #expect(abs(analytic - numeric) <= 1e-3 * abs(numeric))
    }

    @Test func adamWMatchesHandComputedSteps() {
        var optimizer = AdamW(count: 2, learningRate: 0.1, weightDecay: 0.01)
        var p: [Float] = [1, -2]
        optimizer.update(&p, gradients: [0.5, -0.1])
        // Step 1: m̂ = g, v̂ = g², so the step is lr·g/(|g| + ε) after decay p·(1 − lr·wd).
        #expect(abs(p[0] - (0.999 - 0.1 * 0.5 / (0.5 + 1e-8))) < 1e-6)
        #expect(abs(p[1] - (-2 * 0.999 + 0.1 * 0.1 / (0.1 + 1e-8))) < 1e-6)
        optimizer.update(&p, gradients: [0.2, 0.3])
        // Step 2 for p[0]: m = 0.9·0.05 + 0.1·0.2 = 0.065, v = 0.999·0.00025 + 0.001·0.04 = 0.00028975.
        let p0 = 0.899 * 0.999 - 0.1 * (0.065 / (1 - 0.81)) / ((0.00028975 / (1 - 0.998001)).squareRoot() + 1e-8)
        #expect(abs(Double(p[0]) - p0) < 1e-5)
        #expect(optimizer.step == 2)
    }

    /// Ŵ written by the trainer equals `dequantized()`, and the chain-rule gradients of α, r1, r2
    /// equal the derivatives of Σ C ∘ Ŵ(α, r1, r2).
    @Test func scaleChainRule() {
        var rng = SeededGenerator(seed: 5)
        let rows = 6, columns = 10
        let w = Self.randoms(rows * columns, &rng)
        let mask = BinarizationParameters.salientMask(channelStatistic: Self.randoms(columns, &rng).map(abs), ratio: 0.2)
        var p = BinarizationParameters.initial(weight: w, rows: rows, columns: columns, salientMask: mask)
        p.rowScale = p.rowScale.map { $0 + rng.float(in: -0.2...0.2) }
        p.columnScale = p.columnScale.map { $0 + rng.float(in: -0.2...0.2) }
        let trainer = ScaleTrainer(p, settings: BlockwiseSettings())
        var written = [Float](repeating: .nan, count: rows * columns)
        written.withUnsafeMutableBufferPointer { trainer.writeWeight(into: $0.baseAddress!, salient: true) }
        #expect(written == p.dequantized())
        let c = Self.randoms(rows * columns, &rng)
        let g = trainer.gradients(weightGradient: c)
        func objective(_ q: BinarizationParameters) -> Double {
            zip(q.dequantized(), c).reduce(0) { $0 + Double($1.0) * Double($1.1) }
        }
        let h: Float = 1e-2   // Ŵ is linear in each scale separately: differences are exact up to rounding.
        for i in [0, 3, 5] {
            var plus = p, minus = p
            plus.alpha[i] += h; minus.alpha[i] -= h
            #expect(abs(Double(g.alpha[i]) - (objective(plus) - objective(minus)) / Double(plus.alpha[i] - minus.alpha[i])) < 1e-4)
            plus = p; minus = p
            plus.rowScale[i] += h; minus.rowScale[i] -= h
            #expect(abs(Double(g.rowScale[i]) - (objective(plus) - objective(minus)) / Double(plus.rowScale[i] - minus.rowScale[i])) < 1e-4)
        }
        for j in 0..<columns {
            var plus = p, minus = p
            plus.columnScale[j] += h; minus.columnScale[j] -= h
            let numeric = (objective(plus) - objective(minus)) / Double(plus.columnScale[j] - minus.columnScale[j])
            #expect(abs(Double(g.columnScale[j]) - numeric) < 1e-4)
            if mask[j] { #expect(g.columnScale[j] == 0) }
        }
    }

    /// Initial PTQ1.61 parameters of every block linear of a synthetic model, with masks from
    /// max |x| per input channel over `windows`.
    static func initialParameters(_ contents: CheckpointContents, windows: [[Int]]) throws -> [String: BinarizationParameters] {
        final class MaxRecorder: ActivationObserver {
            var maxima: [String: [Float]] = [:]
            func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
                var m = maxima[point] ?? [Float](repeating: 0, count: columns)
                for r in 0..<rows { for j in 0..<columns { m[j] = max(m[j], abs(values[r * columns + j])) } }
                maxima[point] = m
            }
        }
        let model = try LlamaModel(weights: ContentsWeights(contents))
        let recorder = MaxRecorder()
        for w in windows { _ = model.hiddenStates(w, hooks: ForwardHooks(observer: recorder)) }
        var parameters: [String: BinarizationParameters] = [:]
        for l in 0..<contents.config.layerCount {
            for kind in TensorNames.linearKinds {
                let name = TensorNames.layer(l, kind)
                let t = contents.tensors[name + "/weight"]!
                let mask = BinarizationParameters.salientMask(
                    channelStatistic: recorder.maxima[contents.config.structure.linearLayer(named: name)!.inputPoint]!, ratio: 0.2)
                parameters[name] = .initial(weight: t.data, rows: t.shape[0], columns: t.shape[1], salientMask: mask)
            }
        }
        return parameters
    }

    static func windows(_ count: Int, length: Int, seed: UInt64) -> [[Int]] {
        var rng = SeededGenerator(seed: seed)
        return (0..<count).map { _ in (0..<length).map { _ in Int(rng.next() % 256) } }
    }

    /// Mean squared difference of the last block's output between the float model and the model
    /// with `parameters` simulated, on `windows`.
    static func outputError(_ contents: CheckpointContents, _ parameters: [String: BinarizationParameters],
                            windows: [[Int]]) throws -> Double {
        let base = ContentsWeights(contents)
        let reference = try LlamaModel(weights: base)
        let quantized = try LlamaModel(weights: SimulatedBinarizationWeights(base: base, parameters: parameters))
        let point = QuantizationPoints.layerOutput(contents.config.layerCount - 1)
        var total = 0.0, count = 0
        for w in windows {
            let a = OutputRecorder(), b = OutputRecorder()
            _ = reference.hiddenStates(w, hooks: ForwardHooks(observer: a))
            _ = quantized.hiddenStates(w, hooks: ForwardHooks(observer: b))
            for (u, v) in zip(a.outputs[point]!, b.outputs[point]!) { total += Double(u - v) * Double(u - v); count += 1 }
        }
        return total / Double(count)
    }

    @Test func blockwiseLowersLossAndOutputError() throws {
        let contents = SyntheticModels.contents(Self.config, tokenizer: SyntheticModels.llamaTokenizer())
        let calibration = Self.windows(8, length: 48, seed: 1)
        let initial = try Self.initialParameters(contents, windows: calibration)
        var reports: [BlockwiseBlockReport] = []
        let settings = BlockwiseSettings(epochs: 8, learningRateAlpha: 5e-3, learningRateScales: 1e-2,
                                         evaluateInitialLoss: true, quiet: true)
        let optimized = try BlockwiseScaleOptimizer.optimize(weights: ContentsWeights(contents), parameters: initial,
                                                             windows: calibration, settings: settings) { reports.append($0) }
        #expect(reports.map(\.layer) == [0, 1])
        for r in reports {
            let before = try #require(r.initialLoss)
            #expect(r.finalLoss < 0.8 * before, "block \(r.layer): loss \(before) → \(r.finalLoss)")
            #expect(r.steps == 8 * 8)
        }
        #expect(Set(optimized.keys) == Set(initial.keys))
        for (name, p) in optimized {
            let q = initial[name]!
            // Only α, r1, r2 are learned.
            #expect(p.signs == q.signs && p.mean == q.mean && p.salientCodes == q.salientCodes && p.salientMask == q.salientMask)
            #expect(p.alpha != q.alpha && p.rowScale != q.rowScale)
        }
        for (label, windows) in [("calibration", calibration), ("held-out", Self.windows(4, length: 48, seed: 99))] {
            let before = try Self.outputError(contents, initial, windows: windows)
            let after = try Self.outputError(contents, optimized, windows: windows)
            // A tiny random model overfits 384 calibration tokens, so held-out gains are smaller.
            #expect(after < (label == "calibration" ? 0.8 : 0.95) * before, "\(label) block output MSE \(before) → \(after)")
        }
    }

    @Test func blockwiseRejectsBadInput() throws {
        let contents = SyntheticModels.contents(Self.config, tokenizer: SyntheticModels.llamaTokenizer())
        let weights = ContentsWeights(contents)
        let p = BinarizationParameters.initial(weight: [Float](repeating: 0.1, count: 12), rows: 3, columns: 4,
                                               salientMask: [true, false, false, false])
        #expect(throws: PTQError.self) {
            try BlockwiseScaleOptimizer.optimize(weights: weights, parameters: ["layers/0/attention/q_proj": p], windows: [[1, 2]])
        }
        #expect(throws: PTQError.self) {
            try BlockwiseScaleOptimizer.optimize(weights: weights, parameters: ["layers/9/attention/q_proj": p], windows: [[1, 2]])
        }
        #expect(throws: PTQError.self) {
            try BlockwiseScaleOptimizer.optimize(weights: weights, parameters: [:], windows: [[1, 999]])
        }
        #expect(throws: PTQError.self) {
            try BlockwiseScaleOptimizer.optimize(weights: weights, parameters: [:], windows: [[1]], settings: BlockwiseSettings(epochs: 0))
        }
    }
}

/// LoRA quantization preprocessing on a tiny model.
@Suite struct LoRAPreprocessingTests {
    static let config = SyntheticModels.llamaConfig()

    static func setUp() throws -> (CheckpointContents, [String: BinarizationParameters], [[Int]]) {
        let contents = SyntheticModels.contents(config, tokenizer: SyntheticModels.llamaTokenizer())
        let windows = TrainingTests.windows(3, length: 20, seed: 4)
        return (contents, try TrainingTests.initialParameters(contents, windows: windows), windows)
    }

    /// The merged checkpoint's forward equals the unmerged model with adapters.
    @Test func mergeIdentity() throws {
        let (contents, parameters, windows) = try Self.setUp()
        let settings = LoRASettings(rank: 4, learningRate: 1e-2, steps: 1, quiet: true)
        let model = try LoRAModel(weights: ContentsWeights(contents), parameters: parameters, settings: settings)
        var rng = SeededGenerator(seed: 9)
        for name in model.adapters.keys.sorted() {
            model.adapters[name]!.b = TrainingTests.randoms(model.adapters[name]!.b.count, &rng, scale: 0.2)
        }
        let merged = try LlamaModel(weights: ContentsWeights(try model.mergedContents()))
        let tokens = windows[0]
        let expected = model.logits(tokens)
        let actual = merged.forward(tokens)
        let worst = zip(expected, actual).map { abs($0 - $1) }.max()!
        let reference = try LlamaModel(weights: SimulatedBinarizationWeights(base: ContentsWeights(contents), parameters: parameters))
        let unadapted = zip(reference.forward(tokens), actual).map { abs($0 - $1) }.max()!
        #expect(worst < 1e-4, "merged vs adapters: max |Δlogit| \(worst)")
        #expect(unadapted > 1e-2, "the adapters must change the model for this test to mean anything")
        // o_proj carries no adapter and stays at Ŵ.
        let o = "layers/1/attention/o_proj"
        #expect(try model.mergedContents().tensors[o + "/weight"]!.data == parameters[o]!.dequantized())
    }

    /// dL/dA and dL/dB of the causal-LM loss against central differences along random directions.
    @Test func causalLMGradientMatchesFiniteDifferences() throws {
        let (contents, parameters, windows) = try Self.setUp()
        let model = try LoRAModel(weights: ContentsWeights(contents), parameters: parameters,
                                  settings: LoRASettings(rank: 4, alpha: 4, quiet: true))
        var rng = SeededGenerator(seed: 2)
        for name in model.adapters.keys.sorted() {
            model.adapters[name]!.b = TrainingTests.randoms(model.adapters[name]!.b.count, &rng, scale: 0.1)
        }
        let tokens = windows[1]
        model.zeroGradients()
        _ = model.lossAndGradient(tokens)
        // Snapshot: the loss evaluations below accumulate into the gradient buffers again.
        let gradients = model.adapters.mapValues { ($0.gradientA, $0.gradientB) }
        // h = 1e-3: float rounding of the mean cross-entropy (~1e-7) stays ~1e-4 of the derivative.
        let h: Float = 1e-3
        for name in ["layers/0/attention/q_proj", "layers/0/mlp/down_proj", "layers/1/attention/v_proj", "layers/1/mlp/gate_proj"] {
            let adapter = model.adapters[name]!
            for useA in [true, false] {
                let original = useA ? adapter.a : adapter.b
                let gradient = useA ? gradients[name]!.0 : gradients[name]!.1
                let d = TrainingTests.randoms(original.count, &rng)
                let analytic = zip(gradient, d).reduce(0) { $0 + Double($1.0) * Double($1.1) }
                func set(_ v: [Float]) { if useA { adapter.a = v } else { adapter.b = v } }
                set(zip(original, d).map { $0 + h * $1 })
                let plus = model.lossAndGradient(tokens)
                set(zip(original, d).map { $0 - h * $1 })
                let minus = model.lossAndGradient(tokens)
                set(original)
                let numeric = (plus - minus) / (2 * Double(h))
                #expect(abs(numeric) > 1e-3)
                #expect(abs(analytic - numeric) <= 5e-3 * abs(numeric) + 1e-4, "\(name) \(useA ? "A" : "B"): \(analytic) vs \(numeric)")
            }
        }
    }

    @Test func lossDecreasesAndMergesIntoCheckpoint() throws {
        let (contents, parameters, windows) = try Self.setUp()
        var losses: [Double] = []
        let settings = LoRASettings(rank: 8, learningRate: 5e-3, steps: 24, quiet: true)
        let merged = try LoRAPreprocessing.train(weights: ContentsWeights(contents), parameters: parameters,
                                                 windows: windows, settings: settings) { losses.append($1) }
        #expect(losses.count == 24)
        let first = losses.prefix(3).reduce(0, +) / 3, last = losses.suffix(3).reduce(0, +) / 3
        #expect(last < first - 0.05, "loss \(first) → \(last)")
        try merged.validate(source: "merged")
        let path = SyntheticModels.temporaryPath("merged.h5")
        try CheckpointWriter.write(merged, to: path)
        let reread = try CheckpointReader(path: path)
        #expect(try reread.tensor("layers/0/mlp/up_proj/weight").data == merged.tensors["layers/0/mlp/up_proj/weight"]!.data)
        #expect(settings.learningRate(atStep: 0) == 0)   // HF: the first warmup step has lr 0
        #expect(abs(settings.learningRate(atStep: 1) - 5e-3) < 1e-9)
        #expect(settings.learningRate(atStep: 24) == 0)
    }
}
