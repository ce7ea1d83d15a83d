import Foundation
import Kernels
import Models
import PTQCore

/// A linear layer on minifloat weight codes (LLM-FP4: FP4/FP6/FP8 with per-channel or per-group
/// real scales), with float activations or minifloat activations.
///
/// The runtime keeps the codes (FP4 two per byte) and scales, never the float weight matrix.
/// Minifloat activations are rounded at run time onto the format's grid with the static
/// per-tensor scale 2^(−ρ) after the per-channel shift `x·2^(k_j)` (stored as
/// `channelScales[j] = 2^(−k_j)`), and the decoded value is multiplied back by 2^(−k_j): the
/// paper folds that power of two into the weight columns; multiplying the activation instead is
/// the same product (powers of two are exact in float) and costs one multiply per input element
/// rather than per weight.
///
/// FP4 weights with minifloat activations run on integers when the activation grid allows
/// (`integerPath`): int8 activations when the shifted grid integers fit int8 (W4A4), int16 when
/// they fit int16 (the W4A8 recipe's E2M5 / E3M4 with small channel offsets), two int16 parts
/// `low + 2^s·high` when they do not (E3M4 with offsets K = 5…7), exact int32 group sums in
/// every case; at decode (≤ 8 rows), where the CPU has AVX-512 VNNI + BW, the FP4 ones run the
/// byte-plane GEMV instead (`byteLayout`: the same integer sums on int8 VNNI, also for the split
/// layers that keep the float path at prefill). Otherwise one input row runs the fused GEMV
/// (`ck_fp_gemv_f32`: codes looked up in registers, every code×activation product exact in
/// float, each group's sum scaled once); several rows decode a tile of weight rows at a time into scratch and multiply it with sgemm.
public final class FloatingPointLinear: LinearOp {
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let format: FloatingPointFormat
    public let groupSize: Int
    public let activation: ActivationQuantization?
    public let bias: [Float]?
    private let nibbles: Bool
    /// Nibble (FP4) or byte codes `[out, in]`; empty when `byteLayout` holds the codes.
    private let codes: [UInt8]
    /// `[out, groups]`; empty when `byteLayout` holds them (blocked).
    private let scales: [Float]
    private let table: [Float]
    /// Integer path (FP4 weights with activations whose shifted integers fit int8, e.g. W4A4
    /// E2M1/E1M2): weight integers `value/unit` — as a 16-entry int8 table read through the
    /// nibble codes (`TokenKernels.fp4Gemv`, `pshufb` + VNNI/maddubs) when the shape allows
    /// (columns and groups multiples of 32), else expanded to int8 `[out, in]` — group scales
    /// `scale·unit`, activation factors `2^(K − k_j)/unit_a`, and the output factor
    /// `alpha·unit_a·2^(−K)`.
    ///
    /// With `wide` the activations are int16 (`MiniFloat.fp4Int16Product`: the nibble codes are
    /// read through `table` in registers, by a panel GEMM for prefill and a GEMV for decode).
    private struct IntegerPath: Sendable {
        /// The 16 weight integers of the FP4 codes; nil when `codes` holds the expanded matrix.
        var table: [Int8]?
        /// int16 activations (else int8).
        var wide = false
        /// (The int16 paths keep `groupScales` empty: they read the stored scales and fold the
        /// weight unit into `outputScale`.)
        /// FP8 weights: the 256 weight integers of the byte codes (the panel GEMM at prefill; at
        /// decode the int16 byte GEMV where `fp8Gemv`, else the float GEMV on the same bytes).
        var table16: [Int16]? = nil
        /// FP8 weights at decode on `MiniFloat.fp8Int16Gemv` (AVX-512 VNNI + BW: 1.7× the float
        /// GEMV's speed on the FP8 head, docs/RESULTS.md sixth pass).
        var fp8Gemv = false
        /// Split int16 activations (`MiniFloat.quantizeRowsInt16Split`): the shifted grid integers
        /// exceed int16 (E3M4 with offsets K ≥ 5), so each is stored as `low + 2^shift·high`.
        var splitShift: Int? = nil
        /// Columns per exact int32 sum (the group, or a divisor of it when a whole group's sum
        /// could leave int32).
        var sumLength = 0
        /// The largest activation integer (the format's largest grid integer times 2^K).
        var maxActivation = 0
        var codes: [Int8]
        var groupScales: [Float]
        var activationFactors: [Float]
        var outputScale: Float
    }
    private let integer: IntegerPath?
    /// Whether the split int16 form (`integer.splitShift`) runs at prefill too; when false such a
    /// layer keeps the float path there (`splitActivationsByDefault`) and runs on integers only at
    /// decode, through `byteLayout`.
    private let splitPrefill: Bool
    /// The decode GEMV on int8 VNNI (`MiniFloat.fp4ByteGemv`) for FP4 layers on the int16 path:
    /// each activation integer as two (three for the split form) signed bytes against the weight
    /// integers offset to unsigned bytes, 64 products per `vpdpbusd`. The same exact group sums
    /// as the int16 GEMV, bit for bit its result, about 4× fewer instructions (docs/RESULTS.md,
    /// seventh pass). The codes repacked (16-row blocks) with their scales; where it exists it is
    /// the layer's only copy of them: the prefill int16 GEMM builds its panels from it and the
    /// float-path tiles decode from it (until the eighth speed pass the nibble codes stayed
    /// beside it, 66 MB more on SmolLM2). nil where the CPU lacks AVX-512 VNNI + BW, the shape
    /// does not fit (columns or group not multiples of 8), or `byteGemvByDefault` is off.
    private let byteLayout: MiniFloat.FP4ByteLayout?

    /// Whether layers whose activation integers need the split int16 form (E3M4 inputs with
    /// K = 5…7) run it by default: off, so they keep the float path (LUT GEMV at decode, tile
    /// decode + sgemm at prefill). The split form costs two int16 multiply-adds per weight where
    /// the float path costs one FMA, and on the measured AVX-512 VNNI machine (AMD EPYC, Zen 4
    /// class: vpdpwssd 1/cycle, FMA 2/cycle as measured) those layers took about 1.65× the CPU time of the
    /// float path at prefill and their GEMV 15 % more at decode (docs/RESULTS.md, sixth pass).
    /// `PTQ_FP_SPLIT_INT16=1` in the environment turns it on (read once, for A/B runs);
    /// `init(_:splitActivations:)` per layer.
    public static let splitActivationsByDefault = ProcessInfo.processInfo.environment["PTQ_FP_SPLIT_INT16"] == "1"

    /// Whether FP4 layers on the integer path decode with the byte-plane VNNI GEMV (`byteLayout`)
    /// where the CPU has it: on; `PTQ_FP4_BYTE_GEMV=0` in the environment turns it off (read once,
    /// for A/B runs against the int16 GEMV and the float LUT GEMV).
    public static let byteGemvByDefault = ProcessInfo.processInfo.environment["PTQ_FP4_BYTE_GEMV"] != "0"

    /// Whether FP4 layers with the byte-plane layout run prefill as tile decode + the float GEMM
    /// (the split-form layers' prefill path, bf16 operands with fp32 sums where the CPU has
    /// AVX512_BF16) instead of the exact int16 panel GEMM: on. `PTQ_FP4_TILE_PREFILL=0` in the
    /// environment turns it off (read once). One thread on SmolLM2 shapes the tile path takes
    /// about 0.73× the int16 GEMM's time (1.23× prefill idle, two threads), for sums that are
    /// fp32 over bf16-rounded operands instead of exact (perplexity 35.02 → 35.13 over 20
    /// chunks; docs/RESULTS.md, eleventh and twelfth passes). Decode is unchanged (byte GEMV).
    public static let tilePrefillByDefault = ProcessInfo.processInfo.environment["PTQ_FP4_TILE_PREFILL"] != "0"

    /// A task-scoped override of `tilePrefillByDefault` (`withValue(false) { … }`): tests check
    /// both prefill paths in one process.
    @TaskLocal public static var tilePrefillOverride: Bool?

    /// The tile prefill switch in effect (`tilePrefillOverride`, else `tilePrefillByDefault`).
    static var tilePrefill: Bool { tilePrefillOverride ?? tilePrefillByDefault }

    /// Rows up to which one GEMV per row beats decoding tiles for sgemm (as `IntegerLinear`).
    static let gemvRowLimit = 8

    /// Bytes a one-row (decode) forward reads: all it holds (`storageBytes`).
    public var weightBytes: Int { storageBytes }

    /// Bytes held for this layer: codes (nibbles, bytes or the byte-plane layout), scales, bias
    /// and activation parameters.
    public var storageBytes: Int {
        codes.count + scales.count * 4 + (bias?.count ?? 0) * 4 + (activation?.channelScales?.count ?? 0) * 4
            + (integer.map { $0.codes.count + ($0.table?.count ?? 0) + ($0.table16?.count ?? 0) * 2 + $0.groupScales.count * 4 } ?? 0)
            + (byteLayout?.bytes ?? 0)
    }

    /// What runs, for reports: e.g. `fp4 e2m1 LUT GEMV/tile-GEMM g32, A fp8 e4m3 per-tensor`.
    public var kernelDescription: String {
        let grouping = groupSize >= inFeatures ? "per-channel" : "g\(groupSize)"
        let act = activation?.floatFormat.map { "A \($0) per-tensor" + (activation?.channelScales != nil ? " + 2^-k" : "") }
            ?? "A16"
        let int16 = integer?.splitShift.map { "as split int16 (lo + 2^\($0)·hi)" } ?? "as int16"
        if let byteLayout, let integer {
            let decode = "byte-plane VNNI GEMV (decode, \(byteLayout.planes) planes)"
            if integer.splitShift != nil && !splitPrefill || Self.tilePrefill {
                return "\(format) tile-GEMM (prefill) + \(decode) \(grouping), \(act) \(int16)"
            }
            return "\(format) nibble-table int16 GEMM (prefill) + \(decode) \(grouping), \(act) \(int16)"
        }
        if let integer, let table16 = integer.table16, integer.fp8Gemv {
            let bytes = MiniFloat.fp8ByteGemvRuns(magnitudeBits: format.bits - 1, table: table16)
            return "\(format) byte-table int16 GEMM/GEMV\(bytes ? " (decode on magnitude bytes)" : "") (int32 sums of \(integer.sumLength)) \(grouping), \(act) \(int16)"
        }
        if let integer, integer.table16 != nil {
            return "\(format) byte-table int16 GEMM (prefill, int32 sums of \(integer.sumLength)) + LUT GEMV (decode) \(grouping), \(act) \(int16)"
        }
        if let integer, integer.wide, integer.splitShift == nil || splitPrefill {
            return "\(format) nibble-table int16 GEMM/GEMV \(grouping), \(act) \(int16)"
        }
        if let integer {
            let kernel = integer.table != nil ? "nibble-table int8 GEMV" : "LUT→int8 GEMM"
            return "\(format) \(kernel) \(grouping), \(act) as int8"
        }
        return "\(format) LUT GEMV/tile-GEMM \(grouping), \(act)"
    }

    /// Converts a `QuantizedLinear` with minifloat weights to run-time storage; throws a `PTQError`
    /// naming the layer for inconsistent shapes, unsupported formats or codes out of range.
    /// `splitActivations` lets activations whose integers exceed int16 run the split int16
    /// kernels instead of the float path (`splitActivationsByDefault`).
    public init(_ q: QuantizedLinear, splitActivations: Bool = FloatingPointLinear.splitActivationsByDefault) throws(PTQError) {
        let layer = q.name.isEmpty ? "quantized linear" : q.name
        func fail(_ message: String) -> PTQError { PTQError("\(layer): \(message)") }
        guard case .floatingPoint(let w) = q.weight else {
            throw fail("weight format '\(q.weight.formatName)' is not minifloat codes")
        }
        guard w.format.isSupported else { throw fail("minifloat format \(w.format) is not supported") }
        guard w.rows > 0, w.columns > 0 else { throw fail("empty weight \(w.rows)×\(w.columns)") }
        guard w.groupSize > 0 else { throw fail("group size \(w.groupSize) must be positive") }
        guard w.codes.count == w.rows * w.columns else {
            throw fail("\(w.codes.count) weight codes for a \(w.rows)×\(w.columns) matrix")
        }
        guard w.scales.count == w.rows * w.groupsPerRow else {
            throw fail("\(w.scales.count) weight scales, expected \(w.rows)×\(w.groupsPerRow) (group size \(w.groupSize))")
        }
        if let bad = w.scales.firstIndex(where: { !$0.isFinite }) {
            throw fail("weight scale \(w.scales[bad]) of row \(bad / w.groupsPerRow) is not finite")
        }
        let limit = w.format.codeCount
        if let bad = Validation.firstByte(in: w.codes, atLeast: limit) {
            throw fail("weight code \(w.codes[bad]) at element \(bad) does not fit \(w.format)")
        }
        if let bias = q.bias, bias.count != w.rows {
            throw fail("bias has \(bias.count) values for \(w.rows) output features")
        }
        if let a = q.activation {
            guard let f = a.floatFormat else {
                throw fail("minifloat weights with integer activations are not supported (activation format missing)")
            }
            guard f.isSupported, f.bits == a.bits else { throw fail("activation format \(f) does not match \(a.bits) bits") }
            guard a.granularity == .perTensor, let s = a.scale, s > 0, s.isFinite else {
                throw fail("minifloat activations need a positive static per-tensor scale (got \(a.scale.map { "\($0)" } ?? "none"))")
            }
            if let cs = a.channelScales {
                guard cs.count == w.columns else {
                    throw fail("\(cs.count) activation channel scales for \(w.columns) input features")
                }
                if let bad = cs.firstIndex(where: { !($0 > 0 && $0.isFinite) }) {
                    throw fail("activation channel scale \(cs[bad]) of input \(bad) is not a positive finite value")
                }
            }
            guard a.channelShift == nil else { throw fail("minifloat activations take no channel shift") }
        }
        name = q.name
        inFeatures = w.columns
        outFeatures = w.rows
        format = w.format
        groupSize = min(w.groupSize, w.columns)
        activation = q.activation
        bias = q.bias
        nibbles = w.bits <= 4
        let storedCodes = nibbles ? LowBit.packNibbles(w.codes, rows: w.rows, columns: w.columns) : w.codes
        // 16 entries for nibbles (the AVX2 path reads the first 8 as the magnitude table).
        table = w.format.codeValues + [Float](repeating: 0, count: max(0, (nibbles ? 16 : 256) - w.format.codeCount))
        // The split form is proven here whatever `splitActivations` says: with it off the layer
        // still decodes on integers where the byte-plane GEMV runs.
        let path = Self.integerPath(w, groupSize: min(w.groupSize, w.columns), activation: q.activation,
                                    allowSplit: true)
        splitPrefill = splitActivations
        var layout: MiniFloat.FP4ByteLayout? = nil
        if let path, path.wide, let table = path.table, Self.byteGemvByDefault, MiniFloat.fp4ByteGemvAvailable {
            // Two signed bytes hold −32768…32639, three ±8,355,711 (every integer below 2^23).
            let planes = path.maxActivation <= 32_639 ? 2 : 3
            layout = storedCodes.withUnsafeBufferPointer { c in
                w.scales.withUnsafeBufferPointer { s in
                    MiniFloat.FP4ByteLayout(codes: c.baseAddress!, rows: w.rows, columns: w.columns,
                                            groupSize: min(w.groupSize, w.columns), table: table,
                                            scales: s.baseAddress!, planes: planes)
                }
            }
        }
        if let path, path.splitShift != nil, !splitActivations, layout == nil {
            integer = nil // no integer kernel runs it: the float path, as before
        } else {
            integer = path
        }
        byteLayout = layout
        // One copy of the codes: the layout where it exists (every kernel of the layer reads it).
        codes = layout == nil ? storedCodes : []
        scales = layout == nil ? w.scales : []
    }

    /// Every FP4 weight is an integer (≤ 64) times the format's smallest step, and an activation
    /// grid value times 2^(K − k_j) is an integer too; when those fit int8 the layer runs the exact
    /// int8 GEMM (`ck_gemm_i8_grouped`) with the group scales applied after each integer group sum.
    /// When they fit int16 instead (e.g. E2M5: 252·2^K, E3M4 up to K = 4: 1984·2^K) the int16
    /// kernels run; past int16 (E3M4 at K = 5…7: up to 253,952) each activation integer is split
    /// into two int16 parts `low + 2^s·high` that meet the weight as `t` and `t·2^s` in the same
    /// int32 sum (`s` the smallest shift that brings `high` into int16; `|t|·2^s` must fit int16).
    /// Either way every exact sum must stay in int32: max|t|·max|a|·(sum length) < 2^31, or, where
    /// that coarse bound fails, the proof per row and group with the row's own weights and each
    /// column's largest integer (Σ_j |t_oj|·max|a_j| < 2^31). Groups must not split a column
    /// pair (even group size, or one group per row). Anything else keeps the float path, decided
    /// here once per layer.
    private static func integerPath(_ w: FloatingPointWeight, groupSize: Int,
                                    activation a: ActivationQuantization?, allowSplit: Bool) -> IntegerPath? {
        guard let a, let f = a.floatFormat, let alpha = a.scale, w.columns <= 131_072 else { return nil }
        let offsets: [Int] = a.channelScales?.map { -Int($0.exponent) } ?? [Int](repeating: 0, count: w.columns)
        // Only exact powers of two 2^(−k), k ≥ 0, are offsets.
        if let cs = a.channelScales, cs.contains(where: { $0.significandBitPattern != 0 || $0 > 1 }) { return nil }
        let k = offsets.max() ?? 0
        let maxInteger = Int(f.maxValue / f.unit)
        // |v| < 2^24 keeps every activation integer exact in float (the quantizers compute it there).
        guard k < 24, maxInteger << k < 1 << 24 else { return nil }
        let maxActivation = maxInteger << k
        // The split shift: high = v·2^−s (truncated) must fit int16.
        var shift = 0
        while maxActivation >> shift > Int(Int16.max) { shift += 1 }
        let split: Int? = shift > 0 ? shift : nil
        if split != nil && !allowSplit { return nil }
        let wt = w.format.codeValues
        let groupScales = w.scales.map { $0 * w.format.unit }
        let factors = offsets.map { Float(sign: .plus, exponent: k - $0, significand: 1) / f.unit }
        let outputScale = alpha * f.unit * Float(sign: .plus, exponent: -k, significand: 1)
        let columnMax = offsets.map { maxInteger << (k - $0) }
        /// The exact sums over `length` columns fit int32 for every row (coarse bound, else per row).
        func sumsFit(_ values: [Int], length: Int) -> Bool {
            let maxWeight = values.map { abs($0) }.max() ?? 0
            if maxWeight * maxActivation * length < Int(Int32.max) { return true }
            guard length == groupSize || length >= w.columns else { return false }
            return Self.rowSumsFit(w, weightIntegers: values, columnMax: columnMax, length: min(length, w.columns))
        }
        if w.bits > 4 {
            // FP8 weights: integers up to 252 (E2M5) or 1984 (E3M4) in int16; the exact sums run
            // over the longest even divisor of the group whose worst case fits int32.
            let values = wt.map { $0 / w.format.unit }
            guard values.allSatisfy({ $0.magnitude * Float(1 << shift) <= Float(Int16.max) }),
                  groupSize % 2 == 0 || groupSize >= w.columns
            else { return nil }
            let integers = values.map { Int($0) }
            let sumLength = ([groupSize] + [512, 256, 128, 64, 32, 16, 8, 4, 2]).first { n in
                n <= groupSize && (n == groupSize || (n % 2 == 0 && groupSize % n == 0)) && sumsFit(integers, length: n)
            }
            guard let sumLength else { return nil }
            return IntegerPath(table: nil, wide: true, table16: values.map { Int16($0) } + [Int16](repeating: 0, count: 256 - values.count),
                               fp8Gemv: MiniFloat.fp8Int16GemvAvailable(magnitudeBits: w.bits - 1), splitShift: split,
                               sumLength: sumLength, codes: [], groupScales: [],
                               activationFactors: factors, outputScale: outputScale * w.format.unit)
        }
        if maxActivation > 127 {
            let integers = wt.map { Int($0 / w.format.unit) }
            let maxWeight = integers.map { abs($0) }.max() ?? 0
            guard wt.count == 16, maxWeight <= 127, maxWeight << shift <= Int(Int16.max),
                  groupSize % 2 == 0 || groupSize >= w.columns, sumsFit(integers, length: groupSize) else { return nil }
            let table = wt.map { Int8($0 / w.format.unit) }
            return IntegerPath(table: table, wide: true, splitShift: split, sumLength: groupSize,
                               maxActivation: maxActivation, codes: [],
                               groupScales: [], activationFactors: factors, outputScale: outputScale * w.format.unit)
        }
        if wt.count == 16, TokenKernels.fp4Supports(columns: w.columns, groupSize: groupSize) {
            // Nibble codes stay as they are (two per byte); the kernels look them up in this table.
            let table = wt.map { Int8($0 / w.format.unit) }
            return IntegerPath(table: table, codes: [], groupScales: groupScales, activationFactors: factors,
                               outputScale: outputScale)
        }
        var codes = [Int8](repeating: 0, count: w.codes.count)
        for i in 0..<codes.count { codes[i] = Int8(wt[Int(w.codes[i])] / w.format.unit) }
        return IntegerPath(table: nil, codes: codes, groupScales: groupScales, activationFactors: factors,
                           outputScale: outputScale)
    }

    /// Whether Σ_{j ∈ sum} |t(code[o, j])|·columnMax[j] < 2^31 for every row o and every run of
    /// `length` columns (aligned to the row start): the exact bound on every int32 sum (and, as
    /// every partial sum is bounded by it, on every intermediate value) with the row's own weights.
    static func rowSumsFit(_ w: FloatingPointWeight, weightIntegers: [Int], columnMax: [Int], length: Int) -> Bool {
        let magnitudes = weightIntegers.map { abs($0) }
        return w.codes.withUnsafeBufferPointer { c in
            for o in 0..<w.rows {
                let row = o * w.columns
                var j0 = 0
                while j0 < w.columns {
                    var sum = 0
                    for j in j0..<min(w.columns, j0 + length) { sum += magnitudes[Int(c[row + j])] * columnMax[j] }
                    if sum >= Int(Int32.max) { return false }
                    j0 += length
                }
            }
            return true
        }
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        let k = inFeatures, n = outFeatures
        let decode = rows <= Self.gemvRowLimit
        if let p = integer, p.wide, p.table != nil || p.fp8Gemv || !decode, let a = activation,
           let f = a.floatFormat, let alpha = a.scale,
           p.splitShift == nil || splitPrefill || (decode && byteLayout != nil),
           decode || byteLayout == nil || !Self.tilePrefill {
            let lda = (k + 1) & ~1
            let wide = LowBit.threadScratch(slot: 2, count: rows * lda, of: Int16.self)
            // Split activations: the high parts in a second scratch slot.
            let high = p.splitShift.map { s in
                MiniFloat.HighParts(LowBit.threadScratch(slot: 3, count: rows * lda, of: Int16.self), shift: s)
            }
            withOptional(a.channelScales) { cs in
                p.activationFactors.withUnsafeBufferPointer { fp in
                    if let high {
                        MiniFloat.quantizeRowsInt16Split(x, rows: rows, columns: k, channelScales: cs, alpha: alpha,
                                                         exponentBits: f.exponentBits, mantissaBits: f.mantissaBits,
                                                         factors: fp.baseAddress!, shift: high.shift, low: wide,
                                                         high: UnsafeMutablePointer(mutating: high.values), ld: lda)
                    } else {
                        MiniFloat.quantizeRowsInt16(x, rows: rows, columns: k, channelScales: cs, alpha: alpha,
                                                    exponentBits: f.exponentBits, mantissaBits: f.mantissaBits,
                                                    factors: fp.baseAddress!, into: wide, ld: lda)
                    }
                }
            }
            // The stored scales as they are (the weight unit is in `outputScale`): no second copy.
            codes.withUnsafeBufferPointer { wc in
                scales.withUnsafeBufferPointer { ws in
                    if let byteLayout, decode {
                        MiniFloat.fp4ByteGemv(byteLayout, activations: wide, high: high, lda: lda, m: rows, y: y, ldy: n)
                    } else if let byteLayout, let table = p.table {
                        MiniFloat.fp4Int16Product(byteLayout, table: table, activations: wide, high: high, lda: lda,
                                                  m: rows, y: y, ldy: n)
                    } else if let table = p.table {
                        MiniFloat.fp4Int16Product(codes: wc.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                                  table: table, scales: ws.baseAddress!, activations: wide,
                                                  high: high, lda: lda, m: rows, y: y, ldy: n,
                                                  kernel: rows <= Self.gemvRowLimit ? .gemv : .gemm)
                    } else if let table16 = p.table16, p.fp8Gemv, rows <= Self.gemvRowLimit {
                        MiniFloat.fp8Int16Gemv(codes: wc.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                               sumLength: p.sumLength, magnitudeBits: format.bits - 1, table: table16,
                                               scales: ws.baseAddress!, activations: wide, high: high, lda: lda,
                                               m: rows, y: y, ldy: n)
                    } else if let table16 = p.table16 {
                        MiniFloat.fp8Int16Product(codes: wc.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                                  sumLength: p.sumLength, table: table16, scales: ws.baseAddress!,
                                                  activations: wide, high: high, lda: lda, m: rows, y: y, ldy: n)
                    }
                }
            }
            for i in 0..<rows * n { y[i] *= p.outputScale }
            if let bias {
                bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
            }
            return
        }
        if let p = integer, !p.wide, let a = activation, let f = a.floatFormat, let alpha = a.scale {
            let codes = LowBit.threadScratch(slot: 2, count: rows * k, of: Int8.self)
            withOptional(a.channelScales) { cs in
                p.activationFactors.withUnsafeBufferPointer { fp in
                    MiniFloat.quantizeRowsInt8(x, rows: rows, columns: k, channelScales: cs, alpha: alpha,
                                               exponentBits: f.exponentBits, mantissaBits: f.mantissaBits,
                                               factors: fp.baseAddress!, into: codes)
                }
            }
            if let table = p.table {
                self.codes.withUnsafeBufferPointer { wc in
                    table.withUnsafeBufferPointer { t in
                        p.groupScales.withUnsafeBufferPointer { ws in
                            if rows <= Self.gemvRowLimit {
                                let permuted = LowBit.threadScratch(slot: 3, count: rows * k, of: Int8.self)
                                TokenKernels.fp4Permute(codes, rows: rows, columns: k, into: permuted)
                                TokenKernels.fp4Gemv(codes: wc.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                                     table: t.baseAddress!, scales: ws.baseAddress!,
                                                     permutedActivations: permuted, m: rows, y: y, ldy: n)
                            } else {
                                TokenKernels.fp4Product(codes: wc.baseAddress!, rows: n, columns: k, groupSize: groupSize,
                                                        table: t.baseAddress!, scales: ws.baseAddress!,
                                                        activations: codes, m: rows, y: y)
                            }
                        }
                    }
                }
            } else {
                p.codes.withUnsafeBufferPointer { wc in
                    p.groupScales.withUnsafeBufferPointer { ws in
                        LowBit.gemmI8Grouped(a: codes, m: rows, b: wc.baseAddress!, n: n, k: k, groupSize: groupSize,
                                             weightScales: ws.baseAddress!, c: y, ldc: n)
                    }
                }
            }
            for i in 0..<rows * n { y[i] *= p.outputScale }
            if let bias {
                bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
            }
            return
        }
        var input = x
        let quantized = LowBit.threadScratch(slot: 2, count: activation == nil ? 0 : rows * k, of: Float.self)
        if let a = activation, let f = a.floatFormat, let alpha = a.scale {
            withOptional(a.channelScales) { cs in
                MiniFloat.quantizeRows(x, rows: rows, columns: k, channelScales: cs, alpha: alpha,
                                       exponentBits: f.exponentBits, mantissaBits: f.mantissaBits, into: quantized)
            }
            input = UnsafePointer(quantized)
        }
        if let byteLayout {
            // The split-form layers at prefill, all of them with `tilePrefill` (decode
            // runs the byte-plane GEMV above).
            table.withUnsafeBufferPointer { t in
                MiniFloat.product(byteLayout, table: t.baseAddress!, x: input, rows: rows, y: y)
            }
            if let bias {
                bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
            }
            return
        }
        codes.withUnsafeBufferPointer { c in
            scales.withUnsafeBufferPointer { s in
                table.withUnsafeBufferPointer { t in
                    if rows <= Self.gemvRowLimit {
                        for i in 0..<rows {
                            MiniFloat.gemv(codes: c.baseAddress!, nibbles: nibbles, rows: n, columns: k,
                                           groupSize: groupSize, table: t.baseAddress!, scales: s.baseAddress!,
                                           x: input + i * k, y: y + i * n,
                                           format: (format.exponentBits, format.mantissaBits))
                        }
                    } else {
                        MiniFloat.product(codes: c.baseAddress!, nibbles: nibbles, outFeatures: n, inFeatures: k,
                                          groupSize: groupSize, table: t.baseAddress!, scales: s.baseAddress!,
                                          x: input, rows: rows, y: y)
                    }
                }
            }
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
        }
    }
}
