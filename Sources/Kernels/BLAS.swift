import COpenBLAS

/// Float matrix products through OpenBLAS.
///
/// Layout convention: activations `x` are `[rows, in]` row-major, weights `W` are `[out, in]`
/// row-major (Hugging Face), so a linear layer is `y = x·Wᵀ`.
public enum BLAS {
    /// `y[rows, out] = x[rows, in] · W[out, in]ᵀ` (+ `beta`·y). Uses sgemv for one row, where
    /// it is several times faster than sgemm.
    public static func linear(
        _ x: UnsafePointer<Float>, rows: Int, inFeatures: Int,
        weight: UnsafePointer<Float>, outFeatures: Int,
        into y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        guard rows > 0, outFeatures > 0 else { return }
        let beta: Float = accumulate ? 1 : 0
        if rows == 1 {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(outFeatures), Int32(inFeatures), 1,
                        weight, Int32(inFeatures), x, 1, beta, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outFeatures),
                        Int32(inFeatures), 1, x, Int32(inFeatures), weight, Int32(inFeatures),
                        beta, y, Int32(outFeatures))
        }
    }

    /// General strided product `C[m,n] = alpha·A[m,k]·op(B) + beta·C`, where op(B) is `Bᵀ`
    /// (B stored `[n,k]`) when `transposeB`, else B stored `[k,n]`.
    public static func gemm(
        m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Number of OpenBLAS threads (it starts with one per core).
    public static var threadCount: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}

extension BLAS {
    /// `gram[c×c] += Xᵀ·X` for `x` of `rows × c` floats, accumulated in double (upper triangle
    /// and lower triangle both written).
    public static func accumulateGram(_ x: UnsafePointer<Float>, rows: Int, columns c: Int,
                                      into gram: UnsafeMutablePointer<Double>) {
        guard rows > 0, c > 0 else { return }
        var xd = [Double](repeating: 0, count: rows * c)
        for i in 0..<rows * c { xd[i] = Double(x[i]) }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(c), Int32(rows), 1, xd, Int32(c), 1, gram, Int32(c))
        for i in 0..<c { for j in 0..<i { gram[i * c + j] = gram[j * c + i] } }
    }
}
