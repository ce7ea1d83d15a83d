/// Checks shared by every reader and writer: what a model file's parts must agree on before
/// anything is computed from them (docs/reliability.md).
///
/// Messages name the field or tensor; callers prefix the file (`PTQError.file`).
public enum Validation {
    /// Largest size of one config dimension (vocabulary, hidden size, positions, …): far above
    /// any real model, low enough that products of two or three dimensions cannot overflow.
    public static let maximumDimension = 1 << 24
    /// Largest number of transformer blocks.
    public static let maximumLayers = 4096
    /// Largest number of elements of one tensor (64 GiB of float32).
    public static let maximumTensorElements = 1 << 34

    /// `a × b × …`, nil on overflow or a negative factor.
    public static func checkedProduct(_ values: [Int]) -> Int? {
        var product = 1
        for v in values {
            guard v >= 0 else { return nil }
            let (p, overflow) = product.multipliedReportingOverflow(by: v)
            if overflow { return nil }
            product = p
        }
        return product
    }

    /// Index of the first byte `>= limit` (a code that does not fit its format), nil when all fit.
    /// A branch-free max the compiler vectorises runs first, so valid codes are checked at memory
    /// speed; the element-wise search runs only when there is an offender (issue 13: the search
    /// alone, a byte at a time, was ~18 % of a W4A16 `.ptq` load's CPU time).
    public static func firstByte(in bytes: [UInt8], atLeast limit: Int) -> Int? {
        guard Int(largest(bytes)) >= limit else { return nil }
        return bytes.firstIndex(where: { Int($0) >= limit })
    }

    /// The largest byte (0 for none), by a reduction the compiler vectorises.
    static func largest(_ bytes: [UInt8]) -> UInt8 {
        bytes.withUnsafeBufferPointer { b in
            var m: UInt8 = 0
            for v in b { m = max(m, v) }
            return m
        }
    }

    /// Index of the first NaN or infinity, nil when all values are finite.
    @inlinable
    public static func firstNonFinite(_ values: UnsafeBufferPointer<Float>) -> Int? {
        // Summing 0·x stays 0 for finite x and becomes NaN for NaN/±inf: one branch-free pass.
        var i = 0
        let n = values.count
        while i < n {
            let end = min(n, i + 4096)
            var chunk: Float = 0
            for j in i..<end { chunk += 0 * values[j] }
            if chunk != 0 || chunk.isNaN {
                for j in i..<end where !values[j].isFinite { return j }
            }
            i = end
        }
        return nil
    }

    public static func firstNonFinite(_ values: [Float]) -> Int? {
        values.withUnsafeBufferPointer { firstNonFinite($0) }
    }

    public static func firstNonFinite(_ values: [Double]) -> Int? {
        values.firstIndex { !$0.isFinite }
    }

    /// Throws when `values` holds a NaN or infinity: `what` names the tensor or array.
    public static func requireFinite(_ values: [Float], _ what: String) throws(PTQError) {
        if let i = firstNonFinite(values) {
            throw PTQError("\(what) holds a non-finite value (\(values[i]) at element \(i))")
        }
    }

    public static func requireFinite(_ values: [Double], _ what: String) throws(PTQError) {
        if let i = firstNonFinite(values) {
            throw PTQError("\(what) holds a non-finite value (\(values[i]) at element \(i))")
        }
    }

    /// Renders a flat index of a tensor as `[row, column]` for matrices.
    public static func position(_ index: Int, shape: [Int]) -> String {
        guard shape.count == 2, shape[1] > 0 else { return "element \(index)" }
        return "[\(index / shape[1]), \(index % shape[1])]"
    }

    /// Throws when `tensor` holds a NaN or infinity, naming the tensor and the position.
    public static func requireFinite(_ tensor: Tensor, name: String) throws(PTQError) {
        if let i = firstNonFinite(tensor.data) {
            throw PTQError("tensor '\(name)' holds a non-finite value (\(tensor.data[i]) at \(position(i, shape: tensor.shape)))")
        }
    }
}

extension ModelConfig {
    /// Upper bounds that keep every size computed from the config (tensor shapes, caches)
    /// free of integer overflow, and the float fields finite.
    func validateLimits() throws(PTQError) {
        func need(_ ok: Bool, _ what: String) throws(PTQError) {
            if !ok { throw PTQError("invalid model config: \(what)") }
        }
        let limit = Validation.maximumDimension
        for (field, value) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize),
                               ("intermediate_size", intermediateSize), ("head_count", headCount),
                               ("kv_head_count", kvHeadCount), ("head_dim", headDim),
                               ("max_positions", maxPositions), ("type_vocab_size", typeVocabSize)] {
            try need(value <= limit, "\(field) \(value) is larger than \(limit)")
        }
        try need(typeVocabSize >= 0, "type_vocab_size must not be negative (got \(typeVocabSize))")
        try need(layerCount <= Validation.maximumLayers, "layer_count \(layerCount) is larger than \(Validation.maximumLayers)")
        try need(ropeTheta.isFinite, "rope_theta must be finite (got \(ropeTheta))")
        try need(normEpsilon.isFinite, "norm_epsilon must be finite (got \(normEpsilon))")
        for (name, shape) in expectedTensors {
            guard let n = Validation.checkedProduct(shape), n <= Validation.maximumTensorElements else {
                throw PTQError("invalid model config: tensor '\(name)' would have shape \(shape), too large")
            }
        }
    }
}

extension TokenizerSpec {
    /// Checks the tokenizer against the model it belongs to: every id it can produce is a row of
    /// the embedding, special ids are inside the vocabulary, and encoders truncate to at most
    /// `max_positions` tokens. Messages name the tokenizer field.
    public func validate(for config: ModelConfig) throws(PTQError) {
        guard !tokens.isEmpty else { throw PTQError("tokenizer: the vocabulary is empty") }
        guard tokens.count <= config.vocabSize else {
            throw PTQError("tokenizer: \(tokens.count) tokens but the model's vocab_size is \(config.vocabSize) "
                           + "(token ids past \(config.vocabSize - 1) have no embedding row)")
        }
        if !tokenTypes.isEmpty, tokenTypes.count != tokens.count {
            throw PTQError("tokenizer: \(tokenTypes.count) token types for \(tokens.count) tokens")
        }
        let named: [(String, Int?)] = [("bos_token_id", bosTokenID), ("eos_token_id", eosTokenID),
                                       ("unknown_token_id", unknownTokenID), ("padding_token_id", paddingTokenID),
                                       ("cls_token_id", clsTokenID), ("sep_token_id", sepTokenID)]
        for (field, id) in named {
            if let id, id < 0 || id >= tokens.count {
                throw PTQError("tokenizer: \(field) \(id) is outside the vocabulary (0..<\(tokens.count))")
            }
        }
        guard maxLength >= 0, maxLength <= config.maxPositions else {
            throw PTQError("tokenizer: max_length \(maxLength) must be between 0 and max_positions \(config.maxPositions)")
        }
        if config.architecture == .bert, maxLength == 0 {
            throw PTQError("tokenizer: max_length is 0 (no truncation) but an encoder accepts at most "
                           + "max_positions \(config.maxPositions) tokens")
        }
        guard maxInputCharsPerWord >= 0 else {
            throw PTQError("tokenizer: max_input_chars_per_word must not be negative (got \(maxInputCharsPerWord))")
        }
    }
}
