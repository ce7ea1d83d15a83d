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
        if rows == 1 && !accumulate {
            // One row (decode, the LM head): our GEMV on the pool, not OpenBLAS (see TokenKernels).
            TokenKernels.sgemv(weight, rows: outFeatures, columns: inFeatures, x: x, y: y)
        } else if rows == 1 {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(outFeatures), Int32(inFeatures), 1,
                        weight, Int32(inFeatures), x, 1, beta, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outFeatures),
                        Int32(inFeatures), 1, x, Int32(inFeatures), weight, Int32(inFeatures),
                        beta, y, Int32(outFeatures))
        }
    }

    /// General strided product `C[m,n] = alpha·op(A)·op(B) + beta·C`, where op(A) is `Aᵀ`
    /// (A stored `[k,m]`) when `transposeA`, else A stored `[m,k]`, and op(B) is `Bᵀ`
    /// (B stored `[n,k]`) when `transposeB`, else B stored `[k,n]`.
    public static func gemm(
        m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool = false,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Number of OpenBLAS threads (it starts with one per core).
    public static var threadCount: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}

extension BLAS {
    /// `gram[c×c] += Xᵀ·X` for `x` of `rows × c` floats (upper and lower triangle both written).
    /// The product of one call runs in float (ssyrk, twice the speed of dsyrk; a call is one
    /// calibration sample of a few hundred rows) and is accumulated in double across calls.
    public static func accumulateGram(_ x: UnsafePointer<Float>, rows: Int, columns c: Int,
                                      into gram: UnsafeMutablePointer<Double>) {
        guard rows > 0, c > 0 else { return }
        var product = [Float](repeating: 0, count: c * c)
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(c), Int32(rows), 1, x, Int32(c), 0, &product, Int32(c))
        for i in 0..<c { for j in i..<c { gram[i * c + j] += Double(product[i * c + j]) } }
        for i in 0..<c { for j in 0..<i { gram[i * c + j] = gram[j * c + i] } }
    }
}

extension BLAS {
    /// The upper Cholesky factor U of A⁻¹ (A⁻¹ = Uᵀ·U) for a symmetric positive definite
    /// `n × n` matrix A, returned row-major with zeros below the diagonal — GPTQ's `Hinv`.
    /// Returns nil when A is not positive definite (LAPACK dpotrf/dpotri).
    public static func inverseCholeskyUpper(_ a: [Double], n: Int) -> [Double]? {
        precondition(a.count == n * n)
        var m = a, info: Int32 = 0, size = Int32(n)
        // A is symmetric, so row- and column-major agree. In column-major terms: A = L·Lᵀ,
        // then A⁻¹ into the lower triangle, mirrored, then A⁻¹ = Uᵀ·U.
        dpotrf_("L", &size, &m, &size, &info, 1)
        guard info == 0 else { return nil }
        dpotri_("L", &size, &m, &size, &info, 1)
        guard info == 0 else { return nil }
        // Column-major lower element (i ≥ j) sits at j*n + i; mirror it to (j, i) at i*n + j.
        for j in 0..<n { for i in (j + 1)..<n { m[i * n + j] = m[j * n + i] } }
        dpotrf_("U", &size, &m, &size, &info, 1)
        guard info == 0 else { return nil }
        // Column-major upper element U(i, j), i ≤ j, is at j*n + i: transpose into row-major.
        var u = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { u[i * n + j] = m[j * n + i] } }
        return u
    }
}

extension BLAS {
    /// Solves A·x = b for a symmetric positive definite `n × n` A (row-major; LAPACK dpotrf, then
    /// the two triangular solves). nil when A is not positive definite.
    public static func solvePositiveDefinite(_ a: [Double], n: Int, b: [Double]) -> [Double]? {
        precondition(a.count == n * n && b.count == n)
        var m = a, info: Int32 = 0, size = Int32(n)
        // Column-major "L" of a symmetric matrix: A = L·Lᵀ with L(i, j) (i ≥ j) at j*n + i.
        dpotrf_("L", &size, &m, &size, &info, 1)
        guard info == 0 else { return nil }
        var x = b
        for i in 0..<n {  // L·z = b
            var s = x[i]
            for j in 0..<i { s -= m[j * n + i] * x[j] }
            x[i] = s / m[i * n + i]
        }
        for i in stride(from: n - 1, through: 0, by: -1) {  // Lᵀ·x = z
            var s = x[i]
            for j in (i + 1)..<max(i + 1, n) { s -= m[i * n + j] * x[j] }
            x[i] = s / m[i * n + i]
        }
        return x
    }
}
