/// How the activations entering a quantized linear layer are quantized at run time.
///
/// The quantize op computes, per input element j of a token row x:
/// `x'[j] = (x[j] - shift[j]) / channelScale[j]` (each step only when present), then rounds
/// `x'` to signed integers in ±(2^(bits-1) - 1) with one scale per tensor (static, from
/// calibration) or per token (dynamic, absmax of the row).
public struct ActivationQuantization: Codable, Sendable, Equatable {
    public enum Granularity: String, Codable, Sendable, CaseIterable {
        /// One static scale from calibration for the whole tensor.
        case perTensor = "per_tensor"
        /// One scale per token row, computed at run time from the row's absmax.
        case perToken = "per_token"
    }

    /// Integer width of the codes (2…8); codes lie in ±(2^(bits-1) - 1).
    public var bits: Int
    public var granularity: Granularity
    /// Static per-tensor scale (granularity `.perTensor`).
    public var scale: Float?
    /// Per-input-channel divisor applied before rounding (its product is folded into the weight
    /// columns, OutlierTune-style "pre-executed dequantization"); nil = none.
    public var channelScales: [Float]?
    /// Per-input-channel shift subtracted before scaling (symmetrization); nil = none.
    public var channelShift: [Float]?
    /// Minifloat activations (LLM-FP4): `x'` is rounded to this format's grid scaled by the static
    /// `scale` (= 2^(−ρ)) instead of to integers, and the decoded value is multiplied back by
    /// `channelScales[j]` (2^(−k_j), the pre-shifted exponent bias). nil = integer codes.
    public var floatFormat: FloatingPointFormat?
    /// AdaLog codes instead of uniform ones (post-GELU inputs): the input `x + inputOffset` is
    /// quantized with this log quantizer (`bits` equal to its bits; `scale` and the channel
    /// arrays unused); nil = uniform integer codes as above.
    public var logarithmic: AdaLogQuantizer? = nil
    /// Constant added to every input element before the log quantizer (AdaLog's post-GELU
    /// δ = −min GELU); the layer's bias already carries −Ŵ·δ1. nil = 0.
    public var inputOffset: Float? = nil

    public init(bits: Int, granularity: Granularity, scale: Float? = nil,
                channelScales: [Float]? = nil, channelShift: [Float]? = nil,
                floatFormat: FloatingPointFormat? = nil) {
        self.bits = bits
        self.granularity = granularity
        self.scale = scale
        self.channelScales = channelScales
        self.channelShift = channelShift
        self.floatFormat = floatFormat
    }

    /// Largest code magnitude, 2^(bits-1) - 1 (127 for int8).
    public var maxCode: Int { (1 << (bits - 1)) - 1 }
}

/// An integer-quantized weight matrix `[rows = out, columns = in]`.
///
/// Every element is an unsigned code `u` in `0 ..< 2^bits`; its value is
/// `scale[g] · (u - zero[g])` for the group g it belongs to (groups of `groupSize` consecutive
/// columns within a row; `groupSize == columns` means one group per output channel).
/// Symmetric weights have `zero = 2^(bits-1)` for every group, so `u - zero` is a signed code
/// in ±(2^(bits-1) - 1), or in −2^(bits−1) … 2^(bits−1) − 1 for the full (Q4_0-style) grid, whose
/// scale may be negative; asymmetric weights carry one zero point per group.
/// In memory codes are one byte each; packed files store them at their true width.
public struct IntegerWeight: Sendable, Equatable {
    public var bits: Int
    public var rows: Int
    public var columns: Int
    public var groupSize: Int
    public var symmetric: Bool
    /// `rows × columns` codes, row-major.
    public var codes: [UInt8]
    /// `rows × groupsPerRow` scales, row-major.
    public var scales: [Float]
    /// `rows × groupsPerRow` zero points (asymmetric only); nil when symmetric.
    public var zeros: [Float]?

    public init(bits: Int, rows: Int, columns: Int, groupSize: Int, symmetric: Bool,
                codes: [UInt8], scales: [Float], zeros: [Float]?) {
        self.bits = bits
        self.rows = rows
        self.columns = columns
        self.groupSize = groupSize
        self.symmetric = symmetric
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
    }

    public var groupsPerRow: Int { (columns + groupSize - 1) / groupSize }

    /// The zero point of symmetric codes, 2^(bits-1).
    public var symmetricZero: Int { 1 << (bits - 1) }

    /// Zero point of group `g` of row `r`.
    @inlinable
    public func zero(row r: Int, group g: Int) -> Float {
        zeros?[r * groupsPerRow + g] ?? Float(symmetricZero)
    }

    /// The float value of one element (the reference definition the kernels must match).
    @inlinable
    public func value(row r: Int, column c: Int) -> Float {
        let g = c / groupSize
        return scales[r * groupsPerRow + g] * (Float(codes[r * columns + c]) - zero(row: r, group: g))
    }

    /// The whole matrix in float (reference and tests only: the runtime never does this).
    public func dequantizedReference() -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows { for c in 0..<columns { out[r * columns + c] = value(row: r, column: c) } }
        return out
    }

    /// Row `r` in float, written to `out[0..<columns]`: the run-time row decoder (embedding
    /// lookups decode one token's row, never the table). Equals row `r` of `dequantizedReference()`.
    public func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(r >= 0 && r < rows, "row \(r) out of range 0..<\(rows)")
        codes.withUnsafeBufferPointer { cp in
            let row = cp.baseAddress! + r * columns
            for g in 0..<groupsPerRow {
                let scale = scales[r * groupsPerRow + g], zero = zero(row: r, group: g)
                for c in (g * groupSize)..<min(columns, (g + 1) * groupSize) {
                    out[c] = scale * (Float(row[c]) - zero)
                }
            }
        }
    }
}

/// The stored form of a quantized weight matrix `[rows = out, columns = in]`: one case per
/// weight format.
///
/// Each format is defined once: its type carries the codes and parameters and a reference
/// dequantizer (`dequantizedReference()`) that the kernels and tests compare against; the packer
/// stores it in its own sections (`Sources/Packing`), and the runtime runs it with its own kernel
/// (`Sources/QuantizedRuntime`). A new format adds a case here and one arm in each of those
/// places; the compiler lists every switch that needs it.
public enum QuantizedWeight: Sendable, Equatable {
    /// Integer codes of 2…8 bits with per-channel or per-group scales and zero points.
    case integer(IntegerWeight)
    /// SplitQuant: a 2-bit cluster id and a code per element, scales and zero points per
    /// (row, group, cluster).
    case split(SplitWeight)
    /// Minifloat codes (FP4/FP6/FP8, LLM-FP4) with per-channel or per-group real scales.
    case floatingPoint(FloatingPointWeight)
    /// Partial binarization (PTQ1.61, PB-LLM-style, plain binarization): sign bits around a row
    /// mean plus low-bit salient codes under a column or element mask.
    case binary(BinaryWeight)

    /// Output features.
    public var rows: Int {
        switch self {
        case .integer(let w): w.rows
        case .split(let w): w.rows
        case .floatingPoint(let w): w.rows
        case .binary(let w): w.rows
        }
    }

    /// Input features.
    public var columns: Int {
        switch self {
        case .integer(let w): w.columns
        case .split(let w): w.columns
        case .floatingPoint(let w): w.columns
        case .binary(let w): w.columns
        }
    }

    /// Short name of the format, as stored in the packed manifest and shown by `ptq inspect`.
    public var formatName: String {
        switch self {
        case .integer: "integer"
        case .split: "split"
        case .floatingPoint(let w): w.format.description
        case .binary: "binary"
        }
    }

    /// The integer weight, when this is one (setting a value makes this an integer weight).
    public var integer: IntegerWeight? {
        get {
            if case .integer(let w) = self { return w }
            return nil
        }
        set {
            if let newValue { self = .integer(newValue) }
        }
    }

    /// The whole matrix in float, row-major (reference and tests only: the runtime never does this).
    public func dequantizedReference() -> [Float] {
        switch self {
        case .integer(let w): w.dequantizedReference()
        case .split(let w): w.dequantizedReference()
        case .floatingPoint(let w): w.dequantizedReference()
        case .binary(let w): w.dequantizedReference()
        }
    }

    /// Row `r` in float into `out[0..<columns]`: each format's run-time row decoder (embedding
    /// lookups), equal to row `r` of `dequantizedReference()`.
    public func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        switch self {
        case .integer(let w): w.decodeRow(r, into: out)
        case .split(let w): w.decodeRow(r, into: out)
        case .floatingPoint(let w): w.decodeRow(r, into: out)
        case .binary(let w): w.decodeRow(r, into: out)
        }
    }
}

/// Everything the packer stores and the runtime executes for one quantized linear layer.
public struct QuantizedLinear: Sendable, Equatable {
    /// Canonical layer name, e.g. `layers/3/mlp/down_proj`.
    public var name: String
    /// Recipe method that produced it (`rtn`, `outliertune`, …).
    public var method: String
    public var weight: QuantizedWeight
    /// Float bias added after the rescale (may come from folding, e.g. W·z of a shift).
    public var bias: [Float]?
    /// Activation quantization; nil = float activations (weight-only, e.g. W4A16).
    public var activation: ActivationQuantization?
    /// What the method decided, for `ptq inspect` (searched ratios, range growth, …).
    public var details: [String: String]

    public init(name: String, method: String, weight: QuantizedWeight, bias: [Float]? = nil,
                activation: ActivationQuantization? = nil, details: [String: String] = [:]) {
        self.name = name
        self.method = method
        self.weight = weight
        self.bias = bias
        self.activation = activation
        self.details = details
    }
}
