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
                                + "lr_alpha and lr_scales on every layer (the recipe gives \(budgets.count) different ones)")
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
        let learned = try BlockwiseScaleOptimizer.optimize(
            weights: weights, parameters: pending.mapValues(\.initial), windows: windows,
            settings: BlockwiseSettings(epochs: budget.epochs, learningRateAlpha: Float(budget.learningRateAlpha),
                                        learningRateScales: Float(budget.learningRateScales), evaluateInitialLoss: true,
                                        quiet: quiet)) { reports[$0.layer] = $0 }
        var result: [String: QuantizedLinear] = [:]
        for (name, entry) in pending {
            guard let parameters = learned[name] else {
                throw PTQError("block reconstruction returned no parameters for \(name)")
            }
            var details = ["blockwise_budget": "\(budget.samples)×\(budget.sequenceLength) tokens × \(budget.epochs) epochs"]
            if let r = config.structure.linearLayer(named: name)?.block.flatMap({ reports[$0] }) {
                details["block_loss"] = String(format: "%.5g -> %.5g", r.initialLoss ?? .nan, r.finalLoss)
            }
            result[name] = entry.quantizer.quantizedLinear(entry.layer, parameters: parameters, details: details)
        }
        return result
    }
}
