import PTQCore

/// Shape checks between a weight source and the config it claims, so that a model is never
/// built from tensors the forward pass would read out of bounds (docs/reliability.md).
extension WeightSource {
    /// The shape the config requires for `name`, or an error naming the tensor.
    func expectedShape(_ name: String) throws(PTQError) -> [Int] {
        guard let shape = config.expectedTensors.first(where: { $0.name == name })?.shape else {
            throw PTQError("'\(name)' is not a tensor of this \(config.architecture.rawValue) model")
        }
        return shape
    }

    /// A float tensor whose shape matches the config.
    func checkedVector(_ name: String) throws(PTQError) -> [Float] {
        let expected = try expectedShape(name)
        let t = try tensor(name)
        guard t.shape == expected, t.data.count == expected.reduce(1, *) else {
            throw PTQError("tensor '\(name)' has shape \(t.shape), expected \(expected)")
        }
        return t.data
    }

    /// A linear layer whose input and output widths match the config.
    func checkedLinear(_ name: String) throws(PTQError) -> any LinearOp {
        let expected = try expectedShape(name + "/weight")
        let op = try linear(name)
        guard op.outFeatures == expected[0], op.inFeatures == expected[1] else {
            throw PTQError("linear layer '\(name)' is \(op.outFeatures)×\(op.inFeatures), expected \(expected[0])×\(expected[1])")
        }
        return op
    }

    /// Config and tokenizer agree before any tensor is read.
    func validateModel() throws(PTQError) {
        try config.validate()
        try tokenizer.validate(for: config)
    }
}
