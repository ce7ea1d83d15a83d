import PTQCore

/// A model family whose forward pass can run one decoder block at a time over every sequence,
/// so that calibration of a model larger than memory holds one block's weights at a time.
///
/// ``observeBlockwise(weights:sequences:observer:progress:)`` must show `observer` exactly the
/// activations ``QuantizableModel/observe(_:hooks:)`` shows it, sequence by sequence within
/// each point (points of later blocks arrive after every sequence went through earlier ones).
public protocol BlockStreamingModel: QuantizableModel {
    /// Runs `sequences` through the blocks of the model `weights` describes, loading block `l`
    /// only after block `l − 1` is done and dropping it before block `l + 1` is loaded; the
    /// hidden states of every sequence stay in memory between blocks. `progress` is called once
    /// per block with its index.
    static func observeBlockwise(weights: some WeightSource, sequences: [[Int]], observer: any ActivationObserver,
                                 progress: (Int) -> Void) throws(PTQError)
}

extension ModelFamilies {
    /// The block-streaming type of `architecture`, nil when the family only runs whole.
    public static func blockStreamingType(for architecture: Architecture) -> (any BlockStreamingModel.Type)? {
        modelType(for: architecture) as? any BlockStreamingModel.Type
    }
}

extension LlamaModel: BlockStreamingModel {
    /// One block at a time through LlamaModel's own forward pass: block `l` runs as a one-block
    /// `LlamaModel` (``LlamaBlockWindow``) whose token-embedding table holds the hidden states of
    /// every sequence, so each sequence's "tokens" are its row indices in that table. Reusing the
    /// model's code instead of a second block implementation keeps the statistics bit-identical
    /// to whole-model calibration (tested) while LlamaModel's forward pass evolves.
    public static func observeBlockwise(weights: some WeightSource, sequences: [[Int]], observer: any ActivationObserver,
                                        progress: (Int) -> Void) throws(PTQError) {
        let c = weights.config
        guard c.architecture == .llama else {
            throw PTQError("LlamaModel needs a llama checkpoint, got \(c.architecture.rawValue)")
        }
        try weights.validateModel()
        let D = c.hiddenSize
        var offsets: [Int] = []
        var rows = 0
        for ids in sequences {
            offsets.append(rows)
            rows += ids.count
        }
        guard rows > 0 else { return }
        // Hidden states before block 0: the embedding rows, exactly as `hiddenStates` copies them.
        var states = [Float](repeating: 0, count: rows * D)
        do {
            let embedding = try weights.tokenEmbedding()
            try states.withUnsafeMutableBufferPointer { (s) throws(PTQError) in
                for (ids, offset) in zip(sequences, offsets) {
                    for (t, token) in ids.enumerated() {
                        guard token >= 0, token < c.vocabSize else {
                            throw PTQError("token id \(token) is outside the vocabulary (0..<\(c.vocabSize))")
                        }
                        embedding.copyRow(token, into: s.baseAddress! + (offset + t) * D)
                    }
                }
            }
        }
        for l in 0..<c.layerCount {
            let window = LlamaBlockWindow(base: weights, layer: l, states: states)
            let block = try LlamaModel(weights: window)
            let relay = BlockWindowObserver(inner: observer, layer: l, isLast: l == c.layerCount - 1, width: D,
                                            next: states.count)
            let hooks = ForwardHooks(observer: relay)
            for (ids, offset) in zip(sequences, offsets) {
                relay.rowOffset = offset
                block.observe(Array(offset ..< offset + ids.count), hooks: hooks)
            }
            states = relay.next
            progress(l)
        }
    }
}

/// Block `layer` of `base` as a one-layer LLaMA model whose token-embedding table is `states`
/// (hidden states, one row per token of every sequence): token id `i` is row `i`.
///
/// The window's vocabulary is the rows of `states`; it has a tied head (never run: `observe`
/// skips the head) and a one-token tokenizer (never used: the window takes row indices, not
/// text), so the model's own config and tokenizer checks pass.
struct LlamaBlockWindow<Base: WeightSource>: WeightSource {
    let base: Base
    let layer: Int
    let states: [Float]
    let config: ModelConfig
    let tokenizer: TokenizerSpec

    init(base: Base, layer: Int, states: [Float]) {
        self.base = base
        self.layer = layer
        self.states = states
        var c = base.config
        c.layerCount = 1
        c.vocabSize = states.count / c.hiddenSize
        c.tiedEmbeddings = true
        config = c
        var t = base.tokenizer
        t.tokens = Array(t.tokens.prefix(1))
        t.tokenTypes = Array(t.tokenTypes.prefix(1))
        t.merges = []
        t.bosTokenID = nil; t.eosTokenID = nil; t.unknownTokenID = nil
        t.paddingTokenID = nil; t.clsTokenID = nil; t.sepTokenID = nil
        t.addBOS = false
        tokenizer = t
    }

    /// `layers/0/…` of the window is `layers/<layer>/…` of the base model.
    func baseName(_ name: String) -> String {
        let prefix = TensorNames.layer(0, "")
        guard name.hasPrefix(prefix) else { return name }
        return TensorNames.layer(layer, String(name.dropFirst(prefix.count)))
    }

    func tensor(_ name: String) throws(PTQError) -> Tensor { try base.tensor(baseName(name)) }
    func linear(_ name: String) throws(PTQError) -> any LinearOp { try base.linear(baseName(name)) }
    func tokenEmbedding() throws(PTQError) -> any EmbeddingTable {
        FloatEmbedding(table: states, rows: config.vocabSize, width: config.hiddenSize)
    }
}

/// Passes a window model's observations on under the base model's point names
/// (`layers.0.…` → `layers.<layer>.…`), and keeps the block's output rows as the next
/// block's input. The LM head's input is passed on after the last block only.
final class BlockWindowObserver: ActivationObserver {
    let inner: any ActivationObserver
    let layer: Int
    let isLast: Bool
    let width: Int
    /// Where the current sequence's rows start in `next`.
    var rowOffset = 0
    var next: [Float]
    private let outputPoint = QuantizationPoints.layerOutput(0)
    private let windowPrefix = "layers.0."

    init(inner: any ActivationObserver, layer: Int, isLast: Bool, width: Int, next count: Int) {
        self.inner = inner
        self.layer = layer
        self.isLast = isLast
        self.width = width
        self.next = [Float](repeating: 0, count: count)
    }

    func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
        if point == outputPoint {
            precondition(columns == width && rowOffset + rows <= next.count / width)
            next.withUnsafeMutableBufferPointer { n in
                (n.baseAddress! + rowOffset * width).update(from: values.baseAddress!, count: rows * columns)
            }
        }
        if point.hasPrefix(windowPrefix) {
            inner.observe(point: "layers.\(layer)." + point.dropFirst(windowPrefix.count), values: values, rows: rows,
                          columns: columns)
        } else if point != QuantizationPoints.lmHeadInput || isLast {
            inner.observe(point: point, values: values, rows: rows, columns: columns)
        }
    }
}
