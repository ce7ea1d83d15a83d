#include "ckernels.h"
#include "ck_runtime.h"
#include "x86_common.h"
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// Activation quantization. Both paths perform the same float operations in the same order
// (subtract, divide, divide by the step, clamp, round half away from zero), so they agree
// exactly. Clamping before rounding equals rounding before clamping because the bounds are
// integers.

static inline int step_usable(float step) { return step > 0 && step <= 3.40282347e38f; }

static inline int8_t quantize_one(float v, float step, float max_code) {
    float q = v / step;
    q = q < -max_code ? -max_code : (q > max_code ? max_code : q);
    if (q != q) return 0; // NaN
    return (int8_t)(int)roundf(q);
}

/// Applies shift and channel scale into `out`; returns the row to quantize.
static const float *transform_row(const float *x, size_t cols, const float *shift, const float *channel_scale,
                                  float *out) {
    if (!shift && !channel_scale) return x;
    for (size_t j = 0; j < cols; j++) {
        float t = x[j];
        if (shift) t = t - shift[j];
        if (channel_scale) t = t / channel_scale[j];
        out[j] = t;
    }
    return out;
}

void ck_quantize_rows_i8_ref(const float *x, size_t rows, size_t cols, const float *shift,
                             const float *channel_scale, int max_code, float static_step,
                             int8_t *codes, float *row_steps) {
    const float m = (float)max_code;
    float *tmp = (shift || channel_scale) ? (float *)malloc(cols * sizeof(float) + 1) : NULL;
    for (size_t i = 0; i < rows; i++) {
        const float *v = transform_row(x + i * cols, cols, shift, channel_scale, tmp);
        float step = static_step;
        if (!(static_step > 0)) {
            float absmax = 0;
            for (size_t j = 0; j < cols; j++) {
                float a = fabsf(v[j]);
                if (a > absmax) absmax = a;
            }
            step = absmax / m;
        }
        row_steps[i] = step;
        int8_t *c = codes + i * cols;
        if (!step_usable(step)) { memset(c, 0, cols); continue; }
        for (size_t j = 0; j < cols; j++) c[j] = quantize_one(v[j], step, m);
    }
    free(tmp);
}

#if defined(__x86_64__)
CK_AVX2 static float absmax_avx2(const float *v, size_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 acc = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= n; j += 8) acc = _mm256_max_ps(acc, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + j)));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    float m = _mm_cvtss_f32(s);
    for (; j < n; j++) {
        float a = fabsf(v[j]);
        if (a > m) m = a;
    }
    return m;
}

/// 8 floats → 8 int32 codes: divide, clamp, round half away from zero (trunc(q ± 0.49999997)).
CK_AVX2 static inline __m256i quantize8(__m256 v, __m256 step, __m256 lo, __m256 hi) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.49999997f);
    __m256 q = _mm256_div_ps(v, step);
    q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_ORD_Q)); // NaN → 0, as the scalar path
    q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
    q = _mm256_add_ps(q, _mm256_or_ps(_mm256_and_ps(q, sign), half));
    return _mm256_cvttps_epi32(q);
}

CK_AVX2 static void quantize_rows_avx2(const float *x, size_t rows, size_t cols, const float *shift,
                                       const float *channel_scale, int max_code, float static_step,
                                       int8_t *codes, float *row_steps, float *tmp) {
    const float m = (float)max_code;
    const __m256 lo = _mm256_set1_ps(-m), hi = _mm256_set1_ps(m);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t i = 0; i < rows; i++) {
        const float *v = transform_row(x + i * cols, cols, shift, channel_scale, tmp);
        const float step = static_step > 0 ? static_step : absmax_avx2(v, cols) / m;
        row_steps[i] = step;
        int8_t *c = codes + i * cols;
        if (!step_usable(step)) { memset(c, 0, cols); continue; }
        const __m256 vs = _mm256_set1_ps(step);
        size_t j = 0;
        for (; j + 32 <= cols; j += 32) {
            const __m256i q0 = quantize8(_mm256_loadu_ps(v + j), vs, lo, hi);
            const __m256i q1 = quantize8(_mm256_loadu_ps(v + j + 8), vs, lo, hi);
            const __m256i q2 = quantize8(_mm256_loadu_ps(v + j + 16), vs, lo, hi);
            const __m256i q3 = quantize8(_mm256_loadu_ps(v + j + 24), vs, lo, hi);
            // packs work per 128-bit lane; the permute restores element order.
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
            _mm256_storeu_si256((__m256i *)(c + j), _mm256_permutevar8x32_epi32(p, order));
        }
        for (; j < cols; j++) c[j] = quantize_one(v[j], step, m);
    }
}
#endif

void ck_quantize_rows_i8(const float *x, size_t rows, size_t cols, const float *shift,
                         const float *channel_scale, int max_code, float static_step,
                         int8_t *codes, float *row_steps) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) {
        // A per-thread buffer (slot 5), not a malloc per call: this runs for every token.
        float *tmp = (shift || channel_scale) ? (float *)ck_thread_scratch(5, cols * sizeof(float) + 4) : NULL;
        if (tmp || (!shift && !channel_scale)) {
            quantize_rows_avx2(x, rows, cols, shift, channel_scale, max_code, static_step, codes, row_steps, tmp);
            return;
        }
    }
#endif
    ck_quantize_rows_i8_ref(x, rows, cols, shift, channel_scale, max_code, static_step, codes, row_steps);
}
