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
    /// Line of the `attention_probs:` key.
    public var line: Int

    public static let quantizers = ["adalog", "log2", "log_sqrt2", "uniform"]
    static let keys = ["quantizer", "bits", "samples", "rows_per_head"]

    public init(quantizer: String, bits: Int, samples: Int? = nil, rowsPerHead: Int? = nil, line: Int = 0) {
        self.quantizer = quantizer
        self.bits = bits
        self.samples = samples
        self.rowsPerHead = rowsPerHead
        self.line = line
    }

    /// `adalog int4`.
    public var description: String { "\(quantizer) int\(bits)" }
}

/// Parses `attention_probs: {quantizer: adalog, bits: 4, samples: 8, rows_per_head: 16}`.
func parseAttentionProbabilities(_ field: Field) throws(PTQError) -> AttentionProbabilityScheme {
    let map = try field.mapping(allowed: AttentionProbabilityScheme.keys)
    let quantizer = try map.require("quantizer").word(oneOf: AttentionProbabilityScheme.quantizers)
    let bits = try map.require("bits").int(range: 2...8)
    let samples = try map["samples"].map { f throws(PTQError) in try f.int(range: 1...Int.max) }
    let rows = try map["rows_per_head"].map { f throws(PTQError) in try f.int(range: 1...4096) }
    return AttentionProbabilityScheme(quantizer: quantizer, bits: bits, samples: samples, rowsPerHead: rows,
                                      line: field.keyLine ?? field.line)
}
