import PTQCore

/// GGML tensor types as numbered in GGUF files (`ggml_type`).
///
/// Every type that a GGUF file may hold is listed, so that a file can be parsed and its tensors
/// bounds-checked even when PTQKit cannot dequantize some of them (see `canDequantize`).
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_XXS = 16, iq2_XS = 17, iq3_XXS = 18, iq1_S = 19, iq4_NL = 20, iq3_S = 21, iq2_S = 22
    case iq4_XS = 23, i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_M = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39, nvfp4 = 40, q1_0 = 41

    /// The name ggml and llama.cpp print (`Q4_1`, `BF16`, ...).
    public var name: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q5_0: "Q5_0"
        case .q5_1: "Q5_1"
        case .q8_0: "Q8_0"
        case .q8_1: "Q8_1"
        case .q2_K: "Q2_K"
        case .q3_K: "Q3_K"
        case .q4_K: "Q4_K"
        case .q5_K: "Q5_K"
        case .q6_K: "Q6_K"
        case .q8_K: "Q8_K"
        case .iq2_XXS: "IQ2_XXS"
        case .iq2_XS: "IQ2_XS"
        case .iq3_XXS: "IQ3_XXS"
        case .iq1_S: "IQ1_S"
        case .iq4_NL: "IQ4_NL"
        case .iq3_S: "IQ3_S"
        case .iq2_S: "IQ2_S"
        case .iq4_XS: "IQ4_XS"
        case .i8: "I8"
        case .i16: "I16"
        case .i32: "I32"
        case .i64: "I64"
        case .f64: "F64"
        case .iq1_M: "IQ1_M"
        case .bf16: "BF16"
        case .tq1_0: "TQ1_0"
        case .tq2_0: "TQ2_0"
        case .mxfp4: "MXFP4"
        case .nvfp4: "NVFP4"
        case .q1_0: "Q1_0"
        }
    }

    public var description: String { name }

    /// Elements per block (1 for plain types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_NL, .mxfp4: 32
        case .nvfp4: 64
        case .q1_0: 128
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K, .iq2_XXS, .iq2_XS, .iq3_XXS, .iq1_S,
             .iq3_S, .iq2_S, .iq4_XS, .iq1_M, .tq1_0, .tq2_0: 256
        }
    }

    /// Bytes per block.
    public var typeSize: Int {
        switch self {
        case .f32: 4
        case .f16: 2
        case .bf16: 2
        case .i8: 1
        case .i16: 2
        case .i32: 4
        case .i64: 8
        case .f64: 8
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q8_1: 40
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .q8_K: 292
        case .iq2_XXS: 66
        case .iq2_XS: 74
        case .iq3_XXS: 98
        case .iq1_S: 50
        case .iq4_NL: 18
        case .iq3_S: 110
        case .iq2_S: 82
        case .iq4_XS: 136
        case .iq1_M: 56
        case .tq1_0: 54
        case .tq2_0: 66
        case .mxfp4: 17
        case .nvfp4: 36
        case .q1_0: 18
        }
    }

    /// Whether `GGMLFormats.dequantize` supports this type.
    public var canDequantize: Bool {
        GGMLFormats.supportedTypes.contains(self)
    }

    /// Bytes needed for `elementCount` elements, or nil when the count is not a whole number of
    /// blocks or the size overflows.
    public func byteCount(elementCount: Int) -> Int? {
        guard elementCount >= 0, elementCount % blockSize == 0 else { return nil }
        let (bytes, overflow) = (elementCount / blockSize).multipliedReportingOverflow(by: typeSize)
        return overflow ? nil : bytes
    }
}

/// Dequantization of GGML tensor data to float32, bit-exact with ggml's `dequantize_row_*`.
public enum GGMLFormats {
    /// The types `dequantize` handles.
    public static let supportedTypes: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1]

    /// All 65536 binary16 values as float32 (ggml's `ggml_table_f32_f16`).
    static let halfTable: [Float] = (0...0xFFFF).map { Float(Float16(bitPattern: UInt16($0))) }

    /// Dequantizes `destination.count` elements of type `type` from `source` into `destination`.
    ///
    /// `source` must hold exactly `type.byteCount(elementCount: destination.count)` bytes.
    /// `tensorName` only names the tensor in errors.
    public static func dequantize(
        _ source: UnsafeRawBufferPointer, type: GGMLType,
        into destination: UnsafeMutableBufferPointer<Float>, tensorName: String
    ) throws(PTQError) {
        let count = destination.count
        guard type.canDequantize else {
            throw PTQError("tensor '\(tensorName)' has GGML type \(type.name), which PTQKit cannot dequantize "
                + "(supported: \(supportedTypes.map(\.name).joined(separator: ", ")))")
        }
        guard let needed = type.byteCount(elementCount: count) else {
            throw PTQError("tensor '\(tensorName)': \(count) elements is not a whole number of "
                + "\(type.name) blocks of \(type.blockSize)")
        }
        guard source.count == needed else {
            throw PTQError("tensor '\(tensorName)': \(type.name) data has \(source.count) bytes, expected \(needed)")
        }
        guard count > 0, let src = source.baseAddress, let dst = destination.baseAddress else { return }
        halfTable.withUnsafeBufferPointer { table in
            let half = table.baseAddress!
            switch type {
            case .f32: dequantizeF32(src, dst, count)
            case .f16: dequantizeF16(src, dst, count, half)
            case .bf16: dequantizeBF16(src, dst, count)
            case .q8_0: dequantizeQ8_0(src, dst, count / 32, half)
            case .q4_0: dequantizeQ4_0(src, dst, count / 32, half)
            case .q4_1: dequantizeQ4_1(src, dst, count / 32, half)
            default: break  // unreachable: checked by canDequantize
            }
        }
    }

    /// Convenience: dequantizes a byte array holding `count` elements of `type`.
    public static func dequantize(_ bytes: [UInt8], type: GGMLType, count: Int,
                                  tensorName: String = "data") throws(PTQError) -> [Float] {
        guard count >= 0 else { throw PTQError("tensor '\(tensorName)': negative element count \(count)") }
        var result = [Float](repeating: 0, count: count)
        var failure: PTQError?
        bytes.withUnsafeBytes { src in
            result.withUnsafeMutableBufferPointer { dst in
                do throws(PTQError) {
                    try dequantize(src, type: type, into: dst, tensorName: tensorName)
                } catch {
                    failure = error
                }
            }
        }
        if let failure { throw failure }
        return result
    }

    // MARK: - Kernels (little-endian hosts)

    @inline(__always)
    private static func u16(_ p: UnsafeRawPointer, _ offset: Int) -> UInt16 {
        UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    private static func dequantizeF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n * 4)
        #if _endian(big)
        for i in 0..<n { dst[i] = Float(bitPattern: UInt32(littleEndian: dst[i].bitPattern)) }
        #endif
    }

    private static func dequantizeF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int,
                                      _ half: UnsafePointer<Float>) {
        for i in 0..<n {
            dst[i] = half[Int(u16(src, 2 * i))]
        }
    }

    private static func dequantizeBF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        for i in 0..<n {
            dst[i] = Float(bitPattern: UInt32(u16(src, 2 * i)) << 16)
        }
    }

    /// Q8_0: blocks of fp16 d + 32 int8; x = q·d.
    private static func dequantizeQ8_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int,
                                       _ half: UnsafePointer<Float>) {
        for b in 0..<blocks {
            let block = src + b * 34
            let d = half[Int(u16(block, 0))]
            let qs = (block + 2).assumingMemoryBound(to: Int8.self)
            let out = dst + b * 32
            for j in 0..<32 {
                out[j] = Float(qs[j]) * d
            }
        }
    }

    /// Q4_0: blocks of fp16 d + 16 bytes; x = (q - 8)·d, low nibbles first then high nibbles.
    private static func dequantizeQ4_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int,
                                       _ half: UnsafePointer<Float>) {
        for b in 0..<blocks {
            let block = src + b * 18
            let d = half[Int(u16(block, 0))]
            let qs = (block + 2).assumingMemoryBound(to: UInt8.self)
            let out = dst + b * 32
            for j in 0..<16 {
                let q = qs[j]
                out[j] = Float(Int32(q & 0x0F) - 8) * d
                out[j + 16] = Float(Int32(q >> 4) - 8) * d
            }
        }
    }

    /// Q4_1: blocks of fp16 d, fp16 m + 16 bytes; x = q·d + m (two float roundings, no FMA).
    private static func dequantizeQ4_1(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int,
                                       _ half: UnsafePointer<Float>) {
        for b in 0..<blocks {
            let block = src + b * 20
            let d = half[Int(u16(block, 0))]
            let m = half[Int(u16(block, 2))]
            let qs = (block + 4).assumingMemoryBound(to: UInt8.self)
            let out = dst + b * 32
            for j in 0..<16 {
                let q = qs[j]
                out[j] = Float(q & 0x0F) * d + m
                out[j + 16] = Float(q >> 4) * d + m
            }
        }
    }
}
