import Foundation
import Synchronization
import Kernels

/// `LlamaModel.concurrentDecodeGEMVs`' value (the environment's, until set).
private let groupsSetting = Atomic<Bool>(ProcessInfo.processInfo.environment["PTQ_DECODE_GROUPS"] != "0")

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
    /// pool job, each whole layer a task on one thread, instead of one job per layer split over
    /// its rows. The same results either way (bit for bit); on by default, `PTQ_DECODE_GROUPS=0`
    /// in the environment starts the process with it off. Process-wide.
    public static var concurrentDecodeGEMVs: Bool {
        get { groupsSetting.load(ordering: .relaxed) }
        set { groupsSetting.store(newValue, ordering: .relaxed) }
    }

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
