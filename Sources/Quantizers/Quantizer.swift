import Calibration
import PTQCore
import Recipes

/// One float linear layer handed to a quantizer.
public struct LinearLayer: Sendable {
    /// Canonical layer name, e.g. `layers/3/mlp/down_proj`.
    public var name: String
    public var weight: Tensor           // (out, in)
    public var bias: [Float]?
    /// Quantization point whose activations feed this layer (`layers.3.mlp.down_proj.input`).
    public var inputPoint: String
    /// What feeds the layer (a norm, the attention heads, an activation function), as the
    /// model's structure says: methods that treat layers differently read this, never the name.
    public var role: LayerRole

    public init(name: String, weight: Tensor, bias: [Float]?, inputPoint: String, role: LayerRole) {
        self.name = name
        self.weight = weight
        self.bias = bias
        self.inputPoint = inputPoint
        self.role = role
    }

    /// The planned layer `plan` with its float weight and bias (name, input point and role
    /// from the plan).
    public init(_ plan: LayerPlan, weight: Tensor, bias: [Float]?) {
        self.init(name: plan.name, weight: weight, bias: bias, inputPoint: plan.inputPoint, role: plan.role)
    }
}

/// A quantization method: the one protocol every method implements.
///
/// A quantizer is made from the recipe's resolved plan for one layer (method parameters are
/// validated at construction, with recipe line numbers), declares the statistics it needs at
/// the layer's input, and turns the float layer into a `QuantizedLinear` that the packer
/// stores and the runtime executes. See docs/adding-a-quantizer.md.
public protocol Quantizer: Sendable {
    /// Statistics calibration must gather at the layer's input point (empty = none; then
    /// quantization runs without calibration).
    var requiredStatistics: Set<StatisticKind> { get }

    func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear
}

/// Maps recipe method names to quantizers. Adding a method is one file plus one line here.
public enum QuantizerRegistry {
    public typealias Factory = @Sendable (LayerPlan) throws(PTQError) -> any Quantizer

    public static let factories: [String: Factory] = [
        "rtn": { plan throws(PTQError) in try RTNQuantizer(plan: plan) },
        "smoothquant": { plan throws(PTQError) in try SmoothQuantQuantizer(plan: plan) },
        "outliertune": { plan throws(PTQError) in try OutlierTuneQuantizer(plan: plan) },
        "gptq": { plan throws(PTQError) in try GPTQQuantizer(plan: plan) },
        "splitquant": { plan throws(PTQError) in try SplitQuantQuantizer(plan: plan) },
        "llmfp4": { plan throws(PTQError) in try LLMFP4Quantizer(plan: plan) },
        "adalog": { plan throws(PTQError) in try AdaLogLinearQuantizer(plan: plan) },
        "fpcs": { plan throws(PTQError) in try FPCSLinearQuantizer(plan: plan) },
        "ptq161": { plan throws(PTQError) in try PTQ161Quantizer(plan: plan) },
        "pbllm": { plan throws(PTQError) in try PBLLMQuantizer(plan: plan) },
        "binarize": { plan throws(PTQError) in try BinarizeQuantizer(plan: plan) },
    ]

    public static var methods: [String] { factories.keys.sorted() }

    /// Methods whose integer weights honour `weight.range: full` (the shared RTN / GPTQ grid);
    /// any other method refuses it rather than silently quantizing on another grid.
    public static let fullRangeMethods: Set<String> = ["rtn", "gptq", "adalog"]

    /// The quantizer for one planned layer; unknown methods name the recipe line.
    public static func quantizer(for plan: LayerPlan) throws(PTQError) -> any Quantizer {
        guard let factory = factories[plan.method] else {
            let line = plan.ruleLine ?? plan.parameters.line
            let field = plan.ruleIndex.map { "rules[\($0)].method" } ?? "scheme.method"
            throw PTQError("\(plan.parameters.source):\(line): \(field): unknown method '\(plan.method)' for \(plan.name) "
                           + "(known: \(methods.joined(separator: ", ")))")
        }
        if plan.weight.range == .full && !fullRangeMethods.contains(plan.method) {
            let line = plan.ruleLine ?? plan.parameters.line
            let field = plan.ruleIndex.map { "rules[\($0)].weight.range" } ?? (plan.isEmbedding ? "embedding.weight.range" : "scheme.weight.range")
            throw PTQError("\(plan.parameters.source):\(line): \(field): full is not supported by method '\(plan.method)' "
                           + "(\(plan.name)); methods with the full symmetric grid: \(fullRangeMethods.sorted().joined(separator: ", "))")
        }
        return try factory(plan)
    }
}
