import Foundation

/// PTQ1.61's block reconstruction loss (reference `quantize/blockptq.py`):
///
///     L = MSE(Y_fp, Y_q) + MSE(Y_fq, Y_q) − log cos(Y_q, Y_fp) − log cos(Y_fq, Y_q)
///
/// MSE is the mean over all elements; cos(A, B) is the mean over tokens of the per-token cosine
/// along the hidden dimension, taken in absolute value (as the code's `.abs()`).
/// Y_q is the quantized block on the quantized-path input, Y_fp the float block on the
/// float-path input, Y_fq the float block on the quantized-path input.
public enum BlockLoss {
    /// The loss for `rows × width` outputs, and its gradient with respect to `quantized` written
    /// into `gradient` when given. Sums run in Double.
    public static func evaluate(quantized yq: UnsafePointer<Float>, fullPrecision yfp: UnsafePointer<Float>,
                                fullPrecisionOnQuantizedInput yfq: UnsafePointer<Float>, rows: Int, width: Int,
                                gradient: UnsafeMutablePointer<Float>? = nil) -> Double {
        let n = rows * width
        var squared: Double = 0
        for i in 0..<n {
            let a = Double(yq[i]) - Double(yfp[i]), b = Double(yq[i]) - Double(yfq[i])
            squared += a * a + b * b
        }
        var loss = squared / Double(n)
        if let gradient {
            let c = 2 / Double(n)
            for i in 0..<n {
                gradient[i] = Float(c * ((Double(yq[i]) - Double(yfp[i])) + (Double(yq[i]) - Double(yfq[i]))))
            }
        }
        loss += negativeLogCosine(yq, yfp, rows: rows, width: width, gradient: gradient)
        loss += negativeLogCosine(yq, yfq, rows: rows, width: width, gradient: gradient)
        return loss
    }

    /// −log|mean_t cos(a_t, b_t)|, adding its gradient with respect to `a` into `gradient`.
    static func negativeLogCosine(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, rows: Int, width: Int,
                                  gradient: UnsafeMutablePointer<Float>?) -> Double {
        // Norms clamped at 1e-8 as torch's cosine_similarity.
        var cosines = [Double](repeating: 0, count: rows), normA = cosines, normB = cosines
        var mean: Double = 0
        for t in 0..<rows {
            let ar = a + t * width, br = b + t * width
            var dot: Double = 0, aa: Double = 0, bb: Double = 0
            for i in 0..<width {
                let x = Double(ar[i]), y = Double(br[i])
                dot += x * y; aa += x * x; bb += y * y
            }
            normA[t] = max(aa.squareRoot(), 1e-8)
            normB[t] = max(bb.squareRoot(), 1e-8)
            cosines[t] = dot / (normA[t] * normB[t])
            mean += cosines[t]
        }
        mean /= Double(rows)
        let loss = -log(max(abs(mean), 1e-30))
        if let gradient {
            // d(−log|C|)/dC = −1/C ; dC/da_t = (b_t/(|a||b|) − c_t·a_t/|a|²) / T
            let outer = -1 / (mean * Double(rows))
            for t in 0..<rows {
                let ar = a + t * width, br = b + t * width, gr = gradient + t * width
                let fb = outer / (normA[t] * normB[t]), fa = outer * cosines[t] / (normA[t] * normA[t])
                for i in 0..<width { gr[i] += Float(fb * Double(br[i]) - fa * Double(ar[i])) }
            }
        }
        return loss
    }
}

/// AdamW as PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments) for
/// one parameter tensor; one instance per tensor keeps its moments and step count.
public struct AdamW: Sendable {
    public var learningRate: Float
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    public var weightDecay: Float
    public private(set) var step = 0
    private var m: [Float]
    private var v: [Float]

    public init(count: Int, learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8,
                weightDecay: Float = 0) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        m = [Float](repeating: 0, count: count)
        v = m
    }

    /// One update of `parameters` from `gradients` (same count as at init).
    public mutating func update(_ parameters: UnsafeMutableBufferPointer<Float>, gradients: UnsafeBufferPointer<Float>) {
        precondition(parameters.count == m.count && gradients.count == m.count)
        step += 1
        let lr = learningRate, b1 = beta1, b2 = beta2, eps = epsilon
        let decay = 1 - lr * weightDecay
        let correction1 = 1 - Float(pow(Double(b1), Double(step)))
        let correction2Root = Float((1 - pow(Double(b2), Double(step))).squareRoot())
        let stepSize = lr / correction1
        m.withUnsafeMutableBufferPointer { mp in
            v.withUnsafeMutableBufferPointer { vp in
                for i in 0..<mp.count {
                    let g = gradients[i]
                    parameters[i] *= decay
                    mp[i] = b1 * mp[i] + (1 - b1) * g
                    vp[i] = b2 * vp[i] + (1 - b2) * g * g
                    parameters[i] -= stepSize * mp[i] / (vp[i].squareRoot() / correction2Root + eps)
                }
            }
        }
    }

    /// `update` on a whole array.
    public mutating func update(_ parameters: inout [Float], gradients: [Float]) {
        parameters.withUnsafeMutableBufferPointer { p in
            gradients.withUnsafeBufferPointer { g in update(p, gradients: g) }
        }
    }
}
