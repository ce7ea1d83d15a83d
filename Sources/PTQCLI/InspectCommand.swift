import ArgumentParser
import Foundation
import PTQKit

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Show a model file's config, tokenizer and tensors.")

    @Argument(help: "Model file: .h5 checkpoint or .ptq packed model.")
    var file: String

    @OptionGroup var options: OutputOptions

    func run() throws {
        if PTQ.isPackedFile(file) { return try inspectPacked() }
        let reader = try CheckpointReader(path: file)
        struct TensorRow: Encodable { let name: String, shape: [Int], dtype: String }
        var rows: [TensorRow] = []
        var bits = 0.0, count = 0
        for (name, shape) in reader.config.expectedTensors {
            let dtype = try reader.storageType(of: name)
            rows.append(TensorRow(name: name, shape: shape, dtype: dtype.rawValue))
            let n = shape.reduce(1, *)
            bits += Double(n * dtype.byteCount * 8)
            count += n
        }
        let bitsPerWeight = bits / Double(max(count, 1))
        if options.json {
            struct Output: Encodable {
                let file: String, config: ModelConfig, tokenizer: String, vocab: Int, parameters: Int,
                    bits_per_weight: Double, metadata: [String: String], tensors: [TensorRow]
            }
            try printJSON(Output(file: file, config: reader.config, tokenizer: reader.tokenizer.kind.rawValue,
                                 vocab: reader.tokenizer.tokens.count, parameters: count,
                                 bits_per_weight: bitsPerWeight, metadata: reader.metadata, tensors: rows))
            return
        }
        let c = reader.config
        print("\(file): PTQKit checkpoint, \(c.architecture.rawValue) '\(c.name)'")
        print("  hidden \(c.hiddenSize), mlp \(c.intermediateSize), layers \(c.layerCount), heads \(c.headCount)/\(c.kvHeadCount) × \(c.headDim), vocab \(c.vocabSize)")
        print("  tokenizer \(reader.tokenizer.kind.rawValue) (\(reader.tokenizer.tokens.count) tokens, pre-tokenizer \(reader.tokenizer.preTokenizer))")
        print("  \(count) parameters, \(String(format: "%.2f", bitsPerWeight)) bits per weight")
        for (key, value) in reader.metadata.sorted(by: { $0.key < $1.key }) { print("  \(key): \(value)") }
        for row in rows { print("  \(row.name) \(row.shape) \(row.dtype)") }
    }

    /// Manifest, per-tensor methods, sizes and bits per weight of a packed model.
    func inspectPacked() throws {
        if options.json { return try printJSON(try PackedFile.summary(path: file)) }
        print(try renderedPacked(), terminator: "")
    }

    /// The text `inspect` prints for a packed file.
    func renderedPacked() throws -> String {
        let summary = try PackedFile.summary(path: file)
        var out = ""
        func print(_ line: String) { out += line + "\n" }
        let c = summary.config
        print("\(file): PTQKit packed model v\(summary.formatVersion), written by PTQKit \(summary.toolVersion)")
        print("  \(c.architecture.rawValue) '\(c.name)': hidden \(c.hiddenSize), layers \(c.layerCount), vocab \(c.vocabSize)")
        print("  model identity \(summary.modelIdentity), stats \(summary.statsHash ?? "none")")
        print("  \(summary.parameterCount) parameters in \(formatBytes(summary.totalBytes)), "
              + String(format: "%.3f", summary.bitsPerWeight) + " bits per weight (\(summary.sectionCount) sections)")
        print("  bits per weight from stored bytes: quantized linears " + String(format: "%.4f", summary.quantizedBitsPerWeight)
              + " (\(summary.quantizedParameterCount) parameters in \(formatBytes(summary.quantizedStoredBytes))), payload "
              + String(format: "%.4f", summary.bitsPerWeight) + ", whole file " + String(format: "%.4f", summary.fileBitsPerWeight))
        for (key, value) in summary.metadata.sorted(by: { $0.key < $1.key }) { print("  \(key): \(value)") }
        for row in summary.tensors {
            let group = row.groupSize.map { " g\($0)" } ?? ""
            let bits = row.kind == "float" ? "float\(row.bits)" : (row.format ?? "int\(row.bits)") + group
            print("  \(row.name) \(row.kind) \(row.shape) \(bits) act \(row.activation) "
                  + "\(formatBytes(row.storedBytes)) " + String(format: "%.3f", row.bitsPerWeight) + " bpw")
            if !row.details.isEmpty {
                print("      " + row.details.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: ", "))
            }
        }
        if c.tiedEmbeddings, let table = summary.tensors.first(where: { $0.name.hasPrefix(TensorNames.tokenEmbeddingLayer) }) {
            // Tied weights, two stored quantizations: show what the tie costs.
            if let head = summary.tensors.first(where: { $0.name.hasPrefix(TensorNames.lmHeadLayer) }) {
                print("  tied embedding and LM head stored separately: table \(table.kind) \(formatBytes(table.storedBytes)) + "
                      + "head \(head.kind) \(formatBytes(head.storedBytes)) = \(formatBytes(table.storedBytes + head.storedBytes))")
            } else {
                print("  tied embedding and LM head share one stored table: \(table.kind) \(formatBytes(table.storedBytes))")
            }
        }
        for site in summary.activationSites {
            print("  \(site.point) \(site.method) \(site.quantizer.summary)")
            for (name, operand) in [("Q", site.query), ("K", site.key), ("V", site.value)] {
                if let operand { print("      \(name): \(operand.summary)") }
            }
            if !site.details.isEmpty {
                print("      " + site.details.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: ", "))
            }
        }
        print("  recipe:")
        for line in summary.recipe.split(separator: "\n", omittingEmptySubsequences: false) { print("    \(line)") }
        return out
    }
}
