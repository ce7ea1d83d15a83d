import Foundation
import Testing
@testable import Checkpoint
@testable import PTQKit

@Suite("HDF5 checkpoints")
struct CheckpointFileTests {
    /// Every tensor, the config, the tokenizer and metadata survive a write/read cycle;
    /// float16/bfloat16 storage rounds as documented.
    @Test func roundTrip() throws {
        var contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        contents.storageTypes["layers/0/mlp/up_proj/weight"] = .float16
        contents.storageTypes["layers/1/mlp/down_proj/weight"] = .bfloat16
        let path = try SyntheticModels.writeCheckpoint(contents)
        let reader = try CheckpointReader(path: path)
        #expect(reader.config == contents.config)
        #expect(reader.tokenizer == contents.tokenizer)
        #expect(reader.metadata["source"] == "synthetic")
        for name in reader.tensorNames {
            let read = try reader.tensor(name)
            let original = contents.tensors[name]!
            #expect(read.shape == original.shape)
            switch contents.storageTypes[name] ?? .float32 {
            case .float32:
                #expect(read.data == original.data, "\(name) must round-trip exactly")
            case .float16:
                #expect(try reader.storageType(of: name) == .float16)
                #expect(zip(read.data, original.data).allSatisfy { Float(Float16($1)) == $0 })
            case .bfloat16:
                #expect(try reader.storageType(of: name) == .bfloat16)
                #expect(zip(read.data, original.data).allSatisfy { abs($0 - $1) <= abs($1) / 256 })
            }
        }
    }

    @Test func bertRoundTrip() throws {
        let contents = SyntheticModels.contents(SyntheticModels.bertConfig(), tokenizer: SyntheticModels.bertTokenizer())
        let path = try SyntheticModels.writeCheckpoint(contents)
        let all = try CheckpointReader(path: path).readAll()
        #expect(all.config == contents.config)
        #expect(all.tensors == contents.tensors)
    }

    /// The file opens as plain HDF5 with the documented layout (what h5ls/h5py see).
    @Test func layoutIsPlainHDF5() throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let path = try SyntheticModels.writeCheckpoint(contents)
        let file = try HDF5File.open(path)
        #expect(try file.stringAttribute(".", "format") == "ptqkit-checkpoint")
        #expect(try file.intAttribute(".", "format_version") == 1)
        #expect(try file.intAttribute("config", "hidden_size") == 32)
        #expect(try file.datasetInfo("layers/1/attention/k_proj/weight").shape == [16, 32])
        #expect(try file.readStrings("tokenizer/tokens").count == 260)
        #expect(Set(file.datasetNames()).isSuperset(of: contents.config.expectedTensors.map(\.name)))
    }

    // MARK: Bad input

    private func expectError(_ path: String, containing fragments: [String]) {
        do {
            _ = try CheckpointReader(path: path)
            Issue.record("expected an error for \(path)")
        } catch {
            #expect(error.message.contains(path), "the message must name the file: \(error.message)")
            for fragment in fragments {
                #expect(error.message.contains(fragment), "'\(error.message)' should mention '\(fragment)'")
            }
        }
    }

    private func damagedCopy(_ damage: (HDF5File) throws -> Void) throws -> String {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let path = try SyntheticModels.writeCheckpoint(contents)
        try damage(try HDF5File.openForUpdate(path))
        return path
    }

    @Test func missingFile() {
        expectError("/nonexistent/model.h5", containing: ["no such file"])
    }

    @Test func notHDF5() throws {
        let path = SyntheticModels.temporaryPath("text.h5")
        try "this is not a checkpoint\n".write(toFile: path, atomically: true, encoding: .utf8)
        expectError(path, containing: ["not an HDF5 file"])
    }

    @Test func truncatedFile() throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let path = try SyntheticModels.writeCheckpoint(contents)
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        expectError(path, containing: ["truncated or corrupt"])
    }

    @Test func missingTensor() throws {
        let path = try damagedCopy { try $0.delete("layers/1/mlp/gate_proj/weight") }
        expectError(path, containing: ["missing tensor 'layers/1/mlp/gate_proj/weight'"])
    }

    @Test func wrongShape() throws {
        let path = try damagedCopy { file in
            try file.delete("layers/0/attention/q_proj/weight")
            try file.writeFloats("layers/0/attention/q_proj/weight", shape: [32, 16], data: .init(repeating: 0, count: 512), as: .float32)
        }
        expectError(path, containing: ["layers/0/attention/q_proj/weight", "[32, 16]", "[32, 32]"])
    }

    @Test func unsupportedDtype() throws {
        let path = try damagedCopy { file in
            try file.delete("final_norm/weight")
            try file.writeInt32s("final_norm/weight", .init(repeating: 1, count: 32))
        }
        expectError(path, containing: ["final_norm/weight", "unsupported dtype int32"])
    }

    @Test func missingConfigField() throws {
        let path = try damagedCopy { try $0.delete("config", attribute: "rope_theta") }
        expectError(path, containing: ["missing config field 'rope_theta'"])
    }

    @Test func newerFormatVersion() throws {
        let path = try damagedCopy { try $0.setAttribute(".", "format_version", 99) }
        expectError(path, containing: ["format version 99"])
    }

    @Test func notACheckpoint() throws {
        let path = try damagedCopy { try $0.delete(".", attribute: "format") }
        expectError(path, containing: ["not a PTQKit checkpoint"])
    }

    @Test func invalidConfigValue() throws {
        let path = try damagedCopy { try $0.setAttribute("config", "kv_head_count", 3) }
        expectError(path, containing: ["head_count 4 must be a multiple of kv_head_count 3"])
    }

    /// A failed write leaves neither the destination nor a temporary file behind.
    @Test func atomicWrite() throws {
        // A folder of its own: other tests write temporary files concurrently.
        let folder = SyntheticModels.temporaryPath("atomic")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = folder + "/atomic.h5"
        let before = try FileManager.default.contentsOfDirectory(atPath: folder)
        #expect(throws: PTQError.self) {
            try AtomicFile.write(to: path) { (temp: String) throws(PTQError) in
                _ = FileManager.default.createFile(atPath: temp, contents: Data("partial".utf8))
                throw PTQError("simulated crash")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == before)

        var contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        contents.tensors["layers/0/mlp/up_proj/weight"] = nil
        #expect(throws: PTQError.self) { try CheckpointWriter.write(contents, to: path) }
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(throws: PTQError.self) { try CheckpointWriter.write(contents, to: "/nonexistent-folder/x.h5") }
    }
}
