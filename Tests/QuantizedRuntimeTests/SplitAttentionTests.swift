import CKernels
import Foundation
import Kernels
import PTQCore
import Testing

/// The split decode attention (`ck_attend_part` + `ck_attend_merge`, flash-decoding): the
/// AVX-512 kernel against its scalar twin and against the unsplit reference
/// (`ck_attend_group_ref`), over position ranges that do and do not fall on the kernel's
/// 16-position steps, and through `TokenKernels.attendOne` with the split on and off.
@Suite("Split decode attention")
struct SplitAttentionTests {
    /// The half cache's arena: zeroed, layers disjoint and `count` halves apart, 2 MB-aligned.
    @Test func halfCacheArenaLayers() throws {
        let layers = 3, count = 577 * 64
        let arena = HalfCacheArena(layers: layers, count: count)
        for l in 0..<layers {
            arena[l].withUnsafeBufferPointer { #expect($0.count == count && $0.allSatisfy { $0 == 0 }) }
        }
        arena[1].withUnsafeMutableBufferPointer { for i in 0..<$0.count { $0[i] = UInt16(truncatingIfNeeded: i &* 7 &+ 1) } }
        arena[0].withUnsafeBufferPointer { #expect($0.allSatisfy { $0 == 0 }) }
        arena[2].withUnsafeBufferPointer { #expect($0.allSatisfy { $0 == 0 }) }
        let first = arena[0].withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress!) }
        let second = arena[1].withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress!) }
        #expect(second - first == UInt(count * 2))
        #expect(first % (2 << 20) == 0)
        arena[1].withUnsafeBufferPointer { #expect($0[576 * 64 + 5] == UInt16(truncatingIfNeeded: (576 * 64 + 5) &* 7 &+ 1)) }
        let empty = HalfCacheArena(layers: 0, count: 0)
        #expect(empty.layers == 0)
    }

    /// `collapseToHugePages` moves a touched 16 MB anonymous buffer onto 2 MB pages without
    /// changing its contents (where the kernel's THP mode allows it at all).
    @Test func weightsCollapseToHugePages() throws {
        let mode = (try? String(contentsOfFile: "/sys/kernel/mm/transparent_hugepage/enabled", encoding: .utf8)) ?? ""
        let count = 16 << 18  // 16 MiB of UInt32
        let buffer = UnsafeMutablePointer<UInt32>.allocate(capacity: count)
        defer { buffer.deallocate() }
        for i in 0..<count { buffer[i] = UInt32(truncatingIfNeeded: i &* 2_654_435_761) }
        let collapsed = TokenKernels.collapseToHugePages(minimumBytes: 8 << 20)
        if mode.contains("[never]") || ProcessInfo.processInfo.environment["PTQ_WEIGHT_HUGEPAGES"] == "0" {
            #expect(collapsed >= 0)
        } else {
            // The buffer's own mapping holds at least 14 MB of whole, aligned 2 MB pages.
            #expect(collapsed >= 14 << 20)
        }
        var same = true
        for i in 0..<count where buffer[i] != UInt32(truncatingIfNeeded: i &* 2_654_435_761) { same = false }
        #expect(same)
    }

    struct Shape: CustomStringConvertible, Sendable {
        let heads: Int, kvHeads: Int, dim: Int
        var description: String { "\(heads)/\(kvHeads)×\(dim)" }
    }

    static let shapes = [Shape(heads: 9, kvHeads: 3, dim: 64), Shape(heads: 4, kvHeads: 4, dim: 64),
                         Shape(heads: 1, kvHeads: 1, dim: 64), Shape(heads: 6, kvHeads: 2, dim: 32),
                         Shape(heads: 3, kvHeads: 1, dim: 7), Shape(heads: 2, kvHeads: 2, dim: 128),
                         Shape(heads: 8, kvHeads: 2, dim: 72), Shape(heads: 5, kvHeads: 1, dim: 16)]

    /// Keys and values in the cache layouts: position-major floats (stride kvHeads·dim), a
    /// head-major half cache (KV, capacity, dim) with spare capacity, and the same half keys in
    /// 16-position tiles (`tiledKeys`, KV heads `tiledStride` halves apart: capacity rounded up to
    /// 16 positions), all holding the same values. Unused positions hold a NaN pattern.
    struct Cache {
        let floatKeys: [Float], floatValues: [Float], halfKeys: [UInt16], halfValues: [UInt16], capacity: Int
        let tiledKeys: [UInt16], tiledStride: Int
    }

    /// The cache layouts `split` runs on.
    enum Layout: CaseIterable { case float, half, tiled }

    static func cache(_ shape: Shape, count: Int, keyRange: ClosedRange<Float>, spare: Int = 5,
                      rng: inout SplitMix) -> Cache {
        let width = shape.kvHeads * shape.dim, capacity = count + spare
        let tiledStride = (capacity + 15) / 16 * 16 * shape.dim
        var keys = rng.floats(count * width, in: keyRange), values = rng.floats(count * width, in: -3...3)
        var halfKeys = [UInt16](repeating: 0x7E00, count: shape.kvHeads * capacity * shape.dim), halfValues = halfKeys
        var tiledKeys = [UInt16](repeating: 0x7E00, count: shape.kvHeads * tiledStride)
        for g in 0..<shape.kvHeads {
            for j in 0..<count {
                for d in 0..<shape.dim {
                    let i = j * width + g * shape.dim + d, h = (g * capacity + j) * shape.dim + d
                    halfKeys[h] = ck_f32_to_f16_one(keys[i])
                    halfValues[h] = ck_f32_to_f16_one(values[i])
                    tiledKeys[g * tiledStride + (j / 16) * 16 * shape.dim + 16 * d + j % 16] = halfKeys[h]
                    keys[i] = ck_f16_to_f32_one(halfKeys[h])  // the float cache holds the same values
                    values[i] = ck_f16_to_f32_one(halfValues[h])
                }
            }
        }
        return Cache(floatKeys: keys, floatValues: values, halfKeys: halfKeys, halfValues: halfValues, capacity: capacity,
                     tiledKeys: tiledKeys, tiledStride: tiledStride)
    }

    /// Split attention over `parts` ranges of ⌈count / parts⌉ positions (not rounded to 16), merged.
    static func split(_ q: [Float], _ cache: Cache, _ shape: Shape, count: Int, parts: Int, layout: Layout,
                      reference: Bool) -> [Float] {
        let chunk = (count + parts - 1) / parts, scale = 1 / Float(shape.dim).squareRoot()
        var partial = [Float](repeating: .nan, count: parts * shape.heads * (shape.dim + 2))
        var scores = [Float](repeating: .nan, count: shape.heads * count)
        var out = [Float](repeating: .nan, count: shape.heads * shape.dim)
        for t in 0..<parts {
            let begin = min(count, t * chunk), end = min(count, begin + chunk)
            partial.withUnsafeMutableBufferPointer { p in
                let pt = p.baseAddress! + t * shape.heads * (shape.dim + 2)
                let (dim, heads, kvHeads) = (shape.dim, shape.heads, shape.kvHeads)
                switch layout {
                case .tiled:
                    // Values keep the head-major layout (KV heads capacity·dim apart): the tiled
                    // stride must serve both, so the values are copied to it.
                    let values = Self.restride(cache.halfValues, heads: kvHeads, from: cache.capacity * dim,
                                               to: cache.tiledStride)
                    if reference {
                        ck_attend_part_f16t_ref(q, cache.tiledKeys, values, begin, end, dim, cache.tiledStride, dim,
                                                heads, kvHeads, scale, &scores, count, pt)
                    } else {
                        ck_attend_part_f16t(q, cache.tiledKeys, values, begin, end, dim, cache.tiledStride, dim,
                                            heads, kvHeads, scale, &scores, count, pt)
                    }
                case .half:
                    let kvHeadStride = cache.capacity * dim
                    if reference {
                        ck_attend_part_f16_ref(q, cache.halfKeys, cache.halfValues, begin, end, dim, kvHeadStride, dim,
                                               heads, kvHeads, scale, &scores, count, pt)
                    } else {
                        ck_attend_part_f16(q, cache.halfKeys, cache.halfValues, begin, end, dim, kvHeadStride, dim,
                                           heads, kvHeads, scale, &scores, count, pt)
                    }
                case .float:
                    let stride = kvHeads * dim
                    if reference {
                        ck_attend_part_ref(q, cache.floatKeys, cache.floatValues, begin, end, stride, dim, dim, heads,
                                           kvHeads, scale, &scores, count, pt)
                    } else {
                        ck_attend_part(q, cache.floatKeys, cache.floatValues, begin, end, stride, dim, dim, heads,
                                       kvHeads, scale, &scores, count, pt)
                    }
                }
            }
        }
        ck_attend_merge(partial, parts, shape.heads, shape.dim, &out)
        return out
    }

    /// `heads` runs of `from` halves re-spaced `to` halves apart (the gap a NaN pattern).
    static func restride(_ source: [UInt16], heads: Int, from: Int, to: Int) -> [UInt16] {
        var out = [UInt16](repeating: 0x7E00, count: heads * to)
        for g in 0..<heads { for i in 0..<min(from, to) { out[g * to + i] = source[g * from + i] } }
        return out
    }

    /// The unsplit scalar reference (normalised probabilities, then P·V) on the float cache.
    static func unsplit(_ q: [Float], _ cache: Cache, _ shape: Shape, count: Int) -> [Float] {
        let group = shape.heads / shape.kvHeads, scale = 1 / Float(shape.dim).squareRoot()
        var scores = [Float](repeating: 0, count: group * count)
        var out = [Float](repeating: .nan, count: shape.heads * shape.dim)
        for kv in 0..<shape.kvHeads {
            cache.floatKeys.withUnsafeBufferPointer { k in
                cache.floatValues.withUnsafeBufferPointer { v in
                    out.withUnsafeMutableBufferPointer { o in
                        q.withUnsafeBufferPointer { qp in
                            ck_attend_group_ref(qp.baseAddress! + kv * group * shape.dim, k.baseAddress! + kv * shape.dim,
                                                v.baseAddress! + kv * shape.dim, count, shape.kvHeads * shape.dim,
                                                shape.dim, group, scale, &scores, o.baseAddress! + kv * group * shape.dim)
                        }
                    }
                }
            }
        }
        return out
    }

    /// Fast and twin, both caches, each range split in `parts`: within `bound` of each other and
    /// of the unsplit reference, and finite.
    static func expectSplitMatches(_ q: [Float], _ cache: Cache, _ shape: Shape, count: Int, parts: [Int],
                                   bound: Float, label: String) {
        let expected = unsplit(q, cache, shape, count: count)
        for layout in Layout.allCases {
            for parts in parts {
                let label = "\(label) \(layout) parts \(parts)"
                let ref = split(q, cache, shape, count: count, parts: parts, layout: layout, reference: true)
                let fast = split(q, cache, shape, count: count, parts: parts, layout: layout, reference: false)
                #expect(fast.allSatisfy { $0.isFinite }, "\(label)")
                #expect(TokenKernelTests.relativeError(ref, expected) < bound, "\(label): twin vs unsplit")
                #expect(TokenKernelTests.relativeError(fast, ref) < bound, "\(label): fast vs twin")
                #expect(TokenKernelTests.relativeError(fast, expected) < bound, "\(label): fast vs unsplit")
            }
        }
    }

    @Test("the split kernel matches its twin and the unsplit reference, any range split",
          arguments: [1, 2, 15, 16, 17, 573, 577], shapes)
    func matchesReference(count: Int, shape: Shape) {
        var rng = SplitMix(seed: UInt64(count * 7919 + shape.heads * 131 + shape.dim))
        let q = rng.floats(shape.heads * shape.dim, in: -2...2)
        let cache = Self.cache(shape, count: count, keyRange: -4...4, rng: &rng)
        Self.expectSplitMatches(q, cache, shape, count: count, parts: [1, 2, 3, 7], bound: 2e-5,
                                label: "count \(count) shape \(shape)")
        // One position: every head's output is its KV head's value row, exactly.
        if count == 1 {
            for layout in [Layout.half, .tiled] {
                let fast = Self.split(q, cache, shape, count: count, parts: 1, layout: layout, reference: false)
                let group = shape.heads / shape.kvHeads
                for h in 0..<shape.heads {
                    let kv = h / group
                    #expect(Array(fast[(h * shape.dim)..<((h + 1) * shape.dim)])
                            == Array(cache.floatValues[(kv * shape.dim)..<((kv + 1) * shape.dim)]), "\(layout) head \(h)")
                }
            }
        }
    }

    @Test("extreme scores: one huge logit, logits near the exp limits, all-equal scores",
          arguments: [2, 17, 577])
    func extremeScores(count: Int) {
        let shape = Shape(heads: 9, kvHeads: 3, dim: 64)
        var rng = SplitMix(seed: UInt64(count))
        // Keys near the top of the half range and a query that makes scores span thousands:
        // every range's maximum differs, most e^(s − m) underflow to 0.
        let big = rng.floats(shape.heads * shape.dim, in: -0.05...0.05)
        let cache = Self.cache(shape, count: count, keyRange: -6e4...6e4, rng: &rng)
        // A zero query: every score 0, the output is the mean of the value rows.
        let zero = [Float](repeating: 0, count: shape.heads * shape.dim)
        for (name, q) in [("large logits", big), ("all equal", zero)] {
            Self.expectSplitMatches(q, cache, shape, count: count, parts: [1, 2, 5], bound: 1e-4,
                                    label: "\(name) count \(count)")
        }
    }

    @Test("attendOne: the split path (pool ranges) against the grouped kernels and the twin",
          arguments: [3, 64, 577, 1500], [Shape(heads: 9, kvHeads: 3, dim: 64), Shape(heads: 4, kvHeads: 1, dim: 40)])
    func attendOneSplitOnAndOff(count: Int, shape: Shape) {
        var rng = SplitMix(seed: UInt64(count * 3 + shape.dim))
        let q = rng.floats(shape.heads * shape.dim, in: -2...2)
        let cache = Self.cache(shape, count: count, keyRange: -4...4, rng: &rng)
        let scale = 1 / Float(shape.dim).squareRoot()
        var scores = [Float](repeating: 0, count: shape.heads * count)
        func run(half: Bool, reference: Bool = false) -> [Float] {
            var out = [Float](repeating: .nan, count: shape.heads * shape.dim)
            if half {
                TokenKernels.attendOne(q: q, halfKeys: cache.halfKeys, halfValues: cache.halfValues, count: count,
                                       heads: shape.heads, kvHeads: shape.kvHeads, dim: shape.dim, stride: shape.dim,
                                       kvHeadStride: cache.capacity * shape.dim, scale: scale, scores: &scores, out: &out,
                                       reference: reference)
            } else {
                TokenKernels.attendOne(q: q, keys: cache.floatKeys, values: cache.floatValues, count: count,
                                       heads: shape.heads, kvHeads: shape.kvHeads, dim: shape.dim,
                                       stride: shape.kvHeads * shape.dim, scale: scale, scores: &scores, out: &out,
                                       reference: reference)
            }
            return out
        }
        TokenKernels.kernelSwitchLock.lock()
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let wasOn = TokenKernels.splitAttention, headMajorWas = TokenKernels.attentionHeadMajor
        defer { (TokenKernels.splitAttention, TokenKernels.attentionHeadMajor) = (wasOn, headMajorWas) }
        for (half, headMajor) in [(false, true), (true, true), (false, false), (true, false)] {
            TokenKernels.attentionHeadMajor = headMajor
            let label = "count \(count) shape \(shape) half \(half) head-major \(headMajor)"
            let ref = run(half: half, reference: true)
            TokenKernels.splitAttention = true
            let split = run(half: half)
            TokenKernels.splitAttention = false
            let grouped = run(half: half)
            #expect(split.allSatisfy { $0.isFinite }, "\(label)")
            #expect(TokenKernelTests.relativeError(split, ref) < 2e-5, "\(label): split vs twin")
            #expect(TokenKernelTests.relativeError(grouped, ref) < 1e-5, "\(label): grouped vs twin")
            // Both cache types hold the same values: the two split kernels agree to rounding.
            if half {
                TokenKernels.splitAttention = true
                #expect(TokenKernelTests.relativeError(split, run(half: false)) < 2e-5, "\(label): f16 vs f32 split")
                // Tiled keys (split whatever the switch says) against the same twin.
                let values = Self.restride(cache.halfValues, heads: shape.kvHeads, from: cache.capacity * shape.dim,
                                           to: cache.tiledStride)
                for (splitOn, reference) in [(true, false), (false, false), (true, true)] {
                    TokenKernels.splitAttention = splitOn
                    var out = [Float](repeating: .nan, count: shape.heads * shape.dim)
                    TokenKernels.attendOne(q: q, tiledHalfKeys: cache.tiledKeys, halfValues: values, count: count,
                                           heads: shape.heads, kvHeads: shape.kvHeads, dim: shape.dim,
                                           kvHeadStride: cache.tiledStride, scale: scale, scores: &scores, out: &out,
                                           reference: reference)
                    #expect(TokenKernelTests.relativeError(out, ref) < 2e-5,
                            "\(label): tiled (split \(splitOn), reference \(reference)) vs twin")
                }
            }
        }
    }

    @Test("the value prefetch (PTQ_ATTEND_PREFETCH) changes no result, bit for bit",
          arguments: [1, 15, 17, 573], [Shape(heads: 9, kvHeads: 3, dim: 64), Shape(heads: 8, kvHeads: 2, dim: 72),
                                        Shape(heads: 5, kvHeads: 1, dim: 16), Shape(heads: 2, kvHeads: 2, dim: 128)])
    func prefetchChangesNothing(count: Int, shape: Shape) {
        var rng = SplitMix(seed: UInt64(count * 13 + shape.dim))
        let q = rng.floats(shape.heads * shape.dim, in: -2...2)
        let cache = Self.cache(shape, count: count, keyRange: -4...4, spare: 0, rng: &rng)
        TokenKernels.kernelSwitchLock.lock()
        defer { TokenKernels.kernelSwitchLock.unlock() }
        let was = ck_attend_prefetch_enabled()
        defer { ck_set_attend_prefetch_enabled(was) }
        for layout in Layout.allCases {
            for parts in [1, 3] {
                ck_set_attend_prefetch_enabled(1)
                let on = Self.split(q, cache, shape, count: count, parts: parts, layout: layout, reference: false)
                ck_set_attend_prefetch_enabled(0)
                let off = Self.split(q, cache, shape, count: count, parts: parts, layout: layout, reference: false)
                #expect(on.map(\.bitPattern) == off.map(\.bitPattern), "\(layout) count \(count) shape \(shape) parts \(parts)")
                #expect(on.allSatisfy { $0.isFinite })
            }
        }
    }

    @Test("tiled keys: no spare capacity (the last tile partly beyond count), ranges inside tiles",
          arguments: [1, 15, 16, 17, 31, 32, 33], [Shape(heads: 9, kvHeads: 3, dim: 64), Shape(heads: 4, kvHeads: 1, dim: 40),
                                                    Shape(heads: 2, kvHeads: 2, dim: 128)])
    func tiledAtCapacityEdges(count: Int, shape: Shape) {
        var rng = SplitMix(seed: UInt64(count * 11 + shape.dim))
        let q = rng.floats(shape.heads * shape.dim, in: -2...2)
        let cache = Self.cache(shape, count: count, keyRange: -4...4, spare: 0, rng: &rng)
        Self.expectSplitMatches(q, cache, shape, count: count, parts: [1, 2, 3, 5], bound: 2e-5,
                                label: "capacity \(count) shape \(shape)")
    }

    /// The tiled key store and widen: every element where the layout says, rounded as
    /// `ck_f32_to_f16_one` rounds, and read back exactly; other positions untouched.
    @Test(arguments: [16, 40, 64, 72, 7])
    func tiledKeyStoreAndWiden(dim: Int) {
        var rng = SplitMix(seed: UInt64(dim))
        let positions = 37, stride = (positions + 15) / 16 * 16 * dim
        var head = [UInt16](repeating: 0x7E00, count: stride)
        var rows: [[Float]] = []
        for j in 0..<positions {
            var row = rng.floats(dim, in: -70000...70000)
            if j == 3 { row[0] = 1e-8 }  // a subnormal half
            rows.append(row)
            head.withUnsafeMutableBufferPointer { TokenKernels.roundToHalf(row, intoTiledHead: $0.baseAddress!, position: j, dim: dim) }
        }
        for j in 0..<positions {
            for d in 0..<dim {
                #expect(head[(j / 16) * 16 * dim + 16 * d + j % 16] == ck_f32_to_f16_one(rows[j][d]), "position \(j) d \(d)")
            }
            var back = [Float](repeating: .nan, count: dim)
            head.withUnsafeBufferPointer { h in
                back.withUnsafeMutableBufferPointer {
                    TokenKernels.widenHalf(tiledHead: h.baseAddress!, position: j, dim: dim, into: $0.baseAddress!)
                }
            }
            #expect(back.map(\.bitPattern) == rows[j].map { ck_f16_to_f32_one(ck_f32_to_f16_one($0)).bitPattern })
        }
        // Positions 37..<48 of the last tile were never written.
        for j in positions..<48 { for d in 0..<dim { #expect(head[2 * 16 * dim + 16 * d + j % 16] == 0x7E00) } }
    }
}
