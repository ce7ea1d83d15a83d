import CHDF5
import Checkpoint
import Foundation
import PTQCore

/// The result of a calibration run: statistics per quantization point, tied to one model.
/// Stored as HDF5 (docs/stats-format.md) so that several quantize runs can reuse it.
public final class CalibrationStatistics {
    public static let formatName = "ptqkit-stats"
    public static let version = 1

    public let modelIdentity: String
    public let settings: CalibrationSettings
    public let tokens: Int
    public let points: [String: PointStatistics]

    public init(modelIdentity: String, settings: CalibrationSettings, tokens: Int, points: [String: PointStatistics]) {
        self.modelIdentity = modelIdentity
        self.settings = settings
        self.tokens = tokens
        self.points = points
    }

    /// A short fingerprint of the statistics (identity, settings, sizes), recorded in packed files.
    public var hash: String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        let text = "\(modelIdentity)|\(settings.dataPath)|\(settings.samples)|\(settings.sequenceLength)|\(settings.seed)|\(tokens)|"
            + points.keys.sorted().map { "\($0):\(points[$0]!.rows)" }.joined(separator: ",")
        for b in text.utf8 { h ^= UInt64(b); h = h &* 0x100_0000_01B3 }
        return String(h, radix: 16)
    }

    /// Checks that these statistics contain what a quantization run needs.
    public func require(_ request: StatisticsRequest, source: String) throws(PTQError) {
        for (point, kinds) in request.kinds.sorted(by: { $0.key < $1.key }) {
            guard let stats = points[point] else {
                throw PTQError.file(source, "statistics for '\(point)' are missing; re-run `ptq calibrate` with this recipe")
            }
            if let missing = kinds.subtracting(stats.kinds).first {
                throw PTQError.file(source, "statistic '\(missing.rawValue)' for '\(point)' is missing; re-run `ptq calibrate` with this recipe")
            }
        }
    }

    public func write(to path: String) throws(PTQError) {
        try validate(source: path)
        try AtomicFile.write(to: path) { (temp: String) throws(PTQError) in
            let file = try HDF5File.create(temp)
            try file.setAttribute(".", "format", Self.formatName)
            try file.setAttribute(".", "format_version", Self.version)
            try file.setAttribute(".", "model_identity", modelIdentity)
            try file.setAttribute(".", "data", settings.dataPath)
            try file.setAttribute(".", "samples", settings.samples)
            try file.setAttribute(".", "seq_len", settings.sequenceLength)
            try file.setAttribute(".", "seed", Int(truncatingIfNeeded: settings.seed))
            try file.setAttribute(".", "tokens", tokens)
            for (point, s) in points.sorted(by: { $0.key < $1.key }) {
                let g = "points/\(point)"
                _ = try file.createGroup(g)
                try file.setAttribute(g, "channels", s.channels)
                try file.setAttribute(g, "rows", s.rows)
                try file.setAttribute(g, "samples", s.samples)
                try file.writeFloats("\(g)/min", shape: [s.channels], data: s.minimum, as: .float32)
                try file.writeFloats("\(g)/max", shape: [s.channels], data: s.maximum, as: .float32)
                try file.writeDoubles("\(g)/sum", shape: [s.channels], s.sum)
                try file.writeDoubles("\(g)/sum_squares", shape: [s.channels], s.sumOfSquares)
                if let m = s.midpointSum { try file.writeDoubles("\(g)/midpoint_sum", shape: [s.channels], m) }
                if let h = s.histogram { try file.writeInt64s("\(g)/histogram", h) }
                if let gram = s.gram { try file.writeDoubles("\(g)/gram", shape: [s.channels, s.channels], gram) }
                if let r = s.reservoir {
                    try file.writeFloats("\(g)/reservoir", shape: [s.reservoirCount, s.channels],
                                         data: Array(r.prefix(s.reservoirCount * s.channels)), as: .float32)
                }
            }
            try file.flush()
        }
    }

    /// Reads a stats file; with `expectedIdentity`, statistics of another model are refused.
    public static func read(path: String, expectedIdentity: String? = nil) throws(PTQError) -> CalibrationStatistics {
        let file = try HDF5File.open(path)
        guard (try? file.stringAttribute(".", "format")) == formatName else {
            throw PTQError.file(path, "not a PTQKit statistics file (root attribute 'format' must be '\(formatName)')")
        }
        let version = try file.intAttribute(".", "format_version")
        guard version == Self.version else {
            throw PTQError.file(path, "statistics format version \(version) is not supported (this build reads \(Self.version))")
        }
        let identity = try file.stringAttribute(".", "model_identity")
        if let expectedIdentity, identity != expectedIdentity {
            // Identities are "<structure>-<weights>": say which half differs.
            let sameStructure = identity.split(separator: "-").first == expectedIdentity.split(separator: "-").first
            let which = sameStructure ? "a model with the same structure but other weights" : "another model"
            throw PTQError.file(path, "these statistics were gathered on \(which) (identity \(identity), this model is \(expectedIdentity)); re-run `ptq calibrate` on this model")
        }
        let settings = CalibrationSettings(
            dataPath: try file.stringAttribute(".", "data"), samples: try file.intAttribute(".", "samples"),
            sequenceLength: try file.intAttribute(".", "seq_len"),
            seed: UInt64(truncatingIfNeeded: try file.intAttribute(".", "seed")))
        var points: [String: PointStatistics] = [:]
        let names = Set(file.datasetNames().compactMap { name -> String? in
            guard name.hasPrefix("points/"), let slash = name.lastIndex(of: "/") else { return nil }
            let start = name.index(name.startIndex, offsetBy: 7)
            guard start < slash else { return nil }  // a dataset directly under /points is not a point
            return String(name[start..<slash])
        })
        for point in names {
            let g = "points/\(point)"
            let channels = try file.intAttribute(g, "channels")
            guard channels > 0, channels <= Validation.maximumDimension else {
                throw PTQError.file(path, "statistics of '\(point)': channel count \(channels) must be between 1 and \(Validation.maximumDimension)")
            }
            // Every array's size against the attribute before reading it.
            for (dataset, expected) in [("min", [channels]), ("max", [channels]), ("sum", [channels]),
                                        ("sum_squares", [channels]), ("midpoint_sum", [channels]),
                                        ("gram", [channels, channels]), ("histogram", [HistogramBins.count])] {
                let name = "\(g)/\(dataset)"
                guard file.isDataset(name) else { continue }
                let shape = try file.datasetInfo(name).shape
                guard shape == expected else {
                    throw PTQError.file(path, "statistics of '\(point)': dataset '\(dataset)' has shape \(shape), expected \(expected) (channels = \(channels))")
                }
            }
            if file.isDataset("\(g)/reservoir") {
                let shape = try file.datasetInfo("\(g)/reservoir").shape
                guard shape.count == 2, shape[1] == channels else {
                    throw PTQError.file(path, "statistics of '\(point)': dataset 'reservoir' has shape \(shape), expected [rows, \(channels)]")
                }
            }
            func optionalDoubles(_ n: String) throws(PTQError) -> [Double]? {
                file.isDataset("\(g)/\(n)") ? try file.readDoubles("\(g)/\(n)") : nil
            }
            let reservoirCount = file.isDataset("\(g)/reservoir") ? try file.datasetInfo("\(g)/reservoir").shape[0] : 0
            let stats = PointStatistics(
                channels: channels, rows: try file.intAttribute(g, "rows"), samples: try file.intAttribute(g, "samples"),
                minimum: try file.readFloats("\(g)/min", count: channels),
                maximum: try file.readFloats("\(g)/max", count: channels),
                sum: try file.readDoubles("\(g)/sum"), sumOfSquares: try file.readDoubles("\(g)/sum_squares"),
                midpointSum: try optionalDoubles("midpoint_sum"),
                histogram: file.isDataset("\(g)/histogram") ? try file.readInt64s("\(g)/histogram") : nil,
                gram: try optionalDoubles("gram"),
                reservoir: reservoirCount > 0 ? try file.readFloats("\(g)/reservoir", count: reservoirCount * channels) : nil,
                reservoirCount: reservoirCount)
            do { try stats.validate(point: point) } catch { throw PTQError.file(path, error.message) }
            points[point] = stats
        }
        guard settings.samples >= 0, settings.sequenceLength >= 0 else {
            throw PTQError.file(path, "samples (\(settings.samples)) and seq_len (\(settings.sequenceLength)) must not be negative")
        }
        let statistics = CalibrationStatistics(modelIdentity: identity, settings: settings,
                                               tokens: try file.intAttribute(".", "tokens"), points: points)
        try statistics.validate(source: path)
        return statistics
    }
}
