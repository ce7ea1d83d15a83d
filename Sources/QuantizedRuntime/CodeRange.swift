/// The range check every layer's build makes on its codes before re-laying them out.
enum CodeRange {
    /// The index of the first code `>= limit`, or nil. A max reduction the compiler vectorises
    /// comes first and the element-wise search runs only when it finds a code out of range: the
    /// search alone, a byte at a time, was ~18 % of a W4A16 `.ptq` load's CPU time (issue 13).
    static func firstOutOfRange(_ codes: [UInt8], limit: Int) -> Int? {
        let largest = codes.withUnsafeBufferPointer { b in
            var m: UInt8 = 0
            for v in b { m = max(m, v) }
            return m
        }
        guard Int(largest) >= limit else { return nil }
        return codes.firstIndex(where: { Int($0) >= limit })
    }
}
