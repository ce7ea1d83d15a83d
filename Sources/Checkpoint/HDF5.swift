import CHDF5
import Foundation
import PTQCore

/// Thin RAII layer over the libhdf5 C API: every id is closed by `deinit`, and every failing
/// call becomes a `PTQError` naming the file and the object.
package enum HDF5 {
    /// Turns off HDF5's own error-stack printing; we report errors ourselves. The setting is
    /// per thread in Debian's thread-safe build, so every entry point calls this.
    package static func silence() {
        _ = libraryIsConfigured
        _ = H5Eset_auto2(chdf5_e_default(), nil, nil)
    }

    /// Runs once, before the first HDF5 call (every entry point goes through `silence()`).
    ///
    /// Why: libhdf5 1.10's thread-safe build keeps each thread's error stack in its internal
    /// free lists, so once threads other than the main one have called the library (Swift
    /// concurrency's pool threads, parallel tests), its `atexit` shutdown cannot empty those
    /// lists and prints "HDF5: infinite loop closing library" at process exit. Every file we
    /// open is closed by `HID.deinit` (writers close before they rename), so there is nothing
    /// for that shutdown to flush; skipping it leaves the memory to the OS.
    private static let libraryIsConfigured: Void = {
        _ = H5dont_atexit()
    }()
}

/// An HDF5 identifier with the close function that releases it.
package final class HID {
    package let id: hid_t
    private let close: (hid_t) -> herr_t

    package init(_ id: hid_t, close: @escaping (hid_t) -> herr_t) {
        self.id = id
        self.close = close
    }

    deinit { _ = close(id) }
}

/// One open HDF5 file.
package final class HDF5File {
    package let path: String
    package let handle: HID

    private init(path: String, id: hid_t) {
        self.path = path
        self.handle = HID(id, close: H5Fclose)
    }

    package static func open(_ path: String) throws(PTQError) -> HDF5File {
        HDF5.silence()
        guard FileManager.default.fileExists(atPath: path) else { throw PTQError.file(path, "no such file") }
        let probe = H5Fis_hdf5(path)
        if probe == 0 { throw PTQError.file(path, "not an HDF5 file") }
        let id = H5Fopen(path, chdf5_f_acc_rdonly(), chdf5_p_default())
        if id < 0 || probe < 0 {
            throw PTQError.file(path, "cannot open the HDF5 file (truncated or corrupt?)")
        }
        return HDF5File(path: path, id: id)
    }

    /// Opens an existing file for modification (tests use it to build damaged checkpoints).
    package static func openForUpdate(_ path: String) throws(PTQError) -> HDF5File {
        HDF5.silence()
        let id = H5Fopen(path, chdf5_f_acc_rdwr(), chdf5_p_default())
        if id < 0 { throw PTQError.file(path, "cannot open the HDF5 file for update") }
        return HDF5File(path: path, id: id)
    }

    /// Removes a link (dataset or group) or an attribute (when `attribute` is given).
    package func delete(_ name: String, attribute: String? = nil) throws(PTQError) {
        let status = attribute.map { H5Adelete_by_name(handle.id, name, $0, chdf5_p_default()) }
            ?? H5Ldelete(handle.id, name, chdf5_p_default())
        if status < 0 { throw PTQError.file(path, "cannot delete '\(name)'") }
    }

    package static func create(_ path: String) throws(PTQError) -> HDF5File {
        HDF5.silence()
        let id = H5Fcreate(path, chdf5_f_acc_trunc(), chdf5_p_default(), chdf5_p_default())
        if id < 0 { throw PTQError.file(path, "cannot create HDF5 file") }
        return HDF5File(path: path, id: id)
    }

    package func flush() throws(PTQError) {
        if H5Fflush(handle.id, H5F_SCOPE_GLOBAL) < 0 { throw PTQError.file(path, "flush failed") }
    }

    // MARK: Objects

    package func exists(_ name: String) -> Bool {
        // H5Lexists fails on a missing intermediate group, so walk the path.
        var prefix = ""
        for part in name.split(separator: "/") {
            prefix += (prefix.isEmpty ? "" : "/") + part
            if H5Lexists(handle.id, prefix, chdf5_p_default()) <= 0 { return false }
        }
        return true
    }

    package func isDataset(_ name: String) -> Bool {
        guard exists(name) else { return false }
        var info = H5O_info_t()
        guard H5Oget_info_by_name2(handle.id, name, &info, UInt32(H5O_INFO_BASIC), chdf5_p_default()) >= 0 else {
            return false
        }
        return info.type == H5O_TYPE_DATASET
    }

    package func openGroup(_ name: String) throws(PTQError) -> HID {
        guard exists(name) else { throw PTQError.file(path, "missing group '\(name)'") }
        let g = H5Gopen2(handle.id, name, chdf5_p_default())
        if g < 0 { throw PTQError.file(path, "cannot open group '\(name)'") }
        return HID(g, close: H5Gclose)
    }

    package func createGroup(_ name: String) throws(PTQError) -> HID {
        let lcpl = H5Pcreate(chdf5_p_link_create())
        defer { H5Pclose(lcpl) }
        H5Pset_create_intermediate_group(lcpl, 1)
        let g = H5Gcreate2(handle.id, name, lcpl, chdf5_p_default(), chdf5_p_default())
        if g < 0 { throw PTQError.file(path, "cannot create group '\(name)'") }
        return HID(g, close: H5Gclose)
    }

    /// Names of all datasets below the root, as slash paths without a leading slash.
    package func datasetNames() -> [String] {
        final class Box { var names: [String] = [] }
        let box = Box()
        let unmanaged = Unmanaged.passUnretained(box)
        _ = H5Ovisit2(handle.id, H5_INDEX_NAME, H5_ITER_INC, { _, name, info, op in
            guard let name, let info, let op else { return 0 }
            if info.pointee.type == H5O_TYPE_DATASET {
                Unmanaged<Box>.fromOpaque(op).takeUnretainedValue().names.append(String(cString: name))
            }
            return 0
        }, unmanaged.toOpaque(), UInt32(H5O_INFO_BASIC))
        return box.names
    }

    // MARK: Datasets

    package struct DatasetInfo {
        package var shape: [Int]
        package var dtype: String  // float32, float16, bfloat16, int8, uint8, int32, int64, float64, other
        package var isString = false
        /// Number of elements (the shape's product; checked against overflow when read).
        package var count: Int { shape.reduce(1, *) }
    }

    package func datasetInfo(_ name: String) throws(PTQError) -> DatasetInfo {
        let ds = try openDataset(name)
        let space = HID(H5Dget_space(ds.id), close: H5Sclose)
        let rank = Int(H5Sget_simple_extent_ndims(space.id))
        if rank < 0 { throw PTQError.file(path, "dataset '\(name)': unreadable dataspace") }
        guard rank <= 32 else { throw PTQError.file(path, "dataset '\(name)': unsupported rank \(rank)") }
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        if H5Sget_simple_extent_dims(space.id, &dims, nil) < 0 {
            throw PTQError.file(path, "dataset '\(name)': unreadable dataspace")
        }
        var shape: [Int] = []
        for d in dims.prefix(rank) {
            guard let n = Int(exactly: d), n <= Validation.maximumTensorElements else {
                throw PTQError.file(path, "dataset '\(name)': dimension \(d) is too large")
            }
            shape.append(n)
        }
        guard let total = Validation.checkedProduct(shape), total <= Validation.maximumTensorElements else {
            throw PTQError.file(path, "dataset '\(name)': shape \(shape) is too large")
        }
        let type = HID(H5Dget_type(ds.id), close: H5Tclose)
        var dtype = "other"
        let size = H5Tget_size(type.id)
        switch H5Tget_class(type.id) {
        case H5T_FLOAT:
            dtype = size == 4 ? "float32" : size == 2 ? "float16" : size == 8 ? "float64" : "other"
        case H5T_INTEGER:
            let signed = H5Tget_sign(type.id) == H5T_SGN_2
            if size == 2 && !signed, (try? stringAttribute(name, "dtype")) == "bfloat16" {
                dtype = "bfloat16"
            } else {
                dtype = (signed ? "int" : "uint") + String(size * 8)
            }
        default: break
        }
        return DatasetInfo(shape: shape, dtype: dtype, isString: H5Tget_class(type.id) == H5T_STRING)
    }

    package func openDataset(_ name: String) throws(PTQError) -> HID {
        HDF5.silence()
        guard isDataset(name) else { throw PTQError.file(path, "missing dataset '\(name)'") }
        let ds = H5Dopen2(handle.id, name, chdf5_p_default())
        if ds < 0 { throw PTQError.file(path, "cannot open dataset '\(name)'") }
        return HID(ds, close: H5Dclose)
    }

    /// Reads a float dataset (float32, float16 or bfloat16 on disk) as float32.
    package func readFloats(_ name: String, count: Int) throws(PTQError) -> [Float] {
        let info = try datasetInfo(name)
        try requireNumeric(name, info)
        guard info.count == count else {
            throw PTQError.file(path, "dataset '\(name)' holds \(info.count) values (shape \(info.shape)), expected \(count)")
        }
        let ds = try openDataset(name)
        try requireStorage(name, ds, count: info.count)
        if info.dtype == "bfloat16" {
            var bits = [UInt16](repeating: 0, count: count)
            let status = bits.withUnsafeMutableBytes {
                H5Dread(ds.id, chdf5_native_uint16(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
            }
            if status < 0 { throw PTQError.file(path, "cannot read dataset '\(name)' (truncated or corrupt file?)") }
            return bits.map { Float(bfloat16Bits: $0) }
        }
        var out = [Float](repeating: 0, count: count)
        let status = out.withUnsafeMutableBytes {
            H5Dread(ds.id, chdf5_native_float(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot read dataset '\(name)' (truncated or corrupt file?)") }
        return out
    }

    package func readInt32s(_ name: String) throws(PTQError) -> [Int32] {
        let info = try datasetInfo(name)
        try requireNumeric(name, info)
        let ds = try openDataset(name)
        try requireStorage(name, ds, count: info.count)
        var out = [Int32](repeating: 0, count: info.count)
        let status = out.withUnsafeMutableBytes {
            H5Dread(ds.id, chdf5_native_int32(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot read dataset '\(name)'") }
        return out
    }

    /// Reads a 1-D dataset of variable-length UTF-8 strings.
    package func readStrings(_ name: String) throws(PTQError) -> [String] {
        let info = try datasetInfo(name)
        guard info.isString else { throw PTQError.file(path, "dataset '\(name)' does not hold strings") }
        guard info.shape.count == 1 else {
            throw PTQError.file(path, "dataset '\(name)' has shape \(info.shape), expected a list of strings")
        }
        let ds = try openDataset(name)
        try requireStorage(name, ds, count: info.count)
        let count = info.count
        let fileType = HID(H5Dget_type(ds.id), close: H5Tclose)
        if H5Tis_variable_str(fileType.id) > 0 { try checkVariableLengthStrings(name, count: count) }
        let memType = HID(H5Tcopy(chdf5_c_s1()), close: H5Tclose)
        H5Tset_size(memType.id, chdf5_t_variable())
        H5Tset_cset(memType.id, H5T_CSET_UTF8)
        var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
        let status = pointers.withUnsafeMutableBytes {
            H5Dread(ds.id, memType.id, chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot read string dataset '\(name)'") }
        defer { for p in pointers where p != nil { H5free_memory(p) } }
        return pointers.map { $0.map { String(cString: $0) } ?? "" }
    }

    /// A dataset's declared size must be backed by stored bytes: a tiny file must not make
    /// PTQKit allocate gigabytes for a dataset whose storage was never written. Compression
    /// (h5py's gzip) is allowed up to a ratio far beyond what real tensors reach.
    private func requireStorage(_ name: String, _ ds: HID, count: Int) throws(PTQError) {
        let needed = count.multipliedReportingOverflow(by: 2)
        guard !needed.overflow else { throw PTQError.file(path, "dataset '\(name)' is too large") }
        guard needed.partialValue > 1 << 20 else { return }
        let stored = H5Dget_storage_size(ds.id)
        if stored < UInt64.max / 4096, stored * 4096 < UInt64(needed.partialValue) {
            throw PTQError.file(path, "dataset '\(name)' declares \(count) values but stores only \(stored) bytes "
                                + "(truncated or corrupt file?)")
        }
    }

    /// Numeric reads convert in HDF5; strings or compound types cannot be.
    private func requireNumeric(_ name: String, _ info: DatasetInfo) throws(PTQError) {
        if info.dtype == "other" || info.isString {
            throw PTQError.file(path, "dataset '\(name)' does not hold numbers")
        }
    }

    package enum StoredFloat { case float32, float16, bfloat16 }

    package func writeFloats(_ name: String, shape: [Int], data: [Float], as stored: StoredFloat) throws(PTQError) {
        var dims = shape.map { hsize_t($0) }
        let space = HID(H5Screate_simple(Int32(dims.count), &dims, nil), close: H5Sclose)
        let fileType: HID
        switch stored {
        case .float32: fileType = HID(H5Tcopy(chdf5_ieee_f32le()), close: H5Tclose)
        case .float16:
            // IEEE binary16, which h5py reads as numpy float16 (HDF5 1.10 has no predefined type).
            fileType = HID(H5Tcopy(chdf5_ieee_f32le()), close: H5Tclose)
            H5Tset_fields(fileType.id, 15, 10, 5, 0, 10)
            H5Tset_precision(fileType.id, 16)
            H5Tset_size(fileType.id, 2)
            H5Tset_ebias(fileType.id, 15)
        case .bfloat16:
            // No bfloat16 in HDF5 or h5py: raw uint16 bits plus a dtype attribute.
            fileType = HID(H5Tcopy(chdf5_std_u16le()), close: H5Tclose)
        }
        let ds = try createDataset(name, type: fileType.id, space: space.id)
        // Half-precision bits are produced here (round to nearest even) rather than by HDF5's
        // float conversion, which does not round the same way.
        let status: herr_t
        switch stored {
        case .bfloat16:
            let bits = data.map(\.bfloat16Bits)
            status = bits.withUnsafeBytes {
                H5Dwrite(ds.id, chdf5_native_uint16(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
            }
        case .float16:
            let bits = data.map { Float16($0).bitPattern }
            status = bits.withUnsafeBytes {
                H5Dwrite(ds.id, fileType.id, chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
            }
        case .float32:
            status = data.withUnsafeBytes {
                H5Dwrite(ds.id, chdf5_native_float(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
            }
        }
        if status < 0 { throw PTQError.file(path, "cannot write dataset '\(name)'") }
        if stored == .bfloat16 { try setAttribute(name, "dtype", "bfloat16") }
    }

    package func writeDoubles(_ name: String, shape: [Int], _ values: [Double]) throws(PTQError) {
        var dims = shape.map { hsize_t($0) }
        let space = HID(H5Screate_simple(Int32(dims.count), &dims, nil), close: H5Sclose)
        let ds = try createDataset(name, type: chdf5_ieee_f64le(), space: space.id)
        let status = values.withUnsafeBytes {
            H5Dwrite(ds.id, chdf5_native_double(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot write dataset '\(name)'") }
    }

    package func readDoubles(_ name: String) throws(PTQError) -> [Double] {
        let info = try datasetInfo(name)
        try requireNumeric(name, info)
        let ds = try openDataset(name)
        try requireStorage(name, ds, count: info.count)
        var out = [Double](repeating: 0, count: info.count)
        let status = out.withUnsafeMutableBytes {
            H5Dread(ds.id, chdf5_native_double(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot read dataset '\(name)' (truncated or corrupt file?)") }
        return out
    }

    package func writeInt64s(_ name: String, _ values: [Int64]) throws(PTQError) {
        var dims = [hsize_t(values.count)]
        let space = HID(H5Screate_simple(1, &dims, nil), close: H5Sclose)
        let ds = try createDataset(name, type: chdf5_std_i64le(), space: space.id)
        let status = values.withUnsafeBytes {
            H5Dwrite(ds.id, chdf5_native_int64(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot write dataset '\(name)'") }
    }

    package func readInt64s(_ name: String) throws(PTQError) -> [Int64] {
        let info = try datasetInfo(name)
        try requireNumeric(name, info)
        let ds = try openDataset(name)
        try requireStorage(name, ds, count: info.count)
        var out = [Int64](repeating: 0, count: info.count)
        let status = out.withUnsafeMutableBytes {
            H5Dread(ds.id, chdf5_native_int64(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot read dataset '\(name)'") }
        return out
    }

    package func writeInt32s(_ name: String, _ values: [Int32]) throws(PTQError) {
        var dims = [hsize_t(values.count)]
        let space = HID(H5Screate_simple(1, &dims, nil), close: H5Sclose)
        let ds = try createDataset(name, type: chdf5_std_i32le(), space: space.id)
        let status = values.withUnsafeBytes {
            H5Dwrite(ds.id, chdf5_native_int32(), chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot write dataset '\(name)'") }
    }

    package func writeStrings(_ name: String, _ values: [String]) throws(PTQError) {
        var dims = [hsize_t(values.count)]
        let space = HID(H5Screate_simple(1, &dims, nil), close: H5Sclose)
        let type = HID(H5Tcopy(chdf5_c_s1()), close: H5Tclose)
        H5Tset_size(type.id, chdf5_t_variable())
        H5Tset_cset(type.id, H5T_CSET_UTF8)
        let ds = try createDataset(name, type: type.id, space: space.id)
        var pointers = values.map { strdup($0) }
        defer { pointers.forEach { free($0) } }
        let status = pointers.withUnsafeMutableBytes {
            H5Dwrite(ds.id, type.id, chdf5_s_all(), chdf5_s_all(), chdf5_p_default(), $0.baseAddress)
        }
        if status < 0 { throw PTQError.file(path, "cannot write string dataset '\(name)'") }
    }

    private func createDataset(_ name: String, type: hid_t, space: hid_t) throws(PTQError) -> HID {
        let lcpl = H5Pcreate(chdf5_p_link_create())
        defer { H5Pclose(lcpl) }
        H5Pset_create_intermediate_group(lcpl, 1)
        let ds = H5Dcreate2(handle.id, name, type, space, lcpl, chdf5_p_default(), chdf5_p_default())
        if ds < 0 { throw PTQError.file(path, "cannot create dataset '\(name)'") }
        return HID(ds, close: H5Dclose)
    }

    // MARK: Attributes (on any object, addressed by path; "." is the root)

    package func hasAttribute(_ object: String, _ attribute: String) -> Bool {
        H5Aexists_by_name(handle.id, object, attribute, chdf5_p_default()) > 0
    }

    private func openAttribute(_ object: String, _ attribute: String) throws(PTQError) -> HID {
        guard object == "." || exists(object), hasAttribute(object, attribute) else {
            throw PTQError.file(path, "missing attribute '\(attribute)' on '\(object == "." ? "/" : object)'")
        }
        let a = H5Aopen_by_name(handle.id, object, attribute, chdf5_p_default(), chdf5_p_default())
        if a < 0 { throw PTQError.file(path, "cannot open attribute '\(attribute)' on '\(object)'") }
        return HID(a, close: H5Aclose)
    }

    package func stringAttribute(_ object: String, _ attribute: String) throws(PTQError) -> String {
        let a = try openAttribute(object, attribute)
        let fileType = HID(H5Aget_type(a.id), close: H5Tclose)
        guard H5Tget_class(fileType.id) == H5T_STRING else {
            throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is not a string")
        }
        let stringSpace = HID(H5Aget_space(a.id), close: H5Sclose)
        guard H5Sget_simple_extent_npoints(stringSpace.id) == 1 else {
            throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is not a single string")
        }
        if H5Tis_variable_str(fileType.id) > 0 {
            let memType = HID(H5Tcopy(chdf5_c_s1()), close: H5Tclose)
            H5Tset_size(memType.id, chdf5_t_variable())
            H5Tset_cset(memType.id, H5Tget_cset(fileType.id))
            var pointer: UnsafeMutablePointer<CChar>? = nil
            if H5Aread(a.id, memType.id, &pointer) < 0 {
                throw PTQError.file(path, "cannot read attribute '\(attribute)' on '\(object)'")
            }
            defer { H5free_memory(pointer) }
            return pointer.map { String(cString: $0) } ?? ""
        }
        let size = H5Tget_size(fileType.id)
        guard size < 1 << 26 else { throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is too large") }
        var buffer = [UInt8](repeating: 0, count: size + 1)
        if H5Aread(a.id, fileType.id, &buffer) < 0 {
            throw PTQError.file(path, "cannot read attribute '\(attribute)' on '\(object)'")
        }
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
    }

    package func doubleAttribute(_ object: String, _ attribute: String) throws(PTQError) -> Double {
        let a = try openAttribute(object, attribute)
        let fileType = HID(H5Aget_type(a.id), close: H5Tclose)
        let cls = H5Tget_class(fileType.id)
        guard cls == H5T_FLOAT || cls == H5T_INTEGER else {
            throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is not a number")
        }
        let space = HID(H5Aget_space(a.id), close: H5Sclose)
        guard H5Sget_simple_extent_npoints(space.id) == 1 else {
            throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is not a single number")
        }
        var value: Double = 0
        if H5Aread(a.id, chdf5_native_double(), &value) < 0 {
            throw PTQError.file(path, "cannot read attribute '\(attribute)' on '\(object)'")
        }
        return value
    }

    package func intAttribute(_ object: String, _ attribute: String) throws(PTQError) -> Int {
        // Integers are read as int64, exactly (a Double would lose 64-bit values such as seeds).
        let a = try openAttribute(object, attribute)
        let fileType = HID(H5Aget_type(a.id), close: H5Tclose)
        if H5Tget_class(fileType.id) == H5T_INTEGER {
            let space = HID(H5Aget_space(a.id), close: H5Sclose)
            guard H5Sget_simple_extent_npoints(space.id) == 1 else {
                throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is not a single number")
            }
            if H5Tget_sign(fileType.id) != H5T_SGN_2, H5Tget_size(fileType.id) >= 8 {
                var unsigned: UInt64 = 0
                if H5Aread(a.id, chdf5_native_uint64(), &unsigned) < 0 {
                    throw PTQError.file(path, "cannot read attribute '\(attribute)' on '\(object)'")
                }
                guard let value = Int(exactly: unsigned) else {
                    throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is too large (\(unsigned))")
                }
                return value
            }
            var value: Int64 = 0
            if H5Aread(a.id, chdf5_native_int64(), &value) < 0 {
                throw PTQError.file(path, "cannot read attribute '\(attribute)' on '\(object)'")
            }
            return Int(value)
        }
        let value = try doubleAttribute(object, attribute)
        guard value == value.rounded(), abs(value) < 1e15 else {
            throw PTQError.file(path, "attribute '\(attribute)' on '\(object)' is not an integer (\(value))")
        }
        return Int(value)
    }

    package func setAttribute(_ object: String, _ attribute: String, _ value: String) throws(PTQError) {
        let type = HID(H5Tcopy(chdf5_c_s1()), close: H5Tclose)
        H5Tset_size(type.id, max(value.utf8.count, 1))
        H5Tset_cset(type.id, H5T_CSET_UTF8)
        H5Tset_strpad(type.id, H5T_STR_NULLPAD)
        let space = HID(H5Screate(H5S_SCALAR), close: H5Sclose)
        let a = try createAttribute(object, attribute, type.id, space.id)
        var bytes = Array(value.utf8)
        if bytes.isEmpty { bytes = [0] }
        if H5Awrite(a.id, type.id, bytes) < 0 {
            throw PTQError.file(path, "cannot write attribute '\(attribute)'")
        }
    }

    package func setAttribute(_ object: String, _ attribute: String, _ value: Int) throws(PTQError) {
        let space = HID(H5Screate(H5S_SCALAR), close: H5Sclose)
        let a = try createAttribute(object, attribute, chdf5_std_i64le(), space.id)
        var v = Int64(value)
        if H5Awrite(a.id, chdf5_native_int64(), &v) < 0 {
            throw PTQError.file(path, "cannot write attribute '\(attribute)'")
        }
    }

    package func setAttribute(_ object: String, _ attribute: String, _ value: Double) throws(PTQError) {
        let space = HID(H5Screate(H5S_SCALAR), close: H5Sclose)
        let a = try createAttribute(object, attribute, chdf5_ieee_f64le(), space.id)
        var v = value
        if H5Awrite(a.id, chdf5_native_double(), &v) < 0 {
            throw PTQError.file(path, "cannot write attribute '\(attribute)'")
        }
    }

    private func createAttribute(_ object: String, _ attribute: String, _ type: hid_t, _ space: hid_t) throws(PTQError) -> HID {
        if hasAttribute(object, attribute) { H5Adelete_by_name(handle.id, object, attribute, chdf5_p_default()) }
        let a = H5Acreate_by_name(handle.id, object, attribute, type, space, chdf5_p_default(), chdf5_p_default(), chdf5_p_default())
        if a < 0 { throw PTQError.file(path, "cannot create attribute '\(attribute)' on '\(object)'") }
        return HID(a, close: H5Aclose)
    }
}

