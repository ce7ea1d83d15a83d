import Calibration
import Foundation
import Kernels
import PTQCore

/// FPCS for the weights of a linear layer: uniform asymmetric, per output channel (GoatWu/AdaLog
/// `AsymmetricallyBatchingQuantLinear.weight_fpcs`). Two objectives, as the reference's two
/// search strategies: the weight's own MSE (`_search_best_w_scale_self`, the initialisation)
/// and the layer-output MSE with the input quantized by the current activation quantizer
/// (`_search_best_w_scale`, the alternating rounds).
///
/// The output MSE of row r is scored exactly through Gram matrices instead of re-running the
/// layer (the cost constraint): with `X̂` the quantized and `X` the float input rows,
/// `A = X̂ − X`, `G = X̂ᵀX̂`, `H = X̂ᵀA` and `e = ŵ − w`,
/// `‖X̂ŵ − Xw‖² = eᵀGe + 2eᵀHw + ‖Aw‖²`.
/// With `ŵ = s·u` (u the integer code vector minus the zero point) this is
/// `s²·uᵀGu − 2s·uᵀ(Gw) + wᵀGw + 2(s·uᵀ(Hw) − wᵀHw) + ‖Aw‖²`, evaluated in double so that the
/// terms may cancel down to the error. `uᵀGu` is the costly part (m² per candidate); candidates
/// come in blocks of 8 that share a zero point and have nearby scales (FPCS spawns them that
/// way), so their code vectors differ from the block's middle candidate in few elements:
/// `uᵀGu = u_bᵀGu_b + 2δᵀ(Gu_b) + δᵀGδ` with `δ = u − u_b` sparse, and only the block bases
/// go through a dgemm. A candidate whose `δ` is dense becomes a base itself.
enum WeightFPCS {
    /// `Nz = min(16, 2^(n−1))` zero points for weights (`calculate_percentile_weight_candidates`).
    static func zeroPoints(bits: Int) -> Int { min(16, 1 << (bits - 1)) }

    /// The reference grid of every row.
    static func grids(_ w: [Float], rows: Int, columns: Int, bits: Int, window: FPCS.ZeroPointWindow = .reference)
        -> (candidates: [[FPCS.Candidate]], steps: [Float]) {
        var candidates: [[FPCS.Candidate]] = [], steps: [Float] = []
        for r in 0..<rows {
            let g = FPCS.grid(of: Array(w[(r * columns)..<((r + 1) * columns)]), bits: bits, zeroPoints: zeroPoints(bits: bits),
                              window: window)
            candidates.append(g.candidates)
            steps.append(g.step)
        }
        return (candidates, steps)
    }

    /// Rows whose min–max zero point `round(−min·(2^n − 1)/(max − min))` lies outside the
    /// reference's zero-point window `2^(n−1) ± Nz/2`: every candidate of the reference grid
    /// clips them (a diagnostic for `ptq inspect`).
    static func rowsOutsideReferenceWindow(_ w: [Float], rows: Int, columns: Int, bits: Int) -> Int {
        let top = Float((1 << bits) - 1), half = zeroPoints(bits: bits) / 2, mid = 1 << (bits - 1)
        var count = 0
        for r in 0..<rows {
            let row = w[(r * columns)..<((r + 1) * columns)]
            let lo = min(row.min() ?? 0, 0), hi = max(row.max() ?? 0, 0)
            guard hi > lo else { continue }
            let z = Int((-lo * top / (hi - lo)).rounded())
            if z < mid - half || z > mid + half - 1 { count += 1 }
        }
        return count
    }

    /// The code of `x` under candidate `c` minus the zero point: `clamp(round(x/s) + z, 0, 2^n − 1) − z`.
    @inline(__always)
    static func code(_ x: Float, _ c: FPCS.Candidate, top: Float) -> Float {
        FPCS.code(x / c.scale + Float(c.zero), top: top) - Float(c.zero)
    }

    /// FPCS on the weight MSE of each row.
    static func searchWeightMSE(_ w: [Float], rows: Int, columns: Int, bits: Int,
                                window: FPCS.ZeroPointWindow = .reference) -> [FPCS.Candidate] {
        let top = Float((1 << bits) - 1)
        let (initial, steps) = grids(w, rows: rows, columns: columns, bits: bits, window: window)
        return w.withUnsafeBufferPointer { wp in
            FPCS.search(initial: initial, initialStep: steps) { lists in
                lists.enumerated().map { r, list in
                    let row = wp.baseAddress! + r * columns
                    return list.map { c in
                        var e: Float = 0
                        let z = Float(c.zero)
                        for j in 0..<columns {
                            let d = c.scale * (FPCS.code(row[j] / c.scale + z, top: top) - z) - row[j]
                            e += d * d
                        }
                        return Double(e)
                    }
                }
            }.map(\.candidate)
        }
    }

    /// FPCS on each row's layer-output error `‖X̂ŵ − Xw‖²` over `n` input rows (`xHat` the
    /// quantized, `x` the float input, both `n × columns`). Returns the candidates and the sum
    /// of the rows' errors.
    static func searchOutputMSE(_ w: [Float], rows: Int, columns m: Int, bits: Int, xHat: [Float], x: [Float], n: Int,
                                window: FPCS.ZeroPointWindow = .reference) -> (candidates: [FPCS.Candidate], error: Double) {
        let scorer = GramScorer(w, rows: rows, columns: m, bits: bits, xHat: xHat, x: x, n: n)
        let (initial, steps) = grids(w, rows: rows, columns: m, bits: bits, window: window)
        let result = FPCS.search(initial: initial, initialStep: steps) { scorer.errors($0) }
        return (result.map(\.candidate), result.reduce(0) { $0 + $1.error })
    }

    /// The Gram matrices of one weight search and the per-row terms that do not depend on the candidate.
    struct GramScorer {
        let w: [Float], rows: Int, m: Int, top: Float
        let g: [Double], gw: [Double], hw: [Double], constant: [Double]

        init(_ w: [Float], rows: Int, columns m: Int, bits: Int, xHat: [Float], x: [Float], n: Int) {
            self.w = w
            self.rows = rows
            self.m = m
            top = Float((1 << bits) - 1)
            // G = X̂ᵀX̂, H = X̂ᵀ(X̂ − X), C = (X̂ − X)·Wᵀ (float sgemm, then double).
            var a = [Float](repeating: 0, count: n * m)
            for i in 0..<(n * m) { a[i] = xHat[i] - x[i] }
            var gf = [Float](repeating: 0, count: m * m), hf = [Float](repeating: 0, count: m * m)
            var cf = [Float](repeating: 0, count: n * rows)
            xHat.withUnsafeBufferPointer { xh in a.withUnsafeBufferPointer { ap in
                BLAS.gemm(m: m, n: m, k: n, a: xh.baseAddress!, lda: m, transposeA: true, b: xh.baseAddress!, ldb: m,
                          transposeB: false, c: &gf, ldc: m)
                BLAS.gemm(m: m, n: m, k: n, a: xh.baseAddress!, lda: m, transposeA: true, b: ap.baseAddress!, ldb: m,
                          transposeB: false, c: &hf, ldc: m)
                w.withUnsafeBufferPointer { wp in
                    BLAS.linear(ap.baseAddress!, rows: n, inFeatures: m, weight: wp.baseAddress!, outFeatures: rows, into: &cf)
                }
            }}
            let g = gf.map(Double.init), h = hf.map(Double.init), wd = w.map(Double.init)
            // Per row: Gw, Hw, and wᵀGw − 2wᵀHw + ‖Aw‖².
            var gw = [Double](repeating: 0, count: rows * m), hw = [Double](repeating: 0, count: rows * m)
            wd.withUnsafeBufferPointer { wp in
                g.withUnsafeBufferPointer { gp in
                    BLAS.dgemm(m: rows, n: m, k: m, a: wp.baseAddress!, lda: m, b: gp.baseAddress!, ldb: m, transposeB: false,
                               c: &gw, ldc: m)
                }
                h.withUnsafeBufferPointer { hp in
                    BLAS.dgemm(m: rows, n: m, k: m, a: wp.baseAddress!, lda: m, b: hp.baseAddress!, ldb: m, transposeB: true,
                               c: &hw, ldc: m)
                }
            }
            var constant = [Double](repeating: 0, count: rows)
            for r in 0..<rows {
                var wgw: Double = 0, whw: Double = 0
                for j in 0..<m { wgw += wd[r * m + j] * gw[r * m + j]; whw += wd[r * m + j] * hw[r * m + j] }
                var aw: Double = 0
                for t in 0..<n { let v = Double(cf[t * rows + r]); aw += v * v }
                constant[r] = wgw - 2 * whw + aw
            }
            self.g = g
            self.gw = gw
            self.hw = hw
            self.constant = constant
        }

        /// `‖X̂ŵ − Xw‖²` of every candidate of every row (`lists[r]` are row r's candidates).
        func errors(_ lists: [[FPCS.Candidate]]) -> [[Double]] {
            var errors = lists.map { [Double](repeating: .infinity, count: $0.count) }
            // Rows in chunks, so that the base matrix stays small.
            let chunk = 64
            var start = 0
            while start < rows {
                let end = min(rows, start + chunk)
                WeightFPCS.scoreChunk(lists: lists, rows: start..<end, w: w, m: m, top: top, g: g, gw: gw, hw: hw,
                                      constant: constant, into: &errors)
                start = end
            }
            return errors
        }
    }

    /// Scores the candidates of `rows` (see the type's comment for the algebra).
    fileprivate static func scoreChunk(lists: [[FPCS.Candidate]], rows: Range<Int>, w: [Float], m: Int, top: Float,
                                       g: [Double], gw: [Double], hw: [Double], constant: [Double],
                                       into errors: inout [[Double]]) {
        let block = 8
        // Pass 1: codes of every candidate; bases (block middles, and candidates whose codes
        // differ from their block's base in more than a quarter of the elements).
        var bases: [Double] = []          // nb × m, row-major
        var baseRow: [Int] = []
        var itemRow: [Int] = [], itemIndex: [Int] = [], itemBase: [Int] = [], itemStart: [Int] = [], itemEnd: [Int] = []
        var deltaIndex: [Int32] = [], deltaValue: [Double] = []
        var u = [Double](repeating: 0, count: m)
        w.withUnsafeBufferPointer { wp in
            for r in rows {
                let list = lists[r], row = wp.baseAddress! + r * m
                var blockStart = 0
                while blockStart < list.count {
                    let blockEnd = min(list.count, blockStart + block)
                    let mid = (blockStart + blockEnd) / 2
                    let baseIndex = baseRow.count, baseOffset = bases.count
                    let c0 = list[mid], z0 = Float(c0.zero)
                    for j in 0..<m { bases.append(Double(FPCS.code(row[j] / c0.scale + z0, top: top) - z0)) }
                    baseRow.append(r)
                    for i in blockStart..<blockEnd {
                        let start = deltaIndex.count
                        if i != mid {
                            let c = list[i], z = Float(c.zero)
                            for j in 0..<m {
                                u[j] = Double(FPCS.code(row[j] / c.scale + z, top: top) - z)
                                let d = u[j] - bases[baseOffset + j]
                                if d != 0 { deltaIndex.append(Int32(j)); deltaValue.append(d) }
                            }
                            if (deltaIndex.count - start) * 4 > m {
                                deltaIndex.removeLast(deltaIndex.count - start)
                                deltaValue.removeLast(deltaValue.count - start)
                                itemBase.append(baseRow.count)
                                bases.append(contentsOf: u)
                                baseRow.append(r)
                            } else {
                                itemBase.append(baseIndex)
                            }
                        } else {
                            itemBase.append(baseIndex)
                        }
                        itemRow.append(r)
                        itemIndex.append(i)
                        itemStart.append(start)
                        itemEnd.append(deltaIndex.count)
                    }
                    blockStart = blockEnd
                }
            }
        }
        // Pass 2: P = U·G for all bases in one dgemm; per base uᵀGu, uᵀ(Gw), uᵀ(Hw).
        let nb = baseRow.count
        var p = [Double](repeating: 0, count: nb * m)
        bases.withUnsafeBufferPointer { fp in g.withUnsafeBufferPointer { gp in
            BLAS.dgemm(m: nb, n: m, k: m, a: fp.baseAddress!, lda: m, b: gp.baseAddress!, ldb: m, transposeB: false,
                       c: &p, ldc: m)
        }}
        var baseQ = [Double](repeating: 0, count: nb), baseL1 = baseQ, baseL2 = baseQ
        for b in 0..<nb {
            let r = baseRow[b]
            var q: Double = 0, l1: Double = 0, l2: Double = 0
            for j in 0..<m {
                let v = bases[b * m + j]
                q += v * p[b * m + j]
                l1 += v * gw[r * m + j]
                l2 += v * hw[r * m + j]
            }
            baseQ[b] = q
            baseL1[b] = l1
            baseL2[b] = l2
        }
        // Pass 3: each candidate's error.
        for item in 0..<itemRow.count {
            let r = itemRow[item], c = lists[r][itemIndex[item]], b = itemBase[item]
            var q = baseQ[b], l1 = baseL1[b], l2 = baseL2[b]
            for x in itemStart[item]..<itemEnd[item] {
                let j = Int(deltaIndex[x]), d = deltaValue[x]
                q += 2 * d * p[b * m + j]
                for y in itemStart[item]..<itemEnd[item] { q += d * deltaValue[y] * g[j * m + Int(deltaIndex[y])] }
                l1 += d * gw[r * m + j]
                l2 += d * hw[r * m + j]
            }
            let s = Double(c.scale)
            let e = s * s * q - 2 * s * l1 + 2 * s * l2 + constant[r]
            errors[r][itemIndex[item]] = e.isNaN ? .infinity : max(e, 0)
        }
    }

    /// The integer weight of the chosen per-row candidates.
    static func integerWeight(_ w: [Float], rows: Int, columns: Int, bits: Int, candidates: [FPCS.Candidate]) -> IntegerWeight {
        let top = Float((1 << bits) - 1)
        var codes = [UInt8](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            let c = candidates[r]
            for j in 0..<columns {
                codes[r * columns + j] = UInt8(FPCS.code(w[r * columns + j] / c.scale + Float(c.zero), top: top))
            }
        }
        return IntegerWeight(bits: bits, rows: rows, columns: columns, groupSize: columns, symmetric: false, codes: codes,
                             scales: candidates.map(\.scale), zeros: candidates.map { Float($0.zero) })
    }
}

/// FPCS for a per-tensor uniform activation quantizer (GoatWu/AdaLog `activation_fpcs`) on the
/// activation MSE (`_search_best_a_scale_self`, the initialisation) or the layer-output MSE
/// (`_search_best_a_scale`), and the per-channel search RepQ-ViT's reparameterisation starts from.
///
/// The runtime's activation codes are signed `±(2^(n−1) − 1)` after a per-channel shift
/// (`ActivationQuantization.channelShift`), so a candidate `(s, z)` is realised as the shift
/// `s·(2^(n−1) − z)`: the levels `s·(k − z)` for `k = 1 … 2^n − 1` — the reference's grid
/// without its lowest level `−z·s` (one of 2^n). The search scores exactly these levels, so
/// calibration matches inference.
enum ActivationFPCS {
    /// `Nz = min(16, 2^n)` zero points for activations (`calculate_percentile_activation_candidates`).
    static func zeroPoints(bits: Int) -> Int { min(16, 1 << bits) }
    /// The reference clamps activation scales at 1e-4.
    static let minimumScale: Float = 1e-4

    /// The runtime's level for `x` under `(s, z)`: `s·(clamp(round(x/s) + z, 1, 2^n − 1) − z)`.
    @inline(__always)
    static func fake(_ x: Float, _ c: FPCS.Candidate, top: Float) -> Float {
        c.scale * (FPCS.code(max(x / c.scale + Float(c.zero), 1), top: top) - Float(c.zero))
    }

    static func fake(_ x: [Float], _ c: FPCS.Candidate, bits: Int) -> [Float] {
        let top = Float((1 << bits) - 1)
        return x.map { fake($0, c, top: top) }
    }

    /// Per-token symmetric dynamic quantization as the runtime does it (absmax / (2^(n−1) − 1)).
    static func fakePerToken(_ x: [Float], rows: Int, columns: Int, bits: Int) -> [Float] {
        let (codes, scales) = LowBit.quantizeRows(x, rows: rows, columns: columns, bits: bits, scaling: .perToken)
        var out = [Float](repeating: 0, count: rows * columns)
        for t in 0..<rows { for j in 0..<columns { out[t * columns + j] = Float(codes[t * columns + j]) * scales[t] } }
        return out
    }

    /// FPCS on the activation MSE of the whole tensor `x`.
    static func searchMSE(_ x: [Float], bits: Int) -> (candidate: FPCS.Candidate, error: Double) {
        let top = Float((1 << bits) - 1)
        let grid = FPCS.grid(of: x, bits: bits, zeroPoints: zeroPoints(bits: bits), minimumScale: minimumScale)
        return FPCS.search(initial: [grid.candidates], initialStep: [grid.step], minimumScale: minimumScale) { lists in
            [lists[0].map { c in
                var e: Double = 0
                for v in x { let d = Double(fake(v, c, top: top) - v); e += d * d }
                return e
            }]
        }[0]
    }

    /// FPCS per input channel on each channel's activation MSE (the reference's channel-wise
    /// quantizer of a post-LayerNorm input, before the reparameterisation), with the
    /// reference's full code range `0 … 2^n − 1` (these only set ρ and β).
    static func searchChannels(_ x: [Float], rows n: Int, columns m: Int, bits: Int) -> [FPCS.Candidate] {
        let top = Float((1 << bits) - 1)
        var columnsData: [[Float]] = []
        var initial: [[FPCS.Candidate]] = [], steps: [Float] = []
        for j in 0..<m {
            let column = (0..<n).map { x[$0 * m + j] }
            columnsData.append(column)
            let g = FPCS.grid(of: column, bits: bits, zeroPoints: zeroPoints(bits: bits), minimumScale: minimumScale)
            initial.append(g.candidates)
            steps.append(g.step)
        }
        return FPCS.search(initial: initial, initialStep: steps, minimumScale: minimumScale) { lists in
            lists.enumerated().map { j, list in
                list.map { c in
                    var e: Double = 0
                    for v in columnsData[j] { let d = Double(FPCS.fake(v, c, top: top) - v); e += d * d }
                    return e
                }
            }
        }.map(\.candidate)
    }

    /// FPCS on the layer-output error `‖X̂Ŵᵀ − XWᵀ‖²` over the `n` rows of `x`, computed as
    /// `‖(X̂ − X)Ŵᵀ + X(Ŵ − W)ᵀ‖²` (no cancellation), 16 candidates per sgemm.
    static func searchOutputMSE(_ x: [Float], rows n: Int, columns m: Int, bits: Int, w: [Float], wHat: [Float], out: Int)
        -> (candidate: FPCS.Candidate, error: Double) {
        let top = Float((1 << bits) - 1)
        var dw = [Float](repeating: 0, count: out * m)
        for i in 0..<(out * m) { dw[i] = wHat[i] - w[i] }
        var r0 = [Float](repeating: 0, count: n * out)
        x.withUnsafeBufferPointer { xp in dw.withUnsafeBufferPointer { dp in
            BLAS.linear(xp.baseAddress!, rows: n, inFeatures: m, weight: dp.baseAddress!, outFeatures: out, into: &r0)
        }}
        let grid = FPCS.grid(of: x, bits: bits, zeroPoints: zeroPoints(bits: bits), minimumScale: minimumScale)
        let batch = 16
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: batch * n * m)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: batch * n * out)
        defer { buffer.deallocate(); y.deallocate() }
        return FPCS.search(initial: [grid.candidates], initialStep: [grid.step], minimumScale: minimumScale) { lists in
            let list = lists[0]
            var errors = [Double](repeating: .infinity, count: list.count)
            var start = 0
            while start < list.count {
                let count = min(batch, list.count - start)
                for b in 0..<count {
                    let c = list[start + b], base = buffer + b * n * m
                    for i in 0..<(n * m) { base[i] = fake(x[i], c, top: top) - x[i] }
                }
                wHat.withUnsafeBufferPointer { wp in
                    BLAS.linear(buffer, rows: count * n, inFeatures: m, weight: wp.baseAddress!, outFeatures: out, into: y)
                }
                for b in 0..<count {
                    var e: Double = 0
                    let yb = y + b * n * out
                    for i in 0..<(n * out) { let d = Double(yb[i] + r0[i]); e += d * d }
                    errors[start + b] = e.isNaN ? .infinity : e
                }
                start += count
            }
            return [errors]
        }[0]
    }
}
