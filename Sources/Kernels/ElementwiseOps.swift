import Foundation

/// Row-wise and element-wise float operations of transformer layers.
///
/// Each works on `rows` contiguous rows of `width` floats. Sums use Double where the result
/// feeds a normalisation, so that results do not depend on the summation order much.
public enum Ops {
    /// RMSNorm: `y = x / sqrt(mean(x²) + eps) · weight`.
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, width: Int,
                               epsilon: Float, into y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let xr = x + r * width, yr = y + r * width
            var sum: Float = 0
            for i in 0..<width { sum += xr[i] * xr[i] }
            let scale = 1 / (sum / Float(width) + epsilon).squareRoot()
            for i in 0..<width { yr[i] = xr[i] * scale * weight[i] }
        }
    }

    /// LayerNorm: `y = (x - mean) / sqrt(var + eps) · weight + bias`.
    public static func layerNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                 rows: Int, width: Int, epsilon: Float, into y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let xr = x + r * width, yr = y + r * width
            var mean: Float = 0
            for i in 0..<width { mean += xr[i] }
            mean /= Float(width)
            var variance: Float = 0
            for i in 0..<width { let d = xr[i] - mean; variance += d * d }
            variance /= Float(width)
            let scale = 1 / (variance + epsilon).squareRoot()
            for i in 0..<width { yr[i] = (xr[i] - mean) * scale * weight[i] + bias[i] }
        }
    }

    /// LayerNorm in place (`layerNorm` reads each element before writing it, so aliasing is safe).
    public static func layerNormInPlace(_ x: UnsafeMutablePointer<Float>, weight: UnsafePointer<Float>,
                                        bias: UnsafePointer<Float>, rows: Int, width: Int, epsilon: Float) {
        layerNorm(x, weight: weight, bias: bias, rows: rows, width: width, epsilon: epsilon, into: x)
    }

    /// In-place softmax of one row of `count` values.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        guard count > 0 else { return }
        var maxValue = -Float.infinity
        for i in 0..<count { maxValue = max(maxValue, x[i]) }
        var sum: Float = 0
        for i in 0..<count {
            let e = expf(x[i] - maxValue)
            x[i] = e
            sum += e
        }
        let inv = 1 / sum
        for i in 0..<count { x[i] *= inv }
    }

    /// `gate[i] = silu(gate[i]) · up[i]` (SwiGLU), in place.
    public static func siluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            gate[i] = g / (1 + expf(-g)) * up[i]
        }
    }

    /// Exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, in place.
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let invSqrt2: Float = 0.70710678118654752440
        for i in 0..<count {
            let v = x[i]
            x[i] = 0.5 * v * (1 + erff(v * invSqrt2))
        }
    }

    /// `y[i] += x[i]`.
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }

    /// Adds `bias[width]` to each of `rows` rows.
    public static func addBias(_ bias: UnsafePointer<Float>, rows: Int, width: Int, into y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let yr = y + r * width
            for i in 0..<width { yr[i] += bias[i] }
        }
    }
}

/// Rotary position embedding in the Hugging Face layout: within each head, dimension `i` is
/// rotated with dimension `i + d/2` (rotate_half).
public struct RoPE: Sendable {
    public let headDim: Int
    private let thetaScale: Float

    public init(headDim: Int, theta: Double) {
        self.headDim = headDim
        thetaScale = powf(Float(theta), -2 / Float(headDim))
    }

    /// Rotates `heads` heads of one token at `position`, in place (`x` holds heads × headDim).
    public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, position: Int) {
        let half = headDim / 2
        // Angles are built by repeated multiplication in float, as ggml's rope cache does, so
        // that our logits track llama.cpp's to the last bits.
        var angle = Float(position)
        for i in 0..<half {
            let c = cosf(angle), s = sinf(angle)
            angle *= thetaScale
            for h in 0..<heads {
                let base = x + h * headDim
                let a = base[i], b = base[i + half]
                base[i] = a * c - b * s
                base[i + half] = b * c + a * s
            }
        }
    }
}
