import Foundation
import Kernels

extension LlamaModel {
    /// One decode GEMV of a group that runs as one pool job (`forwardConcurrently`).
    struct ConcurrentGEMV {
        // unowned(unsafe): the layer outlives the job (the model holds it); no retain per token.
        unowned(unsafe) let op: any LinearOp
        let x: UnsafePointer<Float>
        let y: UnsafeMutablePointer<Float>
    }

    /// Two or three decode GEMVs of one input row.
    struct ConcurrentGEMVs {
        let first: ConcurrentGEMV, second: ConcurrentGEMV, third: ConcurrentGEMV?
        var count: Int { third == nil ? 2 : 3 }
        func run(_ i: Int) {
            let g = i == 0 ? first : i == 1 ? second : third!
            g.op.forward(g.x, rows: 1, into: g.y)
        }
    }

    /// Whether decode runs the independent quantized GEMVs of a layer (q/k/v, gate/up) as one
    /// pool job, each whole layer a task (`PTQ_DECODE_GROUPS=0`: one job per layer, split
    /// over its rows, as before).
    static let concurrentGEMVs = ProcessInfo.processInfo.environment["PTQ_DECODE_GROUPS"] != "0"

    /// Runs the layers of `group` (the first the largest) as one pool job: task i runs layer i
    /// whole on whichever thread claims it (its own pool calls run inline there), so the group
    /// costs one dispatch and one wait instead of one per layer. Each output equals the layer's
    /// own `forward` bit for bit: a GEMV splits over output rows only, never over a reduction.
    static func forwardConcurrently(_ group: ConcurrentGEMVs) {
        Parallel.forEach(group.count, context: group) { context, i, _ in
            context!.load(as: ConcurrentGEMVs.self).run(i)
        }
    }
}
