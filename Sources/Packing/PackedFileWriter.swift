import Foundation
import PTQCore

/// Writes a `.ptq` file piece by piece, so that a model larger than memory can be packed as it
/// is quantized: each ``append(_:)`` encodes and writes its payload sections and keeps only
/// their table entries; ``finish(_:)`` writes the manifest and tokenizer sections, the section
/// table and, last, the header. The file is written under a temporary name in the destination
/// folder and renamed into place by `finish`; a writer dropped unfinished (or ``cancel()``ed)
/// removes it.
///
/// Pieces appended in the one-shot order (float tensors by name, then quantized linears by
/// name) give exactly the bytes of ``PackedFile/write(_:to:compressionLevel:)``, which is this
/// writer fed the whole model at once. The manifest and tokenizer come after the payloads
/// because the manifest records each payload's stored size.
public final class PackedFileWriter {
    public let path: String
    public let compressionLevel: Int
    private let temporaryPath: String
    private let fd: Int32
    private let out: FileDescriptorWriter
    private var table: [PackedSection] = []
    private var sectionNames: Set<String> = ["manifest", PackedFile.WritePlan.tokenizerSection]
    private var floatEntries: [PackedManifest.FloatTensorEntry] = []
    private var linearEntries: [PackedManifest.LinearEntry] = []
    private var done = false

    /// Creates the temporary file next to `path` (whose folder must exist).
    public init(path: String, compressionLevel: Int = 3) throws(PTQError) {
        guard Zstd.levelRange.contains(compressionLevel) else {
            throw PTQError.file(path, "zstd compression level \(compressionLevel) is out of range "
                                + "(\(Zstd.levelRange.lowerBound)…\(Zstd.levelRange.upperBound))")
        }
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PTQError.file(path, "output folder '\(folder)' does not exist")
        }
        let temp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())").path
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else {
            throw PTQError.file(path, "cannot create '\(temp)': \(String(cString: strerror(errno)))")
        }
        self.path = path
        self.compressionLevel = compressionLevel
        self.temporaryPath = temp
        self.fd = fd
        self.out = FileDescriptorWriter(fd: fd, path: path)
        do throws(PTQError) {
            // The header's place; its contents are known once the table is written.
            try out.writeZeros(PackedLayout.headerSize)
        } catch {
            cancel()
            throw error
        }
    }

    deinit { cancel() }

    /// Removes the unfinished file (nothing happens after `finish`).
    public func cancel() {
        guard !done else { return }
        done = true
        if !out.closed { close(fd) }
        unlink(temporaryPath)
    }

    /// Validates, encodes (in parallel) and writes the float tensors and quantized linears of
    /// `part`; its other fields are ignored. A section name already written is an error.
    public func append(_ part: PackedModel) throws(PTQError) {
        precondition(!done, "PackedFileWriter used after finish or cancel")
        do throws(PTQError) {
            var payloadsOnly = part
            payloadsOnly.activationSites = [:]
            let plan = try PackedFile.WritePlan(model: payloadsOnly, path: path)
            for job in plan.jobs where !sectionNames.insert(job.name).inserted {
                throw PTQError.file(path, "two sections would be named '\(job.name)'")
            }
            let encoded = try PackedFile.encodePayloads(plan.jobs, level: compressionLevel, path: path)
            var storedByName: [String: Int] = [:]
            for section in encoded {
                storedByName[section.name] = section.stored.count
                try write(section)
            }
            for var entry in plan.manifest.floatTensors {
                entry.storedBytes = storedByName[entry.section] ?? 0
                floatEntries.append(entry)
            }
            for var entry in plan.manifest.quantizedLinears {
                entry.storedBytes = entry.sectionNames.reduce(0) { $0 + (storedByName[$1] ?? 0) }
                linearEntries.append(entry)
            }
        } catch {
            cancel()
            throw error
        }
    }

    /// Writes the manifest (config, tokenizer, recipe, provenance and activation sites of
    /// `header`, with every entry appended so far), the tokenizer, the section table and the
    /// header, syncs, and renames the file into place. `header`'s payloads are not written
    /// again (append them first).
    public func finish(_ header: PackedModel) throws(PTQError) {
        precondition(!done, "PackedFileWriter used after finish or cancel")
        do throws(PTQError) {
            var skeleton = header
            skeleton.floatTensors = [:]
            skeleton.quantizedLinears = [:]
            var manifest = try PackedFile.WritePlan(model: skeleton, path: path).manifest
            manifest.floatTensors = floatEntries
            manifest.quantizedLinears = linearEntries
            // The lowest version that represents the file, so older readers keep reading what they can.
            let version = UInt32(manifest.requiredVersion)
            manifest.formatVersion = Int(version)
            let manifestJSON: [UInt8], tokenizerJSON: [UInt8]
            do {
                manifestJSON = Array(try PackedManifest.encoder().encode(manifest))
                tokenizerJSON = Array(try PackedManifest.encoder().encode(header.tokenizer))
            } catch {
                throw PTQError.file(path, "cannot encode the manifest: \(error)")
            }
            try write(try PackedFile.encodeSection(name: "manifest", kind: .manifest, raw: manifestJSON,
                                                   level: compressionLevel, path: path))
            try write(try PackedFile.encodeSection(name: PackedFile.WritePlan.tokenizerSection, kind: .tokenizer,
                                                   raw: tokenizerJSON, level: compressionLevel, path: path))
            let tableOffset = PackedLayout.aligned(out.position)
            let tail = PackedFile.Layout.tail(table, tableOffset: tableOffset, version: version)
            try out.writeZeros(tableOffset - out.position)
            try out.write(tail.tableBytes)
            precondition(out.position == tail.fileSize)
            let headerWritten = tail.header.withUnsafeBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) }
            guard headerWritten == tail.header.count else {
                throw PTQError.file(path, "cannot write the header: \(String(cString: strerror(errno)))")
            }
            if fsync(fd) != 0 { throw PTQError.file(path, "cannot sync: \(String(cString: strerror(errno)))") }
            out.closed = true
            if close(fd) != 0 { throw PTQError.file(path, "cannot close: \(String(cString: strerror(errno)))") }
            if rename(temporaryPath, path) != 0 {
                throw PTQError.file(path, "cannot move the finished file into place: \(String(cString: strerror(errno)))")
            }
            done = true
        } catch {
            cancel()
            throw error
        }
    }

    /// Writes one section at the next 64-byte boundary and records its table entry.
    private func write(_ s: PackedFile.EncodedSection) throws(PTQError) {
        let offset = PackedLayout.aligned(out.position)
        try out.writeZeros(offset - out.position)
        try out.write(s.stored)
        table.append(PackedSection(name: s.name, kind: s.kind, offset: offset, storedSize: s.stored.count,
                                   rawSize: s.rawSize, codec: s.codec, crc32: CRC32.checksum(s.stored)))
    }
}
