// Decode attention of one query row over cached positions, AVX2: one body for every cache
// element type (float in runtime_ops.c, IEEE half in kv_half.c), instantiated per type so the
// two caches run the same operations in the same order. Private to the CKernels target.
#ifndef PTQ_CK_ATTEND_AVX2_H
#define PTQ_CK_ATTEND_AVX2_H

#include "ck_runtime.h"
#include "x86_common.h"

#if defined(__x86_64__)
/// Lane p of the result (p < 4) is the sum of all lanes of v_p.
CK_INLINE CK_AVX2 __m128 ck_hsum4_ps(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/// Defines, for cache elements of type ELEM read 8 at a time as floats by LOAD8(pointer) and one
/// at a time by TOF(element):
/// - `ck_attend_dot_ELEM(q, k, dim)`: q·k of one position, 8 lanes then scalar;
/// - `ck_attend_pv_tail_ELEM(p, values, count, stride, d0, dim, out)`: out[d] = Σ_j p[j]·v_j[d]
///   for the columns [d0, dim) that 8-lane steps cannot reach;
/// - `NAME(q, keys, values, count, stride, dim, scale, scores, out)`: s = scale·q·Kᵀ (four
///   positions per step with one hadd tree: a horizontal sum per position was most of the q·K
///   time at decode depths of a few hundred, RESULTS "KV cache precision"), softmax, P·V with 8
///   accumulators of 8 columns.
#define CK_DEFINE_ATTEND_ONE_AVX2(NAME, ELEM, LOAD8, TOF)                                                  \
    CK_INLINE CK_AVX2 float ck_attend_dot_##ELEM(const float *q, const ELEM *k, size_t dim) {               \
        __m256 a = _mm256_setzero_ps();                                                                    \
        size_t d = 0;                                                                                      \
        for (; d + 8 <= dim; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), LOAD8(k + d), a);        \
        float s = ck_hsum_ps(a);                                                                           \
        for (; d < dim; d++) s += q[d] * TOF(k[d]);                                                        \
        return s;                                                                                          \
    }                                                                                                      \
    CK_INLINE CK_AVX2 void ck_attend_pv_tail_##ELEM(const float *p, const ELEM *values, size_t count,        \
                                                    size_t stride, size_t d0, size_t dim, float *out) {     \
        for (size_t d = d0; d < dim; d++) {                                                                \
            float s = 0;                                                                                   \
            for (size_t j = 0; j < count; j++) s += p[j] * TOF(values[j * stride + d]);                    \
            out[d] = s;                                                                                    \
        }                                                                                                  \
    }                                                                                                      \
    CK_AVX2 static void NAME(const float *q, const ELEM *keys, const ELEM *values, size_t count,            \
                             size_t stride, size_t dim, float scale, float *scores, float *out) {           \
        const size_t d8 = dim & ~(size_t)7;                                                                \
        const __m128 vscale = _mm_set1_ps(scale);                                                          \
        size_t j = 0;                                                                                      \
        if (d8 == dim) {                                                                                   \
            for (; j + 4 <= count; j += 4) {                                                               \
                const ELEM *k0 = keys + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride; \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                 \
                for (size_t d = 0; d < dim; d += 8) {                                                      \
                    const __m256 x = _mm256_loadu_ps(q + d);                                               \
                    a0 = _mm256_fmadd_ps(x, LOAD8(k0 + d), a0);                                            \
                    a1 = _mm256_fmadd_ps(x, LOAD8(k1 + d), a1);                                            \
                    a2 = _mm256_fmadd_ps(x, LOAD8(k2 + d), a2);                                            \
                    a3 = _mm256_fmadd_ps(x, LOAD8(k3 + d), a3);                                            \
                }                                                                                          \
                _mm_storeu_ps(scores + j, _mm_mul_ps(vscale, ck_hsum4_ps(a0, a1, a2, a3)));                 \
            }                                                                                              \
        }                                                                                                  \
        for (; j < count; j++) scores[j] = scale * ck_attend_dot_##ELEM(q, keys + j * stride, dim);       \
        ck_softmax_f32(scores, count);                                                                     \
        size_t d = 0;                                                                                      \
        for (; d + 64 <= d8; d += 64) {                                                                    \
            __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0; \
            for (j = 0; j < count; j++) {                                                                  \
                const ELEM *v = values + j * stride + d;                                                   \
                const __m256 p = _mm256_broadcast_ss(scores + j);                                          \
                o0 = _mm256_fmadd_ps(p, LOAD8(v), o0);                                                     \
                o1 = _mm256_fmadd_ps(p, LOAD8(v + 8), o1);                                                 \
                o2 = _mm256_fmadd_ps(p, LOAD8(v + 16), o2);                                                \
                o3 = _mm256_fmadd_ps(p, LOAD8(v + 24), o3);                                                \
                o4 = _mm256_fmadd_ps(p, LOAD8(v + 32), o4);                                                \
                o5 = _mm256_fmadd_ps(p, LOAD8(v + 40), o5);                                                \
                o6 = _mm256_fmadd_ps(p, LOAD8(v + 48), o6);                                                \
                o7 = _mm256_fmadd_ps(p, LOAD8(v + 56), o7);                                                \
            }                                                                                              \
            _mm256_storeu_ps(out + d, o0); _mm256_storeu_ps(out + d + 8, o1);                              \
            _mm256_storeu_ps(out + d + 16, o2); _mm256_storeu_ps(out + d + 24, o3);                        \
            _mm256_storeu_ps(out + d + 32, o4); _mm256_storeu_ps(out + d + 40, o5);                        \
            _mm256_storeu_ps(out + d + 48, o6); _mm256_storeu_ps(out + d + 56, o7);                        \
        }                                                                                                  \
        for (; d < d8; d += 8) {                                                                           \
            __m256 o0 = _mm256_setzero_ps();                                                               \
            for (j = 0; j < count; j++)                                                                    \
                o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(scores + j), LOAD8(values + j * stride + d), o0); \
            _mm256_storeu_ps(out + d, o0);                                                                 \
        }                                                                                                  \
        ck_attend_pv_tail_##ELEM(scores, values, count, stride, d, dim, out);                               \
    }
#endif

#endif
