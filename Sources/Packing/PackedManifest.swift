import Foundation
import PTQCore

/// The `manifest` section: everything about the model except the payload bytes.
/// Keys are snake_case; optional fields are omitted when absent.
struct PackedManifest: Codable, Sendable {
    var formatVersion: Int
    var toolVersion: String
    var config: ModelConfig
    var modelIdentity: String
    var statsHash: String?
    var recipe: String
    var metadata: [String: String]
    /// Name of the tokenizer section.
    var tokenizer: String
    var floatTensors: [FloatTensorEntry]
    var quantizedLinears: [LinearEntry]
    /// Quantized activation sites (AdaLog / uniform post-softmax probabilities); their few
    /// parameters live in the manifest itself, the level tables are recomputed from them.
    var activationSites: [QuantizedActivationSite]?

    enum CodingKeys: String, CodingKey {
        case config, recipe, metadata, tokenizer
        case activationSites = "activation_sites"
        case formatVersion = "format_version"
        case toolVersion = "tool_version"
        case modelIdentity = "model_identity"
        case statsHash = "stats_hash"
        case floatTensors = "float_tensors"
        case quantizedLinears = "quantized_linears"
    }

    struct FloatTensorEntry: Codable, Sendable {
        var name: String
        var shape: [Int]
        var section: String
        var storedBytes: Int
        /// `float32`, or `float16` for matrices (embeddings, float linears): see `floatStorage(for:)`.
        var dtype: String?

        enum CodingKeys: String, CodingKey {
            case name, shape, section, dtype
            case storedBytes = "stored_bytes"
        }

        var isHalf: Bool { dtype == "float16" }
    }

    struct LinearEntry: Codable, Sendable {
        var name: String
        var method: String
        var details: [String: String]
        /// Weight format (`QuantizedWeight.formatName`); absent means `integer` (files written
        /// before other formats existed).
        var format: String?
        var bits: Int
        var rows: Int
        var columns: Int
        var groupSize: Int
        var symmetric: Bool
        /// Bits, granularity and static scale; the per-channel arrays live in their own sections.
        var activation: ActivationQuantization?
        var codes: String
        var scales: String
        var zeros: String?
        var bias: String?
        var activationChannelScales: String?
        var activationChannelShift: String?
        /// Format `split` only: the section of the 2-bit cluster ids.
        var clusters: String?
        /// Format `binary` only (`PackedFile+Binary.swift`): `columns` or `elements`, the count of
        /// salient elements (so every section's size is known before the mask is decoded), and
        /// the sections of the mask bits, the sign bits, the per-row a and b and the per-column r2.
        var maskKind: String? = nil
        var salientCount: Int? = nil
        var mask: String? = nil
        var signs: String? = nil
        var binaryScales: String? = nil
        var binaryOffsets: String? = nil
        var columnScales: String? = nil
        /// Format `binary`, version 2: the count of float16 outlier columns and the sections of
        /// their 1-bit column mask and their `rows × count` float16 values.
        var outlierColumns: Int? = nil
        var outlierMask: String? = nil
        var outlierValues: String? = nil
        /// Stored (compressed) bytes of all this layer's sections.
        var storedBytes: Int

        enum CodingKeys: String, CodingKey {
            case name, method, details, format, bits, rows, columns, symmetric, activation, codes, scales, zeros, bias
            case groupSize = "group_size"
            case activationChannelScales = "activation_channel_scales"
            case activationChannelShift = "activation_channel_shift"
            case clusters, mask, signs
            case storedBytes = "stored_bytes"
            case maskKind = "mask_kind"
            case salientCount = "salient_count"
            case binaryScales = "binary_scales"
            case binaryOffsets = "binary_offsets"
            case columnScales = "column_scales"
            case outlierColumns = "outlier_columns"
            case outlierMask = "outlier_mask"
            case outlierValues = "outlier_values"
        }

        /// The weight format, `integer` when the manifest names none.
        var formatName: String { format ?? "integer" }

        /// Every section this layer's payload occupies (for stored-size accounting).
        var sectionNames: [String] {
            [codes, scales, zeros, bias, activationChannelScales, activationChannelShift, clusters,
             mask, signs, binaryScales, binaryOffsets, columnScales, outlierMask, outlierValues].compactMap { $0 }
        }
    }

    /// What needs format version 2 in this manifest, or nil: fields a version-1 reader would
    /// ignore and so run a different model (binary outlier columns; per-head Q/K/V codes of a
    /// quantized attention site).
    var versionTwoFeature: String? {
        if let e = quantizedLinears.first(where: { $0.outlierColumns != nil }) {
            return "the outlier columns of tensor '\(e.name)'"
        }
        if let site = activationSites?.first(where: { $0.query != nil || $0.key != nil || $0.value != nil }) {
            return "the per-head query/key/value codes of '\(site.point)'"
        }
        return nil
    }

    /// The lowest format version that holds this manifest (writers use it, so files without
    /// version-2 features stay readable by version-1 builds).
    var requiredVersion: Int { versionTwoFeature == nil ? 1 : 2 }

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }
}

extension ActivationQuantization {
    /// Human-readable summary, e.g. `int8 per_token, channel scales, shift`; `float` for nil.
    static func describe(_ a: ActivationQuantization?, hasChannelScales: Bool, hasShift: Bool) -> String {
        guard let a else { return "float" }
        if let l = a.logarithmic { return "adalog\(l.bits) base 2^(\(l.q)/\(l.r)) scale \(l.scale), offset \(a.inputOffset ?? 0)" }
        var text = "\(a.floatFormat?.description ?? "int\(a.bits)") \(a.granularity.rawValue)"
        if let scale = a.scale { text += " (scale \(scale))" }
        if hasChannelScales { text += a.floatFormat == nil ? ", channel scales" : ", 2^-k channel shifts" }
        if hasShift { text += ", shift" }
        return text
    }
}

/// Describes a JSON decoding failure with its coding path.
func describeDecodingError(_ error: any Error) -> String {
    func path(_ keys: [any CodingKey]) -> String {
        keys.isEmpty ? "top level" : keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
    switch error {
    case DecodingError.keyNotFound(let key, let context):
        return "missing key '\(key.stringValue)' at \(path(context.codingPath))"
    case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
        return "wrong type at \(path(context.codingPath)): \(context.debugDescription)"
    case DecodingError.dataCorrupted(let context):
        let underlying = (context.underlyingError as? NSError)?.userInfo[NSDebugDescriptionErrorKey] as? String
        let text = [context.debugDescription, underlying].compactMap { $0 }.joined(separator: " ")
        return context.codingPath.isEmpty ? text : "\(text) at \(path(context.codingPath))"
    default:
        return "\(error)"
    }
}
