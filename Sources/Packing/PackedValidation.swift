import Dispatch
import PTQCore

/// The model-level checks of a packed model: what `PTQ.loadPacked` refuses and what the
/// quantize pipeline checks before it writes, so that a `.ptq` written by PTQKit always loads
/// (docs/reliability.md). `PackedFile` itself stays a generic container: it checks structure,
/// checksums and sizes, and `ActivationQuantization.validate` for every linear.
extension PackedModel {
    /// Config and tokenizer agree; every tensor the config needs is present exactly once (as a
    /// float tensor or a quantized linear) with the config's shape; no unknown tensors; every
    /// float value the runtime computes with is finite. `source` names the file in messages.
    public func validateModel(source: String) throws(PTQError) {
        let mark = LoadProfile.Mark()
        defer { LoadProfile.report("validate", since: mark) }
        func fail(_ message: String) -> PTQError { PTQError.file(source, message) }
        do {
            try config.validate()
            try tokenizer.validate(for: config)
        } catch {
            throw fail(error.message)
        }
        let scans = ParallelScans(self)
        var expected = Set<String>()
        var usedLinears = Set<String>()
        for (name, shape) in config.expectedTensors {
            expected.insert(name)
            let layer = name.hasSuffix("/weight") || name.hasSuffix("/bias")
                ? String(name[..<(name.lastIndex(of: "/") ?? name.endIndex)]) : name
            if let q = quantizedLinears[layer] {
                if floatTensors[name] != nil {
                    throw fail("tensor '\(name)' is stored twice: as a float tensor and in quantized layer '\(layer)'")
                }
                if name.hasSuffix("/weight") {
                    usedLinears.insert(layer)
                    guard q.weight.rows == shape[0], q.weight.columns == shape[1] else {
                        throw fail("quantized layer '\(layer)' is \(q.weight.rows)×\(q.weight.columns), "
                                   + "the config needs \(shape[0])×\(shape[1])")
                    }
                    if let error = scans.layers[layer] { throw fail(error.message) }
                } else if q.bias == nil {
                    throw fail("quantized layer '\(layer)' has no bias; the config needs '\(name)' \(shape)")
                }
                continue
            }
            guard let tensor = floatTensors[name] else {
                throw fail("tensor '\(name)' (shape \(shape)) is missing: neither a float tensor nor a quantized layer")
            }
            guard tensor.shape == shape, tensor.data.count == Validation.checkedProduct(shape) else {
                throw fail("tensor '\(name)' has shape \(tensor.shape), the config needs \(shape)")
            }
            if let error = scans.tensors[name] { throw fail(error.message) }
        }
        if config.tiedEmbeddings, config.architecture == .llama {
            // A tied head may be stored apart from the table (quantized, or float beside a
            // quantized table); without either it is the float table itself.
            let shape = [config.vocabSize, config.hiddenSize]
            let head = TensorNames.lmHeadLayer
            if let q = quantizedLinears[head] {
                if floatTensors[TensorNames.lmHead] != nil {
                    throw fail("the tied LM head is stored twice: as float tensor '\(TensorNames.lmHead)' and as quantized layer '\(head)'")
                }
                guard q.weight.rows == shape[0], q.weight.columns == shape[1], q.bias == nil else {
                    throw fail("quantized layer '\(head)' is \(q.weight.rows)×\(q.weight.columns)\(q.bias == nil ? "" : " with a bias"), "
                               + "the tied LM head is \(shape[0])×\(shape[1]) without bias")
                }
                if let error = scans.layers[head] { throw fail(error.message) }
                usedLinears.insert(head)
            } else if let t = floatTensors[TensorNames.lmHead] {
                guard t.shape == shape, t.data.count == shape[0] * shape[1] else {
                    throw fail("tensor '\(TensorNames.lmHead)' has shape \(t.shape), the tied LM head is \(shape)")
                }
                if let error = scans.tensors[TensorNames.lmHead] { throw fail(error.message) }
                expected.insert(TensorNames.lmHead)
            }
            if quantizedLinears[TensorNames.tokenEmbeddingLayer] != nil, quantizedLinears[head] == nil,
               floatTensors[TensorNames.lmHead] == nil {
                throw fail("the embedding table is quantized but the tied LM head has no weights of its own "
                           + "(neither a quantized '\(head)' nor a float '\(TensorNames.lmHead)')")
            }
        }
        if let q = quantizedLinears[TensorNames.tokenEmbeddingLayer], q.activation != nil || q.bias != nil {
            throw fail("quantized embedding '\(TensorNames.tokenEmbeddingLayer)' must be weight-only (no activation quantization, no bias)")
        }
        if let extra = floatTensors.keys.sorted().first(where: { !expected.contains($0) }) {
            throw fail("unexpected tensor '\(extra)' for a \(config.architecture.rawValue) model")
        }
        if let extra = quantizedLinears.keys.sorted().first(where: { !usedLinears.contains($0) }) {
            throw fail("unexpected quantized layer '\(extra)' for a \(config.architecture.rawValue) model")
        }
    }
}

/// The scans of `validateModel` over every value — each quantized layer's `validate()` and each
/// float tensor's finiteness — run at once on all cores (they were ~0.03 s of serial load time);
/// `validateModel` then consumes their failures in its own order, so it reports the same first
/// error as when it ran them one by one.
private struct ParallelScans {
    var layers: [String: PTQError] = [:]
    var tensors: [String: PTQError] = [:]

    init(_ model: PackedModel) {
        let layerNames = Array(model.quantizedLinears.keys), tensorNames = Array(model.floatTensors.keys)
        var failures = [PTQError?](repeating: nil, count: layerNames.count + tensorNames.count)
        failures.withUnsafeMutableBufferPointer { buffer in
            let out = UnsafeSendable(buffer)
            DispatchQueue.concurrentPerform(iterations: buffer.count) { i in
                do throws(PTQError) {
                    if i < layerNames.count {
                        try model.quantizedLinears[layerNames[i]]!.validate()
                    } else {
                        let name = tensorNames[i - layerNames.count]
                        try Validation.requireFinite(model.floatTensors[name]!, name: name)
                    }
                } catch {
                    out.value[i] = error
                }
            }
        }
        for (i, failure) in failures.enumerated() {
            guard let failure else { continue }
            if i < layerNames.count { layers[layerNames[i]] = failure } else { tensors[tensorNames[i - layerNames.count]] = failure }
        }
    }
}

extension QuantizedLinear {
    /// Geometry, code range and finite parameters of one quantized layer, for every weight
    /// format; messages name the layer.
    public func validate() throws(PTQError) {
        func fail(_ message: String) -> PTQError { PTQError("quantized layer '\(name)': \(message)") }
        switch weight {
        case .integer(let w):
            try Self.validateCodes(bits: w.bits, rows: w.rows, columns: w.columns, groupSize: w.groupSize,
                                   codes: w.codes, scales: w.scales, zeros: w.zeros, parametersPerGroup: 1, fail: fail)
            if w.zeros == nil && !w.symmetric { throw fail("asymmetric weights without zero points") }
        case .split(let w):
            try Self.validateCodes(bits: w.bits, rows: w.rows, columns: w.columns, groupSize: w.groupSize,
                                   codes: w.codes, scales: w.scales, zeros: w.zeros,
                                   parametersPerGroup: SplitWeight.clusterCount, fail: fail)
            guard w.clusters.count == w.codes.count else {
                throw fail("\(w.clusters.count) cluster ids for \(w.codes.count) codes")
            }
            if let i = Validation.firstByte(in: w.clusters, atLeast: SplitWeight.clusterCount) {
                throw fail("cluster id \(w.clusters[i]) is out of range (0…\(SplitWeight.clusterCount - 1))")
            }
        case .floatingPoint(let w):
            guard w.format.isSupported else { throw fail("minifloat format \(w.format) is not supported") }
            try Self.validateCodes(bits: w.bits, rows: w.rows, columns: w.columns, groupSize: w.groupSize,
                                   codes: w.codes, scales: w.scales, zeros: nil, parametersPerGroup: 1, fail: fail)
        case .binary(let w):
            try Self.validateBinary(w, fail: fail)
            guard activation == nil else { throw fail("binary weights run with float activations only") }
        }
        let rows = weight.rows
        if let bias {
            guard bias.count == rows else { throw fail("bias has \(bias.count) values, expected \(rows)") }
            if let i = Validation.firstNonFinite(bias) { throw fail("bias value \(bias[i]) at row \(i) is not finite") }
        }
        if let activation {
            do { try activation.validate(columns: weight.columns) } catch { throw fail(error.message) }
        }
    }

    /// A partially binarized weight: mask length for its kind, one code per salient and one sign
    /// bit per binarized element, codes and zero points within `salientBits`, per-row and
    /// per-column parameters of the right length, finite and exactly representable in float16
    /// (the packed file stores them so: a writer must not silently round what the runtime uses).
    static func validateBinary(_ w: BinaryWeight, fail: (String) -> PTQError) throws(PTQError) {
        guard (2...8).contains(w.salientBits) else { throw fail("\(w.salientBits)-bit salient codes are not supported (2…8)") }
        guard w.rows > 0, w.columns > 0, let count = Validation.checkedProduct([w.rows, w.columns]) else {
            throw fail("invalid geometry rows \(w.rows), columns \(w.columns)")
        }
        let maskCount = w.maskKind == .columns ? w.columns : count
        guard w.salientMask.count == maskCount else {
            throw fail("\(w.salientMask.count) mask flags, expected \(maskCount) (\(w.maskKind.rawValue) mask)")
        }
        guard w.salientCodes.count == w.salientCount else {
            throw fail("\(w.salientCodes.count) salient codes for \(w.salientCount) salient elements")
        }
        guard w.signs.count == w.binaryCount else {
            throw fail("\(w.signs.count) sign bits for \(w.binaryCount) binarized elements")
        }
        if let bad = w.signs.first(where: { $0 > 1 }) { throw fail("sign bit \(bad) is not 0 or 1") }
        if w.salientBits < 8, let high = w.salientCodes.first(where: { Int($0) >> w.salientBits != 0 }) {
            throw fail("salient code \(high) does not fit in \(w.salientBits) bits")
        }
        guard w.salientZero.count == w.rows else { throw fail("\(w.salientZero.count) zero points for \(w.rows) rows") }
        if w.salientBits < 8, let high = w.salientZero.first(where: { Int($0) >> w.salientBits != 0 }) {
            throw fail("zero point \(high) does not fit in \(w.salientBits) bits")
        }
        func halves(_ values: [Float], _ what: String, expected: Int) throws(PTQError) {
            guard values.count == expected else { throw fail("\(values.count) \(what), expected \(expected)") }
            if let i = values.firstIndex(where: { !$0.isFinite || BinaryWeight.half($0) != $0 }) {
                throw fail("\(what) value \(values[i]) at index \(i) is not a finite float16 value")
            }
        }
        try halves(w.salientScale, "salient scales", expected: w.rows)
        try halves(w.scale, "binary scales", expected: w.rows)
        try halves(w.offset, "binary offsets", expected: w.rows)
        if let r2 = w.columnScale {
            guard let binaryColumns = w.binaryColumnCount else {
                throw fail("column scales need a column mask, this one is per element")
            }
            try halves(r2, "column scales", expected: binaryColumns)
        }
        guard !w.outlierColumns.isEmpty else {
            guard w.outlierValues.isEmpty else { throw fail("\(w.outlierValues.count) outlier values without outlier columns") }
            return
        }
        guard w.maskKind == .columns else { throw fail("outlier columns need a column mask, this one is per element") }
        for (t, j) in w.outlierColumns.enumerated() {
            guard (0..<w.columns).contains(j), w.salientMask[j] else {
                throw fail("outlier column \(j) is not a salient column of the \(w.columns)")
            }
            guard t == 0 || w.outlierColumns[t - 1] < j else { throw fail("outlier columns are not strictly ascending at \(j)") }
        }
        try halves(w.outlierValues, "outlier values", expected: w.rows * w.outlierColumns.count)
        // The salient kernel runs over outlier columns too: their codes must contribute exactly 0.
        let salientColumns = (0..<w.columns).filter { w.salientMask[$0] }
        let position = Dictionary(uniqueKeysWithValues: salientColumns.enumerated().map { ($1, $0) })
        for i in 0..<w.rows {
            for j in w.outlierColumns where w.salientCodes[i * salientColumns.count + position[j]!] != w.salientZero[i] {
                throw fail("the salient code of outlier column \(j) in row \(i) is not the row's zero point")
            }
        }
    }

    /// Codes of `bits` bits for a `rows × columns` matrix, with `parametersPerGroup` finite
    /// scales (and zero points, when present) per row and group.
    static func validateCodes(bits: Int, rows: Int, columns: Int, groupSize: Int, codes: [UInt8], scales: [Float],
                              zeros: [Float]?, parametersPerGroup: Int,
                              fail: (String) -> PTQError) throws(PTQError) {
        guard (1...8).contains(bits) else { throw fail("\(bits)-bit codes are not supported") }
        guard rows > 0, columns > 0, groupSize >= 1 else {
            throw fail("invalid geometry rows \(rows), columns \(columns), group size \(groupSize)")
        }
        guard let count = Validation.checkedProduct([rows, columns]), codes.count == count else {
            throw fail("\(codes.count) codes for a \(rows)×\(columns) weight")
        }
        let groupsPerRow = (columns + groupSize - 1) / groupSize
        let perRow = groupsPerRow * parametersPerGroup
        let parameters = rows * perRow
        guard scales.count == parameters else { throw fail("\(scales.count) scales, expected \(parameters)") }
        if let i = Validation.firstNonFinite(scales) {
            throw fail("weight scale \(scales[i]) (row \(i / perRow), group \(i % perRow / parametersPerGroup)) is not finite")
        }
        if let zeros {
            guard zeros.count == parameters else { throw fail("\(zeros.count) zero points, expected \(parameters)") }
            if let i = Validation.firstNonFinite(zeros) {
                throw fail("zero point \(zeros[i]) (row \(i / perRow), group \(i % perRow / parametersPerGroup)) is not finite")
            }
        }
        if bits < 8, let i = Validation.firstByte(in: codes, atLeast: 1 << bits) {
            throw fail("code \(codes[i]) does not fit in \(bits) bits")
        }
    }
}

extension ActivationQuantization {
    /// Bits in 2…8, a positive finite static scale for per-tensor quantization, and channel
    /// arrays of `columns` finite values (scales non-zero). Shared by the packed-file writer and
    /// reader, so a writer cannot store activation parameters the runtime refuses.
    public func validate(columns: Int?) throws(PTQError) {
        guard (2...8).contains(bits) else { throw PTQError("\(bits)-bit activations are not supported (2…8)") }
        if let scale, !(scale.isFinite && scale > 0) {
            throw PTQError("activation scale \(scale) must be positive and finite")
        }
        if let log = logarithmic {
            // AdaLog inputs: the log quantizer validated itself when decoded; its own scale applies.
            guard log.bits == bits else {
                throw PTQError("adalog activation quantizer has \(log.bits) bits, the activation says \(bits)")
            }
            if let offset = inputOffset, !offset.isFinite {
                throw PTQError("adalog input offset \(offset) is not finite")
            }
        } else if granularity == .perTensor, scale == nil {
            throw PTQError("per-tensor activation quantization needs a static scale")
        }
        if let format = floatFormat, !format.isSupported || format.bits != bits {
            throw PTQError("minifloat activation format \(format) does not fit \(bits)-bit activations")
        }
        if let s = channelScales {
            if let columns, s.count != columns {
                throw PTQError("\(s.count) activation channel scales, expected \(columns)")
            }
            if let i = s.firstIndex(where: { !$0.isFinite || $0 == 0 }) {
                throw PTQError("activation channel scale \(s[i]) at column \(i) must be finite and non-zero")
            }
        }
        if let s = channelShift {
            if let columns, s.count != columns {
                throw PTQError("\(s.count) activation channel shifts, expected \(columns)")
            }
            if let i = Validation.firstNonFinite(s) {
                throw PTQError("activation channel shift \(s[i]) at column \(i) is not finite")
            }
        }
    }
}
