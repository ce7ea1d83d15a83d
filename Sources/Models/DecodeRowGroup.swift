/// Layers that read the same decode row (q/k/v, gate/up) run as one unit: one pool job for all
/// of them instead of one or more per layer. Formats opt in through `RowGroupingLinear`.
public protocol DecodeRowGroup: Sendable {
    /// One input row through every layer of the group, in order, into one output per layer
    /// (`third` only for a group of three). Each output equals that layer's own `forward` of
    /// the row. Allocates nothing (decode path).
    func forwardRow(_ x: UnsafePointer<Float>, into first: UnsafeMutablePointer<Float>,
                    _ second: UnsafeMutablePointer<Float>, _ third: UnsafeMutablePointer<Float>?)
}

/// A linear layer type that can group layers reading the same input (`DecodeRowGroup`).
public protocol RowGroupingLinear: LinearOp {
    /// A group running `layers` (2 or 3, in order, all reading the same input), or nil when
    /// they cannot run as one (another type or kernel path, a bias, different input widths).
    static func rowGroup(_ layers: [any LinearOp]) -> (any DecodeRowGroup)?
}

/// The group of `layers` their first layer's type forms, if any.
func decodeRowGroup(_ layers: [any LinearOp]) -> (any DecodeRowGroup)? {
    guard let first = layers.first as? any RowGroupingLinear else { return nil }
    return type(of: first).rowGroup(layers)
}
