import PTQCore

/// Builds the tokenizer a spec describes, checking the spec first.
///
/// Throws a `PTQError` naming the offending spec field: an empty vocabulary, ids outside it,
/// token types not aligned with the tokens, an unknown pre-tokenizer, merges that are malformed
/// or refer to unknown tokens (byte-level BPE), a missing unknown token (WordPiece).
public func makeTokenizer(_ spec: TokenizerSpec) throws(PTQError) -> any Tokenizer {
    switch spec.kind {
    case .byteLevelBPE: return try ByteLevelBPETokenizer(spec: spec)
    case .wordPiece: return try WordPieceTokenizer(spec: spec)
    }
}

/// Checks shared by every tokenizer kind: ids in range, token types aligned with tokens.
func validateCommon(_ spec: TokenizerSpec) throws(PTQError) {
    let count = spec.tokens.count
    guard count > 0 else { throw PTQError("tokenizer tokens: the vocabulary is empty") }
    if !spec.tokenTypes.isEmpty, spec.tokenTypes.count != count {
        throw PTQError("tokenizer tokenTypes: \(spec.tokenTypes.count) types for \(count) tokens")
    }
    let named: [(String, Int?)] = [
        ("bosTokenID", spec.bosTokenID), ("eosTokenID", spec.eosTokenID),
        ("unknownTokenID", spec.unknownTokenID), ("paddingTokenID", spec.paddingTokenID),
        ("clsTokenID", spec.clsTokenID), ("sepTokenID", spec.sepTokenID),
    ]
    for (name, id) in named {
        if let id, id < 0 || id >= count {
            throw PTQError("tokenizer \(name): \(id) is outside the vocabulary (0..<\(count))")
        }
    }
    if spec.maxLength < 0 { throw PTQError("tokenizer maxLength: \(spec.maxLength) is negative") }
}

/// A string compared and hashed by its exact UTF-8 bytes (Swift's `String` equality follows
/// canonical equivalence, so "é" and "e\u{301}" would be one key; tokenizers compare bytes).
struct ExactKey: Hashable, Sendable {
    var string: String

    init(_ string: String) { self.string = string }

    static func == (a: ExactKey, b: ExactKey) -> Bool {
        a.string.utf8.elementsEqual(b.string.utf8)
    }

    func hash(into hasher: inout Hasher) {
        var s = string
        s.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
