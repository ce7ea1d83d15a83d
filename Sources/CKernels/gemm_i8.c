#include "ckernels.h"
#include "ck_runtime.h"
#include "x86_common.h"

// int8 × int8 → int32 GEMM, C = A·Bᵀ with A [m, k] activation codes and B [n, k] weight codes.
//
// The micro-kernel keeps a 4×2 tile of C in eight int32 accumulators. Per 32 columns it loads
// two rows of B and four rows of A and adds the eight exact products (AVX2 sign trick, VNNI, or
// VNNI on biased activations: TILE_DOT below). The eight accumulators are reduced to one vector
// with a hadd tree at the end of the tile (or of each group in the grouped variant).

void ck_gemm_i8_ref(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                    int32_t *c, size_t ldc) {
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            int32_t sum = 0;
            for (size_t t = 0; t < k; t++) sum += (int32_t)a[i * k + t] * (int32_t)b[j * k + t];
            c[i * ldc + j] = sum;
        }
    }
}

void ck_gemm_i8_grouped_ref(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                            size_t group_size, const float *wscale, float *c, size_t ldc) {
    if (group_size == 0) group_size = k ? k : 1;
    const size_t groups = (k + group_size - 1) / group_size;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                const size_t t0 = g * group_size;
                const size_t t1 = t0 + group_size < k ? t0 + group_size : k;
                int32_t sum = 0;
                for (size_t t = t0; t < t1; t++) sum += (int32_t)a[i * k + t] * (int32_t)b[j * k + t];
                // Separate statements: no contraction into an FMA, matching the AVX2 path.
                float term = wscale[j * groups + g] * (float)sum;
                acc = acc + term;
            }
            c[i * ldc + j] = acc;
        }
    }
}

#if defined(__x86_64__)
/// Exact dot products of MR rows of a (stride lda) with NR rows of b (stride ldb) over len
/// columns. Lane i*2 + j of the result holds row i × row j; unused lanes are zero. MR ≤ 4 and
/// NR ≤ 2 are compile-time constants at every call site, so the loops unroll and the
/// accumulators live in registers. One template for the three variants: PREP_B(j) derives the
/// per-weight-row operand bu[j] from bv[j] (once per 32 columns, shared by the MR rows) and
/// PAIR(acc, av, j) adds one 32-column product of activation row av with weight row j.
/// Columns past the last multiple of 32 go through a scalar tail (as ints: the same sum).
#define TILE_DOT(NAME, ATTR, A_TYPE, PREP_B, PAIR)                                                         \
    CK_INLINE ATTR __m256i NAME(const A_TYPE *a, size_t lda, const int8_t *b, size_t ldb, size_t len,       \
                                const int MR, const int NR) {                                               \
        __m256i acc[4][2];                                                                                  \
        for (int i = 0; i < 4; i++)                                                                         \
            for (int j = 0; j < 2; j++) acc[i][j] = _mm256_setzero_si256();                                 \
        size_t t = 0;                                                                                       \
        for (; t + 32 <= len; t += 32) {                                                                    \
            __m256i bv[2], bu[2];                                                                           \
            for (int j = 0; j < NR; j++) {                                                                  \
                bv[j] = _mm256_loadu_si256((const __m256i *)(b + j * ldb + t));                             \
                PREP_B                                                                                      \
            }                                                                                               \
            for (int i = 0; i < MR; i++) {                                                                  \
                const __m256i av = _mm256_loadu_si256((const __m256i *)(a + i * lda + t));                  \
                for (int j = 0; j < NR; j++) acc[i][j] = PAIR;                                              \
            }                                                                                               \
        }                                                                                                   \
        const __m256i flat[8] = {acc[0][0], acc[0][1], acc[1][0], acc[1][1],                                \
                                 acc[2][0], acc[2][1], acc[3][0], acc[3][1]};                               \
        __m256i r = ck_hsum8_epi32(flat);                                                                   \
        if (t < len) {                                                                                      \
            int32_t tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                     \
            for (int i = 0; i < MR; i++)                                                                    \
                for (int j = 0; j < NR; j++) {                                                              \
                    int32_t s = 0;                                                                          \
                    for (size_t u = t; u < len; u++) s += (int32_t)a[i * lda + u] * (int32_t)b[j * ldb + u]; \
                    tail[i * 2 + j] = s;                                                                    \
                }                                                                                           \
            r = _mm256_add_epi32(r, _mm256_loadu_si256((const __m256i *)tail));                             \
        }                                                                                                   \
        return r;                                                                                           \
    }

// AVX2, ggml's sign trick: maddubs(|b|, sign(a, b)) gives int16 pair sums of a·b (|b| ≤ 128 and
// |a| ≤ 127 keep them below 32767; -128 → 0x80 = 128 as unsigned is still right), madd with
// ones widens them to int32.
TILE_DOT(tile_dot_avx2, CK_AVX2, int8_t, bu[j] = _mm256_abs_epi8(bv[j]);,
         _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(_mm256_maddubs_epi16(bu[j], _mm256_sign_epi8(av, bv[j])),
                                                       _mm256_set1_epi16(1))))
// AVX-512 VNNI (EVEX, ymm): vpdpbusd sums the four u8·s8 products of a lane in int32 without the
// int16 step, so the results are the same exact sums.
TILE_DOT(tile_dot_vnni, CK_VNNI, int8_t, bu[j] = _mm256_abs_epi8(bv[j]);,
         _mm256_dpbusd_epi32(acc[i][j], bu[j], _mm256_sign_epi8(av, bv[j])))
// VNNI on biased activations (a + 128, u8) as the unsigned operand and the weight codes as the
// signed one: one vpdpbusd per pair with no abs/sign (24 → 14 instructions per 32 columns).
// Σ (a + 128)·w − 128·Σ w is the exact sum (modulo 2^32, which the exact result fits: see
// gemv_i8.c); the caller requires k % 32 == 0, so the tail never runs.
TILE_DOT(tile_dot_u8, CK_VNNI, uint8_t, (void)bu;, _mm256_dpbusd_epi32(acc[i][j], av, bv[j]))

/// r = TILE(a, lda, b, ldb, len, mr, nr) with the runtime tile shape (mr ≤ 4, nr ≤ 2) turned into
/// the constant one.
#define TILE_ANY(r, TILE, a, lda, b, ldb, len, mr, nr)                  \
    switch ((mr) * 2 + (nr)) {                                            \
    case 4 * 2 + 2: r = TILE(a, lda, b, ldb, len, 4, 2); break;           \
    case 4 * 2 + 1: r = TILE(a, lda, b, ldb, len, 4, 1); break;           \
    case 3 * 2 + 2: r = TILE(a, lda, b, ldb, len, 3, 2); break;           \
    case 3 * 2 + 1: r = TILE(a, lda, b, ldb, len, 3, 1); break;           \
    case 2 * 2 + 2: r = TILE(a, lda, b, ldb, len, 2, 2); break;           \
    case 2 * 2 + 1: r = TILE(a, lda, b, ldb, len, 2, 1); break;           \
    case 1 * 2 + 2: r = TILE(a, lda, b, ldb, len, 1, 2); break;           \
    default: r = TILE(a, lda, b, ldb, len, 1, 1); break;                  \
    }

/// Rows of b per panel: a panel of about 192 KB stays in L2 while all of a streams past it.
static size_t panel_rows(size_t n, size_t k) {
    size_t rows = k ? (192u * 1024u) / k : n;
    rows &= ~(size_t)1;
    if (rows < 2) rows = 2;
    return rows;
}

/// The panel loop of every variant: panels of weight rows, 4 activation rows × 2 weight rows per
/// tile; BODY sees the tile's first activation row i, first weight row j and its shape mr × nr.
#define FOR_EACH_TILE(m, n, k, BODY)                                                    \
    {                                                                                   \
        const size_t panel_ = panel_rows(n, k);                                         \
        for (size_t j0 = 0; j0 < (n); j0 += panel_) {                                   \
            const size_t j1 = j0 + panel_ < (n) ? j0 + panel_ : (n);                    \
            for (size_t i = 0; i < (m); i += 4) {                                       \
                const size_t mr = (m) - i < 4 ? (m) - i : 4;                            \
                for (size_t j = j0; j < j1; j += 2) {                                   \
                    const size_t nr = j1 - j < 2 ? j1 - j : 2;                          \
                    BODY                                                                \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    }

/// The int32 and the group-scaled float GEMM on one tile kernel.
#define GEMM_KERNELS(SUFFIX, ATTR, TILE)                                                                     \
    ATTR static void gemm_i8_##SUFFIX(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,          \
                                       int32_t *c, size_t ldc) {                                               \
        FOR_EACH_TILE(m, n, k, {                                                                               \
            int32_t out[8];                                                                                    \
            __m256i r;                                                                                         \
            TILE_ANY(r, TILE, a + i * k, k, b + j * k, k, k, mr, nr)                                           \
            _mm256_storeu_si256((__m256i *)out, r);                                                            \
            for (size_t ii = 0; ii < mr; ii++)                                                                 \
                for (size_t jj = 0; jj < nr; jj++) c[(i + ii) * ldc + j + jj] = out[ii * 2 + jj];              \
        })                                                                                                     \
    }                                                                                                          \
    ATTR static void gemm_i8_grouped_##SUFFIX(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,  \
                                               size_t group_size, const float *wscale, float *c, size_t ldc) { \
        const size_t groups = (k + group_size - 1) / group_size;                                               \
        FOR_EACH_TILE(m, n, k, {                                                                               \
            const float *w0 = wscale + j * groups;                                                             \
            const float *w1 = nr > 1 ? w0 + groups : w0;                                                       \
            __m256 acc = _mm256_setzero_ps();                                                                  \
            for (size_t g = 0; g < groups; g++) {                                                              \
                const size_t t0 = g * group_size;                                                              \
                const size_t len = t0 + group_size < k ? group_size : k - t0;                                  \
                __m256i r;                                                                                     \
                TILE_ANY(r, TILE, a + i * k + t0, k, b + j * k + t0, k, len, mr, nr)                           \
                const __m256 ws = _mm256_setr_ps(w0[g], w1[g], w0[g], w1[g], w0[g], w1[g], w0[g], w1[g]);     \
                acc = _mm256_add_ps(acc, _mm256_mul_ps(ws, _mm256_cvtepi32_ps(r)));                            \
            }                                                                                                  \
            float out[8];                                                                                      \
            _mm256_storeu_ps(out, acc);                                                                        \
            for (size_t ii = 0; ii < mr; ii++)                                                                 \
                for (size_t jj = 0; jj < nr; jj++) c[(i + ii) * ldc + j + jj] = out[ii * 2 + jj];              \
        })                                                                                                     \
    }

GEMM_KERNELS(avx2, CK_AVX2, tile_dot_avx2)
GEMM_KERNELS(vnni, CK_VNNI, tile_dot_vnni)

/// Prefill with load-time row sums (VNNI, k % 32 == 0): the activations are biased once per
/// call to ua = a + 128 (ck_bias_i8).
CK_VNNI static void gemm_i8_biased_vnni(const uint8_t *ua, size_t m, const int8_t *b, size_t n, size_t k,
                                        const int32_t *row_sums, int32_t *c, size_t ldc) {
    FOR_EACH_TILE(m, n, k, {
        int32_t out[8];
        __m256i r;
        TILE_ANY(r, tile_dot_u8, ua + i * k, k, b + j * k, k, k, mr, nr)
        _mm256_storeu_si256((__m256i *)out, r);
        for (size_t ii = 0; ii < mr; ii++)
            for (size_t jj = 0; jj < nr; jj++)
                c[(i + ii) * ldc + j + jj] = (int32_t)((uint32_t)out[ii * 2 + jj] - ((uint32_t)row_sums[j + jj] << 7));
    })
}
#endif

void ck_bias_i8(const int8_t *a, size_t count, uint8_t *out) {
    for (size_t t = 0; t < count; t++) out[t] = (uint8_t)a[t] ^ 0x80;
}

int ck_gemm_i8_biased(const uint8_t *ua, size_t m, const int8_t *b, size_t n, size_t k, const int32_t *row_sums,
                      int32_t *c, size_t ldc) {
#if defined(__x86_64__)
    if (k % 32 == 0 && ck_cpu_has_avx512vnni()) {
        gemm_i8_biased_vnni(ua, m, b, n, k, row_sums, c, ldc);
        return 1;
    }
#endif
    (void)ua; (void)m; (void)b; (void)n; (void)k; (void)row_sums; (void)c; (void)ldc;
    return 0;
}

void ck_gemm_i8(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                int32_t *c, size_t ldc) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) { gemm_i8_vnni(a, m, b, n, k, c, ldc); return; }
    if (ck_cpu_has_avx2()) { gemm_i8_avx2(a, m, b, n, k, c, ldc); return; }
#endif
    ck_gemm_i8_ref(a, m, b, n, k, c, ldc);
}

void ck_gemm_i8_grouped(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                        size_t group_size, const float *wscale, float *c, size_t ldc) {
    if (group_size == 0) group_size = k ? k : 1;
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) { gemm_i8_grouped_vnni(a, m, b, n, k, group_size, wscale, c, ldc); return; }
    if (ck_cpu_has_avx2()) { gemm_i8_grouped_avx2(a, m, b, n, k, group_size, wscale, c, ldc); return; }
#endif
    ck_gemm_i8_grouped_ref(a, m, b, n, k, group_size, wscale, c, ldc);
}
