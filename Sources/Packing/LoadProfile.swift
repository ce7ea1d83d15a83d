import Foundation

/// `PTQ_LOAD_PROFILE=1` in the environment: each phase of a model load (mapping and checking
/// the file, decoding its sections, validating, building the runtime layers) printed to stderr
/// with its wall time, the process's CPU time and its minor page faults (first touches of fresh
/// memory and of the mapped file), so a slow load can be attributed (issue 13). Off, a phase
/// costs one branch.
public enum LoadProfile {
    /// Whether `PTQ_LOAD_PROFILE=1` was set when the process first asked.
    public static let enabled: Bool = getenv("PTQ_LOAD_PROFILE").map { String(cString: $0) == "1" } ?? false

    /// A point in time with the process's CPU seconds and minor faults so far.
    public struct Mark: Sendable {
        let nanoseconds: UInt64
        let cpuSeconds: Double
        let minorFaults: Int

        /// Now (zeros when profiling is off: nothing is read).
        public init() {
            guard LoadProfile.enabled else {
                (nanoseconds, cpuSeconds, minorFaults) = (0, 0, 0)
                return
            }
            var usage = rusage()
            getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
            nanoseconds = DispatchTime.now().uptimeNanoseconds
            cpuSeconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
                + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
            minorFaults = usage.ru_minflt
        }
    }

    /// Prints `load profile: <phase> <wall> s wall, <cpu> s CPU, <n> minor faults` for the time
    /// since `start`, and returns a new mark (for the next phase).
    @discardableResult
    public static func report(_ phase: String, since start: Mark) -> Mark {
        guard enabled else { return start }
        let now = Mark()
        let line = String(format: "load profile: %@ %.3f s wall, %.3f s CPU, %d minor faults\n", phase,
                          Double(now.nanoseconds - start.nanoseconds) / 1e9, now.cpuSeconds - start.cpuSeconds,
                          now.minorFaults - start.minorFaults)
        FileHandle.standardError.write(Data(line.utf8))
        return now
    }
}
