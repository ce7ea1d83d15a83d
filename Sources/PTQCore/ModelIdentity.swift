extension ModelConfig {
    /// A stable fingerprint of the model's structure: FNV-1a 64 over every canonical tensor
    /// name and shape. Two models of the same architecture and size share it; use
    /// `identity(weights:)` to tell them apart.
    public var identity: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ text: String) {
            for byte in text.utf8 {
                hash ^= UInt64(byte)
                hash = hash &* 0x0000_0100_0000_01B3
            }
        }
        mix(architecture.rawValue)
        for (name, shape) in expectedTensors {
            mix(name)
            mix(shape.map(String.init).joined(separator: "x"))
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The structure fingerprint plus a fingerprint of the weights: FNV-1a 64 over the bit
    /// patterns of every normalisation weight (RMSNorm / LayerNorm vectors). Calibration
    /// statistics and packed files carry it, so that statistics gathered on one model are refused
    /// for another, including a same-shaped model with other weights (a fine-tune). Norm weights
    /// are cheap to read, never quantized, and differ between any two trained models.
    public func identity(weights tensor: (String) throws(PTQError) -> Tensor) throws(PTQError) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for (name, shape) in expectedTensors where shape.count == 1 && name.contains("norm") {
            for value in try tensor(name).data {
                var bits = value.bitPattern
                for _ in 0..<4 {
                    hash ^= UInt64(bits & 0xFF)
                    hash = hash &* 0x0000_0100_0000_01B3
                    bits >>= 8
                }
            }
        }
        let hex = String(hash, radix: 16)
        return identity + "-" + String(repeating: "0", count: 16 - hex.count) + hex
    }
}
