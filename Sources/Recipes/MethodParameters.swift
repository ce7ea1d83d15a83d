import PTQCore
import Yams

/// One method-specific parameter value from a recipe, with the line it was written on.
public indirect enum RecipeValue: Sendable, Equatable {
    case int(Int, line: Int)
    case double(Double, line: Int)
    case bool(Bool, line: Int)
    case string(String, line: Int)
    case list([RecipeValue], line: Int)
    case map(MethodParameters, line: Int)

    /// 1-based line of the value in the recipe file.
    public var line: Int {
        switch self {
        case .int(_, let line), .double(_, let line), .bool(_, let line), .string(_, let line),
             .list(_, let line), .map(_, let line):
            return line
        }
    }

    /// The value as a number (integers widen to Double).
    public var doubleValue: Double? {
        switch self {
        case .int(let v, _): return Double(v)
        case .double(let v, _): return v
        default: return nil
        }
    }

    public var intValue: Int? {
        if case .int(let v, _) = self { return v }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let v, _) = self { return v }
        return nil
    }

    public var stringValue: String? {
        if case .string(let v, _) = self { return v }
        return nil
    }

    public var listValue: [RecipeValue]? {
        if case .list(let v, _) = self { return v }
        return nil
    }

    public var mapValue: MethodParameters? {
        if case .map(let v, _) = self { return v }
        return nil
    }

    /// The value as written, for messages and dry runs.
    public var text: String {
        switch self {
        case .int(let v, _): return String(v)
        case .double(let v, _): return formatNumber(v)
        case .bool(let v, _): return String(v)
        case .string(let v, _): return "\"\(v)\""
        case .list(let items, _): return "[" + items.map(\.text).joined(separator: ", ") + "]"
        case .map(let map, _): return map.text
        }
    }

    /// "an integer", "a string", … for messages.
    var kind: String {
        switch self {
        case .int: return "an integer"
        case .double: return "a number"
        case .bool: return "a boolean"
        case .string: return "a string"
        case .list: return "a list"
        case .map: return "a mapping"
        }
    }

    /// What the value is, for "(got …)".
    var got: String {
        switch self {
        case .list: return "a list"
        case .map: return "a mapping"
        default: return text
        }
    }
}

/// Method-specific parameters of a scheme or rule: an ordered map from name to typed value,
/// each with its line, so that a quantizer can reject a bad value with the recipe line.
///
/// ```swift
/// let alpha = try plan.parameters.double("alpha", default: 0.5, range: 0...1)
/// try plan.parameters.rejectUnknown(allowed: ["alpha", "grid"])
/// ```
public struct MethodParameters: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var key: String
        /// Line of the key.
        public var keyLine: Int
        /// Full field path, e.g. `rules[0].parameters.alpha` (or `scheme.parameters.alpha` when
        /// inherited from the scheme).
        public var path: String
        public var value: RecipeValue
    }

    /// Recipe file (for messages).
    public var source: String
    /// Field path of the block, e.g. `rules[0].parameters`.
    public var path: String
    /// The method these parameters are for (named in messages).
    public var method: String
    /// Line of the block, or of the scheme/rule that owns it when the recipe gives none.
    public var line: Int
    public private(set) var entries: [Entry]

    public init(source: String, path: String, method: String, line: Int, entries: [Entry] = []) {
        self.source = source
        self.path = path
        self.method = method
        self.line = line
        self.entries = entries
    }

    public var isEmpty: Bool { entries.isEmpty }
    public var keys: [String] { entries.map(\.key) }

    public subscript(key: String) -> RecipeValue? {
        entries.first { $0.key == key }?.value
    }

    /// `{alpha: 0.5, grid: [1, 2]}`
    public var text: String {
        "{" + entries.map { "\($0.key): \($0.value.text)" }.joined(separator: ", ") + "}"
    }

    /// These parameters with `overrides` laid over them (keys in `overrides` replace ours;
    /// new keys are appended). The result takes the path, method and line of `overrides`.
    public func merging(_ overrides: MethodParameters) -> MethodParameters {
        var merged = entries
        for entry in overrides.entries {
            if let i = merged.firstIndex(where: { $0.key == entry.key }) {
                merged[i] = entry
            } else {
                merged.append(entry)
            }
        }
        return MethodParameters(source: overrides.source, path: overrides.path, method: overrides.method,
                                line: overrides.line, entries: merged)
    }

    // MARK: Errors

    /// A line-numbered error about parameter `key` (at its value's line when present, else at
    /// the block's line), for checks the accessors do not cover.
    public func error(_ key: String, _ message: String) -> PTQError {
        if let entry = entries.first(where: { $0.key == key }) {
            return PTQError("\(source):\(entry.value.line): \(entry.path): \(message)")
        }
        return PTQError("\(source):\(line): \(path).\(key): \(message)")
    }

    private func missing(_ key: String) -> PTQError {
        error(key, "required parameter of method \(method) is missing")
    }

    /// Whether the recipe gives `key` (for optional parameters without a default).
    public func has(_ key: String) -> Bool { entry(key) != nil }

    private func entry(_ key: String) -> Entry? {
        entries.first { $0.key == key }
    }

    // MARK: Typed accessors

    /// A number (integers are accepted). `default: nil` makes the parameter required.
    public func double(_ key: String, default defaultValue: Double? = nil,
                       range: ClosedRange<Double>? = nil) throws(PTQError) -> Double {
        guard let entry = entry(key) else {
            if let defaultValue { return defaultValue }
            throw missing(key)
        }
        guard let value = entry.value.doubleValue else {
            throw error(key, "must be a number (got \(entry.value.got))")
        }
        try check(key, value, range)
        return value
    }

    public func int(_ key: String, default defaultValue: Int? = nil,
                    range: ClosedRange<Int>? = nil) throws(PTQError) -> Int {
        guard let entry = entry(key) else {
            if let defaultValue { return defaultValue }
            throw missing(key)
        }
        guard let value = entry.value.intValue else {
            throw error(key, "must be an integer (got \(entry.value.got))")
        }
        if let range, !range.contains(value) {
            throw error(key, "\(Self.describe(Double(range.lowerBound), Double(range.upperBound), intMax: range.upperBound == Int.max)) (got \(value))")
        }
        return value
    }

    public func bool(_ key: String, default defaultValue: Bool? = nil) throws(PTQError) -> Bool {
        guard let entry = entry(key) else {
            if let defaultValue { return defaultValue }
            throw missing(key)
        }
        guard let value = entry.value.boolValue else {
            throw error(key, "must be true or false (got \(entry.value.got))")
        }
        return value
    }

    /// A string, optionally one of a fixed set.
    public func string(_ key: String, default defaultValue: String? = nil,
                       oneOf choices: [String]? = nil) throws(PTQError) -> String {
        guard let entry = entry(key) else {
            if let defaultValue { return defaultValue }
            throw missing(key)
        }
        guard let value = entry.value.stringValue else {
            throw error(key, "must be a string (got \(entry.value.got))")
        }
        if let choices, !choices.contains(value) {
            throw error(key, "must be one of: \(choices.joined(separator: ", ")) (got \"\(value)\")")
        }
        return value
    }

    /// A list of numbers, e.g. a search grid `[0.5, 0.75, 1]`; a single number is a one-item list.
    public func doubles(_ key: String, default defaultValue: [Double]? = nil,
                        range: ClosedRange<Double>? = nil) throws(PTQError) -> [Double] {
        guard let entry = entry(key) else {
            if let defaultValue { return defaultValue }
            throw missing(key)
        }
        let items: [RecipeValue]
        switch entry.value {
        case .list(let list, _): items = list
        case .int, .double: items = [entry.value]
        default: throw error(key, "must be a list of numbers (got \(entry.value.got))")
        }
        if items.isEmpty { throw error(key, "must list at least one number") }
        var values: [Double] = []
        for (i, item) in items.enumerated() {
            guard let v = item.doubleValue else {
                throw PTQError("\(source):\(item.line): \(entry.path)[\(i)]: must be a number (got \(item.got))")
            }
            if let range, !range.contains(v) {
                throw PTQError("\(source):\(item.line): \(entry.path)[\(i)]: \(Self.describe(range.lowerBound, range.upperBound)) (got \(formatNumber(v)))")
            }
            values.append(v)
        }
        return values
    }

    /// A nested mapping parameter (empty parameters at the block's line when absent).
    public func map(_ key: String) throws(PTQError) -> MethodParameters {
        guard let entry = entry(key) else {
            return MethodParameters(source: source, path: "\(path).\(key)", method: method, line: line)
        }
        guard let value = entry.value.mapValue else {
            throw error(key, "must be a mapping (got \(entry.value.got))")
        }
        return value
    }

    /// Throws for the first parameter (in recipe order) whose name is not in `allowed`.
    public func rejectUnknown(allowed: Set<String>) throws(PTQError) {
        for entry in entries where !allowed.contains(entry.key) {
            let expected = allowed.isEmpty
                ? "method \(method) takes no parameters"
                : "expected one of: \(allowed.sorted().joined(separator: ", "))"
            throw PTQError("\(source):\(entry.keyLine): \(entry.path): unknown parameter for method \(method) (\(expected))")
        }
    }

    private func check(_ key: String, _ value: Double, _ range: ClosedRange<Double>?) throws(PTQError) {
        if let range, !range.contains(value) {
            throw error(key, "\(Self.describe(range.lowerBound, range.upperBound)) (got \(formatNumber(value)))")
        }
    }

    static func describe(_ lower: Double, _ upper: Double, intMax: Bool = false) -> String {
        if upper == .infinity || intMax { return "must be at least \(formatNumber(lower))" }
        if lower == -.infinity { return "must be at most \(formatNumber(upper))" }
        return "must be between \(formatNumber(lower)) and \(formatNumber(upper))"
    }
}

extension Field {
    /// Reads a `parameters:` block into typed values. Null is an empty block.
    func parameters(method: String, ownerLine: Int) throws(PTQError) -> MethodParameters {
        let fields = try mapping(allowed: nil, allowNull: true)
        var entries: [MethodParameters.Entry] = []
        for entry in fields.entries {
            entries.append(.init(key: entry.key, keyLine: entry.keyLine, path: entry.field.path,
                                 value: try entry.field.recipeValue(method: method)))
        }
        return MethodParameters(source: source, path: path, method: method,
                                line: fields.entries.isEmpty ? (keyLine ?? ownerLine) : (keyLine ?? line),
                                entries: entries)
    }

    /// Any YAML value as a typed RecipeValue.
    func recipeValue(method: String) throws(PTQError) -> RecipeValue {
        switch node {
        case .scalar(let scalar):
            switch tagName {
            case Tag.Name.int.rawValue: return .int(try int(), line: line)
            case Tag.Name.float.rawValue: return .double(try double(), line: line)
            case Tag.Name.bool.rawValue: return .bool(try bool(), line: line)
            case Tag.Name.null.rawValue: throw error("a value is required (got nothing)")
            default: return .string(scalar.string, line: line)
            }
        case .sequence:
            var items: [RecipeValue] = []
            for item in try list() { items.append(try item.recipeValue(method: method)) }
            return .list(items, line: line)
        case .mapping:
            let nested = try parameters(method: method, ownerLine: line)
            return .map(nested, line: line)
        case .alias:
            throw error("aliases are not supported here")
        }
    }
}
