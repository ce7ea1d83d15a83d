import CKernels

/// A read-only pointer that may cross into `concurrentPerform` workers (workers only read it).
public struct SendableConstPointer<T>: @unchecked Sendable {
    public let base: UnsafePointer<T>
    public init(_ base: UnsafePointer<T>) { self.base = base }
}

/// How a row of activations gets its quantization scale.
public enum ActivationScaling: Sendable, Equatable {
    /// One static step for every row (from calibration): code = round(x' / scale).
    case perTensor(Float)
    /// Each row's own step, absmax(x') / maxCode, computed at run time.
    case perToken
}

/// Low-bit compute kernels: int8 GEMM for quantized activations, weight-only GEMV and tile
/// dequantization on 4-bit (nibble) and 8-bit unsigned codes, and activation quantization.
///
/// All wrappers take raw pointers; the caller owns the memory. Work is split over output rows
/// (weight rows) with `Parallel.forEachChunk` when it is large enough to pay for the fan-out.
/// The `…Reference` twins are the scalar C loops the fast paths are tested against.
///
/// Layouts (see `ckernels.h`): int8 weight codes `[n, k]`; u8 codes `[rows, cols]`; u4 codes two
/// per byte (element 2i low nibble, 2i+1 high nibble) with `nibbleRowBytes(cols)` bytes per row;
/// scales and zeros `[rows, groups]` with `groups = ceil(cols / groupSize)`.
public enum LowBit {
    /// Multiply-adds a worker should get at least before we split a product over workers.
    /// The persistent pool (`Parallel`) hands a job to a spinning worker in well under a
    /// microsecond, so decode-sized products (one token through a 576×576 layer, ~0.3 M MACs,
    /// ~15 µs) are split too; only tiny ones (≲ 2 µs of work) stay on the calling thread.
    /// (With GCD's `concurrentPerform` a wake-up cost 10–30 µs and this was 1 << 20.)
    public static let minimumWorkPerChunk = 1 << 15

    // MARK: int8 GEMM

    /// `c[i*ldc + j] = Σ_t a[i*k + t]·b[j*k + t]` (exact int32), `a` = activation codes `[m, k]`
    /// in ±127, `b` = weight codes `[n, k]` in [-128, 127]. Parallel over `n`.
    /// With `rowSums` (`rowSumsI8` of `b`) and VNNI, the activations are biased to `a + 128` once
    /// (`ck_bias_i8`) and the tiles need no sign step (`ck_gemm_i8_biased`); same results.
    public static func gemmI8(a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int,
                              rowSums: UnsafePointer<Int32>? = nil, c: UnsafeMutablePointer<Int32>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        let pa = SendableConstPointer(a), pb = SendableConstPointer(b), pc = SendablePointer(c)
        if let rowSums, k % 32 == 0, TokenKernels.usesVNNI {
            // Slot 6: no other kernel's buffer (Swift callers use 0–3, the C kernels 4 and 5).
            let biased = threadScratch(slot: 6, count: m * k, of: UInt8.self)
            ck_bias_i8(a, m * k, biased)
            let pu = SendableConstPointer(UnsafePointer(biased)), ps = SendableConstPointer(rowSums)
            Parallel.forEachChunk(n, minimumChunk: chunk(workPerRow: m * k, atLeast: 2)) { range in
                _ = ck_gemm_i8_biased(pu.base, m, pb.base + range.lowerBound * k, range.count, k,
                                      ps.base + range.lowerBound, pc.base + range.lowerBound, ldc)
            }
            return
        }
        Parallel.forEachChunk(n, minimumChunk: chunk(workPerRow: m * k, atLeast: 2)) { range in
            ck_gemm_i8(pa.base, m, pb.base + range.lowerBound * k, range.count, k,
                       pc.base + range.lowerBound, ldc)
        }
    }

    /// Σ_t b[o, t] per weight row `[n, k]`: the `rowSums` of `gemvI8`, computed once at load.
    public static func rowSumsI8(_ b: [Int8], n: Int, k: Int) -> [Int32] {
        precondition(b.count == n * k, "rowSumsI8: \(b.count) codes for \(n)×\(k)")
        var sums = [Int32](repeating: 0, count: n)
        b.withUnsafeBufferPointer { p in sums.withUnsafeMutableBufferPointer { ck_row_sums_i8(p.baseAddress!, n, k, $0.baseAddress!) } }
        return sums
    }

    /// Decode-sized `gemmI8` (a few activation rows): the same exact int32 results from a GEMV
    /// kernel that takes 8 weight rows per pass (`ck_gemv_i8`); with `rowSums` (from
    /// `rowSumsI8`) the VNNI path needs no sign step. Parallel over 8-row blocks of `n`.
    public static func gemvI8(a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int,
                              rowSums: UnsafePointer<Int32>?, c: UnsafeMutablePointer<Int32>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        let blocks = (n + 7) / 8
        // A context struct and a C body, not a closure: no allocation per call (decode path).
        let job = GemvI8Job(a: a, m: m, b: b, n: n, k: k, rowSums: rowSums, c: c, ldc: ldc)
        Parallel.forEachChunk(blocks, minimumChunk: chunk(workPerRow: 8 * m * k, atLeast: 1), context: job) { context, b0, b1 in
            let j = context!.load(as: GemvI8Job.self)
            let begin = 8 * b0, end = min(j.n, 8 * b1)
            ck_gemv_i8(j.a, j.m, j.b, begin, end - begin, j.k, j.rowSums, j.c, j.ldc)
        }
    }

    private struct GemvI8Job {
        let a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int
        let rowSums: UnsafePointer<Int32>?, c: UnsafeMutablePointer<Int32>, ldc: Int
    }

    /// Scalar twin of `gemvI8`.
    public static func gemvI8Reference(a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int,
                                       c: UnsafeMutablePointer<Int32>, ldc: Int) {
        ck_gemv_i8_ref(a, m, b, 0, n, k, nil, c, ldc)
    }

    /// Scalar twin of `gemmI8`.
    public static func gemmI8Reference(a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int,
                                       c: UnsafeMutablePointer<Int32>, ldc: Int) {
        ck_gemm_i8_ref(a, m, b, n, k, c, ldc)
    }

    /// Grouped weights: `c[i*ldc + j] = Σ_g weightScales[j*G + g]·(Σ_{t∈g} a[i,t]·b[j,t])` in float,
    /// `G = ceil(k / groupSize)`. Parallel over `n`; bit-identical to the reference.
    public static func gemmI8Grouped(a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int,
                                     groupSize: Int, weightScales: UnsafePointer<Float>,
                                     c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        let groups = (k + groupSize - 1) / groupSize
        let pa = SendableConstPointer(a), pb = SendableConstPointer(b), pc = SendablePointer(c)
        let ps = SendableConstPointer(weightScales)
        Parallel.forEachChunk(n, minimumChunk: chunk(workPerRow: m * k, atLeast: 2)) { range in
            ck_gemm_i8_grouped(pa.base, m, pb.base + range.lowerBound * k, range.count, k, groupSize,
                               ps.base + range.lowerBound * groups, pc.base + range.lowerBound, ldc)
        }
    }

    /// Scalar twin of `gemmI8Grouped`.
    public static func gemmI8GroupedReference(a: UnsafePointer<Int8>, m: Int, b: UnsafePointer<Int8>, n: Int, k: Int,
                                              groupSize: Int, weightScales: UnsafePointer<Float>,
                                              c: UnsafeMutablePointer<Float>, ldc: Int) {
        ck_gemm_i8_grouped_ref(a, m, b, n, k, groupSize, weightScales, c, ldc)
    }

    // MARK: weight-only GEMV and dequantization

    /// Unsigned code layouts of the weight-only kernels.
    public enum CodeFormat: Sendable, Equatable {
        /// Two 4-bit codes per byte, rows start on a byte boundary.
        case u4
        /// One byte per code.
        case u8

        /// Bytes per row of `columns` codes.
        public func rowBytes(columns: Int) -> Int {
            self == .u4 ? (columns + 1) / 2 : columns
        }
    }

    /// Bytes per row of a nibble-packed matrix.
    @inlinable
    public static func nibbleRowBytes(_ columns: Int) -> Int { (columns + 1) / 2 }

    /// Packs one-byte codes (each < 16) two per byte: element 2i low nibble, 2i+1 high nibble,
    /// each row starting on a byte boundary (an odd row leaves its last high nibble zero).
    public static func packNibbles(_ codes: [UInt8], rows: Int, columns: Int) -> [UInt8] {
        precondition(codes.count == rows * columns, "packNibbles: \(codes.count) codes for \(rows)×\(columns)")
        let stride = nibbleRowBytes(columns)
        var packed = [UInt8](repeating: 0, count: rows * stride)
        codes.withUnsafeBufferPointer { src in
            packed.withUnsafeMutableBufferPointer { dst in
                for r in 0..<rows {
                    let s = src.baseAddress! + r * columns, d = dst.baseAddress! + r * stride
                    var j = 0
                    while j + 1 < columns {
                        d[j >> 1] = (s[j] & 0x0F) | (s[j + 1] << 4)
                        j += 2
                    }
                    if j < columns { d[j >> 1] = s[j] & 0x0F }
                }
            }
        }
        return packed
    }

    /// `y[o] = Σ_g scale[o,g]·(Σ_{j∈g} x[j]·u[o,j] − zero[o,g]·Σ_{j∈g} x[j])` for all `rows`
    /// outputs (fused weight-only GEMV, parallel over rows). With `bf16` and a shape the bf16
    /// decode kernel takes on this CPU (`ck_bf16_gemv_supported`), x is rounded to bf16 and the
    /// sums run in fp32 (`ck_bf16_gemv.h`); else float32 throughout.
    public static func gemv(_ format: CodeFormat, codes: UnsafePointer<UInt8>, rows: Int, columns: Int,
                            groupSize: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                            x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, bf16: Bool = false) {
        guard rows > 0 else { return }
        let u4 = format == .u4
        // bf16 decode: x rounded (and, for nibbles, permuted) once per call on this thread into
        // its scratch slots 19 and 20, which the parts on other threads only read.
        var xb: UnsafeMutablePointer<UInt16>?, xsums: UnsafeMutablePointer<Float>?
        if bf16 && ck_bf16_gemv_supported(u4 ? 1 : 0, columns, groupSize) != 0 {
            let b = threadScratch(slot: 19, count: ck_bf16_gemv_x_count(columns), of: UInt16.self)
            let s = threadScratch(slot: 20, count: groupCount(columns: columns, groupSize: groupSize), of: Float.self)
            ck_bf16_gemv_prepare(u4 ? 1 : 0, x, columns, groupSize, b, s)
            (xb, xsums) = (b, s)
        }
        let job = GemvJob(u4: u4, codes: codes, columns: columns, groupSize: groupSize, scales: scales,
                          zeros: zeros, x: x, y: y, xb: xb, xsums: xsums)
        Parallel.forEachChunk(rows, minimumChunk: chunk(workPerRow: columns, atLeast: 8), context: job) { context, begin, end in
            let j = context!.load(as: GemvJob.self)
            if let xb = j.xb, let xs = j.xsums {
                (j.u4 ? ck_gemv_u4_bf16 : ck_gemv_u8_bf16)(j.codes, begin, end - begin, j.columns, j.groupSize, j.scales,
                                                         j.zeros, xb, xs, j.y)
            } else if j.u4 {
                ck_gemv_u4_f32(j.codes, begin, end - begin, j.columns, j.groupSize, j.scales, j.zeros, j.x, j.y)
            } else {
                ck_gemv_u8_f32(j.codes, begin, end - begin, j.columns, j.groupSize, j.scales, j.zeros, j.x, j.y)
            }
        }
    }

    private struct GemvJob {
        let u4: Bool, codes: UnsafePointer<UInt8>, columns: Int, groupSize: Int
        let scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
        /// The prepared bf16 activations and group sums of the bf16 kernel; nil for the float32 one.
        let xb: UnsafePointer<UInt16>?, xsums: UnsafePointer<Float>?
    }

    private static func groupCount(columns: Int, groupSize: Int) -> Int {
        let g = groupSize <= 0 || groupSize > columns ? max(columns, 1) : groupSize
        return (columns + g - 1) / g
    }

    /// Whether weight-only layers decode this shape with the bf16 GEMV now: `bf16Decode` (or the
    /// task's `bf16DecodeOverride`) is on, the CPU has AVX512_BF16, and the groups are whole
    /// kernel blocks (u4: multiples of 128 columns, u8: of 64) or one group per row. The kernel
    /// rounds x to bf16 once per call; the codes' products are exact and summed in fp32
    /// (`ck_bf16_gemv.h`, error bound `bf16GemvBound`).
    public static func usesBF16Gemv(_ format: CodeFormat, columns: Int, groupSize: Int) -> Bool {
        decodesInBF16 && ck_bf16_gemv_supported(format == .u4 ? 1 : 0, columns, groupSize) != 0
    }

    /// The bf16 decode GEMV alone, on the calling thread, whatever `bf16Decode` says: the
    /// AVX512_BF16 kernel where `ck_bf16_gemv_supported`, else (or with `reference`) its scalar
    /// twin, which gives the same bits. For tests and `ptq bench --kernels`.
    public static func gemvBF16(_ format: CodeFormat, codes: UnsafePointer<UInt8>, rows: Int, columns: Int,
                                groupSize: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, reference: Bool = false) {
        guard rows > 0 else { return }
        let u4: Int32 = format == .u4 ? 1 : 0
        var xb = [UInt16](repeating: 0, count: ck_bf16_gemv_x_count(columns))
        var xs = [Float](repeating: 0, count: groupCount(columns: columns, groupSize: groupSize))
        (reference ? ck_bf16_gemv_prepare_ref : ck_bf16_gemv_prepare)(u4, x, columns, groupSize, &xb, &xs)
        let kernel = format == .u4 ? (reference ? ck_gemv_u4_bf16_ref : ck_gemv_u4_bf16)
                                   : (reference ? ck_gemv_u8_bf16_ref : ck_gemv_u8_bf16)
        kernel(codes, 0, rows, columns, groupSize, scales, zeros, xb, xs, y)
    }

    /// The bf16 decode GEMV's bound on |y − Σ_g s·Σ (q − z)·x̃| (x̃ = x rounded to bf16), as a
    /// multiple of M = Σ_g |s|·(Σ_{j∈g} (c + q_j)·|x̃_j| + |c + z|·Σ_{j∈g} |x̃_j|), c = 128 (u4)
    /// or 2176 (u8): one fp32 rounding (2⁻²⁴) per step on a term's longest path.
    public static func bf16GemvBound(columns: Int, groupSize: Int) -> Float {
        Float(ck_bf16_gemv_error_terms(columns, groupSize)) * 0x1p-24 * 1.001
    }

    /// Scalar twin of `gemv`.
    public static func gemvReference(_ format: CodeFormat, codes: UnsafePointer<UInt8>, rows: Int, columns: Int,
                                     groupSize: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                     x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        switch format {
        case .u4: ck_gemv_u4_f32_ref(codes, 0, rows, columns, groupSize, scales, zeros, x, y)
        case .u8: ck_gemv_u8_f32_ref(codes, 0, rows, columns, groupSize, scales, zeros, x, y)
        }
    }

    // MARK: table-lookup u4 GEMV (bit planes)

    /// u4 codes re-laid out for the table-lookup decode GEMV (`gemvPlanes`): plane-major in
    /// blocks of 16 rows × 32 columns, 64 bytes per (row block, 32-column chunk, bit plane)
    /// holding the 16 rows' 4-bit table indices of the chunk's 8 four-column quads, with scales
    /// and zero points regrouped as `[row block][group][16]` (layout in `u4_planes.c`). The
    /// same bytes as the nibble layout (plus padding to 16 rows and to 32 columns per group)
    /// and one more copy of the scales and zeros.
    public struct PlaneLayout: Sendable {
        public let rows: Int
        public let columns: Int
        /// Columns per group (`columns` for one group per row).
        public let groupSize: Int
        public let planes: [UInt64]
        public let blockScales: [Float]
        public let blockZeros: [Float]

        /// Repacks one-byte codes `[rows, columns]` (each < 16) with scales and zeros `[rows, groups]`.
        public init(codes: [UInt8], rows: Int, columns: Int, groupSize: Int, scales: [Float], zeros: [Float]) {
            let group = min(max(1, groupSize), columns)
            let groups = (columns + group - 1) / group
            precondition(codes.count == rows * columns, "PlaneLayout: \(codes.count) codes for \(rows)×\(columns)")
            precondition(scales.count == rows * groups && zeros.count == rows * groups,
                         "PlaneLayout: \(scales.count) scales / \(zeros.count) zeros for \(rows)×\(groups) groups")
            self.rows = rows
            self.columns = columns
            self.groupSize = group
            var planes = [UInt64](repeating: 0, count: ck_u4_planes_words(rows, columns, group))
            codes.withUnsafeBufferPointer { c in
                planes.withUnsafeMutableBufferPointer { ck_u4_planes_pack(c.baseAddress!, rows, columns, group, $0.baseAddress!) }
            }
            let count = ck_u4_planes_param_count(rows, columns, group)
            var bs = [Float](repeating: 0, count: count), bz = bs
            scales.withUnsafeBufferPointer { s in
                zeros.withUnsafeBufferPointer { z in
                    bs.withUnsafeMutableBufferPointer { bsp in
                        bz.withUnsafeMutableBufferPointer { bzp in
                            ck_u4_planes_pack_params(s.baseAddress!, z.baseAddress!, rows, columns, group,
                                                     bsp.baseAddress!, bzp.baseAddress!)
                        }
                    }
                }
            }
            self.planes = planes
            blockScales = bs
            blockZeros = bz
        }

        /// Bytes held: plane words, blocked scales and zeros.
        public var bytes: Int { planes.count * 8 + (blockScales.count + blockZeros.count) * 4 }

        /// Rows `rowRange` back as nibble rows of `stride` bytes (`packNibbles`' bytes when
        /// `stride` is `nibbleRowBytes(columns)`), for a layout with one group per row
        /// (`ck_u4_planes_unpack_nibbles`, `reference` its scalar twin).
        public func unpackNibbles(_ rowRange: Range<Int>, stride: Int, into out: UnsafeMutablePointer<UInt8>,
                                  reference: Bool = false) {
            precondition(groupSize == columns, "unpackNibbles needs one group per row (group \(groupSize) of \(columns))")
            precondition(rowRange.lowerBound >= 0 && rowRange.upperBound <= rows && stride >= (columns + 1) / 2,
                         "rows \(rowRange) of \(rows), stride \(stride) for \(columns) columns")
            planes.withUnsafeBufferPointer { w in
                (reference ? ck_u4_planes_unpack_nibbles_ref : ck_u4_planes_unpack_nibbles)(
                    w.baseAddress!, rowRange.lowerBound, rowRange.count, rows, columns, out, stride)
            }
        }

        /// 4-column quads per row, groups padded to whole 32-column chunks (the tables one call builds).
        var quads: Int { ck_u4_planes_quads(columns, groupSize) }
        var groups: Int { (columns + groupSize - 1) / groupSize }
    }

    /// Whether `gemvPlanes` runs its AVX-512 kernel here (otherwise it runs the scalar twin, and
    /// the runtime keeps the nibble kernel for decode instead).
    public static var planeTablesSupported: Bool { ck_u4_planes_supported() != 0 }

    /// `y[o] = Σ_g scale[o,g]·(Σ_{j∈g} x[j]·u[o,j] − zero[o,g]·Σ_{j∈g} x[j])` for all rows of
    /// `layout`, by table lookup: the 16-entry tables of x (one per 4-column quad) and the group
    /// sums are built once on the calling thread, then the pool splits the 16-row blocks.
    public static func gemvPlanes(_ layout: PlaneLayout, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        guard layout.rows > 0 else { return }
        // Slot 2: transient in every user (FloatingPointLinear), none of which runs inside this call.
        let tables = threadScratch(slot: 2, count: layout.quads * 16 + layout.groups, of: Float.self)
        ck_u4_plane_tables(x, layout.columns, layout.groupSize, tables, tables + layout.quads * 16)
        let blocks = (layout.rows + 15) / 16
        layout.planes.withUnsafeBufferPointer { w in
            layout.blockScales.withUnsafeBufferPointer { s in
                layout.blockZeros.withUnsafeBufferPointer { z in
                    let job = PlanesJob(planes: w.baseAddress!, rows: layout.rows, columns: layout.columns,
                                        groupSize: layout.groupSize, scales: s.baseAddress!, zeros: z.baseAddress!,
                                        tables: tables, xsums: tables + layout.quads * 16, y: y)
                    Parallel.forEachChunk(blocks, minimumChunk: chunk(workPerRow: 16 * layout.columns, atLeast: 1),
                                          context: job) { context, begin, end in
                        let j = context!.load(as: PlanesJob.self)
                        ck_gemv_u4_planes(j.planes, begin, end - begin, j.rows, j.columns, j.groupSize, j.scales,
                                          j.zeros, j.tables, j.xsums, j.y)
                    }
                }
            }
        }
    }

    private struct PlanesJob {
        let planes: UnsafePointer<UInt64>, rows: Int, columns: Int, groupSize: Int
        let scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>
        let tables: UnsafePointer<Float>, xsums: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    }

    /// Scalar twin of `gemvPlanes` (same operations in the same order: the same bits).
    public static func gemvPlanesReference(_ layout: PlaneLayout, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        guard layout.rows > 0 else { return }
        var tables = [Float](repeating: 0, count: layout.quads * 16 + layout.groups)
        tables.withUnsafeMutableBufferPointer { t in
            let base = t.baseAddress!
            ck_u4_plane_tables_ref(x, layout.columns, layout.groupSize, base, base + layout.quads * 16)
            layout.planes.withUnsafeBufferPointer { w in
                layout.blockScales.withUnsafeBufferPointer { s in
                    layout.blockZeros.withUnsafeBufferPointer { z in
                        ck_gemv_u4_planes_ref(w.baseAddress!, 0, (layout.rows + 15) / 16, layout.rows, layout.columns,
                                              layout.groupSize, s.baseAddress!, z.baseAddress!, base,
                                              base + layout.quads * 16, y)
                    }
                }
            }
        }
    }

    /// Dequantizes rows `rowRange` of a plane layout into `tile[rowRange.count, columns]`:
    /// `scale·(Float(u) − zero)`, exactly `IntegerWeight.value` (the prefill tile decoder where
    /// the planes are the layer's only copy of the codes). Single-threaded; `reference` runs the
    /// scalar twin (same bits).
    public static func dequantizeRows(_ layout: PlaneLayout, rowRange: Range<Int>,
                                      into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        precondition(rowRange.lowerBound >= 0 && rowRange.upperBound <= layout.rows, "rows \(rowRange) of \(layout.rows)")
        layout.planes.withUnsafeBufferPointer { w in
            layout.blockScales.withUnsafeBufferPointer { s in
                layout.blockZeros.withUnsafeBufferPointer { z in
                    if reference {
                        ck_dequant_u4_planes_rows_ref(w.baseAddress!, rowRange.lowerBound, rowRange.count, layout.rows,
                                                      layout.columns, layout.groupSize, s.baseAddress!, z.baseAddress!, tile)
                    } else {
                        ck_dequant_u4_planes_rows(w.baseAddress!, rowRange.lowerBound, rowRange.count, layout.rows,
                                                  layout.columns, layout.groupSize, s.baseAddress!, z.baseAddress!, tile)
                    }
                }
            }
        }
    }

    /// `y[rows, out] = x[rows, in]·Wᵀ` for the u4 codes of a plane layout, decoded a tile at a
    /// time (`dequantizeRows(_:rowRange:into:)`) for sgemm (`tiledProduct`): the prefill product
    /// of weight-only u4 layers that keep only the planes.
    public static func planesProduct(_ layout: PlaneLayout, x: UnsafePointer<Float>, rows: Int,
                                     y: UnsafeMutablePointer<Float>, tileRows: Int? = nil) {
        tiledProduct(outFeatures: layout.rows, inFeatures: layout.columns, x: x, rows: rows, y: y,
                     tileRows: tileRows ?? defaultTileRows(inFeatures: layout.columns)) { range, tile in
            dequantizeRows(layout, rowRange: range, into: tile)
        }
    }

    /// Dequantizes weight rows `rowRange` into `tile[rowRange.count, columns]`:
    /// `scale·(Float(u) − zero)`, exactly `IntegerWeight.value`. Single-threaded.
    public static func dequantizeRows(_ format: CodeFormat, codes: UnsafePointer<UInt8>, rowRange: Range<Int>,
                                      columns: Int, groupSize: Int, scales: UnsafePointer<Float>,
                                      zeros: UnsafePointer<Float>, into tile: UnsafeMutablePointer<Float>) {
        switch format {
        case .u4: ck_dequant_u4_rows(codes, rowRange.lowerBound, rowRange.count, columns, groupSize, scales, zeros, tile)
        case .u8: ck_dequant_u8_rows(codes, rowRange.lowerBound, rowRange.count, columns, groupSize, scales, zeros, tile)
        }
    }

    /// Scalar twin of `dequantizeRows`.
    public static func dequantizeRowsReference(_ format: CodeFormat, codes: UnsafePointer<UInt8>, rowRange: Range<Int>,
                                               columns: Int, groupSize: Int, scales: UnsafePointer<Float>,
                                               zeros: UnsafePointer<Float>, into tile: UnsafeMutablePointer<Float>) {
        switch format {
        case .u4: ck_dequant_u4_rows_ref(codes, rowRange.lowerBound, rowRange.count, columns, groupSize, scales, zeros, tile)
        case .u8: ck_dequant_u8_rows_ref(codes, rowRange.lowerBound, rowRange.count, columns, groupSize, scales, zeros, tile)
        }
    }

    /// Weight-only product for several rows: `y[rows, out] = x[rows, in]·Wᵀ` where W is dequantized
    /// `tileRows` output rows at a time into scratch (the float matrix never exists whole) and
    /// each tile is multiplied with one sgemm into the matching columns of `y` (`tiledProduct`).
    public static func dequantizedProduct(_ format: CodeFormat, codes: UnsafePointer<UInt8>,
                                          outFeatures: Int, inFeatures: Int, groupSize: Int,
                                          scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                          x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>,
                                          tileRows: Int? = nil, bf16: Bool? = nil) {
        let pc = SendableConstPointer(codes), ps = SendableConstPointer(scales), pz = SendableConstPointer(zeros)
        tiledProduct(outFeatures: outFeatures, inFeatures: inFeatures, x: x, rows: rows, y: y,
                     tileRows: tileRows ?? defaultTileRows(inFeatures: inFeatures), bf16: bf16) { range, tile in
            dequantizeRows(format, codes: pc.base, rowRange: range, columns: inFeatures, groupSize: groupSize,
                           scales: ps.base, zeros: pz.base, into: tile)
        }
    }

    /// `y[rows, out] = x[rows, in]·Wᵀ` for a W whose rows `decode(range, tile)` writes as floats
    /// into `tile[range.count, in]`, ≤ `tileRows` output rows at a time, each tile multiplied
    /// with one sgemm. With a pool of several threads (`BLAS.pooledParts`) the output features
    /// are split into one slice per thread and each thread decodes and multiplies its own tiles
    /// with OpenBLAS held at one thread. (The fourth pass measured that split against the
    /// then-default of 14 small tiles per layer on OpenBLAS's threads and it did not win; with
    /// one tile per slice it packs x once per thread, and OpenBLAS's polling workers, 17 % of
    /// the two-thread W4A16 samples, are gone: docs/RESULTS.md, "sixth pass".) With one thread
    /// each tile is decoded, then multiplied.
    ///
    /// With `bf16` (default: `bf16Prefill`, on) the tiles are multiplied in bf16 instead of
    /// float32: x is converted once per call (shared by the parts), each decoded tile is packed
    /// into bf16 k-pair panels and multiplied by `ck_bf16_gemm` (with one thread, its 32-row
    /// panels are spread over the pool); without the AVX512_BF16 kernel both operands are
    /// rounded to bf16 floats and sgemm runs. The decode closures still write float tiles.
    public static func tiledProduct(outFeatures: Int, inFeatures: Int, x: UnsafePointer<Float>, rows: Int,
                                    y: UnsafeMutablePointer<Float>, tileRows: Int, bf16: Bool? = nil,
                                    decode: @Sendable (Range<Int>, UnsafeMutablePointer<Float>) -> Void) {
        guard rows > 0, outFeatures > 0 else { return }
        let k = inFeatures, n = outFeatures
        let inBF16 = bf16 ?? bf16PrefillOverride ?? bf16Prefill
        let kernel = inBF16 && usesBF16Kernel
        // The activations as the tile product reads them, once per call on the calling thread and
        // shared by the parts: bf16 k-pairs for the kernel (slot 13), bf16-rounded floats for the
        // fallback, or x itself in float32.
        let lda = (k + 1) & ~1
        var pxb: SendableConstPointer<UInt16>?
        var pa = SendableConstPointer(x)
        if kernel {
            let xb = threadScratch(slot: 13, count: rows * lda, of: UInt16.self)
            ck_bf16_from_f32(x, rows, k, k, xb, lda)
            pxb = SendableConstPointer(xb)
        } else if inBF16 {
            let xr = threadScratch(slot: 13, count: rows * k, of: Float.self)
            xr.update(from: x, count: rows * k)
            ck_bf16_round_f32(xr, rows * k)
            pa = SendableConstPointer(UnsafePointer(xr))
        }
        let py = SendablePointer(y)
        let (xb, a) = (pxb, pa)
        /// Multiplies the decoded rows `r0 ..< r0 + count` (in `tile`) into y on this thread.
        @Sendable func multiply(_ tile: UnsafeMutablePointer<Float>, count: Int, r0: Int) {
            if let xb {
                // bf16 k-pair panels of the tile (slot 14), then the AVX512_BF16 kernel.
                let packed = threadScratch(slot: 14, count: ck_bf16_packed_count(count, k), of: UInt16.self)
                ck_bf16_pack(tile, count, k, k, packed)
                ck_bf16_gemm(xb.base, rows, lda, packed, count, k, py.base + r0, n, 0)
                return
            }
            if inBF16 { ck_bf16_round_f32(tile, count * k) }
            BLAS.gemm(m: rows, n: count, k: k, a: a.base, lda: k, b: tile, ldb: k, transposeB: true,
                      c: py.base + r0, ldc: n)
        }
        let parts = BLAS.pooledParts(rows: rows, columns: n, depth: k)
        if parts > 1 {
            // Each thread decodes and multiplies its own slice of the output features, OpenBLAS
            // single-threaded inside (`BLAS.pooledLinear`): no hand-over between our pool and
            // OpenBLAS's threads at every tile, and no OpenBLAS worker polling beside our pool.
            let width = BLAS.alignedPart(n, parts: parts)
            BLAS.withOneOpenBLASThread {
                Parallel.forEach(parts) { p in
                    let begin = p * width, end = min(n, begin + width)
                    guard begin < end else { return }
                    let tile = min(end - begin, max(1, tileRows))
                    let scratch = threadScratch(slot: 3, count: tile * k, of: Float.self)
                    for r0 in stride(from: begin, to: end, by: tile) {
                        let r1 = min(end, r0 + tile)
                        decode(r0..<r1, scratch)
                        multiply(scratch, count: r1 - r0, r0: r0)
                    }
                }
            }
            return
        }
        let tile = min(n, max(1, tileRows))
        let scratch = threadScratch(slot: 3, count: tile * k, of: Float.self)
        let pscratch = SendablePointer(scratch)
        // Decoding is cheaper per element than a multiply-add: split from ~4 K elements a task.
        let minimumRows = max(8, (minimumWorkPerChunk / 8 + k - 1) / max(1, k))
        for r0 in stride(from: 0, to: n, by: tile) {
            let r1 = min(n, r0 + tile)
            // When OpenBLAS's threads run the product next, the pool's workers sleep right after
            // the decode: spinning for the next job (200 µs) they would take a core from them
            // (measured: docs/RESULTS.md, "Runtime speed, fourth pass"). The bf16 kernel runs on
            // the pool.
            Parallel.forEachChunk(r1 - r0, minimumChunk: minimumRows, sleepAfter: !kernel) { part in
                decode((r0 + part.lowerBound)..<(r0 + part.upperBound), pscratch.base + part.lowerBound * k)
            }
            guard kernel else {
                multiply(scratch, count: r1 - r0, r0: r0)
                continue
            }
            // Panels of 32 output rows spread over the pool, each packed by the task that multiplies it.
            let width = Int(CK_BF16_PANEL), panels = (r1 - r0 + width - 1) / width
            Parallel.forEachChunk(panels, minimumChunk: chunk(workPerRow: width * rows * k, atLeast: 1)) { range in
                let c0 = range.lowerBound * width, c1 = min(r1 - r0, range.upperBound * width)
                multiply(pscratch.base + c0 * k, count: c1 - c0, r0: r0 + c0)
            }
        }
    }

    // MARK: bf16 prefill

    /// Whether the prefill of float-activation (weight-only) layers — every `tiledProduct`:
    /// W4A16/W8A16 nibble and byte tiles, SplitQuant, PTQ1.61 and LLM-FP4's float-tile layers —
    /// multiplies in bf16: activations and decoded weights rounded to bf16 (round to nearest even),
    /// exact products, fp32 sums. On by default (llm-compressor's "A16" is 16-bit activations;
    /// llama.cpp's Q4_0 matmul uses 8-bit ones); `PTQ_PREFILL_BF16=0` in the environment starts
    /// the process with it off. Process-wide: tests that flip it hold
    /// `TokenKernels.kernelSwitchLock`. Decode (a GEMV per row) has its own switch,
    /// `bf16Decode`; the FP32 model (`BLAS.pooledLinear`) stays float32 either way.
    public static var bf16Prefill: Bool {
        get { ck_bf16_prefill_enabled() != 0 }
        set { ck_set_bf16_prefill_enabled(newValue ? 1 : 0) }
    }

    /// Whether the decode GEMVs (one activation row) of the weight-only formats that have a bf16
    /// decode kernel run it: activations rounded to bf16 once per call, exact products with the
    /// codes, fp32 sums. On by default where the CPU has AVX512_BF16; `PTQ_DECODE_BF16=0` in the
    /// environment starts the process with it off, and then decode runs the float32 GEMVs.
    /// Process-wide, like `bf16Prefill`: tests that flip it hold `TokenKernels.kernelSwitchLock`.
    public static var bf16Decode: Bool {
        get { ck_bf16_decode_enabled() != 0 }
        set { ck_set_bf16_decode_enabled(newValue ? 1 : 0) }
    }

    /// Whether decode GEMVs started on this task's thread run in bf16: the task's
    /// `bf16DecodeOverride` if set, else the process-wide `bf16Decode`.
    public static var decodesInBF16: Bool { bf16DecodeOverride ?? bf16Decode }

    /// A task-scoped override of `bf16Decode` for layers loaded and run on the task's own thread
    /// (`usesBF16Gemv`), as `bf16PrefillOverride` is for prefill: tests use it to load and run a
    /// weight-only layer on the float32 decode path without switching the process-wide setting.
    @TaskLocal public static var bf16DecodeOverride: Bool?

    /// A task-scoped override of `bf16Prefill` (`LowBit.$bf16PrefillOverride.withValue(false) { … }`)
    /// for products started on the task's own thread: a layer's forward called from the task
    /// sees it, work that the pool runs on its own threads does not (a model's fused q/k/v or
    /// gate/up jobs). Tests use it to check a format's float32 prefill without switching the
    /// process-wide setting under other tests.
    @TaskLocal public static var bf16PrefillOverride: Bool?

    /// Whether the bf16 products run the AVX512_BF16 kernel (`vdpbf16ps`) on this CPU (false
    /// also while `setBF16KernelEnabled(false)`). Without it `tiledProduct` rounds both
    /// operands to bf16 and runs sgemm: the same products, summed in sgemm's order.
    public static var usesBF16Kernel: Bool { ck_cpu_has_avx512bf16() != 0 }

    /// Turns the AVX512_BF16 kernel off (the rounding + sgemm fallback instead) or back on, for
    /// tests and measurements.
    public static func setBF16KernelEnabled(_ enabled: Bool) { ck_set_bf16_kernel_enabled(enabled ? 1 : 0) }

    /// How float-activation layers prefill with the current settings, for reports.
    public static var prefillDescription: String {
        guard bf16Prefill else { return "fp32 tile-sgemm" }
        return usesBF16Kernel ? "bf16 GEMM (AVX512_BF16 vdpbf16ps, fp32 sums)" : "bf16-rounded tile-sgemm (no AVX512_BF16)"
    }

    /// Relative-error bound of one bf16 product against the exact float product of the same
    /// operands: |y − x·wᵀ| ≤ `bf16ProductBound(depth:)`·Σ|x_t·w_t| per output. bf16 has 8
    /// significant bits, so each operand rounds (to nearest) with relative error ≤ u = 2⁻⁸, a
    /// product of two by ≤ 2u + u² = 2⁻⁷ + 2⁻¹⁶, and an fp32 sum over `depth` terms (any order)
    /// adds ≤ depth·2⁻²⁴ of Σ|terms| (first order; the 0.1 % covers the second). Products that
    /// fall below fp32's normal range are flushed and are not covered.
    public static func bf16ProductBound(depth: Int) -> Float {
        Float(1.0 / 128 + 1.0 / 65_536) * 1.001 + Float(depth + 2) * 0x1p-24
    }

    /// `y[rows, n] = x[rows, k]·w[n, k]ᵀ` in bf16 on the calling thread, as `tiledProduct`
    /// multiplies one tile: the AVX512_BF16 kernel where there is one, else rounding + sgemm.
    public static func bf16Product(x: UnsafePointer<Float>, rows: Int, w: UnsafePointer<Float>, n: Int, k: Int,
                                   y: UnsafeMutablePointer<Float>) {
        guard rows > 0, n > 0 else { return }
        let lda = (k + 1) & ~1
        if usesBF16Kernel {
            let xb = UnsafeMutablePointer<UInt16>.allocate(capacity: max(1, rows * lda))
            let packed = UnsafeMutablePointer<UInt16>.allocate(capacity: max(1, ck_bf16_packed_count(n, k)))
            defer { xb.deallocate(); packed.deallocate() }
            ck_bf16_from_f32(x, rows, k, k, xb, lda)
            ck_bf16_pack(w, n, k, k, packed)
            ck_bf16_gemm(xb, rows, lda, packed, n, k, y, n, 0)
        } else {
            let xr = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * k))
            let wr = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n * k))
            defer { xr.deallocate(); wr.deallocate() }
            xr.update(from: x, count: rows * k)
            wr.update(from: w, count: n * k)
            ck_bf16_round_f32(xr, rows * k)
            ck_bf16_round_f32(wr, n * k)
            BLAS.gemm(m: rows, n: n, k: k, a: xr, lda: k, b: wr, ldb: k, transposeB: true, c: y, ldc: n)
        }
    }

    /// Scalar twin of the AVX512_BF16 path of `bf16Product` (same bits: `ck_bf16_gemm_ref`).
    public static func bf16ProductReference(x: UnsafePointer<Float>, rows: Int, w: UnsafePointer<Float>, n: Int,
                                            k: Int, y: UnsafeMutablePointer<Float>) {
        ck_bf16_gemm_ref(x, rows, k, w, n, k, k, y, n, 0)
    }

    /// Output rows per dequantized tile: about 4 MB of floats, 32…2048 rows. Wide tiles let sgemm
    /// amortise packing x: measured at 64 input rows, 512-row tiles of a 1536×576 layer run 25%
    /// faster than 64-row tiles, 256-row tiles of a 4096×4096 layer 20% faster. Every SmolLM2
    /// layer (≤ 1536 × 576 or 576 × 1536) is one tile, so prefill makes as many sgemm calls as
    /// the float model.
    public static func defaultTileRows(inFeatures: Int) -> Int {
        let rows = (4 * 1024 * 1024 / 4) / max(1, inFeatures)
        return min(2048, max(32, rows & ~15))
    }

    // MARK: activation quantization

    /// Quantizes `rows` rows of `columns` activations: `x' = (x − shift[j]) / channelScales[j]`
    /// (each step only when given), then `code = clamp(round(x' / s), ±maxCode)` with
    /// `maxCode = 2^(bits−1) − 1`, rounding half away from zero (`roundf`), where `s` is the
    /// static per-tensor step or the row's `absmax(x') / maxCode`. Writes the codes and one step
    /// per row (`rowScales[i]`, 0 for an all-zero row); the row's values are ≈ code·rowScale.
    /// AVX2 in C (`ck_quantize_rows_i8`), identical to the scalar reference.
    public static func quantizeRows(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                    shift: UnsafePointer<Float>?, channelScales: UnsafePointer<Float>?,
                                    bits: Int, scaling: ActivationScaling,
                                    codes: UnsafeMutablePointer<Int8>, rowScales: UnsafeMutablePointer<Float>) {
        precondition((2...8).contains(bits), "activation bits must be 2…8")
        ck_quantize_rows_i8(x, rows, columns, shift, channelScales, Int32((1 << (bits - 1)) - 1),
                            staticStep(scaling), codes, rowScales)
    }

    /// `quantizeRows` into per-thread buffers that live until this thread's next call, returning
    /// the last result again (without quantizing) when the input, its shape and the parameters
    /// are equal to the previous call's: q/k/v (and gate/up) read the same normed input, so it
    /// is quantized once per token, and the token path allocates nothing.
    public static func quantizeRowsShared(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                          shift: UnsafePointer<Float>?, channelScales: UnsafePointer<Float>?,
                                          bits: Int, scaling: ActivationScaling)
        -> (codes: UnsafePointer<Int8>, rowScales: UnsafePointer<Float>) {
        precondition((2...8).contains(bits), "activation bits must be 2…8")
        var steps: UnsafePointer<Float>?
        guard let codes = ck_quantize_rows_i8_shared(x, rows, columns, shift, channelScales,
                                                     Int32((1 << (bits - 1)) - 1), staticStep(scaling), &steps),
              let steps else {
            fatalError("out of memory for \(rows)×\(columns) activation codes")
        }
        return (codes, steps)
    }

    /// A per-thread scratch buffer of at least `count` elements (slot 0…3; see
    /// `ck_thread_scratch`): valid until the same thread asks for the same slot again.
    public static func threadScratch<T>(slot: Int, count: Int, of type: T.Type = T.self) -> UnsafeMutablePointer<T> {
        guard let raw = ck_thread_scratch(Int32(slot), max(1, count) * MemoryLayout<T>.stride) else {
            fatalError("out of memory for \(count) scratch elements")
        }
        return raw.bindMemory(to: T.self, capacity: max(1, count))
    }

    /// Scalar twin of `quantizeRows`.
    public static func quantizeRowsReference(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                             shift: UnsafePointer<Float>?, channelScales: UnsafePointer<Float>?,
                                             bits: Int, scaling: ActivationScaling,
                                             codes: UnsafeMutablePointer<Int8>, rowScales: UnsafeMutablePointer<Float>) {
        precondition((2...8).contains(bits), "activation bits must be 2…8")
        ck_quantize_rows_i8_ref(x, rows, columns, shift, channelScales, Int32((1 << (bits - 1)) - 1),
                                staticStep(scaling), codes, rowScales)
    }

    /// The C kernels' encoding: a positive static step, or 0 for per-token.
    private static func staticStep(_ scaling: ActivationScaling) -> Float {
        switch scaling {
        case .perTensor(let s):
            precondition(s > 0, "a per-tensor activation step must be positive")
            return s
        case .perToken: return 0
        }
    }

    /// Array convenience over `quantizeRows`: returns `(codes [rows·columns], rowScales [rows])`.
    public static func quantizeRows(_ x: [Float], rows: Int, columns: Int, shift: [Float]? = nil,
                                    channelScales: [Float]? = nil, bits: Int,
                                    scaling: ActivationScaling) -> (codes: [Int8], rowScales: [Float]) {
        precondition(x.count == rows * columns, "quantizeRows: \(x.count) values for \(rows)×\(columns)")
        var codes = [Int8](repeating: 0, count: rows * columns)
        var rowScales = [Float](repeating: 0, count: rows)
        guard rows > 0, columns > 0 else { return (codes, rowScales) }
        x.withUnsafeBufferPointer { xp in
            withOptionalPointer(shift) { sp in
                withOptionalPointer(channelScales) { cp in
                    codes.withUnsafeMutableBufferPointer { c in
                        rowScales.withUnsafeMutableBufferPointer { r in
                            quantizeRows(xp.baseAddress!, rows: rows, columns: columns, shift: sp, channelScales: cp,
                                         bits: bits, scaling: scaling, codes: c.baseAddress!, rowScales: r.baseAddress!)
                        }
                    }
                }
            }
        }
        return (codes, rowScales)
    }

    // MARK: helpers

    /// Minimum rows per worker for a row-parallel loop doing `workPerRow` multiply-adds a row.
    public static func chunk(workPerRow: Int, atLeast: Int) -> Int {
        let rows = (minimumWorkPerChunk + max(1, workPerRow) - 1) / max(1, workPerRow)
        return max(atLeast, rows)
    }
}

/// Calls `body` with the array's base address, or nil for a nil array.
func withOptionalPointer<T, R>(_ array: [T]?, _ body: (UnsafePointer<T>?) throws -> R) rethrows -> R {
    guard let array else { return try body(nil) }
    return try array.withUnsafeBufferPointer { try body($0.baseAddress) }
}
