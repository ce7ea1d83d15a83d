import ArgumentParser
import Foundation
import PTQKit

struct CalibrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "calibrate",
        abstract: "Run the float model on calibration data and save the statistics the recipe's quantizers need.")

    @Argument(help: "Float checkpoint (.h5).")
    var model: String

    @Option(name: .long, help: "Recipe (.yaml): its quantizers decide which statistics are gathered.")
    var recipe: String

    @Option(name: .shortAndLong, help: "Output statistics file (.h5).")
    var output: String

    @Flag(name: .long, help: "Also gather the cheap statistics (channel ranges, sample midpoints, histograms) at every linear input, so the file serves other recipes too.")
    var all = false

    @OptionGroup var options: OutputOptions

    func run() throws {
        let context = try PTQ.RecipeContext(path: recipe)
        let reader = try CheckpointReader(path: model)
        try OutputPath.check(output, inputs: [model, recipe, context.calibrationPath(for: reader.config)])
        try context.checkCalibration(for: reader.config)
        let plan = try context.plan(for: reader.config)
        // Only what the recipe's quantizers need: a data-free recipe (e.g. rtn with dynamic
        // per-token activations) runs no forward pass and writes a file with no points.
        let request = try PTQ.calibrationRequest(plan: plan, all: all)
        let summary = PTQ.methodSummary(plan: plan)
        if request.isEmpty && !options.json && !options.silent {
            print("no statistics needed: \(summary) quantizes from the weights alone; no calibration pass "
                  + "(ptq quantize needs no --stats for this recipe; --all gathers statistics anyway)")
        }
        let start = Date()
        let stats = try PTQ.calibrate(checkpoint: model, recipe: context, request: request, quiet: options.silent)
        try stats.write(to: output)
        let seconds = Date().timeIntervalSince(start)
        if options.json {
            struct Output: Encodable {
                let output: String, points: Int, tokens: Int, samples: Int, seconds: Double, hash: String
                let statisticsNeeded: Bool, methods: String
                enum CodingKeys: String, CodingKey {
                    case output, points, tokens, samples, seconds, hash, methods
                    case statisticsNeeded = "statistics_needed"
                }
            }
            try printJSON(Output(output: output, points: stats.points.count, tokens: stats.tokens,
                                 samples: stats.settings.samples, seconds: seconds, hash: stats.hash,
                                 statisticsNeeded: !request.isEmpty, methods: summary))
        } else {
            print("wrote \(output): \(stats.points.count) points, \(stats.tokens) tokens from \(stats.settings.dataPath) "
                  + String(format: "(%.1f s)", seconds))
        }
    }
}
