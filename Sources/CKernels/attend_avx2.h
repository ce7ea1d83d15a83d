// Decode attention of the query rows that share one KV head over cached positions, AVX2: one body for every cache
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
/// - `NAME(q, keys, values, count, stride, dim, rows, scale, scores, out)`: decode attention of
///   the `rows` query rows q + r·dim that share one KV head (grouped-query attention), into
///   scores + r·count and out + r·dim. Rows go in blocks of up to 2 so that each key and value
///   row is loaded (and, for half, widened) once per block instead of once per query head
///   (SmolLM2's group of 3 is a block of 2 and one of 1: blocks of 3 were slower, 4R
///   accumulators plus R broadcasts overfill the 16 registers in P·V and the float q·K lost
///   about 40 % on one thread, RESULTS "Grouped decode attention"). Per row the operations and their order are those of one row alone: s =
///   scale·q·Kᵀ (four positions per step with one hadd tree: a horizontal sum per position was
///   most of the q·K time at decode depths of a few hundred, RESULTS "KV cache precision"),
///   softmax, P·V with 8-column accumulators, so a row's result does not depend on its block.
#define CK_ATTEND_ROWS_MAX 2
#define CK_DEFINE_ATTEND_AVX2(NAME, ELEM, LOAD8, TOF)                                                      \
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
    /* s[r][j] = scale·q_r·k_j for R rows (a constant after inlining) and the positions in blocks of \
       4 (dim a multiple of 8): one key vector live at a time, 4R accumulators. */                     \
    CK_INLINE CK_AVX2 void NAME##_qk(const size_t R, const float *q, const ELEM *keys, size_t count,        \
                                     size_t stride, size_t dim, float scale, float *scores) {               \
        const __m128 vscale = _mm_set1_ps(scale);                                                          \
        for (size_t j = 0; j + 4 <= count; j += 4) {                                                       \
            const ELEM *k0 = keys + j * stride;                                                            \
            __m256 a[CK_ATTEND_ROWS_MAX][4];                                                               \
            for (size_t r = 0; r < R; r++)                                                                 \
                for (size_t p = 0; p < 4; p++) a[r][p] = _mm256_setzero_ps();                              \
            for (size_t d = 0; d < dim; d += 8) {                                                          \
                for (size_t p = 0; p < 4; p++) {                                                           \
                    const __m256 k = LOAD8(k0 + p * stride + d);                                           \
                    for (size_t r = 0; r < R; r++)                                                         \
                        a[r][p] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * dim + d), k, a[r][p]);           \
                }                                                                                          \
            }                                                                                              \
            for (size_t r = 0; r < R; r++)                                                                 \
                _mm_storeu_ps(scores + r * count + j,                                                      \
                              _mm_mul_ps(vscale, ck_hsum4_ps(a[r][0], a[r][1], a[r][2], a[r][3])));         \
        }                                                                                                  \
    }                                                                                                      \
    /* out[r][d0 + c] = Σ_j p[r][j]·v_j[d0 + c] for R rows and 8C columns: each value vector is \
       loaded once for all R rows. */                                                                  \
    CK_INLINE CK_AVX2 void NAME##_pv(const size_t R, const size_t C, const float *p, const ELEM *values,    \
                                     size_t count, size_t stride, size_t d0, size_t dim, float *out) {      \
        __m256 o[CK_ATTEND_ROWS_MAX][8];                                                                   \
        for (size_t r = 0; r < R; r++)                                                                     \
            for (size_t c = 0; c < C; c++) o[r][c] = _mm256_setzero_ps();                                  \
        for (size_t j = 0; j < count; j++) {                                                               \
            const ELEM *v = values + j * stride + d0;                                                      \
            __m256 b[CK_ATTEND_ROWS_MAX];                                                                  \
            for (size_t r = 0; r < R; r++) b[r] = _mm256_broadcast_ss(p + r * count + j);                  \
            for (size_t c = 0; c < C; c++) {                                                               \
                const __m256 x = LOAD8(v + 8 * c);                                                         \
                for (size_t r = 0; r < R; r++) o[r][c] = _mm256_fmadd_ps(b[r], x, o[r][c]);                \
            }                                                                                              \
        }                                                                                                  \
        for (size_t r = 0; r < R; r++)                                                                     \
            for (size_t c = 0; c < C; c++) _mm256_storeu_ps(out + r * dim + d0 + 8 * c, o[r][c]);          \
    }                                                                                                      \
    /* R rows at once; R = 1 keeps 64-column P·V blocks (8 accumulators), R = 2 32 columns \
       (8 accumulators plus 2 broadcasts). */                                   \
    CK_INLINE CK_AVX2 void NAME##_rows(const size_t R, const float *q, const ELEM *keys, const ELEM *values, \
                                       size_t count, size_t stride, size_t dim, float scale, float *scores,  \
                                       float *out) {                                                       \
        const size_t d8 = dim & ~(size_t)7;                                                                \
        size_t j = 0;                                                                                      \
        if (d8 == dim) {                                                                                   \
            NAME##_qk(R, q, keys, count, stride, dim, scale, scores);                                      \
            j = count & ~(size_t)3;                                                                        \
        }                                                                                                  \
        for (size_t r = 0; r < R; r++) {                                                                   \
            for (size_t i = j; i < count; i++)                                                             \
                scores[r * count + i] = scale * ck_attend_dot_##ELEM(q + r * dim, keys + i * stride, dim); \
            ck_softmax_f32(scores + r * count, count);                                                     \
        }                                                                                                  \
        size_t d = 0;                                                                                      \
        if (R == 1)                                                                                        \
            for (; d + 64 <= d8; d += 64) NAME##_pv(1, 8, scores, values, count, stride, d, dim, out);     \
        for (; d + 32 <= d8; d += 32) NAME##_pv(R, 4, scores, values, count, stride, d, dim, out);          \
        for (; d < d8; d += 8) NAME##_pv(R, 1, scores, values, count, stride, d, dim, out);                 \
        for (size_t r = 0; r < R; r++)                                                                     \
            ck_attend_pv_tail_##ELEM(scores + r * count, values, count, stride, d, dim, out + r * dim);     \
    }                                                                                                      \
    CK_AVX2 static void NAME(const float *q, const ELEM *keys, const ELEM *values, size_t count,            \
                             size_t stride, size_t dim, size_t rows, float scale, float *scores,            \
                             float *out) {                                                                 \
        for (size_t r = 0; r < rows; r += CK_ATTEND_ROWS_MAX) {                                            \
            const float *qr = q + r * dim;                                                                 \
            float *sr = scores + r * count, *outr = out + r * dim;                                         \
            switch (rows - r) {                                                                            \
            case 1: NAME##_rows(1, qr, keys, values, count, stride, dim, scale, sr, outr); break;          \
            default: NAME##_rows(2, qr, keys, values, count, stride, dim, scale, sr, outr); break;         \
            }                                                                                              \
        }                                                                                                  \
    }
#endif

#endif
