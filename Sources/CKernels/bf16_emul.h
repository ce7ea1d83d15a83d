// Scalar emulation of the AVX512_BF16 instructions, shared by the `_ref` twins of the bf16
// GEMM (gemm_bf16.c) and the bf16 decode GEMVs (gemv_bf16.c); see ck_bf16.h for the numerics.
#ifndef CK_BF16_EMUL_H
#define CK_BF16_EMUL_H
#include <math.h>
#include <stdint.h>
#include <string.h>

/// VCVTNE2PS2BF16's conversion (Intel SDM pseudo-code `convert_fp32_to_bfloat16`).
static inline uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7F800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);     // zero, subnormal → ±0
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); // NaN → quiet NaN
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);                // RNE (∞ stays ∞)
}

static inline float f32_of(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/// One VDPBF16PS step of one lane: fma rounded to nearest even, subnormal result → ±0 (FTZ).
/// DAZ on the inputs never acts here: the conversion above yields no subnormal bf16, and FTZ
/// keeps the accumulator normal or zero. (Tininess is taken after rounding, as `fmaf` reports it:
/// a result that rounds up to the smallest normal is kept; the tests stay clear of that edge.)
static inline float dp_step(float a, float b, float acc) {
    const float r = fmaf(a, b, acc);
    return fpclassify(r) == FP_SUBNORMAL ? copysignf(0.0f, r) : r;
}

#endif
