import Foundation

/// The AdaLog quantizer for non-negative activations (Wu et al., ECCV 2024; reference code
/// GoatWu/AdaLog `quantizers/logarithm.py`): a logarithmic grid with a searchable base
/// `b = 2^(q/r)`, `r = 37` and integer `q` (10…137 in the reference search).
///
/// Quantize: `k = round(−log_b(x/s))`, clamped below at 0. Dequantize exactly as integer
/// hardware does, with a shift and a mantissa table:
/// `x̂ = s · 2^(−⌊kq/r⌋) · T[(kq) mod r]`, `T[u] = round(2^(−u/r)·D)/D`, `D = 2^(n+1) − 2`.
/// The search scores candidates through the same table, so calibration matches inference.
///
/// **Reserved zero code (our choice; the reference has none).** The reference maps underflow
/// (`k ≥ 2^n`) to an exact zero besides its `2^n` levels: `2^n + 1` states, which do not fit in
/// `n` bits. Here code `2^n − 1` *is* the exact zero and the nonzero levels are `k = 0…2^n − 2`;
/// every `x` with `k ≥ 2^n − 1` (including `x = 0`, e.g. masked attention) becomes zero. This
/// costs the reference's smallest level and makes the packing truly `n` bits.
///
/// Fixed-base log quantizers are the same machinery with another resolution: `log2` is
/// `q = 1, r = 1` (pure shifts), `log√2` is `q = 1, r = 2` (shift plus a two-entry mantissa).
public struct AdaLogQuantizer: Sendable, Equatable, Codable {
    /// The reference's base resolution: `b = 2^(q/37)`; 37 is prime, so only q = 37, 74, 111
    /// give pure shifts.
    public static let referenceResolution = 37
    /// The reference's search range of `q` (128 candidates; it builds 10…138 but evaluates 128).
    public static let referenceSearchRange = 10...137

    /// Code width, 2…8.
    public let bits: Int
    /// Base exponent numerator: `b = 2^(q/r)`.
    public let q: Int
    /// Base exponent denominator (resolution).
    public let r: Int
    /// Scale `s`: the value of code 0 (1 for post-softmax probabilities).
    public let scale: Float

    /// `⌊kq/r⌋` per nonzero code: the right shift of the level.
    public let shifts: [Int]
    /// `round(2^(−((kq) mod r)/r) · D)` per nonzero code: the integer mantissa numerator.
    public let mantissas: [Int]

    enum CodingKeys: String, CodingKey { case bits, q, r, scale }

    /// Validates the parameters (`what` names the quantizer in messages).
    public init(bits: Int, q: Int, r: Int = AdaLogQuantizer.referenceResolution, scale: Float = 1,
                what: String = "adalog quantizer") throws(PTQError) {
        guard (2...8).contains(bits) else { throw PTQError("\(what): \(bits) bits is out of range (2…8)") }
        guard r >= 1, r <= 1024 else { throw PTQError("\(what): resolution r = \(r) is out of range (1…1024)") }
        guard q >= 1, q <= 64 * r else { throw PTQError("\(what): base exponent q = \(q) is out of range (1…\(64 * r))") }
        guard scale.isFinite, scale > 0 else { throw PTQError("\(what): scale \(scale) must be positive and finite") }
        self.bits = bits
        self.q = q
        self.r = r
        self.scale = scale
        let denominator = Double(Self.denominator(bits: bits))
        var shifts: [Int] = [], mantissas: [Int] = []
        for k in 0..<((1 << bits) - 1) {
            shifts.append(k * q / r)
            mantissas.append(Int((pow(2, -Double((k * q) % r) / Double(r)) * denominator).rounded()))
        }
        self.shifts = shifts
        self.mantissas = mantissas
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(bits: c.decode(Int.self, forKey: .bits), q: c.decode(Int.self, forKey: .q),
                      r: c.decode(Int.self, forKey: .r), scale: c.decode(Float.self, forKey: .scale))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(bits, forKey: .bits)
        try c.encode(q, forKey: .q)
        try c.encode(r, forKey: .r)
        try c.encode(scale, forKey: .scale)
    }

    /// Mantissa denominator `D = 2^(n+1) − 2` (30 at 4 bits), as in the reference.
    public static func denominator(bits: Int) -> Int { (1 << (bits + 1)) - 2 }

    /// The code that means exact zero, `2^n − 1`.
    public var zeroCode: Int { (1 << bits) - 1 }

    /// The base `2^(q/r)`.
    public var base: Double { pow(2, Double(q) / Double(r)) }

    /// Table dequantization (the definition the kernels use): `s · m[k]/D · 2^(−shift[k])`.
    public func value(code k: Int) -> Float {
        if k >= zeroCode { return 0 }
        return Float(Double(scale) * Double(mantissas[k]) / Double(Self.denominator(bits: bits))
                     * pow(2, -Double(shifts[k])))
    }

    /// The exact level `s · 2^(−kq/r)` without mantissa rounding (the reference's training form;
    /// tests compare the table against it).
    public func exactValue(code k: Int) -> Float {
        k >= zeroCode ? 0 : Float(Double(scale) * pow(2, -Double(k * q) / Double(r)))
    }

    /// All `2^n` dequantized levels indexed by code (zero at `zeroCode`).
    public var levels: [Float] { (0...zeroCode).map { value(code: $0) } }

    /// Decision thresholds `β_k = s · 2^(−(k+½)q/r)`, k = 0…2^n−2, descending: the code of `x`
    /// is the number of thresholds with `x ≤ β_k`. They are the rounding boundaries of
    /// `round(−log_b(x/s))`, so encoding needs comparisons only, no logarithm.
    public var thresholds: [Float] {
        (0..<zeroCode).map { Float(Double(scale) * pow(2, -(Double($0) + 0.5) * Double(q) / Double(r))) }
    }

    /// Reference encoder, by the formula: `k = round(−log2(x/s)·r/q)`, clamped at 0, zero code
    /// for `k ≥ 2^n − 1` and for x ≤ 0.
    public func referenceCode(_ x: Float) -> Int {
        guard x > 0 else { return zeroCode }
        let k = (-log2(Double(x) / Double(scale)) * Double(r) / Double(q)).rounded()
        if k >= Double(zeroCode) { return zeroCode }
        return max(0, Int(k))
    }

    /// `adalog4 b=2^(37/37) s=1`.
    public var summary: String {
        "log\(bits) base 2^(\(q)/\(r))=\(String(format: "%.4f", base)) scale \(scale), zero code \(zeroCode)"
    }
}

/// Unsigned uniform quantizer for non-negative activations: `code = clamp(round(x/s), 0, 2^n−1)`,
/// value `s·code` (code 0 is exact zero). The baseline AdaLog is compared against.
public struct UniformPositiveQuantizer: Sendable, Equatable, Codable {
    public let bits: Int
    public let scale: Float

    public init(bits: Int, scale: Float, what: String = "uniform quantizer") throws(PTQError) {
        guard (2...8).contains(bits) else { throw PTQError("\(what): \(bits) bits is out of range (2…8)") }
        guard scale.isFinite, scale > 0 else { throw PTQError("\(what): scale \(scale) must be positive and finite") }
        self.bits = bits
        self.scale = scale
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(bits: c.decode(Int.self, forKey: .bits), scale: c.decode(Float.self, forKey: .scale))
    }

    public var maxCode: Int { (1 << bits) - 1 }
    public var levels: [Float] { (0...maxCode).map { scale * Float($0) } }
    /// Ascending thresholds `s·(k+½)`: the code is the number of thresholds below `x`.
    public var thresholds: [Float] { (0..<maxCode).map { scale * (Float($0) + 0.5) } }
    public var summary: String { "uniform\(bits) scale \(scale)" }
}

/// How a non-negative activation tensor (post-softmax probabilities) is quantized to codes:
/// one case per format, each with a level table the code-domain kernels multiply with.
///
/// Stored as a flat JSON object: `{"format": "adalog", "bits": 4, "q": 37, "r": 37, "scale": 1}`
/// or `{"format": "uniform", "bits": 4, "scale": 0.0667}`.
public enum PositiveActivationQuantizer: Sendable, Equatable, Codable {
    /// AdaLog (or fixed-base log2 / log√2 with `r` = 1 / 2).
    case adalog(AdaLogQuantizer)
    case uniform(UniformPositiveQuantizer)

    public var bits: Int {
        switch self {
        case .adalog(let a): a.bits
        case .uniform(let u): u.bits
        }
    }

    /// Value of every code (`2^bits` entries).
    public var levels: [Float] {
        switch self {
        case .adalog(let a): a.levels
        case .uniform(let u): u.levels
        }
    }

    /// Code of exact zero.
    public var zeroCode: Int {
        switch self {
        case .adalog(let a): a.zeroCode
        case .uniform: 0
        }
    }

    /// Format name as stored and shown: `adalog`, `uniform`.
    public var formatName: String {
        switch self {
        case .adalog: "adalog"
        case .uniform: "uniform"
        }
    }

    /// Reference encoder of one value (tests and the search compare kernels against it).
    public func code(_ x: Float) -> Int {
        switch self {
        case .adalog(let a):
            var k = 0
            for t in a.thresholds where x <= t { k += 1 }
            return k
        case .uniform(let u):
            var k = 0
            for t in u.thresholds where x > t { k += 1 }
            return k
        }
    }

    /// Reference dequantizer of one code.
    public func value(code: Int) -> Float { levels[code] }

    enum CodingKeys: String, CodingKey { case format }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let format = try c.decode(String.self, forKey: .format)
        switch format {
        case "adalog": self = .adalog(try AdaLogQuantizer(from: decoder))
        case "uniform": self = .uniform(try UniformPositiveQuantizer(from: decoder))
        default:
            throw DecodingError.dataCorruptedError(forKey: .format, in: c,
                                                   debugDescription: "unknown activation format '\(format)' (adalog, uniform)")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(formatName, forKey: .format)
        switch self {
        case .adalog(let a): try a.encode(to: encoder)
        case .uniform(let u): try u.encode(to: encoder)
        }
    }

    public var summary: String {
        switch self {
        case .adalog(let a): "adalog " + a.summary
        case .uniform(let u): u.summary
        }
    }
}

/// A quantized activation site that is not a linear layer's input, e.g. the post-softmax
/// probabilities `layers.3.attention.probs`: what the packer stores in the manifest and what
/// the runtime builds its code-domain op from.
public struct QuantizedActivationSite: Sendable, Equatable, Codable {
    /// Quantization point (`QuantizationPoints`), e.g. `layers.3.attention.probs`.
    public var point: String
    /// Recipe quantizer that produced it: `adalog`, `log2`, `log_sqrt2`, `uniform`.
    public var method: String
    public var quantizer: PositiveActivationQuantizer
    /// What the search decided, for `ptq inspect` (scanned error, candidates, …).
    public var details: [String: String]
    /// Fully quantized attention (probability sites only): when set, `Q·Kᵀ` runs on per-head
    /// uniform codes of Q and K (integer dot products, scales and zero points applied after the
    /// integer sum); nil = Q and K stay float.
    public var query: PerHeadUniformQuantizer?
    public var key: PerHeadUniformQuantizer?
    /// When set, `P·V` runs on the probability codes × per-head uniform codes of V (integer
    /// bucket sums); nil = V stays float.
    public var value: PerHeadUniformQuantizer?

    public init(point: String, method: String, quantizer: PositiveActivationQuantizer, details: [String: String] = [:],
                query: PerHeadUniformQuantizer? = nil, key: PerHeadUniformQuantizer? = nil,
                value: PerHeadUniformQuantizer? = nil) {
        self.point = point
        self.method = method
        self.quantizer = quantizer
        self.details = details
        self.query = query
        self.key = key
        self.value = value
    }

    /// The layer index of a `layers.N.attention.probs` point, nil for any other point.
    public var attentionProbabilityLayer: Int? {
        let parts = point.split(separator: ".")
        guard parts.count == 4, parts[0] == "layers", parts[2] == "attention", parts[3] == "probs" else { return nil }
        return Int(parts[1])
    }
}

/// Per-head uniform asymmetric quantizer of an attention matmul operand (Q, K or V of one
/// layer): unsigned `n`-bit codes, `code = clamp(round(x/s_h) + z_h, 0, 2^n − 1)`, value
/// `s_h·(code − z_h)`, one scale `s_h` and integer zero point `z_h` per head (AdaLog's
/// reference quantizes Q, K and V per head, GoatWu/AdaLog `quant_layers/matmul.py`).
///
/// Stored as `{"bits": 4, "scales": [...], "zero_points": [...]}` (one entry per head).
public struct PerHeadUniformQuantizer: Sendable, Equatable, Codable {
    public let bits: Int
    /// `s_h` per head.
    public let scales: [Float]
    /// `z_h` per head, in `0…2^n − 1`.
    public let zeroPoints: [Int]

    enum CodingKeys: String, CodingKey {
        case bits, scales
        case zeroPoints = "zero_points"
    }

    /// Validates the parameters (`what` names the operand in messages).
    public init(bits: Int, scales: [Float], zeroPoints: [Int], what: String = "attention operand quantizer") throws(PTQError) {
        guard (2...8).contains(bits) else { throw PTQError("\(what): \(bits) bits is out of range (2…8)") }
        guard !scales.isEmpty, scales.count == zeroPoints.count else {
            throw PTQError("\(what): \(scales.count) scales and \(zeroPoints.count) zero points (one of each per head)")
        }
        if let h = scales.firstIndex(where: { !($0.isFinite && $0 > 0) }) {
            throw PTQError("\(what): head \(h) scale \(scales[h]) must be positive and finite")
        }
        if let h = zeroPoints.firstIndex(where: { !(0...((1 << bits) - 1)).contains($0) }) {
            throw PTQError("\(what): head \(h) zero point \(zeroPoints[h]) is outside 0…\((1 << bits) - 1)")
        }
        self.bits = bits
        self.scales = scales
        self.zeroPoints = zeroPoints
    }

    /// The quantizer whose grid spans `[low, high]` (widened to contain 0, as an asymmetric
    /// grid with an integer zero point must), per head.
    public static func fitting(bits: Int, ranges: [(low: Float, high: Float)],
                               what: String = "attention operand quantizer") throws(PTQError) -> PerHeadUniformQuantizer {
        let top = Float((1 << bits) - 1)
        var scales: [Float] = [], zeros: [Int] = []
        for (low, high) in ranges {
            let lo = min(low, 0), hi = max(high, 0)
            let scale = max((hi - lo) / top, 1e-8)
            scales.append(scale)
            zeros.append(Int(min(max((-lo / scale).rounded(), 0), top)))
        }
        return try PerHeadUniformQuantizer(bits: bits, scales: scales, zeroPoints: zeros, what: what)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(bits: c.decode(Int.self, forKey: .bits), scales: c.decode([Float].self, forKey: .scales),
                      zeroPoints: c.decode([Int].self, forKey: .zeroPoints))
    }

    public var heads: Int { scales.count }
    public var maxCode: Int { (1 << bits) - 1 }

    /// Reference encoder of one value of head `head`.
    public func code(_ x: Float, head: Int) -> Int {
        Int(min(max((x / scales[head]).rounded() + Float(zeroPoints[head]), 0), Float(maxCode)))
    }

    /// Reference dequantizer of one code of head `head`.
    public func value(code: Int, head: Int) -> Float { scales[head] * Float(code - zeroPoints[head]) }

    /// `uniform4 asym per head, scales 0.012…0.09`.
    public var summary: String {
        let lo = scales.min() ?? 0, hi = scales.max() ?? 0
        return "uniform\(bits) asymmetric per head (\(heads)), scales \(String(format: "%.4g", lo))…\(String(format: "%.4g", hi))"
    }
}
