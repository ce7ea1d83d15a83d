import Dispatch
import Foundation
import Models
import Packing
import PTQCore

/// A `WeightSource` over a packed model: float tensors for norms and embeddings, an
/// `IntegerLinear` for every quantized layer and a `FloatLinear` for layers left in float.
///
/// `linear(_:)` builds a new layer on each call (the model builder asks once per layer); the
/// `IntegerLinear` holds its own run-time copy of the codes, so a caller that wants the smallest
/// footprint can drop the `PackedModel` once the model is built.
public struct PackedWeights: WeightSource {
    public let model: PackedModel
    /// Layers built ahead by `init(buildingLayersOf:)`, handed out once each.
    private let prebuilt: PrebuiltLayers?

    public init(_ model: PackedModel) {
        self.model = model
        prebuilt = nil
    }

    /// Builds every quantized layer (and a quantized token embedding) at once, on all cores, for
    /// a loader about to build the whole model: the model builder asks for the layers one by one
    /// on one thread, and their builds (re-layouts of the codes, 0.2–0.45 s for SmolLM2) were
    /// the longest serial part of a `.ptq` load (issue 13). Each build is the same call
    /// `linear(_:)` makes, so the layers are identical; `linear(_:)` and `tokenEmbedding()` hand
    /// each prebuilt layer (or its build error) out once and build anew on a second call.
    public init(buildingLayersOf model: PackedModel) {
        self.model = model
        prebuilt = PrebuiltLayers(model)
    }

    public var config: ModelConfig { model.config }
    public var tokenizer: TokenizerSpec { model.tokenizer }

    public func tensor(_ name: String) throws(PTQError) -> Tensor {
        guard let tensor = model.floatTensors[name] else {
            throw PTQError("packed model has no float tensor '\(name)'")
        }
        return tensor
    }

    public func linear(_ name: String) throws(PTQError) -> any LinearOp {
        if let layer = prebuilt?.takeLinear(name) { return try layer.get() }
        if let q = model.quantizedLinears[name] {
            return try Self.linearOp(for: q)
        }
        guard let weight = model.floatTensors[name + "/weight"] else {
            throw PTQError("packed model has no linear layer '\(name)': neither a quantized layer nor a float tensor '\(name)/weight'")
        }
        guard weight.shape.count == 2 else {
            throw PTQError("packed float tensor '\(name)/weight' has shape \(weight.shape), expected [out, in]")
        }
        let bias = model.floatTensors[name + "/bias"]
        if let bias, bias.count != weight.shape[0] {
            throw PTQError("packed float tensor '\(name)/bias' has \(bias.count) values for \(weight.shape[0]) output features")
        }
        return FloatLinear(weight: weight, bias: bias?.data)
    }

    /// The quantized table when the recipe quantized `embeddings/token`, else the float one.
    public func tokenEmbedding() throws(PTQError) -> any EmbeddingTable {
        if let table = prebuilt?.takeEmbedding() { return try table.get() }
        guard let q = model.quantizedLinears[TensorNames.tokenEmbeddingLayer] else {
            let table = try tensor(TensorNames.tokenEmbedding)
            let expected = [config.vocabSize, config.hiddenSize]
            guard table.shape == expected else {
                throw PTQError("tensor '\(TensorNames.tokenEmbedding)' has shape \(table.shape), expected \(expected)")
            }
            return FloatEmbedding(table: table.data, rows: expected[0], width: expected[1])
        }
        return try QuantizedEmbedding(q)
    }

    /// A tied model's own LM head: the quantized `lm_head`, or a float `lm_head/weight`.
    public func tiedLMHead() throws(PTQError) -> (any LinearOp)? {
        let name = TensorNames.lmHeadLayer
        guard model.quantizedLinears[name] != nil || model.floatTensors[name + "/weight"] != nil else { return nil }
        return try linear(name)
    }

    /// The run-time layer for a quantized linear: one kernel family per weight format.
    public static func linearOp(for q: QuantizedLinear) throws(PTQError) -> any LinearOp {
        switch q.weight {
        case .integer: q.activation?.logarithmic != nil ? try LogInputLinear(q) : try IntegerLinear(q)
        case .split: try SplitLinear(q)
        case .floatingPoint: try FloatingPointLinear(q)
        case .binary: try BinaryLinear(q)
        }
    }
}

/// The layers `PackedWeights(buildingLayersOf:)` built in parallel, each taken at most once (so
/// nothing here outlives the model build but layers the builder never asked for).
private final class PrebuiltLayers: @unchecked Sendable {
    private var linears: [String: Result<any LinearOp, PTQError>] = [:]
    private var embedding: Result<any EmbeddingTable, PTQError>?
    private let lock = NSLock()

    init(_ model: PackedModel) {
        // Largest first, so that neither thread is left with the head at the end.
        func size(_ name: String) -> Int { model.quantizedLinears[name].map { $0.weight.rows * $0.weight.columns } ?? 0 }
        let names = model.quantizedLinears.keys.sorted { (size($0), $0) > (size($1), $1) }
        DispatchQueue.concurrentPerform(iterations: names.count) { i in
            let q = model.quantizedLinears[names[i]]!
            if names[i] == TensorNames.tokenEmbeddingLayer {
                let table = Result { () throws(PTQError) -> any EmbeddingTable in try QuantizedEmbedding(q) }
                lock.withLock { embedding = table }
            } else {
                let layer = Result { () throws(PTQError) -> any LinearOp in try PackedWeights.linearOp(for: q) }
                lock.withLock { linears[names[i]] = layer }
            }
        }
    }

    func takeLinear(_ name: String) -> Result<any LinearOp, PTQError>? {
        lock.withLock { linears.removeValue(forKey: name) }
    }

    func takeEmbedding() -> Result<any EmbeddingTable, PTQError>? {
        lock.withLock {
            defer { embedding = nil }
            return embedding
        }
    }
}
