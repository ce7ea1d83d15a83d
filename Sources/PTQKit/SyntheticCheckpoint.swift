import Foundation

extension PTQ {
    /// Shape of a random-weight LLaMA checkpoint (``writeSyntheticLlama(shape:tokenizerFrom:to:)``).
    public struct SyntheticLlamaShape: Sendable {
        public var hiddenSize = 2048
        public var intermediateSize = 5632
        public var layerCount = 28
        public var headCount = 16
        public var kvHeadCount = 4
        public var maxPositions = 2048
        /// Standard deviation of every matrix entry (uniformly distributed); norm weights are 1.
        public var standardDeviation: Float = 0.02
        public var seed: UInt64 = 0

        public init() {}

        /// Parameters of the model with a `vocabSize`-token vocabulary and an untied head.
        public func parameterCount(vocabSize: Int) -> Int {
            config(vocabSize: vocabSize, name: "").expectedTensors.reduce(0) { $0 + $1.shape.reduce(1, *) }
        }

        func config(vocabSize: Int, name: String) -> ModelConfig {
            ModelConfig(architecture: .llama, vocabSize: vocabSize, hiddenSize: hiddenSize,
                        intermediateSize: intermediateSize, layerCount: layerCount, headCount: headCount,
                        kvHeadCount: kvHeadCount, headDim: hiddenSize / headCount, maxPositions: maxPositions,
                        ropeTheta: 10_000, normEpsilon: 1e-5, activation: .silu, tiedEmbeddings: false, name: name)
        }
    }

    /// Writes a LLaMA checkpoint of `shape` with random weights (untied head, grouped-query
    /// attention) and the tokenizer of the checkpoint `tokenizerFrom`, so that real text
    /// tokenizes for calibration. Tensors are generated and written one at a time: peak memory is
    /// the largest tensor (the embedding table), whatever the model's size. The same shape and
    /// seed give the same file contents. Returns the parameter count.
    @discardableResult
    public static func writeSyntheticLlama(shape: SyntheticLlamaShape, tokenizerFrom: String,
                                           to path: String) throws(PTQError) -> Int {
        guard shape.headCount > 0, shape.hiddenSize % shape.headCount == 0 else {
            throw PTQError("hidden size \(shape.hiddenSize) must be a multiple of the head count \(shape.headCount)")
        }
        guard shape.standardDeviation.isFinite, shape.standardDeviation > 0 else {
            throw PTQError("the weights' standard deviation must be positive (got \(shape.standardDeviation))")
        }
        let tokenizer = try CheckpointReader(path: tokenizerFrom).tokenizer
        let config = shape.config(vocabSize: tokenizer.tokens.count, name: "synthetic-llama-\(shape.layerCount)x\(shape.hiddenSize)")
        // Uniform on [-a, a] has standard deviation a/√3.
        let bound = shape.standardDeviation * Float(3).squareRoot()
        var index: UInt64 = 0
        try CheckpointWriter.write(
            config: config, tokenizer: tokenizer,
            metadata: ["source": "synthetic (random weights)", "seed": String(shape.seed),
                       "std": String(shape.standardDeviation)], to: path) { (name, dims) throws(PTQError) in
            index += 1
            let count = dims.reduce(1, *)
            if dims.count == 1 { return Tensor(shape: dims, data: [Float](repeating: 1, count: count)) }
            // One stream per tensor, so a tensor's values do not depend on the others' sizes.
            var rng = SplitMix(seed: shape.seed &* 0x9E37_79B9_7F4A_7C15 &+ index)
            let data = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                for i in 0..<count {
                    // 24 random bits → [0, 1) exactly representable in a Float.
                    let unit = Float(rng.next() >> 40) * 0x1p-24
                    buffer[i] = (2 * unit - 1) * bound
                }
                initialized = count
            }
            return Tensor(shape: dims, data: data)
        }
        return shape.parameterCount(vocabSize: config.vocabSize)
    }
}
