import Foundation
import PTQCore

// MARK: - Memory-mapped file

/// A read-only memory mapping of a whole file, unmapped when the last reference goes away.
final class MappedFile: @unchecked Sendable {
    let path: String
    /// The file's bytes; valid for the lifetime of this object.
    let bytes: UnsafeRawBufferPointer
    private let base: UnsafeMutableRawPointer?
    private let length: Int

    init(path: String) throws(PTQError) {
        self.path = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw PTQError.file(path, "no such file")
        }
        if isDirectory.boolValue { throw PTQError.file(path, "is a directory, expected a file") }
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw PTQError.file(path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) != 0 {
            throw PTQError.file(path, "cannot stat: \(String(cString: strerror(errno)))")
        }
        let size = Int(info.st_size)
        if size <= 0 {
            base = nil
            length = 0
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
              mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw PTQError.file(path, "cannot memory-map \(size) bytes: \(String(cString: strerror(errno)))")
        }
        base = mapped
        length = size
        bytes = UnsafeRawBufferPointer(start: mapped, count: size)
    }

    deinit {
        if let base { munmap(base, length) }
    }
}

/// Bounds-checked little-endian reads from a byte buffer; every failure is a `PTQError` naming the file.
struct ByteCursor {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset = 0

    var remaining: Int { bytes.count - offset }

    func truncated(_ what: String, need: Int) -> PTQError {
        PTQError.file(path, "truncated file: \(what) needs \(need) bytes at offset \(offset), "
            + "but the file has \(bytes.count) bytes")
    }

    mutating func take(_ n: Int, _ what: @autoclosure () -> String) throws(PTQError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else { throw truncated(what(), need: n) }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset ..< offset + n])
        offset += n
        return slice
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws(PTQError) -> T {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { throw truncated(what(), need: size) }
        let value = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += size
        return value
    }

    /// A GGUF string: u64 byte length + UTF-8 bytes.
    mutating func string(_ what: @autoclosure () -> String) throws(PTQError) -> String {
        let length = try load(UInt64.self, what())
        guard length <= UInt64(remaining) else {
            throw PTQError.file(path, "\(what()): string length \(length) at offset \(offset - 8) "
                + "runs past the end of the file (\(bytes.count) bytes)")
        }
        let raw = try take(Int(length), what())
        return String(decoding: raw, as: UTF8.self)
    }
}

// MARK: - GGUF values

/// Types of GGUF metadata values (`gguf_type`).
public enum GGUFValueType: UInt32, Sendable, CustomStringConvertible {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    public var description: String {
        switch self {
        case .uint8: "uint8"
        case .int8: "int8"
        case .uint16: "uint16"
        case .int16: "int16"
        case .uint32: "uint32"
        case .int32: "int32"
        case .float32: "float32"
        case .bool: "bool"
        case .string: "string"
        case .array: "array"
        case .uint64: "uint64"
        case .int64: "int64"
        case .float64: "float64"
        }
    }

    /// Smallest encoded size of one value, used to reject absurd array counts before allocating.
    var minimumEncodedSize: Int {
        switch self {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64, .string: 8
        case .array: 12
        }
    }
}

/// One GGUF metadata value.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    /// An array with its element type.
    case array(GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .uint64: .uint64
        case .int64: .int64
        case .float32: .float32
        case .float64: .float64
        case .bool: .bool
        case .string: .string
        case .array: .array
        }
    }

    /// The value of any integer type, when it fits in `Int`.
    public var intValue: Int? {
        switch self {
        case .uint8(let v): Int(v)
        case .int8(let v): Int(v)
        case .uint16(let v): Int(v)
        case .int16(let v): Int(v)
        case .uint32(let v): Int(v)
        case .int32(let v): Int(v)
        case .uint64(let v): Int(exactly: v)
        case .int64(let v): Int(v)
        default: nil
        }
    }

    /// The value of any floating-point or integer type.
    public var doubleValue: Double? {
        switch self {
        case .float32(let v): Double(v)
        case .float64(let v): v
        default: intValue.map(Double.init)
        }
    }

    public var boolValue: Bool? {
        if case .bool(let v) = self { return v }
        return nil
    }

    public var stringValue: String? {
        if case .string(let v) = self { return v }
        return nil
    }

    public var arrayValue: [GGUFValue]? {
        if case .array(_, let v) = self { return v }
        return nil
    }

    /// A short human-readable form for reports (arrays are summarised).
    public var summary: String {
        switch self {
        case .string(let s): s.count > 80 ? "\"\(s.prefix(77))...\"" : "\"\(s)\""
        case .array(let t, let values): "[\(values.count) × \(t)]"
        case .bool(let b): "\(b)"
        case .float32(let f): "\(f)"
        case .float64(let f): "\(f)"
        default: intValue.map { "\($0)" } ?? "\(self)"
        }
    }
}

// MARK: - Tensor infos

/// One tensor described in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    public var name: String
    /// GGML dimensions `ne`, innermost (contiguous) first.
    public var dimensions: [Int]
    public var type: GGMLType
    /// Absolute byte offset of the tensor's data in the file.
    public var fileOffset: Int
    public var elementCount: Int
    public var byteCount: Int

    /// Row-major shape, outermost first: `dimensions` reversed. A linear layer with
    /// `ne = [in, out]` has shape `[out, in]`.
    public var shape: [Int] { dimensions.reversed() }
}

// MARK: - Reader

/// A parsed GGUF (version 2 or 3) file: metadata, tensor infos, and memory-mapped tensor data.
///
/// Every malformed input gives a `PTQError` naming the file and what is wrong, never a crash.
public struct GGUFReader: Sendable {
    public static let defaultAlignment = 32
    /// Deepest nesting of arrays accepted in metadata.
    static let maximumArrayDepth = 4
    /// ggml's GGML_MAX_DIMS.
    static let maximumDimensions = 4

    public let path: String
    public let version: Int
    /// Metadata key/value pairs (without the header fields).
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensor infos in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute offset where tensor data starts.
    public let dataOffset: Int
    private let tensorIndex: [String: Int]
    private let file: MappedFile

    public init(path: String) throws(PTQError) {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        var cursor = ByteCursor(bytes: file.bytes, path: path)

        // Header.
        guard file.bytes.count >= 4 else {
            throw PTQError.file(path, "not a GGUF file: only \(file.bytes.count) bytes, too short for the magic")
        }
        let magic = Array(try cursor.take(4, "magic"))
        guard magic == Array("GGUF".utf8) else {
            let shown = magic.map { (32...126).contains($0) ? String(UnicodeScalar($0)) : "." }.joined()
            throw PTQError.file(path, "not a GGUF file: bad magic '\(shown)' "
                + "(bytes \(magic.map { String(format: "%02x", $0) }.joined(separator: " "))), expected 'GGUF'")
        }
        let rawVersion = try cursor.load(UInt32.self, "header version")
        guard rawVersion == 2 || rawVersion == 3 else {
            if rawVersion & 0xFFFF == 0 && rawVersion != 0 {
                throw PTQError.file(path, "unsupported GGUF version \(rawVersion): looks like a big-endian file, "
                    + "only little-endian GGUF v2 and v3 are supported")
            }
            throw PTQError.file(path, "unsupported GGUF version \(rawVersion) (supported: 2, 3)")
        }
        version = Int(rawVersion)
        let tensorCount = try cursor.load(UInt64.self, "header tensor count")
        let kvCount = try cursor.load(UInt64.self, "header metadata count")
        // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info
        // at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
        guard kvCount <= UInt64(cursor.remaining / 13) else {
            throw PTQError.file(path, "metadata count \(kvCount) in the header is impossible "
                + "for a file of \(file.bytes.count) bytes (corrupt or truncated header)")
        }
        guard tensorCount <= UInt64(cursor.remaining / 24) else {
            throw PTQError.file(path, "tensor count \(tensorCount) in the header is impossible "
                + "for a file of \(file.bytes.count) bytes (corrupt or truncated header)")
        }

        // Metadata.
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        keys.reserveCapacity(Int(kvCount))
        for index in 0..<Int(kvCount) {
            let key = try cursor.string("metadata key #\(index)")
            let rawType = try cursor.load(UInt32.self, "type of metadata '\(key)'")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw PTQError.file(path, "metadata '\(key)' has unknown value type \(rawType)")
            }
            let value = try Self.readValue(&cursor, type: type, key: key, depth: 0)
            if metadata[key] != nil {
                throw PTQError.file(path, "duplicate metadata key '\(key)'")
            }
            metadata[key] = value
            keys.append(key)
        }
        self.metadata = metadata
        metadataKeys = keys

        var alignment = Self.defaultAlignment
        if let value = metadata["general.alignment"] {
            guard case .uint32(let a) = value else {
                throw PTQError.file(path, "general.alignment must be a uint32, found \(value.type)")
            }
            guard a > 0, a & (a - 1) == 0 else {
                throw PTQError.file(path, "general.alignment \(a) is not a power of two")
            }
            alignment = Int(a)
        }
        self.alignment = alignment

        // Tensor infos.
        struct RawInfo { var name: String; var dims: [Int]; var type: GGMLType; var offset: UInt64 }
        var raw: [RawInfo] = []
        raw.reserveCapacity(Int(tensorCount))
        var index: [String: Int] = [:]
        for t in 0..<Int(tensorCount) {
            let name = try cursor.string("name of tensor #\(t)")
            let nDims = try cursor.load(UInt32.self, "dimension count of tensor '\(name)'")
            guard nDims >= 1, nDims <= UInt32(Self.maximumDimensions) else {
                throw PTQError.file(path, "tensor '\(name)' has \(nDims) dimensions "
                    + "(expected 1 to \(Self.maximumDimensions))")
            }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let ne = try cursor.load(UInt64.self, "dimension \(d) of tensor '\(name)'")
                guard ne <= UInt64(Int64.max) else {
                    throw PTQError.file(path, "tensor '\(name)' dimension \(d) is \(ne), which overflows")
                }
                dims.append(Int(ne))
            }
            let rawType = try cursor.load(UInt32.self, "type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw PTQError.file(path, "tensor '\(name)' has unknown GGML type \(rawType)")
            }
            let offset = try cursor.load(UInt64.self, "data offset of tensor '\(name)'")
            if index[name] != nil { throw PTQError.file(path, "duplicate tensor '\(name)'") }
            index[name] = raw.count
            raw.append(RawInfo(name: name, dims: dims, type: type, offset: offset))
        }
        tensorIndex = index

        // Tensor data starts at the next multiple of the alignment.
        let (padded, paddingOverflow) = cursor.offset.addingReportingOverflow(alignment - 1)
        guard !paddingOverflow else { throw PTQError.file(path, "data offset overflows") }
        let dataOffset = padded / alignment * alignment
        self.dataOffset = dataOffset

        var infos: [GGUFTensorInfo] = []
        infos.reserveCapacity(raw.count)
        let fileSize = file.bytes.count
        for r in raw {
            var elements = 1
            for ne in r.dims {
                let (product, overflow) = elements.multipliedReportingOverflow(by: ne)
                guard !overflow else {
                    throw PTQError.file(path, "tensor '\(r.name)' dimensions \(r.dims) overflow the element count")
                }
                elements = product
            }
            guard r.dims[0] % r.type.blockSize == 0 else {
                throw PTQError.file(path, "tensor '\(r.name)': first dimension \(r.dims[0]) is not a multiple "
                    + "of the \(r.type.name) block size \(r.type.blockSize)")
            }
            guard let bytes = r.type.byteCount(elementCount: elements) else {
                throw PTQError.file(path, "tensor '\(r.name)' dimensions \(r.dims) overflow the byte size")
            }
            guard r.offset % UInt64(alignment) == 0 else {
                throw PTQError.file(path, "tensor '\(r.name)' data offset \(r.offset) is not a multiple "
                    + "of the alignment \(alignment)")
            }
            guard r.offset <= UInt64(fileSize), case let start = dataOffset + Int(r.offset),
                  start <= fileSize, bytes <= fileSize - start else {
                throw PTQError.file(path, "tensor '\(r.name)' (\(r.type.name), \(r.dims), \(bytes) bytes at "
                    + "data offset \(r.offset)) extends past the end of the file (\(fileSize) bytes); "
                    + "the file is truncated or corrupt")
            }
            infos.append(GGUFTensorInfo(name: r.name, dimensions: r.dims, type: r.type,
                                        fileOffset: start, elementCount: elements, byteCount: bytes))
        }
        tensors = infos
    }

    private static func readValue(_ cursor: inout ByteCursor, type: GGUFValueType, key: String,
                                  depth: Int) throws(PTQError) -> GGUFValue {
        let what = "value of metadata '\(key)'"
        switch type {
        case .uint8: return .uint8(try cursor.load(UInt8.self, what))
        case .int8: return .int8(try cursor.load(Int8.self, what))
        case .uint16: return .uint16(try cursor.load(UInt16.self, what))
        case .int16: return .int16(try cursor.load(Int16.self, what))
        case .uint32: return .uint32(try cursor.load(UInt32.self, what))
        case .int32: return .int32(try cursor.load(Int32.self, what))
        case .uint64: return .uint64(try cursor.load(UInt64.self, what))
        case .int64: return .int64(try cursor.load(Int64.self, what))
        case .float32: return .float32(Float(bitPattern: try cursor.load(UInt32.self, what)))
        case .float64: return .float64(Double(bitPattern: try cursor.load(UInt64.self, what)))
        case .bool:
            let b = try cursor.load(UInt8.self, what)
            guard b <= 1 else {
                throw PTQError.file(cursor.path, "metadata '\(key)' has invalid bool byte \(b)")
            }
            return .bool(b == 1)
        case .string: return .string(try cursor.string(what))
        case .array:
            guard depth < maximumArrayDepth else {
                throw PTQError.file(cursor.path, "metadata '\(key)' nests arrays deeper than \(maximumArrayDepth)")
            }
            let rawElementType = try cursor.load(UInt32.self, "element type of metadata '\(key)'")
            guard let elementType = GGUFValueType(rawValue: rawElementType) else {
                throw PTQError.file(cursor.path, "metadata '\(key)' is an array of unknown type \(rawElementType)")
            }
            let count = try cursor.load(UInt64.self, "length of metadata '\(key)'")
            guard count <= UInt64(cursor.remaining / elementType.minimumEncodedSize) else {
                throw PTQError.file(cursor.path, "metadata '\(key)': array length \(count) of \(elementType) "
                    + "runs past the end of the file (\(cursor.bytes.count) bytes)")
            }
            var values: [GGUFValue] = []
            values.reserveCapacity(Int(count))
            for _ in 0..<Int(count) {
                values.append(try readValue(&cursor, type: elementType, key: key, depth: depth + 1))
            }
            return .array(elementType, values)
        }
    }

    // MARK: Access

    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// Runs `body` on the tensor's raw bytes (valid only inside `body`).
    public func withRawBytes<R>(of tensor: GGUFTensorInfo,
                                _ body: (UnsafeRawBufferPointer) throws(PTQError) -> R) throws(PTQError) -> R {
        let bytes = file.bytes
        guard tensor.fileOffset >= 0, tensor.byteCount >= 0, tensor.fileOffset <= bytes.count,
              tensor.byteCount <= bytes.count - tensor.fileOffset else {
            throw PTQError.file(path, "tensor '\(tensor.name)' lies outside the file")
        }
        return try withExtendedLifetime(file) { () throws(PTQError) -> R in
            try body(UnsafeRawBufferPointer(rebasing: bytes[tensor.fileOffset ..< tensor.fileOffset + tensor.byteCount]))
        }
    }

    /// The tensor's values as float32, row-major with `ne[0]` contiguous (see `GGUFTensorInfo.shape`).
    public func dequantize(_ tensor: GGUFTensorInfo) throws(PTQError) -> [Float] {
        guard tensor.type.canDequantize else {
            throw PTQError.file(path, "tensor '\(tensor.name)' has GGML type \(tensor.type.name), which PTQKit "
                + "cannot dequantize (supported: \(GGMLFormats.supportedTypes.map(\.name).joined(separator: ", ")))")
        }
        let count = tensor.elementCount
        return try withRawBytes(of: tensor) { (source) throws(PTQError) -> [Float] in
            var failure: PTQError?
            let values = [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
                do throws(PTQError) {
                    try GGMLFormats.dequantize(source, type: tensor.type, into: buffer, tensorName: tensor.name)
                } catch {
                    failure = error
                    buffer.initialize(repeating: 0)
                }
                initialized = count
            }
            if let failure { throw PTQError.file(path, failure.message) }
            return values
        }
    }

    /// The tensor as a `Tensor` of shape `GGUFTensorInfo.shape`.
    public func loadTensor(_ tensor: GGUFTensorInfo) throws(PTQError) -> Tensor {
        Tensor(shape: tensor.shape, data: try dequantize(tensor))
    }

    // MARK: Typed metadata helpers

    /// An integer metadata value; throws when present with a non-integer type, or missing without default.
    public func int(_ key: String, default defaultValue: Int? = nil) throws(PTQError) -> Int {
        guard let value = metadata[key] else {
            if let defaultValue { return defaultValue }
            throw PTQError.file(path, "missing metadata key '\(key)'")
        }
        guard let v = value.intValue else {
            throw PTQError.file(path, "metadata '\(key)' must be an integer, found \(value.type) \(value.summary)")
        }
        return v
    }

    public func double(_ key: String, default defaultValue: Double? = nil) throws(PTQError) -> Double {
        guard let value = metadata[key] else {
            if let defaultValue { return defaultValue }
            throw PTQError.file(path, "missing metadata key '\(key)'")
        }
        guard let v = value.doubleValue else {
            throw PTQError.file(path, "metadata '\(key)' must be a number, found \(value.type) \(value.summary)")
        }
        return v
    }

    public func string(_ key: String, default defaultValue: String? = nil) throws(PTQError) -> String {
        guard let value = metadata[key] else {
            if let defaultValue { return defaultValue }
            throw PTQError.file(path, "missing metadata key '\(key)'")
        }
        guard let v = value.stringValue else {
            throw PTQError.file(path, "metadata '\(key)' must be a string, found \(value.type) \(value.summary)")
        }
        return v
    }

    public func bool(_ key: String) throws(PTQError) -> Bool? {
        guard let value = metadata[key] else { return nil }
        guard let v = value.boolValue else {
            throw PTQError.file(path, "metadata '\(key)' must be a bool, found \(value.type) \(value.summary)")
        }
        return v
    }

    /// A string array, or nil when absent.
    public func stringArray(_ key: String) throws(PTQError) -> [String]? {
        guard let value = metadata[key] else { return nil }
        guard case .array(.string, let values) = value else {
            throw PTQError.file(path, "metadata '\(key)' must be an array of strings, found \(value.summary)")
        }
        return values.map { $0.stringValue ?? "" }
    }

    /// An integer array, or nil when absent.
    public func intArray(_ key: String) throws(PTQError) -> [Int]? {
        guard let value = metadata[key] else { return nil }
        guard case .array(_, let values) = value else {
            throw PTQError.file(path, "metadata '\(key)' must be an array of integers, found \(value.summary)")
        }
        var result: [Int] = []
        result.reserveCapacity(values.count)
        for v in values {
            guard let i = v.intValue else {
                throw PTQError.file(path, "metadata '\(key)' must be an array of integers, found \(value.summary)")
            }
            result.append(i)
        }
        return result
    }
}
