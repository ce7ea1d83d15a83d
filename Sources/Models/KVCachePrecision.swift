/// Element type of a decoder's key/value cache.
///
/// `f32` keeps keys and values exactly as the projections produce them (evaluation, verification
/// and calibration default to it). `f16` rounds them to IEEE half (to nearest even) when they are
/// stored and reads the rounded values for every position, prefill and decode alike, as
/// llama.cpp's default cache does: half the bytes a decoded token reads from the cache.
public enum KVCachePrecision: String, Sendable, CaseIterable, Codable {
    case f32, f16

    /// Bytes of one stored key or value element.
    public var bytesPerElement: Int {
        switch self {
        case .f32: 4
        case .f16: 2
        }
    }
}
