#include "ckernels.h"
#include "split_kernels.h"
#include <immintrin.h>

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
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_INLINE static inline __attribute__((always_inline))

CK_INLINE CK_AVX2 float split_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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
            y[o] = split_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + tail; \
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
