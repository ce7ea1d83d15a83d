import Dispatch
import Foundation
import PTQCore

/// A read-only memory map of a whole file for the duration of `body`.
enum MappedFile {
    static func with<T>(_ path: String, _ body: (UnsafeRawBufferPointer) throws(PTQError) -> T) throws(PTQError) -> T {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw PTQError.file(path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw PTQError.file(path, "cannot stat: \(String(cString: strerror(errno)))") }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw PTQError.file(path, "not a regular file") }
        let size = Int(info.st_size)
        if size == 0 { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw PTQError.file(path, "cannot map: \(String(cString: strerror(errno)))")
        }
        defer { munmap(base, size) }
        // The reader walks the whole file once, roughly in order: ask for read-ahead of all of it
        // now (pages the VM's DAMON or a cache drop evicted come back in large reads instead of
        // one fault-around at a time).
        _ = madvise(base, size, Int32(MADV_WILLNEED))
        return try body(UnsafeRawBufferPointer(start: base, count: size))
    }
}

/// A parsed, structurally verified packed file: header and section table checked, sections
/// known to lie inside the file without overlapping. Section contents are verified on access.
struct Container {
    let path: String
    let bytes: UnsafeRawBufferPointer
    let sections: [PackedSection]
    let index: [String: Int]
    /// The header's format version (one of `PackedLayout.readableVersions`).
    let version: UInt32

    init(_ bytes: UnsafeRawBufferPointer, path: String) throws(PTQError) {
        self.path = path
        self.bytes = bytes
        func fail(_ message: String) -> PTQError { PTQError.file(path, message) }
        let size = bytes.count
        let magic = PackedLayout.magic
        let headerSize = PackedLayout.headerSize

        // Magic, then version: both stay at offsets 0 and 8 in every format version.
        guard size > 0 else { throw fail("not a PTQKit packed file (the file is empty)") }
        guard zip(bytes.prefix(magic.count), magic).allSatisfy({ $0 == $1 }) else {
            throw fail("not a PTQKit packed file (bad magic)")
        }
        guard size >= 12 else { throw fail("file is truncated (\(size) bytes; the header alone is \(headerSize))") }
        var r = ByteReader(bytes, at: magic.count)
        let version = r.u32()!
        // A version-1 header checksums its first 60 bytes into the last 4.
        let headerIntact = size >= headerSize
            && CRC32.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<(headerSize - 4)]))
                == ByteReader(bytes, at: headerSize - 4).readU32()
        guard PackedLayout.readableVersions.contains(version) else {
            // A newer writer may lay its header out differently, so a checksum failure here
            // only earns a hint.
            let readable = PackedLayout.readableVersions
            throw fail("format version \(version) is not supported; this build reads \(readable.lowerBound)…\(readable.upperBound)"
                       + (headerIntact ? "" : " (or the header is corrupted)"))
        }
        self.version = version
        guard size >= headerSize else { throw fail("file is truncated (\(size) bytes; the header alone is \(headerSize))") }
        guard headerIntact else { throw fail("header is corrupted (checksum mismatch)") }
        let flags = r.u32()!, sectionCount = r.u32()!
        _ = r.u32()!  // reserved
        let tableOffset64 = r.u64()!, tableSize64 = r.u64()!, fileSize64 = r.u64()!
        guard flags == 0 else { throw fail(String(format: "header flags 0x%08x are not supported", flags)) }
        if fileSize64 > UInt64(size) {
            throw fail("file is truncated: the header says \(fileSize64) bytes, found \(size)")
        }
        if fileSize64 < UInt64(size) {
            throw fail("file has \(UInt64(size) - fileSize64) unexpected bytes after its end (header says \(fileSize64) bytes)")
        }
        // fileSize64 == size from here on, so every UInt64 below that is ≤ it fits in Int.
        guard tableOffset64 >= UInt64(headerSize), tableOffset64 % UInt64(PackedLayout.alignment) == 0,
              tableSize64 <= fileSize64, tableOffset64 <= fileSize64 - tableSize64,
              fileSize64 - tableSize64 - tableOffset64 == UInt64(PackedLayout.tableChecksumSize) else {
            throw fail("header is inconsistent: section table at \(tableOffset64) (\(tableSize64) bytes) in a \(size)-byte file")
        }
        let tableOffset = Int(tableOffset64), tableSize = Int(tableSize64)
        let table = UnsafeRawBufferPointer(rebasing: bytes[tableOffset..<(tableOffset + tableSize)])
        let storedTableCRC = ByteReader(bytes, at: tableOffset + tableSize).readU32()
        guard CRC32.checksum(table) == storedTableCRC else {
            throw fail("section table is corrupted (checksum mismatch)")
        }

        // Entries.
        guard Int(sectionCount) <= tableSize / PackedLayout.entryFixedSize else {
            throw fail("section table is malformed: \(sectionCount) sections cannot fit in \(tableSize) bytes")
        }
        var t = ByteReader(table)
        var sections: [PackedSection] = []
        var index: [String: Int] = [:]
        for i in 0..<Int(sectionCount) {
            guard let offset = t.u64(), let stored = t.u64(), let raw = t.u64(), let crc = t.u32(),
                  let kindByte = t.u8(), let codecByte = t.u8(), let nameLength = t.u16(),
                  let nameBytes = t.bytes(Int(nameLength)) else {
                throw fail("section table is malformed: entry \(i) runs past the end of the table")
            }
            guard nameLength > 0, let name = String(validating: nameBytes, as: UTF8.self) else {
                throw fail("section table is malformed: entry \(i) has an empty or non-UTF-8 name")
            }
            guard let kind = PackedSectionKind(rawValue: kindByte) else {
                throw fail("section '\(name)' has unknown kind \(kindByte)")
            }
            guard let codec = PackedCodec(rawValue: codecByte) else {
                throw fail("section '\(name)' has unknown codec \(codecByte)")
            }
            // All sections lie in [header end, table start).
            guard offset >= UInt64(headerSize), offset % UInt64(PackedLayout.alignment) == 0,
                  offset <= tableOffset64, stored <= tableOffset64 - offset else {
                throw fail("section '\(name)' is out of bounds (offset \(offset), \(stored) bytes; "
                           + "sections must lie within bytes \(headerSize)..<\(tableOffset64) at 64-byte boundaries)")
            }
            switch codec {
            case .raw:
                guard raw == stored else {
                    throw fail("section '\(name)' is stored raw but claims \(raw) raw bytes for \(stored) stored")
                }
            case .zstd:
                guard stored > 0, raw / UInt64(PackedLayout.maxZstdRatio) <= stored, raw <= UInt64(Int.max) else {
                    throw fail("section '\(name)' claims an implausible size (\(raw) bytes from \(stored) compressed)")
                }
            }
            guard index[name] == nil else { throw fail("section table lists section '\(name)' twice") }
            index[name] = sections.count
            sections.append(PackedSection(name: name, kind: kind, offset: Int(offset), storedSize: Int(stored),
                                          rawSize: Int(raw), codec: codec, crc32: crc))
        }
        guard t.position == tableSize else {
            throw fail("section table is malformed: \(tableSize - t.position) bytes after the last entry")
        }

        // No overlaps, and every byte between sections is zero padding.
        var end = headerSize
        var previous: String?
        for s in sections.sorted(by: { ($0.offset, $0.storedSize) < ($1.offset, $1.storedSize) }) {
            guard s.offset >= end else {
                throw fail("sections '\(previous ?? "")' and '\(s.name)' overlap")
            }
            try Self.checkPadding(bytes, end..<s.offset, after: previous, path: path)
            end = s.offset + s.storedSize
            previous = s.name
        }
        try Self.checkPadding(bytes, end..<tableOffset, after: previous, path: path)
        self.sections = sections
        self.index = index
    }

    private static func checkPadding(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, after: String?,
                                     path: String) throws(PTQError) {
        guard !range.isEmpty else { return }
        if UnsafeRawBufferPointer(rebasing: bytes[range]).contains(where: { $0 != 0 }) {
            let place = after.map { "after section '\($0)'" } ?? "after the header"
            throw PTQError.file(path, "padding \(place) is corrupted (not zero)")
        }
    }

    // MARK: Section access

    func label(_ section: PackedSection, tensor: String?) -> String {
        tensor.map { "section '\(section.name)' (tensor '\($0)')" } ?? "section '\(section.name)'"
    }

    func stored(_ s: PackedSection) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[s.offset..<(s.offset + s.storedSize)])
    }

    /// Checks the CRC, then (zstd) that the frame header declares `rawSize` bytes, so that no
    /// buffer is allocated from a size the frame does not back.
    func verify(_ s: PackedSection, tensor: String?) throws(PTQError) {
        guard CRC32.checksum(stored(s)) == s.crc32 else {
            throw PTQError.file(path, "\(label(s, tensor: tensor)) is corrupted (checksum mismatch)")
        }
        if s.codec == .zstd, let failure = Zstd.checkContentSize(stored(s), expected: s.rawSize) {
            throw PTQError.file(path, "\(label(s, tensor: tensor)): zstd error: \(failure.message)")
        }
    }

    /// Decodes a verified section into `destination` (exactly `rawSize` bytes).
    func decode(_ s: PackedSection, into destination: UnsafeMutableRawBufferPointer, tensor: String?) throws(PTQError) {
        precondition(destination.count == s.rawSize)
        switch s.codec {
        case .raw:
            if s.rawSize > 0 { destination.copyMemory(from: stored(s)) }
        case .zstd:
            if let failure = Zstd.decompress(stored(s), into: destination) {
                throw PTQError.file(path, "\(label(s, tensor: tensor)): zstd error: \(failure.message)")
            }
        }
    }

    /// Decodes an already verified section into a fresh byte array.
    func decodedBytes(of s: PackedSection, tensor: String?) throws(PTQError) -> [UInt8] {
        var failure: PTQError?
        let out = [UInt8](unsafeUninitializedCapacity: s.rawSize) { buffer, initialized in
            do throws(PTQError) {
                try decode(s, into: UnsafeMutableRawBufferPointer(buffer), tensor: tensor)
            } catch {
                failure = error
            }
            initialized = s.rawSize
        }
        if let failure { throw failure }
        return out
    }

    func manifest() throws(PTQError) -> PackedManifest {
        guard let i = index["manifest"], sections[i].kind == .manifest else {
            throw PTQError.file(path, "section 'manifest' is missing")
        }
        try verify(sections[i], tensor: nil)
        let json = try decodedBytes(of: sections[i], tensor: nil)
        let manifest: PackedManifest
        do {
            manifest = try PackedManifest.decoder().decode(PackedManifest.self, from: Data(json))
        } catch {
            throw PTQError.file(path, "section 'manifest': invalid manifest JSON: \(describeDecodingError(error))")
        }
        guard manifest.formatVersion == Int(version) else {
            throw PTQError.file(path, "section 'manifest': format version \(manifest.formatVersion) does not match "
                                + "the header's \(version)")
        }
        // Version-2 fields in a version-1 file would be ignored by version-1 readers: refuse them.
        if Int(version) < manifest.requiredVersion {
            throw PTQError.file(path, "section 'manifest': \(manifest.versionTwoFeature ?? "its fields") need format version "
                                + "\(manifest.requiredVersion), the header says \(version)")
        }
        return manifest
    }

    func tokenizer(_ manifest: PackedManifest) throws(PTQError) -> TokenizerSpec {
        guard let i = index[manifest.tokenizer], sections[i].kind == .tokenizer else {
            throw PTQError.file(path, "tokenizer section '\(manifest.tokenizer)' is missing")
        }
        try verify(sections[i], tensor: nil)
        let json = try decodedBytes(of: sections[i], tensor: nil)
        do {
            return try PackedManifest.decoder().decode(TokenizerSpec.self, from: Data(json))
        } catch {
            throw PTQError.file(path, "section '\(manifest.tokenizer)': invalid tokenizer JSON: \(describeDecodingError(error))")
        }
    }

    // MARK: Payloads

    struct Load: Sendable {
        enum Decode: Sendable {
            case floats(Int)
            case halves(Int)
            case codes(bits: Int, count: Int)
            case verifyOnly

            /// Raw bytes the section must hold.
            var byteCount: Int {
                switch self {
                case .floats(let n): n * 4
                case .halves(let n): n * 2
                case .codes(let bits, let count): BitPacking.byteCount(count: count, bits: bits) ?? -1
                case .verifyOnly: -1
                }
            }
        }
        var section: Int
        var tensor: String?
        var decode: Decode
    }

    enum Payload: Sendable {
        case floats([Float])
        case codes([UInt8])
        case none

        var floats: [Float] { if case .floats(let v) = self { v } else { [] } }
        var codes: [UInt8] { if case .codes(let v) = self { v } else { [] } }
    }

    /// Drops the mapped pages wholly inside section `s` from the resident set once it is decoded
    /// (`madvise(MADV_DONTNEED)`): the file's pages and the decoded arrays then no longer both
    /// count at the load's peak (issue 13). Safe for any later read: the mapping is private and
    /// never written, so a dropped page faults back in from the file unchanged.
    func release(_ s: PackedSection) {
        guard let base = bytes.baseAddress, s.storedSize > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: base) + s.offset, end = start + s.storedSize
        let first = (start + page - 1) / page * page, last = end / page * page
        guard first < last else { return }
        _ = madvise(UnsafeMutableRawPointer(bitPattern: first), last - first, Int32(MADV_DONTNEED))
    }

    func load(_ l: Load) throws(PTQError) -> Payload {
        let s = sections[l.section]
        defer { release(s) }
        try verify(s, tensor: l.tensor)
        switch l.decode {
        case .verifyOnly:
            return .none
        case .floats(let count):
            var failure: PTQError?
            let values = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                do throws(PTQError) {
                    try decode(s, into: UnsafeMutableRawBufferPointer(buffer), tensor: l.tensor)
                } catch {
                    failure = error
                }
                #if !_endian(little)
                for i in 0..<count { buffer[i] = Float(bitPattern: UInt32(littleEndian: buffer[i].bitPattern)) }
                #endif
                initialized = count
            }
            if let failure { throw failure }
            return .floats(values)
        case .halves(let count):
            let bytes = try decodedBytes(of: s, tensor: l.tensor)
            // A table of all 65536 halves: `Float(Float16)` is a libcall per value on x86 builds
            // without F16C, which made float16 tables the slowest part of loading a .ptq.
            let table = Self.halfToFloat
            let values = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                bytes.withUnsafeBufferPointer { b in
                    table.withUnsafeBufferPointer { t in
                        for i in 0..<count {
                            buffer[i] = t[Int(UInt16(b[2 * i]) | UInt16(b[2 * i + 1]) << 8)]
                        }
                    }
                }
                initialized = count
            }
            return .floats(values)
        case .codes(let bits, let count):
            if bits == 8 { return .codes(try decodedBytes(of: s, tensor: l.tensor)) }
            // Raw sections unpack straight from the mapped file.
            let packed: [UInt8]? = s.codec == .raw ? nil : try decodedBytes(of: s, tensor: l.tensor)
            do throws(PTQError) {
                if let packed { return .codes(try BitPacking.unpack(packed, bits: bits, count: count)) }
                return .codes(try BitPacking.unpack(stored(s), bits: bits, count: count))
            } catch {
                throw PTQError.file(path, "\(label(s, tensor: l.tensor)): \(error.message)")
            }
        }
    }

    /// Every float16 bit pattern as a Float (exact: `Float(Float16(bitPattern:))`).
    static let halfToFloat: [Float] = (0...UInt16.max).map { Float(Float16(bitPattern: $0)) }

    /// Verifies and decodes every load, in parallel; throws the first failure in load order.
    /// `alongside` runs as one more task of the same loop (first, as the loads are the many).
    func decodeParallel(_ loads: [Load], alongside: (@Sendable () -> Void)? = nil) throws(PTQError) -> [Payload] {
        var results = [Result<Payload, PTQError>?](repeating: nil, count: loads.count)
        let container = UnsafeSendable(self)
        let extra = alongside == nil ? 0 : 1
        results.withUnsafeMutableBufferPointer { buffer in
            let out = UnsafeSendable(buffer)
            DispatchQueue.concurrentPerform(iterations: loads.count + extra) { task in
                if task < extra { alongside?(); return }
                let i = task - extra
                out.value[i] = Result { () throws(PTQError) -> Payload in try container.value.load(loads[i]) }
            }
        }
        var payloads: [Payload] = []
        payloads.reserveCapacity(loads.count)
        for result in results { payloads.append(try result!.get()) }
        return payloads
    }
}

extension ByteReader {
    /// A u32 at a position already known to be in bounds.
    func readU32() -> UInt32 {
        var copy = self
        return copy.u32()!
    }
}
