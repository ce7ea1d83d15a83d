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
        let sites: [QuantizedActivationSite]
        let start = Date()
        switch model {
        case .language(let m):
            sites = try AttentionProbabilitySearch.run(
                model: m, tokenizer: tokenizer, settings: settings, method: scheme.quantizer, bits: scheme.bits,
                samples: min(scheme.samples ?? 8, settings.samples), rowsPerHead: rows, quiet: quiet)
        case .encoder(let m):
            sites = try AttentionProbabilitySearch.run(
                model: m, tokenizer: tokenizer, settings: settings, method: scheme.quantizer, bits: scheme.bits,
                samples: min(scheme.samples ?? settings.samples, settings.samples), rowsPerHead: rows, quiet: quiet)
        }
        let seconds = String(format: "%.1f", Date().timeIntervalSince(start))
        var result: [String: QuantizedActivationSite] = [:]
        for var site in sites {
            site.details["search_seconds"] = seconds
            result[site.point] = site
        }
        return result
    }
}
