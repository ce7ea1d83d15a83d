import Foundation
import Testing
import PTQKit

/// The README's library example, compiled here verbatim (between the markers) so it cannot rot;
/// `readmeShowsThisExample` checks that the README still shows exactly this code.
enum ReadmeExample {
    static func run(gguf: String, recipePath: String, wikiText: String, workDirectory: String, chunks: Int) throws -> (Double, Double) {
        let checkpoint = workDirectory + "/smollm2.h5", packed = workDirectory + "/smollm2-w4a16.ptq"
        // README-EXAMPLE-BEGIN
        // Import the GGUF into an HDF5 checkpoint, quantize it with a recipe, pack it.
        try PTQ.importModel(from: gguf, to: checkpoint)
        let recipe = try PTQ.RecipeContext(path: recipePath)
        let outcome = try PTQ.quantize(checkpoint: checkpoint, recipe: recipe)
        try PackedFile.write(outcome.packed, to: packed)

        // Evaluate the float and the packed model the way llama-perplexity does.
        var perplexities: [Double] = []
        for path in [checkpoint, packed] {
            guard let model = try PTQ.loadAnyModel(path: path) as? any LanguageModel else { continue }
            let tokenizer = try makeTokenizer(model.tokenizer)
            let tokens = tokenizer.encode(try PTQ.readText(wikiText))
            let result = try Perplexity.evaluate(model: model, tokens: tokens, context: 512, maxChunks: chunks)
            perplexities.append(result.perplexity)
        }
        print("perplexity \(perplexities[0]) → \(perplexities[1])")
        // README-EXAMPLE-END
        return (perplexities[0], perplexities[1])
    }
}

@Suite("README")
struct ReadmeTests {
    @Test func readmeShowsThisExample() throws {
        let source = try String(contentsOfFile: #filePath, encoding: .utf8)
        let readme = try String(contentsOfFile: ProjectPaths.root + "/README.md", encoding: .utf8)
        let begin = source.range(of: "// README-EXAMPLE-BEGIN\n")!.upperBound
        let end = source.range(of: "        // README-EXAMPLE-END")!.lowerBound
        let example = source[begin..<end].split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("        ") ? String($0.dropFirst(8)) : String($0) }.joined(separator: "\n")
        #expect(readme.contains(example), "README.md must show the example of ReadmeExampleTests.swift verbatim")
    }

    /// The example runs on the real model (one chunk: the point is that it works end to end).
    @Test(.enabled(if: ProjectPaths.modelsAvailable)) func readmeExampleRuns() throws {
        let work = SyntheticModels.temporaryPath("readme")
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let (before, after) = try ReadmeExample.run(gguf: ProjectPaths.smolGGUF,
                                                    recipePath: ProjectPaths.root + "/recipes/smollm2-w4a16-g128.yaml",
                                                    wikiText: ProjectPaths.wikiTest,
                                                    workDirectory: work, chunks: 1)
        #expect(before > 5 && before < 60)
        #expect(after > before && after < before * 1.5)
    }
}
