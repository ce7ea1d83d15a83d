import CKernels

/// The binarized-weight GEMV (`binary_kernels.h`): sign bits in 64-bit words per row (1 = +1),
/// an optional element mask in the same layout, and a zero-padded activation row of
/// `wordsPerRow · 64` floats. `y[o] = a[o]·(S x)_o + b[o]·Σx` over the binarized elements,
/// computed from the bits (the `…Reference` flag selects the scalar C twin, for tests).
public enum BinaryKernels {
    /// 64-bit words per row of `columns` bits.
    @inlinable
    public static func wordsPerRow(_ columns: Int) -> Int { (columns + 63) / 64 }

    /// Packs a row-major 0/1 matrix `[rows, columns]` into `rows × wordsPerRow(columns)` words.
    public static func packBits(rows: Int, columns: Int, bit: (Int, Int) -> Bool) -> [UInt64] {
        let stride = wordsPerRow(columns)
        var words = [UInt64](repeating: 0, count: rows * stride)
        for r in 0..<rows {
            for c in 0..<columns where bit(r, c) { words[r * stride + c >> 6] |= 1 << UInt64(c & 63) }
        }
        return words
    }

    /// Runs `ck_binary_gemv` over all `rows`, parallel over rows. `rest` (element masks) receives
    /// each row's sum of x over its binarized elements.
    public static func gemv(signs: UnsafePointer<UInt64>, mask: UnsafePointer<UInt64>?, wordsPerRow: Int, rows: Int,
                            x: UnsafePointer<Float>, xSum: Float, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                            y: UnsafeMutablePointer<Float>, rest: UnsafeMutablePointer<Float>?, reference: Bool = false) {
        guard rows > 0 else { return }
        let ps = SendableConstPointer(signs), pm = mask.map(SendableConstPointer.init)
        let px = SendableConstPointer(x), pa = SendableConstPointer(a), pb = SendableConstPointer(b)
        let py = SendablePointer(y), pr = rest.map(SendablePointer.init)
        let minimum = reference ? rows : LowBit.chunk(workPerRow: 64 * wordsPerRow, atLeast: 16)
        Parallel.forEachChunk(rows, minimumChunk: minimum) { range in
            (reference ? ck_binary_gemv_ref : ck_binary_gemv)(
                ps.base, pm?.base, wordsPerRow, range.lowerBound, range.count, px.base, xSum, pa.base, pb.base,
                py.base, pr?.base)
        }
    }
}

extension BinaryKernels {
    /// Prefill tiles of a column-masked binary weight (`ck_binary_decode_rows`): rows `rowRange`
    /// as floats into `tile[rowRange.count, columns]` in natural column order, the values of
    /// `BinaryWeight.dequantizedReference` (outlier columns excepted: the caller writes them).
    /// `binaryMask` marks the binarized columns (`wordsPerRow(columns)` words), `columnScale`
    /// holds r2 at those columns; the salient codes are `salientCount` per row at `codeStride`
    /// bytes, nibbles or bytes. `reference` selects the scalar C twin (tests).
    public static func decodeRows(signs: UnsafePointer<UInt64>, wordsPerRow: Int, binaryMask: UnsafePointer<UInt64>,
                                  columnScale: UnsafePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                  codes: UnsafePointer<UInt8>?, nibbles: Bool, codeStride: Int, salientCount: Int,
                                  d: UnsafePointer<Float>, z: UnsafePointer<Float>, rowRange: Range<Int>, columns: Int,
                                  into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        (reference ? ck_binary_decode_rows_ref : ck_binary_decode_rows)(
            signs, wordsPerRow, binaryMask, columnScale, a, b, codes, nibbles ? 1 : 0, codeStride, salientCount, d, z,
            rowRange.lowerBound, rowRange.count, columns, tile)
    }
}
