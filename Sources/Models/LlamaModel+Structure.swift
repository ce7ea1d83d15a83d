import PTQCore

extension LlamaModel: GenerativeModel {
    /// Per block: q/k/v and gate/up fed by RMSNorm, o by the attention heads, down by
    /// `SiLU(gate)·up`; the LM head (tied or not) by the final norm.
    public static func structure(for config: ModelConfig) -> ModelStructure {
        let P = QuantizationPoints.self
        let layers = ModelStructure.blockLinearLayers(of: config, kinds: [
            ("attention/q_proj", .attentionInputProjection, P.attentionInput),
            ("attention/k_proj", .attentionInputProjection, P.attentionInput),
            ("attention/v_proj", .attentionInputProjection, P.attentionInput),
            ("attention/o_proj", .attentionOutputProjection, P.attentionOutputInput),
            ("mlp/gate_proj", .mlpInputProjection, P.mlpInput),
            ("mlp/up_proj", .mlpInputProjection, P.mlpInput),
            ("mlp/down_proj", .mlpOutputProjection(config.activation), P.mlpDownInput),
        ])
        let head = LinearLayerDescription(name: "lm_head", role: .lmHead, inputPoint: P.lmHeadInput, block: nil,
                                          outFeatures: config.vocabSize, inFeatures: config.hiddenSize, hasBias: false)
        return ModelStructure(architecture: .llama, task: .languageModeling, linearLayers: layers, outputHead: head,
                              activationSites: ModelStructure.blockActivationSites(of: config))
    }

    public func observe(_ tokens: [Int], hooks: ForwardHooks) {
        _ = hiddenStates(tokens, hooks: hooks)
    }

    public func logits(for tokens: [Int], rows: Range<Int>?, hooks: ForwardHooks) -> [Float] {
        forward(tokens, cache: nil, logitRows: rows, hooks: hooks)
    }

    /// An empty cache for at most `capacity` positions whose keys and values are stored as
    /// `precision` (``KVCachePrecision/f16`` halves the bytes a decoded token reads from it).
    public func makeCache(capacity: Int, precision: KVCachePrecision) -> KVCache {
        KVCache(config: config, capacity: capacity, precision: precision)
    }
}

extension LlamaModel.KVCache: DecodingCache {}
