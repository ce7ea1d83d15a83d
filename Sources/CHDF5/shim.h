// HDF5 exposes its property-list ids, access flags and type ids as macros over globals that
// Swift 6 cannot import (or rejects as not concurrency-safe). These inline shims expand the
// macros in C, which also runs H5open() the way the macros do.
#include <hdf5.h>

static inline hid_t    chdf5_p_default(void)     { return H5P_DEFAULT; }
static inline hid_t    chdf5_s_all(void)         { return H5S_ALL; }
static inline hid_t    chdf5_e_default(void)     { return H5E_DEFAULT; }
static inline hid_t    chdf5_p_file_create(void) { return H5P_FILE_CREATE; }
static inline hid_t    chdf5_p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t    chdf5_p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t    chdf5_p_link_create(void) { return H5P_LINK_CREATE; }
static inline unsigned chdf5_f_acc_rdonly(void)  { return H5F_ACC_RDONLY; }
static inline unsigned chdf5_f_acc_trunc(void)   { return H5F_ACC_TRUNC; }
static inline unsigned chdf5_f_acc_rdwr(void)    { return H5F_ACC_RDWR; }
static inline unsigned chdf5_f_acc_excl(void)    { return H5F_ACC_EXCL; }
static inline size_t   chdf5_t_variable(void)    { return H5T_VARIABLE; }
static inline hid_t    chdf5_native_float(void)  { return H5T_NATIVE_FLOAT; }
static inline hid_t    chdf5_native_double(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t    chdf5_native_int8(void)   { return H5T_NATIVE_INT8; }
static inline hid_t    chdf5_native_uint8(void)  { return H5T_NATIVE_UINT8; }
static inline hid_t    chdf5_native_int32(void)  { return H5T_NATIVE_INT32; }
static inline hid_t    chdf5_native_int64(void)  { return H5T_NATIVE_INT64; }
static inline hid_t    chdf5_native_uint64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t    chdf5_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t    chdf5_ieee_f32le(void)    { return H5T_IEEE_F32LE; }
static inline hid_t    chdf5_ieee_f64le(void)    { return H5T_IEEE_F64LE; }
static inline hid_t    chdf5_std_u16le(void)     { return H5T_STD_U16LE; }
static inline hid_t    chdf5_std_i32le(void)     { return H5T_STD_I32LE; }
static inline hid_t    chdf5_std_i64le(void)     { return H5T_STD_I64LE; }
static inline hid_t    chdf5_std_u8le(void)      { return H5T_STD_U8LE; }
static inline hid_t    chdf5_std_i8le(void)      { return H5T_STD_I8LE; }
static inline hid_t    chdf5_c_s1(void)          { return H5T_C_S1; }
