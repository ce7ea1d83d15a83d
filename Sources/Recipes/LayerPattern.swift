import PTQCore

/// A pattern over canonical linear-layer names (`layers/3/mlp/down_proj`), from a rule's
/// `targets` or from `ignore`.
///
/// * Glob (the default): matched against the whole name. `*` matches any run of characters
///   except `/`, `**` any run including `/`, `?` one character except `/`, `[0-9]` / `[!0-9]` a
///   character class, `{gate,up}` alternatives; `\` escapes the next character.
/// * `re:<regex>`: a regular expression (Swift `Regex` syntax) searched anywhere in the name;
///   anchor it with `^…$` to match whole names.
public struct LayerPattern: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case glob, regex
    }

    /// The pattern as written in the recipe (with its `re:` prefix).
    public var text: String
    public var kind: Kind
    /// Line of the pattern in the recipe.
    public var line: Int
    /// Field path, e.g. `rules[0].targets[1]` or `ignore[0]`.
    public var path: String
    /// The regular expression the pattern compiles to (globs are translated and anchored).
    public var regex: String

    public var description: String { text }

    /// Parses and validates a pattern; `error` builds the line-numbered error.
    init(text: String, line: Int, path: String, error: (String) -> PTQError) throws(PTQError) {
        self.text = text
        self.line = line
        self.path = path
        if text.hasPrefix("re:") {
            kind = .regex
            regex = String(text.dropFirst(3))
            if regex.isEmpty { throw error("empty regular expression after \"re:\"") }
        } else {
            kind = .glob
            if text.isEmpty { throw error("empty pattern") }
            regex = try Self.translate(glob: text, error: error)
        }
        do {
            _ = try Regex(regex)
        } catch let failure {
            throw error("invalid regular expression \"\(text)\": \(failure)")
        }
    }

    /// A compiled matcher; compile once and reuse it over many names.
    public func matcher() -> (String) -> Bool {
        // Validated at parse time, so compilation cannot fail here.
        guard let compiled = try? Regex(regex) else { return { _ in false } }
        switch kind {
        case .glob: return { name in (try? compiled.wholeMatch(in: name)) != nil }
        case .regex: return { name in name.contains(compiled) }
        }
    }

    /// Whether `name` matches (compiles the pattern on every call; use `matcher()` in loops).
    public func matches(_ name: String) -> Bool { matcher()(name) }

    static func translate(glob: String, error: (String) -> PTQError) throws(PTQError) -> String {
        var out = "", braceDepth = 0
        var chars = Array(glob)[...]
        while let c = chars.popFirst() {
            switch c {
            case "*":
                if chars.first == "*" {
                    chars.removeFirst()
                    out += ".*"
                } else {
                    out += "[^/]*"
                }
            case "?":
                out += "[^/]"
            case "[":
                var set = "", closed = false
                if chars.first == "!" || chars.first == "^" {
                    chars.removeFirst()
                    set += "^"
                }
                if chars.first == "]" {  // a leading ] is a literal member
                    chars.removeFirst()
                    set += "\\]"
                }
                while let d = chars.popFirst() {
                    if d == "]" { closed = true; break }
                    if d == "\\" || d == "[" || d == "&" || d == "~" { set += "\\" }
                    set += String(d)
                }
                if !closed { throw error("unclosed \"[\" in pattern \"\(glob)\"") }
                if set.isEmpty || set == "^" { throw error("empty character class \"[]\" in pattern \"\(glob)\"") }
                out += "[" + set + "]"
            case "{":
                braceDepth += 1
                out += "(?:"
            case "}":
                if braceDepth == 0 { throw error("unmatched \"}\" in pattern \"\(glob)\"") }
                braceDepth -= 1
                out += ")"
            case "," where braceDepth > 0:
                out += "|"
            case "\\":
                guard let next = chars.popFirst() else { throw error("pattern \"\(glob)\" ends with a lone \"\\\"") }
                out += escape(next)
            default:
                out += escape(c)
            }
        }
        if braceDepth > 0 { throw error("unclosed \"{\" in pattern \"\(glob)\"") }
        return out
    }

    private static func escape(_ c: Character) -> String {
        "\\^$.|?*+()[]{}".contains(c) ? "\\" + String(c) : String(c)
    }
}
