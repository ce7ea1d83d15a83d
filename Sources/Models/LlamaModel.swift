import Foundation
import Kernels
import PTQCore

/// LLaMA-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, optional tied
/// LM head. Shapes: T = tokens in this call, S = cached + new positions, D = hidden size,
/// H/KV = query/key-value heads, Dh = head dim, F = MLP size, V = vocabulary.
public final class LlamaModel: Sendable {
    public let config: ModelConfig
    public let tokenizer: TokenizerSpec
    /// Structure and weight fingerprint (`ModelConfig.identity(weights:)`).
    public let identity: String
    /// Per layer: the op that replaces the float `P·V` (quantized probabilities), nil = float.
    public let attentionProbabilityOps: [(any AttentionProbabilityOp)?]

    struct Layer {
        let attentionNorm: [Float]
        let q, k, v, o: any LinearOp
        let mlpNorm: [Float]
        let gate, up, down: any LinearOp
        /// q/k/v and gate/up as float layers that run a decode row in one pool job each (nil
        /// when they are quantized or have a bias: each runs its own `forward`).
        let floatQKV: [FloatLinear]?
        let floatGateUp: [FloatLinear]?

        init(attentionNorm: [Float], q: any LinearOp, k: any LinearOp, v: any LinearOp, o: any LinearOp,
             mlpNorm: [Float], gate: any LinearOp, up: any LinearOp, down: any LinearOp) {
            self.attentionNorm = attentionNorm
            self.q = q; self.k = k; self.v = v; self.o = o
            self.mlpNorm = mlpNorm
            self.gate = gate; self.up = up; self.down = down
            floatQKV = FloatLinear.fusable([q, k, v])
            floatGateUp = FloatLinear.fusable([gate, up])
        }
    }

    let embedding: any EmbeddingTable   // (V, D)
    let layers: [Layer]
    let finalNorm: [Float]
    let lmHead: any LinearOp
    let rope: RoPE

    public init(weights: some WeightSource) throws(PTQError) {
        let c = weights.config
        guard c.architecture == .llama else {
            throw PTQError("LlamaModel needs a llama checkpoint, got \(c.architecture.rawValue)")
        }
        try weights.validateModel()
        config = c
        tokenizer = weights.tokenizer
        identity = try c.identity { (name) throws(PTQError) in try weights.tensor(name) }
        embedding = try weights.tokenEmbedding()
        var layers: [Layer] = []
        for l in 0..<c.layerCount {
            func name(_ s: String) -> String { TensorNames.layer(l, s) }
            layers.append(Layer(
                attentionNorm: try weights.checkedVector(name("attention_norm/weight")),
                q: try weights.checkedLinear(name("attention/q_proj")), k: try weights.checkedLinear(name("attention/k_proj")),
                v: try weights.checkedLinear(name("attention/v_proj")), o: try weights.checkedLinear(name("attention/o_proj")),
                mlpNorm: try weights.checkedVector(name("mlp_norm/weight")),
                gate: try weights.checkedLinear(name("mlp/gate_proj")), up: try weights.checkedLinear(name("mlp/up_proj")),
                down: try weights.checkedLinear(name("mlp/down_proj"))))
        }
        self.layers = layers
        attentionProbabilityOps = try (0..<c.layerCount).map { (l) throws(PTQError) in try weights.attentionProbabilityOp(layer: l) }
        finalNorm = try weights.checkedVector(TensorNames.finalNorm)
        if c.tiedEmbeddings {
            // A head of its own (quantized, or float beside a quantized table), else the float table.
            if let head = try weights.tiedLMHead() {
                guard head.outFeatures == c.vocabSize, head.inFeatures == c.hiddenSize else {
                    throw PTQError("LM head is \(head.outFeatures)×\(head.inFeatures), expected \(c.vocabSize)×\(c.hiddenSize)")
                }
                lmHead = head
            } else if let table = embedding as? FloatEmbedding {
                lmHead = FloatLinear(weight: Tensor(shape: [c.vocabSize, c.hiddenSize], data: table.table))
            } else {
                throw PTQError("the embedding table is quantized but the tied LM head has no weights of its own "
                               + "(neither a quantized 'lm_head' nor a float 'lm_head/weight')")
            }
        } else {
            lmHead = try weights.checkedLinear("lm_head")
        }
        rope = RoPE(headDim: c.headDim, theta: c.ropeTheta)
    }

    /// Keys and values of past positions, for incremental decoding, stored as float or as IEEE
    /// half (``KVCachePrecision``).
    public final class KVCache {
        public let capacity: Int
        /// Element type of the stored keys and values.
        public let precision: KVCachePrecision
        public private(set) var count = 0
        var keys: [[Float]]    // f32: per layer (capacity, KV·Dh); empty for f16
        var values: [[Float]]
        // f16: per layer (KV, capacity, Dh) half bit patterns, head-major: decode attention reads
        // each KV head's positions as one contiguous stream (interleaved rows of KV·Dh made it a
        // strided read of 128 of every 384 bytes); empty for f32.
        // (one arena each, on 2 MB pages where granted: HalfCacheArena). Each head holds
        // capacity rounded up to whole 16-position tiles.
        // With `tiledKeys` the keys of a head are tiles of 16 positions, dimension-major inside a
        // tile (ck_attend_part_f16t's layout: decode q·K needs no horizontal sums); values stay
        // position-major.
        let halfKeys: HalfCacheArena
        let halfValues: HalfCacheArena
        /// Whether the half cache's keys are tiled (`TokenKernels.tilesHalfKeys`, fixed at init).
        let tiledKeys: Bool
        /// Halves from one KV head of a half cache layer to the next (capacity rounded up to 16
        /// positions, times the head size); 0 for a float cache.
        let halfHeadStride: Int

        /// An empty cache for at most `capacity` positions of a model with `config`.
        public init(config: ModelConfig, capacity: Int, precision: KVCachePrecision = .f32) {
            self.capacity = capacity
            self.precision = precision
            let size = capacity * config.kvHeadCount * config.headDim
            switch precision {
            case .f32:
                keys = Array(repeating: [Float](repeating: 0, count: size), count: config.layerCount)
                values = keys
                halfKeys = HalfCacheArena(layers: 0, count: 0)
                halfValues = HalfCacheArena(layers: 0, count: 0)
                tiledKeys = false
                halfHeadStride = 0
            case .f16:
                keys = []
                values = []
                halfHeadStride = (capacity + 15) / 16 * 16 * config.headDim
                halfKeys = HalfCacheArena(layers: config.layerCount, count: config.kvHeadCount * halfHeadStride)
                halfValues = HalfCacheArena(layers: config.layerCount, count: config.kvHeadCount * halfHeadStride)
                tiledKeys = TokenKernels.tilesHalfKeys(dim: config.headDim)
            }
        }

        /// The forward pass's arrays for one decoded token, kept across tokens so that a decode
        /// step allocates nothing once they exist (`LlamaModel.decode`).
        var decodeBuffers = Buffers()

        public func reset() { count = 0 }
        func advance(by n: Int) { count += n }
    }

    /// The arrays of one forward pass (sizes in `prepare`). A fresh set per prompt; one set per
    /// cache for decoding, reused token after token.
    struct Buffers {
        var x: [Float] = [], normed: [Float] = [], q: [Float] = [], attention: [Float] = []
        var projected: [Float] = [], gate: [Float] = [], up: [Float] = [], scores: [Float] = []
        var localKeys: [Float] = [], localValues: [Float] = [], angles: [Float] = []

        /// Makes every array at least as long as a pass of T tokens over S positions needs
        /// (`scoreRows` rows of S scores; `local`: float keys/values for the T new positions).
        mutating func prepare(_ c: ModelConfig, tokens T: Int, positions S: Int, scoreRows: Int, local: Bool) {
            func grow(_ a: inout [Float], _ n: Int) { if a.count < n { a = [Float](repeating: 0, count: n) } }
            let qWidth = c.headCount * c.headDim, kvWidth = c.kvHeadCount * c.headDim
            grow(&x, T * c.hiddenSize); grow(&normed, T * c.hiddenSize); grow(&projected, T * c.hiddenSize)
            grow(&q, T * qWidth); grow(&attention, T * qWidth)
            grow(&gate, T * c.intermediateSize); grow(&up, T * c.intermediateSize)
            grow(&scores, scoreRows * S)
            if local { grow(&localKeys, T * kvWidth); grow(&localValues, T * kvWidth) }
            grow(&angles, T * c.headDim)
        }
    }

    /// Runs one `token` after the positions in `cache` and writes its logits (vocabulary size)
    /// into `logits`. The same values as `forward([token], cache: cache)`; after the first call on
    /// a cache it allocates no heap memory (the arrays live in the cache, the layers' kernels use
    /// per-thread scratch).
    public func decode(_ token: Int, cache: KVCache, into logits: UnsafeMutableBufferPointer<Float>) {
        precondition(logits.count == config.vocabSize, "decode: \(logits.count) logits for a vocabulary of \(config.vocabSize)")
        let S = cache.count + 1
        precondition(S <= cache.capacity, "KV cache overflow: \(S) > \(cache.capacity)")
        // Taken out of the cache for the pass, so the arrays stay uniquely referenced (no copy).
        var buffers = cache.decodeBuffers
        cache.decodeBuffers = Buffers()
        // Scores for every head over the cache's whole capacity: sized once per cache.
        buffers.prepare(config, tokens: 1, positions: cache.capacity, scoreRows: config.headCount,
                        local: cache.precision == .f16)
        // PTQ_DECODE_PROFILE=1: per-phase timing of the token (ck_probe.h); else each mark is a branch.
        DecodeProbe.beginToken(depth: cache.count)
        // The GEMVs' row splits: one long stream a thread (`Parallel.decodeChunksPerThread`).
        Parallel.withDecodeChunks {
            withUnsafePointer(to: token) { t in
                run(UnsafeBufferPointer(start: t, count: 1), cache: cache, hooks: ForwardHooks(), buffers: &buffers)
            }
            buffers.normed.withUnsafeBufferPointer { h in lmHead.forward(h.baseAddress!, rows: 1, into: logits.baseAddress!) }
        }
        mark(.head)
        DecodeProbe.endToken()
        cache.decodeBuffers = buffers
    }

    /// Runs `tokens` after the positions already in `cache` and returns logits `(T', V)` for
    /// the rows in `logitRows` (all rows when nil). Without a cache the tokens start at 0.
    public func forward(_ tokens: [Int], cache: KVCache? = nil, logitRows: Range<Int>? = nil,
                        hooks: ForwardHooks = ForwardHooks()) -> [Float] {
        let hidden = hiddenStates(tokens, cache: cache, hooks: hooks)
        let rows = logitRows ?? 0..<tokens.count
        var logits = [Float](repeating: 0, count: rows.count * config.vocabSize)
        hidden.withUnsafeBufferPointer { h in
            logits.withUnsafeMutableBufferPointer { out in
                lmHead.forward(h.baseAddress! + rows.lowerBound * config.hiddenSize, rows: rows.count,
                               into: out.baseAddress!)
            }
        }
        return logits
    }

    /// Final-normed hidden states `(T, D)`.
    public func hiddenStates(_ tokens: [Int], cache: KVCache? = nil, hooks: ForwardHooks = ForwardHooks()) -> [Float] {
        let T = tokens.count, S = (cache?.count ?? 0) + T
        var buffers = Buffers()
        // (T, S) one head; one query row (decode) keeps every head's row: (H, S). Float keys and
        // values of this call's positions: the whole sequence without a cache; the new T
        // positions before they are rounded into a half cache.
        buffers.prepare(config, tokens: T, positions: S, scoreRows: T == 1 ? config.headCount : T,
                        local: cache == nil || cache?.precision == .f16)
        tokens.withUnsafeBufferPointer { run($0, cache: cache, hooks: hooks, buffers: &buffers) }
        var normed = buffers.normed
        if normed.count > T * config.hiddenSize { normed.removeLast(normed.count - T * config.hiddenSize) }
        return normed
    }

    /// Moves an array out of `slot` (leaving it empty), so that the caller's copy is unique.
    private func take(_ slot: inout [Float]) -> [Float] {
        var value: [Float] = []
        swap(&value, &slot)
        return value
    }

    /// The forward pass of `tokens` after the positions in `cache`, in `buffers` (sized by
    /// `Buffers.prepare`); leaves the final-normed hidden states in `buffers.normed` (first T·D).
    private func run(_ tokens: UnsafeBufferPointer<Int>, cache: KVCache?, hooks: ForwardHooks, buffers: inout Buffers) {
        let observer = hooks.observer
        let c = config
        let T = tokens.count, D = c.hiddenSize, F = c.intermediateSize
        let start = cache?.count ?? 0
        let S = start + T
        precondition(cache == nil || S <= cache!.capacity, "KV cache overflow: \(S) > \(cache!.capacity)")
        let qWidth = c.headCount * c.headDim, kvWidth = c.kvHeadCount * c.headDim

        // Local names for the buffers' arrays (moved out, so in-place writes never copy), put
        // back at the end.
        var x = take(&buffers.x)                   // (T, D) residual
        var normed = take(&buffers.normed)         // (T, D)
        var q = take(&buffers.q)                   // (T, H·Dh)
        var attention = take(&buffers.attention)   // (T, H·Dh)
        var projected = take(&buffers.projected)   // (T, D)
        var gate = take(&buffers.gate)             // (T, F)
        var up = take(&buffers.up)                 // (T, F)
        var scores = take(&buffers.scores)
        var localKeys = take(&buffers.localKeys)
        var localValues = take(&buffers.localValues)
        var angles = take(&buffers.angles)
        defer {
            buffers.x = x; buffers.normed = normed; buffers.q = q; buffers.attention = attention
            buffers.projected = projected; buffers.gate = gate; buffers.up = up; buffers.scores = scores
            buffers.localKeys = localKeys; buffers.localValues = localValues; buffers.angles = angles
        }
        x.withUnsafeMutableBufferPointer { xp in
            for (t, token) in tokens.enumerated() {
                precondition(token >= 0 && token < c.vocabSize, "token id \(token) out of range")
                embedding.copyRow(token, into: xp.baseAddress! + t * D)
            }
        }
        let halfCache = cache?.precision == .f16
        // A half cache widened to float (S positions) for the paths that read float keys: prefill,
        // observers and quantized-probability ops. Plain decode reads the halves directly.
        var wideKeys: [Float] = [], wideValues: [Float] = []
        let epsilon = Float(c.normEpsilon)
        // cos/sin of every rotation angle of these T positions, once for all layers.
        angles.withUnsafeMutableBufferPointer { rope.fill($0.baseAddress!, positions: start..<S) }
        mark(.embedding)
        // Residual adds fused into the next RMSNorm (`fusedResidualNorm`): `projected` holds the
        // last down_proj output, not yet added to x, while this is set.
        let fuseResidual = Self.fusedResidualNorm
        var pendingResidual = false

        for (l, layer) in layers.enumerated() {
            // --- attention ---
            if pendingResidual {
                Ops.addRMSNorm(projected, into: &x, weight: layer.attentionNorm, rows: T, width: D, epsilon: epsilon,
                               normed: &normed)
                pendingResidual = false
            } else {
                Ops.rmsNorm(x, weight: layer.attentionNorm, rows: T, width: D, epsilon: epsilon, into: &normed)
            }
            mark(.attentionNorm)
            observe(observer, QuantizationPoints.attentionInput(l), normed, rows: T, columns: D)
            // One decode row through float q/k/v: one pool job for the three (inside projectKV).
            let fusedQKV = T == 1 ? layer.floatQKV : nil
            // Quantized decode q/k/v as one pool job, a layer a task.
            let groupedQKV = T == 1 && fusedQKV == nil && Self.concurrentDecodeGEMVs
            // The fused schedule: RoPE and the half-cache append inside that job (`Epilogue`).
            let epilogues = groupedQKV && Self.fusedDecodeSchedule
            if fusedQKV == nil, !groupedQKV { layer.q.forward(normed, rows: T, into: &q) }
            // Writes rotated keys and values of the T new positions at row `first` of the buffers
            // (and q, when the three run as one job).
            func projectKV(_ keys: UnsafeMutablePointer<Float>, _ values: UnsafeMutablePointer<Float>, first: Int) {
                normed.withUnsafeBufferPointer { n in
                    if let fusedQKV {
                        q.withUnsafeMutableBufferPointer { qp in
                            FloatLinear.forwardRow(fusedQKV, x: n.baseAddress!, into: qp.baseAddress!,
                                                   keys + first * kvWidth, values + first * kvWidth)
                        }
                    } else if groupedQKV {
                        q.withUnsafeMutableBufferPointer { qp in
                            angles.withUnsafeBufferPointer { a in
                                // halfKeys/halfValues: the half cache at the new position (fused only).
                                func group(_ halfKeys: UnsafeMutablePointer<UInt16>?, _ halfValues: UnsafeMutablePointer<UInt16>?) {
                                    func then(_ rope: RoPE?, heads: Int, _ half: UnsafeMutablePointer<UInt16>?,
                                              tiled: Bool = false) -> Epilogue? {
                                        guard epilogues, rope != nil || half != nil else { return nil }
                                        return Epilogue(rope: rope, angles: a.baseAddress!, heads: heads, dim: c.headDim, half: half,
                                                        headStride: cache?.halfHeadStride ?? 0,
                                                        tiledPosition: tiled ? start : nil)
                                    }
                                    Self.forwardConcurrently(ConcurrentGEMVs(
                                        first: ConcurrentGEMV(op: layer.q, x: n.baseAddress!, y: qp.baseAddress!,
                                                              then: then(rope, heads: c.headCount, nil)),
                                        second: ConcurrentGEMV(op: layer.k, x: n.baseAddress!, y: keys + first * kvWidth,
                                                               then: then(rope, heads: c.kvHeadCount, halfKeys,
                                                                          tiled: cache?.tiledKeys ?? false)),
                                        third: ConcurrentGEMV(op: layer.v, x: n.baseAddress!, y: values + first * kvWidth,
                                                              then: then(nil, heads: c.kvHeadCount, halfValues))))
                                }
                                if epilogues, let cache, halfCache {
                                    cache.halfKeys[l].withUnsafeMutableBufferPointer { hk in
                                        cache.halfValues[l].withUnsafeMutableBufferPointer { hv in
                                            // Tiled keys: the layer's start (the epilogue places the position).
                                            group(hk.baseAddress! + (cache.tiledKeys ? 0 : start * c.headDim),
                                                  hv.baseAddress! + start * c.headDim)
                                        }
                                    }
                                } else {
                                    group(nil, nil)
                                }
                            }
                        }
                    } else {
                        layer.k.forward(n.baseAddress!, rows: T, into: keys + first * kvWidth)
                        layer.v.forward(n.baseAddress!, rows: T, into: values + first * kvWidth)
                    }
                }
                mark(.qkv)
                if epilogues { return }   // rotated (and appended) inside the job
                angles.withUnsafeBufferPointer { a in
                    for t in 0..<T {
                        rope.apply(keys + (first + t) * kvWidth, heads: c.kvHeadCount, angles: a.baseAddress! + t * c.headDim)
                    }
                }
            }
            if let cache, !halfCache {
                cache.keys[l].withUnsafeMutableBufferPointer { k in
                    cache.values[l].withUnsafeMutableBufferPointer { v in projectKV(k.baseAddress!, v.baseAddress!, first: start) }
                }
            } else {
                localKeys.withUnsafeMutableBufferPointer { k in
                    localValues.withUnsafeMutableBufferPointer { v in projectKV(k.baseAddress!, v.baseAddress!, first: 0) }
                }
            }
            if let cache, halfCache, !epilogues {
                // Round the new positions into the cache; from here on every reader sees halves.
                localKeys.withUnsafeBufferPointer { k in
                    cache.halfKeys[l].withUnsafeMutableBufferPointer {
                        roundIntoHeads(k.baseAddress!, tokens: T, into: $0.baseAddress!, first: start,
                                       headStride: cache.halfHeadStride, tiled: cache.tiledKeys)
                    }
                }
                localValues.withUnsafeBufferPointer { v in
                    cache.halfValues[l].withUnsafeMutableBufferPointer {
                        roundIntoHeads(v.baseAddress!, tokens: T, into: $0.baseAddress!, first: start,
                                       headStride: cache.halfHeadStride, tiled: false)
                    }
                }
            }
            if !epilogues {
                q.withUnsafeMutableBufferPointer { qp in
                    angles.withUnsafeBufferPointer { a in
                        for t in 0..<T {
                            rope.apply(qp.baseAddress! + t * qWidth, heads: c.headCount, angles: a.baseAddress! + t * c.headDim)
                        }
                    }
                }
            }
            mark(.ropeAndAppend)
            if let cache, halfCache {
                let probabilityOp = (hooks.attentionProbabilityOps ?? attentionProbabilityOps)[l]
                if T == 1, observer == nil, probabilityOp == nil {
                    attendHalf(q: q, cache: cache, layer: l, count: S, scores: &scores, out: &attention)
                } else {
                    // Widen positions 0..<S once per layer (S·KV·Dh conversions, small beside the
                    // projections) and run the float path on the rounded values.
                    if wideKeys.isEmpty {
                        wideKeys = [Float](repeating: 0, count: S * kvWidth)
                        wideValues = wideKeys
                    }
                    cache.halfKeys[l].withUnsafeBufferPointer { h in
                        wideKeys.withUnsafeMutableBufferPointer {
                            widenFromHeads(h.baseAddress!, positions: S, headStride: cache.halfHeadStride,
                                           tiled: cache.tiledKeys, into: $0.baseAddress!)
                        }
                    }
                    cache.halfValues[l].withUnsafeBufferPointer { h in
                        wideValues.withUnsafeMutableBufferPointer {
                            widenFromHeads(h.baseAddress!, positions: S, headStride: cache.halfHeadStride, tiled: false,
                                           into: $0.baseAddress!)
                        }
                    }
                    attend(q: q, keys: wideKeys, values: wideValues, T: T, start: start, scores: &scores, out: &attention,
                           layer: l, hooks: hooks)
                }
            } else {
                let keys = cache?.keys[l] ?? localKeys
                let values = cache?.values[l] ?? localValues
                attend(q: q, keys: keys, values: values, T: T, start: start, scores: &scores, out: &attention, layer: l,
                       hooks: hooks)
            }
            mark(.attention)
            observe(observer, QuantizationPoints.attentionOutputInput(l), attention, rows: T, columns: qWidth)
            layer.o.forward(attention, rows: T, into: &projected)
            mark(.outputProjection)
            if fuseResidual {
                Ops.addRMSNorm(projected, into: &x, weight: layer.mlpNorm, rows: T, width: D, epsilon: epsilon,
                               normed: &normed)
            } else {
                Ops.add(projected, into: &x, count: T * D)
                mark(.residual)

                // --- MLP ---
                Ops.rmsNorm(x, weight: layer.mlpNorm, rows: T, width: D, epsilon: epsilon, into: &normed)
            }
            mark(.mlpNorm)
            observe(observer, QuantizationPoints.mlpInput(l), normed, rows: T, columns: D)
            if T == 1, let fused = layer.floatGateUp {
                normed.withUnsafeBufferPointer { n in
                    gate.withUnsafeMutableBufferPointer { g in
                        up.withUnsafeMutableBufferPointer { u in
                            FloatLinear.forwardRow(fused, x: n.baseAddress!, into: g.baseAddress!, u.baseAddress!)
                        }
                    }
                }
            } else if T == 1, Self.concurrentDecodeGEMVs {
                normed.withUnsafeBufferPointer { n in
                    gate.withUnsafeMutableBufferPointer { g in
                        up.withUnsafeMutableBufferPointer { u in
                            Self.forwardConcurrently(ConcurrentGEMVs(
                                first: ConcurrentGEMV(op: layer.gate, x: n.baseAddress!, y: g.baseAddress!),
                                second: ConcurrentGEMV(op: layer.up, x: n.baseAddress!, y: u.baseAddress!), third: nil))
                        }
                    }
                }
            } else {
                layer.gate.forward(normed, rows: T, into: &gate)
                layer.up.forward(normed, rows: T, into: &up)
            }
            mark(.gateUp)
            Ops.siluMultiply(&gate, up, count: T * F)
            mark(.siluUp)
            observe(observer, QuantizationPoints.mlpDownInput(l), gate, rows: T, columns: F)
            layer.down.forward(gate, rows: T, into: &projected)
            mark(.down)
            if fuseResidual && observer == nil {
                pendingResidual = true  // added by the next norm's pass
            } else {
                Ops.add(projected, into: &x, count: T * D)
                mark(.residual)
            }
            observe(observer, QuantizationPoints.layerOutput(l), x, rows: T, columns: D)
        }
        cache?.advance(by: T)
        if pendingResidual {
            Ops.addRMSNorm(projected, into: &x, weight: finalNorm, rows: T, width: D, epsilon: epsilon, normed: &normed)
        } else {
            Ops.rmsNorm(x, weight: finalNorm, rows: T, width: D, epsilon: epsilon, into: &normed)
        }
        mark(.finalNorm)
        observe(observer, QuantizationPoints.lmHeadInput, normed, rows: T, columns: D)
    }

    /// Ends a phase of the decode probe (`decode`, PTQ_DECODE_PROFILE=1); a branch when it is off.
    @inline(__always)
    private func mark(_ phase: DecodeProbe.Phase) { DecodeProbe.mark(phase) }

    /// Decode attention of one query row over the `count` half positions of `cache`'s `layer`.
    private func attendHalf(q: [Float], cache: KVCache, layer: Int, count: Int, scores: inout [Float],
                            out: inout [Float]) {
        let c = config
        q.withUnsafeBufferPointer { qp in
        cache.halfKeys[layer].withUnsafeBufferPointer { kp in
        cache.halfValues[layer].withUnsafeBufferPointer { vp in
        scores.withUnsafeMutableBufferPointer { sp in
        out.withUnsafeMutableBufferPointer { op in
            let scale = 1 / Float(c.headDim).squareRoot()
            if cache.tiledKeys {
                TokenKernels.attendOne(q: qp.baseAddress!, tiledHalfKeys: kp.baseAddress!, halfValues: vp.baseAddress!,
                                       count: count, heads: c.headCount, kvHeads: c.kvHeadCount, dim: c.headDim,
                                       kvHeadStride: cache.halfHeadStride, scale: scale, scores: sp.baseAddress!,
                                       out: op.baseAddress!)
            } else {
                TokenKernels.attendOne(q: qp.baseAddress!, halfKeys: kp.baseAddress!, halfValues: vp.baseAddress!, count: count,
                                       heads: c.headCount, kvHeads: c.kvHeadCount, dim: c.headDim,
                                       stride: c.headDim, kvHeadStride: cache.halfHeadStride,
                                       scale: scale, scores: sp.baseAddress!, out: op.baseAddress!)
            }
        }}}}}
    }

    /// Rounds T rows of KV·Dh floats (`source`) into a head-major half cache layer (KV heads
    /// `headStride` halves apart) at positions first..<first + T: `tiled` keys in 16-position tiles
    /// (`ck_f32_to_f16_tiled`), else Dh halves a position.
    private func roundIntoHeads(_ source: UnsafePointer<Float>, tokens T: Int, into layer: UnsafeMutablePointer<UInt16>,
                                first: Int, headStride: Int, tiled: Bool) {
        let Dh = config.headDim, kvWidth = config.kvHeadCount * Dh
        for g in 0..<config.kvHeadCount {
            for t in 0..<T {
                if tiled {
                    TokenKernels.roundToHalf(source + t * kvWidth + g * Dh, intoTiledHead: layer + g * headStride,
                                             position: first + t, dim: Dh)
                } else {
                    TokenKernels.roundToHalf(source + t * kvWidth + g * Dh, into: layer + g * headStride + (first + t) * Dh,
                                             count: Dh)
                }
            }
        }
    }

    /// Widens positions 0..<S of a head-major half cache layer (as `roundIntoHeads` wrote it)
    /// into rows of KV·Dh floats.
    private func widenFromHeads(_ layer: UnsafePointer<UInt16>, positions S: Int, headStride: Int, tiled: Bool,
                                into destination: UnsafeMutablePointer<Float>) {
        let Dh = config.headDim, kvWidth = config.kvHeadCount * Dh
        for g in 0..<config.kvHeadCount {
            for s in 0..<S {
                if tiled {
                    TokenKernels.widenHalf(tiledHead: layer + g * headStride, position: s, dim: Dh,
                                           into: destination + s * kvWidth + g * Dh)
                } else {
                    TokenKernels.widenHalf(layer + g * headStride + s * Dh, into: destination + s * kvWidth + g * Dh,
                                           count: Dh)
                }
            }
        }
    }

    /// Causal grouped-query attention of T new queries over S = start + T positions.
    private func attend(q: [Float], keys: [Float], values: [Float], T: Int, start: Int,
                        scores: inout [Float], out: inout [Float], layer: Int, hooks: ForwardHooks) {
        let observer = hooks.observer
        let c = config
        let S = start + T, Dh = c.headDim
        let qWidth = c.headCount * Dh, kvWidth = c.kvHeadCount * Dh
        let group = c.headCount / c.kvHeadCount
        let scale = 1 / Float(Dh).squareRoot()
        let probabilityOp = (hooks.attentionProbabilityOps ?? attentionProbabilityOps)[layer]
        q.withUnsafeBufferPointer { qp in
        keys.withUnsafeBufferPointer { kp in
        values.withUnsafeBufferPointer { vp in
        scores.withUnsafeMutableBufferPointer { sp in
        out.withUnsafeMutableBufferPointer { op in
            let sc = sp.baseAddress!
            if T == 1, observer == nil, probabilityOp == nil {
                // Decode: one fused kernel per head (q·Kᵀ, softmax, P·V) across the pool, instead
                // of two single-row OpenBLAS sgemm calls per head.
                TokenKernels.attendOne(q: qp.baseAddress!, keys: kp.baseAddress!, values: vp.baseAddress!, count: S,
                                       heads: c.headCount, kvHeads: c.kvHeadCount, dim: Dh, stride: kvWidth,
                                       scale: scale, scores: sc, out: op.baseAddress!)
                return
            }
            if observer == nil, probabilityOp == nil {
                // Prefill: causal blocks of query rows on the pool; the scores of positions a
                // block cannot see are never computed (the loop below computes all T × S).
                PrefillAttention.attend(q: qp.baseAddress!, qStride: qWidth, keys: kp.baseAddress!,
                                        values: vp.baseAddress!, kvStride: kvWidth, rows: T, start: start,
                                        heads: c.headCount, kvHeads: c.kvHeadCount, dim: Dh, scale: scale,
                                        out: op.baseAddress!, outStride: qWidth)
                return
            }
            // Observers and quantized-probability ops see each head's whole (T, S) matrix.
            for h in 0..<c.headCount {
                let kvHead = h / group
                // scores (T, S) = q_h (T, Dh) · K_g (S, Dh)ᵀ · scale
                BLAS.gemm(m: T, n: S, k: Dh, alpha: scale, a: qp.baseAddress! + h * Dh, lda: qWidth,
                          b: kp.baseAddress! + kvHead * Dh, ldb: kvWidth, transposeB: true, c: sc, ldc: S)
                for t in 0..<T {
                    let row = sc + t * S, visible = start + t + 1
                    Ops.softmax(row, count: visible)
                    for j in visible..<S { row[j] = 0 }
                }
                if let observer {
                    // The name is built here only: string building allocates (decode must not).
                    observer.observe(point: QuantizationPoints.attentionProbabilities(layer),
                                     values: UnsafeBufferPointer(start: sc, count: T * S), rows: T, columns: S)
                }
                // out_h (T, Dh) = P (T, S) · V_g (S, Dh)
                if let probabilityOp {
                    probabilityOp.multiply(probabilities: sc, rows: T, columns: S, values: vp.baseAddress! + kvHead * Dh,
                                           valueStride: kvWidth, width: Dh, into: op.baseAddress! + h * Dh, outStride: qWidth)
                    continue
                }
                BLAS.gemm(m: T, n: Dh, k: S, a: sc, lda: S, b: vp.baseAddress! + kvHead * Dh, ldb: kvWidth,
                          transposeB: false, c: op.baseAddress! + h * Dh, ldc: qWidth)
            }
        }}}}}
    }

    @inline(__always)
    private func observe(_ observer: (any ActivationObserver)?, _ point: @autoclosure () -> String, _ values: [Float],
                         rows: Int, columns: Int) {
        // The point's name is built only with an observer (string building allocates).
        guard let observer else { return }
        values.withUnsafeBufferPointer {
            observer.observe(point: point(), values: UnsafeBufferPointer(rebasing: $0[0..<rows * columns]), rows: rows, columns: columns)
        }
    }
}
