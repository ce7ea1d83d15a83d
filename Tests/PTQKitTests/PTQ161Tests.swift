import Foundation
import Testing
import Calibration
import Kernels
@testable import PTQKit
import Quantizers
@testable import Recipes

/// PTQ1.61's quantizer (none / layer-wise) and the partial-binarization baselines.
@Suite("PTQ161")
struct PTQ161Tests {
    /// ‖X·Wᵀ − X·Ŵᵀ‖² / ‖X·Wᵀ‖² for row-major `w`, `q` `[out, n]`.
    static func outputError(_ x: [Float], rows: Int, w: [Float], q: [Float], out: Int, n: Int) -> Double {
        var error = 0.0, total = 0.0
        for r in 0..<rows {
            for o in 0..<out {
                var a = 0.0, b = 0.0
                for j in 0..<n {
                    a += Double(x[r * n + j]) * Double(w[o * n + j])
                    b += Double(x[r * n + j]) * Double(q[o * n + j])
                }
                error += (a - b) * (a - b)
                total += a * a
            }
        }
        return error / total
    }

    static func plan(_ method: String, _ parameters: [String: RecipeValue] = [:], out: Int, n: Int) -> LayerPlan {
        let entries = parameters.sorted(by: { $0.key < $1.key }).map {
            MethodParameters.Entry(key: $0.key, keyLine: 1, path: "p.\($0.key)", value: $0.value)
        }
        let p = MethodParameters(source: "t", path: "p", method: method, line: 1, entries: entries)
        return LayerPlan(name: "layers/0/mlp/up_proj", role: .mlpInputProjection, inputPoint: "layers.0.mlp.input",
                         method: method, weight: WeightScheme(bits: 4, symmetric: false),
                         activation: nil, parameters: p, ruleLine: nil, outFeatures: out, inFeatures: n, hasBias: false)
    }

    static let out = 24, n = 64, rows = 300

    static func fixture() -> (w: Tensor, x: [Float], stats: PointStatistics) {
        var rng = SeededGenerator(seed: 7)
        let w = Tensor(shape: [out, n], data: (0..<(out * n)).map { _ in rng.float(in: -0.1...0.1) })
        let x = GPTQTests.inputs(rows: rows, channels: n, seed: 3)
        let stats = PointStatistics(channels: n, kinds: [.channelRange, .gram])
        x.withUnsafeBufferPointer { stats.add($0, rows: rows) }
        return (w, x, stats)
    }

    @Test func layerwiseLowersTheOutputError() throws {
        let (w, x, stats) = Self.fixture()
        let layer = LinearLayer(name: "layers/0/mlp/up_proj", weight: w, bias: nil, inputPoint: "p", role: .mlpInputProjection)
        var errors: [String: Double] = [:]
        for mode in ["none", "layerwise"] {
            let q = try PTQ161Quantizer(plan: Self.plan("ptq161", ["optimization": .string(mode, line: 1)], out: Self.out, n: Self.n))
            let linear = try q.quantize(layer, statistics: stats)
            guard case .binary(let b) = linear.weight else { Issue.record("not binary"); return }
            try linear.validate()
            // 20 % of 64 columns → ⌊12.8⌋ + 1 = 13 salient columns (ties aside).
            #expect(b.salientMask.filter { $0 }.count >= 13)
            errors[mode] = Self.outputError(x, rows: Self.rows, w: w.data, q: b.dequantizedReference(), out: Self.out, n: Self.n)
        }
        let none = try #require(errors["none"]), layerwise = try #require(errors["layerwise"])
        #expect(layerwise < 0.8 * none, "layerwise \(layerwise) vs none \(none)")
        // The seam's parameters reproduce the optimised layer.
        let p0 = try PTQ161Quantizer.initialParameters(for: layer, statistics: stats, salientRatio: 0.2, salientBits: 4)
        let result = LayerwiseBinarization().optimize(p0, weight: w.data, hessian: stats.gram!)
        #expect(result.after < result.before)
        #expect(result.parameters.salientCodes == p0.salientCodes && result.parameters.mean == p0.mean)
    }

    /// `outlier_threshold` keeps a massive-activation input channel's weights in float16 and cuts
    /// the layer-output error it would otherwise carry.
    @Test func outlierThresholdKeepsMassiveChannelsInFloat16() throws {
        var (w, x, _) = Self.fixture()
        for r in 0..<Self.rows { x[r * Self.n + 5] *= 400 }  // channel 5: a massive activation
        for o in 0..<Self.out { w.data[o * Self.n + 5] *= 3 }
        let stats = PointStatistics(channels: Self.n, kinds: [.channelRange, .gram])
        x.withUnsafeBufferPointer { stats.add($0, rows: Self.rows) }
        let layer = LinearLayer(name: "layers/0/mlp/up_proj", weight: w, bias: nil, inputPoint: "p", role: .mlpInputProjection)
        var errors: [Double] = []
        for threshold in [0.0, 50.0] {
            let q = try PTQ161Quantizer(plan: Self.plan("ptq161", ["optimization": .string("none", line: 1),
                                                                   "outlier_threshold": .double(threshold, line: 1)],
                                                        out: Self.out, n: Self.n))
            let linear = try q.quantize(layer, statistics: stats)
            try linear.validate()
            guard case .binary(let b) = linear.weight else { Issue.record("not binary"); return }
            #expect(b.outlierColumns == (threshold > 0 ? [5] : []))
            #expect(linear.details["float16_columns"] == (threshold > 0 ? "5" : nil))
            errors.append(Self.outputError(x, rows: Self.rows, w: w.data, q: b.dequantizedReference(), out: Self.out, n: Self.n))
        }
        #expect(errors[1] < 0.5 * errors[0], "with float16 column \(errors[1]) vs without \(errors[0])")
    }

    /// `optimization: blockwise` runs through `PTQ.quantize`: the Training optimiser learns α, r1,
    /// r2 block by block, the packed layers record the block loss, and the packed model is closer
    /// to the float model than the reference's initialisation (`none`) on the same mask.
    @Test func blockwiseRunsInThePipelineAndBeatsTheInitialisation() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        var recipe: PTQ.RecipeContext?
        func packed(_ name: String, _ parameters: String) throws -> PackedModel {
            let path = try PipelineFixtures.recipe(folder, name: name, body: """
                scheme:
                  method: ptq161
                  weight: {bits: 4, symmetric: false}
                  parameters: {\(parameters)}
                """)
            recipe = try PTQ.RecipeContext(path: path)
            return try PTQ.quantize(checkpoint: checkpoint, recipe: recipe!, quiet: true).packed
        }
        let none = try packed("none", "optimization: none")
        let blockwise = try packed("blockwise", "optimization: blockwise, train_samples: 4, train_seq_len: 32, "
                                   + "epochs: 4, lr_alpha: 0.01, lr_scales: 0.01")
        let q = try #require(blockwise.quantizedLinears["layers/1/mlp/down_proj"])
        #expect(q.details["optimization"] == "blockwise")
        // Every block's loss fell ("initial -> final").
        for layer in blockwise.quantizedLinears.values {
            let losses = try #require(layer.details["block_loss"]).components(separatedBy: " -> ").compactMap(Double.init)
            #expect(losses.count == 2 && losses[1] < losses[0], "\(layer.name): \(losses)")
        }
        #expect(q.details["blockwise_budget"] == "4×32 tokens × 4 epochs")
        guard case .binary(let learned) = q.weight, case .binary(let initial) = none.quantizedLinears[q.name]?.weight else {
            Issue.record("ptq161 layers are stored as binary"); return
        }
        // Same mask, signs and salient codes; only the scales moved.
        #expect(learned.salientMask == initial.salientMask && learned.signs == initial.signs
                && learned.salientCodes == initial.salientCodes)
        #expect(learned.scale != initial.scale)

        let reference = try #require(try PTQ.loadModel(path: checkpoint) as? LlamaModel)
        // Held-out windows of the calibration text (what the scales were fitted to resemble).
        let windows = try PTQ.verificationSamples(model: reference, recipe: recipe, count: 4)
        func logitError(_ model: PackedModel) throws -> Double {
            let runtime = try #require(try PTQ.loadPacked(model, source: "test") as? LlamaModel)
            var error = 0.0
            for tokens in windows {
                let a = reference.forward(tokens), b = runtime.forward(tokens)
                error += zip(a, b).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) } / Double(a.count)
            }
            return error
        }
        let noneError = try logitError(none), blockwiseError = try logitError(blockwise)
        #expect(blockwiseError < 0.9 * noneError, "blockwise \(blockwiseError) vs none \(noneError)")
    }

    /// `preprocessing_steps` runs LoRA on the pass-1 model, merges it and runs pass 2 with the
    /// pass-1 masks: the packed layers keep the masks but their signs come from new weights.
    @Test func preprocessingRetrainsAndKeepsTheMasks() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        func packed(_ name: String, _ extra: String) throws -> PackedModel {
            let path = try PipelineFixtures.recipe(folder, name: name, body: """
                scheme:
                  method: ptq161
                  weight: {bits: 4, symmetric: false}
                  parameters: {optimization: blockwise, train_samples: 2, train_seq_len: 16, epochs: 1\(extra)}
                """)
            return try PTQ.quantize(checkpoint: checkpoint, recipe: try PTQ.RecipeContext(path: path), quiet: true).packed
        }
        let plain = try packed("plain", "")
        let preprocessed = try packed("lora", ", preprocessing_steps: 3")
        let name = "layers/0/attention/q_proj"
        let detail = try #require(preprocessed.quantizedLinears[name]?.details["preprocessing"])
        #expect(detail.hasPrefix("LoRA 3 steps"))
        #expect(plain.quantizedLinears[name]?.details["preprocessing"] == nil)
        guard case .binary(let a) = plain.quantizedLinears[name]?.weight,
              case .binary(let b) = preprocessed.quantizedLinears[name]?.weight else {
            Issue.record("ptq161 layers are stored as binary"); return
        }
        #expect(a.salientMask == b.salientMask)
        #expect(a.signs != b.signs || a.salientCodes != b.salientCodes)
        // o_proj has no adapter (as the reference), but pass 2 still re-learns its scales.
        guard case .binary(let o) = preprocessed.quantizedLinears["layers/0/attention/o_proj"]?.weight,
              case .binary(let o0) = plain.quantizedLinears["layers/0/attention/o_proj"]?.weight else { return }
        #expect(o.signs == o0.signs)
    }

    @Test func blockwiseBudgetIsOnlyForBlockwise() {
        #expect { try PTQ161Quantizer(plan: Self.plan("ptq161", ["optimization": .string("layerwise", line: 3),
                                                                 "epochs": .int(3, line: 4)], out: 2, n: 2)) }
            throws: { ($0 as? PTQError)?.message.contains("only used with optimization: blockwise") == true }
    }

    @Test func pbllmMaskGridsAndErrorFeedback() throws {
        let (w, x, stats) = Self.fixture()
        let layer = LinearLayer(name: "layers/0/mlp/up_proj", weight: w, bias: nil, inputPoint: "p", role: .mlpInputProjection)
        var errors: [Bool: Double] = [:]
        for gptq in [false, true] {
            let q = try PBLLMQuantizer(plan: Self.plan("pbllm", ["gptq": .bool(gptq, line: 1)], out: Self.out, n: Self.n))
            let linear = try q.quantize(layer, statistics: stats)
            try linear.validate()
            guard case .binary(let b) = linear.weight else { Issue.record("not binary"); return }
            #expect(b.maskKind == .elements && b.salientBits == 8)
            #expect(b.salientCount == Int((0.1 * Double(Self.out * Self.n)).rounded()))
            let d = b.dequantizedReference()
            if !gptq {
                // Salient weights are the largest |w| and lie within one 8-bit step (half a step
                // inside the range; the integer zero point can shift the ends by another half).
                let smallestSalient = w.data.indices.filter { b.salientMask[$0] }.map { abs(w.data[$0]) }.min()!
                let largestOther = w.data.indices.filter { !b.salientMask[$0] }.map { abs(w.data[$0]) }.max()!
                #expect(smallestSalient >= largestOther)
                for i in w.data.indices where b.salientMask[i] {
                    #expect(abs(d[i] - w.data[i]) <= 1.0001 * b.salientScale[i / Self.n] + 1e-7)
                }
            }
            errors[gptq] = Self.outputError(x, rows: Self.rows, w: w.data, q: d, out: Self.out, n: Self.n)
        }
        #expect(errors[true]! < errors[false]!, "GPTQ feedback \(errors[true]!) vs plain \(errors[false]!)")
    }

    @Test func plainBinarization() throws {
        let w = Tensor(shape: [2, 4], data: [0.1, 0.3, -0.1, 0.5, 1, 1, 1, 1])
        let q = try BinarizeQuantizer(plan: Self.plan("binarize", out: 2, n: 4))
            .quantize(LinearLayer(name: "layers/0/mlp/up_proj", weight: w, bias: nil, inputPoint: "p", role: .mlpInputProjection), statistics: nil)
        guard case .binary(let b) = q.weight else { Issue.record("not binary"); return }
        // Row 0: μ = 0.2, α = mean |w − μ| = 0.2 → values 0.4 / 0.0; row 1 (W == μ): all +1, α = 0.
        let d = b.dequantizedReference()
        let mu = BinaryWeight.half(0.2), alpha = BinaryWeight.half(0.2)
        #expect(d[0] == mu - alpha && d[1] == mu + alpha && d[2] == mu - alpha && d[3] == mu + alpha)
        #expect(Array(d[4...]) == [1, 1, 1, 1])
        #expect(b.signs == [0, 1, 0, 1, 1, 1, 1, 1])
    }
}
