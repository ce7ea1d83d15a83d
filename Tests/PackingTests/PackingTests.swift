import Foundation
import PTQCore
@testable import Packing
import Testing

// MARK: - Helpers

/// Test helpers on PTQCore's seeded generator, so every run sees the same data.
extension SplitMix {
    mutating func floats(_ count: Int, in range: ClosedRange<Float> = -1...1) -> [Float] {
        (0..<count).map { _ in Float.random(in: range, using: &self) }
    }
    mutating func codes(_ count: Int, bits: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...UInt8((1 << bits) - 1), using: &self) }
    }
}

/// A fresh folder under the system temporary directory, removed by `cleanup()`.
struct TempFolder {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("packing-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
    func contents() -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] }

    /// A fresh folder holding `tiny.ptq`, the synthetic model packed; the caller cleans up.
    static func withTinyModel() throws -> (TempFolder, String) {
        let folder = try TempFolder()
        let path = folder.file("tiny.ptq")
        do { try PackedFile.write(Synthetic.model(), to: path) } catch { folder.cleanup(); throw error }
        return (folder, path)
    }
}

func readBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
func writeBytes(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

/// Expects `PackedFile.read` (and, unless told otherwise, `summary`) to fail with a message
/// containing every fragment.
func expectReadFails(_ path: String, _ fragments: String..., checkSummary: Bool = true,
                     sourceLocation: SourceLocation = #_sourceLocation) {
    var calls: [(String, () throws(PTQError) -> Void)] = [("read", { () throws(PTQError) in _ = try PackedFile.read(path: path) })]
    if checkSummary { calls.append(("summary", { () throws(PTQError) in _ = try PackedFile.summary(path: path) })) }
    for (what, call) in calls {
        do throws(PTQError) {
            try call()
            Issue.record("\(what) accepted a bad file; expected an error with \(fragments)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.message.hasPrefix(path), "\(error.message)", sourceLocation: sourceLocation)
            for fragment in fragments {
                #expect(error.message.contains(fragment), "\(what): '\(error.message)' lacks '\(fragment)'",
                        sourceLocation: sourceLocation)
            }
        }
    }
}

/// Re-assembles a packed file after editing the raw (decompressed) bytes of its sections, with
/// a fresh layout and valid checksums, so the reader's semantic checks can be exercised.
func rewrite(_ path: String, to output: String, edit: (String, inout [UInt8]) throws -> Void) throws {
    let bytes = try readBytes(path)
    var encoded: [PackedFile.EncodedSection] = []
    for s in try PackedFile.sections(path: path) {
        let stored = Array(bytes[s.offset..<(s.offset + s.storedSize)])
        var raw = stored
        if s.codec == .zstd {
            raw = [UInt8](repeating: 0, count: s.rawSize)
            let failure = raw.withUnsafeMutableBytes { d in stored.withUnsafeBytes { Zstd.decompress($0, into: d) } }
            #expect(failure == nil)
        }
        try edit(s.name, &raw)
        encoded.append(try PackedFile.encodeSection(name: s.name, kind: s.kind, raw: raw, level: 3, path: output))
    }
    try writeBytes(PackedFile.Layout(encoded).assemble(encoded), output)
}

/// Edits the manifest JSON as a dictionary.
func editManifest(_ raw: inout [UInt8], _ body: (inout [String: Any]) -> Void) throws {
    var object = try #require(try JSONSerialization.jsonObject(with: Data(raw)) as? [String: Any])
    body(&object)
    raw = [UInt8](try JSONSerialization.data(withJSONObject: object))
}

// MARK: - Synthetic model

enum Synthetic {
    static let config = ModelConfig(
        architecture: .llama, vocabSize: 40, hiddenSize: 64, intermediateSize: 96, layerCount: 1,
        headCount: 4, kvHeadCount: 2, maxPositions: 128, ropeTheta: 10_000, normEpsilon: 1e-5,
        activation: .silu, tiedEmbeddings: true, name: "tiny-llama")

    static let tokenizer = TokenizerSpec(
        kind: .byteLevelBPE,
        tokens: (0..<36).map { "t\($0)" } + ["Ġhello", "wörld", "日本", "<|end|>"],
        merges: ["t 1", "Ġ h", "he llo"], tokenTypes: (0..<40).map { $0 == 39 ? 3 : 1 },
        preTokenizer: "smollm", bosTokenID: 0, eosTokenID: 39, unknownTokenID: nil,
        paddingTokenID: 38, addBOS: true, maxLength: 0)

    /// `model` as a packed file stores it: float matrices rounded through float16.
    static func asStored(_ model: PackedModel) -> PackedModel {
        var stored = model
        for (name, tensor) in model.floatTensors where tensor.shape.count >= 2 {
            stored.floatTensors[name] = Tensor(shape: tensor.shape, data: tensor.data.map { Float(Float16($0)) })
        }
        return stored
    }

    static func model(seed: UInt64 = 7) -> PackedModel {
        var rng = SplitMix(seed: seed)
        var floats: [String: Tensor] = [:]
        var embedding = rng.floats(40 * 64)
        embedding[0] = -0.0
        embedding[1] = .infinity
        embedding[2] = Float.leastNonzeroMagnitude
        floats["embeddings/token/weight"] = Tensor(shape: [40, 64], data: embedding)
        floats["layers/0/attention_norm/weight"] = Tensor(shape: [64], data: rng.floats(64, in: 0.5...1.5))
        floats["layers/0/mlp_norm/weight"] = Tensor(shape: [64], data: rng.floats(64, in: 0.5...1.5))
        floats["final_norm/weight"] = Tensor(shape: [64], data: rng.floats(64, in: 0.5...1.5))
        // Linear layers a recipe left in float.
        floats["layers/0/attention/k_proj/weight"] = Tensor(shape: [32, 64], data: rng.floats(32 * 64))
        floats["layers/0/attention/v_proj/weight"] = Tensor(shape: [32, 64], data: rng.floats(32 * 64))
        floats["layers/0/attention/o_proj/weight"] = Tensor(shape: [64, 64], data: rng.floats(64 * 64))
        floats["layers/0/mlp/gate_proj/weight"] = Tensor(shape: [96, 64], data: rng.floats(96 * 64))

        // 4-bit asymmetric, group 32, zero points, weight-only.
        let down = IntegerWeight(bits: 4, rows: 64, columns: 96, groupSize: 32, symmetric: false,
                                 codes: rng.codes(64 * 96, bits: 4), scales: rng.floats(64 * 3, in: 0.001...0.1),
                                 zeros: (0..<(64 * 3)).map { _ in Float(Int.random(in: 0...15, using: &rng)) })
        // 8-bit symmetric per row, per-token activations with channel scales and shift, bias.
        let q = IntegerWeight(bits: 8, rows: 64, columns: 64, groupSize: 64, symmetric: true,
                              codes: (0..<(64 * 64)).map { _ in UInt8.random(in: 1...255, using: &rng) },
                              scales: rng.floats(64, in: 0.001...0.05), zeros: nil)
        let qActivation = ActivationQuantization(bits: 8, granularity: .perToken,
                                                 channelScales: rng.floats(64, in: 0.5...4),
                                                 channelShift: rng.floats(64, in: -0.2...0.2))
        // 3-bit symmetric, groups that do not divide the row, static per-tensor activations.
        let up = IntegerWeight(bits: 3, rows: 96, columns: 64, groupSize: 20, symmetric: true,
                               codes: rng.codes(96 * 64, bits: 3), scales: rng.floats(96 * 4, in: 0.01...0.2),
                               zeros: nil)
        let linears: [String: QuantizedLinear] = [
            "layers/0/mlp/down_proj": QuantizedLinear(
                name: "layers/0/mlp/down_proj", method: "gptq", weight: .integer(down),
                details: ["damp": "0.01", "act_order": "true"]),
            "layers/0/attention/q_proj": QuantizedLinear(
                name: "layers/0/attention/q_proj", method: "outliertune", weight: .integer(q), bias: rng.floats(64),
                activation: qActivation, details: ["alpha": "0.55"]),
            "layers/0/mlp/up_proj": QuantizedLinear(
                name: "layers/0/mlp/up_proj", method: "rtn", weight: .integer(up),
                activation: ActivationQuantization(bits: 8, granularity: .perTensor, scale: 0.012_345_678_9)),
        ]
        return PackedModel(config: config, tokenizer: tokenizer, floatTensors: floats, quantizedLinears: linears,
                           recipe: "name: w4-mixed\nmethod: gptq\nbits: 4\n", statsHash: "0123456789abcdef",
                           modelIdentity: config.identity, toolVersion: "0.1.0-test",
                           metadata: ["source": "/models/tiny.h5", "date": "2025-01-01"])
    }
}

// MARK: - Bit packing

@Suite("Bit packing")
struct BitPackingTests {
    @Test("round trip at every width and odd counts", arguments: 1...8)
    func roundTrip(bits: Int) throws {
        var rng = SplitMix(seed: UInt64(bits))
        for count in [0, 1, 7, 33, 1000] {
            let codes = rng.codes(count, bits: bits)
            let packed = BitPacking.pack(codes, bits: bits)
            #expect(packed.count == (count * bits + 7) / 8, "bits \(bits) count \(count)")
            let unpacked = try BitPacking.unpack(packed, bits: bits, count: count)
            #expect(unpacked == codes, "bits \(bits) count \(count)")
            // Unused high bits of the last byte are zero.
            if let last = packed.last, (count * bits) % 8 != 0 {
                #expect(last >> ((count * bits) % 8) == 0)
            }
        }
    }

    @Test("4-bit layout: element 2i in the low nibble, 2i+1 in the high nibble")
    func fourBitLayout() throws {
        #expect(BitPacking.pack([1, 2, 3, 4, 5], bits: 4) == [0x21, 0x43, 0x05])
        #expect(BitPacking.pack([0xF, 0x0, 0xA, 0xB], bits: 4) == [0x0F, 0xBA])
        #expect(try BitPacking.unpack([0x21, 0x43, 0x05], bits: 4, count: 5) == [1, 2, 3, 4, 5])
    }

    @Test("2-bit layout: element 4i + j in bits 2j, 2j + 1 of byte i")
    func twoBitLayout() throws {
        #expect(BitPacking.pack([1, 2, 3, 0, 2, 1], bits: 2) == [0x39, 0x06])
        for count in 0...6 {
            let codes: [UInt8] = Array([1, 2, 3, 0, 2, 1].prefix(count))
            #expect(try BitPacking.unpack([0x39, 0x06], bits: 2, count: count) == codes, "count \(count)")
        }
    }

    @Test("1-bit layout: element 8i + j in bit j of byte i")
    func oneBitLayout() throws {
        #expect(BitPacking.pack([1, 0, 1, 1, 0, 0, 0, 1, 1], bits: 1) == [0x8D, 0x01])
        #expect(try BitPacking.unpack([0x8D, 0x01], bits: 1, count: 9) == [1, 0, 1, 1, 0, 0, 0, 1, 1])
    }

    @Test("3-bit codes straddle bytes LSB-first")
    func threeBitLayout() throws {
        // 1 | 2 << 3 | (3 & 0b11) << 6 = 0xD1, then the top bit of 3 (0) in byte 1.
        #expect(BitPacking.pack([1, 2, 3], bits: 3) == [0xD1, 0x00])
        #expect(BitPacking.pack([7, 7, 7], bits: 3) == [0xFF, 0x01])
        // 8 codes fill exactly 3 bytes.
        #expect(BitPacking.pack([7, 0, 0, 0, 0, 0, 0, 7], bits: 3) == [0x07, 0x00, 0xE0])
    }

    @Test("unpack rejects short input and invalid widths")
    func unpackErrors() {
        #expect(throws: PTQError.self) { try BitPacking.unpack([0x21], bits: 4, count: 3) }
        #expect(throws: PTQError.self) { try BitPacking.unpack([UInt8](repeating: 0, count: 4), bits: 3, count: 11) }
        #expect(throws: PTQError.self) { try BitPacking.unpack([1], bits: 0, count: 1) }
        #expect(throws: PTQError.self) { try BitPacking.unpack([1], bits: 9, count: 1) }
        #expect(throws: PTQError.self) { try BitPacking.unpack([1], bits: 4, count: -1) }
        // Extra bytes are fine.
        #expect((try? BitPacking.unpack([0x21, 0xFF], bits: 4, count: 2)) == [1, 2])
    }

    @Test("CRC-32 matches the IEEE check value")
    func crc() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([]) == 0)
        // Slicing path (≥ 8 bytes) agrees with piecewise byte-at-a-time updates.
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        var crc: UInt32 = 0
        for byte in data { crc = CRC32.checksum([byte], continuing: crc) }
        #expect(crc == CRC32.checksum(data))
    }
}

// MARK: - Packed files

@Suite("Packed files")
struct PackedFileTests {
    @Test("synthetic model round-trips exactly")
    func roundTrip() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        let model = Synthetic.model()
        let path = folder.file("tiny.ptq")
        try PackedFile.write(model, to: path)
        let back = try PackedFile.read(path: path)
        // Matrices are stored as float16 (rounded to nearest even), vectors as float32.
        #expect(back == Synthetic.asStored(model))
        #expect(back != model)
        // Bit-exact after float16 rounding, including -0 and infinity.
        let a = try #require(model.floatTensors["embeddings/token/weight"]).data.map { Float(Float16($0)).bitPattern }
        let b = try #require(back.floatTensors["embeddings/token/weight"]).data.map(\.bitPattern)
        #expect(a == b)
        for (name, tensor) in model.floatTensors where tensor.shape.count == 1 {
            #expect(back.floatTensors[name]?.data.map(\.bitPattern) == tensor.data.map(\.bitPattern), "\(name) stays float32")
        }
        #expect(back.quantizedLinears["layers/0/mlp/up_proj"]?.activation?.scale == 0.012_345_678_9)
        // No temporary file left behind.
        #expect(folder.contents() == ["tiny.ptq"])
    }

    @Test("output is deterministic and follows the documented layout")
    func layout() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        let model = Synthetic.model()
        try PackedFile.write(model, to: folder.file("a.ptq"))
        try PackedFile.write(model, to: folder.file("b.ptq"))
        let bytes = try readBytes(folder.file("a.ptq"))
        #expect(bytes == (try readBytes(folder.file("b.ptq"))))

        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) } }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * $1) } }
        #expect(Array(bytes[0..<8]) == Array("PTQKPACK".utf8))
        #expect(u32(8) == 1)  // version
        #expect(u32(12) == 0)  // flags
        let sections = try PackedFile.sections(path: folder.file("a.ptq"))
        #expect(Int(u32(16)) == sections.count)
        let tableOffset = Int(u64(24)), tableSize = Int(u64(32))
        #expect(Int(u64(40)) == bytes.count)
        #expect(tableOffset % 64 == 0)
        #expect(tableOffset + tableSize + 4 == bytes.count)
        #expect(u32(60) == CRC32.checksum(Array(bytes[0..<60])))
        #expect(u32(tableOffset + tableSize) == CRC32.checksum(Array(bytes[tableOffset..<(tableOffset + tableSize)])))
        // Payloads first (float tensors, then quantized linears, by name), the manifest and
        // tokenizer last: the manifest records the payloads' stored sizes (PackedFileWriter).
        #expect(sections.map(\.name).suffix(2) == ["manifest", "tokenizer"])
        #expect(sections.first?.name.hasPrefix("tensor:") == true)
        #expect(sections.map(\.offset) == sections.map(\.offset).sorted())
        for s in sections {
            #expect(s.offset % 64 == 0, "\(s.name)")
            #expect(s.crc32 == CRC32.checksum(Array(bytes[s.offset..<(s.offset + s.storedSize)])))
        }
        // One section per payload: 8 float tensors, codes + scales (+ zeros / bias / activation arrays).
        let names = Set(sections.map(\.name))
        #expect(sections.count == 2 + 8 + 3 + 5 + 2)
        #expect(names.contains("linear:layers/0/mlp/down_proj:zeros"))
        #expect(names.contains("linear:layers/0/attention/q_proj:activation_channel_shift"))
        #expect(!names.contains("linear:layers/0/mlp/up_proj:zeros"))
        // Codes are stored at their true width.
        let upCodes = try #require(sections.first { $0.name == "linear:layers/0/mlp/up_proj:codes" })
        #expect(upCodes.rawSize == 96 * 64 * 3 / 8)
    }

    @Test("4-bit codes take half a byte each on disk")
    func trueBitWidth() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        var rng = SplitMix(seed: 42)
        let weight = IntegerWeight(bits: 4, rows: 256, columns: 256, groupSize: 256, symmetric: true,
                                   codes: rng.codes(256 * 256, bits: 4), scales: rng.floats(256, in: 0.01...0.1),
                                   zeros: nil)
        let model = PackedModel(
            config: Synthetic.config, tokenizer: Synthetic.tokenizer, floatTensors: [:],
            quantizedLinears: ["layers/0/mlp/up_proj": QuantizedLinear(name: "layers/0/mlp/up_proj", method: "rtn",
                                                                       weight: .integer(weight))],
            recipe: "", statsHash: nil, modelIdentity: Synthetic.config.identity, toolVersion: "test")
        let path = folder.file("w4.ptq")
        try PackedFile.write(model, to: path)
        let size = try readBytes(path).count
        let codes = try #require(try PackedFile.sections(path: path).first { $0.kind == .codes })
        #expect(codes.rawSize == 32_768)
        #expect(codes.storedSize <= 32_768)
        #expect(size > 32_768 && size < 36_000, "file is \(size) bytes")
        let summary = try PackedFile.summary(path: path)
        #expect(summary.totalBytes == size)
        #expect(summary.bitsPerWeight > 4 && summary.bitsPerWeight < 4.2, "\(summary.bitsPerWeight)")
        print("4-bit 256×256: raw codes \(256 * 256) bytes (one per code), codes section \(codes.storedSize) bytes, "
              + "file \(size) bytes, \(summary.bitsPerWeight) bits/weight")
        #expect(try PackedFile.read(path: path) == model)
    }

    @Test("summary: per-tensor rows, bits per weight, snake_case JSON")
    func summary() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        let model = Synthetic.model()
        let path = folder.file("tiny.ptq")
        try PackedFile.write(model, to: path)
        let summary = try PackedFile.summary(path: path)
        let sections = try PackedFile.sections(path: path)
        #expect(summary.formatVersion == 1)
        #expect(summary.toolVersion == "0.1.0-test")
        #expect(summary.config == model.config)
        #expect(summary.modelIdentity == model.modelIdentity)
        #expect(summary.statsHash == "0123456789abcdef")
        #expect(summary.recipe == model.recipe)
        #expect(summary.vocabularySize == 40)
        #expect(summary.tensors.count == 8 + 3)
        #expect(summary.totalBytes == (try readBytes(path)).count)
        // Model order: the embedding first, final norm last.
        #expect(summary.tensors.first?.name == "embeddings/token/weight")
        #expect(summary.tensors.last?.name == "final_norm/weight")

        let down = try #require(summary.tensors.first { $0.name == "layers/0/mlp/down_proj" })
        #expect(down.kind == "gptq")
        #expect(down.bits == 4 && down.groupSize == 32 && down.activation == "float")
        #expect(down.parameterCount == 64 * 96)
        let downBytes = sections.filter { $0.name.hasPrefix("linear:layers/0/mlp/down_proj:") }.reduce(0) { $0 + $1.storedSize }
        #expect(down.storedBytes == downBytes)
        #expect(down.bitsPerWeight == 8 * Double(downBytes) / Double(64 * 96))

        let q = try #require(summary.tensors.first { $0.name == "layers/0/attention/q_proj" })
        #expect(q.activation == "int8 per_token, channel scales, shift")
        #expect(q.parameterCount == 64 * 64 + 64)
        let norm = try #require(summary.tensors.first { $0.name == "final_norm/weight" })
        #expect(norm.kind == "float" && norm.bits == 32 && norm.groupSize == nil && norm.parameterCount == 64)

        let payload = sections.filter { $0.kind != .manifest && $0.kind != .tokenizer }.reduce(0) { $0 + $1.storedSize }
        #expect(summary.storedPayloadBytes == payload)
        #expect(summary.parameterCount == summary.tensors.reduce(0) { $0 + $1.parameterCount })
        #expect(summary.bitsPerWeight == 8 * Double(payload) / Double(summary.parameterCount))

        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(summary), as: UTF8.self)
        for key in ["\"bits_per_weight\"", "\"format_version\"", "\"tool_version\"", "\"model_identity\"",
                    "\"stats_hash\"", "\"total_bytes\"", "\"group_size\"", "\"parameter_count\"", "\"stored_bytes\""] {
            #expect(json.contains(key), "missing \(key)")
        }
        #expect(json.contains("\"group_size\":null"))
    }

    @Test("a corrupted byte in every section is detected and named")
    func corruptEverySection() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        let original = try readBytes(path)
        let sections = try PackedFile.sections(path: path)
        #expect(sections.count > 10)
        for s in sections {
            try #require(s.storedSize > 0)
            for position in [s.offset, s.offset + s.storedSize / 2, s.offset + s.storedSize - 1] {
                var bytes = original
                bytes[position] ^= 0x5A
                let bad = folder.file("bad.ptq")
                try writeBytes(bytes, bad)
                // summary() reads only the manifest and tokenizer, so it is checked for those.
                let viaSummary = s.kind == .manifest || s.kind == .tokenizer
                expectReadFails(bad, "section '\(s.name)'", "corrupted (checksum mismatch)", checkSummary: viaSummary)
            }
        }
    }

    @Test("every flipped header byte is detected")
    func corruptHeader() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        let original = try readBytes(path)
        let bad = folder.file("bad.ptq")
        for position in 0..<64 {
            var bytes = original
            bytes[position] ^= 0x01
            try writeBytes(bytes, bad)
            switch position {
            case 0..<8: expectReadFails(bad, "not a PTQKit packed file")
            case 8..<12: expectReadFails(bad, "is not supported; this build reads 1")
            default: expectReadFails(bad, "header is corrupted (checksum mismatch)")
            }
        }
    }

    @Test("flipped bytes in the section table and padding are detected")
    func corruptTableAndPadding() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        let original = try readBytes(path)
        let sections = try PackedFile.sections(path: path)
        let tableOffset = (0..<8).reduce(0) { $0 | Int(original[24 + $1]) << (8 * $1) }
        let bad = folder.file("bad.ptq")
        for position in stride(from: tableOffset, to: original.count, by: 7) + [original.count - 1] {
            var bytes = original
            bytes[position] ^= 0x80
            try writeBytes(bytes, bad)
            expectReadFails(bad, "section table is corrupted (checksum mismatch)")
        }
        // A padding byte between two sections.
        let gap = try #require(sections.first { PackedLayout.aligned($0.offset + $0.storedSize) > $0.offset + $0.storedSize })
        var bytes = original
        bytes[gap.offset + gap.storedSize] = 0xFF
        try writeBytes(bytes, bad)
        expectReadFails(bad, "padding after section '\(gap.name)'")
    }

    @Test("truncated files are rejected at every kind of cut point")
    func truncated() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        let original = try readBytes(path)
        let sections = try PackedFile.sections(path: path)
        let bad = folder.file("cut.ptq")
        try writeBytes([], bad)
        expectReadFails(bad, "not a PTQKit packed file")
        for cut in [4, 8, 11, 12, 40, 63] {
            try writeBytes(Array(original[0..<cut]), bad)
            expectReadFails(bad, "truncated")
        }
        let cuts = [64, 100, sections[2].offset + 3, original.count / 2, original.count - 40, original.count - 1]
        for cut in cuts {
            try writeBytes(Array(original[0..<cut]), bad)
            expectReadFails(bad, "file is truncated: the header says \(original.count) bytes, found \(cut)")
        }
        // Appended bytes are rejected too.
        try writeBytes(original + [0, 0, 0], bad)
        expectReadFails(bad, "3 unexpected bytes")
    }

    @Test("wrong magic and other files are refused")
    func wrongMagic() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        var bytes = try readBytes(path)
        bytes.replaceSubrange(0..<8, with: Array("PTQKPACX".utf8))
        let bad = folder.file("bad.ptq")
        try writeBytes(bytes, bad)
        expectReadFails(bad, "not a PTQKit packed file")
        try writeBytes(Array("{\"format\": \"json\"}".utf8), bad)
        expectReadFails(bad, "not a PTQKit packed file")
        try writeBytes(Array("\u{89}HDF\r\n\u{1A}\n".utf8) + [UInt8](repeating: 0, count: 200), bad)
        expectReadFails(bad, "not a PTQKit packed file")
        expectReadFails(folder.file("missing.ptq"), "cannot open")
        expectReadFails(folder.path, "not a regular file")
    }

    @Test("a future format version is refused with a clear message")
    func futureVersion() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        var bytes = try readBytes(path)
        bytes[8] = 3
        // A consistent future header: checksum recomputed.
        let crc = CRC32.checksum(Array(bytes[0..<60]))
        for k in 0..<4 { bytes[60 + k] = UInt8(truncatingIfNeeded: crc >> (8 * k)) }
        let future = folder.file("future.ptq")
        try writeBytes(bytes, future)
        expectReadFails(future, "format version 3 is not supported; this build reads 1…2")
    }

    @Test("payloads that do not match the manifest are rejected, naming the tensor")
    func manifestMismatch() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        let bad = folder.file("bad.ptq")

        // The rewrite helper itself produces a valid file.
        try rewrite(path, to: bad) { _, _ in }
        #expect(try PackedFile.read(path: bad) == Synthetic.asStored(Synthetic.model()))

        try rewrite(path, to: bad) { name, raw in
            guard name == "manifest" else { return }
            try editManifest(&raw) { m in
                var floats = m["float_tensors"] as! [[String: Any]]
                let i = floats.firstIndex { $0["name"] as? String == "final_norm/weight" }!
                floats[i]["shape"] = [65]
                m["float_tensors"] = floats
            }
        }
        expectReadFails(bad, "tensor 'final_norm/weight'", "section 'tensor:final_norm/weight' holds 256 bytes",
                        "needs 260")

        try rewrite(path, to: bad) { name, raw in
            guard name == "manifest" else { return }
            try editManifest(&raw) { m in
                var linears = m["quantized_linears"] as! [[String: Any]]
                let i = linears.firstIndex { $0["name"] as? String == "layers/0/mlp/down_proj" }!
                linears[i]["bits"] = 3
                m["quantized_linears"] = linears
            }
        }
        expectReadFails(bad, "tensor 'layers/0/mlp/down_proj'", "section 'linear:layers/0/mlp/down_proj:codes'")

        try rewrite(path, to: bad) { name, raw in
            guard name == "manifest" else { return }
            try editManifest(&raw) { m in
                var linears = m["quantized_linears"] as! [[String: Any]]
                let i = linears.firstIndex { $0["name"] as? String == "layers/0/mlp/up_proj" }!
                linears[i]["scales"] = "linear:nowhere:scales"
                m["quantized_linears"] = linears
            }
        }
        expectReadFails(bad, "section 'linear:nowhere:scales' is missing")

        try rewrite(path, to: bad) { name, raw in
            if name == "manifest" { raw = Array("{\"format_version\": 1, ".utf8) }
        }
        expectReadFails(bad, "section 'manifest': invalid manifest JSON")

        try rewrite(path, to: bad) { name, raw in
            guard name == "manifest" else { return }
            try editManifest(&raw) { m in m.removeValue(forKey: "config") }
        }
        expectReadFails(bad, "section 'manifest': invalid manifest JSON", "config")

        try rewrite(path, to: bad) { name, raw in
            if name == "tokenizer" { raw = Array("[]".utf8) }
        }
        expectReadFails(bad, "section 'tokenizer': invalid tokenizer JSON")

        // A payload section that is a little short (the raw size differs from the manifest's).
        try rewrite(path, to: bad) { name, raw in
            if name == "linear:layers/0/attention/q_proj:bias" { raw.removeLast(4) }
        }
        expectReadFails(bad, "tensor 'layers/0/attention/q_proj'", "section 'linear:layers/0/attention/q_proj:bias'",
                        "needs 256")
    }

    @Test("zstd errors behind a valid CRC are reported with the section")
    func zstdErrors() throws {
        let (folder, path) = try TempFolder.withTinyModel()
        defer { folder.cleanup() }
        let bytes = try readBytes(path)
        let sections = try PackedFile.sections(path: path)
        let victim = try #require(sections.first { $0.codec == .zstd && $0.kind == .floatTensor })
        let bad = folder.file("bad.ptq")
        // Re-assembles the file with the victim's stored bytes or table entry edited; the layout
        // recomputes every CRC, so only zstd (or the size checks) can notice.
        func assemble(_ edit: (inout PackedFile.EncodedSection) -> Void) throws {
            var encoded: [PackedFile.EncodedSection] = []
            for s in sections {
                var e = PackedFile.EncodedSection(name: s.name, kind: s.kind, codec: s.codec, rawSize: s.rawSize,
                                                  stored: Array(bytes[s.offset..<(s.offset + s.storedSize)]))
                if s.name == victim.name { edit(&e) }
                encoded.append(e)
            }
            try writeBytes(PackedFile.Layout(encoded).assemble(encoded), bad)
        }
        try assemble { $0.stored[$0.stored.count / 2] ^= 0x21 }
        expectReadFails(bad, "section '\(victim.name)'", "zstd error", checkSummary: false)
        try assemble { $0.stored.removeLast(4) }  // frame checksum cut off
        expectReadFails(bad, "section '\(victim.name)'", "zstd error", checkSummary: false)
        try assemble { $0.stored = Array(repeating: 0x11, count: 40) }  // not a frame at all
        expectReadFails(bad, "section '\(victim.name)'", "zstd error", checkSummary: false)
        // A valid frame of the wrong length: refused before any buffer is sized from it.
        let short = try [UInt8](repeating: 1, count: victim.rawSize - 4).withUnsafeBytes { Zstd.compress($0, level: 3) }.get()
        try assemble { $0.stored = short }
        expectReadFails(bad, "section '\(victim.name)'", "zstd error: frame holds \(victim.rawSize - 4) bytes",
                        checkSummary: false)
        try assemble { $0.rawSize += 4 }  // table disagrees with the manifest's shape
        expectReadFails(bad, "section '\(victim.name)'", "needs \(victim.rawSize)")
    }

    @Test("writes are atomic: nothing is left behind when writing fails")
    func atomicWrite() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        let model = Synthetic.model()

        // Destination folder missing.
        let missing = folder.file("no-such-folder/model.ptq")
        #expect(throws: PTQError.self) { try PackedFile.write(model, to: missing) }
        #expect(!FileManager.default.fileExists(atPath: missing))

        // A failing write leaves an existing file untouched and no temporary file.
        let path = folder.file("model.ptq")
        try PackedFile.write(model, to: path)
        let before = try readBytes(path)
        var broken = model
        var down = try #require(broken.quantizedLinears["layers/0/mlp/down_proj"]?.weight.integer)
        down.codes[5] = 16  // does not fit in 4 bits
        broken.quantizedLinears["layers/0/mlp/down_proj"]!.weight = .integer(down)
        do throws(PTQError) {
            try PackedFile.write(broken, to: path)
            Issue.record("write accepted a 4-bit code of 16")
        } catch {
            #expect(error.message.contains("layers/0/mlp/down_proj"))
            #expect(error.message.contains("does not fit in 4 bits"))
        }
        #expect(try readBytes(path) == before)

        // A destination that is a folder: the rename fails after the temporary file was written.
        let dirTarget = folder.file("occupied")
        try FileManager.default.createDirectory(atPath: dirTarget + "/x", withIntermediateDirectories: true)
        #expect(throws: PTQError.self) { try PackedFile.write(model, to: dirTarget) }
        #expect(Set(folder.contents()) == ["model.ptq", "occupied"])
    }

    @Test("inconsistent models are refused before anything is written")
    func writeValidation() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        let path = folder.file("x.ptq")
        func expectWriteFails(_ model: PackedModel, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do throws(PTQError) {
                try PackedFile.write(model, to: path)
                Issue.record("write accepted a bad model", sourceLocation: sourceLocation)
            } catch {
                #expect(error.message.contains(fragment), "\(error.message)", sourceLocation: sourceLocation)
            }
            #expect(folder.contents().isEmpty, sourceLocation: sourceLocation)
        }
        var m = Synthetic.model()
        var up = try #require(m.quantizedLinears["layers/0/mlp/up_proj"]?.weight.integer)
        up.scales.removeLast()
        m.quantizedLinears["layers/0/mlp/up_proj"]!.weight = .integer(up)
        expectWriteFails(m, "scales")
        m = Synthetic.model()
        m.quantizedLinears["layers/0/attention/q_proj"]!.bias = [1, 2]
        expectWriteFails(m, "bias")
        m = Synthetic.model()
        m.quantizedLinears["layers/0/attention/q_proj"]!.name = "other"
        expectWriteFails(m, "dictionary key")
        m = Synthetic.model()
        m.floatTensors["final_norm/weight"]!.shape = [65]
        expectWriteFails(m, "final_norm/weight")
        #expect(throws: PTQError.self) { try PackedFile.write(Synthetic.model(), to: path, compressionLevel: 1000) }
        #expect(folder.contents().isEmpty)
    }

    @Test("empty tensors and a model without quantized layers round-trip")
    func edgeCases() throws {
        let folder = try TempFolder()
        defer { folder.cleanup() }
        let empty = IntegerWeight(bits: 2, rows: 0, columns: 16, groupSize: 16, symmetric: true,
                                  codes: [], scales: [], zeros: nil)
        let model = PackedModel(
            config: Synthetic.config, tokenizer: Synthetic.tokenizer,
            floatTensors: ["scalarish": Tensor(shape: [1], data: [3.5]), "nothing": Tensor(shape: [0, 4], data: [])],
            quantizedLinears: ["empty": QuantizedLinear(name: "empty", method: "rtn", weight: .integer(empty))],
            recipe: "", statsHash: nil, modelIdentity: "x", toolVersion: "t")
        let path = folder.file("edge.ptq")
        try PackedFile.write(model, to: path, compressionLevel: 19)
        #expect(try PackedFile.read(path: path) == model)
        let summary = try PackedFile.summary(path: path)
        #expect(summary.statsHash == nil)
        #expect(summary.tensors.count == 3)
    }
}
