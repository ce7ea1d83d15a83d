import Foundation
import Testing
import Kernels
@testable import PTQKit

/// The `.ptq` loader's parallel steps (issue 13, fourteenth pass): layers built at once by
/// `PackedWeights(buildingLayersOf:)`, the model checks run at once in `validateModel`, the
/// tokenizer decoded beside the sections. The model must be the one the serial path builds —
/// logits equal bit for bit — and a bad file must fail with the same first error.
@Suite("Parallel .ptq load")
struct ParallelLoadTests {
    static let recipes: [(String, String)] = [
        ("w4a16-head8", """
        scheme: {method: rtn, weight: {bits: 4, symmetric: false, group_size: 32}, activation: none}
        rules:
          - targets: [lm_head]
            method: rtn
            weight: {bits: 8, group_size: channel}
        """),
        ("w8a8-table", """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        embedding: {method: rtn, weight: {bits: 4, symmetric: false, group_size: 32}}
        """),
        ("splitquant", "scheme: {method: splitquant, weight: {bits: 4, symmetric: false, group_size: 32}}"),
        ("llmfp4", "scheme: {method: llmfp4, weight: {bits: 4, group_size: 32}, activation: {bits: 8, granularity: per_tensor}, parameters: {setting: fast}}"),
        ("ptq161", "scheme: {method: ptq161, weight: {bits: 4, symmetric: false}, parameters: {optimization: none}}"),
    ]

    /// Logits of the first tokens and one decode step on top of them.
    static func logits(_ model: any QuantizableModel) throws -> [Float] {
        let llm = try #require(model as? LlamaModel)
        let tokens = [3, 77, 201, 5, 19, 250, 42, 8]
        let cache = llm.makeCache(capacity: tokens.count + 1, precision: .f32)
        var out = llm.forward(tokens, cache: cache, logitRows: 0..<tokens.count, hooks: ForwardHooks())
        var step = [Float](repeating: .nan, count: llm.config.vocabSize)
        step.withUnsafeMutableBufferPointer { llm.decode(9, cache: cache, into: $0) }
        out += step
        return out
    }

    /// Logits of `path` loaded by `PTQ.loadPacked` (parallel) and built layer by layer from
    /// `PackedFile.read` (serial), with the kernel switches held still (`kernelSwitchLock`:
    /// other suites flip them, and the layers' layouts depend on them).
    static func bothLoads(_ path: String) throws -> (parallel: [Float], serial: [Float]) {
        TokenKernels.kernelSwitchLock.lock()
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let parallel = try logits(try PTQ.loadPacked(path: path))
        let serial = try logits(try LlamaModel(weights: PackedWeights(try PackedFile.read(path: path))))
        return (parallel, serial)
    }

    /// Every weight format: the parallel load (`PTQ.loadPacked`, from the file) gives the logits
    /// of the model built layer by layer from the same file, bit for bit.
    @Test(arguments: recipes)
    func parallelLoadMatchesSerialBuild(name: String, body: String) throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: name, body: body))
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        let path = folder + "/\(name).ptq"
        try PackedFile.write(outcome.packed, to: path)
        let (parallel, serial) = try Self.bothLoads(path)
        let identical = parallel.map(\.bitPattern) == serial.map(\.bitPattern)
        #expect(identical, "\(name)")
        #expect(parallel.contains { $0 != 0 } && parallel.allSatisfy(\.isFinite))
    }

    /// The bench models, when present (`~/.cache/ptqkit/bench`, written by
    /// `scripts/bench-vs-llamacpp`): the same check on SmolLM2's real layers.
    @Test func benchModelsMatchSerialBuild() throws {
        let folder = (ProcessInfo.processInfo.environment["XDG_CACHE_HOME"] ?? NSHomeDirectory() + "/.cache") + "/ptqkit/bench"
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".ptq") }.sorted()
        for file in files.prefix(8) {
            let path = folder + "/" + file
            let (parallel, serial) = try Self.bothLoads(path)
            // A Bool, not the arrays: a failing 440k-element array comparison makes the test
            // library compute their difference for minutes.
            let identical = parallel.map(\.bitPattern) == serial.map(\.bitPattern)
            #expect(identical, "\(file)")
        }
    }

    /// Two bad layers: the checks, now run at once, still report the layer the config lists
    /// first, and a model built from prebuilt layers fails on the same layer as one built
    /// layer by layer.
    @Test func firstErrorIsUnchanged() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipe = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "w4", body: Self.recipes[0].1))
        var packed = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true).packed
        for layer in ["layers/1/mlp/down_proj", "layers/0/attention/k_proj"] {
            var q = try #require(packed.quantizedLinears[layer])
            guard case .integer(var w) = q.weight else { Issue.record("not integer"); return }
            w.codes[7] = 200  // does not fit 4 bits
            q.weight = .integer(w)
            packed.quantizedLinears[layer] = q
        }
        do {
            _ = try PTQ.loadPacked(packed, source: "bad.ptq")
            Issue.record("loaded a model with out-of-range codes")
        } catch {
            #expect(error.message.contains("bad.ptq") && error.message.contains("layers/0/attention/k_proj")
                     && error.message.contains("200"), "\(error.message)")
        }
        func buildError(_ weights: PackedWeights) -> String? {
            do throws(PTQError) { _ = try LlamaModel(weights: weights); return nil } catch { return error.message }
        }
        let serial = try #require(buildError(PackedWeights(packed)))
        #expect(buildError(PackedWeights(buildingLayersOf: packed)) == serial)
        #expect(serial.contains("layers/0/attention/k_proj"), "\(serial)")
    }
}
