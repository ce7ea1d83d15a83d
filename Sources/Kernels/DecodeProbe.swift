import CKernels

/// Opt-in timing probe of a decode token (`ck_probe.h`): with `PTQ_DECODE_PROFILE=1` in the
/// environment, the wall time of each phase of a token and the pool's per-job figures (the
/// caller's own share, its wait for the other threads, the time between jobs) are summed and
/// printed to stderr at exit. Off, each call is one load and a branch.
public enum DecodeProbe {
    /// The phases of a decode token, in the order they run in a layer.
    public enum Phase: Int32 {
        case embedding, attentionNorm, qkv, ropeAndAppend, attention, outputProjection, residual, mlpNorm,
             gateUp, siluUp, down, finalNorm, head
    }

    /// Starts a token at `depth` cached positions (reads the environment on the first call).
    @inline(__always)
    public static func beginToken(depth: Int) { ck_probe_token_begin(Int32(clamping: depth)) }

    /// Charges the time since the previous mark (or the token's start) to `phase`.
    @inline(__always)
    public static func mark(_ phase: Phase) { ck_probe_mark(phase.rawValue) }

    /// Ends the token.
    @inline(__always)
    public static func endToken() { ck_probe_token_end() }
}
