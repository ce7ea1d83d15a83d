import Foundation
import Models
import PTQCore
import Tokenizers

/// One STS Benchmark pair with its gold similarity (0–5).
public struct STSPair: Sendable, Equatable {
    public var first: String
    public var second: String
    public var score: Double
}

/// STS Benchmark: Spearman correlation between embedding cosine similarity and gold scores.
public enum STSB {
    /// Which pairs of the file to use. Calibration may use the first half only when evaluation
    /// uses the second half.
    public enum Split: String, CaseIterable, Sendable {
        case all, calibration, evaluation
    }

    /// Reads the tab-separated STS-B file (genre, file, year, id, score, sentence 1, sentence 2).
    public static func load(path: String, split: Split = .all) throws(PTQError) -> [STSPair] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw PTQError.file(path, "cannot read the STS-B file")
        }
        var pairs: [STSPair] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            let columns = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard columns.count >= 7, let score = Double(columns[4]) else {
                throw PTQError.file(path, "line \(index + 1): expected 7 tab-separated columns with a numeric score in column 5")
            }
            guard score.isFinite else {
                throw PTQError.file(path, "line \(index + 1): gold score '\(columns[4])' is not a finite number")
            }
            pairs.append(STSPair(first: String(columns[5]), second: String(columns[6]), score: score))
        }
        guard !pairs.isEmpty else { throw PTQError.file(path, "no STS-B pairs found") }
        let half = pairs.count / 2
        let selected: [STSPair]
        switch split {
        case .all: selected = pairs
        case .calibration: selected = Array(pairs[..<half])
        case .evaluation: selected = Array(pairs[half...])
        }
        try checkPairs(selected, path: path, split: split)
        return selected
    }

    /// A Spearman correlation needs at least two pairs whose gold scores are not all equal.
    static func checkPairs(_ pairs: [STSPair], path: String, split: Split) throws(PTQError) {
        let part = split == .all ? "the file" : "the \(split.rawValue) split"
        guard pairs.count >= 2 else {
            throw PTQError.file(path, "\(part) has \(pairs.count) STS-B pair\(pairs.count == 1 ? "" : "s"); a Spearman correlation needs at least 2")
        }
        guard let first = pairs.first?.score, pairs.contains(where: { $0.score != first }) else {
            throw PTQError.file(path, "every gold score in \(part) is \(pairs.first?.score ?? 0); a Spearman correlation needs scores that vary")
        }
    }

    public struct Result: Codable, Sendable, Equatable {
        /// Spearman correlation × 100.
        public var spearman: Double
        public var pairs: Int
    }

    /// Throws for fewer than two pairs, constant or non-finite gold scores, and when the model
    /// produces non-finite embeddings (the correlation would be meaningless).
    public static func evaluate(model: some SentenceEncoder, tokenizer: any Tokenizer, pairs: [STSPair],
                                quiet: Bool = false) throws(PTQError) -> Result {
        guard pairs.allSatisfy({ $0.score.isFinite }) else { throw PTQError("STS-B: a gold score is not finite") }
        try checkPairs(pairs, path: "STS-B data", split: .all)
        let progress = ProgressReporter("stsb", total: pairs.count, quiet: quiet)
        var predicted: [Double] = []
        for pair in pairs {
            let a = model.embed(tokens: tokenizer.encode(pair.first), hooks: ForwardHooks())
            let b = model.embed(tokens: tokenizer.encode(pair.second), hooks: ForwardHooks())
            predicted.append(cosine(a, b))
            progress.advance()
        }
        if let i = predicted.firstIndex(where: { !$0.isFinite }) {
            throw PTQError("STS-B: the model's embeddings of pair \(i + 1) give a non-finite cosine similarity "
                           + "(NaN or infinite activations; check the model's weights)")
        }
        let spearman = 100 * Statistics.spearman(predicted, pairs.map(\.score))
        guard spearman.isFinite, abs(spearman) <= 100 + 1e-9 else {
            throw PTQError("STS-B: the Spearman correlation is not defined for these embeddings (\(spearman)); "
                           + "the model gives the same similarity to every pair")
        }
        return Result(spearman: spearman, pairs: pairs.count)
    }

    static func cosine(_ a: [Float], _ b: [Float]) -> Double {
        var dot = 0.0, na = 0.0, nb = 0.0
        for i in a.indices {
            dot += Double(a[i]) * Double(b[i])
            na += Double(a[i]) * Double(a[i])
            nb += Double(b[i]) * Double(b[i])
        }
        return dot / max((na * nb).squareRoot(), 1e-30)
    }
}

public enum Statistics {
    /// Spearman rank correlation (Pearson of average ranks, ties sharing their mean rank).
    public static func spearman(_ x: [Double], _ y: [Double]) -> Double {
        pearson(ranks(x), ranks(y))
    }

    public static func pearson(_ x: [Double], _ y: [Double]) -> Double {
        // NaN (not a trap) for unusable input; callers check the result.
        guard x.count == y.count, x.count > 1 else { return .nan }
        let n = Double(x.count)
        let mx = x.reduce(0, +) / n, my = y.reduce(0, +) / n
        var sxy = 0.0, sxx = 0.0, syy = 0.0
        for i in x.indices {
            sxy += (x[i] - mx) * (y[i] - my)
            sxx += (x[i] - mx) * (x[i] - mx)
            syy += (y[i] - my) * (y[i] - my)
        }
        return sxy / (sxx * syy).squareRoot()
    }

    /// 1-based ranks with ties given their average rank.
    public static func ranks(_ values: [Double]) -> [Double] {
        let order = values.indices.sorted { values[$0] < values[$1] }
        var ranks = [Double](repeating: 0, count: values.count)
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && values[order[j + 1]] == values[order[i]] { j += 1 }
            let average = Double(i + j) / 2 + 1
            for k in i...j { ranks[order[k]] = average }
            i = j + 1
        }
        return ranks
    }
}
