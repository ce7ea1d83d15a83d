import Foundation
import Testing
import Kernels
@testable import PTQKit
@testable import PTQCLI

/// The LM head as a plannable linear and the token embedding table as a weight-only quantized
/// tensor: row decoders against the reference dequantizers, planning, packing, loading, lookup
/// and `ptq inspect` (issue 9; method-agnostic, shared with issues 10 and 13).
@Suite("Tied LM head and quantized embedding")
struct TiedHeadEmbeddingTests {
    // MARK: row decoders

    static func randomIntegerWeight(bits: Int, rows: Int, columns: Int, groupSize: Int, symmetric: Bool,
                                    seed: UInt64) -> IntegerWeight {
        var rng = SeededGenerator(seed: seed)
        let groups = (columns + groupSize - 1) / groupSize
        let codes = (0..<(rows * columns)).map { _ in UInt8(rng.next() % UInt64(1 << bits)) }
        let scales = (0..<(rows * groups)).map { _ in rng.float(in: 0.001...0.2) }
        let zeros = symmetric ? nil : (0..<(rows * groups)).map { _ in Float(rng.next() % UInt64(1 << bits)) }
        return IntegerWeight(bits: bits, rows: rows, columns: columns, groupSize: groupSize, symmetric: symmetric,
                             codes: codes, scales: scales, zeros: zeros)
    }

    static func decodedRows(_ w: QuantizedWeight) -> [Float] {
        var out = [Float](repeating: .nan, count: w.rows * w.columns)
        out.withUnsafeMutableBufferPointer { p in
            for r in 0..<w.rows { w.decodeRow(r, into: p.baseAddress! + r * w.columns) }
        }
        return out
    }

    /// Integer (symmetric, asymmetric, per channel, per group with a partial last group) rows
    /// decode to exactly the reference dequantizer's rows.
    @Test(arguments: [(8, 48, true), (4, 32, false), (3, 20, false), (2, 48, true), (8, 32, false)])
    func integerRowDecoderMatchesReference(bits: Int, groupSize: Int, symmetric: Bool) {
        let w = QuantizedWeight.integer(Self.randomIntegerWeight(bits: bits, rows: 7, columns: 48, groupSize: groupSize,
                                                                 symmetric: symmetric, seed: UInt64(bits * 100 + groupSize)))
        let reference = w.dequantizedReference()
        #expect(Self.decodedRows(w) == reference)
        #expect(reference.contains { $0 != 0 })
    }

    /// Minifloat rows (FP4/FP6/FP8, per channel and per group) decode to the reference exactly,
    /// with and without a precomputed code table.
    @Test(arguments: ["e2m1", "e3m0", "e1m2", "e3m2", "e4m3", "e2m5"])
    func floatingPointRowDecoderMatchesReference(format name: String) throws {
        let format = try #require(FloatingPointFormat(name: name))
        var rng = SeededGenerator(seed: 11)
        let rows = 9, columns = 40
        let weight = (0..<(rows * columns)).map { _ in rng.float(in: -1...1) * powf(2, rng.float(in: -6...2)) }
        for groupSize in [columns, 32, 8] {
            let groups = (columns + groupSize - 1) / groupSize
            let scales = (0..<(rows * groups)).map { _ in FloatingPointFormat.scale(bias: Double(rng.float(in: -3...5))) }
            let fp = FloatingPointWeight.quantize(weight, rows: rows, columns: columns, groupSize: groupSize,
                                                  format: format, scales: scales)
            let w = QuantizedWeight.floatingPoint(fp)
            let reference = w.dequantizedReference()
            #expect(Self.decodedRows(w) == reference, "\(name) g\(groupSize)")
            var row = [Float](repeating: .nan, count: columns)
            row.withUnsafeMutableBufferPointer { fp.decodeRow(rows - 1, table: format.codeValues, into: $0.baseAddress!) }
            #expect(row == Array(reference[((rows - 1) * columns)...]))
        }
    }

    /// SplitQuant rows (a cluster id per element) decode to the reference exactly.
    @Test func splitRowDecoderMatchesReference() {
        var rng = SeededGenerator(seed: 5)
        let rows = 6, columns = 40, groupSize = 32, bits = 4
        let groups = (columns + groupSize - 1) / groupSize
        let parameters = rows * groups * SplitWeight.clusterCount
        let w = QuantizedWeight.split(SplitWeight(
            bits: bits, rows: rows, columns: columns, groupSize: groupSize,
            clusters: (0..<(rows * columns)).map { _ in UInt8(rng.next() % UInt64(SplitWeight.clusterCount)) },
            codes: (0..<(rows * columns)).map { _ in UInt8(rng.next() % 16) },
            scales: (0..<parameters).map { _ in rng.float(in: 0.01...0.3) },
            zeros: (0..<parameters).map { _ in Float(rng.next() % 16) }))
        #expect(Self.decodedRows(w) == w.dequantizedReference())
    }

    // MARK: pipeline

    static let rtnHead = """
    scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
    rules:
      - targets: [lm_head]
        weight: {bits: 8, group_size: channel}
    embedding:
      method: rtn
      weight: {bits: 8, group_size: channel}
    """

    /// rtn W8A8 with `lm_head` and `embedding:`: both are planned, quantized from the tied table,
    /// stored as two quantizations, loaded into the integer runtime and the row-decoding table,
    /// and the model matches its fake-quant simulation.
    @Test func rtnHeadAndEmbeddingRoundTrip() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "head", body: Self.rtnHead))
        let config = SyntheticModels.llamaConfig()
        let plan = try recipe.plan(for: config)
        #expect(plan.count == 14 + 2)
        let head = try #require(plan.first { $0.name == "lm_head" })
        #expect(head.outFeatures == 260 && head.inFeatures == 32 && head.ruleIndex == 0)
        #expect(head.weightTensorName(config: config) == TensorNames.tokenEmbedding)
        #expect(head.activation == ActivationScheme(bits: 8, granularity: .perToken))
        let table = try #require(plan.first { $0.isEmbedding })
        #expect(table.activation == nil && table.weight.bits == 8 && table.ruleLine != nil)

        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        #expect(outcome.packed.floatTensors[TensorNames.tokenEmbedding] == nil)
        #expect(outcome.packed.floatTensors[TensorNames.lmHead] == nil)
        let qHead = try #require(outcome.packed.quantizedLinears["lm_head"])
        let qTable = try #require(outcome.packed.quantizedLinears["embeddings/token"])
        #expect(qHead.activation?.bits == 8 && qTable.activation == nil)
        // Same float source, per-channel int8 both: equal codes, stored twice (the tie's cost).
        #expect(qHead.weight == qTable.weight)
        let path = folder + "/head.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let stored = try PackedFile.read(path: path)
        #expect(stored.quantizedLinears["lm_head"] == qHead && stored.quantizedLinears["embeddings/token"] == qTable)

        // Lookup: the runtime table decodes exactly the reference rows.
        let lookup = try PackedWeights(stored).tokenEmbedding()
        #expect(lookup is QuantizedEmbedding)
        let reference = qTable.weight.dequantizedReference()
        for token in [0, 1, 77, 259] {
            var row = [Float](repeating: .nan, count: 32)
            row.withUnsafeMutableBufferPointer { lookup.copyRow(token, into: $0.baseAddress!) }
            #expect(row == Array(reference[(token * 32)..<((token + 1) * 32)]))
        }
        #expect(try PackedWeights(stored).tiedLMHead() is IntegerLinear)

        guard let runtime = try PTQ.loadAnyModel(path: path) as? LlamaModel else { Issue.record("not a LM"); return }
        let simulated = try LlamaModel(weights: SimulatedWeights(packed: stored))
        let tokens = [3, 77, 201, 5, 19, 250, 42, 8, 100]
        let a = runtime.forward(tokens), b = simulated.forward(tokens)
        let scale = b.map(abs).max()!
        #expect(zip(a, b).map { abs($0 - $1) }.max()! <= 1e-4 * scale)

        // Against the same recipe with a float head and table: the head and table really changed.
        let plain = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "plain",
            body: "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}"))
        let plainOutcome = try PTQ.quantize(checkpoint: checkpoint, recipe: plain, quiet: true)
        #expect(plainOutcome.packed.quantizedLinears["lm_head"] == nil)
        #expect(plainOutcome.packed.floatTensors[TensorNames.tokenEmbedding] != nil)
        let plainModel = try LlamaModel(weights: PackedWeights(plainOutcome.packed))
        let c = plainModel.forward(tokens)
        let difference = zip(a, c).map { abs($0 - $1) }.max()!
        #expect(difference > 1e-4 * scale && difference < 0.1 * scale, "head/table quantization changed logits by \(difference)")
    }

    /// Quantized table with a float tied head: the head keeps the float weights as
    /// `lm_head/weight` (float16 in the file), so its logits match the float-head model's.
    @Test func embeddingOnlyKeepsFloatHead() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "table", body: """
            scheme: {method: rtn, weight: {bits: 4, group_size: 32}}
            embedding: {method: rtn, weight: {bits: 4, symmetric: false, group_size: 32}}
            """))
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        #expect(outcome.packed.floatTensors[TensorNames.tokenEmbedding] == nil)
        let floatHead = try #require(outcome.packed.floatTensors[TensorNames.lmHead])
        let source = try CheckpointReader(path: checkpoint).tensor(TensorNames.tokenEmbedding)
        #expect(floatHead == source)
        let path = folder + "/table.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let stored = try PackedFile.read(path: path)
        #expect(try PackedWeights(stored).tiedLMHead() is FloatLinear)
        let runtime = try LlamaModel(weights: PackedWeights(stored))
        let simulated = try LlamaModel(weights: SimulatedWeights(packed: stored))
        let a = runtime.forward([1, 2, 3, 200]), b = simulated.forward([1, 2, 3, 200])
        // bf16 decode GEMVs (AVX512_BF16) for the one-group layers of this small model: 1e-2.
        let tolerance: Float = LowBit.bf16Decode && LowBit.usesBF16Kernel ? 1e-2 : 1e-4
        #expect(zip(a, b).map { abs($0 - $1) }.max()! <= tolerance * b.map(abs).max()!)
        // Dropping the head's float weights leaves a tied model without a head: refused by name.
        var broken = stored
        broken.floatTensors[TensorNames.lmHead] = nil
        #expect(throws: PTQError.self) { try broken.validateModel(source: "broken.ptq") }
        do { try broken.validateModel(source: "broken.ptq") } catch {
            #expect(error.message.contains("lm_head"))
        }
    }

    /// LLM-FP4 on the head: its input point is the final-normed hidden states, which calibration
    /// observes; the head's FP8 runtime matches its simulation, the FP8 table decodes its rows.
    @Test func llmfp4HeadCalibratesAtFinalNorm() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "fp", body: """
            scheme:
              method: llmfp4
              weight: {bits: 4, group_size: 32}
              activation: {bits: 8, granularity: per_tensor}
              parameters: {setting: fast, intervals: 6, tokens: 64}
            rules:
              - targets: [lm_head]
                weight: {bits: 8, group_size: channel}
            embedding:
              method: llmfp4
              weight: {bits: 8, group_size: channel}
              parameters: {setting: minmax, weight_format: e2m5}
            """))
        let plan = try recipe.plan(for: SyntheticModels.llamaConfig())
        let request = try PTQ.statisticsRequest(plan: plan)
        #expect(request.kinds[QuantizationPoints.lmHeadInput]?.contains(.reservoir) == true)
        #expect(SyntheticModels.llamaConfig().structure.linearLayer(named: "lm_head")?.inputPoint == "lm_head.input")
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        let stats = try #require(outcome.statistics?.points[QuantizationPoints.lmHeadInput])
        #expect(stats.channels == 32 && stats.reservoirCount > 0)
        let head = try #require(outcome.packed.quantizedLinears["lm_head"])
        guard case .floatingPoint(let hw) = head.weight, case .floatingPoint(let tw) = outcome.packed.quantizedLinears["embeddings/token"]?.weight else {
            Issue.record("head and table should be minifloat"); return
        }
        #expect(hw.bits == 8 && head.activation?.floatFormat?.bits == 8)
        #expect(tw.format == FloatingPointFormat(name: "e2m5"))
        let path = folder + "/fp.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let stored = try PackedFile.read(path: path)
        let runtime = try LlamaModel(weights: PackedWeights(stored))
        let simulated = try LlamaModel(weights: SimulatedWeights(packed: stored))
        let tokens = [3, 77, 201, 5, 19, 250, 42, 8]
        let a = runtime.forward(tokens), b = simulated.forward(tokens)
        #expect(zip(a, b).map { abs($0 - $1) }.max()! <= 1e-4 * b.map(abs).max()!)
    }

    /// Without a rule naming `lm_head` the head stays float: a broad rule pattern does not
    /// claim it, the scheme never does, and the packed file is what it was before.
    @Test func headStaysFloatByDefault() throws {
        let recipe = try Recipe.parse("""
            name: t
            model: llama
            scheme: {method: rtn, weight: {bits: 8}}
            rules:
              - targets: ["layers/**"]
                weight: {bits: 4, group_size: 32}
            """, source: "t.yaml")
        let plan = try recipe.plan(for: SyntheticModels.llamaConfig())
        #expect(plan.count == 14 && !plan.contains { $0.name == "lm_head" || $0.isEmbedding })
        // Storage totals count a planned tied head once more and the table at its own width.
        let withHead = try Recipe.parse("""
            name: t
            model: llama
            scheme: {method: rtn, weight: {bits: 8}}
            rules:
              - targets: [lm_head]
            embedding: {method: rtn, weight: {bits: 8}}
            """, source: "t.yaml")
        let config = SyntheticModels.llamaConfig()
        let headPlan = try withHead.plan(for: config)
        let v = config.vocabSize, d = config.hiddenSize
        let base = bitsPerWeight(plan: plan.map { var p = $0; p.weight = WeightScheme(bits: 8); return p }, config: config)
        let parameters = config.expectedTensors.reduce(0) { $0 + $1.shape.reduce(1, *) }
        let totalBase = base * Double(parameters)
        // Table: float16 → int8 + a scale per row; head: + int8 + a scale per row.
        let expected = totalBase - Double(16 * v * d) + Double(2 * (8 * v * d + 32 * v))
        #expect(abs(bitsPerWeight(plan: headPlan, config: config) * Double(parameters + v * d) - expected) < 1e-6 * expected)
        #expect(dryRunDescription(plan: headPlan, config: config).contains("embeddings/token"))
    }

    /// Bad recipes and files fail with messages naming the field or tensor.
    @Test func errorsNameTheProblem() throws {
        let config = SyntheticModels.llamaConfig()
        // An embedding is weight-only: no activation key.
        #expect(throws: PTQError.self) {
            _ = try Recipe.parse("""
                name: t
                model: llama
                scheme: {method: rtn, weight: {bits: 8}}
                embedding: {method: rtn, weight: {bits: 8}, activation: {bits: 8}}
                """, source: "t.yaml")
        }
        // A method that needs input statistics cannot quantize the table.
        let gptq = try Recipe.parse("""
            name: t
            model: llama
            scheme: {method: rtn, weight: {bits: 8}}
            embedding: {method: gptq, weight: {bits: 4}}
            """, source: "t.yaml")
        do {
            _ = try PTQ.statisticsRequest(plan: try gptq.plan(for: config))
            Issue.record("gptq on the embedding should be refused")
        } catch {
            #expect(error.message.contains("embedding"), "\(error.message)")
        }
        // A quantized table with activation quantization is refused by the model checks.
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "e", body: Self.rtnHead))
        var packed = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true).packed
        packed.quantizedLinears["embeddings/token"]?.activation = ActivationQuantization(bits: 8, granularity: .perToken)
        do { try packed.validateModel(source: "x.ptq"); Issue.record("accepted") } catch {
            #expect(error.message.contains("embeddings/token") && error.message.contains("x.ptq"))
        }
    }

    /// `activation_format` / `weight_format` take a shortlist of formats, searched in order.
    @Test func formatShortlist() throws {
        func quantizer(_ parameters: String) throws -> LLMFP4Quantizer {
            let recipe = try Recipe.parse("""
                name: t
                model: llama
                scheme:
                  method: llmfp4
                  weight: {bits: 8}
                  activation: {bits: 8, granularity: per_tensor}
                  parameters: \(parameters)
                """, source: "t.yaml")
            let plan = try recipe.plan(for: SyntheticModels.llamaConfig())
            return try #require(try QuantizerRegistry.quantizer(for: plan[0]) as? LLMFP4Quantizer)
        }
        let q = try quantizer("{setting: fast, activation_format: \"e2m5, e3m4\", weight_format: e2m5}")
        #expect(q.activationFormats.map(\.description) == ["fp8 e2m5", "fp8 e3m4"])
        #expect(q.weightFormats.map(\.description) == ["fp8 e2m5"])
        for bad in ["{activation_format: \"e2m5,e2m5\"}", "{activation_format: \"e2m5,e2m1\"}", "{activation_format: \"e2m5,x\"}"] {
            do { _ = try quantizer(bad); Issue.record("\(bad) accepted") } catch let error as PTQError {
                #expect(error.message.contains("activation_format"), "\(error.message)")
            }
        }
    }

    /// `ptq inspect` lists the table and the head with their stored bytes and the tie's cost.
    @Test func inspectShowsBothEntries() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PipelineFixtures.recipe(folder, name: "inspect", body: Self.rtnHead)
        let path = folder + "/inspect.ptq"
        var quantize = try PTQCommand.parseAsRoot(["quantize", checkpoint, "--recipe", recipe, "-o", path,
                                                   "--no-verify", "--quiet"])
        try quantize.run()
        let summary = try PackedFile.summary(path: path)
        let table = try #require(summary.tensors.first { $0.name == "embeddings/token" })
        let head = try #require(summary.tensors.first { $0.name == "lm_head" })
        #expect(table.kind == "rtn" && head.kind == "rtn" && table.shape == [260, 32] && head.shape == [260, 32])
        #expect(table.activation == "float" && head.activation.contains("int8"))
        // int8 codes plus a float32 scale per row, at most (random codes barely compress).
        for row in [table, head] { #expect(row.storedBytes <= 260 * 32 + 4 * 260 && row.storedBytes > 260 * 32 / 2) }
        #expect(!summary.tensors.contains { $0.name == TensorNames.tokenEmbedding })
        let text = try InspectCommand.parse([path]).renderedPacked()
        #expect(text.contains("tied embedding and LM head stored separately"), "\(text)")
        #expect(text.contains("lm_head rtn [260, 32] int8"))
    }
}
