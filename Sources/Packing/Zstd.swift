import CZstd
import PTQCore

/// Thin wrapper over libzstd's one-shot API. Errors are plain strings; callers add the file
/// and section to them.
enum Zstd {
    static var levelRange: ClosedRange<Int> { Int(ZSTD_minCLevel())...Int(ZSTD_maxCLevel()) }

    /// One zstd frame with the content size and a content checksum (XXH64) in its header/trailer.
    static func compress(_ source: UnsafeRawBufferPointer, level: Int) -> Result<[UInt8], ZstdFailure> {
        guard let cctx = ZSTD_createCCtx() else { return .failure(ZstdFailure("cannot create a compression context")) }
        defer { ZSTD_freeCCtx(cctx) }
        var status = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, Int32(level))
        if ZSTD_isError(status) != 0 { return .failure(ZstdFailure(status)) }
        status = ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        if ZSTD_isError(status) != 0 { return .failure(ZstdFailure(status)) }
        status = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)
        if ZSTD_isError(status) != 0 { return .failure(ZstdFailure(status)) }
        let bound = ZSTD_compressBound(source.count)
        if ZSTD_isError(bound) != 0 { return .failure(ZstdFailure(bound)) }
        var failure: ZstdFailure?
        // A zero-length source still produces a frame (header + checksum).
        var scratch: UInt8 = 0
        let output = [UInt8](unsafeUninitializedCapacity: max(bound, 1)) { dst, initialized in
            let written = withUnsafeMutablePointer(to: &scratch) { empty in
                ZSTD_compress2(cctx, dst.baseAddress, bound,
                               source.baseAddress ?? UnsafeRawPointer(empty), source.count)
            }
            if ZSTD_isError(written) != 0 {
                failure = ZstdFailure(written)
                initialized = 0
            } else {
                initialized = written
            }
        }
        if let failure { return .failure(failure) }
        return .success(output)
    }

    /// Checks that `source` starts with a frame header declaring `expected` content bytes
    /// (frames without a declared size pass; decompression checks them).
    static func checkContentSize(_ source: UnsafeRawBufferPointer, expected: Int) -> ZstdFailure? {
        guard let src = source.baseAddress, source.count > 0 else { return ZstdFailure("empty zstd frame") }
        let declared = ZSTD_getFrameContentSize(src, source.count)
        if declared == UInt64.max - 1 { return ZstdFailure("not a valid zstd frame") }
        if declared != UInt64.max, declared != UInt64(expected) {
            return ZstdFailure("frame holds \(declared) bytes, the section table says \(expected)")
        }
        return nil
    }

    /// Decompresses a frame into `destination`, which must be exactly the frame's content size.
    static func decompress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer)
        -> ZstdFailure? {
        if let failure = checkContentSize(source, expected: destination.count) { return failure }
        guard let src = source.baseAddress else { return ZstdFailure("empty zstd frame") }
        var scratch: UInt8 = 0
        let written = withUnsafeMutablePointer(to: &scratch) { empty in
            ZSTD_decompress(destination.baseAddress ?? UnsafeMutableRawPointer(empty), destination.count,
                            src, source.count)
        }
        if ZSTD_isError(written) != 0 { return ZstdFailure(written) }
        if written != destination.count {
            return ZstdFailure("frame decompressed to \(written) bytes, expected \(destination.count)")
        }
        return nil
    }
}

struct ZstdFailure: Error {
    let message: String
    init(_ message: String) { self.message = message }
    init(_ code: Int) { self.message = String(cString: ZSTD_getErrorName(code)) }
}
