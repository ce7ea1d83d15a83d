#ifndef CK_BINARY_KERNELS_H
#define CK_BINARY_KERNELS_H
#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Binarized-weight kernels (binary_gemv.c) for PTQ1.61 / PB-LLM-style / plain binarization.
//
// signs: row-major bit matrix, words_per_row 64-bit words per row; bit k of word w is column
// 64·w + k of the row (1 = +1, 0 = −1). mask (element masks only, else NULL): same layout,
// 1 = salient (excluded from the binarized part). x holds words_per_row·64 floats, zero-padded
// past the real columns, so the loops need no tail (padding bits multiply zeros).
//
// For o in [row_begin, row_begin + row_count):
//   mask == NULL: acc = Σ_k s_ok·x_k;                      y[o] = a[o]·acc + b[o]·x_sum
//   mask != NULL: acc = Σ_{k: m_ok = 0} s_ok·x_k, n = Σ_{k: m_ok = 0} x_k;
//                 y[o] = a[o]·acc + b[o]·n, and rest[o] = n when rest != NULL.
// The signs are applied with bit tricks (each bit shifted into the float sign position and
// xor-ed onto x), never unpacked to a float matrix.

void ck_binary_gemv(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                    size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                    float *y, float *rest);
/// Plain scalar twin of ck_binary_gemv.
void ck_binary_gemv_ref(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                        size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                        float *y, float *rest);

// Prefill tiles of a column-masked binary weight (PTQ1.61): rows [row_begin, row_begin +
// row_count) as floats into out[row_count, cols] (row-major, natural column order), the values
// BinaryWeight.dequantizedReference gives, operation for operation:
//   binarized column j (bit j of binary_mask set; c = its rank among the binarized columns):
//       out[r, j] = col_scale[j] · (bit c of the row's signs ? a[o] + b[o] : b[o] − a[o])
//   salient column j (bit clear; s = its rank among the salient columns, u its code):
//       out[r, j] = d[o] · ((float)u − z[o])
// binary_mask: (cols + 63) / 64 words over the natural columns; col_scale: cols floats (its
// values at salient columns are not read); salient codes: ns per row at row stride
// code_stride bytes, two per byte (low nibble first) when nibbles, else one byte each.
// Float columns (outliers) are the caller's to overwrite afterwards.
void ck_binary_decode_rows(const uint64_t *signs, size_t words_per_row, const uint64_t *binary_mask,
                           const float *col_scale, const float *a, const float *b, const uint8_t *codes,
                           int nibbles, size_t code_stride, size_t ns, const float *d, const float *z,
                           size_t row_begin, size_t row_count, size_t cols, float *out);
/// Plain scalar twin of ck_binary_decode_rows.
void ck_binary_decode_rows_ref(const uint64_t *signs, size_t words_per_row, const uint64_t *binary_mask,
                               const float *col_scale, const float *a, const float *b, const uint8_t *codes,
                               int nibbles, size_t code_stride, size_t ns, const float *d, const float *z,
                               size_t row_begin, size_t row_count, size_t cols, float *out);

// Table-lookup sign GEMV (u4_planes.c): the column-mask case of ck_binary_gemv (mask == NULL) on
// the sign bits re-laid out once, at load, as a single bit plane in u4_planes.c's blocks of 16
// rows × 32 columns (64 bytes per row block and chunk, one group over all `cols` columns; rows
// padded to 16, columns to 32 with bit 0 and x 0). Per call, ck_u4_plane_tables(x, cols, 0,
// tables, &x_sum) builds the 16-float tables of x (ck_sign_planes_quads(cols) · 16 floats) and
// Σx; then for rows o of row blocks [block_begin, block_begin + block_count):
//   y[o] = a[o]·(2·Σ_j bit_oj·x_j − x_sum) + b[o]·x_sum   (= a[o]·Σ_j s_oj·x_j + b[o]·x_sum).
// The same value as ck_binary_gemv up to float summation order. AVX-512 when
// ck_u4_planes_supported(); the _ref twin gives the same bits.
size_t ck_sign_planes_words(size_t rows, size_t cols);
/// 4-column quads per row (tables of 16 floats each).
size_t ck_sign_planes_quads(size_t cols);
/// bits: one byte per sign, row-major [rows, cols], 1 = +1, 0 = −1.
void ck_sign_planes_pack(const uint8_t *bits, size_t rows, size_t cols, uint64_t *planes);
void ck_gemv_sign_planes(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows, size_t cols,
                         const float *tables, float x_sum, const float *a, const float *b, float *y);
/// Plain scalar twin of ck_gemv_sign_planes.
void ck_gemv_sign_planes_ref(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows,
                             size_t cols, const float *tables, float x_sum, const float *a, const float *b,
                             float *y);

// Sign GEMV on int8 activations (binary_sign_i8.c, issue 13 eleventh pass): the column-mask case
// of ck_binary_gemv on the row-major sign words, with the binarized inputs x̃_k = r2_k·x[columns[k]]
// (k < nb) gathered and quantized to int8 once per call by ck_sign_i8_prepare:
//   m = max_k |x̃_k|, q_k = round_half_even(x̃_k · (127/m)) clamped to ±127 (0 when m = 0),
//   scale = m/127, q_sum = Σ q_k, x_sum = Σ x̃_k (float: 8 partial sums over k mod 8, pairwise);
// then for rows o in [row_begin, row_begin + row_count):
//   y[o] = fma(a[o], scale·(2·Σ_{s_ok=+1} q_k − q_sum), b[o]·x_sum)   (= a[o]·scale·Σ_k s_ok·q_k + b[o]·x_sum).
// Against the float GEMV the error is only the rounding of x̃: |Δy_o| ≤ |a[o]|·nb·scale/2 (each
// |x̃_k − scale·q_k| ≤ scale/2), in practice ~√nb·scale/√12 (random signs). The sums are exact
// int32, so the AVX-512 VNNI + BW kernel (ck_sign_i8_supported) gives the _ref twins' bits. xt:
// nb floats of scratch; xq: 64·words_per_row bytes (zero past nb). A non-finite x gives NaN/inf y.
typedef struct {
    float scale;
    int32_t q_sum;
    float x_sum;
} CKSignI8Input;
int ck_sign_i8_supported(void);
/// The switch BinaryLinear reads (on unless PTQ_SIGN_I8=0 in the environment at first use).
int ck_sign_i8_enabled(void);
void ck_set_sign_i8_enabled(int enabled);
void ck_sign_i8_prepare(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb, size_t words_per_row,
                        float *xt, int8_t *xq, CKSignI8Input *in);
void ck_sign_i8_prepare_ref(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb, size_t words_per_row,
                            float *xt, int8_t *xq, CKSignI8Input *in);
void ck_gemv_sign_i8(const uint64_t *signs, size_t words_per_row, size_t row_begin, size_t row_count,
                     const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b, float *y);
void ck_gemv_sign_i8_ref(const uint64_t *signs, size_t words_per_row, size_t row_begin, size_t row_count,
                         const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b, float *y);

// Lookup-table form of ck_gemv_sign_i8 (binary_sign_i8.c, issue 13 twelfth pass; T-MAC style),
// the same numerics and bits. ck_sign_lut_repack re-lays the row-major sign words in place (same
// memory) for whole 16-row blocks: block b's 16·words_per_row words become 2·words_per_row chunks
// of 64 bytes, byte 16·l + r of chunk c = row 16b + r's bits of columns 32c + 4l … + 3 (low
// nibble) and 32c + 16 + 4l … + 3 (high nibble); rows past rows − rows % 16 stay row-major.
// Returns 0, or −1 if its block-sized temporary could not be allocated (layout unchanged).
// ck_sign_lut_unpack gives row-major words back for rows [row_begin, row_begin + row_count).
// ck_sign_lut_tables: from the prepared codes xq (64·words_per_row bytes) the per-4-column
// tables T_g[n] = Σ_{bit i of n} xq[4g + i] as low bytes (tab[128q + 16l + n], g = 4q + l) and
// high bytes (tab[128q + 64 + 16l + n]); tab holds 512·words_per_row bytes. ck_gemv_sign_lut
// (AVX-512 BW where ck_sign_i8_supported) and its scalar twin ck_gemv_sign_lut_ref give
// ck_gemv_sign_i8_ref's bits on the repacked words (exact int16/int32 sums). PTQ_SIGN_LUT=0 in
// the environment turns ck_sign_lut_enabled off (layers then keep row-major words).
int ck_sign_lut_enabled(void);
void ck_set_sign_lut_enabled(int enabled);
int ck_sign_lut_repack(uint64_t *signs, size_t rows, size_t words_per_row);
void ck_sign_lut_unpack(const uint64_t *signs, size_t rows, size_t words_per_row, size_t row_begin, size_t row_count,
                        uint64_t *out);
void ck_sign_lut_tables(const int8_t *xq, size_t words_per_row, int8_t *tab);
void ck_sign_lut_tables_ref(const int8_t *xq, size_t words_per_row, int8_t *tab);
void ck_gemv_sign_lut(const uint64_t *signs, size_t words_per_row, size_t rows, size_t row_begin, size_t row_count,
                      const int8_t *xq, const int8_t *tab, const CKSignI8Input *in, const float *a, const float *b,
                      float *y);
void ck_gemv_sign_lut_ref(const uint64_t *signs, size_t words_per_row, size_t rows, size_t row_begin,
                          size_t row_count, const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b,
                          float *y);

// Row-major bits and nibbles back from the plane layouts (u4_planes.c), for the prefill tiles of
// binary layers whose only copy of the sign bits / salient codes is the planes (issue 13). Exact
// bit rearrangements; BMI2 (pext/pdep) where present, the _ref twins are plain loops.
/// Sign planes of a rows × cols layout (ck_sign_planes_pack) → rows [row_begin, +row_count) as
/// words_per_row 64-bit words each (bit j of the row = column j; zero past cols).
void ck_sign_planes_unpack_words(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows, size_t cols,
                                 uint64_t *out, size_t words_per_row);
void ck_sign_planes_unpack_words_ref(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                                     size_t cols, uint64_t *out, size_t words_per_row);
/// u4 planes with ONE group per row (ck_u4_planes_pack, group_size = cols) → nibble rows at
/// `stride` bytes, (cols + 1) / 2 ≤ stride ≤ the row's whole 16-byte chunks: code 2i in the low
/// nibble of byte i (LowBit.packNibbles), zero high nibble past an odd column count.
void ck_u4_planes_unpack_nibbles(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows, size_t cols,
                                 uint8_t *out, size_t stride);
void ck_u4_planes_unpack_nibbles_ref(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                                     size_t cols, uint8_t *out, size_t stride);

// Salient columns of column-masked binary layers on the bf16 decode GEMV (binary_salient_bf16.c,
// issue 13 tenth pass): 4-bit codes q (one Δ and z per row), x_s rounded to bf16 once per call:
//   y[o] = Δ[o]·(A_o − (128 + z[o])·X),   A_o = Σ_j (128 + q[o,j])·x̃_j,   X = Σ_j x̃_j,
// x̃ = bf16(x_s) (VCVTNE2PS2BF16, ck_bf16.h). A code is exact in bf16 as 0x4300 | q = 128 + q.
// Layout: per block of 16 rows and chunk of 8 columns, 16 uint32 words (one per row; rows past
// `rows` and columns past `cols` hold code 0): bits 4p…4p+3 hold column 8m + 2p, bits 16 + 4p…
// column 8m + 2p + 1 (p = 0…3), so (word >> 4p) & 0x000F000F | 0x43004300 is the bf16 pair of
// column pair p against the broadcast x̃ pair (VDPBF16PS, 16 rows at a time, no lane reduction).
// Order of operations (the `_ref` twin emulates it bit for bit with bf16_emul.h's VDPBF16PS
// step): per row eight fp32 accumulators acc[m mod 2][p] (chunk parity, pair p), each chunk m
// in order adding its pair p to acc[m mod 2][p] (odd column's product first, then the even
// one's); P_p = acc[0][p] + acc[1][p]; A = (P₀ + P₁) + (P₂ + P₃);
// y = Δ·fma(−(128 + z), X, A); X = Σ x̃ in column order (prepare). Error against the exact
// Σ Δ(q − z)x̃: as ck_bf16_gemv.h's, ≤ (cols/8 + 8)·2⁻²⁴·M·(1 + 10⁻³) with
// M = |Δ|·Σ_j (128 + q_j + 128 + z)|x̃_j|; beside it the rounding of x_s to bf16 (≤ 2⁻⁹ relative).
size_t ck_salient_bf16_words(size_t rows, size_t cols);
/// uint16 elements of a prepared x̃ row: cols rounded up to 8 (zero pad).
size_t ck_salient_bf16_x_count(size_t cols);
/// Row-major codes [rows, cols], one per byte (low 4 bits) → the layout above.
void ck_salient_bf16_pack(const uint8_t *codes, size_t rows, size_t cols, uint32_t *out);
/// Rows [row_begin, row_begin + row_count) → nibble rows at `stride` ≥ (cols + 1) / 2 bytes
/// (code 2i in the low nibble of byte i, as LowBit.packNibbles): for prefill tiles.
void ck_salient_bf16_unpack_nibbles(const uint32_t *packed, size_t row_begin, size_t row_count, size_t rows,
                                    size_t cols, uint8_t *out, size_t stride);
/// x[cols] → xb[ck_salient_bf16_x_count(cols)] and X.
void ck_salient_bf16_prepare(const float *x, size_t cols, uint16_t *xb, float *xsum);
void ck_salient_bf16_prepare_ref(const float *x, size_t cols, uint16_t *xb, float *xsum);
/// y for the 16-row blocks [block_begin, block_begin + block_count); the fast version needs
/// ck_cpu_has_avx512bf16() (else it runs the twin: same bits). accumulate ≠ 0: y[o] += the
/// result (one float add, the bits of a separate y += ys pass) instead of y[o] = the result.
void ck_gemv_salient_bf16(const uint32_t *packed, size_t block_begin, size_t block_count, size_t rows, size_t cols,
                          const float *scales, const float *zeros, const uint16_t *xb, float xsum, float *y,
                          int accumulate);
void ck_gemv_salient_bf16_ref(const uint32_t *packed, size_t block_begin, size_t block_count, size_t rows,
                              size_t cols, const float *scales, const float *zeros, const uint16_t *xb, float xsum,
                              float *y, int accumulate);

#endif
