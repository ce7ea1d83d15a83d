import Foundation
import Kernels
import Models
import PTQCore
import Tokenizers

/// Searches the per-head uniform asymmetric quantizers of Q, K and V (fully quantized
/// attention, encoders) on the float model, in the spirit of AdaLog's FPCS
/// (GoatWu/AdaLog `quant_layers/matmul.py`): a grid of percentile-based clipping ranges
/// (lower × upper quantile of the head's values), the best kept and refined on a finer grid
/// between its neighbours, Q and K searched alternately (Q with K fixed, then K with Q fixed,
/// then Q again). Q and K are scored by the error of the head's scores `Q̂·K̂ᵀ` against `Q·Kᵀ`
/// within each calibration sequence; V by its own squared error (P·V is linear in V, and the
/// probability quantizer is searched against float V, as the reference calibrates every layer
/// on full-precision inputs). Ours keeps the single best candidate (top-1) per step; the
/// reference keeps several and scores on the layer output.
public enum AttentionOperandSearch {
    /// The chosen quantizers of one layer and their relative errors.
    public struct LayerResult: Sendable {
        public var query: PerHeadUniformQuantizer?
        public var key: PerHeadUniformQuantizer?
        public var value: PerHeadUniformQuantizer?
        /// Σ‖Q̂K̂ᵀ − QKᵀ‖² / Σ‖QKᵀ‖² over heads (nil without Q/K quantizers).
        public var scoresRelativeError: Double?
        /// Σ‖V̂ − V‖² / Σ‖V‖² over heads (nil without a V quantizer).
        public var valueRelativeError: Double?
    }

    /// Stands in for one layer's attention during the collection run: float products, with the
    /// head slices of Q, K and V of the first `tokenLimit` tokens recorded.
    final class Collector: HeadAwareAttentionOp, @unchecked Sendable {
        let heads: Int, headDim: Int, tokenLimit: Int
        /// Per head: rows of Q, K, V (`tokens × headDim`).
        var queries: [[Float]], keys: [[Float]], values: [[Float]]
        /// Per head: lengths of the recorded sequences (the same for every head).
        var lengths: [[Int]]

        init(heads: Int, headDim: Int, tokenLimit: Int) {
            self.heads = heads
            self.headDim = headDim
            self.tokenLimit = tokenLimit
            queries = Array(repeating: [], count: heads)
            keys = queries
            values = queries
            lengths = Array(repeating: [], count: heads)
        }

        private func append(_ x: UnsafePointer<Float>, rows: Int, stride: Int, to array: inout [Float]) {
            for t in 0..<rows { array.append(contentsOf: UnsafeBufferPointer(start: x + t * stride, count: headDim)) }
        }

        func scores(head: Int, queries q: UnsafePointer<Float>, rows: Int, keys k: UnsafePointer<Float>, columns: Int,
                    width: Int, stride: Int, alpha: Float, into scores: UnsafeMutablePointer<Float>) -> Bool {
            BLAS.gemm(m: rows, n: columns, k: width, alpha: alpha, a: q, lda: stride, b: k, ldb: stride, transposeB: true,
                      c: scores, ldc: columns)
            // Whole sequences only, so that the score error is measured within sequences.
            let recorded = queries[head].count / headDim
            if recorded < tokenLimit, rows == columns {
                append(q, rows: rows, stride: stride, to: &queries[head])
                append(k, rows: columns, stride: stride, to: &keys[head])
                lengths[head].append(rows)
            }
            return true
        }

        func multiply(head: Int, probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values v: UnsafePointer<Float>,
                      valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
            if values[head].count < keys[head].count {
                append(v, rows: columns, stride: valueStride, to: &values[head])
            }
            multiply(probabilities: probabilities, rows: rows, columns: columns, values: v, valueStride: valueStride,
                     width: width, into: out, outStride: outStride)
        }

        func multiply(probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values: UnsafePointer<Float>,
                      valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
            BLAS.gemm(m: rows, n: width, k: columns, a: probabilities, lda: columns, b: values, ldb: valueStride,
                      transposeB: false, c: out, ldc: outStride)
        }
    }

    /// Quantile fractions of the first grid (upper end; the lower end mirrors them).
    public static let upperFractions: [Double] = [1.0, 0.9999, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9]
    /// Refinement steps and points per side of each step.
    static let refineSteps = 2, refinePoints = 5

    /// The value at quantile `f` of sorted values (linear interpolation).
    public static func quantile(_ sorted: [Float], _ f: Double) -> Float {
        guard sorted.count > 1 else { return sorted.first ?? 0 }
        let x = f * Double(sorted.count - 1), i = Int(x.rounded(.down)), j = min(i + 1, sorted.count - 1)
        return sorted[i] + Float(x - Double(i)) * (sorted[j] - sorted[i])
    }

    /// `values` fake-quantized (quantize, then the reference dequantizer) with the grid fitting `range`.
    public static func simulate(_ values: [Float], bits: Int, range: (low: Float, high: Float)) -> [Float] {
        // `fitting` cannot fail for bits in 2…8 and a finite range; the search only builds those.
        guard let q = try? PerHeadUniformQuantizer.fitting(bits: bits, ranges: [range]) else { return values }
        return values.map { q.value(code: q.code($0, head: 0), head: 0) }
    }

    /// Searches a clipping range of `values` (sorted copy `sorted`) minimising `error` of the
    /// simulated tensor: the 8 × 8 percentile grid, then `refineSteps` finer grids between the
    /// best point's neighbours.
    public static func searchRange(sorted: [Float], bits: Int, error: ((low: Float, high: Float)) -> Double)
        -> (range: (low: Float, high: Float), error: Double) {
        var best = (upper: 1.0, lower: 0.0, error: Double.infinity)
        func consider(_ lower: Double, _ upper: Double) {
            let range = (low: quantile(sorted, lower), high: quantile(sorted, upper))
            let e = error(range)
            // Ties keep the earlier (wider) candidate: the order is fixed, so the choice is deterministic.
            if e < best.error { best = (upper, lower, e) }
        }
        for u in upperFractions { for l in upperFractions.map({ 1 - $0 }) { consider(l, u) } }
        var step = 0.05
        for _ in 0..<refineSteps {
            let (u0, l0) = (best.upper, best.lower)
            for a in 0..<refinePoints {
                for b in 0..<refinePoints {
                    let u = min(1, u0 + step * (Double(a) / Double(refinePoints - 1) - 0.5))
                    let l = max(0, l0 + step * (Double(b) / Double(refinePoints - 1) - 0.5))
                    if u > l { consider(l, u) }
                }
            }
            step /= Double(refinePoints - 1)
        }
        return ((quantile(sorted, best.lower), quantile(sorted, best.upper)), best.error)
    }

    /// Σ over sequences of ‖A_s·B_sᵀ − R_s‖² (`R` the float scores, concatenated per sequence).
    static func scoreError(_ a: [Float], _ b: [Float], reference: [Float], lengths: [Int], width: Int) -> Double {
        var total: Double = 0, offset = 0, scoreOffset = 0
        var product = [Float](repeating: 0, count: (lengths.max() ?? 0) * (lengths.max() ?? 0))
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in product.withUnsafeMutableBufferPointer { pp in
            for n in lengths {
                BLAS.gemm(m: n, n: n, k: width, a: ap.baseAddress! + offset * width, lda: width,
                          b: bp.baseAddress! + offset * width, ldb: width, transposeB: true, c: pp.baseAddress!, ldc: n)
                for i in 0..<(n * n) {
                    let d = Double(pp[i] - reference[scoreOffset + i])
                    total += d * d
                }
                offset += n
                scoreOffset += n * n
            }
        }}}
        return total
    }

    /// The per-head quantizers of one layer from its collector.
    static func searchLayer(_ c: Collector, queryKeyBits: Int?, valueBits: Int?, layer: Int) throws(PTQError) -> LayerResult {
        var result = LayerResult()
        let width = c.headDim
        if let bits = queryKeyBits {
            var queryRanges: [(low: Float, high: Float)] = [], keyRanges: [(low: Float, high: Float)] = []
            var error: Double = 0, norm: Double = 0
            for h in 0..<c.heads {
                let q = c.queries[h], k = c.keys[h], lengths = c.lengths[h]
                guard !lengths.isEmpty else {
                    throw PTQError("attention_probs.query_key_bits: layer \(layer) head \(h) saw no calibration tokens")
                }
                var reference: [Float] = []
                var offset = 0
                for n in lengths {
                    var s = [Float](repeating: 0, count: n * n)
                    q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in
                        BLAS.gemm(m: n, n: n, k: width, a: qp.baseAddress! + offset * width, lda: width,
                                  b: kp.baseAddress! + offset * width, ldb: width, transposeB: true, c: &s, ldc: n)
                    }}
                    reference += s
                    offset += n
                }
                for v in reference { norm += Double(v) * Double(v) }
                let sortedQ = q.sorted(), sortedK = k.sorted()
                // Alternating: Q with float K, K with the chosen Q̂, Q again with the chosen K̂.
                var qHat = q, kHat = k
                var qRange = (low: sortedQ.first ?? 0, high: sortedQ.last ?? 0), kRange = (low: sortedK.first ?? 0, high: sortedK.last ?? 0)
                var e: Double = 0
                for round in 0..<3 {
                    if round % 2 == 0 {
                        let kFixed = kHat
                        let found = searchRange(sorted: sortedQ, bits: bits) { range in
                            scoreError(simulate(q, bits: bits, range: range), kFixed, reference: reference, lengths: lengths, width: width)
                        }
                        qRange = found.range; e = found.error
                        qHat = simulate(q, bits: bits, range: qRange)
                    } else {
                        let qFixed = qHat
                        let found = searchRange(sorted: sortedK, bits: bits) { range in
                            scoreError(qFixed, simulate(k, bits: bits, range: range), reference: reference, lengths: lengths, width: width)
                        }
                        kRange = found.range; e = found.error
                        kHat = simulate(k, bits: bits, range: kRange)
                    }
                }
                error += e
                queryRanges.append(qRange)
                keyRanges.append(kRange)
            }
            result.query = try PerHeadUniformQuantizer.fitting(bits: bits, ranges: queryRanges, what: "layer \(layer) query quantizer")
            result.key = try PerHeadUniformQuantizer.fitting(bits: bits, ranges: keyRanges, what: "layer \(layer) key quantizer")
            result.scoresRelativeError = norm > 0 ? error / norm : 0
        }
        if let bits = valueBits {
            var ranges: [(low: Float, high: Float)] = []
            var error: Double = 0, norm: Double = 0
            for h in 0..<c.heads {
                let v = c.values[h]
                guard !v.isEmpty else {
                    throw PTQError("attention_probs.value_bits: layer \(layer) head \(h) saw no calibration tokens")
                }
                for x in v { norm += Double(x) * Double(x) }
                let found = searchRange(sorted: v.sorted(), bits: bits) { range in
                    var s: Double = 0
                    for (a, b) in zip(simulate(v, bits: bits, range: range), v) { s += Double(a - b) * Double(a - b) }
                    return s
                }
                ranges.append(found.range)
                error += found.error
            }
            result.value = try PerHeadUniformQuantizer.fitting(bits: bits, ranges: ranges, what: "layer \(layer) value quantizer")
            result.valueRelativeError = norm > 0 ? error / norm : 0
        }
        return result
    }

    /// Runs the float model over the first `samples` calibration sequences, recording up to
    /// `tokenLimit` tokens of Q, K, V per layer, and searches every layer's quantizers.
    public static func run(model: some QuantizableModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                           samples: Int, queryKeyBits: Int?, valueBits: Int?, tokenLimit: Int = 512,
                           quiet: Bool = false) throws(PTQError) -> [LayerResult] {
        let config = model.config
        let sequences = try CalibrationSamples.calibrationSequences(for: model, tokenizer: tokenizer, settings: settings,
                                                                    count: samples)
        let collectors = (0..<config.layerCount).map { _ in
            Collector(heads: config.headCount, headDim: config.headDim, tokenLimit: tokenLimit)
        }
        let hooks = ForwardHooks(attentionProbabilityOps: collectors.map { $0 as (any AttentionProbabilityOp)? })
        let progress = ProgressReporter("attention operands", total: sequences.count, quiet: quiet)
        for ids in sequences {
            model.observe(ids, hooks: hooks)
            progress.advance()
        }
        return try collectors.enumerated().map { (l, c) throws(PTQError) in
            try searchLayer(c, queryKeyBits: queryKeyBits, valueBits: valueBits, layer: l)
        }
    }
}
