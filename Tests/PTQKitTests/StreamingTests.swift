import Foundation
import Testing
@testable import PTQKit

/// Models larger than memory: calibration block by block and quantization straight into the
/// packed file give exactly what the whole-model paths give.
@Suite("Streaming calibration and packing")
struct StreamingTests {
    static let allKinds: Set<StatisticKind> = [.channelRange, .sampleMidpoint, .histogram, .gram, .reservoir]

    /// Every statistic at every point (LM head input included), bit for bit.
    @Test(arguments: [true, false])
    func blockwiseCalibrationIsBitIdentical(tied: Bool) throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(tied: tied),
                                                tokenizer: SyntheticModels.llamaTokenizer(), seed: 7)
        let (_, folder) = try PipelineFixtures.setUp()
        let checkpoint = folder + "/model-\(tied).h5"
        try CheckpointWriter.write(contents, to: checkpoint)
        let weights = CheckpointWeights(try CheckpointReader(path: checkpoint))
        let model = try LlamaModel(weights: weights)
        var request = StatisticsRequest()
        for point in model.structure.linearLayers.map(\.inputPoint) + [QuantizationPoints.lmHeadInput] {
            request.request(Self.allKinds, at: point)
        }
        request.request([.channelRange], at: QuantizationPoints.attentionProbabilities(1))
        let settings = CalibrationSettings(dataPath: folder + "/calib.txt", samples: 5, sequenceLength: 40, seed: 11)
        let tokenizer = try makeTokenizer(weights.tokenizer)
        let whole = try Calibrator.run(model: model, tokenizer: tokenizer, settings: settings, request: request, quiet: true)
        let streamed = try Calibrator.runBlockwise(LlamaModel.self, weights: weights, tokenizer: tokenizer,
                                                   settings: settings, request: request, quiet: true)
        #expect(streamed.modelIdentity == whole.modelIdentity)
        #expect(streamed.tokens == whole.tokens && whole.tokens == 5 * 40)
        #expect(streamed.hash == whole.hash)
        #expect(Set(streamed.points.keys) == Set(whole.points.keys))
        #expect(whole.points.count == request.kinds.count)
        for (point, a) in whole.points {
            let b = try #require(streamed.points[point])
            #expect(a.rows == b.rows && a.samples == b.samples && a.rows > 0, "\(point)")
            #expect(a.minimum.map(\.bitPattern) == b.minimum.map(\.bitPattern), "\(point) minimum")
            #expect(a.maximum.map(\.bitPattern) == b.maximum.map(\.bitPattern), "\(point) maximum")
            #expect(a.sum.map(\.bitPattern) == b.sum.map(\.bitPattern), "\(point) sum")
            #expect(a.sumOfSquares.map(\.bitPattern) == b.sumOfSquares.map(\.bitPattern), "\(point) sum of squares")
            #expect(a.midpointSum?.map(\.bitPattern) == b.midpointSum?.map(\.bitPattern), "\(point) midpoints")
            #expect(a.histogram == b.histogram, "\(point) histogram")
            #expect(a.gram?.map(\.bitPattern) == b.gram?.map(\.bitPattern), "\(point) gram")
            #expect(a.reservoir?.map(\.bitPattern) == b.reservoir?.map(\.bitPattern), "\(point) reservoir")
            #expect(a.reservoirCount == b.reservoirCount, "\(point) reservoir count")
        }
        // Not vacuous: the last block's statistics depend on every block before it.
        let last = try #require(whole.points[QuantizationPoints.mlpDownInput(1)])
        #expect(last.maximum.contains { $0 > 0 } && last.gram!.contains { $0 != 0 })
    }

    /// The packed file written layer by layer has every section byte for byte as the one-shot
    /// writer gives it (statistics-driven, mixed and tied-table recipes), at the same offsets.
    @Test(arguments: ["w8a8-tensor", "mixed", "embedding"])
    func streamedPackingIsBitIdentical(recipeName: String) throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let bodies = [
            "w8a8-tensor": "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_tensor}}",
            "mixed": """
            scheme: {method: gptq, weight: {bits: 4, symmetric: false, group_size: 32}}
            rules:
              - targets: ["layers/*/attention/*"]
                method: rtn
                weight: {bits: 8}
                activation: {bits: 8, granularity: per_token}
            ignore: ["layers/0/mlp/down_proj"]
            """,
            "embedding": """
            scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
            embedding: {method: rtn, weight: {bits: 8}}
            """,
        ]
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: recipeName,
                                                                               body: bodies[recipeName]!))
        #expect(try PTQ.canQuantizeStreaming(plan: try recipe.plan(for: SyntheticModels.llamaConfig()), recipe: recipe))
        let whole = folder + "/whole.ptq", streamed = folder + "/streamed.ptq"
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        try PackedFile.write(outcome.packed, to: whole)
        let result = try PTQ.quantizeStreaming(checkpoint: checkpoint, recipe: recipe, output: streamed, quiet: true)
        #expect(result.plan.map(\.name) == outcome.plan.map(\.name))
        #expect(result.statistics?.hash == outcome.statistics?.hash)

        let a = try PackedFile.sections(path: whole), b = try PackedFile.sections(path: streamed)
        #expect(a.map(\.name) == b.map(\.name))
        let bytesA = try Data(contentsOf: URL(fileURLWithPath: whole)), bytesB = try Data(contentsOf: URL(fileURLWithPath: streamed))
        for (x, y) in zip(a, b) where x.kind != .manifest {
            #expect(x == y, "section \(x.name)")
            #expect(bytesA[x.offset ..< x.offset + x.storedSize] == bytesB[y.offset ..< y.offset + y.storedSize], "\(x.name)")
        }
        // The manifests differ only in the creation time.
        var modelA = try PackedFile.read(path: whole), modelB = try PackedFile.read(path: streamed)
        modelA.metadata["created"] = nil
        modelB.metadata["created"] = nil
        #expect(modelA == modelB)
        #expect(modelB.quantizedLinears.count == outcome.packed.quantizedLinears.count && modelB.quantizedLinears.count > 0)
        // And it runs: the streamed file loads and gives the same logits as the one-shot one.
        let runA = try #require(try PTQ.loadAnyModel(path: whole) as? LlamaModel)
        let runB = try #require(try PTQ.loadAnyModel(path: streamed) as? LlamaModel)
        let tokens = [3, 77, 201, 5, 19]
        #expect(runA.forward(tokens) == runB.forward(tokens))
    }

    /// Recipes that need the whole model are refused by the streaming path, with the recipe named.
    @Test func wholeModelRecipesAreRefused() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let path = try PipelineFixtures.recipe(folder, name: "adalog-attn", body: """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        attention_probs: {quantizer: adalog, bits: 4}
        """)
        let recipe = try PTQ.RecipeContext(path: path)
        #expect(try !PTQ.canQuantizeStreaming(plan: try recipe.plan(for: SyntheticModels.llamaConfig()), recipe: recipe))
        let output = folder + "/refused.ptq"
        #expect(throws: PTQError.self) {
            try PTQ.quantizeStreaming(checkpoint: checkpoint, recipe: recipe, output: output, quiet: true)
        }
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    /// A checkpoint written tensor by tensor reads back with the values the generator gave.
    @Test func syntheticCheckpointIsDeterministic() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        var shape = PTQ.SyntheticLlamaShape()
        shape.hiddenSize = 32; shape.intermediateSize = 40; shape.layerCount = 2; shape.headCount = 4
        shape.kvHeadCount = 2; shape.maxPositions = 64; shape.seed = 9
        let a = folder + "/synthetic-a.h5", b = folder + "/synthetic-b.h5"
        let count = try PTQ.writeSyntheticLlama(shape: shape, tokenizerFrom: checkpoint, to: a)
        try PTQ.writeSyntheticLlama(shape: shape, tokenizerFrom: checkpoint, to: b)
        let ra = try CheckpointReader(path: a), rb = try CheckpointReader(path: b)
        #expect(ra.config.vocabSize == 260 && !ra.config.tiedEmbeddings && ra.config.kvHeadCount == 2)
        #expect(count == ra.config.expectedTensors.reduce(0) { $0 + $1.shape.reduce(1, *) })
        let q = try ra.tensor("layers/1/attention/q_proj/weight")
        #expect(q.data == (try rb.tensor("layers/1/attention/q_proj/weight")).data)
        let mean = q.data.reduce(0, +) / Float(q.data.count)
        let std = (q.data.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(q.data.count)).squareRoot()
        #expect(abs(std - 0.02) < 0.002 && abs(mean) < 0.003)
        #expect(try ra.tensor("layers/0/mlp_norm/weight").data.allSatisfy { $0 == 1 })
        // Different tensors get different streams.
        #expect(q.data != (try ra.tensor("layers/1/attention/o_proj/weight")).data)
    }
}
