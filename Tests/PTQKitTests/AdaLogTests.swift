import Foundation
import Testing
@testable import PTQKit

/// P·V with P quantized then dequantized in a plain loop (reference encoder and dequantizer):
/// what the code-domain kernel must compute.
final class SimulatedProbabilityOp: AttentionProbabilityOp, @unchecked Sendable {
    let quantizer: PositiveActivationQuantizer
    init(_ quantizer: PositiveActivationQuantizer) { self.quantizer = quantizer }
    func multiply(probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                  valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
        for t in 0..<rows {
            for d in 0..<width {
                var s: Double = 0
                for j in 0..<columns {
                    let p = quantizer.value(code: quantizer.code(probabilities[t * columns + j]))
                    s += Double(p) * Double(values[j * valueStride + d])
                }
                out[t * outStride + d] = Float(s)
            }
        }
    }
}

/// A packed model's weights with probability sites simulated by the reference quantizer.
struct SimulatedSiteWeights: WeightSource {
    let packed: PackedModel
    var config: ModelConfig { packed.config }
    var tokenizer: TokenizerSpec { packed.tokenizer }
    func tensor(_ name: String) throws(PTQError) -> Tensor { try PackedWeights(packed).tensor(name) }
    func linear(_ name: String) throws(PTQError) -> any LinearOp { try PackedWeights(packed).linear(name) }
    func attentionProbabilityOp(layer: Int) throws(PTQError) -> (any AttentionProbabilityOp)? {
        packed.activationSites[QuantizationPoints.attentionProbabilities(layer)].map { SimulatedProbabilityOp($0.quantizer) }
    }
}

/// Softmax rows with a few masked (exact zero) keys, as attention produces.
func softmaxRows(rows: Int, columns: Int, seed: UInt64, sharpness: Float = 4) -> [Float] {
    var rng = SeededGenerator(seed: seed)
    var p = [Float](repeating: 0, count: rows * columns)
    for t in 0..<rows {
        let visible = max(1, columns - t % 3)
        var sum: Float = 0
        for j in 0..<visible { p[t * columns + j] = exp(rng.float(in: -sharpness...sharpness)); sum += p[t * columns + j] }
        for j in 0..<visible { p[t * columns + j] /= sum }
    }
    return p
}

@Suite("AdaLog")
struct AdaLogTests {
    /// The shift-and-mantissa table against the direct formula s·2^(−kq/r): each level is off by
    /// at most the mantissa rounding, 1/(2D) of its power of two, and exact for pure shifts.
    @Test(arguments: [3, 4, 6])
    func tableMatchesDirectFormula(bits: Int) throws {
        let D = Double(AdaLogQuantizer.denominator(bits: bits))
        #expect(AdaLogQuantizer.denominator(bits: 4) == 30)
        for q in [10, 23, 37, 50, 74, 111, 137] {
            let a = try AdaLogQuantizer(bits: bits, q: q, scale: 0.75)
            #expect(a.levels.count == 1 << bits)
            #expect(a.levels[a.zeroCode] == 0)
            // Levels below 1e-30 underflow float (6 bits, large bases); they are never hit by
            // probabilities above float's resolution and are not compared.
            for k in 0..<a.zeroCode where 0.75 * pow(2, -Double(k * q) / 37) > 1e-30 {
                let exact = Double(a.exactValue(code: k))
                let direct = 0.75 * pow(2, -Double(k * q) / 37)
                #expect(abs(exact - direct) <= 1e-6 * direct)
                let power = 0.75 * pow(2, -Double(k * q / 37))
                #expect(abs(Double(a.value(code: k)) - exact) <= power / (2 * D) * 1.0001 + 1e-7 * power)
                if (k * q) % 37 == 0 { #expect(a.value(code: k) == a.exactValue(code: k)) }
                #expect(a.mantissas[k] <= Int(D))
            }
            // Levels strictly decrease with the code (the encoder relies on it) until they
            // underflow float (6 bits with a large base reaches 2^−229).
            for k in 1..<a.zeroCode where a.exactValue(code: k) > 1e-30 { #expect(a.value(code: k) < a.value(code: k - 1)) }
        }
        // Fixed bases: log2 is pure shifts, log√2 alternates mantissa 1 and round(D/√2)/D.
        let log2 = try AdaLogQuantizer(bits: bits, q: 1, r: 1)
        for k in 0..<log2.zeroCode { #expect(log2.value(code: k) == Float(pow(2, -Double(k)))) }
        let sqrt2 = try AdaLogQuantizer(bits: bits, q: 1, r: 2)
        #expect(sqrt2.value(code: 3) == Float((0.5.squareRoot() * D).rounded() / D / 2))
    }

    /// The threshold encoder is `round(−log_b(x/s))` with underflow to the reserved zero code.
    @Test func thresholdEncoderMatchesFormula() throws {
        var rng = SeededGenerator(seed: 11)
        for (bits, q) in [(3, 37), (4, 19), (4, 100), (6, 13)] {
            let a = try AdaLogQuantizer(bits: bits, q: q)
            let f = PositiveActivationQuantizer.adalog(a)
            for _ in 0..<2000 {
                let x = Float(pow(2, Double(rng.float(in: -40...0.5))))
                #expect(f.code(x) == a.referenceCode(x), "x \(x) bits \(bits) q \(q)")
            }
            #expect(f.code(0) == a.zeroCode)
            #expect(f.code(1) == 0)
            #expect(f.code(1e-30) == a.zeroCode)
        }
        #expect(throws: PTQError.self) { try AdaLogQuantizer(bits: 9, q: 37) }
        #expect(throws: PTQError.self) { try AdaLogQuantizer(bits: 4, q: 0) }
        #expect(throws: PTQError.self) { try AdaLogQuantizer(bits: 4, q: 37, scale: .nan) }
    }

    /// The code-domain P·V kernel (SIMD encoder, grouping by code) against the simulated product.
    @Test(arguments: ["adalog", "uniform"])
    func codeDomainKernelMatchesSimulation(format: String) throws {
        let rows = 13, columns = 37, width = 11, stride = 19
        let p = softmaxRows(rows: rows, columns: columns, seed: 3)
        var rng = SeededGenerator(seed: 4)
        let v = (0..<(columns * stride)).map { _ in rng.float(in: -2...2) }
        let quantizer: PositiveActivationQuantizer = format == "adalog"
            ? .adalog(try AdaLogQuantizer(bits: 4, q: 23)) : .uniform(try UniformPositiveQuantizer(bits: 4, scale: 0.02))
        var got = [Float](repeating: .nan, count: rows * 15), want = got
        let kernel = CodeDomainAttention(quantizer), simulated = SimulatedProbabilityOp(quantizer)
        var codes = [UInt8](repeating: 0, count: rows * columns)
        kernel.encode(p, count: p.count, into: &codes)
        for i in 0..<p.count { #expect(Int(codes[i]) == quantizer.code(p[i])) }
        kernel.multiply(probabilities: p, rows: rows, columns: columns, values: v, valueStride: stride, width: width,
                        into: &got, outStride: 15)
        simulated.multiply(probabilities: p, rows: rows, columns: columns, values: v, valueStride: stride, width: width,
                           into: &want, outStride: 15)
        for t in 0..<rows {
            for d in 0..<width { #expect(abs(got[t * 15 + d] - want[t * 15 + d]) <= 1e-5) }
            for d in width..<15 { #expect(got[t * 15 + d].isNaN) }  // outside the head: untouched
        }
    }

    /// The batched scorer's choice equals the brute-force minimum of ‖(P̂−P)·V‖² over the q grid,
    /// and it leaves the float product as the output.
    @Test func searchFindsGridOptimum() throws {
        let rows = 8, columns = 24, width = 6
        let p = softmaxRows(rows: rows, columns: columns, seed: 9, sharpness: 6)
        var rng = SeededGenerator(seed: 10)
        let v = (0..<(columns * width)).map { _ in rng.float(in: -1...1) }
        let candidates = try AttentionProbabilitySearch.candidates(method: "adalog", bits: 3)
        #expect(candidates.count == 128)
        let scorer = AttentionProbabilitySearch.Scorer(candidates: candidates, rowsPerHead: rows)
        var out = [Float](repeating: 0, count: rows * width)
        scorer.multiply(probabilities: p, rows: rows, columns: columns, values: v, valueStride: width, width: width,
                        into: &out, outStride: width)
        var bruteErrors: [Double] = []
        for c in candidates {
            var e: Double = 0
            for t in 0..<rows {
                for d in 0..<width {
                    var s: Double = 0
                    for j in 0..<columns {
                        s += Double(c.value(code: c.code(p[t * columns + j])) - p[t * columns + j]) * Double(v[j * width + d])
                    }
                    e += s * s
                }
            }
            bruteErrors.append(e)
        }
        let brute = bruteErrors.indices.min { bruteErrors[$0] < bruteErrors[$1] }!
        #expect(scorer.best.index == brute)
        for c in candidates.indices { #expect(abs(scorer.errors[c] - bruteErrors[c]) <= 1e-4 * max(bruteErrors[c], 1e-6)) }
        // The grid optimum is interior here (neither the smallest nor the largest base).
        #expect(brute > 0 && brute < 127)
        for t in 0..<rows {
            for d in 0..<width {
                var s: Float = 0
                for j in 0..<columns { s += p[t * columns + j] * v[j * width + d] }
                #expect(abs(out[t * width + d] - s) <= 1e-5)
            }
        }
    }

    /// Quantize → pack → load on a synthetic LLaMA and BERT: the sites are stored, shown by
    /// inspect, and the packed runtime matches the simulated quantizer.
    @Test(arguments: [false, true])
    func pipelineStoresSitesAndRuntimeMatchesSimulation(bert: Bool) throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp(bert: bert)
        let recipePath = try PipelineFixtures.recipe(folder, name: "adalog", model: bert ? "bert" : "llama", body: """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        attention_probs: {quantizer: adalog, bits: 4, samples: 3, rows_per_head: 4}
        """)
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: PTQ.RecipeContext(path: recipePath), quiet: true)
        #expect(outcome.packed.activationSites.count == 2)
        let path = folder + "/adalog.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let stored = try PackedFile.read(path: path)
        #expect(stored.activationSites == outcome.packed.activationSites)
        let site = try #require(stored.activationSites["layers.1.attention.probs"])
        guard case .adalog(let a) = site.quantizer else { Issue.record("not adalog"); return }
        #expect(a.bits == 4 && a.r == 37 && a.scale == 1 && AdaLogQuantizer.referenceSearchRange.contains(a.q))
        let summary = try PackedFile.summary(path: path)
        #expect(summary.activationSites.map(\.point) == ["layers.0.attention.probs", "layers.1.attention.probs"])

        let simulatedWeights = SimulatedSiteWeights(packed: stored)
        switch try PTQ.loadAnyModel(path: path) {
        case let runtime as LlamaModel:
            #expect(runtime.attentionProbabilityOps.allSatisfy { $0 is CodeDomainAttention })
            let simulated = try LlamaModel(weights: simulatedWeights)
            let tokens = [5, 70, 80, 90, 33, 44, 100, 101, 102, 7]
            let a = runtime.forward(tokens), b = simulated.forward(tokens)
            for i in a.indices { #expect(abs(a[i] - b[i]) <= 1e-3 * max(1, abs(b[i]))) }
            // And with a KV cache, one token at a time (decode positions).
            let cache = LlamaModel.KVCache(config: runtime.config, capacity: 16)
            var last: [Float] = []
            for t in tokens { last = runtime.forward([t], cache: cache) }
            let full = Array(a.suffix(runtime.config.vocabSize))
            for i in last.indices { #expect(abs(last[i] - full[i]) <= 1e-3 * max(1, abs(full[i]))) }
        case let runtime as BertModel:
            let simulated = try BertModel(weights: simulatedWeights)
            let tokens = [2, 5, 6, 7, 8, 10, 9, 13, 3]
            let a = runtime.embed(tokens: tokens), b = simulated.embed(tokens: tokens)
            for i in a.indices { #expect(abs(a[i] - b[i]) <= 1e-4) }
        case let other:
            Issue.record("unexpected model \(other.kindDescription)")
        }
    }

    /// A site naming a layer the model does not have is refused with the file and the point.
    @Test func badSiteIsRefused() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipePath = try PipelineFixtures.recipe(folder, name: "plain", body: "scheme: {method: rtn, weight: {bits: 8}}")
        var packed = try PTQ.quantize(checkpoint: checkpoint, recipe: PTQ.RecipeContext(path: recipePath), quiet: true).packed
        packed.activationSites["layers.7.attention.probs"] = QuantizedActivationSite(
            point: "layers.7.attention.probs", method: "adalog", quantizer: .adalog(try AdaLogQuantizer(bits: 4, q: 37)))
        let error = #expect(throws: PTQError.self) { try PackedFile.write(packed, to: folder + "/bad.ptq") }
        #expect(error?.description.contains("layers.7.attention.probs") == true)
    }

    /// Recipe errors name the field.
    @Test func recipeFieldErrors() throws {
        let base = "name: x\nmodel: llama\nscheme: {method: rtn, weight: {bits: 8}}\n"
        let ok = try Recipe.parse(base + "attention_probs: {quantizer: log_sqrt2, bits: 3}", source: "r.yaml")
        #expect(ok.attentionProbabilities?.quantizer == "log_sqrt2" && ok.attentionProbabilities?.bits == 3)
        let bad = #expect(throws: PTQError.self) {
            try Recipe.parse(base + "attention_probs: {quantizer: log3, bits: 4}", source: "r.yaml")
        }
        #expect(bad?.description.contains("attention_probs.quantizer") == true)
        let bits = #expect(throws: PTQError.self) {
            try Recipe.parse(base + "attention_probs: {quantizer: adalog, bits: 9}", source: "r.yaml")
        }
        #expect(bits?.description.contains("attention_probs.bits") == true)
    }
}

@Suite("AdaLog post-GELU")
struct AdaLogPostGeluTests {
    /// The bias fold: Ŵ(x̂' − δ1) + b equals Ŵx̂' + (b − Ŵδ1) for the layer the quantizer emits,
    /// and the code-domain runtime (integer bucket sums) equals that simulated product.
    @Test func biasFoldIdentityAndRuntimeMatchSimulation() throws {
        var rng = SeededGenerator(seed: 21)
        let out = 7, k = 40
        let weight = Tensor(shape: [out, k], data: (0..<(out * k)).map { _ in rng.float(in: -0.3...0.3) })
        let bias = (0..<out).map { _ in rng.float(in: -0.1...0.1) }
        // GELU-like inputs: mostly small, some negative down to −0.17, a long positive tail.
        let rows = 300
        var inputs = [Float](repeating: 0, count: rows * k)
        for i in inputs.indices {
            let z = rng.float(in: -3...3)
            inputs[i] = 0.5 * z * (1 + Float(erf(Double(z) / 2.squareRoot())))
        }
        let stats = PointStatistics(channels: k, kinds: [.reservoir], reservoirCapacity: rows)
        inputs.withUnsafeBufferPointer { stats.add($0, rows: rows) }
        func quantize(base: String, weightSearch: String = "fpcs") throws -> QuantizedLinear {
            let plan = try Recipe.parse("""
                name: t
                model: bert
                scheme:
                  method: adalog
                  weight: {bits: 4, symmetric: false}
                  activation: {bits: 4, granularity: per_tensor}
                  parameters: {base: \(base), tokens: 200, weight_search: \(weightSearch)}
                """, source: "t.yaml").plan(for: SyntheticModels.bertConfig()).first { $0.role == .mlpOutputProjection(.gelu) }!
            return try AdaLogLinearQuantizer(plan: plan)
                .quantize(LinearLayer(plan, weight: weight, bias: bias), statistics: stats)
        }
        let q = try quantize(base: "adaptive")
        let log = try #require(q.activation?.logarithmic)
        let delta = try #require(q.activation?.inputOffset)
        #expect(abs(delta - 0.16997124) < 1e-6)
        let wHat = q.weight.dequantizedReference()
        let runtime = try LogInputLinear(q)
        let f = PositiveActivationQuantizer.adalog(log)
        var y = [Float](repeating: 0, count: 5 * out)
        runtime.forward(inputs, rows: 5, into: &y)
        for r in 0..<5 {
            for o in 0..<out {
                var unfolded = Double(bias[o]), folded = Double(q.bias![o])
                for j in 0..<k {
                    let xq = Double(f.value(code: f.code(inputs[r * k + j] + delta)))
                    unfolded += Double(wHat[o * k + j]) * (xq - Double(delta))
                    folded += Double(wHat[o * k + j]) * xq
                }
                #expect(abs(unfolded - folded) <= 1e-5)
                #expect(abs(Double(y[r * out + o]) - folded) <= 1e-4)
            }
        }
        // The searched base does at least as well as the fixed bases on the search objective
        // (with the same min–max weights: weight FPCS would give each base its own weights).
        let adaptive = Double(try quantize(base: "adaptive", weightSearch: "minmax").details["output_relative_mse"]!)!
        #expect(Double(q.details["output_relative_mse"]!)! < adaptive, "weight FPCS lowers the output error")
        for base in ["log2", "log_sqrt2"] {
            let fixed = try quantize(base: base, weightSearch: "minmax")
            #expect(adaptive <= Double(fixed.details["output_relative_mse"]!)! * 1.0001, "\(base)")
        }
        #expect(adaptive < 0.2)
    }

    /// The layer's role, from the model's structure, decides where the method applies: a layer
    /// not fed by GELU is refused with the recipe line, whatever it is named.
    @Test func refusesLayersNotFedByGELU() throws {
        let recipe = try Recipe.parse("""
            name: t
            model: bert
            scheme: {method: rtn, weight: {bits: 8}}
            rules:
              - targets: ["layers/*/attention/q_proj", "layers/*/mlp/down_proj"]
                method: adalog
                weight: {bits: 4, symmetric: false}
                activation: {bits: 4, granularity: per_tensor}
            """, source: "t.yaml")
        let plan = try recipe.plan(for: SyntheticModels.bertConfig()).filter { $0.method == "adalog" }
        #expect(plan.count == 4)
        for layer in plan where layer.role == .attentionInputProjection {
            #expect { try AdaLogLinearQuantizer(plan: layer) } throws: {
                ($0 as? PTQError)?.message == "line 5: \(layer.name): method adalog quantizes a GELU output, but this "
                    + "layer's input is attention_input (target the MLP output projections of a GELU model, e.g. layers/*/mlp/down_proj)"
            }
        }
        for layer in plan where layer.role == .mlpOutputProjection(.gelu) { _ = try AdaLogLinearQuantizer(plan: layer) }
    }
}
