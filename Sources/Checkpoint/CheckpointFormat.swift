import PTQCore

/// Constants of the HDF5 checkpoint layout (documented in docs/checkpoint-format.md).
public enum CheckpointFormat {
    /// Root attribute `format` that marks a PTQKit checkpoint.
    public static let formatName = "ptqkit-checkpoint"
    /// Root attribute `format_version`; readers refuse newer versions.
    public static let version = 1
    static let configGroup = "config"
    static let tokenizerGroup = "tokenizer"
    /// Optional ids are stored as -1 when absent.
    static let noID = -1
}

extension ModelConfig {
    /// Config fields as stored under `/config` (snake_case attribute names).
    enum Field: String, CaseIterable {
        case architecture, name, vocab_size, hidden_size, intermediate_size, layer_count,
             head_count, kv_head_count, head_dim, max_positions, rope_theta, norm_epsilon,
             activation, tied_embeddings, type_vocab_size, pooling, normalize_embeddings
    }
}
