import Kernels
import Models
import PTQCore

/// A linear layer whose input arrives as AdaLog codes (AdaLog's post-GELU site) and whose
/// weights are integer codes: `y = Ŵ·AdaLog(x + δ) + b'` (δ = `inputOffset`, b' = b − Ŵ·δ1
/// already folded by the quantizer).
///
/// Computed in the code domain with integer accumulation: per token, the weight columns whose
/// inputs share a code are summed as integers, `acc[c][o] = Σ_{j: k_j = c} u[o, j]`, and each
/// code's level is applied once: `y[o] = s_o·Σ_c level[c]·(acc[c][o] − z_o·n_c) + b'[o]`, with
/// `n_c` the number of inputs with code c. The zero code contributes nothing. Levels are
/// `s·m[c]/D·2^(−shift[c])`: the mantissa-and-shift multiply of integer hardware.
public final class LogInputLinear: LinearOp {
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let quantizer: AdaLogQuantizer
    public let offset: Float
    public let bias: [Float]?
    /// Weight codes transposed to `[in, out]` (one input's column is contiguous).
    let codesT: [UInt16]
    let scales: [Float]
    let zeros: [Float]
    let levels: [Float]
    let thresholds: [Float]

    public var weightBytes: Int {
        2 * codesT.count + 4 * (scales.count + zeros.count + levels.count + thresholds.count + (bias?.count ?? 0))
    }

    /// Per-output-channel integer weights only (the layer's weights are per row in AdaLog's
    /// pipeline); throws a `PTQError` naming the layer otherwise.
    public init(_ q: QuantizedLinear) throws(PTQError) {
        let layer = q.name.isEmpty ? "quantized linear" : q.name
        func fail(_ message: String) -> PTQError { PTQError("\(layer): \(message)") }
        guard case .integer(let w) = q.weight else { throw fail("AdaLog inputs need integer weights") }
        guard let a = q.activation, let log = a.logarithmic else { throw fail("no AdaLog input quantizer") }
        guard a.bits == log.bits else { throw fail("activation bits \(a.bits) differ from the AdaLog quantizer's \(log.bits)") }
        guard w.groupSize >= w.columns else { throw fail("AdaLog inputs need one weight group per output channel (group size \(w.groupSize))") }
        guard w.codes.count == w.rows * w.columns, w.scales.count == w.rows else {
            throw fail("\(w.codes.count) codes and \(w.scales.count) scales for a \(w.rows)×\(w.columns) weight")
        }
        if let zeros = w.zeros, zeros.count != w.rows { throw fail("\(zeros.count) zero points for \(w.rows) rows") }
        if let bias = q.bias, bias.count != w.rows { throw fail("bias has \(bias.count) values for \(w.rows) outputs") }
        guard (2...8).contains(w.bits), w.codes.allSatisfy({ Int($0) < 1 << w.bits }) else {
            throw fail("weight codes do not fit \(w.bits) bits")
        }
        guard w.columns <= 1 << 16 else { throw fail("\(w.columns) inputs exceed the int32 bucket range") }
        let offset = a.inputOffset ?? 0
        guard offset.isFinite else { throw fail("input offset \(offset) is not finite") }
        name = q.name
        inFeatures = w.columns
        outFeatures = w.rows
        quantizer = log
        self.offset = offset
        bias = q.bias
        var t = [UInt16](repeating: 0, count: w.codes.count)
        for o in 0..<w.rows { for j in 0..<w.columns { t[j * w.rows + o] = UInt16(w.codes[o * w.columns + j]) } }
        codesT = t
        scales = w.scales
        zeros = w.zeros ?? [Float](repeating: Float(w.symmetricZero), count: w.rows)
        levels = log.levels
        thresholds = log.thresholds
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        let k = inFeatures, n = outFeatures, levelCount = levels.count, zeroCode = quantizer.zeroCode
        let shifted = UnsafeMutablePointer<Float>.allocate(capacity: k)
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: k)
        let acc = UnsafeMutablePointer<Int32>.allocate(capacity: levelCount * n)
        var counts = [Int](repeating: 0, count: levelCount)
        defer { shifted.deallocate(); codes.deallocate(); acc.deallocate() }
        codesT.withUnsafeBufferPointer { wt in
        thresholds.withUnsafeBufferPointer { th in
            for r in 0..<rows {
                for j in 0..<k { shifted[j] = x[r * k + j] + offset }
                CodeAttention.encodeDescending(shifted, count: k, thresholds: th, into: codes)
                acc.initialize(repeating: 0, count: levelCount * n)
                for c in 0..<levelCount { counts[c] = 0 }
                for j in 0..<k {
                    let c = Int(codes[j])
                    if c == zeroCode { continue }
                    counts[c] += 1
                    let bucket = acc + c * n, column = wt.baseAddress! + j * n
                    for o in 0..<n { bucket[o] &+= Int32(column[o]) }
                }
                let out = y + r * n
                for o in 0..<n { out[o] = 0 }
                for c in 0..<levelCount where counts[c] > 0 {
                    let level = levels[c], count = Float(counts[c]), bucket = acc + c * n
                    for o in 0..<n { out[o] += level * (Float(bucket[o]) - zeros[o] * count) }
                }
                for o in 0..<n { out[o] *= scales[o] }
                if let bias { for o in 0..<n { out[o] += bias[o] } }
            }
        }}
    }
}
