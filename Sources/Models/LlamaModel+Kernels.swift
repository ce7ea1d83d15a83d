extension LlamaModel {
    /// How many of the model's linear layers (decoder layers and the LM head) run each kernel path
    /// (`LinearOp.kernelDescription`, or the type name where an implementation does not say), most
    /// frequent first: `ptq bench` prints it, so a report says which kernels it measured.
    public var kernelPaths: [(description: String, count: Int)] {
        var counts: [String: Int] = [:]
        func add(_ op: any LinearOp) {
            let text = op.kernelDescription
            counts[text.isEmpty ? String(describing: type(of: op)) : text, default: 0] += 1
        }
        for layer in layers {
            for op in [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down] { add(op) }
        }
        add(lmHead)
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .map { (description: $0.key, count: $0.value) }
    }

    /// Bytes held per kernel path (`LinearOp.storageBytes` summed over the layers that run it):
    /// `ptq bench` prints it, so a memory figure can be split by layer type.
    public var kernelStorageBytes: [String: Int] {
        var bytes: [String: Int] = [:]
        func add(_ op: any LinearOp) {
            let text = op.kernelDescription
            bytes[text.isEmpty ? String(describing: type(of: op)) : text, default: 0] += op.storageBytes
        }
        for layer in layers {
            for op in [layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down] { add(op) }
        }
        add(lmHead)
        return bytes
    }
}
