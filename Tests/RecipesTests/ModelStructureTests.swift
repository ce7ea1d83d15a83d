import Models
import PTQCore
import Recipes
import Testing

/// Every linear layer gets the role and input point its family's forward pass gives it, and the
/// plan carries both to the quantizers.
@Suite("Model structure")
struct ModelStructureTests {
    /// What each block's linears are, written out by hand from the two forward passes.
    static let llamaBlock: [(String, LayerRole, String)] = [
        ("attention/q_proj", .attentionInputProjection, "attention.input"),
        ("attention/k_proj", .attentionInputProjection, "attention.input"),
        ("attention/v_proj", .attentionInputProjection, "attention.input"),
        ("attention/o_proj", .attentionOutputProjection, "attention.o_proj.input"),
        ("mlp/gate_proj", .mlpInputProjection, "mlp.input"),
        ("mlp/up_proj", .mlpInputProjection, "mlp.input"),
        ("mlp/down_proj", .mlpOutputProjection(.silu), "mlp.down_proj.input"),
    ]
    static let bertBlock: [(String, LayerRole, String)] = [
        ("attention/q_proj", .attentionInputProjection, "attention.input"),
        ("attention/k_proj", .attentionInputProjection, "attention.input"),
        ("attention/v_proj", .attentionInputProjection, "attention.input"),
        ("attention/o_proj", .attentionOutputProjection, "attention.o_proj.input"),
        ("mlp/up_proj", .mlpInputProjection, "mlp.input"),
        ("mlp/down_proj", .mlpOutputProjection(.gelu), "mlp.down_proj.input"),
    ]

    /// A synthetic LLaMA unlike SmolLM2: multi-query attention, head_dim ≠ hidden/heads, untied head.
    static let synthetic = ModelConfig(
        architecture: .llama, vocabSize: 100, hiddenSize: 24, intermediateSize: 40, layerCount: 3, headCount: 4,
        kvHeadCount: 1, headDim: 8, maxPositions: 64, normEpsilon: 1e-5, activation: .silu, tiedEmbeddings: false)

    static func check(_ config: ModelConfig, block: [(String, LayerRole, String)],
                      shapes: [String: (Int, Int)], bias: Bool) throws {
        let structure = config.structure
        #expect(structure.architecture == config.architecture)
        #expect(structure.linearLayers.count == config.layerCount * block.count)
        for (i, layer) in structure.linearLayers.enumerated() {
            let l = i / block.count, (suffix, role, point) = block[i % block.count]
            #expect(layer.name == "layers/\(l)/\(suffix)")
            #expect(layer.role == role, "\(layer.name)")
            #expect(layer.inputPoint == "layers.\(l).\(point)", "\(layer.name)")
            #expect(layer.block == l && layer.hasBias == bias)
            let shape = try #require(shapes[suffix])
            #expect(layer.outFeatures == shape.0 && layer.inFeatures == shape.1, "\(layer.name)")
            #expect(structure.linearLayer(named: layer.name) == layer)
        }
        #expect(structure.activationSites.count == 2 * config.layerCount)
        #expect(structure.activationSites(.attentionProbabilities).map(\.point)
                == (0..<config.layerCount).map { "layers.\($0).attention.probs" })
        #expect(structure.activationSites(.mlpActivation(config.activation)).map(\.point)
                == (0..<config.layerCount).map { "layers.\($0).mlp.down_proj.input" })

        // The plan carries each layer's role and input point.
        let recipe = try Recipe.parse("""
            name: all
            model: \(config.architecture.rawValue)
            scheme: {method: rtn, weight: {bits: 8}}
            """, source: "all.yaml")
        let plan = try recipe.plan(for: config)
        #expect(plan.map(\.name) == structure.linearLayers.map(\.name))
        #expect(plan.map(\.role) == structure.linearLayers.map(\.role))
        #expect(plan.map(\.inputPoint) == structure.linearLayers.map(\.inputPoint))
    }

    @Test func smolLM2() throws {
        let q = 9 * 64, kv = 3 * 64
        try Self.check(smollm2, block: Self.llamaBlock, shapes: [
            "attention/q_proj": (q, 576), "attention/k_proj": (kv, 576), "attention/v_proj": (kv, 576),
            "attention/o_proj": (576, q), "mlp/gate_proj": (1536, 576), "mlp/up_proj": (1536, 576),
            "mlp/down_proj": (576, 1536)], bias: false)
        #expect(smollm2.structure.task == .languageModeling)
        #expect(smollm2.structure.outputHead?.role == .lmHead && smollm2.structure.outputHead?.name == "lm_head")
    }

    @Test func miniLM() throws {
        try Self.check(minilm, block: Self.bertBlock, shapes: [
            "attention/q_proj": (384, 384), "attention/k_proj": (384, 384), "attention/v_proj": (384, 384),
            "attention/o_proj": (384, 384), "mlp/up_proj": (1536, 384), "mlp/down_proj": (384, 1536)], bias: true)
        #expect(minilm.structure.task == .sentenceEmbedding && minilm.structure.outputHead == nil)
    }

    @Test func syntheticMultiQuery() throws {
        try Self.check(Self.synthetic, block: Self.llamaBlock, shapes: [
            "attention/q_proj": (32, 24), "attention/k_proj": (8, 24), "attention/v_proj": (8, 24),
            "attention/o_proj": (24, 32), "mlp/gate_proj": (40, 24), "mlp/up_proj": (40, 24),
            "mlp/down_proj": (24, 40)], bias: false)
        #expect(Self.synthetic.structure.outputHead?.outFeatures == 100)
    }

    /// Which roles are fed by a norm: the inputs static per-channel methods may calibrate.
    @Test func roles() {
        let normFed: [LayerRole] = [.attentionInputProjection, .mlpInputProjection, .lmHead]
        let other: [LayerRole] = [.attentionOutputProjection, .mlpOutputProjection(.silu), .mlpOutputProjection(.gelu)]
        #expect(normFed.allSatisfy(\.isFedByNorm) && !other.contains(where: \.isFedByNorm))
        #expect(LayerRole.mlpOutputProjection(.gelu).inputActivation == .gelu)
        #expect(LayerRole.attentionOutputProjection.inputActivation == nil)
        #expect(LayerRole.mlpOutputProjection(.silu).name == "mlp_output(silu)")
    }
}
