import Foundation
import Kernels
import Models
import PTQCore

/// Settings of PTQ1.61's block-wise scale optimisation.
public struct BlockwiseSettings: Sendable, Equatable {
    /// Passes over the calibration windows per block (reference: 20).
    public var epochs: Int
    /// AdamW learning rate of α (reference: 5e-4).
    public var learningRateAlpha: Float
    /// AdamW learning rate of r1 and r2 (reference: 1e-3).
    public var learningRateScales: Float
    /// AdamW weight decay of both groups (reference: 0).
    public var weightDecay: Float
    /// Also computes the mean loss of each block before its first step (one more forward per
    /// window and block), for `BlockwiseBlockReport.initialLoss`.
    public var evaluateInitialLoss: Bool
    public var quiet: Bool

    /// Default budget for a 2-core CPU: 32 windows of 512 tokens (the caller draws them; see
    /// `defaultWindowCount`, `defaultWindowLength`) × 2 epochs. The paper: 128 × 2048 × 20.
    public init(epochs: Int = 2, learningRateAlpha: Float = 5e-4, learningRateScales: Float = 1e-3,
                weightDecay: Float = 0, evaluateInitialLoss: Bool = false, quiet: Bool = false) {
        self.epochs = epochs
        self.learningRateAlpha = learningRateAlpha
        self.learningRateScales = learningRateScales
        self.weightDecay = weightDecay
        self.evaluateInitialLoss = evaluateInitialLoss
        self.quiet = quiet
    }

    /// Calibration windows of the default budget.
    public static let defaultWindowCount = 32
    /// Tokens per calibration window of the default budget.
    public static let defaultWindowLength = 512
}

/// What the optimiser did to one decoder block.
public struct BlockwiseBlockReport: Sendable, Equatable {
    public var layer: Int
    /// Mean loss over the windows with the initial parameters (when `evaluateInitialLoss`).
    public var initialLoss: Double?
    /// Mean of the per-step losses of the first epoch (each measured before its step).
    public var firstEpochLoss: Double
    /// Mean loss over the windows with the optimised parameters.
    public var finalLoss: Double
    public var steps: Int
    public var seconds: Double
}

/// PTQ1.61's block-wise scale optimisation (`optimization: blockwise`), as the reference
/// `quantize/blockptq.py` runs it:
///
///     X_fp = X_q = embeddings of the windows
///     for each block l in order:
///         Y_fp = B_l(X_fp), Y_fq = B_l(X_q)                      (float weights)
///         for epochs, for each window (batch 1):
///             L(B̂_l(X_q), Y_fp, Y_fq) → AdamW step on α (lr 5e-4) and r1, r2 (lr 1e-3)
///         X_q = B̂_l(X_q), X_fp = Y_fp
///
/// Signs, μ, the mask and the 4-bit salient part stay fixed. The gradient reaches α, r1, r2 from
/// dL/dŴ by the chain rule of Ŵ_ij = r1_i·r2_j·(α_i·s_ij + μ_i) over binarized columns.
/// Linears without parameters stay float (in both paths).
public enum BlockwiseScaleOptimizer {
    /// Optimises `parameters` (keyed by canonical linear name, `layers/3/attention/q_proj`)
    /// against the float model `weights` over token `windows`; returns the same keys with
    /// learned α, r1, r2. `report` receives one entry per processed block.
    public static func optimize(weights: some WeightSource, parameters: [String: BinarizationParameters],
                                windows: [[Int]], settings: BlockwiseSettings = BlockwiseSettings(),
                                report: ((BlockwiseBlockReport) -> Void)? = nil)
        throws(PTQError) -> [String: BinarizationParameters]
    {
        let c = weights.config
        guard c.architecture == .llama else {
            throw PTQError("block-wise scale optimisation needs a llama model, got \(c.architecture.rawValue)")
        }
        guard settings.epochs >= 1 else { throw PTQError("blockwise: epochs must be at least 1 (got \(settings.epochs))") }
        guard settings.learningRateAlpha >= 0, settings.learningRateScales >= 0, settings.weightDecay >= 0 else {
            throw PTQError("blockwise: learning rates and weight decay must be non-negative")
        }
        guard !windows.isEmpty, windows.allSatisfy({ !$0.isEmpty }) else {
            throw PTQError("blockwise: need at least one non-empty calibration window")
        }
        if let bad = windows.joined().first(where: { $0 < 0 || $0 >= c.vocabSize }) {
            throw PTQError("blockwise: token id \(bad) is outside the vocabulary (0..<\(c.vocabSize))")
        }
        if let long = windows.first(where: { $0.count > c.maxPositions }) {
            throw PTQError("blockwise: a window of \(long.count) tokens is longer than max_positions \(c.maxPositions)")
        }
        var lastLayer = -1
        for (name, p) in parameters {
            let parts = name.split(separator: "/")
            guard parts.count == 4, parts[0] == "layers", let l = Int(parts[1]), l >= 0, l < c.layerCount,
                  TensorNames.linearKinds.contains("\(parts[2])/\(parts[3])") else {
                throw PTQError("blockwise: '\(name)' is not a decoder-block linear of this model")
            }
            let shape = try weightShape(c, name)
            guard p.rows == shape.0, p.columns == shape.1 else {
                throw PTQError("blockwise: parameters of '\(name)' are \(p.rows)×\(p.columns), the layer is \(shape.0)×\(shape.1)")
            }
            lastLayer = max(lastLayer, l)
        }
        var result = parameters
        guard lastLayer >= 0 else { return result }

        let D = c.hiddenSize
        let embedding = try checkedTensor(weights, TensorNames.tokenEmbedding, [c.vocabSize, D])
        var xq: [[Float]] = windows.map { tokens in
            var x = [Float](repeating: 0, count: tokens.count * D)
            for (t, id) in tokens.enumerated() { for i in 0..<D { x[t * D + i] = embedding.data[id * D + i] } }
            return x
        }
        var xfp = xq
        let trainedBlocks = (0...lastLayer).filter { l in
            TensorNames.linearKinds.contains { parameters[TensorNames.layer(l, $0)] != nil }
        }.count
        let progress = ProgressReporter("blockwise", total: trainedBlocks * settings.epochs * windows.count,
                                        quiet: settings.quiet)
        let maxT = windows.map(\.count).max()!
        let lossGradient = FloatBuffer(maxT * D), out = FloatBuffer(maxT * D)

        for l in 0...lastLayer {
            let started = Date()
            let shapes = try TensorNames.linearKinds.map { (kind) throws(PTQError) in try weightShape(c, TensorNames.layer(l, kind)) }
            var floatWeights: [[Float]] = []
            for (kind, shape) in zip(TensorNames.linearKinds, shapes) {
                floatWeights.append(try checkedTensor(weights, TensorNames.layer(l, kind) + "/weight", [shape.0, shape.1]).data)
            }
            let attentionNorm = try checkedTensor(weights, TensorNames.layer(l, "attention_norm/weight"), [D]).data
            let mlpNorm = try checkedTensor(weights, TensorNames.layer(l, "mlp_norm/weight"), [D]).data
            let floatBlock = LlamaBlock(config: c, attentionNorm: attentionNorm, mlpNorm: mlpNorm, linears:
                shapes.indices.map { i in
                    DenseLinear(weight: floatWeights[i], outFeatures: shapes[i].0, inFeatures: shapes[i].1, tracksGradient: false)
                })
            var yfp: [[Float]] = [], yfq: [[Float]] = []
            for j in windows.indices {
                yfp.append(run(floatBlock, xfp[j], D))
                yfq.append(run(floatBlock, xq[j], D))
            }

            var trainers: [Int: ScaleTrainer] = [:]
            var linears: [DenseLinear] = []
            for (i, kind) in TensorNames.linearKinds.enumerated() {
                let name = TensorNames.layer(l, kind)
                let (rows, columns) = shapes[i]
                if let p = parameters[name] {
                    let trainer = ScaleTrainer(p, settings: settings)
                    let layer = DenseLinear(weight: [Float](repeating: 0, count: rows * columns), outFeatures: rows,
                                            inFeatures: columns, tracksGradient: true)
                    layer.weight.withUnsafeMutableBufferPointer { trainer.writeWeight(into: $0.baseAddress!, salient: true) }
                    trainers[i] = trainer
                    linears.append(layer)
                } else {
                    linears.append(DenseLinear(weight: floatWeights[i], outFeatures: rows, inFeatures: columns,
                                               tracksGradient: false))
                }
            }
            let quantizedBlock = LlamaBlock(config: c, attentionNorm: attentionNorm, mlpNorm: mlpNorm, linears: linears)

            func loss(_ j: Int, gradient: UnsafeMutablePointer<Float>?) -> Double {
                let T = windows[j].count
                xq[j].withUnsafeBufferPointer { quantizedBlock.forward($0.baseAddress!, rows: T, into: out.pointer) }
                return yfp[j].withUnsafeBufferPointer { fp in
                    yfq[j].withUnsafeBufferPointer { fq in
                        BlockLoss.evaluate(quantized: out.pointer, fullPrecision: fp.baseAddress!,
                                           fullPrecisionOnQuantizedInput: fq.baseAddress!, rows: T, width: D,
                                           gradient: gradient)
                    }
                }
            }

            var initialLoss: Double?
            var firstEpochLoss = 0.0, steps = 0
            if !trainers.isEmpty {
                if settings.evaluateInitialLoss {
                    initialLoss = windows.indices.map { loss($0, gradient: nil) }.reduce(0, +) / Double(windows.count)
                }
                for epoch in 0..<settings.epochs {
                    for j in windows.indices {
                        for i in trainers.keys { linears[i].zeroGradient() }
                        let value = loss(j, gradient: lossGradient.pointer)
                        guard value.isFinite else {
                            throw PTQError("blockwise: the loss of block \(l) became \(value) at epoch \(epoch + 1), window \(j + 1); lower the learning rates")
                        }
                        if epoch == 0 { firstEpochLoss += value / Double(windows.count) }
                        quantizedBlock.backward(outputGradient: lossGradient.pointer, inputGradient: nil)
                        for (i, _) in trainers {
                            trainers[i]!.step(weightGradient: linears[i].gradient)
                            linears[i].weight.withUnsafeMutableBufferPointer {
                                trainers[i]!.writeWeight(into: $0.baseAddress!, salient: false)
                            }
                        }
                        steps += 1
                        progress.advance(detail: String(format: "block %d epoch %d loss %.5f", l, epoch + 1, value))
                    }
                }
                for (i, trainer) in trainers {
                    result[TensorNames.layer(l, TensorNames.linearKinds[i])] = trainer.parameters
                }
            }
            // Carry both paths forward; the final loss comes with the quantized path for free.
            var finalLoss = 0.0
            for j in windows.indices {
                let T = windows[j].count
                finalLoss += loss(j, gradient: nil) / Double(windows.count)
                xq[j] = Array(UnsafeBufferPointer(start: out.pointer, count: T * D))
            }
            xfp = yfp
            if !trainers.isEmpty {
                report?(BlockwiseBlockReport(layer: l, initialLoss: initialLoss, firstEpochLoss: firstEpochLoss,
                                             finalLoss: finalLoss, steps: steps, seconds: Date().timeIntervalSince(started)))
            }
        }
        return result
    }

    static func run(_ block: LlamaBlock, _ x: [Float], _ D: Int) -> [Float] {
        let T = x.count / D
        var y = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { block.forward(xp.baseAddress!, rows: T, into: $0.baseAddress!) } }
        return y
    }

    static func weightShape(_ c: ModelConfig, _ name: String) throws(PTQError) -> (Int, Int) {
        guard let shape = c.expectedTensors.first(where: { $0.name == name + "/weight" })?.shape else {
            throw PTQError("'\(name)' is not a linear layer of this model")
        }
        return (shape[0], shape[1])
    }

    static func checkedTensor(_ weights: some WeightSource, _ name: String, _ shape: [Int]) throws(PTQError) -> Tensor {
        let t = try weights.tensor(name)
        guard t.shape == shape, t.data.count == shape.reduce(1, *) else {
            throw PTQError("tensor '\(name)' has shape \(t.shape), expected \(shape)")
        }
        return t
    }
}

/// α, r1, r2 of one layer with their AdamW states; writes Ŵ and maps dL/dŴ to their gradients.
struct ScaleTrainer {
    private(set) var parameters: BinarizationParameters
    private let binaryColumns: [Int]
    private var alphaOptimizer, rowOptimizer, columnOptimizer: AdamW
    private var gradientAlpha: [Float], gradientRow: [Float], gradientColumn: [Float]
    private var columnAccumulator: [Double]

    init(_ p: BinarizationParameters, settings: BlockwiseSettings) {
        parameters = p
        binaryColumns = (0..<p.columns).filter { !p.salientMask[$0] }
        alphaOptimizer = AdamW(count: p.rows, learningRate: settings.learningRateAlpha, weightDecay: settings.weightDecay)
        rowOptimizer = AdamW(count: p.rows, learningRate: settings.learningRateScales, weightDecay: settings.weightDecay)
        columnOptimizer = AdamW(count: p.columns, learningRate: settings.learningRateScales, weightDecay: settings.weightDecay)
        gradientAlpha = [Float](repeating: 0, count: p.rows)
        gradientRow = gradientAlpha
        gradientColumn = [Float](repeating: 0, count: p.columns)
        columnAccumulator = [Double](repeating: 0, count: p.columns)
    }

    /// Ŵ into `w` (`rows × columns`), the same float operations as `BinarizationParameters.value`;
    /// the fixed salient columns only when `salient`.
    func writeWeight(into w: UnsafeMutablePointer<Float>, salient: Bool) {
        let p = parameters, n = p.columns
        p.signs.withUnsafeBufferPointer { signs in
        p.columnScale.withUnsafeBufferPointer { r2 in
            for i in 0..<p.rows {
                let r1 = p.rowScale[i], a = p.alpha[i], mu = p.mean[i]
                let row = w + i * n, s = signs.baseAddress! + i * n
                for j in binaryColumns { row[j] = r1 * r2[j] * (a * s[j] + mu) }
                if salient {
                    let delta = p.salientScale[i], z = p.salientZero[i]
                    for j in 0..<n where p.salientMask[j] { row[j] = delta * (Float(p.salientCodes[i * n + j]) - z) }
                    let k = p.outlierColumns.count
                    for (t, j) in p.outlierColumns.enumerated() { row[j] = p.outlierValues[i * k + t] }
                }
            }
        }}
    }

    /// The chain rule from dL/dŴ, then one AdamW step of each group.
    mutating func step(weightGradient dW: [Float]) {
        computeGradients(weightGradient: dW)
        alphaOptimizer.update(&parameters.alpha, gradients: gradientAlpha)
        rowOptimizer.update(&parameters.rowScale, gradients: gradientRow)
        columnOptimizer.update(&parameters.columnScale, gradients: gradientColumn)
    }

    /// dL/dα, dL/dr1, dL/dr2 from dL/dŴ (salient columns get 0 for r2).
    func gradients(weightGradient dW: [Float]) -> (alpha: [Float], rowScale: [Float], columnScale: [Float]) {
        var copy = self
        copy.computeGradients(weightGradient: dW)
        return (copy.gradientAlpha, copy.gradientRow, copy.gradientColumn)
    }

    private mutating func computeGradients(weightGradient dW: [Float]) {
        let p = parameters, n = p.columns
        for j in columnAccumulator.indices { columnAccumulator[j] = 0 }
        dW.withUnsafeBufferPointer { g in
        p.signs.withUnsafeBufferPointer { signs in
        p.columnScale.withUnsafeBufferPointer { r2 in
        columnAccumulator.withUnsafeMutableBufferPointer { dr2 in
            for i in 0..<p.rows {
                let r1 = Double(p.rowScale[i]), a = Double(p.alpha[i]), mu = Double(p.mean[i])
                let gr = g.baseAddress! + i * n, s = signs.baseAddress! + i * n
                var da: Double = 0, dr1: Double = 0
                for j in binaryColumns {
                    let gij = Double(gr[j]), sij = Double(s[j]), base = a * sij + mu
                    da += gij * Double(r2[j]) * sij
                    dr1 += gij * Double(r2[j]) * base
                    dr2[j] += gij * r1 * base
                }
                gradientAlpha[i] = Float(da * r1)
                gradientRow[i] = Float(dr1)
            }
        }}}}
        for j in 0..<n { gradientColumn[j] = Float(columnAccumulator[j]) }
    }
}

/// A weight source that serves the float model with each linear in `parameters` replaced by its
/// dequantized Ŵ (`BinarizationParameters.dequantized()`) as a float layer: PTQ1.61 in simulation,
/// for measuring training before the packed kernel exists. Not a quantized runtime.
public struct SimulatedBinarizationWeights<Base: WeightSource>: WeightSource {
    public let base: Base
    public let parameters: [String: BinarizationParameters]

    public init(base: Base, parameters: [String: BinarizationParameters]) {
        self.base = base
        self.parameters = parameters
    }

    public var config: ModelConfig { base.config }
    public var tokenizer: TokenizerSpec { base.tokenizer }
    public func tensor(_ name: String) throws(PTQError) -> Tensor { try base.tensor(name) }
    public func linear(_ name: String) throws(PTQError) -> any LinearOp {
        guard let p = parameters[name] else { return try base.linear(name) }
        return FloatLinear(weight: Tensor(shape: [p.rows, p.columns], data: p.dequantized()))
    }
}
