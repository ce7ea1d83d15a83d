import Kernels
import Models
import PTQCore

/// A quantized linear layer executed on integer codes: the runtime keeps codes, scales and
/// zero points, never the float weight matrix.
///
/// Two execution paths, chosen from the `QuantizedLinear` at load time:
/// - **Integer activations** (`activation != nil`: W8A8, W6A6, W4A8, …): weight codes become
///   signed int8 `u − 2^(bits−1)` once, and each group keeps the offset
///   `d = zero − 2^(bits−1)` (0 for symmetric weights). Each forward quantizes the input rows
///   exactly as `ActivationQuantization` specifies (`LowBit.quantizeRows`), then
///   per-output-channel weights run an int32 GEMM (`ck_gemm_i8`) and
///   `y = rowScale[i]·wScale[o]·(acc − d[o]·Σ_j a[i, j]) + bias[o]`: the zero point costs one
///   sum of activation codes per row, not a second GEMM. Grouped weights run the grouped
///   kernel, which scales each group's exact int32 dot product by its float scale, and subtract
///   the zero-point term per group. Codes of ≤ 4 bits stay **two per byte** (the counterpart of
///   llama.cpp's Q4_0 × Q8_0) when the shape allows (`TokenKernels.fp4Supports`): decode unpacks
///   the nibbles in registers, 8 weight rows per pass with one accumulator lane per row
///   (`TokenKernels.q4Gemv`, the same kernel for prefill with up to 4 prompt rows per unpacked
///   unit); it gives the same exact integer sums, hence the same output bits, as the
///   int8-per-weight codes. Decode of one-group int8 codes runs `LowBit.gemvI8` (8 rows per pass).
/// - **Float activations** (`activation == nil`: W4A16, W8A16, W3A16, …): codes of ≤ 4 bits are
///   packed two per byte, wider codes stay one byte each. One row runs the fused GEMV; several
///   rows dequantize tiles of output rows into scratch and multiply them with sgemm. Where the
///   CPU has AVX-512, ≤ 4-bit codes are instead re-laid out in bit planes for the table-lookup
///   decode GEMV (`LowBit.gemvPlanes`, T-MAC-style with float tables), and the prefill tiles are
///   decoded from the same planes (`LowBit.planesProduct`): one copy of the codes (until the
///   eighth speed pass the nibbles stayed beside the planes for the tiles, 53 MB more on
///   SmolLM2). Where the CPU has AVX512_BF16 and `LowBit.bf16Decode` is on when the layer
///   loads, nibbles and bytes are kept instead (no planes) and decode runs the bf16 GEMV
///   (`ck_gemv_u4_bf16` / `ck_gemv_u8_bf16`: codes are exact bf16 values, x is rounded to bf16
///   once per call, fp32 sums); the choice is made at load so that memory holds one copy of the
///   codes, and turning `bf16Decode` off later sends those layers to the float32 nibble GEMV.
public final class IntegerLinear: LinearOp {
    /// Canonical layer name (`layers/3/mlp/down_proj`).
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let weightBits: Int
    /// Columns per weight group (`inFeatures` for one group per output channel).
    public let groupSize: Int
    /// Activation bits, nil for float activations.
    public let activationBits: Int?
    public let bias: [Float]?
    private let kernel: Kernel

    private enum Kernel: Sendable {
        case integer(IntegerPath)
        case weightOnly(WeightOnlyPath)
    }

    /// Signed int8 weight codes `[out, in]` (or nibbles) with their scales, plus the activation quantizer.
    private struct IntegerPath: Sendable {
        /// One signed code per weight; empty when `nibbles` holds the codes.
        var codes: [Int8]
        /// Unsigned codes two per byte for ≤ 4-bit weights, in the 8-row interleaved layout of
        /// `TokenKernels.q4Pack`; empty otherwise.
        var nibbles: [UInt8]
        /// Σ_j code[o, j] per row for one-group int8 codes (the VNNI decode GEMV's +128 term); else empty.
        var rowSums: [Int32]
        /// `2^(bits−1)`: a nibble u holds the signed code u − offset.
        var offset: Int
        /// `[out, groups]`; grouped nibble codes keep them interleaved (`TokenKernels.q4Scales`).
        var scales: [Float]
        /// `scale · (zero − 2^(bits−1))` per `[out, group]`; nil for symmetric weights.
        var zeroTerms: [Float]?
        var groups: Int
        var activationBits: Int
        var scaling: ActivationScaling
        var channelScales: [Float]?
        var shift: [Float]?
    }

    /// Unsigned codes (nibbles or bytes) `[out, in]`, scales and zero points `[out, groups]`, or
    /// the bit-plane layout alone.
    private struct WeightOnlyPath: Sendable {
        var format: LowBit.CodeFormat
        /// Nibbles or bytes; empty when `planes` holds the codes.
        var codes: [UInt8]
        /// Empty when `planes` holds them (blocked).
        var scales: [Float]
        var zeros: [Float]
        /// u4 codes in bit planes, the only copy of the codes, for the table-lookup decode GEMV
        /// and the prefill tiles; nil for u8 codes or where the CPU lacks AVX-512 (the nibbles
        /// then serve both).
        var planes: LowBit.PlaneLayout?
    }

    /// Bytes a one-row (decode) forward reads: all it holds (`storageBytes`).
    public var weightBytes: Int { storageBytes }

    /// Bytes held for this layer: codes (nibbles, bytes or bit planes with their blocked scales
    /// and zeros), scales, zero points, bias and activation parameters.
    public var storageBytes: Int {
        let biasBytes = (bias?.count ?? 0) * 4
        switch kernel {
        case .integer(let p):
            return p.codes.count + p.nibbles.count + p.rowSums.count * 4 + p.scales.count * 4 + (p.zeroTerms?.count ?? 0) * 4 + (p.channelScales?.count ?? 0) * 4
                + (p.shift?.count ?? 0) * 4 + biasBytes
        case .weightOnly(let p):
            return p.codes.count + p.scales.count * 4 + p.zeros.count * 4 + (p.planes?.bytes ?? 0) + biasBytes
        }
    }

    /// What runs, for reports: e.g. `int8 GEMM W8A8 per-token`, `u4 GEMV/tile-GEMM W4A16 g128`.
    public var kernelDescription: String {
        let grouping = groupSize >= inFeatures ? "per-channel" : "g\(groupSize)"
        switch kernel {
        case .integer(let p):
            let scaling: String
            switch p.scaling {
            case .perToken: scaling = "per-token"
            case .perTensor: scaling = "per-tensor"
            }
            let kernel = p.nibbles.isEmpty ? "int8 GEMM" : "nibble int8 GEMV/GEMM"
            return "\(kernel) W\(weightBits)A\(p.activationBits) \(grouping) \(scaling)"
        case .weightOnly(let p):
            var gemv = p.planes != nil ? "u4 plane-table" : p.format == .u4 ? "u4" : "u8"
            if p.planes == nil && LowBit.usesBF16Gemv(p.format, columns: inFeatures, groupSize: groupSize) {
                gemv += " bf16"
            }
            return "\(gemv) GEMV/tile-GEMM W\(weightBits)A16 \(grouping)"
        }
    }

    /// Converts a `QuantizedLinear` to run-time storage; throws a `PTQError` naming the layer
    /// for inconsistent shapes, codes out of range, or unsupported combinations.
    public init(_ q: QuantizedLinear) throws(PTQError) {
        let layer = q.name.isEmpty ? "quantized linear" : q.name
        func fail(_ message: String) -> PTQError { PTQError("\(layer): \(message)") }
        guard case .integer(let w) = q.weight else {
            throw fail("weight format '\(q.weight.formatName)' is not integer codes")
        }

        guard (2...8).contains(w.bits) else { throw fail("\(w.bits)-bit weights are not supported (2…8 bits)") }
        guard w.rows > 0, w.columns > 0 else { throw fail("empty weight \(w.rows)×\(w.columns)") }
        guard w.groupSize > 0 else { throw fail("group size \(w.groupSize) must be positive") }
        guard w.codes.count == w.rows * w.columns else {
            throw fail("\(w.codes.count) weight codes for a \(w.rows)×\(w.columns) matrix")
        }
        let groups = w.groupsPerRow
        guard w.scales.count == w.rows * groups else {
            throw fail("\(w.scales.count) weight scales, expected \(w.rows)×\(groups) (group size \(w.groupSize))")
        }
        if let zeros = w.zeros, zeros.count != w.rows * groups {
            throw fail("\(zeros.count) zero points, expected \(w.rows)×\(groups)")
        }
        if !w.symmetric && w.zeros == nil { throw fail("asymmetric weights without zero points") }
        if let bias = q.bias, bias.count != w.rows {
            throw fail("bias has \(bias.count) values for \(w.rows) output features")
        }
        let codeLimit = 1 << w.bits
        if let bad = Validation.firstByte(in: w.codes, atLeast: codeLimit) {
            throw fail("weight code \(w.codes[bad]) at element \(bad) does not fit \(w.bits) bits")
        }

        name = q.name
        inFeatures = w.columns
        outFeatures = w.rows
        weightBits = w.bits
        groupSize = min(w.groupSize, w.columns)
        bias = q.bias

        if let a = q.activation {
            activationBits = a.bits
            guard a.floatFormat == nil else { throw fail("minifloat activations need minifloat weights") }
            guard (2...8).contains(a.bits) else {
                throw fail("\(a.bits)-bit activations are not supported (2…8 bits)")
            }
            guard w.columns <= 131_072 else {
                throw fail("\(w.columns) input features exceed the int32 accumulator range of the int8 GEMM")
            }
            if let s = a.channelScales, s.count != w.columns {
                throw fail("\(s.count) activation channel scales for \(w.columns) input features")
            }
            if let s = a.channelShift, s.count != w.columns {
                throw fail("\(s.count) activation channel shifts for \(w.columns) input features")
            }
            let scaling: ActivationScaling
            switch a.granularity {
            case .perToken:
                scaling = .perToken
            case .perTensor:
                guard let s = a.scale, s > 0, s.isFinite else {
                    throw fail("per-tensor activation quantization needs a positive static scale (got \(a.scale.map { "\($0)" } ?? "none"))")
                }
                scaling = .perTensor(s)
            }
            // Signed codes u − 2^(bits−1), once; asymmetric groups keep scale·(zero − 2^(bits−1)).
            // ≤ 4-bit codes stay nibbles (half the bytes per token) and are unpacked in the kernels.
            let mid = w.symmetricZero
            let packed = w.bits <= 4 && TokenKernels.fp4Supports(columns: w.columns, groupSize: min(w.groupSize, w.columns))
            var codes = [Int8](repeating: 0, count: packed ? 0 : w.codes.count)
            if !packed { for i in 0..<w.codes.count { codes[i] = Int8(Int(w.codes[i]) - mid) } }
            let nibbles = packed ? TokenKernels.q4Pack(w.codes, rows: w.rows, columns: w.columns) : []
            let rowSums = !packed && groups == 1 ? LowBit.rowSumsI8(codes, n: w.rows, k: w.columns) : []
            let scales = packed && groups > 1 ? TokenKernels.q4Scales(w.scales, rows: w.rows, groups: groups) : w.scales
            var zeroTerms: [Float]?
            if let zeros = w.zeros {
                if let bad = zeros.firstIndex(where: { !$0.isFinite }) {
                    throw fail("zero point \(zeros[bad]) of row \(bad / groups) group \(bad % groups) is not finite")
                }
                zeroTerms = zip(zeros, w.scales).map { z, s in s * (z - Float(mid)) }
            }
            kernel = .integer(IntegerPath(codes: codes, nibbles: nibbles, rowSums: rowSums, offset: mid,
                                          scales: scales, zeroTerms: zeroTerms, groups: groups,
                                          activationBits: a.bits, scaling: scaling, channelScales: a.channelScales,
                                          shift: a.channelShift))
        } else {
            activationBits = nil
            var zeros = w.zeros ?? []
            if w.zeros == nil {
                zeros = [Float](repeating: Float(w.symmetricZero), count: w.rows * groups)
            }
            let format: LowBit.CodeFormat = w.bits <= 4 ? .u4 : .u8
            // One copy of the codes: the planes where the table kernels run (decode GEMV and
            // prefill tiles read them), else nibbles or bytes. Where the bf16 decode GEMV takes
            // the shape (AVX512_BF16, `LowBit.bf16Decode` on at load) the nibbles win: it reads
            // them directly at a fraction of the table kernel's instructions.
            let group = min(w.groupSize, w.columns)
            if format == .u4 && LowBit.planeTablesSupported
                && !LowBit.usesBF16Gemv(.u4, columns: w.columns, groupSize: group) {
                let planes = LowBit.PlaneLayout(codes: w.codes, rows: w.rows, columns: w.columns,
                                                groupSize: group, scales: w.scales, zeros: zeros)
                kernel = .weightOnly(WeightOnlyPath(format: format, codes: [], scales: [], zeros: [], planes: planes))
            } else {
                let codes = format == .u4 ? LowBit.packNibbles(w.codes, rows: w.rows, columns: w.columns) : w.codes
                kernel = .weightOnly(WeightOnlyPath(format: format, codes: codes, scales: w.scales, zeros: zeros,
                                                    planes: nil))
            }
        }
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        switch kernel {
        case .integer(let p): forwardInteger(p, x, rows: rows, into: y)
        case .weightOnly(let p): forwardWeightOnly(p, x, rows: rows, into: y)
        }
    }

    private func forwardInteger(_ p: IntegerPath, _ x: UnsafePointer<Float>, rows: Int,
                                into y: UnsafeMutablePointer<Float>) {
        let k = inFeatures, n = outFeatures
        // Per-thread buffers, and no second quantization of an input the previous layer on this
        // thread already quantized with the same parameters (q/k/v, gate/up).
        let (codes, rowScales) = withOptional(p.shift) { shift in
            withOptional(p.channelScales) { channelScales in
                LowBit.quantizeRowsShared(x, rows: rows, columns: k, shift: shift, channelScales: channelScales,
                                          bits: p.activationBits, scaling: p.scaling)
            }
        }
        // Asymmetric weights: per row and group, rowScale · Σ_{j∈g} a[i, j] for the zero-point term.
        let groups = p.groups
        let codeSums = LowBit.threadScratch(slot: 0, count: p.zeroTerms == nil ? 0 : rows * groups, of: Float.self)
        if p.zeroTerms != nil {
            for i in 0..<rows {
                let a = codes + i * k
                for g in 0..<groups {
                    var s: Int32 = 0
                    for j in (g * groupSize)..<min(k, (g + 1) * groupSize) { s &+= Int32(a[j]) }
                    codeSums[i * groups + g] = Float(s) * rowScales[i]
                }
            }
        }
        if !p.nibbles.isEmpty {
            forwardNibbles(p, codes: codes, rowScales: rowScales, codeSums: codeSums, rows: rows, into: y)
        } else {
        p.codes.withUnsafeBufferPointer { wc in
            p.scales.withUnsafeBufferPointer { ws in
                if groups == 1 {
                    let acc = LowBit.threadScratch(slot: 1, count: rows * n, of: Int32.self)
                    if rows <= Self.gemvRowLimit {
                        p.rowSums.withUnsafeBufferPointer { sums in
                            LowBit.gemvI8(a: codes, m: rows, b: wc.baseAddress!, n: n, k: k, rowSums: sums.baseAddress,
                                          c: acc, ldc: n)
                        }
                    } else {
                        p.rowSums.withUnsafeBufferPointer { sums in
                            LowBit.gemmI8(a: codes, m: rows, b: wc.baseAddress!, n: n, k: k, rowSums: sums.baseAddress,
                                          c: acc, ldc: n)
                        }
                    }
                    withOptional(p.zeroTerms) { zt in
                        for i in 0..<rows {
                            let rs = rowScales[i], yr = y + i * n, ar = acc + i * n
                            if let zt {
                                // y = rs·ws·(acc − d·Σa) with zt = ws·d.
                                let sum = codeSums[i]
                                for o in 0..<n { yr[o] = (rs * ws[o]) * Float(ar[o]) - zt[o] * sum }
                            } else {
                                for o in 0..<n { yr[o] = (rs * ws[o]) * Float(ar[o]) }
                            }
                        }
                    }
                } else {
                    LowBit.gemmI8Grouped(a: codes, m: rows, b: wc.baseAddress!, n: n, k: k, groupSize: groupSize,
                                         weightScales: ws.baseAddress!, c: y, ldc: n)
                    withOptional(p.zeroTerms) { zt in
                        Self.finishGroupedRows(y, rows: rows, n: n, groups: groups, rowScales: rowScales,
                                               zeroTerms: zt, codeSums: codeSums)
                    }
                }
            }
        }
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
        }
    }

    /// The integer path on nibble codes: the same exact integer sums and the same float epilogue
    /// (operation for operation) as the int8-per-weight branch of `forwardInteger`. The kernels
    /// write the group-scaled sums (one group: the exact sums as floats, `Float(acc)` there) to y.
    private func forwardNibbles(_ p: IntegerPath, codes: UnsafePointer<Int8>, rowScales: UnsafePointer<Float>,
                                codeSums: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        let k = inFeatures, n = outFeatures, groups = p.groups
        p.nibbles.withUnsafeBufferPointer { wc in
            p.scales.withUnsafeBufferPointer { ws in
                let groupScales = groups == 1 ? nil : ws.baseAddress!
                // One kernel for decode and prefill: 8 weight rows per pass, up to 4 activation rows
                // against each unpacked unit of nibbles.
                let sums = LowBit.threadScratch(slot: 3, count: rows * groups, of: Int32.self)
                TokenKernels.q4GroupSums(codes, rows: rows, columns: k, groupSize: groupSize, into: sums)
                TokenKernels.q4Gemv(codes: wc.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                    offset: p.offset, scales: groupScales, activations: codes,
                                    groupSums: sums, m: rows, y: y, ldy: n)
                withOptional(p.zeroTerms) { zt in
                    for i in 0..<rows {
                        let rs = rowScales[i], yr = y + i * n
                        if groups == 1 {
                            if let zt {
                                let sum = codeSums[i]
                                for o in 0..<n { yr[o] = (rs * ws[o]) * yr[o] - zt[o] * sum }
                            } else {
                                for o in 0..<n { yr[o] = (rs * ws[o]) * yr[o] }
                            }
                            continue
                        }
                        Self.finishGroupedRows(yr, rows: 1, n: n, groups: groups, rowScales: rowScales + i,
                                               zeroTerms: zt, codeSums: codeSums + i * groups)
                    }
                }
            }
        }
    }

    /// The grouped-weight epilogue shared by the int8 and nibble kernels: `y` holds each row's
    /// group-scaled integer sums; multiply by the activation row scale and subtract the
    /// zero-point term Σ_g zt[o, g]·(rowScale·Σ_{j∈g} a) (asymmetric weights).
    private static func finishGroupedRows(_ y: UnsafeMutablePointer<Float>, rows: Int, n: Int, groups: Int,
                                          rowScales: UnsafePointer<Float>, zeroTerms zt: UnsafePointer<Float>?,
                                          codeSums: UnsafePointer<Float>) {
        for i in 0..<rows {
            let rs = rowScales[i], yr = y + i * n
            for o in 0..<n { yr[o] = rs * yr[o] }
            guard let zt else { continue }
            let sums = codeSums + i * groups
            for o in 0..<n {
                var correction: Float = 0
                for g in 0..<groups { correction += zt[o * groups + g] * sums[g] }
                yr[o] -= correction
            }
        }
    }

    /// Rows up to which one fused GEMV per row beats dequantizing tiles for sgemm (measured:
    /// 8 rows of a 4096×4096 W4 layer take 4.4 ms as GEMVs, 8.8 ms as tiles, whose sgemm at
    /// so few rows is slow; on 1536×576 the two meet around 4–8 rows).
    static let gemvRowLimit = 8

    private func forwardWeightOnly(_ p: WeightOnlyPath, _ x: UnsafePointer<Float>, rows: Int,
                                   into y: UnsafeMutablePointer<Float>) {
        let k = inFeatures, n = outFeatures
        if let planes = p.planes {
            if rows <= Self.gemvRowLimit {
                for i in 0..<rows { LowBit.gemvPlanes(planes, x: x + i * k, y: y + i * n) }
            } else {
                LowBit.planesProduct(planes, x: x, rows: rows, y: y)
            }
            if let bias {
                bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
            }
            return
        }
        p.codes.withUnsafeBufferPointer { c in
            p.scales.withUnsafeBufferPointer { s in
                p.zeros.withUnsafeBufferPointer { z in
                    if rows <= Self.gemvRowLimit {
                        let bf16 = LowBit.usesBF16Gemv(p.format, columns: k, groupSize: groupSize)
                        for i in 0..<rows {
                            LowBit.gemv(p.format, codes: c.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                        scales: s.baseAddress!, zeros: z.baseAddress!, x: x + i * k, y: y + i * n,
                                        bf16: bf16)
                        }
                    } else {
                        LowBit.dequantizedProduct(p.format, codes: c.baseAddress!, outFeatures: n, inFeatures: k,
                                                  groupSize: groupSize, scales: s.baseAddress!, zeros: z.baseAddress!,
                                                  x: x, rows: rows, y: y)
                    }
                }
            }
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
        }
    }
}

/// Calls `body` with the array's base address, or nil for a nil array.
func withOptional<T, R>(_ array: [T]?, _ body: (UnsafePointer<T>?) throws -> R) rethrows -> R {
    guard let array else { return try body(nil) }
    return try array.withUnsafeBufferPointer { try body($0.baseAddress) }
}
