import CKernels

/// Weight-only kernels of the SplitQuant format (`split_kernels.h`): per-weight indices
/// `cluster << bits | code` (one byte for bits ≤ 6, two for 7–8), scales and zero points
/// `[rows, groups, 3]`. Each row/group builds a 3·2^bits-entry value table and the kernels look
/// the indices up in it, so the layer runs in one pass over its codes with no float copy of the
/// weight matrix. The `…Reference` twins are the scalar C loops the fast paths are tested
/// against.
public enum SplitKernels {
    /// Per-weight index storage.
    public enum Indices: Sendable {
        case bytes([UInt8])
        case halfwords([UInt16])
    }

    /// Largest code width whose indices fit in one byte (3 << 6 ≤ 255).
    public static let maxByteIndexBits = 6

    /// `y[o] = Σ_j T_{o,g(j)}[idx[o, j]]·x[j]` for every output row (parallel over rows).
    public static func gemv(_ indices: Indices, rows: Int, columns: Int, groupSize: Int, bits: Int,
                            scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                            x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, reference: Bool = false) {
        guard rows > 0 else { return }
        let ps = SendableConstPointer(scales), pz = SendableConstPointer(zeros)
        let px = SendableConstPointer(x), py = SendablePointer(y)
        let b = Int32(bits)
        withIndices(indices) { p8, p16 in
            Parallel.forEachChunk(rows, minimumChunk: reference ? rows : LowBit.chunk(workPerRow: 2 * columns, atLeast: 8)) { range in
                if let p8 {
                    (reference ? ck_split_gemv_u8_ref : ck_split_gemv_u8)(
                        p8.base, range.lowerBound, range.count, columns, groupSize, b, ps.base, pz.base, px.base, py.base)
                } else if let p16 {
                    (reference ? ck_split_gemv_u16_ref : ck_split_gemv_u16)(
                        p16.base, range.lowerBound, range.count, columns, groupSize, b, ps.base, pz.base, px.base, py.base)
                }
            }
        }
    }

    /// Dequantizes weight rows `rowRange` into `tile[rowRange.count, columns]` (exactly
    /// `SplitWeight.value`). Single-threaded.
    public static func dequantizeRows(_ indices: Indices, rowRange: Range<Int>, columns: Int, groupSize: Int,
                                      bits: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                      into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        let b = Int32(bits)
        withIndices(indices) { p8, p16 in
            if let p8 {
                (reference ? ck_split_dequant_rows_u8_ref : ck_split_dequant_rows_u8)(
                    p8.base, rowRange.lowerBound, rowRange.count, columns, groupSize, b, scales, zeros, tile)
            } else if let p16 {
                (reference ? ck_split_dequant_rows_u16_ref : ck_split_dequant_rows_u16)(
                    p16.base, rowRange.lowerBound, rowRange.count, columns, groupSize, b, scales, zeros, tile)
            }
        }
    }

    /// Several activation rows: `y[rows, out] = x·Wᵀ`, W dequantized a tile of output rows at a
    /// time into scratch (never whole) and each tile multiplied with one sgemm, so the codes
    /// are decoded once per tile for all activation rows (as `LowBit.dequantizedProduct`).
    public static func dequantizedProduct(_ indices: Indices, outFeatures: Int, inFeatures: Int, groupSize: Int,
                                          bits: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                          x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>) {
        let ps = SendableConstPointer(scales), pz = SendableConstPointer(zeros)
        LowBit.tiledProduct(outFeatures: outFeatures, inFeatures: inFeatures, x: x, rows: rows, y: y,
                            tileRows: LowBit.defaultTileRows(inFeatures: inFeatures)) { range, tile in
            dequantizeRows(indices, rowRange: range, columns: inFeatures, groupSize: groupSize, bits: bits,
                           scales: ps.base, zeros: pz.base, into: tile)
        }
    }

    private static func withIndices(_ indices: Indices,
                                    _ body: (SendableConstPointer<UInt8>?, SendableConstPointer<UInt16>?) -> Void) {
        switch indices {
        case .bytes(let a):
            a.withUnsafeBufferPointer { p in if let base = p.baseAddress { body(SendableConstPointer(base), nil) } }
        case .halfwords(let a):
            a.withUnsafeBufferPointer { p in if let base = p.baseAddress { body(nil, SendableConstPointer(base)) } }
        }
    }
}
