/// The one error type PTQKit throws for bad input and failed operations.
///
/// Every message names what the user has to look at: the file, the tensor or dataset,
/// the recipe field. The CLI prints `description` as is.
public struct PTQError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }

    /// An error about a file, prefixed with its path.
    public static func file(_ path: String, _ message: String) -> PTQError {
        PTQError("\(path): \(message)")
    }
}
