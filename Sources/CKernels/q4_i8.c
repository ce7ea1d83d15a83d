#include "ckernels.h"
#include "ck_runtime.h"
#include <immintrin.h>

// Nibble-packed integer weights × int8 activations (the W4A8 integer path): see ck_runtime.h.
//
// ggml's Q4_0 × Q8_0 trick without the sign step: the unsigned nibble u (0…15) is the unsigned
// operand of maddubs / vpdpbusd and the signed activation code the signed one, so a block of 32
// weights costs one 16-byte load, a shift, an and and one dot step. The stored value is u − mid,
// so each group's exact sum is Σ u·a − mid·Σ a; Σ a per activation row and group is computed once
// per call (ck_q4_prepare_i8), not once per weight row.

void ck_q4_prepare_i8(const int8_t *a, size_t rows, size_t cols, size_t group_size, int8_t *a_perm,
                      int32_t *group_sums) {
    const size_t groups = cols / group_size;
    ck_fp4_permute_i8(a, rows, cols, a_perm);
    for (size_t i = 0; i < rows; i++)
        for (size_t g = 0; g < groups; g++) {
            int32_t s = 0;
            for (size_t j = g * group_size; j < (g + 1) * group_size; j++) s += a[i * cols + j];
            group_sums[i * groups + g] = s;
        }
}

void ck_q4_gemv_i8_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       int mid, const float *wscale, const int8_t *a_perm, const int32_t *group_sums, size_t m,
                       float *y, size_t ldy) {
    (void)group_sums;  // recomputed from (u − mid)·a directly, which checks the fast path's Σ a term
    const size_t stride = cols / 2, groups = cols / group_size;
    for (size_t i = 0; i < m; i++) {
        const int8_t *a = a_perm + i * cols;
        for (size_t o = row_begin; o < row_begin + row_count; o++) {
            const uint8_t *row = codes + o * stride;
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                int32_t sum = 0;
                for (size_t j = g * group_size; j < (g + 1) * group_size; j++) {
                    // Column j sits at permuted position (j & ~31) + (j & 1) * 16 + (j & 31) / 2.
                    const size_t p = (j & ~(size_t)31) + (j & 1) * 16 + ((j & 31) >> 1);
                    const int u = (j & 1) ? row[j >> 1] >> 4 : row[j >> 1] & 0x0F;
                    sum += (int32_t)(u - mid) * (int32_t)a[p];
                }
                // Separate statements: no contraction into an FMA, as ck_gemm_i8_grouped_ref.
                float term = wscale ? wscale[o * groups + g] * (float)sum : (float)sum;
                acc = acc + term;
            }
            y[i * ldy + o] = acc;
        }
    }
}

#if defined(__x86_64__)
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define CK_INLINE static inline __attribute__((always_inline))

CK_INLINE CK_AVX2 __m128i q4_hsum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i u = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}

/// The 32 unsigned codes of one block: low nibbles (even columns) in the low lane, high nibbles
/// (odd columns) in the high lane, the order of the block-permuted activations.
CK_INLINE CK_AVX2 __m256i q4_block(const uint8_t *p, __m256i low4) {
    const __m128i x = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), low4);
}

// u ≤ 15 and |a| ≤ 127: maddubs pair sums stay far below the int16 limit (2·15·127 = 3810).
CK_INLINE CK_AVX2 __m256i q4_dot_avx2(__m256i acc, __m256i u, __m256i a) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1)));
}
CK_INLINE CK_VNNI __m256i q4_dot_vnni(__m256i acc, __m256i u, __m256i a) { return _mm256_dpbusd_epi32(acc, u, a); }

// R weight rows (1…4) starting at o × one activation row a; DOT is the dot-accumulate step.
#define Q4_ROWS_BODY(DOT)                                                                         \
    const size_t stride = cols / 2, groups = cols / group_size, blocks = group_size / 32;         \
    const __m256i low4 = _mm256_set1_epi8(0x0F);                                                  \
    __m128 acc = _mm_setzero_ps();                                                                \
    for (size_t g = 0; g < groups; g++) {                                                         \
        __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),   \
                        _mm256_setzero_si256()};                                                  \
        const size_t c0 = g * group_size;                                                         \
        for (size_t b = 0; b < blocks; b++) {                                                     \
            const size_t col = c0 + b * 32;                                                       \
            const __m256i av = _mm256_loadu_si256((const __m256i *)(a + col));                    \
            for (int r = 0; r < R; r++)                                                           \
                s[r] = DOT(s[r], q4_block(codes + (o + r) * stride + col / 2, low4), av);         \
        }                                                                                         \
        const __m128i sums = _mm_sub_epi32(q4_hsum4(s[0], s[1], s[2], s[3]),                      \
                                           _mm_set1_epi32(mid * group_sums[g]));                  \
        float ws[4] = {1, 1, 1, 1};                                                               \
        if (wscale)                                                                               \
            for (int r = 0; r < R; r++) ws[r] = wscale[(o + r) * groups + g];                     \
        const __m128 term = _mm_mul_ps(_mm_loadu_ps(ws), _mm_cvtepi32_ps(sums));                  \
        acc = _mm_add_ps(acc, term);                                                              \
    }                                                                                             \
    float out[4];                                                                                 \
    _mm_storeu_ps(out, acc);                                                                      \
    for (int r = 0; r < R; r++) y[o + r] = out[r];

CK_INLINE CK_AVX2 void q4_rows_avx2(const uint8_t *codes, size_t o, size_t cols, size_t group_size, int mid,
                                    const float *wscale, const int8_t *a, const int32_t *group_sums, float *y,
                                    const int R) {
    Q4_ROWS_BODY(q4_dot_avx2)
}
CK_INLINE CK_VNNI void q4_rows_vnni(const uint8_t *codes, size_t o, size_t cols, size_t group_size, int mid,
                                    const float *wscale, const int8_t *a, const int32_t *group_sums, float *y,
                                    const int R) {
    Q4_ROWS_BODY(q4_dot_vnni)
}

// 1.0f · x is x exactly, so the ws = 1 lanes of a NULL wscale give (float)sum as the reference.
#define Q4_GEMV(NAME, ROWS, ATTR)                                                                               \
    ATTR static void NAME(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,                 \
                          size_t group_size, int mid, const float *wscale, const int8_t *a_perm,                 \
                          const int32_t *group_sums, size_t m, float *y, size_t ldy) {                           \
        const size_t groups = cols / group_size, end = row_begin + row_count;                                    \
        for (size_t i = 0; i < m; i++) {                                                                         \
            const int8_t *a = a_perm + i * cols;                                                                 \
            const int32_t *gs = group_sums + i * groups;                                                         \
            float *yi = y + i * ldy;                                                                             \
            size_t o = row_begin;                                                                                \
            for (; o + 4 <= end; o += 4) ROWS(codes, o, cols, group_size, mid, wscale, a, gs, yi, 4);            \
            for (; o < end; o++) ROWS(codes, o, cols, group_size, mid, wscale, a, gs, yi, 1);                    \
        }                                                                                                        \
    }
Q4_GEMV(q4_gemv_avx2, q4_rows_avx2, CK_AVX2)
Q4_GEMV(q4_gemv_vnni, q4_rows_vnni, CK_VNNI)
#endif

void ck_q4_gemv_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                   int mid, const float *wscale, const int8_t *a_perm, const int32_t *group_sums, size_t m,
                   float *y, size_t ldy) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) {
        q4_gemv_vnni(codes, row_begin, row_count, cols, group_size, mid, wscale, a_perm, group_sums, m, y, ldy);
        return;
    }
    if (ck_cpu_has_avx2()) {
        q4_gemv_avx2(codes, row_begin, row_count, cols, group_size, mid, wscale, a_perm, group_sums, m, y, ldy);
        return;
    }
#endif
    ck_q4_gemv_i8_ref(codes, row_begin, row_count, cols, group_size, mid, wscale, a_perm, group_sums, m, y, ldy);
}

// ---- prefill: unpacked unsigned tiles × int8 activations -------------------------------------

void ck_q4_unpack_u8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, uint8_t *out) {
    const size_t stride = cols / 2;
    for (size_t r = 0; r < row_count; r++) {
        const uint8_t *row = codes + (row_begin + r) * stride;
        uint8_t *dst = out + r * cols;
        for (size_t j = 0; j < stride; j++) {
            dst[2 * j] = row[j] & 0x0F;
            dst[2 * j + 1] = row[j] >> 4;
        }
    }
}

void ck_group_sums_i8(const int8_t *a, size_t rows, size_t cols, size_t group_size, int32_t *group_sums) {
    const size_t groups = cols / group_size;
    for (size_t i = 0; i < rows; i++)
        for (size_t g = 0; g < groups; g++) {
            int32_t s = 0;
            for (size_t j = g * group_size; j < (g + 1) * group_size; j++) s += a[i * cols + j];
            group_sums[i * groups + g] = s;
        }
}

void ck_gemm_u4i8_ref(const int8_t *a, size_t m, const uint8_t *u, size_t n, size_t k, size_t group_size, int mid,
                      const int32_t *group_sums, const float *wscale, float *c, size_t ldc) {
    (void)group_sums;  // recomputed from (u − mid)·a directly
    const size_t groups = k / group_size;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                int32_t sum = 0;
                for (size_t t = g * group_size; t < (g + 1) * group_size; t++)
                    sum += ((int32_t)u[j * k + t] - mid) * (int32_t)a[i * k + t];
                float term = wscale ? wscale[j * groups + g] * (float)sum : (float)sum;
                acc = acc + term;
            }
            c[i * ldc + j] = acc;
        }
}

#if defined(__x86_64__)
CK_INLINE CK_AVX2 __m256i u4_hsum8(__m256i v0, __m256i v1, __m256i v2, __m256i v3, __m256i v4, __m256i v5,
                                   __m256i v6, __m256i v7) {
    const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v4, v5), _mm256_hadd_epi32(v6, v7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

// One MR×NR tile (MR ≤ 4 activation rows from i, NR ≤ 2 weight rows from j) over every group:
// unsigned weights are the maddubs / vpdpbusd unsigned operand as they are (no abs/sign step),
// and each group's exact sum subtracts mid·Σa. Lane i*2 + jj holds row i × weight row jj.
#define U4_TILE_BODY(DOT)                                                                             \
    const size_t groups = k / group_size;                                                             \
    int32_t corr[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                       \
    float ws[8] = {1, 1, 1, 1, 1, 1, 1, 1};                                                           \
    __m256 facc = _mm256_setzero_ps();                                                                \
    for (size_t g = 0; g < groups; g++) {                                                             \
        __m256i acc[4][2];                                                                            \
        for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();                   \
        for (size_t t = g * group_size; t < (g + 1) * group_size; t += 32) {                          \
            __m256i bv[2];                                                                            \
            for (int jj = 0; jj < NR; jj++) bv[jj] = _mm256_loadu_si256((const __m256i *)(u + jj * k + t)); \
            for (int r = 0; r < MR; r++) {                                                            \
                const __m256i av = _mm256_loadu_si256((const __m256i *)(a + r * k + t));              \
                for (int jj = 0; jj < NR; jj++) acc[r][jj] = DOT(acc[r][jj], bv[jj], av);             \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < MR; r++) corr[2 * r] = corr[2 * r + 1] = mid * group_sums[r * groups + g]; \
        if (wscale)                                                                                   \
            for (int r = 0; r < 4; r++)                                                               \
                for (int jj = 0; jj < NR; jj++) ws[2 * r + jj] = wscale[jj * groups + g];             \
        const __m256i s = _mm256_sub_epi32(u4_hsum8(acc[0][0], acc[0][1], acc[1][0], acc[1][1], acc[2][0], \
                                                    acc[2][1], acc[3][0], acc[3][1]),                \
                                           _mm256_loadu_si256((const __m256i *)corr));                \
        const __m256 term = _mm256_mul_ps(_mm256_loadu_ps(ws), _mm256_cvtepi32_ps(s));                \
        facc = _mm256_add_ps(facc, term);                                                             \
    }                                                                                                 \
    float out[8];                                                                                     \
    _mm256_storeu_ps(out, facc);                                                                      \
    for (int r = 0; r < MR; r++)                                                                      \
        for (int jj = 0; jj < NR; jj++) c[r * ldc + jj] = out[2 * r + jj];

CK_INLINE CK_AVX2 void u4_tile_avx2(const int8_t *a, const uint8_t *u, size_t k, size_t group_size, int mid,
                                    const int32_t *group_sums, const float *wscale, float *c, size_t ldc,
                                    const int MR, const int NR) {
    U4_TILE_BODY(q4_dot_avx2)
}
CK_INLINE CK_VNNI void u4_tile_vnni(const int8_t *a, const uint8_t *u, size_t k, size_t group_size, int mid,
                                    const int32_t *group_sums, const float *wscale, float *c, size_t ldc,
                                    const int MR, const int NR) {
    U4_TILE_BODY(q4_dot_vnni)
}

#define U4_GEMM(NAME, TILE, ATTR)                                                                              \
    ATTR static void NAME(const int8_t *a, size_t m, const uint8_t *u, size_t n, size_t k, size_t group_size,   \
                          int mid, const int32_t *group_sums, const float *wscale, float *c, size_t ldc) {      \
        const size_t groups = k / group_size;                                                                   \
        for (size_t i = 0; i < m; i += 4) {                                                                     \
            const size_t mr = m - i < 4 ? m - i : 4;                                                            \
            const int8_t *ai = a + i * k;                                                                       \
            const int32_t *gi = group_sums + i * groups;                                                        \
            for (size_t j = 0; j < n; j += 2) {                                                                 \
                const size_t nr = n - j < 2 ? n - j : 2;                                                        \
                const uint8_t *uj = u + j * k;                                                                  \
                const float *wj = wscale ? wscale + j * groups : NULL;                                          \
                float *cij = c + i * ldc + j;                                                                   \
                switch (mr * 2 + nr) {                                                                          \
                case 10: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 4, 2); break;                       \
                case 9: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 4, 1); break;                        \
                case 8: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 3, 2); break;                        \
                case 7: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 3, 1); break;                        \
                case 6: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 2, 2); break;                        \
                case 5: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 2, 1); break;                        \
                case 4: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 1, 2); break;                        \
                default: TILE(ai, uj, k, group_size, mid, gi, wj, cij, ldc, 1, 1); break;                       \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
    }
U4_GEMM(gemm_u4i8_avx2, u4_tile_avx2, CK_AVX2)
U4_GEMM(gemm_u4i8_vnni, u4_tile_vnni, CK_VNNI)
#endif

void ck_gemm_u4i8(const int8_t *a, size_t m, const uint8_t *u, size_t n, size_t k, size_t group_size, int mid,
                  const int32_t *group_sums, const float *wscale, float *c, size_t ldc) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) { gemm_u4i8_vnni(a, m, u, n, k, group_size, mid, group_sums, wscale, c, ldc); return; }
    if (ck_cpu_has_avx2()) { gemm_u4i8_avx2(a, m, u, n, k, group_size, mid, group_sums, wscale, c, ldc); return; }
#endif
    ck_gemm_u4i8_ref(a, m, u, n, k, group_size, mid, group_sums, wscale, c, ldc);
}
