#include "ck_runtime.h"
#include "ckernels.h"
#include "x86_common.h"
#include <immintrin.h>
#include <math.h>

// Per-token elementwise kernels of the decoder (see ck_runtime.h): RMSNorm, SwiGLU and softmax,
// AVX2 with a vector expf (Cephes' polynomial, within 2 ulp of libm's expf) and `_ref` twins that
// are the former scalar Swift loops (libm expf, sequential sums).

void ck_rmsnorm_f32_ref(const float *x, const float *weight, size_t rows, size_t width, float epsilon, float *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * width;
        float *yr = y + r * width;
        float sum = 0;
        for (size_t i = 0; i < width; i++) sum += xr[i] * xr[i];
        const float scale = 1 / sqrtf(sum / (float)width + epsilon);
        for (size_t i = 0; i < width; i++) yr[i] = xr[i] * scale * weight[i];
    }
}

void ck_add_rmsnorm_f32_ref(float *x, const float *residual, const float *weight, size_t rows, size_t width,
                            float epsilon, float *y) {
    for (size_t i = 0; i < rows * width; i++) x[i] += residual[i];
    ck_rmsnorm_f32_ref(x, weight, rows, width, epsilon, y);
}

void ck_silu_mul_f32_ref(float *gate, const float *up, size_t count) {
    for (size_t i = 0; i < count; i++) {
        const float g = gate[i];
        gate[i] = g / (1 + expf(-g)) * up[i];
    }
}

void ck_softmax_f32_ref(float *x, size_t count) {
    if (count == 0) return;
    float m = -INFINITY;
    for (size_t j = 0; j < count; j++) m = x[j] > m ? x[j] : m;
    float sum = 0;
    for (size_t j = 0; j < count; j++) {
        const float e = expf(x[j] - m);
        x[j] = e;
        sum += e;
    }
    const float inv = 1 / sum;
    for (size_t j = 0; j < count; j++) x[j] *= inv;
}

#if defined(__x86_64__)

CK_INLINE CK_AVX2 float ew_hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// y = x · weight / sqrt(sum / width + epsilon) for one row whose sum of squares is `sum`.
CK_AVX2 static void rmsnorm_scale_row_avx2(const float *xr, const float *weight, size_t width, float sum,
                                           float epsilon, float *yr) {
    const float scale = 1 / sqrtf(sum / (float)width + epsilon);
    const __m256 vs = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= width; i += 8)
        _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vs), _mm256_loadu_ps(weight + i)));
    for (; i < width; i++) yr[i] = xr[i] * scale * weight[i];
}

CK_AVX2 static void rmsnorm_avx2(const float *x, const float *weight, size_t rows, size_t width, float epsilon,
                                 float *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * width;
        float *yr = y + r * width;
        __m256 a = _mm256_setzero_ps(), b = a;
        size_t i = 0;
        for (; i + 16 <= width; i += 16) {
            const __m256 v0 = _mm256_loadu_ps(xr + i), v1 = _mm256_loadu_ps(xr + i + 8);
            a = _mm256_fmadd_ps(v0, v0, a);
            b = _mm256_fmadd_ps(v1, v1, b);
        }
        float sum = ck_hsum_ps(_mm256_add_ps(a, b));
        for (; i < width; i++) sum += xr[i] * xr[i];
        rmsnorm_scale_row_avx2(xr, weight, width, sum, epsilon, yr);
    }
}

// rmsnorm_avx2 with the residual add in its first loop: x is read once for both, its sum of
// squares accumulates in the same lanes and order, so x and y equal add-then-rmsnorm_avx2's bits.
CK_AVX2 static void add_rmsnorm_avx2(float *x, const float *residual, const float *weight, size_t rows, size_t width,
                                     float epsilon, float *y) {
    for (size_t r = 0; r < rows; r++) {
        float *xr = x + r * width;
        const float *pr = residual + r * width;
        float *yr = y + r * width;
        __m256 a = _mm256_setzero_ps(), b = a;
        size_t i = 0;
        for (; i + 16 <= width; i += 16) {
            const __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(pr + i));
            const __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(xr + i + 8), _mm256_loadu_ps(pr + i + 8));
            _mm256_storeu_ps(xr + i, v0);
            _mm256_storeu_ps(xr + i + 8, v1);
            a = _mm256_fmadd_ps(v0, v0, a);
            b = _mm256_fmadd_ps(v1, v1, b);
        }
        float sum = ck_hsum_ps(_mm256_add_ps(a, b));
        for (; i < width; i++) {
            xr[i] += pr[i];
            sum += xr[i] * xr[i];
        }
        rmsnorm_scale_row_avx2(xr, weight, width, sum, epsilon, yr);
    }
}

CK_AVX2 static void silu_mul_avx2(float *gate, const float *up, size_t count) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = ck_exp_ps(_mm256_xor_ps(g, sign));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < count; i++) {
        const float g = gate[i];
        gate[i] = g / (1 + expf(-g)) * up[i];
    }
}

CK_AVX2 static void softmax_avx2(float *x, size_t count) {
    size_t j = 0;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= count; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
    float m = ew_hmax(vm);
    for (; j < count; j++) m = x[j] > m ? x[j] : m;
    const __m256 mv = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    j = 0;
    for (; j + 8 <= count; j += 8) {
        const __m256 e = ck_exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        _mm256_storeu_ps(x + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = ck_hsum_ps(acc);
    for (; j < count; j++) {
        const float e = expf(x[j] - m);
        x[j] = e;
        sum += e;
    }
    const float inv = 1 / sum;
    const __m256 vi = _mm256_set1_ps(inv);
    j = 0;
    for (; j + 8 <= count; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), vi));
    for (; j < count; j++) x[j] *= inv;
}
#endif

void ck_rmsnorm_f32(const float *x, const float *weight, size_t rows, size_t width, float epsilon, float *y) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { rmsnorm_avx2(x, weight, rows, width, epsilon, y); return; }
#endif
    ck_rmsnorm_f32_ref(x, weight, rows, width, epsilon, y);
}

void ck_add_rmsnorm_f32(float *x, const float *residual, const float *weight, size_t rows, size_t width,
                        float epsilon, float *y) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { add_rmsnorm_avx2(x, residual, weight, rows, width, epsilon, y); return; }
#endif
    ck_add_rmsnorm_f32_ref(x, residual, weight, rows, width, epsilon, y);
}

void ck_silu_mul_f32(float *gate, const float *up, size_t count) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { silu_mul_avx2(gate, up, count); return; }
#endif
    ck_silu_mul_f32_ref(gate, up, count);
}

void ck_softmax_f32(float *x, size_t count) {
    if (count == 0) return;
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { softmax_avx2(x, count); return; }
#endif
    ck_softmax_f32_ref(x, count);
}

#if defined(__x86_64__)
CK_AVX2 static void exp_avx2(const float *x, size_t count, float *y) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(y + i, ck_exp_ps(_mm256_loadu_ps(x + i)));
    if (i < count) {
        float in[8] = {0}, out[8];
        for (size_t t = i; t < count; t++) in[t - i] = x[t];
        _mm256_storeu_ps(out, ck_exp_ps(_mm256_loadu_ps(in)));
        for (size_t t = i; t < count; t++) y[t] = out[t - i];
    }
}
#endif

/// e^x for every element with the vector polynomial (tests compare it with libm's expf).
void ck_exp_f32(const float *x, size_t count, float *y) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { exp_avx2(x, count, y); return; }
#endif
    for (size_t i = 0; i < count; i++) y[i] = expf(x[i]);
}
