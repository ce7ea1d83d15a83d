import CHDF5
import Foundation
import PTQCore

/// Variable-length strings are stored in HDF5 "global heap" collections, which carry no
/// checksum, and libhdf5 trusts the object sizes it finds there: a damaged collection makes
/// `H5Dread` copy past its buffers (a crash, found by the mutation fuzz tests). So before HDF5
/// reads a string dataset, its on-disk elements and the heap objects they point to are checked
/// here against each other and the file size (HDF5 file format spec, "Global Heap").
extension HDF5File {
    /// Throws when an element of the contiguous variable-length string dataset `name` points
    /// outside the file, to a missing or malformed heap object, or to one whose size is not the
    /// element's length. Datasets that are empty or not stored contiguously are left to HDF5.
    func checkVariableLengthStrings(_ name: String, count: Int) throws(PTQError) {
        guard count > 0 else { return }
        let ds = try openDataset(name)
        let offset = H5Dget_offset(ds.id)
        guard offset != haddr_t.max else { return }
        func fail(_ what: String) -> PTQError {
            PTQError.file(path, "string dataset '\(name)' is corrupted (\(what))")
        }
        var sizeofAddress = 8, sizeofSize = 8
        let plist = H5Fget_create_plist(handle.id)
        if plist >= 0 {
            defer { H5Pclose(plist) }
            var a = 0, s = 0
            if H5Pget_sizes(plist, &a, &s) >= 0 { sizeofAddress = a; sizeofSize = s }
        }
        guard [2, 4, 8].contains(sizeofAddress), [2, 4, 8].contains(sizeofSize) else { throw fail("unsupported address size") }

        guard let handle = FileHandle(forReadingAtPath: path) else { throw PTQError.file(path, "cannot read the file") }
        defer { try? handle.close() }
        let fileSize: UInt64
        do { fileSize = try handle.seekToEnd() } catch { throw PTQError.file(path, "cannot read the file") }
        func read(_ at: UInt64, _ length: Int) throws(PTQError) -> [UInt8] {
            guard length >= 0, at <= fileSize, UInt64(length) <= fileSize - at else {
                throw fail("reference to bytes \(at)..<\(at &+ UInt64(max(length, 0))) outside the \(fileSize)-byte file")
            }
            do {
                try handle.seek(toOffset: at)
                let data = try handle.read(upToCount: length) ?? Data()
                guard data.count == length else { throw fail("short read") }
                return [UInt8](data)
            } catch let error as PTQError {
                throw error
            } catch {
                throw fail("cannot read: \(error)")
            }
        }
        func integer(_ bytes: [UInt8], _ at: Int, _ size: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in 0..<size { v |= UInt64(bytes[at + k]) << (8 * UInt64(k)) }
            return v
        }

        let elementSize = 4 + sizeofAddress + 4
        guard let total = Validation.checkedProduct([count, elementSize]) else { throw fail("too many elements") }
        let elements = try read(UInt64(offset), total)

        // Heap collections by address: object index → object size.
        var collections: [UInt64: [UInt64: UInt64]] = [:]
        func collection(at address: UInt64) throws(PTQError) -> [UInt64: UInt64] {
            if let known = collections[address] { return known }
            let headerSize = 8 + sizeofSize
            let header = try read(address, headerSize)
            guard header[0] == 0x47, header[1] == 0x43, header[2] == 0x4F, header[3] == 0x4C, header[4] == 1 else {
                throw fail("no heap collection at \(address)")
            }
            let size = integer(header, 8, sizeofSize)
            guard size >= UInt64(headerSize), size <= 1 << 31 else { throw fail("heap collection size \(size)") }
            let body = try read(address, Int(size))
            var objects: [UInt64: UInt64] = [:]
            var at = headerSize
            let objectHeader = 8 + sizeofSize
            while at + objectHeader <= body.count {
                let index = integer(body, at, 2)
                let objectSize = integer(body, at + 8, sizeofSize)
                if index == 0 { break }  // free space: the rest of the collection
                let padded = (objectSize + 7) / 8 * 8
                guard objectSize <= UInt64(body.count), padded <= UInt64(body.count - at - objectHeader) else {
                    throw fail("heap object \(index) of \(objectSize) bytes overruns its collection")
                }
                objects[index] = objectSize
                at += objectHeader + Int(padded)
            }
            collections[address] = objects
            return objects
        }

        for i in 0..<count {
            let base = i * elementSize
            let length = integer(elements, base, 4)
            let address = integer(elements, base + 4, sizeofAddress)
            let index = integer(elements, base + 4 + sizeofAddress, 4)
            if length == 0 && address == 0 { continue }
            let objects = try collection(at: address)
            guard let size = objects[index] else { throw fail("element \(i) refers to a missing heap object") }
            guard size == length else {
                throw fail("element \(i) is \(length) bytes but its heap object holds \(size)")
            }
        }
    }
}
