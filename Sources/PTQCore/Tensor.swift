/// Storage types for floating-point tensors in checkpoints and importers.
public enum DType: String, Codable, Sendable, CaseIterable {
    case float32, float16, bfloat16

    /// Bytes per element.
    public var byteCount: Int {
        switch self {
        case .float32: 4
        case .float16, .bfloat16: 2
        }
    }
}

/// A dense, row-major float32 tensor.
///
/// The last dimension is contiguous: a linear weight of shape `[out, in]` stores output row `o`
/// at `data[o * in ..< (o + 1) * in]`, the Hugging Face layout.
public struct Tensor: Sendable, Equatable {
    public var shape: [Int]
    public var data: [Float]

    public init(shape: [Int], data: [Float]) {
        precondition(shape.reduce(1, *) == data.count, "tensor shape \(shape) does not match \(data.count) elements")
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: shape.reduce(1, *))
    }

    public var count: Int { data.count }
}

extension Float {
    /// Decodes an IEEE 754 binary16 bit pattern.
    @inlinable
    public init(halfBits bits: UInt16) {
        self = Float(Float16(bitPattern: bits))
    }

    /// Decodes a bfloat16 bit pattern (the high half of a float32).
    @inlinable
    public init(bfloat16Bits bits: UInt16) {
        self = Float(bitPattern: UInt32(bits) << 16)
    }

    /// Rounds to bfloat16 (round to nearest even), returning the bit pattern.
    @inlinable
    public var bfloat16Bits: UInt16 {
        let bits = bitPattern
        if isNaN { return UInt16(bits >> 16) | 0x40 }
        let rounding = ((bits >> 16) & 1) &+ 0x7FFF
        return UInt16((bits &+ rounding) >> 16)
    }
}
