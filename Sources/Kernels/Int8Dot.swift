import CKernels

/// int8 dot products (AVX2 when the CPU has it, else a portable loop).
public enum Int8Dot {
    /// Whether the fast AVX2 path is in use.
    public static var usesAVX2: Bool { ck_cpu_has_avx2() != 0 }

    /// Exact int32 dot product of `n` int8 codes in [-127, 127].
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Int8>, _ b: UnsafePointer<Int8>, count n: Int) -> Int32 {
        ck_dot_i8(a, b, n)
    }

    /// The scalar reference twin.
    public static func dotReference(_ a: UnsafePointer<Int8>, _ b: UnsafePointer<Int8>, count n: Int) -> Int32 {
        ck_dot_i8_ref(a, b, n)
    }
}
