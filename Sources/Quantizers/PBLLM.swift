import Calibration
import Foundation
import PTQCore
import Recipes

/// PB-LLM-style partial binarization (Shang et al., ICLR 2024; reference hahnyuan/PB-LLM
/// `gptq_pb/`), the baseline PTQ1.61 compares against: the `salient_ratio` (0.1) of weights with
/// the largest |w| over the whole matrix keep `salient_bits` (8) asymmetric codes per row (an
/// unstructured 1-bit-per-weight mask), every other weight is binarized per row,
/// `ŵ = α·sign(w − μ) + μ` with μ the row mean and α = mean |w − μ| over the row's binarized
/// weights (the reference's "xnor" binarizer). Stored as a `BinaryWeight` with an element mask.
///
/// `gptq: true` adds GPTQ's column-by-column error feedback (the reference's GPTQ-PB) through
/// `GPTQ.solveColumns`, with the mask and every grid fixed from the original weights first
/// (so the stored parameters are exactly those the feedback used). The salient grid's range is
/// taken over the row's salient weights (and contains 0). Parameters: `salient_ratio`,
/// `salient_bits`, `gptq` (false), and with it `damping`, `block_size`, `act_order`.
public struct PBLLMQuantizer: Quantizer {
    public let salientRatio: Double
    public let salientBits: Int
    /// nil = no error feedback.
    public let solver: GPTQ?

    public init(plan: LayerPlan) throws(PTQError) {
        let p = plan.parameters
        try p.rejectUnknown(allowed: Set(["salient_ratio", "salient_bits", "gptq"]).union(GPTQ.parameterKeys(prefix: "")))
        salientRatio = try p.double("salient_ratio", default: 0.1, range: 0...1)
        salientBits = try p.int("salient_bits", default: 8, range: 2...8)
        if try p.bool("gptq", default: false) {
            let weight = WeightScheme(bits: salientBits, symmetric: false, groupSize: nil)
            solver = try GPTQ(weight: weight, parameters: p, prefix: "", rangeSearchByDefault: false)
        } else {
            for key in GPTQ.parameterKeys(prefix: "") where p.has(key) {
                throw p.error(key, "is a GPTQ setting; set gptq: true to use it")
            }
            solver = nil
        }
        guard plan.activation == nil else {
            throw PTQError("\(plan.parameters.source): pbllm is weight-only: \(plan.name) asks for quantized activations")
        }
    }

    public var requiredStatistics: Set<StatisticKind> { solver == nil ? [] : [.channelRange, .gram] }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let rows = layer.weight.shape[0], n = layer.weight.shape[1]
        let w = layer.weight.data
        // Unstructured mask: the top share of |w| over the whole matrix.
        let salientCount = min(w.count, Int((salientRatio * Double(w.count)).rounded()))
        var mask = [Bool](repeating: false, count: w.count)
        if salientCount > 0 {
            let order = w.indices.sorted { abs(w[$0]) > abs(w[$1]) || (abs(w[$0]) == abs(w[$1]) && $0 < $1) }
            for k in order.prefix(salientCount) { mask[k] = true }
        }
        var grid = RowGrids(rows: rows, bits: salientBits)
        for i in 0..<rows {
            let range = (i * n)..<((i + 1) * n)
            grid.fit(row: i, salient: range.filter { mask[$0] }.map { w[$0] },
                     binarized: range.filter { !mask[$0] }.map { w[$0] })
        }
        var codes = [UInt8](repeating: 0, count: w.count)
        var details: [String: String] = ["salient": String(format: "%.2f %% of weights at %d bits", 100 * Double(salientCount) / Double(max(1, w.count)), salientBits)]
        if let solver {
            guard let hessian = statistics?.hessian() else {
                throw PTQError("\(layer.name): pbllm with gptq needs the X·Xᵀ ('gram') statistic at \(layer.inputPoint); "
                               + "re-run `ptq calibrate` with this recipe")
            }
            let solved = try solver.solveColumns(layer.weight, hessian: hessian, layer: layer.name) { r, c, v in
                grid.quantize(v, row: r, salient: mask[r * n + c])
            }
            codes = solved.codes
            details["gptq"] = "damping \(solver.damping), block \(solver.blockSize), act_order \(solver.actOrder)"
            details["gptq_loss"] = String(format: "%.5g", solved.loss)
        } else {
            for i in 0..<rows { for c in 0..<n { codes[i * n + c] = grid.quantize(w[i * n + c], row: i, salient: mask[i * n + c]).0 } }
        }
        var salientCodes: [UInt8] = [], signs: [UInt8] = []
        salientCodes.reserveCapacity(salientCount)
        signs.reserveCapacity(w.count - salientCount)
        for k in 0..<w.count {
            if mask[k] { salientCodes.append(codes[k]) } else { signs.append(codes[k]) }
        }
        let weight = BinaryWeight(rows: rows, columns: n, maskKind: .elements, salientMask: mask, salientBits: salientBits,
                                  salientCodes: salientCodes, salientScale: grid.step, salientZero: grid.zero,
                                  signs: signs, scale: grid.alpha, offset: grid.mean, columnScale: nil)
        return QuantizedLinear(name: layer.name, method: "pbllm", weight: .binary(weight), bias: layer.bias, details: details)
    }
}

/// Per-row grids of a partially binarized matrix: an asymmetric `bits`-bit grid for the salient
/// weights (range containing 0) and the binarizer (μ, α = mean |w − μ|), every parameter rounded
/// to float16 as `BinaryWeight` stores it. Shared by `pbllm` and `binarize`.
struct RowGrids: Sendable {
    var bits: Int
    var step: [Float], zero: [UInt8], mean: [Float], alpha: [Float]

    init(rows: Int, bits: Int) {
        self.bits = bits
        step = [Float](repeating: 0, count: rows)
        zero = [UInt8](repeating: 0, count: rows)
        mean = [Float](repeating: 0, count: rows)
        alpha = [Float](repeating: 0, count: rows)
    }

    mutating func fit(row i: Int, salient: [Float], binarized: [Float]) {
        let levels = Float((1 << bits) - 1)
        if !salient.isEmpty {
            var lo = min(0, salient.min()!), hi = max(0, salient.max()!)
            if lo == 0 && hi == 0 { lo = -1; hi = 1 }
            let delta = BinaryWeight.half((hi - lo) / levels)
            step[i] = delta
            zero[i] = UInt8(min(max((-lo / delta).rounded(.toNearestOrEven), 0), levels))
        }
        if !binarized.isEmpty {
            let mu = binarized.reduce(0.0) { $0 + Double($1) } / Double(binarized.count)
            let a = binarized.reduce(0.0) { $0 + abs(Double($1) - mu) } / Double(binarized.count)
            mean[i] = BinaryWeight.half(Float(mu))
            alpha[i] = BinaryWeight.half(Float(a))
        }
    }

    /// The stored code (salient code, or sign bit 1 = +1) and its value.
    func quantize(_ v: Float, row i: Int, salient: Bool) -> (UInt8, Float) {
        if salient {
            let levels = Float((1 << bits) - 1), z = Float(zero[i])
            let u = step[i] > 0 ? min(max((v / step[i]).rounded(.toNearestOrEven) + z, 0), levels) : z
            return (UInt8(u), step[i] * (u - z))
        }
        let positive = v >= mean[i]
        return (positive ? 1 : 0, (positive ? alpha[i] : -alpha[i]) + mean[i])
    }
}
