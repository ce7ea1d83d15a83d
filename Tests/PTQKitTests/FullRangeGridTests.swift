import Foundation
import Testing
import Kernels
@testable import PTQKit
@testable import Quantizers

/// The full symmetric grid (`weight: {symmetric: true, range: full}`), llama.cpp's Q4_0 grid for
/// any width, checked against the formula written out here:
/// e = the group's value of largest magnitude, sign kept (on a tie |min| == max, the negative
/// one); scale d = e / −2^(b−1) (1 for an all-zero group); code = clamp(round(w / d),
/// −2^(b−1), 2^(b−1) − 1), stored as u = code + 2^(b−1) in 0 ..< 2^b; value d·(u − 2^(b−1)).
@Suite("RTN full symmetric grid (Q4_0-style)")
struct FullRangeGridTests {
    static func quantize(_ rows: [[Float]], bits: Int, groupSize: Int? = nil) -> IntegerWeight {
        let tensor = Tensor(shape: [rows.count, rows[0].count], data: rows.flatMap { $0 })
        return WeightQuantization.quantize(tensor, bits: bits, symmetric: true, groupSize: groupSize, range: .full)
    }

    static func codeRows(_ w: IntegerWeight) -> [[Int]] {
        (0..<w.rows).map { r in (0..<w.columns).map { Int(w.codes[r * w.columns + $0]) } }
    }

    /// Values and scales exact in binary. A negative extreme gives a positive scale, a positive
    /// extreme a negative one; either way the extreme is the code −8 (u = 0) and decodes exactly.
    @Test func int4ByHand() {
        let w = Self.quantize([[-4, 2, 1, 0.5, -0.25, 3.5, 0, 3.75],
                               [8, -3, 4, 1, -8, 0.5, -1.5, 7]], bits: 4)
        // Row 0: e = −4 → d = 0.5; w/d = −8, 4, 2, 1, −0.5, 7, 0, 7.5 → −8, 4, 2, 1, −1, 7, 0, 7 (8 clamped)
        // Row 1: a tie |−8| == 8, the negative value is the extreme → d = 1;
        // w/d = 8 → 7 (clamped), −3, 4, 1, −8, 0.5 → 1, −1.5 → −2, 7
        #expect(w.scales == [0.5, 1])
        #expect(w.zeros == nil && w.symmetric && w.symmetricZero == 8)
        #expect(Self.codeRows(w) == [[0, 12, 10, 9, 7, 15, 8, 15],
                                     [15, 5, 12, 9, 0, 9, 6, 15]])
        #expect(w.dequantizedReference() == [-4, 2, 1, 0.5, -0.5, 3.5, 0, 3.5,
                                            7, -3, 4, 1, -8, 1, -2, 7])
        // A positive extreme: d = 8 / −8 = −1, so 8 → −8 → u = 0, and −8 would be +8 (clamped to 7).
        let p = Self.quantize([[8, -3, 4, 1, -7, 0.5, -1.5, 2]], bits: 4)
        #expect(p.scales == [-1])
        #expect(Self.codeRows(p) == [[0, 11, 4, 7, 15, 7, 10, 6]])   // 0.5/−1 = −0.5 → −1 (ties away from 0)
        #expect(p.dequantizedReference() == [8, -3, 4, 1, -7, 1, -2, 2])
    }

    /// The restricted grid of the same rows, for contrast: 15 levels, scale absmax/7.
    @Test func restrictedGridIsUnchanged() {
        let rows: [[Float]] = [[-4, 2, 1, 0.5, -0.25, 3.5, 0, 3.75]]
        let tensor = Tensor(shape: [1, 8], data: rows[0])
        let restricted = WeightQuantization.quantize(tensor, bits: 4, symmetric: true, groupSize: nil)
        let byScheme = WeightQuantization.quantize(tensor, scheme: WeightScheme(bits: 4))
        #expect(restricted == byScheme)
        #expect(restricted.scales == [Float(4) / 7])
        #expect(restricted.codes.allSatisfy { $0 >= 1 && $0 <= 15 })
        let full = WeightQuantization.quantize(tensor, scheme: WeightScheme(bits: 4, range: .full))
        #expect(full == Self.quantize(rows, bits: 4))
    }

    /// All-zero groups keep scale 1 and the zero code; an all-equal group sits on −2^(b−1).
    @Test func zeroAndConstantGroups() {
        let w = Self.quantize([[0, 0, 0, 0, 3, 3, 3, 3], [-2, -2, -2, -2, 0, 0, 0, 0]], bits: 4, groupSize: 4)
        #expect(w.scales == [1, Float(3) / -8, Float(2) / 8, 1])
        #expect(Self.codeRows(w) == [[8, 8, 8, 8, 0, 0, 0, 0], [0, 0, 0, 0, 8, 8, 8, 8]])
        #expect(w.dequantizedReference() == [0, 0, 0, 0, 3, 3, 3, 3, -2, -2, -2, -2, 0, 0, 0, 0])
    }

    /// Random groups at every width: codes inside 0 ..< 2^b, the direct formula, the extreme at
    /// u = 0 decoding to itself, and every other value within half a step (one step on the
    /// short half of the grid, beyond 2^(b−1) − 1, where it clamps).
    @Test(arguments: [2, 3, 4, 5, 6, 8])
    func randomGroupsMatchTheFormula(bits: Int) {
        var rng = SeededGenerator(seed: UInt64(300 + bits))
        let rows = 11, columns = 70, group = 32
        var data = (0..<rows * columns).map { i -> Float in
            let r = i / columns
            let v = rng.float(in: -1...1) * Float(1 << (r % 5))
            return r == 4 ? abs(v) : r == 7 ? -abs(v) : v
        }
        for c in 0..<columns { data[2 * columns + c] = 0 }
        let w = WeightQuantization.quantize(Tensor(shape: [rows, columns], data: data), bits: bits, symmetric: true,
                                            groupSize: group, range: .full)
        let half = Float(1 << (bits - 1))
        #expect(w.groupsPerRow == 3 && w.scales.count == rows * 3)
        #expect(w.codes.allSatisfy { Int($0) < 1 << bits })
        let values = w.dequantizedReference()
        for r in 0..<rows {
            for start in stride(from: 0, to: columns, by: group) {
                let range = (r * columns + start)..<(r * columns + min(columns, start + group))
                let lo = min(0, data[range].min()!), hi = max(0, data[range].max()!)
                let extreme = -lo >= hi ? lo : hi
                let d = extreme == 0 ? 1 : extreme / -half
                #expect(w.scales[r * 3 + start / group] == d)
                for i in range {
                    let expected = Int(min(max((data[i] / d).rounded(.toNearestOrAwayFromZero), -half), half - 1) + half)
                    #expect(Int(w.codes[i]) == expected, "int\(bits) [\(r), \(i - r * columns)]")
                    if data[i] == extreme && extreme != 0 {
                        #expect(w.codes[i] == 0 && values[i] == extreme, "the extreme maps to −2^(b−1) exactly")
                    }
                    // The short half of the grid ends at 2^(b−1) − 1: values beyond it (on the
                    // side opposite the extreme) clamp, by at most one step.
                    let bound = data[i] / d > half - 1 ? abs(d) : abs(d) / 2
                    #expect(abs(values[i] - data[i]) <= bound * (1 + 1e-5) + 1e-7)
                }
            }
        }
        // The full grid uses the code −2^(b−1) somewhere, the restricted grid never does.
        #expect(w.codes.contains(0))
        let restricted = WeightQuantization.quantize(Tensor(shape: [rows, columns], data: data), bits: bits,
                                                     symmetric: true, groupSize: group)
        #expect(!restricted.codes.contains(0))
    }

    /// The integer runtime (int8 activations: nibble kernels at 4 bits, int8 codes down to −128
    /// at 8 bits; float activations: the weight-only kernels) computes what the dequantized
    /// reference weights give, codes u = 0 and negative scales included. (The packed-file round
    /// trip is `PipelineTests`' full-grid schemes.)
    @Test(arguments: [4, 8])
    func runtimeMatchesTheReference(bits: Int) throws {
        var rng = SeededGenerator(seed: UInt64(400 + bits))
        let rows = 24, columns = 96
        let data = (0..<rows * columns).map { _ in rng.float(in: -1...1) }
        let w = WeightQuantization.quantize(Tensor(shape: [rows, columns], data: data), bits: bits, symmetric: true,
                                            groupSize: 32, range: .full)
        #expect(w.codes.contains(0) && w.scales.contains { $0 < 0 })
        let x = (0..<3 * columns).map { _ in rng.float(in: -2...2) }
        for activation in [ActivationQuantization(bits: 8, granularity: .perToken), nil] {
            let layer = QuantizedLinear(name: "layers/0/mlp/up_proj", method: "rtn", weight: .integer(w), bias: nil,
                                        activation: activation)
            let op = try IntegerLinear(layer)
            var y = [Float](repeating: 0, count: 3 * rows)
            // float32 decode GEMV (the bf16 one is checked against its bound: bf16 decode GEMV suite)
            LowBit.$bf16DecodeOverride.withValue(false) {
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { op.forward(xp.baseAddress!, rows: 3, into: $0.baseAddress!) } }
            }
            let reference = w.dequantizedReference()
            for t in 0..<3 {
                // The input as the runtime sees it: per-token int8 codes (scale absmax/127), or float.
                let row = Array(x[(t * columns)..<((t + 1) * columns)])
                let scale = (row.map(abs).max() ?? 0) / 127
                let input = activation == nil ? row : row.map { ($0 / scale).rounded() * scale }
                for o in 0..<rows {
                    var expected = 0.0
                    for j in 0..<columns { expected += Double(reference[o * columns + j]) * Double(input[j]) }
                    #expect(abs(Double(y[t * rows + o]) - expected) <= 1e-4 * max(1, abs(expected)),
                            "int\(bits) \(activation == nil ? "a16" : "a8") token \(t) row \(o)")
                }
            }
        }
    }

    // MARK: Recipes

    static func recipe(_ weight: String, method: String = "rtn", rules: String = "") throws(PTQError) -> Recipe {
        try Recipe.parse("""
        name: t
        model: llama
        scheme:
          method: \(method)
          weight: \(weight)
          activation: {bits: 8, granularity: per_tensor}
        \(rules)
        """, source: "t.yaml")
    }

    @Test func recipeField() throws {
        #expect(try Self.recipe("{bits: 4, group_size: 32, range: full}").scheme.weight
                == WeightScheme(bits: 4, symmetric: true, groupSize: 32, range: .full))
        #expect(try Self.recipe("{bits: 4}").scheme.weight.range == .restricted)
        #expect(try Self.recipe("{bits: 4, range: restricted}").scheme.weight.range == .restricted)
        #expect(WeightScheme(bits: 4, groupSize: 32, range: .full).description == "int4 sym full g32")
        // Rules inherit the scheme's range; asymmetric rules drop it; a rule may turn it off.
        let r = try Self.recipe("{bits: 4, range: full}", rules: """
        rules:
          - targets: [lm_head]
            weight: {bits: 8}
          - targets: ["layers/0/*"]
            weight: {symmetric: false}
          - targets: ["layers/1/*"]
            weight: {range: restricted}
        """)
        #expect(r.rules.map(\.weight.range) == [.full, .restricted, .restricted])
        #expect(throws: PTQError.self) { try Self.recipe("{bits: 4, symmetric: false, range: full}") }
        do {
            _ = try Self.recipe("{bits: 4, symmetric: false, range: full}")
        } catch {
            #expect(error.message.contains("t.yaml:5") && error.message.contains("range")
                    && error.message.contains("symmetric weights only"), "\(error.message)")
        }
        do {
            _ = try Self.recipe("{bits: 4, range: wide}")
            Issue.record("range: wide accepted")
        } catch {
            #expect(error.message.contains("range") && error.message.contains("full"), "\(error.message)")
        }
    }

    /// Methods whose weights are not on the shared RTN / GPTQ grid refuse `range: full` with the
    /// recipe line; rtn and gptq take it.
    @Test func methodsThatDoNotHonourTheGridRefuseIt() throws {
        let plan = try Self.recipe("{bits: 8, range: full}", method: "outliertune").plan(for: SyntheticModels.llamaConfig())
        do {
            _ = try QuantizerRegistry.quantizer(for: plan[0])
            Issue.record("outliertune accepted range: full")
        } catch {
            #expect(error.message.contains("t.yaml:") && error.message.contains("scheme.weight.range")
                    && error.message.contains("outliertune"), "\(error.message)")
        }
        for method in ["rtn", "gptq"] {
            let plan = try Self.recipe("{bits: 4, group_size: 32, range: full}", method: method)
                .plan(for: SyntheticModels.llamaConfig())
            #expect(throws: Never.self) { _ = try QuantizerRegistry.quantizer(for: plan[0]) }
        }
        let gptq = try #require(try QuantizerRegistry.quantizer(for: try Self.recipe("{bits: 4, range: full}", method: "gptq")
            .plan(for: SyntheticModels.llamaConfig())[0]) as? GPTQQuantizer)
        #expect(gptq.solver.range == .full)
    }
}
