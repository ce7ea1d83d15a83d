import PTQCore

/// How post-softmax attention probabilities are quantized (the recipe's `attention_probs:`
/// block): one quantizer per layer, searched on calibration data against the `P·V` error, and
/// executed in the code domain at run time (docs/recipes.md).
public struct AttentionProbabilityScheme: Sendable, Equatable {
    /// `adalog` (base 2^(q/37), q scanned over 10…137), `log2`, `log_sqrt2` (fixed bases) or
    /// `uniform` (unsigned, scale scanned).
    public var quantizer: String
    /// Code width, 2…8 (one code is reserved for exact zero by the log formats).
    public var bits: Int
    /// Calibration samples the search runs (language models: windows; encoders: sentence
    /// pairs); nil = all of the recipe's calibration samples for encoders, 8 for language models.
    public var samples: Int?
    /// Query rows per head scored (evenly spaced, ending at the last row); nil = 16.
    public var rowsPerHead: Int?
    /// Fully quantized attention (encoders only): code width of Q and K (per-head uniform
    /// asymmetric, `Q·Kᵀ` on integer codes); nil = Q and K stay float.
    public var queryKeyBits: Int?
    /// Code width of V (per-head uniform asymmetric, `P·V` on codes × codes); nil = float V.
    public var valueBits: Int?
    /// Line of the `attention_probs:` key.
    public var line: Int

    public static let quantizers = ["adalog", "log2", "log_sqrt2", "uniform"]
    static let keys = ["quantizer", "bits", "samples", "rows_per_head", "query_key_bits", "value_bits"]

    public init(quantizer: String, bits: Int, samples: Int? = nil, rowsPerHead: Int? = nil,
                queryKeyBits: Int? = nil, valueBits: Int? = nil, line: Int = 0) {
        self.quantizer = quantizer
        self.bits = bits
        self.samples = samples
        self.rowsPerHead = rowsPerHead
        self.queryKeyBits = queryKeyBits
        self.valueBits = valueBits
        self.line = line
    }

    /// `adalog int4`.
    public var description: String { "\(quantizer) int\(bits)" }
}

/// Parses `attention_probs: {quantizer: adalog, bits: 4, samples: 8, rows_per_head: 16, query_key_bits: 4, value_bits: 4}`.
func parseAttentionProbabilities(_ field: Field) throws(PTQError) -> AttentionProbabilityScheme {
    let map = try field.mapping(allowed: AttentionProbabilityScheme.keys)
    let quantizer = try map.require("quantizer").word(oneOf: AttentionProbabilityScheme.quantizers)
    let bits = try map.require("bits").int(range: 2...8)
    let samples = try map["samples"].map { f throws(PTQError) in try f.int(range: 1...Int.max) }
    let rows = try map["rows_per_head"].map { f throws(PTQError) in try f.int(range: 1...4096) }
    let queryKeyBits = try map["query_key_bits"].map { f throws(PTQError) in try f.int(range: 2...8) }
    let valueBits = try map["value_bits"].map { f throws(PTQError) in try f.int(range: 2...8) }
    return AttentionProbabilityScheme(quantizer: quantizer, bits: bits, samples: samples, rowsPerHead: rows,
                                      queryKeyBits: queryKeyBits, valueBits: valueBits, line: field.keyLine ?? field.line)
}
