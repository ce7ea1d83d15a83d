import Foundation
import PTQCore
import Recipes
import Testing

// MARK: - Fixtures

/// SmolLM2-135M's shape.
let smollm2 = ModelConfig(
    architecture: .llama, vocabSize: 49152, hiddenSize: 576, intermediateSize: 1536, layerCount: 30,
    headCount: 9, kvHeadCount: 3, headDim: 64, maxPositions: 8192, ropeTheta: 100_000, normEpsilon: 1e-5,
    activation: .silu, tiedEmbeddings: true, name: "SmolLM2-135M")

/// all-MiniLM-L6-v2's shape.
let minilm = ModelConfig(
    architecture: .bert, vocabSize: 30522, hiddenSize: 384, intermediateSize: 1536, layerCount: 6,
    headCount: 12, maxPositions: 512, normEpsilon: 1e-12, activation: .gelu, typeVocabSize: 2,
    pooling: .mean, normalizeEmbeddings: true, name: "all-MiniLM-L6-v2")

/// The repository's `recipes/` folder (symlinks resolved, so a private test package works too).
let recipesDirectory: String = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("recipes").path

func parse(_ yaml: String) throws(PTQError) -> Recipe {
    try Recipe.parse(yaml, source: "t.yaml")
}

/// Lines 1-5: a minimal valid llama recipe; text appended to it starts on line 6.
let header = """
name: t
model: llama
scheme:
  method: rtn
  weight: {bits: 8}

"""

/// The message of the PTQError `body` throws ("" if it throws none).
func message(_ body: () throws -> Void) -> String {
    do {
        try body()
        return ""
    } catch let error as PTQError {
        return error.message
    } catch {
        return "not a PTQError: \(error)"
    }
}

// MARK: - Shipped recipes

@Suite struct ShippedRecipes {
    static let cases: [(file: String, architecture: Architecture, layers: Int)] = [
        ("smollm2-w8a8-rtn.yaml", .llama, 210),
        ("smollm2-w4a16-g128.yaml", .llama, 210),
        ("smollm2-w8a8-static.yaml", .llama, 210),
        ("minilm-w8a8-rtn.yaml", .bert, 36),
    ]

    @Test(arguments: cases.indices)
    func parsesAndPlans(_ i: Int) throws {
        let (file, architecture, layers) = Self.cases[i]
        let path = recipesDirectory + "/" + file
        let recipe = try Recipe.load(path: path)
        #expect(recipe.source == path)
        #expect(recipe.name + ".yaml" == file)
        #expect(recipe.text == (try String(contentsOfFile: path, encoding: .utf8)))
        #expect(recipe.text.hasPrefix("#"))  // every shipped recipe starts with its explaining comment
        #expect(recipe.model == architecture)
        #expect(recipe.scheme.method == "rtn")
        #expect(recipe.rules.isEmpty && recipe.ignore.isEmpty)
        let verify = try #require(recipe.verify)
        #expect(verify.samples == 8)
        let config = architecture == .llama ? smollm2 : minilm
        let plan = try recipe.plan(for: config)
        #expect(plan.count == layers)
        #expect(plan.map(\.name) == linearLayerNames(of: config))
        #expect(plan.allSatisfy { $0.method == "rtn" && $0.weight == recipe.scheme.weight && $0.ruleLine == nil })
        #expect(recipe.calibration.line != nil)
    }

    @Test func schemesAreWhatTheNamesSay() throws {
        func load(_ file: String) throws -> Recipe { try Recipe.load(path: recipesDirectory + "/" + file) }
        let w8a8 = try load("smollm2-w8a8-rtn.yaml")
        #expect(w8a8.scheme.weight == WeightScheme(bits: 8, symmetric: true, groupSize: nil))
        #expect(w8a8.scheme.activation == ActivationScheme(bits: 8, granularity: .perToken))
        #expect(w8a8.verify == VerifyThresholds(samples: 8, maxKL: 0.04, minTop1: 0.87, maxPerplexityIncrease: 0.04,
                                                line: w8a8.verify!.line))
        #expect(w8a8.calibration == RecipeCalibration(data: "calibration/wikitext-2-valid.txt", samples: 128,
                                                        sequenceLength: 512, seed: 0, line: w8a8.calibration.line))

        let w4 = try load("smollm2-w4a16-g128.yaml")
        #expect(w4.scheme.weight == WeightScheme(bits: 4, symmetric: false, groupSize: 128))
        #expect(w4.scheme.activation == nil)
        #expect(try #require(w4.verify?.maxKL) > 0.02)

        let fixed = try load("smollm2-w8a8-static.yaml")
        #expect(fixed.scheme.weight == WeightScheme(bits: 8, symmetric: true, groupSize: nil))
        #expect(fixed.scheme.activation == ActivationScheme(bits: 8, granularity: .perTensor))
        #expect(fixed.scheme.activation?.quantization == ActivationQuantization(bits: 8, granularity: .perTensor))

        let mini = try load("minilm-w8a8-rtn.yaml")
        #expect(mini.calibration.data == "calibration/stsb-dev.tsv")
        #expect(mini.scheme.activation == ActivationScheme(bits: 8, granularity: .perToken))
        #expect(mini.verify?.minCosine == 0.99 && mini.verify?.maxKL == nil)
    }

    /// Bits per weight worked out by hand from the tensor shapes.
    @Test func exactBitsPerWeight() throws {
        func bpw(_ file: String, _ config: ModelConfig) throws -> Double {
            let recipe = try Recipe.load(path: recipesDirectory + "/" + file)
            return recipe.bitsPerWeight(plan: try recipe.plan(for: config), config: config)
        }
        // SmolLM2: embedding 49152×576 (tied: counted once), per block 2 norms of 576,
        // q/o 576×576, k/v 192×576, gate/up 1536×576, down 576×1536, and a final norm.
        let embedding = 49152 * 576
        let blockLinear = 2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576  // 3,538,944
        let floatParameters = embedding + 30 * 2 * 576 + 576                 // 28,346,688
        let parameters = floatParameters + 30 * blockLinear
        // Float matrices are stored as float16, float vectors (norms) as float32.
        let floatBits = 16 * embedding + 32 * (floatParameters - embedding)
        #expect(parameters == 134_515_008)

        // W8A8 per channel, symmetric: 8 bits per weight + one float32 scale per output row.
        let rows = 576 + 192 + 192 + 576 + 1536 + 1536 + 576                  // 5,184 per block
        let w8Bits = floatBits + 30 * (8 * blockLinear + 32 * rows)
        #expect(w8Bits == 1_308_432_384)
        #expect(try bpw("smollm2-w8a8-rtn.yaml", smollm2) == Double(w8Bits) / Double(parameters))
        #expect(try bpw("smollm2-w8a8-static.yaml", smollm2) == Double(w8Bits) / Double(parameters))
        #expect(abs(Double(w8Bits) / Double(parameters) - 9.727) < 0.001)

        // W4A16 g128 asymmetric: 4 bits + (scale + zero) × 32 bits per group; 576 columns make
        // 5 groups per row (the last one 64 wide), 1536 columns 12.
        let groups = (576 + 192 + 192 + 576 + 1536 + 1536) * 5 + 576 * 12       // 29,952 per block
        let w4Bits = floatBits + 30 * (4 * blockLinear + 64 * groups)
        #expect(w4Bits == 936_290_304)
        #expect(try bpw("smollm2-w4a16-g128.yaml", smollm2) == Double(w4Bits) / Double(parameters))
        #expect(abs(Double(w4Bits) / Double(parameters) - 6.9605) < 0.001)

        // MiniLM: word 30522×384, position 512×384, token type 2×384, embedding LayerNorm 2×384;
        // per block q/k/v/o 384×384 and up 1536×384, down 384×1536, each with a float bias, and
        // two LayerNorms (weight + bias).
        let miniFloat = 30522 * 384 + 512 * 384 + 2 * 384 + 2 * 384 + 6 * 4 * 384
        let miniLinear = 4 * 384 * 384 + 2 * 1536 * 384
        let miniBias = 4 * 384 + 1536 + 384                                    // = rows per block
        let miniParameters = miniFloat + 6 * (miniLinear + miniBias)
        #expect(miniParameters == 22_565_376)
        let miniMatrices = (30522 + 512 + 2) * 384
        let miniBits = 16 * miniMatrices + 32 * (miniFloat - miniMatrices) + 6 * (8 * miniLinear + 32 * miniBias + 32 * miniBias)
        #expect(try bpw("minilm-w8a8-rtn.yaml", minilm) == Double(miniBits) / Double(miniParameters))
        #expect(abs(Double(miniBits) / Double(miniParameters) - 12.29) < 0.01)
    }
}

// MARK: - Layers, precedence, inheritance, patterns

@Suite struct Planning {
    @Test func linearLayers() {
        let llama = linearLayerNames(of: smollm2)
        #expect(llama.count == 210)
        #expect(Array(llama.prefix(7)) == TensorNames.linearKinds.map { "layers/0/\($0)" })
        #expect(llama.last == "layers/29/mlp/down_proj")
        let bert = linearLayerNames(of: minilm)
        #expect(bert.count == 36)
        #expect(!bert.contains { $0.hasSuffix("gate_proj") })
        #expect(Array(bert.prefix(6)) == ["layers/0/attention/q_proj", "layers/0/attention/k_proj",
                                           "layers/0/attention/v_proj", "layers/0/attention/o_proj",
                                           "layers/0/mlp/up_proj", "layers/0/mlp/down_proj"])
    }

    @Test func firstMatchingRuleWins() throws {
        let recipe = try parse(header + """
        rules:
          - targets: ["layers/0/mlp/down_proj"]
            weight: {bits: 4}
          - targets: ["layers/*/mlp/*"]
            weight: {bits: 6}
          - targets: ["layers/*/mlp/down_proj", "layers/1/attention/q_proj"]
            weight: {bits: 5}
        """)
        let plan = try recipe.plan(for: smollm2)
        func layer(_ name: String) throws -> LayerPlan { try #require(plan.first { $0.name == name }) }
        #expect(try layer("layers/0/mlp/down_proj").weight.bits == 4)
        #expect(try layer("layers/0/mlp/down_proj").ruleLine == 7)
        #expect(try layer("layers/0/mlp/down_proj").ruleIndex == 0)
        #expect(try layer("layers/0/mlp/gate_proj").weight.bits == 6)
        #expect(try layer("layers/5/mlp/down_proj").weight.bits == 6)   // rules[1] before rules[2]
        #expect(try layer("layers/5/mlp/down_proj").ruleLine == 9)
        #expect(try layer("layers/1/attention/q_proj").weight.bits == 5)
        #expect(try layer("layers/1/attention/q_proj").ruleLine == 11)
        #expect(try layer("layers/1/attention/k_proj").weight.bits == 8)
        #expect(try layer("layers/1/attention/k_proj").ruleLine == nil)
        #expect(plan.count == 210)
    }

    @Test func rulesInheritFromTheScheme() throws {
        let recipe = try parse("""
        name: t
        model: llama
        scheme:
          method: smoothquant
          weight: {bits: 8, symmetric: false, group_size: 64}
          activation: {bits: 8, granularity: per_tensor}
          parameters: {alpha: 0.5, grid: 20}
        rules:
          - targets: ["layers/0/**"]
            weight: {bits: 4}
            activation: {bits: 6}
            parameters: {alpha: 0.8, fold: true}
          - targets: ["layers/1/**"]
            method: rtn
            activation: none
          - targets: ["layers/2/**"]
            method: gptq
            weight: {symmetric: true, group_size: channel}
            parameters: {damp: 0.01}
        """)
        let scheme = recipe.scheme
        #expect(scheme.parameters.keys == ["alpha", "grid"])
        let r0 = recipe.rules[0], r1 = recipe.rules[1], r2 = recipe.rules[2]
        #expect(r0.method == "smoothquant")
        #expect(r0.weight == WeightScheme(bits: 4, symmetric: false, groupSize: 64))
        #expect(r0.activation == ActivationScheme(bits: 6, granularity: .perTensor))
        // Same method: the rule's parameters are laid over the scheme's.
        #expect(r0.parameters.keys == ["alpha", "grid", "fold"])
        #expect(try r0.parameters.double("alpha") == 0.8)
        #expect(r0.parameters["alpha"]?.line == 12)
        #expect(r0.parameters["grid"] == .int(20, line: 7))
        #expect(r1.method == "rtn" && r1.activation == nil)
        #expect(r1.weight == scheme.weight)
        #expect(r1.parameters.isEmpty)               // another method: nothing inherited
        #expect(r2.weight == WeightScheme(bits: 8, symmetric: true, groupSize: nil))
        #expect(r2.parameters.keys == ["damp"])
        #expect(r2.activation == scheme.activation)

        let plan = try recipe.plan(for: smollm2)
        #expect(plan[0].method == "smoothquant" && plan[0].weight.bits == 4)
        #expect(plan[7].method == "rtn" && plan[7].activation == nil)
        #expect(plan[14].method == "gptq")
        #expect(plan[21].method == "smoothquant" && plan[21].weight == scheme.weight && plan[21].parameters == scheme.parameters)
    }

    @Test func schemeDefaults() throws {
        let recipe = try parse(header)
        #expect(recipe.scheme.weight == WeightScheme(bits: 8, symmetric: true, groupSize: nil))
        #expect(recipe.scheme.activation == nil)
        #expect(recipe.scheme.parameters.isEmpty)
        #expect(recipe.description == "")
        #expect(recipe.rules.isEmpty && recipe.ignore.isEmpty && recipe.verify == nil)
        #expect(recipe.calibration == .defaults(for: .llama))
        #expect(recipe.calibration.line == nil)
        #expect(RecipeCalibration.defaults(for: .bert).data == "calibration/stsb-dev.tsv")
        #expect(RecipeCalibration.defaults(for: .bert).samples == 750)
        // Partial calibration blocks keep the other defaults of the architecture.
        let partial = try parse(header + "calibration: {samples: 16}\n")
        #expect(partial.calibration.samples == 16)
        #expect(partial.calibration.data == "calibration/wikitext-2-valid.txt")
        #expect(partial.calibration.sequenceLength == 512)
        #expect(partial.calibration.line == 6)
        #expect(partial.calibration.dataPath(projectRoot: "/repo") == "/repo/calibration/wikitext-2-valid.txt")
        let absolute = try parse(header + "calibration: {data: /data/x.txt}\n")
        #expect(absolute.calibration.dataPath(projectRoot: "/repo") == "/data/x.txt")
    }

    @Test(arguments: [
        // (pattern, layers of SmolLM2 it matches)
        ("layers/*/mlp/down_proj", 30),
        ("layers/*/attention/*", 120),
        ("layers/1*/mlp/up_proj", 11),                 // 1, 10…19
        ("layers/?/mlp/up_proj", 10),                  // 0…9
        ("layers/[0-3]/mlp/up_proj", 4),
        ("layers/[!0-3]/mlp/up_proj", 6),
        ("layers/*/mlp/{gate,up}_proj", 60),
        ("layers/**", 210),
        ("**/q_proj", 30),
        ("*/q_proj", 0),                               // * does not cross "/"
        ("layers/3/mlp", 0),                           // globs match whole names
        ("re:down_proj", 30),                          // regexes search anywhere
        ("re:^layers/(1|2)/", 14),
        ("re:^layers/2[0-9]/mlp/(gate|up)_proj$", 20),
        ("re:_proj$", 210),
        ("re:^mlp", 0),
    ])
    func patterns(_ pattern: String, _ count: Int) throws {
        let recipe = try parse(header + "ignore: [\"\(pattern)\"]\n")
        let pattern = try #require(recipe.ignore.first)
        let matched = linearLayerNames(of: smollm2).filter(pattern.matches)
        #expect(matched.count == count)
        if count == 0 {
            // An ignore pattern that matches nothing is a typo: refused like a rule target (issue 14).
            #expect(throws: PTQError.self) { try recipe.plan(for: smollm2) }
        } else {
            #expect(try recipe.plan(for: smollm2).count == 210 - count)
        }
    }

    @Test func ignore() throws {
        let recipe = try parse(header + """
        rules:
          - targets: ["layers/*/mlp/down_proj"]
            weight: {bits: 4}
        ignore: ["lm_head", "re:^embeddings/", "layers/0/**", "layers/29/mlp/down_proj"]
        """)
        #expect(recipe.ignore.map(\.kind) == [.glob, .regex, .glob, .glob])
        #expect(recipe.ignore[3].line == 9 && recipe.ignore[3].path == "ignore[3]")
        let plan = try recipe.plan(for: smollm2)
        #expect(plan.count == 210 - 7 - 1)
        #expect(!plan.contains { $0.name.hasPrefix("layers/0/") || $0.name == "layers/29/mlp/down_proj" })
        #expect(plan.first?.name == "layers/1/attention/q_proj")  // model order kept
        #expect(plan.filter { $0.weight.bits == 4 }.count == 28)
        // A single pattern may be written without brackets.
        let single = try parse(header + "ignore: layers/0/**\n")
        #expect(try single.plan(for: smollm2).count == 203)
    }

    @Test func layerPlanStorage() throws {
        let plan = try parse("""
        name: t
        model: llama
        scheme:
          method: rtn
          weight: {bits: 4, symmetric: false, group_size: 128}
        """).plan(for: smollm2)
        let q = plan[0]
        #expect(q.name == "layers/0/attention/q_proj" && q.outFeatures == 576 && q.inFeatures == 576 && !q.hasBias)
        #expect(q.groupCount == 576 * 5)
        #expect(q.storedBits == 4 * 576 * 576 + 64 * 576 * 5)
        #expect(q.bitsPerWeight == Double(4 * 576 * 576 + 64 * 576 * 5) / Double(576 * 576))
        let down = plan[6]
        #expect(down.name == "layers/0/mlp/down_proj" && down.inFeatures == 1536 && down.groupCount == 576 * 12)
    }

    @Test func untiedHeadAndIgnoredLayersStayFloat() throws {
        var untied = smollm2
        untied.tiedEmbeddings = false
        let recipe = try parse(header)
        let tiedBits = recipe.bitsPerWeight(plan: try recipe.plan(for: smollm2), config: smollm2)
        let untiedBits = recipe.bitsPerWeight(plan: try recipe.plan(for: untied), config: untied)
        #expect(untiedBits > tiedBits)   // the untied LM head adds 28 M float parameters
        let everything = try parse(header + "ignore: [\"**\"]\n")
        let plan = try everything.plan(for: smollm2)
        #expect(plan.isEmpty)
        // Everything float: matrices at 16 bits (stored as float16), the 35,136 norm weights at 32.
        let vectors = 30 * 2 * 576 + 576
        #expect(bitsPerWeight(plan: plan, config: smollm2)
            == Double(16 * (134_515_008 - vectors) + 32 * vectors) / 134_515_008)
    }

    @Test func dryRun() throws {
        let recipe = try parse(header + """
        rules:
          - targets: ["layers/0/mlp/down_proj"]
            weight: {bits: 4, group_size: 32}
            activation: {bits: 8}
        ignore: ["layers/1/**"]
        """)
        let plan = try recipe.plan(for: smollm2)
        let text = recipe.dryRunDescription(plan: plan, config: smollm2)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0] == "recipe t (t.yaml): 203 of 210 linear layers quantized")
        #expect(lines[1].hasPrefix("layer ") && lines[1].hasSuffix("bits/weight"))
        #expect(lines.count == 2 + 210 + 2)
        let q = try #require(lines.first { $0.hasPrefix("layers/0/attention/q_proj ") })
        #expect(q.split(separator: " ", omittingEmptySubsequences: true)
            == ["layers/0/attention/q_proj", "rtn", "int8", "sym", "channel", "float", "scheme", "8.056"])
        let down = try #require(lines.first { $0.hasPrefix("layers/0/mlp/down_proj ") })
        #expect(down.split(separator: " ", omittingEmptySubsequences: true)
            == ["layers/0/mlp/down_proj", "rtn", "int4", "sym", "g32", "int8", "per_token", "rules[0]", "line", "7", "5.000"])
        let ignored = try #require(lines.first { $0.hasPrefix("layers/1/mlp/up_proj ") })
        #expect(ignored.split(separator: " ", omittingEmptySubsequences: true)
            == ["layers/1/mlp/up_proj", "-", "float16", "float", "ignore", "16.000"])
        let bpw = String(format: "%.4f", bitsPerWeight(plan: plan, config: smollm2))
        #expect(lines.last!.hasPrefix("model total: 134,515,008 parameters, "))
        #expect(lines.last!.contains("= \(bpw) bits/weight"))
    }
}

// MARK: - Errors

@Suite struct Errors {
    @Test func yamlSyntaxErrorsCarryLineAndColumn() {
        #expect(message { _ = try parse(header + "ignore: [\"a\", \"b\"\nverify: {}\n") }
            == "t.yaml:7:1: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence that started at line 6, column 9)")
        #expect(message { _ = try parse("name: t\n model: llama\n") }
            == "t.yaml:2:7: YAML syntax error: mapping values are not allowed in this context")
        #expect(message { _ = try parse(header + "scheme:\n  method: rtn\n") }
            == "t.yaml:6: duplicate key 'scheme' (first at line 3): each key may appear once in a mapping")
        #expect(message { _ = try parse(header + """
            rules:
              - targets: ["layers/0/**"]
                weight: {bits: 4}
              - targets: ["layers/1/**"]
                # a comment
                weight: {bits: 4}

                weight: {bits: 6}
            """) }
            == "t.yaml:13: duplicate key 'weight' (first at line 11): each key may appear once in a mapping")
        #expect(message { _ = try parse(header + "  weight: {bits: 4, bits: 5}\n") }
            == "t.yaml:6: duplicate key 'bits' (first at line 6): each key may appear once in a mapping")
        #expect(message { _ = try parse(header + "calibration: {seed: 1, seed: 2}\n") }
            == "t.yaml:6: duplicate key 'seed' (first at line 6): each key may appear once in a mapping")
        #expect(message { _ = try parse("# nothing but a comment\n") }
            == "t.yaml:1: recipe: the file is empty (a recipe needs at least name, model and scheme)")
        #expect(message { _ = try parse("- name: t\n") } == "t.yaml:1: recipe: must be a mapping (got a list)")
    }

    @Test func unknownKeysAtEveryLevel() {
        #expect(message { _ = try parse(header + "rulez: []\n") }
            == "t.yaml:6: rulez: unknown key (expected one of: name, description, model, calibration, scheme, rules, ignore, verify, attention_probs, embedding)")
        #expect(message { _ = try parse("name: t\nmodel: llama\nscheme:\n  method: rtn\n  weights: {bits: 8}\n") }
            == "t.yaml:5: scheme.weights: unknown key (expected one of: method, weight, activation, parameters)")
        #expect(message { _ = try parse("name: t\nmodel: llama\nscheme:\n  method: rtn\n  weight: {bits: 8, sym: true}\n") }
            == "t.yaml:5: scheme.weight.sym: unknown key (expected one of: bits, symmetric, group_size, range)")
        #expect(message { _ = try parse(header + "  activation: {bits: 8, dynamic: true}\n") }
            == "t.yaml:6: scheme.activation.dynamic: unknown key (expected one of: bits, granularity)")
        #expect(message { _ = try parse(header + """
            rules:
              - targets: ["layers/*/mlp/down_proj"]
                weight: {bits: 4}
              - targets: ["layers/*/mlp/up_proj"]
                wieght: {bits: 4}
            """) }
            == "t.yaml:10: rules[1].wieght: unknown key (expected one of: targets, method, weight, activation, parameters)")
        #expect(message { _ = try parse(header + "verify:\n  max_kl: 0.1\n  min_top5: 0.9\n") }
            == "t.yaml:8: verify.min_top5: unknown key (expected one of: samples, max_kl, min_top1, max_ppl_increase, min_cosine)")
        #expect(message { _ = try parse(header + "calibration:\n  dataset: x.txt\n") }
            == "t.yaml:7: calibration.dataset: unknown key (expected one of: data, samples, seq_len, seed)")
    }

    @Test func wrongTypesAndRanges() {
        let rule = header + "rules:\n  - targets: [\"layers/*/mlp/down_proj\"]\n"  // the rule body starts on line 8
        #expect(message { _ = try parse(rule + "    weight: {bits: 12}\n") }
            == "t.yaml:8: rules[0].weight.bits: must be between 2 and 8 (got 12)")
        #expect(message { _ = try parse(rule + "    weight:\n      bits: eight\n") }
            == "t.yaml:9: rules[0].weight.bits: must be an integer (got \"eight\")")
        #expect(message { _ = try parse(rule + "    weight: {bits: 4.5}\n") }
            == "t.yaml:8: rules[0].weight.bits: must be an integer (got 4.5)")
        #expect(message { _ = try parse(rule + "    weight: {symmetric: maybe}\n") }
            == "t.yaml:8: rules[0].weight.symmetric: must be true or false (got \"maybe\")")
        #expect(message { _ = try parse(rule + "    weight: {group_size: 96}\n") }
            == "t.yaml:8: rules[0].weight.group_size: must be channel or one of 32, 64, 128 (got 96)")
        #expect(message { _ = try parse(rule + "    weight: {group_size: chanel}\n") }
            == "t.yaml:8: rules[0].weight.group_size: must be channel or one of 32, 64, 128 (got \"chanel\")")
        #expect(message { _ = try parse(rule + "    weight: 4\n") }
            == "t.yaml:8: rules[0].weight: must be a mapping (got 4)")
        #expect(message { _ = try parse(rule + "    method: RTN\n") }
            == "t.yaml:8: rules[0].method: must be a method name of lower-case letters, digits and _, such as rtn (got \"RTN\")")
        #expect(message { _ = try parse(rule + "    activation: int8\n") }
            == "t.yaml:8: rules[0].activation: must be none or a mapping {bits, granularity} (got \"int8\")")
        #expect(message { _ = try parse(rule + "    activation: {bits: 8, granularity: per_channel}\n") }
            == "t.yaml:8: rules[0].activation.granularity: must be one of: per_tensor, per_token (got \"per_channel\")")
        #expect(message { _ = try parse(rule + "    activation:\n      granularity: per_token\n") }
            == "t.yaml:8: rules[0].activation.bits: required field is missing (the scheme quantizes no activations, so there is nothing to inherit)")
        #expect(message { _ = try parse(header + "  activation: {bits: 1}\n") }
            == "t.yaml:6: scheme.activation.bits: must be between 2 and 8 (got 1)")
        #expect(message { _ = try parse(header + "model: gpt2\n") }
            == "t.yaml:6: duplicate key 'model' (first at line 2): each key may appear once in a mapping")
        #expect(message { _ = try parse("name: t\nmodel: gpt2\nscheme: {method: rtn, weight: {bits: 8}}\n") }
            == "t.yaml:2: model: must be one of: llama, bert (got \"gpt2\")")
        #expect(message { _ = try parse(header + "calibration: {samples: 0}\n") }
            == "t.yaml:6: calibration.samples: must be between 1 and 100000 (got 0)")
        #expect(message { _ = try parse(header + "calibration: {seq_len: \"512\"}\n") }
            == "t.yaml:6: calibration.seq_len: must be an integer (got \"512\")")
        #expect(message { _ = try parse(header + "rules: {targets: [x]}\n") }
            == "t.yaml:6: rules: must be a list (got a mapping)")
    }

    @Test func missingFields() {
        #expect(message { _ = try parse("model: llama\nscheme: {method: rtn, weight: {bits: 8}}\n") }
            == "t.yaml:1: name: required field is missing")
        #expect(message { _ = try parse("name: t\nmodel: llama\n") } == "t.yaml:1: scheme: required field is missing")
        #expect(message { _ = try parse("name: t\nmodel: llama\nscheme:\n  method: rtn\n") }
            == "t.yaml:3: scheme.weight: required field is missing")
        #expect(message { _ = try parse("name: t\nmodel: llama\nscheme:\n  method: rtn\n  weight: {symmetric: false}\n") }
            == "t.yaml:5: scheme.weight.bits: required field is missing")
        #expect(message { _ = try parse("name: \"\"\nmodel: llama\nscheme: {method: rtn, weight: {bits: 8}}\n") }
            == "t.yaml:1: name: must not be empty")
        #expect(message { _ = try parse(header + "rules:\n  - weight: {bits: 4}\n") }
            == "t.yaml:7: rules[0].targets: required field is missing")
    }

    @Test func targets() {
        let rules = header + "rules:\n"  // rules[0] on line 7
        #expect(message { _ = try parse(rules + "  - targets: []\n    weight: {bits: 4}\n") }
            == "t.yaml:7: rules[0].targets: must list at least one layer pattern, e.g. [\"layers/*/mlp/down_proj\"]")
        #expect(message { _ = try parse(rules + "  - targets: [\"\"]\n") }
            == "t.yaml:7: rules[0].targets[0]: empty pattern")
        #expect(message { _ = try parse(rules + "  - targets:\n      - layers/*/mlp/down_proj\n      - \"re:layers/(1|2/\"\n") }
            .hasPrefix("t.yaml:9: rules[0].targets[1]: invalid regular expression \"re:layers/(1|2/\": "))
        #expect(message { _ = try parse(rules + "  - targets: [\"layers/[0-3/mlp/down_proj\"]\n") }
            == "t.yaml:7: rules[0].targets[0]: unclosed \"[\" in pattern \"layers/[0-3/mlp/down_proj\"")
        #expect(message { _ = try parse(rules + "  - targets: [\"layers/*/mlp/{gate,up_proj\"]\n") }
            == "t.yaml:7: rules[0].targets[0]: unclosed \"{\" in pattern \"layers/*/mlp/{gate,up_proj\"")
        #expect(message { _ = try parse(rules + "  - targets: [8]\n") }
            == "t.yaml:7: rules[0].targets[0]: must be a string (got 8)")
        #expect(message { _ = try parse(header + "ignore: [\"re:(\"]\n") }.hasPrefix("t.yaml:6: ignore[0]: invalid regular expression \"re:(\""))
    }

    @Test func planTimeErrors() throws {
        let rules = try parse(header + """
        rules:
          - targets: ["layers/*/mlp/down_proj"]
            weight: {bits: 4}
          - targets:
              - layers/*/mlp/up_proj
              - layers/*/mlp/dwn_proj
            weight: {bits: 4}
        """)
        #expect(message { _ = try rules.plan(for: smollm2) }
            == "t.yaml:11: rules[1].targets[1]: \"layers/*/mlp/dwn_proj\" matches no linear layer of this llama model (210 layers named like layers/0/attention/q_proj)")

        let bertOnly = try parse("""
        name: t
        model: bert
        scheme: {method: rtn, weight: {bits: 8}}
        rules:
          - targets: ["layers/*/mlp/gate_proj"]
            weight: {bits: 4}
        """)
        #expect(message { _ = try bertOnly.plan(for: minilm) }
            == "t.yaml:5: rules[0].targets[0]: \"layers/*/mlp/gate_proj\" matches no linear layer of this bert model (36 layers named like layers/0/attention/q_proj)")

        let shadowed = try parse(header + """
        rules:
          - targets: ["layers/*/mlp/*"]
            weight: {bits: 6}
          - targets: ["layers/3/mlp/down_proj"]
            weight: {bits: 4}
        """)
        #expect(message { _ = try shadowed.plan(for: smollm2) }
            == "t.yaml:9: rules[1]: never applies: every layer it matches is taken by an earlier rule (rules[0] at line 7); the first matching rule wins, so put more specific rules first")

        let ignored = try parse(header + """
        rules:
          - targets: ["layers/0/**"]
            weight: {bits: 4}
        ignore: ["re:^layers/0/"]
        """)
        #expect(message { _ = try ignored.plan(for: smollm2) }
            == "t.yaml:7: rules[0]: never applies: every layer it matches is in ignore")

        #expect(message { _ = try parse(header).plan(for: minilm) }
            == "t.yaml:2: model: the recipe is for llama but the model is bert")
    }

    @Test func verifyBlock() throws {
        let ok = try parse(header + "verify:\n  max_kl: 0.05\n  min_top1: 0.9\n  max_ppl_increase: 0.02\n")
        #expect(ok.verify == VerifyThresholds(samples: 8, maxKL: 0.05, minTop1: 0.9, maxPerplexityIncrease: 0.02, line: 6))
        #expect(message { _ = try parse(header + "verify:\n  min_top1: 1.5\n") }
            == "t.yaml:7: verify.min_top1: must be between 0 and 1 (got 1.5)")
        #expect(message { _ = try parse(header + "verify:\n  max_kl: -0.1\n") }
            == "t.yaml:7: verify.max_kl: must be at least 0 (got -0.1)")
        #expect(message { _ = try parse(header + "verify:\n  max_kl: lots\n") }
            == "t.yaml:7: verify.max_kl: must be a number (got \"lots\")")
        #expect(message { _ = try parse(header + "verify:\n  samples: 8\n") }
            == "t.yaml:6: verify: no threshold given (expected at least one of: max_kl, min_top1, max_ppl_increase)")
        #expect(message { _ = try parse(header + "verify:\n  min_cosine: 0.99\n") }
            == "t.yaml:7: verify.min_cosine: applies to encoders (model: bert) only; this recipe is for llama")
        #expect(message { _ = try parse("name: t\nmodel: bert\nscheme: {method: rtn, weight: {bits: 8}}\nverify: {max_kl: 0.1}\n") }
            == "t.yaml:4: verify.max_kl: applies to language models (model: llama) only; this recipe is for bert")
    }

    @Test func loadReportsMissingFiles() {
        #expect(message { _ = try Recipe.load(path: "/nonexistent/x.yaml") } == "/nonexistent/x.yaml: recipe file not found")
    }
}

// MARK: - Method parameters

@Suite struct Parameters {
    static let yaml = """
    name: t
    model: llama
    scheme:
      method: outliertune
      weight: {bits: 8}
      parameters:
        alpha: 0.5
        steps: 20
        fold: true
        mode: search
        grid: [0.25, 0.5, 1]
        whole: 1
        nested:
          depth: 2
    """

    @Test func typedValuesWithLines() throws {
        let p = try parse(Self.yaml).scheme.parameters
        #expect(p.method == "outliertune" && p.path == "scheme.parameters" && p.line == 6)
        #expect(p.keys == ["alpha", "steps", "fold", "mode", "grid", "whole", "nested"])
        #expect(p["alpha"] == .double(0.5, line: 7))
        #expect(p["steps"] == .int(20, line: 8))
        #expect(p["fold"] == .bool(true, line: 9))
        #expect(p["mode"] == .string("search", line: 10))
        #expect(p["grid"] == .list([.double(0.25, line: 11), .double(0.5, line: 11), .int(1, line: 11)], line: 11))
        #expect(p["nested"]?.line == 14)
        #expect(p.entries.first { $0.key == "nested" }?.keyLine == 13)
        #expect(try p.map("nested").int("depth") == 2)
        #expect(try p.map("nested").path == "scheme.parameters.nested")
        #expect(p.text == "{alpha: 0.5, steps: 20, fold: true, mode: \"search\", grid: [0.25, 0.5, 1], whole: 1, nested: {depth: 2}}")
    }

    @Test func accessors() throws {
        let p = try parse(Self.yaml).scheme.parameters
        #expect(try p.double("alpha", default: 0.1, range: 0...1) == 0.5)
        #expect(try p.double("whole") == 1)             // integers are numbers
        #expect(try p.double("absent", default: 0.25) == 0.25)
        #expect(try p.int("steps", default: 1, range: 1...100) == 20)
        #expect(try p.bool("fold", default: false))
        #expect(try p.string("mode", default: "fixed", oneOf: ["fixed", "search"]) == "search")
        #expect(try p.doubles("grid", range: 0...1) == [0.25, 0.5, 1])
        #expect(try p.doubles("alpha") == [0.5])
        #expect(try p.map("absent").isEmpty)
    }

    @Test func accessorErrors() throws {
        let p = try parse(Self.yaml).scheme.parameters
        #expect(message { _ = try p.double("alpha", range: 0.6...1) }
            == "t.yaml:7: scheme.parameters.alpha: must be between 0.6 and 1 (got 0.5)")
        #expect(message { _ = try p.double("mode") }
            == "t.yaml:10: scheme.parameters.mode: must be a number (got \"search\")")
        #expect(message { _ = try p.int("alpha") }
            == "t.yaml:7: scheme.parameters.alpha: must be an integer (got 0.5)")
        #expect(message { _ = try p.int("steps", range: 1...Int.max) } == "")
        #expect(message { _ = try p.int("steps", range: 1...10) }
            == "t.yaml:8: scheme.parameters.steps: must be between 1 and 10 (got 20)")
        #expect(message { _ = try p.bool("steps") }
            == "t.yaml:8: scheme.parameters.steps: must be true or false (got 20)")
        #expect(message { _ = try p.string("mode", oneOf: ["fixed", "adaptive"]) }
            == "t.yaml:10: scheme.parameters.mode: must be one of: fixed, adaptive (got \"search\")")
        #expect(message { _ = try p.string("grid") }
            == "t.yaml:11: scheme.parameters.grid: must be a string (got a list)")
        #expect(message { _ = try p.doubles("grid", range: 0...0.5) }
            == "t.yaml:11: scheme.parameters.grid[2]: must be between 0 and 0.5 (got 1)")
        #expect(message { _ = try p.double("beta") }
            == "t.yaml:6: scheme.parameters.beta: required parameter of method outliertune is missing")
        #expect(p.error("steps", "must be even").message == "t.yaml:8: scheme.parameters.steps: must be even")
    }

    @Test func rejectUnknown() throws {
        let p = try parse(Self.yaml).scheme.parameters
        try p.rejectUnknown(allowed: ["alpha", "steps", "fold", "mode", "grid", "whole", "nested"])
        #expect(message { try p.rejectUnknown(allowed: ["alpha", "steps", "fold", "mode", "grid", "nested"]) }
            == "t.yaml:12: scheme.parameters.whole: unknown parameter for method outliertune (expected one of: alpha, fold, grid, mode, nested, steps)")
        #expect(message { try p.rejectUnknown(allowed: []) }
            == "t.yaml:7: scheme.parameters.alpha: unknown parameter for method outliertune (method outliertune takes no parameters)")
    }

    @Test func ruleParametersReportTheirOwnLines() throws {
        let recipe = try parse(Self.yaml + "\nrules:\n  - targets: [\"layers/0/**\"]\n    parameters: {alpha: 2}\n")
        let p = recipe.rules[0].parameters
        #expect(p.path == "rules[0].parameters")
        #expect(message { _ = try p.double("alpha", range: 0...1) }
            == "t.yaml:17: rules[0].parameters.alpha: must be between 0 and 1 (got 2)")
        // Inherited entries keep the scheme's path and line.
        #expect(message { _ = try p.int("steps", range: 1...10) }
            == "t.yaml:8: scheme.parameters.steps: must be between 1 and 10 (got 20)")
        #expect(message { _ = try p.double("beta") }
            == "t.yaml:17: rules[0].parameters.beta: required parameter of method outliertune is missing")
        let plan = try recipe.plan(for: smollm2)
        #expect(plan[0].parameters == p && plan[7].parameters == recipe.scheme.parameters)
    }

    @Test func nullParameterValuesAreErrors() {
        #expect(message { _ = try parse(header + "  parameters:\n    alpha:\n") }
            == "t.yaml:7: scheme.parameters.alpha: a value is required (got nothing)")
        #expect(message { _ = try parse(header + "  parameters: [1]\n") }
            == "t.yaml:6: scheme.parameters: must be a mapping (got a list)")
    }
}
