import Foundation
import Models
import PTQCore

/// Pass/fail limits for `ptq verify` (from the recipe's `verify` block).
public struct VerificationThresholds: Codable, Sendable, Equatable {
    /// Mean KL divergence (nats) of the quantized next-token distribution from the float one.
    public var maxKL: Double?
    /// Fraction of positions where both models pick the same top token.
    public var minTop1: Double?
    /// Relative perplexity increase on the held-out samples (0.02 = 2 %).
    public var maxPerplexityIncrease: Double?
    /// Mean cosine similarity of sentence embeddings (encoders).
    public var minCosine: Double?

    public init(maxKL: Double? = nil, minTop1: Double? = nil, maxPerplexityIncrease: Double? = nil, minCosine: Double? = nil) {
        self.maxKL = maxKL
        self.minTop1 = minTop1
        self.maxPerplexityIncrease = maxPerplexityIncrease
        self.minCosine = minCosine
    }
}

/// How far a quantized model is from its float reference, on held-out samples.
public struct VerificationReport: Encodable, Sendable {
    public struct LayerError: Codable, Sendable {
        public var layer: Int
        /// ‖ref − quant‖² / ‖ref‖² of the block's output (residual stream).
        public var relativeMSE: Double
        public var cosine: Double

        enum CodingKeys: String, CodingKey {
            case layer, cosine
            case relativeMSE = "relative_mse"
        }
    }

    public var samples: Int
    public var tokens: Int
    public var layers: [LayerError]
    public var meanKL: Double?
    public var top1Agreement: Double?
    public var referencePerplexity: Double?
    public var quantizedPerplexity: Double?
    public var perplexityIncrease: Double?
    public var meanCosine: Double?
    /// Each missed threshold, in words; empty when verification passed.
    public var failures: [String]
    public var passed: Bool { failures.isEmpty }

    enum CodingKeys: String, CodingKey {
        case samples, tokens, layers, failures, passed
        case meanKL = "mean_kl", top1Agreement = "top1_agreement", referencePerplexity = "reference_perplexity"
        case quantizedPerplexity = "quantized_perplexity", perplexityIncrease = "perplexity_increase"
        case meanCosine = "mean_cosine"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(samples, forKey: .samples)
        try c.encode(tokens, forKey: .tokens)
        try c.encode(layers, forKey: .layers)
        try c.encodeIfPresent(meanKL, forKey: .meanKL)
        try c.encodeIfPresent(top1Agreement, forKey: .top1Agreement)
        try c.encodeIfPresent(referencePerplexity, forKey: .referencePerplexity)
        try c.encodeIfPresent(quantizedPerplexity, forKey: .quantizedPerplexity)
        try c.encodeIfPresent(perplexityIncrease, forKey: .perplexityIncrease)
        try c.encodeIfPresent(meanCosine, forKey: .meanCosine)
        try c.encode(failures, forKey: .failures)
        try c.encode(passed, forKey: .passed)
    }
}

/// Records the residual stream after every block.
final class LayerOutputRecorder: ActivationObserver {
    let blocks: [String: Int]
    var outputs: [Int: [Float]] = [:]

    init(layerCount: Int) {
        var blocks: [String: Int] = [:]
        for l in 0..<layerCount { blocks[QuantizationPoints.layerOutput(l)] = l }
        self.blocks = blocks
    }

    func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
        guard let layer = blocks[point] else { return }
        outputs[layer] = Array(values)
    }
}

/// Per-layer error accumulated over samples.
struct LayerErrorAccumulator {
    var errorEnergy: [Double] = []
    var referenceEnergy: [Double] = []
    var dots: [Double] = []
    var quantizedEnergy: [Double] = []

    mutating func add(_ reference: [Int: [Float]], _ quantized: [Int: [Float]]) {
        let layers = reference.count
        if errorEnergy.isEmpty {
            errorEnergy = .init(repeating: 0, count: layers)
            referenceEnergy = errorEnergy; dots = errorEnergy; quantizedEnergy = errorEnergy
        }
        for l in 0..<layers {
            guard let a = reference[l], let b = quantized[l] else { continue }
            for i in a.indices {
                let x = Double(a[i]), y = Double(b[i])
                errorEnergy[l] += (x - y) * (x - y)
                referenceEnergy[l] += x * x
                quantizedEnergy[l] += y * y
                dots[l] += x * y
            }
        }
    }

    var result: [VerificationReport.LayerError] {
        errorEnergy.indices.map { l in
            .init(layer: l, relativeMSE: errorEnergy[l] / max(referenceEnergy[l], 1e-30),
                  cosine: dots[l] / max((referenceEnergy[l] * quantizedEnergy[l]).squareRoot(), 1e-30))
        }
    }
}

public enum Verification {
    /// Compares a quantized model with its float reference on held-out token sequences, by what
    /// the models output (``QuantizableModel/run(_:hooks:)``): next-token logits give mean KL,
    /// top-1 agreement and perplexity on the samples; embeddings give the mean cosine. Both give
    /// the per-block error of the residual stream. Throws when the two models differ in config.
    public static func compare(reference: some QuantizableModel, quantized: some QuantizableModel, samples: [[Int]],
                               thresholds: VerificationThresholds, quiet: Bool = false) throws(PTQError) -> VerificationReport {
        guard reference.config == quantized.config else {
            throw PTQError("the reference (\(reference.kindDescription)) and the quantized model "
                           + "(\(quantized.kindDescription)) have different configs")
        }
        var kl = 0.0, agree = 0, positions = 0, nllReference = 0.0, nllQuantized = 0.0, predicted = 0
        var cosine = 0.0, embeddings = 0, tokens = 0
        var layers = LayerErrorAccumulator()
        let progress = ProgressReporter("verify", total: samples.count, quiet: quiet)
        for sample in samples {
            let recorderA = LayerOutputRecorder(layerCount: reference.config.layerCount)
            let recorderB = LayerOutputRecorder(layerCount: quantized.config.layerCount)
            let a = reference.run(sample, hooks: ForwardHooks(observer: recorderA))
            let b = quantized.run(sample, hooks: ForwardHooks(observer: recorderB))
            layers.add(recorderA.outputs, recorderB.outputs)
            tokens += sample.count
            switch (a, b) {
            case (.logits(let p, let vocab), .logits(let q, _)):
                for t in 0..<sample.count {
                    let (klValue, same, lpRef, lpQuant) = compareRow(p, q, row: t, vocab: vocab,
                                                                     target: t + 1 < sample.count ? sample[t + 1] : nil)
                    kl += klValue
                    if same { agree += 1 }
                    positions += 1
                    if let lpRef, let lpQuant { nllReference -= lpRef; nllQuantized -= lpQuant; predicted += 1 }
                }
                progress.advance(detail: String(format: "KL %.5f", kl / Double(max(positions, 1))))
            case (.embedding(let x), .embedding(let y)):
                cosine += STSB.cosine(x, y)
                embeddings += 1
                progress.advance()
            default:
                throw PTQError("the reference and the quantized model give different kinds of output")
            }
        }
        var report = VerificationReport(samples: samples.count, tokens: tokens, layers: layers.result, meanKL: nil,
                                        top1Agreement: nil, referencePerplexity: nil, quantizedPerplexity: nil,
                                        perplexityIncrease: nil, meanCosine: nil, failures: [])
        if positions > 0 {
            report.meanKL = kl / Double(positions)
            report.top1Agreement = Double(agree) / Double(positions)
            report.referencePerplexity = Foundation.exp(nllReference / Double(predicted))
            report.quantizedPerplexity = Foundation.exp(nllQuantized / Double(predicted))
            report.perplexityIncrease = report.quantizedPerplexity! / report.referencePerplexity! - 1
        }
        if embeddings > 0 { report.meanCosine = cosine / Double(embeddings) }
        report.failures = check(report, thresholds)
        return report
    }

    /// KL(P‖Q) of one row of logits, whether the argmaxes agree, and log p(target) under both.
    static func compareRow(_ p: [Float], _ q: [Float], row: Int, vocab: Int, target: Int?)
        -> (Double, Bool, Double?, Double?)
    {
        p.withUnsafeBufferPointer { pp in q.withUnsafeBufferPointer { qp in
            let a = pp.baseAddress! + row * vocab, b = qp.baseAddress! + row * vocab
            var maxA = -Float.infinity, maxB = -Float.infinity, argA = 0, argB = 0
            for i in 0..<vocab {
                if a[i] > maxA { maxA = a[i]; argA = i }
                if b[i] > maxB { maxB = b[i]; argB = i }
            }
            var sumA = 0.0, sumB = 0.0
            for i in 0..<vocab { sumA += Double(expf(a[i] - maxA)); sumB += Double(expf(b[i] - maxB)) }
            let logZA = Double(maxA) + Foundation.log(sumA), logZB = Double(maxB) + Foundation.log(sumB)
            var kl = 0.0
            for i in 0..<vocab {
                let lpA = Double(a[i]) - logZA, lpB = Double(b[i]) - logZB
                kl += Foundation.exp(lpA) * (lpA - lpB)
            }
            let targets = target.map { (Double(a[$0]) - logZA, Double(b[$0]) - logZB) }
            return (max(kl, 0), argA == argB, targets?.0, targets?.1)
        }}
    }

    static func check(_ r: VerificationReport, _ t: VerificationThresholds) -> [String] {
        var failures: [String] = []
        // A NaN compares false against every limit: non-finite figures fail on their own.
        let figures: [(String, Double?)] = [("mean KL", r.meanKL), ("top-1 agreement", r.top1Agreement),
                                            ("reference perplexity", r.referencePerplexity),
                                            ("quantized perplexity", r.quantizedPerplexity),
                                            ("embedding cosine", r.meanCosine)]
        for (name, value) in figures {
            if let value, !value.isFinite {
                failures.append("\(name) is \(value): the model produces NaN or infinite outputs")
            }
        }
        if let limit = t.maxKL, let v = r.meanKL, v > limit {
            failures.append(String(format: "mean KL %.5f exceeds max_kl %.5f", v, limit))
        }
        if let limit = t.minTop1, let v = r.top1Agreement, v < limit {
            failures.append(String(format: "top-1 agreement %.4f is below min_top1 %.4f", v, limit))
        }
        if let limit = t.maxPerplexityIncrease, let v = r.perplexityIncrease, v > limit {
            failures.append(String(format: "perplexity increase %.2f%% exceeds max_ppl_increase %.2f%%", 100 * v, 100 * limit))
        }
        if let limit = t.minCosine, let v = r.meanCosine, v < limit {
            failures.append(String(format: "mean embedding cosine %.5f is below min_cosine %.5f", v, limit))
        }
        return failures
    }
}
