import Kernels
import PTQCore

/// A linear layer `y = x·Wᵀ` (no bias: LLaMA has none) that can also run backward.
///
/// `backward` adds the gradient of its own trainable parameters into the layer's gradient
/// buffers (so gradients of several calls accumulate until the caller clears them) and writes or
/// adds the gradient with respect to its input.
public protocol TrainableLinear: AnyObject {
    var inFeatures: Int { get }
    var outFeatures: Int { get }
    /// `y[rows, out] = x[rows, in]·Wᵀ`.
    func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>)
    /// Given the layer input `x` of the forward call and `dy = dL/dy`, accumulates the parameter
    /// gradients and writes `dL/dx` into `dx` (added to it when `accumulate`), if `dx` is given.
    func backward(input x: UnsafePointer<Float>, outputGradient dy: UnsafePointer<Float>, rows: Int,
                  inputGradient dx: UnsafeMutablePointer<Float>?, accumulate: Bool)
}

/// A dense float weight `[out, in]` whose gradient `dL/dW` is accumulated in `gradient`.
///
/// Block-wise scale optimisation puts the current dequantized Ŵ here and maps `gradient` to
/// α, r1 and r2 by the chain rule. With `tracksGradient == false` (frozen weights) backward
/// only propagates to the input.
public final class DenseLinear: TrainableLinear {
    public let inFeatures: Int
    public let outFeatures: Int
    /// `[out, in]` row-major.
    public var weight: [Float]
    /// `dL/dW`, `[out, in]`, accumulated by `backward` (empty when the weight is frozen).
    public var gradient: [Float]
    public let tracksGradient: Bool

    public init(weight: [Float], outFeatures: Int, inFeatures: Int, tracksGradient: Bool = true) {
        precondition(weight.count == outFeatures * inFeatures, "a linear weight is [out, in]")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.weight = weight
        self.tracksGradient = tracksGradient
        gradient = tracksGradient ? [Float](repeating: 0, count: weight.count) : []
    }

    public func zeroGradient() {
        gradient.withUnsafeMutableBufferPointer { g in g.update(repeating: 0) }
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { w in
            BLAS.linear(x, rows: rows, inFeatures: inFeatures, weight: w.baseAddress!, outFeatures: outFeatures, into: y)
        }
    }

    public func backward(input x: UnsafePointer<Float>, outputGradient dy: UnsafePointer<Float>, rows: Int,
                         inputGradient dx: UnsafeMutablePointer<Float>?, accumulate: Bool) {
        if tracksGradient {
            // dW[out, in] += dyᵀ[out, rows] · x[rows, in]
            gradient.withUnsafeMutableBufferPointer { g in
                BLAS.gemm(m: outFeatures, n: inFeatures, k: rows, a: dy, lda: outFeatures, transposeA: true,
                          b: x, ldb: inFeatures, transposeB: false, beta: 1, c: g.baseAddress!, ldc: inFeatures)
            }
        }
        if let dx {
            // dx[rows, in] (+)= dy[rows, out] · W[out, in]
            weight.withUnsafeBufferPointer { w in
                BLAS.gemm(m: rows, n: inFeatures, k: outFeatures, a: dy, lda: outFeatures, b: w.baseAddress!,
                          ldb: inFeatures, transposeB: false, beta: accumulate ? 1 : 0, c: dx, ldc: inFeatures)
            }
        }
    }
}

/// A frozen base weight W `[out, in]` plus a trainable low-rank adapter, as peft's LoRA:
/// `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with A `[rank, in]`, B `[out, rank]` and s = alpha / rank.
/// (peft's LoRA dropout is not applied: training here is deterministic.)
public final class LoRALinear: TrainableLinear {
    public let inFeatures: Int
    public let outFeatures: Int
    public let rank: Int
    public let scale: Float
    /// Frozen base weight `[out, in]`.
    public let base: [Float]
    /// `[rank, in]`, random at start (peft: Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in)).
    public var a: [Float]
    /// `[out, rank]`, zero at start, so the adapted layer starts equal to the base layer.
    public var b: [Float]
    public var gradientA: [Float]
    public var gradientB: [Float]
    private var hidden: [Float] = []      // (rows, rank): x·Aᵀ
    private var hiddenGradient: [Float] = []

    public init(base: [Float], outFeatures: Int, inFeatures: Int, rank: Int, alpha: Float,
                generator: inout SplitMix) {
        precondition(base.count == outFeatures * inFeatures && rank > 0)
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.rank = rank
        scale = alpha / Float(rank)
        self.base = base
        let bound = 1 / Float(inFeatures).squareRoot()
        a = (0..<(rank * inFeatures)).map { _ in Float.random(in: -bound...bound, using: &generator) }
        b = [Float](repeating: 0, count: outFeatures * rank)
        gradientA = [Float](repeating: 0, count: a.count)
        gradientB = [Float](repeating: 0, count: b.count)
    }

    public func zeroGradient() {
        gradientA.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        gradientB.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
    }

    /// `W + s·B·A`, `[out, in]` (peft's `merge_and_unload`).
    public func merged() -> [Float] {
        var w = base
        w.withUnsafeMutableBufferPointer { wp in
            b.withUnsafeBufferPointer { bp in
                a.withUnsafeBufferPointer { ap in
                    BLAS.gemm(m: outFeatures, n: inFeatures, k: rank, alpha: scale, a: bp.baseAddress!, lda: rank,
                              b: ap.baseAddress!, ldb: inFeatures, transposeB: false, beta: 1,
                              c: wp.baseAddress!, ldc: inFeatures)
                }
            }
        }
        return w
    }

    private func computeHidden(_ x: UnsafePointer<Float>, rows: Int) {
        if hidden.count < rows * rank { hidden = [Float](repeating: 0, count: rows * rank) }
        hidden.withUnsafeMutableBufferPointer { h in
            a.withUnsafeBufferPointer { ap in
                BLAS.gemm(m: rows, n: rank, k: inFeatures, a: x, lda: inFeatures, b: ap.baseAddress!, ldb: inFeatures,
                          transposeB: true, c: h.baseAddress!, ldc: rank)
            }
        }
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        base.withUnsafeBufferPointer { w in
            BLAS.linear(x, rows: rows, inFeatures: inFeatures, weight: w.baseAddress!, outFeatures: outFeatures, into: y)
        }
        computeHidden(x, rows: rows)
        hidden.withUnsafeBufferPointer { h in
            b.withUnsafeBufferPointer { bp in
                BLAS.gemm(m: rows, n: outFeatures, k: rank, alpha: scale, a: h.baseAddress!, lda: rank,
                          b: bp.baseAddress!, ldb: rank, transposeB: true, beta: 1, c: y, ldc: outFeatures)
            }
        }
    }

    public func backward(input x: UnsafePointer<Float>, outputGradient dy: UnsafePointer<Float>, rows: Int,
                         inputGradient dx: UnsafeMutablePointer<Float>?, accumulate: Bool) {
        // The hidden activations are recomputed (cheap: rank ≪ in) rather than kept per call,
        // so that one layer object can serve a forward of another sequence in between.
        computeHidden(x, rows: rows)
        if hiddenGradient.count < rows * rank { hiddenGradient = [Float](repeating: 0, count: rows * rank) }
        hidden.withUnsafeBufferPointer { h in
        hiddenGradient.withUnsafeMutableBufferPointer { g in
        a.withUnsafeBufferPointer { ap in
        b.withUnsafeBufferPointer { bp in
        gradientA.withUnsafeMutableBufferPointer { ga in
        gradientB.withUnsafeMutableBufferPointer { gb in
            // dB[out, rank] += s · dyᵀ · h
            BLAS.gemm(m: outFeatures, n: rank, k: rows, alpha: scale, a: dy, lda: outFeatures, transposeA: true,
                      b: h.baseAddress!, ldb: rank, transposeB: false, beta: 1, c: gb.baseAddress!, ldc: rank)
            // g[rows, rank] = dy · B
            BLAS.gemm(m: rows, n: rank, k: outFeatures, a: dy, lda: outFeatures, b: bp.baseAddress!, ldb: rank,
                      transposeB: false, c: g.baseAddress!, ldc: rank)
            // dA[rank, in] += s · gᵀ · x
            BLAS.gemm(m: rank, n: inFeatures, k: rows, alpha: scale, a: g.baseAddress!, lda: rank, transposeA: true,
                      b: x, ldb: inFeatures, transposeB: false, beta: 1, c: ga.baseAddress!, ldc: inFeatures)
            if let dx {
                base.withUnsafeBufferPointer { w in
                    BLAS.gemm(m: rows, n: inFeatures, k: outFeatures, a: dy, lda: outFeatures, b: w.baseAddress!,
                              ldb: inFeatures, transposeB: false, beta: accumulate ? 1 : 0, c: dx, ldc: inFeatures)
                }
                // dx += s · g · A
                BLAS.gemm(m: rows, n: inFeatures, k: rank, alpha: scale, a: g.baseAddress!, lda: rank,
                          b: ap.baseAddress!, ldb: inFeatures, transposeB: false, beta: 1, c: dx, ldc: inFeatures)
            }
        }}}}}}
    }
}
