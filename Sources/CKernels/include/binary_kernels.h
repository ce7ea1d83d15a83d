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

// Fused decode row of column-masked binary layers on planes (binary_gemv.c, issue 13 ninth pass):
// the sign-plane GEMV and the salient u4-plane GEMV of one or more layers that read the same x,
// as ONE pool job, from tables built in ONE pass over x.
//
// ck_binary_plane_tables gathers x̃_k = col_scale[k]·x[binary_cols[k]] (k < nb) and
// x_s,k = x[salient_cols[k]] (k < ns) quad by quad and writes the 16-float tables of each
// (ck_sign_planes_quads(nb) and ck_u4_planes_quads(ns, ns) tables) and Σx̃, Σx_s summed in
// column order: bit for bit the tables ck_u4_plane_tables builds from the gathered rows (the
// same float operations in the same order). Either table set may be skipped (NULL tables): the
// salient tables of q/k/v, which share their salient columns, are built once.
//
// ck_binary_planes_rows runs blocks [block_begin, block_begin + block_count) of the parts'
// concatenated 16-row blocks (part 0's blocks first). Per run of up to 8 blocks of a part: the
// sign rows into y as ck_gemv_sign_planes, the salient rows as ck_gemv_u4_planes (one group),
// then y[o] += salient[o]: the same bits as the two separate GEMVs followed by that add (the
// pre-fusion path).
typedef struct {
    const uint64_t *sign_planes;      // ck_sign_planes_pack layout, rows × nb (nb > 0)
    const uint64_t *salient_planes;   // ck_u4_planes_pack layout, rows × ns, group ns; NULL when ns == 0
    const float *salient_scales;      // ck_u4_planes_pack_params of that layout
    const float *salient_zeros;
    const float *a, *b;               // row affine of the signs: y = a·(S x̃) + b·Σx̃
    const float *sign_tables;         // ck_binary_plane_tables of this part's columns
    const float *salient_tables;
    float x_sum, salient_sum;         // Σx̃ and Σx_s from the same call
    size_t rows, nb, ns;
    float *y;                         // rows outputs
} ck_binary_planes_part;

void ck_binary_plane_tables(const float *x, const int32_t *binary_cols, const float *col_scale, size_t nb,
                            const int32_t *salient_cols, size_t ns, float *sign_tables, float *x_sum,
                            float *salient_tables, float *salient_sum);
/// Plain scalar twin of ck_binary_plane_tables.
void ck_binary_plane_tables_ref(const float *x, const int32_t *binary_cols, const float *col_scale, size_t nb,
                                const int32_t *salient_cols, size_t ns, float *sign_tables, float *x_sum,
                                float *salient_tables, float *salient_sum);
/// 16-row blocks of all parts.
size_t ck_binary_planes_blocks(const ck_binary_planes_part *parts, size_t part_count);
void ck_binary_planes_rows(const ck_binary_planes_part *parts, size_t part_count, size_t block_begin,
                           size_t block_count);
/// The same through the scalar twins of both GEMVs.
void ck_binary_planes_rows_ref(const ck_binary_planes_part *parts, size_t part_count, size_t block_begin,
                               size_t block_count);

#endif
