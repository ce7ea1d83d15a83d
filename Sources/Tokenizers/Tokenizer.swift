import PTQCore

/// Turns text into token ids and back.
public protocol Tokenizer: Sendable {
    var spec: TokenizerSpec { get }
    /// Encodes `text`. With `addSpecialTokens`, byte-level BPE prepends BOS when
    /// `spec.addBOS` is set, and WordPiece wraps the ids in `[CLS]`…`[SEP]` and truncates to
    /// `spec.maxLength`.
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int]
    /// Decodes ids back to text (special tokens included verbatim).
    func decode(_ ids: [Int]) -> String
}

extension Tokenizer {
    public func encode(_ text: String) -> [Int] { encode(text, addSpecialTokens: true) }
}
