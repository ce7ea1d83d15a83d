// Builds a tiny LLaMA checkpoint, quantizes it with a W8A8 recipe, packs it, loads the packed
// file on the quantized runtime and compares perplexities: a few lines of the public API, with
// Foundation imported beside PTQKit (no name may be ambiguous between them).
import Foundation
import PTQKit

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("consumer: \(message)\n".utf8))
    exit(1)
}

// Foundation's Progress and PTQKit's names coexist.
let foundationProgress = Progress(totalUnitCount: 3)

let work = FileManager.default.temporaryDirectory.appendingPathComponent("ptqkit-consumer-\(getpid())").path
try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: work) }

// A two-layer model with a byte-level vocabulary: every byte is a token.
let config = ModelConfig(architecture: .llama, vocabSize: 256, hiddenSize: 64, intermediateSize: 96, layerCount: 2,
                         headCount: 4, kvHeadCount: 2, headDim: 16, maxPositions: 128, ropeTheta: 10_000,
                         normEpsilon: 1e-5, activation: .silu, tiedEmbeddings: true, name: "consumer-llama")
let symbols = (0..<256).map { byte -> String in
    // GPT-2's byte-to-unicode table.
    let printable = (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
    if printable { return String(UnicodeScalar(UInt8(byte))) }
    let shifted = (0..<byte).filter { !((33...126).contains($0) || (161...172).contains($0) || (174...255).contains($0)) }.count
    return String(UnicodeScalar(UInt32(256 + shifted))!)
}
let tokenizer = TokenizerSpec(kind: .byteLevelBPE, tokens: symbols, merges: [], tokenTypes: Array(repeating: 1, count: 256),
                              preTokenizer: "gpt2", addBOS: false)
struct LCG {
    var state: UInt64 = 7
    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(state >> 40) / Float(1 << 24) * 2 - 1
    }
}
var rng = LCG()
var tensors: [String: Tensor] = [:]
for (name, shape) in config.expectedTensors {
    let count = shape.reduce(1, *)
    let isNorm = name.contains("norm/weight")
    let scale: Float = shape.count == 2 ? 1.5 / Float(shape[1]).squareRoot() : 0.1
    tensors[name] = Tensor(shape: shape, data: (0..<count).map { _ in (isNorm ? 1 : 0) + scale * rng.next() })
}
let checkpoint = work + "/tiny.h5", packed = work + "/tiny-w8a8.ptq", recipePath = work + "/w8a8.yaml"
try CheckpointWriter.write(CheckpointContents(config: config, tokenizer: tokenizer, tensors: tensors), to: checkpoint)
try """
name: consumer-w8a8
model: llama
scheme:
  method: rtn
  weight: {bits: 8, symmetric: true, group_size: channel}
  activation: {bits: 8, granularity: per_token}
""".write(toFile: recipePath, atomically: true, encoding: .utf8)

let recipe = try PTQ.RecipeContext(path: recipePath)
let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe, quiet: true)
try PackedFile.write(outcome.packed, to: packed)
foundationProgress.completedUnitCount = 1

let text = String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 12)
var perplexities: [Double] = []
for path in [checkpoint, packed] {
    guard let model = try PTQ.loadAnyModel(path: path) as? any LanguageModel else { fail("\(path) is not a language model") }
    let tokens = try makeTokenizer(model.tokenizer).encode(text)
    perplexities.append(try Perplexity.evaluate(model: model, tokens: tokens, context: 64, quiet: true).perplexity)
}
foundationProgress.completedUnitCount = 3
let (float, quantized) = (perplexities[0], perplexities[1])
print("consumer: \(outcome.packed.quantizedLinears.count) layers quantized; perplexity \(float) (float) → \(quantized) (W8A8)")
// A random model sits near the vocabulary size; 8-bit RTN moves it by well under a percent.
guard float.isFinite, quantized.isFinite, float > 50, float < 1000, abs(quantized / float - 1) < 0.02 else {
    fail("unexpected perplexities \(float) / \(quantized)")
}
