#include "ckernels.h"
#include "binary_kernels.h"
#include "ck_bf16.h"
#include "bf16_emul.h"
#include "x86_common.h"
#include <immintrin.h>

// bf16 decode GEMV of the salient columns of column-masked binary layers (PTQ1.61; see
// binary_kernels.h for the layout and the numerics). Rows are short (≈ 116–308 salient columns),
// so the kernel never reduces across lanes: lane r of a 16-row block holds row r, each
// VDPBF16PS multiplies 16 rows by one column pair whose x̃ pair is broadcast from memory, and
// the per-row affine runs on the 16 accumulators at once.

static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

size_t ck_salient_bf16_words(size_t rows, size_t cols) { return 16 * ceil_div(rows, 16) * ceil_div(cols, 8); }

size_t ck_salient_bf16_x_count(size_t cols) { return 8 * ceil_div(cols, 8); }

/// Word of row r (in its block) and chunk m: bits 4p… = code of column 8m + 2p, bits 16 + 4p… =
/// code of column 8m + 2p + 1 (p = 0…3); 0 past rows or cols.
void ck_salient_bf16_pack(const uint8_t *codes, size_t rows, size_t cols, uint32_t *out) {
    const size_t chunks = ceil_div(cols, 8), blocks = ceil_div(rows, 16);
    for (size_t b = 0; b < blocks; b++)
        for (size_t m = 0; m < chunks; m++)
            for (size_t r = 0; r < 16; r++) {
                const size_t o = 16 * b + r;
                uint32_t w = 0;
                for (size_t c = 0; c < 8 && o < rows; c++) {
                    const size_t j = 8 * m + c;
                    if (j < cols) w |= (uint32_t)(codes[o * cols + j] & 15u) << (16 * (c & 1) + 4 * (c >> 1));
                }
                out[(b * chunks + m) * 16 + r] = w;
            }
}

void ck_salient_bf16_unpack_nibbles(const uint32_t *packed, size_t row_begin, size_t row_count, size_t rows,
                                    size_t cols, uint8_t *out, size_t stride) {
    const size_t chunks = ceil_div(cols, 8);
    for (size_t t = 0; t < row_count; t++) {
        const size_t o = row_begin + t;
        uint8_t *row = out + t * stride;
        for (size_t i = 0; i < stride; i++) row[i] = 0;
        if (o >= rows) continue;
        for (size_t j = 0; j < cols; j++) {
            const size_t c = j & 7;
            const uint32_t w = packed[((o / 16) * chunks + j / 8) * 16 + (o & 15)];
            const uint8_t q = (uint8_t)((w >> (16 * (c & 1) + 4 * (c >> 1))) & 15u);
            row[j >> 1] |= (uint8_t)(q << (4 * (j & 1)));
        }
    }
}

static void prepare(const float *x, size_t cols, uint16_t *xb, float *xsum, int reference) {
    const size_t n = ck_salient_bf16_x_count(cols);
    (reference ? ck_bf16_from_f32_ref : ck_bf16_from_f32)(x, 1, cols, cols, xb, n);
    float s = 0;
    for (size_t j = 0; j < cols; j++) s += f32_of(xb[j]);
    *xsum = s;
}

void ck_salient_bf16_prepare(const float *x, size_t cols, uint16_t *xb, float *xsum) { prepare(x, cols, xb, xsum, 0); }

void ck_salient_bf16_prepare_ref(const float *x, size_t cols, uint16_t *xb, float *xsum) {
    prepare(x, cols, xb, xsum, 1);
}

void ck_gemv_salient_bf16_ref(const uint32_t *packed, size_t block_begin, size_t block_count, size_t rows,
                              size_t cols, const float *scales, const float *zeros, const uint16_t *xb, float xsum,
                              float *y, int accumulate) {
    const size_t chunks = ceil_div(cols, 8);
    for (size_t b = block_begin; b < block_begin + block_count; b++)
        for (size_t r = 0; r < 16 && 16 * b + r < rows; r++) {
            float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}}; // [chunk parity][column pair p of a chunk]
            for (size_t m = 0; m < chunks; m++) {
                const uint32_t w = packed[(b * chunks + m) * 16 + r];
                for (unsigned p = 0; p < 4; p++) {
                    const uint16_t lo = (uint16_t)(0x4300u | ((w >> (4 * p)) & 15u));
                    const uint16_t hi = (uint16_t)(0x4300u | ((w >> (16 + 4 * p)) & 15u));
                    const size_t j = 8 * m + 2 * p;
                    float a = dp_step(f32_of(xb[j + 1]), f32_of(hi), acc[m & 1][p]); // odd element first
                    acc[m & 1][p] = dp_step(f32_of(xb[j]), f32_of(lo), a);
                }
            }
            const size_t o = 16 * b + r;
            float pair[4];
            for (unsigned p = 0; p < 4; p++) pair[p] = acc[0][p] + acc[1][p];
            const float sum = (pair[0] + pair[1]) + (pair[2] + pair[3]);
            const float v = scales[o] * fmaf(-(128.0f + zeros[o]), xsum, sum);
            y[o] = accumulate ? y[o] + v : v;
        }
}

#if defined(__x86_64__)
#define CK_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512bf16")))

// Chunk m (16 rows × 8 columns) into accumulators a0…a3 (pair p → a_p):
// (v >> 4p) & 0x000F000F | 0x43004300 are both codes of pair p as bf16 128 + q.
#define CHUNK(a0, a1, a2, a3, m)                                                                            \
    do {                                                                                                    \
        const __m512i v_ = _mm512_loadu_si512((const void *)(w + 16 * (m)));                              \
        const uint32_t *x4_ = xp + 4 * (m);                                                                 \
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_ternarylogic_epi32(v_, mask, c4300, 0xEA),              \
                              (__m512bh)_mm512_set1_epi32((int)x4_[0]));                                    \
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(v_, 4), mask, c4300, 0xEA), \
                              (__m512bh)_mm512_set1_epi32((int)x4_[1]));                                    \
        a2 = _mm512_dpbf16_ps(a2, (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(v_, 8), mask, c4300, 0xEA), \
                              (__m512bh)_mm512_set1_epi32((int)x4_[2]));                                    \
        a3 = _mm512_dpbf16_ps(a3, (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(v_, 12), mask, c4300, 0xEA), \
                              (__m512bh)_mm512_set1_epi32((int)x4_[3]));                                    \
    } while (0)

CK_BF16 static void gemv_salient_bf16_avx512(const uint32_t *packed, size_t block_begin, size_t block_count,
                                             size_t rows, size_t cols, const float *scales, const float *zeros,
                                             const uint16_t *xb, float xsum, float *y, int accumulate) {
    const size_t chunks = ceil_div(cols, 8);
    const uint32_t *xp = (const uint32_t *)(const void *)xb; // x̃ pairs (even column low)
    const __m512i mask = _mm512_set1_epi32(0x000F000F), c4300 = _mm512_set1_epi32(0x43004300);
    const __m512 vx = _mm512_set1_ps(xsum);
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        const uint32_t *w = packed + b * chunks * 16;
        // Eight accumulators (pair p × chunk parity), two chunks per step: independent VDPBF16PS
        // chains in flight hide the instruction's latency.
        __m512 e0 = _mm512_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, d0 = e0, d1 = e0, d2 = e0, d3 = e0;
        size_t m = 0;
        for (; m + 2 <= chunks; m += 2) {
            CHUNK(e0, e1, e2, e3, m);
            CHUNK(d0, d1, d2, d3, m + 1);
        }
        if (m < chunks) CHUNK(e0, e1, e2, e3, m);
        const __m512 pair0 = _mm512_add_ps(e0, d0), pair1 = _mm512_add_ps(e1, d1);
        const __m512 pair2 = _mm512_add_ps(e2, d2), pair3 = _mm512_add_ps(e3, d3);
        const size_t o = 16 * b, left = rows - o;
        const __mmask16 k = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(pair0, pair1), _mm512_add_ps(pair2, pair3));
        const __m512 c = _mm512_add_ps(_mm512_set1_ps(128.0f), _mm512_maskz_loadu_ps(k, zeros + o));
        const __m512 t = _mm512_fnmadd_ps(c, vx, sum);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, scales + o), t);
        // Folded y += ys (BinaryLinear): the same single float add as the separate pass it replaces.
        if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + o), v);
        _mm512_mask_storeu_ps(y + o, k, v);
    }
}
#endif

void ck_gemv_salient_bf16(const uint32_t *packed, size_t block_begin, size_t block_count, size_t rows, size_t cols,
                          const float *scales, const float *zeros, const uint16_t *xb, float xsum, float *y,
                          int accumulate) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512bf16()) {
        gemv_salient_bf16_avx512(packed, block_begin, block_count, rows, cols, scales, zeros, xb, xsum, y, accumulate);
        return;
    }
#endif
    ck_gemv_salient_bf16_ref(packed, block_begin, block_count, rows, cols, scales, zeros, xb, xsum, y, accumulate);
}
