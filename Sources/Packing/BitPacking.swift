import PTQCore

/// Packs integer codes at their true bit width and unpacks them again.
///
/// The packed form is an LSB-first bit stream: code `i` occupies bits `i·b ..< (i+1)·b` of the
/// stream, where bit `k` of the stream is bit `k % 8` of byte `k / 8`. So
///
/// - 8 bits: one code per byte (a copy);
/// - 4 bits: two codes per byte, code `2i` in the low nibble and code `2i+1` in the high nibble;
/// - 2 bits: code `4i + j` in bits `2j ..< 2j+2` of byte `i`;
/// - 1 bit: code `8i + j` in bit `j` of byte `i`;
/// - 3, 5, 6, 7 bits: codes straddle byte boundaries (code 2 at 3 bits uses bits 6–7 of byte 0
///   and bit 0 of byte 1).
///
/// `n` codes take `⌈n·b / 8⌉` bytes; unused high bits of the last byte are zero.
/// Every group of 8 codes fills exactly `b` whole bytes, which the general path exploits: it
/// gathers 8 codes into one 64-bit word and stores its low `b` bytes.
public enum BitPacking {
    /// Bytes needed for `count` codes of `bits` bits (nil on overflow or invalid input).
    public static func byteCount(count: Int, bits: Int) -> Int? {
        guard count >= 0, (1...8).contains(bits) else { return nil }
        let (total, overflow) = count.multipliedReportingOverflow(by: bits)
        guard !overflow, total <= Int.max - 7 else { return nil }
        return (total + 7) / 8
    }

    /// Packs `codes` (each `< 2^bits`; higher bits are masked off) into an LSB-first bit stream.
    /// `bits` must be in 1…8.
    public static func pack(_ codes: [UInt8], bits: Int) -> [UInt8] {
        precondition((1...8).contains(bits), "BitPacking.pack: bits must be 1…8 (got \(bits))")
        if bits == 8 { return codes }
        let n = codes.count
        let outCount = (n * bits + 7) / 8
        if n == 0 { return [] }
        return codes.withUnsafeBufferPointer { src in
            [UInt8](unsafeUninitializedCapacity: outCount) { dst, initialized in
                let s = src.baseAddress!, d = dst.baseAddress!
                if bits == 4 {
                    let pairs = n / 2
                    for i in 0..<pairs {
                        d[i] = (s[2 * i] & 0x0F) | (s[2 * i + 1] << 4)
                    }
                    if n & 1 == 1 { d[pairs] = s[n - 1] & 0x0F }
                } else {
                    let mask = UInt64((1 << bits) - 1)
                    let groups = n / 8
                    // Whole groups: 8 codes → exactly `bits` bytes.
                    var o = 0
                    for g in 0..<groups {
                        let base = s + 8 * g
                        var word: UInt64 = 0
                        for k in 0..<8 { word |= (UInt64(base[k]) & mask) << UInt64(k * bits) }
                        for k in 0..<bits { d[o + k] = UInt8(truncatingIfNeeded: word >> UInt64(8 * k)) }
                        o += bits
                    }
                    // Tail: fewer than 8 codes, fewer than `bits` bytes.
                    let rest = n - 8 * groups
                    if rest > 0 {
                        var word: UInt64 = 0
                        for k in 0..<rest { word |= (UInt64(s[8 * groups + k]) & mask) << UInt64(k * bits) }
                        var k = 0
                        while o < outCount {
                            d[o] = UInt8(truncatingIfNeeded: word >> UInt64(8 * k))
                            o += 1; k += 1
                        }
                    }
                }
                initialized = outCount
            }
        }
    }

    /// Unpacks `count` codes of `bits` bits from an LSB-first bit stream (one byte per code).
    /// Throws when `bits` is not 1…8, `count` is negative, or `bytes` holds fewer than
    /// `⌈count·bits / 8⌉` bytes. Extra trailing bytes are ignored.
    public static func unpack(_ bytes: [UInt8], bits: Int, count: Int) throws(PTQError) -> [UInt8] {
        try bytes.withUnsafeBufferPointer { (buffer) throws(PTQError) -> [UInt8] in
            try unpack(UnsafeRawBufferPointer(buffer), bits: bits, count: count)
        }
    }

    /// Unpacks from raw memory (e.g. a memory-mapped section); same contract as the array form.
    public static func unpack(_ bytes: UnsafeRawBufferPointer, bits: Int, count: Int) throws(PTQError) -> [UInt8] {
        guard (1...8).contains(bits) else {
            throw PTQError("packed codes: bit width \(bits) is not supported (1…8)")
        }
        guard count >= 0, let needed = byteCount(count: count, bits: bits) else {
            throw PTQError("packed codes: invalid code count \(count)")
        }
        guard bytes.count >= needed else {
            throw PTQError("packed codes: \(count) codes of \(bits) bits need \(needed) bytes, found \(bytes.count)")
        }
        if count == 0 { return [] }
        let s = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        return [UInt8](unsafeUninitializedCapacity: count) { dst, initialized in
            let d = dst.baseAddress!
            switch bits {
            case 8:
                d.update(from: s, count: count)
            case 4:
                let pairs = count / 2
                for i in 0..<pairs {
                    let byte = s[i]
                    d[2 * i] = byte & 0x0F
                    d[2 * i + 1] = byte >> 4
                }
                if count & 1 == 1 { d[count - 1] = s[pairs] & 0x0F }
            case 2:
                // SplitQuant cluster ids (one per weight): four codes per byte, without the generic
                // path's 64-bit word assembly (issue 13: it showed in the load profile).
                let quads = count / 4
                for i in 0..<quads {
                    let byte = s[i]
                    d[4 * i] = byte & 3
                    d[4 * i + 1] = (byte >> 2) & 3
                    d[4 * i + 2] = (byte >> 4) & 3
                    d[4 * i + 3] = byte >> 6
                }
                for j in 0..<(count - 4 * quads) { d[4 * quads + j] = (s[quads] >> UInt8(2 * j)) & 3 }
            default:
                let mask = UInt64((1 << bits) - 1)
                let groups = count / 8
                var o = 0
                for g in 0..<groups {
                    var word: UInt64 = 0
                    for k in 0..<bits { word |= UInt64(s[o + k]) << UInt64(8 * k) }
                    o += bits
                    let base = d + 8 * g
                    for k in 0..<8 { base[k] = UInt8(truncatingIfNeeded: (word >> UInt64(k * bits)) & mask) }
                }
                let rest = count - 8 * groups
                if rest > 0 {
                    var word: UInt64 = 0
                    var k = 0
                    while o < needed {
                        word |= UInt64(s[o]) << UInt64(8 * k)
                        o += 1; k += 1
                    }
                    for j in 0..<rest {
                        d[8 * groups + j] = UInt8(truncatingIfNeeded: (word >> UInt64(j * bits)) & mask)
                    }
                }
            }
            initialized = count
        }
    }
}
