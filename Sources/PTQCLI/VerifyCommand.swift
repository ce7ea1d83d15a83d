import ArgumentParser
import Foundation
import PTQKit

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare a packed model with its float reference on held-out samples; exit non-zero when the recipe's thresholds are missed.")

    @Argument(help: "Packed model (.ptq).")
    var packed: String

    @Option(name: .long, help: "Float reference checkpoint (.h5).")
    var reference: String

    @Option(name: .long, help: "Recipe whose `verify` thresholds and calibration data apply (default: the recipe stored in the packed file, with the calibration data it was quantized with).")
    var recipe: String?

    @Option(name: .long, help: "Number of held-out samples, 1…10000 (default: the recipe's verify.samples, else 4, as quantize uses).")
    var samples: Int?

    @OptionGroup var options: OutputOptions

    func validate() throws {
        if let samples, !OptionLimits.samples.contains(samples) {
            throw ValidationError("--samples must be between 1 and \(OptionLimits.samples.upperBound) (got \(samples))")
        }
    }

    func run() throws {
        let report = try PTQ.verify(packed: packed, reference: reference,
                                    recipe: try recipe.map { (path) throws(PTQError) in try PTQ.RecipeContext(path: path) },
                                    samples: samples, quiet: options.silent)
        if options.json { try printJSON(report) } else { printVerification(report) }
        if !report.passed { throw ExitCode(2) }
    }
}
