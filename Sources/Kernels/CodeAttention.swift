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

    /// Per-head uniform asymmetric codes of a `rows × width` operand slice (row stride `stride`):
    /// `code = clamp(round(x/scale) + zero, 0, maxCode)`, written densely (`rows × width`).
    public static func encodeUniform(_ x: UnsafePointer<Float>, rows: Int, width: Int, stride: Int, scale: Float,
                                     zero: Int, maxCode: Int, into codes: UnsafeMutablePointer<UInt8>) {
        let inverse = 1 / scale, z = Float(zero), top = Float(maxCode)
        for t in 0..<rows {
            let row = x + t * stride, out = codes + t * width
            for d in 0..<width { out[d] = UInt8(min(max((row[d] * inverse).rounded() + z, 0), top)) }
        }
    }

    /// `scores[t, j] = alpha · Q̂_t·K̂_j` from per-head uniform codes, with
    /// `Q̂ = sq·(qc − zq)`, `K̂ = sk·(kc − zk)`: the integer sum `Σ qc·kc` (Int32; 8-bit codes and
    /// head widths up to 2^15 cannot overflow) is corrected by the zero-point terms
    /// `− zk·Σqc − zq·Σkc + width·zq·zk` and scaled once by `alpha·sq·sk`.
    /// - Parameters:
    ///   - queryCodes: `rows × width`; keyCodes: `columns × width` (dense).
    ///   - scores: `rows × columns`, row stride `columns`.
    public static func integerScores(queryCodes: UnsafePointer<UInt8>, rows: Int, keyCodes: UnsafePointer<UInt8>,
                                     columns: Int, width: Int, queryScale: Float, queryZero: Int, keyScale: Float,
                                     keyZero: Int, alpha: Float, into scores: UnsafeMutablePointer<Float>) {
        var keySums = [Int32](repeating: 0, count: columns)
        for j in 0..<columns {
            var s: Int32 = 0
            for d in 0..<width { s += Int32(keyCodes[j * width + d]) }
            keySums[j] = s
        }
        let zq = Int32(queryZero), zk = Int32(keyZero), constant = Int32(width) * zq * zk
        let factor = alpha * queryScale * keyScale
        for t in 0..<rows {
            let q = queryCodes + t * width
            var querySum: Int32 = 0
            for d in 0..<width { querySum += Int32(q[d]) }
            let row = scores + t * columns
            for j in 0..<columns {
                let k = keyCodes + j * width
                var dot: Int32 = 0
                for d in 0..<width { dot &+= Int32(q[d]) * Int32(k[d]) }
                row[j] = factor * Float(dot - zk * querySum - zq * keySums[j] + constant)
            }
        }
    }

    /// `out[t, d] = Σ_j level[pcode[t, j]] · V̂[j, d]` with `V̂ = vs·(vc − zv)` from codes only:
    /// per row, the value codes of keys sharing a probability code are summed as integers
    /// (`B_c[d] = Σ vc[j, d]`, with the count `n_c`), then each code's level is applied once:
    /// `out = vs · Σ_c level[c]·(B_c[d] − n_c·zv)`. The zero code (`skipCode`) is skipped.
    /// - Parameters:
    ///   - codes: probability codes, `rows × columns`.
    ///   - valueCodes: `columns × width` (dense).
    ///   - out: `rows × width`, row stride `outStride`.
    public static func multiplyIntegerValues(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, skipCode: Int,
                                             levels: UnsafeBufferPointer<Float>, valueCodes: UnsafePointer<UInt8>,
                                             width: Int, valueScale: Float, valueZero: Int,
                                             into out: UnsafeMutablePointer<Float>, outStride: Int) {
        let levelCount = levels.count
        let buckets = UnsafeMutablePointer<Int32>.allocate(capacity: levelCount * width)
        var counts = [Int32](repeating: 0, count: levelCount)
        defer { buckets.deallocate() }
        let zv = Int32(valueZero)
        for t in 0..<rows {
            for c in 0..<levelCount { counts[c] = 0 }
            let rowCodes = codes + t * columns
            for j in 0..<columns {
                let c = Int(rowCodes[j])
                if c == skipCode { continue }
                let bucket = buckets + c * width, v = valueCodes + j * width
                if counts[c] > 0 {
                    for d in 0..<width { bucket[d] += Int32(v[d]) }
                } else {
                    for d in 0..<width { bucket[d] = Int32(v[d]) }
                }
                counts[c] += 1
            }
            let o = out + t * outStride
            for d in 0..<width { o[d] = 0 }
            for c in 0..<levelCount where counts[c] > 0 {
                let level = levels[c] * valueScale, bucket = buckets + c * width, offset = counts[c] * zv
                for d in 0..<width { o[d] += level * Float(bucket[d] - offset) }
            }
        }
    }
}
