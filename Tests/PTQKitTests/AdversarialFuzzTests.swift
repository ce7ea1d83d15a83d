import Foundation
import Testing
@testable import Checkpoint
@testable import PTQKit

/// Seeded mutation fuzzing of PTQKit's own readers (docs/reliability.md): a valid small file is
/// truncated, has bytes flipped or overwritten at random offsets, or has runs of bytes copied
/// from elsewhere; every mutation must end in a `PTQError` naming the file, or in a result that
/// passes the format's validation (and, for models, runs to finite logits). A crash (trap,
/// out-of-bounds read) kills the test process, so a passing run means none happened.
/// GGUF and safetensors are fuzzed in CheckpointTests/ImporterFuzzTests.swift.
enum Fuzz {
    static let mutations = 300

    static func mutate(_ bytes: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var out = bytes
        guard !out.isEmpty else { return out }
        func int(_ range: ClosedRange<Int>) -> Int { range.lowerBound + Int(rng.next() % UInt64(range.count)) }
        switch int(0...3) {
        case 0:
            out.removeLast(int(1...out.count))
        case 1:
            for _ in 0..<int(1...4) { out[int(0...(out.count - 1))] ^= UInt8(1 << int(0...7)) }
        case 2:
            let at = int(0...(out.count - 1))
            let fill: UInt8 = [0x00, 0xFF, 0x7F, 0x80][int(0...3)]
            for i in at..<min(out.count, at + int(1...8)) { out[i] = fill }
        default:
            let n = int(1...16)
            let from = int(0...(out.count - 1)), to = int(0...(out.count - 1))
            for k in 0..<n where from + k < out.count && to + k < out.count { out[to + k] = bytes[from + k] }
        }
        return out
    }

    /// Runs `mutations` mutations of `valid` written to `path`; `check` throws for a clean
    /// error and returns for a valid result. Returns (errors, valid).
    static func run(_ valid: [UInt8], path: String, seed: UInt64, mutations: Int = Fuzz.mutations,
                    _ check: (String) throws -> Void) throws -> (errors: Int, valid: Int) {
        var rng = SplitMix(seed: seed)
        var errors = 0, ok = 0
        for _ in 0..<mutations {
            try Data(mutate(valid, &rng)).write(to: URL(fileURLWithPath: path))
            do {
                try check(path)
                ok += 1
            } catch let error as PTQError {
                errors += 1
                #expect(error.message.contains(path), "the error must name the file: \(error.message)")
            }
        }
        return (errors, ok)
    }

    static func report(_ format: String, _ result: (errors: Int, valid: Int)) {
        print("fuzz \(format): \(result.errors + result.valid) mutations: \(result.errors) clean errors, "
              + "\(result.valid) valid results, 0 crashes")
    }
}

@Suite("Adversarial input: mutation fuzzing")
struct AdversarialFuzzTests {
    /// A model that loads must also run: finite logits on a few tokens.
    static func runs(_ model: any QuantizableModel) throws {
        switch model.run([2, 5, 3], hooks: ForwardHooks()) {
        case .logits(let logits, _):
            guard logits.allSatisfy(\.isFinite) else { throw PTQError("non-finite logits") }
        case .embedding(let embedding):
            guard embedding.allSatisfy(\.isFinite) else { throw PTQError("non-finite embedding") }
        }
    }

    @Test func hdf5Checkpoint() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let valid = fileBytes(f.checkpoint)
        let result = try Fuzz.run(valid, path: f.path("fuzz.h5"), seed: 1) { path in
            let model = try PTQ.loadModel(path: path)
            do { try Self.runs(model) } catch {
                // A flipped mantissa or exponent can give huge but finite weights whose product
                // overflows; evaluation commands report that as an error, never as a figure.
                throw PTQError.file(path, "overflows: \(error)")
            }
        }
        Fuzz.report("HDF5 checkpoint", result)
    }

    @Test func statisticsFile() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("stats", "scheme: {method: gptq, weight: {bits: 4}}")
        let stats = f.path("stats.h5")
        #expect(runPTQ(["calibrate", f.checkpoint, "--recipe", recipe, "-o", stats, "--quiet"]).code == 0)
        let result = try Fuzz.run(fileBytes(stats), path: f.path("fuzz-stats.h5"), seed: 2) { path in
            let read = try CalibrationStatistics.read(path: path)
            try read.validate(source: path)
        }
        Fuzz.report("statistics file", result)
    }

    @Test func packedFile() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("packed", """
        scheme: {method: rtn, weight: {bits: 4, group_size: 32}, activation: {bits: 8, granularity: per_tensor}}
        """)
        let packed = f.path("model.ptq")
        #expect(runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "-o", packed, "--quiet", "--no-verify"]).code == 0)
        let result = try Fuzz.run(fileBytes(packed), path: f.path("fuzz.ptq"), seed: 3) { path in
            let model = try PTQ.loadPacked(path: path)
            do { try Self.runs(model) } catch { throw PTQError.file(path, "overflows: \(error)") }
        }
        Fuzz.report(".ptq", result)
    }

    /// Every weight and activation format of the packed file (split clusters, minifloat codes
    /// with FP activations, AdaLog post-GELU inputs and attention probabilities) under the same
    /// mutations: 100 per format.
    @Test(arguments: [
        ("splitquant", "llama", "scheme: {method: splitquant, weight: {bits: 2, symmetric: false, group_size: 32}}"),
        ("ptq161", "llama", "scheme: {method: ptq161, weight: {bits: 4, symmetric: false}, parameters: {optimization: layerwise}}"),
        ("pbllm", "llama", "scheme: {method: pbllm, weight: {bits: 8, symmetric: false}}"),
        ("llmfp4", "llama", "scheme: {method: llmfp4, weight: {bits: 4, group_size: 32}, activation: {bits: 8, granularity: per_tensor}, parameters: {setting: fast}}"),
        ("adalog-attention", "llama", """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        attention_probs: {quantizer: adalog, bits: 4, samples: 2, rows_per_head: 4}
        """),
        ("adalog-gelu", "bert", """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        rules:
          - targets: ["layers/*/mlp/down_proj"]
            method: adalog
            weight: {bits: 8, symmetric: false}
            activation: {bits: 4, granularity: per_tensor}
        """),
    ])
    func packedFileFormats(name: String, model: String, body: String) throws {
        let f = try AdversarialFixture(bert: model == "bert")
        defer { f.cleanup() }
        let recipe = try f.recipe(name, model: model, body)
        let packed = f.path("\(name).ptq")
        let run = runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "-o", packed, "--quiet", "--no-verify"])
        try #require(run.code == 0, "\(name): \(run)")
        let result = try Fuzz.run(fileBytes(packed), path: f.path("fuzz-\(name).ptq"), seed: 5, mutations: 100) { path in
            let model = try PTQ.loadPacked(path: path)
            do { try Self.runs(model) } catch { throw PTQError.file(path, "overflows: \(error)") }
        }
        Fuzz.report(".ptq \(name)", result)
    }

    /// Consistent checksums, inconsistent layers of the newer formats: the model-level checks
    /// (shared by the loader and the quantize pipeline) name the layer and what is wrong.
    @Test func newFormatsInconsistentLayers() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        func quantized(_ name: String, _ body: String) throws -> PackedModel {
            let recipe = try PTQ.RecipeContext(path: try f.recipe(name, body))
            return try PTQ.quantize(checkpoint: f.checkpoint, recipe: recipe, quiet: true).packed
        }
        let split = try quantized("split", "scheme: {method: splitquant, weight: {bits: 2, symmetric: false}}")
        let fp = try quantized("fp", "scheme: {method: llmfp4, weight: {bits: 4}, activation: {bits: 8, granularity: per_tensor}, parameters: {setting: fast}}")
        let binary = try quantized("ptq161", "scheme: {method: ptq161, weight: {bits: 4, symmetric: false}, parameters: {optimization: none}}")
        let pb = try quantized("pbllm", "scheme: {method: pbllm, weight: {bits: 8, symmetric: false}}")
        let q = "layers/0/mlp/up_proj"
        let cases: [(String, PackedModel, [String], (inout QuantizedWeight) -> Void)] = [
            ("binary sign bit 2", binary, [q, "sign bit 2"], { w in
                if case .binary(var b) = w { b.signs[5] = 2; w = .binary(b) } }),
            ("binary missing salient code", binary, [q, "salient codes for"], { w in
                if case .binary(var b) = w { b.salientCodes.removeLast(); w = .binary(b) } }),
            ("binary non-float16 scale", binary, [q, "binary scales value"], { w in
                if case .binary(var b) = w { b.scale[0] = 0.1; w = .binary(b) } }),
            ("binary column scales too short", binary, [q, "column scales"], { w in
                if case .binary(var b) = w { b.columnScale?.removeLast(); w = .binary(b) } }),
            ("binary mask flipped", pb, [q, "salient codes for"], { w in
                if case .binary(var b) = w { b.salientMask[0].toggle(); w = .binary(b) } }),
            ("binary codes too wide", pb, [q, "does not fit in 4 bits"], { w in
                if case .binary(var b) = w { b.salientBits = 4; w = .binary(b) } }),
            ("split cluster id 3", split, [q, "cluster id 3"], { w in
                if case .split(var s) = w { s.clusters[7] = 3; w = .split(s) } }),
            ("split missing scale", split, [q, "scales"], { w in
                if case .split(var s) = w { s.scales.removeLast(); w = .split(s) } }),
            ("split NaN zero point", split, [q, "zero point nan"], { w in
                if case .split(var s) = w { s.zeros[2] = .nan; w = .split(s) } }),
            ("minifloat code too wide", fp, [q, "does not fit in 4 bits"], { w in
                if case .floatingPoint(var m) = w { m.codes[0] = 16; w = .floatingPoint(m) } }),
            ("minifloat infinite scale", fp, [q, "weight scale inf"], { w in
                if case .floatingPoint(var m) = w { m.scales[1] = .infinity; w = .floatingPoint(m) } }),
        ]
        for (label, model, fragments, edit) in cases {
            var broken = model
            try #require(broken.quantizedLinears[q] != nil, "\(label)")
            edit(&broken.quantizedLinears[q]!.weight)
            #expect(broken.quantizedLinears[q]!.weight != model.quantizedLinears[q]!.weight, "\(label): edit applied")
            do {
                try broken.validateModel(source: "broken.ptq")
                Issue.record("\(label): accepted")
            } catch {
                for fragment in fragments { #expect(error.message.contains(fragment), "\(label): \(error.message)") }
            }
        }
    }

    @Test func recipeYAML() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("full", """
        description: every section
        scheme:
          method: gptq
          weight: {bits: 4, symmetric: false, group_size: 32}
          parameters: {damping: 0.01, block_size: 32}
        rules:
          - targets: ["layers/*/mlp/down_proj", "re:^layers/1/attention/[qk]_proj$"]
            method: rtn
            weight: {bits: 8}
            activation: {bits: 8, granularity: per_token}
        ignore: ["layers/0/attention/o_proj"]
        verify: {samples: 4, max_kl: 0.5, min_top1: 0.5}
        """)
        let config = try CheckpointReader(path: f.checkpoint).config
        #expect(throws: Never.self) { _ = try PTQ.statisticsRequest(plan: try PTQ.RecipeContext(path: recipe).plan(for: config)) }
        let result = try Fuzz.run(fileBytes(recipe), path: f.path("recipes/fuzz.yaml"), seed: 4) { path in
            // What `quantize --dry-run` does: parse, plan, build every quantizer.
            let context = try PTQ.RecipeContext(path: path)
            _ = try PTQ.statisticsRequest(plan: try context.plan(for: config))
        }
        Fuzz.report("recipe YAML", result)
    }

    @Test func stsbTSV() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let result = try Fuzz.run(fileBytes(f.path("sts.tsv")), path: f.path("fuzz.tsv"), seed: 5, mutations: 100) { path in
            let pairs = try STSB.load(path: path)
            #expect(pairs.count >= 2 && pairs.allSatisfy { $0.score.isFinite })
        }
        Fuzz.report("STS-B tsv", result)
    }
}
