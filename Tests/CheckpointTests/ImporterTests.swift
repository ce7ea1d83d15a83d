import Foundation
import Testing
import Checkpoint
import PTQCore

// MARK: - Helpers

/// A fresh temporary directory, removed by `cleanup`.
struct TempDir {
    let path: String

    init() {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("ptq-importer-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let p = file(name)
        let dir = (p as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }

    @discardableResult
    func write(_ name: String, text: String) -> String { write(name, Array(text.utf8)) }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Expects `body` to throw a PTQError whose message contains every fragment.
private func expectError(_ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation,
                         _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error mentioning \(fragments), but nothing was thrown", sourceLocation: sourceLocation)
    } catch {
        guard let error = error as? PTQError else {
            Issue.record("expected a PTQError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
            return
        }
        for fragment in fragments {
            #expect(error.message.contains(fragment), "error \"\(error.message)\" should mention \"\(fragment)\"",
                    sourceLocation: sourceLocation)
        }
    }
}

/// Deterministic pseudo-random numbers (64-bit LCG).
struct LCG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 6364136223846793005 &+ 1442695040888963407 }
    mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return state >> 33
    }
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func int<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func f32(_ v: Float) { int(v.bitPattern) }
    mutating func string(_ s: String) {
        int(UInt64(s.utf8.count))
        bytes.append(contentsOf: s.utf8)
    }
    mutating func pad(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }
}

private func halfBits(_ v: Float) -> UInt16 { Float16(v).bitPattern }

// MARK: - A tiny GGUF writer

enum MetaValue {
    case u32(UInt32), i32(Int32), u64(UInt64), f32(Float), bool(Bool), string(String)
    case strings([String]), i32s([Int32])
    /// Arbitrary bytes after the type tag (for malformed files).
    case raw(type: UInt32, body: [UInt8])
}

struct GGUFTestTensor {
    var name: String
    var ne: [Int]
    var type: UInt32
    var data: [UInt8]
}

struct GGUFBuilder {
    var magic: [UInt8] = Array("GGUF".utf8)
    var version: UInt32 = 3
    var metadata: [(String, MetaValue)] = []
    var tensors: [GGUFTestTensor] = []
    /// Layout alignment; add a matching `general.alignment` entry when it is not 32.
    var alignment = 32
    var tensorCountOverride: UInt64?
    var kvCountOverride: UInt64?
    var offsetOverrides: [String: UInt64] = [:]

    subscript(key: String) -> MetaValue? {
        get { metadata.first { $0.0 == key }?.1 }
        set {
            metadata.removeAll { $0.0 == key }
            if let newValue { metadata.append((key, newValue)) }
        }
    }

    func build() -> [UInt8] {
        var w = ByteWriter()
        w.bytes.append(contentsOf: magic)
        w.int(version)
        w.int(tensorCountOverride ?? UInt64(tensors.count))
        w.int(kvCountOverride ?? UInt64(metadata.count))
        for (key, value) in metadata {
            w.string(key)
            switch value {
            case .u32(let v): w.int(UInt32(4)); w.int(v)
            case .i32(let v): w.int(UInt32(5)); w.int(v)
            case .u64(let v): w.int(UInt32(10)); w.int(v)
            case .f32(let v): w.int(UInt32(6)); w.f32(v)
            case .bool(let v): w.int(UInt32(7)); w.bytes.append(v ? 1 : 0)
            case .string(let v): w.int(UInt32(8)); w.string(v)
            case .strings(let list):
                w.int(UInt32(9)); w.int(UInt32(8)); w.int(UInt64(list.count))
                for s in list { w.string(s) }
            case .i32s(let list):
                w.int(UInt32(9)); w.int(UInt32(5)); w.int(UInt64(list.count))
                for v in list { w.int(v) }
            case .raw(let type, let body):
                w.int(type); w.bytes.append(contentsOf: body)
            }
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            offsets.append(offset)
            offset += t.data.count
            offset = (offset + alignment - 1) / alignment * alignment
        }
        for (t, o) in zip(tensors, offsets) {
            w.string(t.name)
            w.int(UInt32(t.ne.count))
            for n in t.ne { w.int(UInt64(n)) }
            w.int(t.type)
            w.int(offsetOverrides[t.name] ?? UInt64(o))
        }
        w.pad(to: alignment)
        for t in tensors {
            w.bytes.append(contentsOf: t.data)
            w.pad(to: alignment)
        }
        return w.bytes
    }
}

/// Encodes a rows × cols matrix (GGUF order, cols contiguous) in `type` with values chosen so that
/// every element is exactly representable; returns the bytes and the exact expected floats.
func encode(_ type: GGMLType, rows: Int, cols: Int, rng: inout LCG) -> (bytes: [UInt8], values: [Float]) {
    var w = ByteWriter()
    var values: [Float] = []
    let n = rows * cols
    switch type {
    case .f32:
        for _ in 0..<n {
            let v = Float(rng.int(-100_000...100_000)) / 65_536
            values.append(v)
            w.f32(v)
        }
    case .f16:
        for _ in 0..<n {
            let v = Float(rng.int(-64...64)) / 16
            values.append(v)
            w.int(halfBits(v))
        }
    case .bf16:
        for _ in 0..<n {
            let v = Float(rng.int(-200...200)) / 8
            values.append(v)
            w.int(UInt16(v.bitPattern >> 16))
        }
    case .q8_0:
        for _ in 0..<(n / 32) {
            let d = Float(1) / Float(1 << rng.int(0...5))
            w.int(halfBits(d))
            for _ in 0..<32 {
                let q = Int8(rng.int(-128...127))
                w.int(q)
                values.append(Float(q) * d)
            }
        }
    case .q4_0, .q4_1:
        let scales: [Float] = [0.5, 0.25, 1, 0.125, 2]
        let mins: [Float] = [-1.5, -2, 0.75, 0]
        for _ in 0..<(n / 32) {
            let d = scales[rng.int(0...4)]
            let m = mins[rng.int(0...3)]
            w.int(halfBits(d))
            if type == .q4_1 { w.int(halfBits(m)) }
            let q = (0..<32).map { _ in UInt8(rng.int(0...15)) }
            for j in 0..<16 { w.bytes.append(q[j] | (q[j + 16] << 4)) }
            for j in 0..<32 {
                values.append(type == .q4_0 ? Float(Int(q[j]) - 8) * d : Float(q[j]) * d + m)
            }
        }
    default:
        // Unsupported types: zero blocks of the right size.
        w.bytes = [UInt8](repeating: 0, count: n / type.blockSize * type.typeSize)
    }
    return (w.bytes, values)
}

/// GGUF row `h·d + 2i + j` holds Hugging Face row `h·d + j·d/2 + i`.
func hfOrder(_ gguf: [Float], rows: Int, cols: Int, heads: Int) -> [Float] {
    let headDim = rows / heads, half = headDim / 2
    var out = [Float](repeating: .nan, count: gguf.count)
    for h in 0..<heads {
        for i in 0..<half {
            for j in 0..<2 {
                let hfRow = h * headDim + j * half + i
                let ggufRow = h * headDim + 2 * i + j
                for c in 0..<cols { out[hfRow * cols + c] = gguf[ggufRow * cols + c] }
            }
        }
    }
    return out
}

enum Tiny {
    static let hidden = 64, heads = 4, kvHeads = 2, headDim = 16, layers = 2, vocab = 40
    static let tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (3..<40).map { "t\($0)" }
    static let merges = ["t 3", "t 4", "t3 t4"]
}

struct TinyGGUF {
    var builder: GGUFBuilder
    /// Canonical name → (shape, exact values in Hugging Face order).
    var expected: [String: (shape: [Int], values: [Float])]
}

/// A 2-layer llama (hidden 64, 4 heads, 2 KV heads, head_dim 16) with tensors in every supported type.
func makeTinyLlama(tied: Bool = false, ffn: Int = 96, ffnDownType: GGMLType? = nil,
                           alignment: Int = 32) -> TinyGGUF {
    var b = GGUFBuilder()
    b.alignment = alignment
    b.metadata = [
        ("general.architecture", .string("llama")),
        ("general.name", .string("Tiny Llama")),
        ("llama.block_count", .u32(UInt32(Tiny.layers))),
        ("llama.context_length", .u32(256)),
        ("llama.embedding_length", .u32(UInt32(Tiny.hidden))),
        ("llama.feed_forward_length", .u32(UInt32(ffn))),
        ("llama.attention.head_count", .u32(UInt32(Tiny.heads))),
        ("llama.attention.head_count_kv", .u32(UInt32(Tiny.kvHeads))),
        ("llama.rope.freq_base", .f32(50_000)),
        ("llama.attention.layer_norm_rms_epsilon", .f32(1e-5)),
        ("llama.rope.dimension_count", .u32(UInt32(Tiny.headDim))),
        ("tokenizer.ggml.model", .string("gpt2")),
        ("tokenizer.ggml.pre", .string("smollm")),
        ("tokenizer.ggml.tokens", .strings(Tiny.tokens)),
        ("tokenizer.ggml.token_type", .i32s([3, 3, 3] + [Int32](repeating: 1, count: Tiny.vocab - 3))),
        ("tokenizer.ggml.merges", .strings(Tiny.merges)),
        ("tokenizer.ggml.bos_token_id", .u32(1)),
        ("tokenizer.ggml.eos_token_id", .u32(2)),
        ("tokenizer.ggml.padding_token_id", .u32(2)),
        ("tokenizer.ggml.add_bos_token", .bool(false)),
    ]
    if alignment != 32 { b.metadata.append(("general.alignment", .u32(UInt32(alignment)))) }
    var expected: [String: (shape: [Int], values: [Float])] = [:]
    var rng = LCG(42)
    func add(_ name: String, _ canonical: String, _ type: GGMLType, rows: Int, cols: Int, heads: Int? = nil) {
        let (bytes, values) = encode(type, rows: rows, cols: cols, rng: &rng)
        b.tensors.append(GGUFTestTensor(name: name, ne: rows == 1 ? [cols] : [cols, rows], type: type.rawValue,
                                        data: bytes))
        let hf = heads.map { hfOrder(values, rows: rows, cols: cols, heads: $0) } ?? values
        expected[canonical] = (rows == 1 ? [cols] : [rows, cols], hf)
    }
    let h = Tiny.hidden, kv = Tiny.kvHeads * Tiny.headDim
    add("token_embd.weight", TensorNames.tokenEmbedding, .q8_0, rows: Tiny.vocab, cols: h)
    let layerTypes: [[GGMLType]] = [
        [.q4_0, .q4_1, .f16, .bf16, .q8_0, .q4_1, .q4_0],
        [.bf16, .q4_0, .q8_0, .q4_1, .f16, .f32, .bf16],
    ]
    for l in 0..<Tiny.layers {
        let t = layerTypes[l]
        func name(_ s: String) -> String { "blk.\(l).\(s).weight" }
        func canon(_ s: String) -> String { TensorNames.layer(l, s + "/weight") }
        add(name("attn_norm"), canon("attention_norm"), .f32, rows: 1, cols: h)
        add(name("attn_q"), canon("attention/q_proj"), t[0], rows: h, cols: h, heads: Tiny.heads)
        add(name("attn_k"), canon("attention/k_proj"), t[1], rows: kv, cols: h, heads: Tiny.kvHeads)
        add(name("attn_v"), canon("attention/v_proj"), t[2], rows: kv, cols: h)
        add(name("attn_output"), canon("attention/o_proj"), t[3], rows: h, cols: h)
        add(name("ffn_norm"), canon("mlp_norm"), .f32, rows: 1, cols: h)
        add(name("ffn_gate"), canon("mlp/gate_proj"), t[4], rows: ffn, cols: h)
        add(name("ffn_up"), canon("mlp/up_proj"), t[5], rows: ffn, cols: h)
        add(name("ffn_down"), canon("mlp/down_proj"), ffnDownType ?? t[6], rows: h, cols: ffn)
    }
    add("output_norm.weight", TensorNames.finalNorm, .f32, rows: 1, cols: h)
    if !tied { add("output.weight", TensorNames.lmHead, .f16, rows: Tiny.vocab, cols: h) }
    return TinyGGUF(builder: b, expected: expected)
}

// MARK: - GGML dequantization

@Suite struct GGMLFormatTests {
    @Test func handWrittenBlocks() throws {
        // Q8_0: d = 0.25 (fp16 0x3400), q = -128, -1, 0, 1, 127, then 2·j.
        var q8: [UInt8] = [0x00, 0x34]
        let q8Values: [Int8] = [-128, -1, 0, 1, 127] + (5..<32).map { Int8($0 * 2 - 40) }
        q8 += q8Values.map { UInt8(bitPattern: $0) }
        let y8 = try GGMLFormats.dequantize(q8, type: .q8_0, count: 32)
        #expect(Array(y8[0..<5]) == [-32, -0.25, 0, 0.25, 31.75])
        #expect(y8[31] == Float(31 * 2 - 40) * 0.25)

        // Q4_0: d = 2 (0x4000); byte j = low nibble j, high nibble 15 - j.
        let q40: [UInt8] = [0x00, 0x40] + (0..<16).map { UInt8($0 | ((15 - $0) << 4)) }
        let y40 = try GGMLFormats.dequantize(q40, type: .q4_0, count: 32)
        #expect(y40[0] == -16 && y40[1] == -14 && y40[8] == 0 && y40[15] == 14)
        #expect(y40[16] == 14 && y40[17] == 12 && y40[31] == -16)

        // Q4_1: d = 0.5 (0x3800), m = -1 (0xBC00).
        let q41: [UInt8] = [0x00, 0x38, 0x00, 0xBC] + (0..<16).map { UInt8($0 | ((15 - $0) << 4)) }
        let y41 = try GGMLFormats.dequantize(q41, type: .q4_1, count: 32)
        #expect(y41[0] == -1 && y41[1] == -0.5 && y41[15] == 6.5)
        #expect(y41[16] == 6.5 && y41[31] == -1)

        // Q4_1 with an inexact sum: d = 2^-14·(1 + 1023/1024) (0x07FF), m = 1 (0x3C00): q·d + m rounds in float.
        let q41b: [UInt8] = [0xFF, 0x07, 0x00, 0x3C] + [UInt8](repeating: 0xF7, count: 16)
        let y41b = try GGMLFormats.dequantize(q41b, type: .q4_1, count: 32)
        let d = Float(halfBits: 0x07FF)
        #expect(y41b[0] == 7 * d + 1)   // low nibble 7
        #expect(y41b[16] == 15 * d + 1) // high nibble 15
        // 15·d = 15352.5 float ulps above 1: a tie, rounded to even (and 7·d = 7164.5 ulps likewise).
        #expect(y41b[16].bitPattern == 0x3F80_0000 + 15352)
        #expect(y41b[0].bitPattern == 0x3F80_0000 + 7164)

        // F16, BF16, F32.
        let f16: [UInt8] = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x7C, 0x01, 0x00]
        let y16 = try GGMLFormats.dequantize(f16, type: .f16, count: 4)
        #expect(y16[0] == 1 && y16[1] == -2 && y16[2] == .infinity && y16[3] == Float(Float16.leastNonzeroMagnitude))
        let bf16: [UInt8] = [0x80, 0x3F, 0x49, 0x40]  // 1.0, 3.140625
        #expect(try GGMLFormats.dequantize(bf16, type: .bf16, count: 2) == [1, 3.140625])
        var f32 = ByteWriter()
        f32.f32(-0.1)
        #expect(try GGMLFormats.dequantize(f32.bytes, type: .f32, count: 1) == [-0.1])
    }

    @Test func unsupportedAndMalformed() {
        expectError(["'w'", "Q6_K", "cannot dequantize"]) {
            _ = try GGMLFormats.dequantize([UInt8](repeating: 0, count: 210), type: .q6_K, count: 256, tensorName: "w")
        }
        expectError(["'x'", "not a whole number", "Q4_0"]) {
            _ = try GGMLFormats.dequantize([UInt8](repeating: 0, count: 18), type: .q4_0, count: 31, tensorName: "x")
        }
        expectError(["'y'", "17 bytes, expected 18"]) {
            _ = try GGMLFormats.dequantize([UInt8](repeating: 0, count: 17), type: .q4_0, count: 32, tensorName: "y")
        }
    }

    @Test func typeTable() {
        #expect(GGMLType.q4_1.name == "Q4_1" && GGMLType(rawValue: 30) == .bf16)
        #expect(GGMLType.q8_0.byteCount(elementCount: 64) == 68)
        #expect(GGMLType.q4_0.byteCount(elementCount: 33) == nil)
        #expect(GGMLType.q6_K.typeSize == 210 && GGMLType.q6_K.blockSize == 256)
        #expect(GGMLFormats.supportedTypes.map(\.name) == ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
    }
}

// MARK: - GGUF

@Suite struct GGUFImporterTests {
    @Test func importsTinyLlamaInEveryType() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let tiny = makeTinyLlama()
        let path = dir.write("tiny.gguf", tiny.builder.build())
        let contents = try GGUFImporter.load(path: path)
        try contents.validate(source: path)

        let c = contents.config
        #expect(c.architecture == .llama && c.name == "Tiny Llama")
        #expect(c.vocabSize == Tiny.vocab && c.hiddenSize == 64 && c.intermediateSize == 96 && c.layerCount == 2)
        #expect(c.headCount == 4 && c.kvHeadCount == 2 && c.headDim == 16 && c.maxPositions == 256)
        #expect(c.ropeTheta == 50_000 && c.normEpsilon == Double(Float(1e-5)) && c.activation == .silu)
        #expect(!c.tiedEmbeddings)

        #expect(Set(contents.tensors.keys) == Set(tiny.expected.keys))
        for (name, want) in tiny.expected {
            let got = try #require(contents.tensors[name])
            #expect(got.shape == want.shape, "\(name)")
            #expect(got.data == want.values, "\(name) values differ")
            #expect(contents.storageTypes[name] == .float32)
        }
        #expect(contents.metadata["importer"] == "gguf")
        #expect(contents.metadata["source"] == path)
        #expect(contents.metadata["source_types"] == "F32:6,BF16:3,F16:3,Q4_0:3,Q4_1:3,Q8_0:3")

        let t = contents.tokenizer
        #expect(t.kind == .byteLevelBPE && t.tokens == Tiny.tokens && t.merges == Tiny.merges)
        #expect(t.tokenTypes.count == Tiny.vocab && t.tokenTypes[0] == 3 && t.tokenTypes[5] == 1)
        #expect(t.preTokenizer == "smollm" && t.bosTokenID == 1 && t.eosTokenID == 2 && t.paddingTokenID == 2)
        #expect(t.unknownTokenID == nil && !t.addBOS)
    }

    @Test func qkRowsAreUnpermutedByIndexFormula() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let tiny = makeTinyLlama()
        let path = dir.write("tiny.gguf", tiny.builder.build())
        let contents = try GGUFImporter.load(path: path)
        let reader = try GGUFReader(path: path)
        for (gguf, canonical, heads) in [("blk.0.attn_q.weight", "layers/0/attention/q_proj/weight", 4),
                                         ("blk.0.attn_k.weight", "layers/0/attention/k_proj/weight", 2),
                                         ("blk.1.attn_k.weight", "layers/1/attention/k_proj/weight", 2)] {
            let raw = try reader.dequantize(try #require(reader.tensor(named: gguf)))
            let got = try #require(contents.tensors[canonical])
            let cols = 64, headDim = 16
            for hfRow in 0..<got.shape[0] {
                // Hugging Face row h·16 + j·8 + i was stored by llama.cpp at row h·16 + 2i + j.
                let h = hfRow / headDim, j = (hfRow % headDim) / (headDim / 2), i = hfRow % (headDim / 2)
                let ggufRow = h * headDim + 2 * i + j
                #expect(Array(got.data[hfRow * cols ..< (hfRow + 1) * cols])
                        == Array(raw[ggufRow * cols ..< (ggufRow + 1) * cols]), "\(gguf) row \(hfRow)")
            }
            #expect(heads * headDim == got.shape[0])
        }
        // V is not permuted.
        let v = try reader.dequantize(try #require(reader.tensor(named: "blk.0.attn_v.weight")))
        #expect(contents.tensors["layers/0/attention/v_proj/weight"]?.data == v)
    }

    @Test func undoPermutationSmallExample() throws {
        // One head of 4 rows: llama.cpp order [r0 r1 r2 r3] = HF rows [0 2 1 3].
        let t = Tensor(shape: [4, 2], data: [0, 0.5, 2, 2.5, 1, 1.5, 3, 3.5])
        let hf = try GGUFImporter.undoRoPEPermutation(t, headCount: 1)
        #expect(hf.data == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5])
        expectError(["rows must be a multiple"]) { _ = try GGUFImporter.undoRoPEPermutation(t, headCount: 3) }
    }

    @Test func tiedEmbeddingsWhenOutputIsAbsent() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let path = dir.write("tied.gguf", makeTinyLlama(tied: true, alignment: 64).builder.build())
        let reader = try GGUFReader(path: path)
        #expect(reader.alignment == 64 && reader.dataOffset % 64 == 0 && reader.version == 3)
        let contents = try GGUFImporter.load(path: path)
        #expect(contents.config.tiedEmbeddings)
        #expect(contents.tensors[TensorNames.lmHead] == nil)
        try contents.validate(source: path)
    }

    @Test func readerMetadataAndVersion2() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        var b = makeTinyLlama().builder
        b.version = 2
        b["test.u64"] = .u64(1 << 40)
        b["test.i32"] = .i32(-7)
        let path = dir.write("v2.gguf", b.build())
        let r = try GGUFReader(path: path)
        #expect(r.version == 2 && r.alignment == 32)
        #expect(r.metadata["general.architecture"] == .string("llama"))
        #expect(r.metadata["test.u64"]?.intValue == 1 << 40 && r.metadata["test.i32"]?.intValue == -7)
        #expect(try r.stringArray("tokenizer.ggml.merges") == Tiny.merges)
        #expect(try r.bool("tokenizer.ggml.add_bos_token") == false)
        #expect(r.metadataKeys.first == "general.architecture")
        let q = try #require(r.tensor(named: "blk.0.attn_k.weight"))
        #expect(q.dimensions == [64, 32] && q.shape == [32, 64] && q.type == .q4_1 && q.byteCount == 64 * 20)
        _ = try GGUFImporter.load(path: path)
    }

    @Test func addBOSFollowsKeyOrLlamaCppDefault() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        var b = makeTinyLlama().builder
        b["tokenizer.ggml.add_bos_token"] = .bool(true)
        #expect(try GGUFImporter.load(path: dir.write("a.gguf", b.build())).tokenizer.addBOS)
        b["tokenizer.ggml.add_bos_token"] = nil
        #expect(try !GGUFImporter.load(path: dir.write("b.gguf", b.build())).tokenizer.addBOS)
        b["tokenizer.ggml.pre"] = .string("llama-bpe")
        #expect(try GGUFImporter.load(path: dir.write("c.gguf", b.build())).tokenizer.addBOS)
        b["tokenizer.ggml.pre"] = .string("gpt-2")
        #expect(try GGUFImporter.load(path: dir.write("d.gguf", b.build())).tokenizer.preTokenizer == "gpt2")
    }

    // MARK: Malformed files

    private func load(_ dir: TempDir, _ bytes: [UInt8], _ name: String = "bad.gguf") throws(PTQError) {
        _ = try GGUFImporter.load(path: dir.write(name, bytes))
    }

    @Test func badMagicAndVersion() {
        let dir = TempDir()
        defer { dir.cleanup() }
        var b = makeTinyLlama().builder
        b.magic = Array("GGUX".utf8)
        expectError(["bad.gguf", "bad magic 'GGUX'"]) { try load(dir, b.build()) }
        expectError(["too short"]) { try load(dir, [0x47, 0x47]) }
        b.magic = Array("GGUF".utf8)
        b.version = 1
        expectError(["unsupported GGUF version 1"]) { try load(dir, b.build()) }
        b.version = 4
        expectError(["unsupported GGUF version 4"]) { try load(dir, b.build()) }
        b.version = 0x0300_0000
        expectError(["big-endian"]) { try load(dir, b.build()) }
        expectError(["no such file"]) { _ = try GGUFImporter.load(path: dir.file("missing.gguf")) }
    }

    @Test func everyTruncationIsAnError() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let full = makeTinyLlama().builder.build()
        let reader = try GGUFReader(path: dir.write("full.gguf", full))
        // Cut inside the header, metadata and tensor infos.
        for length in stride(from: 0, to: reader.dataOffset, by: 11) {
            expectError(["bad.gguf"]) { try load(dir, Array(full[0..<length])) }
        }
        // Cut in the middle of the tokens array: its last string has its length but not its bytes.
        var headerOnly = makeTinyLlama().builder
        headerOnly.tensors = []
        let header = headerOnly.build()
        let cut = try #require(header.firstRange(of: Array("t39".utf8))).lowerBound
        expectError(["bad.gguf", "metadata 'tokenizer.ggml.tokens'", "past the end of the file"]) {
            try load(dir, Array(header[0..<cut]))
        }
        expectError(["truncated file", "metadata 'tokenizer.ggml.tokens'"]) {
            try load(dir, Array(header[0..<(cut - 3)]))
        }
        // Cut inside tensor data: the last tensor runs past the end.
        expectError(["'output.weight'", "extends past the end of the file"]) {
            try load(dir, Array(full[0..<(full.count - 40)]))
        }
    }

    @Test func overflowingCountsAndBadTensorInfos() {
        let dir = TempDir()
        defer { dir.cleanup() }
        var b = makeTinyLlama().builder
        b.tensorCountOverride = .max
        expectError(["tensor count 18446744073709551615", "impossible"]) { try load(dir, b.build()) }
        b.tensorCountOverride = nil
        b.kvCountOverride = 1 << 60
        expectError(["metadata count", "impossible"]) { try load(dir, b.build()) }
        b.kvCountOverride = nil

        var huge = makeTinyLlama().builder
        huge["test.string"] = .raw(type: 8, body: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        expectError(["'test.string'", "string length", "past the end"]) { try load(dir, huge.build()) }
        huge["test.string"] = nil
        huge["test.array"] = .raw(type: 9, body: [5, 0, 0, 0] + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
        expectError(["'test.array'", "array length"]) { try load(dir, huge.build()) }
        huge["test.array"] = .raw(type: 42, body: [])
        expectError(["'test.array'", "unknown value type 42"]) { try load(dir, huge.build()) }

        var tensors = makeTinyLlama().builder
        tensors.tensors[1].type = 99
        expectError(["'blk.0.attn_norm.weight'", "unknown GGML type 99"]) { try load(dir, tensors.build()) }
        tensors = makeTinyLlama().builder
        tensors.tensors[1].ne = [1 << 62, 1 << 62]
        expectError(["'blk.0.attn_norm.weight'", "overflow"]) { try load(dir, tensors.build()) }
        tensors = makeTinyLlama().builder
        tensors.tensors[1].ne = [64, 1, 1, 1, 1]
        expectError(["'blk.0.attn_norm.weight'", "5 dimensions"]) { try load(dir, tensors.build()) }
        tensors = makeTinyLlama().builder
        tensors.offsetOverrides["blk.0.attn_norm.weight"] = 4
        expectError(["'blk.0.attn_norm.weight'", "not a multiple of the alignment 32"]) { try load(dir, tensors.build()) }
        tensors = makeTinyLlama().builder
        tensors.offsetOverrides["blk.0.attn_norm.weight"] = 1 << 40
        expectError(["'blk.0.attn_norm.weight'", "extends past the end"]) { try load(dir, tensors.build()) }
        tensors = makeTinyLlama().builder
        tensors.tensors[0].ne = [60, 40]
        expectError(["'token_embd.weight'", "not a multiple of the Q8_0 block size 32"]) { try load(dir, tensors.build()) }
        tensors = makeTinyLlama().builder
        tensors.tensors[2].name = "blk.0.attn_norm.weight"
        expectError(["duplicate tensor 'blk.0.attn_norm.weight'"]) { try load(dir, tensors.build()) }
    }

    @Test func modelLevelErrors() {
        let dir = TempDir()
        defer { dir.cleanup() }
        // Missing tensor → the validation error names the canonical tensor.
        var b = makeTinyLlama().builder
        b.tensors.removeAll { $0.name == "blk.1.ffn_up.weight" }
        expectError(["missing tensor 'layers/1/mlp/up_proj/weight'", "[96, 64]"]) { try load(dir, b.build()) }

        // Wrong shape.
        var rng = LCG(1)
        b = makeTinyLlama().builder
        let gate = b.tensors.firstIndex { $0.name == "blk.0.ffn_gate.weight" }!
        b.tensors[gate] = GGUFTestTensor(name: "blk.0.ffn_gate.weight", ne: [64, 32], type: GGMLType.q8_0.rawValue,
                                         data: encode(.q8_0, rows: 32, cols: 64, rng: &rng).bytes)
        expectError(["'layers/0/mlp/gate_proj/weight' has shape [32, 64], expected [96, 64]"]) {
            try load(dir, b.build())
        }
        b = makeTinyLlama().builder
        let q = b.tensors.firstIndex { $0.name == "blk.0.attn_q.weight" }!
        b.tensors[q] = GGUFTestTensor(name: "blk.0.attn_q.weight", ne: [64, 32], type: GGMLType.f32.rawValue,
                                      data: encode(.f32, rows: 32, cols: 64, rng: &rng).bytes)
        expectError(["'blk.0.attn_q.weight'", "expected 64 rows"]) { try load(dir, b.build()) }

        // Unsupported quantization type names the tensor and the type.
        let k = makeTinyLlama(ffn: 256, ffnDownType: .q6_K).builder
        expectError(["'blk.0.ffn_down.weight'", "Q6_K", "cannot dequantize"]) { try load(dir, k.build()) }

        // Unknown tensor name, other architecture, other tokenizer, missing key.
        b = makeTinyLlama().builder
        b.tensors.append(GGUFTestTensor(name: "rope_freqs.weight", ne: [8], type: 0, data: [UInt8](repeating: 0, count: 32)))
        expectError(["unsupported tensor 'rope_freqs.weight'"]) { try load(dir, b.build()) }
        b = makeTinyLlama().builder
        b["general.architecture"] = .string("gpt2")
        expectError(["general.architecture is 'gpt2'"]) { try load(dir, b.build()) }
        b = makeTinyLlama().builder
        b["tokenizer.ggml.model"] = .string("llama")
        expectError(["tokenizer.ggml.model is 'llama'", "gpt2"]) { try load(dir, b.build()) }
        b = makeTinyLlama().builder
        b["llama.embedding_length"] = nil
        expectError(["missing metadata key 'llama.embedding_length'"]) { try load(dir, b.build()) }
        b = makeTinyLlama().builder
        b["llama.block_count"] = .string("two")
        expectError(["'llama.block_count' must be an integer"]) { try load(dir, b.build()) }
        b = makeTinyLlama().builder
        b["tokenizer.ggml.bos_token_id"] = .u32(4000)
        expectError(["tokenizer.ggml.bos_token_id", "outside the vocabulary"]) { try load(dir, b.build()) }
        b = makeTinyLlama().builder
        b["general.alignment"] = .u32(48)
        expectError(["general.alignment 48 is not a power of two"]) { try load(dir, b.build()) }
    }

    @Test func randomCorruptionNeverCrashes() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        let full = makeTinyLlama().builder.build()
        let headerEnd = try GGUFReader(path: dir.write("full.gguf", full)).dataOffset
        var rng = LCG(7)
        for iteration in 0..<150 {
            var bytes = full
            for _ in 0..<rng.int(1...4) {
                bytes[rng.int(0...(headerEnd - 1))] = UInt8(rng.int(0...255))
            }
            do {
                _ = try GGUFImporter.load(path: dir.write("fuzz\(iteration % 4).gguf", bytes))
            } catch {
                #expect(error.message.contains("fuzz"))
            }
        }
    }
}

// MARK: - Safetensors

struct STTensor {
    var name: String
    var dtype: String
    var shape: [Int]
    var data: [UInt8]
}

/// Writes a safetensors file; `offsetsOverride` replaces a tensor's data_offsets in the header.
func safetensorsBytes(_ tensors: [STTensor], offsetsOverride: [String: (Int, Int)] = [:],
                              headerLengthOverride: UInt64? = nil) -> [UInt8] {
    var entries: [String] = [#""__metadata__":{"format":"pt"}"#]
    var offset = 0
    var data: [UInt8] = []
    for t in tensors {
        let (begin, end) = offsetsOverride[t.name] ?? (offset, offset + t.data.count)
        entries.append("\"\(t.name)\":{\"dtype\":\"\(t.dtype)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],"
            + "\"data_offsets\":[\(begin),\(end)]}")
        offset += t.data.count
        data += t.data
    }
    var header = Array("{\(entries.joined(separator: ","))}".utf8)
    while header.count % 8 != 0 { header.append(0x20) }
    var w = ByteWriter()
    w.int(headerLengthOverride ?? UInt64(header.count))
    return w.bytes + header + data
}

/// Encodes values in a safetensors dtype; the values must be exact in it.
func stEncode(_ values: [Float], _ dtype: String) -> [UInt8] {
    var w = ByteWriter()
    for v in values {
        switch dtype {
        case "F16": w.int(halfBits(v))
        case "BF16": w.int(UInt16(v.bitPattern >> 16))
        default: w.f32(v)
        }
    }
    return w.bytes
}

/// Values exactly representable in every dtype used here.
func exactValues(_ count: Int, seed: UInt64) -> [Float] {
    var rng = LCG(seed)
    return (0..<count).map { _ in Float(rng.int(-60...60)) / 16 }
}

func json(_ object: Any) -> String {
    String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
}

enum TinyBERT {
    static let hidden = 8, heads = 2, layers = 2, intermediate = 16, positions = 16
    static let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "the", "a", "b", "c"]
    static var config: [String: Any] {
        ["model_type": "bert", "hidden_act": "gelu", "hidden_size": hidden, "num_attention_heads": heads,
         "num_hidden_layers": layers, "intermediate_size": intermediate, "max_position_embeddings": positions,
         "type_vocab_size": 2, "vocab_size": vocab.count, "layer_norm_eps": 1e-12,
         "_name_or_path": "tiny-bert"]
    }

    /// Source tensors (with a `bert.` prefix, old gamma/beta names for the embedding LayerNorm) and the
    /// expected canonical tensors.
    static func tensors() -> (source: [STTensor], expected: [String: (shape: [Int], values: [Float], dtype: DType)]) {
        var source: [STTensor] = []
        var expected: [String: (shape: [Int], values: [Float], dtype: DType)] = [:]
        var seed: UInt64 = 0
        func add(_ name: String, _ canonical: String, _ shape: [Int], _ dtype: String) {
            seed += 1
            let values = exactValues(shape.reduce(1, *), seed: seed)
            source.append(STTensor(name: name, dtype: dtype, shape: shape, data: stEncode(values, dtype)))
            let d: DType = dtype == "F16" ? .float16 : dtype == "BF16" ? .bfloat16 : .float32
            expected[canonical] = (shape, values, d)
        }
        let h = hidden, i = intermediate
        source.append(STTensor(name: "bert.embeddings.position_ids", dtype: "I64", shape: [1, positions],
                               data: [UInt8](repeating: 0, count: 8 * positions)))
        add("bert.embeddings.word_embeddings.weight", TensorNames.tokenEmbedding, [vocab.count, h], "F32")
        add("bert.embeddings.position_embeddings.weight", TensorNames.positionEmbedding, [positions, h], "F32")
        add("bert.embeddings.token_type_embeddings.weight", TensorNames.tokenTypeEmbedding, [2, h], "F16")
        add("bert.embeddings.LayerNorm.gamma", TensorNames.embeddingNormWeight, [h], "F32")
        add("bert.embeddings.LayerNorm.beta", TensorNames.embeddingNormBias, [h], "BF16")
        for l in 0..<layers {
            let dtype = l == 0 ? "F16" : "BF16"
            let p = "bert.encoder.layer.\(l)."
            func c(_ s: String) -> String { TensorNames.layer(l, s) }
            for (src, dst) in [("attention.self.query", "attention/q_proj"), ("attention.self.key", "attention/k_proj"),
                               ("attention.self.value", "attention/v_proj"), ("attention.output.dense", "attention/o_proj")] {
                add(p + src + ".weight", c(dst + "/weight"), [h, h], dtype)
                add(p + src + ".bias", c(dst + "/bias"), [h], "F32")
            }
            add(p + "attention.output.LayerNorm.weight", c("attention_norm/weight"), [h], "F32")
            add(p + "attention.output.LayerNorm.bias", c("attention_norm/bias"), [h], "F32")
            add(p + "intermediate.dense.weight", c("mlp/up_proj/weight"), [i, h], dtype)
            add(p + "intermediate.dense.bias", c("mlp/up_proj/bias"), [i], "F32")
            add(p + "output.dense.weight", c("mlp/down_proj/weight"), [h, i], dtype)
            add(p + "output.dense.bias", c("mlp/down_proj/bias"), [h], "F32")
            add(p + "output.LayerNorm.weight", c("mlp_norm/weight"), [h], "F32")
            add(p + "output.LayerNorm.bias", c("mlp_norm/bias"), [h], "F32")
        }
        source.append(STTensor(name: "bert.pooler.dense.weight", dtype: "F32", shape: [h, h],
                               data: stEncode(exactValues(h * h, seed: 99), "F32")))
        return (source, expected)
    }

    static func write(to dir: TempDir, config: [String: Any] = TinyBERT.config) {
        dir.write("config.json", text: json(config))
        dir.write("model.safetensors", safetensorsBytes(tensors().source))
        dir.write("vocab.txt", text: vocab.joined(separator: "\n") + "\n")
        dir.write("tokenizer_config.json", text: json(["do_lower_case": false, "model_max_length": 512]))
    }
}

enum TinyLLaMA {
    static let hidden = 16, heads = 4, kvHeads = 2, headDim = 4, layers = 2, intermediate = 32, vocabSize = 12
    static var config: [String: Any] {
        ["model_type": "llama", "hidden_act": "silu", "hidden_size": hidden, "num_attention_heads": heads,
         "num_key_value_heads": kvHeads, "num_hidden_layers": layers, "intermediate_size": intermediate,
         "max_position_embeddings": 64, "rope_theta": 50_000.0, "rms_norm_eps": 1e-5, "vocab_size": vocabSize,
         "tie_word_embeddings": false, "rope_scaling": NSNull(), "bos_token_id": 1, "eos_token_id": 2]
    }

    static func tensors(lmHead: Bool) -> (source: [STTensor], expected: [String: (shape: [Int], values: [Float], dtype: DType)]) {
        var source: [STTensor] = []
        var expected: [String: (shape: [Int], values: [Float], dtype: DType)] = [:]
        var seed: UInt64 = 100
        func add(_ name: String, _ canonical: String, _ shape: [Int], _ dtype: String) {
            seed += 1
            let values = exactValues(shape.reduce(1, *), seed: seed)
            source.append(STTensor(name: name, dtype: dtype, shape: shape, data: stEncode(values, dtype)))
            let d: DType = dtype == "F16" ? .float16 : dtype == "BF16" ? .bfloat16 : .float32
            expected[canonical] = (shape, values, d)
        }
        let h = hidden, kv = kvHeads * headDim
        add("model.embed_tokens.weight", TensorNames.tokenEmbedding, [vocabSize, h], "BF16")
        for l in 0..<layers {
            let p = "model.layers.\(l)."
            func c(_ s: String) -> String { TensorNames.layer(l, s + "/weight") }
            add(p + "input_layernorm.weight", c("attention_norm"), [h], "F32")
            add(p + "self_attn.q_proj.weight", c("attention/q_proj"), [h, h], "BF16")
            add(p + "self_attn.k_proj.weight", c("attention/k_proj"), [kv, h], "F16")
            add(p + "self_attn.v_proj.weight", c("attention/v_proj"), [kv, h], "F32")
            add(p + "self_attn.o_proj.weight", c("attention/o_proj"), [h, h], "BF16")
            add(p + "post_attention_layernorm.weight", c("mlp_norm"), [h], "F32")
            add(p + "mlp.gate_proj.weight", c("mlp/gate_proj"), [intermediate, h], "BF16")
            add(p + "mlp.up_proj.weight", c("mlp/up_proj"), [intermediate, h], "BF16")
            add(p + "mlp.down_proj.weight", c("mlp/down_proj"), [h, intermediate], "BF16")
        }
        add("model.norm.weight", TensorNames.finalNorm, [h], "F32")
        if lmHead { add("lm_head.weight", TensorNames.lmHead, [vocabSize, h], "F16") }
        return (source, expected)
    }

    static let vocab: [String: Int] = ["<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3, "b": 4,
                                       "ab": 5, "Ġ": 6, "Ġa": 7, "1": 8, "2": 9]

    static func tokenizerJSON(preTokenizer: Any? = nil) -> [String: Any] {
        let pre = preTokenizer ?? [
            "type": "Sequence",
            "pretokenizers": [["type": "Digits", "individual_digits": true],
                              ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]],
        ] as [String: Any]
        return [
            "version": "1.0", "normalizer": NSNull(), "pre_tokenizer": pre,
            "added_tokens": [
                ["id": 0, "content": "<|endoftext|>", "special": true],
                ["id": 1, "content": "<|im_start|>", "special": true],
                ["id": 2, "content": "<|im_end|>", "special": true],
                ["id": 10, "content": "<tool>", "special": false],
            ],
            "model": ["type": "BPE", "vocab": vocab, "merges": ["a b", ["Ġ", "a"]], "unk_token": NSNull()] as [String: Any],
        ]
    }

    static func write(to dir: TempDir, config: [String: Any] = TinyLLaMA.config, lmHead: Bool = true) {
        dir.write("config.json", text: json(config))
        dir.write("model.safetensors", safetensorsBytes(tensors(lmHead: lmHead).source))
        dir.write("tokenizer.json", text: json(tokenizerJSON()))
        dir.write("tokenizer_config.json", text: json([
            "add_bos_token": true, "bos_token": "<|im_start|>",
            "eos_token": ["content": "<|im_end|>", "special": true] as [String: Any],
        ]))
    }
}

@Suite struct SafetensorsImporterTests {
    @Test func importsTinyBERTWithVocabTxt() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        TinyBERT.write(to: dir)
        let contents = try SafetensorsImporter.load(directory: dir.path)
        try contents.validate(source: dir.path)
        let c = contents.config
        #expect(c.architecture == .bert && c.hiddenSize == 8 && c.headCount == 2 && c.headDim == 4)
        #expect(c.layerCount == 2 && c.intermediateSize == 16 && c.maxPositions == 16 && c.typeVocabSize == 2)
        #expect(c.vocabSize == TinyBERT.vocab.count && c.normEpsilon == 1e-12 && c.activation == .gelu)
        #expect(c.name == "tiny-bert")
        #expect(c.pooling == .mean && c.normalizeEmbeddings)
        #expect(contents.metadata["pooling_source"]?.contains("default") == true)
        #expect(contents.metadata["importer"] == "safetensors" && contents.metadata["tokenizer_source"] == "vocab.txt")
        #expect(contents.metadata["ignored_tensors"] == "bert.embeddings.position_ids,bert.pooler.dense.weight")

        let expected = TinyBERT.tensors().expected
        #expect(Set(contents.tensors.keys) == Set(expected.keys))
        for (name, want) in expected {
            let got = try #require(contents.tensors[name])
            #expect(got.shape == want.shape && got.data == want.values, "\(name)")
            #expect(contents.storageTypes[name] == want.dtype, "\(name)")
        }

        let t = contents.tokenizer
        #expect(t.kind == .wordPiece && t.tokens == TinyBERT.vocab && t.preTokenizer == "bert")
        #expect(t.clsTokenID == 2 && t.sepTokenID == 3 && t.unknownTokenID == 1 && t.paddingTokenID == 0)
        #expect(!t.lowercase && !t.stripAccents && t.splitChineseCharacters)
        #expect(t.maxLength == 16)  // model_max_length 512, capped at max_position_embeddings
        #expect(contents.metadata["max_length_source"] == "tokenizer_config.json model_max_length, capped at max_position_embeddings")
    }

    @Test func importsBERTWithTokenizerJSONAndSentenceTransformers() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        TinyBERT.write(to: dir)
        try FileManager.default.removeItem(atPath: dir.file("vocab.txt"))
        try FileManager.default.removeItem(atPath: dir.file("tokenizer_config.json"))
        let vocab = Dictionary(uniqueKeysWithValues: TinyBERT.vocab.enumerated().map { ($1, $0) })
        dir.write("tokenizer.json", text: json([
            "truncation": ["max_length": 8],
            "normalizer": ["type": "BertNormalizer", "lowercase": true, "strip_accents": NSNull(),
                           "handle_chinese_chars": false, "clean_text": true] as [String: Any],
            "pre_tokenizer": ["type": "BertPreTokenizer"],
            "model": ["type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 50, "vocab": vocab] as [String: Any],
        ] as [String: Any]))
        dir.write("modules.json", text: json([
            ["idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"],
            ["idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"],
        ]))
        dir.write("1_Pooling/config.json", text: json(["pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false]))
        let contents = try SafetensorsImporter.load(directory: dir.path)
        #expect(contents.config.pooling == .cls && !contents.config.normalizeEmbeddings)
        #expect(contents.metadata["pooling_source"] == "sentence-transformers modules.json")
        let t = contents.tokenizer
        #expect(t.tokens == TinyBERT.vocab && t.lowercase && t.stripAccents && !t.splitChineseCharacters)
        #expect(t.maxLength == 8 && t.maxInputCharsPerWord == 50 && t.clsTokenID == 2 && t.sepTokenID == 3)
        #expect(contents.metadata["max_length_source"] == "tokenizer.json truncation.max_length")

        // Mean pooling plus Normalize.
        dir.write("modules.json", text: json([
            ["idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"],
            ["idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"],
            ["idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"],
        ]))
        dir.write("1_Pooling/config.json", text: json(["pooling_mode_mean_tokens": true]))
        dir.write("sentence_bert_config.json", text: json(["max_seq_length": 12, "do_lower_case": false]))
        let mean = try SafetensorsImporter.load(directory: dir.path)
        #expect(mean.config.pooling == .mean && mean.config.normalizeEmbeddings)
        #expect(mean.tokenizer.maxLength == 12)  // sentence-transformers truncates to max_seq_length
        dir.write("1_Pooling/config.json", text: json(["pooling_mode_max_tokens": true]))
        expectError(["config.json", "pooling_mode_max_tokens"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
    }

    @Test func importsTinyLLaMA() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        TinyLLaMA.write(to: dir)
        let contents = try SafetensorsImporter.load(directory: dir.path)
        let c = contents.config
        #expect(c.architecture == .llama && c.hiddenSize == 16 && c.headCount == 4 && c.kvHeadCount == 2)
        #expect(c.headDim == 4 && c.layerCount == 2 && c.intermediateSize == 32 && c.vocabSize == 12)
        #expect(c.ropeTheta == 50_000 && c.normEpsilon == 1e-5 && c.maxPositions == 64 && !c.tiedEmbeddings)
        let expected = TinyLLaMA.tensors(lmHead: true).expected
        #expect(Set(contents.tensors.keys) == Set(expected.keys))
        for (name, want) in expected {
            let got = try #require(contents.tensors[name])
            // Hugging Face order is canonical: no permutation of Q/K.
            #expect(got.shape == want.shape && got.data == want.values, "\(name)")
            #expect(contents.storageTypes[name] == want.dtype, "\(name)")
        }
        #expect(contents.metadata["source_types"] == "BF16:11,F32:7,F16:3")

        let t = contents.tokenizer
        #expect(t.kind == .byteLevelBPE && t.preTokenizer == "smollm" && t.merges == ["a b", "Ġ a"])
        #expect(t.tokens == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġa", "1", "2",
                             "<tool>", "[PAD11]"])
        #expect(t.tokenTypes == [3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4, 5])
        #expect(t.addBOS && t.bosTokenID == 1 && t.eosTokenID == 2 && t.unknownTokenID == nil && t.paddingTokenID == nil)
    }

    @Test func llamaTiedEmbeddingsAndPlainByteLevel() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        TinyLLaMA.write(to: dir, lmHead: false)
        dir.write("tokenizer.json", text: json(TinyLLaMA.tokenizerJSON(preTokenizer:
            ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true] as [String: Any])))
        try FileManager.default.removeItem(atPath: dir.file("tokenizer_config.json"))
        let contents = try SafetensorsImporter.load(directory: dir.path)
        #expect(contents.config.tiedEmbeddings && contents.tensors[TensorNames.lmHead] == nil)
        #expect(contents.tokenizer.preTokenizer == "gpt2" && !contents.tokenizer.addBOS)
        #expect(contents.tokenizer.bosTokenID == 1 && contents.tokenizer.eosTokenID == 2)  // from config.json ids

        // tie_word_embeddings drops a stored lm_head copy.
        var config = TinyLLaMA.config
        config["tie_word_embeddings"] = true
        TinyLLaMA.write(to: dir, config: config, lmHead: true)
        let tied = try SafetensorsImporter.load(directory: dir.path)
        #expect(tied.config.tiedEmbeddings && tied.tensors[TensorNames.lmHead] == nil)
    }

    @Test func readerErrors() {
        let dir = TempDir()
        defer { dir.cleanup() }
        let f32 = STTensor(name: "w", dtype: "F32", shape: [2, 2], data: stEncode([1, 2, 3, 4], "F32"))
        let other = STTensor(name: "v", dtype: "F32", shape: [2], data: stEncode([5, 6], "F32"))
        func open(_ bytes: [UInt8]) throws(PTQError) -> SafetensorsReader {
            try SafetensorsReader(path: dir.write("m.safetensors", bytes))
        }
        expectError(["m.safetensors", "header length 1099511627776 exceeds the file size"]) {
            _ = try open(safetensorsBytes([f32], headerLengthOverride: 1 << 40))
        }
        expectError(["too short"]) { _ = try open([1, 2, 3]) }
        expectError(["'w'", "data_offsets [0, 400] run past the end"]) {
            _ = try open(safetensorsBytes([f32], offsetsOverride: ["w": (0, 400)]))
        }
        expectError(["'w'", "needs 16 bytes", "span 12"]) {
            _ = try open(safetensorsBytes([f32], offsetsOverride: ["w": (0, 12)]))
        }
        expectError(["overlap"]) {
            _ = try open(safetensorsBytes([f32, other], offsetsOverride: ["v": (8, 16)]))
        }
        expectError(["not an increasing range"]) {
            _ = try open(safetensorsBytes([f32], offsetsOverride: ["w": (16, 0)]))
        }
        expectError(["not valid JSON"]) {
            var bytes = safetensorsBytes([f32])
            bytes[8] = UInt8(ascii: "[")
            bytes[9] = UInt8(ascii: "x")
            _ = try open(bytes)
        }
        expectError(["'w'", "unknown dtype 'F4'"]) {
            _ = try open(safetensorsBytes([STTensor(name: "w", dtype: "F4", shape: [2], data: [0, 0])]))
        }
        expectError(["'w'", "dtype I32", "only F32, F16 and BF16"]) {
            let reader = try open(safetensorsBytes([STTensor(name: "w", dtype: "I32", shape: [2], data: [UInt8](repeating: 0, count: 8))]))
            _ = try reader.tensor(named: "w")
        }
        // A good file reads back.
        do {
            let reader = try open(safetensorsBytes([f32, other]))
            #expect(try reader.tensor(named: "w").data == [1, 2, 3, 4] && reader.names == ["w", "v"])
            #expect(reader.headerMetadata["format"] == "pt")
        } catch {
            Issue.record("\(error)")
        }
        // Random corruption of the header never crashes.
        let good = safetensorsBytes([f32, other])
        var rng = LCG(3)
        for _ in 0..<200 {
            var bytes = good
            bytes[rng.int(0...(good.count - 25))] = UInt8(rng.int(0...255))
            if let reader = try? open(bytes) {
                for name in reader.names { _ = try? reader.tensor(named: name) }
            }
        }
    }

    @Test func importerErrors() throws {
        let dir = TempDir()
        defer { dir.cleanup() }
        // Missing config field.
        var config = TinyBERT.config
        config["hidden_size"] = nil
        TinyBERT.write(to: dir, config: config)
        expectError(["config.json", "missing required field 'hidden_size'"]) {
            _ = try SafetensorsImporter.load(directory: dir.path)
        }
        config = TinyBERT.config
        config["hidden_act"] = "relu"
        TinyBERT.write(to: dir, config: config)
        expectError(["hidden_act 'relu'"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
        config = TinyBERT.config
        config["num_hidden_layers"] = "two"
        TinyBERT.write(to: dir, config: config)
        expectError(["'num_hidden_layers' must be an integer"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
        config = TinyBERT.config
        config["vocab_size"] = 10
        TinyBERT.write(to: dir, config: config)
        expectError(["vocab.txt", "tokenizer has 12 tokens, more than vocab_size 10"]) {
            _ = try SafetensorsImporter.load(directory: dir.path)
        }
        config = TinyBERT.config
        config["num_hidden_layers"] = 1_000_000_000
        TinyBERT.write(to: dir, config: config)
        expectError(["num_hidden_layers is 1000000000, but the checkpoint has only"]) {
            _ = try SafetensorsImporter.load(directory: dir.path)
        }
        config = TinyBERT.config
        config["model_type"] = "gpt2"
        TinyBERT.write(to: dir, config: config)
        expectError(["model_type 'gpt2' is not supported"]) { _ = try SafetensorsImporter.load(directory: dir.path) }

        // Bad dtype of a needed tensor names the tensor.
        TinyBERT.write(to: dir)
        var source = TinyBERT.tensors().source
        let index = source.firstIndex { $0.name == "bert.encoder.layer.1.output.dense.bias" }!
        source[index] = STTensor(name: source[index].name, dtype: "I32", shape: [8], data: [UInt8](repeating: 0, count: 32))
        dir.write("model.safetensors", safetensorsBytes(source))
        expectError(["'bert.encoder.layer.1.output.dense.bias'", "dtype I32"]) {
            _ = try SafetensorsImporter.load(directory: dir.path)
        }
        // Missing tensor, unexpected tensor, layer out of range.
        source = TinyBERT.tensors().source
        source.removeAll { $0.name == "bert.encoder.layer.1.output.dense.bias" }
        dir.write("model.safetensors", safetensorsBytes(source))
        expectError(["missing tensor 'layers/1/mlp/down_proj/bias'"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
        source = TinyBERT.tensors().source
        source.append(STTensor(name: "bert.encoder.layer.0.attention.self.rel_pos.weight", dtype: "F32", shape: [1], data: [0, 0, 0, 0]))
        dir.write("model.safetensors", safetensorsBytes(source))
        expectError(["unexpected tensor 'bert.encoder.layer.0.attention.self.rel_pos.weight'"]) {
            _ = try SafetensorsImporter.load(directory: dir.path)
        }
        source = TinyBERT.tensors().source
        source.append(STTensor(name: "bert.encoder.layer.5.output.dense.bias", dtype: "F32", shape: [1], data: [0, 0, 0, 0]))
        dir.write("model.safetensors", safetensorsBytes(source))
        expectError(["belongs to layer 5"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
        // Wrong shape.
        source = TinyBERT.tensors().source
        let q = source.firstIndex { $0.name == "bert.encoder.layer.0.attention.self.query.weight" }!
        source[q] = STTensor(name: source[q].name, dtype: "F32", shape: [4, 8], data: stEncode(exactValues(32, seed: 5), "F32"))
        dir.write("model.safetensors", safetensorsBytes(source))
        expectError(["'layers/0/attention/q_proj/weight' has shape [4, 8], expected [8, 8]"]) {
            _ = try SafetensorsImporter.load(directory: dir.path)
        }
        // No weights, no tokenizer.
        try FileManager.default.removeItem(atPath: dir.file("model.safetensors"))
        expectError(["no model.safetensors"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
        TinyBERT.write(to: dir)
        try FileManager.default.removeItem(atPath: dir.file("vocab.txt"))
        expectError(["no tokenizer"]) { _ = try SafetensorsImporter.load(directory: dir.path) }
        expectError(["no such directory"]) { _ = try SafetensorsImporter.load(directory: dir.file("nope")) }
        expectError(["config.json", "no such file"]) {
            let empty = TempDir()
            defer { empty.cleanup() }
            _ = try SafetensorsImporter.load(directory: empty.path)
        }

        // LLaMA: unsupported pre-tokenizer, rope scaling, bad merges.
        let llama = TempDir()
        defer { llama.cleanup() }
        TinyLLaMA.write(to: llama)
        llama.write("tokenizer.json", text: json(TinyLLaMA.tokenizerJSON(preTokenizer: ["type": "Whitespace"])))
        expectError(["tokenizer.json", "pre_tokenizer Whitespace is not supported"]) {
            _ = try SafetensorsImporter.load(directory: llama.path)
        }
        TinyLLaMA.write(to: llama)
        var llamaConfig = TinyLLaMA.config
        llamaConfig["rope_scaling"] = ["rope_type": "llama3", "factor": 8.0] as [String: Any]
        llama.write("config.json", text: json(llamaConfig))
        expectError(["rope_scaling of type 'llama3'"]) { _ = try SafetensorsImporter.load(directory: llama.path) }
        llamaConfig = TinyLLaMA.config
        llamaConfig["vocab_size"] = 8
        llama.write("config.json", text: json(llamaConfig))
        expectError(["tokenizer has 11 tokens, more than vocab_size 8"]) {
            _ = try SafetensorsImporter.load(directory: llama.path)
        }
        TinyLLaMA.write(to: llama)
        var tokenizer = TinyLLaMA.tokenizerJSON()
        tokenizer["model"] = ["type": "BPE", "vocab": TinyLLaMA.vocab, "merges": [["a"]]] as [String: Any]
        llama.write("tokenizer.json", text: json(tokenizer))
        expectError(["merge #0"]) { _ = try SafetensorsImporter.load(directory: llama.path) }
    }
}
