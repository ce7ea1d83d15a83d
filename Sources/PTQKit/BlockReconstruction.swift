import Foundation
import Training

extension PTQ {
    /// A layer waiting for block reconstruction: its quantizer, float layer, budget and start.
    typealias PendingBlockLayer = (quantizer: any BinarizedBlockReconstruction, layer: LinearLayer,
                                   budget: BlockReconstructionBudget, initial: BinarizationParameters)

    /// Runs the block-wise scale optimisation (`BlockwiseScaleOptimizer`) over every pending layer
    /// at once, against the float model `weights`, on windows of the recipe's calibration text
    /// (its seed; the budget's count and length), and returns the stored layers.
    static func reconstructBlocks(_ pending: [String: PendingBlockLayer], weights: some WeightSource,
                                  recipe: RecipeContext, quiet: Bool) throws(PTQError) -> [String: QuantizedLinear] {
        let budgets = Set(pending.values.map(\.budget))
        guard budgets.count == 1, let budget = budgets.first else {
            // One pass carries both paths through every block: one budget for all of them.
            throw PTQError.file(recipe.path, "block reconstruction needs the same train_samples, train_seq_len, epochs, "
                                + "lr_alpha, lr_scales and preprocessing_steps on every layer (the recipe gives \(budgets.count) different ones)")
        }
        let config = weights.config
        guard budget.sequenceLength <= config.maxPositions else {
            throw PTQError.file(recipe.path, "train_seq_len \(budget.sequenceLength) is longer than the model's "
                                + "max_positions \(config.maxPositions)")
        }
        var settings = recipe.calibrationSettings(for: config)
        settings.sequenceLength = budget.sequenceLength
        guard FileManager.default.fileExists(atPath: settings.dataPath) else {
            throw PTQError.file(recipe.path, "calibration.data: file '\(settings.dataPath)' does not exist")
        }
        let tokenizer = try makeTokenizer(weights.tokenizer)
        let windows = try CalibrationSamples.modelWindows(tokenizerSpec: weights.tokenizer, tokenizer: tokenizer,
                                                          settings: settings, count: budget.samples)
        var reports: [Int: BlockwiseBlockReport] = [:]
        let blockSettings = BlockwiseSettings(epochs: budget.epochs, learningRateAlpha: Float(budget.learningRateAlpha),
                                              learningRateScales: Float(budget.learningRateScales),
                                              evaluateInitialLoss: true, quiet: quiet)
        var learned = try BlockwiseScaleOptimizer.optimize(
            weights: weights, parameters: pending.mapValues(\.initial), windows: windows,
            settings: blockSettings) { reports[$0.layer] = $0 }
        var preprocessingLoss: (first: Double, last: Double)?
        if budget.preprocessingSteps > 0 {
            // PTQ1.61's quantization preprocessing: LoRA on the pass-1 model, merged into float
            // weights, then pass 2 on them with the pass-1 masks (reference remain.py / reptq.py).
            var losses: [Double] = []
            let merged = ContentsWeights(try LoRAPreprocessing.train(
                weights: weights, parameters: learned, windows: windows,
                settings: LoRASettings(steps: budget.preprocessingSteps, seed: settings.seed, quiet: quiet)) { losses.append($1) })
            preprocessingLoss = losses.first.map { ($0, losses.last!) }
            var second: [String: BinarizationParameters] = [:]
            for (name, entry) in pending {
                let weight = try merged.tensor(name + "/weight")
                second[name] = .initial(weight: weight.data, rows: entry.initial.rows, columns: entry.initial.columns,
                                        salientMask: entry.initial.salientMask, salientBits: entry.initial.salientBits,
                                        outlierColumns: entry.initial.outlierColumns)
            }
            reports = [:]
            learned = try BlockwiseScaleOptimizer.optimize(weights: merged, parameters: second, windows: windows,
                                                           settings: blockSettings) { reports[$0.layer] = $0 }
        }
        var result: [String: QuantizedLinear] = [:]
        for (name, entry) in pending {
            guard let parameters = learned[name] else {
                throw PTQError("block reconstruction returned no parameters for \(name)")
            }
            var details = ["blockwise_budget": "\(budget.samples)×\(budget.sequenceLength) tokens × \(budget.epochs) epochs"]
            if let preprocessingLoss {
                details["preprocessing"] = String(format: "LoRA %d steps, loss %.4g -> %.4g", budget.preprocessingSteps,
                                                  preprocessingLoss.first, preprocessingLoss.last)
            }
            if let r = config.structure.linearLayer(named: name)?.block.flatMap({ reports[$0] }) {
                details["block_loss"] = String(format: "%.5g -> %.5g", r.initialLoss ?? .nan, r.finalLoss)
            }
            result[name] = entry.quantizer.quantizedLinear(entry.layer, parameters: parameters, details: details)
        }
        return result
    }
}
