import PTQCore

extension ModelStructure {
    /// The linear layers of every block, described from the config's expected tensors (the one
    /// place that says which tensors a model has and their shapes): `kinds` gives, per layer of
    /// a block, its name suffix (`attention/q_proj`), its role and the point that feeds it.
    static func blockLinearLayers(of config: ModelConfig,
                                  kinds: [(suffix: String, role: LayerRole, input: (Int) -> String)])
        -> [LinearLayerDescription]
    {
        var shapes: [String: [Int]] = [:]
        for (name, shape) in config.expectedTensors { shapes[name] = shape }
        var layers: [LinearLayerDescription] = []
        for block in 0..<config.layerCount {
            for kind in kinds {
                let name = TensorNames.layer(block, kind.suffix)
                guard let shape = shapes[name + "/weight"], shape.count == 2 else {
                    preconditionFailure("\(config.architecture.rawValue): no weight \(name)/weight in the expected tensors")
                }
                layers.append(LinearLayerDescription(
                    name: name, role: kind.role, inputPoint: kind.input(block), block: block,
                    outFeatures: shape[0], inFeatures: shape[1], hasBias: shapes[name + "/bias"] != nil))
            }
        }
        return layers
    }

    /// Per block: the attention probabilities and the MLP activation's output.
    static func blockActivationSites(of config: ModelConfig) -> [ActivationSiteDescription] {
        (0..<config.layerCount).flatMap { block in
            [ActivationSiteDescription(point: QuantizationPoints.attentionProbabilities(block), block: block,
                                       kind: .attentionProbabilities),
             ActivationSiteDescription(point: QuantizationPoints.mlpDownInput(block), block: block,
                                       kind: .mlpActivation(config.activation))]
        }
    }
}
