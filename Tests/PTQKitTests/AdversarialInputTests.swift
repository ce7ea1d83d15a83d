import ArgumentParser
import CHDF5
import Foundation
import Testing
@testable import Checkpoint
@testable import PTQCLI
@testable import PTQKit

/// Bad input, as a hostile user would give it (issue 14, docs/reliability.md): every case ends
/// in a clean `PTQError` naming the file and the field, a usage error, or a valid result —
/// never a crash, never exit 0 with a nonsense figure, never a destroyed input file.

// MARK: - Helpers

/// A temporary folder with a tiny llama checkpoint, calibration text, an STS-B file and recipes;
/// removed by `cleanup()`.
struct AdversarialFixture {
    let folder: String
    let checkpoint: String

    init(bert: Bool = false) throws {
        let setUp = try PipelineFixtures.setUp(bert: bert)
        checkpoint = setUp.checkpoint
        folder = setUp.folder
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: folder) }

    func recipe(_ name: String, model: String = "llama", _ body: String) throws -> String {
        try PipelineFixtures.recipe(folder, name: name, model: model, body: body)
    }

    func path(_ name: String) -> String { folder + "/" + name }

    /// A copy of the checkpoint damaged in place through the HDF5 API.
    func damagedCheckpoint(_ name: String, _ damage: (HDF5File) throws -> Void) throws -> String {
        let copy = path(name)
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: checkpoint, toPath: copy)
        try damage(try HDF5File.openForUpdate(copy))
        return copy
    }

    /// Files in the folder, for checks that nothing (not even a temporary file) was left.
    func listing() -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
    }
}

/// Runs `ptq` in process: exit code and error message as the real binary would report them.
func runPTQ(_ arguments: [String]) -> (code: Int32, message: String) {
    do {
        var command = try PTQCommand.parseAsRoot(arguments)
        try command.run()
        return (0, "")
    } catch {
        return (PTQCommand.exitCode(for: error).rawValue, PTQCommand.message(for: error))
    }
}

/// Expects `body` to throw a PTQError whose message contains every fragment.
func expectPTQError(_ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation,
                    _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error mentioning \(fragments), but nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as PTQError {
        for fragment in fragments {
            #expect(error.message.contains(fragment), "\"\(error.message)\" should mention \"\(fragment)\"",
                    sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected a PTQError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
}

func fileBytes(_ path: String) -> [UInt8] { (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? [] }

// MARK: - HDF5 checkpoints

@Suite("Adversarial input: HDF5 checkpoints")
struct AdversarialCheckpointTests {
    /// Malformed checkpoints built by editing a valid one; each is refused when opened or
    /// loaded, with the file and the field or tensor in the message.
    @Test func malformedCheckpoints() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let cases: [(String, [String], (HDF5File) throws -> Void)] = [
            ("nan-weight", ["layers/1/mlp/down_proj/weight", "non-finite"], { file in
                var data = [Float](repeating: 0.01, count: 32 * 48)
                data[100] = .nan
                try file.delete("layers/1/mlp/down_proj/weight")
                try file.writeFloats("layers/1/mlp/down_proj/weight", shape: [32, 48], data: data, as: .float32)
            }),
            ("inf-norm", ["final_norm/weight", "non-finite"], { file in
                try file.delete("final_norm/weight")
                try file.writeFloats("final_norm/weight", shape: [32], data: [Float](repeating: .infinity, count: 32), as: .float16)
            }),
            ("big-vocab-tokenizer", ["tokenizer", "261 tokens", "vocab_size is 260"], { file in
                let tokens = SyntheticModels.llamaTokenizer().tokens + ["extra"]
                try file.delete("tokenizer/tokens")
                try file.writeStrings("tokenizer/tokens", tokens)
                try file.delete("tokenizer/token_types")
                try file.writeInt32s("tokenizer/token_types", [Int32](repeating: 1, count: tokens.count))
            }),
            ("eos-out-of-range", ["eos_token_id 5000"], { file in try file.setAttribute("tokenizer", "eos_token_id", 5000) }),
            ("huge-hidden", ["hidden_size", "larger than"], { file in try file.setAttribute("config", "hidden_size", 1 << 40) }),
            ("negative-layers", ["layer_count must be positive"], { file in try file.setAttribute("config", "layer_count", -2) }),
            ("string-vocab", ["vocab_size", "not a number"], { file in try file.setAttribute("config", "vocab_size", "many") }),
            ("nan-epsilon", ["norm_epsilon"], { file in try file.setAttribute("config", "norm_epsilon", Double.nan) }),
            ("string-version", ["format_version", "not a number"], { file in try file.setAttribute(".", "format_version", "1") }),
            ("fractional-layers", ["layer_count", "not an integer"], { file in try file.setAttribute("config", "layer_count", 1.5) }),
            ("tokens-not-strings", ["tokenizer/tokens", "does not hold strings"], { file in
                try file.delete("tokenizer/tokens")
                try file.writeInt32s("tokenizer/tokens", [Int32](repeating: 1, count: 260))
            }),
            ("weight-as-strings", ["layers/0/attention/q_proj/weight"], { file in
                try file.delete("layers/0/attention/q_proj/weight")
                try file.writeStrings("layers/0/attention/q_proj/weight", ["a", "b"])
            }),
            ("short-dataset", ["layers/0/mlp/up_proj/weight", "[48, 16]", "[48, 32]"], { file in
                try file.delete("layers/0/mlp/up_proj/weight")
                try file.writeFloats("layers/0/mlp/up_proj/weight", shape: [48, 16], data: [Float](repeating: 0, count: 768), as: .float32)
            }),
            ("rank-3", ["final_norm/weight"], { file in
                try file.delete("final_norm/weight")
                try file.writeFloats("final_norm/weight", shape: [2, 4, 4], data: [Float](repeating: 1, count: 32), as: .float32)
            }),
            ("zero-positions", ["max_positions must be positive"], { file in try file.setAttribute("config", "max_positions", 0) }),
            ("tokenizer-longer-than-positions", ["max_length 4096", "max_positions 128"], { file in
                try file.setAttribute("tokenizer", "max_length", 4096)
            }),
        ]
        for (name, fragments, damage) in cases {
            let path = try f.damagedCheckpoint(name + ".h5", damage)
            expectPTQError([path] + fragments) { _ = try PTQ.loadModel(path: path) }
        }
    }

    /// A dataset that declares far more values than the file stores (HDF5 allocates storage
    /// late and reads fill values) is refused instead of allocating gigabytes of zeros.
    @Test func unbackedDataset() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let path = try f.damagedCheckpoint("unbacked.h5") { file in
            try file.delete("embeddings/token/weight")
            var dims: [hsize_t] = [4_000_000, 32]
            let space = H5Screate_simple(2, &dims, nil)
            defer { H5Sclose(space) }
            let ds = H5Dcreate2(file.handle.id, "embeddings/token/weight", chdf5_ieee_f32le(), space,
                                chdf5_p_default(), chdf5_p_default(), chdf5_p_default())
            #expect(ds >= 0)
            H5Dclose(ds)
            try file.setAttribute("config", "vocab_size", 4_000_000)
        }
        #expect(fileBytes(path).count < 1 << 20)
        expectPTQError([path, "embeddings/token/weight", "declares 128000000 values"]) { _ = try PTQ.loadModel(path: path) }
    }

    /// A BERT checkpoint whose tokenizer does not truncate (max_length 0) would feed the model
    /// more positions than it has: refused at load.
    @Test func encoderWithoutMaxLength() throws {
        let f = try AdversarialFixture(bert: true)
        defer { f.cleanup() }
        let path = try f.damagedCheckpoint("nomax.h5") { try $0.setAttribute("tokenizer", "max_length", 0) }
        expectPTQError([path, "max_length is 0"]) { _ = try CheckpointReader(path: path) }
    }

    /// 64-bit integer attributes are read exactly (not through a Double).
    @Test func sixtyFourBitAttributesRoundTrip() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let path = try f.damagedCheckpoint("attrs.h5") { file in
            try file.setAttribute(".", "big", Int.max)
            try file.setAttribute(".", "odd", (1 << 53) + 1)
            try file.setAttribute(".", "negative", Int.min + 1)
        }
        let file = try HDF5File.open(path)
        #expect(try file.intAttribute(".", "big") == Int.max)
        #expect(try file.intAttribute(".", "odd") == (1 << 53) + 1)
        #expect(try file.intAttribute(".", "negative") == Int.min + 1)
    }

    /// Quantizing NaN weights is an error naming the tensor, for every method (no trap in the
    /// float-to-integer conversion).
    @Test func nanWeightsDoNotReachQuantizers() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let path = try f.damagedCheckpoint("nan.h5") { file in
            var data = [Float](repeating: 0.02, count: 32 * 32)
            data[7] = .nan
            try file.delete("layers/0/attention/q_proj/weight")
            try file.writeFloats("layers/0/attention/q_proj/weight", shape: [32, 32], data: data, as: .float32)
        }
        for (name, scheme) in [("rtn", "scheme: {method: rtn, weight: {bits: 4}}"),
                               ("gptq", "scheme: {method: gptq, weight: {bits: 4}}")] {
            let recipe = try f.recipe("nan-\(name)", scheme)
            expectPTQError([path, "layers/0/attention/q_proj/weight", "non-finite"]) {
                _ = try PTQ.quantize(checkpoint: path, recipe: try PTQ.RecipeContext(path: recipe), quiet: true)
            }
            let result = runPTQ(["quantize", path, "--recipe", recipe, "-o", f.path("nan-\(name).ptq"), "--quiet"])
            #expect(result.code == 1 && result.message.contains("non-finite"), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: f.path("nan-\(name).ptq")))
        }
        let evaluate = runPTQ(["evaluate", path, "--task", "perplexity", "--data", f.path("calib.txt"), "--ctx", "16", "--quiet"])
        #expect(evaluate.code == 1 && evaluate.message.contains("non-finite"), "\(evaluate)")
    }

    /// Weights that overflow float32 in the forward pass give an error, not "perplexity nan".
    @Test func overflowingModelIsNotAFigure() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let path = try f.damagedCheckpoint("overflow.h5") { file in
            // Finite weights whose products overflow: the residual stream becomes ±inf, then NaN.
            try file.delete("layers/1/mlp/down_proj/weight")
            try file.writeFloats("layers/1/mlp/down_proj/weight", shape: [32, 48],
                                 data: (0..<(32 * 48)).map { $0 % 2 == 0 ? 3e38 : -3e38 }, as: .float32)
        }
        let result = runPTQ(["evaluate", path, "--task", "perplexity", "--data", f.path("calib.txt"), "--ctx", "16",
                             "--chunks", "2", "--quiet"])
        #expect(result.code == 1 && result.message.contains("not finite"), "\(result)")
        // Verify gates: NaN compares false against every limit, so it must fail by itself.
        let reference = try PTQ.loadModel(path: f.checkpoint)
        let samples = try PTQ.verificationSamples(model: reference, recipe: try PTQ.RecipeContext(path: try f.recipe("v", "scheme: {method: rtn, weight: {bits: 8}}")), count: 2)
        let report = try PTQ.verify(quantized: try PTQ.loadModel(path: path), reference: reference, samples: samples,
                                       thresholds: VerificationThresholds(maxKL: 100))
        #expect(!report.passed && report.failures.contains { $0.contains("NaN or infinite outputs") }, "\(report.failures)")
        let stsb = try AdversarialFixture(bert: true)
        defer { stsb.cleanup() }
        let encoder = try stsb.damagedCheckpoint("overflow.h5") { file in
            try file.delete("layers/1/mlp/down_proj/weight")
            try file.writeFloats("layers/1/mlp/down_proj/weight", shape: [16, 32],
                                 data: (0..<(16 * 32)).map { $0 % 2 == 0 ? 3e38 : -3e38 }, as: .float32)
        }
        let spearman = runPTQ(["evaluate", encoder, "--task", "stsb", "--data", stsb.path("sts.tsv"), "--quiet"])
        #expect(spearman.code == 1 && spearman.message.contains("STS-B"), "\(spearman)")
    }
}

// MARK: - Statistics files

@Suite("Adversarial input: statistics files")
struct AdversarialStatisticsTests {
    static func calibrated(_ f: AdversarialFixture) throws -> (stats: String, recipe: String) {
        let recipe = try f.recipe("stats", "scheme: {method: gptq, weight: {bits: 4}}")
        let stats = f.path("stats.h5")
        let result = runPTQ(["calibrate", f.checkpoint, "--recipe", recipe, "-o", stats, "--quiet"])
        #expect(result.code == 0, "\(result)")
        return (stats, recipe)
    }

    @Test func malformedStatistics() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let (stats, recipe) = try Self.calibrated(f)
        let valid = try CalibrationStatistics.read(path: stats)
        let point = try #require(valid.points.keys.sorted().first)
        let g = "points/\(point)"
        let channels = valid.points[point]!.channels
        let cases: [(String, [String], (HDF5File) throws -> Void)] = [
            // The heap overflow of issue 14: fewer channels than the stored arrays.
            ("fewer-channels", [point, "expected [4]"], { try $0.setAttribute(g, "channels", 4) }),
            ("more-channels", [point, "expected [4096]"], { try $0.setAttribute(g, "channels", 4096) }),
            ("zero-channels", [point, "channel count 0"], { try $0.setAttribute(g, "channels", 0) }),
            ("negative-rows", [point, "must not be negative"], { try $0.setAttribute(g, "rows", -1) }),
            ("short-max", [point, "'max'"], { file in
                try file.delete("\(g)/max")
                try file.writeFloats("\(g)/max", shape: [channels - 1], data: [Float](repeating: 1, count: channels - 1), as: .float32)
            }),
            ("nan-max", [point, "'max'", "non-finite"], { file in
                var data = [Float](repeating: 1, count: channels)
                data[3] = .nan
                try file.delete("\(g)/max")
                try file.writeFloats("\(g)/max", shape: [channels], data: data, as: .float32)
            }),
            ("inf-gram", [point, "'gram'", "non-finite"], { file in
                var gram = [Double](repeating: 0, count: channels * channels)
                gram[1] = .infinity
                try file.delete("\(g)/gram")
                try file.writeDoubles("\(g)/gram", shape: [channels, channels], gram)
            }),
            ("flat-gram", [point, "'gram'"], { file in
                try file.delete("\(g)/gram")
                try file.writeDoubles("\(g)/gram", shape: [channels * channels], [Double](repeating: 0, count: channels * channels))
            }),
            ("string-samples", ["samples", "not a number"], { try $0.setAttribute(".", "samples", "x") }),
            ("dataset-under-points", ["points"], { file in
                try file.writeDoubles("points/stray", shape: [1], [1])
                try file.setAttribute(g, "channels", 3)
            }),
        ]
        for (name, fragments, damage) in cases {
            let copy = f.path("\(name).h5")
            try FileManager.default.copyItem(atPath: stats, toPath: copy)
            try damage(try HDF5File.openForUpdate(copy))
            expectPTQError([copy] + fragments) { _ = try CalibrationStatistics.read(path: copy) }
            // The quantize command refuses it too, and writes nothing.
            let output = f.path("\(name).ptq")
            let result = runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "--stats", copy, "-o", output, "--quiet", "--no-verify"])
            #expect(result.code == 1 && result.message.contains(copy), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: output))
        }
    }

    /// The writer refuses what the reader would refuse; 64-bit seeds round-trip.
    @Test func writerAndReaderAgree() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let settings = CalibrationSettings(dataPath: "x.txt", samples: 2, sequenceLength: 8, seed: UInt64.max - 12)
        let good = PointStatistics(channels: 4, kinds: [.channelRange])
        let rows: [Float] = [1, 2, 3, 4, -1, -2, -3, -4]
        rows.withUnsafeBufferPointer { good.add($0, rows: 2) }
        let stats = CalibrationStatistics(modelIdentity: "abc", settings: settings, tokens: 16, points: ["p.input": good])
        let path = f.path("seed.h5")
        try stats.write(to: path)
        let read = try CalibrationStatistics.read(path: path)
        #expect(read.settings.seed == UInt64.max - 12)
        #expect(read.hash == stats.hash)

        let bad = PointStatistics(channels: 4, kinds: [.channelRange])
        let nan: [Float] = [1, .nan, 3, 4]
        nan.withUnsafeBufferPointer { bad.add($0, rows: 1) }
        let refused = CalibrationStatistics(modelIdentity: "abc", settings: settings, tokens: 4, points: ["p.input": bad])
        expectPTQError([f.path("nan.h5"), "p.input", "non-finite"]) { try refused.write(to: f.path("nan.h5")) }
        #expect(!FileManager.default.fileExists(atPath: f.path("nan.h5")))
    }

    /// Statistics with the right model identity but channel counts of another shape are refused
    /// before a quantizer indexes them.
    @Test func channelMismatchWithModel() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("tensor", "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_tensor}}")
        let reader = try CheckpointReader(path: f.checkpoint)
        let config = reader.config
        var points: [String: PointStatistics] = [:]
        for point in Set(config.structure.linearLayers.map(\.inputPoint)) {
            let p = PointStatistics(channels: 5, kinds: [.channelRange])
            let rows: [Float] = [1, 2, 3, 4, 5]
            rows.withUnsafeBufferPointer { p.add($0, rows: 1) }
            points[point] = p
        }
        let stats = CalibrationStatistics(modelIdentity: try config.identity { (name) throws(PTQError) in try reader.tensor(name) },
                                          settings: .init(dataPath: "calib.txt", samples: 1, sequenceLength: 1, seed: 0),
                                          tokens: 1, points: points)
        try stats.write(to: f.path("five.h5"))
        expectPTQError([f.path("five.h5"), "5 channels", "32 inputs"]) {
            _ = try PTQ.quantize(checkpoint: f.checkpoint, recipe: try PTQ.RecipeContext(path: recipe),
                                    statsPath: f.path("five.h5"), quiet: true)
        }
    }
}

// MARK: - Packed files

@Suite("Adversarial input: packed files")
struct AdversarialPackedTests {
    static func quantized(_ f: AdversarialFixture) throws -> PackedModel {
        let recipe = try f.recipe("packed", "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_tensor}}")
        return try PTQ.quantize(checkpoint: f.checkpoint, recipe: try PTQ.RecipeContext(path: recipe), quiet: true).packed
    }

    /// Files with valid checksums whose contents disagree with their config: refused at load,
    /// naming the tensor; never a heap overflow or garbage figures.
    @Test func consistentContainerInconsistentModel() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let model = try Self.quantized(f)
        let q = "layers/0/attention/q_proj"
        let cases: [(String, [String], (inout PackedModel) -> Void)] = [
            ("short-norm", ["final_norm/weight", "[16]", "[32]"], { m in
                m.floatTensors["final_norm/weight"] = Tensor(shape: [16], data: [Float](repeating: 1, count: 16))
            }),
            ("missing-norm", ["layers/1/mlp_norm/weight", "missing"], { m in m.floatTensors["layers/1/mlp_norm/weight"] = nil }),
            ("extra-tensor", ["unexpected tensor 'layers/9/x'"], { m in m.floatTensors["layers/9/x"] = Tensor(shape: [1], data: [0]) }),
            ("small-layer", [q, "16×32", "32×32"], { m in
                var l = m.quantizedLinears[q]!
                l.weight = .integer(IntegerWeight(bits: 8, rows: 16, columns: 32, groupSize: 32, symmetric: true,
                                         codes: [UInt8](repeating: 128, count: 512), scales: [Float](repeating: 0.1, count: 16), zeros: nil))
                l.bias = nil
                m.quantizedLinears[q] = l
            }),
            ("nan-scale", [q, "weight scale nan"], { m in m.quantizedLinears[q]!.weight.integer!.scales[3] = .nan }),
            ("nan-embedding", ["embeddings/token/weight", "non-finite"], { m in m.floatTensors["embeddings/token/weight"]!.data[9] = .nan }),
            ("tokenizer-larger", ["tokenizer", "vocab_size"], { m in m.tokenizer.tokens += ["a", "b"] }),
            ("both-float-and-quantized", [q, "stored twice"], { m in
                m.floatTensors[q + "/weight"] = Tensor(shape: [32, 32], data: [Float](repeating: 0, count: 1024))
            }),
        ]
        for (name, fragments, edit) in cases {
            var broken = model
            edit(&broken)
            let path = f.path("\(name).ptq")
            try PackedFile.write(broken, to: path)  // the container is fine: checksums match
            expectPTQError([path] + fragments) { _ = try PTQ.loadPacked(path: path) }
            let result = runPTQ(["evaluate", path, "--task", "perplexity", "--data", f.path("calib.txt"), "--ctx", "16", "--quiet"])
            #expect(result.code == 1 && result.message.contains(path), "\(name): \(result)")
            // The pipeline's own check refuses the same model before writing it.
            expectPTQError(fragments) { try broken.validateModel(source: "x") }
        }
    }

    /// An infinite or zero activation scale is refused by the writer (it would make an
    /// unloadable file) and by the reader.
    @Test func activationScaleWriterRefuses() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let model = try Self.quantized(f)
        for bad in [Float.infinity, 0, -1, .nan] {
            var broken = model
            broken.quantizedLinears["layers/1/mlp/up_proj"]!.activation!.scale = bad
            let path = f.path("scale.ptq")
            expectPTQError([path, "layers/1/mlp/up_proj", "activation scale"]) { try PackedFile.write(broken, to: path) }
            #expect(!FileManager.default.fileExists(atPath: path))
        }
        var broken = model
        broken.quantizedLinears["layers/0/attention/q_proj"]!.activation!.channelScales = [Float](repeating: .infinity, count: 32)
        expectPTQError([f.path("channel.ptq"), "activation channel scale inf"]) { try PackedFile.write(broken, to: f.path("channel.ptq")) }
    }
}

// MARK: - Recipes and data

@Suite("Adversarial input: recipes and data")
struct AdversarialRecipeTests {
    @Test func dryRunBuildsEveryQuantizer() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let unknownMethod = try f.recipe("unknown", """
        scheme: {method: rtn, weight: {bits: 8}}
        rules:
          - targets: ["layers/*/mlp/down_proj"]
            method: rtm
        """)
        var result = runPTQ(["quantize", f.checkpoint, "--recipe", unknownMethod, "--dry-run", "--quiet"])
        #expect(result.code == 1 && result.message.contains("\(unknownMethod):6: rules[0].method: unknown method 'rtm'"), "\(result)")

        let unknownScheme = try f.recipe("unknown-scheme", "scheme: {method: smoothquant2, weight: {bits: 8}}")
        result = runPTQ(["quantize", f.checkpoint, "--recipe", unknownScheme, "--dry-run", "--quiet"])
        #expect(result.code == 1 && result.message.contains("\(unknownScheme):4: scheme.method: unknown method 'smoothquant2'"), "\(result)")

        let unknownParameter = try f.recipe("unknown-parameter", """
        scheme: {method: gptq, weight: {bits: 4}, parameters: {dampp: 0.1}}
        """)
        result = runPTQ(["quantize", f.checkpoint, "--recipe", unknownParameter, "--dry-run", "--quiet"])
        #expect(result.code == 1 && result.message.contains("dampp") && result.message.contains(unknownParameter), "\(result)")
    }

    @Test func ignorePatternsMustMatch() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let typo = try f.recipe("typo", """
        scheme: {method: rtn, weight: {bits: 8}}
        ignore: ["layers/*/mlp/dwn_proj"]
        """)
        let result = runPTQ(["quantize", f.checkpoint, "--recipe", typo, "--dry-run", "--quiet"])
        #expect(result.code == 1 && result.message.contains("\(typo):5: ignore[0]") && result.message.contains("matches no"), "\(result)")
    }

    @Test func calibrationBounds() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        expectPTQError(["t.yaml:3: calibration.samples", "100000"]) {
            _ = try Recipe.parse("name: t\nmodel: llama\ncalibration: {samples: 100000000}\nscheme: {method: rtn, weight: {bits: 8}}\n", source: "t.yaml")
        }
        expectPTQError(["t.yaml:3: calibration.seq_len"]) {
            _ = try Recipe.parse("name: t\nmodel: llama\ncalibration: {seq_len: 99999999999}\nscheme: {method: rtn, weight: {bits: 8}}\n", source: "t.yaml")
        }
        // Longer than the model's 128 positions: refused before calibration, with file and line.
        let long = f.path("recipes/long.yaml")
        try """
        name: long
        model: llama
        calibration: {data: calib.txt, samples: 2, seq_len: 256}
        scheme: {method: gptq, weight: {bits: 4}}
        """.write(toFile: long, atomically: true, encoding: .utf8)
        let result = runPTQ(["calibrate", f.checkpoint, "--recipe", long, "-o", f.path("long-stats.h5"), "--quiet"])
        #expect(result.code == 1 && result.message.contains("\(long):3: calibration.seq_len: 256") && result.message.contains("128"), "\(result)")
        #expect(!FileManager.default.fileExists(atPath: f.path("long-stats.h5")))
        let dryRun = runPTQ(["quantize", f.checkpoint, "--recipe", long, "--dry-run", "--quiet"])
        #expect(dryRun.code == 1 && dryRun.message.contains("calibration.seq_len: 256"), "\(dryRun)")
    }

    @Test func stsbData() throws {
        let f = try AdversarialFixture(bert: true)
        defer { f.cleanup() }
        let cases: [(String, String, [String])] = [
            ("one", "g\tf\ty\t1\t3.0\ta cat\ta dog\n", ["1 STS-B pair", "at least 2"]),
            ("constant", "g\tf\ty\t1\t2.0\ta cat\ta dog\ng\tf\ty\t2\t2.0\tthe mat\ta dog\n", ["every gold score", "2.0"]),
            ("nan", "g\tf\ty\t1\tnan\ta cat\ta dog\ng\tf\ty\t2\t2.0\tthe mat\ta dog\n", ["line 1", "not a finite number"]),
            ("inf", "g\tf\ty\t1\t1.0\ta cat\ta dog\ng\tf\ty\t2\tinf\tthe mat\ta dog\n", ["line 2", "not a finite number"]),
            ("empty", "", ["no STS-B pairs"]),
            ("columns", "g\tf\t1.0\ta cat\n", ["line 1", "7 tab-separated columns"]),
        ]
        for (name, text, fragments) in cases {
            let path = f.path("\(name).tsv")
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            expectPTQError([path] + fragments) { _ = try STSB.load(path: path) }
            let result = runPTQ(["evaluate", f.checkpoint, "--task", "stsb", "--data", path, "--quiet"])
            #expect(result.code == 1 && result.message.contains(path), "\(name): \(result)")
        }
        // Two pairs in the file, one in the evaluation half.
        let two = f.path("two.tsv")
        try "g\tf\ty\t1\t1.0\ta cat\ta dog\ng\tf\ty\t2\t2.0\tthe mat\ta dog\n".write(toFile: two, atomically: true, encoding: .utf8)
        #expect(try STSB.load(path: two).count == 2)
        expectPTQError(["evaluation split", "at least 2"]) { _ = try STSB.load(path: two, split: .evaluation) }
    }
}

// MARK: - Command line: outputs, options, exit codes

@Suite("Adversarial input: command line")
struct AdversarialCLITests {
    /// `X -o X` is refused before any work, and the input is untouched.
    @Test func outputIsNotAnInput() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("w8", "scheme: {method: rtn, weight: {bits: 8}}")
        let before = fileBytes(f.checkpoint)
        let link = f.path("link.h5")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: f.checkpoint)
        let hard = f.path("hard.h5")
        try FileManager.default.linkItem(atPath: f.checkpoint, toPath: hard)
        for arguments in [["import", f.checkpoint, "-o", f.checkpoint],
                          ["calibrate", f.checkpoint, "--recipe", recipe, "-o", f.checkpoint],
                          ["calibrate", f.checkpoint, "--recipe", recipe, "-o", f.path("calib.txt")],
                          ["quantize", f.checkpoint, "--recipe", recipe, "-o", f.checkpoint],
                          ["quantize", f.checkpoint, "--recipe", recipe, "-o", recipe],
                          ["quantize", f.checkpoint, "--recipe", recipe, "-o", link],
                          ["quantize", f.checkpoint, "--recipe", recipe, "-o", hard],
                          ["quantize", f.checkpoint, "--recipe", recipe, "-o", f.folder + "/./recipes/../model.h5"]] {
            let result = runPTQ(arguments + ["--quiet"])
            #expect(result.code == 1 && result.message.contains("would overwrite the input"), "\(arguments): \(result)")
        }
        #expect(fileBytes(f.checkpoint) == before)
        #expect(fileBytes(f.path("calib.txt")).count > 1000)
    }

    @Test func outputFolderCheckedFirst() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("w8", "scheme: {method: rtn, weight: {bits: 8}}")
        var result = runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "-o", f.path("missing/out.ptq"), "--quiet"])
        #expect(result.code == 1 && result.message.contains("does not exist"), "\(result)")
        result = runPTQ(["calibrate", f.checkpoint, "--recipe", recipe, "-o", f.path("recipes"), "--quiet"])
        #expect(result.code == 1 && result.message.contains("is a directory"), "\(result)")
        if getuid() != 0 {
            try FileManager.default.createDirectory(atPath: f.path("readonly"), withIntermediateDirectories: true)
            chmod(f.path("readonly"), 0o555)
            defer { chmod(f.path("readonly"), 0o755) }
            result = runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "-o", f.path("readonly/out.ptq"), "--quiet"])
            #expect(result.code == 1 && result.message.contains("not writable"), "\(result)")
        }
    }

    /// A model that fails its verify gates is not left at --output: exit code 2, nothing
    /// written (or, with --keep-failed, a `.failed.ptq` beside it).
    @Test func failedVerifyLeavesNothing() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let strict = try f.recipe("strict", """
        scheme: {method: rtn, weight: {bits: 2}, activation: {bits: 2, granularity: per_token}}
        verify: {samples: 2, max_kl: 0.0, min_top1: 1.0}
        """)
        let before = f.listing()
        let output = f.path("strict.ptq")
        var result = runPTQ(["quantize", f.checkpoint, "--recipe", strict, "-o", output, "--quiet"])
        #expect(result.code == 2, "\(result)")
        #expect(f.listing() == before, "no model and no temporary file may be left")
        result = runPTQ(["quantize", f.checkpoint, "--recipe", strict, "-o", output, "--quiet", "--keep-failed"])
        #expect(result.code == 2, "\(result)")
        #expect(!FileManager.default.fileExists(atPath: output))
        #expect(FileManager.default.fileExists(atPath: f.path("strict.failed.ptq")))
        #expect(f.listing() == before.union(["strict.failed.ptq"]))
        // verify on it: gates fail again, exit code 2, with the stored recipe and calibration data.
        result = runPTQ(["verify", f.path("strict.failed.ptq"), "--reference", f.checkpoint, "--quiet"])
        #expect(result.code == 2, "\(result)")
    }

    /// `ptq verify` without --recipe uses the stored recipe and the calibration data the model
    /// was quantized with (not defaults resolved against the working directory).
    @Test func verifyUsesStoredSettings() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("gates", """
        scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}
        verify: {samples: 3, max_kl: 5.0}
        """)
        let output = f.path("gates.ptq")
        #expect(runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "-o", output, "--quiet"]).code == 0)
        let packed = try PackedFile.read(path: output)
        let context = try PTQ.storedRecipe(of: packed, path: output)
        #expect(context.calibrationPath(for: packed.config) == f.path("calib.txt"))
        #expect(context.recipe.verify?.samples == 3)
        let reference = try PTQ.loadModel(path: f.checkpoint)
        let stored = try PTQ.verificationSamples(model: reference, recipe: context, count: 3)
        let direct = try PTQ.verificationSamples(model: reference, recipe: try PTQ.RecipeContext(path: recipe), count: 3)
        #expect(stored == direct)
        #expect(runPTQ(["verify", output, "--reference", f.checkpoint, "--quiet"]).code == 0)
    }

    /// Out-of-range options are usage errors (exit code 64), before or right after the model is read.
    @Test func optionRanges() throws {
        let f = try AdversarialFixture()
        defer { f.cleanup() }
        let recipe = try f.recipe("w8", "scheme: {method: rtn, weight: {bits: 8}}")
        let packed = f.path("w8.ptq")
        #expect(runPTQ(["quantize", f.checkpoint, "--recipe", recipe, "-o", packed, "--quiet", "--no-verify"]).code == 0)
        let longPrompt = String(repeating: "the cat sat on a mat . ", count: 40)
        let cases: [([String], String)] = [
            (["bench", packed, "--prompt-tokens", "0"], "--prompt-tokens"),
            (["bench", packed, "--repeats", "0"], "--repeats"),
            (["bench", packed, "--decode-tokens", "-1"], "--decode-tokens"),
            (["bench", packed, "--threads", "0"], "--threads"),
            (["bench", packed, "--prompt-tokens", "100", "--decode-tokens", "100"], "max_positions"),
            (["verify", packed, "--reference", f.checkpoint, "--samples", "-3"], "--samples"),
            (["verify", packed, "--reference", f.checkpoint, "--samples", "0"], "--samples"),
            (["generate", packed, "--prompt", longPrompt], "max_positions"),
            (["generate", packed, "--prompt", "x", "--max-tokens", "0"], "--max-tokens"),
            (["evaluate", packed, "--task", "perplexity", "--data", f.path("calib.txt"), "--ctx", "256"], "max_positions"),
            (["evaluate", packed, "--task", "perplexity", "--data", f.path("calib.txt"), "--chunks", "0"], "--chunks"),
            (["evaluate", packed, "--task", "perplexity", "--data", f.path("calib.txt"), "--ctx", "2"], "--ctx"),
            (["evaluate", packed, "--task", "stsb", "--data", f.path("sts.tsv"), "--split", "most"], "--split"),
            (["evaluate", packed, "--task", "stsb", "--data", f.path("sts.tsv"), "--decode"], "--decode"),
            (["evaluate", packed, "--task", "perplexity", "--data", f.path("calib.txt"), "--decode", "--decode-kl"],
             "--decode-kl"),
            (["quantize", f.checkpoint, "--recipe", recipe], "--output"),
        ]
        for (arguments, fragment) in cases {
            let result = runPTQ(arguments + ["--quiet"])
            #expect(result.code == 64 && result.message.contains(fragment), "\(arguments.prefix(4)): \(result)")
        }
        // Within range: a short generation and a tiny bench run succeed.
        #expect(runPTQ(["generate", packed, "--prompt", "the cat", "--max-tokens", "200", "--quiet", "--json"]).code == 0)
        #expect(runPTQ(["bench", packed, "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "1", "--json"]).code == 0)
        // The measured spread: median between min and max, the old keys are the medians, load time and
        // peak memory are reported. (measure() directly, so the test does not change the process's threads.)
        let bench = try BenchCommand.parse([packed, "--prompt-tokens", "8", "--decode-tokens", "4", "--repeats", "3",
                                            "--threads", "1"])
        #expect(bench.threads == 1)
        let speed = try bench.measure(packed)
        #expect(speed.decode.min <= speed.decode.median && speed.decode.median <= speed.decode.max)
        #expect(speed.prefill.min <= speed.prefill.median && speed.prefill.median <= speed.prefill.max)
        #expect(speed.decode_tokens_per_second == speed.decode.median)
        #expect(speed.prefill_tokens_per_second == speed.prefill.median)
        #expect(speed.peak_resident_bytes > 0 && speed.load_seconds >= 0)
        // Bytes per decoded token: at least the float LM head of the tiny model, plus its KV cache.
        #expect(speed.decode_bytes_per_token > 0 && speed.decode_bandwidth_bound == 0)
        #expect(speed.read_bandwidth == nil && speed.read_bandwidth_probes == 0)
        // With the probe: one before and one after each repetition's decode, the bound from the
        // median probe, and the JSON keeps the old keys next to the new ones.
        let probed = try bench.measure(packed, probeBandwidth: true)
        let spread = try #require(probed.read_bandwidth)
        #expect(probed.read_bandwidth_probes == 6)
        #expect(spread.min > 0 && spread.min <= spread.median && spread.median <= spread.max)
        #expect(probed.decode_bandwidth_bound == spread.median / Double(probed.decode_bytes_per_token))
        #expect(probed.decode_bound_fraction == probed.decode_tokens_per_second / probed.decode_bandwidth_bound)
        // The reported peak excludes the probe's 256 MiB buffer where the kernel lets the mark be reset.
        #expect(probed.peak_resident_bytes > 0)
        let json = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(probed)) as? [String: Any])
        for key in ["decode_bandwidth_bound", "decode_bound_fraction", "decode_bytes_per_token", "read_bandwidth",
                    "read_bandwidth_probes"] {
            #expect(json[key] != nil, "\(key)")
        }
        let encodedSpread = try #require(json["read_bandwidth"] as? [String: Double])
        #expect(Set(encodedSpread.keys) == ["median", "min", "max"])
        #expect(BenchCommand.probeSummary(probed).contains("median of 6 probes"))
        #expect(BenchCommand.probeSummary(speed).hasPrefix("not measured"))
    }
}
