import Foundation

/// Quantize → pack → verify as one call, with the recipe's gates: what `ptq quantize` and
/// `ptq verify` do, for Swift programs.
extension PTQ {
    /// What `quantizeAndPack` did.
    public struct PackOutcome {
        /// The resolved per-layer plan.
        public var plan: [LayerPlan]
        /// Sizes and bits per weight of the packed file, from its bytes.
        public var summary: PackedFileSummary
        /// The verification report; nil when verification was skipped.
        public var report: VerificationReport?
        /// Where the model is now: `output` when it passed (or was not verified),
        /// `OutputPath.failedName(output)` when it failed and `keepFailed` was set, nil when it
        /// failed and was deleted.
        public var writtenPath: String?
        /// Wall time of quantization, packing and verification.
        public var seconds: Double

        /// Whether the model met the recipe's verify gates (true when not verified).
        public var passed: Bool { report?.passed ?? true }
    }

    /// Quantizes `checkpoint` with `recipe`, packs it, and verifies it against the checkpoint on
    /// held-out samples with the recipe's `verify` gates.
    ///
    /// The output path is checked before any work (folder exists and is writable, not one of the
    /// inputs). The model is written under a hidden temporary name and reaches `output` only once
    /// it passed verification, so a failed run never leaves a model where a good one would be: a
    /// model that misses its gates is deleted, or kept as `OutputPath.failedName(output)` with
    /// `keepFailed`. Gate failures are reported in the outcome (`passed`), not thrown.
    public static func quantizeAndPack(checkpoint: String, recipe: RecipeContext, output: String,
                                       statsPath: String? = nil, verify: Bool = true, keepFailed: Bool = false,
                                       quiet: Bool = false) throws(PTQError) -> PackOutcome {
        let start = Date()
        let config = try CheckpointReader(path: checkpoint).config
        try OutputPath.check(output, inputs: [checkpoint, recipe.path, statsPath ?? "", recipe.calibrationPath(for: config)])
        if keepFailed {
            try OutputPath.check(OutputPath.failedName(output), option: "keep-failed output",
                                 inputs: [checkpoint, recipe.path, statsPath ?? ""])
        }
        let staged = verify ? OutputPath.temporaryName(output, tag: "unverified") : output
        let plan: [LayerPlan]
        if try canQuantizeStreaming(plan: try recipe.plan(for: config), recipe: recipe) {
            // Layer by layer into the file: peak memory is one layer, not the model.
            plan = try quantizeStreaming(checkpoint: checkpoint, recipe: recipe, output: staged, statsPath: statsPath,
                                         quiet: quiet).plan
        } else {
            let outcome = try quantize(checkpoint: checkpoint, recipe: recipe, statsPath: statsPath, quiet: quiet)
            try PackedFile.write(outcome.packed, to: staged)
            plan = outcome.plan
        }
        var report: VerificationReport?
        let summary: PackedFileSummary
        do {
            summary = try PackedFile.summary(path: staged)
            if verify {
                let quantized = try loadPacked(path: staged)
                let reference = try loadModel(path: checkpoint)
                let samples = try verificationSamples(model: reference, recipe: recipe,
                                                      count: recipe.recipe.verify?.samples ?? defaultVerificationSamples)
                report = try self.verify(quantized: quantized, reference: reference, samples: samples,
                                         thresholds: VerificationThresholds(recipe.recipe.verify), quiet: quiet)
            }
        } catch {
            if staged != output { unlink(staged) }
            throw error
        }
        var written: String? = output
        if staged != output {
            let passed = report?.passed ?? true
            written = passed ? output : (keepFailed ? OutputPath.failedName(output) : nil)
            if let destination = written {
                if rename(staged, destination) != 0 {
                    let reason = String(cString: strerror(errno))
                    unlink(staged)
                    throw PTQError.file(destination, "cannot move the finished file into place: \(reason)")
                }
            } else {
                unlink(staged)
            }
        }
        return PackOutcome(plan: plan, summary: summary, report: report, writtenPath: written,
                           seconds: Date().timeIntervalSince(start))
    }

    /// Verifies the packed model at `path` against the float checkpoint `reference`, with the
    /// gates and calibration data of `recipe`, or by default those stored in the packed file;
    /// `samples` overrides the recipe's sample count. Gate failures are in the report.
    public static func verify(packed path: String, reference: String, recipe: RecipeContext? = nil,
                              samples: Int? = nil, quiet: Bool = false) throws(PTQError) -> VerificationReport {
        let packed = try PackedFile.read(path: path)
        let context: RecipeContext
        if let recipe { context = recipe } else { context = try storedRecipe(of: packed, path: path) }
        let gates = context.recipe.verify
        let quantized = try loadPacked(packed, source: path)
        let referenceModel = try loadModel(path: reference)
        let held = try verificationSamples(model: referenceModel, recipe: context,
                                           count: samples ?? gates?.samples ?? defaultVerificationSamples)
        return try self.verify(quantized: quantized, reference: referenceModel, samples: held,
                               thresholds: VerificationThresholds(gates), quiet: quiet)
    }
}
