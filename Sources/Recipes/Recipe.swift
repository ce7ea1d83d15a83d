import Foundation
import PTQCore
import Yams

/// How the weights of a linear layer are quantized.
public struct WeightScheme: Sendable, Equatable, CustomStringConvertible {
    /// Integer width of the codes, 2…8.
    public var bits: Int
    /// Symmetric (one scale per group, implicit zero point) or asymmetric (scale and zero point).
    public var symmetric: Bool
    /// Columns per group; nil = one group per output channel (`group_size: channel`).
    public var groupSize: Int?
    /// Which signed codes a symmetric grid uses (`range:`); always `.restricted` when asymmetric.
    public var range: SymmetricRange

    /// The codes of a symmetric b-bit grid.
    public enum SymmetricRange: String, Sendable, Equatable, CaseIterable {
        /// −(2^(b−1) − 1) … 2^(b−1) − 1 with scale absmax / (2^(b−1) − 1): the grid is symmetric
        /// about 0 and the code −2^(b−1) is never used (4 bits: 15 of the 16 levels).
        case restricted
        /// −2^(b−1) … 2^(b−1) − 1, all 2^b levels, as llama.cpp's Q4_0: the value of largest
        /// magnitude in the group, sign kept, maps to −2^(b−1) exactly (scale = extreme / −2^(b−1),
        /// negative when the extreme is positive), so the longer half of the grid points at it.
        case full
    }

    public static let bitsRange = 2...8
    /// The group sizes a recipe may ask for besides `channel`.
    public static let allowedGroupSizes = [32, 64, 128]

    public init(bits: Int, symmetric: Bool = true, groupSize: Int? = nil, range: SymmetricRange = .restricted) {
        self.bits = bits
        self.symmetric = symmetric
        self.groupSize = groupSize
        self.range = range
    }

    /// The group size for a matrix with `columns` input features (per channel = all columns).
    public func effectiveGroupSize(columns: Int) -> Int {
        groupSize ?? columns
    }

    /// `int8 sym channel`, `int4 asym g128`, `int4 sym full g32`.
    public var description: String {
        "int\(bits) \(symmetric ? "sym" : "asym")\(range == .full ? " full" : "") \(groupSize.map { "g\($0)" } ?? "channel")"
    }
}

/// How the activations entering a linear layer are quantized (nil in a plan = float, weight-only).
public struct ActivationScheme: Sendable, Equatable, CustomStringConvertible {
    public var bits: Int
    public var granularity: ActivationQuantization.Granularity

    public init(bits: Int, granularity: ActivationQuantization.Granularity) {
        self.bits = bits
        self.granularity = granularity
    }

    /// The run-time description, without scales yet (static scales come from calibration).
    public var quantization: ActivationQuantization {
        ActivationQuantization(bits: bits, granularity: granularity)
    }

    /// `int8 per_token`.
    public var description: String { "int\(bits) \(granularity.rawValue)" }
}

/// Where calibration samples come from.
public struct RecipeCalibration: Sendable, Equatable {
    /// Path of the data file as written: relative to the project root, or absolute.
    public var data: String
    /// Language models: number of sequences of `sequenceLength` tokens drawn from the text.
    /// Encoders: number of rows (sentence pairs) taken from the start of the file.
    public var samples: Int
    /// Tokens per sample (encoders: truncation length).
    public var sequenceLength: Int
    /// Seed of the sample selection.
    public var seed: Int
    /// Line of the `calibration:` block; nil when the recipe has none (all defaults).
    public var line: Int?

    /// Bounds of `samples` and `seq_len` (seq_len is also checked against the model's
    /// max_positions when calibration runs).
    public static let samplesRange = 1...100_000
    public static let sequenceLengthRange = 1...131_072

    public init(data: String, samples: Int, sequenceLength: Int, seed: Int = 0, line: Int? = nil) {
        self.data = data
        self.samples = samples
        self.sequenceLength = sequenceLength
        self.seed = seed
        self.line = line
    }

    /// Defaults by architecture: LLaMA calibrates on 128 × 512 tokens of the WikiText-2
    /// validation split; BERT on the first half (750 of 1,500 pairs) of STS-B dev, whose second
    /// half is the evaluation split.
    public static func defaults(for architecture: Architecture) -> RecipeCalibration {
        switch architecture {
        case .llama:
            return RecipeCalibration(data: "calibration/wikitext-2-valid.txt", samples: 128, sequenceLength: 512)
        case .bert:
            return RecipeCalibration(data: "calibration/stsb-dev.tsv", samples: 750, sequenceLength: 128)
        }
    }

    /// `data` resolved against the project root (absolute paths are returned as they are).
    public func dataPath(projectRoot: String) -> String {
        if data.hasPrefix("/") { return data }
        return projectRoot.hasSuffix("/") ? projectRoot + data : projectRoot + "/" + data
    }
}

/// Quality gates that `ptq verify` (and `ptq quantize` after packing) check.
public struct VerifyThresholds: Sendable, Equatable {
    /// Held-out samples to compare on.
    public var samples: Int
    /// Language models: maximum mean KL divergence (nats) of the quantized next-token
    /// distribution from the float one.
    public var maxKL: Double?
    /// Language models: minimum fraction of positions where the top-1 token agrees.
    public var minTop1: Double?
    /// Language models: maximum relative perplexity increase on the held-out samples (0.02 = 2 %).
    public var maxPerplexityIncrease: Double?
    /// Encoders: minimum cosine similarity between float and quantized sentence embeddings.
    public var minCosine: Double?
    /// Line of the `verify:` block.
    public var line: Int

    /// Bounds of `samples`.
    public static let samplesRange = 1...10_000

    public init(samples: Int = 8, maxKL: Double? = nil, minTop1: Double? = nil,
                maxPerplexityIncrease: Double? = nil, minCosine: Double? = nil, line: Int = 0) {
        self.samples = samples
        self.maxKL = maxKL
        self.minTop1 = minTop1
        self.maxPerplexityIncrease = maxPerplexityIncrease
        self.minCosine = minCosine
        self.line = line
    }
}

/// The default quantization of every linear layer that no rule claims and `ignore` leaves alone.
public struct QuantizationScheme: Sendable, Equatable {
    public var method: String
    public var weight: WeightScheme
    /// nil = float activations (weight-only quantization).
    public var activation: ActivationScheme?
    public var parameters: MethodParameters
    /// Line of the `scheme:` key.
    public var line: Int
}

/// A per-layer override: the first rule whose targets match a layer decides its quantization.
/// Fields the rule does not give are inherited from the scheme (already resolved here).
public struct Rule: Sendable, Equatable {
    /// Position in `rules` (0-based).
    public var index: Int
    /// Line where the rule starts.
    public var line: Int
    public var targets: [LayerPattern]
    public var method: String
    public var weight: WeightScheme
    public var activation: ActivationScheme?
    /// The rule's parameters; laid over the scheme's when the rule keeps the scheme's method.
    public var parameters: MethodParameters

    /// `rules[2] at line 14` for messages.
    public var label: String { "rules[\(index)] at line \(line)" }
}

/// Weight-only quantization of the token embedding table (`embedding:` in a recipe): rows are
/// tokens, so `group_size: channel` gives one scale per token row. The quantizer sees the table
/// as a linear layer named `embeddings/token` with no input point and no activations.
public struct EmbeddingScheme: Sendable, Equatable {
    public var method: String
    public var weight: WeightScheme
    public var parameters: MethodParameters
    /// Line of the `embedding:` key.
    public var line: Int
}

/// A validated quantization recipe (see docs/recipes.md).
public struct Recipe: Sendable, Equatable {
    /// The file the recipe came from, as given (used in every message).
    public var source: String
    /// The original YAML, kept for provenance (packed files store it).
    public var text: String
    public var name: String
    public var description: String
    /// The architecture the recipe is written for; `plan(for:)` checks it against the model.
    public var model: Architecture
    public var modelLine: Int
    public var calibration: RecipeCalibration
    public var scheme: QuantizationScheme
    public var rules: [Rule]
    /// Layers kept in float even when a rule matches them.
    public var ignore: [LayerPattern]
    public var verify: VerifyThresholds?
    /// Quantization of the post-softmax attention probabilities; nil = float.
    public var attentionProbabilities: AttentionProbabilityScheme?
    /// Weight-only quantization of the token embedding table; nil = float (stored as float16).
    public var embedding: EmbeddingScheme?

    static let topKeys = ["name", "description", "model", "calibration", "scheme", "rules", "ignore", "verify",
                          "attention_probs", "embedding"]
    static let embeddingKeys = ["method", "weight", "parameters"]
    static let calibrationKeys = ["data", "samples", "seq_len", "seed"]
    static let schemeKeys = ["method", "weight", "activation", "parameters"]
    static let ruleKeys = ["targets", "method", "weight", "activation", "parameters"]
    static let weightKeys = ["bits", "symmetric", "group_size", "range"]
    static let activationKeys = ["bits", "granularity"]
    static let verifyKeys = ["samples", "max_kl", "min_top1", "max_ppl_increase", "min_cosine"]

    /// Reads and validates a recipe file. Messages start with `path` as given.
    public static func load(path: String) throws(PTQError) -> Recipe {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            if !FileManager.default.fileExists(atPath: path) {
                throw PTQError.file(path, "recipe file not found")
            }
            throw PTQError.file(path, "cannot read recipe: \(error.localizedDescription)")
        }
        return try parse(text, source: path)
    }

    /// Parses and validates recipe YAML; `source` names it in messages (usually its path).
    public static func parse(_ text: String, source: String) throws(PTQError) -> Recipe {
        let composed: Node?
        do {
            composed = try Yams.compose(yaml: text)
        } catch {
            throw yamlError(error, source: source, text: text)
        }
        guard let root = composed else {
            throw PTQError("\(source):1: recipe: the file is empty (a recipe needs at least name, model and scheme)")
        }
        return try Parser(source: source, text: text).recipe(Field(node: root, path: "", source: source, keyLine: nil))
    }
}

/// Walks the YAML tree of one recipe.
private struct Parser {
    let source: String
    let text: String

    func recipe(_ root: Field) throws(PTQError) -> Recipe {
        let top = try root.mapping(allowed: Recipe.topKeys)

        let nameField = try top.require("name")
        let name = try nameField.text().trimmingCharacters(in: .whitespaces)
        if name.isEmpty { throw nameField.error("must not be empty") }
        let description = try top["description"].map { f throws(PTQError) in try f.text() } ?? ""

        let modelField = try top.require("model")
        let modelWord = try modelField.word(oneOf: Architecture.allCases.map(\.rawValue))
        let model = Architecture(rawValue: modelWord)!

        let calibration = try top["calibration"].map { f throws(PTQError) in try self.calibration(f, model: model) }
            ?? .defaults(for: model)

        let scheme = try self.scheme(try top.require("scheme"))

        var rules: [Rule] = []
        if let rulesField = top["rules"] {
            for (index, item) in try rulesField.list(allowNull: true).enumerated() {
                rules.append(try rule(item, index: index, scheme: scheme))
            }
        }

        var ignore: [LayerPattern] = []
        if let ignoreField = top["ignore"] {
            ignore = try patterns(ignoreField, requireOne: false)
        }

        let verify = try top["verify"].map { f throws(PTQError) in try self.verify(f, model: model) }

        var recipe = Recipe(source: source, text: text, name: name, description: description, model: model,
                            modelLine: modelField.line, calibration: calibration, scheme: scheme, rules: rules,
                            ignore: ignore, verify: verify)
        recipe.attentionProbabilities = try top["attention_probs"].map { f throws(PTQError) in try parseAttentionProbabilities(f) }
        recipe.embedding = try top["embedding"].map { f throws(PTQError) in try self.embedding(f) }
        return recipe
    }

    func calibration(_ field: Field, model: Architecture) throws(PTQError) -> RecipeCalibration {
        var settings = RecipeCalibration.defaults(for: model)
        settings.line = field.keyLine ?? field.line
        let map = try field.mapping(allowed: Recipe.calibrationKeys)
        if let data = map["data"] {
            settings.data = try data.text().trimmingCharacters(in: .whitespaces)
            if settings.data.isEmpty { throw data.error("must not be empty") }
        }
        if let f = map["samples"] { settings.samples = try f.int(range: RecipeCalibration.samplesRange) }
        if let f = map["seq_len"] { settings.sequenceLength = try f.int(range: RecipeCalibration.sequenceLengthRange) }
        if let f = map["seed"] { settings.seed = try f.int(range: 0...Int.max) }
        return settings
    }

    func scheme(_ field: Field) throws(PTQError) -> QuantizationScheme {
        let map = try field.mapping(allowed: Recipe.schemeKeys)
        let line = field.keyLine ?? field.line
        let method = try self.method(try map.require("method"))
        let weight = try self.weight(try map.require("weight"), base: nil)
        let activation = try map["activation"].map { f throws(PTQError) in try self.activation(f, base: nil, isRule: false) } ?? nil
        let parameters = try map["parameters"]?.parameters(method: method, ownerLine: line)
            ?? MethodParameters(source: source, path: "scheme.parameters", method: method, line: line)
        return QuantizationScheme(method: method, weight: weight, activation: activation,
                                  parameters: parameters, line: line)
    }

    /// `embedding: {method, weight, parameters}`: weight-only, so no `activation` key.
    func embedding(_ field: Field) throws(PTQError) -> EmbeddingScheme {
        let map = try field.mapping(allowed: Recipe.embeddingKeys)
        let line = field.keyLine ?? field.line
        let method = try self.method(try map.require("method"))
        let weight = try self.weight(try map.require("weight"), base: nil)
        let parameters = try map["parameters"]?.parameters(method: method, ownerLine: line)
            ?? MethodParameters(source: source, path: "embedding.parameters", method: method, line: line)
        return EmbeddingScheme(method: method, weight: weight, parameters: parameters, line: line)
    }

    func rule(_ field: Field, index: Int, scheme: QuantizationScheme) throws(PTQError) -> Rule {
        let map = try field.mapping(allowed: Recipe.ruleKeys)
        let line = field.line
        let targets = try patterns(try map.require("targets"), requireOne: true)
        let method = try map["method"].map { f throws(PTQError) in try self.method(f) } ?? scheme.method
        let weight = try map["weight"].map { f throws(PTQError) in try self.weight(f, base: scheme.weight) } ?? scheme.weight
        let activation = try map["activation"].map { f throws(PTQError) in
            try self.activation(f, base: scheme.activation, isRule: true)
        } ?? scheme.activation
        let own = try map["parameters"]?.parameters(method: method, ownerLine: line)
            ?? MethodParameters(source: source, path: "\(field.path).parameters", method: method, line: line)
        // Parameters belong to a method: inherit the scheme's only when the method is the same.
        let parameters = method == scheme.method ? scheme.parameters.merging(own) : own
        return Rule(index: index, line: line, targets: targets, method: method, weight: weight,
                    activation: activation, parameters: parameters)
    }

    func method(_ field: Field) throws(PTQError) -> String {
        let name = try field.string()
        let ok = !name.isEmpty && name.first!.isLetter && name.allSatisfy {
            ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "_"
        }
        if !ok {
            throw field.error("must be a method name of lower-case letters, digits and _, such as rtn (got \"\(name)\")")
        }
        return name
    }

    func weight(_ field: Field, base: WeightScheme?) throws(PTQError) -> WeightScheme {
        let map = try field.mapping(allowed: Recipe.weightKeys)
        let bits: Int
        if let f = map["bits"] {
            bits = try f.int(range: WeightScheme.bitsRange)
        } else if let base {
            bits = base.bits
        } else {
            throw map.missing("bits")
        }
        let symmetric = try map["symmetric"].map { f throws(PTQError) in try f.bool() } ?? base?.symmetric ?? true
        var groupSize = base?.groupSize
        if let f = map["group_size"] {
            let sizes = WeightScheme.allowedGroupSizes.map(String.init).joined(separator: ", ")
            if case .scalar(let scalar) = f.node, f.tagName == Tag.Name.str.rawValue, scalar.string == "channel" {
                groupSize = nil
            } else if f.tagName == Tag.Name.int.rawValue, let size = f.node.int,
                      WeightScheme.allowedGroupSizes.contains(size) {
                groupSize = size
            } else {
                throw f.error("must be channel or one of \(sizes) (got \(f.got))")
            }
        }
        // A rule that turns the scheme's weights asymmetric drops an inherited `range: full`
        // (it describes symmetric codes); saying `range: full` with asymmetric weights is an error.
        var range = symmetric ? base?.range ?? .restricted : .restricted
        if let f = map["range"] {
            let word = try f.word(oneOf: WeightScheme.SymmetricRange.allCases.map(\.rawValue))
            range = WeightScheme.SymmetricRange(rawValue: word)!
            if range == .full && !symmetric {
                throw f.error("full applies to symmetric weights only (this weight block has symmetric: false; "
                              + "asymmetric weights already use all 2^bits codes)")
            }
        }
        return WeightScheme(bits: bits, symmetric: symmetric, groupSize: groupSize, range: range)
    }

    /// `none` or `{bits, granularity}`; in a rule, missing fields come from the scheme's activation.
    func activation(_ field: Field, base: ActivationScheme?, isRule: Bool) throws(PTQError) -> ActivationScheme? {
        if case .scalar(let scalar) = field.node, field.tagName == Tag.Name.str.rawValue, scalar.string == "none" {
            return nil
        }
        guard case .mapping = field.node else {
            throw field.error("must be none or a mapping {bits, granularity} (got \(field.got))")
        }
        let map = try field.mapping(allowed: Recipe.activationKeys)
        let bits: Int
        if let f = map["bits"] {
            bits = try f.int(range: WeightScheme.bitsRange)
        } else if let base {
            bits = base.bits
        } else {
            throw map.missing("bits", isRule ? " (the scheme quantizes no activations, so there is nothing to inherit)" : "")
        }
        var granularity = base?.granularity ?? .perToken
        if let f = map["granularity"] {
            let word = try f.word(oneOf: ActivationQuantization.Granularity.allCases.map(\.rawValue))
            granularity = ActivationQuantization.Granularity(rawValue: word)!
        }
        return ActivationScheme(bits: bits, granularity: granularity)
    }

    func patterns(_ field: Field, requireOne: Bool) throws(PTQError) -> [LayerPattern] {
        let items = try field.list(allowScalar: true, allowNull: !requireOne)
        if requireOne && items.isEmpty {
            throw field.error("must list at least one layer pattern, e.g. [\"layers/*/mlp/down_proj\"]")
        }
        var patterns: [LayerPattern] = []
        for item in items {
            let text = try item.string()
            patterns.append(try LayerPattern(text: text, line: item.line, path: item.path) { message in
                item.error(message)
            })
        }
        return patterns
    }

    func verify(_ field: Field, model: Architecture) throws(PTQError) -> VerifyThresholds {
        let map = try field.mapping(allowed: Recipe.verifyKeys)
        var thresholds = VerifyThresholds(line: field.keyLine ?? field.line)
        if let f = map["samples"] { thresholds.samples = try f.int(range: VerifyThresholds.samplesRange) }
        let languageOnly = ["max_kl", "min_top1", "max_ppl_increase"], encoderOnly = ["min_cosine"]
        for key in model == .llama ? encoderOnly : languageOnly {
            if let f = map[key] {
                let kind = model == .llama ? "encoders (model: bert)" : "language models (model: llama)"
                throw PTQError("\(source):\(f.keyLine ?? f.line): \(f.path): applies to \(kind) only; this recipe is for \(model.rawValue)")
            }
        }
        if let f = map["max_kl"] { thresholds.maxKL = try f.double(range: 0 ... .infinity) }
        if let f = map["min_top1"] { thresholds.minTop1 = try f.double(range: 0...1) }
        if let f = map["max_ppl_increase"] { thresholds.maxPerplexityIncrease = try f.double(range: 0 ... .infinity) }
        if let f = map["min_cosine"] { thresholds.minCosine = try f.double(range: -1...1) }
        if thresholds.maxKL == nil && thresholds.minTop1 == nil && thresholds.maxPerplexityIncrease == nil
            && thresholds.minCosine == nil {
            let expected = model == .llama ? "max_kl, min_top1, max_ppl_increase" : "min_cosine"
            throw PTQError("\(source):\(thresholds.line): \(field.path): no threshold given (expected at least one of: \(expected))")
        }
        return thresholds
    }
}
