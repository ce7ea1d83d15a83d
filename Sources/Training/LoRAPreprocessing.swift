import Foundation
import Checkpoint
import Kernels
import Models
import PTQCore

/// Settings of PTQ1.61's quantization preprocessing (reference `preprocessing/`: peft LoRA on the
/// first-pass quantized model, HF Trainer).
public struct LoRASettings: Sendable, Equatable {
    /// Adapter rank (reference: 64).
    public var rank: Int
    /// peft `lora_alpha` (reference: 16); the adapter is scaled by alpha / rank.
    public var alpha: Float
    /// Linear kinds that get adapters (reference: q, k, v, gate, up, down; not o).
    public var targets: [String]
    /// Peak learning rate of AdamW (reference: 1e-4), cosine decay after a linear warmup.
    public var learningRate: Float
    /// Optimizer steps. The reference runs 10k steps of 2048 tokens on a GPU; the CPU default
    /// is 200 steps of one 512-token window.
    public var steps: Int
    /// Warmup share of `steps` (reference: 0.05 of its nominal step count).
    public var warmupFraction: Double
    /// Windows per optimizer step (reference: 2 with batch 1).
    public var gradientAccumulation: Int
    /// Global gradient-norm clip (HF Trainer's default `max_grad_norm` 1.0; nil = none).
    public var maxGradientNorm: Float?
    /// Seed of the adapters' random initialisation.
    public var seed: UInt64
    public var quiet: Bool

    public init(rank: Int = 64, alpha: Float = 16, targets: [String] = LoRASettings.referenceTargets,
                learningRate: Float = 1e-4, steps: Int = 200, warmupFraction: Double = 0.05, gradientAccumulation: Int = 1,
                maxGradientNorm: Float? = 1, seed: UInt64 = 0, quiet: Bool = false) {
        self.rank = rank
        self.alpha = alpha
        self.targets = targets
        self.learningRate = learningRate
        self.steps = steps
        self.warmupFraction = warmupFraction
        self.gradientAccumulation = gradientAccumulation
        self.maxGradientNorm = maxGradientNorm
        self.seed = seed
        self.quiet = quiet
    }

    public static let referenceTargets = ["attention/q_proj", "attention/k_proj", "attention/v_proj",
                                          "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj"]

    /// HF's `get_cosine_schedule_with_warmup` at optimizer step `step` (0-based): linear from 0
    /// over the warmup, then half a cosine down to 0.
    public func learningRate(atStep step: Int) -> Float {
        let warmup = Int((warmupFraction * Double(steps)).rounded())
        if step < warmup { return learningRate * Float(step) / Float(max(1, warmup)) }
        let progress = Double(step - warmup) / Double(max(1, steps - warmup))
        return learningRate * Float(max(0, 0.5 * (1 + cos(Double.pi * progress))))
    }
}

/// PTQ1.61's quantization preprocessing (paper 3.4; reference `preprocessing/`): LoRA adapters
/// trained with the causal-LM loss on the first-pass quantized model (every block linear replaced
/// by its frozen Ŵ), then merged, W' = Ŵ + (alpha/rank)·B·A, into a float checkpoint for the
/// second PTQ pass.
///
/// Pass 2 follows the reference's `remain.py` / `quantize/reptq.py` path: it reuses the pass-1
/// salient masks (`BinarizationParameters.initial(weight: W', …, salientMask: pass-1 mask)`) rather
/// than recalibrating the merged model as `main.py` would; the mask is a property of the input
/// channels' activations, which the adapters barely move, and reusing it saves a calibration pass.
public enum LoRAPreprocessing {
    /// Trains adapters over `windows` (cycled, `gradientAccumulation` per step) and returns the
    /// merged float checkpoint. `onStep` receives (step, loss) after each optimizer step.
    public static func train(weights: some WeightSource, parameters: [String: BinarizationParameters],
                             windows: [[Int]], settings: LoRASettings = LoRASettings(),
                             onStep: ((Int, Double) -> Void)? = nil) throws(PTQError) -> CheckpointContents {
        guard settings.steps >= 1, settings.gradientAccumulation >= 1, settings.rank >= 1, settings.learningRate >= 0 else {
            throw PTQError("LoRA preprocessing: steps, gradient accumulation and rank must be positive, the learning rate non-negative")
        }
        let model = try LoRAModel(weights: weights, parameters: parameters, settings: settings)
        try model.checkWindows(windows)
        let progress = ProgressReporter("LoRA preprocessing", total: settings.steps, quiet: settings.quiet)
        var next = 0
        for step in 0..<settings.steps {
            model.zeroGradients()
            var loss = 0.0
            for _ in 0..<settings.gradientAccumulation {
                loss += model.lossAndGradient(windows[next % windows.count],
                                              gradientScale: 1 / Float(settings.gradientAccumulation))
                next += 1
            }
            loss /= Double(settings.gradientAccumulation)
            guard loss.isFinite else { throw PTQError("LoRA preprocessing: the loss became \(loss) at step \(step + 1)") }
            model.update(learningRate: settings.learningRate(atStep: step))
            onStep?(step, loss)
            progress.advance(detail: String(format: "loss %.4f", loss))
        }
        return try model.mergedContents()
    }
}

/// The quantized model with LoRA adapters, for training: one `LlamaBlock` per layer keeps its
/// activations from the forward pass until the backward pass (≈ 20 MB per SmolLM2 block at 512
/// tokens), so nothing is recomputed.
final class LoRAModel {
    let config: ModelConfig
    let tokenizer: TokenizerSpec
    let embedding: [Float]
    let finalNorm: [Float]
    let head: [Float]            // (V, D): the tied embedding or lm_head
    let blocks: [LlamaBlock]
    /// Adapters by canonical linear name.
    let adapters: [String: LoRALinear]
    private var optimizers: [String: (a: AdamW, b: AdamW)]
    private let settings: LoRASettings
    private let source: any WeightSource

    init(weights: some WeightSource, parameters: [String: BinarizationParameters], settings: LoRASettings) throws(PTQError) {
        let c = weights.config
        guard c.architecture == .llama else { throw PTQError("LoRA preprocessing needs a llama model, got \(c.architecture.rawValue)") }
        for t in settings.targets where !TensorNames.linearKinds.contains(t) {
            throw PTQError("LoRA preprocessing: '\(t)' is not a block linear (one of \(TensorNames.linearKinds.joined(separator: ", ")))")
        }
        for (name, p) in parameters {
            let shape = try BlockwiseScaleOptimizer.weightShape(c, name)
            guard p.rows == shape.0, p.columns == shape.1 else {
                throw PTQError("LoRA preprocessing: parameters of '\(name)' are \(p.rows)×\(p.columns), the layer is \(shape.0)×\(shape.1)")
            }
        }
        config = c
        tokenizer = weights.tokenizer
        source = weights
        self.settings = settings
        let D = c.hiddenSize
        embedding = try BlockwiseScaleOptimizer.checkedTensor(weights, TensorNames.tokenEmbedding, [c.vocabSize, D]).data
        finalNorm = try BlockwiseScaleOptimizer.checkedTensor(weights, TensorNames.finalNorm, [D]).data
        head = c.tiedEmbeddings ? embedding
            : try BlockwiseScaleOptimizer.checkedTensor(weights, TensorNames.lmHead, [c.vocabSize, D]).data
        var generator = SplitMix(seed: settings.seed)
        var blocks: [LlamaBlock] = [], adapters: [String: LoRALinear] = [:]
        for l in 0..<c.layerCount {
            var linears: [any TrainableLinear] = []
            for kind in TensorNames.linearKinds {
                let name = TensorNames.layer(l, kind)
                let (rows, columns) = try BlockwiseScaleOptimizer.weightShape(c, name)
                let base: [Float]
                if let p = parameters[name] {
                    base = p.dequantized()
                } else {
                    base = try BlockwiseScaleOptimizer.checkedTensor(weights, name + "/weight", [rows, columns]).data
                }
                if settings.targets.contains(kind) {
                    let adapter = LoRALinear(base: base, outFeatures: rows, inFeatures: columns, rank: settings.rank,
                                             alpha: settings.alpha, generator: &generator)
                    adapters[name] = adapter
                    linears.append(adapter)
                } else {
                    linears.append(DenseLinear(weight: base, outFeatures: rows, inFeatures: columns, tracksGradient: false))
                }
            }
            blocks.append(LlamaBlock(
                config: c, attentionNorm: try BlockwiseScaleOptimizer.checkedTensor(weights, TensorNames.layer(l, "attention_norm/weight"), [D]).data,
                mlpNorm: try BlockwiseScaleOptimizer.checkedTensor(weights, TensorNames.layer(l, "mlp_norm/weight"), [D]).data,
                linears: linears))
        }
        self.blocks = blocks
        self.adapters = adapters
        optimizers = adapters.mapValues { a in
            (AdamW(count: a.a.count, learningRate: settings.learningRate), AdamW(count: a.b.count, learningRate: settings.learningRate))
        }
    }

    func checkWindows(_ windows: [[Int]]) throws(PTQError) {
        guard !windows.isEmpty, windows.allSatisfy({ $0.count >= 2 }) else {
            throw PTQError("LoRA preprocessing: need at least one window of 2 or more tokens")
        }
        if let bad = windows.joined().first(where: { $0 < 0 || $0 >= config.vocabSize }) {
            throw PTQError("LoRA preprocessing: token id \(bad) is outside the vocabulary (0..<\(config.vocabSize))")
        }
        if let long = windows.first(where: { $0.count > config.maxPositions }) {
            throw PTQError("LoRA preprocessing: a window of \(long.count) tokens is longer than max_positions \(config.maxPositions)")
        }
    }

    func zeroGradients() { for a in adapters.values { a.zeroGradient() } }

    /// Final-normed hidden states after the blocks (keeping every block's activations), with the
    /// last residual and its inverse RMS for the backward pass.
    private func forwardHidden(_ tokens: [Int]) -> (normed: FloatBuffer, residual: FloatBuffer, rstd: FloatBuffer) {
        let T = tokens.count, D = config.hiddenSize
        var x = FloatBuffer(T * D), y = FloatBuffer(T * D)
        embedding.withUnsafeBufferPointer { e in
            for (t, id) in tokens.enumerated() { (x.pointer + t * D).update(from: e.baseAddress! + id * D, count: D) }
        }
        for block in blocks {
            block.forward(x.pointer, rows: T, into: y.pointer)
            swap(&x, &y)
        }
        let normed = FloatBuffer(T * D), rstd = FloatBuffer(T)
        LlamaBlock.rmsNorm(x.pointer, weight: finalNorm, rows: T, width: D, epsilon: Float(config.normEpsilon),
                           into: normed.pointer, rstd: rstd.pointer)
        return (normed, x, rstd)
    }

    /// Logits `(T, V)` of the adapted model (tests: merge identity).
    func logits(_ tokens: [Int]) -> [Float] {
        let T = tokens.count, V = config.vocabSize, D = config.hiddenSize
        let hidden = forwardHidden(tokens)
        var out = [Float](repeating: 0, count: T * V)
        head.withUnsafeBufferPointer { w in
            out.withUnsafeMutableBufferPointer {
                BLAS.linear(hidden.normed.pointer, rows: T, inFeatures: D, weight: w.baseAddress!, outFeatures: V, into: $0.baseAddress!)
            }
        }
        return out
    }

    /// Mean next-token cross-entropy over the window (HF causal-LM loss: positions 0..<T−1 predict
    /// 1..<T) and, scaled by `gradientScale`, its gradient added into the adapters.
    func lossAndGradient(_ tokens: [Int], gradientScale: Float = 1) -> Double {
        let T = tokens.count, V = config.vocabSize, D = config.hiddenSize, rows = T - 1
        let hidden = forwardHidden(tokens)
        let logits = FloatBuffer(rows * V)
        head.withUnsafeBufferPointer { w in
            BLAS.linear(hidden.normed.pointer, rows: rows, inFeatures: D, weight: w.baseAddress!, outFeatures: V, into: logits.pointer)
        }
        // Softmax − one-hot, in place: the logits become dL/dlogits.
        var loss = 0.0
        let scale = gradientScale / Float(rows)
        for t in 0..<rows {
            let row = logits.pointer + t * V
            var maximum = -Float.infinity
            for i in 0..<V { maximum = max(maximum, row[i]) }
            var sum: Double = 0
            for i in 0..<V { let e = expf(row[i] - maximum); row[i] = e; sum += Double(e) }
            let target = tokens[t + 1]
            loss -= log(Double(row[target]) / sum)
            let inv = Float(1 / sum) * scale
            for i in 0..<V { row[i] *= inv }
            row[target] -= scale
        }
        loss /= Double(rows)
        // dL/dnormed (T, D) = dlogits · head (last row 0), then back through the final norm.
        let dNormed = FloatBuffer(T * D), dx = FloatBuffer(T * D), dy = FloatBuffer(T * D)
        head.withUnsafeBufferPointer { w in
            BLAS.gemm(m: rows, n: D, k: V, a: logits.pointer, lda: V, b: w.baseAddress!, ldb: D, transposeB: false,
                      c: dNormed.pointer, ldc: D)
        }
        LlamaBlock.rmsNormBackward(hidden.residual.pointer, weight: finalNorm, rstd: hidden.rstd.pointer,
                                   outputGradient: dNormed.pointer, rows: T, width: D, into: dy.pointer)
        var upstream = dy, downstream = dx
        for (l, block) in blocks.enumerated().reversed() {
            // The first block's input gradient (embeddings) is not needed: the table is frozen.
            block.backward(outputGradient: upstream.pointer, inputGradient: l > 0 ? downstream.pointer : nil)
            swap(&upstream, &downstream)
        }
        return loss
    }

    /// One AdamW step of every adapter after clipping the global gradient norm.
    func update(learningRate: Float) {
        var clip: Float = 1
        if let maxNorm = settings.maxGradientNorm {
            var squares: Double = 0
            for a in adapters.values {
                for g in a.gradientA { squares += Double(g) * Double(g) }
                for g in a.gradientB { squares += Double(g) * Double(g) }
            }
            let norm = Float(squares.squareRoot())
            // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), at most 1.
            clip = min(1, maxNorm / (norm + 1e-6))
        }
        for (name, adapter) in adapters {
            if clip < 1 {
                for i in adapter.gradientA.indices { adapter.gradientA[i] *= clip }
                for i in adapter.gradientB.indices { adapter.gradientB[i] *= clip }
            }
            optimizers[name]!.a.learningRate = learningRate
            optimizers[name]!.b.learningRate = learningRate
            optimizers[name]!.a.update(&adapter.a, gradients: adapter.gradientA)
            optimizers[name]!.b.update(&adapter.b, gradients: adapter.gradientB)
        }
    }

    /// The float checkpoint with every block linear at Ŵ (+ s·B·A where an adapter is).
    func mergedContents() throws(PTQError) -> CheckpointContents {
        var tensors: [String: Tensor] = [:]
        for (name, _) in config.expectedTensors { tensors[name] = try source.tensor(name) }
        for (l, block) in blocks.enumerated() {
            for (i, kind) in TensorNames.linearKinds.enumerated() {
                let linear = block.linears[i]
                let data = (linear as? LoRALinear)?.merged() ?? (linear as! DenseLinear).weight
                tensors[TensorNames.layer(l, kind) + "/weight"] = Tensor(shape: [linear.outFeatures, linear.inFeatures], data: data)
            }
        }
        return CheckpointContents(config: config, tokenizer: tokenizer, tensors: tensors,
                                  metadata: ["source": "PTQ1.61 quantization preprocessing (LoRA rank \(settings.rank), \(settings.steps) steps, merged)"])
    }
}
