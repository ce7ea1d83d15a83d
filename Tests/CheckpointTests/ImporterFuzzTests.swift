import Foundation
import Testing
@testable import Checkpoint
import PTQCore

/// Seeded mutation fuzzing of the GGUF and safetensors importers (docs/reliability.md): each
/// mutation of a valid small file (truncation, flipped bytes anywhere, bytes overwritten with
/// extreme values) must end in a `PTQError` that names the file, or in contents that pass
/// `validate` (finite values, shapes matching the config). A crash fails the whole run.
enum Mutations {
    enum Kind: CaseIterable { case truncate, flip, extreme, splice }

    /// One mutation of `bytes`, chosen by `rng`; `protect` bytes at the start are never touched
    /// for flips (so that some mutations get past the magic), but truncations cut anywhere.
    static func mutate(_ bytes: [UInt8], _ rng: inout LCG) -> [UInt8] {
        var out = bytes
        guard !out.isEmpty else { return out }
        switch Kind.allCases[rng.int(0...3)] {
        case .truncate:
            out.removeLast(rng.int(1...out.count))
        case .flip:
            for _ in 0..<rng.int(1...4) { out[rng.int(0...(out.count - 1))] ^= UInt8(1 << rng.int(0...7)) }
        case .extreme:
            let at = rng.int(0...(out.count - 1))
            let fill: UInt8 = [0x00, 0xFF, 0x7F, 0x80][rng.int(0...3)]
            for i in at..<min(out.count, at + rng.int(1...8)) { out[i] = fill }
        case .splice:
            // Copy a run of bytes from elsewhere in the file (plausible-looking garbage).
            let n = rng.int(1...16)
            let from = rng.int(0...(out.count - 1)), to = rng.int(0...(out.count - 1))
            for k in 0..<n where from + k < out.count && to + k < out.count { out[to + k] = bytes[from + k] }
        }
        return out
    }
}

/// Outcome counts, printed for docs/reliability.md.
struct FuzzTally {
    var errors = 0
    var valid = 0
    var total: Int { errors + valid }
    func report(_ format: String) {
        print("fuzz \(format): \(total) mutations: \(errors) clean errors, \(valid) valid results, 0 crashes")
    }
}

@Suite("Importer mutation fuzzing")
struct ImporterFuzzTests {
    static let mutations = 300

    @Test func ggufMutations() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let valid = makeTinyLlama(tied: true).builder.build()
        var rng = LCG(2026)
        var tally = FuzzTally()
        for i in 0..<Self.mutations {
            let path = dir.write("m\(i % 3).gguf", Mutations.mutate(valid, &rng))
            do {
                let contents = try GGUFImporter.load(path: path)
                try contents.validate(source: path)
                tally.valid += 1
            } catch {
                tally.errors += 1
                #expect(error.message.contains(path), "\(error.message)")
            }
        }
        tally.report("GGUF")
        #expect(tally.total == Self.mutations)
    }

    @Test func safetensorsMutations() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        TinyBERT.write(to: dir)
        let weights = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir.file("model.safetensors"))))
        let config = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir.file("config.json"))))
        var rng = LCG(14)
        var tally = FuzzTally()
        for i in 0..<Self.mutations {
            // Mostly the weights file; every fourth run the config instead.
            let target = i % 4 == 3 ? "config.json" : "model.safetensors"
            dir.write("model.safetensors", target == "model.safetensors" ? Mutations.mutate(weights, &rng) : weights)
            dir.write("config.json", target == "config.json" ? Mutations.mutate(config, &rng) : config)
            do {
                let contents = try SafetensorsImporter.load(directory: dir.path)
                try contents.validate(source: dir.path)
                tally.valid += 1
            } catch {
                tally.errors += 1
                #expect(error.message.contains(dir.path), "\(error.message)")
            }
        }
        tally.report("safetensors")
        #expect(tally.total == Self.mutations)
    }

    /// NaN and infinity in imported weights are refused at import, naming the tensor.
    @Test func nonFiniteWeightsAreRefusedAtImport() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        TinyBERT.write(to: dir)
        var contents = try SafetensorsImporter.load(directory: dir.path)
        for bad in [Float.nan, .infinity, -.infinity] {
            var broken = contents
            broken.tensors["layers/1/mlp/up_proj/weight"]!.data[5] = bad
            #expect {
                try broken.validate(source: "x.h5")
            } throws: { error in
                let message = (error as? PTQError)?.message ?? ""
                return message.contains("x.h5") && message.contains("layers/1/mlp/up_proj/weight") && message.contains("non-finite")
            }
        }
        // A tokenizer larger than the embedding is refused (ids past the last row would be read).
        contents.tokenizer.tokens.append("extra")
        #expect { try contents.validate(source: "x.h5") } throws: { error in
            ((error as? PTQError)?.message ?? "").contains("vocab_size")
        }
    }
}
