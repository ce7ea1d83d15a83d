import Kernels

extension PTQ {
    /// Memory read bandwidth in bytes per second with `threadCount` threads: the best of five
    /// parallel streaming reads of 256 MiB. `ptq bench` divides it by the bytes a decoded token
    /// reads to give the memory-bandwidth bound of decode.
    public static func measureReadBandwidth() -> Double { TokenKernels.measureReadBandwidth() }

    /// Whether the int8 kernels use AVX-512 VNNI (`vpdpbusd`) on this CPU (chosen at run time).
    public static var usesVNNIKernels: Bool { TokenKernels.usesVNNI }
}
