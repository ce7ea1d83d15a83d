import Foundation
import Testing
@testable import Kernels
@testable import Models
@testable import PTQKit

@Suite("Decode GEMV groups")
struct DecodeGroupTests {
    /// The logits of decoding `steps` one token at a time after `prompt` (prefilled) on a fresh cache.
    static func decode(_ model: LlamaModel, prompt: [Int], steps: [Int], precision: KVCachePrecision) -> [[Float]] {
        let cache = LlamaModel.KVCache(config: model.config, capacity: 100, precision: precision)
        _ = model.forward(prompt, cache: cache, logitRows: (prompt.count - 1)..<prompt.count)
        return steps.map { token in
            var logits = [Float](repeating: 0, count: model.config.vocabSize)
            logits.withUnsafeMutableBufferPointer { model.decode(token, cache: cache, into: $0) }
            return logits
        }
    }

    /// Decode with the quantized q/k/v and gate/up run as one pool job each (a layer a task,
    /// `LlamaModel.concurrentDecodeGEMVs`) gives the same logits bit for bit as one job per
    /// layer split over its rows, and as `forward`, token after token on an f16 and an f32 cache.
    @Test(arguments: [("w8a8", KVCachePrecision.f16), ("w4a16", .f16), ("w4a8", .f16), ("w4a8", .f32)])
    func groupedDecodeMatchesSplitGEMVs(scheme: String, precision: KVCachePrecision) throws {
        TokenKernels.kernelSwitchLock.lock()  // the attention switches stay put while logits are compared
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let model = try DecodeAllocationTests.model(scheme)
        #expect(!(model.layers[0].q is FloatLinear) && model.layers[0].floatQKV == nil)
        let prompt = (0..<70).map { ($0 * 29 + 3) % 260 }
        let steps = [5, 17, 200, 99, 1]
        func decodeAll(grouped: Bool) -> [[Float]] {
            let saved = LlamaModel.concurrentDecodeGEMVs
            LlamaModel.concurrentDecodeGEMVs = grouped
            defer { LlamaModel.concurrentDecodeGEMVs = saved }
            return Self.decode(model, prompt: prompt, steps: steps, precision: precision)
        }
        let grouped = decodeAll(grouped: true), split = decodeAll(grouped: false)
        #expect(grouped == split)
        #expect(grouped.allSatisfy { $0.allSatisfy(\.isFinite) })
        // forward of one token runs the same path as decode.
        let cache = LlamaModel.KVCache(config: model.config, capacity: 100, precision: precision)
        _ = model.forward(prompt, cache: cache, logitRows: (prompt.count - 1)..<prompt.count)
        #expect(model.forward([steps[0]], cache: cache) == grouped[0])
    }

    /// The fused schedule (`LlamaModel.fusedDecodeSchedule`: RoPE and the half-cache append run
    /// inside the q/k/v job) and the residual adds fused into the norms (`fusedResidualNorm`) give
    /// the same logits bit for bit as the old schedule, token after token, for every runtime kind
    /// of layer and both cache types.
    @Test(arguments: [("w8a8", KVCachePrecision.f16), ("w4a16", .f16), ("w4a16", .f32), ("w4a8", .f16),
                      ("w4a8", .f32), ("ptq161", .f16), ("float", .f16)])
    func fusedScheduleMatchesOldSchedule(scheme: String, precision: KVCachePrecision) throws {
        TokenKernels.kernelSwitchLock.lock()  // the attention switches stay put while logits are compared
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let model = try DecodeAllocationTests.model(scheme)
        let prompt = (0..<70).map { ($0 * 31 + 5) % 260 }
        let steps = [9, 17, 250, 99, 1, 64, 3]
        func decodeAll(fused: Bool, residualNorm: Bool) -> [[Float]] {
            let saved = (LlamaModel.fusedDecodeSchedule, LlamaModel.fusedResidualNorm)
            LlamaModel.fusedDecodeSchedule = fused
            LlamaModel.fusedResidualNorm = residualNorm
            defer { (LlamaModel.fusedDecodeSchedule, LlamaModel.fusedResidualNorm) = saved }
            return Self.decode(model, prompt: prompt, steps: steps, precision: precision)
        }
        let old = decodeAll(fused: false, residualNorm: false)
        // Bit patterns: `==` on floats would also pass -0 against +0.
        func bits(_ logits: [[Float]]) -> [[UInt32]] { logits.map { $0.map(\.bitPattern) } }
        #expect(bits(decodeAll(fused: true, residualNorm: false)) == bits(old))
        // The residual adds fused into the norms (`fusedResidualNorm`), alone and with the epilogues
        // (the prompt's prefill runs them too).
        #expect(bits(decodeAll(fused: false, residualNorm: true)) == bits(old))
        #expect(bits(decodeAll(fused: true, residualNorm: true)) == bits(old))
        #expect(old.allSatisfy { $0.allSatisfy(\.isFinite) })
    }
}
