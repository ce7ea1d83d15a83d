// swift-tools-version: 6.0
import PackageDescription

// No unsafe flags, so that other packages can depend on a tagged version of PTQKit. Swift code
// builds for the baseline of its platform; the kernels that need AVX2/FMA/F16C live in the C
// target `CKernels` with function-level target attributes behind a run-time CPU check (every
// one has a portable reference twin). Numeric code is meant for release builds: tests on the
// real models run with `-c release` (scripts/test).
let package = Package(
    name: "PTQKit",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PTQKit", targets: ["PTQKit"]),
        .executable(name: "ptq", targets: ["ptq"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        // `swift package generate-documentation` (DocC catalog in Sources/PTQKit/PTQKit.docc).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        // C libraries from Debian (libhdf5-dev, libopenblas-dev, libzstd-dev).
        .systemLibrary(name: "CHDF5", pkgConfig: "hdf5", providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // Intrinsics Swift cannot reach: AVX2 int8 dot products behind a run-time CPU check.
        .target(name: "CKernels"),

        // Shared vocabulary: model config, tokenizer spec, tensors, errors, progress.
        .target(name: "PTQCore"),
        .target(name: "Tokenizers", dependencies: ["PTQCore"]),
        // HDF5 checkpoints and the GGUF / safetensors importers.
        .target(name: "Checkpoint", dependencies: ["PTQCore", "CHDF5"]),
        // Low-level compute: BLAS wrappers, element-wise ops, int8 kernels.
        .target(name: "Kernels", dependencies: ["PTQCore", "COpenBLAS", "CKernels"],
                linkerSettings: [.linkedLibrary("m")]),
        // Model forward passes written against the LinearOp seam.
        .target(name: "Models", dependencies: ["PTQCore", "Kernels", "Checkpoint"]),
        .target(name: "Evaluation", dependencies: ["PTQCore", "Models", "Tokenizers", "Kernels"]),
        // Calibration: observers at quantization points, statistics file.
        .target(name: "Calibration", dependencies: ["PTQCore", "Models", "Checkpoint", "Tokenizers", "Kernels", "CHDF5"]),
        // YAML recipes: schema, validation with line numbers, per-tensor plan (planned against the
        // model family's structure, hence Models).
        .target(name: "Recipes", dependencies: ["PTQCore", "Models", "Yams"]),
        // Quantizer protocol, registry and one file per method.
        .target(name: "Quantizers", dependencies: ["PTQCore", "Calibration", "Recipes", "Kernels"]),
        // Training on CPU: hand-written LLaMA block backward pass, AdamW, PTQ1.61's block-wise
        // scale optimisation and its LoRA quantization preprocessing.
        .target(name: "Training", dependencies: ["PTQCore", "Kernels", "Models", "Checkpoint"]),
        // The .ptq container: manifest, bit-packed payloads, zstd sections, checksums.
        .target(name: "Packing", dependencies: ["PTQCore", "CZstd"]),
        // Low-bit LinearOps (int8 GEMM, int4 group kernels) and the packed-model loader.
        .target(name: "QuantizedRuntime", dependencies: ["PTQCore", "Kernels", "Models", "Packing"]),
        // Library facade for Swift programs.
        .target(name: "PTQKit", dependencies: ["PTQCore", "Tokenizers", "Checkpoint", "Kernels", "Models", "Evaluation",
                                               "Calibration", "Recipes", "Quantizers", "Packing", "QuantizedRuntime", "Training"]),
        // Command implementations (a library so tests can run commands in process).
        .target(name: "PTQCLI", dependencies: ["PTQKit", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "ptq", dependencies: ["PTQCLI"]),

        // Test support: counts the calling thread's heap allocations (replaces malloc and
        // relatives in the test executable only; no product depends on it).
        .target(name: "CAllocationCounter", path: "Tests/CAllocationCounter"),
        .testTarget(name: "TokenizersTests", dependencies: ["Tokenizers", "PTQCore"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "PTQCore"]),
        .testTarget(name: "PackingTests", dependencies: ["Packing", "PTQCore"]),
        .testTarget(name: "RecipesTests", dependencies: ["Recipes", "Models", "PTQCore"]),
        .testTarget(name: "QuantizedRuntimeTests", dependencies: ["QuantizedRuntime", "Kernels", "Models", "PTQCore"]),
        .testTarget(name: "PTQKitTests", dependencies: ["PTQKit", "PTQCLI", "Checkpoint", "Quantizers", "CHDF5", "Training",
                                                     "CAllocationCounter"]),
    ]
)
