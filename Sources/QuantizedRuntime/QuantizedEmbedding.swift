import Models
import PTQCore

/// A quantized embedding table: the stored codes and per-row (or per-group) parameters of any
/// weight format; a lookup decodes only the token's row (`QuantizedWeight.decodeRow`), so the
/// table stays at its stored width in memory (one byte per code).
public struct QuantizedEmbedding: EmbeddingTable {
    public let weight: QuantizedWeight
    /// The minifloat code table, computed once (nil for the other formats).
    private let codeValues: [Float]?

    /// `linear` must be weight-only (no activation quantization, no bias): an embedding row is
    /// looked up, not multiplied.
    public init(_ linear: QuantizedLinear) throws(PTQError) {
        guard linear.activation == nil else {
            throw PTQError("quantized embedding '\(linear.name)' has activation quantization; an embedding is weight-only")
        }
        guard linear.bias == nil else {
            throw PTQError("quantized embedding '\(linear.name)' has a bias; an embedding table has none")
        }
        try linear.validate()
        weight = linear.weight
        if case .floatingPoint(let w) = linear.weight { codeValues = w.format.codeValues } else { codeValues = nil }
    }

    public var rowCount: Int { weight.rows }
    public var width: Int { weight.columns }

    public func copyRow(_ token: Int, into out: UnsafeMutablePointer<Float>) {
        if case .floatingPoint(let w) = weight {
            w.decodeRow(token, table: codeValues, into: out)
        } else {
            weight.decodeRow(token, into: out)
        }
    }
}
