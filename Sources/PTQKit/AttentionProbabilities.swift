import Foundation

extension PTQ {
    /// Searches the recipe's `attention_probs` quantizer for every layer on the float model
    /// (`AttentionProbabilitySearch`); empty when the recipe keeps probabilities in float.
    public static func searchAttentionProbabilities(checkpoint: String, recipe: RecipeContext,
                                                    quiet: Bool = false) throws(PTQError) -> [String: QuantizedActivationSite] {
        guard let scheme = recipe.recipe.attentionProbabilities else { return [:] }
        let model = try loadModel(path: checkpoint)
        let settings = recipe.calibrationSettings(for: model.config)
        guard FileManager.default.fileExists(atPath: settings.dataPath) else {
            throw PTQError.file(recipe.path, "calibration.data: file '\(settings.dataPath)' does not exist")
        }
        let tokenizer = try tokenizer(for: model)
        let rows = scheme.rowsPerHead ?? 16
        let start = Date()
        // Default: 8 windows of a language model's calibration text (each has many query rows
        // per head), all of an encoder's calibration sentences (short ones).
        let defaultSamples = model.structure.task == .languageModeling ? 8 : settings.samples
        let sites = try AttentionProbabilitySearch.run(
            model: model, tokenizer: tokenizer, settings: settings, method: scheme.quantizer, bits: scheme.bits,
            samples: min(scheme.samples ?? defaultSamples, settings.samples), rowsPerHead: rows, quiet: quiet)
        let seconds = Date().timeIntervalSince(start)
        var operands: [AttentionOperandSearch.LayerResult] = []
        var operandSeconds: Double = 0
        if scheme.queryKeyBits != nil || scheme.valueBits != nil {
            // Only the encoder's attention calls the head-aware ops (LLaMA keeps Q/K/V float).
            guard model.config.architecture == .bert else {
                throw PTQError.file(recipe.path, "attention_probs.query_key_bits / value_bits (line \(scheme.line)): fully "
                                    + "quantized attention is supported for bert models only; this is \(model.config.architecture.rawValue)")
            }
            let operandStart = Date()
            operands = try AttentionOperandSearch.run(
                model: model, tokenizer: tokenizer, settings: settings,
                samples: min(scheme.samples ?? defaultSamples, settings.samples),
                queryKeyBits: scheme.queryKeyBits, valueBits: scheme.valueBits,
                probabilities: model.structure.activationSites(.attentionProbabilities).reduce(into: [PositiveActivationQuantizer?](
                    repeating: nil, count: model.config.layerCount)) { result, site in
                    result[site.block] = sites.first { $0.point == site.point }?.quantizer
                },
                probabilityCandidates: try AttentionProbabilitySearch.candidates(method: scheme.quantizer, bits: scheme.bits),
                quiet: quiet)
            operandSeconds = Date().timeIntervalSince(operandStart)
        }
        if !quiet {
            var line = "attention_probs: probability search " + String(format: "%.1f s", seconds)
            if !operands.isEmpty { line += ", Q/K/V range search " + String(format: "%.1f s", operandSeconds) }
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
        var result: [String: QuantizedActivationSite] = [:]
        for var site in sites {
            // Timings go to stderr, not into the file: two quantizations must give identical bytes.
            if let layer = site.attentionProbabilityLayer, layer < operands.count {
                let o = operands[layer]
                site.query = o.query
                site.key = o.key
                site.value = o.value
                if let e = o.scoresRelativeError { site.details["qk_scores_relative_mse"] = String(format: "%.3e", e) }
                if let e = o.valueRelativeError { site.details["pv_quantized_v_relative_mse"] = String(format: "%.3e", e) }
                if let p = o.probability {
                    // Re-scanned against P̂·V̂ with the quantized V, alternating with V's search (the reference's order).
                    site.quantizer = p
                    site.details["pv_relative_mse"] = nil
                    if case .adalog(let a) = p { site.details["base"] = String(format: "%.4f", a.base) }
                }
            }
            result[site.point] = site
        }
        return result
    }
}
