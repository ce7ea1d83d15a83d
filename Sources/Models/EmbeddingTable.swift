import PTQCore

/// What a model calls to turn a token id into its embedding row.
///
/// Float checkpoints give a `FloatEmbedding`; a packed model whose recipe quantized the table
/// gives a quantized one that decodes only the looked-up row from its stored codes.
public protocol EmbeddingTable: Sendable {
    /// Rows (vocabulary size).
    var rowCount: Int { get }
    /// Floats per row (hidden size).
    var width: Int { get }
    /// Writes row `token` to `out[0..<width]`.
    func copyRow(_ token: Int, into out: UnsafeMutablePointer<Float>)
}

/// A float32 embedding table `(rows, width)`, row-major.
public struct FloatEmbedding: EmbeddingTable {
    public let table: [Float]
    public let rowCount: Int
    public let width: Int

    public init(table: [Float], rows: Int, width: Int) {
        precondition(table.count == rows * width, "an embedding table is rows × width")
        self.table = table
        self.rowCount = rows
        self.width = width
    }

    public func copyRow(_ token: Int, into out: UnsafeMutablePointer<Float>) {
        table.withUnsafeBufferPointer { t in
            out.update(from: t.baseAddress! + token * width, count: width)
        }
    }
}
