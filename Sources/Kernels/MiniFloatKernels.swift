import CKernels

/// Kernels on minifloat (LLM-FP4) codes: activation rounding onto an FP grid, a GEMV that looks
/// weight codes up in registers, and tile decoding for prefill (see `fp_kernels.h`).
///
/// Codes are sign | exponent | mantissa; `table[code]` is the code's value at bias 0
/// (`FloatingPointFormat.codeValues`), scales are `[rows, groups]`. With `nibbles` the codes are
/// packed two per byte (`LowBit.packNibbles`), else one byte each. The `…Reference` twins are the
/// scalar C loops.
public enum MiniFloat {
    /// `out = ((grid(x / channelScale / alpha))·alpha)·channelScale` element-wise over `rows × columns`
    /// (`channelScale` optional); bit-identical to `FloatingPointFormat.quantize`.
    public static func quantizeRows(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                    channelScales: UnsafePointer<Float>?, alpha: Float,
                                    exponentBits: Int, mantissaBits: Int, into out: UnsafeMutablePointer<Float>) {
        guard rows > 0, columns > 0 else { return }
        let px = SendableConstPointer(x), po = SendablePointer(out)
        let pc = channelScales.map { SendableConstPointer($0) }
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: columns * 4, atLeast: 1)) { r in
            ck_fp_quantize_rows(px.base + r.lowerBound * columns, r.count, columns, pc?.base, alpha,
                                Int32(exponentBits), Int32(mantissaBits), po.base + r.lowerBound * columns)
        }
    }

    /// Scalar twin of `quantizeRows`.
    public static func quantizeRowsReference(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                             channelScales: UnsafePointer<Float>?, alpha: Float,
                                             exponentBits: Int, mantissaBits: Int,
                                             into out: UnsafeMutablePointer<Float>) {
        ck_fp_quantize_rows_ref(x, rows, columns, channelScales, alpha, Int32(exponentBits), Int32(mantissaBits), out)
    }

    /// `y[o] = Σ_g scale[o,g]·Σ_{j∈g} table[code[o,j]]·x[j]` for all `rows` outputs (parallel over rows).
    ///
    /// With `format` (the exponent and mantissa bits `table` was built from, i.e.
    /// `FloatingPointFormat.codeValues`) one-byte codes are decoded from their bits in registers
    /// on AVX-512 instead of gathered from the table (`ck_fp_gemv_f32_fmt`); the values are the same.
    public static func gemv(codes: UnsafePointer<UInt8>, nibbles: Bool, rows: Int, columns: Int, groupSize: Int,
                            table: UnsafePointer<Float>, scales: UnsafePointer<Float>,
                            x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                            format: (exponentBits: Int, mantissaBits: Int)? = nil) {
        guard rows > 0 else { return }
        let pc = SendableConstPointer(codes), pt = SendableConstPointer(table), ps = SendableConstPointer(scales)
        let px = SendableConstPointer(x), py = SendablePointer(y)
        let e = Int32(format?.exponentBits ?? 0), m = Int32(format?.mantissaBits ?? 0)
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: columns, atLeast: 8)) { r in
            ck_fp_gemv_f32_fmt(pc.base, nibbles ? 1 : 0, e, m, r.lowerBound, r.count, columns, groupSize, pt.base,
                               ps.base, px.base, py.base)
        }
    }

    /// Scalar twin of `gemv`.
    public static func gemvReference(codes: UnsafePointer<UInt8>, nibbles: Bool, rows: Int, columns: Int, groupSize: Int,
                                     table: UnsafePointer<Float>, scales: UnsafePointer<Float>,
                                     x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        ck_fp_gemv_f32_ref(codes, nibbles ? 1 : 0, 0, rows, columns, groupSize, table, scales, x, y)
    }

    /// Several input rows: weight rows are decoded a tile at a time into scratch (the float matrix
    /// never exists whole) and each tile is multiplied with one sgemm, as `LowBit.dequantizedProduct`.
    public static func product(codes: UnsafePointer<UInt8>, nibbles: Bool, outFeatures: Int, inFeatures: Int,
                               groupSize: Int, table: UnsafePointer<Float>, scales: UnsafePointer<Float>,
                               x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>) {
        let pc = SendableConstPointer(codes), pt = SendableConstPointer(table), ps = SendableConstPointer(scales)
        LowBit.tiledProduct(outFeatures: outFeatures, inFeatures: inFeatures, x: x, rows: rows, y: y,
                            tileRows: LowBit.defaultTileRows(inFeatures: inFeatures)) { range, tile in
            ck_fp_decode_rows(pc.base, nibbles ? 1 : 0, range.lowerBound, range.count, inFeatures, groupSize,
                              pt.base, ps.base, tile)
        }
    }

    /// Decodes weight rows `rowRange` into `tile` (scalar reference when `reference`).
    public static func decodeRows(codes: UnsafePointer<UInt8>, nibbles: Bool, rowRange: Range<Int>, columns: Int,
                                  groupSize: Int, table: UnsafePointer<Float>, scales: UnsafePointer<Float>,
                                  into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        if reference {
            ck_fp_decode_rows_ref(codes, nibbles ? 1 : 0, rowRange.lowerBound, rowRange.count, columns, groupSize,
                                  table, scales, tile)
        } else {
            ck_fp_decode_rows(codes, nibbles ? 1 : 0, rowRange.lowerBound, rowRange.count, columns, groupSize,
                              table, scales, tile)
        }
    }

    /// `out[r, j] = Q(w[r·ld + j]) − w[r·ld + j]` with each row's own scale (`ck_fp_quantize_error_block`).
    public static func quantizationError(_ w: UnsafePointer<Float>, rows: Int, ld: Int, width: Int,
                                         alphas: UnsafePointer<Float>, exponentBits: Int, mantissaBits: Int,
                                         into out: UnsafeMutablePointer<Float>) {
        ck_fp_quantize_error_block(w, rows, ld, width, alphas, Int32(exponentBits), Int32(mantissaBits), out)
    }

    /// Minifloat activations as exact int8 integers `grid(x / channelScale / alpha)·factor[j]`
    /// (`ck_fp_quantize_rows_i8`), parallel over rows.
    public static func quantizeRowsInt8(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                        channelScales: UnsafePointer<Float>?, alpha: Float, exponentBits: Int,
                                        mantissaBits: Int, factors: UnsafePointer<Float>,
                                        into codes: UnsafeMutablePointer<Int8>) {
        guard rows > 0, columns > 0 else { return }
        let px = SendableConstPointer(x), pf = SendableConstPointer(factors), po = SendablePointer(codes)
        let pc = channelScales.map { SendableConstPointer($0) }
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: columns * 8, atLeast: 1)) { r in
            ck_fp_quantize_rows_i8(px.base + r.lowerBound * columns, r.count, columns, pc?.base, alpha,
                                   Int32(exponentBits), Int32(mantissaBits), pf.base, po.base + r.lowerBound * columns)
        }
    }

    // MARK: FP4 weights × int16 activations

    /// Minifloat activations as exact int16 integers `grid(x / channelScale / alpha)·factor[j]`
    /// (`ck_fp_quantize_rows_i16`), rows of stride `ld` (≥ columns; columns past `columns` are
    /// set to 0), parallel over rows. `reference` runs the scalar twin.
    public static func quantizeRowsInt16(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                         channelScales: UnsafePointer<Float>?, alpha: Float, exponentBits: Int,
                                         mantissaBits: Int, factors: UnsafePointer<Float>,
                                         into codes: UnsafeMutablePointer<Int16>, ld: Int, reference: Bool = false) {
        guard rows > 0, columns > 0 else { return }
        precondition(ld >= columns, "quantizeRowsInt16: row stride \(ld) below \(columns) columns")
        if reference {
            ck_fp_quantize_rows_i16_ref(x, rows, columns, channelScales, alpha, Int32(exponentBits), Int32(mantissaBits),
                                        factors, codes, ld)
            return
        }
        let px = SendableConstPointer(x), pf = SendableConstPointer(factors), po = SendablePointer(codes)
        let pc = channelScales.map { SendableConstPointer($0) }
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: columns * 8, atLeast: 1)) { r in
            ck_fp_quantize_rows_i16(px.base + r.lowerBound * columns, r.count, columns, pc?.base, alpha,
                                    Int32(exponentBits), Int32(mantissaBits), pf.base, po.base + r.lowerBound * ld, ld)
        }
    }

    /// Minifloat activations as split int16 parts (`ck_fp_quantize_rows_i16x2`): the integer
    /// `v = grid(x / channelScale / alpha)·factor[j]` stored as `low + 2^shift·high` with
    /// `high = v·2^−shift` truncated toward zero and `|low| < 2^shift`, for integers past int16
    /// (E3M4 with channel offsets K ≥ 5). Rows of stride `ld`, zero past `columns`; parallel over
    /// rows; `reference` runs the scalar twin.
    public static func quantizeRowsInt16Split(_ x: UnsafePointer<Float>, rows: Int, columns: Int,
                                              channelScales: UnsafePointer<Float>?, alpha: Float, exponentBits: Int,
                                              mantissaBits: Int, factors: UnsafePointer<Float>, shift: Int,
                                              low: UnsafeMutablePointer<Int16>, high: UnsafeMutablePointer<Int16>,
                                              ld: Int, reference: Bool = false) {
        guard rows > 0, columns > 0 else { return }
        precondition(ld >= columns, "quantizeRowsInt16Split: row stride \(ld) below \(columns) columns")
        precondition((0...15).contains(shift), "quantizeRowsInt16Split: shift \(shift) outside 0…15")
        if reference {
            ck_fp_quantize_rows_i16x2_ref(x, rows, columns, channelScales, alpha, Int32(exponentBits),
                                          Int32(mantissaBits), factors, Int32(shift), low, high, ld)
            return
        }
        let px = SendableConstPointer(x), pf = SendableConstPointer(factors)
        let pl = SendablePointer(low), ph = SendablePointer(high)
        let pc = channelScales.map { SendableConstPointer($0) }
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: columns * 8, atLeast: 1)) { r in
            ck_fp_quantize_rows_i16x2(px.base + r.lowerBound * columns, r.count, columns, pc?.base, alpha,
                                      Int32(exponentBits), Int32(mantissaBits), pf.base, Int32(shift),
                                      pl.base + r.lowerBound * ld, ph.base + r.lowerBound * ld, ld)
        }
    }

    /// The high parts of split int16 activations (`quantizeRowsInt16Split`) for the int16
    /// products: same stride as the low parts, which the products take as `activations`.
    public struct HighParts {
        public var values: UnsafePointer<Int16>
        /// The low parts hold `v mod 2^shift`; the weights meet `values` as `t·2^shift`.
        public var shift: Int
        public init(_ values: UnsafePointer<Int16>, shift: Int) {
            self.values = values
            self.shift = shift
        }
    }

    /// How `fp4Int16Product` multiplies.
    public enum Int16Kernel: Sendable {
        /// Panels of expanded weight rows × all activation rows (prefill).
        case gemm
        /// Codes read in place, one activation row after another (decode).
        case gemv
        /// The scalar twin of both.
        case reference
    }

    /// `y[i·ldy + o] = Σ_g scale[o, g]·(float)Σ_{j∈g} table[code(o, j)]·a[i, j]` for `m` int16
    /// activation rows (stride `lda`, even, zero past `columns`) and all `rows` outputs: FP4 nibble
    /// codes (`LowBit.packNibbles`), `table` the 16 weight integers, group sums exact in int32
    /// (the caller checks the bound). Parallel over output rows; every kernel gives the reference's
    /// bits. `groupSize` must be even or cover the row. With `high` the activations are split
    /// (`quantizeRowsInt16Split`): `a` holds the low parts and `a[i, j]` above means
    /// `low + 2^shift·high`; the caller also checks `|t|·2^shift ≤ 32767`.
    public static func fp4Int16Product(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int,
                                       table: UnsafePointer<Int8>, scales: UnsafePointer<Float>,
                                       activations a: UnsafePointer<Int16>, high: HighParts? = nil, lda: Int, m: Int,
                                       y: UnsafeMutablePointer<Float>, ldy: Int, kernel: Int16Kernel) {
        guard rows > 0, m > 0 else { return }
        let pc = SendableConstPointer(codes), pt = SendableConstPointer(table), ps = SendableConstPointer(scales)
        let pa = SendableConstPointer(a), py = SendablePointer(y)
        let ph = high.map { SendableConstPointer($0.values) }, shift = Int32(high?.shift ?? 0)
        switch kernel {
        case .reference:
            ck_fp4_gemm_i16x2_ref(codes, 0, rows, columns, groupSize, table, scales, a, high?.values, shift, lda, m, y, ldy)
        case .gemv:
            Parallel.forEachChunk(rows, minimumChunk: max(4, LowBit.chunk(workPerRow: m * columns, atLeast: 8)) / 4 * 4) { r in
                ck_fp4_gemv_i16x2(pc.base, r.lowerBound, r.count, columns, groupSize, pt.base, ps.base, pa.base, ph?.base,
                                  shift, lda, m, py.base, ldy)
            }
        case .gemm:
            // Whole 32-row panels per task (the AVX-512 panel height; two AVX2 panels).
            let blocks = (rows + 31) / 32
            Parallel.forEachChunk(blocks, minimumChunk: max(1, LowBit.chunk(workPerRow: 32 * m * columns, atLeast: 1))) { b in
                let r0 = b.lowerBound * 32, r1 = min(rows, b.upperBound * 32)
                ck_fp4_gemm_i16x2(pc.base, r0, r1 - r0, columns, groupSize, pt.base, ps.base, pa.base, ph?.base, shift,
                                  lda, m, py.base, ldy)
            }
        }
    }

    /// One-byte minifloat weight codes (FP8, `[rows, columns]`) through `table` (256 int16 weight
    /// integers) against int16 activations by the panel GEMM (`ck_fp8_gemm_i16`): exact int32 sums
    /// over `sumLength` columns (the group, or an even divisor of it, chosen by the caller so no
    /// sum can leave int32), each scaled by its group's scale, in order. Parallel over output rows;
    /// `reference` runs the scalar twin (same bits).
    public static func fp8Int16Product(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int,
                                       sumLength: Int, table: UnsafePointer<Int16>, scales: UnsafePointer<Float>,
                                       activations a: UnsafePointer<Int16>, high: HighParts? = nil, lda: Int, m: Int,
                                       y: UnsafeMutablePointer<Float>, ldy: Int, reference: Bool = false) {
        guard rows > 0, m > 0 else { return }
        let shift = Int32(high?.shift ?? 0)
        if reference {
            ck_fp8_gemm_i16x2_ref(codes, 0, rows, columns, groupSize, sumLength, table, scales, a, high?.values, shift,
                                  lda, m, y, ldy)
            return
        }
        let pc = SendableConstPointer(codes), pt = SendableConstPointer(table), ps = SendableConstPointer(scales)
        let pa = SendableConstPointer(a), py = SendablePointer(y), ph = high.map { SendableConstPointer($0.values) }
        let blocks = (rows + 31) / 32
        Parallel.forEachChunk(blocks, minimumChunk: max(1, LowBit.chunk(workPerRow: 32 * m * columns, atLeast: 1))) { b in
            let r0 = b.lowerBound * 32, r1 = min(rows, b.upperBound * 32)
            ck_fp8_gemm_i16x2(pc.base, r0, r1 - r0, columns, groupSize, sumLength, pt.base, ps.base, pa.base, ph?.base,
                              shift, lda, m, py.base, ldy)
        }
    }
    /// Whether `fp8Int16Gemv` has its fast kernel here (AVX-512 VNNI + BW) for byte codes with
    /// `magnitudeBits` (exponent + mantissa bits, ≤ 7); elsewhere callers keep the float GEMV.
    public static func fp8Int16GemvAvailable(magnitudeBits: Int) -> Bool {
        ck_fp8_gemv_i16_available(Int32(magnitudeBits)) != 0
    }

    /// The FP8 decode GEMV (`ck_fp8_gemv_i16`): byte codes read in place, the magnitudes' weight
    /// integers looked up in registers, int16 activations (optionally split, `high`); the same
    /// bits as `fp8Int16Product(…, reference: true)`. Parallel over output rows.
    public static func fp8Int16Gemv(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int,
                                    sumLength: Int, magnitudeBits: Int, table: UnsafePointer<Int16>,
                                    scales: UnsafePointer<Float>, activations a: UnsafePointer<Int16>,
                                    high: HighParts? = nil, lda: Int, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int) {
        guard rows > 0, m > 0 else { return }
        // A context struct and a C body, not a closure: no allocation per call (decode path).
        let job = Fp8GemvJob(codes: codes, columns: columns, groupSize: groupSize, sumLength: sumLength,
                             magnitudeBits: Int32(magnitudeBits), table: table, scales: scales, a: a,
                             high: high?.values, shift: Int32(high?.shift ?? 0), lda: lda, m: m, y: y, ldy: ldy)
        Parallel.forEachChunk(rows, minimumChunk: LowBit.chunk(workPerRow: m * columns, atLeast: 8), context: job) { context, begin, end in
            let j = context!.load(as: Fp8GemvJob.self)
            ck_fp8_gemv_i16(j.codes, begin, end - begin, j.columns, j.groupSize, j.sumLength, j.magnitudeBits, j.table,
                            j.scales, j.a, j.high, j.shift, j.lda, j.m, j.y, j.ldy)
        }
    }

    /// Whether `fp8Int16Gemv` runs its magnitude-byte form (`vpermt2b` + `vpdpbusd`) for
    /// `table` here: AVX-512 VBMI + VNNI + BW, every |weight integer| ≤ 255, the switch on.
    public static func fp8ByteGemvRuns(magnitudeBits: Int, table: UnsafePointer<Int16>) -> Bool {
        ck_fp8_gemv_i16_bytes(Int32(magnitudeBits), table) != 0
    }

    /// Turns the magnitude-byte form of `fp8Int16Gemv` (E2M5/E2M3 weights: `vpermt2b` + `vpdpbusd`)
    /// on or off, for tests and A/B runs against the int16 form; on by default unless
    /// `PTQ_FP8_BYTE_GEMV=0`. Both forms give the same bits.
    static func setFP8ByteGemvEnabled(_ enabled: Bool) { ck_set_fp8_byte_gemv_enabled(enabled ? 1 : 0) }

    private struct Fp8GemvJob {
        let codes: UnsafePointer<UInt8>, columns: Int, groupSize: Int, sumLength: Int, magnitudeBits: Int32
        let table: UnsafePointer<Int16>, scales: UnsafePointer<Float>, a: UnsafePointer<Int16>
        let high: UnsafePointer<Int16>?, shift: Int32, lda: Int, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int
    }
    // MARK: FP4 weights × byte-plane activations (decode on int8 VNNI)

    /// FP4 weight codes repacked for `fp4ByteGemv`: 16-row blocks whose int32 lanes each hold one
    /// weight row (fp_kernels.h, `ck_fp4_u8_pack`), the group scales in the same block order, and
    /// the weight integers offset to unsigned bytes `t + offset`. A run-time layout built once at
    /// load; the file keeps the plain nibble codes.
    public struct FP4ByteLayout: Sendable {
        public let rows: Int
        public let columns: Int
        public let groupSize: Int
        /// Signed bytes per activation integer: 2 holds −32768…32639, 3 up to ±8,355,711.
        public let planes: Int
        /// c = the table's largest |t|; the unsigned weight bytes are t + c.
        public let offset: Int
        let packed: [UInt8]
        let scales: [Float]
        let table: [UInt8]

        /// Bytes held (codes and scales).
        public var bytes: Int { packed.count + scales.count * 4 + table.count }

        /// The layout for `rows`×`columns` nibble codes (row stride (columns+1)/2) with the
        /// weight-integer table `table` (16 entries) and `rows`×G scales; nil when the shape or
        /// the integers do not fit (`fp4ByteGemvSupports`, |t| ≤ 127, planes 2 or 3).
        public init?(codes: UnsafePointer<UInt8>, rows: Int, columns: Int, groupSize: Int, table: [Int8],
                     scales: UnsafePointer<Float>, planes: Int) {
            let g = min(groupSize, columns)
            guard rows > 0, table.count == 16, planes == 2 || planes == 3,
                  MiniFloat.fp4ByteGemvSupports(columns: columns, groupSize: g) else { return nil }
            let c = table.map { abs(Int($0)) }.max() ?? 0
            guard c <= 127 else { return nil }
            self.rows = rows
            self.columns = columns
            self.groupSize = g
            self.planes = planes
            offset = c
            self.table = table.map { UInt8(Int($0) + c) }
            var packedScales = [Float](repeating: 0, count: ck_fp4_u8_packed_scales(rows, columns, g))
            var packedCodes = [UInt8](repeating: 0, count: ck_fp4_u8_packed_bytes(rows, columns))
            packedCodes.withUnsafeMutableBufferPointer { pc in
                packedScales.withUnsafeMutableBufferPointer { ps in
                    ck_fp4_u8_pack(codes, rows, columns, g, scales, pc.baseAddress!, ps.baseAddress!)
                }
            }
            packed = packedCodes
            self.scales = packedScales
        }
    }

    /// `fp4Int16Product(…, kernel: .gemm)` on the layout's codes and scales (the prefill GEMM of a
    /// layer whose only copy of the codes is the layout): the panels are built from the layout,
    /// the same panel words, so the same bits as `.reference` on the nibble codes. `table` holds
    /// the 16 signed weight integers. Parallel over 32-row panels; `reference` runs the scalar twin.
    public static func fp4Int16Product(_ layout: FP4ByteLayout, table: UnsafePointer<Int8>,
                                       activations a: UnsafePointer<Int16>, high: HighParts? = nil, lda: Int, m: Int,
                                       y: UnsafeMutablePointer<Float>, ldy: Int, reference: Bool = false) {
        guard layout.rows > 0, m > 0 else { return }
        let shift = Int32(high?.shift ?? 0), (rows, k, g) = (layout.rows, layout.columns, layout.groupSize)
        layout.packed.withUnsafeBufferPointer { pc in
            layout.scales.withUnsafeBufferPointer { ps in
                if reference {
                    ck_fp4_gemm_i16x2_u8_ref(pc.baseAddress!, ps.baseAddress!, 0, rows, k, g, table, a, high?.values,
                                             shift, lda, m, y, ldy)
                    return
                }
                let c = SendableConstPointer(pc.baseAddress!), s = SendableConstPointer(ps.baseAddress!)
                let pt = SendableConstPointer(table), pa = SendableConstPointer(a), py = SendablePointer(y)
                let ph = high.map { SendableConstPointer($0.values) }
                // Whole 32-row panels per task (two 16-row blocks of the layout).
                let blocks = (rows + 31) / 32
                Parallel.forEachChunk(blocks, minimumChunk: max(1, LowBit.chunk(workPerRow: 32 * m * k, atLeast: 1))) { b in
                    let r0 = b.lowerBound * 32, r1 = min(rows, b.upperBound * 32)
                    ck_fp4_gemm_i16x2_u8(c.base, s.base, r0, r1 - r0, k, g, pt.base, pa.base, ph?.base, shift, lda, m,
                                         py.base, ldy)
                }
            }
        }
    }

    /// Decodes rows `rowRange` of the layout into `tile[rowRange.count, columns]`:
    /// `scale · table[code]`, `decodeRows`' product on the nibble codes (same bits). `table`: the
    /// format's 16 values. Single-threaded; `reference` runs the scalar twin.
    public static func decodeRows(_ layout: FP4ByteLayout, rowRange: Range<Int>, table: UnsafePointer<Float>,
                                  into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        precondition(rowRange.lowerBound >= 0 && rowRange.upperBound <= layout.rows, "rows \(rowRange) of \(layout.rows)")
        layout.packed.withUnsafeBufferPointer { pc in
            layout.scales.withUnsafeBufferPointer { ps in
                if reference {
                    ck_fp4_u8_decode_rows_ref(pc.baseAddress!, ps.baseAddress!, rowRange.lowerBound, rowRange.count,
                                              layout.columns, layout.groupSize, table, tile)
                } else {
                    ck_fp4_u8_decode_rows(pc.baseAddress!, ps.baseAddress!, rowRange.lowerBound, rowRange.count,
                                          layout.columns, layout.groupSize, table, tile)
                }
            }
        }
    }

    /// `product` on the layout: tiles decoded from it (`decodeRows(_:rowRange:table:into:)`) and
    /// multiplied with sgemm (`LowBit.tiledProduct`).
    public static func product(_ layout: FP4ByteLayout, table: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Int,
                               y: UnsafeMutablePointer<Float>) {
        let pt = SendableConstPointer(table)
        LowBit.tiledProduct(outFeatures: layout.rows, inFeatures: layout.columns, x: x, rows: rows, y: y,
                            tileRows: LowBit.defaultTileRows(inFeatures: layout.columns)) { range, tile in
            decodeRows(layout, rowRange: range, table: pt.base, into: tile)
        }
    }

    /// Whether this CPU runs `fp4ByteGemv` (AVX-512 VNNI + BW, and VNNI not switched off by
    /// `TokenKernels.setVNNIEnabled`); elsewhere callers keep the int16 GEMV. Asked each time, as
    /// the switch can change (tests, `ptq bench --kernels`).
    public static var fp4ByteGemvAvailable: Bool { ck_fp4_gemv_u8_available() != 0 }

    /// Columns and group size multiples of 8 (a group is whole runs of the packed layout).
    public static func fp4ByteGemvSupports(columns: Int, groupSize: Int) -> Bool {
        columns > 0 && groupSize > 0 && ck_fp4_u8_shape_ok(columns, min(groupSize, columns)) != 0
    }

    /// y[i·ldy + o] for the `m` int16 activation rows `a` (stride `lda`; with `high` the split
    /// form lo + 2^shift·hi): each row split into the layout's signed byte planes once, then the
    /// 16-row blocks shared out over the pool. Bit for bit `fp4Int16Product(…, kernel: .reference)`
    /// on the original codes whenever every group's exact sum fits int32 (the caller's load-time
    /// proof, as for the int16 kernels) and every activation integer fits the planes.
    public static func fp4ByteGemv(_ layout: FP4ByteLayout, activations a: UnsafePointer<Int16>, high: HighParts? = nil,
                                   lda: Int, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int,
                                   reference: Bool = false) {
        guard m > 0 else { return }
        let k = layout.columns, groups = (k + layout.groupSize - 1) / layout.groupSize
        // One scratch slot of the calling thread: the planes, then (64-byte aligned) the corrections.
        let planeBytes = (layout.planes * k + 63) & ~63
        let scratch = LowBit.threadScratch(slot: 9, count: planeBytes + 4 * groups, of: UInt8.self)
        let planes = UnsafeMutableRawPointer(scratch).bindMemory(to: Int8.self, capacity: layout.planes * k)
        let corrections = UnsafeMutableRawPointer(scratch + planeBytes).bindMemory(to: Int32.self, capacity: groups)
        let shift = Int32(high?.shift ?? 0), blocks = (layout.rows + 15) / 16
        layout.packed.withUnsafeBufferPointer { pc in
            layout.scales.withUnsafeBufferPointer { ps in
                layout.table.withUnsafeBufferPointer { pt in
                    let c = SendableConstPointer(pc.baseAddress!), s = SendableConstPointer(ps.baseAddress!)
                    let t = SendableConstPointer(pt.baseAddress!)
                    let pp = SendableConstPointer(UnsafePointer(planes))
                    let pr = SendableConstPointer(UnsafePointer(corrections))
                    for i in 0..<m {
                        let hi = high.map { $0.values + i * lda }
                        if reference {
                            ck_fp4_u8_activations_ref(a + i * lda, hi, shift, k, layout.groupSize, Int32(layout.planes),
                                                      Int32(layout.offset), planes, corrections)
                            ck_fp4_gemv_u8_ref(c.base, s.base, 0, blocks, layout.rows, k, layout.groupSize, t.base,
                                               pp.base, Int32(layout.planes), pr.base, y + i * ldy)
                            continue
                        }
                        ck_fp4_u8_activations(a + i * lda, hi, shift, k, layout.groupSize, Int32(layout.planes),
                                              Int32(layout.offset), planes, corrections)
                        // A context struct and a C body, not a closure: no allocation per call.
                        let job = Fp4ByteGemvJob(codes: c.base, scales: s.base, rows: layout.rows, k: k,
                                                 groupSize: layout.groupSize, table: t.base, planes: pp.base,
                                                 planeCount: Int32(layout.planes), corrections: pr.base, y: y + i * ldy)
                        Parallel.forEachChunk(blocks, minimumChunk: LowBit.chunk(workPerRow: 16 * k, atLeast: 1),
                                              context: job) { context, begin, end in
                            let j = context!.load(as: Fp4ByteGemvJob.self)
                            ck_fp4_gemv_u8(j.codes, j.scales, begin, end - begin, j.rows, j.k, j.groupSize, j.table,
                                           j.planes, j.planeCount, j.corrections, j.y)
                        }
                    }
                }
            }
        }
    }
}

extension MiniFloat {
    fileprivate struct Fp4ByteGemvJob {
        let codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, rows: Int, k: Int, groupSize: Int
        let table: UnsafePointer<UInt8>, planes: UnsafePointer<Int8>, planeCount: Int32
        let corrections: UnsafePointer<Int32>, y: UnsafeMutablePointer<Float>
    }
}
