import Foundation
import Testing
@testable import Kernels
@testable import Models
@testable import PTQKit
import PTQCore
import CKernels

/// A measurement harness, not a test: off unless `PTQ_GEMV_SWEEP=<model.ptq>` is set. Runs a real
/// model's decode GEMVs without attention and the serial steps, to tell where the layer GEMVs'
/// time goes (issue 13, fourteenth pass): model order (cold, as in decode, with the LM head
/// between passes) against one layer repeated (warm) and the head alone, at 1 and 2 threads, and
/// the pool's empty-job cost. Prints; asserts nothing.
@Suite("Decode GEMV sweep", .enabled(if: ProcessInfo.processInfo.environment["PTQ_GEMV_SWEEP"] != nil))
struct DecodeGEMVSweep {
    /// CLOCK_MONOTONIC, or the caller's CPU time with `PTQ_GEMV_SWEEP_CPU=1` (load-insensitive at one thread).
    static let clock = ProcessInfo.processInfo.environment["PTQ_GEMV_SWEEP_CPU"] == "1" ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return Double(ts.tv_sec) * 1e6 + Double(ts.tv_nsec) / 1e3
    }

    /// One decode job of a layer: a group (one pool job, a layer a task) or one layer.
    enum Job {
        case group([any LinearOp], kind: Int)
        case single(any LinearOp, kind: Int)
        var kind: Int { switch self { case .group(_, let k), .single(_, let k): k } }
        var bytes: Int {
            switch self {
            case .group(let ops, _): ops.reduce(0) { $0 + $1.weightBytes }
            case .single(let op, _): op.weightBytes
            }
        }
    }

    @Test func sweep() throws {
        let path = ProcessInfo.processInfo.environment["PTQ_GEMV_SWEEP"]!
        let passes = Int(ProcessInfo.processInfo.environment["PTQ_GEMV_SWEEP_PASSES"] ?? "") ?? 40
        guard let model = try PTQ.loadAnyModel(path: path).generativeModel(for: "sweep", source: path) as? LlamaModel
        else { return }
        _ = PTQ.waitForHugePages()
        let c = model.config
        let width = max(c.hiddenSize, c.intermediateSize, c.headCount * c.headDim) * 2
        var xs = [Float](repeating: 0, count: width), ys = [Float](repeating: 0, count: max(c.vocabSize, width) * 3)
        var rng = SplitMix(seed: 3)
        for i in xs.indices { xs[i] = Float(Int(rng.next() % 2001) - 1000) / 1000 }
        let names = ["q/k/v", "o_proj", "gate/up", "down", "head"]
        func jobs(of layer: LlamaModel.Layer, grouped: Bool = true) -> [Job] {
            grouped ? [.group([layer.q, layer.k, layer.v], kind: 0), .single(layer.o, kind: 1),
                       .group([layer.gate, layer.up], kind: 2), .single(layer.down, kind: 3)]
                : [.single(layer.q, kind: 0), .single(layer.k, kind: 0), .single(layer.v, kind: 0), .single(layer.o, kind: 1),
                   .single(layer.gate, kind: 2), .single(layer.up, kind: 2), .single(layer.down, kind: 3)]
        }
        let order = model.layers.flatMap { jobs(of: $0) }
        let splitOrder = model.layers.flatMap { jobs(of: $0, grouped: false) }
        let repeated = Array(repeating: jobs(of: model.layers[c.layerCount / 2]), count: c.layerCount).flatMap { $0 }
        xs.withUnsafeBufferPointer { xp in
            ys.withUnsafeMutableBufferPointer { yp in
                let x = xp.baseAddress!, y = yp.baseAddress!
                func run(_ job: Job) {
                    switch job {
                    case .single(let op, _): op.forward(x, rows: 1, into: y)
                    case .group(let ops, _):
                        LlamaModel.forwardConcurrently(LlamaModel.ConcurrentGEMVs(
                            first: .init(op: ops[0], x: x, y: y), second: .init(op: ops[1], x: x, y: y + width),
                            third: ops.count > 2 ? .init(op: ops[2], x: x, y: y + 2 * width) : nil))
                    }
                }
                func head() { model.lmHead.forward(x, rows: 1, into: y) }
                // µs per pass per kind, median over passes; `between` runs untimed between passes.
                func time(_ list: [Job], gapMicroseconds: Double = 0, between: () -> Void, passes: Int) -> [Double] {
                    var samples = [[Double]](repeating: [], count: 5)
                    for _ in 0..<passes {
                        between()
                        var sums = [Double](repeating: 0, count: 5)
                        for job in list {
                            let t0 = Self.now()
                            run(job)
                            sums[job.kind] += Self.now() - t0
                            if gapMicroseconds > 0 { let until = Self.now() + gapMicroseconds; while Self.now() < until {} }
                        }
                        for k in 0..<4 { samples[k].append(sums[k]) }
                        let t0 = Self.now()
                        head()
                        samples[4].append(Self.now() - t0)
                    }
                    return samples.map { $0.isEmpty ? 0 : $0.sorted()[$0.count / 2] }
                }
                var bytes = [Int](repeating: 0, count: 5)
                for job in order { bytes[job.kind] += job.bytes }
                bytes[4] = model.lmHead.weightBytes
                func report(_ label: String, _ us: [Double], layerBytes: [Int]) {
                    var line = label.padding(toLength: 34, withPad: " ", startingAt: 0)
                    var total = 0.0, totalBytes = 0
                    for k in 0..<5 {
                        let b = k < 4 ? layerBytes[k] : bytes[4]
                        line += String(format: " %@ %6.0f µs %5.1f GB/s |", names[k], us[k], Double(b) / us[k] / 1e3)
                        if k < 4 { total += us[k]; totalBytes += b }
                    }
                    line += String(format: " layers %6.0f µs %5.1f GB/s", total, Double(totalBytes) / total / 1e3)
                    print(line)
                }
                var repeatedBytes = [Int](repeating: 0, count: 5)
                for job in repeated { repeatedBytes[job.kind] += job.bytes }
                print("sweep \(path): \(order.count) layer jobs a token, \(passes) passes, medians")
                // Configurations rotated pass by pass (the machine's load hits all alike).
                let env = ProcessInfo.processInfo.environment["PTQ_GEMV_SWEEP_CONFIGS"] ?? "2c8 2c4 2c2 2c1 2s8 2s1 1c8 2r8"
                let configs = env.split(separator: " ").map(String.init)
                var results = [String: [[Double]]]()
                for _ in 0..<max(1, passes / 5) {
                    for config in configs {
                        let chars = Array(config)
                        Parallel.setThreadCount(Int(String(chars[0]))!)
                        ck_pool_set_chunks_per_thread(Int32(String(chars[2...]))!)
                        let list = chars[1] == "s" ? splitOrder : chars[1] == "r" ? repeated : order
                        let us = time(list, between: chars[1] == "r" ? {} : head, passes: 5)
                        results[config, default: []].append(us)
                    }
                }
                for config in configs {
                    let rounds = results[config]!
                    let us = (0..<5).map { k in rounds.map { $0[k] }.sorted()[rounds.count / 2] }
                    report(config, us, layerBytes: config.contains("r") ? repeatedBytes : bytes)
                }
                ck_pool_set_chunks_per_thread(0)
                Parallel.setThreadCount(2)
                // Whole decode steps, `decodeChunksPerThread` 8 (the old split) against the
                // setting, alternating token by token after a 512-token prompt.
                let savedDecodeChunks = Parallel.decodeChunksPerThread
                let cache = LlamaModel.KVCache(config: c, capacity: 512 + 2 * passes + 1, precision: .f16)
                var rng2 = SplitMix(seed: 5)
                let prompt = (0..<512).map { _ in Int(rng2.next() % UInt64(c.vocabSize)) }
                _ = model.forward(prompt, cache: cache, logitRows: 511..<512)
                var logits = [Float](repeating: 0, count: c.vocabSize)
                var tokenTimes: [Int: [Double]] = [:]
                for i in 0..<(2 * passes) {
                    let chunks = i % 2 == 0 ? 8 : savedDecodeChunks
                    Parallel.decodeChunksPerThread = chunks
                    let t0 = Self.now()
                    logits.withUnsafeMutableBufferPointer { model.decode((i * 7919) % c.vocabSize, cache: cache, into: $0) }
                    tokenTimes[chunks, default: []].append(Self.now() - t0)
                }
                Parallel.decodeChunksPerThread = savedDecodeChunks
                for (chunks, times) in tokenTimes.sorted(by: { $0.key > $1.key }) {
                    let sorted = times.sorted()
                    print(String(format: "T2 decode step, %d chunks a thread: median %.0f µs (%.1f tok/s), p25 %.0f, p75 %.0f, %d tokens",
                                 chunks, sorted[sorted.count / 2], 1e6 / sorted[sorted.count / 2], sorted[sorted.count / 4],
                                 sorted[sorted.count * 3 / 4], sorted.count))
                }
                // The pool's own cost: an empty job of 2 and of 8 tasks.
                for tasks in [2, 8] {
                    var samples: [Double] = []
                    for _ in 0..<2000 {
                        let t0 = Self.now()
                        Parallel.forEach(tasks, context: 0) { _, _, _ in }
                        samples.append(Self.now() - t0)
                    }
                    samples.sort()
                    print(String(format: "T2 empty pool job, %d tasks: median %.2f µs, p90 %.2f µs", tasks,
                                 samples[samples.count / 2], samples[samples.count * 9 / 10]))
                }
            }
        }
    }
}
