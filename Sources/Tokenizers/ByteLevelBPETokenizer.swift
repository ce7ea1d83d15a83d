import PTQCore

/// GPT-2 style byte-level BPE (SmolLM2, GPT-2 and friends).
///
/// Pipeline, matching llama.cpp's `smollm` / `gpt2` pre-tokenizers and HF tokenizers'
/// `Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]`
/// with a `BPE` model:
/// 1. special-token text is split out first (only user-defined tokens by default, control tokens
///    too with `parseSpecialTokens`);
/// 2. `smollm` only: every `\p{N}` scalar becomes a piece of its own;
/// 3. each piece is split with the GPT-2 pattern
///    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
///    (hand-written matcher over Unicode scalars; `\s` is Unicode White_Space);
/// 4. each word's UTF-8 bytes start as the byte tokens and are merged by rank (lowest rank
///    first, leftmost first on ties), with a per-call cache of words already seen.
public struct ByteLevelBPETokenizer: Tokenizer {
    public let spec: TokenizerSpec

    /// Id of the token of each byte (its GPT-2 byte-to-unicode character); -1 when the vocabulary
    /// lacks it (the unknown token is used then, or the byte is dropped when there is none).
    let byteTokenIDs: [Int32]
    /// `(leftID << 32 | rightID)` → `(rank << 32 | mergedID)`.
    let mergeTable: [Int64: Int64]
    /// Bytes each token decodes to.
    let decodeTable: [[UInt8]]
    /// Special tokens split out of the text even by plain `encode` (user-defined tokens).
    let alwaysSplit: SpecialTokenMatcher
    /// Special tokens split out with `parseSpecialTokens` (control, unknown and user-defined).
    let parseSplit: SpecialTokenMatcher
    let splitDigits: Bool
    let unknownID: Int32

    /// Builds the tokenizer, checking the spec; `makeTokenizer` calls this for `.byteLevelBPE`.
    public init(spec: TokenizerSpec) throws(PTQError) {
        guard spec.kind == .byteLevelBPE else {
            throw PTQError("tokenizer kind: ByteLevelBPETokenizer needs kind \"bpe\", got \"\(spec.kind.rawValue)\"")
        }
        switch spec.preTokenizer {
        case "smollm": splitDigits = true
        case "gpt2": splitDigits = false
        default:
            throw PTQError("tokenizer preTokenizer: \"\(spec.preTokenizer)\" is not a byte-level BPE pre-tokenizer (expected \"smollm\" or \"gpt2\")")
        }
        try validateCommon(spec)
        let count = spec.tokens.count
        guard count < Int(Int32.max) else { throw PTQError("tokenizer tokens: too many tokens (\(count))") }

        var ids = [ExactKey: Int32](minimumCapacity: count)
        for (i, t) in spec.tokens.enumerated() { ids[ExactKey(t)] = Int32(i) }

        var byteIDs = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            var s = ""
            s.unicodeScalars.append(gpt2ByteToScalar[b])
            byteIDs[b] = ids[ExactKey(s)] ?? -1
        }

        var table = [Int64: Int64](minimumCapacity: spec.merges.count)
        for (rank, merge) in spec.merges.enumerated() {
            let scalars = Array(merge.unicodeScalars)
            // Split at the first space after the first character (llama.cpp: find(' ', 1)).
            guard scalars.count >= 3, let sp = scalars[1...].firstIndex(of: " "), sp < scalars.count - 1 else {
                throw PTQError("tokenizer merges[\(rank)]: \"\(merge)\" is not of the form \"left right\"")
            }
            var left = "", right = ""
            left.unicodeScalars.append(contentsOf: scalars[..<sp])
            right.unicodeScalars.append(contentsOf: scalars[(sp + 1)...])
            guard let l = ids[ExactKey(left)] else {
                throw PTQError("tokenizer merges[\(rank)]: \"\(merge)\" refers to unknown token \"\(left)\"")
            }
            guard let r = ids[ExactKey(right)] else {
                throw PTQError("tokenizer merges[\(rank)]: \"\(merge)\" refers to unknown token \"\(right)\"")
            }
            guard let m = ids[ExactKey(left + right)] else {
                throw PTQError("tokenizer merges[\(rank)]: \"\(merge)\" merges into \"\(left + right)\", which is not a token")
            }
            let key = Int64(l) << 32 | Int64(r)
            if table[key] == nil { table[key] = Int64(rank) << 32 | Int64(m) }
        }

        var decode = [[UInt8]]()
        decode.reserveCapacity(count)
        var always = [(String, Int32)](), parse = [(String, Int32)]()
        for (i, token) in spec.tokens.enumerated() {
            let type = spec.tokenTypes.isEmpty ? nil : spec.tokenTypes[i]
            let special: Bool
            if let type {
                special = type == 2 || type == 3 || type == 4
                if type == 4 { always.append((token, Int32(i))) }
            } else {
                special = [spec.bosTokenID, spec.eosTokenID, spec.unknownTokenID, spec.paddingTokenID].contains(i)
            }
            if special { parse.append((token, Int32(i))) }
            if special {
                decode.append(Array(token.utf8))
            } else if type == 6, let byte = parseByteToken(token) {
                decode.append([byte])
            } else {
                var bytes = [UInt8]()
                for s in token.unicodeScalars {
                    let v = Int(s.value)
                    if v < gpt2ScalarToByte.count, gpt2ScalarToByte[v] >= 0 {
                        bytes.append(UInt8(gpt2ScalarToByte[v]))
                    } else {
                        appendUTF8(s.value, to: &bytes)
                    }
                }
                decode.append(bytes)
            }
        }

        self.spec = spec
        self.byteTokenIDs = byteIDs
        self.mergeTable = table
        self.decodeTable = decode
        self.alwaysSplit = SpecialTokenMatcher(always)
        self.parseSplit = SpecialTokenMatcher(parse)
        self.unknownID = spec.unknownTokenID.map { Int32($0) } ?? -1
    }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        encode(text, addSpecialTokens: addSpecialTokens, parseSpecialTokens: false)
    }

    /// Encodes `text`; with `parseSpecialTokens`, occurrences of special-token text (control,
    /// unknown and user-defined tokens) become those tokens, as HF tokenizers does for added
    /// tokens. Without it only user-defined tokens are split out (llama.cpp's
    /// `parse_special = false`). With `addSpecialTokens`, BOS is prepended when `spec.addBOS`.
    public func encode(_ text: String, addSpecialTokens: Bool, parseSpecialTokens: Bool) -> [Int] {
        let scalars = text.unicodeScalars.map(\.value)
        var out = [Int]()
        out.reserveCapacity(scalars.count / 3 + 2)
        if addSpecialTokens, spec.addBOS, let bos = spec.bosTokenID { out.append(bos) }
        var state = EncodeState()
        let matcher = parseSpecialTokens ? parseSplit : alwaysSplit
        if matcher.isEmpty {
            encodeText(scalars, 0, scalars.count, &state, &out)
        } else {
            var start = 0
            matcher.forEachMatch(in: scalars) { lo, hi, id in
                if start < lo { encodeText(scalars, start, lo, &state, &out) }
                out.append(Int(id))
                start = hi
            }
            if start < scalars.count { encodeText(scalars, start, scalars.count, &state, &out) }
        }
        return out
    }

    public func decode(_ ids: [Int]) -> String {
        var bytes = [UInt8]()
        bytes.reserveCapacity(ids.count * 4)
        for id in ids where id >= 0 && id < decodeTable.count {
            bytes.append(contentsOf: decodeTable[id])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - Encoding

    struct EncodeState {
        var cache = [[UInt8]: [Int32]]()
        var piece = [UInt8]()
        var classes = [UInt8]()
        var symbols = [Int32]()
        var ranks = [Int32]()
    }

    /// Pre-tokenizes and encodes `scalars[lo..<hi]` (text without special tokens).
    func encodeText(_ scalars: [UInt32], _ lo: Int, _ hi: Int, _ state: inout EncodeState, _ out: inout [Int]) {
        var classes = state.classes
        state.classes = []
        classes.removeAll(keepingCapacity: true)
        for i in lo..<hi { classes.append(scalarClass(scalars[i])) }
        defer { state.classes = classes }
        classes.withUnsafeBufferPointer { cls in
            scalars.withUnsafeBufferPointer { sc in
                if splitDigits {
                    var start = lo
                    var i = lo
                    while i < hi {
                        if cls[i - lo] == ScalarClass.number {
                            if start < i { splitGPT2(sc, cls, lo, start, i, &state, &out) }
                            encodePiece(sc, i, i + 1, &state, &out)
                            start = i + 1
                        }
                        i += 1
                    }
                    if start < hi { splitGPT2(sc, cls, lo, start, hi, &state, &out) }
                } else {
                    splitGPT2(sc, cls, lo, lo, hi, &state, &out)
                }
            }
        }
    }

    /// The GPT-2 pattern over `sc[s..<e]`; `cls[i - base]` is the class of `sc[i]`.
    func splitGPT2(
        _ sc: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>, _ base: Int,
        _ s: Int, _ e: Int, _ state: inout EncodeState, _ out: inout [Int]
    ) {
        var pos = s
        while pos < e {
            let c = sc[pos]
            var end = -1
            // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
            if c == 0x27, pos + 1 < e {
                let n1 = sc[pos + 1]
                if n1 == 0x73 || n1 == 0x74 || n1 == 0x6D || n1 == 0x64 {  // s t m d
                    end = pos + 2
                } else if pos + 2 < e {
                    let n2 = sc[pos + 2]
                    if (n1 == 0x72 && n2 == 0x65) || (n1 == 0x76 && n2 == 0x65) || (n1 == 0x6C && n2 == 0x6C) {
                        end = pos + 3  // re ve ll
                    }
                }
            }
            if end < 0 {
                // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional literal space, then a run.
                var p = pos
                if c == 0x20, pos + 1 < e, cls[pos + 1 - base] != ScalarClass.whitespace { p = pos + 1 }
                let k = cls[p - base]
                if k != ScalarClass.whitespace {
                    var q = p + 1
                    while q < e, cls[q - base] == k { q += 1 }
                    end = q
                } else {
                    // `\s+(?!\S)|\s+`
                    var q = pos + 1
                    while q < e, cls[q - base] == ScalarClass.whitespace { q += 1 }
                    if q == e || q - pos == 1 {
                        end = q
                    } else {
                        end = q - 1
                    }
                }
            }
            encodePiece(sc, pos, end, &state, &out)
            pos = end
        }
    }

    /// BPE-encodes one pre-token.
    func encodePiece(_ sc: UnsafeBufferPointer<UInt32>, _ s: Int, _ e: Int, _ state: inout EncodeState, _ out: inout [Int]) {
        state.piece.removeAll(keepingCapacity: true)
        for i in s..<e { appendUTF8(sc[i], to: &state.piece) }
        if let ids = state.cache[state.piece] {
            for id in ids { out.append(Int(id)) }
            return
        }
        var symbols = state.symbols
        state.symbols = []
        symbols.removeAll(keepingCapacity: true)
        for b in state.piece {
            let id = byteTokenIDs[Int(b)]
            if id >= 0 {
                symbols.append(id)
            } else if unknownID >= 0 {
                symbols.append(unknownID)
            }
        }
        if symbols.count > 64 {
            mergeWithHeap(&symbols)
        } else {
            mergeSmall(&symbols, &state.ranks)
        }
        for id in symbols { out.append(Int(id)) }
        if state.piece.count <= 256 { state.cache[state.piece] = symbols }
        state.symbols = symbols
    }

    /// Rank and merged id of the pair, or nil.
    @inline(__always)
    func lookupMerge(_ left: Int32, _ right: Int32) -> (rank: Int32, merged: Int32)? {
        guard let v = mergeTable[Int64(left) << 32 | Int64(right)] else { return nil }
        return (Int32(truncatingIfNeeded: v >> 32), Int32(truncatingIfNeeded: v))
    }

    /// Quadratic merge loop for short words: repeatedly merges the lowest-rank adjacent pair,
    /// leftmost first.
    func mergeSmall(_ symbols: inout [Int32], _ ranks: inout [Int32]) {
        let none = Int32.max
        ranks.removeAll(keepingCapacity: true)
        if symbols.count < 2 { return }
        for i in 0..<(symbols.count - 1) {
            ranks.append(lookupMerge(symbols[i], symbols[i + 1])?.rank ?? none)
        }
        while true {
            var best = none, at = -1
            for i in 0..<ranks.count where ranks[i] < best {
                best = ranks[i]
                at = i
            }
            if at < 0 { break }
            symbols[at] = lookupMerge(symbols[at], symbols[at + 1])!.merged
            symbols.remove(at: at + 1)
            ranks.remove(at: at)
            if at > 0 { ranks[at - 1] = lookupMerge(symbols[at - 1], symbols[at])?.rank ?? none }
            if at < ranks.count { ranks[at] = lookupMerge(symbols[at], symbols[at + 1])?.rank ?? none }
        }
    }

    /// Same result as `mergeSmall` in O(n log n): a doubly linked list of symbols and a binary
    /// heap of candidate pairs ordered by (rank, position), stale entries skipped when popped.
    func mergeWithHeap(_ symbols: inout [Int32]) {
        let n = symbols.count
        if n < 2 { return }
        var ids = symbols
        var prev = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0..<n {
            prev[i] = Int32(i - 1)
            next[i] = i + 1 < n ? Int32(i + 1) : -1
        }
        var heap = PairHeap()
        for i in 0..<(n - 1) {
            if let m = lookupMerge(ids[i], ids[i + 1]) {
                heap.push(rank: m.rank, pos: Int32(i), left: ids[i], right: ids[i + 1])
            }
        }
        while let top = heap.pop() {
            let p = Int(top.pos)
            guard alive[p], ids[p] == top.left, next[p] >= 0 else { continue }
            let q = Int(next[p])
            guard ids[q] == top.right, let m = lookupMerge(top.left, top.right) else { continue }
            ids[p] = m.merged
            alive[q] = false
            next[p] = next[q]
            if next[q] >= 0 { prev[Int(next[q])] = Int32(p) }
            if prev[p] >= 0 {
                let l = Int(prev[p])
                if let lm = lookupMerge(ids[l], ids[p]) {
                    heap.push(rank: lm.rank, pos: Int32(l), left: ids[l], right: ids[p])
                }
            }
            if next[p] >= 0 {
                let r = Int(next[p])
                if let rm = lookupMerge(ids[p], ids[r]) {
                    heap.push(rank: rm.rank, pos: Int32(p), left: ids[p], right: ids[r])
                }
            }
        }
        symbols.removeAll(keepingCapacity: true)
        var i = 0
        while i >= 0 {
            symbols.append(ids[i])
            i = Int(next[i])
        }
    }
}

// MARK: - Helpers

/// Min-heap of candidate merges ordered by (rank, position).
struct PairHeap {
    struct Entry {
        var key: Int64  // rank << 32 | pos
        var left: Int32
        var right: Int32
        var pos: Int32 { Int32(truncatingIfNeeded: key) }
    }
    var items = [Entry]()

    mutating func push(rank: Int32, pos: Int32, left: Int32, right: Int32) {
        items.append(Entry(key: Int64(rank) << 32 | Int64(pos), left: left, right: right))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if items[parent].key <= items[i].key { break }
            items.swapAt(parent, i)
            i = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            let n = items.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n, items[l].key < items[m].key { m = l }
                if r < n, items[r].key < items[m].key { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return first
    }
}

/// Leftmost-longest matcher of special-token strings over Unicode scalars (HF added tokens).
struct SpecialTokenMatcher: Sendable {
    /// First scalar → candidates, longest first.
    let byFirst: [UInt32: [([UInt32], Int32)]]

    init(_ tokens: [(String, Int32)]) {
        var map = [UInt32: [([UInt32], Int32)]]()
        for (text, id) in tokens {
            let scalars = text.unicodeScalars.map(\.value)
            guard let first = scalars.first else { continue }
            map[first, default: []].append((scalars, id))
        }
        for key in map.keys { map[key]!.sort { $0.0.count > $1.0.count } }
        byFirst = map
    }

    var isEmpty: Bool { byFirst.isEmpty }

    /// Calls `body(start, end, id)` for each match, left to right, non-overlapping.
    func forEachMatch(in scalars: [UInt32], _ body: (Int, Int, Int32) -> Void) {
        var i = 0
        let n = scalars.count
        outer: while i < n {
            if let candidates = byFirst[scalars[i]] {
                for (pattern, id) in candidates where pattern.count <= n - i {
                    var ok = true
                    for j in 1..<pattern.count where scalars[i + j] != pattern[j] {
                        ok = false
                        break
                    }
                    if ok {
                        body(i, i + pattern.count, id)
                        i += pattern.count
                        continue outer
                    }
                }
            }
            i += 1
        }
    }
}

enum ScalarClass {
    static let other: UInt8 = 0
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let whitespace: UInt8 = 3
}

/// `\p{L}`, `\p{N}`, `\s` (Unicode White_Space) or anything else.
let asciiScalarClasses: [UInt8] = (0..<128).map { (v: Int) -> UInt8 in
    switch v {
    case 0x09...0x0D, 0x20: return ScalarClass.whitespace
    case 0x30...0x39: return ScalarClass.number
    case 0x41...0x5A, 0x61...0x7A: return ScalarClass.letter
    default: return ScalarClass.other
    }
}

@inline(__always)
func scalarClass(_ v: UInt32) -> UInt8 {
    if v < 128 { return asciiScalarClasses[Int(v)] }
    guard let s = Unicode.Scalar(v) else { return ScalarClass.other }
    let p = s.properties
    if p.isWhitespace { return ScalarClass.whitespace }
    switch p.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
        return ScalarClass.letter
    case .decimalNumber, .letterNumber, .otherNumber:
        return ScalarClass.number
    default:
        return ScalarClass.other
    }
}

@inline(__always)
func appendUTF8(_ v: UInt32, to bytes: inout [UInt8]) {
    if v < 0x80 {
        bytes.append(UInt8(v))
    } else if v < 0x800 {
        bytes.append(UInt8(0xC0 | (v >> 6)))
        bytes.append(UInt8(0x80 | (v & 0x3F)))
    } else if v < 0x10000 {
        bytes.append(UInt8(0xE0 | (v >> 12)))
        bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
        bytes.append(UInt8(0x80 | (v & 0x3F)))
    } else {
        bytes.append(UInt8(0xF0 | (v >> 18)))
        bytes.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
        bytes.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
        bytes.append(UInt8(0x80 | (v & 0x3F)))
    }
}

/// GPT-2's byte → printable unicode character table.
let gpt2ByteToScalar: [Unicode.Scalar] = {
    var table = [Unicode.Scalar](repeating: " ", count: 256)
    var extra: UInt32 = 0
    for b in 0..<256 {
        let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
        if printable {
            table[b] = Unicode.Scalar(UInt32(b))!
        } else {
            table[b] = Unicode.Scalar(256 + extra)!
            extra += 1
        }
    }
    return table
}()

/// Inverse of `gpt2ByteToScalar`: scalar value → byte, -1 when the scalar is not in the table.
let gpt2ScalarToByte: [Int16] = {
    var table = [Int16](repeating: -1, count: 324)
    for (b, s) in gpt2ByteToScalar.enumerated() { table[Int(s.value)] = Int16(b) }
    return table
}()

/// `<0xAB>` → 0xAB (GGUF byte tokens).
func parseByteToken(_ token: String) -> UInt8? {
    let u = Array(token.utf8)
    guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
    return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
}
