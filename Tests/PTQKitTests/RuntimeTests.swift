import Foundation
import Testing
@testable import Evaluation
@testable import Kernels
@testable import Models
@testable import PTQKit

/// A straight-loop, double-precision reference forward pass, written from the model
/// definitions independently of the runtime's BLAS/pointer code.
enum ReferenceForward {
    static func matVec(_ w: Tensor, _ x: [Double], bias: Tensor? = nil) -> [Double] {
        let out = w.shape[0], inp = w.shape[1]
        return (0..<out).map { o in
            var s = bias.map { Double($0.data[o]) } ?? 0
            for i in 0..<inp { s += Double(w.data[o * inp + i]) * x[i] }
            return s
        }
    }

    static func rmsNorm(_ x: [Double], _ w: Tensor, _ eps: Double) -> [Double] {
        let ms = x.map { $0 * $0 }.reduce(0, +) / Double(x.count)
        return x.indices.map { x[$0] / (ms + eps).squareRoot() * Double(w.data[$0]) }
    }

    static func layerNorm(_ x: [Double], _ w: Tensor, _ b: Tensor, _ eps: Double) -> [Double] {
        let mean = x.reduce(0, +) / Double(x.count)
        let variance = x.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(x.count)
        return x.indices.map { (x[$0] - mean) / (variance + eps).squareRoot() * Double(w.data[$0]) + Double(b.data[$0]) }
    }

    static func dot(_ a: [Double], _ aOffset: Int, _ b: [Double], _ bOffset: Int, _ n: Int) -> Double {
        var s = 0.0
        for i in 0..<n { s += a[aOffset + i] * b[bOffset + i] }
        return s
    }

    static func softmax(_ x: [Double]) -> [Double] {
        let m = x.max()!
        let e = x.map { Foundation.exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    /// Logits (T, V) of a LLaMA model for `tokens` starting at position 0.
    static func llama(_ m: CheckpointContents, _ tokens: [Int]) -> [[Double]] {
        let c = m.config, D = c.hiddenSize, Dh = c.headDim
        func t(_ n: String) -> Tensor { m.tensors[n]! }
        let emb = t(TensorNames.tokenEmbedding)
        var x = tokens.map { tok in (0..<D).map { Double(emb.data[tok * D + $0]) } }
        func rope(_ v: inout [Double], heads: Int, pos: Int) {
            for h in 0..<heads {
                for i in 0..<Dh / 2 {
                    let angle = Double(pos) * Foundation.pow(c.ropeTheta, -Double(2 * i) / Double(Dh))
                    let a = v[h * Dh + i], b = v[h * Dh + i + Dh / 2]
                    v[h * Dh + i] = a * Foundation.cos(angle) - b * Foundation.sin(angle)
                    v[h * Dh + i + Dh / 2] = b * Foundation.cos(angle) + a * Foundation.sin(angle)
                }
            }
        }
        for l in 0..<c.layerCount {
            func lt(_ s: String) -> Tensor { t(TensorNames.layer(l, s)) }
            let normed = x.map { rmsNorm($0, lt("attention_norm/weight"), c.normEpsilon) }
            var qs = normed.map { matVec(lt("attention/q_proj/weight"), $0) }
            var ks = normed.map { matVec(lt("attention/k_proj/weight"), $0) }
            let vs = normed.map { matVec(lt("attention/v_proj/weight"), $0) }
            for p in tokens.indices {
                rope(&qs[p], heads: c.headCount, pos: p)
                rope(&ks[p], heads: c.kvHeadCount, pos: p)
            }
            var attn = [[Double]](repeating: [Double](repeating: 0, count: c.headCount * Dh), count: tokens.count)
            for p in tokens.indices {
                for h in 0..<c.headCount {
                    let g = h / (c.headCount / c.kvHeadCount)
                    let scores: [Double] = (0...p).map { j in
                        dot(qs[p], h * Dh, ks[j], g * Dh, Dh) / Double(Dh).squareRoot()
                    }
                    let probs = softmax(scores)
                    for d in 0..<Dh {
                        attn[p][h * Dh + d] = (0...p).map { probs[$0] * vs[$0][g * Dh + d] }.reduce(0, +)
                    }
                }
            }
            for p in tokens.indices {
                let o = matVec(lt("attention/o_proj/weight"), attn[p])
                for i in 0..<D { x[p][i] += o[i] }
                let n2 = rmsNorm(x[p], lt("mlp_norm/weight"), c.normEpsilon)
                let gate = matVec(lt("mlp/gate_proj/weight"), n2)
                let up = matVec(lt("mlp/up_proj/weight"), n2)
                let act = gate.indices.map { gate[$0] / (1 + Foundation.exp(-gate[$0])) * up[$0] }
                let down = matVec(lt("mlp/down_proj/weight"), act)
                for i in 0..<D { x[p][i] += down[i] }
            }
        }
        let head = c.tiedEmbeddings ? emb : t(TensorNames.lmHead)
        return x.map { matVec(head, rmsNorm($0, t(TensorNames.finalNorm), c.normEpsilon)) }
    }

    /// Sentence embedding of a BERT model (mean pooling, L2 normalisation).
    static func bert(_ m: CheckpointContents, _ tokens: [Int]) -> [Double] {
        let c = m.config, D = c.hiddenSize, Dh = c.headDim, T = tokens.count
        func t(_ n: String) -> Tensor { m.tensors[n]! }
        let eps = c.normEpsilon
        let word = t(TensorNames.tokenEmbedding), position = t(TensorNames.positionEmbedding)
        let type = t(TensorNames.tokenTypeEmbedding)
        var x: [[Double]] = []
        for (p, tok) in tokens.enumerated() {
            var e = [Double](repeating: 0, count: D)
            for i in 0..<D {
                e[i] = Double(word.data[tok * D + i]) + Double(position.data[p * D + i]) + Double(type.data[i])
            }
            x.append(layerNorm(e, t(TensorNames.embeddingNormWeight), t(TensorNames.embeddingNormBias), eps))
        }
        for l in 0..<c.layerCount {
            func lt(_ s: String) -> Tensor { t(TensorNames.layer(l, s)) }
            let q = x.map { matVec(lt("attention/q_proj/weight"), $0, bias: lt("attention/q_proj/bias")) }
            let k = x.map { matVec(lt("attention/k_proj/weight"), $0, bias: lt("attention/k_proj/bias")) }
            let v = x.map { matVec(lt("attention/v_proj/weight"), $0, bias: lt("attention/v_proj/bias")) }
            var attn = [[Double]](repeating: [Double](repeating: 0, count: D), count: T)
            for p in 0..<T {
                for h in 0..<c.headCount {
                    let probs = softmax((0..<T).map { j in dot(q[p], h * Dh, k[j], h * Dh, Dh) / Double(Dh).squareRoot() })
                    for d in 0..<Dh { attn[p][h * Dh + d] = (0..<T).map { probs[$0] * v[$0][h * Dh + d] }.reduce(0, +) }
                }
            }
            for p in 0..<T {
                let o = matVec(lt("attention/o_proj/weight"), attn[p], bias: lt("attention/o_proj/bias"))
                x[p] = layerNorm(x[p].indices.map { x[p][$0] + o[$0] }, lt("attention_norm/weight"), lt("attention_norm/bias"), eps)
                let up = matVec(lt("mlp/up_proj/weight"), x[p], bias: lt("mlp/up_proj/bias"))
                let act = up.map { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) }
                let down = matVec(lt("mlp/down_proj/weight"), act, bias: lt("mlp/down_proj/bias"))
                x[p] = layerNorm(x[p].indices.map { x[p][$0] + down[$0] }, lt("mlp_norm/weight"), lt("mlp_norm/bias"), eps)
            }
        }
        var pooled = (0..<D).map { i in x.map { $0[i] }.reduce(0, +) / Double(T) }
        let norm = pooled.map { $0 * $0 }.reduce(0, +).squareRoot()
        pooled = pooled.map { $0 / norm }
        return pooled
    }
}

@Suite("FP32 runtime")
struct RuntimeTests {
    /// Hand-checked values of the element-wise ops.
    @Test func elementwiseOps() {
        var g: [Float] = [1, -1, 0, 2]
        Ops.gelu(&g, count: 4)
        #expect(abs(g[0] - 0.8413447) < 1e-6)
        #expect(abs(g[1] - -0.1586553) < 1e-6)
        #expect(g[2] == 0)
        #expect(abs(g[3] - 1.9544997) < 1e-6)
        var gate: [Float] = [1, -2]
        Ops.siluMultiply(&gate, [2, 1], count: 2)
        #expect(abs(gate[0] - 2 * 0.7310586) < 1e-6)
        #expect(abs(gate[1] - -0.2384058) < 1e-6)
        var s: [Float] = [1, 2, 3]
        Ops.softmax(&s, count: 3)
        #expect(abs(s[0] - 0.09003057) < 1e-7 && abs(s[2] - 0.66524096) < 1e-7)
        var y = [Float](repeating: 0, count: 2)
        Ops.rmsNorm([3, 4], weight: [1, 2], rows: 1, width: 2, epsilon: 0, into: &y)
        // rms = sqrt((9+16)/2) = 3.5355339
        #expect(abs(y[0] - 0.8485281) < 1e-6 && abs(y[1] - 2 * 1.1313709) < 1e-6)
        Ops.layerNorm([1, 3], weight: [1, 1], bias: [0, 0.5], rows: 1, width: 2, epsilon: 0, into: &y)
        #expect(y == [-1, 1.5])
    }

    /// RoPE at position p rotates each (i, i + d/2) pair by p·θ^(-2i/d).
    @Test func ropeRotatesHalves() {
        let rope = RoPE(headDim: 4, theta: 100)
        var v: [Float] = [1, 1, 0, 0]
        rope.apply(&v, heads: 1, position: 2)
        // pair 0: angle 2, pair 1: angle 2·100^(-1/2) = 0.2
        #expect(abs(v[0] - cosf(2)) < 1e-6 && abs(v[2] - sinf(2)) < 1e-6)
        #expect(abs(v[1] - cosf(0.2)) < 1e-6 && abs(v[3] - sinf(0.2)) < 1e-6)
    }

    @Test(arguments: [true, false])
    func llamaMatchesReference(tied: Bool) throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(tied: tied), tokenizer: SyntheticModels.llamaTokenizer())
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let tokens = [5, 17, 200, 3, 99, 42, 7]
        let logits = model.forward(tokens)
        let reference = ReferenceForward.llama(contents, tokens)
        let V = contents.config.vocabSize
        var maxError = 0.0
        for p in tokens.indices { for v in 0..<V { maxError = max(maxError, abs(Double(logits[p * V + v]) - reference[p][v])) } }
        #expect(maxError < 2e-4, "max |logit error| \(maxError)")
    }

    /// Decoding token by token through the KV cache gives the same logits as one prefill.
    @Test func kvCacheMatchesPrefill() throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(), seed: 7)
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let tokens = [1, 2, 3, 250, 4, 5, 6, 7, 8, 9]
        let full = model.forward(tokens)
        let cache = LlamaModel.KVCache(config: model.config, capacity: 16)
        var stepped = model.forward(Array(tokens[..<4]), cache: cache)
        for token in tokens[4...] { stepped += model.forward([token], cache: cache) }
        #expect(cache.count == tokens.count)
        let maxError = zip(full, stepped).map { abs($0 - $1) }.max()!
        #expect(maxError < 1e-5, "max difference \(maxError)")
        // Only the requested rows of logits are computed.
        let tail = model.forward(tokens, logitRows: 8..<10)
        #expect(tail.count == 2 * model.config.vocabSize)
        #expect(zip(tail, full.suffix(2 * model.config.vocabSize)).allSatisfy { abs($0 - $1) < 1e-5 })
    }

    @Test func bertMatchesReference() throws {
        let contents = SyntheticModels.contents(SyntheticModels.bertConfig(), tokenizer: SyntheticModels.bertTokenizer())
        let model = try BertModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let tokens = [2, 5, 6, 7, 8, 5, 9, 13, 3]
        let embedding = model.embed(tokens: tokens)
        let reference = ReferenceForward.bert(contents, tokens)
        let maxError = zip(embedding, reference).map { abs(Double($0) - $1) }.max()!
        #expect(maxError < 1e-5, "max error \(maxError)")
        let norm = embedding.map { $0 * $0 }.reduce(0, +)
        #expect(abs(norm - 1) < 1e-5)
    }

    /// Padding keys are masked: the valid rows do not change when padding is appended.
    @Test func bertPaddingMask() throws {
        let contents = SyntheticModels.contents(SyntheticModels.bertConfig(), tokenizer: SyntheticModels.bertTokenizer())
        let model = try BertModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let tokens = [2, 5, 6, 3]
        let plain = model.hiddenStates(tokens)
        let padded = model.hiddenStates(tokens + [0, 0, 0], validLength: 4)
        let D = model.config.hiddenSize
        #expect(zip(plain, padded.prefix(4 * D)).allSatisfy { abs($0 - $1) < 1e-5 })
    }

    /// The observer sees every quantization point of every layer with the right shapes.
    @Test func observerSeesAllPoints() throws {
        final class Recorder: ActivationObserver {
            var shapes: [String: (Int, Int)] = [:]
            func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
                precondition(values.count == rows * columns)
                shapes[point] = (rows, columns)
            }
        }
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let recorder = Recorder()
        _ = model.forward([1, 2, 3, 4, 5], hooks: ForwardHooks(observer: recorder))
        #expect(recorder.shapes.count == 2 * 6 + 1)
        #expect(recorder.shapes[QuantizationPoints.lmHeadInput]! == (5, 32))  // final-normed states
        #expect(recorder.shapes["layers.1.attention.input"]! == (5, 32))
        #expect(recorder.shapes["layers.1.mlp.down_proj.input"]! == (5, 48))
        #expect(recorder.shapes["layers.0.attention.probs"]! == (5, 5))
        // Every point a linear layer of the structure names is one the forward pass observes.
        #expect(Set(model.structure.linearLayers.map(\.inputPoint)).isSubset(of: Set(recorder.shapes.keys)))
    }
}

@Suite("Evaluation")
struct EvaluationTests {
    @Test func spearmanWithTies() {
        #expect(Statistics.ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1])
        #expect(abs(Statistics.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) - 0.8207826816681233) < 1e-12)
        #expect(Statistics.spearman([1, 2, 3], [3, 2, 1]) == -1)
    }

    @Test func logSoftmaxMatchesDefinition() {
        let logits: [Float] = [1, 2, 3, 0.5]
        let value = Perplexity.logSoftmax(logits, count: 4, target: 2)
        let expected = 3 - Foundation.log(logits.map { Foundation.exp(Double($0)) }.reduce(0, +))
        #expect(abs(value - expected) < 1e-6)
    }

    /// Chunking follows llama-perplexity: floor(tokens / ctx) chunks, ctx/2 - 1 scored per chunk,
    /// and the figure equals exp(mean NLL) computed from the model's own logits.
    @Test func perplexityProtocol() throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        var rng = SeededGenerator(seed: 3)
        let tokens = (0..<43).map { _ in Int.random(in: 0..<256, using: &rng) }
        let result = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, quiet: true)
        #expect(result.chunks == 5)
        #expect(result.tokens == 5 * 3)
        var nll = 0.0
        for c in 0..<5 {
            let chunk = Array(tokens[c * 8 ..< c * 8 + 8])
            let logits = model.forward(chunk)
            for j in 4..<7 {
                let row = Array(logits[j * 260 ..< (j + 1) * 260]).map(Double.init)
                let m = row.max()!
                nll -= row[chunk[j + 1]] - m - Foundation.log(row.map { Foundation.exp($0 - m) }.reduce(0, +))
            }
        }
        #expect(abs(result.perplexity - Foundation.exp(nll / 15)) < 1e-3)
        #expect(try Perplexity.evaluate(model: model, tokens: tokens, context: 8, maxChunks: 2, quiet: true).chunks == 2)
        #expect(throws: PTQError.self) { try Perplexity.evaluate(model: model, tokens: Array(tokens[..<5]), context: 8, quiet: true) }
    }

    /// `--decode` scores the same rows through token-by-token decode: the same perplexity as the
    /// batched pass up to float summation order, and `--decode-kl` compares two decode runs (a
    /// float model has no bf16 decode kernel, so both runs give the same bits: KL exactly 0).
    @Test func perplexityThroughDecode() throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        var rng = SeededGenerator(seed: 5)
        let tokens = (0..<43).map { _ in Int.random(in: 0..<256, using: &rng) }
        let batched = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, quiet: true)
        let decoded = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, decoded: true, quiet: true)
        #expect(decoded.decoded == true && batched.decoded == false)
        #expect(decoded.tokens == batched.tokens && decoded.chunks == 5)
        #expect(abs(decoded.meanNLL - batched.meanNLL) < 1e-5 * abs(batched.meanNLL))
        let half = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, kvCache: .f16, decoded: true, quiet: true)
        #expect(half.kvCache == .f16 && abs(half.perplexity / decoded.perplexity - 1) < 1e-3)

        // compareDecodeNumerics flips the process-wide `LowBit.bf16Decode` and restores it: hold the
        // lock that the tests flipping it hold, or two save/restore pairs can interleave and leave it off.
        TokenKernels.kernelSwitchLock.lock()
        let comparison: DecodeNumericsComparison
        do {
            defer { TokenKernels.kernelSwitchLock.unlock() }
            comparison = try Perplexity.compareDecodeNumerics(model: model, tokens: tokens, context: 8, maxChunks: 3,
                                                              quiet: true)
        }
        #expect(comparison.chunks == 3 && comparison.tokens == 9)
        #expect(comparison.meanKL == 0 && comparison.maxKL == 0 && comparison.top1Agreement == 1)
        #expect(comparison.perplexity == comparison.referencePerplexity)
        let threeChunks = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, maxChunks: 3, decoded: true, quiet: true)
        #expect(abs(comparison.meanNLL - threeChunks.meanNLL) < 1e-12)
        #expect(throws: PTQError.self) { try Perplexity.compareDecodeNumerics(model: model, tokens: Array(tokens[..<5]), context: 8) }
    }

    @Test func stsbFileErrors() throws {
        let path = SyntheticModels.temporaryPath("bad.tsv")
        try "main-captions\tMSRvid\t2012test\t0001\tfive\ta\tb\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect { try STSB.load(path: path) } throws: { ($0 as? PTQError)?.message.contains("line 1") == true }
        let pairs = try STSB.load(path: ProjectPaths.stsDev, split: .evaluation)
        #expect(pairs.count == 750)
        #expect(try STSB.load(path: ProjectPaths.stsDev, split: .calibration).count == 750)
    }
}

@Suite("Half-precision KV cache")
struct HalfKVCacheTests {
    static func model() throws -> LlamaModel {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer(), seed: 7)
        return try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
    }

    static func maxDifference(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max()! }

    /// Prefill and token-by-token decode read the same rounded keys/values: their logits agree as
    /// closely as the float cache's do, while both differ from the float cache's (the rounding is real).
    @Test func decodeMatchesPrefillAndRounds() throws {
        let model = try Self.model()
        let tokens = [1, 2, 3, 250, 4, 5, 6, 7, 8, 9]
        let full = model.forward(tokens, cache: model.makeCache(capacity: 16, precision: .f16))
        let cache = model.makeCache(capacity: 16, precision: .f16)
        #expect(cache.precision == .f16)
        var stepped = model.forward(Array(tokens[..<4]), cache: cache)
        for token in tokens[4...] { stepped += model.forward([token], cache: cache) }
        #expect(cache.count == tokens.count)
        #expect(Self.maxDifference(full, stepped) < 1e-5)
        let exact = model.forward(tokens)
        let difference = Self.maxDifference(full, exact)
        #expect(difference > 0 && difference < 1e-2, "f16 vs f32 cache: max logit difference \(difference)")
        // A float cache reproduces the cache-less pass.
        #expect(Self.maxDifference(model.forward(tokens, cache: model.makeCache(capacity: 16, precision: .f32)), exact) < 1e-5)
    }

    /// Tiled half keys (`TokenKernels.tiledHalfKeys`, the default where the split kernel runs)
    /// against row-major half keys: prefill, decode and the widened (observer) path give the
    /// same logits to the kernels' summation-order tolerance.
    @Test func tiledKeysMatchRowKeys() throws {
        let model = try Self.model()
        let tokens = [1, 2, 3, 250, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
        TokenKernels.kernelSwitchLock.lock()
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let saved = TokenKernels.tiledHalfKeys
        defer { TokenKernels.tiledHalfKeys = saved }
        func run(tiled: Bool) -> (logits: [Float], tiledKeys: Bool) {
            TokenKernels.tiledHalfKeys = tiled
            let cache = model.makeCache(capacity: 21, precision: .f16)
            var logits = model.forward(Array(tokens[..<5]), cache: cache)
            for token in tokens[5...] { logits += model.forward([token], cache: cache) }
            // With an observer the half cache is widened for the general path.
            final class Ignore: ActivationObserver {
                func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {}
            }
            logits += model.forward([21], cache: cache, hooks: ForwardHooks(observer: Ignore()))
            return (logits, cache.tiledKeys)
        }
        let rows = run(tiled: false), tiles = run(tiled: true)
        #expect(!rows.tiledKeys)
        #expect(tiles.tiledKeys == TokenKernels.tilesHalfKeys(dim: model.config.headDim))
        #expect(Self.maxDifference(rows.logits, tiles.logits) < 1e-5)
        #expect(tiles.logits.allSatisfy { $0.isFinite })
    }

    /// Decoding with an observer (or a quantized-probability op) widens the half cache and runs
    /// the general path: the same logits as the fused half kernel, and the observer sees them.
    @Test func observedDecodeMatchesFusedKernel() throws {
        final class Recorder: ActivationObserver {
            var probabilityColumns: [Int] = []
            func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
                if point == QuantizationPoints.attentionProbabilities(0) { probabilityColumns.append(columns) }
            }
        }
        let model = try Self.model()
        let prompt = [5, 6, 7, 8, 9]
        let plain = model.makeCache(capacity: 8, precision: .f16), observed = model.makeCache(capacity: 8, precision: .f16)
        _ = model.forward(prompt, cache: plain)
        _ = model.forward(prompt, cache: observed)
        let recorder = Recorder()
        let fused = model.forward([11], cache: plain)
        let general = model.forward([11], cache: observed, hooks: ForwardHooks(observer: recorder))
        #expect(Self.maxDifference(fused, general) < 1e-5)
        // Layer 0's probabilities, one (1 × 6) row per head.
        #expect(recorder.probabilityColumns == Array(repeating: 6, count: model.config.headCount))
    }

    @Test func cacheBytesAndPerplexity() throws {
        let model = try Self.model()
        #expect(model.kvCacheBytes(positions: 10, precision: .f16) * 2 == model.kvCacheBytes(positions: 10, precision: .f32))
        #expect(model.kvCacheBytes(positions: 10) == model.kvCacheBytes(positions: 10, precision: .f32))
        var rng = SeededGenerator(seed: 3)
        let tokens = (0..<43).map { _ in Int.random(in: 0..<256, using: &rng) }
        let exact = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, quiet: true)
        let half = try Perplexity.evaluate(model: model, tokens: tokens, context: 8, kvCache: .f16, quiet: true)
        #expect(half.kvCache == .f16 && exact.kvCache == .f32)
        #expect(half.perplexity != exact.perplexity && abs(half.perplexity / exact.perplexity - 1) < 1e-3)
    }
}
