import Foundation

/// A minifloat format: a sign bit, `exponentBits` exponent bits and `mantissaBits` mantissa
/// bits (LLM-FP4, Liu et al. EMNLP 2023, Eq. 1–9).
///
/// The grid is the one of the paper and its code (nbasyl/LLM-FP4 `get_scale`): every exponent
/// code is finite (none is reserved for inf/NaN), exponent code 0 holds the subnormals, and the
/// value at bias 0 is
///
/// - exponent code `E = 0`: `2·M / 2^m` (subnormals, and zero),
/// - exponent code `E ≥ 1`: `2^E · (1 + M / 2^m)`.
///
/// So the positive levels are E2M1 {0, 1, 2, 3, 4, 6, 8, 12}, E3M0 {0, 2, 4, …, 128} and E1M2
/// {0, 0.5, …, 3.5}. A real-valued exponent bias b̃ scales the grid by `α = 2^(−b̃)`:
/// `Q_b̃(x) = α · Q_0(x / α)` (`quantize(_:scale:)`), which is how scales are stored (per row,
/// group or tensor). Rounding is to nearest, ties to even (`torch.round`), after clipping at the
/// format's largest value.
///
/// Every grid value is an integer multiple of the smallest step `2^(1−m)`, and the integer
/// (`integerValue`) needs at most `2^e − 1 + m` bits: the kernels use that to work on small
/// integers.
public struct FloatingPointFormat: Codable, Sendable, Hashable, CustomStringConvertible {
    public var exponentBits: Int
    public var mantissaBits: Int

    enum CodingKeys: String, CodingKey {
        case exponentBits = "exponent_bits"
        case mantissaBits = "mantissa_bits"
    }

    public init(exponentBits: Int, mantissaBits: Int) {
        self.exponentBits = exponentBits
        self.mantissaBits = mantissaBits
    }

    /// Sign + exponent + mantissa.
    public var bits: Int { 1 + exponentBits + mantissaBits }

    /// Whether the format can be stored and run: 1…7 exponent bits, 0…6 mantissa bits, 3…8 bits.
    public var isSupported: Bool {
        (1...7).contains(exponentBits) && (0...6).contains(mantissaBits) && (3...8).contains(bits)
    }

    /// `fp4 e2m1`.
    public var description: String { "fp\(bits) e\(exponentBits)m\(mantissaBits)" }

    /// Parses `e2m1` / `E4M3` (case-insensitive).
    public init?(name: String) {
        let s = name.lowercased()
        guard s.hasPrefix("e"), let mIndex = s.firstIndex(of: "m"),
              let e = Int(s[s.index(after: s.startIndex)..<mIndex]),
              let m = Int(s[s.index(after: mIndex)...]) else { return nil }
        self.init(exponentBits: e, mantissaBits: m)
        guard isSupported else { return nil }
    }

    /// Parses a `formatName` such as `fp4 e2m1`.
    public init?(formatName: String) {
        let parts = formatName.split(separator: " ")
        guard parts.count == 2, parts[0].hasPrefix("fp"), let bits = Int(parts[0].dropFirst(2)),
              let format = FloatingPointFormat(name: String(parts[1])), format.bits == bits else { return nil }
        self = format
    }

    /// The candidate formats of the paper's search at a bit width (E+M = bits − 1): 4-bit m 0…2,
    /// 6-bit m 0…4, 8-bit m 2…6 (E7M0/E6M1 excluded for overflow, as the reference code does).
    public static func searchCandidates(bits: Int) -> [FloatingPointFormat] {
        let mantissas: ClosedRange<Int>
        switch bits {
        case 4: mantissas = 0...2
        case 6: mantissas = 0...4
        case 8: mantissas = 2...6
        default: mantissas = 0...max(0, min(bits - 2, 6))
        }
        return mantissas.map { FloatingPointFormat(exponentBits: bits - 1 - $0, mantissaBits: $0) }
            .filter(\.isSupported)
    }

    /// The MinMax default at a bit width: E2M1 (4), E3M2 (6), E4M3 (8), as the paper's MinMax rows.
    public static func defaultFormat(bits: Int) -> FloatingPointFormat {
        switch bits {
        case 8: FloatingPointFormat(exponentBits: 4, mantissaBits: 3)
        case 6: FloatingPointFormat(exponentBits: 3, mantissaBits: 2)
        case 5: FloatingPointFormat(exponentBits: 2, mantissaBits: 2)
        default: FloatingPointFormat(exponentBits: 2, mantissaBits: 1)
        }
    }

    /// Largest value at bias 0: `2^(2^e − 1) · (2 − 2^−m)` (E2M1: 12).
    public var maxValue: Float {
        Float(sign: .plus, exponent: (1 << exponentBits) - 1, significand: 2 - Float(sign: .plus, exponent: -mantissaBits, significand: 1))
    }

    /// The smallest grid step `2^(1−m)`; every grid value is an integer multiple of it.
    public var unit: Float { Float(sign: .plus, exponent: 1 - mantissaBits, significand: 1) }

    /// Number of codes, `2^bits`.
    public var codeCount: Int { 1 << bits }

    /// The value of a code at bias 0: code = sign << (e+m) | E << m | M.
    public func value(code: Int) -> Float {
        let m = mantissaBits
        let magnitude = code & ((1 << (exponentBits + m)) - 1)
        let e = magnitude >> m, mant = magnitude & ((1 << m) - 1)
        let v: Float = e == 0
            ? Float(sign: .plus, exponent: 1 - m, significand: Float(mant))
            : Float(sign: .plus, exponent: e, significand: 1 + Float(mant) / Float(1 << m))
        return (code >> (exponentBits + m)) & 1 == 1 ? -v : v
    }

    /// The grid value of a code divided by `unit`, an integer (E2M1: 0, 1, 2, 3, 4, 6, 8, 12).
    public func integerValue(code: Int) -> Int { Int(value(code: code) / unit) }

    /// Every code's value at bias 0, indexed by code (the table the kernels look up).
    public var codeValues: [Float] { (0..<codeCount).map { value(code: $0) } }

    /// The sorted non-negative grid values at bias 0.
    public var positiveGrid: [Float] {
        Array(Set((0..<(codeCount / 2)).map { value(code: $0) })).sorted()
    }

    /// Rounds `y` to the grid at bias 0: clip at ±maxValue, then in the binade p = max(⌊log2|y|⌋, 1)
    /// round to a multiple of `2^(p−m)`, ties to even. Returns the value; NaN becomes 0.
    @inlinable
    public func roundToGrid(_ y: Float) -> Float {
        let maxV = maxValue
        guard !y.isNaN else { return 0 }
        let c = Swift.min(Swift.max(y, -maxV), maxV)
        if c == 0 { return 0 }
        let p = Swift.max(Int(c.magnitude.exponent), 1)
        let step = Float(sign: .plus, exponent: p - mantissaBits, significand: 1)
        return (c / step).rounded(.toNearestOrEven) * step
    }

    /// The code of a grid value (the output of `roundToGrid`).
    public func code(ofGridValue q: Float) -> UInt8 {
        let sign = q.sign == .minus && q != 0 ? 1 << (exponentBits + mantissaBits) : 0
        let a = q.magnitude
        var magnitude = 0
        if a >= 2 {
            let e = Int(a.exponent)
            let mant = Int(((a / Float(sign: .plus, exponent: e, significand: 1)) - 1) * Float(1 << mantissaBits))
            magnitude = e << mantissaBits | mant
        } else {
            magnitude = Int(a / unit)  // subnormal: M = a / 2^(1−m)
        }
        return UInt8(sign | magnitude)
    }

    /// `Q_b̃(x) = α·Q_0(x / α)` with `α = 2^(−b̃)`: the reference fake quantizer.
    @inlinable
    public func quantize(_ x: Float, scale alpha: Float) -> Float {
        roundToGrid(x / alpha) * alpha
    }

    /// The scale `α = 2^(−b̃)` that maps `absMax` onto the format's largest value (paper Eq. 7:
    /// b̃ = 2^e − log2(absMax) + log2(2 − 2^−m) − 1); 1 for an all-zero tensor.
    public func initialBias(absMax: Float) -> Double {
        guard absMax > 0, absMax.isFinite else { return 0 }
        return Double(1 << exponentBits) - log2(Double(absMax)) + log2(2 - pow(2, Double(-mantissaBits))) - 1
    }

    /// `2^(−b̃)`.
    public static func scale(bias: Double) -> Float { Float(pow(2, -bias)) }
}

/// A minifloat-quantized weight matrix `[rows = out, columns = in]` (LLM-FP4).
///
/// Every element is a code of `format.bits` bits (sign | exponent | mantissa, see
/// `FloatingPointFormat`); its value is `scale[g] · format.value(code)` for the group g it belongs
/// to (groups of `groupSize` consecutive columns within a row; `groupSize == columns` is one
/// scale per output channel, the paper's setting). Scales are the real `2^(−b̃)` of a searched
/// real-valued exponent bias. In memory codes are one byte each; packed files store them at their
/// true width (two FP4 codes per byte).
public struct FloatingPointWeight: Sendable, Equatable {
    public var format: FloatingPointFormat
    public var rows: Int
    public var columns: Int
    public var groupSize: Int
    /// `rows × columns` codes, row-major.
    public var codes: [UInt8]
    /// `rows × groupsPerRow` scales `2^(−b̃)`, row-major.
    public var scales: [Float]

    public init(format: FloatingPointFormat, rows: Int, columns: Int, groupSize: Int, codes: [UInt8], scales: [Float]) {
        self.format = format
        self.rows = rows
        self.columns = columns
        self.groupSize = groupSize
        self.codes = codes
        self.scales = scales
    }

    public var bits: Int { format.bits }
    public var groupsPerRow: Int { (columns + groupSize - 1) / groupSize }

    /// The float value of one element (the reference definition the kernels must match).
    @inlinable
    public func value(row r: Int, column c: Int) -> Float {
        scales[r * groupsPerRow + c / groupSize] * format.value(code: Int(codes[r * columns + c]))
    }

    /// The whole matrix in float (reference and tests only: the runtime never does this).
    public func dequantizedReference() -> [Float] {
        let table = format.codeValues
        var out = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            for c in 0..<columns {
                out[r * columns + c] = scales[r * groupsPerRow + c / groupSize] * table[Int(codes[r * columns + c])]
            }
        }
        return out
    }

    /// Row `r` in float into `out[0..<columns]`: the run-time row decoder (embedding lookups),
    /// a code-table lookup times the group scale; equals row `r` of `dequantizedReference()`.
    /// `table` is `format.codeValues` (callers decoding many rows pass it once).
    public func decodeRow(_ r: Int, table: [Float]? = nil, into out: UnsafeMutablePointer<Float>) {
        precondition(r >= 0 && r < rows, "row \(r) out of range 0..<\(rows)")
        let values = table ?? format.codeValues
        precondition(values.count == format.codeCount, "code table of \(values.count) values for \(format)")
        values.withUnsafeBufferPointer { t in
            codes.withUnsafeBufferPointer { cp in
                let row = cp.baseAddress! + r * columns
                for g in 0..<groupsPerRow {
                    let scale = scales[r * groupsPerRow + g]
                    for c in (g * groupSize)..<min(columns, (g + 1) * groupSize) { out[c] = scale * t[Int(row[c])] }
                }
            }
        }
    }

    /// Quantizes `weight` (`rows × columns`, row-major) with one scale per group.
    public static func quantize(_ weight: [Float], rows: Int, columns: Int, groupSize: Int,
                                format: FloatingPointFormat, scales: [Float]) -> FloatingPointWeight {
        let gs = min(groupSize, columns)
        let groups = (columns + gs - 1) / gs
        var codes = [UInt8](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            for c in 0..<columns {
                let alpha = scales[r * groups + c / gs]
                codes[r * columns + c] = format.code(ofGridValue: format.roundToGrid(weight[r * columns + c] / alpha))
            }
        }
        return FloatingPointWeight(format: format, rows: rows, columns: columns, groupSize: gs, codes: codes, scales: scales)
    }
}
