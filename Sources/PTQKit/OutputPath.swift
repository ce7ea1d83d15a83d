import Foundation

/// Checks on output paths, run before a command does any work (docs/reliability.md): the
/// folder exists and is writable, the output is not a directory, and it is none of the
/// command's inputs (same file by resolved path or by device and inode, including a hard link
/// or a symlink to it, or a file inside an input directory).
public enum OutputPath {
    public static func check(_ output: String, option: String = "--output", inputs: [String]) throws(PTQError) {
        guard !output.isEmpty else { throw PTQError("\(option) must not be empty") }
        let url = URL(fileURLWithPath: output)
        let folder = url.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory), isDirectory.boolValue {
            throw PTQError.file(output, "\(option) is a directory; give a file name")
        }
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory) else {
            throw PTQError.file(output, "output folder '\(folder)' does not exist")
        }
        guard isDirectory.boolValue else { throw PTQError.file(output, "'\(folder)' is not a folder") }
        guard access(folder, W_OK) == 0 else {
            throw PTQError.file(output, "output folder '\(folder)' is not writable")
        }
        let resolvedOutput = resolve(output)
        for input in inputs where !input.isEmpty && FileManager.default.fileExists(atPath: input) {
            let same = resolve(input) == resolvedOutput || sameFile(input, output)
            var inputIsDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: input, isDirectory: &inputIsDirectory)
            let inside = inputIsDirectory.boolValue && FileManager.default.fileExists(atPath: output)
                && resolvedOutput.hasPrefix(resolve(input) + "/")
            if same || inside {
                throw PTQError.file(output, "\(option) would overwrite the input '\(input)'; choose another output path")
            }
        }
    }

    /// The absolute path with symlinks resolved (of the folder when the file does not exist yet).
    public static func resolve(_ path: String) -> String {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        if let real = realpath(url.path, nil) {
            defer { free(real) }
            return String(cString: real)
        }
        let folder = url.deletingLastPathComponent().path
        if let real = realpath(folder, nil) {
            defer { free(real) }
            return String(cString: real) + "/" + url.lastPathComponent
        }
        return url.path
    }

    public static func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    /// A file name beside `output` that says the model failed its verify gates:
    /// `model.ptq` → `model.failed.ptq`.
    public static func failedName(_ output: String) -> String {
        let url = URL(fileURLWithPath: output)
        let ext = url.pathExtension
        let stem = url.deletingPathExtension().lastPathComponent
        let name = ext.isEmpty ? "\(stem).failed" : "\(stem).failed.\(ext)"
        return (output as NSString).deletingLastPathComponent.isEmpty
            ? name : ((output as NSString).deletingLastPathComponent as NSString).appendingPathComponent(name)
    }

    /// A temporary name in the output's folder (hidden, with the process id).
    public static func temporaryName(_ output: String, tag: String) -> String {
        let url = URL(fileURLWithPath: output)
        return url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(tag)-\(getpid())").path
    }
}
