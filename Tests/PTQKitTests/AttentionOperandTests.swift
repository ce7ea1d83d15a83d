import Foundation
import Testing
@testable import Calibration
@testable import PTQKit

/// Fully quantized attention simulated with the reference encoders and dequantizers: Q, K, V
/// fake-quantized per head, float products. What the code-domain kernels must compute.
final class SimulatedAttentionOp: HeadAwareAttentionOp, @unchecked Sendable {
    let site: QuantizedActivationSite
    init(_ site: QuantizedActivationSite) { self.site = site }

    func scores(head: Int, queries: UnsafePointer<Float>, rows: Int, keys: UnsafePointer<Float>, columns: Int,
                width: Int, stride: Int, alpha: Float, into scores: UnsafeMutablePointer<Float>) -> Bool {
        guard let q = site.query, let k = site.key else { return false }
        for t in 0..<rows {
            for j in 0..<columns {
                var s: Double = 0
                for d in 0..<width {
                    let a = q.value(code: q.code(queries[t * stride + d], head: head), head: head)
                    let b = k.value(code: k.code(keys[j * stride + d], head: head), head: head)
                    s += Double(a) * Double(b)
                }
                scores[t * columns + j] = alpha * Float(s)
            }
        }
        return true
    }

    func multiply(head: Int, probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                  valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
        let p = site.quantizer
        for t in 0..<rows {
            for d in 0..<width {
                var s: Double = 0
                for j in 0..<columns {
                    var v = values[j * valueStride + d]
                    if let vq = site.value { v = vq.value(code: vq.code(v, head: head), head: head) }
                    s += Double(p.value(code: p.code(probabilities[t * columns + j]))) * Double(v)
                }
                out[t * outStride + d] = Float(s)
            }
        }
    }

    func multiply(probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                  valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
        multiply(head: 0, probabilities: probabilities, rows: rows, columns: columns, values: values,
                 valueStride: valueStride, width: width, into: out, outStride: outStride)
    }
}

/// A packed model's weights with the attention sites simulated by the reference quantizers.
struct SimulatedAttentionWeights: WeightSource {
    let packed: PackedModel
    var config: ModelConfig { packed.config }
    var tokenizer: TokenizerSpec { packed.tokenizer }
    func tensor(_ name: String) throws(PTQError) -> Tensor { try PackedWeights(packed).tensor(name) }
    func linear(_ name: String) throws(PTQError) -> any LinearOp { try PackedWeights(packed).linear(name) }
    func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)? {
        packed.activationSites[QuantizationPoints.attentionProbabilities(layer)].map { SimulatedAttentionOp($0) }
    }
}

@Suite("Fully quantized attention")
struct AttentionOperandTests {
    static func operand(bits: Int, heads: Int, seed: UInt64) throws -> PerHeadUniformQuantizer {
        var rng = SeededGenerator(seed: seed)
        let ranges = (0..<heads).map { _ in (low: rng.float(in: -3 ... -0.5), high: rng.float(in: 0.5...4)) }
        return try PerHeadUniformQuantizer.fitting(bits: bits, ranges: ranges)
    }

    /// The reference encoder/dequantizer: round trip within half a step inside the range, codes
    /// clamped outside, zero exactly representable.
    @Test func referenceQuantizerRoundTrip() throws {
        let q = try PerHeadUniformQuantizer.fitting(bits: 4, ranges: [(low: -1.5, high: 3)])
        #expect(q.scales[0] == 4.5 / 15 && q.zeroPoints[0] == 5)
        #expect(q.value(code: q.code(0, head: 0), head: 0) == 0)
        for x in stride(from: Float(-1.4), through: 2.9, by: 0.037) {
            #expect(abs(q.value(code: q.code(x, head: 0), head: 0) - x) <= q.scales[0] / 2 + 1e-6)
        }
        #expect(q.code(100, head: 0) == 15 && q.code(-100, head: 0) == 0)
        #expect(throws: PTQError.self) { try PerHeadUniformQuantizer(bits: 4, scales: [0.1], zeroPoints: [16]) }
        #expect(throws: PTQError.self) { try PerHeadUniformQuantizer(bits: 4, scales: [0.1, 0.2], zeroPoints: [1]) }
    }

    /// Integer Q·Kᵀ (codes, zero points applied after the integer sum) equals the product of
    /// the reference-dequantized operands, at 4 and 8 bits, for every head.
    @Test(arguments: [4, 8])
    func integerScoresMatchSimulation(bits: Int) throws {
        let heads = 3, width = 7, stride = heads * width, rows = 9, columns = 11
        let query = try Self.operand(bits: bits, heads: heads, seed: 1), key = try Self.operand(bits: bits, heads: heads, seed: 2)
        var rng = SeededGenerator(seed: 3)
        let q = (0..<(rows * stride)).map { _ in rng.float(in: -3...4) }
        let k = (0..<(columns * stride)).map { _ in rng.float(in: -3...4) }
        let site = QuantizedActivationSite(point: "layers.0.attention.probs", method: "adalog",
                                           quantizer: .adalog(try AdaLogQuantizer(bits: 4, q: 23)), query: query, key: key)
        let kernel = CodeDomainAttention(site.quantizer, query: query, key: key)
        let simulated = SimulatedAttentionOp(site)
        for h in 0..<heads {
            var got = [Float](repeating: .nan, count: rows * columns), want = got
            let done = q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in
                kernel.scores(head: h, queries: qp.baseAddress! + h * width, rows: rows, keys: kp.baseAddress! + h * width,
                              columns: columns, width: width, stride: stride, alpha: 0.3, into: &got)
            }}
            #expect(done)
            _ = q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in
                simulated.scores(head: h, queries: qp.baseAddress! + h * width, rows: rows, keys: kp.baseAddress! + h * width,
                                 columns: columns, width: width, stride: stride, alpha: 0.3, into: &want)
            }}
            for i in got.indices { #expect(abs(got[i] - want[i]) <= 1e-4 * max(1, abs(want[i]))) }
        }
        // Without Q/K quantizers the op leaves Q·Kᵀ to the model.
        var unused = [Float](repeating: 0, count: rows * columns)
        #expect(!CodeDomainAttention(site.quantizer).scores(head: 0, queries: q, rows: rows, keys: k, columns: columns,
                                                             width: width, stride: stride, alpha: 1, into: &unused))
    }

    /// P codes × V codes with integer bucket sums equals P̂·V̂ from the reference dequantizers.
    @Test(arguments: ["adalog", "uniform"])
    func codeTimesCodeMatchesSimulation(format: String) throws {
        let heads = 2, width = 6, stride = heads * width, rows = 10, columns = 23
        let p = softmaxRows(rows: rows, columns: columns, seed: 5)
        var rng = SeededGenerator(seed: 6)
        let v = (0..<(columns * stride)).map { _ in rng.float(in: -2...3) }
        let quantizer: PositiveActivationQuantizer = format == "adalog"
            ? .adalog(try AdaLogQuantizer(bits: 4, q: 19)) : .uniform(try UniformPositiveQuantizer(bits: 4, scale: 0.03))
        let value = try Self.operand(bits: 4, heads: heads, seed: 7)
        let site = QuantizedActivationSite(point: "layers.0.attention.probs", method: format, quantizer: quantizer, value: value)
        let kernel = CodeDomainAttention(quantizer, value: value), simulated = SimulatedAttentionOp(site)
        for h in 0..<heads {
            var got = [Float](repeating: .nan, count: rows * stride), want = got
            v.withUnsafeBufferPointer { vp in
                kernel.multiply(head: h, probabilities: p, rows: rows, columns: columns, values: vp.baseAddress! + h * width,
                                valueStride: stride, width: width, into: &got[h * width], outStride: stride)
                simulated.multiply(head: h, probabilities: p, rows: rows, columns: columns, values: vp.baseAddress! + h * width,
                                   valueStride: stride, width: width, into: &want[h * width], outStride: stride)
            }
            for t in 0..<rows {
                for d in 0..<width { #expect(abs(got[t * stride + h * width + d] - want[t * stride + h * width + d]) <= 1e-5) }
            }
        }
    }

    /// FPCS on an operand whose optimum is known by brute force: values on the 4-bit grid of
    /// [−1, 2] (s = 0.2) plus one far outlier, whose clipping error pulls the optimum off that
    /// grid. FPCS reaches the optimum of a fine scan (every zero point of the grid × scales
    /// 0.15…3 in steps of 1e-3), beats its own starting grid and min–max.
    @Test func operandSearchFindsKnownOptimumAndClipsOutlier() throws {
        var values: [Float] = []
        for i in 0..<4000 { values.append(-1 + 0.2 * Float(i % 16)) }
        values.append(40)
        func error(_ c: FPCS.Candidate) -> Double {
            var e: Double = 0
            for (a, b) in zip(AttentionOperandSearch.simulate(values, c, bits: 4), values) { e += Double(a - b) * Double(a - b) }
            return e
        }
        let grid = AttentionOperandSearch.grid(values, bits: 4)
        #expect(grid.candidates.count == 128 && Set(grid.candidates.map(\.zero)) == Set(4...11))
        var best = (candidate: FPCS.Candidate(scale: 1, zero: 0), error: Double.infinity)
        for z in 4...11 {
            for i in 0...2850 {
                let c = FPCS.Candidate(scale: 0.15 + Float(i) * 1e-3, zero: z)
                let e = error(c)
                if e < best.error { best = (c, e) }
            }
        }
        let found = FPCS.search(initial: [grid.candidates], initialStep: [grid.step]) { lists in [lists[0].map(error)] }[0]
        #expect(found.candidate.zero == best.candidate.zero)
        #expect(found.error <= best.error * 1.001)
        #expect(found.error <= grid.candidates.map(error).min()!)
        #expect(found.error < error(FPCS.Candidate(scale: 41 / 15, zero: 0)))    // min–max [−1, 40]
        #expect(found.candidate.scale * Float(15 - found.candidate.zero) < 40)     // the outlier is clipped
    }

    /// Quantize → pack → load on a synthetic BERT with Q, K, V quantized: the per-head
    /// quantizers are stored and shown, and the packed runtime matches the simulated one.
    @Test func pipelineStoresOperandsAndRuntimeMatchesSimulation() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp(bert: true)
        let recipePath = try PipelineFixtures.recipe(folder, name: "fqa", model: "bert", body: """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        attention_probs: {quantizer: adalog, bits: 4, samples: 3, query_key_bits: 4, value_bits: 4}
        """)
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: PTQ.RecipeContext(path: recipePath), quiet: true)
        let path = folder + "/fqa.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let stored = try PackedFile.read(path: path)
        #expect(stored.activationSites == outcome.packed.activationSites)
        let site = try #require(stored.activationSites["layers.0.attention.probs"])
        let heads = stored.config.headCount
        #expect(site.query?.heads == heads && site.key?.heads == heads && site.value?.heads == heads)
        #expect(site.query?.bits == 4 && site.details["qk_scores_relative_mse"] != nil)
        let summary = try PackedFile.summary(path: path)
        #expect(summary.activationSites.first?.value == site.value)

        guard let runtime = try PTQ.loadAnyModel(path: path) as? BertModel else { Issue.record("not bert"); return }
        let simulated = try BertModel(weights: SimulatedAttentionWeights(packed: stored))
        let tokens = [2, 5, 6, 7, 8, 10, 9, 13, 3]
        let a = runtime.embed(tokens: tokens), b = simulated.embed(tokens: tokens)
        for i in a.indices { #expect(abs(a[i] - b[i]) <= 1e-4) }
        // And the quantized operands change the model: float Q/K/V give another embedding.
        let probabilitiesOnly = try BertModel(weights: SimulatedSiteWeights(packed: stored))
        let c = probabilitiesOnly.embed(tokens: tokens)
        #expect(zip(a, c).map { abs($0 - $1) }.max()! > 1e-4)
    }

    /// Two quantizations of the same model with the same recipe give identical bytes (the
    /// provenance timestamp aside, which is set equal here).
    @Test func quantizationIsDeterministic() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp(bert: true)
        let recipePath = try PipelineFixtures.recipe(folder, name: "det", model: "bert", body: """
        scheme: {method: rtn, weight: {bits: 4}, activation: {bits: 4, granularity: per_tensor}}
        rules:
          - targets: ["layers/*/mlp/down_proj"]
            method: adalog
            weight: {bits: 4, symmetric: false, group_size: channel}
            activation: {bits: 4, granularity: per_tensor}
        attention_probs: {quantizer: adalog, bits: 4, samples: 3, query_key_bits: 4, value_bits: 4}
        """)
        var files: [Data] = [], models: [PackedModel] = []
        for i in 0..<2 {
            var packed = try PTQ.quantize(checkpoint: checkpoint, recipe: PTQ.RecipeContext(path: recipePath), quiet: true).packed
            packed.metadata["created"] = "fixed"
            models.append(packed)
            let path = folder + "/det\(i).ptq"
            try PackedFile.write(packed, to: path)
            files.append(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
        for (name, layer) in models[0].quantizedLinears where models[1].quantizedLinears[name] != layer {
            Issue.record("\(name) differs: \(layer.details) vs \(models[1].quantizedLinears[name]?.details ?? [:])")
        }
        for (point, site) in models[0].activationSites where models[1].activationSites[point] != site {
            Issue.record("\(point) differs: \(site) vs \(String(describing: models[1].activationSites[point]))")
        }
        #expect(files[0].count > 0 && files[0] == files[1])
    }

    /// The reservoir seed of a point is a fixed function of the seed and the name (FNV-1a), not
    /// `String.hashValue`, which differs between processes: these constants hold in every run.
    @Test func reservoirSeedIsStableAcrossProcesses() {
        #expect(StatisticsCollector.reservoirSeed(0, point: "") == 0x2325)
        #expect(StatisticsCollector.reservoirSeed(0, point: "a") == 0xec8c)
        #expect(StatisticsCollector.reservoirSeed(7, point: "a") == 0xec8c + 7)
        #expect(StatisticsCollector.reservoirSeed(0, point: "layers.0.mlp.down_proj.input")
                != StatisticsCollector.reservoirSeed(0, point: "layers.1.mlp.down_proj.input"))
    }

    /// The recipe fields parse, and LLaMA recipes asking for them are refused naming the field.
    @Test func recipeFieldsAndLlamaRefusal() throws {
        let base = "name: x\nmodel: bert\nscheme: {method: rtn, weight: {bits: 8}}\n"
        let ok = try Recipe.parse(base + "attention_probs: {quantizer: adalog, bits: 4, query_key_bits: 6, value_bits: 5}",
                                  source: "r.yaml")
        #expect(ok.attentionProbabilities?.queryKeyBits == 6 && ok.attentionProbabilities?.valueBits == 5)
        let bad = #expect(throws: PTQError.self) {
            try Recipe.parse(base + "attention_probs: {quantizer: adalog, bits: 4, value_bits: 1}", source: "r.yaml")
        }
        #expect(bad?.description.contains("value_bits") == true)

        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipePath = try PipelineFixtures.recipe(folder, name: "llama-fqa", body: """
        scheme: {method: rtn, weight: {bits: 8}}
        attention_probs: {quantizer: adalog, bits: 4, samples: 2, query_key_bits: 4}
        """)
        let error = #expect(throws: PTQError.self) {
            try PTQ.quantize(checkpoint: checkpoint, recipe: PTQ.RecipeContext(path: recipePath), quiet: true)
        }
        #expect(error?.description.contains("query_key_bits") == true)
    }
}
