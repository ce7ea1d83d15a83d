import Calibration
import Foundation
import PTQCore
import Recipes

/// SplitQuant (Song & Lin, arXiv 2501.12428; reference code jaewoosong/splitquant): a data-free
/// preprocessing step for very low bit widths. 1-D k-means with k = 3 over all weights of a
/// linear layer splits it into lower, middle and upper parts `W = W_L + W_M + W_U` (boundaries
/// at the midpoints between the sorted centroids: `W ≤ t1`, `t1 < W < t2`, `W ≥ t2`, as in the
/// reference's masks). Each part is quantized with its own asymmetric min–max scales, per output
/// row or per group, so an outlier widens only its own part's range.
///
/// Where we differ from the reference, and why:
/// - **Exact k-means.** The reference runs sklearn's k-means++ (one random start, seeded by the
///   script). 1-D k-means has an exact optimum among contiguous splits of the sorted values;
///   we find it with the dynamic program over split points, whose second layer uses the
///   monotone-split divide and conquer (O(n log n)), so the split is deterministic and optimal.
/// - **Compact storage.** The reference keeps three dense quantized copies (3× storage, 3×
///   multiply-adds). We store a 2-bit cluster id and one code per weight (`SplitWeight`), whose
///   value is exactly the three quantized parts summed, and run it in one pass.
/// - **Part ranges** (recipe `range`). In the reference each dense copy holds zeros where the
///   other parts' weights are, so each part's min–max range includes 0 (`with_zero`, faithful;
///   on our grid with an integer zero point those zeros stay exact). With the cluster id stored,
///   zero need not be representable, so by default (`cluster`) each part's grid spans only its
///   own weights in the row/group (float zero point): a narrower grid for the same bits.
///   Both are measured in docs/RESULTS.md.
/// - **Bias.** The reference skips the whole layer when its bias is all zeros (a bug); we split
///   every layer. Biases are split the same way (`splitBias`), but they stay float, as quanto
///   keeps them, and float parts with disjoint supports sum exactly to the original, so the
///   stored bias is the original.
/// - **Base quantizer** (recipe `base`): `rtn` (the reference's min–max) or `gptq`, where GPTQ's
///   column-by-column error feedback rounds each weight on its own cluster's grid (grids fixed
///   from the original weights first, like GPTQ's static groups), so the split parts are
///   quantized jointly against X·Xᵀ rather than as three independent layers.
/// - Layers with fewer than 3 output rows are split too (the reference leaves them alone);
///   k-means on fewer than 3 distinct values uses one cluster per value.
public enum SplitQuant {
    /// Result of the exact 1-D k-means: sorted centroids and the two thresholds.
    public struct Clustering: Sendable, Equatable {
        /// Sorted centroids of the non-empty clusters (fewer than 3 when there are fewer than 3
        /// distinct values).
        public var centroids: [Double]
        /// `v ≤ lower` → lower cluster (0); `v ≥ upper` → upper cluster (2); else middle (1).
        public var lower: Double
        public var upper: Double
        /// Within-cluster sum of squares of the split.
        public var sumOfSquares: Double

        /// The cluster of one value.
        @inline(__always)
        public func cluster(of v: Float) -> UInt8 {
            let d = Double(v)
            return d <= lower ? 0 : (d >= upper ? 2 : 1)
        }
    }

    /// Part ranges: the cluster's own weights, or including 0 like the reference's dense copies.
    public enum PartRange: String, Sendable, CaseIterable {
        case cluster
        case withZero = "with_zero"
    }

    /// Exact 1-D k-means with k = 3 over `values` (any order; NaNs are not expected).
    public static func kMeans3(_ values: [Float]) -> Clustering {
        var x = values.map(Double.init)
        x.sort()
        let n = x.count
        var distinct: [Double] = []
        for v in x where distinct.last != v {
            distinct.append(v)
            if distinct.count == 3 { break }
        }
        if distinct.count < 3 {
            // 0, 1 or 2 distinct values: each its own cluster, sum of squares 0.
            if distinct.count == 2 {
                let t = (distinct[0] + distinct[1]) / 2
                return Clustering(centroids: distinct, lower: t, upper: t, sumOfSquares: 0)
            }
            return Clustering(centroids: distinct, lower: -.infinity, upper: .infinity, sumOfSquares: 0)
        }
        // Centre first: the sums of squares below subtract large, nearly equal numbers.
        let mean = x.reduce(0, +) / Double(n)
        var s1 = [Double](repeating: 0, count: n + 1), s2 = [Double](repeating: 0, count: n + 1)
        for i in 0..<n {
            let v = x[i] - mean
            s1[i + 1] = s1[i] + v
            s2[i + 1] = s2[i] + v * v
        }
        // Sum of squares of x[a..<b] around its mean.
        func cost(_ a: Int, _ b: Int) -> Double {
            let s = s1[b] - s1[a]
            return max(0, s2[b] - s2[a] - s * s / Double(b - a))
        }
        // best2[m] = min over 1 ≤ i < m of cost(0, i) + cost(i, m), with its argmin split2[m]
        // (two clusters over x[0..<m]); m in 2 ... n-1 so the third cluster is non-empty.
        // The optimal split point is non-decreasing in m (SSE satisfies the quadrangle
        // inequality), so divide and conquer finds every m's optimum in O(n log n).
        var best2 = [Double](repeating: .infinity, count: n), split2 = [Int](repeating: 1, count: n)
        func solve(_ lo: Int, _ hi: Int, _ optLo: Int, _ optHi: Int) {
            if lo > hi { return }
            let mid = (lo + hi) / 2
            var bestValue = Double.infinity, bestSplit = optLo
            for i in optLo...min(mid - 1, optHi) {
                let value = cost(0, i) + cost(i, mid)
                if value < bestValue { bestValue = value; bestSplit = i }
            }
            best2[mid] = bestValue
            split2[mid] = bestSplit
            solve(lo, mid - 1, optLo, bestSplit)
            solve(mid + 1, hi, bestSplit, optHi)
        }
        solve(2, n - 1, 1, n - 2)
        var bestValue = Double.infinity, i2 = 2
        for m in 2...(n - 1) {
            let value = best2[m] + cost(m, n)
            if value < bestValue { bestValue = value; i2 = m }
        }
        let i1 = split2[i2]
        func centroid(_ a: Int, _ b: Int) -> Double { (s1[b] - s1[a]) / Double(b - a) + mean }
        let c = [centroid(0, i1), centroid(i1, i2), centroid(i2, n)]
        return Clustering(centroids: c, lower: (c[0] + c[1]) / 2, upper: (c[1] + c[2]) / 2, sumOfSquares: bestValue)
    }

    /// The three parts of `values` (lower, middle, upper): each value in exactly one part, zero
    /// in the others, so the parts sum exactly to `values`. Used for biases (and tests).
    public static func split(_ values: [Float], clustering: Clustering) -> [[Float]] {
        var parts = [[Float]](repeating: [Float](repeating: 0, count: values.count), count: 3)
        for (i, v) in values.enumerated() { parts[Int(clustering.cluster(of: v))][i] = v }
        return parts
    }

    /// Quantizes `weight` (out × in) split by `clustering`: every part with asymmetric min–max
    /// codes of `bits` bits per row or per group of `groupSize` columns (nil = per row).
    public static func quantize(_ weight: Tensor, clustering: Clustering, bits: Int, groupSize: Int?,
                                range: PartRange) -> SplitWeight {
        let (clusters, grid) = grids(weight, clustering: clustering, bits: bits, groupSize: groupSize, range: range)
        var codes = [UInt8](repeating: 0, count: weight.data.count)
        let columns = grid.columns
        for r in 0..<grid.rows {
            for c in 0..<columns {
                let i = r * columns + c
                codes[i] = grid.code(weight.data[i], parameter: grid.parameterIndex(r, c, clusters[i]))
            }
        }
        return grid.weight(clusters: clusters, codes: codes)
    }

    /// SplitQuant + GPTQ: grids fixed from the original weights, then GPTQ's error feedback,
    /// each weight rounded on its own cluster's grid. Returns the weight, GPTQ's loss and the
    /// damping used.
    public static func quantize(_ weight: Tensor, clustering: Clustering, range: PartRange, gptq: GPTQ,
                                hessian: [Double], layer: String) throws(PTQError)
        -> (weight: SplitWeight, loss: Double, damping: Double) {
        let (clusters, grid) = grids(weight, clustering: clustering, bits: gptq.bits, groupSize: gptq.groupSize,
                                     range: range)
        let solved = try gptq.solveColumns(weight, hessian: hessian, layer: layer) { r, c, v in
            let p = grid.parameterIndex(r, c, clusters[r * grid.columns + c])
            let u = grid.code(v, parameter: p)
            return (u, grid.scales[p] * (Float(u) - grid.zeros[p]))
        }
        return (grid.weight(clusters: clusters, codes: solved.codes), solved.loss, solved.damping)
    }

    /// Per-(row, group, cluster) scales and zero points of a split weight.
    struct PartGrid {
        var bits: Int, rows: Int, columns: Int, group: Int, groups: Int
        var range: PartRange
        var scales: [Float], zeros: [Float]
        var maxCode: Float { Float((1 << bits) - 1) }

        @inline(__always)
        func parameterIndex(_ r: Int, _ c: Int, _ cluster: UInt8) -> Int {
            (r * groups + c / group) * SplitWeight.clusterCount + Int(cluster)
        }

        /// The code of `v` on grid `p`. `with_zero` uses the project's RTN rounding
        /// (`WeightGrid.code`: round(v/s) + integer zero), so it equals RTN of the dense part.
        @inline(__always)
        func code(_ v: Float, parameter p: Int) -> UInt8 {
            let s = scales[p], z = zeros[p]
            let u = range == .withZero ? (v / s).rounded() + z : (v / s + z).rounded()
            return UInt8(min(max(u, 0), maxCode))
        }

        func weight(clusters: [UInt8], codes: [UInt8]) -> SplitWeight {
            SplitWeight(bits: bits, rows: rows, columns: columns, groupSize: group, clusters: clusters, codes: codes,
                        scales: scales, zeros: zeros)
        }
    }

    /// Cluster ids and part grids: min–max of each cluster's weights within its row/group (with
    /// 0 added for `with_zero`, as in the reference's dense copies).
    static func grids(_ weight: Tensor, clustering: Clustering, bits: Int, groupSize: Int?,
                      range: PartRange) -> ([UInt8], PartGrid) {
        let rows = weight.shape[0], columns = weight.shape[1]
        let group = max(1, min(groupSize ?? columns, columns))
        let groups = (columns + group - 1) / group
        let k = SplitWeight.clusterCount
        let clusters = weight.data.map { clustering.cluster(of: $0) }
        var grid = PartGrid(bits: bits, rows: rows, columns: columns, group: group, groups: groups, range: range,
                            scales: [Float](repeating: 1, count: rows * groups * k),
                            zeros: [Float](repeating: 0, count: rows * groups * k))
        let integerGrid = WeightGrid(bits: bits, symmetric: false)
        for r in 0..<rows {
            for g in 0..<groups {
                var lo = [Float](repeating: .infinity, count: k), hi = [Float](repeating: -.infinity, count: k)
                for c in (g * group)..<min(columns, (g + 1) * group) {
                    let i = r * columns + c, kk = Int(clusters[i])
                    lo[kk] = min(lo[kk], weight.data[i])
                    hi[kk] = max(hi[kk], weight.data[i])
                }
                for kk in 0..<k where lo[kk] <= hi[kk] {  // empty parts keep scale 1, zero 0
                    let p = (r * groups + g) * k + kk
                    switch range {
                    case .withZero:
                        (grid.scales[p], grid.zeros[p]) = integerGrid.parameters(lo: min(lo[kk], 0), hi: max(hi[kk], 0))
                    case .cluster:
                        let scale = hi[kk] > lo[kk] ? (hi[kk] - lo[kk]) / grid.maxCode : 1
                        grid.scales[p] = scale
                        grid.zeros[p] = -lo[kk] / scale
                    }
                }
            }
        }
        return (clusters, grid)
    }
}

/// SplitQuant as a recipe method: weight-only (float activations), `symmetric: false`, bits
/// 2…8, per row or per group. Parameters: `range` (`cluster`, default, or `with_zero`), `base`
/// (`rtn`, default, or `gptq`, which needs X·Xᵀ statistics and takes `gptq_damping`,
/// `gptq_block_size`, `gptq_act_order`).
public struct SplitQuantQuantizer: Quantizer {
    public let bits: Int
    public let groupSize: Int?
    public let range: SplitQuant.PartRange
    /// GPTQ as the base quantizer (nil = min–max round to nearest).
    public let gptq: GPTQ?

    public init(plan: LayerPlan) throws(PTQError) {
        let rangeWord = try plan.parameters.string("range", default: "cluster",
                                                   oneOf: SplitQuant.PartRange.allCases.map(\.rawValue))
        range = SplitQuant.PartRange(rawValue: rangeWord)!
        let base = try plan.parameters.string("base", default: "rtn", oneOf: ["rtn", "gptq"])
        let gptqKeys = GPTQ.parameterKeys(prefix: "gptq_").subtracting(["gptq_range_search"])
        try plan.parameters.rejectUnknown(allowed: Set(["range", "base"]).union(gptqKeys))
        let line = plan.ruleLine.map { "line \($0): " } ?? ""
        if base == "rtn", let key = plan.parameters.keys.first(where: { gptqKeys.contains($0) }) {
            throw plan.parameters.error(key, "applies only with base: gptq")
        }
        guard plan.activation == nil else {
            throw PTQError("\(line)\(plan.name): splitquant is weight-only; set activation: none")
        }
        guard !plan.weight.symmetric else {
            throw PTQError("\(line)\(plan.name): splitquant quantizes each part asymmetric min–max; set symmetric: false")
        }
        bits = plan.weight.bits
        groupSize = plan.weight.groupSize
        gptq = base == "gptq"
            ? try GPTQ(weight: plan.weight, parameters: plan.parameters, prefix: "gptq_", rangeSearchByDefault: false)
            : nil
    }

    public var requiredStatistics: Set<StatisticKind> { gptq == nil ? [] : [.channelRange, .gram] }

    public func quantize(_ layer: LinearLayer, statistics: PointStatistics?) throws(PTQError) -> QuantizedLinear {
        let clustering = SplitQuant.kMeans3(layer.weight.data)
        let weight: SplitWeight
        var details: [String: String] = [:]
        if let gptq {
            guard let hessian = statistics?.hessian() else {
                throw PTQError("\(layer.name): splitquant with base gptq needs the X·Xᵀ ('gram') statistic at "
                               + "\(layer.inputPoint); re-run `ptq calibrate` with this recipe")
            }
            let result = try SplitQuant.quantize(layer.weight, clustering: clustering, range: range,
                                                 gptq: gptq, hessian: hessian, layer: layer.name)
            weight = result.weight
            details = ["gptq": "damping \(gptq.damping), block \(gptq.blockSize), act_order \(gptq.actOrder)",
                       "gptq_loss": String(format: "%.5g", result.loss),
                       "gptq_damping_used": String(format: "%.5g", result.damping)]
        } else {
            weight = SplitQuant.quantize(layer.weight, clustering: clustering, bits: bits, groupSize: groupSize,
                                         range: range)
        }
        var counts = [0, 0, 0]
        for c in weight.clusters { counts[Int(c)] += 1 }
        details["split_thresholds"] = String(format: "%.5g / %.5g", clustering.lower, clustering.upper)
        details["split_counts"] = counts.map(String.init).joined(separator: " / ")
        details["split_range"] = range.rawValue
        if let bias = layer.bias {
            // Float parts with disjoint supports sum exactly to the bias, which is stored as is.
            let biasClustering = SplitQuant.kMeans3(bias)
            var biasCounts = [0, 0, 0]
            for v in bias { biasCounts[Int(biasClustering.cluster(of: v))] += 1 }
            details["bias_split_counts"] = biasCounts.map(String.init).joined(separator: " / ")
        }
        return QuantizedLinear(name: layer.name, method: "splitquant", weight: .split(weight), bias: layer.bias,
                               activation: nil, details: details)
    }
}
