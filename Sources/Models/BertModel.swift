import Foundation
import Kernels
import PTQCore

/// BERT encoder (post-norm): embeddings + LayerNorm, softmax self-attention with a padding
/// mask, exact-erf GELU MLP, then mean pooling and L2 normalisation for sentence embeddings.
/// Shapes: T = tokens, D = hidden size, H = heads, Dh = head dim, F = MLP size.
public final class BertModel: Sendable {
    public let config: ModelConfig
    public let tokenizer: TokenizerSpec
    /// Structure and weight fingerprint (`ModelConfig.identity(weights:)`).
    public let identity: String
    /// Per layer: the op that replaces the float `P·V` (quantized probabilities), nil = float.
    public let attentionProbabilityOps: [(any AttentionProbabilityOp)?]

    struct Layer {
        let q, k, v, o: any LinearOp
        let attentionNormWeight, attentionNormBias: [Float]
        let up, down: any LinearOp
        let mlpNormWeight, mlpNormBias: [Float]
    }

    let tokenEmbedding: any EmbeddingTable      // (V, D)
    let positionEmbedding: [Float]   // (P, D)
    let tokenTypeEmbedding: [Float]  // (types, D)
    let embeddingNormWeight, embeddingNormBias: [Float]
    let layers: [Layer]

    public init(weights: some WeightSource) throws(PTQError) {
        let c = weights.config
        guard c.architecture == .bert else {
            throw PTQError("BertModel needs a bert checkpoint, got \(c.architecture.rawValue)")
        }
        try weights.validateModel()
        config = c
        tokenizer = weights.tokenizer
        identity = try c.identity { (name) throws(PTQError) in try weights.tensor(name) }
        tokenEmbedding = try weights.tokenEmbedding()
        positionEmbedding = try weights.checkedVector(TensorNames.positionEmbedding)
        tokenTypeEmbedding = try weights.checkedVector(TensorNames.tokenTypeEmbedding)
        embeddingNormWeight = try weights.checkedVector(TensorNames.embeddingNormWeight)
        embeddingNormBias = try weights.checkedVector(TensorNames.embeddingNormBias)
        var layers: [Layer] = []
        for l in 0..<c.layerCount {
            func name(_ s: String) -> String { TensorNames.layer(l, s) }
            layers.append(Layer(
                q: try weights.checkedLinear(name("attention/q_proj")), k: try weights.checkedLinear(name("attention/k_proj")),
                v: try weights.checkedLinear(name("attention/v_proj")), o: try weights.checkedLinear(name("attention/o_proj")),
                attentionNormWeight: try weights.checkedVector(name("attention_norm/weight")),
                attentionNormBias: try weights.checkedVector(name("attention_norm/bias")),
                up: try weights.checkedLinear(name("mlp/up_proj")), down: try weights.checkedLinear(name("mlp/down_proj")),
                mlpNormWeight: try weights.checkedVector(name("mlp_norm/weight")),
                mlpNormBias: try weights.checkedVector(name("mlp_norm/bias"))))
        }
        self.layers = layers
        attentionProbabilityOps = try (0..<c.layerCount).map { (l) throws(PTQError) in try weights.attentionProbabilityOp(layer: l) }
    }

    /// Token states `(T, D)` of one sequence. Only the first `validLength` tokens are real;
    /// the rest are padding that no query attends to (and whose states are meaningless).
    public func hiddenStates(_ tokens: [Int], validLength: Int? = nil, hooks: ForwardHooks = ForwardHooks()) -> [Float] {
        let observer = hooks.observer
        let probabilityOps = hooks.attentionProbabilityOps ?? attentionProbabilityOps
        let c = config
        let T = tokens.count, D = c.hiddenSize, F = c.intermediateSize, H = c.headCount, Dh = c.headDim
        let valid = validLength ?? T
        precondition(T <= c.maxPositions, "sequence of \(T) tokens exceeds max positions \(c.maxPositions)")
        var x = [Float](repeating: 0, count: T * D)                    // (T, D)
        x.withUnsafeMutableBufferPointer { xp in
            for (t, token) in tokens.enumerated() {
                precondition(token >= 0 && token < c.vocabSize, "token id \(token) out of range")
                tokenEmbedding.copyRow(token, into: xp.baseAddress! + t * D)
                for i in 0..<D { xp[t * D + i] += positionEmbedding[t * D + i] + tokenTypeEmbedding[i] }
            }
        }
        let epsilon = Float(c.normEpsilon)
        Ops.layerNormInPlace(&x, weight: embeddingNormWeight, bias: embeddingNormBias, rows: T, width: D, epsilon: epsilon)
        var q = [Float](repeating: 0, count: T * D), k = q, v = q, attention = q, projected = q
        var up = [Float](repeating: 0, count: T * F)
        var scores = [Float](repeating: 0, count: T * T)
        let scale = 1 / Float(Dh).squareRoot()

        for (l, layer) in layers.enumerated() {
            observe(observer, QuantizationPoints.attentionInput(l), x, rows: T, columns: D)
            layer.q.forward(x, rows: T, into: &q)
            layer.k.forward(x, rows: T, into: &k)
            layer.v.forward(x, rows: T, into: &v)
            for h in 0..<H {
                let headOp = probabilityOps[l] as? any HeadAwareAttentionOp
                q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in
                    scores.withUnsafeMutableBufferPointer { sp in
                        // Fully quantized attention computes Q·Kᵀ on codes; otherwise float.
                        if headOp?.scores(head: h, queries: qp.baseAddress! + h * Dh, rows: T, keys: kp.baseAddress! + h * Dh,
                                          columns: T, width: Dh, stride: D, alpha: scale, into: sp.baseAddress!) != true {
                            BLAS.gemm(m: T, n: T, k: Dh, alpha: scale, a: qp.baseAddress! + h * Dh, lda: D,
                                      b: kp.baseAddress! + h * Dh, ldb: D, transposeB: true, c: sp.baseAddress!, ldc: T)
                        }
                        for t in 0..<T {
                            let row = sp.baseAddress! + t * T
                            Ops.softmax(row, count: valid)   // padding keys are masked out
                            for j in valid..<T { row[j] = 0 }
                        }
                    }
                }}
                observe(observer, QuantizationPoints.attentionProbabilities(l), scores, rows: T, columns: T)
                scores.withUnsafeBufferPointer { sp in v.withUnsafeBufferPointer { vp in
                    attention.withUnsafeMutableBufferPointer { op in
                        if let headOp {
                            headOp.multiply(head: h, probabilities: sp.baseAddress!, rows: T, columns: T, values: vp.baseAddress! + h * Dh,
                                            valueStride: D, width: Dh, into: op.baseAddress! + h * Dh, outStride: D)
                            return
                        }
                        if let probabilityOp = probabilityOps[l] {
                            probabilityOp.multiply(probabilities: sp.baseAddress!, rows: T, columns: T, values: vp.baseAddress! + h * Dh,
                                                   valueStride: D, width: Dh, into: op.baseAddress! + h * Dh, outStride: D)
                            return
                        }
                        BLAS.gemm(m: T, n: Dh, k: T, a: sp.baseAddress!, lda: T, b: vp.baseAddress! + h * Dh, ldb: D,
                                  transposeB: false, c: op.baseAddress! + h * Dh, ldc: D)
                    }
                }}
            }
            observe(observer, QuantizationPoints.attentionOutputInput(l), attention, rows: T, columns: D)
            layer.o.forward(attention, rows: T, into: &projected)
            Ops.add(projected, into: &x, count: T * D)
            Ops.layerNormInPlace(&x, weight: layer.attentionNormWeight, bias: layer.attentionNormBias, rows: T, width: D, epsilon: epsilon)

            observe(observer, QuantizationPoints.mlpInput(l), x, rows: T, columns: D)
            layer.up.forward(x, rows: T, into: &up)
            Ops.gelu(&up, count: T * F)
            observe(observer, QuantizationPoints.mlpDownInput(l), up, rows: T, columns: F)
            layer.down.forward(up, rows: T, into: &projected)
            Ops.add(projected, into: &x, count: T * D)
            Ops.layerNormInPlace(&x, weight: layer.mlpNormWeight, bias: layer.mlpNormBias, rows: T, width: D, epsilon: epsilon)
            observe(observer, QuantizationPoints.layerOutput(l), x, rows: T, columns: D)
        }
        return x
    }

    /// Sentence embedding of already-tokenized ids (pooling and normalisation from the config).
    public func embed(tokens: [Int], hooks: ForwardHooks = ForwardHooks()) -> [Float] {
        let D = config.hiddenSize, T = tokens.count
        let states = hiddenStates(tokens, hooks: hooks)
        var pooled = [Float](repeating: 0, count: D)
        switch config.pooling {
        case .cls:
            for i in 0..<D { pooled[i] = states[i] }
        case .mean, .none:
            for t in 0..<T { for i in 0..<D { pooled[i] += states[t * D + i] } }
            for i in 0..<D { pooled[i] /= Float(max(T, 1)) }
        }
        if config.normalizeEmbeddings {
            var norm: Float = 0
            for value in pooled { norm += value * value }
            let scale = 1 / max(norm.squareRoot(), 1e-12)
            for i in 0..<D { pooled[i] *= scale }
        }
        return pooled
    }

    @inline(__always)
    private func observe(_ observer: (any ActivationObserver)?, _ point: String, _ values: [Float],
                         rows: Int, columns: Int) {
        guard let observer else { return }
        values.withUnsafeBufferPointer {
            observer.observe(point: point, values: UnsafeBufferPointer(rebasing: $0[0..<rows * columns]), rows: rows, columns: columns)
        }
    }
}
