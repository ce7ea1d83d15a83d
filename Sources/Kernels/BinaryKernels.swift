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
    /// A column-masked binary layer's decode operands on planes (PTQ1.61 on AVX-512): the sign
    /// planes over its binarized columns, the salient columns' u4 planes (one group per row),
    /// the column lists and r2, and the row affine `a`, `b`. `rowPlanes` runs one row through
    /// one or more of them (layers that read the same input) as one pool job. A class: the decode
    /// row borrows its arrays instead of retaining each one per call.
    public final class ColumnMaskedPlanes: Sendable {
        /// Sign bits over the binarized columns (rows × binarized columns).
        public let signs: SignPlaneLayout
        /// Salient codes (rows × salient columns, one group per row); nil without salient columns.
        public let salient: LowBit.PlaneLayout?
        /// Binarized columns (natural indices) in sign-bit order, and r2 in the same order.
        public let binaryColumns: [Int32]
        public let columnScale: [Float]
        /// Salient columns (natural indices) in code order; empty without salient planes.
        public let salientColumns: [Int32]
        /// Per row: the signs' scale and offset, `y = a ∘ (S x̃) + b · Σx̃`.
        public let a: [Float], b: [Float]

        /// Wraps a layer's layouts and parameters (the arrays are shared, not copied); the sizes
        /// must agree (a precondition names the mismatch).
        public init(signs: SignPlaneLayout, salient: LowBit.PlaneLayout?, binaryColumns: [Int], columnScale: [Float],
                    salientColumns: [Int], a: [Float], b: [Float]) {
            precondition(binaryColumns.count == signs.columns && columnScale.count == signs.columns
                         && a.count == signs.rows && b.count == signs.rows,
                         "ColumnMaskedPlanes: \(binaryColumns.count) binarized columns, \(columnScale.count) r2, "
                         + "\(a.count)/\(b.count) a/b for \(signs.rows)×\(signs.columns) sign planes")
            precondition(salient.map { $0.rows == signs.rows && $0.columns == salientColumns.count
                                       && $0.groupSize == $0.columns } ?? salientColumns.isEmpty,
                         "ColumnMaskedPlanes: salient planes do not match \(salientColumns.count) salient columns")
            self.signs = signs
            self.salient = salient
            self.binaryColumns = binaryColumns.map { Int32($0) }
            self.columnScale = columnScale
            self.salientColumns = salientColumns.map { Int32($0) }
            self.a = a
            self.b = b
        }

        var rows: Int { signs.rows }
        var signTableCount: Int { signs.quads * 16 }
        var salientTableCount: Int { salient.map { $0.quads * 16 } ?? 0 }

        /// Calls `body` with the C part (tables and sums still unset) while the arrays are pinned.
        fileprivate func withPart<R>(y: UnsafeMutablePointer<Float>, _ body: (ck_binary_planes_part) -> R) -> R {
            signs.planes.withUnsafeBufferPointer { sp in
            a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                var part = ck_binary_planes_part()
                part.sign_planes = sp.baseAddress
                part.a = ap.baseAddress
                part.b = bp.baseAddress
                part.rows = rows
                part.nb = signs.columns
                part.y = y
                guard let salient else { return body(part) }
                return salient.planes.withUnsafeBufferPointer { qp in
                salient.blockScales.withUnsafeBufferPointer { sc in
                salient.blockZeros.withUnsafeBufferPointer { zp in
                    part.salient_planes = qp.baseAddress
                    part.salient_scales = sc.baseAddress
                    part.salient_zeros = zp.baseAddress
                    part.ns = salient.columns
                    return body(part)
                }}}
            }}}
        }

        /// Builds this part's tables at `tables` (sign tables, then salient tables unless
        /// `salientFrom` supplies them) and fills them in.
        fileprivate func fillTables(_ part: inout ck_binary_planes_part, x: UnsafePointer<Float>,
                                    tables: UnsafeMutablePointer<Float>, salientFrom shared: ck_binary_planes_part?,
                                    reference: Bool) {
            let salientTables = shared == nil && salient != nil ? tables + signTableCount : nil
            var xSum: Float = 0, salientSum: Float = 0
            binaryColumns.withUnsafeBufferPointer { bc in
            columnScale.withUnsafeBufferPointer { r2 in
            salientColumns.withUnsafeBufferPointer { sc in
                (reference ? ck_binary_plane_tables_ref : ck_binary_plane_tables)(
                    x, bc.baseAddress, r2.baseAddress, bc.count, sc.baseAddress, sc.count, tables, &xSum,
                    salientTables, &salientSum)
            }}}
            part.sign_tables = UnsafePointer(tables)
            part.x_sum = xSum
            if let shared {
                part.salient_tables = shared.salient_tables
                part.salient_sum = shared.salient_sum
            } else if let salientTables {
                part.salient_tables = UnsafePointer(salientTables)
                part.salient_sum = salientSum
            }
        }

        /// Whether `other` reads the same salient inputs (its salient tables can be this one's).
        func sharesSalientColumns(with other: ColumnMaskedPlanes) -> Bool {
            salient != nil && other.salient != nil && salientColumns == other.salientColumns
        }
    }

    /// 1…3 column-masked layers that read the same input (q/k/v, gate/up, or one layer), for
    /// `rowPlanes`: which of them reuse the first layer's salient tables (PTQ1.61 gives q/k/v
    /// and gate/up the same salient columns) and the tables' size, worked out once.
    public struct PlanesGroup: Sendable {
        /// The layers, in output order.
        public let layers: [ColumnMaskedPlanes]
        /// Per layer: its salient inputs are layer 0's, so it reads layer 0's salient tables.
        public let sharesSalient: [Bool]
        /// Floats of all tables of one call.
        let tableCount: Int
        /// Work per 16-row block for the pool split (salient columns weigh 4: four planes).
        let blockWork: Int

        /// Groups 1…3 layers of one input width (a precondition checks the count).
        public init(_ layers: [ColumnMaskedPlanes]) {
            precondition((1...3).contains(layers.count), "PlanesGroup: 1…3 layers, got \(layers.count)")
            self.layers = layers
            let shares = layers.indices.map { $0 > 0 && layers[$0].sharesSalientColumns(with: layers[0]) }
            sharesSalient = shares
            tableCount = layers.indices.reduce(0) {
                $0 + layers[$1].signTableCount + (shares[$1] ? 0 : layers[$1].salientTableCount)
            }
            blockWork = layers.reduce(0) { $0 + 16 * ($1.signs.columns + 4 * ($1.salient?.columns ?? 0)) } / layers.count
        }
    }

    /// One activation row `x` through every layer of `group` (all read it), `y = a ∘ (S x̃) +
    /// b · Σx̃ + Δ ∘ (Q x_s − z · Σx_s)` each into its own output: the tables of all layers built
    /// in one pass on the calling thread (the shared salient tables once), then ONE pool job
    /// over all the layers' 16-row blocks (`ck_binary_planes_rows`). Bit for bit `gemvPlanes` on
    /// r2 ∘ x plus `LowBit.gemvPlanes` on x_s; `reference` runs the scalar twins on the calling
    /// thread (tests). Allocates nothing (decode path).
    public static func rowPlanes(_ group: PlanesGroup, x: UnsafePointer<Float>, into first: UnsafeMutablePointer<Float>,
                                 _ second: UnsafeMutablePointer<Float>? = nil, _ third: UnsafeMutablePointer<Float>? = nil,
                                 reference: Bool = false) {
        let layers = group.layers
        precondition((second != nil) == (layers.count > 1) && (third != nil) == (layers.count > 2),
                     "rowPlanes: one output per layer")
        // Slot 2: transient, as in gemvPlanes (nothing else runs inside this call).
        let tables = LowBit.threadScratch(slot: 2, count: group.tableCount, of: Float.self)
        withUnsafeTemporaryAllocation(of: ck_binary_planes_part.self, capacity: layers.count) { parts in
            func output(_ i: Int) -> UnsafeMutablePointer<Float> { i == 0 ? first : i == 1 ? second! : third! }
            // Layer by layer, each inside its arrays' pinned pointers; the job runs innermost.
            func run(_ i: Int, offset: Int) {
                guard i < layers.count else {
                    let blocks = ck_binary_planes_blocks(parts.baseAddress, parts.count)
                    if reference {
                        ck_binary_planes_rows_ref(parts.baseAddress, parts.count, 0, blocks)
                        return
                    }
                    let job = RowPlanesJob(parts: UnsafePointer(parts.baseAddress!), count: parts.count)
                    Parallel.forEachChunk(blocks, minimumChunk: LowBit.chunk(workPerRow: group.blockWork, atLeast: 1),
                                          context: job) { context, begin, end in
                        let j = context!.load(as: RowPlanesJob.self)
                        ck_binary_planes_rows(j.parts, j.count, begin, end - begin)
                    }
                    return
                }
                let layer = layers[i], shared = group.sharesSalient[i]
                layer.withPart(y: output(i)) { part in
                    var part = part
                    layer.fillTables(&part, x: x, tables: tables + offset, salientFrom: shared ? parts[0] : nil,
                                     reference: reference)
                    parts.initializeElement(at: i, to: part)
                    run(i + 1, offset: offset + layer.signTableCount + (shared ? 0 : layer.salientTableCount))
                }
            }
            run(0, offset: 0)
        }
    }

    private struct RowPlanesJob {
        let parts: UnsafePointer<ck_binary_planes_part>, count: Int
    }
}
