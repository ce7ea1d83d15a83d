import PTQCore
import Yams

/// A YAML node with the field path that led to it, so that every problem becomes
/// `<file>:<line>: <field path>: <what is wrong>`.
struct Field {
    let node: Node
    /// Dotted path from the document root (`rules[0].weight.bits`); empty for the root.
    let path: String
    let source: String
    /// Line of the key that introduced this value (nil for sequence items and the root).
    let keyLine: Int?

    init(node: Node, path: String, source: String, keyLine: Int?) {
        self.node = node
        self.path = path
        self.source = source
        self.keyLine = keyLine
    }

    /// 1-based line of the value itself.
    var line: Int { node.mark?.line ?? keyLine ?? 1 }

    var displayPath: String { path.isEmpty ? "recipe" : path }

    func error(_ message: String) -> PTQError {
        PTQError("\(source):\(line): \(displayPath): \(message)")
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    var isNull: Bool {
        if case .scalar = node { return tagName == Tag.Name.null.rawValue }
        return false
    }

    var tagName: String { node.tag.rawValue }

    /// What the value is, for "(got …)" in messages.
    var got: String {
        switch node {
        case .scalar(let scalar):
            if tagName == Tag.Name.null.rawValue { return "nothing (null)" }
            if tagName == Tag.Name.str.rawValue { return "\"\(scalar.string)\"" }
            return scalar.string
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    // MARK: Scalars

    func int(range: ClosedRange<Int>? = nil) throws(PTQError) -> Int {
        guard case .scalar = node, tagName == Tag.Name.int.rawValue else {
            throw error("must be an integer (got \(got))")
        }
        guard let value = node.int else { throw error("integer out of range (got \(got))") }
        if let range, !range.contains(value) {
            throw error("\(describe(range)) (got \(value))")
        }
        return value
    }

    func double(range: ClosedRange<Double>? = nil) throws(PTQError) -> Double {
        guard case .scalar = node,
              tagName == Tag.Name.float.rawValue || tagName == Tag.Name.int.rawValue,
              let value = tagName == Tag.Name.int.rawValue ? node.int.map(Double.init) : node.float
        else { throw error("must be a number (got \(got))") }
        guard value.isFinite else { throw error("must be a finite number (got \(got))") }
        if let range, !range.contains(value) {
            throw error("\(describe(range)) (got \(formatNumber(value)))")
        }
        return value
    }

    func bool() throws(PTQError) -> Bool {
        guard case .scalar = node, tagName == Tag.Name.bool.rawValue, let value = node.bool else {
            throw error("must be true or false (got \(got))")
        }
        return value
    }

    /// A string-tagged scalar (quoted or plain text that is not a number, bool or null).
    func string() throws(PTQError) -> String {
        guard case .scalar(let scalar) = node, tagName == Tag.Name.str.rawValue else {
            throw error("must be a string (got \(got))")
        }
        return scalar.string
    }

    /// Free text: any scalar but null, taken as written (`name: 2024` is the text "2024").
    func text() throws(PTQError) -> String {
        guard case .scalar(let scalar) = node, !isNull else {
            throw error("must be text (got \(got))")
        }
        return scalar.string
    }

    /// One of a fixed set of words.
    func word(oneOf choices: [String]) throws(PTQError) -> String {
        guard case .scalar(let scalar) = node, tagName == Tag.Name.str.rawValue,
              choices.contains(scalar.string)
        else { throw error("must be one of: \(choices.joined(separator: ", ")) (got \(got))") }
        return scalar.string
    }

    // MARK: Collections

    /// The items of a list. A single scalar is accepted as a one-item list when `allowScalar`;
    /// null is an empty list when `allowNull`.
    func list(allowScalar: Bool = false, allowNull: Bool = false) throws(PTQError) -> [Field] {
        switch node {
        case .sequence(let sequence):
            return sequence.enumerated().map { index, item in
                Field(node: item, path: "\(path)[\(index)]", source: source, keyLine: nil)
            }
        case .scalar where allowNull && isNull:
            return []
        case .scalar where allowScalar:
            return [Field(node: node, path: "\(path)[0]", source: source, keyLine: keyLine)]
        default:
            throw error("must be a list (got \(got))")
        }
    }

    /// The entries of a mapping whose keys must all be in `allowed` (in the order they are
    /// documented, which is the order the error message lists them).
    func mapping(allowed: [String]?, allowNull: Bool = false) throws(PTQError) -> Fields {
        if allowNull && isNull {
            return Fields(owner: self, entries: [])
        }
        guard case .mapping(let mapping) = node else {
            throw error("must be a mapping (got \(got))")
        }
        var entries: [Fields.Entry] = []
        for (keyNode, valueNode) in mapping {
            guard case .scalar(let keyScalar) = keyNode else {
                throw PTQError("\(source):\(keyNode.mark?.line ?? line): \(displayPath): keys must be plain words (got \(Field(node: keyNode, path: "", source: source, keyLine: nil).got))")
            }
            let key = keyScalar.string
            let keyLine = keyNode.mark?.line ?? line
            if let allowed, !allowed.contains(key) {
                throw PTQError("\(source):\(keyLine): \(child(key)): unknown key (expected one of: \(allowed.joined(separator: ", ")))")
            }
            entries.append(.init(key: key, keyLine: keyLine,
                                 field: Field(node: valueNode, path: child(key), source: source, keyLine: keyLine)))
        }
        return Fields(owner: self, entries: entries)
    }

    private func describe<T: Comparable>(_ range: ClosedRange<T>) -> String {
        func text(_ v: T) -> String {
            if let d = v as? Double { return formatNumber(d) }
            return "\(v)"
        }
        if let upper = range.upperBound as? Int, upper == Int.max { return "must be at least \(text(range.lowerBound))" }
        if let upper = range.upperBound as? Double, upper == .infinity { return "must be at least \(text(range.lowerBound))" }
        if let lower = range.lowerBound as? Double, lower == -.infinity { return "must be at most \(text(range.upperBound))" }
        return "must be between \(text(range.lowerBound)) and \(text(range.upperBound))"
    }
}

/// The entries of one YAML mapping, in document order.
struct Fields {
    struct Entry {
        let key: String
        let keyLine: Int
        let field: Field
    }

    let owner: Field
    let entries: [Entry]

    subscript(key: String) -> Field? {
        entries.first { $0.key == key }?.field
    }

    func require(_ key: String) throws(PTQError) -> Field {
        if let field = self[key] { return field }
        throw missing(key)
    }

    /// "required field is missing", at the line of the key that holds this mapping.
    func missing(_ key: String, _ note: String = "") -> PTQError {
        PTQError("\(owner.source):\(owner.keyLine ?? owner.line): \(owner.child(key)): required field is missing\(note)")
    }
}

/// `0.5`, `1`, `1e-06`: integral values without a trailing `.0`.
func formatNumber(_ value: Double) -> String {
    if value == value.rounded(), abs(value) < 1e15 { return String(Int(value)) }
    return "\(value)"
}

/// Turns a Yams error into a PTQError with the file, line and column.
func yamlError(_ error: any Error, source: String, text: String) -> PTQError {
    func context(_ context: YamlError.Context?) -> String {
        guard let context else { return "" }
        return " (\(context.text) that started at line \(context.mark.line), column \(context.mark.column))"
    }
    guard let yaml = error as? YamlError else {
        return PTQError("\(source): cannot read YAML: \(error)")
    }
    switch yaml {
    case let .scanner(ctx, problem, mark, _), let .parser(ctx, problem, mark, _), let .composer(ctx, problem, mark, _):
        return PTQError("\(source):\(mark.line):\(mark.column): YAML syntax error: \(problem)\(context(ctx))")
    case let .duplicatedKeysInMapping(duplicates, ctx):
        let key = duplicates.first ?? ""
        let first = ctx.mark.line
        let line = repeatedKeyLine(key: key, first: ctx.mark, text: text) ?? first
        return PTQError("\(source):\(line): duplicate key '\(key)' (first at line \(first)): each key may appear once in a mapping")
    case let .reader(problem, _, _, _):
        return PTQError("\(source): cannot read YAML: \(problem)")
    default:
        return PTQError("\(source): cannot read YAML: \(yaml)")
    }
}

/// Best effort for block mappings: the line of the second `key:` at the same indentation as the
/// first one (Yams reports only the first), stopping where the mapping ends.
private func repeatedKeyLine(key: String, first: Mark, text: String) -> Int? {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    let indent = first.column - 1
    var index = first.line  // 0-based index of the line after the first occurrence
    while index < lines.count {
        let line = lines[index]
        index += 1
        let content = line.drop { $0 == " " }
        if content.isEmpty || content.hasPrefix("#") { continue }
        let lineIndent = line.count - content.count
        if lineIndent < indent { return nil }
        if lineIndent == indent, content.hasPrefix(key),
           content.dropFirst(key.count).drop(while: { $0 == " " }).hasPrefix(":") {
            return index
        }
    }
    return nil
}
