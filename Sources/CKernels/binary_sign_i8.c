#include "binary_kernels.h"
#include "ck_runtime.h"
#include "x86_common.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// Sign GEMV of column-masked binary layers (PTQ1.61) on int8 activations (issue 13, eleventh
// pass). See binary_kernels.h for the numerics; here, how it runs.
//
// The table GEMV (u4_planes.c, ck_gemv_sign_planes) costs a float table lookup per 4 weights and
// reached 9–10 GB/s of sign bytes on one thread. Here each row's 64 sign bits are a k-mask over
// 64 int8 activations: `vmovdqu8 {k}{z}` keeps x_k where s_k = +1 and `vpdpbusd` against bytes of
// 1 adds them into 16 int32 lanes, so 64 weights cost one mask load, one masked move and one
// dot-product; Σ s·x = 2·Σ_{s=+1} x − Σx. Eight rows share each 64-byte activation load (8
// independent accumulator chains: 15 % faster than 4 in a CPU-time microbenchmark), and each four
// accumulators reduce together (two unpack levels, then the 128-bit lanes).
// All sums are exact int32 (|Σ| ≤ 127·cols < 2^31), so the kernel gives the `_ref` twin's bits.

/// The gather, Σ and absmax of x̃_k = r2_k·x[columns[k]] (shared by both prepares: one order of
/// the float sum). Σ runs as 8 partial sums (k mod 8), combined pairwise: one running sum is a
/// chain of dependent adds and made the gather 2× slower.
static float gather(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb, float *xt, float *sum) {
    float p[8] = {0, 0, 0, 0, 0, 0, 0, 0}, m = 0;
    size_t k = 0;
    for (; k + 8 <= nb; k += 8)
        for (unsigned i = 0; i < 8; i++) {
            const float v = r2[k + i] * x[columns[k + i]], a = fabsf(v);
            xt[k + i] = v;
            p[i] += v;
            m = a > m ? a : m;
        }
    for (unsigned i = 0; k < nb; k++, i++) {
        const float v = r2[k] * x[columns[k]], a = fabsf(v);
        xt[k] = v;
        p[i] += v;
        m = a > m ? a : m;
    }
    *sum = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    return m;
}

static inline int8_t quantize_ref(float v, float inv) {
    long q = lrintf(v * inv);
    return (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
}

void ck_sign_i8_prepare_ref(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb, size_t words_per_row,
                            float *xt, int8_t *xq, CKSignI8Input *in) {
    float sum;
    const float m = gather(x, columns, r2, nb, xt, &sum);
    // m = 0 (all-zero x) or not finite: the codes are 0 (a non-finite x gives y = NaN below).
    const float inv = (m > 0 && isfinite(m)) ? 127.0f / m : 0.0f;
    int32_t qs = 0;
    for (size_t k = 0; k < nb; k++) {
        xq[k] = quantize_ref(xt[k], inv);
        qs += xq[k];
    }
    memset(xq + nb, 0, 64 * words_per_row - nb);
    in->scale = isfinite(m) ? m / 127.0f : m;
    in->q_sum = qs;
    in->x_sum = sum;
}

#if defined(__x86_64__)
#define CK_SIGN_I8 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/// `gather` eight lanes at a time: lane i is the twin's partial sum p[i] (k mod 8, the same adds
/// in the same order; the tail's masked lanes add +0, which changes no partial sum), the same
/// pairwise combine, and the same maximum (`vmaxps` keeps the running m for a NaN, as the twin's
/// compare does).
CK_SIGN_I8 static float gather_512(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb, float *xt,
                                   float *sum) {
    __m256 p = _mm256_setzero_ps(), m = p;
    for (size_t k = 0; k < nb; k += 8) {
        const __mmask8 live = nb - k >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (nb - k)) - 1);
        const __m512i idx = _mm512_maskz_loadu_epi64(live, columns + k);
        const __m256 g = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), live, idx, x, 4);
        const __m256 v = _mm256_mul_ps(_mm256_maskz_loadu_ps(live, r2 + k), g);
        _mm256_mask_storeu_ps(xt + k, live, v);
        p = _mm256_add_ps(p, v);
        m = _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), m);
    }
    float pp[8], mm[8];
    _mm256_storeu_ps(pp, p);
    _mm256_storeu_ps(mm, m);
    *sum = ((pp[0] + pp[1]) + (pp[2] + pp[3])) + ((pp[4] + pp[5]) + (pp[6] + pp[7]));
    float r = 0;
    for (unsigned i = 0; i < 8; i++) r = mm[i] > r ? mm[i] : r;
    return r;
}

CK_SIGN_I8 static void prepare_512(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb,
                                   size_t words_per_row, float *xt, int8_t *xq, CKSignI8Input *in) {
    float sum;
    const float m = gather_512(x, columns, r2, nb, xt, &sum);
    const float inv = (m > 0 && isfinite(m)) ? 127.0f / m : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i qs = _mm512_setzero_si512();
    for (size_t k = 0; k < nb; k += 16) {
        const __mmask16 live = nb - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nb - k)) - 1);
        // cvtps rounds to nearest even (MXCSR default), as lrintf does in the twin.
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(live, xt + k), vinv));
        q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
        qs = _mm512_add_epi32(qs, q);
        _mm_mask_storeu_epi8(xq + k, live, _mm512_cvtepi32_epi8(q));
    }
    memset(xq + nb, 0, 64 * words_per_row - nb);
    in->scale = isfinite(m) ? m / 127.0f : m;
    in->q_sum = _mm512_reduce_add_epi32(qs);
    in->x_sum = sum;
}

/// Row sums of four accumulators: lane i of the result = Σ of c_i's 16 lanes.
CK_SIGN_I8 static inline __m128i reduce4(__m512i c0, __m512i c1, __m512i c2, __m512i c3) {
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(c0, c1), _mm512_unpackhi_epi32(c0, c1));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(c2, c3), _mm512_unpackhi_epi32(c2, c3));
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/// y for rows o … o + 3 from their Σ_{s=+1} q (the twin's operations, four lanes at a time).
CK_SIGN_I8 static inline void store4(__m128i pos, const CKSignI8Input *in, const float *a, const float *b, float *y,
                                     size_t o) {
    const __m128i dot = _mm_sub_epi32(_mm_add_epi32(pos, pos), _mm_set1_epi32(in->q_sum));
    const __m128 t = _mm_mul_ps(_mm_set1_ps(in->scale), _mm_cvtepi32_ps(dot));
    _mm_storeu_ps(y + o, _mm_fmadd_ps(_mm_loadu_ps(a + o), t, _mm_mul_ps(_mm_loadu_ps(b + o), _mm_set1_ps(in->x_sum))));
}

CK_SIGN_I8 static void gemv_sign_i8_512(const uint64_t *signs, size_t wpr, size_t row_begin, size_t row_count,
                                        const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b,
                                        float *y) {
    const __m512i ones = _mm512_set1_epi8(1);
    const size_t end = row_begin + row_count;
    const float bx = in->x_sum;
    size_t o = row_begin;
    // Eight rows a pass: eight independent vpdpbusd chains (its latency) per 64-byte x load.
    for (; o + 8 <= end; o += 8) {
        const uint64_t *w = signs + o * wpr;
        __m512i c[8];
        for (unsigned r = 0; r < 8; r++) c[r] = _mm512_setzero_si512();
        for (size_t k = 0; k < wpr; k++) {
            const __m512i xv = _mm512_loadu_si512(xq + 64 * k);
            for (unsigned r = 0; r < 8; r++)
                c[r] = _mm512_dpbusd_epi32(c[r], ones, _mm512_maskz_mov_epi8((__mmask64)w[r * wpr + k], xv));
        }
        store4(reduce4(c[0], c[1], c[2], c[3]), in, a, b, y, o);
        store4(reduce4(c[4], c[5], c[6], c[7]), in, a, b, y, o + 4);
    }
    for (; o + 4 <= end; o += 4) {
        const uint64_t *w0 = signs + o * wpr, *w1 = w0 + wpr, *w2 = w1 + wpr, *w3 = w2 + wpr;
        __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
        for (size_t k = 0; k < wpr; k++) {
            const __m512i xv = _mm512_loadu_si512(xq + 64 * k);
            c0 = _mm512_dpbusd_epi32(c0, ones, _mm512_maskz_mov_epi8((__mmask64)w0[k], xv));
            c1 = _mm512_dpbusd_epi32(c1, ones, _mm512_maskz_mov_epi8((__mmask64)w1[k], xv));
            c2 = _mm512_dpbusd_epi32(c2, ones, _mm512_maskz_mov_epi8((__mmask64)w2[k], xv));
            c3 = _mm512_dpbusd_epi32(c3, ones, _mm512_maskz_mov_epi8((__mmask64)w3[k], xv));
        }
        store4(reduce4(c0, c1, c2, c3), in, a, b, y, o);
    }
    for (; o < end; o++) {
        const uint64_t *w = signs + o * wpr;
        __m512i c = _mm512_setzero_si512();
        for (size_t k = 0; k < wpr; k++)
            c = _mm512_dpbusd_epi32(c, ones, _mm512_maskz_mov_epi8((__mmask64)w[k], _mm512_loadu_si512(xq + 64 * k)));
        const int32_t dot = 2 * _mm512_reduce_add_epi32(c) - in->q_sum;
        y[o] = fmaf(a[o], in->scale * (float)dot, b[o] * bx);
    }
}
#endif

/// An on-by-default switch: *cached, read from the environment variable `name` at first use
/// (off only for "0").
static int env_switch(int *cached, const char *name) {
    if (*cached < 0) {
        const char *v = getenv(name);
        *cached = !(v && strcmp(v, "0") == 0);
    }
    return *cached;
}

static int sign_i8_switch = -1;

int ck_sign_i8_enabled(void) { return env_switch(&sign_i8_switch, "PTQ_SIGN_I8"); }

void ck_set_sign_i8_enabled(int enabled) { sign_i8_switch = enabled != 0; }

int ck_sign_i8_supported(void) {
#if defined(__x86_64__)
    static int cpu = -1;
    if (cpu < 0) cpu = ck_cpu_has_avx512vnni() && __builtin_cpu_supports("avx512bw");
    return cpu;
#else
    return 0;
#endif
}

void ck_sign_i8_prepare(const float *x, const ptrdiff_t *columns, const float *r2, size_t nb, size_t words_per_row,
                        float *xt, int8_t *xq, CKSignI8Input *in) {
#if defined(__x86_64__)
    if (ck_sign_i8_supported()) {
        prepare_512(x, columns, r2, nb, words_per_row, xt, xq, in);
        return;
    }
#endif
    ck_sign_i8_prepare_ref(x, columns, r2, nb, words_per_row, xt, xq, in);
}

void ck_gemv_sign_i8_ref(const uint64_t *signs, size_t words_per_row, size_t row_begin, size_t row_count,
                         const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b, float *y) {
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint64_t *w = signs + o * words_per_row;
        int32_t pos = 0;
        for (size_t j = 0; j < 64 * words_per_row; j++)
            if ((w[j >> 6] >> (j & 63)) & 1) pos += xq[j];
        const int32_t dot = 2 * pos - in->q_sum;
        y[o] = fmaf(a[o], in->scale * (float)dot, b[o] * in->x_sum);
    }
}

void ck_gemv_sign_i8(const uint64_t *signs, size_t words_per_row, size_t row_begin, size_t row_count,
                     const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b, float *y) {
#if defined(__x86_64__)
    if (ck_sign_i8_supported()) {
        gemv_sign_i8_512(signs, words_per_row, row_begin, row_count, xq, in, a, b, y);
        return;
    }
#endif
    ck_gemv_sign_i8_ref(signs, words_per_row, row_begin, row_count, xq, in, a, b, y);
}

// ---------------------------------------------------------------------------------------------
// Lookup-table form of the same GEMV (issue 13, twelfth pass; T-MAC / bitnet.cpp TL-style).
//
// The k-mask kernel above costs three instructions (mask load, masked move, vpdpbusd) per 64
// weights per row and ran at 12–14 GB/s of sign bytes. Here the sign bits of 16 rows are
// re-laid at load (in place, ck_sign_lut_repack) so one 64-byte load holds, per 128-bit lane l
// and row r, a byte whose low nibble is row r's 4 bits of columns 32c+4l…+3 and whose high
// nibble those of columns 32c+16+4l…+3. Per group of 4 columns a 16-entry table of
// Σ_{bit i set} q_{4g+i} (int16, |T| ≤ 508) is built once per call from the int8 codes, split
// into a low-byte and a high-byte table (ck_sign_lut_tables); `vpshufb` on the nibbles then
// looks up 64 entries × 4 weights at once, and `vpunpck{l,h}bw` of the low/high results gives
// the int16 sums directly. Per 512 weights of 16 rows: one load, three ops for the nibbles,
// four `vpshufb`, four unpacks, four `vpaddw` (vs 24 ops for the k-mask form). int16 sums are
// flushed to int32 every 32 chunks (2·508·32 = 32512 < 2^15), so every sum is exact and the
// result is the twins' bits (ck_gemv_sign_i8_ref on the row-major words, ck_gemv_sign_lut_ref on
// this layout). Rows past the last whole 16-row block stay row-major and run the k-mask kernel.

static int sign_lut_switch = -1;

int ck_sign_lut_enabled(void) { return env_switch(&sign_lut_switch, "PTQ_SIGN_LUT"); }

void ck_set_sign_lut_enabled(int enabled) { sign_lut_switch = enabled != 0; }

/// Row r's nibble of chunk c, lane l, half h (0: columns 32c+4l…, 1: 32c+16+4l…) in row-major words.
static inline unsigned lut_nibble(const uint64_t *row, size_t c, unsigned l, unsigned h) {
    return (unsigned)(row[c >> 1] >> (32 * (c & 1) + 16 * h + 4 * l)) & 15u;
}

int ck_sign_lut_repack(uint64_t *signs, size_t rows, size_t words_per_row) {
    const size_t blocks = rows / 16, wpr = words_per_row;
    if (blocks == 0 || wpr == 0) return 0;
    uint64_t *tmp = malloc(16 * wpr * sizeof(uint64_t));
    if (!tmp) return -1;
    for (size_t blk = 0; blk < blocks; blk++) {
        uint64_t *base = signs + blk * 16 * wpr;
        memcpy(tmp, base, 16 * wpr * sizeof(uint64_t));
        uint8_t *out = (uint8_t *)base;
        for (size_t c = 0; c < 2 * wpr; c++)
            for (unsigned l = 0; l < 4; l++)
                for (unsigned r = 0; r < 16; r++) {
                    const uint64_t *row = tmp + r * wpr;
                    out[64 * c + 16 * l + r] = (uint8_t)(lut_nibble(row, c, l, 0) | lut_nibble(row, c, l, 1) << 4);
                }
    }
    free(tmp);
    return 0;
}

/// Word k of row o from the table layout (or the row-major tail).
static inline uint64_t lut_word(const uint64_t *signs, size_t rows, size_t wpr, size_t o, size_t k) {
    if (o >= (rows & ~(size_t)15)) return signs[o * wpr + k];
    const uint8_t *blk = (const uint8_t *)(signs + (o / 16) * 16 * wpr);
    const unsigned r = (unsigned)(o % 16);
    uint64_t w = 0;
    for (size_t c = 2 * k; c < 2 * k + 2; c++)
        for (unsigned l = 0; l < 4; l++) {
            const uint64_t byte = blk[64 * c + 16 * l + r];
            w |= (byte & 15) << (32 * (c & 1) + 4 * l) | (byte >> 4) << (32 * (c & 1) + 16 + 4 * l);
        }
    return w;
}

void ck_sign_lut_unpack(const uint64_t *signs, size_t rows, size_t words_per_row, size_t row_begin, size_t row_count,
                        uint64_t *out) {
    for (size_t t = 0; t < row_count; t++)
        for (size_t k = 0; k < words_per_row; k++)
            out[t * words_per_row + k] = lut_word(signs, rows, words_per_row, row_begin + t, k);
}

void ck_sign_lut_tables_ref(const int8_t *xq, size_t words_per_row, int8_t *tab) {
    for (size_t g = 0; g < 16 * words_per_row; g++) {
        int8_t *lo = tab + (g / 4) * 128 + 16 * (g % 4), *hi = lo + 64;
        for (unsigned n = 0; n < 16; n++) {
            int t = 0;
            for (unsigned i = 0; i < 4; i++)
                if ((n >> i) & 1) t += xq[4 * g + i];
            lo[n] = (int8_t)(uint8_t)(t & 0xFF);
            hi[n] = (int8_t)(t >> 8);
        }
    }
}

void ck_gemv_sign_lut_ref(const uint64_t *signs, size_t words_per_row, size_t rows, size_t row_begin,
                          size_t row_count, const int8_t *xq, const CKSignI8Input *in, const float *a, const float *b,
                          float *y) {
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        int32_t pos = 0;
        for (size_t k = 0; k < words_per_row; k++) {
            const uint64_t w = lut_word(signs, rows, words_per_row, o, k);
            for (unsigned j = 0; j < 64; j++)
                if ((w >> j) & 1) pos += xq[64 * k + j];
        }
        const int32_t dot = 2 * pos - in->q_sum;
        y[o] = fmaf(a[o], in->scale * (float)dot, b[o] * in->x_sum);
    }
}

#if defined(__x86_64__)
/// Word w of a 32-word vector: column 4·(w/16) + i of the quad (bit i of entry w % 16).
static const uint16_t lut_index[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4},
    {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5},
    {2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6},
    {3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7},
};

CK_SIGN_I8 static void tables_512(const int8_t *xq, size_t wpr, int8_t *tab) {
    // Entry n of a 16-word lane gets x_i where bit i of n is set.
    static const __mmask32 bit[4] = {0xAAAAAAAAu, 0xCCCCCCCCu, 0xF0F0F0F0u, 0xFF00FF00u};
    __m512i idx[4];
    for (unsigned i = 0; i < 4; i++) idx[i] = _mm512_loadu_si512(lut_index[i]);
    const __m512i eight = _mm512_set1_epi16(8);
    for (size_t q = 0; q < 4 * wpr; q++) {
        const __m512i xw = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(xq + 16 * q))));
        __m512i s0 = _mm512_setzero_si512(), s1 = s0;
        for (unsigned i = 0; i < 4; i++) {
            s0 = _mm512_add_epi16(s0, _mm512_maskz_permutexvar_epi16(bit[i], idx[i], xw));
            s1 = _mm512_add_epi16(s1, _mm512_maskz_permutexvar_epi16(bit[i], _mm512_add_epi16(idx[i], eight), xw));
        }
        const __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(s0)), _mm512_cvtepi16_epi8(s1), 1);
        const __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srai_epi16(s0, 8))),
                                              _mm512_cvtepi16_epi8(_mm512_srai_epi16(s1, 8)), 1);
        _mm512_storeu_si512(tab + 128 * q, lo);
        _mm512_storeu_si512(tab + 128 * q + 64, hi);
    }
}

#ifndef CK_LUT_PREFETCH
#define CK_LUT_PREFETCH 4096
#endif
#ifndef CK_LUT_HINT
#define CK_LUT_HINT _MM_HINT_T1
#endif

CK_SIGN_I8 static void gemv_lut_512(const uint64_t *signs, size_t wpr, size_t rows, size_t row_begin,
                                    size_t row_count, const int8_t *xq, const int8_t *tab, const CKSignI8Input *in,
                                    const float *a, const float *b, float *y) {
    const size_t end = row_begin + row_count, rows16 = rows & ~(size_t)15, nch = 2 * wpr;
    const __m512i low4 = _mm512_set1_epi8(15);
    const __m512i qsum = _mm512_set1_epi32(in->q_sum);
    const __m512 scale = _mm512_set1_ps(in->scale), xsum = _mm512_set1_ps(in->x_sum);
    for (size_t blk = row_begin / 16; 16 * blk < end && 16 * blk < rows16; blk++) {
        const uint8_t *s = (const uint8_t *)(signs + blk * 16 * wpr);
        __m512i a32 = _mm512_setzero_si512(), b32 = a32;
        for (size_t c0 = 0; c0 < nch; c0 += 32) {
            const size_t c1 = nch - c0 < 32 ? nch : c0 + 32;
            __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0;
            for (size_t c = c0; c < c1; c++) {
                // One sequential stream: the hardware prefetcher alone left it at ~8 GB/s from DRAM (21 MB
                // of words, one thread). Into L2, 4 KB ahead: 17.5–18.6 GB/s (2 KB into L1: 15–16,
                // 2 KB into L2: 12, 6 KB into L2: 17–20, 4 KB into L1: 15, into L3: 17; k-mask 12–13).
                _mm_prefetch((const char *)(s + 64 * c + CK_LUT_PREFETCH), CK_LUT_HINT);
                const __m512i sv = _mm512_loadu_si512(s + 64 * c);
                const __m512i ilo = _mm512_and_si512(sv, low4), ihi = _mm512_and_si512(_mm512_srli_epi16(sv, 4), low4);
                const int8_t *t = tab + 256 * c;
                const __m512i l0 = _mm512_shuffle_epi8(_mm512_loadu_si512(t), ilo);
                const __m512i h0 = _mm512_shuffle_epi8(_mm512_loadu_si512(t + 64), ilo);
                const __m512i l1 = _mm512_shuffle_epi8(_mm512_loadu_si512(t + 128), ihi);
                const __m512i h1 = _mm512_shuffle_epi8(_mm512_loadu_si512(t + 192), ihi);
                acc0 = _mm512_add_epi16(acc0, _mm512_unpacklo_epi8(l0, h0));
                acc1 = _mm512_add_epi16(acc1, _mm512_unpackhi_epi8(l0, h0));
                acc0 = _mm512_add_epi16(acc0, _mm512_unpacklo_epi8(l1, h1));
                acc1 = _mm512_add_epi16(acc1, _mm512_unpackhi_epi8(l1, h1));
            }
            // acc0: lane l word j = row j's sum over lane l's column groups; acc1: row 8 + j.
            a32 = _mm512_add_epi32(a32, _mm512_add_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc0)),
                                                         _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc0, 1))));
            b32 = _mm512_add_epi32(b32, _mm512_add_epi32(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc1)),
                                                         _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc1, 1))));
        }
        const __m256i pa = _mm256_add_epi32(_mm512_castsi512_si256(a32), _mm512_extracti64x4_epi64(a32, 1));
        const __m256i pb = _mm256_add_epi32(_mm512_castsi512_si256(b32), _mm512_extracti64x4_epi64(b32, 1));
        const __m512i pos = _mm512_inserti64x4(_mm512_castsi256_si512(pa), pb, 1);
        const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(pos, pos), qsum);
        const __m512 t = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(dot));
        const size_t o = 16 * blk, lo = o < row_begin ? row_begin - o : 0, hi = end - o < 16 ? end - o : 16;
        const __mmask16 live = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
        const __m512 yo = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, a + o), t,
                                          _mm512_mul_ps(_mm512_maskz_loadu_ps(live, b + o), xsum));
        _mm512_mask_storeu_ps(y + o, live, yo);
    }
    if (end > rows16) {
        const size_t first = row_begin > rows16 ? row_begin : rows16;
        gemv_sign_i8_512(signs, wpr, first, end - first, xq, in, a, b, y);
    }
}
#endif

void ck_sign_lut_tables(const int8_t *xq, size_t words_per_row, int8_t *tab) {
#if defined(__x86_64__)
    if (ck_sign_i8_supported()) {
        tables_512(xq, words_per_row, tab);
        return;
    }
#endif
    ck_sign_lut_tables_ref(xq, words_per_row, tab);
}

void ck_gemv_sign_lut(const uint64_t *signs, size_t words_per_row, size_t rows, size_t row_begin, size_t row_count,
                      const int8_t *xq, const int8_t *tab, const CKSignI8Input *in, const float *a, const float *b,
                      float *y) {
#if defined(__x86_64__)
    if (ck_sign_i8_supported()) {
        gemv_lut_512(signs, words_per_row, rows, row_begin, row_count, xq, tab, in, a, b, y);
        return;
    }
#endif
    (void)tab;
    ck_gemv_sign_lut_ref(signs, words_per_row, rows, row_begin, row_count, xq, in, a, b, y);
}
