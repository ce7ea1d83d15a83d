import Foundation
import PTQCore

/// BERT WordPiece (e.g. all-MiniLM-L6-v2), matching HF tokenizers' `BertNormalizer` +
/// `BertPreTokenizer` + `WordPiece` model + `[CLS] $A [SEP]` template + longest-first truncation.
///
/// Normalisation, in HF's order:
/// 1. clean text: drop U+0000, U+FFFD and "other" characters (Cc, Cf, Co, Cs except `\t \n \r`),
///    turn whitespace into a space;
/// 2. `splitChineseCharacters`: put spaces around CJK ideographs;
/// 3. `stripAccents`: NFD, then drop non-spacing marks (Mn);
/// 4. `lowercase`: per-scalar full lowercase mapping.
///
/// HF's `strip_accents = None` means "same as lowercase": whoever builds the spec resolves it.
/// The categories of steps 1 and 3 and BERT punctuation come, in HF, from the
/// `unicode_categories` crate, whose tables are Unicode 8.0: characters assigned later do not
/// count as other / Mn / punctuation here either.
public struct WordPieceTokenizer: Tokenizer {
    public let spec: TokenizerSpec

    /// Whole-word pieces (tokens without the continuing prefix).
    let vocab: [ExactKey: Int]
    /// Continuation pieces keyed without their prefix (`##ing` → `ing`).
    let continuationVocab: [ExactKey: Int]
    let unknownID: Int
    /// Longest token, in scalars (without the prefix): no longer substring needs a look-up.
    let maxPieceScalars: Int

    /// Builds the tokenizer, checking the spec; `makeTokenizer` calls this for `.wordPiece`.
    public init(spec: TokenizerSpec) throws(PTQError) {
        guard spec.kind == .wordPiece else {
            throw PTQError("tokenizer kind: WordPieceTokenizer needs kind \"wordpiece\", got \"\(spec.kind.rawValue)\"")
        }
        guard spec.preTokenizer == "bert" else {
            throw PTQError("tokenizer preTokenizer: \"\(spec.preTokenizer)\" is not a WordPiece pre-tokenizer (expected \"bert\")")
        }
        try validateCommon(spec)
        guard let unk = spec.unknownTokenID else {
            throw PTQError("tokenizer unknownTokenID: WordPiece needs an unknown token ([UNK])")
        }
        guard spec.maxInputCharsPerWord > 0 else {
            throw PTQError("tokenizer maxInputCharsPerWord: must be positive, got \(spec.maxInputCharsPerWord)")
        }
        let specials = (spec.clsTokenID == nil ? 0 : 1) + (spec.sepTokenID == nil ? 0 : 1)
        if spec.maxLength > 0, spec.maxLength < specials {
            throw PTQError("tokenizer maxLength: \(spec.maxLength) leaves no room for [CLS] and [SEP]")
        }
        var vocab = [ExactKey: Int](minimumCapacity: spec.tokens.count)
        var continuation = [ExactKey: Int]()
        var longest = 1
        let prefix = spec.continuingSubwordPrefix
        for (i, token) in spec.tokens.enumerated() {
            vocab[ExactKey(token)] = i
            longest = max(longest, token.unicodeScalars.count)
            if let rest = dropPrefix(prefix, token) { continuation[ExactKey(rest)] = i }
        }
        if prefix.isEmpty { continuation = vocab }
        self.spec = spec
        self.vocab = vocab
        self.continuationVocab = continuation
        self.unknownID = unk
        self.maxPieceScalars = longest
    }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        let scalars = normalize(text)
        var ids = [Int]()
        ids.reserveCapacity(scalars.count / 4 + 2)
        // BertPreTokenizer: split on whitespace (removed), isolate punctuation.
        var start = -1
        for i in 0..<scalars.count {
            let v = scalars[i]
            let space = isWhitespaceScalar(v)
            if space || isBertPunctuation(v) {
                if start >= 0 { encodeWord(scalars[start..<i], &ids) }
                start = -1
                if !space { encodeWord(scalars[i..<(i + 1)], &ids) }
            } else if start < 0 {
                start = i
            }
        }
        if start >= 0 { encodeWord(scalars[start...], &ids) }

        guard addSpecialTokens else { return ids }
        var limit = Int.max
        if spec.maxLength > 0 {
            let specials = (spec.clsTokenID == nil ? 0 : 1) + (spec.sepTokenID == nil ? 0 : 1)
            limit = spec.maxLength - specials
        }
        var out = [Int]()
        out.reserveCapacity(min(ids.count, limit) + 2)
        if let cls = spec.clsTokenID { out.append(cls) }
        out.append(contentsOf: ids.prefix(limit))
        if let sep = spec.sepTokenID { out.append(sep) }
        return out
    }

    /// HF's WordPiece decoder: pieces joined with spaces, continuation pieces glued to the
    /// previous one, then its per-piece cleanup (" ." → "." and friends).
    public func decode(_ ids: [Int]) -> String {
        var out = ""
        var first = true
        let prefix = spec.continuingSubwordPrefix
        for id in ids where id >= 0 && id < spec.tokens.count {
            var piece = spec.tokens[id]
            if !first {
                if let rest = dropPrefix(prefix, piece) {
                    piece = rest
                } else {
                    piece = " " + piece
                }
            }
            first = false
            out += wordPieceCleanup(piece)
        }
        return out
    }

    // MARK: - Normalisation

    func normalize(_ text: String) -> [UInt32] {
        var scalars = [UInt32]()
        scalars.reserveCapacity(text.utf8.count)
        var needsNFD = false
        for s in text.unicodeScalars {
            let v = s.value
            // clean text
            if v == 0 || v == 0xFFFD || isBertControl(s) { continue }
            if isWhitespaceScalar(v) {
                scalars.append(0x20)
                continue
            }
            if v >= 0xC0 { needsNFD = true }
            if spec.splitChineseCharacters, isChineseCharacter(v) {
                scalars.append(0x20)
                scalars.append(v)
                scalars.append(0x20)
            } else {
                scalars.append(v)
            }
        }
        if spec.stripAccents, needsNFD {
            var bytes = [UInt8]()
            bytes.reserveCapacity(scalars.count * 2)
            for v in scalars { appendUTF8(v, to: &bytes) }
            let nfd = String(decoding: bytes, as: UTF8.self).decomposedStringWithCanonicalMapping
            scalars.removeAll(keepingCapacity: true)
            for u in nfd.unicodeScalars where !isNonSpacingMark(u) { scalars.append(u.value) }
        }
        if spec.lowercase {
            var lowered = [UInt32]()
            lowered.reserveCapacity(scalars.count)
            for v in scalars {
                if v < 0x80 {
                    lowered.append(v >= 0x41 && v <= 0x5A ? v + 0x20 : v)
                } else {
                    let s = Unicode.Scalar(v)!
                    if s.properties.changesWhenLowercased {
                        for u in s.properties.lowercaseMapping.unicodeScalars { lowered.append(u.value) }
                    } else {
                        lowered.append(v)
                    }
                }
            }
            scalars = lowered
        }
        return scalars
    }

    // MARK: - WordPiece

    func encodeWord(_ word: ArraySlice<UInt32>, _ ids: inout [Int]) {
        let n = word.count
        if n == 0 { return }
        if n > spec.maxInputCharsPerWord {
            ids.append(unknownID)
            return
        }
        // UTF-8 of the word and the byte offset of each scalar: substrings are byte ranges.
        var bytes = [UInt8]()
        bytes.reserveCapacity(n * 2)
        var offsets = [Int]()
        offsets.reserveCapacity(n + 1)
        for v in word {
            offsets.append(bytes.count)
            appendUTF8(v, to: &bytes)
        }
        offsets.append(bytes.count)
        var pieces = [Int]()
        var start = 0
        while start < n {
            var end = min(n, start + maxPieceScalars)
            var found = -1
            let table = start == 0 ? vocab : continuationVocab
            while start < end {
                let s = String(decoding: bytes[offsets[start]..<offsets[end]], as: UTF8.self)
                if let id = table[ExactKey(s)] {
                    found = id
                    break
                }
                end -= 1
            }
            if found < 0 {
                ids.append(unknownID)
                return
            }
            pieces.append(found)
            start = end
        }
        ids.append(contentsOf: pieces)
    }
}

// MARK: - BERT character classes

/// Rust's `char::is_whitespace` (Unicode White_Space), which covers `\t \n \r`.
@inline(__always)
func isWhitespaceScalar(_ v: UInt32) -> Bool {
    if v < 0x80 { return v == 0x20 || (v >= 0x09 && v <= 0x0D) }
    return Unicode.Scalar(v)!.properties.isWhitespace
}

/// Assigned by Unicode 8.0, the version of the `unicode_categories` crate HF's BERT uses.
@inline(__always)
func assignedByUnicode8(_ s: Unicode.Scalar) -> Bool {
    guard let age = s.properties.age else { return false }
    return age.major < 8 || (age.major == 8 && age.minor == 0)
}

/// HF BertNormalizer `is_control`: Cc, Cf, Co, Cs but not `\t \n \r`.
@inline(__always)
func isBertControl(_ s: Unicode.Scalar) -> Bool {
    let v = s.value
    if v < 0x80 { return (v < 0x20 && v != 0x09 && v != 0x0A && v != 0x0D) || v == 0x7F }
    switch s.properties.generalCategory {
    case .control, .format, .privateUse, .surrogate: return assignedByUnicode8(s)
    default: return false
    }
}

/// BERT punctuation: ASCII 33-47, 58-64, 91-96, 123-126 and Unicode P*.
@inline(__always)
func isBertPunctuation(_ v: UInt32) -> Bool {
    if v < 0x80 {
        return (v >= 33 && v <= 47) || (v >= 58 && v <= 64) || (v >= 91 && v <= 96) || (v >= 123 && v <= 126)
    }
    let s = Unicode.Scalar(v)!
    switch s.properties.generalCategory {
    case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
         .initialPunctuation, .finalPunctuation, .otherPunctuation:
        return assignedByUnicode8(s)
    default:
        return false
    }
}

@inline(__always)
func isNonSpacingMark(_ s: Unicode.Scalar) -> Bool {
    s.value >= 0x300 && s.properties.generalCategory == .nonspacingMark && assignedByUnicode8(s)
}

/// HF BertNormalizer's CJK ranges (including its 0x2B920 lower bound).
@inline(__always)
func isChineseCharacter(_ v: UInt32) -> Bool {
    (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v) || (0x20000...0x2A6DF).contains(v)
        || (0x2A700...0x2B73F).contains(v) || (0x2B740...0x2B81F).contains(v) || (0x2B920...0x2CEAF).contains(v)
        || (0xF900...0xFAFF).contains(v) || (0x2F800...0x2FA1F).contains(v)
}

/// `token` without `prefix` when it starts with it (compared by scalars, like Rust's
/// `starts_with`), else nil. An empty prefix never matches.
func dropPrefix(_ prefix: String, _ token: String) -> String? {
    guard !prefix.isEmpty, token.unicodeScalars.starts(with: prefix.unicodeScalars) else { return nil }
    var rest = ""
    rest.unicodeScalars.append(contentsOf: token.unicodeScalars.dropFirst(prefix.unicodeScalars.count))
    return rest
}

let wordPieceCleanups: [([UInt8], [UInt8])] = [
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
].map { (Array($0.0.utf8), Array($0.1.utf8)) }

/// HF WordPiece decoder cleanup, applied to each piece: Rust `str::replace` of each pair in
/// turn, on bytes.
func wordPieceCleanup(_ piece: String) -> String {
    var bytes = Array(piece.utf8)
    guard bytes.contains(0x20) else { return piece }
    for (from, to) in wordPieceCleanups {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        var i = 0
        var changed = false
        while i < bytes.count {
            if bytes[i] == from[0], i + from.count <= bytes.count, bytes[i..<(i + from.count)].elementsEqual(from) {
                out.append(contentsOf: to)
                i += from.count
                changed = true
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        if changed { bytes = out }
    }
    return String(decoding: bytes, as: UTF8.self)
}
