import Foundation
import Testing
import Kernels
@testable import PTQKit

/// The multi-token (prefill) path: causal block attention on the pool, sgemm split over the
/// pool, and the model's prefill against the full-matrix path and token-by-token decode.
@Suite("Prefill")
struct PrefillTests {
    /// Causal GQA attention in double: `rows` queries at positions start..<start+rows.
    static func referenceAttention(q: [Float], keys: [Float], values: [Float], rows: Int, start: Int, heads: Int,
                                   kvHeads: Int, dim: Int, scale: Double) -> [Double] {
        let group = heads / kvHeads, qWidth = heads * dim, kvWidth = kvHeads * dim
        var out = [Double](repeating: 0, count: rows * qWidth)
        for t in 0..<rows {
            for h in 0..<heads {
                let g = h / group, visible = start + t + 1
                var scores = (0..<visible).map { s in
                    scale * (0..<dim).reduce(0.0) { $0 + Double(q[t * qWidth + h * dim + $1]) * Double(keys[s * kvWidth + g * dim + $1]) }
                }
                let top = scores.max()!
                scores = scores.map { Foundation.exp($0 - top) }
                let sum = scores.reduce(0, +)
                for d in 0..<dim {
                    out[t * qWidth + h * dim + d] = (0..<visible).reduce(0.0) {
                        $0 + scores[$1] / sum * Double(values[$1 * kvWidth + g * dim + d])
                    }
                }
            }
        }
        return out
    }

    @Test("causal block attention equals the double reference",
          arguments: [(1, 0), (2, 0), (17, 0), (64, 0), (65, 0), (130, 0), (17, 40), (70, 9), (1, 33)])
    func attentionMatchesReference(rows: Int, start: Int) {
        let heads = 6, kvHeads = 2, dim = 16, S = start + rows
        var rng = SeededGenerator(seed: UInt64(rows * 100 + start))
        let q = (0..<(rows * heads * dim)).map { _ in rng.float(in: -1...1) }
        let keys = (0..<(S * kvHeads * dim)).map { _ in rng.float(in: -1...1) }
        let values = (0..<(S * kvHeads * dim)).map { _ in rng.float(in: -1...1) }
        let scale = 1 / Float(dim).squareRoot()
        var out = [Float](repeating: .nan, count: rows * heads * dim)
        q.withUnsafeBufferPointer { qp in keys.withUnsafeBufferPointer { kp in values.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in
                PrefillAttention.attend(q: qp.baseAddress!, qStride: heads * dim, keys: kp.baseAddress!, values: vp.baseAddress!,
                                        kvStride: kvHeads * dim, rows: rows, start: start, heads: heads, kvHeads: kvHeads,
                                        dim: dim, scale: scale, out: op.baseAddress!, outStride: heads * dim)
            }
        }}}
        let want = Self.referenceAttention(q: q, keys: keys, values: values, rows: rows, start: start, heads: heads,
                                           kvHeads: kvHeads, dim: dim, scale: Double(scale))
        let worst = zip(out, want).map { abs(Double($0) - $1) }.max()!
        #expect(worst < 1e-5, "rows \(rows) start \(start): max error \(worst)")
    }

    @Test("sgemm split over the pool equals one sgemm", arguments: [(2, 200, 576), (40, 192, 576), (65, 192, 576), (128, 1000, 96), (512, 49, 64)])
    func pooledLinearMatchesOneSgemm(rows: Int, out: Int, columns: Int) {
        var rng = SeededGenerator(seed: UInt64(rows + out))
        let x = (0..<(rows * columns)).map { _ in rng.float(in: -1...1) }
        let w = (0..<(out * columns)).map { _ in rng.float(in: -0.1...0.1) }
        var pooled = [Float](repeating: .nan, count: rows * out), single = pooled
        x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in
            pooled.withUnsafeMutableBufferPointer {
                BLAS.pooledLinear(xp.baseAddress!, rows: rows, inFeatures: columns, weight: wp.baseAddress!,
                                  outFeatures: out, into: $0.baseAddress!)
            }
            single.withUnsafeMutableBufferPointer {
                BLAS.gemm(m: rows, n: out, k: columns, a: xp.baseAddress!, lda: columns, b: wp.baseAddress!, ldb: columns,
                          transposeB: true, c: $0.baseAddress!, ldc: out)
            }
        }}
        let worst = zip(pooled, single).map { abs($0 - $1) }.max()!
        #expect(worst < 1e-5, "max difference \(worst)")
        // With several pool threads the large shapes really are split (so the test covers the split).
        let parts = BLAS.pooledParts(rows: rows, columns: out, depth: columns)
        if Parallel.workerCount > 1, rows > BLAS.pooledMinimumRows, rows * out * columns >= 1 << 22 { #expect(parts > 1) }
        #expect(BLAS.alignedPart(out, parts: parts) * parts >= out)
    }

    /// Records nothing: its presence sends the model down the full-matrix attention loop.
    final class NullObserver: ActivationObserver {
        func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {}
    }

    /// Prefill logits against (a) the full-matrix attention loop the model runs for observers and
    /// (b) decoding the same tokens one at a time through the cache.
    static func checkPrefill(_ model: LlamaModel, tokens: [Int], precision: KVCachePrecision, stepped: Bool,
                             tolerance: Float) {
        let V = model.config.vocabSize
        let cache = LlamaModel.KVCache(config: model.config, capacity: tokens.count + 1, precision: precision)
        let prefill = model.forward(tokens, cache: cache)
        #expect(prefill.allSatisfy { $0.isFinite })
        let fullCache = LlamaModel.KVCache(config: model.config, capacity: tokens.count + 1, precision: precision)
        let full = model.forward(tokens, cache: fullCache, hooks: ForwardHooks(observer: NullObserver()))
        let worstFull = zip(prefill, full).map { abs($0 - $1) }.max()!
        #expect(worstFull < tolerance, "\(tokens.count) tokens, \(precision): prefill vs full-matrix loop \(worstFull)")
        guard stepped else { return }
        let stepCache = LlamaModel.KVCache(config: model.config, capacity: tokens.count + 1, precision: precision)
        var decoded: [Float] = []
        for token in tokens { decoded += model.forward([token], cache: stepCache) }
        let worstStep = zip(prefill, decoded).map { abs($0 - $1) }.max()!
        #expect(decoded.count == tokens.count * V)
        #expect(worstStep < tolerance, "\(tokens.count) tokens, \(precision): prefill vs decode \(worstStep)")
    }

    @Test("synthetic model: prefill equals the full-matrix loop and token-by-token decode",
          arguments: [1, 2, 17, 100], [KVCachePrecision.f32, .f16])
    func syntheticPrefill(length: Int, precision: KVCachePrecision) throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(), seed: 11)
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let tokens = (0..<length).map { ($0 * 37 + 5) % model.config.vocabSize }
        // Prefill computes keys with sgemm, decode with a GEMV: a last-bit difference can flip a
        // key's rounding to half (2⁻¹¹ relative), so the half cache is compared more loosely.
        Self.checkPrefill(model, tokens: tokens, precision: precision, stepped: true,
                          tolerance: precision == .f32 ? 1e-5 : 2e-3)
    }

    /// SmolLM2 (30 layers, 9 heads over 3 KV heads, 576 × 1536): the pool-split sgemm and the
    /// block attention at real sizes, including a 511-token prompt (8 query blocks, the last
    /// one partial).
    @Test("SmolLM2: prefill equals the full-matrix loop and token-by-token decode",
          .enabled(if: FileManager.default.fileExists(atPath: ProjectPaths.root + "/models/smollm2.h5")),
          arguments: [(1, true), (2, true), (17, true), (511, false)])
    func smolLM2Prefill(length: Int, stepped: Bool) throws {
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: ProjectPaths.root + "/models/smollm2.h5")))
        var rng = SeededGenerator(seed: UInt64(length))
        let tokens = (0..<length).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
        // A float cache: with a half cache a last-bit difference of a key (another summation
        // order) can flip its rounding to half, a 2⁻¹¹ relative step that 30 layers carry into
        // the logits (measured up to 9e-3 at 17 and 511 tokens), which would hide the float
        // rounding this compares. Logits of SmolLM2 reach ~30 in magnitude.
        Self.checkPrefill(model, tokens: tokens, precision: .f32, stepped: stepped, tolerance: 2e-3)
    }
}
