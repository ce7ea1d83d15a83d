import ArgumentParser
import Foundation
import PTQKit

struct SynthesizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synthesize",
        abstract: "Write a random-weight LLaMA checkpoint of any size, tensor by tensor (for memory and speed tests).",
        discussion: """
            The defaults give about 1.46 B parameters with a 49152-token vocabulary (5.9 GB in float32): \
            hidden 2048, MLP 5632, 28 layers, 16 query and 4 key/value heads, untied head. Weights are \
            uniform with standard deviation --std, norm weights 1, so activations stay finite through every \
            layer. The tokenizer (and vocabulary size) comes from --tokenizer-from.
            """)

    @Option(name: .long, help: "Checkpoint (.h5) whose tokenizer the model uses.")
    var tokenizerFrom: String

    @Option(name: .shortAndLong, help: "Output checkpoint (.h5).")
    var output: String

    @Option(name: .long) var hidden = 2048
    @Option(name: .long) var intermediate = 5632
    @Option(name: .long) var layers = 28
    @Option(name: .long) var heads = 16
    @Option(name: .long) var kvHeads = 4
    @Option(name: .long) var maxPositions = 2048
    @Option(name: .long, help: "Standard deviation of the weights.") var std: Float = 0.02
    @Option(name: .long) var seed: UInt64 = 0

    @OptionGroup var options: OutputOptions

    func run() throws {
        try OutputPath.check(output, inputs: [tokenizerFrom])
        var shape = PTQ.SyntheticLlamaShape()
        shape.hiddenSize = hidden
        shape.intermediateSize = intermediate
        shape.layerCount = layers
        shape.headCount = heads
        shape.kvHeadCount = kvHeads
        shape.maxPositions = maxPositions
        shape.standardDeviation = std
        shape.seed = seed
        let start = Date()
        let parameters = try PTQ.writeSyntheticLlama(shape: shape, tokenizerFrom: tokenizerFrom, to: output)
        let seconds = Date().timeIntervalSince(start)
        if options.json {
            struct Output: Encodable { let output: String, parameters: Int, seconds: Double }
            try printJSON(Output(output: output, parameters: parameters, seconds: seconds))
        } else {
            print("wrote \(output): \(parameters) parameters " + String(format: "(%.1f s)", seconds))
        }
    }
}
