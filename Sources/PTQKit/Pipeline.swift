@_exported import Calibration
@_exported import Packing
@_exported import QuantizedRuntime
@_exported import Quantizers
@_exported import Recipes
import Foundation
import Kernels

/// Calibrate → quantize → pack → verify, as one library call per step.
extension PTQ {
    /// A loaded recipe plus where its relative paths resolve.
    public struct RecipeContext {
        public let recipe: Recipe
        public let path: String
        /// The calibration data file when already resolved (a packed file records the one it
        /// was quantized with); otherwise `calibration.data` resolves as `calibrationPath` says.
        public var resolvedCalibrationData: String?

        public init(path: String) throws(PTQError) {
            self.recipe = try Recipe.load(path: path)
            self.path = path
        }

        /// A recipe already parsed (e.g. the one stored in a packed file); `path` is where its
        /// relative calibration data path resolves from (the recipe file it was loaded from).
        public init(recipe: Recipe, path: String) {
            self.recipe = recipe
            self.path = path
        }

        /// Checks the recipe's calibration settings against the model they run on: a language
        /// model's windows must fit its positions (an encoder's sentences are truncated by its
        /// tokenizer). Errors name the recipe file and line.
        public func checkCalibration(for config: ModelConfig) throws(PTQError) {
            let c = recipe.calibration
            let line = c.line.map { ":\($0)" } ?? ""
            if config.structure.task == .languageModeling, c.sequenceLength > config.maxPositions {
                throw PTQError("\(recipe.source)\(line): calibration.seq_len: \(c.sequenceLength) is longer than the "
                               + "model's max_positions \(config.maxPositions)")
            }
        }

        /// The calibration data path: absolute, relative to the working directory, or relative
        /// to the project root (the recipe folder's parent), in that order.
        public func calibrationPath(for config: ModelConfig) -> String {
            if let resolvedCalibrationData { return resolvedCalibrationData }
            let data = recipe.calibration.data
            if data.hasPrefix("/") || FileManager.default.fileExists(atPath: data) { return data }
            let root = URL(fileURLWithPath: path).deletingLastPathComponent().deletingLastPathComponent().path
            return root + "/" + data
        }

        public func calibrationSettings(for config: ModelConfig) -> CalibrationSettings {
            let c = recipe.calibration
            return .init(dataPath: calibrationPath(for: config), samples: c.samples, sequenceLength: c.sequenceLength,
                         seed: UInt64(truncatingIfNeeded: c.seed))
        }

        /// Checks the recipe against the model and resolves the per-layer plan.
        public func plan(for config: ModelConfig) throws(PTQError) -> [LayerPlan] {
            try recipe.plan(for: config)
        }
    }

    /// The statistics every planned layer's quantizer needs, by input point.
    public static func statisticsRequest(plan: [LayerPlan]) throws(PTQError) -> StatisticsRequest {
        var request = StatisticsRequest()
        for layer in plan {
            let quantizer = try QuantizerRegistry.quantizer(for: layer)
            let kinds = quantizer.requiredStatistics
            guard !kinds.isEmpty else { continue }
            if layer.isEmbedding {
                throw PTQError("embedding: method \(layer.method) needs calibration statistics, but an embedding "
                               + "table has no input activations; use a method (or setting) that quantizes from the "
                               + "weights alone, e.g. rtn")
            }
            request.request(kinds, at: layer.inputPoint)
        }
        return request
    }

    /// What `ptq calibrate` gathers for `plan`: every quantizer's ``statisticsRequest(plan:)``,
    /// plus channel ranges at every planned layer's input whenever the forward pass runs (cheap
    /// beside the pass itself; the statistics file then serves per-tensor recipes and reports
    /// too). With `all`, channel ranges, sample midpoints and histograms at every input, pass or
    /// not. Empty — no forward pass — when no quantizer needs statistics and `all` is false:
    /// round to nearest with dynamic per-token activations, or weight-only, is data-free.
    public static func calibrationRequest(plan: [LayerPlan], all: Bool = false) throws(PTQError) -> StatisticsRequest {
        var request = try statisticsRequest(plan: plan)
        if request.isEmpty && !all { return request }
        for layer in plan {
            request.request(all ? [.channelRange, .sampleMidpoint, .histogram] : [.channelRange], at: layer.inputPoint)
        }
        return request
    }

    /// One line per distinct (method, activations) of `plan`, for messages: `rtn with per_token
    /// int8 activations`, `rtn (weight-only)`.
    public static func methodSummary(plan: [LayerPlan]) -> String {
        let kinds = Set(plan.map { layer in
            layer.method + (layer.activation.map { " with \($0.granularity.rawValue) int\($0.bits) activations" }
                ?? (layer.isEmbedding ? " (embedding rows)" : " (weight-only)"))
        })
        return kinds.sorted().joined(separator: ", ")
    }

    /// Runs calibration for `request` with the recipe's settings. An empty request runs no
    /// forward pass and returns statistics with no points, no samples and no tokens, tied to the
    /// model (so `quantize --stats` accepts them).
    public static func calibrate(checkpoint: String, recipe: RecipeContext, request: StatisticsRequest,
                                 quiet: Bool = false) throws(PTQError) -> CalibrationStatistics {
        let weights = CheckpointWeights(try CheckpointReader(path: checkpoint))
        let config = weights.config
        try recipe.checkCalibration(for: config)
        var settings = recipe.calibrationSettings(for: config)
        if request.isEmpty {
            settings.samples = 0
            let identity = try config.identity { (name) throws(PTQError) in try weights.tensor(name) }
            return CalibrationStatistics(modelIdentity: identity, settings: settings, tokens: 0, points: [:])
        }
        guard FileManager.default.fileExists(atPath: settings.dataPath) else {
            throw PTQError.file(recipe.path, "calibration.data: file '\(settings.dataPath)' does not exist")
        }
        let statistics: CalibrationStatistics
        if let family = ModelFamilies.blockStreamingType(for: config.architecture) {
            // One block in memory at a time (HDF5 reads are lazy): models larger than memory calibrate.
            statistics = try Calibrator.runBlockwise(family, weights: weights, tokenizer: try makeTokenizer(weights.tokenizer),
                                                     settings: settings, request: request, quiet: quiet)
        } else {
            let model = try ModelFamilies.load(weights)
            statistics = try Calibrator.run(model: model, tokenizer: try tokenizer(for: model), settings: settings,
                                            request: request, quiet: quiet)
        }
        try statistics.validate(source: "calibration of \(checkpoint)")
        return statistics
    }

    /// What `quantize` produced.
    public struct QuantizationOutcome {
        public var packed: PackedModel
        public var plan: [LayerPlan]
        public var statistics: CalibrationStatistics?
    }

    /// What `quantizeStreaming` produced besides the file.
    public struct StreamedQuantization {
        public var plan: [LayerPlan]
        public var statistics: CalibrationStatistics?
    }

    /// What every quantization run starts from: the checkpoint, the plan and the statistics.
    struct QuantizationInputs {
        let checkpoint: String
        let reader: CheckpointReader
        let plan: [LayerPlan]
        let statistics: CalibrationStatistics?
        let identity: String
        /// Names the statistics in errors.
        let statisticsSource: String
        var config: ModelConfig { reader.config }

        init(checkpoint: String, recipe: RecipeContext, statsPath: String?, quiet: Bool) throws(PTQError) {
            self.checkpoint = checkpoint
            reader = try CheckpointReader(path: checkpoint)
            let config = reader.config
            plan = try recipe.plan(for: config)
            let request = try statisticsRequest(plan: plan)
            let reader = self.reader
            identity = try config.identity { (name) throws(PTQError) in try reader.tensor(name) }
            statisticsSource = statsPath ?? "calibration of \(checkpoint)"
            if let statsPath {
                let stats = try CalibrationStatistics.read(path: statsPath, expectedIdentity: identity)
                try stats.require(request, source: statsPath)
                statistics = stats
            } else if !request.isEmpty {
                statistics = try calibrate(checkpoint: checkpoint, recipe: recipe, request: request, quiet: quiet)
            } else {
                statistics = nil
            }
        }

        /// The float layer `layer` as its quantizer sees it (weights read from the checkpoint now),
        /// and its input statistics, checked against its width.
        func layerInput(_ layer: LayerPlan) throws(PTQError) -> (LinearLayer, PointStatistics?) {
            // A tied LM head reads the embedding table; its quantization is stored apart from the table's.
            let weight = try reader.tensor(layer.weightTensorName(config: config))
            let biasName = layer.name + "/bias"
            let bias = !layer.isEmbedding && reader.tensorNames.contains(biasName) ? try reader.tensor(biasName).data : nil
            let point = layer.inputPoint
            let pointStatistics = statistics?.points[point]
            if let pointStatistics, pointStatistics.channels != weight.shape[1] {
                throw PTQError.file(statisticsSource,
                                    "statistics of '\(point)' have \(pointStatistics.channels) channels but layer "
                                    + "'\(layer.name)' has \(weight.shape[1]) inputs")
            }
            return (LinearLayer(layer, weight: weight, bias: bias), pointStatistics)
        }

        /// Quantizes one layer whose quantizer works layer by layer.
        func quantized(_ layer: LayerPlan, with quantizer: any Quantizer, input: LinearLayer,
                       statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
            var q = try quantizer.quantize(input, statistics: statistics)
            if layer.isEmbedding, q.activation != nil || q.bias != nil {
                throw PTQError("embedding: method \(layer.method) produced activation quantization or a bias; "
                               + "an embedding table is weight-only")
            }
            q.name = layer.name
            return q
        }

        /// The packed file's float tensors, by stored name, with the checkpoint tensor each is
        /// read from: every checkpoint tensor that no planned layer covers, plus a tied head's
        /// own float copy when only the table is quantized.
        func floatTensorSources() -> [(name: String, source: String)] {
            let planned = Set(plan.map(\.name))
            var floats: [(name: String, source: String)] = []
            for name in reader.tensorNames {
                let layerName = name.hasSuffix("/weight") || name.hasSuffix("/bias")
                    ? String(name[..<name.lastIndex(of: "/")!]) : name
                if planned.contains(layerName) { continue }
                floats.append((name, name))
            }
            if config.tiedEmbeddings, planned.contains(TensorNames.tokenEmbeddingLayer),
               !planned.contains(TensorNames.lmHeadLayer) {
                // The table is quantized but the tied head stays float: keep the head's float weights
                // under its own name, so the head is not silently run on the quantized table.
                floats.append((TensorNames.lmHead, TensorNames.tokenEmbedding))
            }
            return floats.sorted { $0.name < $1.name }
        }

        /// The packed model without payloads: config, tokenizer, recipe and provenance.
        func packedHeader(recipe: RecipeContext) -> PackedModel {
            PackedModel(
                config: config, tokenizer: reader.tokenizer, floatTensors: [:], quantizedLinears: [:],
                recipe: recipe.recipe.text, statsHash: statistics?.hash, modelIdentity: identity,
                toolVersion: version,
                metadata: ["source_checkpoint": checkpoint, "recipe_path": recipe.path,
                           "calibration_data": absolutePath(recipe.calibrationPath(for: config)),
                           "created": ISO8601DateFormatter().string(from: Date())])
        }
    }

    /// Quantizes every planned layer of `checkpoint` and returns the packed model (not yet written).
    /// Statistics come from `statsPath` when given (refused if gathered on another model), else
    /// from a calibration run when any quantizer needs them.
    public static func quantize(checkpoint: String, recipe: RecipeContext, statsPath: String? = nil,
                                quiet: Bool = false) throws(PTQError) -> QuantizationOutcome {
        let inputs = try QuantizationInputs(checkpoint: checkpoint, recipe: recipe, statsPath: statsPath, quiet: quiet)
        let plan = inputs.plan
        var quantized: [String: QuantizedLinear] = [:]
        var blockwise: [String: PendingBlockLayer] = [:]
        let progress = ProgressReporter("quantize", total: plan.count, quiet: quiet)
        for layer in plan {
            let quantizer = try QuantizerRegistry.quantizer(for: layer)
            let (input, pointStatistics) = try inputs.layerInput(layer)
            if let reconstructed = quantizer as? any BinarizedBlockReconstruction, let budget = reconstructed.blockReconstruction {
                // Finished below, block by block, once every layer has its starting point.
                blockwise[layer.name] = (reconstructed, input, budget,
                                         try reconstructed.initialParameters(for: input, statistics: pointStatistics))
            } else {
                quantized[layer.name] = try inputs.quantized(layer, with: quantizer, input: input, statistics: pointStatistics)
            }
            progress.advance(detail: layer.name)
        }
        if !blockwise.isEmpty {
            let learned = try reconstructBlocks(blockwise, weights: CheckpointWeights(inputs.reader), recipe: recipe,
                                                quiet: quiet)
            for (name, layer) in learned { quantized[name] = layer }
        }
        var packed = inputs.packedHeader(recipe: recipe)
        for (name, source) in inputs.floatTensorSources() {
            packed.floatTensors[name] = try inputs.reader.tensor(source)
        }
        packed.quantizedLinears = quantized
        packed.activationSites = try searchAttentionProbabilities(checkpoint: checkpoint, recipe: recipe, quiet: quiet)
        // The loader's checks, before anything is written: a .ptq PTQKit writes always loads.
        try packed.validateModel(source: "\(checkpoint) quantized with \(recipe.path)")
        return QuantizationOutcome(packed: packed, plan: plan, statistics: inputs.statistics)
    }

    /// Whether `recipe` can be quantized and packed layer by layer (``quantizeStreaming(checkpoint:recipe:output:statsPath:quiet:)``):
    /// every planned layer's quantizer works alone (no block reconstruction) and attention
    /// probabilities stay float (their search runs the whole model).
    public static func canQuantizeStreaming(plan: [LayerPlan], recipe: RecipeContext) throws(PTQError) -> Bool {
        guard recipe.recipe.attentionProbabilities == nil else { return false }
        for layer in plan {
            let quantizer = try QuantizerRegistry.quantizer(for: layer)
            if let reconstructed = quantizer as? any BinarizedBlockReconstruction, reconstructed.blockReconstruction != nil {
                return false
            }
        }
        return true
    }

    /// Quantizes `checkpoint` and writes the packed model to `output` as it goes: one float
    /// tensor or one layer in memory at a time (float32 weights, codes, compressed sections),
    /// calibrating block by block when statistics are needed, so a model larger than memory
    /// quantizes. The file is byte-identical to ``quantize(checkpoint:recipe:statsPath:quiet:)``
    /// followed by `PackedFile.write` (apart from the `created` time in its metadata). Recipes
    /// ``canQuantizeStreaming(plan:recipe:)`` refuses are an error. Written under a temporary
    /// name, renamed into place when complete.
    public static func quantizeStreaming(checkpoint: String, recipe: RecipeContext, output: String,
                                         statsPath: String? = nil, quiet: Bool = false) throws(PTQError) -> StreamedQuantization {
        let inputs = try QuantizationInputs(checkpoint: checkpoint, recipe: recipe, statsPath: statsPath, quiet: quiet)
        guard try canQuantizeStreaming(plan: inputs.plan, recipe: recipe) else {
            throw PTQError.file(recipe.path, "this recipe needs the whole model at once (block reconstruction or an "
                                + "attention_probs search); use PTQ.quantize")
        }
        let source = "\(checkpoint) quantized with \(recipe.path)"
        let config = inputs.config
        let expected = Dictionary(config.expectedTensors.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        let writer = try PackedFileWriter(path: output)
        let header = inputs.packedHeader(recipe: recipe)
        func part(floats: [String: Tensor] = [:], linears: [String: QuantizedLinear] = [:]) -> PackedModel {
            var part = header
            part.floatTensors = floats
            part.quantizedLinears = linears
            return part
        }
        // The one-shot writer's order: float tensors by name, then quantized layers by name.
        for (name, tensorSource) in inputs.floatTensorSources() {
            let tensor = try inputs.reader.tensor(tensorSource)
            // The checks `validateModel` makes on a whole packed model, one tensor at a time.
            let shape = name == TensorNames.lmHead ? [config.vocabSize, config.hiddenSize] : expected[name]
            guard let shape else { throw PTQError.file(source, "tensor '\(name)' is not a tensor of this model") }
            guard tensor.shape == shape else {
                throw PTQError.file(source, "tensor '\(name)' has shape \(tensor.shape), the config needs \(shape)")
            }
            do throws(PTQError) { try Validation.requireFinite(tensor, name: name) } catch { throw PTQError.file(source, error.message) }
            try writer.append(part(floats: [name: tensor]))
        }
        let progress = ProgressReporter("quantize and pack", total: inputs.plan.count, quiet: quiet)
        for layer in inputs.plan.sorted(by: { $0.name < $1.name }) {
            let quantizer = try QuantizerRegistry.quantizer(for: layer)
            let (input, pointStatistics) = try inputs.layerInput(layer)
            let q = try inputs.quantized(layer, with: quantizer, input: input, statistics: pointStatistics)
            guard q.weight.rows == input.weight.shape[0], q.weight.columns == input.weight.shape[1] else {
                throw PTQError.file(source, "quantized layer '\(layer.name)' is \(q.weight.rows)×\(q.weight.columns), "
                                    + "the config needs \(input.weight.shape[0])×\(input.weight.shape[1])")
            }
            do throws(PTQError) { try q.validate() } catch { throw PTQError.file(source, error.message) }
            try writer.append(part(linears: [layer.name: q]))
            progress.advance(detail: layer.name)
        }
        try writer.finish(header)
        return StreamedQuantization(plan: inputs.plan, statistics: inputs.statistics)
    }

    /// Held-out samples `verify` compares on when neither the command line nor the recipe's
    /// `verify.samples` says (the same for `quantize`'s verify and `ptq verify`).
    public static let defaultVerificationSamples = 4

    static func absolutePath(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }

    /// The recipe a packed file was quantized with, and the calibration data it used, as a
    /// context for `verify`: the same held-out samples `quantize`'s own verify used.
    public static func storedRecipe(of packed: PackedModel, path: String) throws(PTQError) -> RecipeContext {
        let recipe = try Recipe.parse(packed.recipe, source: "\(path) (stored recipe)")
        var context = RecipeContext(recipe: recipe, path: packed.metadata["recipe_path"] ?? path)
        if let data = packed.metadata["calibration_data"] { context.resolvedCalibrationData = data }
        return context
    }

    /// Loads a `.ptq` packed model for running on the quantized runtime.
    public static func loadPacked(path: String) throws(PTQError) -> any QuantizableModel {
        try loadPacked(try PackedFile.read(path: path), source: path)
    }

    /// Builds a runnable model from a packed model already read (`source` names it in errors).
    public static func loadPacked(_ packed: PackedModel, source: String) throws(PTQError) -> any QuantizableModel {
        try packed.validateModel(source: source)
        let mark = LoadProfile.Mark()
        let model = try ModelFamilies.load(PackedWeights(buildingLayersOf: packed))
        LoadProfile.report("build the runtime layers", since: mark)
        // In the background: the model is usable at once (`TokenKernels.waitForHugePages`).
        TokenKernels.collapseToHugePagesInBackground()
        return model
    }

    /// Loads any model file: `.ptq` packed files or HDF5 checkpoints (by content, not name).
    public static func loadAnyModel(path: String) throws(PTQError) -> any QuantizableModel {
        isPackedFile(path) ? try loadPacked(path: path) : try loadModel(path: path)
    }

    /// Whether `path` starts with the packed-file magic.
    public static func isPackedFile(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let magic = (try? handle.read(upToCount: 8)) ?? Data()
        return magic == Data("PTQKPACK".utf8)
    }

    /// Held-out verification samples: token windows from the held-out tail of the recipe's
    /// calibration text (language models) or sentences of the evaluation half of STS-B (encoders).
    public static func verificationSamples(model: some QuantizableModel, recipe: RecipeContext?,
                                           count: Int) throws(PTQError) -> [[Int]] {
        let config = model.config
        let settings = recipe?.calibrationSettings(for: config)
            ?? RecipeContext.defaultSettings(for: config.architecture)
        guard count > 0 else { throw PTQError("verification needs at least one sample (got \(count))") }
        let tokenizer = try tokenizer(for: model)
        switch model.structure.task {
        case .languageModeling:
            let text = try readText(settings.dataPath)
            let length = min(settings.sequenceLength, 512, config.maxPositions)
            return try CalibrationSamples.windows(of: tokenizer.encode(text, addSpecialTokens: false), count: count,
                                                  length: length, seed: settings.seed &+ 1, heldOut: true)
        case .sentenceEmbedding:
            let sentences = try CalibrationSamples.sentences(stsPath: settings.dataPath, evaluationHalf: true)
            guard !sentences.isEmpty else { throw PTQError.file(settings.dataPath, "no held-out sentences for verification") }
            return sentences.prefix(count).map { tokenizer.encode($0) }
        }
    }

    /// Compares a quantized model with its float reference (see `Verification`); both must
    /// have the same config.
    public static func verify(quantized: some QuantizableModel, reference: some QuantizableModel, samples: [[Int]],
                              thresholds: VerificationThresholds, quiet: Bool = false) throws(PTQError) -> VerificationReport {
        try Verification.compare(reference: reference, quantized: quantized, samples: samples, thresholds: thresholds,
                                 quiet: quiet)
    }
}

extension PTQ.RecipeContext {
    /// Calibration settings when no recipe is at hand (project-relative default data).
    static func defaultSettings(for architecture: Architecture) -> CalibrationSettings {
        let c = RecipeCalibration.defaults(for: architecture)
        return .init(dataPath: c.data, samples: c.samples, sequenceLength: c.sequenceLength,
                     seed: UInt64(truncatingIfNeeded: c.seed))
    }
}

extension VerificationThresholds {
    /// The recipe's `verify` block as thresholds.
    public init(_ v: VerifyThresholds?) {
        self.init(maxKL: v?.maxKL, minTop1: v?.minTop1, maxPerplexityIncrease: v?.maxPerplexityIncrease,
                  minCosine: v?.minCosine)
    }
}
