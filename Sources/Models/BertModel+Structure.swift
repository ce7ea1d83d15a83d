import PTQCore

extension BertModel: SentenceEncoder {
    /// Per block (post-norm): q/k/v fed by the previous LayerNorm (the embedding LayerNorm for
    /// block 0), o by the attention heads, the intermediate dense (`up_proj`) by the attention
    /// LayerNorm, the output dense (`down_proj`) by `GELU(up)`. No output head.
    public static func structure(for config: ModelConfig) -> ModelStructure {
        let P = QuantizationPoints.self
        let layers = ModelStructure.blockLinearLayers(of: config, kinds: [
            ("attention/q_proj", .attentionInputProjection, P.attentionInput),
            ("attention/k_proj", .attentionInputProjection, P.attentionInput),
            ("attention/v_proj", .attentionInputProjection, P.attentionInput),
            ("attention/o_proj", .attentionOutputProjection, P.attentionOutputInput),
            ("mlp/up_proj", .mlpInputProjection, P.mlpInput),
            ("mlp/down_proj", .mlpOutputProjection(config.activation), P.mlpDownInput),
        ])
        return ModelStructure(architecture: .bert, task: .sentenceEmbedding, linearLayers: layers, outputHead: nil,
                              activationSites: ModelStructure.blockActivationSites(of: config))
    }

    public func observe(_ tokens: [Int], hooks: ForwardHooks) {
        _ = hiddenStates(tokens, hooks: hooks)
    }
}
