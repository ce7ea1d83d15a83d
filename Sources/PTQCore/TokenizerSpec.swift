/// Everything needed to rebuild a model's tokenizer, stored inside checkpoints and packed files
/// so that a model file is self-contained.
public struct TokenizerSpec: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// GPT-2 style byte-level BPE (tokens are byte-to-unicode mapped strings).
        case byteLevelBPE = "bpe"
        /// BERT WordPiece.
        case wordPiece = "wordpiece"
    }

    public var kind: Kind
    /// Token strings indexed by id.
    public var tokens: [String]
    /// BPE merges in rank order, each "left right" (byte-level BPE only).
    public var merges: [String]
    /// GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
    /// empty when unknown.
    public var tokenTypes: [Int32]
    /// Pre-tokenizer name: `smollm` (digits one by one, then GPT-2 pattern), `gpt2`, `bert`.
    public var preTokenizer: String
    public var bosTokenID: Int?
    public var eosTokenID: Int?
    public var unknownTokenID: Int?
    public var paddingTokenID: Int?
    /// WordPiece: `[CLS]` and `[SEP]` ids wrapped around every sequence.
    public var clsTokenID: Int?
    public var sepTokenID: Int?
    /// Whether encoding a document starts it with BOS (llama.cpp's `add_bos_token`).
    public var addBOS: Bool
    /// WordPiece normalisation.
    public var lowercase: Bool
    public var stripAccents: Bool
    public var splitChineseCharacters: Bool
    public var maxInputCharsPerWord: Int
    public var continuingSubwordPrefix: String
    /// Maximum sequence length including special tokens (encoders truncate to it); 0 = none.
    public var maxLength: Int

    public init(
        kind: Kind, tokens: [String], merges: [String] = [], tokenTypes: [Int32] = [],
        preTokenizer: String, bosTokenID: Int? = nil, eosTokenID: Int? = nil,
        unknownTokenID: Int? = nil, paddingTokenID: Int? = nil, clsTokenID: Int? = nil,
        sepTokenID: Int? = nil, addBOS: Bool = false, lowercase: Bool = false,
        stripAccents: Bool = false, splitChineseCharacters: Bool = false,
        maxInputCharsPerWord: Int = 100, continuingSubwordPrefix: String = "##", maxLength: Int = 0
    ) {
        self.kind = kind
        self.tokens = tokens
        self.merges = merges
        self.tokenTypes = tokenTypes
        self.preTokenizer = preTokenizer
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.unknownTokenID = unknownTokenID
        self.paddingTokenID = paddingTokenID
        self.clsTokenID = clsTokenID
        self.sepTokenID = sepTokenID
        self.addBOS = addBOS
        self.lowercase = lowercase
        self.stripAccents = stripAccents
        self.splitChineseCharacters = splitChineseCharacters
        self.maxInputCharsPerWord = maxInputCharsPerWord
        self.continuingSubwordPrefix = continuingSubwordPrefix
        self.maxLength = maxLength
    }
}
