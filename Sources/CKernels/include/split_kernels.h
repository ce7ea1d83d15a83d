#ifndef CK_SPLIT_KERNELS_H
#define CK_SPLIT_KERNELS_H
#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// SplitQuant weight-only kernels (split_gemv.c): one pass over packed per-weight indices with
// float activations.
//
// Every weight is an index idx = cluster << bits | code (cluster 0…2, code < 2^bits): one byte
// per weight for bits ≤ 6 (_u8), two bytes for bits 7–8 (_u16). Row stride = cols. scales and
// zeros are [rows, G, 3] row-major (G = ceil(cols / group_size)). Per row o and group g the
// kernels build the 3·2^bits-entry value table T[k << bits | u] = scale[o,g,k] * ((float)u -
// zero[o,g,k]) (the same two float operations as SplitWeight.value, so dequantization is
// exact) and accumulate T[idx]·x: the cluster id selects the scale and zero point, no float
// copy of the weight matrix is made. Indices must be < 3 << bits (the loader checks this).

/// For o in [row_begin, row_begin + row_count): y[o] = sum_j T_{o,g(j)}[idx[o,j]] * x[j].
/// AVX2: 2-bit codes look the 12-entry table up in registers (two permutes and a blend);
/// wider codes permute the group's 3 scales and zero points by cluster id.
void ck_split_gemv_u8(const uint8_t *idx, size_t row_begin, size_t row_count, size_t cols,
                      size_t group_size, int bits, const float *scales, const float *zeros,
                      const float *x, float *y);
/// Plain scalar twin of ck_split_gemv_u8.
void ck_split_gemv_u8_ref(const uint8_t *idx, size_t row_begin, size_t row_count, size_t cols,
                          size_t group_size, int bits, const float *scales, const float *zeros,
                          const float *x, float *y);
void ck_split_gemv_u16(const uint16_t *idx, size_t row_begin, size_t row_count, size_t cols,
                       size_t group_size, int bits, const float *scales, const float *zeros,
                       const float *x, float *y);
void ck_split_gemv_u16_ref(const uint16_t *idx, size_t row_begin, size_t row_count, size_t cols,
                           size_t group_size, int bits, const float *scales, const float *zeros,
                           const float *x, float *y);

/// out[(r - row_begin)*cols + j] = T_{r,g(j)}[idx[r,j]] for the row range (exact).
void ck_split_dequant_rows_u8(const uint8_t *idx, size_t row_begin, size_t row_count, size_t cols,
                              size_t group_size, int bits, const float *scales, const float *zeros,
                              float *out);
void ck_split_dequant_rows_u8_ref(const uint8_t *idx, size_t row_begin, size_t row_count, size_t cols,
                                  size_t group_size, int bits, const float *scales, const float *zeros,
                                  float *out);
void ck_split_dequant_rows_u16(const uint16_t *idx, size_t row_begin, size_t row_count, size_t cols,
                               size_t group_size, int bits, const float *scales, const float *zeros,
                               float *out);
void ck_split_dequant_rows_u16_ref(const uint16_t *idx, size_t row_begin, size_t row_count, size_t cols,
                                   size_t group_size, int bits, const float *scales, const float *zeros,
                                   float *out);

// ---------------------------------------------------------------------------------------------
// Packed layout for codes of 2…4 bits (0.75 bytes per weight instead of one index byte): per
// row, ceil(cols / 96) superblocks of 72 bytes. Superblock b holds elements 96b … 96b + 95 as six
// sub-vectors f = 0…5 of 16 lanes (lane l = element 96b + 16f + l). Bytes 0…63 are 16
// little-endian 32-bit words: word l holds, at bits 5f … 5f + 4, code | (cluster bit 0) << 4 of
// lane l of sub-vector f, and at bits 30 and 31 cluster bit 1 of lane l of sub-vectors 4 and 5.
// Bytes 64…71 are four little-endian 16-bit planes: bit l of plane f (f = 0…3) is cluster bit 1
// of lane l of sub-vector f. Padding elements past cols are code 0, cluster 0. Row stride
// ck_split_p4_row_bytes(cols). Values and tables as above. (Until the seventh speed pass the
// layout was 24 bytes per 32 weights: 16 nibble bytes and two 32-bit cluster planes.)

/// Bytes of one packed row.
size_t ck_split_p4_row_bytes(size_t cols);
/// Packs rows × cols cluster ids (0…2) and codes (< 2^bits, bits ≤ 4) into out
/// (rows · ck_split_p4_row_bytes) in one pass, checking them on the way: returns the index of the
/// first element whose cluster id is ≥ 3 or whose code does not fit `bits` bits, or rows · cols
/// when all are valid (out is then complete; otherwise its contents are unspecified).
size_t ck_split_pack_p4(const uint8_t *clusters, const uint8_t *codes, size_t rows, size_t cols, int bits,
                        uint8_t *out);
/// The scalar reference layout transform (no checks; ids and codes are masked to 2 and 4 bits).
void ck_split_pack_p4_ref(const uint8_t *clusters, const uint8_t *codes, size_t rows, size_t cols, uint8_t *out);

/// GEMV on the packed layout. AVX-512 (group_size a multiple of 16 or one group per row): the
/// row/group's three 16-entry tables live in registers; per 16 weights one shift of the
/// superblock's words gives the two-table index (code | cluster bit 0 << 4) for one `vpermt2ps`,
/// one `vpermps` under the cluster-bit-1 mask picks cluster 2, one FMA. Elsewhere the scalar twin
/// runs (the runtime holds this layout only where AVX-512 runs: SplitKernels.prefersPacked4; on
/// AVX2 the byte indices measured faster). Weights are exact; the summation order differs from
/// the twin's.
void ck_split_gemv_p4(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                      int bits, const float *scales, const float *zeros, const float *x, float *y);
void ck_split_gemv_p4_ref(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                          int bits, const float *scales, const float *zeros, const float *x, float *y);
/// Exact dequantization of the packed layout (tiles for prefill).
void ck_split_dequant_rows_p4(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                              size_t group_size, int bits, const float *scales, const float *zeros, float *out);
void ck_split_dequant_rows_p4_ref(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                                  size_t group_size, int bits, const float *scales, const float *zeros, float *out);

/// bf16 decode GEMV on the packed layout (the decode twin of the bf16 prefill; used while
/// ck_bf16_decode_enabled()): the group's table entries s_k·(u − z_k) and x rounded to bf16
/// (round to nearest even), exact products, fp32 sums in VDPBF16PS order. xb is x in the pair
/// layout from ck_split_x_bf16 (converted once per call, shared by the row chunks). Runs the
/// AVX-512 kernel (VPMULTISHIFTQB + VPERMW + VDPBF16PS) where ck_split_p4_bf16_supported, else
/// the scalar twin on x; both give the same bits. Against the float32 GEMV the result differs by
/// the two bf16 roundings (8-bit significands): |y − y_f32| ≤ 2^-7 · Σ_j |w_j·x_j| (plus fp32
/// summation error).
void ck_split_gemv_p4_bf16(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                           int bits, const float *scales, const float *zeros, const float *x, const uint16_t *xb,
                           float *y);
/// The scalar twin of ck_split_gemv_p4_bf16 (the emulation of gemm_bf16.c; same bits). Needs
/// group_size a multiple of 32 or ≥ cols.
void ck_split_gemv_p4_bf16_ref(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                               size_t group_size, int bits, const float *scales, const float *zeros, const float *x,
                               float *y);
/// 1 when ck_split_gemv_p4_bf16 runs its AVX-512 kernel for this shape: AVX512_BF16 (and the
/// bf16 kernel switch on), VBMI, BMI2, bits ≤ 4, group_size a multiple of 32 or ≥ cols.
int ck_split_p4_bf16_supported(size_t cols, size_t group_size, int bits);
/// Elements of the pair-layout bf16 copy of x: cols rounded up to a multiple of 32.
size_t ck_split_x_bf16_count(size_t cols);
/// x[cols] → xb[ck_split_x_bf16_count(cols)] bf16 (RNE): per 32 columns, word 2i is column
/// 32p + i and word 2i + 1 column 32p + 16 + i; columns past cols are 0.
void ck_split_x_bf16(const float *x, size_t cols, uint16_t *xb);

#endif
