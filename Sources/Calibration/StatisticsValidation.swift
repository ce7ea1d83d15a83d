import PTQCore

/// The one validation of calibration statistics, shared by the stats-file writer and reader
/// (and run on fresh calibration results), so PTQKit never writes a file it refuses to read
/// and quantizers never see sizes or values their arithmetic cannot use (docs/reliability.md).
extension PointStatistics {
    /// Sizes against `channels`, counts non-negative, gathered values finite. `point` names the
    /// quantization point in messages.
    public func validate(point: String) throws(PTQError) {
        func fail(_ message: String) -> PTQError { PTQError("statistics of '\(point)': \(message)") }
        guard channels > 0, channels <= Validation.maximumDimension else {
            throw fail("channel count \(channels) must be between 1 and \(Validation.maximumDimension)")
        }
        guard rows >= 0, samples >= 0 else { throw fail("rows (\(rows)) and samples (\(samples)) must not be negative") }
        for (name, count) in [("min", minimum.count), ("max", maximum.count), ("sum", sum.count),
                              ("sum_squares", sumOfSquares.count)] where count != channels {
            throw fail("'\(name)' has \(count) values for \(channels) channels")
        }
        if let m = midpointSum, m.count != channels {
            throw fail("'midpoint_sum' has \(m.count) values for \(channels) channels")
        }
        if let h = histogram {
            guard h.count == HistogramBins.count else {
                throw fail("'histogram' has \(h.count) bins, expected \(HistogramBins.count)")
            }
            if let bad = h.first(where: { $0 < 0 }) { throw fail("'histogram' has a negative count (\(bad))") }
        }
        if let g = gram, g.count != channels * channels {
            throw fail("'gram' has \(g.count) values, expected \(channels)×\(channels)")
        }
        if let r = reservoir {
            guard reservoirCount >= 0, r.count >= reservoirCount * channels else {
                throw fail("'reservoir' has \(r.count) values for \(reservoirCount) rows of \(channels) channels")
            }
        }
        // Values: with no rows observed, min/max keep their ±infinity start values.
        if rows > 0 {
            do {
                try Validation.requireFinite(minimum, "'min'")
                try Validation.requireFinite(maximum, "'max'")
            } catch {
                throw fail(error.message)
            }
            if let c = minimum.indices.first(where: { minimum[$0] > maximum[$0] }) {
                throw fail("channel \(c) has min \(minimum[c]) greater than max \(maximum[c])")
            }
        }
        do {
            try Validation.requireFinite(sum, "'sum'")
            try Validation.requireFinite(sumOfSquares, "'sum_squares'")
            if let m = midpointSum { try Validation.requireFinite(m, "'midpoint_sum'") }
            if let g = gram { try Validation.requireFinite(g, "'gram'") }
            if let r = reservoir { try Validation.requireFinite(Array(r.prefix(reservoirCount * channels)), "'reservoir'") }
        } catch {
            throw fail(error.message)
        }
        if let c = sumOfSquares.firstIndex(where: { $0 < 0 }) {
            throw fail("'sum_squares' of channel \(c) is negative (\(sumOfSquares[c]))")
        }
    }
}

extension CalibrationStatistics {
    /// Settings and every point; `source` (a path, or what produced the statistics) prefixes messages.
    public func validate(source: String) throws(PTQError) {
        func fail(_ message: String) -> PTQError { PTQError.file(source, message) }
        guard settings.samples >= 0, settings.sequenceLength >= 0, tokens >= 0 else {
            throw fail("samples (\(settings.samples)), seq_len (\(settings.sequenceLength)) and tokens (\(tokens)) must not be negative")
        }
        for point in points.keys.sorted() {
            do { try points[point]!.validate(point: point) } catch { throw fail(error.message) }
        }
    }
}
