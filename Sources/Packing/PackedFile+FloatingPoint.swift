import PTQCore

// Packing of minifloat weights (`QuantizedWeight.floatingPoint`, LLM-FP4): codes at their true
// width (`BitPacking`, two FP4 codes per byte), one float32 scale 2^(−b̃) per row or group, and
// the activation quantizer in the manifest (format, per-tensor scale 2^(−ρ)) with the per-channel
// 2^(−k_j) in the `activation_channel_scales` section. The manifest entry's `format` names the
// minifloat format (`fp4 e2m1`); see docs/packed-format.md.
extension PackedFile.WritePlan {
    mutating func appendFloatingPoint(key: String, linear: QuantizedLinear, weight w: FloatingPointWeight,
                                      claim: (String) throws(PTQError) -> String,
                                      fail: (String) -> PTQError) throws(PTQError) {
        guard w.format.isSupported else { throw fail("minifloat format \(w.format) is not supported") }
        guard w.rows >= 0, w.columns >= 0, w.groupSize >= 1 else {
            throw fail("invalid geometry rows \(w.rows), columns \(w.columns), group size \(w.groupSize)")
        }
        guard let codeCount = checkedProduct([w.rows, w.columns]), w.codes.count == codeCount else {
            throw fail("\(w.codes.count) codes for a \(w.rows)×\(w.columns) weight")
        }
        let groupCount = w.rows * w.groupsPerRow
        guard w.scales.count == groupCount else {
            throw fail("\(w.scales.count) scales, expected \(groupCount) (\(w.rows) rows × \(w.groupsPerRow) groups)")
        }
        if let high = w.codes.first(where: { Int($0) >= w.format.codeCount }) {
            throw fail("code \(high) does not fit in \(w.format)")
        }
        if let bias = linear.bias, bias.count != w.rows { throw fail("bias has \(bias.count) values, expected \(w.rows)") }
        if let a = linear.activation {
            guard a.channelShift == nil else { throw fail("minifloat activations take no channel shift") }
            if let s = a.channelScales, s.count != w.columns {
                throw fail("activation channel scales have \(s.count) values, expected \(w.columns)")
            }
        }
        let prefix = "linear:\(key):"
        let codes = try claim(prefix + "codes")
        jobs.append(PackedFile.PayloadJob(name: codes, kind: .codes, source: .codes(w.codes, bits: w.bits)))
        let scales = try claim(prefix + "scales")
        jobs.append(PackedFile.PayloadJob(name: scales, kind: .scales, source: .floats(w.scales)))
        var biasName: String?, actScalesName: String?
        if let bias = linear.bias {
            biasName = try claim(prefix + "bias")
            jobs.append(PackedFile.PayloadJob(name: biasName!, kind: .bias, source: .floats(bias)))
        }
        var activation = linear.activation
        if let s = activation?.channelScales {
            actScalesName = try claim(prefix + "activation_channel_scales")
            jobs.append(PackedFile.PayloadJob(name: actScalesName!, kind: .activationChannelScales, source: .floats(s)))
        }
        activation?.channelScales = nil
        manifest.quantizedLinears.append(.init(
            name: key, method: linear.method, details: linear.details, format: w.format.description, bits: w.bits,
            rows: w.rows, columns: w.columns, groupSize: w.groupSize, symmetric: true, activation: activation,
            codes: codes, scales: scales, zeros: nil, bias: biasName,
            activationChannelScales: actScalesName, activationChannelShift: nil, storedBytes: 0))
    }
}

extension PackedFile {
    /// The weight of a manifest entry from its decoded codes and scales: minifloat when the entry
    /// names a minifloat format, integer otherwise.
    static func weight(_ e: PackedManifest.LinearEntry, codes: [UInt8], scales: [Float],
                       zeros: [Float]?) -> QuantizedWeight {
        if let format = FloatingPointFormat(formatName: e.formatName) {
            return .floatingPoint(FloatingPointWeight(format: format, rows: e.rows, columns: e.columns,
                                                      groupSize: e.groupSize, codes: codes, scales: scales))
        }
        return .integer(IntegerWeight(bits: e.bits, rows: e.rows, columns: e.columns, groupSize: e.groupSize,
                                      symmetric: e.symmetric, codes: codes, scales: scales, zeros: zeros))
    }

    /// Checks a manifest entry's weight format: `integer`, or a minifloat format whose width is the
    /// entry's bits and which has no zero points.
    static func checkFormat(_ e: PackedManifest.LinearEntry, fail: (String) -> PTQError) throws(PTQError) {
        if e.formatName == "integer" { return }
        guard let format = FloatingPointFormat(formatName: e.formatName) else {
            throw fail("tensor '\(e.name)': weight format '\(e.formatName)' is not known to this version")
        }
        guard format.bits == e.bits else {
            throw fail("tensor '\(e.name)': weight format '\(e.formatName)' has \(format.bits) bits but the entry says \(e.bits)")
        }
        guard e.zeros == nil, e.activationChannelShift == nil else {
            throw fail("tensor '\(e.name)': minifloat weights take no zero points or activation shift")
        }
    }
}
