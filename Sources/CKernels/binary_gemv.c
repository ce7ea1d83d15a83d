#include "ckernels.h"
#include "binary_kernels.h"
#include <immintrin.h>

// Binarized GEMV (see binary_kernels.h). The reference walks the bits one by one; the AVX2 path
// takes 32 sign bits at a time, broadcasts them, and for each group of 8 lanes shifts lane j's
// bit into bit 31 (vpsllvd by 31 − bit), so `andnot(shifted, 0x80000000)` is the float sign
// to xor onto x: S·x costs 4 integer/float ops per 8 weights with no table and no unpacking.
// Both paths sum in float; the AVX2 one in 8-lane partial sums, so they differ only by
// summation order.

void ck_binary_gemv_ref(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                        size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                        float *y, float *rest) {
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint64_t *s = signs + o * words_per_row;
        const uint64_t *m = mask ? mask + o * words_per_row : NULL;
        float acc = 0, n = 0;
        for (size_t w = 0; w < words_per_row; w++) {
            for (unsigned k = 0; k < 64; k++) {
                if (m && ((m[w] >> k) & 1)) continue;
                const float v = x[64 * w + k];
                acc += ((s[w] >> k) & 1) ? v : -v;
                n += v;
            }
        }
        if (m) {
            y[o] = a[o] * acc + b[o] * n;
            if (rest) rest[o] = n;
        } else {
            y[o] = a[o] * acc + b[o] * x_sum;
        }
    }
}

#if defined(__x86_64__)
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_INLINE static inline __attribute__((always_inline))

CK_INLINE CK_AVX2 float binary_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

CK_AVX2 static void binary_gemv_avx2(const uint64_t *signs, const uint64_t *mask, size_t words_per_row,
                                     size_t row_begin, size_t row_count, const float *x, float x_sum,
                                     const float *a, const float *b, float *y, float *rest) {
    // Shift counts that bring bit 8g + j of a 32-bit word to bit 31 in lane j.
    const __m256i sh0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i sh1 = _mm256_setr_epi32(23, 22, 21, 20, 19, 18, 17, 16);
    const __m256i sh2 = _mm256_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8);
    const __m256i sh3 = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256i high = _mm256_set1_epi32((int)0x80000000u);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint32_t *s = (const uint32_t *)(signs + o * words_per_row);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        const size_t halves = 2 * words_per_row;  // little-endian: half 2w is bits 0…31 of word w
        if (!mask) {
            for (size_t h = 0; h < halves; h++) {
                const __m256i v = _mm256_set1_epi32((int)s[h]);
                const float *xp = x + 32 * h;
#define BIN_STEP(SH, OFF, ACC)                                                                      \
                ACC = _mm256_add_ps(ACC, _mm256_xor_ps(_mm256_loadu_ps(xp + OFF),                   \
                    _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_sllv_epi32(v, SH), high))));
                BIN_STEP(sh0, 0, acc0) BIN_STEP(sh1, 8, acc1) BIN_STEP(sh2, 16, acc0) BIN_STEP(sh3, 24, acc1)
#undef BIN_STEP
            }
            y[o] = a[o] * binary_hsum(_mm256_add_ps(acc0, acc1)) + b[o] * x_sum;
        } else {
            const uint32_t *m = (const uint32_t *)(mask + o * words_per_row);
            __m256 n0 = _mm256_setzero_ps(), n1 = _mm256_setzero_ps();
            for (size_t h = 0; h < halves; h++) {
                const __m256i v = _mm256_set1_epi32((int)s[h]), mv = _mm256_set1_epi32((int)m[h]);
                const float *xp = x + 32 * h;
#define BIN_MSTEP(SH, OFF, ACC, N)                                                                  \
                {                                                                                   \
                    const __m256 keep = _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_sllv_epi32(mv, SH), 31)); \
                    const __m256 xv = _mm256_andnot_ps(keep, _mm256_loadu_ps(xp + OFF));            \
                    N = _mm256_add_ps(N, xv);                                                       \
                    ACC = _mm256_add_ps(ACC, _mm256_xor_ps(xv,                                      \
                        _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_sllv_epi32(v, SH), high)))); \
                }
                BIN_MSTEP(sh0, 0, acc0, n0) BIN_MSTEP(sh1, 8, acc1, n1)
                BIN_MSTEP(sh2, 16, acc0, n0) BIN_MSTEP(sh3, 24, acc1, n1)
#undef BIN_MSTEP
            }
            const float n = binary_hsum(_mm256_add_ps(n0, n1));
            y[o] = a[o] * binary_hsum(_mm256_add_ps(acc0, acc1)) + b[o] * n;
            if (rest) rest[o] = n;
        }
    }
}
#endif

void ck_binary_gemv(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                    size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                    float *y, float *rest) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) {
        binary_gemv_avx2(signs, mask, words_per_row, row_begin, row_count, x, x_sum, a, b, y, rest);
        return;
    }
#endif
    ck_binary_gemv_ref(signs, mask, words_per_row, row_begin, row_count, x, x_sum, a, b, y, rest);
}
