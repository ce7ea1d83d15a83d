import Calibration
import PTQCore

/// How much calibration data and how many optimiser steps a block reconstruction spends.
public struct BlockReconstructionBudget: Sendable, Hashable {
    /// Calibration windows (token sequences) per block.
    public var samples: Int
    /// Tokens per window.
    public var sequenceLength: Int
    /// Passes over the windows per block.
    public var epochs: Int
    /// AdamW learning rate of the per-row binarization scale α.
    public var learningRateAlpha: Double
    /// AdamW learning rate of the row and column rescalings r1, r2.
    public var learningRateScales: Double
    /// Optimizer steps of PTQ1.61's quantization preprocessing (LoRA on the pass-1 model, merged,
    /// then a second pass on the merged weights with the pass-1 masks); 0 = none.
    public var preprocessingSteps: Int

    public init(samples: Int, sequenceLength: Int, epochs: Int, learningRateAlpha: Double, learningRateScales: Double,
                preprocessingSteps: Int = 0) {
        self.preprocessingSteps = preprocessingSteps
        self.samples = samples
        self.sequenceLength = sequenceLength
        self.epochs = epochs
        self.learningRateAlpha = learningRateAlpha
        self.learningRateScales = learningRateScales
    }
}

/// A quantizer whose binarized layers are finished together, decoder block by decoder block,
/// after the per-layer pass (PTQ1.61's block-wise scale optimisation).
///
/// When `blockReconstruction` is non-nil the pipeline does not call `quantize` for the layer: it
/// takes `initialParameters(for:statistics:)` of every such layer, runs the block optimiser of
/// the Training module over them with the float model and the recipe's calibration text, and
/// stores `quantizedLinear(_:parameters:)` of what it learned. Only α, r1 and r2 change.
public protocol BinarizedBlockReconstruction: Quantizer {
    /// The budget, or nil when this layer is finished per layer by `quantize`.
    var blockReconstruction: BlockReconstructionBudget? { get }
    /// The starting point of the optimisation for one layer.
    func initialParameters(for layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> BinarizationParameters
    /// The stored layer for learned parameters.
    func quantizedLinear(_ layer: LinearLayer, parameters: BinarizationParameters, details: [String: String]) -> QuantizedLinear
}
