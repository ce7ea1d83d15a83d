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
                                    seed: Self.reservoirSeed(seed, point: point))
            points[point] = stats
        }
        stats.add(values, rows: rows)
    }

    /// The reservoir seed of one point: the calibration seed plus a stable hash of the point's
    /// name. (It was `String.hashValue`, which Swift randomises per process, so the reservoir
    /// — and everything searched on it, e.g. the post-GELU AdaLog scale — changed between two
    /// identical runs.) FNV-1a over the UTF-8 bytes, low 16 bits, as before.
    public static func reservoirSeed(_ seed: UInt64, point: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in point.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return seed &+ (hash & 0xFFFF)
    }
}
