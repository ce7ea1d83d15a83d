extension ModelConfig {
    /// A stable fingerprint of the model's structure: FNV-1a 64 over every canonical tensor
    /// name and shape. Calibration statistics and packed files carry it so that data from one
    /// model is never applied to another.
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
}
