import CKernels
import Foundation

/// Row-wise and element-wise float operations of transformer layers.
///
/// Each works on `rows` contiguous rows of `width` floats. Sums use Double where the result
/// feeds a normalisation, so that results do not depend on the summation order much.
public enum Ops {
    /// RMSNorm: `y = x / sqrt(mean(x²) + eps) · weight` (AVX2: the sum of squares in 16 lanes).
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, width: Int,
                               epsilon: Float, into y: UnsafeMutablePointer<Float>) {
        ck_rmsnorm_f32(x, weight, rows, width, epsilon, y)
    }

    /// `x += residual`, then `y = rmsNorm(x)`, reading `x` once: `x` and `y` equal `add`
    /// followed by `rmsNorm` bit for bit (the decoder's residual add fused into the next norm).
    public static func addRMSNorm(_ residual: UnsafePointer<Float>, into x: UnsafeMutablePointer<Float>,
                                  weight: UnsafePointer<Float>, rows: Int, width: Int, epsilon: Float,
                                  normed y: UnsafeMutablePointer<Float>) {
        ck_add_rmsnorm_f32(x, residual, weight, rows, width, epsilon, y)
    }

    /// Scalar twin of `addRMSNorm` (`add`, then `rmsNormReference`).
    public static func addRMSNormReference(_ residual: UnsafePointer<Float>, into x: UnsafeMutablePointer<Float>,
                                           weight: UnsafePointer<Float>, rows: Int, width: Int, epsilon: Float,
                                           normed y: UnsafeMutablePointer<Float>) {
        ck_add_rmsnorm_f32_ref(x, residual, weight, rows, width, epsilon, y)
    }

    /// Scalar twin of `rmsNorm` (one sequential sum per row).
    public static func rmsNormReference(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, width: Int,
                                        epsilon: Float, into y: UnsafeMutablePointer<Float>) {
        ck_rmsnorm_f32_ref(x, weight, rows, width, epsilon, y)
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

    /// In-place softmax of one row of `count` values: max, e^(x − max), sum, times 1/sum (AVX2:
    /// 8 lanes with a vector expf within 2 ulp of libm's, the sum in 8 lanes).
    public static func softmax(_ x: UnsafeMutablePointer<Float>, count: Int) {
        ck_softmax_f32(x, count)
    }

    /// Scalar twin of `softmax` (libm `expf`, one sequential sum).
    public static func softmaxReference(_ x: UnsafeMutablePointer<Float>, count: Int) {
        ck_softmax_f32_ref(x, count)
    }

    /// `gate[i] = silu(gate[i]) · up[i]` (SwiGLU), in place (AVX2: the vector expf).
    public static func siluMultiply(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        ck_silu_mul_f32(gate, up, count)
    }

    /// Scalar twin of `siluMultiply` (libm `expf`): `g / (1 + expf(−g)) · up`.
    public static func siluMultiplyReference(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        ck_silu_mul_f32_ref(gate, up, count)
    }

    /// `e^x` element by element with the vector expf of `softmax` and `siluMultiply` (libm's
    /// `expf` without AVX2), so tests can measure its error.
    public static func exp(_ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>) {
        ck_exp_f32(x, count, y)
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
        var table = [Float](repeating: 0, count: headDim)
        table.withUnsafeMutableBufferPointer { fill($0.baseAddress!, positions: position..<(position + 1)) }
        table.withUnsafeBufferPointer { apply(x, heads: heads, angles: $0.baseAddress!) }
    }

    /// Writes `(cos, sin)` of every rotation angle for each position: `headDim` floats per
    /// position (`headDim / 2` pairs), the table `apply(_:heads:angles:)` reads. A forward pass
    /// fills it once for its tokens and every layer's q and k reuse it (instead of
    /// `cosf`/`sinf` per head group, layer and token).
    public func fill(_ table: UnsafeMutablePointer<Float>, positions: Range<Int>) {
        let half = headDim / 2
        for (t, position) in positions.enumerated() {
            let row = table + t * headDim
            // Angles are built by repeated multiplication in float, as ggml's rope cache does, so
            // that our logits track llama.cpp's to the last bits.
            var angle = Float(position)
            for i in 0..<half {
                row[2 * i] = cosf(angle)
                row[2 * i + 1] = sinf(angle)
                angle *= thetaScale
            }
        }
    }

    /// Rotates `heads` heads of one token with one position's row of a `fill` table.
    public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, angles: UnsafePointer<Float>) {
        let half = headDim / 2
        for h in 0..<heads {
            let base = x + h * headDim
            for i in 0..<half {
                let c = angles[2 * i], s = angles[2 * i + 1]
                let a = base[i], b = base[i + half]
                base[i] = a * c - b * s
                base[i + half] = b * c + a * s
            }
        }
    }
}
