import Foundation
import Synchronization
import Kernels

/// `LlamaModel.concurrentDecodeGEMVs`' value (the environment's, until set).
private let groupsSetting = Atomic<Bool>(ProcessInfo.processInfo.environment["PTQ_DECODE_GROUPS"] != "0")
/// `LlamaModel.fusedDecodeSchedule`'s value (the environment's, until set).
private let fusedSetting = Atomic<Bool>(ProcessInfo.processInfo.environment["PTQ_DECODE_FUSED"] != "0")
/// `LlamaModel.fusedResidualNorm`'s value (the environment's, until set).
private let residualNormSetting = Atomic<Bool>(ProcessInfo.processInfo.environment["PTQ_RESIDUAL_NORM"] != "0")

extension LlamaModel {
    /// One decode GEMV of a group that runs as one pool job (`forwardConcurrently`).
    struct ConcurrentGEMV {
        // unowned(unsafe): the layer outlives the job (the model holds it); no retain per token.
        unowned(unsafe) let op: any LinearOp
        let x: UnsafePointer<Float>
        let y: UnsafeMutablePointer<Float>
        /// What the fused schedule does with the output on the same thread, right after the GEMV.
        var then: Epilogue? = nil
    }

    /// The serial steps between the q/k/v GEMVs and attention, run per output on the thread that
    /// computed it (`fusedDecodeSchedule`): RoPE of q or k, then rounding k or v into the half
    /// cache, head by head — the same calls on the same values as the caller's separate pass.
    struct Epilogue {
        /// RoPE with `angles` (one position's row of `RoPE.fill`), or nil (values).
        let rope: RoPE?
        let angles: UnsafePointer<Float>
        let heads: Int, dim: Int
        /// The layer's head-major half cache at the new position (head h at `half + h·headStride`),
        /// or nil (float cache, or q).
        let half: UnsafeMutablePointer<UInt16>?
        let headStride: Int
        /// Tiled keys (`KVCache.tiledKeys`): `half` is the layer's start and this the position.
        var tiledPosition: Int? = nil

        func apply(_ y: UnsafeMutablePointer<Float>) {
            if let rope { rope.apply(y, heads: heads, angles: angles) }
            guard let half else { return }
            if let tiledPosition {
                for h in 0..<heads {
                    TokenKernels.roundToHalf(y + h * dim, intoTiledHead: half + h * headStride, position: tiledPosition,
                                             dim: dim)
                }
                return
            }
            for h in 0..<heads { TokenKernels.roundToHalf(y + h * dim, into: half + h * headStride, count: dim) }
        }
    }

    /// Two or three decode GEMVs of one input row.
    struct ConcurrentGEMVs {
        let first: ConcurrentGEMV, second: ConcurrentGEMV, third: ConcurrentGEMV?
        var count: Int { third == nil ? 2 : 3 }
        func run(_ i: Int) {
            let g = i == 0 ? first : i == 1 ? second : third!
            g.op.forward(g.x, rows: 1, into: g.y)
            g.then?.apply(g.y)
        }
    }

    /// Whether decode runs the fused layer schedule (on by default; `PTQ_DECODE_FUSED=0` in the
    /// environment starts the process with the old one): with `concurrentDecodeGEMVs`, RoPE and
    /// the half-cache append of q, k and v run inside the q/k/v job, each on the thread that
    /// computed that output, instead of as a serial pass of the caller. The same arithmetic on
    /// the same values: logits equal the old schedule's bit for bit. Process-wide.
    public static var fusedDecodeSchedule: Bool {
        get { fusedSetting.load(ordering: .relaxed) }
        set { fusedSetting.store(newValue, ordering: .relaxed) }
    }

    /// Whether each residual add runs in the pass of the RMSNorm after it (`Ops.addRMSNorm`: the
    /// o_proj output into the MLP norm, the down_proj output into the next layer's attention norm
    /// or the final norm) instead of as a separate pass: one read of the residual row instead of
    /// two, two serial passes a layer fewer. Bit-identical (the same sums in the same order). On
    /// by default; `PTQ_RESIDUAL_NORM=0` in the environment starts the process with the old
    /// passes. With an observer the down_proj residual is added at once (the observer sees the
    /// layer output). Process-wide.
    public static var fusedResidualNorm: Bool {
        get { residualNormSetting.load(ordering: .relaxed) }
        set { residualNormSetting.store(newValue, ordering: .relaxed) }
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
