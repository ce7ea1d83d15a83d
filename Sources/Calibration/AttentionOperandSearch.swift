import Foundation
import Kernels
import Models
import PTQCore
import Tokenizers

/// Searches the per-head uniform asymmetric quantizers of Q, K and V (fully quantized
/// attention, encoders) on the float model with AdaLog's FPCS (``FPCS``; GoatWu/AdaLog
/// `quant_layers/matmul.py`): the reference's percentile grid per head, 3 alternating rounds,
/// Q and K scored by the head's score error `‖Q̂·K̂ᵀ − Q·Kᵀ‖²` within each calibration sequence,
/// V by the attention output error `‖P̂·V̂ − P·V‖²`, alternating with a re-scan of the
/// probability quantizer against the quantized V (see ``searchLayer``). Every layer is
/// calibrated on full-precision inputs, as in the reference.
public enum AttentionOperandSearch {
    /// The chosen quantizers of one layer and their relative errors.
    public struct LayerResult: Sendable {
        public var query: PerHeadUniformQuantizer?
        public var key: PerHeadUniformQuantizer?
        public var value: PerHeadUniformQuantizer?
        /// Σ‖Q̂K̂ᵀ − QKᵀ‖² / Σ‖QKᵀ‖² over heads (nil without Q/K quantizers).
        public var scoresRelativeError: Double?
        /// Σ‖P̂V̂ − PV‖² / Σ‖PV‖² over heads (nil without a V quantizer).
        public var valueRelativeError: Double?
        /// The probability quantizer re-scanned against P̂·V̂ (nil when not re-scanned).
        public var probability: PositiveActivationQuantizer?
    }

    /// Stands in for one layer's attention during the collection run: float products, with the
    /// head slices of Q, K and V of the first `tokenLimit` tokens recorded.
    final class Collector: HeadAwareAttentionOp, @unchecked Sendable {
        let heads: Int, headDim: Int, tokenLimit: Int
        /// Per head: rows of Q, K, V (`tokens × headDim`).
        var queries: [[Float]], keys: [[Float]], values: [[Float]]
        /// Per head: lengths of the recorded sequences (the same for every head).
        var lengths: [[Int]]
        /// Per head: the recorded sequences' probabilities, `n × n` each, concatenated.
        var probabilities: [[Float]]
        /// Per head: whether the sequence now between `scores` and `multiply` is recorded.
        var recording: [Bool]

        init(heads: Int, headDim: Int, tokenLimit: Int) {
            self.heads = heads
            self.headDim = headDim
            self.tokenLimit = tokenLimit
            queries = Array(repeating: [], count: heads)
            keys = queries
            values = queries
            lengths = Array(repeating: [], count: heads)
            probabilities = queries
            recording = Array(repeating: false, count: heads)
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
            recording[head] = recorded < tokenLimit && rows == columns
            if recording[head] {
                append(q, rows: rows, stride: stride, to: &queries[head])
                append(k, rows: columns, stride: stride, to: &keys[head])
                lengths[head].append(rows)
            }
            return true
        }

        func multiply(head: Int, probabilities: UnsafePointer<Float>, rows: Int, columns: Int, values v: UnsafePointer<Float>,
                      valueStride: Int, width: Int, into out: UnsafeMutablePointer<Float>, outStride: Int) {
            if recording[head] {
                append(v, rows: columns, stride: valueStride, to: &values[head])
                self.probabilities[head].append(contentsOf: UnsafeBufferPointer(start: probabilities, count: rows * columns))
                recording[head] = false
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

    /// The reference's uniform operand quantizer `s·(clamp(round(x/s) + z, 0, 2^n − 1) − z)`,
    /// exactly as `PerHeadUniformQuantizer` encodes and decodes.
    @inline(__always)
    static func fake(_ x: Float, scale: Float, zero: Int, top: Float) -> Float {
        scale * (FPCS.code(x / scale + Float(zero), top: top) - Float(zero))
    }

    /// One head's operand grid (`calculate_percentile_candidates`: `Nz = min(16, 2^(n−1))`) and
    /// the reference's initial quantizer, grid index −2 of its zero-point-major order: the
    /// largest zero point at the second-largest scale.
    static func grid(_ values: [Float], bits: Int) -> (candidates: [Candidate], step: Float, initial: Candidate) {
        let g = FPCS.grid(of: values, bits: bits, zeroPoints: min(16, 1 << (bits - 1)))
        let scales = Array(Set(g.candidates.map(\.scale))).sorted(), zeros = g.candidates.map(\.zero)
        let initial = Candidate(scale: scales[max(0, scales.count - 2)], zero: zeros.max() ?? 0)
        return (g.candidates, g.step, initial)
    }

    typealias Candidate = FPCS.Candidate

    /// Σ over the head's sequences of ‖A_c·B_sᵀ − R_s‖² for every candidate c of A (`aOf(c)`
    /// fake-quantizes the head's A rows), all candidates of one sequence in one sgemm.
    static func productErrors(_ candidates: [Candidate], a: [Float], fixed b: [Float], reference: [Float], lengths: [Int],
                              width: Int, bits: Int, transposeB: Bool) -> [Double] {
        let top = Float((1 << bits) - 1), count = candidates.count
        var errors = [Double](repeating: 0, count: count)
        let longest = lengths.max() ?? 0
        var stacked = [Float](repeating: 0, count: count * longest * width)
        var product = [Float](repeating: 0, count: count * longest * max(longest, width))
        var offset = 0, referenceOffset = 0
        for n in lengths {
            // A rows of this sequence, fake-quantized by each candidate: stacked by candidate for
            // the scores (count·n × width), side by side for the attention output (n × count·width).
            for (c, cand) in candidates.enumerated() {
                for t in 0..<n {
                    let destination = transposeB ? (c * n + t) * width : t * count * width + c * width
                    for d in 0..<width {
                        stacked[destination + d] = fake(a[(offset + t) * width + d], scale: cand.scale, zero: cand.zero, top: top)
                    }
                }
            }
            stacked.withUnsafeBufferPointer { sp in b.withUnsafeBufferPointer { bp in product.withUnsafeMutableBufferPointer { pp in
                if transposeB {
                    // (A_c)·Bᵀ: scores, B = K̂ rows of the sequence.
                    BLAS.gemm(m: count * n, n: n, k: width, a: sp.baseAddress!, lda: width, b: bp.baseAddress! + offset * width,
                              ldb: width, transposeB: true, c: pp.baseAddress!, ldc: n)
                } else {
                    // B·[A_1 … A_c]: attention outputs of all candidates, B = P̂ of the sequence (n × n).
                    BLAS.gemm(m: n, n: count * width, k: n, a: bp.baseAddress! + referenceOffset, lda: n,
                              b: sp.baseAddress!, ldb: count * width, transposeB: false, c: pp.baseAddress!, ldc: count * width)
                }
            }}}
            if transposeB {
                for c in 0..<count {
                    var e: Float = 0
                    for i in 0..<(n * n) { let d = product[c * n * n + i] - reference[referenceOffset + i]; e += d * d }
                    errors[c] += Double(e)
                }
            } else {
                for c in 0..<count {
                    var e: Float = 0
                    for t in 0..<n {
                        for d in 0..<width {
                            let v = product[t * count * width + c * width + d] - reference[(offset + t) * width + d]
                            e += v * v
                        }
                    }
                    errors[c] += Double(e)
                }
            }
            offset += n
            referenceOffset += n * n
        }
        return errors
    }

    /// The head's rows fake-quantized with one candidate.
    static func simulate(_ values: [Float], _ c: Candidate, bits: Int) -> [Float] {
        let top = Float((1 << bits) - 1)
        return values.map { fake($0, scale: c.scale, zero: c.zero, top: top) }
    }

    /// `P̂` of every recorded sequence of a head by the probability quantizer `p`, from the
    /// precomputed `−log2 P` (`minusLogs`): the formula encoders the probability scan uses
    /// (`AttentionProbabilitySearch.Scorer`).
    static func quantizedProbabilities(_ probabilities: [Float], minusLogs: [Float], _ p: PositiveActivationQuantizer) -> [Float] {
        let levels = p.levels
        var out = [Float](repeating: 0, count: probabilities.count)
        switch p {
        case .adalog(let a):
            let factor = Float(a.r) / Float(a.q), zero = Float(a.zeroCode)
            for i in out.indices { out[i] = levels[Int(max(min((minusLogs[i] * factor).rounded(), zero), 0))] }
        case .uniform(let u):
            let inverse = 1 / u.scale, top = Float(u.maxCode)
            for i in out.indices { out[i] = levels[Int(min((probabilities[i] * inverse).rounded(), top))] }
        }
        return out
    }

    /// The per-head quantizers of one layer from its collector, as the reference's matmul
    /// searches do (GoatWu/AdaLog `quant_layers/matmul.py`):
    /// - Q·Kᵀ: Q and K start at grid index −2, then `rounds` × [FPCS(Q) per head, FPCS(K) per
    ///   head], each scored by the head's score error ‖Q̂K̂ᵀ − QKᵀ‖² within the recorded sequences;
    /// - P·V: V starts at grid index −2, then `rounds` × [the probability quantizer's scan over
    ///   `probabilityCandidates` (one per layer, all heads), FPCS(V) per head], both scored by the
    ///   attention output error ‖P̂V̂ − PV‖². Without candidates (probabilities not searched here)
    ///   V is searched once against `probability`.
    /// FPCS settings are the reference configs' (128 candidates, top 16, 6 steps, 3 rounds).
    static func searchLayer(_ c: Collector, queryKeyBits: Int?, valueBits: Int?, layer: Int,
                            probability: PositiveActivationQuantizer?, probabilityCandidates: [PositiveActivationQuantizer],
                            rounds: Int = 3) throws(PTQError) -> LayerResult {
        var result = LayerResult()
        let width = c.headDim
        for h in 0..<c.heads where c.lengths[h].isEmpty {
            throw PTQError("attention_probs.query_key_bits / value_bits: layer \(layer) head \(h) saw no calibration tokens")
        }
        if let bits = queryKeyBits {
            var queries: [Candidate] = [], keys: [Candidate] = []
            var error: Double = 0, norm: Double = 0
            for h in 0..<c.heads {
                let q = c.queries[h], k = c.keys[h], lengths = c.lengths[h]
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
                let qGrid = grid(q, bits: bits), kGrid = grid(k, bits: bits)
                var qChoice = qGrid.initial, kChoice = kGrid.initial
                var e: Double = 0
                for _ in 0..<max(rounds, 1) {
                    let kHat = simulate(k, kChoice, bits: bits)
                    let qFound = FPCS.search(initial: [qGrid.candidates], initialStep: [qGrid.step]) { lists in
                        [productErrors(lists[0], a: q, fixed: kHat, reference: reference, lengths: lengths, width: width,
                                       bits: bits, transposeB: true)]
                    }[0]
                    qChoice = qFound.candidate
                    let qHat = simulate(q, qChoice, bits: bits)
                    // Q̂·K̂_cᵀ = (K̂_c·Q̂ᵀ)ᵀ: the same error with the roles swapped (reference transposed).
                    var referenceT = reference
                    var o = 0
                    for n in lengths {
                        for i in 0..<n { for j in 0..<n { referenceT[o + j * n + i] = reference[o + i * n + j] } }
                        o += n * n
                    }
                    let kFound = FPCS.search(initial: [kGrid.candidates], initialStep: [kGrid.step]) { lists in
                        [productErrors(lists[0], a: k, fixed: qHat, reference: referenceT, lengths: lengths, width: width,
                                       bits: bits, transposeB: true)]
                    }[0]
                    kChoice = kFound.candidate
                    e = kFound.error
                }
                error += e
                queries.append(qChoice)
                keys.append(kChoice)
            }
            result.query = try PerHeadUniformQuantizer(bits: bits, scales: queries.map(\.scale), zeroPoints: queries.map(\.zero),
                                                       what: "layer \(layer) query quantizer")
            result.key = try PerHeadUniformQuantizer(bits: bits, scales: keys.map(\.scale), zeroPoints: keys.map(\.zero),
                                                     what: "layer \(layer) key quantizer")
            result.scoresRelativeError = norm > 0 ? error / norm : 0
        }
        if let bits = valueBits {
            // Float attention outputs P·V per head (the reference's raw_out of matmul2).
            var outputs: [[Float]] = [], norm: Double = 0
            for h in 0..<c.heads {
                var out: [Float] = []
                var offset = 0, pOffset = 0
                for n in c.lengths[h] {
                    var o = [Float](repeating: 0, count: n * width)
                    c.probabilities[h].withUnsafeBufferPointer { pp in c.values[h].withUnsafeBufferPointer { vp in
                        BLAS.gemm(m: n, n: width, k: n, a: pp.baseAddress! + pOffset, lda: n, b: vp.baseAddress! + offset * width,
                                  ldb: width, transposeB: false, c: &o, ldc: width)
                    }}
                    out += o
                    offset += n
                    pOffset += n * n
                }
                for v in out { norm += Double(v) * Double(v) }
                outputs.append(out)
            }
            let grids = (0..<c.heads).map { grid(c.values[$0], bits: bits) }
            let minusLogs = c.probabilities.map { head in head.map { $0 > 0 ? -log2($0) : Float.infinity } }
            var choices = grids.map(\.initial)
            var chosenProbability = probability
            var pvError: Double = 0
            let scan = !probabilityCandidates.isEmpty
            for _ in 0..<(scan ? max(rounds, 1) : 1) {
                if scan {
                    // The probability quantizer's scan against P̂·V̂ with the current V̂ (all heads).
                    let vHats = (0..<c.heads).map { simulate(c.values[$0], choices[$0], bits: bits) }
                    var best = (index: 0, error: Double.infinity)
                    for (i, candidate) in probabilityCandidates.enumerated() {
                        var e: Double = 0
                        for h in 0..<c.heads {
                            let pHat = quantizedProbabilities(c.probabilities[h], minusLogs: minusLogs[h], candidate)
                            var offset = 0, pOffset = 0
                            for n in c.lengths[h] {
                                var o = [Float](repeating: 0, count: n * width)
                                pHat.withUnsafeBufferPointer { pp in vHats[h].withUnsafeBufferPointer { vp in
                                    BLAS.gemm(m: n, n: width, k: n, a: pp.baseAddress! + pOffset, lda: n,
                                              b: vp.baseAddress! + offset * width, ldb: width, transposeB: false, c: &o, ldc: width)
                                }}
                                for t in 0..<(n * width) { let d = Double(o[t] - outputs[h][offset * width + t]); e += d * d }
                                offset += n
                                pOffset += n * n
                            }
                        }
                        if e < best.error { best = (i, e) }
                    }
                    chosenProbability = probabilityCandidates[best.index]
                }
                // FPCS(V) per head against P̂·V̂_c.
                pvError = 0
                for h in 0..<c.heads {
                    let pHat = chosenProbability.map { quantizedProbabilities(c.probabilities[h], minusLogs: minusLogs[h], $0) }
                        ?? c.probabilities[h]
                    let found = FPCS.search(initial: [grids[h].candidates], initialStep: [grids[h].step]) { lists in
                        [productErrors(lists[0], a: c.values[h], fixed: pHat, reference: outputs[h], lengths: c.lengths[h],
                                       width: width, bits: bits, transposeB: false)]
                    }[0]
                    choices[h] = found.candidate
                    pvError += found.error
                }
            }
            result.value = try PerHeadUniformQuantizer(bits: bits, scales: choices.map(\.scale), zeroPoints: choices.map(\.zero),
                                                       what: "layer \(layer) value quantizer")
            result.valueRelativeError = norm > 0 ? pvError / norm : 0
            if scan { result.probability = chosenProbability }
        }
        return result
    }

    /// Runs the float model over the first `samples` calibration sequences, recording up to
    /// `tokenLimit` tokens of Q, K, V (and the probabilities) per layer and head, and searches
    /// every layer's quantizers. `probabilities[l]` is layer l's probability quantizer from the
    /// probability search; with `probabilityCandidates` the P·V search re-scans it against the
    /// quantized V, alternating, as the reference does.
    public static func run(model: some QuantizableModel, tokenizer: any Tokenizer, settings: CalibrationSettings,
                           samples: Int, queryKeyBits: Int?, valueBits: Int?, tokenLimit: Int = 512,
                           probabilities: [PositiveActivationQuantizer?] = [],
                           probabilityCandidates: [PositiveActivationQuantizer] = [],
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
            try searchLayer(c, queryKeyBits: queryKeyBits, valueBits: valueBits, layer: l,
                            probability: l < probabilities.count ? probabilities[l] : nil,
                            probabilityCandidates: probabilityCandidates)
        }
    }
}
