#include "ckernels.h"
#include "x86_common.h"
#include <immintrin.h>

// Kernels are compiled for baseline x86-64; AVX2 bodies carry a function-level target
// attribute and are reached only after the run-time check, so another CPU never sees SIGILL.

static int cpu_flags = -1;

int ck_cpu_has_avx2(void) {
    if (cpu_flags < 0) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        cpu_flags = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
#else
        cpu_flags = 0;
#endif
    }
    return cpu_flags;
}

int32_t ck_dot_i8_ref(const int8_t *a, const int8_t *b, size_t n) {
    int32_t sum = 0;
    for (size_t i = 0; i < n; i++) sum += (int32_t)a[i] * (int32_t)b[i];
    return sum;
}

#if defined(__x86_64__)
CK_AVX2 static int32_t dot_i8_avx2(const int8_t *a, const int8_t *b, size_t n) {
    // ggml's mul_sum_i8_pairs: |a| as unsigned, a's sign moved onto b, maddubs, madd with ones.
    __m256i acc = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(a + i));
        __m256i y = _mm256_loadu_si256((const __m256i *)(b + i));
        __m256i ax = _mm256_sign_epi8(x, x);
        __m256i sy = _mm256_sign_epi8(y, x);
        __m256i dot16 = _mm256_maddubs_epi16(ax, sy);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(dot16, ones));
    }
    int32_t sum = ck_hsum1_epi32(acc);
    for (; i < n; i++) sum += (int32_t)a[i] * (int32_t)b[i];
    return sum;
}
#endif

int32_t ck_dot_i8(const int8_t *a, const int8_t *b, size_t n) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) return dot_i8_avx2(a, b, n);
#endif
    return ck_dot_i8_ref(a, b, n);
}
