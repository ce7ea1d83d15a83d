/// Attention products computed from quantized probability codes (AdaLog, uniform).
///
/// `P·V` with `P` given as `n`-bit codes: instead of dequantizing `P` and running a GEMM, each
/// query row sums the value rows that share a code (`bucket[c] = Σ_{j: code_j = c} V_j`, pure
/// adds) and then applies one level per code (`out = Σ_c level[c]·bucket[c]`, 2^n multiply-adds
/// per output element). With AdaLog `level[c] = s·m[c]/D·2^(−shift[c])`, so the second step is
/// the shift-and-mantissa multiply of integer hardware; the zero code is skipped outright, which
/// also skips masked keys.
public enum CodeAttention {
    /// Codes of `count` non-negative values against descending thresholds (log formats): the
    /// code is the number of thresholds `β_k` with `x ≤ β_k` (a prefix, found by binary search:
    /// n bits take n comparisons, no logarithm).
    public static func encodeDescending(_ x: UnsafePointer<Float>, count: Int, thresholds: UnsafeBufferPointer<Float>,
                                        into codes: UnsafeMutablePointer<UInt8>) {
        encode(x, count: count, thresholds: thresholds, into: codes) { v, t in v <= t }
    }

    /// Codes against ascending thresholds (uniform formats): the number of thresholds below `x`.
    public static func encodeAscending(_ x: UnsafePointer<Float>, count: Int, thresholds: UnsafeBufferPointer<Float>,
                                       into codes: UnsafeMutablePointer<UInt8>) {
        encode(x, count: count, thresholds: thresholds, into: codes) { v, t in v > t }
    }

    /// The code of each value: the length of the threshold prefix for which `passes(x, β_k)` holds
    /// (thresholds ordered so that the prefix is contiguous), by binary search.
    @inline(__always)
    private static func encode(_ x: UnsafePointer<Float>, count: Int, thresholds: UnsafeBufferPointer<Float>,
                               into codes: UnsafeMutablePointer<UInt8>, passes: (Float, Float) -> Bool) {
        let t = thresholds.baseAddress!, n = thresholds.count
        for j in 0..<count {
            let v = x[j]
            var lo = 0, hi = n
            while lo < hi {
                let mid = (lo + hi) >> 1
                if passes(v, t[mid]) { lo = mid + 1 } else { hi = mid }
            }
            codes[j] = UInt8(truncatingIfNeeded: lo)
        }
    }

    /// `out[t, d] = Σ_j level[code[t, j]] · V[j, d]` for `rows` query rows of `columns` codes,
    /// grouped by code; `skipCode` (the exact-zero code) contributes nothing.
    /// - Parameters:
    ///   - codes: `rows × columns` codes, row-major, each `< levels.count`.
    ///   - values: `V`, `columns × width`, row stride `valueStride`.
    ///   - out: `rows × width`, row stride `outStride`.
    public static func multiply(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, skipCode: Int,
                                levels: UnsafeBufferPointer<Float>, values: UnsafePointer<Float>, valueStride: Int,
                                width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
        let levelCount = levels.count
        let buckets = UnsafeMutablePointer<Float>.allocate(capacity: levelCount * width)
        let used = UnsafeMutablePointer<Bool>.allocate(capacity: levelCount)
        defer { buckets.deallocate(); used.deallocate() }
        for t in 0..<rows {
            used.initialize(repeating: false, count: levelCount)
            let rowCodes = codes + t * columns
            for j in 0..<columns {
                let c = Int(rowCodes[j])
                if c == skipCode { continue }
                let bucket = buckets + c * width, v = values + j * valueStride
                if used[c] {
                    for d in 0..<width { bucket[d] += v[d] }
                } else {
                    used[c] = true
                    for d in 0..<width { bucket[d] = v[d] }
                }
            }
            let o = out + t * outStride
            for d in 0..<width { o[d] = 0 }
            for c in 0..<levelCount where used[c] {
                let level = levels[c], bucket = buckets + c * width
                for d in 0..<width { o[d] += level * bucket[d] }
            }
        }
    }
}
