import CKernels
import Dispatch

extension KernelBench {
    /// One prefill product timed: `rows × inFeatures → outFeatures` on `threads` threads.
    public struct GemmTiming: Encodable, Sendable {
        /// What ran, e.g. `fp32 sgemm (OpenBLAS)` or `bf16 GEMM (ck_bf16_gemm, prepacked W)`.
        public let kernel: String
        public let rows: Int, inFeatures: Int, outFeatures: Int, threads: Int
        /// Median, minimum and maximum milliseconds per product.
        public let milliseconds: Double, minMilliseconds: Double, maxMilliseconds: Double
        /// 2·rows·in·out / median time, in GFLOP/s.
        public let gigaflopsPerSecond: Double
    }

    /// SmolLM2-135M's prefill products at a 512-token prompt, `(rows, in, out)`: q/o projections,
    /// gate/up, down.
    public static let prefillShapes = [(512, 576, 576), (512, 576, 1536), (512, 1536, 576)]

    /// Times the float32 prefill GEMM (OpenBLAS sgemm) against the bf16 GEMM on `prefillShapes`,
    /// on one thread and on two (where the pool has them), `repeats` times after a warm-up:
    /// * `fp32 sgemm`: `BLAS.linear` with OpenBLAS at one thread / `BLAS.pooledLinear` on two;
    /// * `bf16 GEMM, prepacked W`: `ck_bf16_gemm` alone (x converted and W packed beforehand;
    ///   two threads: one half of the output panels each);
    /// * `tile product fp32 | bf16`: `LowBit.tiledProduct` as a weight-only layer's prefill runs
    ///   it, with a "decode" that copies float rows (two threads: the pool split; one thread:
    ///   x conversion, packing and GEMM on the calling thread for bf16, sgemm for fp32).
    public static func gemmTimings(repeats: Int = 15) -> [GemmTiming] {
        var rng: UInt64 = 0x2545_F491_4F6C_DD1D
        func next() -> Float {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            return Float(Int(rng % 2001) - 1000) / 1000
        }
        let threadCounts = Parallel.workerCount > 1 ? [1, 2] : [1]
        let kernel = LowBit.usesBF16Kernel
        var out: [GemmTiming] = []
        for (m, k, n) in prefillShapes {
            let x = (0..<m * k).map { _ in next() }, w = (0..<n * k).map { _ in next() * 0.05 }
            var y = [Float](repeating: 0, count: m * n)
            let lda = (k + 1) & ~1
            var xb = [UInt16](repeating: 0, count: m * lda), packed = [UInt16](repeating: 0, count: ck_bf16_packed_count(n, k))
            ck_bf16_from_f32(x, m, k, k, &xb, lda)
            ck_bf16_pack(w, n, k, k, &packed)
            for threads in threadCounts {
                func time(_ label: String, _ body: () -> Void) {
                    let ms = sortedMilliseconds(repeats: repeats, body)
                    let median = ms[ms.count / 2]
                    out.append(GemmTiming(kernel: label, rows: m, inFeatures: k, outFeatures: n, threads: threads,
                                          milliseconds: median, minMilliseconds: ms.first!, maxMilliseconds: ms.last!,
                                          gigaflopsPerSecond: 2 * Double(m * n * k) / (median / 1e3) / 1e9))
                }
                x.withUnsafeBufferPointer { px in
                    w.withUnsafeBufferPointer { pw in
                        y.withUnsafeMutableBufferPointer { py in
                            let (xp, wp, yp) = (px.baseAddress!, pw.baseAddress!, py.baseAddress!)
                            let cw = SendableConstPointer(wp)
                            let copy: @Sendable (Range<Int>, UnsafeMutablePointer<Float>) -> Void = { range, tile in
                                tile.update(from: cw.base + range.lowerBound * k, count: range.count * k)
                            }
                            if threads == 1 {
                                time("fp32 sgemm (OpenBLAS)") {
                                    BLAS.withOneOpenBLASThread { BLAS.linear(xp, rows: m, inFeatures: k, weight: wp, outFeatures: n, into: yp) }
                                }
                            } else {
                                time("fp32 sgemm (OpenBLAS)") {
                                    BLAS.pooledLinear(xp, rows: m, inFeatures: k, weight: wp, outFeatures: n, into: yp)
                                }
                                time("tile product fp32 (tiledProduct, tile copy + sgemm)") {
                                    LowBit.tiledProduct(outFeatures: n, inFeatures: k, x: xp, rows: m, y: yp,
                                                        tileRows: LowBit.defaultTileRows(inFeatures: k), bf16: false, decode: copy)
                                }
                            }
                            guard kernel else { return }
                            xb.withUnsafeBufferPointer { pxb in
                                packed.withUnsafeBufferPointer { pp in
                                    let (a, b, c) = (SendableConstPointer(pxb.baseAddress!), SendableConstPointer(pp.baseAddress!),
                                                     SendablePointer(yp))
                                    if threads == 1 {
                                        time("bf16 GEMM (ck_bf16_gemm, prepacked W)") {
                                            ck_bf16_gemm(a.base, m, lda, b.base, n, k, c.base, n, 0)
                                        }
                                        time("bf16 x conversion + W packing + GEMM") {
                                            let xs = LowBit.threadScratch(slot: 13, count: m * lda, of: UInt16.self)
                                            let ws = LowBit.threadScratch(slot: 14, count: ck_bf16_packed_count(n, k), of: UInt16.self)
                                            ck_bf16_from_f32(xp, m, k, k, xs, lda)
                                            ck_bf16_pack(wp, n, k, k, ws)
                                            ck_bf16_gemm(xs, m, lda, ws, n, k, yp, n, 0)
                                        }
                                    } else {
                                        // Two halves of the output panels, as the pool split of a layer.
                                        let half = (n / Int(CK_BF16_PANEL) + 1) / 2 * Int(CK_BF16_PANEL)
                                        time("bf16 GEMM (ck_bf16_gemm, prepacked W)") {
                                            Parallel.forEach(2) { p in
                                                let c0 = p == 0 ? 0 : half, c1 = p == 0 ? half : n
                                                ck_bf16_gemm(a.base, m, lda, b.base + c0 * lda, c1 - c0, k, c.base + c0, n, 0)
                                            }
                                        }
                                        time("tile product bf16 (tiledProduct, tile copy + packing + GEMM)") {
                                            LowBit.tiledProduct(outFeatures: n, inFeatures: k, x: xp, rows: m, y: yp,
                                                                tileRows: LowBit.defaultTileRows(inFeatures: k), bf16: true,
                                                                decode: copy)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return out
    }
}
