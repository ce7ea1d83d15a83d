import ArgumentParser
import Foundation
import PTQKit

/// The `ptq` command: a thin layer that parses arguments, calls the library and prints.
public struct PTQCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ptq",
        abstract: "Post-training quantization toolkit: import, calibrate, quantize, evaluate and verify models.",
        discussion: """
            Exit codes: 0 success; 1 error (bad input file, recipe or data; the message names the file and \
            field); 2 verify gates failed (quantize, verify); 64 usage error (bad option or option value).
            """,
        version: PTQ.version,
        subcommands: [ImportCommand.self, CalibrateCommand.self, QuantizeCommand.self, EvaluateCommand.self, VerifyCommand.self,
                      InspectCommand.self, GenerateCommand.self, BenchCommand.self, SynthesizeCommand.self])

    public init() {}
}

/// Flags shared by every command.
struct OutputOptions: ParsableArguments {
    @Flag(name: .long, help: "Print one JSON object with the results on stdout.")
    var json = false

    @Flag(name: .shortAndLong, help: "No progress output on stderr.")
    var quiet = false

    /// Progress is off for --quiet and --json alike, so stdout/stderr stay machine-readable.
    var silent: Bool { quiet || json }
}

/// Prints a value as one line of sorted-key JSON on stdout.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    // A failed verify may report a NaN figure; it is printed (as a string) and the exit code says it failed.
    encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

