import Foundation
import Testing
@testable import Kernels
@testable import PTQKit
@testable import Quantizers

@Suite("LLMFP4")
struct LLMFP4Tests {
    static let e2m1 = FloatingPointFormat(exponentBits: 2, mantissaBits: 1)
    static let e3m0 = FloatingPointFormat(exponentBits: 3, mantissaBits: 0)
    static let e1m2 = FloatingPointFormat(exponentBits: 1, mantissaBits: 2)
    static let e4m3 = FloatingPointFormat(exponentBits: 4, mantissaBits: 3)
    static let allTested: [FloatingPointFormat] = [e2m1, e3m0, e1m2, e4m3,
        FloatingPointFormat(exponentBits: 5, mantissaBits: 2), FloatingPointFormat(exponentBits: 1, mantissaBits: 6),
        FloatingPointFormat(exponentBits: 3, mantissaBits: 2), FloatingPointFormat(exponentBits: 2, mantissaBits: 3)]

    // MARK: the format

    @Test func gridEnumeration() {
        #expect(Self.e2m1.positiveGrid == [0, 1, 2, 3, 4, 6, 8, 12])
        #expect(Self.e3m0.positiveGrid == [0, 2, 4, 8, 16, 32, 64, 128])
        #expect(Self.e1m2.positiveGrid == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5])
        #expect(Self.e4m3.maxValue == 61440)
        // 15 distinct values per 4-bit format (±0 share a value), integers of the smallest step.
        for f in [Self.e2m1, Self.e3m0, Self.e1m2] {
            #expect(Set(f.codeValues).count == 15)
            #expect((0..<16).map { f.integerValue(code: $0) }.map(abs).max()! <= 64)
        }
        #expect((0..<8).map { Self.e2m1.integerValue(code: $0) } == [0, 1, 2, 3, 4, 6, 8, 12])
        #expect(FloatingPointFormat.searchCandidates(bits: 8).map(\.description)
                == ["fp8 e5m2", "fp8 e4m3", "fp8 e3m4", "fp8 e2m5", "fp8 e1m6"])
        #expect(FloatingPointFormat.searchCandidates(bits: 4).map(\.description) == ["fp4 e3m0", "fp4 e2m1", "fp4 e1m2"])
        #expect(FloatingPointFormat(formatName: "fp4 e2m1") == Self.e2m1)
        #expect(FloatingPointFormat(formatName: "fp4 e4m3") == nil)
        #expect(FloatingPointFormat(name: "E4M3") == Self.e4m3)
    }

    /// Every code decodes to a grid value whose code is the same code (−0 aside).
    @Test(arguments: allTested)
    func codesRoundTrip(format: FloatingPointFormat) {
        for code in 0..<format.codeCount {
            let v = format.value(code: code)
            #expect(format.roundToGrid(v) == v)
            let back = format.code(ofGridValue: v)
            if v == 0 { #expect(back & 0x7F == 0 || back == 0) } else { #expect(Int(back) == code) }
        }
    }

    /// Q is idempotent, and Q_b̃(x) = 2^(−b̃)·Q_0(2^b̃·x) against the paper's formula
    /// (p = max(⌊log2|x_c| + b̃⌋, 1), s = 2^(p − m − b̃), Q = s·round(x_c / s)), in double.
    @Test(arguments: allTested)
    func quantizerMatchesPaperFormula(format: FloatingPointFormat) {
        var rng = SeededGenerator(seed: 7)
        let m = Double(format.mantissaBits)
        for trial in 0..<400 {
            let bias = trial % 4 == 0 ? Double(Int(rng.float(in: -6...6))) : Double(rng.float(in: -6...9))
            let alpha = FloatingPointFormat.scale(bias: bias)
            let x = rng.float(in: -1...1) * powf(2, rng.float(in: -12...14))
            let q = format.quantize(x, scale: alpha)
            #expect(format.quantize(q, scale: alpha) == q)
            // Paper form in double, with b̃ from the stored scale.
            let b = -log2(Double(alpha))
            let maxval = (2 - pow(2, -m)) * pow(2, pow(2, Double(format.exponentBits)) - 1 - b)
            let xc = min(max(Double(x), -maxval), maxval)
            let p = xc == 0 ? 1 : max(floor(log2(abs(xc)) + b), 1)
            let s = pow(2, p - m - b)
            let expected = s * (xc / s).rounded(.toNearestOrEven)
            #expect(abs(Double(q) - expected) <= 1e-6 * max(abs(expected), Double(alpha)), "x \(x) bias \(bias)")
            if bias == bias.rounded() {
                // Integer biases: the scaling identity holds bit for bit.
                #expect(q == Float(pow(2, -bias)) * format.roundToGrid(x * Float(pow(2, bias))))
            }
        }
    }

    /// The C activation quantizer (AVX2 and scalar twin) equals the Swift reference bit for bit,
    /// with edge values: zero, ±max, beyond max, ties, subnormals, NaN.
    @Test(arguments: [Self.e2m1, Self.e4m3, Self.e1m2, FloatingPointFormat(exponentBits: 5, mantissaBits: 2)])
    func activationKernelIsBitExact(format: FloatingPointFormat) {
        var rng = SeededGenerator(seed: 11)
        let rows = 5, cols = 37
        let alpha: Float = 0.37
        var x = (0..<rows * cols).map { _ in rng.float(in: -1...1) * powf(2, rng.float(in: -10...8)) }
        let edges: [Float] = [0, -0, format.maxValue * alpha, -format.maxValue * alpha, 1e30, -1e30, 2.5 * alpha,
                              3 * alpha, Float.leastNormalMagnitude / 8, .nan, 0.5 * alpha, 1.5 * alpha]
        for (i, e) in edges.enumerated() { x[i * 3] = e }
        let channel = (0..<cols).map { Float(sign: .plus, exponent: -($0 % 4), significand: 1) }
        for cs in [nil, channel] {
            var fast = [Float](repeating: 0, count: x.count), ref = fast
            withOptionalPointer(cs) { c in
                MiniFloat.quantizeRows(x, rows: rows, columns: cols, channelScales: c, alpha: alpha,
                                       exponentBits: format.exponentBits, mantissaBits: format.mantissaBits, into: &fast)
                MiniFloat.quantizeRowsReference(x, rows: rows, columns: cols, channelScales: c, alpha: alpha,
                                                exponentBits: format.exponentBits, mantissaBits: format.mantissaBits, into: &ref)
            }
            for i in 0..<x.count {
                let j = i % cols
                var t = x[i]
                if let cs { t = t / cs[j] }
                var expected = format.roundToGrid(t / alpha) * alpha
                if let cs { expected = expected * cs[j] }
                #expect(fast[i].bitPattern == expected.bitPattern, "x \(x[i])")
                #expect(ref[i].bitPattern == expected.bitPattern, "x \(x[i])")
            }
        }
    }

    /// FPQ's pre-shifted exponent bias: rounding x·2^(k_j) on the per-tensor grid 2^(−ρ) and
    /// multiplying by 2^(−k_j) is bit for bit per-channel fake quantization with bias ρ + k_j.
    @Test func perChannelIdentity() {
        var rng = SeededGenerator(seed: 5)
        let cols = 24
        let absMax = (0..<cols).map { j in Float(j % 6 == 0 ? 40 : 1) * rng.float(in: 0.05...2) }
        for format in [Self.e2m1, Self.e4m3, Self.e3m0] {
            for gamma in [0.4, 0.9, 1.1] {
                let c = ActivationCandidate(format: format, gamma: gamma, channelAbsMax: absMax, perChannel: true)
                let k = c.offsets!
                #expect(k.allSatisfy { (0...(1 << format.exponentBits) - 1).contains($0) })
                let x = (0..<8 * cols).map { i in absMax[i % cols] * rng.float(in: -1.3...1.3) }
                let y = c.apply(x, rows: 8, columns: cols)
                for i in 0..<x.count {
                    let alphaJ = c.scale * Float(sign: .plus, exponent: -k[i % cols], significand: 1)
                    #expect(y[i].bitPattern == format.quantize(x[i], scale: alphaJ).bitPattern)
                }
            }
        }
        // The widest channel gets k = 0; channels 2^k narrower get larger offsets.
        let c = ActivationCandidate(format: Self.e2m1, gamma: 1, channelAbsMax: [64, 8, 1, 0.01, 0], perChannel: true)
        #expect(c.offsets! == [0, 3, 3, 3, 3])
        let d = ActivationCandidate(format: Self.e4m3, gamma: 1, channelAbsMax: [64, 8, 1, 0.01, 0], perChannel: true)
        #expect(d.offsets! == [0, 3, 6, 13, 15])
    }

    // MARK: the search

    /// The Gram-form row error equals the brute-force output error of each row.
    @Test func gramFormRowErrorEqualsBruteForce() {
        var rng = SeededGenerator(seed: 9)
        let n = 200, cols = 40, rows = 12
        let x = (0..<n * cols).map { i in (i % cols == 3 ? 8 : 1) * rng.float(in: -1...1) }
        let w = (0..<rows * cols).map { _ in rng.float(in: -0.3...0.3) }
        let act = ActivationCandidate(format: Self.e2m1, gamma: 1, channelAbsMax: (0..<cols).map { $0 == 3 ? 8 : 1 },
                                      perChannel: true)
        let xq = act.apply(x, rows: n, columns: cols)
        let search = WeightSearch(x: x, xq: xq, tokens: n, weight: w, rows: rows, columns: cols, groupSize: cols)
        let scales = LLMFP4Quantizer.initialScales(w, rows: rows, columns: cols, groupSize: 8, format: Self.e2m1, gamma: 0.9)
        let q = FloatingPointWeight.quantize(w, rows: rows, columns: cols, groupSize: 8, format: Self.e2m1, scales: scales)
            .dequantizedReference()
        let d = zip(q, w).map { $0 - $1 }
        let gram = search.rowErrors(deltas: d)
        for o in 0..<rows {
            var brute = 0.0, constant = 0.0
            for t in 0..<n {
                var yq = 0.0, y = 0.0, yc = 0.0
                for j in 0..<cols {
                    yq += Double(xq[t * cols + j]) * Double(q[o * cols + j])
                    y += Double(x[t * cols + j]) * Double(w[o * cols + j])
                    yc += Double(xq[t * cols + j] - x[t * cols + j]) * Double(w[o * cols + j])
                }
                brute += (yq - y) * (yq - y)
                constant += yc * yc
            }
            #expect(abs(gram[o] + constant - brute) <= 1e-4 * brute, "row \(o)")
        }
    }

    static func plan(weight: String, activation: String?, parameters: String) throws -> LayerPlan {
        let recipe = try Recipe.parse("""
        name: t
        model: llama
        scheme:
          method: llmfp4
          weight: \(weight)
        \(activation.map { "  activation: \($0)" } ?? "")
          parameters: \(parameters)
        """, source: "t.yaml")
        return try recipe.plan(for: SyntheticModels.llamaConfig()).first { $0.name == "layers/0/mlp/gate_proj" }!
    }

    static func statistics(channels: Int, rows: Int, seed: UInt64, outlierChannel: Int? = 5) -> PointStatistics {
        let stats = PointStatistics(channels: channels, kinds: [.channelRange, .reservoir], reservoirCapacity: 256)
        var rng = SeededGenerator(seed: seed)
        let x = (0..<rows * channels).map { i in (i % channels == outlierChannel ? 30 : 1) * rng.float(in: -1...1) * rng.float(in: 0...1) }
        x.withUnsafeBufferPointer { stats.add($0, rows: rows) }
        return stats
    }

    /// The search never does worse than MinMax on the output error it optimises, with and
    /// without groups, and the emitted layer records what it chose.
    @Test(arguments: ["channel", "32"])
    func searchBeatsMinMax(group: String) throws {
        var rng = SeededGenerator(seed: 3)
        let cols = 64, rows = 48
        let w = (0..<rows * cols).map { _ in rng.float(in: -1...1) * powf(rng.float(in: 0...1), 3) * 0.3 }
        let layer = LinearLayer(name: "layers/0/mlp/gate_proj", weight: Tensor(shape: [rows, cols], data: w), bias: nil,
                                inputPoint: "layers.0.mlp.input", role: .mlpInputProjection)
        let stats = Self.statistics(channels: cols, rows: 256, seed: 4)
        func outputError(_ q: QuantizedLinear) -> Double {
            let x = Array(stats.reservoir!.prefix(stats.reservoirCount * cols))
            let sim = SimulatedLinear(q)
            var y = [Float](repeating: 0, count: stats.reservoirCount * rows)
            sim.forward(x, rows: stats.reservoirCount, into: &y)
            let ref = LLMFP4Quantizer.product(x, rows: stats.reservoirCount, weight: w, out: rows, columns: cols)
            return zip(y, ref).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
        }
        let weight = "{bits: 4, group_size: \(group)}", act = "{bits: 4, granularity: per_tensor}"
        let minmax = try LLMFP4Quantizer(plan: Self.plan(weight: weight, activation: act, parameters: "{setting: minmax}"))
        let fast = try LLMFP4Quantizer(plan: Self.plan(weight: weight, activation: act,
                                                       parameters: "{setting: fast, intervals: 20, rounds: 2}"))
        #expect(minmax.requiredStatistics == [.channelRange] && fast.requiredStatistics == [.channelRange, .reservoir])
        let qMinMax = try minmax.quantize(layer, statistics: stats)
        let qFast = try fast.quantize(layer, statistics: stats)
        #expect(qMinMax.weight.formatName == "fp4 e2m1")
        #expect(qMinMax.activation?.channelScales == nil && qFast.activation?.channelScales?.count == cols)
        #expect(qFast.details["weight_format"] == qFast.weight.formatName)
        let e0 = outputError(qMinMax), e1 = outputError(qFast)
        #expect(e1 < 0.8 * e0, "search \(e1) vs minmax \(e0)")
    }

    /// `tensor_candidates` adds the FPQ baseline's per-tensor candidates to the k_j search and the
    /// baseline's complete search as one more candidate: its output error is the lower of FPQ's and
    /// the baseline's, so never above either; `max_offset` lifts the 2^e − 1 cap on k_j.
    @Test func tensorCandidatesAndOffsetCap() throws {
        var rng = SeededGenerator(seed: 5)
        let cols = 64, rows = 48
        let w = (0..<rows * cols).map { _ in rng.float(in: -1...1) * 0.2 }
        let layer = LinearLayer(name: "layers/0/mlp/gate_proj", weight: Tensor(shape: [rows, cols], data: w), bias: nil,
                                inputPoint: "layers.0.mlp.input", role: .mlpInputProjection)
        let stats = Self.statistics(channels: cols, rows: 256, seed: 6)
        let weight = "{bits: 4, group_size: channel}", act = "{bits: 4, granularity: per_tensor}"
        func run(_ parameters: String) throws -> QuantizedLinear {
            try LLMFP4Quantizer(plan: Self.plan(weight: weight, activation: act, parameters: parameters))
                .quantize(layer, statistics: stats)
        }
        let fpq = try run("{setting: fast, intervals: 20}")
        let both = try run("{setting: fast, intervals: 20, tensor_candidates: true}")
        let baseline = try run("{setting: fast, intervals: 20, per_channel: false}")
        let mse = { (q: QuantizedLinear) in Double(q.details["output_mse_per_round"]!)! }
        #expect(mse(both) <= mse(fpq))
        #expect(mse(both) <= mse(baseline))
        // The baseline candidate is the baseline's own search, not an approximation of it.
        #expect(both.details["baseline_output_mse"] == baseline.details["output_mse_per_round"])
        #expect(mse(both) == min(Double(both.details["fpq_output_mse"]!)!, Double(both.details["baseline_output_mse"]!)!))
        #expect(both.details["activation_offsets"] != nil && fpq.details["activation_offsets"] == nil)
        #expect((both.activation?.channelScales == nil) == both.details["activation_offsets"]!.hasPrefix("none"))
        // A second input without the outlier channel: again the kept pair is the lower of the two.
        let flat = Self.statistics(channels: cols, rows: 256, seed: 9, outlierChannel: nil)
        let q = try LLMFP4Quantizer(plan: Self.plan(weight: weight, activation: act,
                                                    parameters: "{setting: fast, intervals: 20, tensor_candidates: true}"))
            .quantize(layer, statistics: flat)
        let kept = Double(q.details["output_mse_per_round"]!)!
        #expect(kept == min(Double(q.details["fpq_output_mse"]!)!, Double(q.details["baseline_output_mse"]!)!))
        // Channel 5 is 30× wider than the rest: E2M1's cap k_j ≤ 3 binds, max_offset 6 does not.
        #expect(fpq.details["k_max"] == "3")
        let wide = try run("{setting: fast, intervals: 20, max_offset: 6}")
        #expect(Int(wide.details["k_max"]!)! > 3 && Int(wide.details["k_max"]!)! <= 6)
        // offset_rounding: floor never clips a channel's absmax (ρ + k_j ≤ b_j); the code's separate
        // rounding does for some channels at this γ.
        let absMax = (0..<cols).map { j in Float(j == 5 ? 30 : 1) * (0.2 + Float(j % 7) * 0.11) }
        func clipped(_ floor: Bool) -> Int {
            let c = ActivationCandidate(format: Self.e4m3, gamma: 0.93, channelAbsMax: absMax, perChannel: true,
                                        floorOffsets: floor)
            return (0..<cols).filter { j in
                Self.e4m3.maxValue * c.scale * Float(sign: .plus, exponent: -c.offsets![j], significand: 1) < absMax[j] * 0.9999
            }.count
        }
        #expect(clipped(true) == 0)
        #expect(clipped(false) > 0)
        for bad in ["{per_channel: false, offset_rounding: floor}", "{offset_rounding: nearest}",
                    "{per_channel: false, tensor_candidates: true}", "{per_channel: false, max_offset: 4}", "{max_offset: 31}"] {
            do {
                _ = try run(bad)
                Issue.record("accepted \(bad)")
            } catch {
                let key = ["offset_rounding", "max_offset", "tensor_candidates"].first { bad.contains($0) }!
                #expect("\(error)".contains(key))
            }
        }
    }

    /// `holdout` (beyond the paper): 0 reproduces the default bit for bit; h > 0 searches the first
    /// rows only (b_j included) and scores the choices on exactly the held-out rows.
    @Test func holdoutScoresTheHeldOutRows() throws {
        var rng = SeededGenerator(seed: 11)
        let cols = 64, rows = 48, n = 256
        let w = (0..<rows * cols).map { _ in rng.float(in: -1...1) * 0.2 }
        let layer = LinearLayer(name: "layers/0/mlp/gate_proj", weight: Tensor(shape: [rows, cols], data: w), bias: nil,
                                inputPoint: "layers.0.mlp.input", role: .mlpInputProjection)
        let stats = Self.statistics(channels: cols, rows: n, seed: 12)
        let weight = "{bits: 4, group_size: channel}", act = "{bits: 4, granularity: per_tensor}"
        func run(_ parameters: String, _ s: PointStatistics) throws -> QuantizedLinear {
            try LLMFP4Quantizer(plan: Self.plan(weight: weight, activation: act, parameters: parameters)).quantize(layer, statistics: s)
        }
        func same(_ a: QuantizedLinear, _ b: QuantizedLinear) -> Bool {
            a.weight == b.weight && a.activation == b.activation
        }
        let base = "setting: fast, intervals: 20, tokens: 64, tensor_candidates: true"
        let plain = try run("{\(base)}", stats)
        let zero = try run("{\(base), holdout: 0}", stats)
        #expect(same(plain, zero))
        let timeless = { (q: QuantizedLinear) in q.details.filter { !$0.key.contains("seconds") } }
        #expect(timeless(plain) == timeless(zero) && zero.details["holdout_rows"] == nil)

        // 0.5 of 256 rows: rows 0..<128 searched, 128..<256 held out, the first 64 (= tokens) of them scored.
        let held = try run("{\(base), holdout: 0.5}", stats)
        #expect(held.details["search_tokens"] == "128 weight, 64 activation")
        #expect(held.details["holdout_rows"] == "64 of 128 held out (reservoir rows 128..<192)")
        let x = Array(stats.reservoir!.prefix(n * cols))
        let xh = Array(x[(128 * cols)..<(192 * cols)])
        var y = [Float](repeating: 0, count: 64 * rows)
        SimulatedLinear(held).forward(xh, rows: 64, into: &y)
        let reference = LLMFP4Quantizer.product(xh, rows: 64, weight: w, out: rows, columns: cols)
        let brute = zip(y, reference).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) } / Double(64 * rows)
        let reported = Double(held.details["holdout_output_mse"]!)!
        #expect(abs(reported - brute) <= 1e-4 * brute, "reported \(reported) vs brute force \(brute)")
        // The kept pair is the one with the lower held-out error (ties keep k_j).
        let fpqHeldOut = Double(held.details["fpq_holdout_mse"]!)!, baselineHeldOut = Double(held.details["baseline_holdout_mse"]!)!
        #expect(reported == min(fpqHeldOut, baselineHeldOut))
        #expect((held.activation?.channelScales != nil) == (fpqHeldOut <= baselineHeldOut))

        // The search never sees the held-out rows: with one activation format (no held-out choice)
        // replacing them with 50× wider rows — and widening the statistics' channel range to them, as
        // calibration would — changes nothing but the held-out score. Without holdout the same
        // change moves k_j (the statistics' range feeds b_j), so this comparison can fail.
        let wide = PointStatistics(channels: cols, kinds: [.channelRange, .reservoir], reservoirCapacity: n)
        let x2 = (0..<(n * cols)).map { i in i < 128 * cols ? x[i] : x[i] * (i % cols == 9 ? 50 : 1) }
        x2.withUnsafeBufferPointer { wide.add($0, rows: n) }
        let single = "setting: fast, intervals: 20, tokens: 64, activation_format: e2m1"
        let a = try run("{\(single), holdout: 0.5}", stats), b = try run("{\(single), holdout: 0.5}", wide)
        #expect(same(a, b))
        #expect(a.details["holdout_output_mse"] != b.details["holdout_output_mse"])
        #expect(try !same(run("{\(single)}", stats), run("{\(single)}", wide)))

        for bad in ["{setting: minmax, holdout: 0.5}", "{\(base), holdout: 0.95}"] {
            do {
                _ = try run(bad, stats)
                Issue.record("accepted \(bad)")
            } catch {
                #expect("\(error)".contains("holdout"))
            }
        }
        // Too few rows for the split: a clear error naming the layer and the point.
        let tiny = Self.statistics(channels: cols, rows: 20, seed: 13)
        do {
            _ = try run("{\(base), holdout: 0.5}", tiny)
            Issue.record("accepted a 10-row search")
        } catch {
            #expect("\(error)".contains("holdout") && "\(error)".contains("layers.0.mlp.input"))
        }
    }

    /// `token_selection: outliers` keeps the rare rows that hold a channel's absmax (which the first
    /// rows miss) and fills up with the first rows, in reservoir order.
    @Test func outlierRowsKeepTheRareMaxima() {
        let columns = 4, n = 40
        var x = [Float](repeating: 0.5, count: n * columns)
        x[33 * columns + 2] = 100  // a massive activation far past the first rows
        x[21 * columns + 0] = -7
        x[10 * columns + 1] = 1
        x[10 * columns + 3] = 1
        let rows = LLMFP4Quantizer.outlierRows(x, rows: n, columns: columns, count: 6)
        #expect(rows.count == 6 * columns)
        #expect(rows.contains(100) && rows.contains(-7) && rows.contains(1))
        // The three rows that hold a channel's absmax (10, 21, 33), then the first rows 0, 1, 2.
        #expect(Array(rows.suffix(2 * columns)) == Array(x[(21 * columns)..<(22 * columns)]) + Array(x[(33 * columns)..<(34 * columns)]))
        #expect(LLMFP4Quantizer.outlierRows(x, rows: n, columns: columns, count: 40) == x)
    }

    /// `objective: token_relative` (beyond the paper) weights each token's output error by the
    /// inverse mean square of its reference output: on a reservoir where a few tokens are 40× the
    /// rest, each objective's search wins on its own measure, and the weights are normalised.
    @Test func tokenRelativeObjective() throws {
        var rng = SeededGenerator(seed: 8)
        let cols = 48, rows = 40, n = 256
        let w = (0..<rows * cols).map { _ in rng.float(in: -1...1) * 0.2 }
        let layer = LinearLayer(name: "layers/0/mlp/gate_proj", weight: Tensor(shape: [rows, cols], data: w), bias: nil,
                                inputPoint: "layers.0.mlp.input", role: .mlpInputProjection)
        let stats = PointStatistics(channels: cols, kinds: [.channelRange, .reservoir], reservoirCapacity: n)
        let x = (0..<n * cols).map { i in (i / cols % 37 == 3 ? 40 : 1) * rng.float(in: -1...1) * rng.float(in: 0...1) }
        x.withUnsafeBufferPointer { stats.add($0, rows: n) }
        let reference = LLMFP4Quantizer.product(x, rows: n, weight: w, out: rows, columns: cols)
        let weights = LLMFP4Quantizer.tokenWeights(reference: reference, tokens: n, out: rows)
        #expect(abs(weights.reduce(0, +) / Double(n) - 1) < 1e-9)
        #expect(weights[3] < 0.01 * weights[0])
        func errors(_ q: QuantizedLinear) -> (plain: Double, relative: Double) {
            var y = [Float](repeating: 0, count: n * rows)
            SimulatedLinear(q).forward(x, rows: n, into: &y)
            var plain = 0.0, relative = 0.0
            for t in 0..<n {
                var e = 0.0
                for o in 0..<rows { let d = Double(y[t * rows + o] - reference[t * rows + o]); e += d * d }
                plain += e
                relative += weights[t] * e
            }
            return (plain, relative)
        }
        let weight = "{bits: 4, group_size: channel}", act = "{bits: 4, granularity: per_tensor}"
        func run(_ parameters: String) throws -> QuantizedLinear {
            try LLMFP4Quantizer(plan: Self.plan(weight: weight, activation: act, parameters: parameters))
                .quantize(layer, statistics: stats)
        }
        let mse = try run("{setting: fast, intervals: 20, tokens: 256}")
        let rel = try run("{setting: fast, intervals: 20, tokens: 256, objective: token_relative}")
        #expect(rel.details["objective"] == "token_relative" && mse.details["objective"] == nil)
        let a = errors(mse), b = errors(rel)
        #expect(b.relative < a.relative, "relative error: token_relative \(b.relative) vs output_mse \(a.relative)")
        #expect(a.plain <= b.plain, "plain error: output_mse \(a.plain) vs token_relative \(b.plain)")
        do {
            _ = try run("{objective: block}")
            Issue.record("accepted objective: block")
        } catch {
            #expect("\(error)".contains("objective"))
        }
    }

    /// The rounds stop at a fixed point: a weight-only search repeats nothing after round 1.
    @Test func roundsStopAtFixedPoint() throws {
        var rng = SeededGenerator(seed: 9)
        let cols = 32, rows = 16
        let w = (0..<rows * cols).map { _ in rng.float(in: -1...1) * 0.2 }
        let layer = LinearLayer(name: "layers/0/mlp/gate_proj", weight: Tensor(shape: [rows, cols], data: w), bias: nil,
                                inputPoint: "layers.0.mlp.input", role: .mlpInputProjection)
        let stats = Self.statistics(channels: cols, rows: 256, seed: 10)
        let q = try LLMFP4Quantizer(plan: Self.plan(weight: "{bits: 4, group_size: channel}", activation: nil,
                                                    parameters: "{setting: faithful, intervals: 10}"))
            .quantize(layer, statistics: stats)
        #expect(q.details["rounds_run"] == "1 of 3")
        #expect(q.details["weight_mse_per_round"]?.split(separator: ",").count == 1)
    }

    @Test func recipeErrorsNameTheField() throws {
        #expect(throws: PTQError.self) {
            _ = try LLMFP4Quantizer(plan: Self.plan(weight: "{bits: 8}", activation: nil, parameters: "{weight_format: e2m1}"))
        }
        #expect(throws: PTQError.self) {
            _ = try LLMFP4Quantizer(plan: Self.plan(weight: "{bits: 4}", activation: nil, parameters: "{setting: slow}"))
        }
        #expect(throws: PTQError.self) {
            _ = try LLMFP4Quantizer(plan: Self.plan(weight: "{bits: 4, symmetric: false}", activation: nil, parameters: "{}"))
        }
        do {
            _ = try LLMFP4Quantizer(plan: Self.plan(weight: "{bits: 4}", activation: nil, parameters: "{gamma_range: [1, 0.5]}"))
            Issue.record("accepted a reversed gamma_range")
        } catch {
            #expect("\(error)".contains("gamma_range"))
        }
        #expect(LLMFP4Quantizer.gammas(intervals: 100).count == 100)
        #expect(abs(LLMFP4Quantizer.gammas(intervals: 100).last! - 1.1881) < 1e-9)
    }

    // MARK: kernels and runtime

    static func randomWeight(rows: Int, cols: Int, groupSize: Int, format: FloatingPointFormat, seed: UInt64) -> FloatingPointWeight {
        var rng = SeededGenerator(seed: seed)
        let w = (0..<rows * cols).map { _ in rng.float(in: -1...1) * rng.float(in: 0...1) }
        let gs = min(groupSize, cols)
        let scales = LLMFP4Quantizer.initialScales(w, rows: rows, columns: cols, groupSize: gs, format: format, gamma: 0.95)
        return FloatingPointWeight.quantize(w, rows: rows, columns: cols, groupSize: gs, format: format, scales: scales)
    }

    /// GEMV (AVX2 and scalar) and tile decoding against the reference dequantizer on random and
    /// edge-case shapes: odd widths, shorter-than-vector rows, partial last groups.
    @Test(arguments: [(7, 1, 1), (5, 33, 32), (9, 64, 32), (4, 100, 64), (16, 130, 128), (3, 576, 576), (2, 17, 17), (5, 1536, 64),
                      (3, 48, 16), (4, 576, 128), (2, 80, 48)])
    func gemvMatchesReference(shape: (Int, Int, Int)) {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        let (rows, cols, gs) = shape
        for format in [Self.e2m1, Self.e3m0, Self.e1m2, Self.e4m3, FloatingPointFormat(exponentBits: 3, mantissaBits: 2),
                       FloatingPointFormat(exponentBits: 2, mantissaBits: 5), FloatingPointFormat(exponentBits: 3, mantissaBits: 4)] {
            let w = Self.randomWeight(rows: rows, cols: cols, groupSize: gs, format: format, seed: UInt64(rows * cols))
            let nibbles = format.bits <= 4
            let codes = nibbles ? LowBit.packNibbles(w.codes, rows: rows, columns: cols) : w.codes
            let table = format.codeValues + [Float](repeating: 0, count: (nibbles ? 16 : 256) - format.codeCount)
            let dense = w.dequantizedReference()
            var rng = SeededGenerator(seed: 2)
            let x = (0..<cols).map { _ in rng.float(in: -2...2) }
            var ref = [Float](repeating: 0, count: rows)
            MiniFloat.gemvReference(codes: codes, nibbles: nibbles, rows: rows, columns: cols, groupSize: w.groupSize,
                                    table: table, scales: w.scales, x: x, y: &ref)
            // The AVX-512 nibble path (groups of 32k columns) follows the VNNI switch; off: AVX2.
            // With the format given, AVX-512 decodes byte codes from their bits instead of the table.
            for (vnni, withFormat) in [(true, false), (true, true), (false, false), (false, true)] {
                TokenKernels.setVNNIEnabled(vnni)
                var fast = [Float](repeating: 0, count: rows)
                MiniFloat.gemv(codes: codes, nibbles: nibbles, rows: rows, columns: cols, groupSize: w.groupSize, table: table,
                               scales: w.scales, x: x, y: &fast,
                               format: withFormat ? (format.exponentBits, format.mantissaBits) : nil)
                for o in 0..<rows {
                    var expected = 0.0, magnitude = 0.0
                    for j in 0..<cols {
                        expected += Double(dense[o * cols + j]) * Double(x[j])
                        magnitude += abs(Double(dense[o * cols + j]) * Double(x[j]))
                    }
                    #expect(abs(Double(fast[o]) - expected) <= 1e-5 * magnitude + 1e-12,
                            "\(format) \(shape) row \(o) vnni \(vnni) format \(withFormat)")
                    #expect(abs(Double(ref[o]) - expected) <= 1e-5 * magnitude + 1e-12, "\(format) \(shape) row \(o)")
                }
            }
            TokenKernels.setVNNIEnabled(true)
            var tile = [Float](repeating: 0, count: rows * cols), tileRef = tile
            MiniFloat.decodeRows(codes: codes, nibbles: nibbles, rowRange: 0..<rows, columns: cols, groupSize: w.groupSize,
                                 table: table, scales: w.scales, into: &tile)
            MiniFloat.decodeRows(codes: codes, nibbles: nibbles, rowRange: 0..<rows, columns: cols, groupSize: w.groupSize,
                                 table: table, scales: w.scales, into: &tileRef, reference: true)
            #expect(tile == dense && tileRef == dense)
        }
    }

    /// Byte codes decoded in registers (AVX-512, `format` given) are exactly the table values: with a
    /// one-hot x every output is scale·table[code], for every code of every 5…8-bit format, at
    /// ordinary, huge, tiny and zero scales, in full 16-column vectors and in the scalar tail.
    @Test func byteCodesDecodeExactly() {
        TokenKernels.kernelSwitchLock.lock(); defer { TokenKernels.kernelSwitchLock.unlock() }
        var formats: [FloatingPointFormat] = []
        for e in 1...7 { for m in 0...6 where (4...7).contains(e + m) { formats.append(FloatingPointFormat(exponentBits: e, mantissaBits: m)) } }
        for format in formats where format.isSupported {
            let table = format.codeValues + [Float](repeating: 0, count: 256 - format.codeCount)
            let rows = format.codeCount, cols = 37
            // Row r holds code r at every column.
            let codes = (0..<rows * cols).map { UInt8($0 / cols) }
            for scale: Float in [0.37, 1e30, 1e-30, 0] {
                let scales = [Float](repeating: scale, count: rows)
                for hot in [0, 17, 36] {
                    var x = [Float](repeating: 0, count: cols)
                    x[hot] = 1
                    TokenKernels.setVNNIEnabled(true)
                    var y = [Float](repeating: .nan, count: rows)
                    MiniFloat.gemv(codes: codes, nibbles: false, rows: rows, columns: cols, groupSize: cols, table: table,
                                   scales: scales, x: x, y: &y, format: (format.exponentBits, format.mantissaBits))
                    for r in 0..<rows {
                        #expect(y[r] == scale * table[r], "\(format) code \(r) scale \(scale) column \(hot): \(y[r])")
                    }
                }
            }
        }
    }

    /// Weight-only FP layers prefill on float tiles (`MiniFloat.product` → `LowBit.tiledProduct`),
    /// in bf16 by default: within the bf16 product bound of the reference dequantizer, for two
    /// FP4 formats and FP8 weights, grouped and per channel, on a one-tile and a pool-split shape.
    @Test(arguments: [(24, 70, 32), (300, 256, 64)])
    func floatTilePrefillInBF16(_ shape: (out: Int, cols: Int, groupSize: Int)) throws {
        for format in [Self.e2m1, Self.e1m2, Self.e4m3] {
            for gs in [shape.groupSize, shape.cols] {
                let w = Self.randomWeight(rows: shape.out, cols: shape.cols, groupSize: gs, format: format, seed: 21)
                var rng = SeededGenerator(seed: 5)
                let bias = (0..<shape.out).map { _ in rng.float(in: -1...1) }
                let q = QuantizedLinear(name: "l", method: "llmfp4", weight: .floatingPoint(w), bias: bias, activation: nil)
                let op = try FloatingPointLinear(q)
                let rows = 96
                let x = (0..<rows * shape.cols).map { i in (i % shape.cols == 4 ? 20 : 1) * rng.float(in: -1...1) }
                var y = [Float](repeating: .nan, count: rows * shape.out)
                LowBit.$bf16PrefillOverride.withValue(true) { op.forward(x, rows: rows, into: &y) }
                let failures = bf16PrefillViolations(y: y, x: x, rows: rows, weight: w.dequantizedReference(), out: shape.out,
                                                     k: shape.cols, bias: bias)
                #expect(failures.isEmpty, "\(format) g\(gs) \(shape): \(failures.prefix(3))")
            }
        }
    }

    /// The runtime layer equals the simulated quantized layer (fake-quant activations, reference
    /// weights) for decode-sized and prefill-sized inputs, per channel and grouped, with bias.
    @Test(arguments: [1, 3, 20])
    func runtimeMatchesSimulation(rows: Int) throws {
        for (format, gs, act) in [(Self.e2m1, 32, Self.e4m3), (Self.e1m2, 70, Self.e2m1), (Self.e4m3, 70, Self.e4m3)] {
            let cols = 70, out = 24
            let w = Self.randomWeight(rows: out, cols: cols, groupSize: gs, format: format, seed: 8)
            var rng = SeededGenerator(seed: 12)
            let absMax = (0..<cols).map { j in j == 4 ? Float(20) : rng.float(in: 0.5...2) }
            let a = ActivationCandidate(format: act, gamma: 0.9, channelAbsMax: absMax, perChannel: true)
            let q = QuantizedLinear(name: "l", method: "llmfp4", weight: .floatingPoint(w),
                                    bias: (0..<out).map { _ in rng.float(in: -1...1) }, activation: a.quantization)
            let op = try FloatingPointLinear(q)
            let x = (0..<rows * cols).map { i in absMax[i % cols] * rng.float(in: -1...1) }
            var y = [Float](repeating: 0, count: rows * out), expected = y
            // Float tiles in float32 (their bf16 product: `floatTilePrefillInBF16`).
            LowBit.$bf16PrefillOverride.withValue(false) { op.forward(x, rows: rows, into: &y) }
            SimulatedLinear(q).forward(x, rows: rows, into: &expected)
            for i in 0..<y.count { #expect(abs(y[i] - expected[i]) <= 1e-4 * max(1, abs(expected[i])), "\(format) row \(i / out)") }
            #expect(op.kernelDescription.contains(format.description))
            // FP4 weights with E2M1 activations (shifted integers ≤ 12·2^3) run the exact int8 GEMM.
            #expect(op.kernelDescription.contains("int8 GEMM") == (format.bits == 4 && act.bits == 4))
        }
    }

    @Test func runtimeRejectsBadLayers() {
        let w = Self.randomWeight(rows: 4, cols: 8, groupSize: 8, format: Self.e2m1, seed: 1)
        var bad = w
        bad.codes[3] = 16
        #expect(throws: PTQError.self) { _ = try FloatingPointLinear(QuantizedLinear(name: "l", method: "m", weight: .floatingPoint(bad))) }
        bad = w
        bad.scales.removeLast()
        #expect(throws: PTQError.self) { _ = try FloatingPointLinear(QuantizedLinear(name: "l", method: "m", weight: .floatingPoint(bad))) }
        let intAct = ActivationQuantization(bits: 8, granularity: .perToken)
        #expect(throws: PTQError.self) {
            _ = try FloatingPointLinear(QuantizedLinear(name: "l", method: "m", weight: .floatingPoint(w), activation: intAct))
        }
    }

    // MARK: end to end on a tiny model

    /// Calibrate → llmfp4 → pack → read → run: the packed runtime equals the simulated layers,
    /// codes are stored at their true width and `inspect` names the format.
    @Test func packedRuntimeMatchesSimulation() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let recipePath = try PipelineFixtures.recipe(folder, name: "fp4", body: """
        scheme:
          method: llmfp4
          weight: {bits: 4, group_size: 32}
          activation: {bits: 8, granularity: per_tensor}
          parameters: {setting: fast, intervals: 8}
        """)
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: try PTQ.RecipeContext(path: recipePath), quiet: true)
        let path = folder + "/fp4.ptq"
        try PackedFile.write(outcome.packed, to: path)
        let read = try PackedFile.read(path: path)
        #expect(read.quantizedLinears == outcome.packed.quantizedLinears)
        let summary = try PackedFile.summary(path: path)
        let row = try #require(summary.tensors.first { $0.name == "layers/0/mlp/down_proj" })
        #expect(row.format?.hasPrefix("fp4 e") == true && row.bits == 4 && row.groupSize == 32)
        #expect(row.activation.hasPrefix("fp8 e") && row.activation.contains("2^-k"))
        let packedModel = try LlamaModel(weights: PackedWeights(read))
        let simulated = try LlamaModel(weights: SimulatedWeights(packed: read))
        let tokens = [1, 5, 9, 33, 70, 2, 8, 100]
        let a = packedModel.forward(tokens), b = simulated.forward(tokens)
        let scale = b.map(abs).max()!
        for i in 0..<a.count { #expect(abs(a[i] - b[i]) <= 1e-3 * scale) }
    }
}

