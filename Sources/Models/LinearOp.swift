import Kernels
import PTQCore

/// What a model calls for every `y = x·Wᵀ + b`.
///
/// The same model code runs float weights (`FloatLinear`) or packed quantized weights: the
/// quantized runtime supplies other conformances.
public protocol LinearOp: AnyObject, Sendable {
    var inFeatures: Int { get }
    var outFeatures: Int { get }
    /// `y[rows, out] = x[rows, in]·Wᵀ + b`.
    func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>)
    /// Bytes of weights and parameters one forward reads (for memory-traffic estimates in
    /// benchmarks); 0 when an implementation does not say.
    var weightBytes: Int { get }
    /// Bytes the layer holds in memory (every copy of its codes and parameters), for memory
    /// reports (`ptq bench`); `weightBytes` when an implementation does not say.
    var storageBytes: Int { get }
    /// Which kernel path runs, for reports (`ptq bench`); empty when an implementation does not say.
    var kernelDescription: String { get }
}

extension LinearOp {
    public var weightBytes: Int { 0 }
    public var storageBytes: Int { weightBytes }
    public var kernelDescription: String { "" }
}

/// A float32 linear layer on OpenBLAS.
public final class FloatLinear: LinearOp {
    public let weight: Tensor
    public let bias: [Float]?
    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }
    public var weightBytes: Int { 4 * (weight.data.count + (bias?.count ?? 0)) }

    public init(weight: Tensor, bias: [Float]? = nil) {
        precondition(weight.shape.count == 2, "a linear weight is [out, in]")
        precondition(bias == nil || bias!.count == weight.shape[0], "bias length must equal out features")
        self.weight = weight
        self.bias = bias
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        weight.data.withUnsafeBufferPointer { w in
            // Several rows (prefill): split over our pool, OpenBLAS single-threaded inside.
            BLAS.pooledLinear(x, rows: rows, inFeatures: inFeatures, weight: w.baseAddress!,
                              outFeatures: outFeatures, into: y)
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: outFeatures, into: y) }
        }
    }
}

extension FloatLinear {
    /// The layers as float layers that can run one input row together (`forwardRow(_:x:into:)`):
    /// all `FloatLinear`, no bias, the same input width; nil otherwise (quantized layers keep
    /// their own kernels).
    static func fusable(_ ops: [any LinearOp]) -> [FloatLinear]? {
        let float = ops.compactMap { $0 as? FloatLinear }
        guard float.count == ops.count, let width = float.first?.inFeatures,
              float.allSatisfy({ $0.bias == nil && $0.inFeatures == width }) else { return nil }
        return float
    }

    /// One input row `x` through every layer of `layers` (from `fusable`: two or three layers)
    /// into `first`, `second` and `third` (one per layer), as one pool job
    /// (`TokenKernels.sgemv(parts:columns:x:)`): the decode q/k/v and gate/up products read the
    /// same normed row. Each output equals the layer's own `forward`. The parts live in stack
    /// memory: a decode step allocates nothing here.
    static func forwardRow(_ layers: [FloatLinear], x: UnsafePointer<Float>, into first: UnsafeMutablePointer<Float>,
                           _ second: UnsafeMutablePointer<Float>, _ third: UnsafeMutablePointer<Float>? = nil) {
        precondition(layers.count == (third == nil ? 2 : 3), "one output per layer")
        guard let columns = layers.first?.inFeatures else { return }
        func output(_ i: Int) -> UnsafeMutablePointer<Float> { i == 0 ? first : i == 1 ? second : third! }
        withUnsafeTemporaryAllocation(of: TokenKernels.GemvPart.self, capacity: layers.count) { parts in
            withWeights(layers, from: 0, into: parts, output) {
                TokenKernels.sgemv(parts: UnsafeBufferPointer(parts), columns: columns, x: x)
            }
        }
    }

    /// Fills `parts[index...]` with the layers' weight pointers, each valid inside its
    /// `withUnsafeBufferPointer`, and runs `body` innermost.
    private static func withWeights(_ layers: [FloatLinear], from index: Int,
                                    into parts: UnsafeMutableBufferPointer<TokenKernels.GemvPart>,
                                    _ output: (Int) -> UnsafeMutablePointer<Float>, _ body: () -> Void) {
        guard index < layers.count else { body(); return }
        layers[index].weight.data.withUnsafeBufferPointer { w in
            parts.initializeElement(at: index, to: TokenKernels.GemvPart(weight: w.baseAddress!, rows: layers[index].outFeatures,
                                                                         output: output(index)))
            withWeights(layers, from: index + 1, into: parts, output, body)
        }
    }
}
