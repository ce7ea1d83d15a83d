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
        func fail(_ message: String) -> PTQError { PTQError.file(source, message) }
        do {
            try config.validate()
            try tokenizer.validate(for: config)
        } catch {
            throw fail(error.message)
        }
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
                    do { try q.validate() } catch { throw fail(error.message) }
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
            do { try Validation.requireFinite(tensor, name: name) } catch { throw fail(error.message) }
        }
        if let extra = floatTensors.keys.sorted().first(where: { !expected.contains($0) }) {
            throw fail("unexpected tensor '\(extra)' for a \(config.architecture.rawValue) model")
        }
        if let extra = quantizedLinears.keys.sorted().first(where: { !usedLinears.contains($0) }) {
            throw fail("unexpected quantized layer '\(extra)' for a \(config.architecture.rawValue) model")
        }
    }
}

extension QuantizedLinear {
    /// Geometry, code range and finite parameters of one quantized layer; messages name it.
    public func validate() throws(PTQError) {
        let w = weight
        func fail(_ message: String) -> PTQError { PTQError("quantized layer '\(name)': \(message)") }
        guard (1...8).contains(w.bits) else { throw fail("\(w.bits)-bit codes are not supported") }
        guard w.rows > 0, w.columns > 0, w.groupSize >= 1 else {
            throw fail("invalid geometry rows \(w.rows), columns \(w.columns), group size \(w.groupSize)")
        }
        guard let count = Validation.checkedProduct([w.rows, w.columns]), w.codes.count == count else {
            throw fail("\(w.codes.count) codes for a \(w.rows)×\(w.columns) weight")
        }
        let groups = w.rows * w.groupsPerRow
        guard w.scales.count == groups else { throw fail("\(w.scales.count) scales, expected \(groups)") }
        if let i = Validation.firstNonFinite(w.scales) {
            throw fail("weight scale \(w.scales[i]) (row \(i / w.groupsPerRow), group \(i % w.groupsPerRow)) is not finite")
        }
        if let zeros = w.zeros {
            guard zeros.count == groups else { throw fail("\(zeros.count) zero points, expected \(groups)") }
            if let i = Validation.firstNonFinite(zeros) {
                throw fail("zero point \(zeros[i]) (row \(i / w.groupsPerRow), group \(i % w.groupsPerRow)) is not finite")
            }
        } else if !w.symmetric {
            throw fail("asymmetric weights without zero points")
        }
        if w.bits < 8, let high = w.codes.first(where: { Int($0) >> w.bits != 0 }) {
            throw fail("code \(high) does not fit in \(w.bits) bits")
        }
        if let bias {
            guard bias.count == w.rows else { throw fail("bias has \(bias.count) values, expected \(w.rows)") }
            if let i = Validation.firstNonFinite(bias) { throw fail("bias value \(bias[i]) at row \(i) is not finite") }
        }
        if let activation {
            do { try activation.validate(columns: w.columns) } catch { throw fail(error.message) }
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
        if granularity == .perTensor, scale == nil {
            throw PTQError("per-tensor activation quantization needs a static scale")
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
