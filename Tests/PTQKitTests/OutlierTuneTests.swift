import Foundation
import Testing
@testable import PTQKit
@testable import Quantizers

@Suite("OutlierTune")
struct OutlierTuneTests {
    /// Activations with per-channel offsets and outlier channels, like a norm's output.
    static func activations(rows: Int, channels: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<rows * channels).map { i in
            let c = i % channels
            let offset: Float = c % 5 == 0 ? 3 : 0
            let spread: Float = c == 3 ? 40 : 1
            return offset + spread * rng.float(in: -1...1)
        }
    }

    static func layer(out: Int, inp: Int, bias: Bool, seed: UInt64) -> LinearLayer {
        var rng = SeededGenerator(seed: seed)
        let w = Tensor(shape: [out, inp], data: (0..<out * inp).map { _ in rng.float(in: -0.2...0.2) })
        return LinearLayer(name: "layers/0/attention/q_proj", weight: w,
                           bias: bias ? (0..<out).map { _ in rng.float(in: -1...1) } : nil,
                           inputPoint: "layers.0.attention.input", role: .attentionInputProjection)
    }

    static func plan(_ name: String, bits: Int, parameters: String = "{}") throws -> LayerPlan {
        let recipe = try Recipe.parse("""
        name: t
        model: llama
        scheme:
          method: outliertune
          weight: {bits: \(bits)}
          activation: {bits: \(bits), granularity: per_tensor}
          parameters: \(parameters)
        """, source: "t.yaml")
        return try recipe.plan(for: SyntheticModels.llamaConfig()).first { $0.name == name }!
    }

    /// Symmetrization and folding leave the layer's function unchanged before rounding:
    /// ((x − z)/s)·W'ᵀ + b' = x·Wᵀ + b.
    @Test(arguments: [true, false])
    func foldingIdentityHoldsInFloat(withBias: Bool) {
        let layer = Self.layer(out: 6, inp: 10, bias: withBias, seed: 1)
        let x = Self.activations(rows: 4, channels: 10, seed: 2)
        var rng = SeededGenerator(seed: 3)
        let shift = (0..<10).map { _ in rng.float(in: -2...2) }
        let scales = (0..<10).map { _ in rng.float(in: 0.01...3) }
        let (folded, bias) = OutlierTuneQuantizer.fold(layer.weight, bias: layer.bias, shift: shift, scales: scales)
        for r in 0..<4 {
            for o in 0..<6 {
                var original = Double(layer.bias?[o] ?? 0), transformed = Double(bias[o])
                for j in 0..<10 {
                    original += Double(x[r * 10 + j]) * Double(layer.weight.data[o * 10 + j])
                    transformed += Double((x[r * 10 + j] - shift[j]) / scales[j]) * Double(folded.data[o * 10 + j])
                }
                #expect(abs(original - transformed) < 1e-4 * max(1, abs(original)))
            }
        }
    }

    /// The emitted layer: shift = per-sample midpoints, scales = centred absmax / (2^(b−1)−1),
    /// weights = folded W quantized per row, and the packed runtime equals simulated fake-quant.
    @Test(arguments: [8, 6])
    func quantizedLayerMatchesDefinition(bits: Int) throws {
        let layer = Self.layer(out: 8, inp: 12, bias: false, seed: 4)
        let stats = PointStatistics(channels: 12, kinds: [.channelRange, .sampleMidpoint])
        for sample in 0..<3 {
            let x = Self.activations(rows: 20, channels: 12, seed: UInt64(10 + sample))
            x.withUnsafeBufferPointer { stats.add($0, rows: 20) }
        }
        let quantizer = try OutlierTuneQuantizer(plan: try Self.plan("layers/0/attention/q_proj", bits: bits))
        #expect(quantizer.requiredStatistics == [.channelRange, .sampleMidpoint])
        let q = try quantizer.quantize(layer, statistics: stats)
        let maxCode = Float((1 << (bits - 1)) - 1)
        let z = stats.sampleMidpoint!
        let a = try #require(q.activation)
        #expect(a.channelShift! == z && a.granularity == .perTensor && a.scale == 1 && a.bits == bits)
        for j in 0..<12 {
            let expected = max(abs(stats.maximum[j] - z[j]), abs(stats.minimum[j] - z[j])) / maxCode
            #expect(abs(a.channelScales![j] - expected) <= 1e-6 * expected)
        }
        // Symmetrization shrinks the ranges of channels with an offset (channels 0, 5, 10 sit at +3).
        for j in [0, 5, 10] { #expect(a.channelScales![j] * maxCode < 0.5 * stats.absMaximum[j]) }
        let (folded, bias) = OutlierTuneQuantizer.fold(layer.weight, bias: nil, shift: z, scales: a.channelScales!)
        #expect(q.bias! == bias)
        #expect(q.weight == .integer(WeightQuantization.quantize(folded, bits: bits, symmetric: true, groupSize: nil)))
        #expect(q.details["row_peak_to_rms_after_folding"] != nil)

        // Runtime (integer kernel) equals the fake-quant simulation of the same layer.
        let runtime = try IntegerLinear(q)
        let simulated = SimulatedLinear(q)
        let x = Self.activations(rows: 5, channels: 12, seed: 99)
        var y1 = [Float](repeating: 0, count: 40), y2 = y1
        runtime.forward(x, rows: 5, into: &y1)
        simulated.forward(x, rows: 5, into: &y2)
        let scale = y2.map(abs).max()!
        #expect(zip(y1, y2).allSatisfy { abs($0 - $1) <= 1e-4 * scale })
        // And it approximates the float layer.
        var reference = [Float](repeating: 0, count: 40)
        FloatLinear(weight: layer.weight).forward(x, rows: 5, into: &reference)
        let error = zip(y1, reference).map { abs($0 - $1) }.max()!
        // Bound from the measured max error / max |y|: 0.0101 (int8), 0.0303 (int6), times 2.5.
        let relative = error / reference.map(abs).max()!
        #expect(relative < (bits == 8 ? 0.025 : 0.075), "int\(bits): max error \(relative) of max |y|")
    }

    /// o_proj / down_proj get per-token dynamic activations and need no statistics. The layer's
    /// role decides, not its name: a down projection under another name is per token too, and a
    /// layer named like one but fed by a norm is calibrated per channel.
    @Test func outputProjectionsArePerToken() throws {
        let plan = try Self.plan("layers/1/mlp/down_proj", bits: 8)
        #expect(plan.role == .mlpOutputProjection(.silu) && plan.inputPoint == "layers.1.mlp.down_proj.input")
        let quantizer = try OutlierTuneQuantizer(plan: plan)
        #expect(quantizer.requiredStatistics.isEmpty)
        var layer = Self.layer(out: 4, inp: 48, bias: false, seed: 5)
        layer.name = "blocks/1/ffn/output_dense"
        layer.role = .mlpOutputProjection(.gelu)
        let q = try quantizer.quantize(layer, statistics: nil)
        #expect(q.activation?.granularity == .perToken && q.activation?.channelScales == nil)
        var renamed = plan
        renamed.role = .attentionInputProjection
        #expect(try OutlierTuneQuantizer(plan: renamed).requiredStatistics == [.channelRange, .sampleMidpoint])
        layer.name = "layers/1/mlp/down_proj"
        layer.role = .mlpInputProjection
        #expect(throws: PTQError.self) { try quantizer.quantize(layer, statistics: nil) }
    }

    /// The output-smoothing extension: per-token activations over inputs divided per channel by
    /// (absmax_j / mean absmax)^α, with the scales folded into the weight columns, so the float
    /// function is unchanged; without statistics it names the layer.
    @Test func outputSmoothing() throws {
        let quantizer = try OutlierTuneQuantizer(plan: try Self.plan("layers/1/mlp/down_proj", bits: 8,
                                                                     parameters: "{output_smoothing: 0.5}"))
        #expect(quantizer.requiredStatistics == [.channelRange])
        var layer = Self.layer(out: 6, inp: 48, bias: false, seed: 5)
        layer.name = "layers/1/mlp/down_proj"
        layer.inputPoint = "layers.1.mlp.down_proj.input"
        layer.role = .mlpOutputProjection(.silu)
        let x = Self.activations(rows: 30, channels: 48, seed: 8)
        let stats = PointStatistics(channels: 48, kinds: [.channelRange])
        x.withUnsafeBufferPointer { stats.add($0, rows: 30) }
        let q = try quantizer.quantize(layer, statistics: stats)
        let scales = try #require(q.activation?.channelScales)
        #expect(q.activation?.granularity == .perToken)
        let absMax = stats.absMaximum, mean = absMax.reduce(0, +) / 48
        for j in 0..<48 { #expect(abs(scales[j] - (absMax[j] / mean).squareRoot()) <= 1e-5 * scales[j]) }
        // Channel 3 has the outlier: its scale is the largest.
        #expect(scales.firstIndex(of: scales.max()!) == 3)
        let (folded, _) = OutlierTuneQuantizer.fold(layer.weight, bias: nil, shift: nil, scales: scales)
        for o in 0..<6 {
            var direct = 0.0, viaFold = 0.0
            for j in 0..<48 {
                direct += Double(x[j]) * Double(layer.weight.data[o * 48 + j])
                viaFold += Double(x[j] / scales[j]) * Double(folded.data[o * 48 + j])
            }
            #expect(abs(direct - viaFold) < 1e-4 * max(1, abs(direct)))
        }
        #expect { try quantizer.quantize(layer, statistics: nil) } throws: {
            ($0 as? PTQError)?.message.contains("down_proj") == true
        }
        // α outside 0…1 is a recipe error naming the parameter.
        #expect { try OutlierTuneQuantizer(plan: try Self.plan("layers/1/mlp/down_proj", bits: 8,
                                                                parameters: "{output_smoothing: 2}")) } throws: {
            ($0 as? PTQError)?.message.contains("output_smoothing") == true
        }
    }

    /// Ablation switch and parameter validation with recipe line numbers.
    @Test func parameters() throws {
        let plain = try OutlierTuneQuantizer(plan: try Self.plan("layers/0/mlp/up_proj", bits: 8,
                                                                 parameters: "{symmetrize: false}"))
        #expect(plain.requiredStatistics == [.channelRange])
        let clip = try OutlierTuneQuantizer(plan: try Self.plan("layers/0/mlp/up_proj", bits: 8,
                                                                parameters: "{clip_search: true}"))
        #expect(clip.requiredStatistics.contains(.reservoir))
        #expect { try OutlierTuneQuantizer(plan: try Self.plan("layers/0/mlp/up_proj", bits: 8, parameters: "{symetrize: false}")) }
            throws: { ($0 as? PTQError)?.message.contains("symetrize") == true }
    }

    /// The clipping search keeps (nearly) the full range for uniform data and clips a lone
    /// outlier when the many small rounding errors outweigh the one clipping error.
    @Test func clippingSearch() {
        var reservoir: [Float] = []
        var rng = SeededGenerator(seed: 8)
        for t in 0..<1000 { reservoir += [rng.float(in: -1...1), t == 0 ? 3 : rng.float(in: -1...1)] }
        let ratios = OutlierTuneQuantizer.searchClipping(reservoir: reservoir, rows: 1000, channels: 2, shift: [0, 0],
                                                         range: [1, 3], maxCode: 7, norm: 2.4)
        #expect(ratios[0] >= 0.9)
        #expect(ratios[1] < 0.7 && ratios[1] >= 0.21)
    }
}
