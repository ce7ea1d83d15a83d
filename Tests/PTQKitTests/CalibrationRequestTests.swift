import Foundation
import Testing
@testable import PTQCLI
@testable import PTQKit

/// `ptq calibrate` gathers what the recipe's quantizers need and nothing when they need nothing
/// (data-free recipes run no forward pass); recipes that need statistics get the same file as
/// before (every quantizer's request plus channel ranges at every planned input).
@Suite("Calibration request")
struct CalibrationRequestTests {
    static let dynamic = "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_token}}"
    static let outlierTune = """
    scheme:
      method: outliertune
      weight: {bits: 8}
      activation: {bits: 8, granularity: per_tensor}
    """

    /// The request `ptq calibrate` built before data-free recipes were recognised: every
    /// quantizer's statistics plus channel ranges (or, with --all, ranges, midpoints and
    /// histograms) at every planned layer's input, whatever the quantizers need.
    static func previousRequest(plan: [LayerPlan], all: Bool) throws -> StatisticsRequest {
        var request = try PTQ.statisticsRequest(plan: plan)
        for layer in plan {
            request.request(all ? [.channelRange, .sampleMidpoint, .histogram] : [.channelRange], at: layer.inputPoint)
        }
        return request
    }

    @Test func requests() throws {
        let (_, folder) = try PipelineFixtures.setUp()
        let config = SyntheticModels.llamaConfig()
        let data = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "dyn", body: Self.dynamic)).plan(for: config)
        let weightOnly = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "w4",
            body: "scheme: {method: rtn, weight: {bits: 4, symmetric: false, group_size: 32}}")).plan(for: config)
        let ot = try PTQ.RecipeContext(path: try PipelineFixtures.recipe(folder, name: "ot", body: Self.outlierTune)).plan(for: config)
        #expect(try PTQ.statisticsRequest(plan: data).isEmpty)
        #expect(try PTQ.calibrationRequest(plan: data).isEmpty)
        #expect(try PTQ.calibrationRequest(plan: weightOnly).isEmpty)
        #expect(PTQ.methodSummary(plan: data) == "rtn with per_token int8 activations")
        #expect(PTQ.methodSummary(plan: weightOnly) == "rtn (weight-only)")
        // --all still gathers; recipes that need statistics get exactly the previous request.
        for plan in [data, weightOnly, ot] {
            #expect(try PTQ.calibrationRequest(plan: plan, all: true) == Self.previousRequest(plan: plan, all: true))
        }
        let otRequest = try PTQ.calibrationRequest(plan: ot)
        #expect(otRequest == (try Self.previousRequest(plan: ot, all: false)))
        #expect(otRequest.kinds.count == 8 && otRequest.kinds.values.contains { $0.contains(.sampleMidpoint) })
    }

    /// The data-free recipe: `ptq calibrate` writes a file with no points and no tokens (no
    /// forward pass, not even the calibration data is read), `quantize --stats` takes it, and
    /// the result equals `quantize` without statistics.
    @Test func dataFreeCalibrateAndQuantize() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let path = try PipelineFixtures.recipe(folder, name: "dyn", body: Self.dynamic)
        // The calibration text is not needed: remove it.
        try FileManager.default.removeItem(atPath: folder + "/calib.txt")
        var calibrate = try PTQCommand.parseAsRoot(["calibrate", checkpoint, "--recipe", path, "-o", folder + "/dyn.h5", "--quiet"])
        try calibrate.run()
        let stats = try CalibrationStatistics.read(path: folder + "/dyn.h5")
        #expect(stats.points.isEmpty && stats.tokens == 0 && stats.settings.samples == 0)
        let recipe = try PTQ.RecipeContext(path: path)
        let withStats = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, statsPath: folder + "/dyn.h5", quiet: true)
        let without = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
        #expect(without.statistics == nil)
        #expect(withStats.packed.quantizedLinears == without.packed.quantizedLinears)
        #expect(withStats.packed.quantizedLinears.count == 14)
        // Statistics of a per-tensor recipe are still required from a data-free file.
        let staticPath = try PipelineFixtures.recipe(folder, name: "static",
            body: "scheme: {method: rtn, weight: {bits: 8}, activation: {bits: 8, granularity: per_tensor}}")
        #expect { try PTQ.quantize(checkpoint: checkpoint, recipe: try PTQ.RecipeContext(path: staticPath),
                                   statsPath: folder + "/dyn.h5", quiet: true) } throws: {
            ($0 as? PTQError)?.message.contains("missing") == true
        }
    }

    /// An OutlierTune recipe's statistics file from `ptq calibrate` holds the same points and
    /// datasets, with the same values, as one gathered with the previous request.
    @Test func statisticsOfAnOutlierTuneRecipeAreUnchanged() throws {
        let (checkpoint, folder) = try PipelineFixtures.setUp()
        let path = try PipelineFixtures.recipe(folder, name: "ot", body: Self.outlierTune)
        var calibrate = try PTQCommand.parseAsRoot(["calibrate", checkpoint, "--recipe", path, "-o", folder + "/ot.h5", "--quiet"])
        try calibrate.run()
        let recipe = try PTQ.RecipeContext(path: path)
        let plan = try recipe.plan(for: SyntheticModels.llamaConfig())
        let previous = try PTQ.calibrate(checkpoint: checkpoint, recipe: recipe,
                                         request: try Self.previousRequest(plan: plan, all: false), quiet: true)
        try previous.write(to: folder + "/previous.h5")
        let now = try CalibrationStatistics.read(path: folder + "/ot.h5")
        let before = try CalibrationStatistics.read(path: folder + "/previous.h5")
        #expect(now.hash == before.hash && now.tokens == before.tokens && now.tokens == 4 * 48)
        #expect(Set(now.points.keys) == Set(before.points.keys) && now.points.count == 8)
        for (point, a) in now.points {
            let b = try #require(before.points[point])
            #expect(a.kinds == b.kinds && a.rows == b.rows && a.samples == b.samples, "\(point)")
            #expect(a.minimum == b.minimum && a.maximum == b.maximum && a.sum == b.sum && a.sumOfSquares == b.sumOfSquares)
            #expect(a.midpointSum == b.midpointSum && a.histogram == b.histogram && a.gram == b.gram)
        }
        #expect(now.points.values.contains { $0.midpointSum != nil }, "outliertune's sample midpoints")
    }
}
