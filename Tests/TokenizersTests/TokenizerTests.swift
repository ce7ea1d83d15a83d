import Foundation
import PTQCore
import Testing
@testable import Tokenizers

// Fixtures come from scripts/make-tokenizer-fixtures.py (HF tokenizers as the reference).

struct EncodeCase: Decodable {
    var text: String
    var ids: [Int]
    var decoded: String?
}

struct SpecialCase: Decodable {
    var text: String
    var ids: [Int]
    var idsUnparsed: [Int]
}

struct SmolFixture: Decodable {
    var versions: [String: String]
    var cases: [EncodeCase]
    var specialCases: [SpecialCase]
    var gpt2Cases: [EncodeCase]
    var first200Lines: EncodeCase
    var wikiTestTokenCount: Int
}

struct MiniFixture: Decodable {
    var versions: [String: String]
    var cases: [EncodeCase]
    var first200Lines: EncodeCase
    var first200LinesIdsNoSpecial: [Int]
    var wikiTestTokenCount: Int
}

struct SmolTokenizerFile: Decodable {
    var tokens: [String]
    var merges: [String]
    var token_types: [Int32]
    var bos: Int
    var eos: Int
    var unk: Int
    var pad: Int?
    var add_bos: Bool
    var pre: String
}

enum Fixtures {
    static let directory: URL = {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("TokenizersTests: the Fixtures resource directory is missing from the bundle")
        }
        return url
    }()

    static func load<T: Decodable>(_ name: String, as type: T.Type = T.self) -> T {
        let url = directory.appendingPathComponent(name)
        do {
            return try JSONDecoder().decode(T.self, from: Data(contentsOf: url))
        } catch {
            fatalError("cannot load fixture \(url.path): \(error)")
        }
    }

    static let smol: SmolFixture = load("smollm2.json")
    static let mini: MiniFixture = load("minilm.json")

    static func smolSpec(preTokenizer: String = "smollm") -> TokenizerSpec {
        let f: SmolTokenizerFile = load("smollm2-tokenizer.json")
        return TokenizerSpec(
            kind: .byteLevelBPE, tokens: f.tokens, merges: f.merges, tokenTypes: f.token_types,
            preTokenizer: preTokenizer, bosTokenID: f.bos, eosTokenID: f.eos, unknownTokenID: f.unk,
            paddingTokenID: f.pad, addBOS: f.add_bos)
    }

    static let smolSpecDefault = smolSpec()

    static let miniSpec: TokenizerSpec = {
        let url = directory.appendingPathComponent("minilm-vocab.txt")
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            fatalError("cannot read \(url.path)")
        }
        var tokens = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if tokens.last == "" { tokens.removeLast() }
        func id(_ t: String) -> Int {
            guard let i = tokens.firstIndex(of: t) else { fatalError("\(t) missing from minilm-vocab.txt") }
            return i
        }
        return TokenizerSpec(
            kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: id("[UNK]"),
            paddingTokenID: id("[PAD]"), clsTokenID: id("[CLS]"), sepTokenID: id("[SEP]"),
            lowercase: true, stripAccents: true, splitChineseCharacters: true,
            maxInputCharsPerWord: 100, continuingSubwordPrefix: "##", maxLength: 128)
    }()

    static let smolTokenizer: ByteLevelBPETokenizer = {
        do { return try ByteLevelBPETokenizer(spec: smolSpecDefault) } catch { fatalError("\(error)") }
    }()

    static let miniTokenizer: WordPieceTokenizer = {
        do { return try WordPieceTokenizer(spec: miniSpec) } catch { fatalError("\(error)") }
    }()

    /// `../shared/data/wikitext-2-raw/wiki.test.raw` relative to the package root.
    static let wikiTestPath: String = {
        let file = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
        let root = file.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.deletingLastPathComponent()
            .appendingPathComponent("shared/data/wikitext-2-raw/wiki.test.raw").standardizedFileURL.path
    }()

    static var wikiTestExists: Bool { FileManager.default.fileExists(atPath: wikiTestPath) }

    static func wikiTest() throws -> String {
        String(decoding: try Data(contentsOf: URL(fileURLWithPath: wikiTestPath)), as: UTF8.self)
    }
}

/// A readable label for a fixture text in failure messages.
func label(_ text: String) -> Comment {
    let short = text.count > 80 ? String(text.prefix(80)) + "…" : text
    return Comment(rawValue: "text: \(short.debugDescription)")
}

@Suite("Byte-level BPE (SmolLM2)")
struct ByteLevelBPETests {
    let tokenizer = Fixtures.smolTokenizer

    @Test("fixture cases match HF tokenizers")
    func fixtureCases() {
        #expect(Fixtures.smol.cases.count >= 40)
        for c in Fixtures.smol.cases {
            #expect(tokenizer.encode(c.text, addSpecialTokens: false) == c.ids, label(c.text))
            // SmolLM2 has add_bos_token false: addSpecialTokens adds nothing.
            #expect(tokenizer.encode(c.text, addSpecialTokens: true) == c.ids, label(c.text))
        }
    }

    @Test("decode round-trips every fixture")
    func decodeRoundTrip() {
        for c in Fixtures.smol.cases {
            #expect(tokenizer.decode(c.ids) == c.text, label(c.text))
        }
        #expect(tokenizer.decode(Fixtures.smol.first200Lines.ids) == Fixtures.smol.first200Lines.text)
    }

    @Test("first 200 lines of wiki.test.raw as one text")
    func first200Lines() {
        let f = Fixtures.smol.first200Lines
        let ids = tokenizer.encode(f.text, addSpecialTokens: false)
        #expect(ids.count == f.ids.count)
        #expect(ids == f.ids)
        if let i = zip(ids, f.ids).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            Issue.record("first difference at token \(i): got \(ids[i]) expected \(f.ids[i])")
        }
    }

    @Test("special-token text is left alone by encode and parsed on request")
    func specialTokens() {
        for c in Fixtures.smol.specialCases {
            #expect(tokenizer.encode(c.text, addSpecialTokens: false) == c.idsUnparsed, label(c.text))
            #expect(tokenizer.encode(c.text, addSpecialTokens: false, parseSpecialTokens: false) == c.idsUnparsed,
                    label(c.text))
            #expect(tokenizer.encode(c.text, addSpecialTokens: false, parseSpecialTokens: true) == c.ids,
                    label(c.text))
            #expect(tokenizer.decode(c.ids) == c.text, label(c.text))
            #expect(tokenizer.decode(c.idsUnparsed) == c.text, label(c.text))
        }
    }

    @Test("plain gpt2 pre-tokenizer (no digit splitting)")
    func gpt2PreTokenizer() throws {
        let gpt2 = try ByteLevelBPETokenizer(spec: Fixtures.smolSpec(preTokenizer: "gpt2"))
        for c in Fixtures.smol.gpt2Cases {
            #expect(gpt2.encode(c.text, addSpecialTokens: false) == c.ids, label(c.text))
        }
    }

    @Test("BOS only with addSpecialTokens and spec.addBOS")
    func bos() throws {
        var spec = Fixtures.smolSpecDefault
        spec.addBOS = true
        let t = try ByteLevelBPETokenizer(spec: spec)
        let plain = tokenizer.encode("Hello world", addSpecialTokens: false)
        #expect(t.encode("Hello world", addSpecialTokens: true) == [spec.bosTokenID!] + plain)
        #expect(t.encode("Hello world", addSpecialTokens: false) == plain)
        #expect(t.encode("Hello world") == [spec.bosTokenID!] + plain)
        #expect(t.encode("", addSpecialTokens: true) == [spec.bosTokenID!])
    }

    @Test("invalid UTF-8 decodes to the replacement character")
    func invalidUTF8() {
        // "é" is two byte tokens (0xC3, 0xA9); decoding only the first is invalid UTF-8.
        let ids = tokenizer.encode("é", addSpecialTokens: false)
        let first = tokenizer.byteTokenIDs[0xC3]
        #expect(tokenizer.decode([Int(first)]) == "\u{FFFD}")
        #expect(tokenizer.decode(ids) == "é")
        #expect(tokenizer.decode([-1, 1_000_000]) == "")
    }

    @Test("heap merge gives the same result as the quadratic merge")
    func heapMatchesSmall() {
        var texts = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", String(repeating: "ab", count: 70),
                     String(repeating: "=", count: 100), "internationalization", "  \n\n\n  ",
                     String(repeating: "the quick brown fox ", count: 8)]
        texts += Fixtures.smol.cases.map(\.text)
        for text in texts {
            let symbols = Array(text.utf8).map { tokenizer.byteTokenIDs[Int($0)] }
            var a = symbols, b = symbols, ranks = [Int32]()
            tokenizer.mergeSmall(&a, &ranks)
            tokenizer.mergeWithHeap(&b)
            #expect(a == b, label(text))
        }
        // Long pre-tokens take the heap path inside encode.
        let long = String(repeating: "abc", count: 200)
        let ids = tokenizer.encode(long, addSpecialTokens: false)
        #expect(tokenizer.decode(ids) == long)
    }

    @Test("makeTokenizer builds a byte-level BPE tokenizer")
    func factory() throws {
        let t = try makeTokenizer(Fixtures.smolSpecDefault)
        #expect(t is ByteLevelBPETokenizer)
        let c = Fixtures.smol.cases[1]
        #expect(t.encode(c.text, addSpecialTokens: false) == c.ids)
    }

    @Test("whole wiki.test.raw token count", .enabled(if: Fixtures.wikiTestExists,
          "wiki.test.raw not found at ../shared/data/wikitext-2-raw/ next to the package: skipped"))
    func wholeWikiTest() throws {
        let text = try Fixtures.wikiTest()
        let ids = tokenizer.encode(text, addSpecialTokens: false)
        #expect(ids.count == Fixtures.smol.wikiTestTokenCount)
        #expect(tokenizer.decode(ids) == text)
    }
}

@Suite("WordPiece (all-MiniLM-L6-v2)")
struct WordPieceTests {
    let tokenizer = Fixtures.miniTokenizer

    @Test("fixture cases match HF tokenizers")
    func fixtureCases() {
        #expect(Fixtures.mini.cases.count >= 40)
        for c in Fixtures.mini.cases {
            #expect(tokenizer.encode(c.text, addSpecialTokens: true) == c.ids, label(c.text))
            #expect(tokenizer.encode(c.text) == c.ids, label(c.text))
        }
    }

    @Test("decode matches HF's WordPiece decoder")
    func decode() {
        for c in Fixtures.mini.cases {
            #expect(tokenizer.decode(c.ids) == c.decoded, label(c.text))
        }
    }

    @Test("first 200 lines: truncated to 128 with specials, complete without")
    func first200Lines() {
        let f = Fixtures.mini.first200Lines
        let ids = tokenizer.encode(f.text, addSpecialTokens: true)
        #expect(ids.count == 128)
        #expect(ids == f.ids)
        let all = tokenizer.encode(f.text, addSpecialTokens: false)
        #expect(all == Fixtures.mini.first200LinesIdsNoSpecial)
        #expect(Array(all.prefix(126)) == Array(f.ids[1..<127]))
    }

    @Test("no truncation when maxLength is 0; [CLS]/[SEP] only with addSpecialTokens")
    func specials() throws {
        var spec = Fixtures.miniSpec
        spec.maxLength = 0
        let t = try WordPieceTokenizer(spec: spec)
        let text = Fixtures.mini.first200Lines.text
        let ids = t.encode(text, addSpecialTokens: true)
        #expect(ids == [spec.clsTokenID!] + Fixtures.mini.first200LinesIdsNoSpecial + [spec.sepTokenID!])
        #expect(t.encode("", addSpecialTokens: true) == [spec.clsTokenID!, spec.sepTokenID!])
        #expect(t.encode("", addSpecialTokens: false) == [])
    }

    @Test("makeTokenizer builds a WordPiece tokenizer")
    func factory() throws {
        let t = try makeTokenizer(Fixtures.miniSpec)
        #expect(t is WordPieceTokenizer)
        let c = Fixtures.mini.cases[1]
        #expect(t.encode(c.text) == c.ids)
    }

    @Test("whole wiki.test.raw token count (no specials, no truncation)",
          .enabled(if: Fixtures.wikiTestExists,
                   "wiki.test.raw not found at ../shared/data/wikitext-2-raw/ next to the package: skipped"))
    func wholeWikiTest() throws {
        let text = try Fixtures.wikiTest()
        #expect(tokenizer.encode(text, addSpecialTokens: false).count == Fixtures.mini.wikiTestTokenCount)
    }
}

@Suite("Tokenizer spec validation")
struct SpecValidationTests {
    static let bpeTokens = ["a", "b", "ab", "Ġ", "<s>"]

    func expectError(_ spec: TokenizerSpec, mentions field: String, _ note: Comment) {
        do {
            _ = try makeTokenizer(spec)
            Issue.record("expected an error naming \(field): \(note.rawValue)")
        } catch {
            #expect(error.message.contains(field), "\(error.message) should name \(field)")
        }
    }

    @Test("a small valid BPE spec works")
    func validBPE() throws {
        let spec = TokenizerSpec(kind: .byteLevelBPE, tokens: Self.bpeTokens, merges: ["a b"], preTokenizer: "gpt2")
        let t = try makeTokenizer(spec)
        #expect(t.encode("ab ba", addSpecialTokens: false) == [2, 3, 1, 0])
        #expect(t.decode([2, 3, 1, 0]) == "ab ba")
    }

    @Test("bad BPE specs name the field")
    func badBPE() {
        let tokens = Self.bpeTokens
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, merges: ["a c"], preTokenizer: "gpt2"),
                    mentions: "merges[0]", "merge with an unknown token")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: ["a", "b"], merges: ["a b"], preTokenizer: "gpt2"),
                    mentions: "merges[0]", "merge result not in the vocabulary")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, merges: ["a b", "ab"], preTokenizer: "gpt2"),
                    mentions: "merges[1]", "malformed merge")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, preTokenizer: "llama3"),
                    mentions: "preTokenizer", "unknown pre-tokenizer")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, preTokenizer: "bert"),
                    mentions: "preTokenizer", "WordPiece pre-tokenizer on BPE")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: [], preTokenizer: "gpt2"),
                    mentions: "tokens", "empty vocabulary")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, tokenTypes: [1, 1], preTokenizer: "gpt2"),
                    mentions: "tokenTypes", "types not aligned with tokens")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, preTokenizer: "gpt2", bosTokenID: 5),
                    mentions: "bosTokenID", "BOS outside the vocabulary")
        expectError(TokenizerSpec(kind: .byteLevelBPE, tokens: tokens, preTokenizer: "gpt2", eosTokenID: -1),
                    mentions: "eosTokenID", "negative EOS")
    }

    @Test("bad WordPiece specs name the field")
    func badWordPiece() {
        let tokens = ["[UNK]", "[CLS]", "[SEP]", "a", "##b"]
        expectError(TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "bert"),
                    mentions: "unknownTokenID", "missing [UNK]")
        expectError(TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "smollm", unknownTokenID: 0),
                    mentions: "preTokenizer", "BPE pre-tokenizer on WordPiece")
        expectError(TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: 0,
                                  clsTokenID: 9),
                    mentions: "clsTokenID", "[CLS] outside the vocabulary")
        expectError(TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: 0,
                                  maxInputCharsPerWord: 0),
                    mentions: "maxInputCharsPerWord", "zero word length")
        expectError(TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: 0,
                                  clsTokenID: 1, sepTokenID: 2, maxLength: 1),
                    mentions: "maxLength", "no room for [CLS] [SEP]")
        expectError(TokenizerSpec(kind: .wordPiece, tokens: tokens, preTokenizer: "bert", unknownTokenID: 0,
                                  maxLength: -3),
                    mentions: "maxLength", "negative maxLength")
    }

    @Test("a small valid WordPiece spec works")
    func validWordPiece() throws {
        let spec = TokenizerSpec(kind: .wordPiece, tokens: ["[UNK]", "[CLS]", "[SEP]", "a", "##b", "."],
                                 preTokenizer: "bert", unknownTokenID: 0, clsTokenID: 1, sepTokenID: 2,
                                 lowercase: true, stripAccents: true, maxLength: 4)
        let t = try makeTokenizer(spec)
        #expect(t.encode("AB c.", addSpecialTokens: false) == [3, 4, 0, 5])
        #expect(t.encode("AB c.", addSpecialTokens: true) == [1, 3, 4, 2])
        #expect(t.decode([3, 4, 0, 5]) == "ab [UNK].")
    }
}
