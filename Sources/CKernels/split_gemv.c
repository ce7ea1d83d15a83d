#include "ckernels.h"
#include "split_kernels.h"
#include "ck_bf16.h"
#include "bf16_emul.h"
#include <immintrin.h>
#include "ck_runtime.h"
#include "x86_common.h"
#include <string.h>

// SplitQuant weight-only kernels (see split_kernels.h). The reference builds, per row and group,
// the value table T[k << bits | u] = s_k * ((float)u - z_k) (3·2^bits entries) and looks the
// row's packed indices up in it. The AVX2 path keeps the 12-entry table of 2-bit codes in two
// registers (two permutes and a blend per 8 weights); for wider codes a 48…768-entry table
// would cost more to build than to use, so it permutes the group's three scales and zero points
// by cluster id instead and computes s * ((float)u - z) in-register (measured in
// docs/RESULTS.md: this beat gathering from the table). Both paths compute every weight with
// the reference's two float operations, so dequantized tiles are exact; the GEMV keeps 8-lane
// partial sums and differs from the reference only by summation order.

#define SPLIT_CLUSTERS 3
#define SPLIT_MAX_TABLE (SPLIT_CLUSTERS << 8)

static inline size_t split_groups(size_t cols, size_t group_size) {
    return (cols + group_size - 1) / group_size;
}

/// Value table of group g of row o: (3 << bits) entries into t.
static inline void split_table(float *t, int bits, const float *scales, const float *zeros,
                               size_t o, size_t groups, size_t g) {
    const size_t n = (size_t)1 << bits;
    const float *s = scales + (o * groups + g) * SPLIT_CLUSTERS, *z = zeros + (o * groups + g) * SPLIT_CLUSTERS;
    for (size_t k = 0; k < SPLIT_CLUSTERS; k++)
        for (size_t u = 0; u < n; u++) t[(k << bits) | u] = s[k] * ((float)u - z[k]);
}

/// One element from its index and its group's three scales and zero points.
static inline float split_value(unsigned idx, int bits, const float *s, const float *z) {
    const unsigned k = idx >> bits, u = idx & ((1u << bits) - 1);
    return s[k] * ((float)u - z[k]);
}

// ---- references (one body per index type) ----------------------------------------------------

#define SPLIT_REF(NAME, IDX_T)                                                                      \
    void ck_split_gemv_##NAME##_ref(const IDX_T *idx, size_t row_begin, size_t row_count, size_t cols, \
                                   size_t group_size, int bits, const float *scales, const float *zeros, \
                                   const float *x, float *y) {                                      \
        if (group_size == 0) group_size = cols ? cols : 1;                                          \
        const size_t groups = split_groups(cols, group_size);                                       \
        float t[SPLIT_MAX_TABLE];                                                                   \
        for (size_t o = row_begin; o < row_begin + row_count; o++) {                                \
            const IDX_T *row = idx + o * cols;                                                      \
            float y_o = 0;                                                                          \
            for (size_t g = 0; g < groups; g++) {                                                   \
                split_table(t, bits, scales, zeros, o, groups, g);                                  \
                const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols; \
                float dot = 0;                                                                      \
                for (size_t j = j0; j < j1; j++) dot += t[row[j]] * x[j];                           \
                y_o += dot;                                                                         \
            }                                                                                       \
            y[o] = y_o;                                                                             \
        }                                                                                           \
    }                                                                                               \
    void ck_split_dequant_rows_##NAME##_ref(const IDX_T *idx, size_t row_begin, size_t row_count,   \
                                           size_t cols, size_t group_size, int bits,                \
                                           const float *scales, const float *zeros, float *out) {   \
        if (group_size == 0) group_size = cols ? cols : 1;                                          \
        const size_t groups = split_groups(cols, group_size);                                       \
        float t[SPLIT_MAX_TABLE];                                                                   \
        for (size_t r = 0; r < row_count; r++) {                                                    \
            const size_t o = row_begin + r;                                                         \
            const IDX_T *row = idx + o * cols;                                                      \
            for (size_t g = 0; g < groups; g++) {                                                   \
                split_table(t, bits, scales, zeros, o, groups, g);                                  \
                const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols; \
                for (size_t j = j0; j < j1; j++) out[r * cols + j] = t[row[j]];                     \
            }                                                                                       \
        }                                                                                           \
    }

SPLIT_REF(u8, uint8_t)
SPLIT_REF(u16, uint16_t)

// ---- AVX2 ------------------------------------------------------------------------------------

#if defined(__x86_64__)
CK_INLINE CK_AVX2 __m256i load_idx_u8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
CK_INLINE CK_AVX2 __m256i load_idx_u16(const uint16_t *p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
}

/// 2-bit codes: the 12-entry table lives in two registers; bit 3 of the index picks the
/// register (blendv reads the sign bit, so shift it there).
CK_INLINE CK_AVX2 __m256 lookup16(__m256 t0, __m256 t1, __m256i v) {
    const __m256 lo = _mm256_permutevar8x32_ps(t0, v), hi = _mm256_permutevar8x32_ps(t1, v);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
}

/// Wider codes: the cluster id (idx >> bits) picks the group's scale and zero point from two
/// registers (3 lanes used), value = s * ((float)u - z) — the reference's two operations, so it
/// is exact, and no table needs building per group.
CK_INLINE CK_AVX2 __m256 lookup_sz(__m256 s, __m256 z, __m256i v, __m128i shift, __m256i mask) {
    const __m256i cl = _mm256_srl_epi32(v, shift);
    const __m256 u = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
    return _mm256_mul_ps(_mm256_permutevar8x32_ps(s, cl), _mm256_sub_ps(u, _mm256_permutevar8x32_ps(z, cl)));
}

#define SPLIT_AVX2(NAME, IDX_T)                                                                     \
    CK_AVX2 static void split_gemv_##NAME##_avx2(const IDX_T *idx, size_t row_begin, size_t row_count, \
                                                size_t cols, size_t group_size, int bits,           \
                                                const float *scales, const float *zeros,            \
                                                const float *x, float *y) {                         \
        const size_t groups = split_groups(cols, group_size);                                       \
        float t[16] __attribute__((aligned(32)));                                                   \
        for (size_t o = row_begin; o < row_begin + row_count; o++) {                                \
            const IDX_T *row = idx + o * cols;                                                      \
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                              \
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                              \
            float tail = 0;                                                                         \
            for (size_t g = 0; g < groups; g++) {                                                   \
                const float *sp = scales + (o * groups + g) * SPLIT_CLUSTERS;                       \
                const float *zp = zeros + (o * groups + g) * SPLIT_CLUSTERS;                        \
                if (bits == 2) split_table(t, bits, scales, zeros, o, groups, g);                   \
                const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols; \
                size_t j = j0;                                                                      \
                if (bits == 2) {                                                                    \
                    t[12] = t[13] = t[14] = t[15] = 0;                                              \
                    const __m256 t0 = _mm256_load_ps(t), t1 = _mm256_load_ps(t + 8);                \
                    for (; j + 32 <= j1; j += 32) {                                                 \
                        a0 = _mm256_fmadd_ps(lookup16(t0, t1, load_idx_##NAME(row + j)), _mm256_loadu_ps(x + j), a0); \
                        a1 = _mm256_fmadd_ps(lookup16(t0, t1, load_idx_##NAME(row + j + 8)), _mm256_loadu_ps(x + j + 8), a1); \
                        a2 = _mm256_fmadd_ps(lookup16(t0, t1, load_idx_##NAME(row + j + 16)), _mm256_loadu_ps(x + j + 16), a2); \
                        a3 = _mm256_fmadd_ps(lookup16(t0, t1, load_idx_##NAME(row + j + 24)), _mm256_loadu_ps(x + j + 24), a3); \
                    }                                                                               \
                    for (; j + 8 <= j1; j += 8)                                                     \
                        a0 = _mm256_fmadd_ps(lookup16(t0, t1, load_idx_##NAME(row + j)), _mm256_loadu_ps(x + j), a0); \
                } else {                                                                            \
                    const __m256 sv = _mm256_setr_ps(sp[0], sp[1], sp[2], 0, 0, 0, 0, 0);           \
                    const __m256 zv = _mm256_setr_ps(zp[0], zp[1], zp[2], 0, 0, 0, 0, 0);           \
                    const __m128i sh = _mm_cvtsi32_si128(bits);                                     \
                    const __m256i mk = _mm256_set1_epi32((1 << bits) - 1);                          \
                    for (; j + 32 <= j1; j += 32) {                                                 \
                        a0 = _mm256_fmadd_ps(lookup_sz(sv, zv, load_idx_##NAME(row + j), sh, mk), _mm256_loadu_ps(x + j), a0); \
                        a1 = _mm256_fmadd_ps(lookup_sz(sv, zv, load_idx_##NAME(row + j + 8), sh, mk), _mm256_loadu_ps(x + j + 8), a1); \
                        a2 = _mm256_fmadd_ps(lookup_sz(sv, zv, load_idx_##NAME(row + j + 16), sh, mk), _mm256_loadu_ps(x + j + 16), a2); \
                        a3 = _mm256_fmadd_ps(lookup_sz(sv, zv, load_idx_##NAME(row + j + 24), sh, mk), _mm256_loadu_ps(x + j + 24), a3); \
                    }                                                                               \
                    for (; j + 8 <= j1; j += 8)                                                     \
                        a0 = _mm256_fmadd_ps(lookup_sz(sv, zv, load_idx_##NAME(row + j), sh, mk), _mm256_loadu_ps(x + j), a0); \
                }                                                                                   \
                for (; j < j1; j++) tail += split_value(row[j], bits, sp, zp) * x[j];                   \
            }                                                                                       \
            y[o] = ck_hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + tail; \
        }                                                                                           \
    }                                                                                               \
    CK_AVX2 static void split_dequant_##NAME##_avx2(const IDX_T *idx, size_t row_begin, size_t row_count, \
                                                   size_t cols, size_t group_size, int bits,        \
                                                   const float *scales, const float *zeros, float *out) { \
        const size_t groups = split_groups(cols, group_size);                                       \
        float t[16] __attribute__((aligned(32)));                                                   \
        for (size_t r = 0; r < row_count; r++) {                                                    \
            const size_t o = row_begin + r;                                                         \
            const IDX_T *row = idx + o * cols;                                                      \
            float *dst = out + r * cols;                                                            \
            for (size_t g = 0; g < groups; g++) {                                                   \
                const float *sp = scales + (o * groups + g) * SPLIT_CLUSTERS;                       \
                const float *zp = zeros + (o * groups + g) * SPLIT_CLUSTERS;                        \
                if (bits == 2) split_table(t, bits, scales, zeros, o, groups, g);                   \
                const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols; \
                size_t j = j0;                                                                      \
                if (bits == 2) {                                                                    \
                    t[12] = t[13] = t[14] = t[15] = 0;                                              \
                    const __m256 t0 = _mm256_load_ps(t), t1 = _mm256_load_ps(t + 8);                \
                    for (; j + 8 <= j1; j += 8) _mm256_storeu_ps(dst + j, lookup16(t0, t1, load_idx_##NAME(row + j))); \
                } else {                                                                            \
                    const __m256 sv = _mm256_setr_ps(sp[0], sp[1], sp[2], 0, 0, 0, 0, 0);           \
                    const __m256 zv = _mm256_setr_ps(zp[0], zp[1], zp[2], 0, 0, 0, 0, 0);           \
                    const __m128i sh = _mm_cvtsi32_si128(bits);                                     \
                    const __m256i mk = _mm256_set1_epi32((1 << bits) - 1);                          \
                    for (; j + 8 <= j1; j += 8)                                                     \
                        _mm256_storeu_ps(dst + j, lookup_sz(sv, zv, load_idx_##NAME(row + j), sh, mk)); \
                }                                                                                   \
                for (; j < j1; j++) dst[j] = split_value(row[j], bits, sp, zp);                                             \
            }                                                                                       \
        }                                                                                           \
    }

SPLIT_AVX2(u8, uint8_t)
SPLIT_AVX2(u16, uint16_t)
#endif

// ---- dispatch --------------------------------------------------------------------------------

#if defined(__x86_64__)
#define SPLIT_USE_AVX2 ck_cpu_has_avx2()
#else
#define SPLIT_USE_AVX2 0
#define split_gemv_u8_avx2 ck_split_gemv_u8_ref
#define split_gemv_u16_avx2 ck_split_gemv_u16_ref
#define split_dequant_u8_avx2 ck_split_dequant_rows_u8_ref
#define split_dequant_u16_avx2 ck_split_dequant_rows_u16_ref
#endif

#define SPLIT_DISPATCH(NAME, IDX_T)                                                                 \
    void ck_split_gemv_##NAME(const IDX_T *idx, size_t row_begin, size_t row_count, size_t cols,    \
                             size_t group_size, int bits, const float *scales, const float *zeros,  \
                             const float *x, float *y) {                                            \
        if (group_size == 0) group_size = cols ? cols : 1;                                          \
        if (SPLIT_USE_AVX2) {                                                                       \
            split_gemv_##NAME##_avx2(idx, row_begin, row_count, cols, group_size, bits, scales, zeros, x, y); \
            return;                                                                                 \
        }                                                                                           \
        ck_split_gemv_##NAME##_ref(idx, row_begin, row_count, cols, group_size, bits, scales, zeros, x, y); \
    }                                                                                               \
    void ck_split_dequant_rows_##NAME(const IDX_T *idx, size_t row_begin, size_t row_count, size_t cols, \
                                     size_t group_size, int bits, const float *scales,              \
                                     const float *zeros, float *out) {                              \
        if (group_size == 0) group_size = cols ? cols : 1;                                          \
        if (SPLIT_USE_AVX2) {                                                                       \
            split_dequant_##NAME##_avx2(idx, row_begin, row_count, cols, group_size, bits, scales, zeros, out); \
            return;                                                                                 \
        }                                                                                           \
        ck_split_dequant_rows_##NAME##_ref(idx, row_begin, row_count, cols, group_size, bits, scales, zeros, out); \
    }

SPLIT_DISPATCH(u8, uint8_t)
SPLIT_DISPATCH(u16, uint16_t)

// ---- packed 4-bit codes + cluster bits (bits ≤ 4) ----------------------------------------------
//
// Per row, ceil(cols / 96) superblocks of 72 bytes (see split_kernels.h). Superblock b holds
// elements 96b … 96b + 95 as six sub-vectors f = 0…5 of 16 lanes (lane l = element 96b + 16f + l).
// Bytes 0…63 are 16 little-endian 32-bit words: word l holds, at bits 5f … 5f + 4, the field
// code | (cluster bit 0) << 4 of lane l of sub-vector f, and at bits 30 and 31 cluster bit 1 of
// lane l of sub-vectors 4 and 5. Bytes 64…71 are four little-endian 16-bit planes: bit l of plane f
// (f = 0…3) is cluster bit 1 of lane l of sub-vector f. Padding elements are code 0, cluster 0.
//
// Why this shape: on Zen 4 every 512-bit operation (permute, shift, AND, FMA) costs about the same
// issue slot, and the old layout (16 nibble bytes + two 32-bit planes per 32 weights) spent five of
// them per 16 weights on widening, masking and OR-ing the index before the two permutes and the FMA.
// Here one 64-byte load serves 96 weights, the field's bits 0…4 are already the two-table
// index (`vpermt2ps` ignores the bits above, `vpermps` reads only the code in bits 0…3), so a
// sub-vector costs one shift (none for f = 0) plus the two permutes and the FMA; cluster bit 1 comes
// straight into a mask register (a 16-bit load, or one test for the two fields kept in the word's
// spare bits). Same 0.75 bytes per weight. Measured in docs/RESULTS.md (seventh pass).

#define P4_SUPER 96
#define P4_SUPER_BYTES 72
#define P4_SUB 16
#define P4_PREFETCH (48 * P4_SUPER_BYTES)  // bytes ahead of the superblock being read

size_t ck_split_p4_row_bytes(size_t cols) { return (cols + P4_SUPER - 1) / P4_SUPER * P4_SUPER_BYTES; }

void ck_split_pack_p4_ref(const uint8_t *clusters, const uint8_t *codes, size_t rows, size_t cols, uint8_t *out) {
    const size_t rb = ck_split_p4_row_bytes(cols);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *c = clusters + r * cols, *q = codes + r * cols;
        for (size_t j0 = 0; j0 < cols; j0 += P4_SUPER) {
            // One superblock in locals, written once.
            uint32_t word[P4_SUB] = {0};
            uint16_t plane[4] = {0};
            const size_t n = cols - j0 < P4_SUPER ? cols - j0 : P4_SUPER;
            for (size_t t = 0; t < n; t++) {
                const unsigned f = (unsigned)(t / P4_SUB), l = (unsigned)(t % P4_SUB);
                const unsigned u = q[j0 + t] & 0x0F, k = c[j0 + t] & 3;
                word[l] |= (uint32_t)(u | (k & 1) << 4) << (5 * f);
                if (f < 4) plane[f] |= (uint16_t)((k >> 1) << l);
                else word[l] |= (uint32_t)(k >> 1) << (26 + f);  // bit 30 (f = 4) or 31 (f = 5)
            }
            uint8_t *blk = out + r * rb + (j0 / P4_SUPER) * P4_SUPER_BYTES;
            for (int l = 0; l < P4_SUB; l++)  // little-endian on any host
                for (int b = 0; b < 4; b++) blk[4 * l + b] = (uint8_t)(word[l] >> (8 * b));
            for (int f = 0; f < 4; f++) {
                blk[64 + 2 * f] = (uint8_t)plane[f];
                blk[65 + 2 * f] = (uint8_t)(plane[f] >> 8);
            }
        }
    }
}

/// First element of rows × cols whose cluster id is ≥ 3 or whose code does not fit `bits` bits,
/// or rows · cols when all are valid.
static size_t split_first_invalid(const uint8_t *clusters, const uint8_t *codes, size_t count, int bits) {
    for (size_t i = 0; i < count; i++)
        if (clusters[i] >= 3 || (codes[i] >> bits) != 0) return i;
    return count;
}

// The load-time transform (issue 13): one pass over the ids and codes, whole superblocks as fixed
// 16-lane loops (no division per element, no byte-by-byte word assembly) that the compiler
// vectorises, validity folded into the same loads. Bit-identical to ck_split_pack_p4_ref, which
// the tests compare it with; the tail superblock of a row takes the reference's loop.
size_t ck_split_pack_p4(const uint8_t *clusters, const uint8_t *codes, size_t rows, size_t cols, int bits,
                        uint8_t *out) {
    const size_t rb = ck_split_p4_row_bytes(cols), full = cols / P4_SUPER;
    const uint8_t code_mask = (uint8_t)(0xFF << bits);  // bits ≤ 4, so codes above the width set these
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *c = clusters + r * cols, *q = codes + r * cols;
        uint8_t *row = out + r * rb;
        uint8_t bad = 0;
        for (size_t b = 0; b < full; b++) {
            const uint8_t *cb = c + b * P4_SUPER, *qb = q + b * P4_SUPER;
            uint32_t word[P4_SUB] = {0};
            uint16_t plane[4] = {0};
            for (unsigned f = 0; f < 6; f++) {
                for (unsigned l = 0; l < P4_SUB; l++) {
                    const uint8_t k = cb[P4_SUB * f + l], u = qb[P4_SUB * f + l];
                    // Cluster 3 is the only 2-bit id ≥ 3: (k + 1) & 4 catches it and any larger byte.
                    bad |= (uint8_t)((k & 0xFC) | ((k + 1) & 4) | (u & code_mask));
                    word[l] |= (uint32_t)((u & 0x0F) | (k & 1) << 4) << (5 * f);
                    if (f >= 4) word[l] |= (uint32_t)((k >> 1) & 1) << (26 + f);
                }
                if (f < 4) {
                    uint16_t p = 0;
                    for (unsigned l = 0; l < P4_SUB; l++) p |= (uint16_t)(((cb[P4_SUB * f + l] >> 1) & 1) << l);
                    plane[f] = p;
                }
            }
            uint8_t *blk = row + b * P4_SUPER_BYTES;
            for (unsigned l = 0; l < P4_SUB; l++)  // little-endian on any host
                for (unsigned i = 0; i < 4; i++) blk[4 * l + i] = (uint8_t)(word[l] >> (8 * i));
            for (unsigned f = 0; f < 4; f++) {
                blk[64 + 2 * f] = (uint8_t)plane[f];
                blk[65 + 2 * f] = (uint8_t)(plane[f] >> 8);
            }
        }
        if (full * P4_SUPER < cols) {
            // The row's last, partial superblock: padding is code 0, cluster 0, as in the reference.
            const size_t j0 = full * P4_SUPER, n = cols - j0;
            for (size_t t = 0; t < n; t++) bad |= (uint8_t)((c[j0 + t] >= 3) | (q[j0 + t] & code_mask));
            uint8_t *blk = row + full * P4_SUPER_BYTES;
            uint32_t word[P4_SUB] = {0};
            uint16_t plane[4] = {0};
            for (size_t t = 0; t < n; t++) {
                const unsigned f = (unsigned)(t / P4_SUB), l = (unsigned)(t % P4_SUB);
                const unsigned u = q[j0 + t] & 0x0F, k = c[j0 + t] & 3;
                word[l] |= (uint32_t)(u | (k & 1) << 4) << (5 * f);
                if (f < 4) plane[f] |= (uint16_t)((k >> 1) << l);
                else word[l] |= (uint32_t)(k >> 1) << (26 + f);
            }
            for (unsigned l = 0; l < P4_SUB; l++)
                for (unsigned i = 0; i < 4; i++) blk[4 * l + i] = (uint8_t)(word[l] >> (8 * i));
            for (unsigned f = 0; f < 4; f++) {
                blk[64 + 2 * f] = (uint8_t)plane[f];
                blk[65 + 2 * f] = (uint8_t)(plane[f] >> 8);
            }
        }
        if (bad) return r * cols + split_first_invalid(c, q, cols, bits);
    }
    return rows * cols;
}

/// Cluster id and code of element j of a packed row.
static inline void p4_at(const uint8_t *row, size_t j, unsigned *k, unsigned *u) {
    const uint8_t *blk = row + (j / P4_SUPER) * P4_SUPER_BYTES;
    const unsigned t = (unsigned)(j % P4_SUPER), f = t / P4_SUB, l = t % P4_SUB;
    const uint32_t w = (uint32_t)blk[4 * l] | (uint32_t)blk[4 * l + 1] << 8 | (uint32_t)blk[4 * l + 2] << 16 |
                       (uint32_t)blk[4 * l + 3] << 24;
    const unsigned field = (w >> (5 * f)) & 31;
    const unsigned bit1 = f < 4 ? (unsigned)(blk[64 + 2 * f + l / 8] >> (l % 8)) & 1 : (unsigned)(w >> (26 + f)) & 1;
    *u = field & 0x0F;
    *k = (field >> 4) | bit1 << 1;
}

void ck_split_gemv_p4_ref(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                          int bits, const float *scales, const float *zeros, const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    float t[SPLIT_MAX_TABLE];
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = packed + o * rb;
        float y_o = 0;
        for (size_t g = 0; g < groups; g++) {
            split_table(t, bits, scales, zeros, o, groups, g);
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            float dot = 0;
            for (size_t j = j0; j < j1; j++) {
                unsigned k, u;
                p4_at(row, j, &k, &u);
                dot += t[(k << bits) | u] * x[j];
            }
            y_o += dot;
        }
        y[o] = y_o;
    }
}

void ck_split_dequant_rows_p4_ref(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                                  size_t group_size, int bits, const float *scales, const float *zeros, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    float t[SPLIT_MAX_TABLE];
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = packed + o * rb;
        for (size_t g = 0; g < groups; g++) {
            split_table(t, bits, scales, zeros, o, groups, g);
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            for (size_t j = j0; j < j1; j++) {
                unsigned k, u;
                p4_at(row, j, &k, &u);
                out[r * cols + j] = t[(k << bits) | u];
            }
        }
    }
}

#if defined(__x86_64__)
/// The three 16-entry value tables of one row and group, T_k[u] = s_k * ((float)u - z_k): the
/// reference's two float operations per entry, so every looked-up weight is exact.
CK_INLINE CK_AVX512VL void p4_tables(const float *s, const float *z, __m512 *t0, __m512 *t1, __m512 *t2) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    *t0 = _mm512_mul_ps(_mm512_set1_ps(s[0]), _mm512_sub_ps(iota, _mm512_set1_ps(z[0])));
    *t1 = _mm512_mul_ps(_mm512_set1_ps(s[1]), _mm512_sub_ps(iota, _mm512_set1_ps(z[1])));
    *t2 = _mm512_mul_ps(_mm512_set1_ps(s[2]), _mm512_sub_ps(iota, _mm512_set1_ps(z[2])));
}

/// 16 weights from a word vector whose bits 0…4 are code | cluster bit 0 << 4 (higher bits are
/// ignored) and the cluster-bit-1 mask: clusters 0/1 by one two-table permute, cluster 2 by a masked
/// permute of its own table on the code.
CK_INLINE CK_AVX512VL __m512 p4_lookup16(__m512i v, __mmask16 c1, __m512 t0, __m512 t1, __m512 t2) {
    return _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(t0, v, t1), c1, v, t2);
}

/// Mask of the first min(n, 16) lanes (n ≥ 1): the valid columns of a sub-vector.
CK_INLINE uint16_t p4_lane_mask(size_t n) { return n >= 16 ? 0xFFFF : (uint16_t)((1u << n) - 1); }

/// Cluster-bit-1 mask of sub-vector f (0…5) of the superblock at blk whose words are v: a 16-bit
/// load straight into a mask register for f < 4 (cheaper here than shifting one 64-bit load), a
/// test of bit 30 or 31 of the words for f = 4, 5.
CK_INLINE CK_AVX512VL __mmask16 p4_mask(const uint8_t *blk, __m512i v, int f) {
    if (f < 4) {
        uint16_t m;
        memcpy(&m, blk + 64 + 2 * f, 2);  // little-endian host (x86)
        return (__mmask16)m;
    }
    return _mm512_test_epi32_mask(v, _mm512_set1_epi32((int)(1u << (26 + f))));
}

/// Field f (0…5) of the superblock's words in bits 0…4 of every lane.
CK_INLINE CK_AVX512VL __m512i p4_field(__m512i v, int f) {
    switch (f) {
    case 0: return v;
    case 1: return _mm512_srli_epi32(v, 5);
    case 2: return _mm512_srli_epi32(v, 10);
    case 3: return _mm512_srli_epi32(v, 15);
    case 4: return _mm512_srli_epi32(v, 20);
    default: return _mm512_srli_epi32(v, 25);
    }
}

/// AVX-512 GEMV on the packed layout (group_size a multiple of 16, or one group per row): per row a
/// walk over its superblocks, the group's three value tables rebuilt in registers whenever a
/// sub-vector starts a group; per 16 weights one shift, two permutes and one FMA into one of three
/// accumulators; the row's last, partial sub-vector loads x under a mask (padding weights are
/// code 0 and meet zero x lanes). The weights are exact, the float summation order differs from
/// the reference (three 16-lane accumulators per row, one reduction per row).
CK_AVX512VL static void split_gemv_p4_avx512(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                                             size_t group_size, const float *scales, const float *zeros,
                                             const float *x, float *y) {
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = packed + o * rb;
        const float *sp = scales + o * groups * SPLIT_CLUSTERS, *zp = zeros + o * groups * SPLIT_CLUSTERS;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0;  // three FMA chains: one would be latency-bound
        __m512 t0 = a0, t1 = a0, t2 = a0;
        size_t next = 0;  // first column of the next group
        size_t j = 0;
        // Whole superblocks, unrolled by hand so that the accumulators and tables stay in registers.
#define P4_STEP(F, ACC)                                                                                   \
        if (j + (F) * P4_SUB == next) {                                                                   \
            p4_tables(sp, zp, &t0, &t1, &t2);                                                             \
            sp += SPLIT_CLUSTERS, zp += SPLIT_CLUSTERS, next += group_size;                               \
        }                                                                                                 \
        ACC = _mm512_fmadd_ps(p4_lookup16(p4_field(v, F), p4_mask(blk, v, F), t0, t1, t2), _mm512_loadu_ps(x + j + (F) * P4_SUB), ACC);
        for (; j + P4_SUPER <= cols; j += P4_SUPER) {
            const uint8_t *blk = row + (j / P4_SUPER) * P4_SUPER_BYTES;
            const __m512i v = _mm512_loadu_si512((const void *)blk);
            // The hardware prefetcher alone left one thread at ~10 GB/s on this stream; 48
            // superblocks ahead measured 1.3× with the new layout (RESULTS, seventh pass).
            _mm_prefetch((const char *)blk + P4_PREFETCH, _MM_HINT_T0);
            P4_STEP(0, a0) P4_STEP(1, a1) P4_STEP(2, a2) P4_STEP(3, a0) P4_STEP(4, a1) P4_STEP(5, a2)
        }
#undef P4_STEP
        if (j < cols) {  // the row's last, partial superblock; its last sub-vector loads x under a mask
            const uint8_t *blk = row + (j / P4_SUPER) * P4_SUPER_BYTES;
            const __m512i v = _mm512_loadu_si512((const void *)blk);
            for (int f = 0; j + (size_t)f * P4_SUB < cols; f++) {
                const size_t jf = j + (size_t)f * P4_SUB;
                if (jf == next) {
                    p4_tables(sp, zp, &t0, &t1, &t2);
                    sp += SPLIT_CLUSTERS, zp += SPLIT_CLUSTERS, next += group_size;
                }
                const __m512 xv = _mm512_maskz_loadu_ps(p4_lane_mask(cols - jf), x + jf);
                a0 = _mm512_fmadd_ps(p4_lookup16(p4_field(v, f), p4_mask(blk, v, f), t0, t1, t2), xv, a0);
            }
        }
        y[o] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), a2));
    }
}

/// Exact tiles for prefill: the GEMV's lookups, stored (the last sub-vector under a mask).
CK_AVX512VL static void split_dequant_p4_avx512(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                                                size_t group_size, const float *scales, const float *zeros, float *out) {
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = packed + o * rb;
        const float *sp = scales + o * groups * SPLIT_CLUSTERS, *zp = zeros + o * groups * SPLIT_CLUSTERS;
        float *dst = out + r * cols;
        __m512 t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0;
        size_t next = 0;
        for (size_t j = 0; j < cols; j += P4_SUPER) {
            const uint8_t *blk = row + (j / P4_SUPER) * P4_SUPER_BYTES;
            const __m512i v = _mm512_loadu_si512((const void *)blk);
            for (int f = 0; f < 6 && j + (size_t)f * P4_SUB < cols; f++) {
                const size_t jf = j + (size_t)f * P4_SUB;
                if (jf == next) {
                    p4_tables(sp, zp, &t0, &t1, &t2);
                    sp += SPLIT_CLUSTERS, zp += SPLIT_CLUSTERS, next += group_size;
                }
                _mm512_mask_storeu_ps(dst + jf, p4_lane_mask(cols - jf), p4_lookup16(p4_field(v, f), p4_mask(blk, v, f), t0, t1, t2));
            }
        }
    }
}

#endif

/// Whether the AVX-512 paths run: groups start on 16-column sub-vectors (or one group per row).
static int p4_fast(size_t cols, size_t group_size, int bits) {
#if defined(__x86_64__)
    return (group_size % P4_SUB == 0 || group_size >= cols) && bits <= 4 && ck_cpu_has_avx512vnni();
#else
    (void)cols, (void)group_size, (void)bits;
    return 0;
#endif
}

void ck_split_gemv_p4(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                      int bits, const float *scales, const float *zeros, const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (p4_fast(cols, group_size, bits)) {
        split_gemv_p4_avx512(packed, row_begin, row_count, cols, group_size, scales, zeros, x, y);
        return;
    }
#endif
    ck_split_gemv_p4_ref(packed, row_begin, row_count, cols, group_size, bits, scales, zeros, x, y);
}

void ck_split_dequant_rows_p4(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                              size_t group_size, int bits, const float *scales, const float *zeros, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (p4_fast(cols, group_size, bits)) {
        split_dequant_p4_avx512(packed, row_begin, row_count, cols, group_size, scales, zeros, out);
        return;
    }
#endif
    ck_split_dequant_rows_p4_ref(packed, row_begin, row_count, cols, group_size, bits, scales, zeros, out);
}

// ---- bf16 decode GEMV on the packed layout (issue 13, ninth pass) ------------------------------
//
// The decode twin of the bf16 prefill: weights s_k·(u − z_k) rounded to bf16 (the group's three
// 16-entry tables, two registers), x rounded to bf16 once per call, products exact in fp32, fp32
// sums (VDPBF16PS). Per 32 weights: one VPMULTISHIFTQB pulls the two sub-vectors' 5-bit fields
// (code | cluster bit 0) out of the superblock's words into 16-bit lanes, cluster bit 1 goes to bit
// 5 of each word (one VPTERNLOGD: from the planes, interleaved by PDEP and widened by VPMOVM2W, or,
// for sub-vectors 4 and 5, from bits 30/31, which the same VPMULTISHIFTQB brings to bit 8), and
// one VPERMI2W looks the 6-bit index up in the 48 table words, one VDPBF16PS. The fp32 kernel
// spends two shifts, four permutes and two FMAs on the same 32 weights. Both run at about one zmm
// op per cycle on Zen 4: 17.5 against 21.7 cycles per 96 weights L2-hot (docs/RESULTS.md, ninth pass).
//
// Pairing: VDPBF16PS adds the products of words 2i and 2i + 1 into lane i, so sub-vectors f and
// f + 1 (f = 0, 2, 4) share a vector: word 2i is element 32p + i, word 2i + 1 element 32p + 16 + i
// of pair p (32 columns). x is stored in that order (ck_split_x_bf16). A pair lies in one group when
// group_size is a multiple of 32 (or one group per row); other groupings keep the fp32 kernel.
//
// Order of the sums (the twin repeats it): pair p goes into accumulator p mod 3 (each VDPBF16PS
// lane adds the odd word's product, then the even word's, FMA with FTZ, RNE); per row the three
// accumulators are added lane-wise ((a0 + a1) + a2), then 16 → 8 → 4 lanes by adding the upper
// half, then (t0 + t2) + (t1 + t3). Padding past cols has weight 0 and x 0.

size_t ck_split_x_bf16_count(size_t cols) { return (cols + 31) / 32 * 32; }

int ck_split_p4_bf16_supported(size_t cols, size_t group_size, int bits) {
#if defined(__x86_64__)
    if (group_size == 0) group_size = cols ? cols : 1;
    static int cpu = -1;
    if (cpu < 0)
        cpu = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vl") &&
              __builtin_cpu_supports("bmi2");
    return cpu && ck_cpu_has_avx512bf16() && bits <= 4 && (group_size % 32 == 0 || group_size >= cols);
#else
    (void)cols, (void)group_size, (void)bits;
    return 0;
#endif
}

/// bf16 of x[e] for the element of word w in the pair layout, 0 past cols.
static inline uint16_t x_bf16_word(const float *x, size_t cols, size_t w) {
    const size_t p = w / 32, i = (w % 32) / 2, e = 32 * p + i + (w % 2) * 16;
    return e < cols ? bf16_of(x[e]) : 0;
}

/// The scalar twin: the same roundings, products and order of sums as the AVX-512 kernel, one lane at a time.
void ck_split_gemv_p4_bf16_ref(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                               size_t group_size, int bits, const float *scales, const float *zeros, const float *x,
                               float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    const size_t pairs = ck_split_x_bf16_count(cols) / 32;
    float t[SPLIT_MAX_TABLE];
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = packed + o * rb;
        float acc[3][16] = {{0}};
        for (size_t p = 0; p < pairs; p++) {
            // A pair lies in one group (group_size % 32 == 0 or one group per row).
            split_table(t, bits, scales, zeros, o, groups, (32 * p) / group_size);
            for (size_t i = 0; i < 16; i++) {
                float w[2], xv[2];
                for (size_t h = 0; h < 2; h++) {
                    const size_t e = 32 * p + 16 * h + i;
                    w[h] = 0, xv[h] = 0;
                    if (e < cols) {
                        unsigned k, u;
                        p4_at(row, e, &k, &u);
                        w[h] = f32_of(bf16_of(t[(k << bits) | u]));
                        xv[h] = f32_of(bf16_of(x[e]));
                    }
                }
                float *a = &acc[p % 3][i];
                *a = dp_step(xv[1], w[1], *a);
                *a = dp_step(xv[0], w[0], *a);
            }
        }
        float s[16];
        for (size_t i = 0; i < 16; i++) s[i] = (acc[0][i] + acc[1][i]) + acc[2][i];
        for (size_t i = 0; i < 8; i++) s[i] += s[i + 8];
        for (size_t i = 0; i < 4; i++) s[i] += s[i + 4];
        y[o] = (s[0] + s[2]) + (s[1] + s[3]);
    }
}

#if defined(__x86_64__)
#define CK_SPLIT_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512bf16,avx512vbmi,bmi2")))

CK_SPLIT_BF16 static void split_x_bf16_avx512(const float *x, size_t cols, uint16_t *xb) {
    const size_t n = ck_split_x_bf16_count(cols);
    for (size_t j = 0; j < n; j += 32) {
        const size_t lo = cols - j, hi = lo > 16 ? lo - 16 : 0;  // j < cols: lo ≥ 1
        const __m512 a = _mm512_maskz_loadu_ps(p4_lane_mask(lo), x + j);
        const __m512 b = hi ? _mm512_maskz_loadu_ps(p4_lane_mask(hi), x + j + 16) : _mm512_setzero_ps();
        // bf16(a_i) in the low and bf16(b_i) in the high half of dword i.
        const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // words 0…15 = a, 16…31 = b
        const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                               23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        _mm512_storeu_si512((void *)(xb + j), _mm512_permutexvar_epi16(order, ab));
    }
}
#endif

void ck_split_x_bf16(const float *x, size_t cols, uint16_t *xb) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512bf16()) {
        split_x_bf16_avx512(x, cols, xb);
        return;
    }
#endif
    for (size_t w = 0; w < ck_split_x_bf16_count(cols); w++) xb[w] = x_bf16_word(x, cols, w);
}

#if defined(__x86_64__)
/// The group's tables as bf16: clusters 0 and 1 in one register (words 0…15, 16…31), cluster 2
/// in words 0…15 of the other (its upper half is never indexed: cluster 2 has bit 0 clear).
/// Rounded from p4_tables' exact float entries (RNE).
CK_INLINE CK_SPLIT_BF16 void p4_tables_bf16(const float *s, const float *z, __m512i *t01, __m512i *t2) {
    __m512 f0, f1, f2;
    p4_tables(s, z, &f0, &f1, &f2);
    *t01 = (__m512i)_mm512_cvtne2ps_pbh(f1, f0);
    *t2 = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(f2));
}

/// The 32 bf16 weights of a pair: the fields in bits 0…4 of idx's words and cluster bit 1 in bit 5
/// of bit1's words (other bits of both are ignored) make the 6-bit index of one VPERMI2W into the
/// 64-word table t01 | t2.
CK_INLINE CK_SPLIT_BF16 __m512i p4_pair_weights(__m512i idx, __m512i bit1, __m512i t01, __m512i t2) {
    const __m512i index = _mm512_ternarylogic_epi32(idx, bit1, _mm512_set1_epi16(0x20), 0xD8);  // c ? b : a
    return _mm512_permutex2var_epi16(t01, index, t2);
}

/// VPMULTISHIFTQB control for pair (f, f + 1): per qword (dwords 2q, 2q + 1 of the superblock) the
/// low bytes of its four words take 8 bits from offsets 5f, 5f + 5, 32 + 5f, 32 + 5f + 5; the high
/// bytes take bits 30, 31, 62, 63 (cluster bit 1 of sub-vectors 4 and 5, at bit 8 of the word;
/// unused for f < 4).
#define P4_SHIFT_CTRL(F)                                                                                  \
    ((uint64_t)(5 * (F)) | (uint64_t)30 << 8 | (uint64_t)(5 * (F) + 5) << 16 | (uint64_t)31 << 24 |       \
     (uint64_t)(32 + 5 * (F)) << 32 | (uint64_t)62 << 40 | (uint64_t)(37 + 5 * (F)) << 48 | (uint64_t)63 << 56)

/// Cluster-bit-1 masks of pairs (0, 1) and (2, 3) from the superblock's four planes: bit 2i of
/// pair (f, f + 1) is bit i of plane f, bit 2i + 1 bit i of plane f + 1.
CK_INLINE CK_SPLIT_BF16 __mmask32 p4_plane_pair(uint64_t two_planes) {
    const uint64_t e = _pdep_u64(two_planes, 0x5555555555555555ull);  // plane f at even bits 0…31, f + 1 at 32…63
    return (__mmask32)((uint32_t)e | (uint32_t)(e >> 32) << 1);
}

CK_SPLIT_BF16 static void split_gemv_p4_bf16_avx512(const uint8_t *packed, size_t row_begin, size_t row_count,
                                                    size_t cols, size_t group_size, const float *scales,
                                                    const float *zeros, const uint16_t *xb, float *y) {
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    const size_t pairs = ck_split_x_bf16_count(cols) / 32;
    const __m512i ctrl0 = _mm512_set1_epi64((long long)P4_SHIFT_CTRL(0));
    const __m512i ctrl2 = _mm512_set1_epi64((long long)P4_SHIFT_CTRL(2));
    const __m512i ctrl4 = _mm512_set1_epi64((long long)P4_SHIFT_CTRL(4));
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = packed + o * rb;
        const float *sp = scales + o * groups * SPLIT_CLUSTERS, *zp = zeros + o * groups * SPLIT_CLUSTERS;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0;
        __m512i t01 = _mm512_setzero_si512(), t2 = t01;
        size_t next = 0;  // first column of the next group
        size_t p = 0;     // pair index; superblock p / 3
        // Whole superblocks inside the row, unrolled by hand so that accumulators and tables stay
        // in registers. (Step 2's cluster bit 1 is shifted from bit 8 of the idx that the step
        // itself computes.)
        for (; 32 * p + P4_SUPER <= cols; p += 3) {
            const uint8_t *blk = row + (p / 3) * P4_SUPER_BYTES;
            const __m512i v = _mm512_loadu_si512((const void *)blk);
            _mm_prefetch((const char *)blk + P4_PREFETCH, _MM_HINT_T0);
            uint64_t planes;
            memcpy(&planes, blk + 64, 8);  // little-endian host (x86)
            const uint16_t *xp = xb + 32 * p;
#define P4_BF16_STEP(K, CTRL, MASK, ACC)                                                                  \
            if (32 * (p + (K)) == next) {                                                                 \
                p4_tables_bf16(sp, zp, &t01, &t2);                                                        \
                sp += SPLIT_CLUSTERS, zp += SPLIT_CLUSTERS, next += group_size;                           \
            }                                                                                             \
            {                                                                                             \
                const __m512i idx = _mm512_multishift_epi64_epi8(CTRL, v);                                \
                ACC = _mm512_dpbf16_ps(ACC, (__m512bh)p4_pair_weights(idx, MASK, t01, t2),                \
                                       (__m512bh)_mm512_loadu_si512((const void *)(xp + 32 * (K))));      \
            }
            P4_BF16_STEP(0, ctrl0, _mm512_movm_epi16(p4_plane_pair(planes)), a0)
            P4_BF16_STEP(1, ctrl2, _mm512_movm_epi16(p4_plane_pair(planes >> 32)), a1)
            P4_BF16_STEP(2, ctrl4, _mm512_srli_epi16(idx, 3), a2)
#undef P4_BF16_STEP
        }
        if (p < pairs) {  // the row's last, partial superblock: 1…3 pairs, the last one ragged
            const uint8_t *blk = row + (p / 3) * P4_SUPER_BYTES;
            const __m512i v = _mm512_loadu_si512((const void *)blk);
            uint64_t planes;
            memcpy(&planes, blk + 64, 8);
            const __m512i ctrl[3] = {ctrl0, ctrl2, ctrl4};
            for (size_t k = 0; p + k < pairs; k++) {
                const size_t j = 32 * (p + k);
                if (j == next) {
                    p4_tables_bf16(sp, zp, &t01, &t2);
                    sp += SPLIT_CLUSTERS, zp += SPLIT_CLUSTERS, next += group_size;
                }
                const __m512i idx = _mm512_multishift_epi64_epi8(ctrl[k], v);
                const __m512i c2 = k == 2 ? _mm512_srli_epi16(idx, 3) : _mm512_movm_epi16(p4_plane_pair(planes >> (32 * k)));
                // Padding words are weight 0 (x is 0 there too), as in the twin.
                const size_t n = cols - j, lo = n < 16 ? n : 16, hi = n > 16 ? n - 16 : 0;
                const uint32_t valid = (uint32_t)_pdep_u32(p4_lane_mask(lo), 0x55555555u) |
                                       (hi ? (uint32_t)_pdep_u32(p4_lane_mask(hi), 0xAAAAAAAAu) : 0u);
                const __m512i w = _mm512_maskz_mov_epi16((__mmask32)valid, p4_pair_weights(idx, c2, t01, t2));
                const __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(xb + j));
                // By value, not through pointers: taking the accumulators' addresses kept them in
                // memory for the whole row (measured 1.2× slower).
                if (k == 0) a0 = _mm512_dpbf16_ps(a0, (__m512bh)w, xv);
                else if (k == 1) a1 = _mm512_dpbf16_ps(a1, (__m512bh)w, xv);
                else a2 = _mm512_dpbf16_ps(a2, (__m512bh)w, xv);
            }
        }
        const __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), a2);
        const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
        y[o] = ck_hsum_ps(h);
    }
}
#endif

void ck_split_gemv_p4_bf16(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                           int bits, const float *scales, const float *zeros, const float *x, const uint16_t *xb,
                           float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (ck_split_p4_bf16_supported(cols, group_size, bits)) {
        split_gemv_p4_bf16_avx512(packed, row_begin, row_count, cols, group_size, scales, zeros, xb, y);
        return;
    }
#endif
    (void)xb;
    ck_split_gemv_p4_bf16_ref(packed, row_begin, row_count, cols, group_size, bits, scales, zeros, x, y);
}
