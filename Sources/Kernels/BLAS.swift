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

    /// `y[rows, out] = x[rows, in] · W[out, in]ᵀ` for prefill-sized products, split over the
    /// output features across our pool (`Parallel`), each part one single-threaded OpenBLAS sgemm.
    ///
    /// Why not OpenBLAS's own threads: between two threaded sgemm calls OpenBLAS's worker keeps
    /// polling (`sched_yield`) for tens of milliseconds, so whenever our pool runs work of its own
    /// in that time (int8 GEMMs, tile decoding, attention) three threads share two cores; the
    /// two-thread profiles had it at 6.7 % (FP32), 17 % (W8A8) and 22 % (W4A16) of all samples,
    /// plus a separate `sgemm_beta` pass over C (docs/RESULTS.md, "Runtime speed, sixth pass").
    /// With one parallel runtime, the second core is never contended by our own threads. Each
    /// part packs x again (≈ 3 % of a layer's sgemm time per part), so the split is one part per
    /// thread. At most `pooledMinimumRows` rows, one thread, a call from inside a pool task or a
    /// small product run as `linear` does.
    public static func pooledLinear(
        _ x: UnsafePointer<Float>, rows: Int, inFeatures: Int,
        weight: UnsafePointer<Float>, outFeatures: Int, into y: UnsafeMutablePointer<Float>
    ) {
        let parts = pooledParts(rows: rows, columns: outFeatures, depth: inFeatures)
        guard parts > 1 else {
            linear(x, rows: rows, inFeatures: inFeatures, weight: weight, outFeatures: outFeatures, into: y)
            return
        }
        let px = SendableConstPointer(x), pw = SendableConstPointer(weight), py = SendablePointer(y)
        let width = alignedPart(outFeatures, parts: parts)
        withOneOpenBLASThread {
            Parallel.forEach(parts) { p in
                let begin = p * width, end = min(outFeatures, begin + width)
                guard begin < end else { return }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(end - begin), Int32(inFeatures),
                            1, px.base, Int32(inFeatures), pw.base + begin * inFeatures, Int32(inFeatures),
                            0, py.base + begin, Int32(outFeatures))
            }
        }
    }

    /// How many pool parts a `rows × columns × depth` product is split into: one per thread when
    /// the pool has more than one, the caller is not inside a pool task, there are more than
    /// `pooledMinimumRows` rows and each part gets at least ~1 M multiply-adds; else 1 (then
    /// OpenBLAS runs the product on its own threads, as before the sixth pass).
    public static func pooledParts(rows: Int, columns: Int, depth: Int) -> Int {
        let threads = Parallel.workerCount
        guard threads > 1, rows > pooledMinimumRows, !Parallel.isInsideTask else { return 1 }
        let parts = min(threads, columns / 16)
        guard parts > 1, rows * columns * depth / parts >= 1 << 20 else { return 1 }
        return parts
    }

    /// Products of at most this many rows stay on OpenBLAS's threads. Measured on the loaded
    /// machine (docs/RESULTS.md, sixth pass, short prompts): at 16 and 64 prompt tokens the
    /// FP32 and W4A16 prefill ran 5–15 % faster on OpenBLAS's threads than split over the pool,
    /// where every job of 0.05–0.2 ms woke a sleeping worker; from 128 tokens the split is as
    /// fast or faster, and at 512 faster in every pair.
    public static let pooledMinimumRows = 64

    /// Columns per part: `count / parts` rounded up to a multiple of 16 (whole sgemm panels).
    public static func alignedPart(_ count: Int, parts: Int) -> Int {
        ((count + parts - 1) / parts + 15) / 16 * 16
    }

    /// Runs `body` with OpenBLAS held at one thread (its previous count restored after), for
    /// sgemm calls made from our pool's tasks: a threaded OpenBLAS called from two of our threads
    /// at once would queue both on its own workers. Inside a pool task (where loops run inline)
    /// it only runs `body`: the count is process-wide and belongs to the job's caller.
    public static func withOneOpenBLASThread<R>(_ body: () -> R) -> R {
        if Parallel.isInsideTask { return body() }
        let previous = threadCount
        if previous == 1 { return body() }
        threadCount = 1
        defer { threadCount = previous }
        return body()
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
