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

    /// Packs row-major signs `[rows, columns]`, one byte each (nonzero = 1), into
    /// `rows × wordsPerRow(columns)` words: `packBits` without a closure call per bit (model load).
    public static func packBits(bytes: [UInt8], rows: Int, columns: Int) -> [UInt64] {
        precondition(bytes.count == rows * columns, "packBits: \(bytes.count) bytes for \(rows)×\(columns)")
        let stride = wordsPerRow(columns)
        var words = [UInt64](repeating: 0, count: rows * stride)
        bytes.withUnsafeBufferPointer { b in
            words.withUnsafeMutableBufferPointer { w in
                for r in 0..<rows {
                    let row = b.baseAddress! + r * columns, out = w.baseAddress! + r * stride
                    for c in 0..<columns { out[c >> 6] |= UInt64(row[c] != 0 ? 1 : 0) << UInt64(c & 63) }
                }
            }
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

extension BinaryKernels {
    /// Sign bits re-laid out for the table-lookup GEMV (`gemvPlanes`): one bit plane in the
    /// blocks of 16 rows × 32 columns of the u4 table GEMV (`ck_sign_planes_pack`), 64 bytes per
    /// block and chunk: the same bytes as the row-major words, padded to 16 rows and 32 columns.
    public struct SignPlaneLayout: Sendable {
        public let rows: Int
        public let columns: Int
        public let planes: [UInt64]

        /// Repacks row-major signs `[rows, columns]`, one byte each (nonzero = +1).
        public init(signs: [UInt8], rows: Int, columns: Int) {
            precondition(signs.count == rows * columns, "SignPlaneLayout: \(signs.count) signs for \(rows)×\(columns)")
            self.rows = rows
            self.columns = columns
            let bits = signs.map { $0 != 0 ? UInt8(1) : 0 }
            var planes = [UInt64](repeating: 0, count: ck_sign_planes_words(rows, columns))
            bits.withUnsafeBufferPointer { b in
                planes.withUnsafeMutableBufferPointer { ck_sign_planes_pack(b.baseAddress!, rows, columns, $0.baseAddress!) }
            }
            self.planes = planes
        }

        /// Bytes held (plane words with their padding).
        public var bytes: Int { planes.count * 8 }

        /// Rows `rowRange` back as row-major sign words, `wordsPerRow` each (bit j = column j,
        /// 1 = +1; zero past `columns`): the exact bits `packBits` gives (`ck_sign_planes_unpack_words`,
        /// `reference` its scalar twin). For prefill tiles where the planes are the only copy.
        public func unpackWords(_ rowRange: Range<Int>, wordsPerRow: Int, into out: UnsafeMutablePointer<UInt64>,
                                reference: Bool = false) {
            precondition(rowRange.lowerBound >= 0 && rowRange.upperBound <= rows && wordsPerRow * 64 >= columns,
                         "sign rows \(rowRange) of \(rows), \(wordsPerRow) words for \(columns) columns")
            planes.withUnsafeBufferPointer { w in
                (reference ? ck_sign_planes_unpack_words_ref : ck_sign_planes_unpack_words)(
                    w.baseAddress!, rowRange.lowerBound, rowRange.count, rows, columns, out, wordsPerRow)
            }
        }
        /// 4-column quads per row (the tables one call builds).
        var quads: Int { ck_sign_planes_quads(columns) }
    }

    /// Whether `gemvPlanes` runs its AVX-512 kernel here (otherwise the runtime keeps `gemv`).
    public static var planesSupported: Bool { LowBit.planeTablesSupported }

    /// `y[o] = a[o]·Σ_j s_oj·x[j] + b[o]·Σ_j x[j]` over `layout.columns` activations, by table
    /// lookup (`ck_gemv_sign_planes`): the 16-entry tables of x (one per 4 columns) and Σx are
    /// built once on the calling thread (the u4 GEMV's builder), then the pool splits the 16-row
    /// blocks. Equals `gemv` with no mask up to float summation order. `reference` runs the
    /// scalar twins on the calling thread (tests).
    public static func gemvPlanes(_ layout: SignPlaneLayout, x: UnsafePointer<Float>, a: UnsafePointer<Float>,
                                  b: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, reference: Bool = false) {
        guard layout.rows > 0 else { return }
        let (rows, columns) = (layout.rows, layout.columns)
        let count = layout.quads * 16 + 1
        // Slot 2: transient, as in LowBit.gemvPlanes (nothing else runs inside this call).
        let tables = LowBit.threadScratch(slot: 2, count: count, of: Float.self)
        (reference ? ck_u4_plane_tables_ref : ck_u4_plane_tables)(x, columns, 0, tables, tables + layout.quads * 16)
        let xSum = tables[layout.quads * 16]
        let blocks = (rows + 15) / 16
        layout.planes.withUnsafeBufferPointer { w in
            if reference {
                ck_gemv_sign_planes_ref(w.baseAddress!, 0, blocks, rows, columns, tables, xSum, a, b, y)
                return
            }
            // A context struct and a C body, not a closure: no allocation per call (decode path).
            let job = SignPlanesJob(planes: w.baseAddress!, rows: rows, columns: columns, tables: tables, xSum: xSum,
                                    a: a, b: b, y: y)
            Parallel.forEachChunk(blocks, minimumChunk: LowBit.chunk(workPerRow: 16 * columns, atLeast: 1),
                                  context: job) { context, begin, end in
                let j = context!.load(as: SignPlanesJob.self)
                ck_gemv_sign_planes(j.planes, begin, end - begin, j.rows, j.columns, j.tables, j.xSum, j.a, j.b, j.y)
            }
        }
    }

    private struct SignPlanesJob {
        let planes: UnsafePointer<UInt64>, rows: Int, columns: Int, tables: UnsafePointer<Float>, xSum: Float
        let a: UnsafePointer<Float>, b: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    }
}

extension BinaryKernels {
    /// The salient columns' 4-bit codes of a column-masked binary layer (PTQ1.61) for the bf16
    /// decode GEMV (`gemvSalientBF16`): per 16 rows and 8 columns, one 32-bit word per row
    /// (`ck_salient_bf16_pack`; the same half byte per code as nibbles, padded to 16 rows and 8
    /// columns). Where it is held it is the codes' only copy: prefill tiles unpack nibble rows.
    public struct SalientBF16Layout: Sendable {
        public let rows: Int
        public let columns: Int
        public let words: [UInt32]

        /// Packs row-major codes `[rows, columns]`, one per byte (values 0…15).
        public init(codes: [UInt8], rows: Int, columns: Int) {
            precondition(codes.count == rows * columns, "SalientBF16Layout: \(codes.count) codes for \(rows)×\(columns)")
            self.rows = rows
            self.columns = columns
            var words = [UInt32](repeating: 0, count: ck_salient_bf16_words(rows, columns))
            codes.withUnsafeBufferPointer { c in
                words.withUnsafeMutableBufferPointer { ck_salient_bf16_pack(c.baseAddress!, rows, columns, $0.baseAddress!) }
            }
            self.words = words
        }

        /// Bytes held (words with their padding).
        public var bytes: Int { words.count * 4 }

        /// Rows `rowRange` as nibble rows of `stride` bytes (`LowBit.packNibbles`' layout).
        public func unpackNibbles(_ rowRange: Range<Int>, stride: Int, into out: UnsafeMutablePointer<UInt8>) {
            precondition(rowRange.lowerBound >= 0 && rowRange.upperBound <= rows && 2 * stride >= columns,
                         "salient rows \(rowRange) of \(rows), \(stride) bytes for \(columns) columns")
            words.withUnsafeBufferPointer {
                ck_salient_bf16_unpack_nibbles($0.baseAddress!, rowRange.lowerBound, rowRange.count, rows, columns, out, stride)
            }
        }
    }

    /// Whether the CPU runs `gemvSalientBF16`'s AVX512_BF16 kernel (else only its scalar twin).
    public static var salientBF16Supported: Bool { ck_cpu_has_avx512bf16() != 0 }

    /// `y[o] = Δ[o]·Σ_j (q[o,j] − z[o])·x̃_j` over the salient inputs `x` (`layout.columns`
    /// floats), x̃ = bf16(x): x rounded once on the calling thread (scratch slot 21), then the
    /// pool splits the 16-row blocks (`ck_gemv_salient_bf16`, error bound in
    /// `binary_kernels.h`). `accumulate`: `y[o] +=` the result instead (the bits of a separate
    /// add pass). `reference` runs the scalar twins on the calling thread (tests: the same
    /// bits). Allocates nothing (decode path).
    public static func gemvSalientBF16(_ layout: SalientBF16Layout, x: UnsafePointer<Float>, scales: UnsafePointer<Float>,
                                       zeros: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, accumulate: Bool = false,
                                       reference: Bool = false) {
        guard layout.rows > 0 else { return }
        let (rows, columns) = (layout.rows, layout.columns)
        let xb = LowBit.threadScratch(slot: 21, count: ck_salient_bf16_x_count(columns), of: UInt16.self)
        var xSum: Float = 0
        (reference ? ck_salient_bf16_prepare_ref : ck_salient_bf16_prepare)(x, columns, xb, &xSum)
        let blocks = (rows + 15) / 16
        layout.words.withUnsafeBufferPointer { w in
            if reference {
                ck_gemv_salient_bf16_ref(w.baseAddress!, 0, blocks, rows, columns, scales, zeros, xb, xSum, y,
                                         accumulate ? 1 : 0)
                return
            }
            let job = SalientJob(words: w.baseAddress!, rows: rows, columns: columns, scales: scales, zeros: zeros,
                                 xb: xb, xSum: xSum, y: y, accumulate: accumulate ? 1 : 0)
            Parallel.forEachChunk(blocks, minimumChunk: LowBit.chunk(workPerRow: 16 * columns, atLeast: 1),
                                  context: job) { context, begin, end in
                let j = context!.load(as: SalientJob.self)
                ck_gemv_salient_bf16(j.words, begin, end - begin, j.rows, j.columns, j.scales, j.zeros, j.xb, j.xSum, j.y,
                                     j.accumulate)
            }
        }
    }

    private struct SalientJob {
        let words: UnsafePointer<UInt32>, rows: Int, columns: Int, scales: UnsafePointer<Float>
        let zeros: UnsafePointer<Float>, xb: UnsafePointer<UInt16>, xSum: Float, y: UnsafeMutablePointer<Float>
        let accumulate: Int32
    }
}

extension BinaryKernels {
    /// Whether the CPU runs `gemvSignInt8`'s AVX-512 VNNI kernel (else only its scalar twin).
    public static var signInt8Supported: Bool { ck_sign_i8_supported() != 0 }

    /// Whether column-masked binary layers decode their sign bits on int8 activations
    /// (`gemvSignInt8`) where the CPU has it: on by default (idle A/B at integration: decode
    /// 1.04× on `smollm2-ptq161-head8`, decode KL 5.9e-4 against the float32 GEMVs; docs/RESULTS.md,
    /// eleventh pass), `PTQ_SIGN_I8=0` in the environment starts the process with it off. Read
    /// when a layer loads (it picks the sign layout: row-major words instead of sign planes);
    /// turning it off afterwards runs the exact float GEMV on the same words.
    /// Process-wide, like `LowBit.bf16Decode`.
    public static var signInt8Decode: Bool {
        get { ck_sign_i8_enabled() != 0 }
        set { ck_set_sign_i8_enabled(newValue ? 1 : 0) }
    }

    /// A task-scoped override of `signInt8Decode` for layers loaded and run on the task's own
    /// thread (tests), as `LowBit.bf16DecodeOverride`.
    @TaskLocal public static var signInt8Override: Bool?

    /// `signInt8Override` if set, else the process-wide `signInt8Decode`.
    public static var decodesSignsInInt8: Bool { signInt8Override ?? signInt8Decode }

    /// Whether layers that load for `gemvSignInt8` re-lay their sign words for its lookup-table
    /// kernel (`repackSignTables`, `gemvSignInt8(… tables: true)`): on by default (the same bits
    /// as the k-mask kernel, ~2.5× its one-thread speed; docs/RESULTS.md, twelfth pass),
    /// `PTQ_SIGN_LUT=0` in the environment starts the process with it off. Read when a layer loads.
    public static var signTableDecode: Bool {
        get { ck_sign_lut_enabled() != 0 }
        set { ck_set_sign_lut_enabled(newValue ? 1 : 0) }
    }

    /// A task-scoped override of `signTableDecode` (tests), as `signInt8Override`.
    @TaskLocal public static var signTableOverride: Bool?

    /// `signTableOverride` if set, else the process-wide `signTableDecode`.
    public static var decodesSignsWithTables: Bool { signTableOverride ?? signTableDecode }

    /// Re-lays row-major sign words (`rows × wordsPerRow`) in place for the lookup-table sign
    /// GEMV: whole 16-row blocks as nibble chunks, the last `rows % 16` rows row-major (layout in
    /// `binary_kernels.h`). Same memory, no second copy. Returns false (words unchanged) if the
    /// block-sized temporary cannot be allocated.
    public static func repackSignTables(_ words: inout [UInt64], rows: Int, wordsPerRow: Int) -> Bool {
        precondition(words.count == rows * wordsPerRow, "repackSignTables: \(words.count) words for \(rows) rows")
        if words.isEmpty { return true }
        return words.withUnsafeMutableBufferPointer { ck_sign_lut_repack($0.baseAddress!, rows, wordsPerRow) } == 0
    }

    /// Row-major words of rows `range` from a `repackSignTables` layout into `out`
    /// (`range.count × wordsPerRow`).
    public static func unpackSignTables(_ words: UnsafePointer<UInt64>, rows: Int, wordsPerRow: Int, range: Range<Int>,
                                        into out: UnsafeMutablePointer<UInt64>) {
        ck_sign_lut_unpack(words, rows, wordsPerRow, range.lowerBound, range.count, out)
    }

    /// `y[o] = a[o]·Σ_k s_ok·x̃_k + b[o]·Σ_k x̃_k` over the binarized inputs x̃_k =
    /// `columnScale[k]`·`x[columns[k]]` (k < `count`), with x̃ gathered and quantized to int8
    /// (absmax, one scale per call) once on the calling thread (`ck_sign_i8_prepare`, scratch
    /// slots 17 and 18), then the pool splits the rows (`ck_gemv_sign_i8`; error bound in
    /// `binary_kernels.h`). `signs`: row-major words, `wordsPerRow` per row. `reference` runs
    /// the scalar twins on the calling thread (tests: the same bits). `tables`: `signs` are in the
    /// `repackSignTables` layout; the per-4-column lookup tables are built once on the calling
    /// thread (scratch slot 22) and the pool splits whole 16-row blocks (`ck_gemv_sign_lut`).
    /// Allocates nothing.
    public static func gemvSignInt8(signs: UnsafePointer<UInt64>, wordsPerRow: Int, rows: Int, x: UnsafePointer<Float>,
                                    columns: UnsafePointer<Int>, columnScale: UnsafePointer<Float>, count: Int,
                                    a: UnsafePointer<Float>, b: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                    tables: Bool = false, reference: Bool = false) {
        guard rows > 0 else { return }
        precondition(wordsPerRow * 64 >= count, "gemvSignInt8: \(wordsPerRow) words for \(count) columns")
        let xt = LowBit.threadScratch(slot: 17, count: count, of: Float.self)
        let xq = LowBit.threadScratch(slot: 18, count: 64 * wordsPerRow, of: Int8.self)
        var input = CKSignI8Input()
        (reference ? ck_sign_i8_prepare_ref : ck_sign_i8_prepare)(x, columns, columnScale, count, wordsPerRow, xt, xq,
                                                                  &input)
        if tables {
            if reference {
                ck_gemv_sign_lut_ref(signs, wordsPerRow, rows, 0, rows, xq, &input, a, b, y)
                return
            }
            let tab = LowBit.threadScratch(slot: 22, count: 512 * wordsPerRow, of: Int8.self)
            ck_sign_lut_tables(xq, wordsPerRow, tab)
            let job = SignTableJob(signs: signs, wordsPerRow: wordsPerRow, rows: rows, xq: xq, tab: tab, input: input,
                                   a: a, b: b, y: y)
            // Chunks of whole 16-row blocks (the kernel's unit; the row-major tail rides with the last).
            Parallel.forEachChunk((rows + 15) / 16, minimumChunk: LowBit.chunk(workPerRow: 16 * 64 * wordsPerRow, atLeast: 1),
                                  context: job) { context, begin, end in
                let j = context!.load(as: SignTableJob.self)
                let first = 16 * begin, last = min(16 * end, j.rows)
                withUnsafePointer(to: j.input) { input in
                    ck_gemv_sign_lut(j.signs, j.wordsPerRow, j.rows, first, last - first, j.xq, j.tab, input, j.a, j.b, j.y)
                }
            }
            return
        }
        if reference {
            ck_gemv_sign_i8_ref(signs, wordsPerRow, 0, rows, xq, &input, a, b, y)
            return
        }
        let job = SignInt8Job(signs: signs, wordsPerRow: wordsPerRow, rows: rows, xq: xq, input: input, a: a, b: b, y: y)
        // Chunks of whole 4-row groups (the kernel's unit), at least 16 rows' work per chunk.
        let groups = (rows + 3) / 4
        Parallel.forEachChunk(groups, minimumChunk: LowBit.chunk(workPerRow: 4 * 64 * wordsPerRow, atLeast: 4),
                              context: job) { context, begin, end in
            let j = context!.load(as: SignInt8Job.self)
            let first = 4 * begin, last = min(4 * end, j.rows)
            withUnsafePointer(to: j.input) { input in
                ck_gemv_sign_i8(j.signs, j.wordsPerRow, first, last - first, j.xq, input, j.a, j.b, j.y)
            }
        }
    }

    private struct SignTableJob {
        let signs: UnsafePointer<UInt64>, wordsPerRow: Int, rows: Int, xq: UnsafePointer<Int8>, tab: UnsafePointer<Int8>
        let input: CKSignI8Input, a: UnsafePointer<Float>, b: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    }

    private struct SignInt8Job {
        let signs: UnsafePointer<UInt64>, wordsPerRow: Int, rows: Int, xq: UnsafePointer<Int8>, input: CKSignI8Input
        let a: UnsafePointer<Float>, b: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
    }
}
