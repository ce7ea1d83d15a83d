import Dispatch
import Foundation
import PTQCore

/// Reads and writes `.ptq` packed model files (format described in docs/packed-format.md).
///
/// A packed file is a 64-byte header, 64-byte-aligned sections (a JSON manifest, the tokenizer
/// as JSON, and one section per payload: bit-packed codes, float32 scales/zeros/biases/tensors),
/// and a section table with per-section CRC-32s. Readers check the header, the table and each
/// section's CRC before decompressing anything, so damage is reported with the section (and
/// tensor) it hit instead of surfacing as a zstd error or a wrong model.
public enum PackedFile {
    /// The newest container version this build writes (and reads, with every older one).
    public static let formatVersion = Int(PackedLayout.formatVersion)

    // MARK: - Writing

    /// Writes `model` to `path` atomically (temporary file in the same folder, then rename).
    /// `compressionLevel` is a zstd level (1…19 typical; 3 is zstd's default).
    public static func write(_ model: PackedModel, to path: String, compressionLevel: Int = 3) throws(PTQError) {
        // The one-shot write is the incremental writer fed everything at once, so a model
        // written piece by piece (`PackedFileWriter`) is byte-identical to one written whole.
        let writer = try PackedFileWriter(path: path, compressionLevel: compressionLevel)
        try writer.append(model)
        try writer.finish(model)
    }

    /// Where everything goes: header, sections at 64-byte boundaries in the given order,
    /// the table at the next boundary, then the table's CRC-32.
    struct Layout {
        var table: [PackedSection] = []
        var tableOffset: Int
        /// Table entries followed by their CRC-32.
        var tableBytes: [UInt8]
        var fileSize: Int
        var header: [UInt8]

        init(_ sections: [EncodedSection], version: UInt32 = 1) {
            var offset = PackedLayout.headerSize
            for s in sections {
                offset = PackedLayout.aligned(offset)
                table.append(PackedSection(name: s.name, kind: s.kind, offset: offset, storedSize: s.stored.count,
                                           rawSize: s.rawSize, codec: s.codec, crc32: CRC32.checksum(s.stored)))
                offset += s.stored.count
            }
            tableOffset = PackedLayout.aligned(offset)
            (tableBytes, fileSize, header) = Self.tail(table, tableOffset: tableOffset, version: version)
        }

        /// The table bytes (entries and their CRC-32), the file size and the header of a file
        /// whose sections are `table` and whose table starts at `tableOffset`, at format `version`.
        static func tail(_ table: [PackedSection], tableOffset: Int,
                         version: UInt32) -> (tableBytes: [UInt8], fileSize: Int, header: [UInt8]) {
            let entries = PackedLayout.encodeTable(table)
            var w = ByteWriter()
            w.bytes(entries)
            w.u32(CRC32.checksum(entries))
            let fileSize = tableOffset + w.data.count
            let header = PackedLayout.Header(version: version, flags: 0,
                                             sectionCount: UInt32(table.count), tableOffset: UInt64(tableOffset),
                                             tableSize: UInt64(entries.count), fileSize: UInt64(fileSize)).encoded()
            return (w.data, fileSize, header)
        }

        /// The whole file in memory (tests and tools; `write` streams instead).
        func assemble(_ sections: [EncodedSection]) -> [UInt8] {
            var out = header
            for (s, entry) in zip(sections, table) {
                out.append(contentsOf: repeatElement(0, count: entry.offset - out.count))
                out.append(contentsOf: s.stored)
            }
            out.append(contentsOf: repeatElement(0, count: tableOffset - out.count))
            out.append(contentsOf: tableBytes)
            return out
        }
    }

    /// One payload to encode: its section name, kind and source values.
    struct PayloadJob: Sendable {
        enum Source: Sendable {
            case floats([Float])
            /// Stored as IEEE float16 (round to nearest even).
            case halves([Float])
            case codes([UInt8], bits: Int)
        }
        var name: String
        var kind: PackedSectionKind
        var source: Source
    }

    struct EncodedSection: Sendable {
        var name: String
        var kind: PackedSectionKind
        var codec: PackedCodec
        var rawSize: Int
        var stored: [UInt8]
    }

    /// Validates the model and lists its payload sections and manifest entries.
    struct WritePlan {
        static let tokenizerSection = "tokenizer"
        var jobs: [PayloadJob] = []
        var manifest: PackedManifest

        init(model: PackedModel, path: String) throws(PTQError) {
            func fail(_ message: String) -> PTQError { PTQError.file(path, message) }
            manifest = PackedManifest(
                formatVersion: PackedFile.formatVersion, toolVersion: model.toolVersion, config: model.config,
                modelIdentity: model.modelIdentity, statsHash: model.statsHash, recipe: model.recipe,
                metadata: model.metadata, tokenizer: Self.tokenizerSection, floatTensors: [], quantizedLinears: [])
            var names: Set<String> = ["manifest", Self.tokenizerSection]
            func claim(_ name: String) throws(PTQError) -> String {
                guard names.insert(name).inserted else { throw fail("two sections would be named '\(name)'") }
                guard name.utf8.count <= Int(UInt16.max) else { throw fail("section name '\(name.prefix(80))…' is too long") }
                return name
            }
            for (name, tensor) in model.floatTensors.sorted(by: { $0.key < $1.key }) {
                guard tensor.shape.allSatisfy({ $0 >= 0 }),
                      let count = checkedProduct(tensor.shape), count == tensor.data.count else {
                    throw fail("float tensor '\(name)': shape \(tensor.shape) does not match \(tensor.data.count) values")
                }
                let section = try claim("tensor:\(name)")
                // Matrices (embeddings, tied LM head, float linears) are stored as float16: half the
                // bytes for a relative error of 2^-11; vectors (norms, biases) stay float32.
                let half = tensor.shape.count >= 2
                jobs.append(PayloadJob(name: section, kind: .floatTensor,
                                       source: half ? .halves(tensor.data) : .floats(tensor.data)))
                manifest.floatTensors.append(.init(name: name, shape: tensor.shape, section: section, storedBytes: 0,
                                                   dtype: half ? "float16" : "float32"))
            }
            for (key, linear) in model.quantizedLinears.sorted(by: { $0.key < $1.key }) {
                func bad(_ what: String) -> PTQError { fail("quantized linear '\(key)': \(what)") }
                guard linear.name == key else { throw bad("its name is '\(linear.name)'; the dictionary key must match") }
                if case .split(let w) = linear.weight {
                    try planSplit(key: key, linear: linear, weight: w, claim: claim, fail: bad)
                    continue
                }
                if case .binary(let w) = linear.weight {
                    try planBinary(key: key, linear: linear, weight: w, claim: claim, fail: bad)
                    continue
                }
                if case .floatingPoint(let w) = linear.weight {
                    try appendFloatingPoint(key: key, linear: linear, weight: w, claim: claim, fail: bad)
                    continue
                }
                guard case .integer(let w) = linear.weight else {
                    throw bad("weight format '\(linear.weight.formatName)' cannot be packed")
                }
                guard (1...8).contains(w.bits) else { throw bad("\(w.bits)-bit codes are not supported (1…8)") }
                guard w.rows >= 0, w.columns >= 0, w.groupSize >= 1 else {
                    throw bad("invalid geometry rows \(w.rows), columns \(w.columns), group size \(w.groupSize)")
                }
                guard let codeCount = checkedProduct([w.rows, w.columns]), w.codes.count == codeCount else {
                    throw bad("\(w.codes.count) codes for a \(w.rows)×\(w.columns) weight")
                }
                let groupCount = w.rows * w.groupsPerRow
                guard w.scales.count == groupCount else {
                    throw bad("\(w.scales.count) scales, expected \(groupCount) (\(w.rows) rows × \(w.groupsPerRow) groups)")
                }
                if let zeros = w.zeros, zeros.count != groupCount {
                    throw bad("\(zeros.count) zero points, expected \(groupCount)")
                }
                if w.bits < 8, let high = w.codes.first(where: { Int($0) >> w.bits != 0 }) {
                    throw bad("code \(high) does not fit in \(w.bits) bits")
                }
                if let bias = linear.bias, bias.count != w.rows {
                    throw bad("bias has \(bias.count) values, expected \(w.rows)")
                }
                if let s = linear.activation?.channelScales, s.count != w.columns {
                    throw bad("activation channel scales have \(s.count) values, expected \(w.columns)")
                }
                if let s = linear.activation?.channelShift, s.count != w.columns {
                    throw bad("activation channel shift has \(s.count) values, expected \(w.columns)")
                }
                if let a = linear.activation {
                    do { try a.validate(columns: w.columns) } catch { throw bad(error.message) }
                }
                let prefix = "linear:\(key):"
                let codes = try claim(prefix + "codes")
                jobs.append(PayloadJob(name: codes, kind: .codes, source: .codes(w.codes, bits: w.bits)))
                let scales = try claim(prefix + "scales")
                jobs.append(PayloadJob(name: scales, kind: .scales, source: .floats(w.scales)))
                var zerosName: String?, biasName: String?, actScalesName: String?, actShiftName: String?
                if let zeros = w.zeros {
                    zerosName = try claim(prefix + "zeros")
                    jobs.append(PayloadJob(name: zerosName!, kind: .zeros, source: .floats(zeros)))
                }
                if let bias = linear.bias {
                    biasName = try claim(prefix + "bias")
                    jobs.append(PayloadJob(name: biasName!, kind: .bias, source: .floats(bias)))
                }
                var activation = linear.activation
                if let s = activation?.channelScales {
                    actScalesName = try claim(prefix + "activation_channel_scales")
                    jobs.append(PayloadJob(name: actScalesName!, kind: .activationChannelScales, source: .floats(s)))
                }
                if let s = activation?.channelShift {
                    actShiftName = try claim(prefix + "activation_channel_shift")
                    jobs.append(PayloadJob(name: actShiftName!, kind: .activationChannelShift, source: .floats(s)))
                }
                activation?.channelScales = nil
                activation?.channelShift = nil
                manifest.quantizedLinears.append(.init(
                    name: key, method: linear.method, details: linear.details, format: nil, bits: w.bits, rows: w.rows,
                    columns: w.columns, groupSize: w.groupSize, symmetric: w.symmetric, activation: activation,
                    codes: codes, scales: scales, zeros: zerosName, bias: biasName,
                    activationChannelScales: actScalesName, activationChannelShift: actShiftName, storedBytes: 0))
            }
            if !model.activationSites.isEmpty {
                manifest.activationSites = try PackedFile.validatedSites(
                    model.activationSites.sorted(by: { $0.key < $1.key }).map(\.value), config: model.config,
                    keys: model.activationSites.sorted(by: { $0.key < $1.key }).map(\.key), path: path)
            }
        }
    }

    /// Checks that every activation site names an attention-probability point of an existing
    /// layer, once (`keys`, when given, must equal the points).
    static func validatedSites(_ sites: [QuantizedActivationSite], config: ModelConfig, keys: [String]?,
                               path: String) throws(PTQError) -> [QuantizedActivationSite] {
        var seen = Set<String>()
        for (i, site) in sites.enumerated() {
            if let keys, keys[i] != site.point {
                throw PTQError.file(path, "activation site '\(keys[i])': its point is '\(site.point)'; the dictionary key must match")
            }
            guard let layer = site.attentionProbabilityLayer, (0..<config.layerCount).contains(layer) else {
                throw PTQError.file(path, "activation site '\(site.point)': not an attention-probability point "
                                    + "layers.N.attention.probs of this \(config.layerCount)-layer model")
            }
            if (site.query == nil) != (site.key == nil) {
                throw PTQError.file(path, "activation site '\(site.point)': query and key quantizers must be given together")
            }
            for (name, operand) in [("query", site.query), ("key", site.key), ("value", site.value)] {
                if let operand, operand.heads != config.headCount {
                    throw PTQError.file(path, "activation site '\(site.point)': \(name) quantizer has \(operand.heads) heads, "
                                        + "the model \(config.headCount)")
                }
            }
            guard seen.insert(site.point).inserted else {
                throw PTQError.file(path, "activation site '\(site.point)' is listed twice")
            }
        }
        return sites
    }

    /// Packs and compresses every payload, in parallel.
    static func encodePayloads(_ jobs: [PayloadJob], level: Int, path: String) throws(PTQError) -> [EncodedSection] {
        var results = [Result<EncodedSection, PTQError>?](repeating: nil, count: jobs.count)
        results.withUnsafeMutableBufferPointer { buffer in
            let out = UnsafeSendable(buffer)
            DispatchQueue.concurrentPerform(iterations: jobs.count) { i in
                let job = jobs[i]
                out.value[i] = Result { () throws(PTQError) -> EncodedSection in
                    switch job.source {
                    case .floats(let values):
                        return try encodeSection(name: job.name, kind: job.kind, raw: littleEndianBytes(values),
                                                 level: level, path: path)
                    case .halves(let values):
                        var raw = [UInt8](repeating: 0, count: values.count * 2)
                        for (i, v) in values.enumerated() {
                            let bits = Float16(v).bitPattern
                            raw[2 * i] = UInt8(bits & 0xFF)
                            raw[2 * i + 1] = UInt8(bits >> 8)
                        }
                        return try encodeSection(name: job.name, kind: job.kind, raw: raw, level: level, path: path)
                    case .codes(let codes, let bits):
                        return try encodeSection(name: job.name, kind: job.kind,
                                                 raw: BitPacking.pack(codes, bits: bits), level: level, path: path)
                    }
                }
            }
        }
        var sections: [EncodedSection] = []
        sections.reserveCapacity(jobs.count)
        for result in results { sections.append(try result!.get()) }
        return sections
    }

    /// zstd-compresses one section; keeps it raw when compression does not make it smaller.
    static func encodeSection(name: String, kind: PackedSectionKind, raw: [UInt8], level: Int,
                              path: String) throws(PTQError) -> EncodedSection {
        let compressed = raw.withUnsafeBytes { Zstd.compress($0, level: level) }
        switch compressed {
        case .failure(let failure):
            throw PTQError.file(path, "section '\(name)': zstd compression failed: \(failure.message)")
        case .success(let bytes):
            if bytes.count < raw.count {
                return EncodedSection(name: name, kind: kind, codec: .zstd, rawSize: raw.count, stored: bytes)
            }
            return EncodedSection(name: name, kind: kind, codec: .raw, rawSize: raw.count, stored: raw)
        }
    }

    static func littleEndianBytes(_ values: [Float]) -> [UInt8] {
        #if _endian(little)
        return values.withUnsafeBytes { Array($0) }
        #else
        var w = ByteWriter()
        for v in values { w.u32(v.bitPattern) }
        return w.data
        #endif
    }

    // MARK: - Reading

    /// Reads a packed file, verifying the header, the section table, every section's CRC-32
    /// and every zstd frame checksum, and that each payload matches the manifest's shapes.
    public static func read(path: String) throws(PTQError) -> PackedModel {
        var mark = LoadProfile.Mark()
        let model = try MappedFile.with(path) { (bytes) throws(PTQError) -> PackedModel in
            let container = try Container(bytes, path: path)
            let manifest = try container.manifest()
            // The tokenizer's JSON (a 49k vocabulary and its merges: ~0.05 s of JSONDecoder for
            // SmolLM2) decodes beside the sections, as one more task of their parallel loop (which
            // the calling thread joins, so no thread waits on a pool); its error still comes first.
            let decodedTokenizer = ResultBox<TokenizerSpec>()
            let shared = UnsafeSendable(container)
            let decodeTokenizer: @Sendable () -> Void = {
                decodedTokenizer.result = Result { () throws(PTQError) in try shared.value.tokenizer(manifest) }
            }
            let planned = Result { () throws(PTQError) in try ReadPlan(manifest: manifest, container: container) }
            mark = LoadProfile.report("map, header, manifest, plan", since: mark)
            let decodedPayloads = planned.flatMap { plan in
                Result { () throws(PTQError) in try container.decodeParallel(plan.loads, alongside: decodeTokenizer) }
            }
            if decodedTokenizer.result == nil { decodeTokenizer() }  // the plan failed: nothing ran
            let tokenizer = try decodedTokenizer.result!.get()
            let plan = try planned.get()
            mark = LoadProfile.report("sections (CRC, zstd, unpack; \(plan.loads.count) in parallel) and tokenizer", since: mark)
            let payloads = try decodedPayloads.get()

            var floatTensors: [String: Tensor] = [:]
            for (i, entry) in manifest.floatTensors.enumerated() {
                floatTensors[entry.name] = Tensor(shape: entry.shape, data: payloads[plan.floatLoad[i]].floats)
            }
            var linears: [String: QuantizedLinear] = [:]
            for (i, e) in manifest.quantizedLinears.enumerated() {
                let l = plan.linearLoads[i]
                let weight: QuantizedWeight
                switch e.formatName {
                case "split": weight = .split(splitWeight(e, l, payloads))
                case "binary": weight = .binary(try binaryWeight(e, l, payloads, path: path))
                default:
                    weight = Self.weight(e, codes: payloads[l.codes].codes, scales: payloads[l.scales].floats,
                                         zeros: l.zeros.map { payloads[$0].floats })
                }
                var activation = e.activation
                activation?.channelScales = l.activationChannelScales.map { payloads[$0].floats }
                activation?.channelShift = l.activationChannelShift.map { payloads[$0].floats }
                linears[e.name] = QuantizedLinear(name: e.name, method: e.method, weight: weight,
                                                  bias: l.bias.map { payloads[$0].floats },
                                                  activation: activation, details: e.details)
            }
            var model = PackedModel(config: manifest.config, tokenizer: tokenizer, floatTensors: floatTensors,
                                    quantizedLinears: linears, recipe: manifest.recipe, statsHash: manifest.statsHash,
                                    modelIdentity: manifest.modelIdentity, toolVersion: manifest.toolVersion,
                                    metadata: manifest.metadata)
            for site in try validatedSites(manifest.activationSites ?? [], config: manifest.config, keys: nil, path: path) {
                model.activationSites[site.point] = site
            }
            mark = LoadProfile.report("assemble the packed model", since: mark)
            return model
        }
        LoadProfile.report("unmap", since: mark)
        return model
    }

    /// The section table of a packed file (header and table verified; sections not read).
    public static func sections(path: String) throws(PTQError) -> [PackedSection] {
        try MappedFile.with(path) { (bytes) throws(PTQError) -> [PackedSection] in
            try Container(bytes, path: path).sections
        }
    }

    /// Model description, per-tensor sizes and bits per weight, from the header, section table,
    /// manifest and tokenizer only (cheap even for large files: payloads are not read).
    public static func summary(path: String) throws(PTQError) -> PackedFileSummary {
        try MappedFile.with(path) { (bytes) throws(PTQError) -> PackedFileSummary in
            let container = try Container(bytes, path: path)
            let manifest = try container.manifest()
            let tokenizer = try container.tokenizer(manifest)
            _ = try ReadPlan(manifest: manifest, container: container)  // sections exist, sizes match
            func stored(_ name: String?) -> Int {
                name.flatMap { container.index[$0] }.map { container.sections[$0].storedSize } ?? 0
            }
            var rows: [PackedFileSummary.TensorRow] = []
            for e in manifest.floatTensors {
                let count = checkedProduct(e.shape) ?? 0
                let bytes = stored(e.section)
                rows.append(.init(name: e.name, kind: "float", shape: e.shape, bits: e.isHalf ? 16 : 32, groupSize: nil,
                                  activation: "-", parameterCount: count, storedBytes: bytes,
                                  bitsPerWeight: count > 0 ? 8 * Double(bytes) / Double(count) : 0))
            }
            for e in manifest.quantizedLinears {
                let count = e.rows * e.columns + (e.bias != nil ? e.rows : 0)
                let bytes = e.sectionNames.reduce(0) { $0 + stored($1) }
                let activation = ActivationQuantization.describe(
                    e.activation, hasChannelScales: e.activationChannelScales != nil,
                    hasShift: e.activationChannelShift != nil)
                rows.append(.init(name: e.name, kind: e.method, shape: [e.rows, e.columns], bits: e.bits,
                                  groupSize: e.groupSize, activation: activation, parameterCount: count,
                                  storedBytes: bytes,
                                  bitsPerWeight: count > 0 ? 8 * Double(bytes) / Double(count) : 0,
                                  details: e.details))
                rows[rows.count - 1].format = e.format
            }
            // Model order: position of the tensor (or the linear's weight) in the config's list.
            var order: [String: Int] = [:]
            for (i, t) in manifest.config.expectedTensors.enumerated() { order[t.name] = i }
            func rank(_ name: String) -> Int { order[name] ?? order[name + "/weight"] ?? Int.max }
            rows.sort { (rank($0.name), $0.name) < (rank($1.name), $1.name) }
            let parameters = rows.reduce(0) { $0 + $1.parameterCount }
            let payload = rows.reduce(0) { $0 + $1.storedBytes }
            var summary = PackedFileSummary(
                formatVersion: manifest.formatVersion, toolVersion: manifest.toolVersion, config: manifest.config,
                modelIdentity: manifest.modelIdentity, statsHash: manifest.statsHash, recipe: manifest.recipe,
                metadata: manifest.metadata, tokenizerKind: tokenizer.kind.rawValue,
                vocabularySize: tokenizer.tokens.count, tensors: rows, parameterCount: parameters,
                storedPayloadBytes: payload, totalBytes: bytes.count, sectionCount: container.sections.count,
                bitsPerWeight: parameters > 0 ? 8 * Double(payload) / Double(parameters) : 0)
            summary.activationSites = try validatedSites(manifest.activationSites ?? [], config: manifest.config,
                                                         keys: nil, path: path)
            return summary
        }
    }

    /// Which sections to decode, as what, and where each tensor's pieces land.
    struct ReadPlan {
        struct LinearLoads {
            var codes: Int, scales: Int
            var zeros: Int?, bias: Int?, activationChannelScales: Int?, activationChannelShift: Int?
            var clusters: Int?
            var binary: BinaryLoads?
        }
        var loads: [Container.Load] = []
        var floatLoad: [Int] = []
        var linearLoads: [LinearLoads] = []

        init(manifest: PackedManifest, container: Container) throws(PTQError) {
            func fail(_ message: String) -> PTQError { PTQError.file(container.path, message) }
            var seen = Set<String>()
            func load(_ section: String, kind: PackedSectionKind, tensor: String,
                      as decode: Container.Load.Decode, what: String) throws(PTQError) -> Int {
                guard let index = container.index[section] else {
                    throw fail("tensor '\(tensor)': section '\(section)' is missing from the section table")
                }
                let s = container.sections[index]
                guard s.kind == kind else {
                    throw fail("tensor '\(tensor)': section '\(section)' holds \(s.kind.label), expected \(kind.label)")
                }
                guard s.rawSize == decode.byteCount else {
                    throw fail("tensor '\(tensor)': section '\(section)' holds \(s.rawSize) bytes but \(what) "
                               + "needs \(decode.byteCount)")
                }
                loads.append(Container.Load(section: index, tensor: tensor, decode: decode))
                return loads.count - 1
            }
            func floats(_ count: Int?, _ tensor: String, _ what: String) throws(PTQError) -> Container.Load.Decode {
                guard let count, count <= Int.max / 4 else { throw fail("tensor '\(tensor)': \(what) is too large") }
                return .floats(count)
            }
            for e in manifest.floatTensors {
                guard seen.insert(e.name).inserted else { throw fail("manifest lists tensor '\(e.name)' twice") }
                guard e.shape.allSatisfy({ $0 >= 0 }) else {
                    throw fail("tensor '\(e.name)': invalid shape \(e.shape) in the manifest")
                }
                var decode = try floats(checkedProduct(e.shape), e.name, "shape \(e.shape)")
                if e.isHalf, case .floats(let n) = decode { decode = .halves(n) }
                floatLoad.append(try load(e.section, kind: .floatTensor, tensor: e.name, as: decode,
                                          what: "shape \(e.shape) (\(e.dtype ?? "float32"))"))
            }
            for e in manifest.quantizedLinears {
                let t = e.name
                guard seen.insert(t).inserted else { throw fail("manifest lists tensor '\(t)' twice") }
                if e.formatName == "split" {
                    linearLoads.append(try Self.splitLoads(e, load: load, fail: fail))
                    continue
                }
                if e.formatName == "binary" {
                    linearLoads.append(try Self.binaryLoads(e, load: load, fail: fail))
                    continue
                }
                try PackedFile.checkFormat(e, fail: fail)
                guard (1...8).contains(e.bits) else { throw fail("tensor '\(t)': \(e.bits)-bit codes are not supported (1…8)") }
                guard e.rows >= 0, e.columns >= 0, e.groupSize >= 1 else {
                    throw fail("tensor '\(t)': invalid geometry rows \(e.rows), columns \(e.columns), group size \(e.groupSize)")
                }
                guard let codeCount = checkedProduct([e.rows, e.columns]),
                      BitPacking.byteCount(count: codeCount, bits: e.bits) != nil else {
                    throw fail("tensor '\(t)': \(e.rows)×\(e.columns) is too large")
                }
                let groups = (e.columns + e.groupSize - 1) / e.groupSize
                let geometry = "\(e.rows)×\(e.columns)"
                let codes = try load(e.codes, kind: .codes, tensor: t, as: .codes(bits: e.bits, count: codeCount),
                                     what: "\(geometry) at \(e.bits) bits")
                let groupDecode = try floats(checkedProduct([e.rows, groups]), t, "the scale grid")
                let scales = try load(e.scales, kind: .scales, tensor: t, as: groupDecode,
                                      what: "\(e.rows) rows × \(groups) groups (float32)")
                var l = LinearLoads(codes: codes, scales: scales)
                if let z = e.zeros {
                    l.zeros = try load(z, kind: .zeros, tensor: t, as: groupDecode,
                                       what: "\(e.rows) rows × \(groups) groups (float32)")
                }
                if let b = e.bias {
                    l.bias = try load(b, kind: .bias, tensor: t, as: .floats(e.rows), what: "\(e.rows) rows (float32)")
                }
                if let a = e.activation {
                    do { try a.validate(columns: nil) } catch { throw fail("tensor '\(t)': \(error.message)") }
                }
                if e.activation == nil, e.activationChannelScales != nil || e.activationChannelShift != nil {
                    throw fail("tensor '\(t)': activation channel arrays without activation quantization")
                }
                if let s = e.activationChannelScales {
                    l.activationChannelScales = try load(s, kind: .activationChannelScales, tensor: t,
                                                         as: .floats(e.columns), what: "\(e.columns) columns (float32)")
                }
                if let s = e.activationChannelShift {
                    l.activationChannelShift = try load(s, kind: .activationChannelShift, tensor: t,
                                                        as: .floats(e.columns), what: "\(e.columns) columns (float32)")
                }
                linearLoads.append(l)
            }
            // Sections the manifest does not reference are still checksummed.
            let referenced = Set(loads.map(\.section))
            for (i, s) in container.sections.enumerated()
            where !referenced.contains(i) && s.kind != .manifest && s.kind != .tokenizer {
                loads.append(Container.Load(section: i, tensor: nil, decode: .verifyOnly))
            }
        }
    }
}

/// `a × b × …`, nil on overflow.
func checkedProduct(_ values: [Int]) -> Int? {
    var product = 1
    for v in values {
        let (p, overflow) = product.multipliedReportingOverflow(by: v)
        if overflow { return nil }
        product = p
    }
    return product
}

/// One result written by a task of a parallel loop and read after the loop.
final class ResultBox<T: Sendable>: @unchecked Sendable {
    var result: Result<T, PTQError>?
}

/// Lets a buffer pointer cross into `concurrentPerform` workers that touch disjoint elements.
struct UnsafeSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
