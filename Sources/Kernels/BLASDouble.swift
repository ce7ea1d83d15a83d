import COpenBLAS

extension BLAS {
    /// Double-precision `C[m,n] = op(A)·op(B)` (row-major, layouts as in ``gemm(m:n:k:alpha:a:lda:transposeA:b:ldb:transposeB:beta:c:ldc:)``).
    /// The FPCS weight search scores candidates through Gram matrices in double, where the
    /// quadratic form's terms cancel down to the quantization error.
    public static func dgemm(m: Int, n: Int, k: Int, a: UnsafePointer<Double>, lda: Int, transposeA: Bool = false,
                             b: UnsafePointer<Double>, ldb: Int, transposeB: Bool,
                             c: UnsafeMutablePointer<Double>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        cblas_dgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), 1, a, Int32(lda), b, Int32(ldb), 0, c, Int32(ldc))
    }
}
