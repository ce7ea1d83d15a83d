/// Canonical tensor names and shapes: the one place that says which tensors a model has.
///
/// Names are slash-separated HDF5 paths (`layers/3/attention/q_proj/weight`); linear weights
/// are `[out, in]`. LLaMA Q/K rows are in the Hugging Face order (RoPE rotates halves),
/// not llama.cpp's interleaved order.
public enum TensorNames {
    public static let tokenEmbedding = "embeddings/token/weight"
    public static let positionEmbedding = "embeddings/position/weight"
    public static let tokenTypeEmbedding = "embeddings/token_type/weight"
    public static let embeddingNormWeight = "embeddings/norm/weight"
    public static let embeddingNormBias = "embeddings/norm/bias"
    public static let finalNorm = "final_norm/weight"
    public static let lmHead = "lm_head/weight"
    /// The LM head as a plannable linear layer (its weight is `lm_head/weight`, or the token
    /// embedding table when the model ties them).
    public static let lmHeadLayer = "lm_head"
    /// The token embedding table as a weight-only quantized "layer" (rows = tokens).
    public static let tokenEmbeddingLayer = "embeddings/token"

    /// The linear layers of one transformer block, in forward order.
    public static let linearKinds = ["attention/q_proj", "attention/k_proj", "attention/v_proj",
                                     "attention/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj"]

    public static func layer(_ index: Int, _ suffix: String) -> String {
        "layers/\(index)/\(suffix)"
    }
}

extension ModelConfig {
    /// Every tensor the model needs, with its shape, in a stable order.
    public var expectedTensors: [(name: String, shape: [Int])] {
        let h = hiddenSize, i = intermediateSize
        let qOut = headCount * headDim, kvOut = kvHeadCount * headDim
        var list: [(String, [Int])] = [(TensorNames.tokenEmbedding, [vocabSize, h])]
        switch architecture {
        case .llama:
            for l in 0..<layerCount {
                func t(_ s: String, _ shape: [Int]) { list.append((TensorNames.layer(l, s), shape)) }
                t("attention_norm/weight", [h])
                t("attention/q_proj/weight", [qOut, h])
                t("attention/k_proj/weight", [kvOut, h])
                t("attention/v_proj/weight", [kvOut, h])
                t("attention/o_proj/weight", [h, qOut])
                t("mlp_norm/weight", [h])
                t("mlp/gate_proj/weight", [i, h])
                t("mlp/up_proj/weight", [i, h])
                t("mlp/down_proj/weight", [h, i])
            }
            list.append((TensorNames.finalNorm, [h]))
            if !tiedEmbeddings { list.append((TensorNames.lmHead, [vocabSize, h])) }
        case .bert:
            list.append((TensorNames.positionEmbedding, [maxPositions, h]))
            list.append((TensorNames.tokenTypeEmbedding, [typeVocabSize, h]))
            list.append((TensorNames.embeddingNormWeight, [h]))
            list.append((TensorNames.embeddingNormBias, [h]))
            for l in 0..<layerCount {
                func t(_ s: String, _ shape: [Int]) { list.append((TensorNames.layer(l, s), shape)) }
                t("attention/q_proj/weight", [h, h]); t("attention/q_proj/bias", [h])
                t("attention/k_proj/weight", [h, h]); t("attention/k_proj/bias", [h])
                t("attention/v_proj/weight", [h, h]); t("attention/v_proj/bias", [h])
                t("attention/o_proj/weight", [h, h]); t("attention/o_proj/bias", [h])
                t("attention_norm/weight", [h]); t("attention_norm/bias", [h])
                t("mlp/up_proj/weight", [i, h]); t("mlp/up_proj/bias", [i])
                t("mlp/down_proj/weight", [h, i]); t("mlp/down_proj/bias", [h])
                t("mlp_norm/weight", [h]); t("mlp_norm/bias", [h])
            }
        }
        return list
    }
}
