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
        let seconds = String(format: "%.1f", Date().timeIntervalSince(start))
        var result: [String: QuantizedActivationSite] = [:]
        for var site in sites {
            site.details["search_seconds"] = seconds
            result[site.point] = site
        }
        return result
    }
}
