#ifndef CK_BF16_GEMV_H
#define CK_BF16_GEMV_H
#include <stddef.h>
#include <stdint.h>

// bf16 decode GEMVs of weight-only integer layers (gemv_bf16.c): u4 nibbles (two per byte, the
// even column in the low nibble, rows of ceil(cols/2) bytes) or u8 bytes, per-group float scale
// s and zero z, one float activation row x:
//   y[o] = Σ_g s[o,g]·Σ_{j∈g} (q[o,j] − z[o,g])·x̃_j,   x̃ = bf16(x) (VCVTNE2PS2BF16 rounding).
//
// Integer codes are exact in bf16 and need no conversion: bf16(128 + n) = 0x4300 | n for a
// nibble n. The kernel reads the codes 64 bytes at a time as 32 16-bit words; word i (bytes 2i,
// 2i + 1) holds four nibbles, and stream st = 0…3 is the nibble at bits 4·st, made a bf16 value
// by one shift and one AND/OR (`vpternlogd`). u4: a block is 128 columns and stream st of word i
// is column 4i + st, against x̃ permuted per block into the four runs of columns 4k + st. u8: a
// block is 64 columns, streams 0/1 are the low/high nibble of the even column 2i and 2/3 those
// of the odd one, against x̃ permuted per block into its even then odd columns; q = 16·hi + lo,
// D = A_lo + 16·A_hi (16·A exact). Then
//   Σ_{j∈g} (q − z)·x̃ = D_g − (c + z)·X_g,   c = 128 (u4) or 2176 = 17·128 (u8),
// with X_g = Σ_{j∈g} x̃_j (of the rounded values, so the offset cancels exactly up to fp32
// rounding) computed once per call by ck_bf16_gemv_prepare.
//
// Order of operations (the `_ref` twins emulate it bit for bit with the VDPBF16PS semantics of
// ck_bf16.h: per dword, fma of the odd element, then of the even one, RNE, FTZ):
//  * prepare: x̃ as above (zero past cols); X_g = 16 fp32 lanes, lane l adding x̃ of columns
//    j0 + 16c + l for c = 0, 1, … (zero past the group), then the tree t8[i] = l[i] + l[i+8],
//    t4[i] = t8[i] + t8[i+4], t2[i] = t4[i] + t4[i+2], X = t2[0] + t2[1] ("hsum16").
//  * per row and group: 2 accumulators A₀, A₁ of 16 lanes; per block in order, VDPBF16PS of
//    stream 0 into A₀, 1 into A₁, 2 into A₀, 3 into A₁ (padding codes 0 and x̃ 0 past cols);
//    D = A₀ + A₁ (u4: A₀ holds columns 4i, 4i + 2, A₁ the others) or fma(16, A₁, A₀) (u8);
//    total = fma(s, D, total) lane-wise, groups in order.
//  * y = hsum16(total) − Z, Z = Σ_g fma(s_g, (c + z_g)·X_g, Z) in group order.
// The kernel runs four rows per pass (each block's x̃ loaded once for all four); rows do not
// mix, so the row blocking does not change the bits. Against the ninth pass's kernel (blocks of
// 64/32 columns, four accumulators) only the fp32 summation order changed: both sit within the
// bound below of the same exact sum (measured differences in docs/RESULTS.md, tenth pass).
//
// Error against the exact Σ_g s·Σ (q − z)·x̃ (the bf16 rounding of x, ≤ 2⁻⁸ relative per
// activation, is the only other change from the float32 kernels): every fp32 rounding on a
// term's path adds ≤ 2⁻²⁴ of a partial sum of magnitude ≤ M, where
//   M = Σ_g |s_g|·(Σ_{j∈g} (c + q_j)|x̃_j| + |c + z_g|·Σ_{j∈g} |x̃_j|),
// and a path has at most N = cols/16 + groups + 12 roundings, so |y − exact| ≤ N·2⁻²⁴·M·(1 + 10⁻³)
// (ck_bf16_gemv_error_terms gives N). The offset c inflates M about 50-fold against the
// Σ|s(q − z)x̃| of a float32 dot of the centred codes (uniform codes, u4 and u8 alike); on the
// SmolLM2 shapes (N ≤ 120) the worst case N·2⁻²⁴·M stays about 10× (u4) to 24× (u8 head) below
// the worst case 2⁻⁸·Σ|s(q − z)x| of the rounding of x, and measured errors are far below both
// (docs/RESULTS.md, ninth pass).
//
// Shapes: the fast kernel needs groups of whole blocks (multiples of 128 columns for u4, 64 for
// u8) or one group per row (group_size ≥ cols); ck_bf16_gemv_supported says whether it takes a
// shape. The `_ref` twins take any shape (a block then starts at its group's first column).

/// Elements (uint16) of a prepared activation row: cols rounded up to 128.
size_t ck_bf16_gemv_x_count(size_t cols);

/// Roundings on the path of one output's terms (N above).
size_t ck_bf16_gemv_error_terms(size_t cols, size_t group_size);

/// 1 when the AVX512_BF16 decode kernel runs this shape (CPU check included).
int ck_bf16_gemv_supported(int u4, size_t cols, size_t group_size);

/// x[cols] → xb[ck_bf16_gemv_x_count(cols)] (u4: per 128-column block the runs of columns 4k,
/// 4k + 1, 4k + 2, 4k + 3; u8: per 64-column block the 32 even then the 32 odd columns) and
/// xsums[groups] = X_g.
void ck_bf16_gemv_prepare(int u4, const float *x, size_t cols, size_t group_size, uint16_t *xb, float *xsums);
void ck_bf16_gemv_prepare_ref(int u4, const float *x, size_t cols, size_t group_size, uint16_t *xb, float *xsums);

/// y[o] for o in [row_begin, row_begin + row_count) from a prepared x. The fast versions need
/// ck_bf16_gemv_supported (else they run the `_ref` twin: same bits).
void ck_gemv_u4_bf16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y);
void ck_gemv_u4_bf16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y);
void ck_gemv_u8_bf16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y);
void ck_gemv_u8_bf16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y);

#endif
