#ifndef CK_U4_I8_GEMV_H
#define CK_U4_I8_GEMV_H
#include <stddef.h>
#include <stdint.h>

// Decode GEMV of weight-only u4 layers on int8 activations (gemv_bf16.c), llama.cpp's
// Q4_0 × Q8_0 scheme on the W4A16 nibble layout (two codes per byte, the even column in the
// low nibble, rows of ceil(cols/2) bytes; per-group float scale s and zero z):
//   y[o] = Σ_g s[o,g]·Σ_{j∈g} (q[o,j] − z[o,g])·x̂_j,   x̂_j = d_b·a_j,
// where x is quantized once per call in blocks b of CK_U4_I8_QBLOCK columns: d_b = max|x|/127,
// a_j = rint(x_j·(127/max|x|)) ∈ [−127, 127] (codes and d 0 for a block whose max|x| < 2⁻¹⁰⁰;
// finite x: NaN is handled differently by the two prepares). This changes the
// numerics of the bf16 path (x̃ = bf16(x), relative error ≤ 2⁻⁸ per element) to an absolute
// error ≤ d_b/2 = max_b|x|/254 per element; the decode quality cost is measured in
// docs/RESULTS.md (thirteenth pass), and the caller keeps the bf16 path as the switch back.
//
// Kernel: per row and 128-column block one 64-byte load of codes; lo = w & 15 (columns 2i),
// hi = (w >> 4) & 15 (columns 2i + 1), two VPDPBUSD against the block's even and odd int8
// activations, so int32 lane l holds the exact Σ q·a of columns 8l … 8l + 7 (one activation
// block's: CK_U4_I8_QBLOCK is 8). Order of operations (the `_ref` twin
// follows it bit for bit):
//  * per row and group: G (16 fp32 lanes) = fma(float(lane sum), d of the lane's block, G) per
//    block in order; total = fma(s_g, G, total) lane-wise, groups in order;
//  * y = hsum16(total) − Z, Z = Σ_g fma(s_g, (0 + z_g)·X̂_g, Z) in group order, where
//    X̂_g = Σ_{b∈g} fma(d_b, float(Σ_{j∈b} a_j), ·) in block order (ck_u4_i8_prepare);
//  * hsum16 is the tree of ck_bf16_gemv.h.
// Rows run four per pass and never mix, so the blocking does not change the bits: the fast
// kernel equals the twin bit for bit (the integer sums are exact; every float step is the same).
//
// Shapes: groups of whole 128-column blocks or one group per row (ck_u4_i8_supported, which
// also checks AVX-512 F/BW/VL/VNNI and AVX512_BF16). The twin takes any shape whose groups are whole
// activation blocks or one per row.

/// Columns per activation scale: one scale per VPDPBUSD lane. llama.cpp's Q8_0 block is 32; 8
/// costs the kernel nothing (it loads a vector of lane scales either way) and cut the decode KL
/// on SmolLM2 W4A16 g128 about 3× (docs/RESULTS.md, thirteenth pass).
#define CK_U4_I8_QBLOCK 8

/// Bytes of a prepared activation row for `cols` columns (int8 codes in kernel order, the
/// per-lane scales, the group sums X̂_g), 64-byte multiple.
size_t ck_u4_i8_prepared_bytes(size_t cols, size_t group_size);

/// 1 when the AVX-512 VNNI kernel runs this shape on this CPU.
int ck_u4_i8_supported(size_t cols, size_t group_size);

/// Whether weight-only u4 layers decode on int8 activations: off unless the environment's
/// `PTQ_DECODE_U4_I8` is "1" (read on first use), or as set.
int ck_u4_i8_decode_enabled(void);
void ck_set_u4_i8_decode_enabled(int enabled);

/// x[cols] → prepared (ck_u4_i8_prepared_bytes, 64-byte aligned): per 128-column block the 64
/// even then the 64 odd columns' codes a_j (0 past cols), then 16 scales a block (lane l: d of
/// the activation block holding column 8l of the block), then X̂_g per group.
void ck_u4_i8_prepare(const float *x, size_t cols, size_t group_size, void *prepared);
void ck_u4_i8_prepare_ref(const float *x, size_t cols, size_t group_size, void *prepared);

/// y[o] for o in [row_begin, row_begin + row_count) from a prepared x. The fast version needs
/// ck_u4_i8_supported (else it runs the twin: same bits).
void ck_gemv_u4_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                   const float *scales, const float *zeros, const void *prepared, float *y);
void ck_gemv_u4_i8_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       const float *scales, const float *zeros, const void *prepared, float *y);

#endif
