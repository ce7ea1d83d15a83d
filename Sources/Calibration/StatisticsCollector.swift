import Models
import PTQCore

/// What calibration gathers: statistic kinds per quantization point.
public struct StatisticsRequest: Sendable, Equatable {
    public var kinds: [String: Set<StatisticKind>]
    /// Rows kept per reservoir.
    public var reservoirRows: Int

    public init(kinds: [String: Set<StatisticKind>] = [:], reservoirRows: Int = 4096) {
        self.kinds = kinds
        self.reservoirRows = reservoirRows
    }

    public var isEmpty: Bool { kinds.isEmpty }

    /// Adds `kinds` for `point` (the union of what every quantizer asks).
    public mutating func request(_ kinds: Set<StatisticKind>, at point: String) {
        self.kinds[point, default: [.channelRange]].formUnion(kinds)
    }
}

/// An `ActivationObserver` that streams activations into `PointStatistics`, one entry per
/// requested point. Memory stays bounded by the statistics themselves.
public final class StatisticsCollector: ActivationObserver {
    public private(set) var points: [String: PointStatistics] = [:]
    private let request: StatisticsRequest
    private let seed: UInt64

    public init(request: StatisticsRequest, seed: UInt64 = 0) {
        self.request = request
        self.seed = seed
    }

    public func observe(point: String, values: UnsafeBufferPointer<Float>, rows: Int, columns: Int) {
        guard let kinds = request.kinds[point] else { return }
        let stats: PointStatistics
        if let existing = points[point] {
            stats = existing
        } else {
            stats = PointStatistics(channels: columns, kinds: kinds, reservoirCapacity: request.reservoirRows,
                                    seed: seed &+ Self.stableHash(point) & 0xFFFF)
            points[point] = stats
        }
        stats.add(values, rows: rows)
    }

    /// FNV-1a of the point name: the same in every process (`String.hashValue` is seeded per
    /// process, which made reservoir samples, and AdaLog's searches on them, differ run to run).
    static func stableHash(_ point: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in point.utf8 { h ^= UInt64(b); h = h &* 0x100_0000_01B3 }
        return h
    }
}
