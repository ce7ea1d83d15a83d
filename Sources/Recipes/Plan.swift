import Foundation
import Models
import PTQCore

/// What happens to one linear layer: the resolved method, weight and activation schemes.
public struct LayerPlan: Sendable, Equatable {
    /// Canonical layer name (`layers/3/attention/q_proj`); the weight is `<name>/weight`.
    public var name: String
    /// What feeds the layer, from the model's structure (quantizers read it, not the name).
    public var role: LayerRole
    /// Quantization point whose activations feed the layer (`layers.3.attention.input`).
    public var inputPoint: String
    public var method: String
    public var weight: WeightScheme
    /// nil = float activations.
    public var activation: ActivationScheme?
    public var parameters: MethodParameters
    /// Line of the rule that decided this layer; nil = the recipe's `scheme`.
    public var ruleLine: Int?
    /// Index of that rule in `rules`; nil = the scheme.
    public var ruleIndex: Int?
    /// Weight shape `[outFeatures, inFeatures]`.
    public var outFeatures: Int
    public var inFeatures: Int
    /// Whether the layer has a bias (`<name>/bias`, kept in float).
    public var hasBias: Bool

    public init(name: String, role: LayerRole, inputPoint: String, method: String, weight: WeightScheme,
                activation: ActivationScheme?, parameters: MethodParameters, ruleLine: Int?, ruleIndex: Int? = nil,
                outFeatures: Int, inFeatures: Int, hasBias: Bool) {
        self.name = name
        self.role = role
        self.inputPoint = inputPoint
        self.method = method
        self.weight = weight
        self.activation = activation
        self.parameters = parameters
        self.ruleLine = ruleLine
        self.ruleIndex = ruleIndex
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.hasBias = hasBias
    }

    /// Quantization groups of the weight: rows × ⌈columns / group size⌉ (the last group of a row
    /// may be partial, e.g. 576 columns in groups of 128).
    public var groupCount: Int {
        let size = weight.effectiveGroupSize(columns: inFeatures)
        return outFeatures * ((inFeatures + size - 1) / size)
    }

    /// Stored bits: codes, a float32 scale per group, a float32 zero point per group when
    /// asymmetric, and a float32 bias.
    public var storedBits: Int {
        if method == "splitquant" {
            // SplitQuant: a 2-bit cluster id besides each code, a scale and a zero point per
            // (row, group, cluster) (SplitWeight).
            let split = (weight.bits + 2) * outFeatures * inFeatures + groupCount * 3 * 64
            return split + (hasBias ? 32 * outFeatures : 0)
        }
        if ["ptq161", "pbllm", "binarize"].contains(method) {
            // Partial binarization (`binary` format): a sign bit per binarized weight, salient
            // codes, float16 a, b, Δ and a zero point per row; ptq161 adds a column mask bit and
            // float16 r2 per binarized column, pbllm a mask bit per weight. Nominal share: the
            // actual mask may flag a few more columns (ties at the threshold).
            let defaults: [String: (Double, Int)] = ["ptq161": (0.2, 4), "pbllm": (0.1, 8), "binarize": (0, 2)]
            let (ratio0, bits0) = defaults[method]!
            let ratio = method == "binarize" ? 0 : parameters["salient_ratio"]?.doubleValue ?? ratio0
            let bits = method == "binarize" ? bits0 : parameters["salient_bits"]?.intValue ?? bits0
            let weights = Double(outFeatures * inFeatures)
            var total = weights * ((1 - ratio) + ratio * Double(bits)) + Double(outFeatures * (3 * 16 + bits))
            if method == "ptq161" {
                let binaryColumns = (Double(inFeatures) * (1 - ratio)).rounded(.down)
                total += Double(inFeatures) + 16 * binaryColumns
            } else if method == "pbllm" {
                total += weights
            }
            return Int(total.rounded()) + (hasBias ? 32 * outFeatures : 0)
        }
        let weightBits = weight.bits * outFeatures * inFeatures
        let groupBits = groupCount * 32 * (weight.symmetric ? 1 : 2)
        return weightBits + groupBits + (hasBias ? 32 * outFeatures : 0)
    }

    /// Parameters (weight + bias elements).
    public var parameterCount: Int { outFeatures * inFeatures + (hasBias ? outFeatures : 0) }

    public var bitsPerWeight: Double { Double(storedBits) / Double(parameterCount) }
}

/// The quantizable linear layers of a model, in forward order, as its family describes them
/// (`ModelStructure.linearLayers`). LLaMA: 7 per block; BERT: 6 (no `gate_proj`).
public func linearLayerNames(of config: ModelConfig) -> [String] {
    config.structure.linearLayers.map(\.name)
}

extension LayerPlan {
    /// The checkpoint tensor holding this layer's weight: `<name>/weight`, except a tied LM
    /// head, whose weight is the token embedding table.
    public func weightTensorName(config: ModelConfig) -> String {
        name == TensorNames.lmHeadLayer && config.tiedEmbeddings ? TensorNames.tokenEmbedding : name + "/weight"
    }

    /// Whether this entry is the weight-only token embedding table rather than a linear layer.
    public var isEmbedding: Bool { name == TensorNames.tokenEmbeddingLayer }
}

extension Recipe {
    /// The per-layer plan for a model: every linear layer not matched by `ignore`, in model
    /// order, decided by the first rule whose targets match it, else by `scheme`.
    ///
    /// Throws when the recipe is for another architecture, when a target pattern matches no
    /// linear layer of this model, or when a rule never applies (every layer it matches is
    /// ignored or claimed by an earlier rule).
    public func plan(for config: ModelConfig) throws(PTQError) -> [LayerPlan] {
        try plan(for: config, structure: config.structure)
    }

    /// The plan over the linear layers `structure` describes (the family's
    /// `QuantizableModel.structure(for:)`; ``plan(for:)`` takes the one the registry gives).
    public func plan(for config: ModelConfig, structure: ModelStructure) throws(PTQError) -> [LayerPlan] {
        if config.architecture != model {
            throw PTQError("\(source):\(modelLine): model: the recipe is for \(model.rawValue) but the model is \(config.architecture.rawValue)")
        }
        var layers = structure.linearLayers
        let ignoreMatchers = ignore.map { $0.matcher() }
        let ruleMatchers = rules.map { rule in rule.targets.map { $0.matcher() } }
        // The LM head is plannable too, but only by a rule that matches `lm_head`: the scheme
        // never claims it, so recipes without such a rule keep the float head.
        if let head = structure.outputHead,
           ruleMatchers.contains(where: { $0.contains { $0(head.name) } }) {
            layers.append(head)
        }

        // Every target must match some linear layer of this model (catches typos).
        for (rule, matchers) in zip(rules, ruleMatchers) {
            for (pattern, matches) in zip(rule.targets, matchers) where !layers.contains(where: { matches($0.name) }) {
                let example = layers.first?.name ?? "layers/0/attention/q_proj"
                throw PTQError("\(source):\(pattern.line): \(pattern.path): \"\(pattern.text)\" matches no linear layer of this \(config.architecture.rawValue) model (\(layers.count) layers named like \(example))")
            }
        }

        // So must every ignore pattern: one that matches nothing is a typo that would silently
        // quantize the layer it meant to keep in float.
        // Embeddings, norms and the LM head (tied or not) may be named too; they are float anyway.
        var parts = Set(layers.map(\.name))
        for (name, _) in config.expectedTensors {
            parts.insert(name)
            if name.hasSuffix("/weight") || name.hasSuffix("/bias") { parts.insert(String(name[..<name.lastIndex(of: "/")!])) }
        }
        if let head = structure.outputHead { parts.insert(head.name) }
        for (pattern, matches) in zip(ignore, ignoreMatchers) where !parts.contains(where: { matches($0) }) {
            let example = layers.first?.name ?? "layers/0/attention/q_proj"
            throw PTQError("\(source):\(pattern.line): \(pattern.path): \"\(pattern.text)\" matches no layer or tensor of this \(config.architecture.rawValue) model (\(layers.count) linear layers named like \(example))")
        }

        var plan: [LayerPlan] = []
        var wins = [Int](repeating: 0, count: rules.count)
        // For rules that never win: who took their layers.
        var shadowedBy = [Set<Int>](repeating: [], count: rules.count)
        var ignoredMatches = [Int](repeating: 0, count: rules.count)
        for layer in layers {
            let matching = ruleMatchers.indices.filter { i in ruleMatchers[i].contains { $0(layer.name) } }
            if ignoreMatchers.contains(where: { $0(layer.name) }) {
                for i in matching { ignoredMatches[i] += 1 }
                continue
            }
            if let first = matching.first {
                wins[first] += 1
                for i in matching.dropFirst() { shadowedBy[i].insert(first) }
                let rule = rules[first]
                plan.append(LayerPlan(name: layer.name, role: layer.role, inputPoint: layer.inputPoint,
                                      method: rule.method, weight: rule.weight,
                                      activation: rule.activation, parameters: rule.parameters,
                                      ruleLine: rule.line, ruleIndex: rule.index,
                                      outFeatures: layer.outFeatures, inFeatures: layer.inFeatures, hasBias: layer.hasBias))
            } else if layer.name != TensorNames.lmHeadLayer {
                plan.append(LayerPlan(name: layer.name, role: layer.role, inputPoint: layer.inputPoint,
                                      method: scheme.method, weight: scheme.weight,
                                      activation: scheme.activation, parameters: scheme.parameters,
                                      ruleLine: nil, ruleIndex: nil,
                                      outFeatures: layer.outFeatures, inFeatures: layer.inFeatures, hasBias: layer.hasBias))
            }
        }

        for rule in rules where wins[rule.index] == 0 {
            let earlier = shadowedBy[rule.index].sorted().map { rules[$0].label }
            let reason: String
            switch (earlier.isEmpty, ignoredMatches[rule.index] > 0) {
            case (true, _): reason = "every layer it matches is in ignore"
            case (false, false): reason = "every layer it matches is taken by an earlier rule (\(earlier.joined(separator: ", "))); the first matching rule wins, so put more specific rules first"
            case (false, true): reason = "every layer it matches is in ignore or taken by an earlier rule (\(earlier.joined(separator: ", "))); the first matching rule wins"
            }
            throw PTQError("\(source):\(rule.line): rules[\(rule.index)]: never applies: \(reason)")
        }
        if let embedding {
            // Weight-only: rows are tokens, columns the hidden size; `ignore` does not apply.
            plan.append(LayerPlan(name: TensorNames.tokenEmbeddingLayer, role: .embedding, inputPoint: "",
                                  method: embedding.method,
                                  weight: embedding.weight, activation: nil, parameters: embedding.parameters,
                                  ruleLine: embedding.line, ruleIndex: nil,
                                  outFeatures: config.vocabSize, inFeatures: config.hiddenSize, hasBias: false))
        }
        return plan
    }

    /// Exact bits per weight of the whole model quantized by `plan` (see the free function).
    public func bitsPerWeight(plan: [LayerPlan], config: ModelConfig) -> Double {
        Recipes.bitsPerWeight(plan: plan, config: config)
    }

    /// The dry-run table with a header naming this recipe.
    public func dryRunDescription(plan: [LayerPlan], config: ModelConfig) -> String {
        let linears = plan.filter { !$0.isEmbedding }
        let head = linears.contains { $0.name == TensorNames.lmHeadLayer } ? 1 : 0
        let table = linears.count < plan.count ? ", embedding table quantized" : ""
        let header = "recipe \(name) (\(source)): \(linears.count) of \(linearLayerNames(of: config).count + head) linear layers quantized\(table)\n"
        return header + Recipes.dryRunDescription(plan: plan, config: config)
    }
}

/// Storage totals of a model quantized by a plan.
struct StorageTotals {
    var parameters = 0
    var bits = 0
    var floatParameters = 0
}

func storageTotals(plan: [LayerPlan], config: ModelConfig) -> StorageTotals {
    var byName: [String: LayerPlan] = [:]
    for layer in plan { byName[layer.name] = layer }
    var totals = StorageTotals()
    if config.tiedEmbeddings, config.architecture == .llama {
        // A tied head stored apart from the table: quantized when planned, else a float16 copy
        // when the table itself is quantized (the packer keeps the head's float weights).
        let elements = config.vocabSize * config.hiddenSize
        if let head = byName[TensorNames.lmHeadLayer] {
            totals.parameters += elements
            totals.bits += head.storedBits
        } else if byName[TensorNames.tokenEmbeddingLayer] != nil {
            totals.parameters += elements
            totals.bits += 16 * elements
            totals.floatParameters += elements
        }
    }
    for (name, shape) in config.expectedTensors {
        let count = shape.reduce(1, *)
        totals.parameters += count
        // Quantized layers are counted once, at their weight (which includes the bias).
        if name.hasSuffix("/weight"), let layer = byName[String(name.dropLast("/weight".count))] {
            totals.bits += layer.storedBits
        } else if name.hasSuffix("/bias"), byName[String(name.dropLast("/bias".count))] != nil {
            continue
        } else {
            // The packer stores float matrices (embeddings, ignored layers) as float16 and
            // vectors (norms, biases) as float32.
            totals.bits += (shape.count >= 2 ? 16 : 32) * count
            totals.floatParameters += count
        }
    }
    return totals
}

/// The exact bits per weight of the whole model if quantized by `plan`: stored bits of every
/// tensor over the parameter count. Float matrices (embeddings, ignored layers, an untied LM
/// head) cost 16 bits per element (stored as float16), float vectors (norms) 32; quantized layers cost `bits` per element plus a float32
/// scale per group, a float32 zero point per group when asymmetric, and a float32 bias.
/// Tied embeddings count once.
public func bitsPerWeight(plan: [LayerPlan], config: ModelConfig) -> Double {
    let totals = storageTotals(plan: plan, config: config)
    return Double(totals.bits) / Double(max(totals.parameters, 1))
}

/// One line per linear layer (method, weight scheme, activation, which rule decided it, bits per
/// weight of that layer; ignored layers show as float), then the model total.
public func dryRunDescription(plan: [LayerPlan], config: ModelConfig) -> String {
    var byName: [String: LayerPlan] = [:]
    for layer in plan { byName[layer.name] = layer }
    var rows: [[String]] = [["layer", "method", "weight", "activation", "decided by", "bits/weight"]]
    var names = config.structure.linearLayers.map(\.name)
    if let head = config.structure.outputHead, byName[head.name] != nil { names.append(head.name) }
    if byName[TensorNames.tokenEmbeddingLayer] != nil { names.append(TensorNames.tokenEmbeddingLayer) }
    for name in names {
        if let layer = byName[name], layer.isEmbedding {
            rows.append([layer.name, layer.method, layer.weight.description, "-",
                         "embedding line \(layer.ruleLine ?? 0)", String(format: "%.3f", layer.bitsPerWeight)])
        } else if let layer = byName[name] {
            rows.append([layer.name, layer.method, layer.weight.description,
                         layer.activation?.description ?? "float",
                         layer.ruleIndex.map { i in "rules[\(i)] line \(layer.ruleLine ?? 0)" } ?? "scheme",
                         String(format: "%.3f", layer.bitsPerWeight)])
        } else {
            rows.append([name, "-", "float16", "float", "ignore", "16.000"])
        }
    }
    let widths = rows[0].indices.map { c in rows.map { $0[c].count }.max() ?? 0 }
    var lines = rows.map { row in
        row.enumerated().map { c, cell in
            c == row.count - 1 ? String(repeating: " ", count: widths[c] - cell.count) + cell
                               : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    let totals = storageTotals(plan: plan, config: config)
    let bpw = Double(totals.bits) / Double(max(totals.parameters, 1))
    func grouped(_ n: Int) -> String {
        let digits = Array(String(n))
        var out = ""
        for (i, d) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out += "," }
            out.append(d)
        }
        return out
    }
    func megabytes(_ bits: Int) -> String { String(format: "%.2f MB", Double(bits) / 8 / 1_000_000) }
    lines.append("float tensors (embeddings, norms, ignored layers, untied LM head): \(grouped(totals.floatParameters)) parameters at 16 bits (matrices) or 32 bits (vectors)")
    lines.append("model total: \(grouped(totals.parameters)) parameters, \(grouped(totals.bits)) bits = "
        + String(format: "%.4f", bpw) + " bits/weight (\(megabytes(totals.bits)); float32 \(megabytes(32 * totals.parameters)))")
    return lines.joined(separator: "\n") + "\n"
}
