import Calibration
import PTQCore
import Recipes

/// Plain per-row binarization, `ŵ = α·sign(w − μ) + μ` with μ the row mean and α = mean |w − μ|
/// (the XNOR-style baseline with no salient weights; 1 bit per weight plus a, b per row),
/// stored as a `BinaryWeight` with an empty column mask.
public struct BinarizeQuantizer: Quantizer {
    public init(plan: LayerPlan) throws(PTQError) {
        try plan.parameters.rejectUnknown(allowed: [])
        guard plan.activation == nil else {
            throw PTQError("\(plan.parameters.source): binarize is weight-only: \(plan.name) asks for quantized activations")
        }
    }

    public var requiredStatistics: Set<StatisticKind> { [] }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let rows = layer.weight.shape[0], n = layer.weight.shape[1]
        let w = layer.weight.data
        var grid = RowGrids(rows: rows, bits: 2)
        var signs = [UInt8](repeating: 0, count: w.count)
        for i in 0..<rows {
            grid.fit(row: i, salient: [], binarized: Array(w[(i * n)..<((i + 1) * n)]))
            for c in 0..<n { signs[i * n + c] = grid.quantize(w[i * n + c], row: i, salient: false).0 }
        }
        let weight = BinaryWeight(rows: rows, columns: n, maskKind: .columns, salientMask: [Bool](repeating: false, count: n),
                                  salientBits: 2, salientCodes: [], salientScale: grid.step, salientZero: grid.zero,
                                  signs: signs, scale: grid.alpha, offset: grid.mean, columnScale: nil)
        return QuantizedLinear(name: layer.name, method: "binarize", weight: .binary(weight), bias: layer.bias)
    }
}
