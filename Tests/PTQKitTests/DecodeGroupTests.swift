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

    /// The decode GEMVs' row split (`Parallel.decodeChunksPerThread`: one range a thread by
    /// default, 8 chunks a thread before) changes no logit: the same bits token after token for
    /// every runtime kind of layer, and the same bits from a pooled u4/u8 GEMV split 1, 3 or 8 ways
    /// a thread (a GEMV splits over output rows only).
    @Test(arguments: [("w8a8", KVCachePrecision.f16), ("w4a16", .f16), ("w4a8", .f32), ("ptq161", .f16), ("float", .f16)])
    func decodeChunksChangeNoLogit(scheme: String, precision: KVCachePrecision) throws {
        TokenKernels.kernelSwitchLock.lock()  // the attention switches stay put while logits are compared
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let model = try DecodeAllocationTests.model(scheme)
        let prompt = (0..<70).map { ($0 * 37 + 11) % 260 }
        let steps = [4, 17, 250, 99, 1, 64]
        func decodeAll(chunks: Int) -> [[UInt32]] {
            let saved = Parallel.decodeChunksPerThread
            Parallel.decodeChunksPerThread = chunks
            defer { Parallel.decodeChunksPerThread = saved }
            return Self.decode(model, prompt: prompt, steps: steps, precision: precision).map { $0.map(\.bitPattern) }
        }
        let old = decodeAll(chunks: 8)
        #expect(decodeAll(chunks: 1) == old)
        #expect(decodeAll(chunks: 3) == old)

        // A layer big enough to split on every pool (1536 × 576, u4 and u8, bf16 and float32 kernels).
        let rows = 1536, columns = 576, groupSize = 128, groups = (columns + groupSize - 1) / groupSize
        var rng = SplitMix(seed: 21)
        let codes = (0..<(rows * columns)).map { _ in UInt8(rng.next() % 256) }
        let scales = (0..<(rows * groups)).map { _ in Float(Int(rng.next() % 1000) + 1) * 1e-4 }
        let zeros = (0..<(rows * groups)).map { _ in Float(Int(rng.next() % 16)) }
        let x = (0..<columns).map { _ in Float(Int(rng.next() % 2001) - 1000) * 1e-3 }
        for format in [LowBit.CodeFormat.u4, .u8] {
            for bf16 in [true, false] {
                func gemv(chunks: Int) -> [UInt32] {
                    var y = [Float](repeating: 0, count: rows)
                    let saved = Parallel.decodeChunksPerThread
                    Parallel.decodeChunksPerThread = chunks
                    defer { Parallel.decodeChunksPerThread = saved }
                    Parallel.withDecodeChunks {
                        LowBit.gemv(format, codes: codes, rows: rows, columns: columns, groupSize: groupSize, scales: scales,
                                    zeros: zeros, x: x, y: &y, bf16: bf16)
                    }
                    return y.map(\.bitPattern)
                }
                let eight = gemv(chunks: 8)
                for chunks in [1, 3] {
                    let other = gemv(chunks: chunks)
                    let diff = (0..<rows).filter { other[$0] != eight[$0] }
                    #expect(diff.isEmpty, "\(format) bf16 \(bf16) \(chunks) chunks: rows \(diff.prefix(8)) of \(diff.count) differ, e.g. \(diff.first.map { (Float(bitPattern: other[$0]), Float(bitPattern: eight[$0])) } as Any)")
                }
            }
        }
    }
}
