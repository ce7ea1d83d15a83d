#include "ckernels.h"
#include "split_kernels.h"
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

// ---- packed 4-bit codes + 2-bit cluster planes (bits ≤ 4) ---------------------------------------
//
// Per row, ceil(cols / 32) blocks of 24 bytes (see split_kernels.h): 16 code bytes (byte t holds
// element t in its low nibble and element t + 16 in its high nibble), then two little-endian
// 32-bit planes with bit 0 and bit 1 of each element's cluster id. Padding elements are code 0,
// cluster 0.

#define P4_BLOCK 32
#define P4_BLOCK_BYTES 24

size_t ck_split_p4_row_bytes(size_t cols) { return (cols + P4_BLOCK - 1) / P4_BLOCK * P4_BLOCK_BYTES; }

void ck_split_pack_p4(const uint8_t *clusters, const uint8_t *codes, size_t rows, size_t cols, uint8_t *out) {
    const size_t rb = ck_split_p4_row_bytes(cols);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *c = clusters + r * cols, *q = codes + r * cols;
        for (size_t j0 = 0; j0 < cols; j0 += P4_BLOCK) {
            // One block in locals, written once.
            uint8_t nib[16] = {0};
            uint32_t p0 = 0, p1 = 0;
            const size_t n = cols - j0 < P4_BLOCK ? cols - j0 : P4_BLOCK;
            for (size_t t = 0; t < n; t++) {
                const unsigned u = q[j0 + t] & 0x0F, k = c[j0 + t] & 3;
                nib[t & 15] |= (uint8_t)(t < 16 ? u : u << 4);
                p0 |= (uint32_t)(k & 1) << t;
                p1 |= (uint32_t)(k >> 1) << t;
            }
            uint8_t *blk = out + r * rb + (j0 / P4_BLOCK) * P4_BLOCK_BYTES;
            memcpy(blk, nib, 16);
            for (int b = 0; b < 4; b++) {  // little-endian planes on any host
                blk[16 + b] = (uint8_t)(p0 >> (8 * b));
                blk[20 + b] = (uint8_t)(p1 >> (8 * b));
            }
        }
    }
}

/// Cluster id and code of element j of a packed row.
static inline void p4_at(const uint8_t *row, size_t j, unsigned *k, unsigned *u) {
    const uint8_t *blk = row + (j / P4_BLOCK) * P4_BLOCK_BYTES;
    const size_t t = j % P4_BLOCK;
    const uint8_t byte = blk[t & 15];
    *u = t < 16 ? (unsigned)(byte & 0x0F) : (unsigned)(byte >> 4);
    *k = (unsigned)((blk[16 + t / 8] >> (t % 8)) & 1) | (unsigned)(((blk[20 + t / 8] >> (t % 8)) & 1) << 1);
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

/// 16 weights from their codes (low 4 bits of the dword lanes of `u`, upper bits zero) and the
/// cluster bit masks: clusters 0/1 by one two-table permute on code | bit0 << 4, cluster 2 by a
/// masked permute of its own table.
CK_INLINE CK_AVX512VL __m512 p4_lookup16(__m512i u, __mmask16 k0, __mmask16 k1, __m512 t0, __m512 t1, __m512 t2) {
    const __m512i idx = _mm512_mask_or_epi32(u, k0, u, _mm512_set1_epi32(16));
    const __m512 w = _mm512_permutex2var_ps(t0, idx, t1);
    return _mm512_mask_permutexvar_ps(w, k1, u, t2);
}

/// The 32 weights of one packed block as two 16-lane vectors (elements 0…15 and 16…31).
CK_INLINE CK_AVX512VL void p4_block(const uint8_t *blk, __m512 t0, __m512 t1, __m512 t2, __m512 *lo, __m512 *hi) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk));
    uint32_t p0, p1;
    memcpy(&p0, blk + 16, 4);
    memcpy(&p1, blk + 20, 4);
    const __m512i low4 = _mm512_set1_epi32(0x0F);
    *lo = p4_lookup16(_mm512_and_si512(v, low4), (__mmask16)p0, (__mmask16)p1, t0, t1, t2);
    *hi = p4_lookup16(_mm512_srli_epi32(v, 4), (__mmask16)(p0 >> 16), (__mmask16)(p1 >> 16), t0, t1, t2);
}

/// Mask of the first min(n, 16) lanes (n ≥ 1): the valid columns of a block's 16-lane half.
CK_INLINE uint16_t p4_lane_mask(size_t n) { return n >= 16 ? 0xFFFF : (uint16_t)((1u << n) - 1); }

/// AVX-512 GEMV on the packed layout (group_size a multiple of 32, or one group per row): per
/// row and group three value tables in registers, per 32 weights one byte widen, an AND and a
/// shift, two permutes per 16 weights and two FMAs; the last block of a row loads x under a mask.
/// The weights are exact, the float summation order differs from the reference (four 16-lane
/// accumulators per row, one reduction per row).
CK_AVX512VL static void split_gemv_p4_avx512(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                                             size_t group_size, const float *scales, const float *zeros,
                                             const float *x, float *y) {
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = packed + o * rb;
        // Four accumulators (two blocks per step): one FMA chain per 16 columns would be latency-bound.
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();
        for (size_t g = 0; g < groups; g++) {
            __m512 t0, t1, t2;
            p4_tables(scales + (o * groups + g) * SPLIT_CLUSTERS, zeros + (o * groups + g) * SPLIT_CLUSTERS, &t0, &t1, &t2);
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            size_t j = j0;
            for (; j + 2 * P4_BLOCK <= j1; j += 2 * P4_BLOCK) {
                __m512 lo0, hi0, lo1, hi1;
                const uint8_t *blk = row + (j / P4_BLOCK) * P4_BLOCK_BYTES;
                p4_block(blk, t0, t1, t2, &lo0, &hi0);
                p4_block(blk + P4_BLOCK_BYTES, t0, t1, t2, &lo1, &hi1);
                acc0 = _mm512_fmadd_ps(lo0, _mm512_loadu_ps(x + j), acc0);
                acc1 = _mm512_fmadd_ps(hi0, _mm512_loadu_ps(x + j + 16), acc1);
                acc2 = _mm512_fmadd_ps(lo1, _mm512_loadu_ps(x + j + 32), acc2);
                acc3 = _mm512_fmadd_ps(hi1, _mm512_loadu_ps(x + j + 48), acc3);
            }
            for (; j + P4_BLOCK <= j1; j += P4_BLOCK) {
                __m512 lo, hi;
                p4_block(row + (j / P4_BLOCK) * P4_BLOCK_BYTES, t0, t1, t2, &lo, &hi);
                acc0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + j), acc0);
                acc1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + j + 16), acc1);
            }
            if (j < j1) {  // the row's last, partial block: padding weights meet masked-off (zero) x lanes
                const size_t n = j1 - j;
                const __mmask16 mlo = p4_lane_mask(n), mhi = n > 16 ? p4_lane_mask(n - 16) : 0;
                __m512 lo, hi;
                p4_block(row + (j / P4_BLOCK) * P4_BLOCK_BYTES, t0, t1, t2, &lo, &hi);
                acc0 = _mm512_fmadd_ps(lo, _mm512_maskz_loadu_ps(mlo, x + j), acc0);
                acc1 = _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(mhi, x + j + 16), acc1);
            }
        }
        y[o] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    }
}

CK_AVX512VL static void split_dequant_p4_avx512(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols,
                                                size_t group_size, const float *scales, const float *zeros, float *out) {
    const size_t groups = split_groups(cols, group_size), rb = ck_split_p4_row_bytes(cols);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = packed + o * rb;
        float *dst = out + r * cols;
        for (size_t g = 0; g < groups; g++) {
            __m512 t0, t1, t2;
            p4_tables(scales + (o * groups + g) * SPLIT_CLUSTERS, zeros + (o * groups + g) * SPLIT_CLUSTERS, &t0, &t1, &t2);
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            for (size_t j = j0; j < j1; j += P4_BLOCK) {
                const size_t n = j1 - j < P4_BLOCK ? j1 - j : P4_BLOCK;
                const __mmask16 mlo = p4_lane_mask(n), mhi = n > 16 ? p4_lane_mask(n - 16) : 0;
                __m512 lo, hi;
                p4_block(row + (j / P4_BLOCK) * P4_BLOCK_BYTES, t0, t1, t2, &lo, &hi);
                _mm512_mask_storeu_ps(dst + j, mlo, lo);
                _mm512_mask_storeu_ps(dst + j + 16, mhi, hi);
            }
        }
    }
}

#endif

void ck_split_gemv_p4(const uint8_t *packed, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                      int bits, const float *scales, const float *zeros, const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    // Blocks of 32 never straddle a group when groups are multiples of 32 (or one per row).
    const int aligned = group_size % P4_BLOCK == 0 || group_size >= cols;
    if (aligned && bits <= 4 && ck_cpu_has_avx512vnni()) {
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
    if ((group_size % P4_BLOCK == 0 || group_size >= cols) && bits <= 4 && ck_cpu_has_avx512vnni()) {
        split_dequant_p4_avx512(packed, row_begin, row_count, cols, group_size, scales, zeros, out);
        return;
    }
#endif
    ck_split_dequant_rows_p4_ref(packed, row_begin, row_count, cols, group_size, bits, scales, zeros, out);
}
