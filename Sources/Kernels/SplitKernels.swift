import CKernels

/// Weight-only kernels of the SplitQuant format (`split_kernels.h`): per-weight indices
/// `cluster << bits | code` (for bits ≤ 4 packed as 5-bit fields code | cluster bit 0 plus
/// cluster-bit-1 masks, 0.75 bytes per weight; one
/// byte for 5–6, two for 7–8), scales and zero points
/// `[rows, groups, 3]`. Each row/group builds a 3·2^bits-entry value table and the kernels look
/// the indices up in it, so the layer runs in one pass over its codes with no float copy of the
/// weight matrix. The `…Reference` twins are the scalar C loops the fast paths are tested
/// against.
public enum SplitKernels {
    /// Per-weight index storage.
    public enum Indices: Sendable {
        /// One byte `cluster << bits | code` per weight (bits ≤ 6).
        case bytes([UInt8])
        /// Two bytes per weight (bits 7…8).
        case halfwords([UInt16])
        /// Codes of 2…4 bits packed with their cluster ids, 72 bytes per 96 weights of a row (six
        /// 5-bit fields code | cluster bit 0 per 32-bit word, cluster bit 1 in mask planes;
        /// `split_kernels.h`, `pack4`): 0.75 bytes per weight, what decode reads.
        case packed4([UInt8])

        /// Bytes held.
        public var byteCount: Int {
            switch self {
            case .bytes(let a): a.count
            case .halfwords(let a): 2 * a.count
            case .packed4(let a): a.count
            }
        }
    }

    /// Largest code width the packed 4-bit layout holds.
    public static let maxPackedBits = 4

    /// Whether layers of ≤ 4-bit codes should hold the `.packed4` layout: where the CPU runs its
    /// AVX-512 kernel (in-register tables, faster than the byte indices and 25 % fewer bytes).
    /// On AVX2 alone, expanding the cluster planes costs more than the bytes it saves (measured in
    /// docs/RESULTS.md), so layers keep one index byte per weight there.
    public static var prefersPacked4: Bool { ck_cpu_has_avx512vnni() != 0 }

    /// Packs `rows × columns` cluster ids (0…2) and codes (< 16) into the `.packed4` layout; the
    /// ids and codes must be valid (`checkedPack4` reports the first invalid element instead).
    public static func pack4(clusters: [UInt8], codes: [UInt8], rows: Int, columns: Int) -> Indices {
        let (indices, firstInvalid) = checkedPack4(clusters: clusters, codes: codes, rows: rows, columns: columns,
                                                   bits: maxPackedBits)
        precondition(firstInvalid == nil, "split pack4: invalid cluster id or code at element \(firstInvalid!)")
        return indices
    }

    /// Packs `rows × columns` cluster ids and codes of `bits` ≤ 4 bits into the `.packed4` layout
    /// in one pass (`ck_split_pack_p4`), checking them on the way: `firstInvalid` is the first
    /// element whose cluster id is not 0…2 or whose code does not fit `bits` bits (the indices are
    /// then unusable), nil when all are valid. This is the load-time transform of every ≤ 4-bit
    /// SplitQuant layer on AVX-512 hosts.
    public static func checkedPack4(clusters: [UInt8], codes: [UInt8], rows: Int, columns: Int,
                                    bits: Int) -> (indices: Indices, firstInvalid: Int?) {
        precondition(clusters.count == rows * columns && codes.count == rows * columns)
        precondition((1...maxPackedBits).contains(bits))
        var checked = rows * columns
        // Every byte is written by the kernel (padding included), so no zero fill is needed.
        let out = [UInt8](unsafeUninitializedCapacity: rows * ck_split_p4_row_bytes(columns)) { o, initialized in
            clusters.withUnsafeBufferPointer { c in
                codes.withUnsafeBufferPointer { q in
                    if let ob = o.baseAddress, let cb = c.baseAddress, let qb = q.baseAddress {
                        checked = ck_split_pack_p4(cb, qb, rows, columns, Int32(bits), ob)
                    }
                }
            }
            initialized = o.count
        }
        return (.packed4(out), checked < rows * columns ? checked : nil)
    }

    /// The scalar reference of the `.packed4` transform (`ck_split_pack_p4_ref`, the loop used
    /// until issue 13), for tests: ids and codes are masked to 2 and 4 bits, not checked.
    public static func pack4Reference(clusters: [UInt8], codes: [UInt8], rows: Int, columns: Int) -> Indices {
        precondition(clusters.count == rows * columns && codes.count == rows * columns)
        var out = [UInt8](repeating: 0, count: rows * ck_split_p4_row_bytes(columns))
        out.withUnsafeMutableBufferPointer { o in
            clusters.withUnsafeBufferPointer { c in
                codes.withUnsafeBufferPointer { q in
                    if let ob = o.baseAddress, let cb = c.baseAddress, let qb = q.baseAddress {
                        ck_split_pack_p4_ref(cb, qb, rows, columns, ob)
                    }
                }
            }
        }
        return .packed4(out)
    }

    /// Largest code width whose indices fit in one byte (3 << 6 ≤ 255).
    public static let maxByteIndexBits = 6

    /// `y[o] = Σ_j T_{o,g(j)}[idx[o, j]]·x[j]` for every output row (parallel over rows).
    ///
    /// The `.packed4` layout runs the bf16 decode GEMV (`ck_split_gemv_p4_bf16`: table entries
    /// and x rounded to bf16, exact products, fp32 sums) while `LowBit.bf16Decode` is on and the
    /// CPU and grouping allow it (`usesBF16Decode`); `reference` runs the float32 twin.
    public static func gemv(_ indices: Indices, rows: Int, columns: Int, groupSize: Int, bits: Int,
                            scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                            x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, reference: Bool = false) {
        guard rows > 0 else { return }
        withIndices(indices) { p8, p16, p4 in
            // x rounded to bf16 once per call, on the calling thread; the row chunks share it.
            var xb: UnsafePointer<UInt16>?
            if p4 != nil, !reference, usesBF16Decode(columns: columns, groupSize: groupSize, bits: bits) {
                let buffer = LowBit.threadScratch(slot: bf16InputSlot, count: ck_split_x_bf16_count(columns),
                                                  of: UInt16.self)
                ck_split_x_bf16(x, columns, buffer)
                xb = UnsafePointer(buffer)
            }
            // A context struct and a C body, not a closure: no allocation per call (decode path).
            let job = SplitGemvJob(p8: p8?.base, p16: p16?.base, p4: p4?.base, columns: columns, groupSize: groupSize,
                                   bits: Int32(bits), scales: scales, zeros: zeros, x: x, xb: xb, y: y,
                                   reference: reference)
            Parallel.forEachChunk(rows, minimumChunk: reference ? rows : LowBit.chunk(workPerRow: 2 * columns, atLeast: 8),
                                  context: job) { context, begin, end in
                let j = context!.load(as: SplitGemvJob.self)
                if let p4 = j.p4 {
                    if let xb = j.xb {
                        ck_split_gemv_p4_bf16(p4, begin, end - begin, j.columns, j.groupSize, j.bits, j.scales, j.zeros,
                                              j.x, xb, j.y)
                    } else {
                        (j.reference ? ck_split_gemv_p4_ref : ck_split_gemv_p4)(
                            p4, begin, end - begin, j.columns, j.groupSize, j.bits, j.scales, j.zeros, j.x, j.y)
                    }
                } else if let p8 = j.p8 {
                    (j.reference ? ck_split_gemv_u8_ref : ck_split_gemv_u8)(
                        p8, begin, end - begin, j.columns, j.groupSize, j.bits, j.scales, j.zeros, j.x, j.y)
                } else if let p16 = j.p16 {
                    (j.reference ? ck_split_gemv_u16_ref : ck_split_gemv_u16)(
                        p16, begin, end - begin, j.columns, j.groupSize, j.bits, j.scales, j.zeros, j.x, j.y)
                }
            }
        }
    }

    /// Scratch slot of the bf16 copy of x (`ck_thread_scratch`; slot 23 is this file's).
    static let bf16InputSlot = 23

    /// Whether a `.packed4` layer of this shape decodes with the bf16 GEMV: `LowBit.bf16Decode`
    /// (or the task's `LowBit.bf16DecodeOverride`) on, AVX512_BF16 + VBMI + BMI2, and groups of
    /// a multiple of 32 columns (or one per row).
    public static func usesBF16Decode(columns: Int, groupSize: Int, bits: Int) -> Bool {
        LowBit.decodesInBF16 && ck_split_p4_bf16_supported(columns, groupSize, Int32(bits)) != 0
    }

    /// The bf16 decode GEMV's scalar twin on the `.packed4` layout (`ck_split_gemv_p4_bf16_ref`,
    /// bit for bit the kernel's result), for tests; groups must be a multiple of 32 columns or
    /// one per row.
    public static func gemvBF16Reference(_ indices: Indices, rows: Int, columns: Int, groupSize: Int, bits: Int,
                                         scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                         x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        guard case .packed4(let a) = indices else { preconditionFailure("the bf16 decode GEMV runs on .packed4 only") }
        a.withUnsafeBufferPointer { p in
            ck_split_gemv_p4_bf16_ref(p.baseAddress!, 0, rows, columns, groupSize, Int32(bits), scales, zeros, x, y)
        }
    }

    private struct SplitGemvJob {
        let p8: UnsafePointer<UInt8>?, p16: UnsafePointer<UInt16>?, p4: UnsafePointer<UInt8>?
        let columns: Int, groupSize: Int, bits: Int32
        let scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>, x: UnsafePointer<Float>
        let xb: UnsafePointer<UInt16>?
        let y: UnsafeMutablePointer<Float>, reference: Bool
    }

    /// Dequantizes weight rows `rowRange` into `tile[rowRange.count, columns]` (exactly
    /// `SplitWeight.value`). Single-threaded.
    public static func dequantizeRows(_ indices: Indices, rowRange: Range<Int>, columns: Int, groupSize: Int,
                                      bits: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                      into tile: UnsafeMutablePointer<Float>, reference: Bool = false) {
        let b = Int32(bits)
        withIndices(indices) { p8, p16, p4 in
            if let p4 {
                (reference ? ck_split_dequant_rows_p4_ref : ck_split_dequant_rows_p4)(
                    p4.base, rowRange.lowerBound, rowRange.count, columns, groupSize, b, scales, zeros, tile)
            } else if let p8 {
                (reference ? ck_split_dequant_rows_u8_ref : ck_split_dequant_rows_u8)(
                    p8.base, rowRange.lowerBound, rowRange.count, columns, groupSize, b, scales, zeros, tile)
            } else if let p16 {
                (reference ? ck_split_dequant_rows_u16_ref : ck_split_dequant_rows_u16)(
                    p16.base, rowRange.lowerBound, rowRange.count, columns, groupSize, b, scales, zeros, tile)
            }
        }
    }

    /// Several activation rows: `y[rows, out] = x·Wᵀ`, W dequantized a tile of output rows at a
    /// time into scratch (never whole) and each tile multiplied with one sgemm, so the codes
    /// are decoded once per tile for all activation rows (as `LowBit.dequantizedProduct`).
    public static func dequantizedProduct(_ indices: Indices, outFeatures: Int, inFeatures: Int, groupSize: Int,
                                          bits: Int, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                                          x: UnsafePointer<Float>, rows: Int, y: UnsafeMutablePointer<Float>) {
        let ps = SendableConstPointer(scales), pz = SendableConstPointer(zeros)
        LowBit.tiledProduct(outFeatures: outFeatures, inFeatures: inFeatures, x: x, rows: rows, y: y,
                            tileRows: LowBit.defaultTileRows(inFeatures: inFeatures)) { range, tile in
            dequantizeRows(indices, rowRange: range, columns: inFeatures, groupSize: groupSize, bits: bits,
                           scales: ps.base, zeros: pz.base, into: tile)
        }
    }

    private static func withIndices(_ indices: Indices,
                                    _ body: (SendableConstPointer<UInt8>?, SendableConstPointer<UInt16>?,
                                             SendableConstPointer<UInt8>?) -> Void) {
        switch indices {
        case .bytes(let a):
            a.withUnsafeBufferPointer { p in if let base = p.baseAddress { body(SendableConstPointer(base), nil, nil) } }
        case .halfwords(let a):
            a.withUnsafeBufferPointer { p in if let base = p.baseAddress { body(nil, SendableConstPointer(base), nil) } }
        case .packed4(let a):
            a.withUnsafeBufferPointer { p in if let base = p.baseAddress { body(nil, nil, SendableConstPointer(base)) } }
        }
    }
}
