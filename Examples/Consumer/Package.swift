// swift-tools-version: 6.0
import PackageDescription

// A package that uses PTQKit the way another project would: as a versioned dependency. The URL
// comes from PTQKIT_URL (scripts/consumer-check points it at a tagged temporary clone, which
// SwiftPM treats like a remote repository: unsafe flags there would be refused).
let url = Context.environment["PTQKIT_URL"] ?? "https://github.com/ptqkit/PTQKit.git"

let package = Package(
    name: "Consumer",
    platforms: [.macOS(.v15)],
    dependencies: [.package(url: url, from: "0.1.0")],
    targets: [
        .executableTarget(name: "Consumer", dependencies: [.product(name: "PTQKit", package: "PTQKit")]),
    ]
)
