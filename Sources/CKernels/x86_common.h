// Internal helpers shared by the x86 kernels (not a public header: it lives outside include/).
//
// Function-level target attributes keep the package buildable for x86-64-v3 and older while
// each kernel is chosen at run time (ck_cpu_has_avx2 / ck_cpu_has_avx512vnni); the always-inline
// helpers below take the attribute of the kernel that calls them.
#ifndef PTQ_CK_X86_COMMON_H
#define PTQ_CK_X86_COMMON_H

#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define CK_INLINE static inline __attribute__((always_inline))
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_AVX512 __attribute__((target("avx2,fma,f16c,avx512f")))
// AVX-512 kernels that also use the 128/256-bit EVEX forms (masked or permute ops on xmm/ymm).
#define CK_AVX512VL __attribute__((target("avx2,fma,f16c,avx512f,avx512vl")))
#define CK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))

/// Eight int32 vectors → one vector whose lane p is the sum of all lanes of v[p] (one hadd tree).
CK_INLINE CK_AVX2 __m256i ck_hsum8_epi32(const __m256i v[8]) {
    const __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

/// The sum of the eight int32 lanes of v.
CK_INLINE CK_AVX2 int32_t ck_hsum1_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/// The sum of the eight float lanes of v in a fixed order: (t0 + t2) + (t1 + t3) of the
/// 128-bit halves' sums t. Kernels whose results must match a reference bit for bit use this
/// order in their scalar twin too.
CK_INLINE CK_AVX2 float ck_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/// e^x for 8 lanes: x = n·ln2 + r with |r| ≤ ln2/2 (ln2 split in two for an exact n·ln2_hi),
/// e^r by Cephes' degree-6 polynomial, times 2^n built in the exponent field. Below −87.34 the
/// result is 0 (libm gives a subnormal or 0 there), above 88.72 +inf; NaN stays NaN. Shared by
/// the elementwise kernels (softmax, SiLU) and the split attention's exponentials.
CK_INLINE CK_AVX2 __m256 ck_exp_ps(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-87.33654022216797f);
    const __m256 c = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), c);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    // 2^n in two halves, so that n = 128 (x just below 88.72) does not overflow the exponent field.
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h = _mm256_srai_epi32(ni, 1);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
    const __m256 s2 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23));
    __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/// acc + ws·sums for the R ≤ 4 rows of an int8/int16 GEMV step: lane r gets
/// wscale[r·groups]·(float)sums[r] (a row's scale for the current group; missing rows 0).
CK_INLINE CK_AVX2 __m128 ck_add_scaled_rows4(__m128 acc, __m128i sums, const float *wscale, size_t groups, int R) {
    float ws[4] = {0, 0, 0, 0};
    for (int r = 0; r < R; r++) ws[r] = wscale[(size_t)r * groups];
    return _mm_add_ps(acc, _mm_mul_ps(_mm_loadu_ps(ws), _mm_cvtepi32_ps(sums)));
}

/// y[r] = lane r of acc for r < R ≤ 4.
CK_INLINE CK_AVX2 void ck_store_rows4(float *y, __m128 acc, int R) {
    float out[4];
    _mm_storeu_ps(out, acc);
    for (int r = 0; r < R; r++) y[r] = out[r];
}
#endif

#endif
