import Kernels
import Models
import PTQCore

/// A SplitQuant linear layer (`SplitWeight`) with float activations, executed in one pass over
/// its packed indices (codes of ≤ 4 bits in 5-bit fields code | cluster bit 0 with cluster bit 1
/// in mask planes, 0.75 bytes per weight; wider codes as `cluster << bits | code` bytes or halfwords): per row and group the kernel builds the
/// 3·2^bits-entry value table (the cluster id selects the scale and zero point) and accumulates
/// table[index]·x. The result equals the sum of the three quantized parts; the runtime keeps
/// indices, scales and zero points, never the float weight matrix.
///
/// One activation row runs the GEMV; several rows dequantize tiles of output rows into scratch
/// and multiply them with sgemm, so each tile's indices are decoded once for all rows (the same
/// split as `IntegerLinear`'s weight-only path).
public final class SplitLinear: LinearOp {
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let weightBits: Int
    public let groupSize: Int
    public let bias: [Float]?
    private let indices: SplitKernels.Indices
    private let scales: [Float]
    private let zeros: [Float]

    /// Bytes held for this layer: indices, scales, zero points and bias.
    public var weightBytes: Int { storageBytes }

    public var storageBytes: Int {
        indices.byteCount + 4 * (scales.count + zeros.count + (bias?.count ?? 0))
    }

    /// What runs, for reports: e.g. `split W2A16 per-channel (12-entry tables)`.
    public var kernelDescription: String {
        let grouping = groupSize >= inFeatures ? "per-channel" : "g\(groupSize)"
        return "split W\(weightBits)A16 \(grouping) (\(SplitWeight.clusterCount << weightBits)-entry tables)"
    }

    /// Converts a SplitQuant `QuantizedLinear` to run-time storage; throws a `PTQError` naming
    /// the layer for inconsistent shapes, ids or codes out of range, non-finite parameters or
    /// quantized activations.
    public init(_ q: QuantizedLinear) throws(PTQError) {
        let layer = q.name.isEmpty ? "quantized linear" : q.name
        func fail(_ message: String) -> PTQError { PTQError("\(layer): \(message)") }
        guard case .split(let w) = q.weight else {
            throw fail("weight format '\(q.weight.formatName)' is not split")
        }
        guard q.activation == nil else {
            throw fail("split weights run with float activations only (the layer asks for int\(q.activation!.bits) activations)")
        }
        guard (2...8).contains(w.bits) else { throw fail("\(w.bits)-bit split codes are not supported (2…8 bits)") }
        guard w.rows > 0, w.columns > 0 else { throw fail("empty weight \(w.rows)×\(w.columns)") }
        guard w.groupSize > 0 else { throw fail("group size \(w.groupSize) must be positive") }
        let count = w.rows * w.columns
        guard w.codes.count == count, w.clusters.count == count else {
            throw fail("\(w.codes.count) codes and \(w.clusters.count) cluster ids for a \(w.rows)×\(w.columns) matrix")
        }
        let parameters = w.rows * w.groupsPerRow * SplitWeight.clusterCount
        guard w.scales.count == parameters, w.zeros.count == parameters else {
            throw fail("\(w.scales.count) scales and \(w.zeros.count) zero points, expected \(parameters) "
                       + "(\(w.rows) rows × \(w.groupsPerRow) groups × 3 clusters)")
        }
        func invalidElement(_ bad: Int) -> PTQError {
            Int(w.clusters[bad]) >= SplitWeight.clusterCount
                ? fail("cluster id \(w.clusters[bad]) at element \(bad) is not 0, 1 or 2")
                : fail("weight code \(w.codes[bad]) at element \(bad) does not fit \(w.bits) bits")
        }
        // The packed layout checks ids and codes in its one pass over them (issue 13: the separate
        // Swift scans cost about as much as the transform); the byte layouts check them here.
        let packed4 = w.bits <= SplitKernels.maxPackedBits && SplitKernels.prefersPacked4
        if !packed4, let bad = w.clusters.indices.first(where: {
            Int(w.clusters[$0]) >= SplitWeight.clusterCount || Int(w.codes[$0]) >> w.bits != 0
        }) {
            throw invalidElement(bad)
        }
        if let bad = w.scales.indices.first(where: { !w.scales[$0].isFinite || !w.zeros[$0].isFinite }) {
            throw fail("scale or zero point \(bad) (row \(bad / (3 * w.groupsPerRow))) is not finite")
        }
        if let bias = q.bias, bias.count != w.rows {
            throw fail("bias has \(bias.count) values for \(w.rows) output features")
        }
        var packedIndices: SplitKernels.Indices?
        if packed4 {
            // 0.75 bytes per weight, looked up in registers (AVX-512).
            let (p, bad) = SplitKernels.checkedPack4(clusters: w.clusters, codes: w.codes, rows: w.rows,
                                                     columns: w.columns, bits: w.bits)
            if let bad { throw invalidElement(bad) }
            packedIndices = p
        }
        name = q.name
        inFeatures = w.columns
        outFeatures = w.rows
        weightBits = w.bits
        groupSize = min(w.groupSize, w.columns)
        bias = q.bias
        scales = w.scales
        zeros = w.zeros
        if let packedIndices {
            indices = packedIndices
        } else if w.bits <= SplitKernels.maxByteIndexBits {
            var packed = [UInt8](repeating: 0, count: count)
            for i in 0..<count { packed[i] = w.clusters[i] << UInt8(w.bits) | w.codes[i] }
            indices = .bytes(packed)
        } else {
            var packed = [UInt16](repeating: 0, count: count)
            for i in 0..<count { packed[i] = UInt16(w.clusters[i]) << UInt16(w.bits) | UInt16(w.codes[i]) }
            indices = .halfwords(packed)
        }
    }

    /// Rows up to which one GEMV per row beats dequantized tiles + sgemm (as `IntegerLinear`).
    static let gemvRowLimit = 8

    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        let k = inFeatures, n = outFeatures
        scales.withUnsafeBufferPointer { s in
            zeros.withUnsafeBufferPointer { z in
                if rows <= Self.gemvRowLimit {
                    for i in 0..<rows {
                        SplitKernels.gemv(indices, rows: n, columns: k, groupSize: groupSize, bits: weightBits,
                                          scales: s.baseAddress!, zeros: z.baseAddress!, x: x + i * k, y: y + i * n)
                    }
                } else {
                    SplitKernels.dequantizedProduct(indices, outFeatures: n, inFeatures: k, groupSize: groupSize,
                                                    bits: weightBits, scales: s.baseAddress!, zeros: z.baseAddress!,
                                                    x: x, rows: rows, y: y)
                }
            }
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: rows, width: n, into: y) }
        }
    }

    /// The scalar reference GEMV for one activation row (tests).
    public func forwardReference(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>) {
        scales.withUnsafeBufferPointer { s in
            zeros.withUnsafeBufferPointer { z in
                SplitKernels.gemv(indices, rows: outFeatures, columns: inFeatures, groupSize: groupSize, bits: weightBits,
                                  scales: s.baseAddress!, zeros: z.baseAddress!, x: x, y: y, reference: true)
            }
        }
        if let bias {
            bias.withUnsafeBufferPointer { Ops.addBias($0.baseAddress!, rows: 1, width: outFeatures, into: y) }
        }
    }
}
