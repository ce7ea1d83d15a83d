import Foundation
import PTQCore

/// One tensor described in a safetensors header.
public struct SafetensorsEntry: Sendable, Equatable {
    public var name: String
    /// The safetensors dtype string (`F32`, `F16`, `BF16`, `I64`, ...).
    public var dtype: String
    public var shape: [Int]
    /// Absolute byte range of the data in the file.
    public var fileRange: Range<Int>

    /// The storage type when PTQKit can read this dtype.
    public var storageType: DType? { SafetensorsReader.storageType(dtype) }
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A parsed safetensors file: header entries plus memory-mapped data.
///
/// Layout: u64 little-endian header length N, N bytes of JSON
/// (`{"name": {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`),
/// then the data, offsets relative to its start. Every malformed input gives a `PTQError`.
public struct SafetensorsReader: Sendable {
    /// Largest header accepted (the safetensors library's own limit).
    public static let maximumHeaderLength = 100_000_000

    /// Bytes per element of every dtype the format defines (for bounds checks).
    static let dtypeSizes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
        "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
        "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    ]

    static func storageType(_ dtype: String) -> DType? {
        switch dtype {
        case "F32": .float32
        case "F16": .float16
        case "BF16": .bfloat16
        default: nil
        }
    }

    public let path: String
    /// Entries by tensor name.
    public let entries: [String: SafetensorsEntry]
    /// Tensor names in data order.
    public let names: [String]
    /// The `__metadata__` string map (empty when absent).
    public let headerMetadata: [String: String]
    private let file: MappedFile

    public init(path: String) throws(PTQError) {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        let bytes = file.bytes
        guard bytes.count >= 8 else {
            throw PTQError.file(path, "not a safetensors file: \(bytes.count) bytes, too short for the "
                + "8-byte header length")
        }
        let headerLength = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw PTQError.file(path, "safetensors header length \(headerLength) exceeds the file size "
                + "(\(bytes.count) bytes): not a safetensors file, or truncated")
        }
        guard headerLength <= UInt64(Self.maximumHeaderLength) else {
            throw PTQError.file(path, "safetensors header length \(headerLength) exceeds the limit of "
                + "\(Self.maximumHeaderLength) bytes")
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = bytes.count - dataStart
        let headerData = Data(UnsafeRawBufferPointer(rebasing: bytes[8 ..< dataStart]))
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: headerData)
        } catch {
            throw PTQError.file(path, "safetensors header is not valid JSON: \(error.localizedDescription)")
        }
        guard let header = json as? [String: Any] else {
            throw PTQError.file(path, "safetensors header is not a JSON object")
        }

        var metadata: [String: String] = [:]
        var entries: [String: SafetensorsEntry] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                if let map = value as? [String: Any] {
                    for (k, v) in map { metadata[k] = v as? String ?? "\(v)" }
                }
                continue
            }
            guard let info = value as? [String: Any] else {
                throw PTQError.file(path, "tensor '\(name)': header entry is not an object")
            }
            guard let dtype = info["dtype"] as? String else {
                throw PTQError.file(path, "tensor '\(name)': missing or non-string 'dtype'")
            }
            guard let elementSize = Self.dtypeSizes[dtype] else {
                throw PTQError.file(path, "tensor '\(name)': unknown dtype '\(dtype)'")
            }
            guard let rawShape = info["shape"] as? [Any] else {
                throw PTQError.file(path, "tensor '\(name)': missing or invalid 'shape'")
            }
            var shape: [Int] = []
            var elements = 1
            for d in rawShape {
                guard let n = Self.integer(d), n >= 0 else {
                    throw PTQError.file(path, "tensor '\(name)': shape \(rawShape) has an invalid dimension '\(d)'")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: n)
                guard !overflow else {
                    throw PTQError.file(path, "tensor '\(name)': shape \(shape + [n]) overflows the element count")
                }
                elements = product
                shape.append(n)
            }
            guard let offsets = info["data_offsets"] as? [Any], offsets.count == 2,
                  let begin = Self.integer(offsets[0]), let end = Self.integer(offsets[1]) else {
                throw PTQError.file(path, "tensor '\(name)': missing or invalid 'data_offsets' (need [begin, end])")
            }
            guard begin >= 0, begin <= end else {
                throw PTQError.file(path, "tensor '\(name)': data_offsets [\(begin), \(end)] are not an increasing range")
            }
            guard end <= dataSize else {
                throw PTQError.file(path, "tensor '\(name)': data_offsets [\(begin), \(end)] run past the end of the "
                    + "data (\(dataSize) bytes after the header); the file is truncated or corrupt")
            }
            let (byteCount, overflow) = elements.multipliedReportingOverflow(by: elementSize)
            guard !overflow, byteCount == end - begin else {
                throw PTQError.file(path, "tensor '\(name)': \(dtype) shape \(shape) needs "
                    + "\(overflow ? "too many" : "\(byteCount)") bytes, but data_offsets [\(begin), \(end)] "
                    + "span \(end - begin)")
            }
            entries[name] = SafetensorsEntry(name: name, dtype: dtype, shape: shape,
                                             fileRange: dataStart + begin ..< dataStart + end)
        }

        // No two tensors may share bytes.
        let ordered = entries.values.sorted {
            ($0.fileRange.lowerBound, $0.fileRange.upperBound, $0.name)
                < ($1.fileRange.lowerBound, $1.fileRange.upperBound, $1.name)
        }
        var previous: SafetensorsEntry?
        for entry in ordered where !entry.fileRange.isEmpty {
            if let p = previous, entry.fileRange.lowerBound < p.fileRange.upperBound {
                throw PTQError.file(path, "tensors '\(p.name)' and '\(entry.name)' overlap "
                    + "(data_offsets [\(p.fileRange.lowerBound - dataStart), \(p.fileRange.upperBound - dataStart)] "
                    + "and [\(entry.fileRange.lowerBound - dataStart), \(entry.fileRange.upperBound - dataStart)])")
            }
            previous = entry
        }
        self.entries = entries
        names = ordered.map(\.name)
        headerMetadata = metadata
    }

    /// A JSON number that is a non-fractional integer (not a boolean).
    static func integer(_ value: Any) -> Int? {
        if let n = value as? NSNumber, isBoolean(n) { return nil }
        if value is String { return nil }
        return value as? Int
    }

    /// A JSON boolean (`true`/`false`, not the numbers 1/0).
    static func boolean(_ value: Any?) -> Bool? {
        guard let value else { return nil }
        if let n = value as? NSNumber { return isBoolean(n) ? n.boolValue : nil }
        return value as? Bool
    }

    /// Foundation parses JSON booleans to NSNumbers whose Objective-C type is `c` (char).
    static func isBoolean(_ n: NSNumber) -> Bool {
        String(cString: n.objCType) == "c"
    }

    public func entry(named name: String) -> SafetensorsEntry? { entries[name] }

    /// The tensor as float32 (from F32, F16 or BF16 data).
    public func tensor(named name: String) throws(PTQError) -> Tensor {
        guard let entry = entries[name] else {
            throw PTQError.file(path, "no tensor named '\(name)'")
        }
        return try tensor(entry)
    }

    public func tensor(_ entry: SafetensorsEntry) throws(PTQError) -> Tensor {
        guard let dtype = entry.storageType else {
            throw PTQError.file(path, "tensor '\(entry.name)' has dtype \(entry.dtype); only F32, F16 and BF16 "
                + "tensors can be imported")
        }
        let bytes = file.bytes
        let range = entry.fileRange
        guard range.lowerBound >= 0, range.upperBound <= bytes.count,
              range.count == entry.elementCount * dtype.byteCount else {
            throw PTQError.file(path, "tensor '\(entry.name)' lies outside the file")
        }
        let count = entry.elementCount
        let data = withExtendedLifetime(file) {
            let source = UnsafeRawBufferPointer(rebasing: bytes[range])
            return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                if count > 0, let src = source.baseAddress, let dst = buffer.baseAddress {
                    Self.convert(src, dtype: dtype, count: count, into: dst)
                }
                initialized = count
            }
        }
        return Tensor(shape: entry.shape, data: data)
    }

    static func convert(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) {
        switch dtype {
        case .float32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
            #if _endian(big)
            for i in 0..<count { dst[i] = Float(bitPattern: UInt32(littleEndian: dst[i].bitPattern)) }
            #endif
        case .float16:
            GGMLFormats.halfTable.withUnsafeBufferPointer { table in
                let half = table.baseAddress!
                for i in 0..<count {
                    dst[i] = half[Int(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))]
                }
            }
        case .bfloat16:
            for i in 0..<count {
                let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                dst[i] = Float(bfloat16Bits: bits)
            }
        }
    }
}
