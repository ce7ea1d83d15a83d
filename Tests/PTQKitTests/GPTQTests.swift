import Foundation
import Testing
@testable import Calibration
@testable import Kernels
@testable import PTQKit
@testable import Quantizers

@Suite("GPTQ")
struct GPTQTests {
    /// Correlated inputs (a random mixing of a few latent factors plus noise), as real layer
    /// inputs are: GPTQ's error feedback has something to exploit only when H is not diagonal.
    static func inputs(rows: Int, channels: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        let factors = 6
        let mixing = (0..<factors * channels).map { _ in rng.float(in: -1...1) }
        var x = [Float](repeating: 0, count: rows * channels)
        for r in 0..<rows {
            let latent = (0..<factors).map { _ in rng.float(in: -1...1) }
            for c in 0..<channels {
                var v = 0.1 * rng.float(in: -1...1) + (c % 7 == 0 ? 1.5 : 0)
                for f in 0..<factors { v += latent[f] * mixing[f * channels + c] }
                x[r * channels + c] = v
            }
        }
        return x
    }

    static func gram(_ x: [Float], rows: Int, channels: Int) -> [Double] {
        var g = [Double](repeating: 0, count: channels * channels)
        x.withUnsafeBufferPointer { p in g.withUnsafeMutableBufferPointer { BLAS.accumulateGram(p.baseAddress!, rows: rows, columns: channels, into: $0.baseAddress!) } }
        return g
    }

    /// ‖X·Wᵀ − X·Qᵀ‖² / ‖X·Wᵀ‖².
    static func outputError(_ x: [Float], rows: Int, weight: Tensor, quantized: IntegerWeight) -> Double {
        let q = quantized.dequantizedReference()
        let out = weight.shape[0], n = weight.shape[1]
        var error = 0.0, total = 0.0
        for r in 0..<rows {
            for o in 0..<out {
                var a = 0.0, b = 0.0
                for j in 0..<n {
                    a += Double(x[r * n + j]) * Double(weight.data[o * n + j])
                    b += Double(x[r * n + j]) * Double(q[o * n + j])
                }
                error += (a - b) * (a - b)
                total += a * a
            }
        }
        return error / total
    }

    static func weight(out: Int, inp: Int, seed: UInt64) -> Tensor {
        var rng = SeededGenerator(seed: seed)
        return Tensor(shape: [out, inp], data: (0..<out * inp).map { _ in rng.float(in: -0.3...0.3) })
    }

    @Test func inverseCholeskyFactor() throws {
        let n = 40
        let x = Self.inputs(rows: 200, channels: n, seed: 3)
        var a = Self.gram(x, rows: 200, channels: n)
        for i in 0..<n { a[i * n + i] += 0.5 }
        let u = try #require(BLAS.inverseCholeskyUpper(a, n: n))
        // Uᵀ·U·A = I and U is upper triangular.
        var worst = 0.0
        for i in 0..<n {
            for j in 0..<n {
                if i > j { #expect(u[i * n + j] == 0) }
                var s = 0.0
                for k in 0..<n {
                    var inv = 0.0
                    for t in 0..<n { inv += u[t * n + i] * u[t * n + k] }
                    s += inv * a[k * n + j]
                }
                worst = max(worst, abs(s - (i == j ? 1 : 0)))
            }
        }
        #expect(worst < 1e-9)
        // Hand-worked 2×2: A = [[2, 1], [1, 2]], A⁻¹ = [[2, −1], [−1, 2]] / 3 = UᵀU with
        // U = [[√(2/3), −1/√6], [0, √(1/2)]].
        let small = try #require(BLAS.inverseCholeskyUpper([2, 1, 1, 2], n: 2))
        let want = [(2.0 / 3).squareRoot(), -1 / 6.0.squareRoot(), 0, 0.5.squareRoot()]
        for i in 0..<4 { #expect(abs(small[i] - want[i]) < 1e-12, "U[\(i)] = \(small[i]), want \(want[i])") }
        // Singular (rank 1) and indefinite matrices are not positive definite.
        #expect(BLAS.inverseCholeskyUpper([1, 1, 1, 1], n: 2) == nil)
        #expect(BLAS.inverseCholeskyUpper([1, 2, 2, 1], n: 2) == nil)
    }

    /// With H = I there is no error to feed forward: GPTQ is round to nearest, code for code.
    @Test(arguments: [(8, true), (4, false), (3, true)])
    func identityHessianIsRoundToNearest(bits: Int, symmetric: Bool) throws {
        let w = Self.weight(out: 24, inp: 96, seed: 7)
        var h = [Double](repeating: 0, count: 96 * 96)
        for i in 0..<96 { h[i * 96 + i] = 1 }
        for group in [nil, 32] as [Int?] {
            let gptq = GPTQ(bits: bits, symmetric: symmetric, groupSize: group, blockSize: 32, damping: 0,
                            actOrder: false, rangeSearch: nil)
            let result = try gptq.quantize(w, hessian: h, layer: "t")
            let rtn = WeightQuantization.quantize(w, bits: bits, symmetric: symmetric, groupSize: group)
            #expect(result.weight == rtn)
        }
    }

    /// On correlated inputs GPTQ's output error is well below round to nearest's, with and
    /// without act-order, per channel and in groups, and the result does not depend on the
    /// block size (the lazy batch update is exact).
    @Test(arguments: [(4, false, nil), (4, true, 32), (6, false, nil), (3, true, nil)] as [(Int, Bool, Int?)])
    func beatsRoundToNearest(bits: Int, symmetric: Bool, group: Int?) throws {
        let rows = 600, n = 128
        let x = Self.inputs(rows: rows, channels: n, seed: 11)
        let h = Self.gram(x, rows: rows, channels: n)
        let w = Self.weight(out: 40, inp: n, seed: 12)
        let rtn = Self.outputError(x, rows: rows, weight: w,
                                   quantized: WeightQuantization.quantize(w, bits: bits, symmetric: symmetric, groupSize: group))
        for actOrder in [false, true] {
            let small = try GPTQ(bits: bits, symmetric: symmetric, groupSize: group, blockSize: 16, actOrder: actOrder,
                                 rangeSearch: nil).quantize(w, hessian: h, layer: "t")
            let large = try GPTQ(bits: bits, symmetric: symmetric, groupSize: group, blockSize: 128, actOrder: actOrder,
                                 rangeSearch: nil).quantize(w, hessian: h, layer: "t")
            let error = Self.outputError(x, rows: rows, weight: w, quantized: large.weight)
            #expect(error < 0.6 * rtn, "GPTQ \(error) vs RTN \(rtn) (act order \(actOrder))")
            let mismatches = zip(small.weight.codes, large.weight.codes).filter { $0 != $1 }.count
            #expect(mismatches <= small.weight.codes.count / 1000, "block size changed \(mismatches) codes")
        }
    }

    /// A dead input (never non-zero) is quantized to an exact zero and does not break the solve.
    @Test func deadInputs() throws {
        let rows = 300, n = 64
        var x = Self.inputs(rows: rows, channels: n, seed: 4)
        for r in 0..<rows { x[r * n + 5] = 0 }
        let w = Self.weight(out: 16, inp: n, seed: 5)
        let result = try GPTQ(bits: 4, symmetric: false).quantize(w, hessian: Self.gram(x, rows: rows, channels: n), layer: "t")
        for r in 0..<16 { #expect(result.weight.value(row: r, column: 5) == 0) }
        #expect(throws: PTQError.self) { try GPTQ(bits: 4, symmetric: false).quantize(w, hessian: [1, 2], layer: "t") }
    }

    /// A singular Hessian (fewer rows than inputs) without damping gets the growing fallback
    /// damping; one that no damping makes positive definite is an error naming the layer.
    @Test func dampingFallback() throws {
        let n = 16
        let x = Self.inputs(rows: 3, channels: n, seed: 21)
        let w = Self.weight(out: 4, inp: n, seed: 22)
        let result = try GPTQ(bits: 4, symmetric: false, damping: 0).quantize(w, hessian: Self.gram(x, rows: 3, channels: n), layer: "t")
        #expect(result.dampingUsed > 0)
        var negative = [Double](repeating: 0, count: n * n)
        for i in 0..<n { negative[i * n + i] = -1 }
        #expect { try GPTQ(bits: 4, symmetric: false).quantize(w, hessian: negative, layer: "layers/3/mlp/up_proj") } throws: {
            ($0 as? PTQError)?.message.contains("layers/3/mlp/up_proj") == true
                && ($0 as? PTQError)?.message.contains("not positive definite") == true
        }
    }

    /// The Hessian of OutlierTune's folded input (x − z)/s from X·Xᵀ and channel sums equals
    /// the one computed from the transformed rows.
    @Test func shiftedScaledHessian() throws {
        let rows = 50, n = 12
        let x = Self.inputs(rows: rows, channels: n, seed: 9)
        let stats = PointStatistics(channels: n, kinds: [.channelRange, .gram])
        x.withUnsafeBufferPointer { stats.add($0, rows: rows) }
        var rng = SeededGenerator(seed: 2)
        let shift = (0..<n).map { _ in rng.float(in: -1...1) }
        let scales = (0..<n).map { _ in rng.float(in: 0.1...2) }
        let h = try #require(stats.hessian(shift: shift, scales: scales))
        let transformed = (0..<rows * n).map { i in (x[i] - shift[i % n]) / scales[i % n] }
        let want = Self.gram(transformed, rows: rows, channels: n)
        for i in h.indices { #expect(abs(h[i] - want[i]) <= 1e-4 * max(1, abs(want[i]))) }
    }

    @Test func recipeParameters() throws {
        let plan = try OutlierTuneTests.plan("layers/0/attention/q_proj", bits: 8,
                                             parameters: "{gptq: true, gptq_damping: 0.05, gptq_act_order: false}")
        let q = try OutlierTuneQuantizer(plan: plan)
        #expect(q.gptq?.damping == 0.05 && q.gptq?.actOrder == false && q.gptq?.rangeSearch != nil)
        #expect(q.requiredStatistics.contains(.gram))
        #expect(throws: PTQError.self) {
            try OutlierTuneQuantizer(plan: OutlierTuneTests.plan("layers/0/attention/q_proj", bits: 8,
                                                                 parameters: "{gptq_dampening: 0.05}"))
        }
        // Without the Gram statistic the error names the layer and the statistic.
        let layer = OutlierTuneTests.layer(out: 8, inp: 64, bias: false, seed: 1)
        let stats = PointStatistics(channels: 64, kinds: [.channelRange, .sampleMidpoint])
        let x = OutlierTuneTests.activations(rows: 20, channels: 64, seed: 1)
        x.withUnsafeBufferPointer { stats.add($0, rows: 20) }
        #expect { try q.quantize(layer, statistics: stats) } throws: {
            ($0 as? PTQError)?.message.contains("gram") == true && ($0 as? PTQError)?.message.contains("q_proj") == true
        }
    }
}
