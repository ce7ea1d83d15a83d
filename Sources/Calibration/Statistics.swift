import Foundation
import Kernels
import PTQCore

/// Statistics a quantizer can ask calibration to gather at a quantization point.
public enum StatisticKind: String, Codable, Hashable, Sendable, CaseIterable {
    /// Per-channel min, max, absmax, mean, mean of squares (cheap; always gathered).
    case channelRange = "channel_range"
    /// Per-channel mean over calibration samples of the sample's (max + min) / 2
    /// (OutlierTune's symmetrization shift).
    case sampleMidpoint = "sample_midpoint"
    /// Histogram of |x| over fixed logarithmic bins, one per tensor (mergeable across runs).
    case histogram
    /// X·Xᵀ over channels (`channels × channels`, GPTQ-style Hessian).
    case gram
    /// A bounded uniform sample of activation rows (search-based methods).
    case reservoir
}

/// Fixed bins of the |x| histogram: bin 0 holds |x| < `minimum`, then `binsPerDecade`
/// log-spaced bins per decade up to `maximum`, the last bin holds everything above.
/// Fixed edges make histograms from different runs or shards mergeable by addition.
public enum HistogramBins {
    public static let minimum: Float = 1e-6
    public static let maximum: Float = 1e6
    public static let binsPerDecade = 64
    public static let count = 12 * binsPerDecade + 2

    @inline(__always)
    public static func index(of value: Float) -> Int {
        let a = abs(value)
        if !(a >= minimum) { return 0 }
        if a >= maximum { return count - 1 }
        return 1 + min(count - 3, Int((log10f(a) + 6) * Float(binsPerDecade)))
    }

    /// Upper edge of bin `i` (bins 1 ..< count-1).
    public static func upperEdge(_ i: Int) -> Float {
        if i == 0 { return minimum }
        if i >= count - 1 { return .infinity }
        return powf(10, Float(i) / Float(binsPerDecade) - 6)
    }
}

/// Everything gathered at one quantization point. Counts are in rows (tokens).
public final class PointStatistics {
    public let channels: Int
    public private(set) var rows = 0
    /// Calls observed (one per calibration sample for linear inputs).
    public private(set) var samples = 0
    public var minimum: [Float]
    public var maximum: [Float]
    public var sum: [Double]
    public var sumOfSquares: [Double]
    /// Σ over samples of the per-sample (max + min) / 2, when requested.
    public var midpointSum: [Double]?
    public var histogram: [Int64]?
    /// Row-major `channels × channels`, when requested.
    public var gram: [Double]?
    /// Row-major `reservoirRows × channels` (the first `reservoirCount` rows are valid).
    public var reservoir: [Float]?
    public var reservoirCapacity: Int
    public var reservoirCount = 0
    private var generator: SplitMix
    private var memo: [String: [Float]] = [:]
    private let memoLock = NSLock()

    public init(channels: Int, kinds: Set<StatisticKind>, reservoirCapacity: Int = 0, seed: UInt64 = 0) {
        self.channels = channels
        minimum = [Float](repeating: .infinity, count: channels)
        maximum = [Float](repeating: -.infinity, count: channels)
        sum = [Double](repeating: 0, count: channels)
        sumOfSquares = sum
        if kinds.contains(.sampleMidpoint) { midpointSum = sum }
        if kinds.contains(.histogram) { histogram = [Int64](repeating: 0, count: HistogramBins.count) }
        if kinds.contains(.gram) { gram = [Double](repeating: 0, count: channels * channels) }
        self.reservoirCapacity = kinds.contains(.reservoir) ? reservoirCapacity : 0
        if self.reservoirCapacity > 0 { reservoir = [Float](repeating: 0, count: reservoirCapacity * channels) }
        generator = SplitMix(seed: seed)
    }

    /// Internal initializer for reading a stats file.
    init(channels: Int, rows: Int, samples: Int, minimum: [Float], maximum: [Float], sum: [Double],
         sumOfSquares: [Double], midpointSum: [Double]?, histogram: [Int64]?, gram: [Double]?,
         reservoir: [Float]?, reservoirCount: Int) {
        self.channels = channels
        self.rows = rows
        self.samples = samples
        self.minimum = minimum
        self.maximum = maximum
        self.sum = sum
        self.sumOfSquares = sumOfSquares
        self.midpointSum = midpointSum
        self.histogram = histogram
        self.gram = gram
        self.reservoir = reservoir
        self.reservoirCapacity = reservoir == nil ? 0 : reservoirCount
        self.reservoirCount = reservoirCount
        generator = SplitMix(seed: 0)
    }

    public var kinds: Set<StatisticKind> {
        var k: Set<StatisticKind> = [.channelRange]
        if midpointSum != nil { k.insert(.sampleMidpoint) }
        if histogram != nil { k.insert(.histogram) }
        if gram != nil { k.insert(.gram) }
        if reservoir != nil { k.insert(.reservoir) }
        return k
    }

    /// A value derived from these statistics, computed once per key: layers that share an input
    /// point (q/k/v, gate/up) reuse an expensive derivation such as a clipping search.
    public func memoized(_ key: String, _ compute: () -> [Float]) -> [Float] {
        memoLock.lock()
        if let value = memo[key] { memoLock.unlock(); return value }
        memoLock.unlock()
        let value = compute()
        memoLock.lock()
        memo[key] = value
        memoLock.unlock()
        return value
    }

    /// Per-channel max |x|.
    public var absMaximum: [Float] { zip(minimum, maximum).map { max(abs($0), abs($1)) } }
    public var mean: [Double] { sum.map { $0 / Double(max(rows, 1)) } }
    public var meanOfSquares: [Double] { sumOfSquares.map { $0 / Double(max(rows, 1)) } }
    /// Per-channel L2 norm over all observed rows.
    public var channelNorm: [Double] { sumOfSquares.map { $0.squareRoot() } }
    /// Per-channel symmetrization shift: mean over samples of (max + min) / 2.
    public var sampleMidpoint: [Float]? { midpointSum.map { $0.map { Float($0 / Double(max(samples, 1))) } } }

    /// Adds one observed sample (`rows × channels`, row-major) in a single pass.
    public func add(_ x: UnsafeBufferPointer<Float>, rows n: Int) {
        precondition(x.count == n * channels)
        var sampleMin = [Float](repeating: .infinity, count: midpointSum == nil ? 0 : channels)
        var sampleMax = [Float](repeating: -.infinity, count: sampleMin.count)
        minimum.withUnsafeMutableBufferPointer { mn in
        maximum.withUnsafeMutableBufferPointer { mx in
        sum.withUnsafeMutableBufferPointer { s in
        sumOfSquares.withUnsafeMutableBufferPointer { s2 in
            for r in 0..<n {
                let row = x.baseAddress! + r * channels
                for c in 0..<channels {
                    let v = row[c]
                    mn[c] = min(mn[c], v)
                    mx[c] = max(mx[c], v)
                    s[c] += Double(v)
                    s2[c] += Double(v * v)
                }
            }
        }}}}
        if midpointSum != nil {
            for r in 0..<n {
                for c in 0..<channels {
                    let v = x[r * channels + c]
                    sampleMin[c] = min(sampleMin[c], v)
                    sampleMax[c] = max(sampleMax[c], v)
                }
            }
            for c in 0..<channels { midpointSum![c] += Double((sampleMax[c] + sampleMin[c]) / 2) }
        }
        if histogram != nil {
            histogram!.withUnsafeMutableBufferPointer { h in
                for v in x { h[HistogramBins.index(of: v)] += 1 }
            }
        }
        if gram != nil { addGram(x, rows: n) }
        if reservoirCapacity > 0 { addReservoir(x, rows: n) }
        rows += n
        samples += 1
    }

    private func addGram(_ x: UnsafeBufferPointer<Float>, rows n: Int) {
        gram!.withUnsafeMutableBufferPointer { g in
            BLAS.accumulateGram(x.baseAddress!, rows: n, columns: channels, into: g.baseAddress!)
        }
    }

    private func addReservoir(_ x: UnsafeBufferPointer<Float>, rows n: Int) {
        // Algorithm R: every row seen so far is in the reservoir with equal probability.
        for r in 0..<n {
            let seen = rows + r
            let slot: Int
            if reservoirCount < reservoirCapacity {
                slot = reservoirCount
                reservoirCount += 1
            } else {
                let j = Int(generator.next() % UInt64(seen + 1))
                guard j < reservoirCapacity else { continue }
                slot = j
            }
            for c in 0..<channels { reservoir![slot * channels + c] = x[r * channels + c] }
        }
    }
}
