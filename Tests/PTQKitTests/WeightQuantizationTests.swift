import Foundation
import Testing
@testable import PTQKit
@testable import Quantizers

/// Round to nearest (`WeightQuantization`), which every integer method builds on, checked
/// against the formulas written out here rather than against its own grid code.
///
/// Convention read from the implementation and its doc comment:
/// - symmetric, b bits, q = 2^(b−1) − 1: scale = absmax / q (1 for an all-zero group),
///   code = clamp(round(w / scale), −q, q) + 2^(b−1);
/// - asymmetric, m = 2^b − 1: the range [lo, hi] = [min(0, min w), max(0, max w)] always holds 0,
///   scale = (hi − lo) / m (1 when hi == lo, i.e. an all-zero group),
///   zero = clamp(round(−lo / scale), 0, m), code = clamp(round(w / scale) + zero, 0, m);
/// - rounding is Swift's `rounded()`: to nearest, ties away from zero (2.5 → 3, −0.5 → −1),
///   not ties-to-even (2.5 → 2) and not floor(x + 0.5) (−0.5 → 0).
@Suite("WeightQuantization (RTN) reference")
struct WeightQuantizationTests {
    static func quantize(_ rows: [[Float]], bits: Int, symmetric: Bool, groupSize: Int? = nil) -> IntegerWeight {
        let tensor = Tensor(shape: [rows.count, rows[0].count], data: rows.flatMap { $0 })
        return WeightQuantization.quantize(tensor, bits: bits, symmetric: symmetric, groupSize: groupSize)
    }

    /// Row-by-row codes of a quantized matrix.
    static func codeRows(_ w: IntegerWeight) -> [[Int]] {
        (0..<w.rows).map { r in (0..<w.columns).map { Int(w.codes[r * w.columns + $0]) } }
    }

    // MARK: Hand-worked cases (values and scales exact in binary, so every tie is a real tie)

    /// int4 symmetric, absmax 7 → scale 7/7 = 1, codes = round(w) + 8.
    @Test func symmetricInt4ByHand() {
        let w = Self.quantize([[7, -3.5, 2.5, -0.5, 0.5, 0.49, 0, -7],
                               // absmax 14 → scale 2: w/2 = 1.25, −2.5, 3, −0.75, 7, 0.5, −1, 0
                               [2.5, -5, 6, -1.5, 14, 1, -2, 0]], bits: 4, symmetric: true)
        #expect(w.scales == [1, 2])
        #expect(w.zeros == nil && w.groupSize == 8 && w.symmetricZero == 8)
        //                      7   −4   3   −1   1   0   0   −7   (ties away from zero)
        #expect(Self.codeRows(w) == [[15, 4, 11, 7, 9, 8, 8, 1],
                                     //  1   −3   3   −1  7   1   −1  0
                                     [9, 5, 11, 7, 15, 9, 7, 8]])
        #expect(w.dequantizedReference() == [7, -4, 3, -1, 1, 0, 0, -7,
                                            2, -6, 6, -2, 14, 2, -2, 0])
    }

    /// int8 symmetric, absmax 127 → scale 1, codes = round(w) + 128; int2 symmetric has q = 1.
    @Test func symmetricInt8AndInt2ByHand() {
        let w8 = Self.quantize([[-127, 63.5, -0.5, 1.25, 0, 126.5]], bits: 8, symmetric: true)
        #expect(w8.scales == [1])
        #expect(Self.codeRows(w8) == [[1, 192, 127, 129, 128, 255]])
        // 2 bits: q = 1, absmax 4 → scale 4; w/4 = 1, −0.5, 0.5, −0.25 → 1, −1, 1, 0; + 2.
        let w2 = Self.quantize([[4, -2, 2, -1]], bits: 2, symmetric: true)
        #expect(w2.scales == [4])
        #expect(Self.codeRows(w2) == [[3, 1, 3, 2]])
    }

    /// int4 asymmetric (m = 15).
    @Test func asymmetricInt4ByHand() {
        let w = Self.quantize([
            // lo −5, hi 10 → scale 1, zero 5; codes round(w) + 5
            [-5, 10, 2.5, -2.5, 0, 0.5, -0.5, 3],
            // lo −2.5, hi 12.5 → scale 1, zero round(2.5) = 3; 12.5 → 13 + 3 = 16 clamps to 15
            [-2.5, 12.5, 0, 1, -1, 4.5, -1.5, 11.5],
            // all positive: lo = 0 (the range holds 0), hi 30 → scale 2, zero 0
            [30, 2, 3, 5, 29, 15, 1, 0.5],
            // all negative: lo −15, hi 0 → scale 1, zero 15
            [-15, -0.5, -1.5, -7, -8.5, -14.5, -0.25, -3],
        ], bits: 4, symmetric: false)
        #expect(w.scales == [1, 1, 2, 1])
        #expect(w.zeros == [5, 3, 0, 15])
        #expect(Self.codeRows(w) == [
            [0, 15, 8, 2, 5, 6, 4, 8],
            [0, 15, 3, 4, 2, 8, 1, 15],
            // w/2 = 15, 1, 1.5, 2.5, 14.5, 7.5, 0.5, 0.25
            [15, 1, 2, 3, 15, 8, 1, 0],
            // round(w) = −15, −1, −2, −7, −9, −15, 0, −3
            [0, 14, 13, 8, 6, 0, 15, 12],
        ])
    }

    /// All-equal rows use the full grid at one end; all-zero rows get scale 1 and decode to 0.
    @Test func allEqualAndZeroRows() {
        let rows: [[Float]] = [[3, 3, 3, 3], [-3, -3, -3, -3], [0, 0, 0, 0], [0.001, 0.001, 0.001, 0.001]]
        let sym = Self.quantize(rows, bits: 4, symmetric: true)
        #expect(Self.codeRows(sym) == [[15, 15, 15, 15], [1, 1, 1, 1], [8, 8, 8, 8], [15, 15, 15, 15]])
        #expect(sym.scales[0] == Float(3) / 7 && sym.scales[1] == Float(3) / 7 && sym.scales[2] == 1)
        let asym = Self.quantize(rows, bits: 4, symmetric: false)
        #expect(Self.codeRows(asym) == [[15, 15, 15, 15], [0, 0, 0, 0], [0, 0, 0, 0], [15, 15, 15, 15]])
        #expect(asym.zeros == [0, 15, 0, 0])
        #expect(asym.scales[0] == Float(3) / 15 && asym.scales[2] == 1)
        for w in [sym, asym] {
            let values = w.dequantizedReference()
            // Equal rows decode to (almost) their value; zero rows to exactly 0.
            for (r, row) in rows.enumerated() {
                for c in 0..<4 { #expect(abs(values[r * 4 + c] - row[c]) <= 1e-6 * max(1, abs(row[c]))) }
            }
            #expect(values[8..<12].allSatisfy { $0 == 0 })
        }
    }

    /// Groups of 4 over 10 columns: two full groups and a last partial group of 2, each with its
    /// own scale (and zero point).
    @Test func perGroupWithPartialLastGroup() {
        let row: [Float] = [7, -1, 2, 0.5, /**/ 1, 3.5, -14, 2, /**/ 0.25, -0.75]
        let sym = Self.quantize([row], bits: 4, symmetric: true, groupSize: 4)
        #expect(sym.groupSize == 4 && sym.groupsPerRow == 3)
        // absmax 7, 14, 0.75 → scales 1, 2, 0.75/7
        #expect(sym.scales == [1, 2, Float(0.75) / 7])
        // group 3: w/scale = 0.25·7/0.75 = 2.33 → 2, −7 → −7
        #expect(Self.codeRows(sym) == [[15, 7, 10, 9, /**/ 9, 10, 1, 9, /**/ 10, 1]])
        let asym = Self.quantize([row], bits: 4, symmetric: false, groupSize: 4)
        // [−1, 7] → 8/15, zero round(1.875) = 2; [−14, 3.5] → 17.5/15, zero 12; [−0.75, 0.25] → 1/15, zero round(11.25) = 11
        #expect(asym.scales == [Float(8) / 15, Float(17.5) / 15, Float(1) / 15])
        #expect(asym.zeros == [2, 12, 11])
        #expect(Self.codeRows(asym)[0][8...] == [15, 0])
    }

    // MARK: Random matrices against the direct formula

    static func referenceCodes(_ w: [Float], rows: Int, columns: Int, bits: Int, symmetric: Bool,
                               group: Int) -> (codes: [Int], scales: [Float], zeros: [Float]) {
        var codes: [Int] = [], scales: [Float] = [], zeros: [Float] = []
        let q = Float((1 << (bits - 1)) - 1), m = Float((1 << bits) - 1), half = Float(1 << (bits - 1))
        for r in 0..<rows {
            var rowCodes: [Int] = []
            for start in stride(from: 0, to: columns, by: group) {
                let values = Array(w[(r * columns + start)..<(r * columns + min(columns, start + group))])
                if symmetric {
                    let absMax = values.map(abs).max()!
                    let scale = absMax == 0 ? 1 : absMax / q
                    scales.append(scale)
                    rowCodes += values.map { Int(min(max(($0 / scale).rounded(.toNearestOrAwayFromZero), -q), q) + half) }
                } else {
                    let lo = min(0, values.min()!), hi = max(0, values.max()!)
                    let scale = hi == lo ? 1 : (hi - lo) / m
                    let zero = min(max((-lo / scale).rounded(.toNearestOrAwayFromZero), 0), m)
                    scales.append(scale)
                    zeros.append(zero)
                    rowCodes += values.map { Int(min(max(($0 / scale).rounded(.toNearestOrAwayFromZero) + zero, 0), m)) }
                }
            }
            codes += rowCodes
        }
        return (codes, scales, zeros)
    }

    @Test(arguments: [2, 3, 4, 6, 8])
    func randomMatricesMatchTheFormula(bits: Int) {
        var rng = SeededGenerator(seed: UInt64(100 + bits))
        let rows = 9, columns = 23
        for symmetric in [true, false] {
            for groupSize in [nil, 4, 8] as [Int?] {
                // Mixed magnitudes, some rows all positive or all negative, one zero row.
                var data = (0..<rows * columns).map { i -> Float in
                    let r = i / columns
                    let v = rng.float(in: -1...1) * Float(1 << (r % 4))
                    return r == 5 ? abs(v) : r == 6 ? -abs(v) : v
                }
                for c in 0..<columns { data[3 * columns + c] = 0 }
                let w = WeightQuantization.quantize(Tensor(shape: [rows, columns], data: data), bits: bits,
                                                    symmetric: symmetric, groupSize: groupSize)
                let group = groupSize ?? columns
                let ref = Self.referenceCodes(data, rows: rows, columns: columns, bits: bits, symmetric: symmetric, group: group)
                #expect(w.codes.map(Int.init) == ref.codes, "int\(bits) sym=\(symmetric) g=\(group)")
                #expect(w.scales == ref.scales)
                #expect(symmetric ? w.zeros == nil : w.zeros! == ref.zeros)
                // Independently of the formula: each code is a nearest grid point, so the error is
                // at most half a step wherever w lies inside the representable range.
                let values = w.dequantizedReference()
                for r in 0..<rows {
                    for c in 0..<columns {
                        let s = w.scales[r * w.groupsPerRow + c / group]
                        // (Asymmetric: the rounded zero point moves the grid ends by at most s/2
                        // inward, so even a clamped end value stays within s/2.)
                        let x = data[r * columns + c]
                        #expect(abs(values[r * columns + c] - x) <= s / 2 * (1 + 1e-5) + 1e-7,
                                "int\(bits) sym=\(symmetric) g=\(group) [\(r),\(c)]")
                    }
                }
            }
        }
    }

    // MARK: SmoothQuant

    static func smoothQuantPlan(alpha: Double, bits: Int) throws -> LayerPlan {
        let recipe = try Recipe.parse("""
        name: t
        model: llama
        scheme:
          method: smoothquant
          weight: {bits: \(bits)}
          activation: {bits: \(bits), granularity: per_tensor}
          parameters: {alpha: \(alpha)}
        """, source: "t.yaml")
        return try recipe.plan(for: SyntheticModels.llamaConfig()).first { $0.name == "layers/0/mlp/up_proj" }!
    }

    /// s_j = max|X_j|^α / max|W_:,j|^(1−α); W' = W·diag(s) quantized per row; x' = x/s with one
    /// static scale max_j(max|X_j|/s_j)/(2^(b−1)−1). In float (x/s)·W'ᵀ = x·Wᵀ, and the quantized
    /// layer stays close to the float one.
    @Test(arguments: [0.5, 0.8])
    func smoothQuantScalesAndIdentity(alpha: Double) throws {
        let inp = 48, out = 6, tokens = 30
        var layer = OutlierTuneTests.layer(out: out, inp: inp, bias: true, seed: 21)
        layer.name = "layers/0/mlp/up_proj"
        let x = OutlierTuneTests.activations(rows: tokens, channels: inp, seed: 22)
        let stats = PointStatistics(channels: inp, kinds: [.channelRange])
        x.withUnsafeBufferPointer { stats.add($0, rows: tokens) }
        let quantizer = try SmoothQuantQuantizer(plan: try Self.smoothQuantPlan(alpha: alpha, bits: 8))
        #expect(quantizer.requiredStatistics == [.channelRange])
        let q = try quantizer.quantize(layer, statistics: stats)
        let a = try #require(q.activation)
        let s = try #require(a.channelScales)
        #expect(q.method == "smoothquant" && a.granularity == .perTensor && a.bits == 8 && q.bias! == layer.bias!)

        // The scales, from the data itself (not from the statistics object).
        var xMax = [Double](repeating: 0, count: inp), wMax = xMax
        for t in 0..<tokens { for j in 0..<inp { xMax[j] = max(xMax[j], Double(abs(x[t * inp + j]))) } }
        for o in 0..<out { for j in 0..<inp { wMax[j] = max(wMax[j], Double(abs(layer.weight.data[o * inp + j]))) } }
        for j in 0..<inp {
            let expected = pow(xMax[j], alpha) / pow(wMax[j], 1 - alpha)
            #expect(abs(Double(s[j]) - expected) <= 1e-5 * expected, "s[\(j)]")
        }
        // The outlier channel (3, spread 40) gets the largest divisor.
        #expect(s.firstIndex(of: s.max()!) == 3)
        let smoothedMax = (0..<inp).map { xMax[$0] / Double(s[$0]) }.max()!
        #expect(abs(Double(a.scale!) - smoothedMax / 127) <= 1e-5 * smoothedMax / 127)
        // Smoothing evens out the channels: the smoothed activation range is far below the outlier's.
        #expect(smoothedMax < 0.5 * xMax[3])

        // Weights: W·diag(s), quantized symmetric per output row.
        var folded = layer.weight
        for o in 0..<out { for j in 0..<inp { folded.data[o * inp + j] = layer.weight.data[o * inp + j] * s[j] } }
        #expect(q.weight == .integer(WeightQuantization.quantize(folded, bits: 8, symmetric: true, groupSize: nil)))
        // The smoothing identity in float.
        for t in 0..<tokens {
            for o in 0..<out {
                var direct = 0.0, smoothed = 0.0
                for j in 0..<inp {
                    direct += Double(x[t * inp + j]) * Double(layer.weight.data[o * inp + j])
                    smoothed += Double(x[t * inp + j] / s[j]) * Double(folded.data[o * inp + j])
                }
                #expect(abs(direct - smoothed) <= 1e-4 * max(1, abs(direct)))
            }
        }
        // The packed runtime equals the fake-quant simulation, and both approximate the float layer.
        let runtime = try IntegerLinear(q)
        var y = [Float](repeating: 0, count: tokens * out), simulated = y, reference = y
        runtime.forward(x, rows: tokens, into: &y)
        SimulatedLinear(q).forward(x, rows: tokens, into: &simulated)
        FloatLinear(weight: layer.weight, bias: layer.bias).forward(x, rows: tokens, into: &reference)
        let scale = reference.map(abs).max()!
        #expect(zip(y, simulated).allSatisfy { abs($0 - $1) <= 1e-4 * scale })
        let error = zip(y, reference).map { abs($0 - $1) }.max()!
        // Measured max error / max |y|: 0.0085 (α = 0.5), 0.0080 (α = 0.8); bound 2.5× that.
        #expect(error <= 0.02 * scale, "α=\(alpha): max error \(error / scale) of max |y|")

        #expect { try quantizer.quantize(layer, statistics: nil) } throws: {
            ($0 as? PTQError)?.message.contains("up_proj") == true
        }
    }
}
