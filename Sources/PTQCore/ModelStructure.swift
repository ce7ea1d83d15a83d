/// What feeds a linear layer, which decides how its input activations can be quantized: a
/// norm's output has stable per-channel ranges (static per-channel scales, smoothing into the
/// norm), the attention output and an activation function's output do not (methods such as
/// OutlierTune quantize them per token).
///
/// Models state each layer's role (``LinearLayerDescription``); quantizers read
/// `layer.role` instead of guessing from layer names, so a new model family whose layers are
/// named differently needs no change in any quantizer.
public enum LayerRole: Hashable, Sendable, Codable {
    /// Query, key and value projections, fed by the attention block's norm (pre-norm LLaMA) or
    /// by the previous block's LayerNorm (post-norm BERT).
    case attentionInputProjection
    /// The attention output projection, fed by the concatenated attention heads (`P·V`).
    case attentionOutputProjection
    /// The MLP's first projections (LLaMA gate and up, BERT intermediate), fed by a norm.
    case mlpInputProjection
    /// The MLP's last projection, fed by the activation function's output: `SiLU(gate)·up`
    /// (`.silu`) or `GELU(up)` (`.gelu`).
    case mlpOutputProjection(Activation)
    /// The output head (vocabulary logits), fed by the final norm.
    case lmHead
    /// The token embedding table, quantized weight-only and read one row per token (no input
    /// activations).
    case embedding

    /// Whether the layer's input is a normalization's output (LayerNorm or RMSNorm).
    public var isFedByNorm: Bool {
        switch self {
        case .attentionInputProjection, .mlpInputProjection, .lmHead: true
        case .attentionOutputProjection, .mlpOutputProjection, .embedding: false
        }
    }

    /// The activation function whose output feeds the layer, if any.
    public var inputActivation: Activation? {
        if case .mlpOutputProjection(let activation) = self { return activation }
        return nil
    }

    /// Short name for tables and errors (`mlp_output(gelu)`).
    public var name: String {
        switch self {
        case .attentionInputProjection: "attention_input"
        case .attentionOutputProjection: "attention_output"
        case .mlpInputProjection: "mlp_input"
        case .mlpOutputProjection(let activation): "mlp_output(\(activation.rawValue))"
        case .lmHead: "lm_head"
        case .embedding: "embedding"
        }
    }
}

/// One linear layer of a model, as the model describes it: enough to plan, calibrate and
/// quantize it without loading the model.
public struct LinearLayerDescription: Sendable, Hashable {
    /// Canonical layer name (`layers/3/attention/q_proj`); the weight is `<name>/weight`.
    public var name: String
    public var role: LayerRole
    /// Quantization point whose activations feed the layer (`layers.3.attention.input`): where
    /// calibration gathers the statistics the layer's quantizer asks for.
    public var inputPoint: String
    /// Transformer block the layer belongs to; nil for layers outside the blocks (the LM head).
    public var block: Int?
    /// Weight shape `[outFeatures, inFeatures]`.
    public var outFeatures: Int
    public var inFeatures: Int
    /// Whether the layer has a bias (`<name>/bias`).
    public var hasBias: Bool

    public init(name: String, role: LayerRole, inputPoint: String, block: Int?, outFeatures: Int, inFeatures: Int,
                hasBias: Bool) {
        self.name = name
        self.role = role
        self.inputPoint = inputPoint
        self.block = block
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.hasBias = hasBias
    }
}

/// A place in the forward pass, other than a linear layer's input, whose activations a method
/// may quantize (`QuantizedActivationSite` in a packed file).
public struct ActivationSiteDescription: Sendable, Hashable {
    public enum Kind: Hashable, Sendable {
        /// Post-softmax attention probabilities of one layer, all heads (rows = queries).
        case attentionProbabilities
        /// The MLP activation function's output (`SiLU(gate)·up` or `GELU(up)`), which is also
        /// the input of the layer's `mlpOutputProjection`.
        case mlpActivation(Activation)
    }

    /// Observation point name (`layers.3.attention.probs`).
    public var point: String
    public var block: Int
    public var kind: Kind

    public init(point: String, block: Int, kind: Kind) {
        self.point = point
        self.block = block
        self.kind = kind
    }
}

/// What a model computes, which decides where its calibration and verification samples come
/// from and how it is compared with its float reference.
public enum ModelTask: String, Sendable, Codable {
    /// Next-token logits: calibrated on windows of a text file, verified by KL divergence,
    /// top-1 agreement and perplexity, evaluated by perplexity.
    case languageModeling = "language model"
    /// One embedding per sequence: calibrated on STS-B sentences, verified by embedding cosine,
    /// evaluated by STS-B Spearman.
    case sentenceEmbedding = "sentence encoder"
}

/// A model family's description of a model given only its config: its linear layers with their
/// roles and input points, its activation sites, and what it computes. The recipe plan,
/// calibration requests and quantizers are built from it, before any weight is loaded.
public struct ModelStructure: Sendable, Hashable {
    public var architecture: Architecture
    public var task: ModelTask
    /// The linear layers a recipe plans, in forward order.
    public var linearLayers: [LinearLayerDescription]
    /// The output head, when the model has one (it may be tied to the token embedding). Recipes
    /// may name it in `ignore`; the plan keeps it in float today, so its input point is not
    /// observed by calibration.
    public var outputHead: LinearLayerDescription?
    /// Quantizable activation sites, in forward order.
    public var activationSites: [ActivationSiteDescription]

    public init(architecture: Architecture, task: ModelTask, linearLayers: [LinearLayerDescription],
                outputHead: LinearLayerDescription?, activationSites: [ActivationSiteDescription]) {
        self.architecture = architecture
        self.task = task
        self.linearLayers = linearLayers
        self.outputHead = outputHead
        self.activationSites = activationSites
    }

    /// The linear layer named `name` (`layers/3/mlp/up_proj`), the output head included.
    public func linearLayer(named name: String) -> LinearLayerDescription? {
        if let head = outputHead, head.name == name { return head }
        return linearLayers.first { $0.name == name }
    }

    /// The activation sites of one kind (e.g. every layer's attention probabilities).
    public func activationSites(_ kind: ActivationSiteDescription.Kind) -> [ActivationSiteDescription] {
        activationSites.filter { $0.kind == kind }
    }
}
