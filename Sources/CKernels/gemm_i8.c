#include "ckernels.h"
#include "ck_runtime.h"
#include <immintrin.h>

// int8 × int8 → int32 GEMM, C = A·Bᵀ with A [m, k] activation codes and B [n, k] weight codes.
//
// The AVX2 micro-kernel keeps a 4×2 tile of C in eight int32 accumulators. Per 32 columns it
// loads two rows of B and four rows of A; for every (a, b) pair it uses ggml's trick:
// maddubs(|b|, sign(a, b)) gives int16 pair sums of a·b (|b| ≤ 128 and |a| ≤ 127 keep them below
// 32767), and madd with ones widens them to int32. The eight accumulators are reduced to one
// vector with a hadd tree at the end of the tile (or of each group in the grouped variant);
// columns past the last multiple of 32 go through a scalar tail.

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
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_INLINE static inline __attribute__((always_inline))
#define CK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))

/// Eight int32 vectors → one vector whose lane p is the sum of all lanes of v[p].
CK_INLINE CK_AVX2 __m256i hsum8_epi32(__m256i v0, __m256i v1, __m256i v2, __m256i v3,
                                      __m256i v4, __m256i v5, __m256i v6, __m256i v7) {
    __m256i t0 = _mm256_hadd_epi32(v0, v1);
    __m256i t1 = _mm256_hadd_epi32(v2, v3);
    __m256i t2 = _mm256_hadd_epi32(v4, v5);
    __m256i t3 = _mm256_hadd_epi32(v6, v7);
    __m256i u0 = _mm256_hadd_epi32(t0, t1); // per 128-bit lane: partial sums of v0..v3
    __m256i u1 = _mm256_hadd_epi32(t2, t3); // per 128-bit lane: partial sums of v4..v7
    __m256i lo = _mm256_permute2x128_si256(u0, u1, 0x20);
    __m256i hi = _mm256_permute2x128_si256(u0, u1, 0x31);
    return _mm256_add_epi32(lo, hi);
}

/// Exact dot products of MR rows of a (stride lda) with NR rows of b (stride ldb) over len
/// columns. Lane i*2 + j of the result holds row i × row j; unused lanes are zero.
/// MR ≤ 4 and NR ≤ 2 are compile-time constants at every call site, so the loops unroll and
/// the accumulators live in registers.
CK_INLINE CK_AVX2 __m256i tile_dot(const int8_t *a, size_t lda, const int8_t *b, size_t ldb,
                                   size_t len, const int MR, const int NR) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++) acc[i][j] = _mm256_setzero_si256();
    size_t t = 0;
    for (; t + 32 <= len; t += 32) {
        __m256i bv[2], babs[2];
        for (int j = 0; j < NR; j++) {
            bv[j] = _mm256_loadu_si256((const __m256i *)(b + j * ldb + t));
            babs[j] = _mm256_abs_epi8(bv[j]); // -128 → 0x80 = 128 as unsigned: still right
        }
        for (int i = 0; i < MR; i++) {
            const __m256i av = _mm256_loadu_si256((const __m256i *)(a + i * lda + t));
            for (int j = 0; j < NR; j++) {
                const __m256i sa = _mm256_sign_epi8(av, bv[j]);
                const __m256i p16 = _mm256_maddubs_epi16(babs[j], sa);
                acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(p16, ones));
            }
        }
    }
    __m256i r = hsum8_epi32(acc[0][0], acc[0][1], acc[1][0], acc[1][1],
                            acc[2][0], acc[2][1], acc[3][0], acc[3][1]);
    if (t < len) {
        int32_t tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < MR; i++) {
            for (int j = 0; j < NR; j++) {
                int32_t s = 0;
                for (size_t u = t; u < len; u++) s += (int32_t)a[i * lda + u] * (int32_t)b[j * ldb + u];
                tail[i * 2 + j] = s;
            }
        }
        r = _mm256_add_epi32(r, _mm256_loadu_si256((const __m256i *)tail));
    }
    return r;
}

/// Dispatches a runtime (mr, nr) tile to the constant-shape kernel.
CK_INLINE CK_AVX2 __m256i tile_any(const int8_t *a, size_t lda, const int8_t *b, size_t ldb,
                                   size_t len, size_t mr, size_t nr) {
    switch (mr * 2 + nr) {
    case 4 * 2 + 2: return tile_dot(a, lda, b, ldb, len, 4, 2);
    case 4 * 2 + 1: return tile_dot(a, lda, b, ldb, len, 4, 1);
    case 3 * 2 + 2: return tile_dot(a, lda, b, ldb, len, 3, 2);
    case 3 * 2 + 1: return tile_dot(a, lda, b, ldb, len, 3, 1);
    case 2 * 2 + 2: return tile_dot(a, lda, b, ldb, len, 2, 2);
    case 2 * 2 + 1: return tile_dot(a, lda, b, ldb, len, 2, 1);
    case 1 * 2 + 2: return tile_dot(a, lda, b, ldb, len, 1, 2);
    default: return tile_dot(a, lda, b, ldb, len, 1, 1);
    }
}

/// Rows of b per panel: a panel of about 192 KB stays in L2 while all of a streams past it.
static size_t panel_rows(size_t n, size_t k) {
    size_t rows = k ? (192u * 1024u) / k : n;
    rows &= ~(size_t)1;
    if (rows < 2) rows = 2;
    return rows;
}

CK_AVX2 static void gemm_i8_avx2(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                                 int32_t *c, size_t ldc) {
    const size_t panel = panel_rows(n, k);
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t j1 = j0 + panel < n ? j0 + panel : n;
        for (size_t i = 0; i < m; i += 4) {
            const size_t mr = m - i < 4 ? m - i : 4;
            for (size_t j = j0; j < j1; j += 2) {
                const size_t nr = j1 - j < 2 ? j1 - j : 2;
                int32_t out[8];
                __m256i r;
                if (mr == 4 && nr == 2) r = tile_dot(a + i * k, k, b + j * k, k, k, 4, 2);
                else r = tile_any(a + i * k, k, b + j * k, k, k, mr, nr);
                _mm256_storeu_si256((__m256i *)out, r);
                for (size_t ii = 0; ii < mr; ii++)
                    for (size_t jj = 0; jj < nr; jj++) c[(i + ii) * ldc + j + jj] = out[ii * 2 + jj];
            }
        }
    }
}

CK_AVX2 static void gemm_i8_grouped_avx2(const int8_t *a, size_t m, const int8_t *b, size_t n,
                                         size_t k, size_t group_size, const float *wscale,
                                         float *c, size_t ldc) {
    const size_t groups = (k + group_size - 1) / group_size;
    const size_t panel = panel_rows(n, k);
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t j1 = j0 + panel < n ? j0 + panel : n;
        for (size_t i = 0; i < m; i += 4) {
            const size_t mr = m - i < 4 ? m - i : 4;
            for (size_t j = j0; j < j1; j += 2) {
                const size_t nr = j1 - j < 2 ? j1 - j : 2;
                const float *w0 = wscale + j * groups;
                const float *w1 = nr > 1 ? w0 + groups : w0;
                __m256 acc = _mm256_setzero_ps();
                for (size_t g = 0; g < groups; g++) {
                    const size_t t0 = g * group_size;
                    const size_t len = t0 + group_size < k ? group_size : k - t0;
                    __m256i r;
                    if (mr == 4 && nr == 2) r = tile_dot(a + i * k + t0, k, b + j * k + t0, k, len, 4, 2);
                    else r = tile_any(a + i * k + t0, k, b + j * k + t0, k, len, mr, nr);
                    const __m256 ws = _mm256_setr_ps(w0[g], w1[g], w0[g], w1[g], w0[g], w1[g], w0[g], w1[g]);
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(ws, _mm256_cvtepi32_ps(r)));
                }
                float out[8];
                _mm256_storeu_ps(out, acc);
                for (size_t ii = 0; ii < mr; ii++)
                    for (size_t jj = 0; jj < nr; jj++) c[(i + ii) * ldc + j + jj] = out[ii * 2 + jj];
            }
        }
    }
}
/// AVX-512 VNNI twins of the kernels above: `vpdpbusd` (EVEX, ymm) replaces maddubs + madd +
/// add. It sums the four u8·s8 products of a lane in int32 without the int16 step, so the
/// results are the same exact sums.
/// Exact dot products of MR rows of a (stride lda) with NR rows of b (stride ldb) over len
/// columns. Lane i*2 + j of the result holds row i × row j; unused lanes are zero.
/// MR ≤ 4 and NR ≤ 2 are compile-time constants at every call site, so the loops unroll and
/// the accumulators live in registers.
CK_INLINE CK_VNNI __m256i tile_dot_vnni(const int8_t *a, size_t lda, const int8_t *b, size_t ldb,
                                   size_t len, const int MR, const int NR) {
    __m256i acc[4][2];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++) acc[i][j] = _mm256_setzero_si256();
    size_t t = 0;
    for (; t + 32 <= len; t += 32) {
        __m256i bv[2], babs[2];
        for (int j = 0; j < NR; j++) {
            bv[j] = _mm256_loadu_si256((const __m256i *)(b + j * ldb + t));
            babs[j] = _mm256_abs_epi8(bv[j]); // -128 → 0x80 = 128 as unsigned: still right
        }
        for (int i = 0; i < MR; i++) {
            const __m256i av = _mm256_loadu_si256((const __m256i *)(a + i * lda + t));
            for (int j = 0; j < NR; j++) {
                const __m256i sa = _mm256_sign_epi8(av, bv[j]);
                acc[i][j] = _mm256_dpbusd_epi32(acc[i][j], babs[j], sa);
            }
        }
    }
    __m256i r = hsum8_epi32(acc[0][0], acc[0][1], acc[1][0], acc[1][1],
                            acc[2][0], acc[2][1], acc[3][0], acc[3][1]);
    if (t < len) {
        int32_t tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int i = 0; i < MR; i++) {
            for (int j = 0; j < NR; j++) {
                int32_t s = 0;
                for (size_t u = t; u < len; u++) s += (int32_t)a[i * lda + u] * (int32_t)b[j * ldb + u];
                tail[i * 2 + j] = s;
            }
        }
        r = _mm256_add_epi32(r, _mm256_loadu_si256((const __m256i *)tail));
    }
    return r;
}

/// Dispatches a runtime (mr, nr) tile to the constant-shape kernel.
CK_INLINE CK_VNNI __m256i tile_any_vnni(const int8_t *a, size_t lda, const int8_t *b, size_t ldb,
                                   size_t len, size_t mr, size_t nr) {
    switch (mr * 2 + nr) {
    case 4 * 2 + 2: return tile_dot_vnni(a, lda, b, ldb, len, 4, 2);
    case 4 * 2 + 1: return tile_dot_vnni(a, lda, b, ldb, len, 4, 1);
    case 3 * 2 + 2: return tile_dot_vnni(a, lda, b, ldb, len, 3, 2);
    case 3 * 2 + 1: return tile_dot_vnni(a, lda, b, ldb, len, 3, 1);
    case 2 * 2 + 2: return tile_dot_vnni(a, lda, b, ldb, len, 2, 2);
    case 2 * 2 + 1: return tile_dot_vnni(a, lda, b, ldb, len, 2, 1);
    case 1 * 2 + 2: return tile_dot_vnni(a, lda, b, ldb, len, 1, 2);
    default: return tile_dot_vnni(a, lda, b, ldb, len, 1, 1);
    }
}

CK_VNNI static void gemm_i8_vnni(const int8_t *a, size_t m, const int8_t *b, size_t n, size_t k,
                                 int32_t *c, size_t ldc) {
    const size_t panel = panel_rows(n, k);
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t j1 = j0 + panel < n ? j0 + panel : n;
        for (size_t i = 0; i < m; i += 4) {
            const size_t mr = m - i < 4 ? m - i : 4;
            for (size_t j = j0; j < j1; j += 2) {
                const size_t nr = j1 - j < 2 ? j1 - j : 2;
                int32_t out[8];
                __m256i r;
                if (mr == 4 && nr == 2) r = tile_dot_vnni(a + i * k, k, b + j * k, k, k, 4, 2);
                else r = tile_any_vnni(a + i * k, k, b + j * k, k, k, mr, nr);
                _mm256_storeu_si256((__m256i *)out, r);
                for (size_t ii = 0; ii < mr; ii++)
                    for (size_t jj = 0; jj < nr; jj++) c[(i + ii) * ldc + j + jj] = out[ii * 2 + jj];
            }
        }
    }
}

CK_VNNI static void gemm_i8_grouped_vnni(const int8_t *a, size_t m, const int8_t *b, size_t n,
                                         size_t k, size_t group_size, const float *wscale,
                                         float *c, size_t ldc) {
    const size_t groups = (k + group_size - 1) / group_size;
    const size_t panel = panel_rows(n, k);
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t j1 = j0 + panel < n ? j0 + panel : n;
        for (size_t i = 0; i < m; i += 4) {
            const size_t mr = m - i < 4 ? m - i : 4;
            for (size_t j = j0; j < j1; j += 2) {
                const size_t nr = j1 - j < 2 ? j1 - j : 2;
                const float *w0 = wscale + j * groups;
                const float *w1 = nr > 1 ? w0 + groups : w0;
                __m256 acc = _mm256_setzero_ps();
                for (size_t g = 0; g < groups; g++) {
                    const size_t t0 = g * group_size;
                    const size_t len = t0 + group_size < k ? group_size : k - t0;
                    __m256i r;
                    if (mr == 4 && nr == 2) r = tile_dot_vnni(a + i * k + t0, k, b + j * k + t0, k, len, 4, 2);
                    else r = tile_any_vnni(a + i * k + t0, k, b + j * k + t0, k, len, mr, nr);
                    const __m256 ws = _mm256_setr_ps(w0[g], w1[g], w0[g], w1[g], w0[g], w1[g], w0[g], w1[g]);
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(ws, _mm256_cvtepi32_ps(r)));
                }
                float out[8];
                _mm256_storeu_ps(out, acc);
                for (size_t ii = 0; ii < mr; ii++)
                    for (size_t jj = 0; jj < nr; jj++) c[(i + ii) * ldc + j + jj] = out[ii * 2 + jj];
            }
        }
    }
}

/// Prefill with load-time row sums (VNNI, k % 32 == 0): the activations, biased once per call
/// to ua = a + 128 (u8), are the unsigned operand and the weight codes the signed one, so a
/// 4×2 tile step is one vpdpbusd per pair with no abs/sign (24 → 14 instructions per 32
/// columns); Σ (a + 128)·w − 128·Σ w is the exact sum (modulo 2^32, which the exact result fits:
/// see gemv_i8.c).
CK_INLINE CK_VNNI __m256i tile_dot_u8(const uint8_t *ua, size_t lda, const int8_t *b, size_t ldb, size_t len,
                                      const int MR, const int NR) {
    __m256i acc[4][2];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++) acc[i][j] = _mm256_setzero_si256();
    for (size_t t = 0; t < len; t += 32) {
        __m256i bv[2];
        for (int j = 0; j < NR; j++) bv[j] = _mm256_loadu_si256((const __m256i *)(b + j * ldb + t));
        for (int i = 0; i < MR; i++) {
            const __m256i av = _mm256_loadu_si256((const __m256i *)(ua + i * lda + t));
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_dpbusd_epi32(acc[i][j], av, bv[j]);
        }
    }
    return hsum8_epi32(acc[0][0], acc[0][1], acc[1][0], acc[1][1], acc[2][0], acc[2][1], acc[3][0], acc[3][1]);
}

CK_VNNI static void gemm_i8_biased_vnni(const uint8_t *ua, size_t m, const int8_t *b, size_t n, size_t k,
                                        const int32_t *row_sums, int32_t *c, size_t ldc) {
    const size_t panel = panel_rows(n, k);
    for (size_t j0 = 0; j0 < n; j0 += panel) {
        const size_t j1 = j0 + panel < n ? j0 + panel : n;
        for (size_t i = 0; i < m; i += 4) {
            const size_t mr = m - i < 4 ? m - i : 4;
            for (size_t j = j0; j < j1; j += 2) {
                const size_t nr = j1 - j < 2 ? j1 - j : 2;
                int32_t out[8];
                __m256i r;
                const uint8_t *ai = ua + i * k;
                const int8_t *bj = b + j * k;
                switch (mr * 2 + nr) {
                case 10: r = tile_dot_u8(ai, k, bj, k, k, 4, 2); break;
                case 9: r = tile_dot_u8(ai, k, bj, k, k, 4, 1); break;
                case 8: r = tile_dot_u8(ai, k, bj, k, k, 3, 2); break;
                case 7: r = tile_dot_u8(ai, k, bj, k, k, 3, 1); break;
                case 6: r = tile_dot_u8(ai, k, bj, k, k, 2, 2); break;
                case 5: r = tile_dot_u8(ai, k, bj, k, k, 2, 1); break;
                case 4: r = tile_dot_u8(ai, k, bj, k, k, 1, 2); break;
                default: r = tile_dot_u8(ai, k, bj, k, k, 1, 1); break;
                }
                _mm256_storeu_si256((__m256i *)out, r);
                for (size_t ii = 0; ii < mr; ii++)
                    for (size_t jj = 0; jj < nr; jj++)
                        c[(i + ii) * ldc + j + jj] = (int32_t)((uint32_t)out[ii * 2 + jj] - ((uint32_t)row_sums[j + jj] << 7));
            }
        }
    }
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
