import Calibration
import Foundation
import Kernels
import PTQCore
import Recipes

/// PTQ1.61 (Zhao et al., ACL 2025; reference zjq0455/PTQ1.61): per linear layer, the input
/// channels with the largest calibration max |x| (`salient_ratio`, 0.2) keep `salient_bits`-bit
/// (4) asymmetric round-to-nearest codes per row; every other column is binarized per row around
/// the fixed row mean μ, `Ŵ = r1ᵢ·r2ⱼ·(αᵢ·sign(W − μᵢ) + μᵢ)` (`BinarizationParameters`), and
/// packed at its true size (`BinaryWeight`).
///
/// `optimization` chooses how α, r1 and r2 are set after the reference's initialisation:
/// - `none`: as initialised (α = mean |W|, r1 = r2 = 1); the paper's ablation shows this is
///   far worse than learned scales (LLaMA-13B WikiText-2 1370 vs 14).
/// - `layerwise` (**not in the paper**; this project's fast substitute): minimise the layer's
///   output error `Σᵢ (wᵢ − ŵᵢ)ᵀ H (wᵢ − ŵᵢ)` with `H = XᵀX` from calibration, alternating the
///   closed-form 2×2 least squares per row for (a, b) = (α·r1, μ·r1) with r2 fixed and the
///   linear system for r2 with (a, b) fixed (`LayerwiseBinarization`).
/// - `blockwise` (the paper's): per decoder block, α, r1 and r2 of its seven linears are learned
///   with AdamW against the float block (`BinarizedBlockReconstruction`; the pipeline runs the
///   Training module's `BlockwiseScaleOptimizer`). Budget: `train_samples` windows of
///   `train_seq_len` tokens from the calibration text × `epochs` (2-core default 32 × 512 × 2; the
///   paper 128 × 2048 × 20), learning rates `lr_alpha` (5e-4) and `lr_scales` (1e-3) as the
///   reference. `preprocessing_steps` > 0 adds the paper's quantization preprocessing: LoRA
///   (rank 64, alpha 16, q/k/v/gate/up/down) trained on the pass-1 model with the causal-LM loss,
///   merged, and a second block-wise pass on the merged weights reusing the pass-1 masks (the
///   reference's remain.py path).
///
/// `outlier_threshold` (**not in the paper**; 0 = off, the paper's method): salient input columns
/// whose calibration max |x| exceeds this multiple of the layer's median keep their weights as
/// float16 (`BinarizationParameters.outlierColumns`). SmolLM2 has three such channels (massive
/// activations into `down_proj` of layers 11 and 28, 218–1,335× the median) and any 4-bit error
/// on their weights is multiplied by thousands; they cost 16 bits × rows per column.
public struct PTQ161Quantizer: BinarizedBlockReconstruction {
    public enum Optimization: String, Sendable, CaseIterable {
        case none, layerwise, blockwise
    }

    public let salientRatio: Double
    public let salientBits: Int
    public let optimization: Optimization
    /// Layer-wise alternations ((a, b) step + r2 step).
    public let iterations: Int
    /// Layer-wise relative damping of H (fraction of its mean diagonal).
    public let damping: Double
    /// Multiple of the layer's median max |x| above which a salient column stays float16 (0 = off).
    public let outlierThreshold: Double

    /// Budget of `blockwise`; nil for the per-layer modes.
    public let blockReconstruction: BlockReconstructionBudget?

    public static let parameterKeys: Set<String> = ["salient_ratio", "salient_bits", "optimization", "iterations", "damping",
                                                     "train_samples", "train_seq_len", "epochs", "lr_alpha", "lr_scales",
                                                     "preprocessing_steps", "outlier_threshold"]

    public init(plan: LayerPlan) throws(PTQError) {
        let p = plan.parameters
        try p.rejectUnknown(allowed: Self.parameterKeys)
        salientRatio = try p.double("salient_ratio", default: 0.2, range: 0...1)
        salientBits = try p.int("salient_bits", default: 4, range: 2...8)
        let mode = try p.string("optimization", default: "layerwise", oneOf: Optimization.allCases.map(\.rawValue))
        optimization = Optimization(rawValue: mode)!
        iterations = try p.int("iterations", default: 4, range: 1...100)
        damping = try p.double("damping", default: 0.01, range: 0...1)
        outlierThreshold = try p.double("outlier_threshold", default: 0, range: 0...1e9)
        if optimization == .blockwise {
            blockReconstruction = BlockReconstructionBudget(
                samples: try p.int("train_samples", default: 32, range: 1...4096),
                sequenceLength: try p.int("train_seq_len", default: 512, range: 2...8192),
                epochs: try p.int("epochs", default: 2, range: 1...100),
                learningRateAlpha: try p.double("lr_alpha", default: 5e-4, range: 0...1),
                learningRateScales: try p.double("lr_scales", default: 1e-3, range: 0...1),
                preprocessingSteps: try p.int("preprocessing_steps", default: 0, range: 0...100_000))
        } else {
            for key in ["train_samples", "train_seq_len", "epochs", "lr_alpha", "lr_scales", "preprocessing_steps"]
            where p.has(key) {
                throw p.error(key, "only used with optimization: blockwise")
            }
            blockReconstruction = nil
        }
        guard plan.activation == nil else {
            throw PTQError("\(plan.parameters.source): ptq161 is weight-only: \(plan.name) asks for quantized activations")
        }
    }

    public var requiredStatistics: Set<StatisticKind> {
        optimization == .layerwise ? [.channelRange, .gram] : [.channelRange]
    }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        var p = try Self.initialParameters(for: layer, statistics: statistics, salientRatio: salientRatio,
                                           salientBits: salientBits, outlierThreshold: outlierThreshold)
        var details = ["optimization": optimization.rawValue,
                       "salient_columns": "\(p.salientMask.filter { $0 }.count)/\(p.columns)"]
        if !p.outlierColumns.isEmpty { details["float16_columns"] = p.outlierColumns.map(String.init).joined(separator: ",") }
        if optimization == .layerwise {
            guard let hessian = statistics?.gram else {
                throw PTQError("\(layer.name): ptq161 layerwise needs the X·Xᵀ ('gram') statistic at \(layer.inputPoint); "
                               + "re-run `ptq calibrate` with this recipe")
            }
            let result = LayerwiseBinarization(iterations: iterations, damping: damping)
                .optimize(p, weight: layer.weight.data, hessian: hessian)
            p = result.parameters
            details["layerwise_error"] = String(format: "%.4g -> %.4g (relative to wᵀHw)", result.before, result.after)
        }
        return Self.quantizedLinear(layer, parameters: p, details: details)
    }

    /// The reference's initial parameters for one layer: the salient mask from the channel max
    /// |x| at the layer's input (`absMaximum`; q/k/v and gate/up share their input point, hence
    /// their mask, as in the reference), then `BinarizationParameters.initial`.
    public static func initialParameters(for layer: LinearLayer, statistics: PointStatistics?, salientRatio: Double,
                                         salientBits: Int, outlierThreshold: Double = 0) throws(PTQError) -> BinarizationParameters {
        let rows = layer.weight.shape[0], columns = layer.weight.shape[1]
        guard let statistics else {
            throw PTQError("\(layer.name): ptq161 needs the channel range statistic at \(layer.inputPoint); "
                           + "re-run `ptq calibrate` with this recipe")
        }
        let statistic = statistics.absMaximum
        guard statistic.count == columns else {
            throw PTQError("\(layer.name): the statistics at \(layer.inputPoint) have \(statistic.count) channels, "
                           + "the weight has \(columns) input columns")
        }
        let mask = BinarizationParameters.salientMask(channelStatistic: statistic, ratio: salientRatio)
        let outliers = BinarizationParameters.outlierColumns(channelStatistic: statistic, threshold: outlierThreshold,
                                                             salientMask: mask)
        return BinarizationParameters.initial(weight: layer.weight.data, rows: rows, columns: columns,
                                              salientMask: mask, salientBits: salientBits, outlierColumns: outliers)
    }

    public func initialParameters(for layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> BinarizationParameters {
        try Self.initialParameters(for: layer, statistics: statistics, salientRatio: salientRatio, salientBits: salientBits,
                                   outlierThreshold: outlierThreshold)
    }

    public func quantizedLinear(_ layer: LinearLayer, parameters: BinarizationParameters,
                                details: [String: String]) -> QuantizedLinear {
        var details = details
        details["optimization"] = optimization.rawValue
        details["salient_columns"] = "\(parameters.salientMask.filter { $0 }.count)/\(parameters.columns)"
        if !parameters.outlierColumns.isEmpty {
            details["float16_columns"] = parameters.outlierColumns.map(String.init).joined(separator: ",")
        }
        return Self.quantizedLinear(layer, parameters: parameters, details: details)
    }

    /// The packed layer for final parameters (r1 folded, float16 scales: `BinaryWeight.init`).
    public static func quantizedLinear(_ layer: LinearLayer, parameters: BinarizationParameters,
                                       method: String = "ptq161", details: [String: String] = [:]) -> QuantizedLinear {
        QuantizedLinear(name: layer.name, method: method, weight: .binary(BinaryWeight(parameters)), bias: layer.bias,
                        details: details)
    }
}

/// PTQ1.61's scales fitted layer by layer (this project's addition, not in the paper): with
/// `H = XᵀX + λ·mean(diag)·I`, minimise `E = Σᵢ (wᵢ − ŵᵢ)ᵀ H (wᵢ − ŵᵢ)` over
/// - per row (a, b) = (α·r1, μ·r1) with r2 fixed: ŵᵢ = a·uᵢ + b·v + cᵢ with uⱼ = r2ⱼ·sᵢⱼ,
///   vⱼ = r2ⱼ on binarized columns and cᵢ the fixed salient values, a 2×2 normal system;
/// - r2 with (a, b) fixed: ŵᵢⱼ = r2ⱼ·dᵢⱼ, dᵢⱼ = a·sᵢⱼ + b, giving
///   `(H_bb ∘ DᵀD) r2 = Σᵢ dᵢ ∘ (H eᵢ)_b` (eᵢ = wᵢ − cᵢ), ridge-damped towards r2 = 1.
/// The salient residual enters eᵢ, so the binarized columns absorb what H says they can of it.
/// An alternation that does not lower E is undone, so E never rises. Back in the seam's terms:
/// r1 = b/μ and α = a/r1 (μ stays fixed); rows with μ = 0 fit a alone.
public struct LayerwiseBinarization: Sendable {
    public var iterations: Int
    public var damping: Double

    public init(iterations: Int = 4, damping: Double = 0.01) {
        self.iterations = iterations
        self.damping = damping
    }

    public struct Result: Sendable {
        public var parameters: BinarizationParameters
        /// E / Σᵢ wᵢᵀHwᵢ before and after.
        public var before: Double
        public var after: Double
    }

    public func optimize(_ initial: BinarizationParameters, weight: [Float], hessian: [Double]) -> Result {
        let rows = initial.rows, m = initial.columns
        precondition(weight.count == rows * m && hessian.count == m * m)
        var meanDiagonal = 0.0
        for j in 0..<m { meanDiagonal += hessian[j * m + j] }
        meanDiagonal = max(meanDiagonal / Double(max(m, 1)), 1e-12)
        var h = hessian.map { Float($0) }
        for j in 0..<m { h[j * m + j] += Float(damping * meanDiagonal) }
        let binary = (0..<m).filter { !initial.salientMask[$0] }
        let mb = binary.count
        // Fixed salient values and the residual target e = w − c.
        let salient = initial.dequantized()
        var e = weight
        for i in 0..<rows { for j in 0..<m where initial.salientMask[j] { e[i * m + j] -= salient[i * m + j] } }
        let he = multiply(e, rows: rows, h, m)  // E·H, constant
        let norm = max(quadratic(weight, rows: rows, h, m), 1e-30)

        var p = initial
        var a = (0..<rows).map { p.alpha[$0] * p.rowScale[$0] }, b = (0..<rows).map { p.mean[$0] * p.rowScale[$0] }
        var r2 = binary.map { p.columnScale[$0] }
        func error() -> Double {
            var residual = e
            for i in 0..<rows {
                for (k, j) in binary.enumerated() { residual[i * m + j] -= r2[k] * (a[i] * p.signs[i * m + j] + b[i]) }
            }
            return quadratic(residual, rows: rows, h, m)
        }
        let before = error()
        var best = before
        guard mb > 0 else { return Result(parameters: p, before: before / norm, after: before / norm) }
        for _ in 0..<iterations {
            let saved = (a, b, r2)
            // (a, b) per row.
            var u = [Float](repeating: 0, count: rows * m)
            var v = [Float](repeating: 0, count: m)
            for (k, j) in binary.enumerated() {
                v[j] = r2[k]
                for i in 0..<rows { u[i * m + j] = r2[k] * p.signs[i * m + j] }
            }
            let hu = multiply(u, rows: rows, h, m)
            let hv = multiply(v, rows: 1, h, m)
            var vhv = 0.0
            for j in 0..<m { vhv += Double(v[j]) * Double(hv[j]) }
            for i in 0..<rows {
                var uhu = 0.0, uhv = 0.0, uhe = 0.0, vhe = 0.0
                for j in binary {
                    let uij = Double(u[i * m + j])
                    uhu += uij * Double(hu[i * m + j])
                    uhv += uij * Double(hv[j])
                    uhe += uij * Double(he[i * m + j])
                    vhe += Double(v[j]) * Double(he[i * m + j])
                }
                let det = uhu * vhv - uhv * uhv
                if p.mean[i] != 0, det > 1e-9 * uhu * vhv {
                    a[i] = Float((uhe * vhv - vhe * uhv) / det)
                    b[i] = Float((uhu * vhe - uhv * uhe) / det)
                } else if uhu > 0 {
                    a[i] = Float((uhe - Double(b[i]) * uhv) / uhu)  // b fixed
                }
            }
            // r2 with (a, b) fixed.
            var d = [Float](repeating: 0, count: rows * mb)
            for i in 0..<rows { for (k, j) in binary.enumerated() { d[i * mb + k] = a[i] * p.signs[i * m + j] + b[i] } }
            var dtd = [Float](repeating: 0, count: mb * mb)
            d.withUnsafeBufferPointer { dp in
                dtd.withUnsafeMutableBufferPointer { g in
                    BLAS.gemm(m: mb, n: mb, k: rows, a: dp.baseAddress!, lda: mb, transposeA: true,
                              b: dp.baseAddress!, ldb: mb, transposeB: false, c: g.baseAddress!, ldc: mb)
                }
            }
            var system = [Double](repeating: 0, count: mb * mb), rhs = [Double](repeating: 0, count: mb)
            var trace = 0.0
            for (k, j) in binary.enumerated() {
                for (l, jl) in binary.enumerated() { system[k * mb + l] = Double(h[j * m + jl]) * Double(dtd[k * mb + l]) }
                trace += system[k * mb + k]
                var s = 0.0
                for i in 0..<rows { s += Double(d[i * mb + k]) * Double(he[i * m + j]) }
                rhs[k] = s
            }
            let ridge = damping * max(trace / Double(mb), 1e-30)
            for k in 0..<mb {
                system[k * mb + k] += ridge
                rhs[k] += ridge  // towards r2 = 1
            }
            if let solved = BLAS.solvePositiveDefinite(system, n: mb, b: rhs), solved.allSatisfy(\.isFinite) {
                r2 = solved.map { Float($0) }
            }
            let now = error()
            if !(now < best) {
                (a, b, r2) = saved
                break
            }
            best = now
        }
        // Back to the seam's parameters: a = α·r1, b = μ·r1 with μ fixed.
        for i in 0..<rows {
            if p.mean[i] != 0, b[i] / p.mean[i] != 0, (b[i] / p.mean[i]).isFinite {
                p.rowScale[i] = b[i] / p.mean[i]
                p.alpha[i] = a[i] / p.rowScale[i]
            } else {
                p.rowScale[i] = 1
                p.alpha[i] = a[i]
            }
        }
        for (k, j) in binary.enumerated() { p.columnScale[j] = r2[k] }
        return Result(parameters: p, before: before / norm, after: best / norm)
    }

    /// `X·H` for `X` `[rows, m]` and symmetric `H` `[m, m]` (float sgemm).
    private func multiply(_ x: [Float], rows: Int, _ h: [Float], _ m: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * m)
        x.withUnsafeBufferPointer { xp in
            h.withUnsafeBufferPointer { hp in
                out.withUnsafeMutableBufferPointer { o in
                    BLAS.gemm(m: rows, n: m, k: m, a: xp.baseAddress!, lda: m, b: hp.baseAddress!, ldb: m,
                              transposeB: false, c: o.baseAddress!, ldc: m)
                }
            }
        }
        return out
    }

    /// `Σᵢ xᵢᵀ H xᵢ`.
    private func quadratic(_ x: [Float], rows: Int, _ h: [Float], _ m: Int) -> Double {
        let xh = multiply(x, rows: rows, h, m)
        var s = 0.0
        for k in x.indices { s += Double(x[k]) * Double(xh[k]) }
        return s
    }
}
