// bf16 GEMM for the prefill of weight-only (float-activation) layers; see ck_bf16.h for the
// numerics and layouts. The fast path needs AVX512_BF16 (VDPBF16PS: 32 bf16 products into 16
// fp32 lanes per instruction, twice the products of a float32 FMA); it is reached only after the
// run-time check, so other CPUs never see the instructions.
#include "ck_bf16.h"
#include "bf16_emul.h"
#include "x86_common.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PANEL CK_BF16_PANEL
// Rows of activations per microkernel step: 8 rows × 2 zmm of 16 outputs = 16 accumulators,
// enough independent VDPBF16PS chains to cover the instruction's latency.
#define BF_MR 8
// Activation rows per block: a block's bf16 rows (≤ 128 × 1536 × 2 B = 384 KB) stay in L2 while
// every panel of the tile passes over them.
#define BF_MB 128

static int bf16_flag = -1;
static int bf16_kernel_enabled = 1;
static int bf16_prefill = -1;  // PTQ_PREFILL_BF16, read on first use
static int bf16_decode = -1;   // PTQ_DECODE_BF16, read on first use

int ck_cpu_has_avx512bf16(void) {
    if (bf16_flag < 0) {
#if defined(__x86_64__)
        __builtin_cpu_init();
        bf16_flag = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512bf16");
#else
        bf16_flag = 0;
#endif
    }
    return bf16_flag && bf16_kernel_enabled;
}

void ck_set_bf16_kernel_enabled(int enabled) { bf16_kernel_enabled = enabled != 0; }

/// A switch that is on unless the environment variable `name` is "0" (read on first use).
static int env_switch(int *cached, const char *name) {
    if (*cached < 0) {
        const char *v = getenv(name);
        *cached = !(v && strcmp(v, "0") == 0);
    }
    return *cached;
}

int ck_bf16_prefill_enabled(void) { return env_switch(&bf16_prefill, "PTQ_PREFILL_BF16"); }

void ck_set_bf16_prefill_enabled(int enabled) { bf16_prefill = enabled != 0; }

int ck_bf16_decode_enabled(void) { return env_switch(&bf16_decode, "PTQ_DECODE_BF16"); }

void ck_set_bf16_decode_enabled(int enabled) { bf16_decode = enabled != 0; }

size_t ck_bf16_packed_count(size_t n, size_t k) {
    const size_t panels = (n + PANEL - 1) / PANEL;
    return panels * PANEL * 2 * ((k + 1) / 2);
}

// ---- scalar reference ------------------------------------------------------------------------

void ck_bf16_from_f32_ref(const float *x, size_t m, size_t k, size_t ldx, uint16_t *out, size_t ldo) {
    for (size_t i = 0; i < m; i++) {
        for (size_t t = 0; t < k; t++) out[i * ldo + t] = bf16_of(x[i * ldx + t]);
        for (size_t t = k; t < ldo; t++) out[i * ldo + t] = 0;
    }
}

void ck_bf16_round_f32(float *x, size_t count) {
    for (size_t i = 0; i < count; i++) x[i] = f32_of(bf16_of(x[i]));
}

void ck_bf16_pack_ref(const float *w, size_t n, size_t k, size_t ldw, uint16_t *packed) {
    const size_t pairs = (k + 1) / 2, panels = (n + PANEL - 1) / PANEL;
    for (size_t j = 0; j < panels; j++)
        for (size_t p = 0; p < pairs; p++)
            for (size_t r = 0; r < PANEL; r++)
                for (size_t e = 0; e < 2; e++) {
                    const size_t row = j * PANEL + r, t = 2 * p + e;
                    packed[((j * pairs + p) * PANEL + r) * 2 + e] = row < n && t < k ? bf16_of(w[row * ldw + t]) : 0;
                }
}

void ck_bf16_gemm_packed_ref(const uint16_t *a, size_t m, size_t lda, const uint16_t *packed, size_t n,
                             size_t k, float *c, size_t ldc, int accumulate) {
    const size_t pairs = (k + 1) / 2;
    for (size_t i = 0; i < m; i++)
        for (size_t col = 0; col < n; col++) {
            const uint16_t *b = packed + ((col / PANEL) * pairs * PANEL + col % PANEL) * 2;
            const uint16_t *x = a + i * lda;
            float acc = 0.0f;
            for (size_t p = 0; p < pairs; p++) {
                const uint16_t *bp = b + p * PANEL * 2;
                const float a1 = 2 * p + 1 < k ? f32_of(x[2 * p + 1]) : 0.0f;
                acc = dp_step(a1, f32_of(bp[1]), acc);
                acc = dp_step(f32_of(x[2 * p]), f32_of(bp[0]), acc);
            }
            c[i * ldc + col] = accumulate ? c[i * ldc + col] + acc : acc;
        }
}

void ck_bf16_gemm_ref(const float *x, size_t m, size_t ldx, const float *w, size_t n, size_t ldw, size_t k,
                      float *c, size_t ldc, int accumulate) {
    const size_t pairs = (k + 1) / 2;
    for (size_t i = 0; i < m; i++)
        for (size_t col = 0; col < n; col++) {
            const float *xr = x + i * ldx, *wr = w + col * ldw;
            float acc = 0.0f;
            for (size_t p = 0; p < pairs; p++) {
                const size_t t = 2 * p;
                if (t + 1 < k) acc = dp_step(f32_of(bf16_of(xr[t + 1])), f32_of(bf16_of(wr[t + 1])), acc);
                else acc = dp_step(0.0f, 0.0f, acc); // the pad pair's zero product
                acc = dp_step(f32_of(bf16_of(xr[t])), f32_of(bf16_of(wr[t])), acc);
            }
            c[i * ldc + col] = accumulate ? c[i * ldc + col] + acc : acc;
        }
}

// ---- AVX512_BF16 -----------------------------------------------------------------------------

#if defined(__x86_64__)
#define CK_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512bf16")))

/// 32 floats (masked: lanes past `count` read as zero) → 16 dwords of bf16 pairs.
CK_INLINE CK_BF16 __m512i bf16_load32(const float *p, size_t count) {
    __m512 lo, hi;
    if (count >= 32) {
        lo = _mm512_loadu_ps(p);
        hi = _mm512_loadu_ps(p + 16);
    } else {
        const __mmask16 m0 = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1);
        const __mmask16 m1 = count > 16 ? (__mmask16)((1u << (count - 16)) - 1) : 0;
        lo = _mm512_maskz_loadu_ps(m0, p);
        hi = m1 ? _mm512_maskz_loadu_ps(m1, p + 16) : _mm512_setzero_ps();
    }
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

CK_BF16 static void bf16_from_f32_avx512(const float *x, size_t m, size_t k, size_t ldx, uint16_t *out, size_t ldo) {
    for (size_t i = 0; i < m; i++) {
        const float *src = x + i * ldx;
        uint16_t *dst = out + i * ldo;
        size_t t = 0;
        for (; t + 32 <= k; t += 32) _mm512_storeu_si512((void *)(dst + t), bf16_load32(src + t, 32));
        if (t < k) {
            const size_t rest = k - t;
            _mm512_mask_storeu_epi16(dst + t, (__mmask32)((1ull << rest) - 1), bf16_load32(src + t, rest));
            t = k;
        }
        for (; t < ldo; t++) dst[t] = 0;
    }
}

/// In place: r[i] (16 dwords each) → the transpose, r[e] = (r0[e], r1[e], …, r15[e]).
CK_INLINE CK_BF16 void transpose16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + j], 128-bit lane L: rows 4i…4i+3, element 4L + j.
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int j = 0; j < 4; j++) {
        const __m512i a = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), b = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
        const __m512i c = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), d = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_shuffle_i32x4(a, c, 0x88);
        r[8 + j] = _mm512_shuffle_i32x4(a, c, 0xDD);
        r[4 + j] = _mm512_shuffle_i32x4(b, d, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(b, d, 0xDD);
    }
}

/// Converts 32 k-values (16 pairs) of 32 rows and writes them transposed into the panel.
CK_BF16 static void bf16_pack_avx512(const float *w, size_t n, size_t k, size_t ldw, uint16_t *packed) {
    const size_t pairs = (k + 1) / 2, panels = (n + PANEL - 1) / PANEL;
    for (size_t j = 0; j < panels; j++) {
        const size_t rows = n - j * PANEL < PANEL ? n - j * PANEL : PANEL;
        uint16_t *panel = packed + j * pairs * PANEL * 2;
        for (size_t t = 0; t < k; t += 32) {
            const size_t count = k - t < 32 ? k - t : 32;
            __m512i lo[16], hi[16];
            for (size_t r = 0; r < 16; r++) {
                lo[r] = r < rows ? bf16_load32(w + (j * PANEL + r) * ldw + t, count) : _mm512_setzero_si512();
                hi[r] = r + 16 < rows ? bf16_load32(w + (j * PANEL + r + 16) * ldw + t, count) : _mm512_setzero_si512();
            }
            transpose16_epi32(lo);
            transpose16_epi32(hi);
            const size_t p0 = t / 2, np = (count + 1) / 2;
            for (size_t p = 0; p < np; p++) {
                _mm512_storeu_si512((void *)(panel + (p0 + p) * PANEL * 2), lo[p]);
                _mm512_storeu_si512((void *)(panel + (p0 + p) * PANEL * 2 + 32), hi[p]);
            }
        }
    }
}

/// MR rows × one 32-column panel, all of k: acc(r, half) += a(r, pair) · panel(pair, half).
CK_INLINE CK_BF16 void bf16_kernel(const int MR, const uint16_t *a, size_t lda, const uint16_t *panel,
                                   size_t pairs, float *c, size_t ldc, size_t cols, int accumulate) {
    __m512 acc[BF_MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (size_t p = 0; p < pairs; p++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(panel + p * 64));
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(panel + p * 64 + 32));
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, a + r * lda + 2 * p, 4);
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
    }
    if (cols == PANEL) {
        for (int r = 0; r < MR; r++) {
            float *cr = c + r * ldc;
            if (accumulate) {
                acc[r][0] = _mm512_add_ps(_mm512_loadu_ps(cr), acc[r][0]);
                acc[r][1] = _mm512_add_ps(_mm512_loadu_ps(cr + 16), acc[r][1]);
            }
            _mm512_storeu_ps(cr, acc[r][0]);
            _mm512_storeu_ps(cr + 16, acc[r][1]);
        }
    } else {
        const __mmask16 m0 = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
        const __mmask16 m1 = cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
        for (int r = 0; r < MR; r++) {
            float *cr = c + r * ldc;
            if (accumulate) {
                acc[r][0] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), acc[r][0]);
                acc[r][1] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), acc[r][1]);
            }
            _mm512_mask_storeu_ps(cr, m0, acc[r][0]);
            _mm512_mask_storeu_ps(cr + 16, m1, acc[r][1]);
        }
    }
}

CK_BF16 static void bf16_kernel_8(const uint16_t *a, size_t lda, const uint16_t *panel, size_t pairs, float *c,
                                  size_t ldc, size_t cols, int accumulate) {
    bf16_kernel(8, a, lda, panel, pairs, c, ldc, cols, accumulate);
}

/// The last 1…7 rows of a block (one instance per row count, so the accumulators stay registers).
CK_BF16 static void bf16_kernel_tail(int mr, const uint16_t *a, size_t lda, const uint16_t *panel, size_t pairs,
                                     float *c, size_t ldc, size_t cols, int accumulate) {
    switch (mr) {
    case 1: bf16_kernel(1, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    case 2: bf16_kernel(2, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    case 3: bf16_kernel(3, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    case 4: bf16_kernel(4, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    case 5: bf16_kernel(5, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    case 6: bf16_kernel(6, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    default: bf16_kernel(7, a, lda, panel, pairs, c, ldc, cols, accumulate); break;
    }
}

CK_BF16 static void bf16_gemm_avx512(const uint16_t *a, size_t m, size_t lda, const uint16_t *packed, size_t n,
                                     size_t k, float *c, size_t ldc, int accumulate) {
    const size_t pairs = (k + 1) / 2, panels = (n + PANEL - 1) / PANEL;
    for (size_t i0 = 0; i0 < m; i0 += BF_MB) {
        const size_t i1 = m - i0 < BF_MB ? m : i0 + BF_MB;
        for (size_t j = 0; j < panels; j++) {
            const uint16_t *panel = packed + j * pairs * PANEL * 2;
            const size_t cols = n - j * PANEL < PANEL ? n - j * PANEL : PANEL;
            size_t i = i0;
            for (; i + BF_MR <= i1; i += BF_MR)
                bf16_kernel_8(a + i * lda, lda, panel, pairs, c + i * ldc + j * PANEL, ldc, cols, accumulate);
            if (i < i1)
                bf16_kernel_tail((int)(i1 - i), a + i * lda, lda, panel, pairs, c + i * ldc + j * PANEL, ldc, cols,
                                 accumulate);
        }
    }
}
#endif

// ---- dispatch ----------------------------------------------------------------------------------

void ck_bf16_from_f32(const float *x, size_t m, size_t k, size_t ldx, uint16_t *out, size_t ldo) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512bf16()) { bf16_from_f32_avx512(x, m, k, ldx, out, ldo); return; }
#endif
    ck_bf16_from_f32_ref(x, m, k, ldx, out, ldo);
}

void ck_bf16_pack(const float *w, size_t n, size_t k, size_t ldw, uint16_t *packed) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512bf16()) { bf16_pack_avx512(w, n, k, ldw, packed); return; }
#endif
    ck_bf16_pack_ref(w, n, k, ldw, packed);
}

void ck_bf16_gemm(const uint16_t *a, size_t m, size_t lda, const uint16_t *packed, size_t n, size_t k,
                  float *c, size_t ldc, int accumulate) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512bf16()) { bf16_gemm_avx512(a, m, lda, packed, n, k, c, ldc, accumulate); return; }
#endif
    ck_bf16_gemm_packed_ref(a, m, lda, packed, n, k, c, ldc, accumulate);
}
