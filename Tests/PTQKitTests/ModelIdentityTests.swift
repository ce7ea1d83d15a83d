import Foundation
import Testing
@testable import PTQKit

/// Statistics are tied to one model's structure *and* weights.
@Suite("Model identity")
struct ModelIdentityTests {
    /// Same config, different weights: the structure half agrees, the weight half does not.
    @Test func identityCoversTheWeights() throws {
        let config = SyntheticModels.llamaConfig()
        let a = SyntheticModels.contents(config, tokenizer: SyntheticModels.llamaTokenizer(), seed: 1)
        let b = SyntheticModels.contents(config, tokenizer: SyntheticModels.llamaTokenizer(), seed: 2)
        func identity(_ c: CheckpointContents) throws -> String {
            try config.identity { (name) throws(PTQError) in c.tensors[name]! }
        }
        let (ia, ib) = (try identity(a), try identity(b))
        #expect(ia.hasPrefix(config.identity + "-") && ib.hasPrefix(config.identity + "-"))
        #expect(ia != ib)
        #expect(try identity(a) == ia)  // stable
        // One bit of one norm weight changes it.
        var c = a
        var norm = c.tensors["layers/1/mlp_norm/weight"]!
        norm.data[3] = Float(bitPattern: norm.data[3].bitPattern ^ 1)
        c.tensors["layers/1/mlp_norm/weight"] = norm
        #expect(try identity(c) != ia)
    }

    /// Statistics gathered on one model are refused for a same-shaped model with other weights.
    @Test func statisticsOfAnotherSameShapedModelAreRefused() throws {
        let (first, folder) = try PipelineFixtures.setUp(seed: 1)
        let (second, otherFolder) = try PipelineFixtures.setUp(seed: 2)
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "static",
            body: "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_tensor}}"))
        let plan = try recipe.plan(for: SyntheticModels.llamaConfig())
        let stats = try PTQ.calibrate(checkpoint: first, recipe: recipe, request: try PTQ.statisticsRequest(plan: plan),
                                      quiet: true)
        let statsPath = folder + "/stats.h5"
        try stats.write(to: statsPath)
        // The model it was gathered on accepts it …
        _ = try PTQ.quantize(checkpoint: first, recipe: recipe, statsPath: statsPath, quiet: true)
        // … the same-shaped model with other weights refuses it, saying why.
        do {
            _ = try PTQ.quantize(checkpoint: second, recipe: recipe, statsPath: statsPath, quiet: true)
            Issue.record("statistics of another model's weights were accepted")
        } catch {
            #expect(error.message.contains("same structure but other weights"), "\(error.message)")
        }
        try? FileManager.default.removeItem(atPath: otherFolder)
    }
}
