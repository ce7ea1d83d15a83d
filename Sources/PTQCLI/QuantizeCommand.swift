import ArgumentParser
import Foundation
import PTQKit

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Quantize a checkpoint with a recipe, pack it into a .ptq file, and verify it.")

    @Argument(help: "Float checkpoint (.h5).")
    var model: String

    @Option(name: .long, help: "Recipe (.yaml).")
    var recipe: String

    @Option(name: .shortAndLong, help: "Output packed model (.ptq).")
    var output: String?

    @Option(name: .long, help: "Statistics from `ptq calibrate` (otherwise calibration runs when needed).")
    var stats: String?

    @Flag(name: .long, help: "Print the resolved per-layer plan and bits per weight, and stop.")
    var dryRun = false

    @Flag(name: .long, help: "Skip the short verification after packing.")
    var noVerify = false

    @Flag(name: .long, help: ArgumentHelp(
        "Keep a model that fails the recipe's verify gates, as <output stem>.failed.ptq (never at --output).",
        discussion: "Without it a failed model is deleted. Either way the command exits with code 2."))
    var keepFailed = false

    @OptionGroup var options: OutputOptions

    func validate() throws {
        if !dryRun && output == nil { throw ValidationError("--output is required (or use --dry-run)") }
    }

    func run() throws {
        let context = try PTQ.RecipeContext(path: recipe)
        let reader = try CheckpointReader(path: model)
        let plan = try context.plan(for: reader.config)
        if let output {
            try OutputPath.check(output, inputs: [model, recipe, stats ?? "", context.calibrationPath(for: reader.config)])
            if keepFailed { try OutputPath.check(OutputPath.failedName(output), option: "--keep-failed", inputs: [model, recipe, stats ?? ""]) }
        }
        // Every planned layer's quantizer is built here: unknown methods and parameters fail now.
        let request = try PTQ.statisticsRequest(plan: plan)
        // Calibration will run: its sequences must fit the model (checked in dry runs too).
        if stats == nil && !request.isEmpty { try context.checkCalibration(for: reader.config) }
        let bitsPerWeight = context.recipe.bitsPerWeight(plan: plan, config: reader.config)
        if dryRun {
            if options.json {
                struct Row: Encodable { let name, method, weight: String; let activation: String? }
                struct Output: Encodable { let layers: [Row]; let bits_per_weight: Double }
                try printJSON(Output(layers: plan.map { Row(name: $0.name, method: $0.method, weight: $0.weight.description,
                                                           activation: $0.activation?.description) },
                                     bits_per_weight: bitsPerWeight))
            } else {
                print(context.recipe.dryRunDescription(plan: plan, config: reader.config))
            }
            return
        }
        guard let output = self.output else { throw ValidationError("--output is required (or use --dry-run)") }
        let result = try PTQ.quantizeAndPack(checkpoint: model, recipe: context, output: output, statsPath: stats,
                                             verify: !noVerify, keepFailed: keepFailed, quiet: options.silent)
        let summary = result.summary
        let sourceBytes = (try? FileManager.default.attributesOfItem(atPath: model)[.size] as? Int) ?? 0
        if options.json {
            struct Output: Encodable {
                let output: String, bytes: Int, source_bytes: Int, bits_per_weight: Double, layers: Int,
                    seconds: Double, verify: VerificationReport?
            }
            try printJSON(Output(output: result.writtenPath ?? "", bytes: summary.totalBytes, source_bytes: sourceBytes,
                                 bits_per_weight: summary.bitsPerWeight, layers: plan.count, seconds: result.seconds,
                                 verify: result.report))
        } else {
            let share = String(format: "%.1f%%", 100 * Double(summary.totalBytes) / Double(max(sourceBytes, 1)))
            let verb = result.passed ? "wrote \(output)"
                : result.writtenPath.map { "kept the FAILED model as \($0)" } ?? "quantized (not kept, failed verify)"
            print("\(verb): \(plan.count) quantized layers, \(formatBytes(summary.totalBytes)) "
                  + "(\(share) of the \(formatBytes(sourceBytes)) checkpoint), "
                  + String(format: "%.3f bits per weight, %.1f s", summary.bitsPerWeight, result.seconds))
            if let report = result.report { printVerification(report) }
        }
        if let report = result.report, !report.passed {
            let fate = result.writtenPath.map { "the model is kept as \($0)" }
                ?? "nothing was written to \(output) (keep it with --keep-failed)"
            FileHandle.standardError.write(Data(("Error: verification failed: " + report.failures.joined(separator: "; ")
                                                 + "; \(fate)\n").utf8))
            throw ExitCode(2)
        }
    }
}

func formatBytes(_ n: Int) -> String {
    n >= 1 << 20 ? String(format: "%.1f MiB", Double(n) / 1048576) : String(format: "%.1f KiB", Double(n) / 1024)
}

func printVerification(_ r: VerificationReport) {
    var parts: [String] = ["verify on \(r.samples) held-out samples (\(r.tokens) tokens):"]
    if let kl = r.meanKL { parts.append(String(format: "mean KL %.5f", kl)) }
    if let t = r.top1Agreement { parts.append(String(format: "top-1 agreement %.2f%%", 100 * t)) }
    if let a = r.referencePerplexity, let b = r.quantizedPerplexity {
        parts.append(String(format: "perplexity %.3f → %.3f (%+.2f%%)", a, b, 100 * (b / a - 1)))
    }
    if let c = r.meanCosine { parts.append(String(format: "embedding cosine %.5f", c)) }
    print(parts.joined(separator: " "))
    if let worst = r.layers.max(by: { $0.relativeMSE < $1.relativeMSE }) {
        print(String(format: "  worst block output: layer %d, relative MSE %.2e, cosine %.5f", worst.layer, worst.relativeMSE, worst.cosine))
    }
    print(r.passed ? "  PASS" : "  FAIL: " + r.failures.joined(separator: "; "))
}
