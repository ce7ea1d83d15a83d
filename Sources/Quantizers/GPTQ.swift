import Calibration
import Foundation
import Kernels
import PTQCore
import Recipes

/// GPTQ (Frantar et al., ICLR 2023; reference IST-DASLab/gptq `gptq.py`, `quant.py`): quantizes a
/// weight matrix column by column and spreads each column's rounding error over the columns not
/// yet quantized, weighted by the inverse Hessian of the layer's input, `H = Σ x·xᵀ`.
///
/// Follows the reference: dead inputs (H_jj = 0) get H_jj = 1 and zero weights; act-order
/// (columns by decreasing H_jj); damping `damp · mean(diag H)`; `Hinv` = upper Cholesky factor
/// of H⁻¹; blocks of `blockSize` columns with the lazy batch update of the remaining columns;
/// scales and zero points fixed before the error feedback starts, optionally with the
/// reference's MSE range search (shrink p = 1, 0.99, … down to 1 − maxShrink, error
/// Σ|Q(w) − w|^norm per row).
///
/// Choices the reference leaves open (documented in docs/RESULTS.md):
/// - Groups use **static** parameters, computed from the original weights before any update
///   (AutoGPTQ's `static_groups`), so act-order and groups combine without a `g_idx` table.
/// - Symmetric codes use this project's grid ±(2^(b−1) − 1), or with `range: full` the Q4_0-style
///   grid −2^(b−1) … 2^(b−1) − 1 (the reference's symmetric grid is
///   the asymmetric one with zero 2^(b−1)); asymmetric codes are the reference's [0, 2^b − 1]
///   with an integer zero point and a range that contains 0.
/// - When H + damping is not positive definite the damping grows ×10, at least to 10⁻⁶ of the
///   mean diagonal (up to 4 times), instead of failing; the damping used is reported.
public struct GPTQ: Sendable {
    public var bits: Int
    public var symmetric: Bool
    /// Columns per group; nil = one group per output row.
    public var groupSize: Int?
    /// Symmetric grids: restricted ±(2^(b−1) − 1) or the full Q4_0-style grid.
    public var range: WeightScheme.SymmetricRange = .restricted
    public var blockSize: Int
    /// Relative damping (fraction of the mean diagonal of H).
    public var damping: Double
    public var actOrder: Bool
    /// The MSE range search (`quant.py` `mse=True`): nil = plain min–max ranges.
    public var rangeSearch: RangeSearch?

    public struct RangeSearch: Sendable, Equatable {
        public var norm: Double = 2.4
        public var grid: Int = 100
        public var maxShrink: Double = 0.8
        public init(norm: Double = 2.4, grid: Int = 100, maxShrink: Double = 0.8) {
            self.norm = norm
            self.grid = grid
            self.maxShrink = maxShrink
        }
    }

    public struct Result: Sendable {
        public var weight: IntegerWeight
        /// The reference's loss, Σ over columns of ‖w − q‖² / (2·Hinv_jj²), for reports.
        public var loss: Double
        /// Absolute damping added to the diagonal of H.
        public var dampingUsed: Double
    }

    public init(bits: Int, symmetric: Bool, groupSize: Int? = nil, blockSize: Int = 128, damping: Double = 0.01,
                actOrder: Bool = true, rangeSearch: RangeSearch? = RangeSearch()) {
        self.bits = bits
        self.symmetric = symmetric
        self.groupSize = groupSize
        self.blockSize = blockSize
        self.damping = damping
        self.actOrder = actOrder
        self.rangeSearch = rangeSearch
    }

    /// Quantizes `weight` (out × in) against the input Hessian `hessian` (in × in, row-major).
    public func quantize(_ weight: Tensor, hessian: [Double], layer: String) throws(PTQError) -> Result {
        let rows = weight.shape[0], n = weight.shape[1]
        let group = min(groupSize ?? n, n)
        let groups = (n + group - 1) / group
        // Scales and zero points first, from the original weights (static groups).
        let grid = WeightGrid(bits: bits, symmetric: symmetric, range: range)
        var scales = [Float](repeating: 0, count: rows * groups)
        var zeros = [Float](repeating: 0, count: rows * groups)
        for r in 0..<rows {
            for g in 0..<groups {
                let values = weight.data[(r * n + g * group)..<(r * n + min(n, (g + 1) * group))]
                let (s, z) = grid.parameters(for: values, search: rangeSearch)
                scales[r * groups + g] = s
                zeros[r * groups + g] = z
            }
        }
        let solved = try solveColumns(weight, hessian: hessian, layer: layer) { r, column, v in
            let s = scales[r * groups + column / group], z = zeros[r * groups + column / group]
            let u = grid.code(v, scale: s, zero: z)
            return (UInt8(u), s * (Float(u) - z))
        }
        let integer = IntegerWeight(bits: bits, rows: rows, columns: n, groupSize: group, symmetric: symmetric,
                                    codes: solved.codes, scales: scales, zeros: symmetric ? nil : zeros)
        return Result(weight: integer, loss: solved.loss, dampingUsed: solved.damping)
    }

    /// The column-by-column solver, shared by every grid: `quantizeElement(row, column, value)`
    /// returns the element's code and its dequantized value on the caller's fixed grid (plain
    /// groups here, SplitQuant's per-cluster grids in `SplitQuant`). Dead inputs get the code
    /// of 0.
    func solveColumns(_ weight: Tensor, hessian: [Double], layer: String,
                      quantizeElement: (Int, Int, Float) -> (UInt8, Float)) throws(PTQError)
        -> (codes: [UInt8], loss: Double, damping: Double) {
        let rows = weight.shape[0], n = weight.shape[1]
        guard hessian.count == n * n else {
            throw PTQError("\(layer): GPTQ Hessian has \(hessian.count) entries, expected \(n)×\(n)")
        }
        if let bad = hessian.firstIndex(where: { !$0.isFinite }) {
            throw PTQError("\(layer): GPTQ Hessian entry \(bad) is not finite")
        }
        var h = hessian
        var dead = [Bool](repeating: false, count: n)
        for j in 0..<n where h[j * n + j] == 0 { h[j * n + j] = 1; dead[j] = true }
        let order: [Int] = actOrder
            ? (0..<n).sorted { h[$0 * n + $0] > h[$1 * n + $1] || (h[$0 * n + $0] == h[$1 * n + $1] && $0 < $1) }
            : Array(0..<n)
        var permuted = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { permuted[i * n + j] = h[order[i] * n + order[j]] } }
        var meanDiagonal = 0.0
        for i in 0..<n { meanDiagonal += permuted[i * n + i] }
        meanDiagonal /= Double(n)
        var damp = damping * meanDiagonal
        var factor: [Double]?
        for _ in 0..<5 {
            var damped = permuted
            for i in 0..<n { damped[i * n + i] += damp }
            factor = BLAS.inverseCholeskyUpper(damped, n: n)
            if factor != nil { break }
            damp = max(damp * 10, 1e-6 * abs(meanDiagonal))
        }
        guard let factor else {
            throw PTQError("\(layer): the GPTQ Hessian is not positive definite even with damping \(damp)")
        }
        let hinv = factor.map { Float($0) }

        // Columns of W in act order, each contiguous: wt[i * rows + r] = W[r, order[i]].
        var wt = [Float](repeating: 0, count: n * rows)
        for i in 0..<n where !dead[order[i]] {
            for r in 0..<rows { wt[i * rows + r] = weight.data[r * n + order[i]] }
        }
        var codes = [UInt8](repeating: 0, count: rows * n)
        var loss = 0.0
        let block = max(1, blockSize)
        var errors = [Float](repeating: 0, count: block * rows)
        wt.withUnsafeMutableBufferPointer { w in
            hinv.withUnsafeBufferPointer { hi in
                errors.withUnsafeMutableBufferPointer { e in
                    var i1 = 0
                    while i1 < n {
                        let i2 = min(n, i1 + block)
                        for i in i1..<i2 {
                            let column = w.baseAddress! + i * rows
                            let err = e.baseAddress! + (i - i1) * rows
                            let d = hi[i * n + i]
                            for r in 0..<rows {
                                let v = column[r]
                                let (u, q) = quantizeElement(r, order[i], v)
                                codes[r * n + order[i]] = u
                                let delta = v - q
                                loss += Double(delta * delta) / Double(2 * d * d)
                                err[r] = delta / d
                            }
                            for j in (i + 1)..<i2 {
                                let hij = hi[i * n + j]
                                let target = w.baseAddress! + j * rows
                                for r in 0..<rows { target[r] -= err[r] * hij }
                            }
                        }
                        if i2 < n {
                            // W[:, i2:] −= Err · Hinv[i1:i2, i2:], in the transposed layout:
                            // wt[i2:, :] −= Hinv[i1:i2, i2:]ᵀ · Err.
                            updateRemainingColumns(hinv: hi.baseAddress! + i1 * n + i2, ldh: n, count: i2 - i1,
                                                   rest: n - i2, errors: e.baseAddress!, rows: rows,
                                                   target: w.baseAddress! + i2 * rows)
                        }
                        i1 = i2
                    }
                }
            }
        }
        // Dead inputs: the reference zeroes their weights; code them as exact zeros of the grid.
        for j in 0..<n where dead[j] {
            for r in 0..<rows { codes[r * n + j] = quantizeElement(r, j, 0).0 }
        }
        return (codes, loss, damp)
    }

    /// `target[rest × rows] −= hinvᵀ · errors`, hinv being `count × rest` with row stride `ldh`.
    private func updateRemainingColumns(hinv: UnsafePointer<Float>, ldh: Int, count: Int, rest: Int,
                                        errors: UnsafePointer<Float>, rows: Int, target: UnsafeMutablePointer<Float>) {
        BLAS.gemm(m: rest, n: rows, k: count, alpha: -1, a: hinv, lda: ldh, transposeA: true,
                  b: errors, ldb: rows, transposeB: false, beta: 1, c: target, ldc: rows)
    }
}

extension PointStatistics {
    /// The Hessian GPTQ needs for a layer whose input is `(x − shift) / scale` (OutlierTune's
    /// quantize op feeding folded weights): Σ (x − z)(x − z)ᵀ / (s·sᵀ), from X·Xᵀ and the channel
    /// sums in one pass. nil when the Gram statistic was not gathered.
    public func hessian(shift: [Float]? = nil, scales: [Float]? = nil) -> [Double]? {
        guard let gram else { return nil }
        let c = channels, count = Double(rows)
        var h = gram
        if let shift {
            for i in 0..<c {
                let zi = Double(shift[i]), si = sum[i]
                for j in 0..<c {
                    let zj = Double(shift[j])
                    h[i * c + j] += -zi * sum[j] - si * zj + count * zi * zj
                }
            }
        }
        if let scales {
            for i in 0..<c {
                let inverse = 1 / Double(scales[i])
                for j in 0..<c { h[i * c + j] *= inverse / Double(scales[j]) }
            }
        }
        return h
    }
}

extension GPTQ {
    /// Names of the GPTQ settings in a recipe's `parameters`, after `prefix`.
    static func parameterKeys(prefix: String) -> Set<String> {
        Set(["damping", "block_size", "act_order", "range_search"].map { prefix + $0 })
    }

    /// GPTQ for `weight` with settings from recipe parameters (`<prefix>damping` 0.01,
    /// `<prefix>block_size` 128, `<prefix>act_order` true, `<prefix>range_search`).
    init(weight: WeightScheme, parameters: MethodParameters, prefix: String, rangeSearchByDefault: Bool) throws(PTQError) {
        let damping = try parameters.double(prefix + "damping", default: 0.01, range: 0...1)
        let block = try parameters.int(prefix + "block_size", default: 128, range: 1...65_536)
        let actOrder = try parameters.bool(prefix + "act_order", default: true)
        let search = try parameters.bool(prefix + "range_search", default: rangeSearchByDefault)
        self.init(bits: weight.bits, symmetric: weight.symmetric, groupSize: weight.groupSize, blockSize: block,
                  damping: damping, actOrder: actOrder, rangeSearch: search ? RangeSearch() : nil)
        range = weight.range
    }

    /// Manifest details for `ptq inspect`.
    func details(_ result: Result) -> [String: String] {
        ["gptq": "damping \(damping), block \(blockSize), act_order \(actOrder), range_search \(rangeSearch != nil)",
         "gptq_loss": String(format: "%.5g", result.loss),
         "gptq_damping_used": String(format: "%.5g", result.dampingUsed)]
    }
}

/// GPTQ as a method of its own: weights by GPTQ against the input's X·Xᵀ from calibration,
/// activations (optional) the plain way, per token or per tensor, like `rtn`. Parameters:
/// `damping` (0.01), `block_size` (128), `act_order` (true), `range_search` (false, the
/// reference's default `mse=False`).
public struct GPTQQuantizer: Quantizer {
    public let solver: GPTQ
    public let activation: ActivationScheme?

    public init(plan: LayerPlan) throws(PTQError) {
        try plan.parameters.rejectUnknown(allowed: GPTQ.parameterKeys(prefix: ""))
        solver = try GPTQ(weight: plan.weight, parameters: plan.parameters, prefix: "", rangeSearchByDefault: false)
        activation = plan.activation
    }

    public var requiredStatistics: Set<StatisticKind> { [.channelRange, .gram] }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        guard let hessian = statistics?.hessian() else {
            throw PTQError("\(layer.name): gptq needs the X·Xᵀ ('gram') statistic at \(layer.inputPoint); "
                           + "re-run `ptq calibrate` with this recipe")
        }
        let result = try solver.quantize(layer.weight, hessian: hessian, layer: layer.name)
        let act = try RTNQuantizer.activationQuantization(activation, layer: layer, statistics: statistics)
        return QuantizedLinear(name: layer.name, method: "gptq", weight: .integer(result.weight), bias: layer.bias,
                               activation: act, details: solver.details(result))
    }
}
