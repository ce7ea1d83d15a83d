import PTQCore

// Partially binarized weights (`BinaryWeight`: PTQ1.61, PB-LLM-style, plain binarization) in a
// packed file: manifest `format: "binary"` with `mask_kind` (`columns` | `elements`),
// `salient_count` and `bits` (the salient code width), and per layer the sections
// `linear:<name>:mask` (1 bit per column or per element), `…:signs` (1 bit per binarized element),
// `…:codes` (salient codes at `bits`), `…:zeros` (per-row zero points at `bits`), `…:scales`
// (per-row Δ, float16), `…:binary_scales` and `…:binary_offsets` (per-row a = α·r1 and b = μ·r1,
// float16), `…:column_scales` (per binarized column r2, float16; column masks only, optional)
// and the float32 bias; format version 2 adds `…:outlier_mask` (1 bit per column) and
// `…:outlier_values` (float16, rows × outlier columns) for salient columns kept in float16. Every section is stored at its true width, so `ptq inspect`'s bits per
// weight are the format's real cost. See docs/packed-format.md.

extension PackedFile.WritePlan {
    /// Validates a binary weight (the same checks as the reader) and adds its payloads and
    /// manifest entry.
    mutating func planBinary(key: String, linear: QuantizedLinear, weight w: BinaryWeight,
                             claim: (String) throws(PTQError) -> String,
                             fail bad: (String) -> PTQError) throws(PTQError) {
        try QuantizedLinear.validateBinary(w, fail: bad)
        guard linear.activation == nil else { throw bad("binary weights are stored for float activations only") }
        if let bias = linear.bias, bias.count != w.rows {
            throw bad("bias has \(bias.count) values, expected \(w.rows)")
        }
        let prefix = "linear:\(key):"
        func add(_ suffix: String, _ kind: PackedSectionKind,
                 _ source: PackedFile.PayloadJob.Source) throws(PTQError) -> String {
            let name = try claim(prefix + suffix)
            jobs.append(.init(name: name, kind: kind, source: source))
            return name
        }
        let mask = try add("mask", .codes, .codes(w.salientMask.map { $0 ? 1 : 0 }, bits: 1))
        let signs = try add("signs", .codes, .codes(w.signs, bits: 1))
        let codes = try add("codes", .codes, .codes(w.salientCodes, bits: w.salientBits))
        let zeros = try add("zeros", .zeros, .codes(w.salientZero, bits: w.salientBits))
        let scales = try add("scales", .scales, .halves(w.salientScale))
        let binaryScales = try add("binary_scales", .scales, .halves(w.scale))
        let binaryOffsets = try add("binary_offsets", .scales, .halves(w.offset))
        let columnScales = try w.columnScale.map { (r2) throws(PTQError) in try add("column_scales", .scales, .halves(r2)) }
        var outlierMask: String?, outlierValues: String?
        if !w.outlierColumns.isEmpty {
            var flags = [UInt8](repeating: 0, count: w.columns)
            for j in w.outlierColumns { flags[j] = 1 }
            outlierMask = try add("outlier_mask", .codes, .codes(flags, bits: 1))
            outlierValues = try add("outlier_values", .scales, .halves(w.outlierValues))
        }
        let biasName = try linear.bias.map { (b) throws(PTQError) in try add("bias", .bias, .floats(b)) }
        var entry = PackedManifest.LinearEntry(
            name: key, method: linear.method, details: linear.details, format: "binary", bits: w.salientBits,
            rows: w.rows, columns: w.columns, groupSize: w.columns, symmetric: false, activation: nil,
            codes: codes, scales: scales, zeros: zeros, bias: biasName,
            activationChannelScales: nil, activationChannelShift: nil, clusters: nil, storedBytes: 0)
        entry.maskKind = w.maskKind.rawValue
        entry.salientCount = w.salientCount
        entry.mask = mask
        entry.signs = signs
        entry.binaryScales = binaryScales
        entry.binaryOffsets = binaryOffsets
        entry.columnScales = columnScales
        if let outlierMask {
            entry.outlierColumns = w.outlierColumns.count
            entry.outlierMask = outlierMask
            entry.outlierValues = outlierValues
        }
        manifest.quantizedLinears.append(entry)
    }
}

extension PackedFile.ReadPlan {
    /// Where a binary layer's extra sections land.
    struct BinaryLoads {
        var mask: Int, signs: Int, binaryScales: Int, binaryOffsets: Int
        var columnScales: Int?
        var outlierMask: Int?, outlierValues: Int?
    }

    /// The loads of a binary layer, every size checked against the manifest's geometry and
    /// salient count before anything is decoded.
    static func binaryLoads(_ e: PackedManifest.LinearEntry,
                            load: (String, PackedSectionKind, String, Container.Load.Decode, String) throws(PTQError) -> Int,
                            fail: (String) -> PTQError) throws(PTQError) -> LinearLoads {
        let t = e.name
        func bad(_ message: String) -> PTQError { fail("tensor '\(t)': \(message)") }
        guard (2...8).contains(e.bits) else { throw bad("\(e.bits)-bit salient codes are not supported (2…8)") }
        guard e.rows > 0, e.columns > 0, let count = checkedProduct([e.rows, e.columns]),
              BitPacking.byteCount(count: count, bits: 8) != nil, count <= Int.max / 4 else {
            throw bad("invalid geometry rows \(e.rows), columns \(e.columns)")
        }
        guard let kindName = e.maskKind, let kind = BinaryWeight.MaskKind(rawValue: kindName) else {
            throw bad("a binary weight needs 'mask_kind' columns or elements (got \(e.maskKind.map { "'\($0)'" } ?? "none"))")
        }
        guard let salient = e.salientCount, (0...count).contains(salient) else {
            throw bad("salient count \(e.salientCount.map(String.init) ?? "none") is not in 0…\(count)")
        }
        guard let maskName = e.mask, let signsName = e.signs, let aName = e.binaryScales, let bName = e.binaryOffsets,
              let zerosName = e.zeros else {
            throw bad("a binary weight needs 'mask', 'signs', 'zeros', 'binary_scales' and 'binary_offsets' sections")
        }
        guard e.activation == nil, e.activationChannelScales == nil, e.activationChannelShift == nil, e.clusters == nil else {
            throw bad("binary weights run with float activations only and have no cluster ids")
        }
        let maskCount = kind == .columns ? e.columns : count
        var binaryColumns: Int?
        if kind == .columns {
            guard salient % e.rows == 0 else {
                throw bad("salient count \(salient) is not a multiple of \(e.rows) rows (column mask)")
            }
            binaryColumns = e.columns - salient / e.rows
        } else if e.columnScales != nil {
            throw bad("column scales need a column mask, this one is per element")
        }
        let rowHalves = "\(e.rows) rows (float16)"
        var l = LinearLoads(codes: try load(e.codes, .codes, t, .codes(bits: e.bits, count: salient),
                                            "\(salient) salient codes at \(e.bits) bits"),
                            scales: try load(e.scales, .scales, t, .halves(e.rows), rowHalves))
        l.zeros = try load(zerosName, .zeros, t, .codes(bits: e.bits, count: e.rows), "\(e.rows) zero points at \(e.bits) bits")
        var b = BinaryLoads(
            mask: try load(maskName, .codes, t, .codes(bits: 1, count: maskCount), "\(maskCount) mask bits"),
            signs: try load(signsName, .codes, t, .codes(bits: 1, count: count - salient), "\(count - salient) sign bits"),
            binaryScales: try load(aName, .scales, t, .halves(e.rows), rowHalves),
            binaryOffsets: try load(bName, .scales, t, .halves(e.rows), rowHalves))
        if let r2 = e.columnScales, let binaryColumns {
            b.columnScales = try load(r2, .scales, t, .halves(binaryColumns), "\(binaryColumns) binarized columns (float16)")
        }
        if let k = e.outlierColumns {
            guard kind == .columns, (1...e.columns).contains(k), let maskName = e.outlierMask, let valuesName = e.outlierValues,
                  let valueCount = checkedProduct([e.rows, k]) else {
                throw bad("outlier columns (\(k)) need a column mask, 1…\(e.columns) columns and 'outlier_mask' and 'outlier_values' sections")
            }
            b.outlierMask = try load(maskName, .codes, t, .codes(bits: 1, count: e.columns), "\(e.columns) outlier mask bits")
            b.outlierValues = try load(valuesName, .scales, t, .halves(valueCount), "\(e.rows) × \(k) outlier values (float16)")
        } else if e.outlierMask != nil || e.outlierValues != nil {
            throw bad("outlier sections without 'outlier_columns'")
        }
        l.binary = b
        if let bias = e.bias {
            l.bias = try load(bias, .bias, t, .floats(e.rows), "\(e.rows) rows (float32)")
        }
        return l
    }
}

extension PackedFile {
    /// The binary weight of a manifest entry from its decoded payloads, checked like a written
    /// one (the mask must flag exactly `salient_count` elements).
    static func binaryWeight(_ e: PackedManifest.LinearEntry, _ l: ReadPlan.LinearLoads,
                             _ payloads: [Container.Payload], path: String) throws(PTQError) -> BinaryWeight {
        guard let b = l.binary, let zeros = l.zeros, let kind = e.maskKind.flatMap(BinaryWeight.MaskKind.init) else {
            throw PTQError.file(path, "tensor '\(e.name)': binary sections were not planned")
        }
        let w = BinaryWeight(
            rows: e.rows, columns: e.columns, maskKind: kind, salientMask: payloads[b.mask].codes.map { $0 != 0 },
            salientBits: e.bits, salientCodes: payloads[l.codes].codes, salientScale: payloads[l.scales].floats,
            salientZero: payloads[zeros].codes, signs: payloads[b.signs].codes,
            scale: payloads[b.binaryScales].floats, offset: payloads[b.binaryOffsets].floats,
            columnScale: b.columnScales.map { payloads[$0].floats },
            outlierColumns: b.outlierMask.map { section in
                let flags = payloads[section].codes
                return flags.indices.filter { flags[$0] != 0 }
            } ?? [],
            outlierValues: b.outlierValues.map { payloads[$0].floats } ?? [])
        if let k = e.outlierColumns, w.outlierColumns.count != k {
            throw PTQError.file(path, "tensor '\(e.name)': the outlier mask flags \(w.outlierColumns.count) columns, the manifest says \(k)")
        }
        try QuantizedLinear.validateBinary(w) { PTQError.file(path, "tensor '\(e.name)': \($0)") }
        return w
    }
}
