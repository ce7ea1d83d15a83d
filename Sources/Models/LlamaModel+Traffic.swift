import PTQCore

extension LlamaModel {
    /// Bytes one decoded token reads besides the KV cache: every linear layer's weights and
    /// parameters, the norms, the LM head and one embedding row. The memory-bandwidth bound of
    /// decode is bandwidth / (this + `kvCacheBytes(positions:)`).
    public var decodeWeightBytes: Int {
        let c = config
        var bytes = lmHead.weightBytes + 4 * (c.hiddenSize + finalNorm.count)
        for layer in layers {
            for op in [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down] { bytes += op.weightBytes }
            bytes += 4 * (layer.attentionNorm.count + layer.mlpNorm.count)
        }
        return bytes
    }

    /// Bytes of keys and values a token attending over `positions` cached positions reads from
    /// a cache of `precision` (4 bytes an element for f32, 2 for f16).
    public func kvCacheBytes(positions: Int, precision: KVCachePrecision) -> Int {
        2 * config.layerCount * positions * config.kvHeadCount * config.headDim * precision.bytesPerElement
    }
}
