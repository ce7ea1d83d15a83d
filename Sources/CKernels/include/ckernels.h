#ifndef CKERNELS_H
#define CKERNELS_H
#include <stdint.h>
#include <stddef.h>

/// 1 when the CPU has AVX2, FMA and F16C (checked once at run time).
int ck_cpu_has_avx2(void);

/// Sum of a[i]*b[i] over n int8 values, exact in int32. Codes must lie in [-127, 127]:
/// the AVX2 path uses maddubs, which saturates for -128*-128 pairs.
int32_t ck_dot_i8(const int8_t *a, const int8_t *b, size_t n);
/// Plain scalar twin of ck_dot_i8, used by tests and as the portable fallback.
int32_t ck_dot_i8_ref(const int8_t *a, const int8_t *b, size_t n);

#endif
