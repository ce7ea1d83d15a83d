#ifndef CKERNELS_H
#define CKERNELS_H
#include <stdint.h>
#include <stddef.h>

/// 1 when the CPU has AVX2, FMA and F16C (checked once at run time).
int ck_cpu_has_avx2(void);

/// Sum of a[i]*b[i] over n int8 values, exact in int32. Codes must lie in [-127, 127]:
/// the AVX2 path uses maddubs, which saturates for -128*-128 pairs.
int32_t ck_dot_i8(const int8_t *a, const int8_t *b, size_t n);
/// Plain scalar twin of ck_dot_i8, used by tests and as the portable fallback.
int32_t ck_dot_i8_ref(const int8_t *a, const int8_t *b, size_t n);

// ---------------------------------------------------------------------------------------------
// Integer GEMM for quantized activations × int8 weight codes (gemm_i8.c).
//
// a: activation codes [m, k] row-major, in [-127, 127]. b: weight codes [n, k] row-major
// (one row per output channel), in [-128, 127]. The AVX2 path takes |b| as the unsigned maddubs
// operand and moves b's sign onto a, so a must avoid -128 but b may use it.

/// c[i*ldc + j] = sum_t a[i*k + t] * b[j*k + t], exact in int32 for k ≤ 2^17 (127·128·2^17 < 2^31).
/// 4×2 register-blocked AVX2 micro-kernel after the run-time check, else the reference.
void ck_gemm_i8(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                int32_t *c, size_t ldc);
/// Plain scalar twin of ck_gemm_i8.
void ck_gemm_i8_ref(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                    int32_t *c, size_t ldc);

/// Grouped variant: k splits into groups of group_size consecutive columns (the last may be
/// shorter), G = ceil(k / group_size) groups; wscale is [n, G] row-major.
/// c[i*ldc + j] = sum_g wscale[j*G + g] * (float)(exact int32 group dot), summed over g in
/// order with a separate multiply and add, so the AVX2 path equals the reference bit for bit.
void ck_gemm_i8_grouped(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                        size_t group_size, const float *wscale, float *c, size_t ldc);
void ck_gemm_i8_grouped_ref(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                            size_t group_size, const float *wscale, float *c, size_t ldc);

// ---------------------------------------------------------------------------------------------
// Weight-only kernels on unsigned codes with float activations (qgemv.c).
//
// Layouts: u8 codes are one byte per element, row stride = cols. u4 codes hold two elements
// per byte (element 2i in the low nibble, 2i+1 in the high nibble), each row starting on a byte
// boundary: row stride = (cols + 1) / 2, the spare high nibble of an odd row is ignored.
// scales and zeros are [rows, G] row-major with G = ceil(cols / group_size); zeros is required
// (symmetric codes pass 2^(bits-1)). The element value is scale * ((float)u - zero).

/// Row stride in bytes of a u4 matrix with cols columns.
size_t ck_u4_row_bytes(size_t cols);

/// For o in [row_begin, row_begin + row_count):
/// y[o] = sum_g scale[o,g] * (sum_{j in g} x[j]*u[o,j] - zero[o,g] * sum_{j in g} x[j]).
/// codes/scales/zeros/y address the whole matrix; only the row range is read and written.
void ck_gemv_u4_f32(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                    size_t group_size, const float *scales, const float *zeros,
                    const float *x, float *y);
void ck_gemv_u4_f32_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros,
                        const float *x, float *y);
void ck_gemv_u8_f32(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                    size_t group_size, const float *scales, const float *zeros,
                    const float *x, float *y);
void ck_gemv_u8_f32_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros,
                        const float *x, float *y);

/// out[(r - row_begin)*cols + j] = scale[r,g] * ((float)u[r,j] - zero[r,g]) for the row range
/// (the same float operations as IntegerWeight.value, so the result is exact).
void ck_dequant_u4_rows(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros, float *out);
void ck_dequant_u4_rows_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                            size_t group_size, const float *scales, const float *zeros, float *out);
void ck_dequant_u8_rows(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros, float *out);
void ck_dequant_u8_rows_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                            size_t group_size, const float *scales, const float *zeros, float *out);

// Table-lookup u4 GEMV (u4_planes.c): the same product as ck_gemv_u4_f32 on codes re-laid out
// at load time plane-major in blocks of 16 rows x 32 columns (layout in u4_planes.c). Per call,
// ck_u4_plane_tables builds one 16-float table per 4-column quad of x plus the group sums of x;
// ck_gemv_u4_planes then reads row blocks [block_begin, block_begin + block_count) and writes
// y[16*block_begin ...] (rows past `rows` are not written). The fast path needs AVX-512F
// (ck_u4_planes_supported); the _ref twins give the same bits.

/// 4-column quads per row: 8 * ceil(G/32) per group (the last group: 8 * ceil(its columns/32)).
size_t ck_u4_planes_quads(size_t cols, size_t group_size);
/// 64-bit words of the plane layout: ceil(rows/16) * quads * 4 + 8 (64 bytes of padding).
size_t ck_u4_planes_words(size_t rows, size_t cols, size_t group_size);
/// Floats of the blocked scales (and of the blocked zeros): ceil(rows/16) * 16 * groups.
size_t ck_u4_planes_param_count(size_t rows, size_t cols, size_t group_size);
/// codes: one byte per code (< 16), [rows, cols] row-major.
void ck_u4_planes_pack(const uint8_t *codes, size_t rows, size_t cols, size_t group_size, uint64_t *planes);
/// scales, zeros [rows, G] -> [row blocks][G][16] (padded rows 0).
void ck_u4_planes_pack_params(const float *scales, const float *zeros, size_t rows, size_t cols,
                              size_t group_size, float *block_scales, float *block_zeros);
/// tables: [quads][16] floats; xsums: [G] floats.
void ck_u4_plane_tables(const float *x, size_t cols, size_t group_size, float *tables, float *xsums);
void ck_u4_plane_tables_ref(const float *x, size_t cols, size_t group_size, float *tables, float *xsums);
void ck_gemv_u4_planes(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows,
                       size_t cols, size_t group_size, const float *block_scales, const float *block_zeros,
                       const float *tables, const float *xsums, float *y);
void ck_gemv_u4_planes_ref(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows,
                           size_t cols, size_t group_size, const float *block_scales,
                           const float *block_zeros, const float *tables, const float *xsums, float *y);
/// 1 when the AVX-512 table kernel runs on this CPU.
int ck_u4_planes_supported(void);
/// Prefill tiles from the plane layout (the only copy of the codes where it exists):
/// out[(r - row_begin)*cols + j] = block_scale(r, g) * ((float)u[r, j] - block_zero(r, g)) for rows
/// [row_begin, row_begin + row_count), any row range; the same float operations as
/// ck_dequant_u4_rows_ref (IntegerWeight.value), so the same bits. AVX-512 as above.
void ck_dequant_u4_planes_rows(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                               size_t cols, size_t group_size, const float *block_scales, const float *block_zeros,
                               float *out);
void ck_dequant_u4_planes_rows_ref(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                                   size_t cols, size_t group_size, const float *block_scales,
                                   const float *block_zeros, float *out);

// ---------------------------------------------------------------------------------------------
// Activation quantization (quant_act.c).

/// Quantizes rows of float activations to int8 codes. Per row i and column j:
/// v = (x[i,j] - shift[j]) / channel_scale[j] (each step only when the pointer is non-NULL),
/// step_i = static_step when static_step > 0, else absmax_j(v) / max_code (per token);
/// code = clamp(roundf(v / step_i), -max_code, max_code) (roundf: half away from zero).
/// row_steps[i] = step_i; a row whose step is 0 or not finite gets all-zero codes.
/// max_code is 2^(bits-1) - 1, at most 127.
void ck_quantize_rows_i8(const float *x, size_t rows, size_t cols, const float *shift,
                         const float *channel_scale, int max_code, float static_step,
                         int8_t *codes, float *row_steps);
/// Plain scalar twin of ck_quantize_rows_i8.
void ck_quantize_rows_i8_ref(const float *x, size_t rows, size_t cols, const float *shift,
                             const float *channel_scale, int max_code, float static_step,
                             int8_t *codes, float *row_steps);

#endif
