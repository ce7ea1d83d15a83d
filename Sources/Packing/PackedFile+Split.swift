import PTQCore

// The SplitQuant weight format (`SplitWeight`) in a packed file: manifest `format: "split"`,
// and per layer the sections `linear:<name>:clusters` (2-bit cluster ids, kind codes),
// `linear:<name>:codes` (codes at their width), `linear:<name>:scales` and `…:zeros`
// (float32, rows × groups × 3), and the float32 bias. See docs/packed-format.md.

extension PackedFile.WritePlan {
    /// Validates a split weight and adds its payloads and manifest entry.
    mutating func planSplit(key: String, linear: QuantizedLinear, weight w: SplitWeight,
                            claim: (String) throws(PTQError) -> String,
                            fail bad: (String) -> PTQError) throws(PTQError) {
        guard (2...8).contains(w.bits) else { throw bad("\(w.bits)-bit split codes are not supported (2…8)") }
        guard w.rows >= 0, w.columns >= 0, w.groupSize >= 1 else {
            throw bad("invalid geometry rows \(w.rows), columns \(w.columns), group size \(w.groupSize)")
        }
        guard let count = checkedProduct([w.rows, w.columns]), w.codes.count == count, w.clusters.count == count else {
            throw bad("\(w.codes.count) codes and \(w.clusters.count) cluster ids for a \(w.rows)×\(w.columns) weight")
        }
        let parameters = w.rows * w.groupsPerRow * SplitWeight.clusterCount
        guard w.scales.count == parameters, w.zeros.count == parameters else {
            throw bad("\(w.scales.count) scales and \(w.zeros.count) zero points, expected \(parameters) "
                      + "(\(w.rows) rows × \(w.groupsPerRow) groups × 3 clusters)")
        }
        if let high = w.clusters.first(where: { Int($0) >= SplitWeight.clusterCount }) {
            throw bad("cluster id \(high) is not 0, 1 or 2")
        }
        if w.bits < 8, let high = w.codes.first(where: { Int($0) >> w.bits != 0 }) {
            throw bad("code \(high) does not fit in \(w.bits) bits")
        }
        if let bias = linear.bias, bias.count != w.rows {
            throw bad("bias has \(bias.count) values, expected \(w.rows)")
        }
        guard linear.activation == nil else { throw bad("split weights are stored for float activations only") }
        let prefix = "linear:\(key):"
        let clusters = try claim(prefix + "clusters")
        jobs.append(.init(name: clusters, kind: .codes, source: .codes(w.clusters, bits: SplitWeight.clusterBits)))
        let codes = try claim(prefix + "codes")
        jobs.append(.init(name: codes, kind: .codes, source: .codes(w.codes, bits: w.bits)))
        let scales = try claim(prefix + "scales")
        jobs.append(.init(name: scales, kind: .scales, source: .floats(w.scales)))
        let zeros = try claim(prefix + "zeros")
        jobs.append(.init(name: zeros, kind: .zeros, source: .floats(w.zeros)))
        var biasName: String?
        if let bias = linear.bias {
            biasName = try claim(prefix + "bias")
            jobs.append(.init(name: biasName!, kind: .bias, source: .floats(bias)))
        }
        manifest.quantizedLinears.append(.init(
            name: key, method: linear.method, details: linear.details, format: "split", bits: w.bits, rows: w.rows,
            columns: w.columns, groupSize: w.groupSize, symmetric: false, activation: nil,
            codes: codes, scales: scales, zeros: zeros, bias: biasName,
            activationChannelScales: nil, activationChannelShift: nil, clusters: clusters, storedBytes: 0))
    }
}

extension PackedFile.ReadPlan {
    /// The loads of a split layer, checked against the manifest's geometry.
    static func splitLoads(_ e: PackedManifest.LinearEntry,
                           load: (String, PackedSectionKind, String, Container.Load.Decode, String) throws(PTQError) -> Int,
                           fail: (String) -> PTQError) throws(PTQError) -> LinearLoads {
        let t = e.name
        guard (2...8).contains(e.bits) else { throw fail("tensor '\(t)': \(e.bits)-bit split codes are not supported (2…8)") }
        guard e.rows >= 0, e.columns >= 0, e.groupSize >= 1 else {
            throw fail("tensor '\(t)': invalid geometry rows \(e.rows), columns \(e.columns), group size \(e.groupSize)")
        }
        guard let count = checkedProduct([e.rows, e.columns]), BitPacking.byteCount(count: count, bits: e.bits) != nil else {
            throw fail("tensor '\(t)': \(e.rows)×\(e.columns) is too large")
        }
        guard let clusters = e.clusters, let zeros = e.zeros else {
            throw fail("tensor '\(t)': a split weight needs 'clusters' and 'zeros' sections in the manifest")
        }
        guard e.activation == nil, e.activationChannelScales == nil, e.activationChannelShift == nil else {
            throw fail("tensor '\(t)': split weights run with float activations only")
        }
        let groups = (e.columns + e.groupSize - 1) / e.groupSize
        guard let parameters = checkedProduct([e.rows, groups, SplitWeight.clusterCount]), parameters <= Int.max / 4 else {
            throw fail("tensor '\(t)': the scale grid is too large")
        }
        let geometry = "\(e.rows)×\(e.columns)"
        let grid = "\(e.rows) rows × \(groups) groups × 3 clusters (float32)"
        var l = LinearLoads(codes: try load(e.codes, .codes, t, .codes(bits: e.bits, count: count),
                                            "\(geometry) at \(e.bits) bits"),
                            scales: try load(e.scales, .scales, t, .floats(parameters), grid))
        l.zeros = try load(zeros, .zeros, t, .floats(parameters), grid)
        l.clusters = try load(clusters, .codes, t, .codes(bits: SplitWeight.clusterBits, count: count),
                              "\(geometry) cluster ids at 2 bits")
        if let b = e.bias {
            l.bias = try load(b, .bias, t, .floats(e.rows), "\(e.rows) rows (float32)")
        }
        return l
    }
}

extension PackedFile {
    /// The split weight of a manifest entry from its decoded payloads.
    static func splitWeight(_ e: PackedManifest.LinearEntry, _ l: ReadPlan.LinearLoads,
                            _ payloads: [Container.Payload]) -> SplitWeight {
        SplitWeight(bits: e.bits, rows: e.rows, columns: e.columns, groupSize: e.groupSize,
                    clusters: l.clusters.map { payloads[$0].codes } ?? [], codes: payloads[l.codes].codes,
                    scales: payloads[l.scales].floats, zeros: l.zeros.map { payloads[$0].floats } ?? [])
    }
}
