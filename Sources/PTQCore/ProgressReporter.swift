import Foundation
import Synchronization

/// A progress line on stderr with rate and ETA.
///
/// On a terminal it redraws one line with `\r`; otherwise (CI, pipes) it prints a plain line
/// at most every 10 seconds. Silent when `quiet`. Safe to advance from several threads: the
/// count and the last redraw time sit behind a mutex.
public final class ProgressReporter: Sendable {
    private struct State {
        var lastDraw = Date.distantPast
        var done = 0
    }
    private let label: String
    private let total: Int
    private let quiet: Bool
    private let isTerminal: Bool
    private let start = Date()
    private let state = Mutex(State())

    public init(_ label: String, total: Int, quiet: Bool = false) {
        self.label = label
        self.total = max(total, 1)
        self.quiet = quiet
        self.isTerminal = isatty(STDERR_FILENO) != 0
    }

    /// Marks `count` more items done; `detail` is appended to the line (e.g. a running figure).
    public func advance(by count: Int = 1, detail: String = "") {
        let now = Date()
        let interval: TimeInterval = isTerminal ? 0.1 : 10
        let (quiet, total) = (quiet, total)
        let drawn: Int? = state.withLock { s in
            s.done += count
            guard !quiet, s.done >= total || now.timeIntervalSince(s.lastDraw) >= interval else { return nil }
            s.lastDraw = now
            return s.done
        }
        guard let done = drawn else { return }
        let elapsed = now.timeIntervalSince(start)
        let rate = Double(done) / max(elapsed, 1e-9)
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let percent = 100 * Double(done) / Double(total)
        var line = "\(label): \(done)/\(total) (\(String(format: "%.0f", percent))%) "
            + "\(String(format: "%.2f", rate))/s, ETA \(Self.format(eta))"
        if !detail.isEmpty { line += " — \(detail)" }
        Self.write(isTerminal ? "\r\u{1B}[K" + line + (done >= total ? "\n" : "") : line + "\n")
    }

    /// Prints a message on stderr unless quiet.
    public static func log(_ message: String, quiet: Bool = false) {
        if !quiet { write(message + "\n") }
    }

    static func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }

    static func format(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? "\(s / 3600)h\(String(format: "%02d", s % 3600 / 60))m" : "\(s / 60)m\(String(format: "%02d", s % 60))s"
    }
}
