import Foundation
import Kernels
import Models
import PTQCore
import Tokenizers

/// Searches the quantizer of the post-softmax attention probabilities per layer, as AdaLog's
/// reference does for its softmax sites: scale fixed at 1 and a full scan of the base exponent
/// q ∈ 10…137 (r = 37), scored by the error of the attention output `P·V` on calibration data
/// (GoatWu/AdaLog `quant_layers/matmul.py`, `PostSoftmaxAsymmetricallyBatchingQuantMatMul`).
/// The reference alternates the q scan with the search of V's quantizer; our V stays float
/// here, so one scan suffices.
///
/// The model runs in float while a `Scorer` stands in for each layer's `P·V`: it computes the
/// float product (so later layers see float inputs, as in the reference, which calibrates every
/// layer on full-precision inputs) and, on a few query rows per head, the error of every
/// candidate at once: `E = (P̂_c − P)·V` for all candidates c as one sgemm.
public enum AttentionProbabilitySearch {
    /// Candidate quantizers of `method` at `bits`:
    /// - `adalog`: q = 10…137, r = 37, s = 1 (128 candidates, the reference's eq_n);
    /// - `log2` / `log_sqrt2`: the fixed bases 2 and √2 (q = 1, r = 1 / 2), s = 1: no search;
    /// - `uniform`: scale `2^(−i/8)/(2^n − 1)`, i = 0…63 (clipping the top from 1 down to 2^−7.9).
    public static func candidates(method: String, bits: Int) throws(PTQError) -> [PositiveActivationQuantizer] {
        switch method {
        case "adalog":
            return try AdaLogQuantizer.referenceSearchRange.map { (q) throws(PTQError) in
                .adalog(try AdaLogQuantizer(bits: bits, q: q))
            }
        case "log2": return [.adalog(try AdaLogQuantizer(bits: bits, q: 1, r: 1))]
        case "log_sqrt2": return [.adalog(try AdaLogQuantizer(bits: bits, q: 1, r: 2))]
        case "uniform":
            let top = Float((1 << bits) - 1)
            return try (0..<64).map { (i) throws(PTQError) in
                .uniform(try UniformPositiveQuantizer(bits: bits, scale: Float(pow(2, -Double(i) / 8)) / top))
            }
        default:
            throw PTQError("attention_probs.quantizer: unknown quantizer '\(method)' (adalog, log2, log_sqrt2, uniform)")
        }
    }

    /// Stands in for one layer's `P·V` during the search: float output, candidate errors on the side.
    public final class Scorer: AttentionProbabilityOp, @unchecked Sendable {
        public let candidates: [PositiveActivationQuantizer]
        let levels: [[Float]]
        let rowsPerHead: Int
        /// Σ over scored rows of ‖(P̂_c − P)·V‖² per candidate.
        public private(set) var errors: [Double]
        /// Σ over scored rows of ‖P·V‖² (for a relative error).
        public private(set) var reference: Double = 0
        public private(set) var scoredRows = 0
        private let lock = NSLock()

        public init(candidates: [PositiveActivationQuantizer], rowsPerHead: Int) {
            self.candidates = candidates
            levels = candidates.map(\.levels)
            self.rowsPerHead = rowsPerHead
            errors = [Double](repeating: 0, count: candidates.count)
        }

        /// The candidate with the smallest error and its error relative to ‖P·V‖².
        public var best: (index: Int, relativeError: Double) {
            let i = errors.indices.min { errors[$0] < errors[$1] } ?? 0
            return (i, reference > 0 ? errors[i] / reference : 0)
        }

        public func multiply(probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                             valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
            BLAS.gemm(m: rows, n: width, k: columns, a: probabilities, lda: columns, b: values, ldb: valueStride,
                      transposeB: false, c: out, ldc: outStride)
            let R = min(rowsPerHead, rows), C = candidates.count
            guard R > 0, columns > 0 else { return }
            // Evenly spaced query rows ending at the last (for causal attention: the longest rows).
            let picked = (0..<R).map { rows - 1 - $0 * rows / R }
            var delta = [Float](repeating: 0, count: C * R * columns)
            var errorRows = [Float](repeating: 0, count: C * R * width)
            var logs = [Float](repeating: 0, count: columns)
            for (i, t) in picked.enumerated() {
                let p = probabilities + t * columns
                for j in 0..<columns { logs[j] = p[j] > 0 ? -log2(p[j]) : .infinity }
                for c in 0..<C {
                    let row = (c * R + i) * columns
                    let level = levels[c]
                    switch candidates[c] {
                    case .adalog(let a):
                        // k = round(−log2(p/s)·r/q) with s = 1; codes ≥ 2^n − 1 are the zero code.
                        let factor = Float(a.r) / Float(a.q), zero = Float(a.zeroCode)
                        for j in 0..<columns {
                            let k = min((logs[j] * factor).rounded(), zero)
                            delta[row + j] = level[Int(max(k, 0))] - p[j]
                        }
                    case .uniform(let u):
                        let inverse = 1 / u.scale, top = Float(u.maxCode)
                        for j in 0..<columns {
                            delta[row + j] = level[Int(min((p[j] * inverse).rounded(), top))] - p[j]
                        }
                    }
                }
            }
            delta.withUnsafeBufferPointer { d in
                errorRows.withUnsafeMutableBufferPointer { e in
                    BLAS.gemm(m: C * R, n: width, k: columns, a: d.baseAddress!, lda: columns, b: values,
                              ldb: valueStride, transposeB: false, c: e.baseAddress!, ldc: width)
                }
            }
            var sums = [Double](repeating: 0, count: C)
            for c in 0..<C {
                var s: Double = 0
                for v in errorRows[(c * R * width)..<((c + 1) * R * width)] { s += Double(v * v) }
                sums[c] = s
            }
            var referenceSum: Double = 0
            for t in picked { for d in 0..<width { let v = out[t * outStride + d]; referenceSum += Double(v * v) } }
            lock.lock()
            for c in 0..<C { errors[c] += sums[c] }
            reference += referenceSum
            scoredRows += R
            lock.unlock()
        }
    }

    /// The chosen quantizer of every site, from the scorers after the calibration run.
    static func sites(_ scorers: [Scorer], at points: [String], method: String) -> [QuantizedActivationSite] {
        zip(points, scorers).map { point, scorer in
            let best = scorer.best
            var details = ["pv_relative_mse": String(format: "%.3e", best.relativeError),
                           "candidates": "\(scorer.candidates.count)", "scored_rows": "\(scorer.scoredRows)"]
            if case .adalog(let a) = scorer.candidates[best.index] {
                details["base"] = String(format: "%.4f", a.base)
            }
            return QuantizedActivationSite(point: point, method: method,
                                           quantizer: scorer.candidates[best.index], details: details)
        }
    }

    /// Searches the probability quantizer of every attention-probability site the model's
    /// structure lists, on the first `samples` of its calibration sequences (windows of the
    /// calibration text, or both sentences of STS-B rows for an encoder).
    public static func run(model: some QuantizableModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                           method: String, bits: Int, samples: Int, rowsPerHead: Int,
                           quiet: Bool = false) throws(PTQError) -> [QuantizedActivationSite] {
        let candidates = try candidates(method: method, bits: bits)
        let sequences = try CalibrationSamples.calibrationSequences(for: model, tokenizer: tokenizer, settings: settings,
                                                                    count: samples)
        let probabilitySites = model.structure.activationSites(.attentionProbabilities)
        // The hooks replace `P·V` per block; blocks without a site keep the model's own op.
        var ops = [(any AttentionProbabilityOp)?](repeating: nil, count: model.config.layerCount)
        let scorers = probabilitySites.map { site in
            let scorer = Scorer(candidates: candidates, rowsPerHead: rowsPerHead)
            ops[site.block] = scorer
            return scorer
        }
        let hooks = ForwardHooks(attentionProbabilityOps: ops)
        let progress = ProgressReporter("attention_probs \(method)", total: sequences.count, quiet: quiet)
        for ids in sequences {
            model.observe(ids, hooks: hooks)
            progress.advance()
        }
        return sites(scorers, at: probabilitySites.map(\.point), method: method)
    }
}
