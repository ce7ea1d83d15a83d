import Foundation
import Testing
@testable import Calibration
@testable import PTQKit

@Suite("Calibration")
struct CalibrationTests {
    /// Single-pass streaming statistics equal a direct two-pass computation over all rows.
    @Test func streamingEqualsTwoPass() {
        var rng = SeededGenerator(seed: 11)
        let channels = 7
        let batches: [[Float]] = (0..<5).map { b in (0..<(3 + b) * channels).map { _ in rng.float(in: -3...5) } }
        let stats = PointStatistics(channels: channels, kinds: Set(StatisticKind.allCases), reservoirCapacity: 1000)
        for batch in batches { batch.withUnsafeBufferPointer { stats.add($0, rows: batch.count / channels) } }
        let all = batches.flatMap { $0 }
        let rows = all.count / channels
        #expect(stats.rows == rows && stats.samples == 5)
        for c in 0..<channels {
            let column = (0..<rows).map { all[$0 * channels + c] }
            #expect(stats.minimum[c] == column.min()!)
            #expect(stats.maximum[c] == column.max()!)
            let mean = column.map(Double.init).reduce(0, +) / Double(rows)
            #expect(abs(stats.mean[c] - mean) < 1e-9)
            // Symmetrization shift: mean over samples of each sample's (max + min) / 2.
            let midpoints = batches.map { batch -> Double in
                let values = stride(from: c, to: batch.count, by: channels).map { batch[$0] }
                return Double((values.max()! + values.min()!) / 2)
            }
            #expect(abs(Double(stats.sampleMidpoint![c]) - midpoints.reduce(0, +) / 5) < 1e-6)
            for d in 0..<channels {
                let g = (0..<rows).map { Double(all[$0 * channels + c]) * Double(all[$0 * channels + d]) }.reduce(0, +)
                // Each call's product runs in float (ssyrk), the sum over calls in double.
                #expect(abs(stats.gram![c * channels + d] - g) < 1e-5 * max(1, abs(g)))
            }
        }
        #expect(stats.histogram!.reduce(0, +) == Int64(all.count))
        // The reservoir holds every row while under capacity, in order.
        #expect(stats.reservoirCount == rows)
        #expect(Array(stats.reservoir!.prefix(all.count)) == all)
    }

    @Test func reservoirIsBounded() {
        let stats = PointStatistics(channels: 2, kinds: [.reservoir], reservoirCapacity: 10, seed: 5)
        let data = (0..<400).map { Float($0) }
        data.withUnsafeBufferPointer { stats.add($0, rows: 200) }
        #expect(stats.reservoirCount == 10)
        #expect(stats.reservoir!.count == 20)
        // Rows stay whole: each kept row is (2k, 2k + 1).
        for r in 0..<10 { #expect(stats.reservoir![2 * r + 1] == stats.reservoir![2 * r] + 1) }
    }

    @Test func histogramBinsAreMonotone() {
        #expect(HistogramBins.index(of: 0) == 0)
        #expect(HistogramBins.index(of: 1e7) == HistogramBins.count - 1)
        let values: [Float] = [1e-5, 1e-3, 0.5, 1, 2, 100, 1e5]
        let indices = values.map(HistogramBins.index(of:))
        #expect(indices == indices.sorted() && Set(indices).count == indices.count)
        for v in values { #expect(HistogramBins.upperEdge(HistogramBins.index(of: v)) >= v) }
    }

    /// Stats round-trip through their HDF5 file; another model's stats are refused.
    @Test func statsFileRoundTripAndIdentity() throws {
        let contents = SyntheticModels.contents(SyntheticModels.llamaConfig(), tokenizer: SyntheticModels.llamaTokenizer())
        let model = try LlamaModel(weights: CheckpointWeights(try CheckpointReader(path: try SyntheticModels.writeCheckpoint(contents))))
        let textPath = SyntheticModels.temporaryPath("calib.txt")
        try String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 40).write(toFile: textPath, atomically: true, encoding: .utf8)
        var request = StatisticsRequest(reservoirRows: 16)
        request.request(Set(StatisticKind.allCases), at: "layers.0.attention.input")
        request.request([.channelRange], at: "layers.1.mlp.down_proj.input")
        let settings = CalibrationSettings(dataPath: textPath, samples: 3, sequenceLength: 32, seed: 9)
        let stats = try Calibrator.run(model: model, tokenizer: try makeTokenizer(model.tokenizer), settings: settings,
                                       request: request, quiet: true)
        #expect(stats.points.count == 2)
        #expect(stats.points["layers.0.attention.input"]!.rows == 96)
        #expect(stats.points["layers.1.mlp.down_proj.input"]!.channels == 48)
        let path = SyntheticModels.temporaryPath("stats.h5")
        try stats.write(to: path)
        let read = try CalibrationStatistics.read(path: path, expectedIdentity: model.identity)
        #expect(read.hash == stats.hash)
        for (point, s) in stats.points {
            let r = read.points[point]!
            #expect(r.minimum == s.minimum && r.maximum == s.maximum && r.sum == s.sum)
            #expect(r.gram == s.gram && r.histogram == s.histogram && r.midpointSum == s.midpointSum)
            #expect(r.reservoirCount == s.reservoirCount)
        }
        try read.require(request, source: path)
        var more = request
        more.request([.gram], at: "layers.1.mlp.down_proj.input")
        #expect { try read.require(more, source: path) } throws: { ($0 as? PTQError)?.message.contains("gram") == true }

        let other = SyntheticModels.llamaConfig(tied: false)
        #expect(other.identity != model.identity)
        #expect { try CalibrationStatistics.read(path: path, expectedIdentity: other.identity) } throws: {
            ($0 as? PTQError)?.message.contains("another model") == true
        }
    }

    /// Calibration windows are reproducible and never overlap the held-out tail.
    @Test func sampleWindows() throws {
        let tokens = Array(0..<1000)
        let a = try CalibrationSamples.windows(of: tokens, count: 5, length: 50, seed: 1)
        #expect(a == (try CalibrationSamples.windows(of: tokens, count: 5, length: 50, seed: 1)))
        #expect(a.allSatisfy { $0.last! < 900 })
        let held = try CalibrationSamples.windows(of: tokens, count: 5, length: 50, seed: 1, heldOut: true)
        #expect(held.allSatisfy { $0.first! >= 900 })
        #expect(throws: PTQError.self) { try CalibrationSamples.windows(of: tokens, count: 1, length: 200, seed: 1, heldOut: true) }
    }
}
