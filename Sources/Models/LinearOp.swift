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

    /// One input row `x` through every layer of `layers` (from `fusable`) into `outputs` (one per
    /// layer), as one pool job (`TokenKernels.sgemv(parts:columns:x:)`): the decode q/k/v and
    /// gate/up products read the same normed row. Each output equals the layer's own `forward`.
    static func forwardRow(_ layers: [FloatLinear], x: UnsafePointer<Float>, into outputs: [UnsafeMutablePointer<Float>]) {
        precondition(layers.count == outputs.count, "one output per layer")
        guard let columns = layers.first?.inFeatures else { return }
        withWeights(layers[...], []) { weights in
            let parts = (0..<layers.count).map {
                TokenKernels.GemvPart(weight: weights[$0], rows: layers[$0].outFeatures, output: outputs[$0])
            }
            TokenKernels.sgemv(parts: parts, columns: columns, x: x)
        }
    }

    private static func withWeights(_ layers: ArraySlice<FloatLinear>, _ pointers: [UnsafePointer<Float>],
                                    _ body: ([UnsafePointer<Float>]) -> Void) {
        guard let first = layers.first else { body(pointers); return }
        first.weight.data.withUnsafeBufferPointer { w in
            withWeights(layers.dropFirst(), pointers + [w.baseAddress!], body)
        }
    }
}
