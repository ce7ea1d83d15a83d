import Foundation
import PTQCore

/// What a section holds (the `kind` byte of a section-table entry).
public enum PackedSectionKind: UInt8, Sendable, CaseIterable, Encodable {
    /// The manifest: UTF-8 JSON.
    case manifest = 1
    /// The tokenizer: UTF-8 JSON of `TokenizerSpec`.
    case tokenizer = 2
    /// A float tensor: little-endian float32, row-major.
    case floatTensor = 3
    /// Integer codes of a quantized linear, bit-packed at their true width (`BitPacking`).
    case codes = 4
    /// Per-group weight scales, little-endian float32.
    case scales = 5
    /// Per-group zero points, little-endian float32.
    case zeros = 6
    /// Linear bias, little-endian float32.
    case bias = 7
    /// Per-input-channel activation divisors, little-endian float32.
    case activationChannelScales = 8
    /// Per-input-channel activation shift, little-endian float32.
    case activationChannelShift = 9

    public var label: String {
        switch self {
        case .manifest: "manifest"
        case .tokenizer: "tokenizer"
        case .floatTensor: "float_tensor"
        case .codes: "codes"
        case .scales: "scales"
        case .zeros: "zeros"
        case .bias: "bias"
        case .activationChannelScales: "activation_channel_scales"
        case .activationChannelShift: "activation_channel_shift"
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(label)
    }
}

/// How a section's bytes are stored (the `codec` byte of a section-table entry).
public enum PackedCodec: UInt8, Sendable, Encodable {
    /// Stored as is: stored size == raw size.
    case raw = 0
    /// One zstd frame with content size and content checksum.
    case zstd = 1

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self == .raw ? "raw" : "zstd")
    }
}

/// One entry of a packed file's section table.
public struct PackedSection: Sendable, Equatable, Encodable {
    public var name: String
    public var kind: PackedSectionKind
    /// Absolute byte offset of the stored bytes (a multiple of 64).
    public var offset: Int
    /// Bytes in the file.
    public var storedSize: Int
    /// Bytes after decoding.
    public var rawSize: Int
    public var codec: PackedCodec
    /// CRC-32 (IEEE) of the stored bytes.
    public var crc32: UInt32

    enum CodingKeys: String, CodingKey {
        case name, kind, offset, codec, crc32
        case storedSize = "stored_size"
        case rawSize = "raw_size"
    }
}

/// Byte-level constants and codecs of the container (see docs/packed-format.md).
enum PackedLayout {
    static let magic: [UInt8] = Array("PTQKPACK".utf8)
    /// The newest version this build writes. Files are written at the lowest version that can
    /// represent them: version 2 adds only the outlier columns of `binary` weights (manifest
    /// fields a version-1 reader would ignore, running a different model), so a file without
    /// them stays version 1 and readable by older builds.
    static let formatVersion: UInt32 = 2
    /// The versions this build reads.
    static let readableVersions: ClosedRange<UInt32> = 1...2
    static let headerSize = 64
    static let alignment = 64
    /// Fixed part of a table entry; the UTF-8 name follows it.
    static let entryFixedSize = 32
    static let tableChecksumSize = 4
    /// Longest plausible zstd expansion (bytes out per byte in); larger claims are rejected
    /// before any allocation.
    static let maxZstdRatio = 1 << 17

    static func aligned(_ value: Int) -> Int { (value + alignment - 1) / alignment * alignment }

    struct Header {
        var version: UInt32
        var flags: UInt32
        var sectionCount: UInt32
        var tableOffset: UInt64
        var tableSize: UInt64
        var fileSize: UInt64

        func encoded() -> [UInt8] {
            var w = ByteWriter()
            w.bytes(PackedLayout.magic)
            w.u32(version)
            w.u32(flags)
            w.u32(sectionCount)
            w.u32(0)  // reserved
            w.u64(tableOffset)
            w.u64(tableSize)
            w.u64(fileSize)
            w.zeros(12)  // reserved
            w.u32(CRC32.checksum(w.data))
            precondition(w.data.count == PackedLayout.headerSize)
            return w.data
        }
    }

    static func encodeTable(_ sections: [PackedSection]) -> [UInt8] {
        var w = ByteWriter()
        for s in sections {
            let name = Array(s.name.utf8)
            w.u64(UInt64(s.offset))
            w.u64(UInt64(s.storedSize))
            w.u64(UInt64(s.rawSize))
            w.u32(s.crc32)
            w.u8(s.kind.rawValue)
            w.u8(s.codec.rawValue)
            w.u16(UInt16(name.count))
            w.bytes(name)
        }
        return w.data
    }
}

/// Little-endian serialisation into a byte array.
struct ByteWriter {
    var data: [UInt8] = []
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { for k in 0..<2 { data.append(UInt8(truncatingIfNeeded: v >> (8 * k))) } }
    mutating func u32(_ v: UInt32) { for k in 0..<4 { data.append(UInt8(truncatingIfNeeded: v >> (8 * k))) } }
    mutating func u64(_ v: UInt64) { for k in 0..<8 { data.append(UInt8(truncatingIfNeeded: v >> (8 * k))) } }
    mutating func bytes(_ v: [UInt8]) { data.append(contentsOf: v) }
    mutating func zeros(_ n: Int) { data.append(contentsOf: repeatElement(0, count: n)) }
}

/// Bounds-checked little-endian reads from raw memory: every read returns nil past the end.
struct ByteReader {
    let buffer: UnsafeRawBufferPointer
    var position: Int

    init(_ buffer: UnsafeRawBufferPointer, at position: Int = 0) {
        self.buffer = buffer
        self.position = position
    }

    private mutating func take(_ n: Int) -> UnsafeRawBufferPointer? {
        guard n >= 0, position >= 0, position <= buffer.count, buffer.count - position >= n else { return nil }
        defer { position += n }
        return UnsafeRawBufferPointer(rebasing: buffer[position..<(position + n)])
    }

    private mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard let bytes = take(MemoryLayout<T>.size) else { return nil }
        var v: T = 0
        for (k, b) in bytes.enumerated() { v |= T(b) << (8 * k) }
        return v
    }

    mutating func u8() -> UInt8? { integer(UInt8.self) }
    mutating func u16() -> UInt16? { integer(UInt16.self) }
    mutating func u32() -> UInt32? { integer(UInt32.self) }
    mutating func u64() -> UInt64? { integer(UInt64.self) }
    mutating func bytes(_ n: Int) -> UnsafeRawBufferPointer? { take(n) }
}

/// Writes a file under `.<name>.tmp-<pid>` in the destination folder, syncs it and renames it
/// into place, so `path` holds either the old file or the complete new one. The temporary
/// file is removed when anything fails.
/// Sequential writes to an open file descriptor, retrying partial writes and EINTR.
final class FileDescriptorWriter {
    let fd: Int32
    let path: String
    var closed = false
    private(set) var position = 0

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws(PTQError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw PTQError.file(path, "write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
        position += bytes.count
    }

    func write(_ bytes: [UInt8]) throws(PTQError) {
        let result = bytes.withUnsafeBytes { b in Result { () throws(PTQError) in try write(b) } }
        try result.get()
    }

    func writeZeros(_ count: Int) throws(PTQError) {
        guard count > 0 else { return }
        try write([UInt8](repeating: 0, count: count))
    }
}
