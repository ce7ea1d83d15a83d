import ArgumentParser
import Foundation
import PTQKit

/// Limits of count-like options, shared by their `validate()` checks and `--help`.
enum OptionLimits {
    static let tokens = 1...1_048_576
    static let repeats = 1...1000
    static let samples = 1...10_000
    static let threads = 1...1024
}

/// A usage error (exit code 64) for an option whose valid range depends on the model.
func usageError(_ message: String) -> ValidationError { ValidationError(message) }
