import COpenBLAS
import CKernels

/// Causal grouped-query attention of several query rows (prefill), on the pool.
public enum PrefillAttention {
    /// Query rows per task. Causality lets a block of rows `t0..<t1` read only the first
    /// `start + t1` positions, so with blocks of 64 rows a 512-token prompt computes 56 % of the
    /// full `T × S` scores (blocks of 512: 100 %), and 9 heads × 8 blocks give the pool 72 tasks
    /// of unequal size to balance. OpenBLAS's sgemm keeps its rate at 64 rows (the kernel's
    /// row panel is 16 or 32).
    public static let blockRows = 64

    /// `out[t, h·dim ..< (h+1)·dim] = softmax(scale · q_h[t] · K_gᵀ, positions ≤ start + t) · V_g`
    /// for the `T` query rows of `q` (row stride `qStride`) at positions `start ..< start + T`,
    /// over `start + T` positions of `keys`/`values` (row stride `kvStride`), where head `h`
    /// reads KV head `g = h / (heads / kvHeads)`. Output rows have stride `outStride`.
    ///
    /// Tasks are (head, block of `blockRows` query rows), largest blocks first, claimed from the
    /// pool; each computes its block's scores with one sgemm (OpenBLAS held at one thread), the
    /// row softmax over the visible positions (`Ops.softmax`), and `P·V` with one sgemm over
    /// the visible positions only. Rows are never split, so a row's result does not depend on
    /// the thread count.
    public static func attend(q: UnsafePointer<Float>, qStride: Int, keys: UnsafePointer<Float>,
                              values: UnsafePointer<Float>, kvStride: Int, rows T: Int, start: Int,
                              heads: Int, kvHeads: Int, dim: Int, scale: Float,
                              out: UnsafeMutablePointer<Float>, outStride: Int) {
        guard T > 0, heads > 0 else { return }
        let group = heads / max(1, kvHeads)
        let blocks = (T + blockRows - 1) / blockRows
        let pq = SendableConstPointer(q), pk = SendableConstPointer(keys), pv = SendableConstPointer(values)
        let po = SendablePointer(out)
        func task(_ index: Int) {
            // Largest blocks (the last query rows, which see the most positions) first.
            let b = blocks - 1 - index / heads, h = index % heads, g = h / group
            let t0 = b * blockRows, t1 = min(T, t0 + blockRows), m = t1 - t0
            let visibleEnd = start + t1
            let scores = LowBit.threadScratch(slot: 8, count: m * visibleEnd, of: Float.self)
            // scores (m, visibleEnd) = scale · q_h[t0..<t1] · K_g[0..<visibleEnd]ᵀ
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(visibleEnd), Int32(dim), scale,
                        pq.base + t0 * qStride + h * dim, Int32(qStride), pk.base + g * dim, Int32(kvStride),
                        0, scores, Int32(visibleEnd))
            for r in 0..<m {
                let row = scores + r * visibleEnd, visible = start + t0 + r + 1
                Ops.softmax(row, count: visible)
                for j in visible..<visibleEnd { row[j] = 0 }
            }
            // out_h[t0..<t1] (m, dim) = P (m, visibleEnd) · V_g[0..<visibleEnd] (visibleEnd, dim)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(dim), Int32(visibleEnd), 1,
                        scores, Int32(visibleEnd), pv.base + g * dim, Int32(kvStride),
                        0, po.base + t0 * outStride + h * dim, Int32(outStride))
        }
        BLAS.withOneOpenBLASThread {
            Parallel.forEach(heads * blocks) { task($0) }
        }
    }
}
