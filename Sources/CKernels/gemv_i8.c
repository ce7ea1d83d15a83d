#include "ckernels.h"
#include "ck_runtime.h"
#include <immintrin.h>

// int8 × int8 GEMV for decode (a few activation rows against every weight row), exact int32.
//
// ck_gemm_i8's 4×2 register tile is built for prefill; at one activation row it ran as a 1×2
// tile (two weight rows per pass, abs + sign per block and weight row, then a horizontal sum
// of eight vectors for two results). Here each pass takes 8 weight rows against one
// activation row, one accumulator per weight row, and reduces the eight accumulators with one
// hadd tree into the 8 results: no wasted lanes.
//
// VNNI: the activation becomes the unsigned operand, a + 128 (one xor per 32 columns, shared by
// the 8 rows), and the signed weight code the signed one, so one vpdpbusd per 32 columns and
// row with no abs/sign step. Σ (a + 128)·w = Σ a·w + 128·Σ w, and Σ w per weight row is computed
// once at load (ck_row_sums_i8). vpdpbusd and the epi32 adds wrap modulo 2^32, and the exact
// result |Σ a·w| ≤ 127·128·k fits int32 for k ≤ 131072, so the modular sum is the exact one.
// AVX2: ggml's sign trick (maddubs(|w|, sign(a, w)), |w| ≤ 128 and |a| ≤ 127 keep the int16 pair
// sums ≤ 32512), 8 rows per pass the same way.

void ck_row_sums_i8(const int8_t *b, size_t n, size_t k, int32_t *sums) {
    for (size_t o = 0; o < n; o++) {
        int32_t s = 0;
        for (size_t t = 0; t < k; t++) s += b[o * k + t];
        sums[o] = s;
    }
}

void ck_gemv_i8_ref(const int8_t *a, size_t m, const int8_t *b, size_t row_begin, size_t row_count, size_t k,
                    const int32_t *row_sums, int32_t *c, size_t ldc) {
    (void)row_sums;
    for (size_t i = 0; i < m; i++)
        for (size_t o = row_begin; o < row_begin + row_count; o++) {
            int32_t sum = 0;
            for (size_t t = 0; t < k; t++) sum += (int32_t)a[i * k + t] * (int32_t)b[o * k + t];
            c[i * ldc + o] = sum;
        }
}

#if defined(__x86_64__)
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define CK_INLINE static inline __attribute__((always_inline))

/// Eight int32 vectors → one vector whose lane p is the sum of all lanes of v[p].
CK_INLINE CK_AVX2 __m256i gv_hsum8(const __m256i *v) {
    const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

CK_INLINE CK_AVX2 int32_t gv_hsum1(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

CK_INLINE CK_AVX2 __m256i gv_dot_avx2(__m256i acc, __m256i av, __m256i bv) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(bv), _mm256_sign_epi8(av, bv));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/// R (1 or 8) weight rows from o against activation row a over kb = k rounded down to 32
/// columns; scalar tail for the rest. AVX2 sign trick. The rows are read one after the other
/// (two accumulators each), so the block streams from memory as one sequential run: reading the
/// 8 rows side by side made 8 short streams of k bytes each that the hardware prefetcher did
/// not follow (measured: 5 GB/s on one core against 19 GB/s for a sequential kernel).
CK_INLINE CK_AVX2 void gv_rows_avx2(const int8_t *a, const int8_t *b, size_t o, size_t k, int32_t *out, const int R) {
    __m256i acc[8];
    const size_t kb = k & ~(size_t)31;
    for (int r = 0; r < R; r++) {
        const int8_t *row = b + (o + r) * k;
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
        size_t t = 0;
        for (; t + 64 <= kb; t += 64) {
            s0 = gv_dot_avx2(s0, _mm256_loadu_si256((const __m256i *)(a + t)), _mm256_loadu_si256((const __m256i *)(row + t)));
            s1 = gv_dot_avx2(s1, _mm256_loadu_si256((const __m256i *)(a + t + 32)),
                             _mm256_loadu_si256((const __m256i *)(row + t + 32)));
        }
        if (t < kb)
            s0 = gv_dot_avx2(s0, _mm256_loadu_si256((const __m256i *)(a + t)), _mm256_loadu_si256((const __m256i *)(row + t)));
        acc[r] = _mm256_add_epi32(s0, s1);
    }
    if (R == 8) _mm256_storeu_si256((__m256i *)out, gv_hsum8(acc));
    else out[0] = gv_hsum1(acc[0]);
    for (int r = 0; r < R; r++) {
        int32_t s = 0;
        for (size_t t = kb; t < k; t++) s += (int32_t)a[t] * (int32_t)b[(o + r) * k + t];
        out[r] += s;
    }
}

CK_AVX2 static void gemv_i8_avx2(const int8_t *a, size_t m, const int8_t *b, size_t row_begin, size_t row_count,
                                 size_t k, int32_t *c, size_t ldc) {
    const size_t end = row_begin + row_count;
    size_t o = row_begin;
    // Activation rows inside the 8-row step: the 8 weight rows stay in L1 for every a row.
    for (; o + 8 <= end; o += 8)
        for (size_t i = 0; i < m; i++) gv_rows_avx2(a + i * k, b, o, k, c + i * ldc + o, 8);
    for (; o < end; o++)
        for (size_t i = 0; i < m; i++) gv_rows_avx2(a + i * k, b, o, k, c + i * ldc + o, 1);
}

/// VNNI: requires k % 32 == 0 and the row sums. Rows one after the other, as gv_rows_avx2.
CK_INLINE CK_VNNI void gv_rows_vnni(const int8_t *a, const int8_t *b, size_t o, size_t k, const int32_t *row_sums,
                                    int32_t *out, const int R) {
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    __m256i acc[8];
    for (int r = 0; r < R; r++) {
        const int8_t *row = b + (o + r) * k;
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
        size_t t = 0;
        for (; t + 64 <= k; t += 64) {
            const __m256i u0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(a + t)), bias);  // a + 128
            const __m256i u1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(a + t + 32)), bias);
            s0 = _mm256_dpbusd_epi32(s0, u0, _mm256_loadu_si256((const __m256i *)(row + t)));
            s1 = _mm256_dpbusd_epi32(s1, u1, _mm256_loadu_si256((const __m256i *)(row + t + 32)));
        }
        if (t < k) {
            const __m256i u0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(a + t)), bias);
            s0 = _mm256_dpbusd_epi32(s0, u0, _mm256_loadu_si256((const __m256i *)(row + t)));
        }
        acc[r] = _mm256_add_epi32(s0, s1);
    }
    if (R == 8) {
        const __m256i corr = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(row_sums + o)), 7);
        _mm256_storeu_si256((__m256i *)out, _mm256_sub_epi32(gv_hsum8(acc), corr));
    } else {
        out[0] = (int32_t)((uint32_t)gv_hsum1(acc[0]) - ((uint32_t)row_sums[o] << 7));
    }
}

CK_VNNI static void gemv_i8_vnni(const int8_t *a, size_t m, const int8_t *b, size_t row_begin, size_t row_count,
                                 size_t k, const int32_t *row_sums, int32_t *c, size_t ldc) {
    const size_t end = row_begin + row_count;
    size_t o = row_begin;
    for (; o + 8 <= end; o += 8)
        for (size_t i = 0; i < m; i++) gv_rows_vnni(a + i * k, b, o, k, row_sums, c + i * ldc + o, 8);
    for (; o < end; o++)
        for (size_t i = 0; i < m; i++) gv_rows_vnni(a + i * k, b, o, k, row_sums, c + i * ldc + o, 1);
}
#endif

void ck_gemv_i8(const int8_t *a, size_t m, const int8_t *b, size_t row_begin, size_t row_count, size_t k,
                const int32_t *row_sums, int32_t *c, size_t ldc) {
#if defined(__x86_64__)
    if (row_sums && k % 32 == 0 && ck_cpu_has_avx512vnni()) {
        gemv_i8_vnni(a, m, b, row_begin, row_count, k, row_sums, c, ldc);
        return;
    }
    if (ck_cpu_has_avx2()) {
        gemv_i8_avx2(a, m, b, row_begin, row_count, k, c, ldc);
        return;
    }
#endif
    ck_gemv_i8_ref(a, m, b, row_begin, row_count, k, row_sums, c, ldc);
}
