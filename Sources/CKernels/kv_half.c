#include "ck_runtime.h"
#include "ckernels.h"
#include "x86_common.h"
#include "attend_avx2.h"
#include <string.h>

// Half-precision KV cache (see ck_runtime.h): float ↔ IEEE half conversion and decode
// attention reading half keys/values directly. The fast paths convert in registers (F16C
// vcvtph2ps / vcvtps2ph); AVX-512 is taken under the same run-time gate as the other AVX-512
// kernels (ck_cpu_has_avx512vnni, which tests can switch off), then AVX2, then the reference.

// ---- scalar conversion (the portable twin of F16C) --------------------------------------------

uint16_t ck_f32_to_f16_one(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN: quiet, top payload kept (as vcvtps2ph)
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // ≥ 65520 (halfway past 65504) or inf → inf
    if (ax >= 0x38800000u) {                                    // normal half (≥ 2^-14)
        uint32_t h = (ax - 0x38000000u) >> 13;                  // rebias 127 → 15, drop 13 bits
        const uint32_t rest = ax & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;  // nearest, ties to even (may carry into the exponent)
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) return (uint16_t)sign;               // ≤ 2^-25: rounds to ±0 (the tie goes to even 0)
    // Subnormal half: value in units of 2^-24 is mant · 2^(e − 126), e < 113.
    const uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;         // 0x400 after rounding is the smallest normal: right bits
    return (uint16_t)(sign | h);
}

float ck_f16_to_f32_one(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1fu) x = sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0);  // NaN comes out quiet, as vcvtph2ps
    else if (e) x = sign | ((e + 112) << 23) | (m << 13);
    else if (m == 0) x = sign;
    else {  // subnormal: normalise
        e = 113;
        while (!(m & 0x400u)) { m <<= 1; e--; }
        x = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

void ck_f32_to_f16_ref(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ck_f32_to_f16_one(src[i]);
}

void ck_f16_to_f32_ref(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ck_f16_to_f32_one(src[i]);
}

#if defined(__x86_64__)
CK_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = (uint16_t)_cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

CK_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}
#endif

void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { f32_to_f16_avx2(src, dst, n); return; }
#endif
    ck_f32_to_f16_ref(src, dst, n);
}

void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { f16_to_f32_avx2(src, dst, n); return; }
#endif
    ck_f16_to_f32_ref(src, dst, n);
}

// ---- decode attention over a half cache --------------------------------------------------------

void ck_attend_one_f16_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                           size_t dim, float scale, float *scores, float *out) {
    for (size_t j = 0; j < count; j++) {
        float s = 0;
        for (size_t d = 0; d < dim; d++) s += q[d] * ck_f16_to_f32_one(keys[j * stride + d]);
        scores[j] = scale * s;
    }
    ck_softmax_f32_ref(scores, count);
    for (size_t d = 0; d < dim; d++) out[d] = 0;
    for (size_t j = 0; j < count; j++)
        for (size_t d = 0; d < dim; d++) out[d] += scores[j] * ck_f16_to_f32_one(values[j * stride + d]);
}

#if defined(__x86_64__)
#define LOADH8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

CK_DEFINE_ATTEND_ONE_AVX2(attend_one_f16_avx2, uint16_t, LOADH8, _cvtsh_ss)

#define LOADH16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))

/// The 16 lanes of v folded to 8 (lane i + lane i+8), AVX512F only.
CK_INLINE CK_AVX512 __m256 fold512(__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

CK_AVX512 static void attend_one_f16_avx512(const float *q, const uint16_t *keys, const uint16_t *values, size_t count,
                                            size_t stride, size_t dim, float scale, float *scores, float *out) {
    const size_t d16 = dim & ~(size_t)15, d8 = dim & ~(size_t)7;
    const __m128 vscale = _mm_set1_ps(scale);
    size_t j = 0;
    if (d8 == dim) {
        for (; j + 4 <= count; j += 4) {
            const uint16_t *k0 = keys + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            size_t d = 0;
            for (; d < d16; d += 16) {
                const __m512 x = _mm512_loadu_ps(q + d);
                a0 = _mm512_fmadd_ps(x, LOADH16(k0 + d), a0);
                a1 = _mm512_fmadd_ps(x, LOADH16(k1 + d), a1);
                a2 = _mm512_fmadd_ps(x, LOADH16(k2 + d), a2);
                a3 = _mm512_fmadd_ps(x, LOADH16(k3 + d), a3);
            }
            __m256 b0 = fold512(a0), b1 = fold512(a1), b2 = fold512(a2), b3 = fold512(a3);
            if (d < dim) {  // one 8-wide step left (dim % 16 == 8)
                const __m256 x = _mm256_loadu_ps(q + d);
                b0 = _mm256_fmadd_ps(x, LOADH8(k0 + d), b0);
                b1 = _mm256_fmadd_ps(x, LOADH8(k1 + d), b1);
                b2 = _mm256_fmadd_ps(x, LOADH8(k2 + d), b2);
                b3 = _mm256_fmadd_ps(x, LOADH8(k3 + d), b3);
            }
            _mm_storeu_ps(scores + j, _mm_mul_ps(vscale, ck_hsum4_ps(b0, b1, b2, b3)));
        }
    }
    for (; j < count; j++) scores[j] = scale * ck_attend_dot_uint16_t(q, keys + j * stride, dim);
    ck_softmax_f32(scores, count);
    size_t d = 0;
    // 64 columns, two positions per step into separate accumulators (8 FMA chains in flight).
    for (; d + 64 <= d16; d += 64) {
        __m512 o0 = _mm512_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, e0 = o0, e1 = o0, e2 = o0, e3 = o0;
        for (j = 0; j + 2 <= count; j += 2) {
            const uint16_t *v = values + j * stride + d, *w = v + stride;
            const __m512 p = _mm512_set1_ps(scores[j]), r = _mm512_set1_ps(scores[j + 1]);
            o0 = _mm512_fmadd_ps(p, LOADH16(v), o0);
            o1 = _mm512_fmadd_ps(p, LOADH16(v + 16), o1);
            o2 = _mm512_fmadd_ps(p, LOADH16(v + 32), o2);
            o3 = _mm512_fmadd_ps(p, LOADH16(v + 48), o3);
            e0 = _mm512_fmadd_ps(r, LOADH16(w), e0);
            e1 = _mm512_fmadd_ps(r, LOADH16(w + 16), e1);
            e2 = _mm512_fmadd_ps(r, LOADH16(w + 32), e2);
            e3 = _mm512_fmadd_ps(r, LOADH16(w + 48), e3);
        }
        if (j < count) {
            const uint16_t *v = values + j * stride + d;
            const __m512 p = _mm512_set1_ps(scores[j]);
            o0 = _mm512_fmadd_ps(p, LOADH16(v), o0);
            o1 = _mm512_fmadd_ps(p, LOADH16(v + 16), o1);
            o2 = _mm512_fmadd_ps(p, LOADH16(v + 32), o2);
            o3 = _mm512_fmadd_ps(p, LOADH16(v + 48), o3);
        }
        _mm512_storeu_ps(out + d, _mm512_add_ps(o0, e0));
        _mm512_storeu_ps(out + d + 16, _mm512_add_ps(o1, e1));
        _mm512_storeu_ps(out + d + 32, _mm512_add_ps(o2, e2));
        _mm512_storeu_ps(out + d + 48, _mm512_add_ps(o3, e3));
    }
    for (; d < d16; d += 16) {
        __m512 o0 = _mm512_setzero_ps();
        for (j = 0; j < count; j++) o0 = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), LOADH16(values + j * stride + d), o0);
        _mm512_storeu_ps(out + d, o0);
    }
    for (; d < d8; d += 8) {
        __m256 o0 = _mm256_setzero_ps();
        for (j = 0; j < count; j++) o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(scores + j), LOADH8(values + j * stride + d), o0);
        _mm256_storeu_ps(out + d, o0);
    }
    ck_attend_pv_tail_uint16_t(scores, values, count, stride, d, dim, out);
}
#endif

void ck_attend_one_f16(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                       size_t dim, float scale, float *scores, float *out) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) { attend_one_f16_avx512(q, keys, values, count, stride, dim, scale, scores, out); return; }
    if (ck_cpu_has_avx2()) { attend_one_f16_avx2(q, keys, values, count, stride, dim, scale, scores, out); return; }
#endif
    ck_attend_one_f16_ref(q, keys, values, count, stride, dim, scale, scores, out);
}
