import CAllocationCounter
import Foundation
import Testing
@testable import Kernels
@testable import PTQKit

/// A decode step on the token path allocates no heap memory once a cache has run a token
/// (issue 13: "no per-call allocations on the token path"). Allocations are counted on the
/// calling thread by the test executable's malloc (`CAllocationCounter`); the caller runs a share
/// of every pool job's tasks itself, so kernels that allocate inside their tasks are seen too.
@Suite("Decode allocations")
struct DecodeAllocationTests {
    /// Wide enough that the GEMVs and (from 64 positions) the attention run as pool jobs: the
    /// synthetic default (hidden 32) would take the single-thread shortcuts only.
    static func config() -> ModelConfig {
        ModelConfig(architecture: .llama, vocabSize: 260, hiddenSize: 256, intermediateSize: 512, layerCount: 2,
                    headCount: 4, kvHeadCount: 2, headDim: 64, maxPositions: 160, ropeTheta: 10_000,
                    normEpsilon: 1e-5, activation: .silu, tiedEmbeddings: true, name: "alloc-llama")
    }

    static let schemes: [String: String] = [
        "w8a8": "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}",
        "w4a16": "scheme: {method: rtn, weight: {bits: 4, group_size: 32}}",
        "w4a8": "scheme: {method: rtn, weight: {bits: 4, group_size: 32}, activation: {bits: 8, granularity: per_token}}",
        // PTQ1.61 decode rows: q/k/v and gate/up as grouped plane rows (AVX-512), o and down alone.
        "ptq161": "scheme: {method: ptq161, weight: {bits: 4, symmetric: false}, parameters: {salient_ratio: 0.2, optimization: none}}",
    ]

    /// The float model, or the synthetic checkpoint quantized by `scheme` and loaded as the
    /// packed runtime.
    static func model(_ scheme: String) throws -> LlamaModel {
        let folder = SyntheticModels.temporaryPath("decode-alloc-\(scheme)")
        try FileManager.default.createDirectory(atPath: folder + "/recipes", withIntermediateDirectories: true)
        let contents = SyntheticModels.contents(config(), tokenizer: SyntheticModels.llamaTokenizer(), seed: 7)
        let checkpoint = folder + "/model.h5"
        try CheckpointWriter.write(contents, to: checkpoint)
        guard let body = schemes[scheme] else {
            return try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: checkpoint)))
        }
        var text = ""
        let words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", ".", ","]
        for i in 0..<2000 { text += words[(i * 7 + i / 3) % words.count] + " " }
        try text.write(toFile: folder + "/calib.txt", atomically: true, encoding: .utf8)
        let recipe = folder + "/recipes/\(scheme).yaml"
        try """
        name: \(scheme)
        model: llama
        calibration: {data: calib.txt, samples: 2, seq_len: 32, seed: 3}
        \(body)
        """.write(toFile: recipe, atomically: true, encoding: .utf8)
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: PTQ.RecipeContext(path: recipe), quiet: true)
        let path = folder + "/\(scheme).ptq"
        try PackedFile.write(outcome.packed, to: path)
        return try #require(try PTQ.loadAnyModel(path: path) as? LlamaModel)
    }

    @Test(arguments: [("fp32", KVCachePrecision.f16), ("fp32", .f32), ("w8a8", .f16), ("w4a16", .f16), ("w4a8", .f16),
                            ("ptq161", .f16)])
    func decodeStepAllocatesNothing(scheme: String, precision: KVCachePrecision) throws {
        // Held against tests that flip the attention switches (the KV layout and the range cut)
        // while this one compares two decodes bit for bit.
        TokenKernels.kernelSwitchLock.lock()
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let model = try Self.model(scheme)
        let prompt = (0..<70).map { ($0 * 37 + 11) % 260 }
        let cache = LlamaModel.KVCache(config: model.config, capacity: 100, precision: precision)
        var logits = model.forward(prompt, cache: cache, logitRows: (prompt.count - 1)..<prompt.count)
        func next() -> Int { logits.indices.max { logits[$0] < logits[$1] }! }
        // Warm-up: the cache's buffers and every thread's kernel scratch reach their sizes.
        for _ in 0..<3 {
            let token = next()
            logits.withUnsafeMutableBufferPointer { model.decode(token, cache: cache, into: $0) }
        }
        // The counter sees allocations (this test can fail): the array API builds arrays.
        let control = ptq_thread_allocations()
        let copy = model.forward([next()], cache: LlamaModel.KVCache(config: model.config, capacity: 2))
        #expect(ptq_thread_allocations() > control && copy.count == model.config.vocabSize)

        var tokens: [Int] = []
        tokens.reserveCapacity(8)
        let before = ptq_thread_allocations()
        for _ in 0..<8 {
            let token = next()
            tokens.append(token)
            logits.withUnsafeMutableBufferPointer { model.decode(token, cache: cache, into: $0) }
        }
        let allocations = ptq_thread_allocations() - before
        #expect(allocations == 0, "\(scheme) \(precision): \(allocations) heap allocations in 8 decode steps")
        #expect(cache.count == prompt.count + 11)
        let finite = logits.allSatisfy { $0.isFinite }
        #expect(finite)

        // decode gives forward's logits (the same kernels on the same buffers' values).
        let replay = LlamaModel.KVCache(config: model.config, capacity: 100, precision: precision)
        _ = model.forward(prompt, cache: replay, logitRows: (prompt.count - 1)..<prompt.count)
        let step = model.forward([5], cache: replay)
        var decoded = [Float](repeating: 0, count: model.config.vocabSize)
        let again = LlamaModel.KVCache(config: model.config, capacity: 100, precision: precision)
        _ = model.forward(prompt, cache: again, logitRows: (prompt.count - 1)..<prompt.count)
        decoded.withUnsafeMutableBufferPointer { model.decode(5, cache: again, into: $0) }
        #expect(decoded == step)
    }
}
