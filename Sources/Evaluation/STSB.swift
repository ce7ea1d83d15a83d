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
            pairs.append(STSPair(first: String(columns[5]), second: String(columns[6]), score: score))
        }
        guard !pairs.isEmpty else { throw PTQError.file(path, "no STS-B pairs found") }
        let half = pairs.count / 2
        switch split {
        case .all: return pairs
        case .calibration: return Array(pairs[..<half])
        case .evaluation: return Array(pairs[half...])
        }
    }

    public struct Result: Codable, Sendable, Equatable {
        /// Spearman correlation × 100.
        public var spearman: Double
        public var pairs: Int
    }

    public static func evaluate(model: BertModel, tokenizer: any Tokenizer, pairs: [STSPair],
                                quiet: Bool = false) -> Result {
        let progress = ProgressReporter("stsb", total: pairs.count, quiet: quiet)
        var predicted: [Double] = []
        for pair in pairs {
            let a = model.embed(tokens: tokenizer.encode(pair.first))
            let b = model.embed(tokens: tokenizer.encode(pair.second))
            predicted.append(cosine(a, b))
            progress.advance()
        }
        return Result(spearman: 100 * Statistics.spearman(predicted, pairs.map(\.score)), pairs: pairs.count)
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
        precondition(x.count == y.count && x.count > 1)
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
