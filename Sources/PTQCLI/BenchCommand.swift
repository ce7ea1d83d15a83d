import ArgumentParser
import Foundation
import PTQKit

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure prefill and decode speed of a model, with the float reference measured in the same run.",
        discussion: """
            Prefill runs a prompt of --prompt-tokens random tokens in one forward pass; decode then \
            generates --decode-tokens tokens one at a time (greedy) on top of that prompt, so every \
            decoded token attends to at least --prompt-tokens cached positions. That is what \
            llama-bench reports as "tg<N> @ d<P>" (decode depth P); the prefill number matches its \
            "pp<P>" at depth 0. One untimed warm-up pass (a few tokens) precedes the repetitions. \
            Tokens/s are reported as the median over --repeats repetitions, with the minimum and \
            maximum. Load time is the time to read the model (.h5 for the float runtime, .ptq for the \
            quantized runtime); peak resident memory is the process's peak (getrusage ru_maxrss) \
            after the model's repetitions — with --reference, the reference is measured second, so \
            its peak includes the model's. The decode bound is a streaming read of 256 MiB on the \
            same threads, probed before and after each repetition's decode (median of 5 passes a \
            probe); the bound uses the median probe and the probes' range is printed with it.
            """)

    @Argument(help: "Model file (.ptq or .h5); not with --kernels.")
    var model: String?

    @Flag(name: .long, help: "Time each decode GEMV kernel on SmolLM2's layer shapes (random codes, one token's worth of layers per pass) and print GB/s against the read bandwidth measured in the same run, instead of a model.")
    var kernels = false

    @Flag(name: .long, help: "With --kernels: time only the prefill GEMMs (float32 sgemm against the bf16 GEMM, SmolLM2's prefill shapes, one and two threads) and print GFLOP/s.")
    var gemm = false

    @Flag(name: .long, help: "Only load the model (and --reference): print the load time, the background move of the weights onto 2 MB pages and the peak RSS, without prefill or decode. PTQ_LOAD_PROFILE=1 prints each load phase on stderr.")
    var loadOnly = false

    @Option(name: .long, help: "Float reference checkpoint (.h5) measured in the same run, for ratios.")
    var reference: String?

    @Option(name: .long, help: "Prompt tokens for prefill (at least 1; prompt + decode tokens must fit the model's max_positions).")
    var promptTokens = 128

    @Option(name: .long, help: "Tokens to decode one by one after the prompt, i.e. at decode depth --prompt-tokens (0 or more).")
    var decodeTokens = 64

    @Option(name: .long, help: "Repetitions; the median, minimum and maximum are reported (1…1000).")
    var repeats = 3

    @Option(name: .long, help: "Threads for PTQKit's parallel loops and OpenBLAS (1…1024; default: the machine's cores).")
    var threads: Int?

    @Option(name: .long, help: "Element type of the KV cache: f32 (exact) or f16 (keys and values rounded to IEEE half when stored, as llama.cpp's default cache; half the cache bytes per decoded token). Applies to the model and --reference alike.")
    var kvCache: KVCachePrecision = .f32

    func validate() throws {
        if kernels {
            guard model == nil, reference == nil else { throw ValidationError("--kernels takes no model and no --reference") }
        } else if gemm {
            throw ValidationError("--gemm needs --kernels")
        } else if model == nil {
            throw ValidationError("missing model file (or --kernels)")
        }
        guard OptionLimits.tokens.contains(promptTokens) else {
            throw ValidationError("--prompt-tokens must be between 1 and \(OptionLimits.tokens.upperBound) (got \(promptTokens))")
        }
        guard decodeTokens >= 0, decodeTokens <= OptionLimits.tokens.upperBound else {
            throw ValidationError("--decode-tokens must be between 0 and \(OptionLimits.tokens.upperBound) (got \(decodeTokens))")
        }
        guard OptionLimits.repeats.contains(repeats) else {
            throw ValidationError("--repeats must be between 1 and \(OptionLimits.repeats.upperBound) (got \(repeats))")
        }
        if let threads, !OptionLimits.threads.contains(threads) {
            throw ValidationError("--threads must be between 1 and \(OptionLimits.threads.upperBound) (got \(threads))")
        }
    }

    @OptionGroup var options: OutputOptions

    /// Median, minimum and maximum of a rate over the repetitions.
    struct Spread: Encodable {
        let median: Double, min: Double, max: Double
        init(_ values: [Double]) {
            let sorted = values.sorted()
            let n = sorted.count
            median = n == 0 ? 0 : (n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2)
            min = sorted.first ?? 0
            max = sorted.last ?? 0
        }
    }

    struct Speed: Encodable {
        let model: String
        /// Medians (the keys earlier versions wrote).
        let prefill_tokens_per_second: Double
        let decode_tokens_per_second: Double
        let prefill: Spread
        let decode: Spread
        let load_seconds: Double
        /// Seconds the loader's background move of the weights onto 2 MB pages took after the load
        /// returned (`TokenKernels.collapseToHugePagesInBackground`); the bench waits for it before
        /// timing. 0 for HDF5 checkpoints and with `PTQ_WEIGHT_HUGEPAGES=0`.
        var huge_page_seconds = 0.0
        let peak_resident_bytes: Int
        /// Resident memory after the repetitions (`/proc/self/statm`; 0 where it cannot be read):
        /// what the loaded model and its buffers hold, without the load-time peak.
        var resident_bytes = 0
        /// Bytes one decoded token reads: weights and parameters plus the KV cache at the mean
        /// decode depth.
        let decode_bytes_per_token: Int
        /// Decode tokens/s the measured read bandwidth allows (median of the read probes / bytes
        /// per token) and the median decode rate as a fraction of it.
        let decode_bandwidth_bound: Double
        let decode_bound_fraction: Double
        /// The streaming-read probes taken before and after each repetition's decode (bytes/s,
        /// each probe the median of its passes): median, minimum and maximum; nil when not probed.
        var read_bandwidth: Spread? = nil
        var read_bandwidth_probes = 0
        /// Linear layers per kernel path (`LinearOp.kernelDescription`), LLaMA models only.
        var kernels: [String: Int]? = nil
        /// Bytes the linear layers of each kernel path hold (`LinearOp.storageBytes`), LLaMA models only.
        var kernel_storage_bytes: [String: Int]? = nil
        /// How float-activation (weight-only) layers prefilled (`PTQ.prefillDescription`).
        var float_activation_prefill: String = PTQ.prefillDescription
    }

    /// The process's current resident set (`/proc/self/statm`, pages × page size), 0 if unreadable.
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// The process's resident high-water mark (`VmHWM`), falling back to `ru_maxrss`.
    static func peakResidentBytes() -> Int {
        if let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
           let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "") {
            return kilobytes * 1024
        }
        var usage = rusage()
        guard getrusage(Int32(RUSAGE_SELF.rawValue), &usage) == 0 else { return 0 }
        return Int(usage.ru_maxrss) * 1024  // kilobytes on Linux
    }

    /// Streaming-read probes around the decodes of one model's repetitions.
    struct BandwidthProbes {
        /// Bytes/s of each probe (the median of its passes).
        var rates: [Double] = []
        /// The resident high-water mark outside the probes: the probe's 256 MiB buffer is freed
        /// after each probe and the mark reset (`/proc/self/clear_refs`), so the reported peak is
        /// the model's, not the probe's (where the reset is refused the peak includes the probe).
        var peakOutside = 0

        mutating func probe() {
            peakOutside = max(peakOutside, BenchCommand.peakResidentBytes())
            rates.append(PTQ.measureReadBandwidth())
            if let file = fopen("/proc/self/clear_refs", "w") {
                fputs("5", file)  // 5: reset the resident high-water mark to the current RSS
                fclose(file)
            }
        }

        /// Decode bound (tokens/s) for `bytesPerToken` from the median probe; 0 without probes.
        func bound(bytesPerToken: Int) -> Double {
            rates.isEmpty ? 0 : Spread(rates).median / Double(max(1, bytesPerToken))
        }
    }

    /// Measures one model; with `probeBandwidth` the read bandwidth is probed before and after each
    /// repetition's decode and gives the decode bound (0 without it).
    func measure(_ path: String, probeBandwidth: Bool = false) throws -> Speed {
        let (llm, loadSeconds, hugePageSeconds) = try load(path)
        var speed = try measure(llm, path: path, loadSeconds: loadSeconds, probeBandwidth: probeBandwidth)
        speed.huge_page_seconds = hugePageSeconds
        if let llama = llm as? LlamaModel {
            speed.kernels = Dictionary(llama.kernelPaths.map { ($0.description, $0.count) }, uniquingKeysWith: +)
            speed.kernel_storage_bytes = llama.kernelStorageBytes
        }
        return speed
    }

    /// Loads `path` as a generative model: the load's seconds, and the seconds of the loader's
    /// background move of the weights onto 2 MB pages, which it waits for (timed runs start on
    /// the weights' final pages; the model was usable before). With `PTQ_LOAD_PROFILE=1` the
    /// loaders print their phases (a packed file's read, validation and build) and this the total.
    func load(_ path: String) throws -> (model: any GenerativeModel, seconds: Double, hugePageSeconds: Double) {
        let earlierHugePages = PTQ.waitForHugePages()  // earlier models' collapses, finished
        let loadStart = DispatchTime.now()
        let mark = LoadProfile.Mark()
        let model = try PTQ.loadAnyModel(path: path)
        LoadProfile.report("load \(path)", since: mark)
        let llm = try model.generativeModel(for: "bench", source: path)
        let loadSeconds = seconds(since: loadStart)
        let waitMark = LoadProfile.Mark()
        let hugePageSeconds = PTQ.waitForHugePages() - earlierHugePages
        LoadProfile.report("wait for the 2 MB pages", since: waitMark)
        return (llm, loadSeconds, hugePageSeconds)
    }

    /// `--load-only`: loads, then prints the load line (or JSON).
    func runLoadOnly(_ model: String) throws {
        struct LoadTime: Encodable {
            let model: String, load_seconds: Double, huge_page_seconds: Double, peak_resident_bytes: Int
        }
        var times: [LoadTime] = []
        for path in [model] + (reference.map { [$0] } ?? []) {
            let (_, loadSeconds, hugePageSeconds) = try load(path)
            times.append(LoadTime(model: path, load_seconds: loadSeconds, huge_page_seconds: hugePageSeconds,
                                  peak_resident_bytes: Self.peakResidentBytes()))
        }
        if options.json { try printJSON(times); return }
        for t in times {
            print(String(format: "%@: load %.2f s (+%.2f s 2 MB pages in the background), peak RSS %.0f MiB", t.model,
                         t.load_seconds, t.huge_page_seconds, Double(t.peak_resident_bytes) / 1_048_576))
        }
    }

    /// Prefill and decode rates of a loaded model (generic, so its cache type is concrete).
    private func measure<Model: GenerativeModel>(_ llm: Model, path: String, loadSeconds: Double,
                                                 probeBandwidth: Bool) throws -> Speed {
        guard promptTokens + decodeTokens <= llm.config.maxPositions else {
            throw usageError("--prompt-tokens \(promptTokens) + --decode-tokens \(decodeTokens) exceed the max_positions "
                             + "\(llm.config.maxPositions) of \(path)")
        }
        var rng = SplitMix(seed: 1)
        let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(llm.config.vocabSize)) }
        func greedy(_ logits: [Float]) -> Int {
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return best
        }
        // Warm-up: touches the weights and the code paths once, untimed.
        do {
            let warm = Array(prompt.prefix(min(promptTokens, 8)))
            let cache = llm.makeCache(capacity: warm.count + 1, precision: kvCache)
            var logits = llm.forward(warm, cache: cache, logitRows: (warm.count - 1)..<warm.count, hooks: ForwardHooks())
            let next = greedy(logits)
            logits.withUnsafeMutableBufferPointer { llm.decode(next, cache: cache, into: $0) }
        }
        var prefillRates: [Double] = [], decodeRates: [Double] = []
        var probes = BandwidthProbes()
        for _ in 0..<repeats {
            let cache = llm.makeCache(capacity: promptTokens + decodeTokens, precision: kvCache)
            var t0 = DispatchTime.now()
            var logits = llm.forward(prompt, cache: cache, logitRows: (promptTokens - 1)..<promptTokens,
                                     hooks: ForwardHooks())
            prefillRates.append(Double(promptTokens) / seconds(since: t0))
            // Probes in the same minutes as the decode they bound, after the model is loaded.
            if probeBandwidth && decodeTokens > 0 { probes.probe() }
            t0 = DispatchTime.now()
            // One logits row reused token after token (`decode`: no allocation per token).
            for _ in 0..<decodeTokens {
                let next = greedy(logits)
                logits.withUnsafeMutableBufferPointer { llm.decode(next, cache: cache, into: $0) }
            }
            if decodeTokens > 0 { decodeRates.append(Double(decodeTokens) / seconds(since: t0)) }
            if probeBandwidth && decodeTokens > 0 { probes.probe() }
        }
        let prefill = Spread(prefillRates), decode = Spread(decodeRates)
        let meanDepth = promptTokens + (decodeTokens + 1) / 2
        let bytesPerToken = llm.decodeWeightBytes + llm.kvCacheBytes(positions: meanDepth, precision: kvCache)
        let bound = probes.bound(bytesPerToken: bytesPerToken)  // 0 when bandwidth was not measured
        var speed = Speed(model: path, prefill_tokens_per_second: prefill.median,
                          decode_tokens_per_second: decode.median, prefill: prefill, decode: decode,
                          load_seconds: loadSeconds,
                          peak_resident_bytes: max(probes.peakOutside, Self.peakResidentBytes()),
                          decode_bytes_per_token: bytesPerToken, decode_bandwidth_bound: bound,
                          decode_bound_fraction: bound > 0 ? decode.median / bound : 0)
        speed.resident_bytes = Self.residentBytes()
        if !probes.rates.isEmpty {
            speed.read_bandwidth = Spread(probes.rates)
            speed.read_bandwidth_probes = probes.rates.count
        }
        return speed
    }

    private func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }

    func run() throws {
        if let threads { PTQ.threadCount = threads }
        if kernels { try runKernels(); return }
        let model = self.model!
        if loadOnly { try runLoadOnly(model); return }
        // Read bandwidth with the same threads, probed around each repetition's decode (256 MiB,
        // median of 5 passes a probe; the bound uses the median probe).
        let speed = try measure(model, probeBandwidth: true)
        let base = try reference.map { try measure($0, probeBandwidth: true) }
        let bandwidth = speed.read_bandwidth?.median ?? 0
        if options.json {
            struct Output: Encodable {
                let model: Speed, reference: Speed?, prefill_ratio: Double?, decode_ratio: Double?
                let prompt_tokens: Int, decode_tokens: Int, repeats: Int, threads: Int, kv_cache: KVCachePrecision
                /// The model's median read probe (the bound's bandwidth), and all its probes' spread.
                let read_bandwidth_bytes_per_second: Double
                let read_bandwidth: Spread?
                /// Thread-pool jobs, wake-ups, stalls (waits for a preempted worker) and jobs run
                /// serially after stalls, over the whole run: stalls mean a loaded machine.
                let pool_jobs: UInt64, pool_wakeups: UInt64, pool_stalls: UInt64, pool_serial_jobs: UInt64
            }
            let pool = PTQ.poolCounters
            try printJSON(Output(model: speed, reference: base,
                                 prefill_ratio: base.map { speed.prefill_tokens_per_second / $0.prefill_tokens_per_second },
                                 decode_ratio: base.map { speed.decode_tokens_per_second / $0.decode_tokens_per_second },
                                 prompt_tokens: promptTokens, decode_tokens: decodeTokens, repeats: repeats,
                                 threads: PTQ.threadCount, kv_cache: kvCache, read_bandwidth_bytes_per_second: bandwidth,
                                 read_bandwidth: speed.read_bandwidth,
                                 pool_jobs: pool.jobs, pool_wakeups: pool.wakeups, pool_stalls: pool.stalls,
                                 pool_serial_jobs: pool.serialJobs))
            return
        }
        func line(_ s: Speed) -> String {
            String(format: "prefill %.1f tok/s (min %.1f, max %.1f), decode %.1f tok/s (min %.1f, max %.1f), "
                           + "load %.2f s (+%.2f s 2 MB pages in the background), peak RSS %.0f MiB, RSS after %.0f MiB; decode reads %.1f MB/token, bandwidth bound %.1f tok/s "
                           + "(%.0f%% reached)",
                   s.prefill.median, s.prefill.min, s.prefill.max, s.decode.median, s.decode.min, s.decode.max,
                   s.load_seconds, s.huge_page_seconds, Double(s.peak_resident_bytes) / 1_048_576, Double(s.resident_bytes) / 1_048_576,
                   Double(s.decode_bytes_per_token) / 1e6,
                   s.decode_bandwidth_bound, 100 * s.decode_bound_fraction)
        }
        print("\(promptTokens)-token prompt, \(decodeTokens) decoded tokens, \(repeats) repetitions (median), "
              + "\(PTQ.threadCount) threads, \(kvCache.rawValue) KV cache, read bandwidth \(Self.probeSummary(speed))")
        print("\(model): \(line(speed))")
        for (description, count) in (speed.kernels ?? [:]).sorted(by: { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }) {
            let held = speed.kernel_storage_bytes?[description].map { String(format: ", %.1f MB held", Double($0) / 1e6) } ?? ""
            print("  \(count)× \(description)\(held)")
        }
        print("  prefill of float-activation layers: \(speed.float_activation_prefill)")
        if let base {
            print("\(base.model): \(line(base))")
            print(String(format: "ratio: prefill %.2fx, decode %.2fx",
                         speed.prefill_tokens_per_second / base.prefill_tokens_per_second,
                         speed.decode_tokens_per_second / base.decode_tokens_per_second))
        }
        let pool = PTQ.poolCounters
        print("thread pool: \(pool.jobs) parallel jobs, \(pool.wakeups) wake-ups, \(pool.stalls) stalls on a preempted "
              + "worker, \(pool.serialJobs) jobs run serially after stalls")
    }

    /// "34.1 GB/s (median of 6 probes around the decodes, 33.0–35.2)", or "not measured".
    static func probeSummary(_ speed: Speed) -> String {
        guard let r = speed.read_bandwidth else { return "not measured (no decode tokens)" }
        return String(format: "%.1f GB/s (median of %d probes around the decodes, %.1f–%.1f)",
                      r.median / 1e9, speed.read_bandwidth_probes, r.min / 1e9, r.max / 1e9)
    }

    /// `--kernels`: per-kernel GB/s over a token's worth of SmolLM2 layers and the LM head.
    func runKernels() throws {
        if gemm {
            let gemms = PTQ.benchmarkPrefillGEMMs(repeats: repeats)
            if options.json { try printJSON(gemms); return }
            printGEMMs(gemms)
            return
        }
        let report = PTQ.benchmarkKernels(repeats: repeats)
        if options.json { try printJSON(report); return }
        print("\(report.threads) threads, VNNI \(report.vnni ? "yes" : "no"), read bandwidth "
              + String(format: "%.1f GB/s, empty pool job %.2f µs, median of %d passes",
                       report.readBandwidthBytesPerSecond / 1e9, report.poolJobMicroseconds, repeats))
        func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }
        for t in report.timings {
            print(pad(t.kernel, 56) + pad(t.pass, 26)
                  + String(format: "%7.1f MB %8.3f ms (%.3f–%.3f) %6.1f GB/s %4.0f%% of bandwidth",
                           Double(t.bytes) / 1e6, t.milliseconds, t.minMilliseconds, t.maxMilliseconds,
                           t.gigabytesPerSecond, 100 * t.bandwidthFraction))
        }
        printGEMMs(report.gemms)
    }

    /// The prefill GEMM table of `--kernels`.
    func printGEMMs(_ gemms: [PrefillGEMMTiming]) {
        print("prefill GEMMs (rows × in → out), median of \(repeats); float-activation prefill: \(PTQ.prefillDescription)")
        for g in gemms {
            let shape = "\(g.rows)×\(g.inFeatures)→\(g.outFeatures), \(g.threads) thread\(g.threads == 1 ? "" : "s")"
            let kernel = g.kernel.count >= 62 ? g.kernel : g.kernel + String(repeating: " ", count: 62 - g.kernel.count)
            print(kernel + shape + String(format: "  %8.3f ms (%.3f–%.3f) %7.1f GFLOP/s", g.milliseconds,
                                          g.minMilliseconds, g.maxMilliseconds, g.gigaflopsPerSecond))
        }
    }
}

extension KVCachePrecision: ExpressibleByArgument {}
