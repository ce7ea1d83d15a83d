// swift-tools-version: 6.0
import PackageDescription

// Numeric modules get optimisation and AVX2/FMA/F16C code generation even in debug builds:
// unoptimised numeric Swift is 30-140x slower, which would make tests on real models crawl.
// The CLI checks the CPU at start-up so another CPU gets a message instead of SIGILL.
let numericSwiftSettings: [SwiftSetting] = [
    .unsafeFlags(["-O", "-Xcc", "-march=x86-64-v3"], .when(configuration: .debug)),
    .unsafeFlags(["-Xcc", "-march=x86-64-v3"], .when(configuration: .release)),
]

let package = Package(
    name: "PTQKit",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "PTQKit", targets: ["PTQKit"]),
        .executable(name: "ptq", targets: ["ptq"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
    ],
    targets: [
        // C libraries from Debian (libhdf5-dev, libopenblas-dev, libzstd-dev).
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // Intrinsics Swift cannot reach: AVX2 int8 dot products behind a run-time CPU check.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O2"])]),

        // Shared vocabulary: model config, tokenizer spec, tensors, errors, progress.
        .target(name: "PTQCore"),
        .target(name: "Tokenizers", dependencies: ["PTQCore"], swiftSettings: numericSwiftSettings),
        // HDF5 checkpoints and the GGUF / safetensors importers.
        .target(name: "Checkpoint", dependencies: ["PTQCore", "CHDF5"], swiftSettings: numericSwiftSettings),
        // Low-level compute: BLAS wrappers, element-wise ops, int8 kernels.
        .target(name: "Kernels", dependencies: ["PTQCore", "COpenBLAS", "CKernels"],
                swiftSettings: numericSwiftSettings, linkerSettings: [.linkedLibrary("m")]),
        // Model forward passes written against the LinearOp seam.
        .target(name: "Models", dependencies: ["PTQCore", "Kernels", "Checkpoint"],
                swiftSettings: numericSwiftSettings),
        .target(name: "Evaluation", dependencies: ["PTQCore", "Models", "Tokenizers", "Kernels"],
                swiftSettings: numericSwiftSettings),
        // Calibration: observers at quantization points, statistics file.
        .target(name: "Calibration", dependencies: ["PTQCore", "Models", "Checkpoint", "Tokenizers", "Kernels", "CHDF5"],
                swiftSettings: numericSwiftSettings),
        // YAML recipes: schema, validation with line numbers, per-tensor plan.
        .target(name: "Recipes", dependencies: ["PTQCore", "Yams"]),
        // Quantizer protocol, registry and one file per method.
        .target(name: "Quantizers", dependencies: ["PTQCore", "Calibration", "Recipes", "Kernels"],
                swiftSettings: numericSwiftSettings),
        // The .ptq container: manifest, bit-packed payloads, zstd sections, checksums.
        .target(name: "Packing", dependencies: ["PTQCore", "CZstd"], swiftSettings: numericSwiftSettings),
        // Low-bit LinearOps (int8 GEMM, int4 group kernels) and the packed-model loader.
        .target(name: "QuantizedRuntime", dependencies: ["PTQCore", "Kernels", "Models", "Packing"],
                swiftSettings: numericSwiftSettings),
        // Library facade for Swift programs.
        .target(name: "PTQKit", dependencies: ["PTQCore", "Tokenizers", "Checkpoint", "Kernels", "Models", "Evaluation",
                                               "Calibration", "Recipes", "Quantizers", "Packing", "QuantizedRuntime"]),
        // Command implementations (a library so tests can run commands in process).
        .target(name: "PTQCLI", dependencies: ["PTQKit", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "ptq", dependencies: ["PTQCLI"]),

        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "PTQCore"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "PTQCore"]),
        .testTarget(name: "PackingTests", dependencies: ["Packing", "PTQCore"]),
        .testTarget(name: "RecipesTests", dependencies: ["Recipes", "PTQCore"]),
        .testTarget(name: "QuantizedRuntimeTests", dependencies: ["QuantizedRuntime", "Kernels", "Models", "PTQCore"]),
        .testTarget(name: "PTQKitTests", dependencies: ["PTQKit", "PTQCLI", "Checkpoint", "Quantizers", "CHDF5"]),
    ]
)
