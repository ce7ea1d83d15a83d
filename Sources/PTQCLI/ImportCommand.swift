import ArgumentParser
import Foundation
import PTQKit

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Convert a GGUF file or a Hugging Face safetensors directory into a PTQKit HDF5 checkpoint.")

    @Argument(help: "A .gguf file, or a directory with config.json and model.safetensors.")
    var source: String

    @Option(name: .shortAndLong, help: "Output checkpoint (.h5).")
    var output: String

    @OptionGroup var options: OutputOptions

    func run() throws {
        try OutputPath.check(output, inputs: [source])
        let start = Date()
        ProgressReporter.log("importing \(source)…", quiet: options.silent)
        let contents = try PTQ.importModel(from: source, to: output)
        let c = contents.config
        let parameters = contents.tensors.values.reduce(0) { $0 + $1.count }
        let seconds = Date().timeIntervalSince(start)
        if options.json {
            struct Summary: Encodable {
                let output: String, architecture: String, parameters: Int, layers: Int, tensors: Int, seconds: Double
            }
            try printJSON(Summary(output: output, architecture: c.architecture.rawValue, parameters: parameters,
                                  layers: c.layerCount, tensors: contents.tensors.count, seconds: seconds))
        } else {
            print("wrote \(output): \(c.architecture.rawValue) '\(c.name)', \(c.layerCount) layers, "
                  + "\(contents.tensors.count) tensors, \(parameters) parameters (\(String(format: "%.1f", seconds)) s)")
        }
    }
}
