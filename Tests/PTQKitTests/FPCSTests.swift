import Foundation
import Testing
@testable import Calibration
@testable import PTQKit
@testable import Quantizers

/// FPCS (AdaLog's Fast Progressive Combining Search) for the uniform quantizers of the linears.
@Suite struct FPCSTests {
    /// The reference grid: `Ns = 128/Nz` scales from (Q₀.₉ − Q₀.₁)/(2^n − 1) to (max − min)/(2^n − 1)
    /// and `Nz` zero points centred on 2^(n−1).
    @Test func gridFollowsTheReference() {
        let values = (0...1000).map { Float($0) / 1000 - 0.3 }      // uniform on [−0.3, 0.7]
        let g = FPCS.grid(of: values, bits: 4, zeroPoints: WeightFPCS.zeroPoints(bits: 4))
        #expect(g.candidates.count == 128)
        let scales = Set(g.candidates.map(\.scale)), zeros = Set(g.candidates.map(\.zero))
        #expect(scales.count == 16 && zeros == Set(4...11))
        #expect(abs(scales.min()! - 0.8 / 15) < 1e-6 && abs(scales.max()! - 1.0 / 15) < 1e-6)
        #expect(abs(g.step - 0.2 / 15 / 15) < 1e-7)
        #expect(Set(FPCS.grid(of: values, bits: 6, zeroPoints: ActivationFPCS.zeroPoints(bits: 6)).candidates.map(\.zero))
                == Set(24...39))
        // `zero_points: range`: the window follows a lopsided row's min–max zero point
        // (−min·255/(max − min) = 0.1·255/0.8 ≈ 32 at 8 bits) and stays inside the code range.
        let lopsided = (0...800).map { Float($0) / 1000 - 0.1 }          // [−0.1, 0.7]
        #expect(Set(FPCS.grid(of: lopsided, bits: 8, zeroPoints: 16).candidates.map(\.zero)) == Set(120...135))
        #expect(Set(FPCS.grid(of: lopsided, bits: 8, zeroPoints: 16, window: .range).candidates.map(\.zero)) == Set(24...39))
        let positive = (0...800).map { Float($0) / 1000 }
        #expect(Set(FPCS.grid(of: positive, bits: 8, zeroPoints: 16, window: .range).candidates.map(\.zero)) == Set(0...15))
        let centred = (0...800).map { Float($0) / 1000 - 0.4 }
        #expect(WeightFPCS.rowsOutsideReferenceWindow(lopsided + centred, rows: 2, columns: 801, bits: 8) == 1)
    }

    /// On an objective whose optimum is known — the same (s*, z*) for every group, between grid
    /// scales — FPCS ends at z* exactly and at s* to within the last refinement step.
    @Test func searchFindsKnownOptimum() {
        let g = FPCS.grid(p10: -0.2, p90: 0.2, minimum: -0.5, maximum: 0.6, bits: 4, zeroPoints: 8)
        let target = FPCS.Candidate(scale: 0.0513, zero: 9)
        var evaluated = 0
        let result = FPCS.search(initial: [g.candidates, g.candidates], initialStep: [g.step, g.step]) { lists in
            lists.map { list in
                list.map { c in
                    evaluated += 1
                    let ds = Double(c.scale - target.scale), dz = Double(c.zero - target.zero)
                    return ds * ds + 1e-4 * dz * dz
                }
            }
        }
        // 128 grid points, then 5 steps of 16 kept × 8 spawned, for each of the 2 groups.
        #expect(evaluated == 2 * 6 * 128)
        for r in result {
            #expect(r.candidate.zero == target.zero)
            // Final spacing: step/(7.5^4)/7 ≈ 2e-6 here; the grid step itself is 1.9e-3.
            #expect(abs(r.candidate.scale - target.scale) < 1e-5)
        }
        // The grid alone is much further off: the refinement is what finds s*.
        let gridBest = g.candidates.filter { $0.zero == 9 }.map { abs($0.scale - target.scale) }.min()!
        #expect(gridBest > 1e-4)
    }

    static func randomLayer(out: Int, k: Int, rows: Int, seed: UInt64, offsets offsetSize: Float = 1) -> (w: [Float], x: [Float]) {
        var rng = SeededGenerator(seed: seed)
        let w = (0..<(out * k)).map { _ in rng.float(in: -0.4...0.4) }
        // Channels of different ranges and offsets, as after a LayerNorm.
        let ranges = (0..<k).map { _ in rng.float(in: 0.2...3) }
        let offsets = (0..<k).map { _ in offsetSize * rng.float(in: -1...1) }
        let x = (0..<(rows * k)).map { i in offsets[i % k] + ranges[i % k] * rng.float(in: -1...1) }
        return (w, x)
    }

    /// The Gram-matrix scorer of the weight search (block bases, sparse code differences, dense
    /// outliers) equals the directly computed output error ‖X̂ŵ − Xw‖² for every candidate.
    @Test(arguments: [4, 6])
    func gramScoringIsExact(bits: Int) {
        let out = 5, k = 24, n = 300
        let (w, x) = Self.randomLayer(out: out, k: k, rows: n, seed: 3)
        let act = ActivationFPCS.searchMSE(x, bits: bits).candidate
        let xHat = ActivationFPCS.fake(x, act, bits: bits)
        let scorer = WeightFPCS.GramScorer(w, rows: out, columns: k, bits: bits, xHat: xHat, x: x, n: n)
        // The full grid plus a refinement-like block (nearby scales, one zero point) per row.
        var lists = WeightFPCS.grids(w, rows: out, columns: k, bits: bits).candidates
        for r in 0..<out {
            let c = lists[r][37]
            lists[r] += (0..<8).map { FPCS.Candidate(scale: c.scale * (0.97 + 0.0075 * Float($0)), zero: c.zero) }
        }
        let errors = scorer.errors(lists)
        let top = Float((1 << bits) - 1)
        for r in 0..<out {
            let row = Array(w[(r * k)..<((r + 1) * k)])
            for (i, c) in lists[r].enumerated() {
                var direct: Double = 0
                for t in 0..<n {
                    var yq: Double = 0, y: Double = 0
                    for j in 0..<k {
                        yq += Double(xHat[t * k + j]) * Double(FPCS.fake(row[j], c, top: top))
                        y += Double(x[t * k + j]) * Double(row[j])
                    }
                    direct += (yq - y) * (yq - y)
                }
                // Float Gram entries (sgemm), combined in double: agreement to float accuracy.
                #expect(abs(errors[r][i] - direct) <= 1e-4 * direct + 1e-7, "row \(r) candidate \(i)")
            }
        }
    }

    /// The output-MSE weight search beats min–max rounding and the best grid point on its own objective.
    @Test func outputSearchBeatsMinMaxAndGrid() {
        let out = 6, k = 32, n = 400, bits = 4
        let (w, x) = Self.randomLayer(out: out, k: k, rows: n, seed: 8)
        let act = ActivationFPCS.searchMSE(x, bits: bits).candidate
        let xHat = ActivationFPCS.fake(x, act, bits: bits)
        let found = WeightFPCS.searchOutputMSE(w, rows: out, columns: k, bits: bits, xHat: xHat, x: x, n: n)
        let scorer = WeightFPCS.GramScorer(w, rows: out, columns: k, bits: bits, xHat: xHat, x: x, n: n)
        let gridErrors = scorer.errors(WeightFPCS.grids(w, rows: out, columns: k, bits: bits).candidates)
        let chosen = scorer.errors(found.candidates.map { [$0] })
        // Min–max asymmetric RTN of the same rows, as a candidate.
        let minMax: [[FPCS.Candidate]] = (0..<out).map { r in
            let row = w[(r * k)..<((r + 1) * k)], lo = min(row.min()!, 0), hi = max(row.max()!, 0)
            let s = (hi - lo) / 15
            return [FPCS.Candidate(scale: s, zero: Int((-lo / s).rounded()))]
        }
        let minMaxErrors = scorer.errors(minMax)
        for r in 0..<out {
            #expect(chosen[r][0] <= gridErrors[r].min()! * (1 + 1e-3), "row \(r)")
            #expect(chosen[r][0] < minMaxErrors[r][0], "row \(r)")
        }
        #expect(abs(found.error - chosen.reduce(0) { $0 + $1[0] }) <= 1e-9 * found.error)
    }

    static func plan(_ name: String, bits: Int, granularity: String = "per_tensor", extra: String = "") throws -> LayerPlan {
        try Recipe.parse("""
            name: t
            model: bert
            scheme:
              method: fpcs
              weight: {bits: \(bits), symmetric: false}
              activation: {bits: \(bits), granularity: \(granularity)}
              parameters: {tokens: 64, gram_tokens: 256\(extra.isEmpty ? "" : ", " + extra)}
            """, source: "t.yaml").plan(for: SyntheticModels.bertConfig()).first { $0.name == name }!
    }

    /// The emitted layer (reparameterisation in the quantize op, the zero point as a shift, both
    /// folded into the bias) runs in the integer runtime, equals its simulation, and at 8 bits
    /// reproduces the float layer closely — so ρ, β and the folds are the identity before rounding.
    @Test(arguments: ["layers/0/attention/q_proj", "layers/0/attention/o_proj"])
    func runtimeMatchesFloatLayer(name: String) throws {
        let config = SyntheticModels.bertConfig()
        let k = config.hiddenSize, out = name.hasSuffix("q_proj") ? config.hiddenSize : config.hiddenSize
        // Centred channels: the reference's zero-point grid (2^(n−1) ± 8) cannot follow a channel
        // offset larger than a few steps at 8 bits, which would clip and hide the fold check.
        let (w, x) = Self.randomLayer(out: out, k: k, rows: 256, seed: 5, offsets: 0)
        let bias = (0..<out).map { Float($0) * 0.01 }
        let stats = PointStatistics(channels: k, kinds: [.reservoir], reservoirCapacity: 256)
        x.withUnsafeBufferPointer { stats.add($0, rows: 256) }
        var relative: [Int: Float] = [:]
        for bits in [8, 4] {
            // The range window: with the reference's zero points the reparameterised int8 q_proj is
            // 6.8 % off, all of it weight clipping (`reparameterisationChain`).
            let plan = try Self.plan(name, bits: bits, extra: "zero_points: range")
            let layer = LinearLayer(plan, weight: Tensor(shape: [out, k], data: w), bias: bias)
            let q = try FPCSLinearQuantizer(plan: plan).quantize(layer, statistics: stats)
            let a = try #require(q.activation)
            #expect(a.granularity == .perTensor && a.channelShift != nil)
            #expect((a.channelScales != nil) == name.hasSuffix("q_proj"))
            let runtime = try IntegerLinear(q)
            let simulated = SimulatedLinear(q)
            let test = Array(Self.randomLayer(out: out, k: k, rows: 16, seed: 5, offsets: 0).x)
            var y1 = [Float](repeating: 0, count: 16 * out), y2 = y1, reference = y1
            runtime.forward(test, rows: 16, into: &y1)
            simulated.forward(test, rows: 16, into: &y2)
            let scale = y2.map(abs).max()!
            #expect(zip(y1, y2).allSatisfy { abs($0 - $1) <= 1e-4 * scale })
            #expect(q.details["zero_points"] == "range")
            for t in 0..<16 {
                for o in 0..<out {
                    var s = Double(bias[o])
                    for j in 0..<k { s += Double(test[t * k + j]) * Double(w[o * k + j]) }
                    reference[t * out + o] = Float(s)
                }
            }
            var e: Double = 0, norm: Double = 0
            for (a, b) in zip(y1, reference) { e += Double(a - b) * Double(a - b); norm += Double(b) * Double(b) }
            relative[bits] = Float((e / norm).squareRoot())
        }
        // 1.3 % for q_proj and 1.7 % for o_proj, measured; the int8 per-tensor activations of
        // this 16-channel layer are most of it (`reparameterisationChain`).
        #expect(relative[8]! < 0.02, "int8 relative error \(relative[8]!)")
        #expect(relative[4]! < 0.3 && relative[4]! > relative[8]!, "int4 relative error \(relative[4]!)")
    }

    /// The RepQ-ViT fold step by step on the q_proj of `runtimeMatchesFloatLayer` (held-out rows):
    /// the float layer against the reparameterised float layer (the identity, to float
    /// tolerance), then with the searched weights only, the searched activation quantizer only,
    /// and both; the emitted layer in the integer runtime equals the last step. With the
    /// reference's weight grid the int8 weights alone are 6.4 % off: ρ makes the rows of `W·diag(ρ)`
    /// lopsided and the grid's zero points (2^(n−1) ± 8) cannot follow them, so every candidate
    /// clips (min–max rounding of the same rows: 0.4 %). With `zero_points: range` they are within 1 %.
    @Test(arguments: [8, 4])
    func reparameterisationChain(bits: Int) throws {
        let config = SyntheticModels.bertConfig()
        let name = "layers/0/attention/q_proj", k = config.hiddenSize, out = config.hiddenSize
        let (w, x) = Self.randomLayer(out: out, k: k, rows: 256, seed: 5, offsets: 0)
        let bias = (0..<out).map { Float($0) * 0.01 }
        // Held-out rows of the same channels (the generator continues past the calibration rows).
        let rows = 64
        let test = Array(Self.randomLayer(out: out, k: k, rows: 256 + rows, seed: 5, offsets: 0).x[(256 * k)...])
        func run(_ w: [Float], _ b: [Float], _ x: [Float]) -> [Double] {
            (0..<(rows * out)).map { i in
                let t = i / out, o = i % out
                var s = Double(b[o])
                for j in 0..<k { s += Double(x[t * k + j]) * Double(w[o * k + j]) }
                return s
            }
        }
        let reference = run(w, bias, test)
        func relative(_ y: [Double]) -> Double {
            var e: Double = 0, norm: Double = 0
            for (a, b) in zip(y, reference) { e += (a - b) * (a - b); norm += b * b }
            return (e / norm).squareRoot()
        }
        let top = Float((1 << bits) - 1)
        var weightsOnly: [String: Double] = [:]
        for window in ["reference", "range"] {
            let stats = PointStatistics(channels: k, kinds: [.reservoir], reservoirCapacity: 256)
            x.withUnsafeBufferPointer { stats.add($0, rows: 256) }
            let plan = try Self.plan(name, bits: bits, extra: "zero_points: \(window)")
            let layer = LinearLayer(plan, weight: Tensor(shape: [out, k], data: w), bias: bias)
            let quantizer = try FPCSLinearQuantizer(plan: plan)
            let found = try quantizer.search(layer, statistics: stats)
            let repq = try #require(found.reparameterization)
            let a = try #require(found.activationChoice)
            var xr = test
            repq.transform(input: &xr, rows: rows)
            let xq = xr.map { ActivationFPCS.fake($0, a, top: top) }
            let wq = WeightFPCS.integerWeight(found.weight, rows: out, columns: k, bits: bits,
                                              candidates: found.weightChoice).dequantizedReference()
            let float = relative(run(found.weight, found.bias, xr))
            weightsOnly[window] = relative(run(wq, found.bias, xr))
            let activationsOnly = relative(run(found.weight, found.bias, xq))
            let both = relative(run(wq, found.bias, xq))
            let runtime = try IntegerLinear(quantizer.emit(found, layer: layer))
            var y = [Float](repeating: 0, count: rows * out)
            runtime.forward(test, rows: rows, into: &y)
            let emitted = relative(y.map(Double.init))
            // Min–max asymmetric rounding of the same rows (zero point unrestricted), for scale.
            var mm = found.weight
            for o in 0..<out {
                let row = found.weight[(o * k)..<((o + 1) * k)], lo = min(row.min()!, 0), hi = max(row.max()!, 0)
                let sc = (hi - lo) / top, z = (-lo / sc).rounded()
                for j in 0..<k { mm[o * k + j] = sc * (min(max((found.weight[o * k + j] / sc).rounded() + z, 0), top) - z) }
            }
            print("[chain] int\(bits) \(window): float \(float), weights \(weightsOnly[window]!), min-max weights \(relative(run(mm, found.bias, xr))), activations \(activationsOnly), both \(both), runtime \(emitted), rows outside \(found.details["weight_rows_outside_reference_zero_points"] ?? "-")")
            // The reparameterisation is the identity before rounding.
            #expect(float < 1e-6, "\(window): reparameterised float layer \(float) off")
            // The runtime's folds (zero point as a shift, ρ and β in the quantize op, both in the bias).
            #expect(abs(emitted - both) <= 1e-3 * both + 1e-6, "\(window): runtime \(emitted), simulation \(both)")
            if bits == 8 {
                #expect(activationsOnly < 0.015, "\(window): int8 activations \(activationsOnly)")
            }
            if window == "range" {
                #expect(weightsOnly[window]! < (bits == 8 ? 0.01 : 0.1), "int\(bits) weights \(weightsOnly[window]!)")
                #expect(both < (bits == 8 ? 0.015 : 0.15), "int\(bits) layer \(both)")
            }
        }
        if bits == 8 {
            // The reference grid's clipping, measured: several times the range window's error.
            #expect(weightsOnly["reference"]! > 5 * weightsOnly["range"]!)
        }
    }

    /// Recipe errors name the field.
    @Test func refusesSymmetricWeights() throws {
        let text = """
            name: t
            model: bert
            scheme:
              method: fpcs
              weight: {bits: 4, symmetric: true}
              activation: {bits: 4, granularity: per_tensor}
            """
        let plan = try Recipe.parse(text, source: "t.yaml").plan(for: SyntheticModels.bertConfig()).first!
        #expect(throws: PTQError.self) { try FPCSLinearQuantizer(plan: plan) }
        do { _ = try FPCSLinearQuantizer(plan: plan) } catch { #expect("\(error)".contains("symmetric: false")) }
    }
}
