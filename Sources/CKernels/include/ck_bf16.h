#ifndef CK_BF16_H
#define CK_BF16_H
#include <stddef.h>
#include <stdint.h>

// bf16 GEMM for the prefill of float-activation (weight-only) layers (gemm_bf16.c):
// y[m, n] (+)= x[m, k] · W[n, k]ᵀ with both operands rounded to bf16 and fp32 accumulation.
//
// Numerics (the `_ref` twin gives the same bits as the AVX512_BF16 kernel):
//  * float → bf16 as VCVTNE2PS2BF16: round to nearest even; zero and subnormal inputs become a
//    zero of the same sign; NaN becomes a quiet NaN; overflow rounds to infinity.
//  * each output is one fp32 accumulator, starting at +0, walking k in pairs p = 0, 1, …:
//    acc = fma(a[2p+1], b[2p+1], acc), then acc = fma(a[2p], b[2p], acc), each rounded to
//    nearest even with subnormal results flushed to a zero of their sign (VDPBF16PS: "FP32 FMA
//    with DAZ in, FTZ out and RNE"); an odd k is padded with one zero. The products of two bf16
//    values are exact in fp32, so the only roundings are the conversions and the adds.
//  * with `accumulate`, c = c + acc (one fp32 add); else c = acc.
//
// Layouts: activations in bf16 `[m, lda]` (lda even, ≥ k; the pad is zero); weights packed into
// panels of CK_BF16_PANEL output rows: panel j, k-pair p, row r holds W[32j + r][2p], W[32j + r][2p+1]
// at element (j·pairs + p)·64 + 2r (pairs = ceil(k/2); rows past n and the odd k's pad are zero).

#define CK_BF16_PANEL 32

/// 1 when the CPU has AVX512F, AVX512BW and AVX512_BF16 (VDPBF16PS), and the kernel is enabled.
int ck_cpu_has_avx512bf16(void);
/// Turns the AVX512_BF16 kernels off (0) or back on, so tests can run the fallback path.
void ck_set_bf16_kernel_enabled(int enabled);

/// Whether float-activation prefill runs in bf16 (process-wide; first read from the environment:
/// PTQ_PREFILL_BF16=0 turns it off) and its setter.
int ck_bf16_prefill_enabled(void);
void ck_set_bf16_prefill_enabled(int enabled);

/// Whether the decode GEMVs of the formats that have a bf16 decode kernel run it (process-wide;
/// first read from the environment: PTQ_DECODE_BF16=0 turns it off) and its setter.
int ck_bf16_decode_enabled(void);
void ck_set_bf16_decode_enabled(int enabled);

/// Elements (uint16) of the packed panels of an n × k tile.
size_t ck_bf16_packed_count(size_t n, size_t k);

/// x[m, k] (row stride ldx floats) → out[m, ldo] bf16 (ldo ≥ k; columns k..<ldo set to zero).
void ck_bf16_from_f32(const float *x, size_t m, size_t k, size_t ldx, uint16_t *out, size_t ldo);
void ck_bf16_from_f32_ref(const float *x, size_t m, size_t k, size_t ldx, uint16_t *out, size_t ldo);

/// x[i] ← the float value of bf16(x[i]) for `count` floats (the fallback's rounding).
void ck_bf16_round_f32(float *x, size_t count);

/// The scalar emulation the `_ref` twins share (for other kernels' twins): float → bf16 as
/// VCVTNE2PS2BF16, bf16 → float, and one VDPBF16PS product step of one lane (see above).
uint16_t ck_bf16_emulate_round(float f);
float ck_bf16_emulate_widen(uint16_t h);
float ck_bf16_emulate_dp_step(float a, float b, float acc);

/// Packs W[n, k] (row stride ldw floats) into `packed` (ck_bf16_packed_count(n, k) elements).
void ck_bf16_pack(const float *w, size_t n, size_t k, size_t ldw, uint16_t *packed);
void ck_bf16_pack_ref(const float *w, size_t n, size_t k, size_t ldw, uint16_t *packed);

/// c[i·ldc + j] (+)= Σ_t a[i·lda + t]·W[j][t] for i < m, j < n, from packed panels of W.
/// Needs ck_cpu_has_avx512bf16() (else it runs the scalar emulation, same numbers).
void ck_bf16_gemm(const uint16_t *a, size_t m, size_t lda, const uint16_t *packed, size_t n, size_t k,
                  float *c, size_t ldc, int accumulate);
/// Scalar emulation on the packed operands (same bits as ck_bf16_gemm).
void ck_bf16_gemm_packed_ref(const uint16_t *a, size_t m, size_t lda, const uint16_t *packed, size_t n,
                             size_t k, float *c, size_t ldc, int accumulate);
/// The whole product from float operands: rounds x[m, k] and w[n, k] to bf16 and emulates the
/// kernel's order (the independent reference the fast path is tested against).
void ck_bf16_gemm_ref(const float *x, size_t m, size_t ldx, const float *w, size_t n, size_t ldw, size_t k,
                      float *c, size_t ldc, int accumulate);

#endif
