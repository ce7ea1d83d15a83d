import Foundation
import Kernels
import PTQCore

/// A float buffer with a stable address, for the hot loops of training (no copy-on-write, no
/// nested `withUnsafe…` closures). Freed with its owner.
final class FloatBuffer {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int
    init(_ count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }
    deinit { pointer.deallocate() }
    func zero() { pointer.update(repeating: 0, count: count) }
}

/// One LLaMA decoder block, exactly as `LlamaModel` computes it, with a forward pass that keeps
/// its activations and a hand-written backward pass:
///
///     h  = x + o(attention(RoPE(q(n1)), RoPE(k(n1)), v(n1))),   n1 = RMSNorm(x)·g1
///     y  = h + down(silu(gate(n2)) ∘ up(n2)),                     n2 = RMSNorm(h)·g2
///
/// for the T tokens of one sequence starting at position 0 (causal grouped-query attention, no
/// KV cache). `backward` gives dL/dx and accumulates dL/dθ in each `TrainableLinear` (the norm
/// weights are frozen). Every matmul runs on OpenBLAS sgemm; reductions that normalise run in
/// Double in the backward pass. Not thread-safe: one forward, then its backward, per object.
public final class LlamaBlock {
    public let config: ModelConfig
    public let attentionNorm: [Float]
    public let mlpNorm: [Float]
    /// q, k, v, o, gate, up, down (`TensorNames.linearKinds` order).
    public let linears: [any TrainableLinear]

    private var capacity = 0
    private var tokens = 0
    // Saved activations of the last forward, sized for `capacity` tokens.
    private var x = FloatBuffer(0), n1 = FloatBuffer(0), r1 = FloatBuffer(0)
    private var q = FloatBuffer(0), k = FloatBuffer(0), v = FloatBuffer(0)   // q, k after RoPE
    private var p = FloatBuffer(0)                                          // (H, T, T) probabilities
    private var att = FloatBuffer(0), h = FloatBuffer(0), n2 = FloatBuffer(0), r2 = FloatBuffer(0)
    private var g = FloatBuffer(0), u = FloatBuffer(0), m = FloatBuffer(0)
    // Backward scratch.
    private var dh = FloatBuffer(0), dn = FloatBuffer(0), dm = FloatBuffer(0), dg = FloatBuffer(0), du = FloatBuffer(0)
    private var datt = FloatBuffer(0), dq = FloatBuffer(0), dk = FloatBuffer(0), dv = FloatBuffer(0), dp = FloatBuffer(0)
    private var ropeCos = FloatBuffer(0), ropeSin = FloatBuffer(0)

    /// `linears` in `TensorNames.linearKinds` order, with the shapes `config` requires.
    public init(config: ModelConfig, attentionNorm: [Float], mlpNorm: [Float], linears: [any TrainableLinear]) {
        let D = config.hiddenSize, F = config.intermediateSize
        let qW = config.headCount * config.headDim, kvW = config.kvHeadCount * config.headDim
        let shapes = [(qW, D), (kvW, D), (kvW, D), (D, qW), (F, D), (F, D), (D, F)]
        precondition(linears.count == 7 && zip(linears, shapes).allSatisfy { $0.outFeatures == $1.0 && $0.inFeatures == $1.1 },
                     "a LLaMA block has 7 linears with the config's shapes")
        precondition(attentionNorm.count == D && mlpNorm.count == D && config.headDim % 2 == 0)
        self.config = config
        self.attentionNorm = attentionNorm
        self.mlpNorm = mlpNorm
        self.linears = linears
    }

    private func reserve(_ T: Int) {
        guard T > capacity else { return }
        let c = config, D = c.hiddenSize, F = c.intermediateSize
        let qW = c.headCount * c.headDim, kvW = c.kvHeadCount * c.headDim
        x = FloatBuffer(T * D); n1 = FloatBuffer(T * D); r1 = FloatBuffer(T)
        q = FloatBuffer(T * qW); k = FloatBuffer(T * kvW); v = FloatBuffer(T * kvW)
        p = FloatBuffer(c.headCount * T * T)
        att = FloatBuffer(T * qW); h = FloatBuffer(T * D); n2 = FloatBuffer(T * D); r2 = FloatBuffer(T)
        g = FloatBuffer(T * F); u = FloatBuffer(T * F); m = FloatBuffer(T * F)
        dh = FloatBuffer(T * D); dn = FloatBuffer(T * D); dm = FloatBuffer(T * F); dg = FloatBuffer(T * F)
        du = FloatBuffer(T * F); datt = FloatBuffer(T * qW); dq = FloatBuffer(T * qW)
        dk = FloatBuffer(T * kvW); dv = FloatBuffer(T * kvW); dp = FloatBuffer(T * T)
        // RoPE angles exactly as `Kernels.RoPE` builds them (repeated float multiplication), so
        // the forward pass matches the model to the last bit.
        let half = c.headDim / 2
        ropeCos = FloatBuffer(T * half); ropeSin = FloatBuffer(T * half)
        let thetaScale = powf(Float(c.ropeTheta), -2 / Float(c.headDim))
        for t in 0..<T {
            var angle = Float(t)
            for i in 0..<half {
                ropeCos.pointer[t * half + i] = cosf(angle)
                ropeSin.pointer[t * half + i] = sinf(angle)
                angle *= thetaScale
            }
        }
        capacity = T
    }

    /// `y = block(x)` for `rows` tokens `(T, D)`, keeping what `backward` needs.
    public func forward(_ input: UnsafePointer<Float>, rows T: Int, into y: UnsafeMutablePointer<Float>) {
        reserve(T)
        tokens = T
        let c = config, D = c.hiddenSize, F = c.intermediateSize, Dh = c.headDim
        let H = c.headCount, KV = c.kvHeadCount, qW = H * Dh, kvW = KV * Dh, group = H / KV
        let eps = Float(c.normEpsilon)
        x.pointer.update(from: input, count: T * D)
        Self.rmsNorm(x.pointer, weight: attentionNorm, rows: T, width: D, epsilon: eps, into: n1.pointer, rstd: r1.pointer)
        linears[0].forward(n1.pointer, rows: T, into: q.pointer)
        linears[1].forward(n1.pointer, rows: T, into: k.pointer)
        linears[2].forward(n1.pointer, rows: T, into: v.pointer)
        rotate(q.pointer, heads: H, rows: T, inverse: false)
        rotate(k.pointer, heads: KV, rows: T, inverse: false)
        let scale = 1 / Float(Dh).squareRoot()
        for head in 0..<H {
            let kvHead = head / group
            let ph = p.pointer + head * T * T
            BLAS.gemm(m: T, n: T, k: Dh, alpha: scale, a: q.pointer + head * Dh, lda: qW,
                      b: k.pointer + kvHead * Dh, ldb: kvW, transposeB: true, c: ph, ldc: T)
            for t in 0..<T {
                let row = ph + t * T
                Ops.softmax(row, count: t + 1)
                for j in (t + 1)..<T { row[j] = 0 }
            }
            BLAS.gemm(m: T, n: Dh, k: T, a: ph, lda: T, b: v.pointer + kvHead * Dh, ldb: kvW, transposeB: false,
                      c: att.pointer + head * Dh, ldc: qW)
        }
        linears[3].forward(att.pointer, rows: T, into: h.pointer)
        for i in 0..<(T * D) { h.pointer[i] += x.pointer[i] }
        Self.rmsNorm(h.pointer, weight: mlpNorm, rows: T, width: D, epsilon: eps, into: n2.pointer, rstd: r2.pointer)
        linears[4].forward(n2.pointer, rows: T, into: g.pointer)
        linears[5].forward(n2.pointer, rows: T, into: u.pointer)
        for i in 0..<(T * F) {
            let gi = g.pointer[i]
            m.pointer[i] = gi / (1 + expf(-gi)) * u.pointer[i]   // as Ops.siluMultiply
        }
        linears[6].forward(m.pointer, rows: T, into: y)
        for i in 0..<(T * D) { y[i] += h.pointer[i] }
    }

    /// Backward of the last `forward`: accumulates every linear's parameter gradient from
    /// `dy = dL/dy` `(T, D)` and writes `dL/dx` into `inputGradient` when given (block-wise scale
    /// optimisation does not need it and saves three matmuls).
    public func backward(outputGradient dy: UnsafePointer<Float>, inputGradient dx: UnsafeMutablePointer<Float>?) {
        let T = tokens
        precondition(T > 0, "backward needs a forward first")
        let c = config, D = c.hiddenSize, F = c.intermediateSize, Dh = c.headDim
        let H = c.headCount, KV = c.kvHeadCount, qW = H * Dh, kvW = KV * Dh, group = H / KV

        // --- MLP: y = h + down(m), m = silu(g) ∘ u ---
        linears[6].backward(input: m.pointer, outputGradient: dy, rows: T, inputGradient: dm.pointer, accumulate: false)
        for i in 0..<(T * F) {
            let gi = g.pointer[i], s = 1 / (1 + expf(-gi))
            du.pointer[i] = dm.pointer[i] * gi * s
            dg.pointer[i] = dm.pointer[i] * u.pointer[i] * s * (1 + gi * (1 - s))
        }
        linears[4].backward(input: n2.pointer, outputGradient: dg.pointer, rows: T, inputGradient: dn.pointer, accumulate: false)
        linears[5].backward(input: n2.pointer, outputGradient: du.pointer, rows: T, inputGradient: dn.pointer, accumulate: true)
        dh.pointer.update(from: dy, count: T * D)
        Self.rmsNormBackward(h.pointer, weight: mlpNorm, rstd: r2.pointer, outputGradient: dn.pointer, rows: T, width: D,
                             into: dh.pointer)

        // --- attention: h = x + o(att) ---
        linears[3].backward(input: att.pointer, outputGradient: dh.pointer, rows: T, inputGradient: datt.pointer,
                            accumulate: false)
        dk.zero(); dv.zero()
        let scale = 1 / Float(Dh).squareRoot()
        for head in 0..<H {
            let kvHead = head / group
            let ph = p.pointer + head * T * T
            let dO = datt.pointer + head * Dh
            // dP = dO · Vᵀ ; dV += Pᵀ · dO
            BLAS.gemm(m: T, n: T, k: Dh, a: dO, lda: qW, b: v.pointer + kvHead * Dh, ldb: kvW, transposeB: true,
                      c: dp.pointer, ldc: T)
            BLAS.gemm(m: T, n: Dh, k: T, a: ph, lda: T, transposeA: true, b: dO, ldb: qW, transposeB: false,
                      beta: 1, c: dv.pointer + kvHead * Dh, ldc: kvW)
            // Softmax backward: dS = P ∘ (dP − Σ_j P·dP), only over visible keys (P is 0 beyond).
            for t in 0..<T {
                let pr = ph + t * T, dr = dp.pointer + t * T
                var dot: Double = 0
                for j in 0...t { dot += Double(pr[j]) * Double(dr[j]) }
                let d = Float(dot)
                for j in 0...t { dr[j] = pr[j] * (dr[j] - d) }
                for j in (t + 1)..<T { dr[j] = 0 }
            }
            // S = scale · Q·Kᵀ: dQ = scale · dS·K ; dK += scale · dSᵀ·Q
            BLAS.gemm(m: T, n: Dh, k: T, alpha: scale, a: dp.pointer, lda: T, b: k.pointer + kvHead * Dh, ldb: kvW,
                      transposeB: false, c: dq.pointer + head * Dh, ldc: qW)
            BLAS.gemm(m: T, n: Dh, k: T, alpha: scale, a: dp.pointer, lda: T, transposeA: true,
                      b: q.pointer + head * Dh, ldb: qW, transposeB: false, beta: 1, c: dk.pointer + kvHead * Dh, ldc: kvW)
        }
        rotate(dq.pointer, heads: H, rows: T, inverse: true)
        rotate(dk.pointer, heads: KV, rows: T, inverse: true)
        let needInput = dx != nil
        linears[0].backward(input: n1.pointer, outputGradient: dq.pointer, rows: T,
                            inputGradient: needInput ? dn.pointer : nil, accumulate: false)
        linears[1].backward(input: n1.pointer, outputGradient: dk.pointer, rows: T,
                            inputGradient: needInput ? dn.pointer : nil, accumulate: true)
        linears[2].backward(input: n1.pointer, outputGradient: dv.pointer, rows: T,
                            inputGradient: needInput ? dn.pointer : nil, accumulate: true)
        guard let dx else { return }
        dx.update(from: dh.pointer, count: T * D)
        Self.rmsNormBackward(x.pointer, weight: attentionNorm, rstd: r1.pointer, outputGradient: dn.pointer, rows: T,
                             width: D, into: dx)
    }

    /// RoPE (Hugging Face rotate_half layout) on `rows` tokens of `heads` heads at positions
    /// 0..<rows; `inverse` rotates back (the transpose, for gradients).
    private func rotate(_ data: UnsafeMutablePointer<Float>, heads: Int, rows: Int, inverse: Bool) {
        let Dh = config.headDim, half = Dh / 2, width = heads * Dh
        for t in 0..<rows {
            let cs = ropeCos.pointer + t * half, sn = ropeSin.pointer + t * half
            for head in 0..<heads {
                let base = data + t * width + head * Dh
                for i in 0..<half {
                    let a = base[i], b = base[i + half], c = cs[i], s = inverse ? -sn[i] : sn[i]
                    base[i] = a * c - b * s
                    base[i + half] = b * c + a * s
                }
            }
        }
    }

    /// RMSNorm as `Ops.rmsNorm` computes it (same float operations), also returning 1/rms per row.
    static func rmsNorm(_ x: UnsafePointer<Float>, weight: [Float], rows: Int, width: Int, epsilon: Float,
                        into y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { w in
            for r in 0..<rows {
                let xr = x + r * width, yr = y + r * width
                var sum: Float = 0
                for i in 0..<width { sum += xr[i] * xr[i] }
                let scale = 1 / (sum / Float(width) + epsilon).squareRoot()
                rstd[r] = scale
                for i in 0..<width { yr[i] = xr[i] * scale * w[i] }
            }
        }
    }

    /// Adds the input gradient of `y = x·r·w` (r = 1/rms(x)) to `dx`:
    /// `dx += r·(w∘dy) − x·r³/n · Σ(w∘dy∘x)`.
    static func rmsNormBackward(_ x: UnsafePointer<Float>, weight: [Float], rstd: UnsafePointer<Float>,
                                outputGradient dy: UnsafePointer<Float>, rows: Int, width: Int,
                                into dx: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer { w in
            for r in 0..<rows {
                let xr = x + r * width, dyr = dy + r * width, dxr = dx + r * width
                var dot: Double = 0
                for i in 0..<width { dot += Double(w[i] * dyr[i]) * Double(xr[i]) }
                let s = rstd[r]
                let coefficient = Float(dot * Double(s) * Double(s) * Double(s) / Double(width))
                for i in 0..<width { dxr[i] += s * w[i] * dyr[i] - xr[i] * coefficient }
            }
        }
    }
}
