/// A SplitQuant weight matrix `[rows = out, columns = in]` (Song & Lin, arXiv 2501.12428):
/// every element belongs to one of three clusters (lower, middle, upper) of a 1-D k-means over
/// the whole tensor, and is stored as a 2-bit cluster id plus a `bits`-bit code on its cluster's
/// own grid.
///
/// The reference code keeps three dense, separately quantized copies `W_L + W_M + W_U` (three
/// times the storage and the multiply-adds). Since the copies have disjoint supports, one cluster
/// id per element says which copy holds it, and the other two copies' entries (zeros) need not
/// be stored: the value of element (r, c) in group g with cluster k is
/// `scale[r, g, k] · (code − zero[r, g, k])`, which is exactly the sum of the three quantized
/// layers at that element. Zero points are floats: a cluster's grid need not contain 0.
public struct SplitWeight: Sendable, Equatable {
    /// Clusters per tensor (k of the k-means): lower, middle, upper.
    public static let clusterCount = 3
    /// Bits of a stored cluster id.
    public static let clusterBits = 2

    /// Width of the codes within a cluster, 2…8.
    public var bits: Int
    public var rows: Int
    public var columns: Int
    /// Columns per group; `columns` means one group per output row.
    public var groupSize: Int
    /// `rows × columns` cluster ids in 0…2 (0 lower, 1 middle, 2 upper), row-major.
    public var clusters: [UInt8]
    /// `rows × columns` codes in `0 ..< 2^bits`, row-major.
    public var codes: [UInt8]
    /// `rows × groupsPerRow × 3` scales: index `(r · groupsPerRow + g) · 3 + k`.
    public var scales: [Float]
    /// Zero points, laid out like `scales`.
    public var zeros: [Float]

    public init(bits: Int, rows: Int, columns: Int, groupSize: Int, clusters: [UInt8], codes: [UInt8],
                scales: [Float], zeros: [Float]) {
        self.bits = bits
        self.rows = rows
        self.columns = columns
        self.groupSize = groupSize
        self.clusters = clusters
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
    }

    public var groupsPerRow: Int { (columns + groupSize - 1) / groupSize }

    /// Index of the scale and zero point of cluster `k` in group `g` of row `r`.
    @inlinable
    public func parameterIndex(row r: Int, group g: Int, cluster k: Int) -> Int {
        (r * groupsPerRow + g) * Self.clusterCount + k
    }

    /// The float value of one element (the reference definition the kernels must match).
    @inlinable
    public func value(row r: Int, column c: Int) -> Float {
        let i = r * columns + c
        let p = parameterIndex(row: r, group: c / groupSize, cluster: Int(clusters[i]))
        return scales[p] * (Float(codes[i]) - zeros[p])
    }

    /// The whole matrix in float (reference and tests only: the runtime never does this).
    public func dequantizedReference() -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows { for c in 0..<columns { out[r * columns + c] = value(row: r, column: c) } }
        return out
    }

    /// Row `r` in float into `out[0..<columns]` (the run-time row decoder; equals row `r` of
    /// `dequantizedReference()`).
    public func decodeRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        precondition(r >= 0 && r < rows, "row \(r) out of range 0..<\(rows)")
        for c in 0..<columns {
            let i = r * columns + c
            let p = parameterIndex(row: r, group: c / groupSize, cluster: Int(clusters[i]))
            out[c] = scales[p] * (Float(codes[i]) - zeros[p])
        }
    }

    /// One cluster's part in float: its elements' values, zero elsewhere (the reference's
    /// dense copy of that part after quantization). The three parts sum to
    /// `dequantizedReference()`.
    public func dequantizedPart(_ cluster: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            for c in 0..<columns where Int(clusters[r * columns + c]) == cluster {
                out[r * columns + c] = value(row: r, column: c)
            }
        }
        return out
    }
}
