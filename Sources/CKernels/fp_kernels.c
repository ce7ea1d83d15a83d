#include "ckernels.h"
#include "fp_kernels.h"
#include "ck_runtime.h"
#include "x86_common.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

// Minifloat (LLM-FP4) kernels: see fp_kernels.h for the layouts and the exact semantics.

static inline size_t fp_groups(size_t cols, size_t group_size) { return (cols + group_size - 1) / group_size; }
static inline size_t fp_row_bytes(size_t cols, int nibbles) { return nibbles ? (cols + 1) / 2 : cols; }
static inline unsigned fp_code_at(const uint8_t *row, int nibbles, size_t j) {
    if (!nibbles) return row[j];
    const uint8_t b = row[j >> 1];
    return (j & 1) ? (unsigned)(b >> 4) : (unsigned)(b & 0x0F);
}

/// 2^k as a float (k within the normal range).
static inline float fp_pow2(int k) {
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float fp_max_value(int e, int m) { return fp_pow2((1 << e) - 1) * (2.0f - fp_pow2(-m)); }

static inline float fp_round_to_grid(float y, float maxv, int m) {
    if (y != y) return 0.0f;
    float c = y < -maxv ? -maxv : (y > maxv ? maxv : y);
    if (c == 0.0f) return 0.0f;
    int ex;
    (void)frexpf(c, &ex);            // |c| = f * 2^ex with f in [0.5, 1): floor(log2|c|) = ex - 1
    int p = ex - 1 < 1 ? 1 : ex - 1;
    const float step = fp_pow2(p - m);
    return nearbyintf(c / step) * step;  // default rounding mode: to nearest, ties to even
}

void ck_fp_quantize_rows_ref(const float *x, size_t rows, size_t cols, const float *channel_scale,
                             float alpha, int exp_bits, int man_bits, float *out) {
    const float maxv = fp_max_value(exp_bits, man_bits);
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            float t = x[i * cols + j];
            if (channel_scale) t = t / channel_scale[j];
            float q = fp_round_to_grid(t / alpha, maxv, man_bits) * alpha;
            if (channel_scale) q = q * channel_scale[j];
            out[i * cols + j] = q;
        }
    }
}

void ck_fp_gemv_f32_ref(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *table, const float *scales, const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = fp_groups(cols, group_size), stride = fp_row_bytes(cols, nibbles);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        float y_o = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            float dot = 0;
            for (size_t j = j0; j < j1; j++) dot += table[fp_code_at(row, nibbles, j)] * x[j];
            y_o += scales[o * groups + g] * dot;
        }
        y[o] = y_o;
    }
}

void ck_fp_decode_rows_ref(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                           size_t group_size, const float *table, const float *scales, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = fp_groups(cols, group_size), stride = fp_row_bytes(cols, nibbles);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = codes + o * stride;
        for (size_t j = 0; j < cols; j++)
            out[r * cols + j] = scales[o * groups + j / group_size] * table[fp_code_at(row, nibbles, j)];
    }
}

#if defined(__x86_64__)
/// y (already divided by the scale) rounded onto the grid of a format with `m` mantissa bits and
/// largest value vmax, round half to even, NaN to 0: the vector form of fp_round_to_grid, shared
/// by the float and the int16 activation quantizers so both give the reference's values.
CK_INLINE CK_AVX2 __m256 fp_grid8(__m256 yv, __m256 vmax, __m256 vmin, __m256i m) {
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(127);
    const __m256 ordered = _mm256_cmp_ps(yv, yv, _CMP_ORD_Q);
    __m256 c = _mm256_min_ps(_mm256_max_ps(yv, vmin), vmax);
    c = _mm256_and_ps(c, ordered);  // NaN -> 0
    // floor(log2|c|) from the exponent field; zero and subnormals give <= -127, clamped to 1.
    __m256i ex = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(c), 23),
                                                   _mm256_set1_epi32(0xFF)), bias);
    __m256i p = _mm256_max_epi32(ex, one);
    __m256 step = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(p, m), bias), 23));
    return _mm256_mul_ps(_mm256_round_ps(_mm256_div_ps(c, step), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), step);
}

CK_AVX2
static void fp_quantize_rows_avx2(const float *x, size_t rows, size_t cols, const float *channel_scale,
                                  float alpha, int exp_bits, int man_bits, float *out) {
    const float maxv = fp_max_value(exp_bits, man_bits);
    const __m256 vmax = _mm256_set1_ps(maxv), vmin = _mm256_set1_ps(-maxv), va = _mm256_set1_ps(alpha);
    const __m256i m = _mm256_set1_epi32(man_bits);
    for (size_t i = 0; i < rows; i++) {
        const float *xr = x + i * cols;
        float *o = out + i * cols;
        size_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            __m256 t = _mm256_loadu_ps(xr + j);
            __m256 cs = channel_scale ? _mm256_loadu_ps(channel_scale + j) : _mm256_set1_ps(1);
            if (channel_scale) t = _mm256_div_ps(t, cs);
            __m256 q = _mm256_mul_ps(fp_grid8(_mm256_div_ps(t, va), vmax, vmin, m), va);
            if (channel_scale) q = _mm256_mul_ps(q, cs);
            _mm256_storeu_ps(o + j, q);
        }
        for (; j < cols; j++) {
            float t = xr[j];
            if (channel_scale) t = t / channel_scale[j];
            float q = fp_round_to_grid(t / alpha, maxv, man_bits) * alpha;
            if (channel_scale) q = q * channel_scale[j];
            o[j] = q;
        }
    }
}

/// 8 codes starting at column j (j even) of a nibble row as int32 lanes.
CK_AVX2
static inline __m256i fp_nibbles8(const uint8_t *row, size_t j) {
    uint32_t word;
    memcpy(&word, row + (j >> 1), 4);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), _mm256_set1_epi32(0xF));
}

/// table lookup of 8 FP4 codes in registers: magnitude by permute, sign bit (bit 3) by xor.
CK_AVX2
static inline __m256 fp4_lookup(__m256 magnitudes, __m256i idx) {
    __m256 v = _mm256_permutevar8x32_ps(magnitudes, idx);
    __m256i sign = _mm256_slli_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(8)), 28);
    return _mm256_xor_ps(v, _mm256_castsi256_ps(sign));
}

CK_AVX2
static void fp_gemv_avx2(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                         size_t group_size, const float *table, const float *scales, const float *x, float *y) {
    const size_t groups = fp_groups(cols, group_size), stride = fp_row_bytes(cols, nibbles);
    const __m256 mags = nibbles ? _mm256_loadu_ps(table) : _mm256_setzero_ps();
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        float y_o = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
            size_t j = j0;
            if (nibbles) {
                if (j & 1) j = j1;  // odd group start (odd group sizes): scalar below
                else {
                    for (; j + 16 <= j1 && j + 16 <= 2 * stride; j += 16) {
                        acc0 = _mm256_fmadd_ps(fp4_lookup(mags, fp_nibbles8(row, j)), _mm256_loadu_ps(x + j), acc0);
                        acc1 = _mm256_fmadd_ps(fp4_lookup(mags, fp_nibbles8(row, j + 8)), _mm256_loadu_ps(x + j + 8), acc1);
                    }
                    // Only read whole 4-byte words inside the row.
                    for (; j + 8 <= j1 && (j >> 1) + 4 <= stride; j += 8)
                        acc0 = _mm256_fmadd_ps(fp4_lookup(mags, fp_nibbles8(row, j)), _mm256_loadu_ps(x + j), acc0);
                }
            } else {
                for (; j + 8 <= j1; j += 8) {
                    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + j)));
                    acc0 = _mm256_fmadd_ps(_mm256_i32gather_ps(table, idx, 4), _mm256_loadu_ps(x + j), acc0);
                }
            }
            float dot = ck_hsum_ps(_mm256_add_ps(acc0, acc1));
            for (size_t t = (nibbles && (j0 & 1)) ? j0 : j; t < j1; t++) dot += table[fp_code_at(row, nibbles, t)] * x[t];
            y_o += scales[o * groups + g] * dot;
        }
        y[o] = y_o;
    }
}

/// x permuted per 16-column block for the AVX-512 nibble kernels: xp[16b + 2q] = x[16b + q],
/// xp[16b + 2q + 1] = x[16b + q + 8] (q < 8), the lane order in which one 64-bit broadcast of
/// 16 packed nibbles shifted right by 4q per 64-bit lane leaves nibble q in the low bits of
/// dword lane 2q and nibble q + 8 in lane 2q + 1 (cols % 16 == 0).
CK_AVX512VL
static void fp4_permute_x(const float *x, size_t cols, float *xp) {
    const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    for (size_t b = 0; b + 16 <= cols; b += 16)
        _mm512_storeu_ps(xp + b, _mm512_permutexvar_ps(order, _mm512_loadu_ps(x + b)));
}

/// AVX-512 nibble GEMV (cols and groups multiples of 16 columns; the last group may be shorter). Per 16
/// codes: one 64-bit broadcast load, one variable shift per 64-bit lane and one vpermps into
/// the whole 16-entry table (the sign is part of the table): no unpacking or widening shuffles.
/// x is permuted once per call to the lane order this leaves (fp4_permute_x). Each
/// group's 16-lane partial dot is folded into the row accumulator by one FMA with the group's
/// scale (two accumulators by group parity), and the row is reduced once at the end. The float
/// summation order differs from the scalar twin's (as the AVX2 path's does); the tests bound
/// the difference.
CK_AVX512VL
static void fp4_gemv_avx512(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                            size_t group_size, const float *table, const float *scales, const float *xp, float *y) {
    const size_t groups = fp_groups(cols, group_size), stride = cols / 2;
    const __m512 t16 = _mm512_loadu_ps(table);
    const __m512i shifts = _mm512_setr_epi64(0, 4, 8, 12, 16, 20, 24, 28);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        const float *s = scales + o * groups;
        // Two row totals by group parity (each group's partial dot is folded in by one FMA).
        __m512 total0 = _mm512_setzero_ps(), total1 = _mm512_setzero_ps();
        for (size_t g = 0; g < groups; g++) {
            __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps();
            const size_t j1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
            size_t j = g * group_size;
#define FP4_STEP(D, J)                                                                              \
    do {                                                                                            \
        uint64_t w_;                                                                                \
        memcpy(&w_, row + (J) / 2, 8);                                                              \
        const __m512i i_ = _mm512_srlv_epi64(_mm512_set1_epi64((long long)w_), shifts);             \
        D = _mm512_fmadd_ps(_mm512_permutexvar_ps(i_, t16), _mm512_loadu_ps(xp + (J)), D);           \
    } while (0)
            for (; j + 32 <= j1; j += 32) {
                FP4_STEP(d0, j);
                FP4_STEP(d1, j + 16);
            }
            if (j < j1) FP4_STEP(d0, j);
#undef FP4_STEP
            const __m512 d = _mm512_add_ps(d0, d1);
            if (g & 1) total1 = _mm512_fmadd_ps(d, _mm512_set1_ps(s[g]), total1);
            else total0 = _mm512_fmadd_ps(d, _mm512_set1_ps(s[g]), total0);
        }
        y[o] = _mm512_reduce_add_ps(_mm512_add_ps(total0, total1));
    }
}

/// 16 byte codes decoded to floats by the format's definition (fp_kernels.h) instead of a table:
/// magnitude bits m = E << man | M shifted to the float's exponent/mantissa fields with 127 added
/// to the exponent gives 2^E·(1 + M/2^man) for E ≥ 1; for E = 0 the exponent is raised by one
/// more (2 + 2M/2^man) and 2 subtracted (exact), giving the subnormal 2M/2^man; the sign bit is
/// xored in last. No gather and no denormal floats (FTZ/DAZ cannot change it).
CK_AVX512VL
static inline __m512 fp_bytes_decode16(__m128i bytes, __m512i mag_mask, __m512i sub_limit, __m128i mant_shift,
                                       __m128i sign_shift) {
    const __m512i c = _mm512_cvtepu8_epi32(bytes);
    const __m512i mag = _mm512_and_si512(c, mag_mask);
    const __mmask16 sub = _mm512_cmplt_epu32_mask(mag, sub_limit);
    __m512i bits = _mm512_add_epi32(_mm512_sll_epi32(mag, mant_shift), _mm512_set1_epi32(127 << 23));
    bits = _mm512_mask_add_epi32(bits, sub, bits, _mm512_set1_epi32(1 << 23));
    __m512 v = _mm512_castsi512_ps(bits);
    v = _mm512_mask_sub_ps(v, sub, v, _mm512_set1_ps(2.0f));
    const __m512i sign = _mm512_and_si512(_mm512_sll_epi32(c, sign_shift), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign));
}

/// AVX-512 GEMV on one-byte minifloat codes (FP5…FP8, e.g. the FP8 LM head): codes decoded in
/// registers by fp_bytes_decode16 (exactly table[code]), 32 per step into two accumulators,
/// groups of a multiple of 16 columns folded by one FMA with the group scale; columns past the
/// last 16-block of a group go through scalar code on the table.
CK_AVX512VL
static void fp_bytes_gemv_avx512(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                 size_t group_size, int exp_bits, int man_bits, const float *table,
                                 const float *scales, const float *x, float *y) {
    const size_t groups = fp_groups(cols, group_size);
    const __m512i mag_mask = _mm512_set1_epi32((1 << (exp_bits + man_bits)) - 1);
    const __m512i sub_limit = _mm512_set1_epi32(1 << man_bits);
    const __m128i mant_shift = _mm_cvtsi32_si128(23 - man_bits), sign_shift = _mm_cvtsi32_si128(31 - exp_bits - man_bits);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * cols;
        const float *s = scales + o * groups;
        __m512 total0 = _mm512_setzero_ps(), total1 = _mm512_setzero_ps();
        float tail = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            // Four accumulators: one FMA chain per 16 columns would be latency-bound.
            __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps(), d2 = _mm512_setzero_ps(), d3 = _mm512_setzero_ps();
            size_t j = j0;
#define FP8_STEP(D, J)                                                                                          \
    D = _mm512_fmadd_ps(fp_bytes_decode16(_mm_loadu_si128((const __m128i *)(row + (J))), mag_mask, sub_limit,    \
                                          mant_shift, sign_shift),                                              \
                        _mm512_loadu_ps(x + (J)), D)
            for (; j + 64 <= j1; j += 64) {
                FP8_STEP(d0, j);
                FP8_STEP(d1, j + 16);
                FP8_STEP(d2, j + 32);
                FP8_STEP(d3, j + 48);
            }
            for (; j + 16 <= j1; j += 16) FP8_STEP(d0, j);
#undef FP8_STEP
            float dot = 0;
            for (; j < j1; j++) dot += table[row[j]] * x[j];
            const __m512 d = _mm512_add_ps(_mm512_add_ps(d0, d1), _mm512_add_ps(d2, d3));
            if (g & 1) total1 = _mm512_fmadd_ps(d, _mm512_set1_ps(s[g]), total1);
            else total0 = _mm512_fmadd_ps(d, _mm512_set1_ps(s[g]), total0);
            tail += s[g] * dot;
        }
        y[o] = _mm512_reduce_add_ps(_mm512_add_ps(total0, total1)) + tail;
    }
}

CK_AVX2
static void fp_decode_rows_avx2(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                                size_t group_size, const float *table, const float *scales, float *out) {
    const size_t groups = fp_groups(cols, group_size), stride = fp_row_bytes(cols, nibbles);
    const __m256 mags = _mm256_loadu_ps(table);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = codes + o * stride;
        float *dst = out + r * cols;
        size_t j = 0;
        while (j < cols) {
            const size_t g = j / group_size, j1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
            const float s = scales[o * groups + g];
            const __m256 vs = _mm256_set1_ps(s);
            if (nibbles && !(j & 1))
                for (; j + 8 <= j1 && (j >> 1) + 4 <= stride; j += 8)
                    _mm256_storeu_ps(dst + j, _mm256_mul_ps(vs, fp4_lookup(mags, fp_nibbles8(row, j))));
            for (; j < j1; j++) dst[j] = s * table[fp_code_at(row, nibbles, j)];
        }
    }
}

/// ck_fp_quantize_rows_i16 on AVX2: the grid rounding of fp_quantize_rows_avx2 (same operations,
/// so the same values as the reference), times the power-of-two factor (exact), converted to
/// int32 (exact: an integer below 2^15 by the caller's choice of factor) and packed to int16.
/// ck_fp_quantize_rows_i16 (hi == NULL) and ck_fp_quantize_rows_i16x2 on AVX2. The grid integer
/// v = FPround(x/cs/alpha)·factor is exact in float (|v| < 2^24); without hi it is stored as is
/// (the caller's factor keeps it below 2^15), with hi it is split as hi = v·2^-shift truncated
/// toward zero and lo = v - hi·2^shift, both exact.
CK_AVX2
static void fp_quantize_rows_i16_avx2(const float *x, size_t rows, size_t cols, const float *channel_scale,
                                      float alpha, int exp_bits, int man_bits, const float *factor, int shift,
                                      int16_t *lo, int16_t *hi, size_t ldc) {
    const float maxv = fp_max_value(exp_bits, man_bits), up = (float)(1 << shift), down = 1.0f / up;
    const __m256 vmax = _mm256_set1_ps(maxv), vmin = _mm256_set1_ps(-maxv), va = _mm256_set1_ps(alpha);
    const __m256 vup = _mm256_set1_ps(up), vdown = _mm256_set1_ps(down);
    const __m256i m = _mm256_set1_epi32(man_bits);
    for (size_t i = 0; i < rows; i++) {
        const float *xr = x + i * cols;
        int16_t *ol = lo + i * ldc, *oh = hi ? hi + i * ldc : NULL;
        size_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            __m256 t = _mm256_loadu_ps(xr + j);
            if (channel_scale) t = _mm256_div_ps(t, _mm256_loadu_ps(channel_scale + j));
            const __m256 q = fp_grid8(_mm256_div_ps(t, va), vmax, vmin, m);
            const __m256 v = _mm256_mul_ps(q, _mm256_loadu_ps(factor + j));
            __m256i vl;
            if (oh) {
                const __m256 h = _mm256_round_ps(_mm256_mul_ps(v, vdown), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                const __m256i vh = _mm256_cvtps_epi32(h);
                vl = _mm256_cvtps_epi32(_mm256_sub_ps(v, _mm256_mul_ps(h, vup)));
                _mm_storeu_si128((__m128i *)(oh + j),
                                 _mm_packs_epi32(_mm256_castsi256_si128(vh), _mm256_extracti128_si256(vh, 1)));
            } else {
                vl = _mm256_cvtps_epi32(v);
            }
            _mm_storeu_si128((__m128i *)(ol + j),
                             _mm_packs_epi32(_mm256_castsi256_si128(vl), _mm256_extracti128_si256(vl, 1)));
        }
        for (; j < cols; j++) {
            float t = xr[j];
            if (channel_scale) t = t / channel_scale[j];
            const float v = fp_round_to_grid(t / alpha, maxv, man_bits) * factor[j];
            if (oh) {
                const float h = truncf(v * down);
                oh[j] = (int16_t)h;
                ol[j] = (int16_t)(v - h * up);
            } else {
                ol[j] = (int16_t)v;
            }
        }
        for (; j < ldc; j++) {
            ol[j] = 0;
            if (oh) oh[j] = 0;
        }
    }
}
#endif

void ck_fp_quantize_rows(const float *x, size_t rows, size_t cols, const float *channel_scale,
                         float alpha, int exp_bits, int man_bits, float *out) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { fp_quantize_rows_avx2(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, out); return; }
#endif
    ck_fp_quantize_rows_ref(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, out);
}

void ck_fp_gemv_f32(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                    size_t group_size, const float *table, const float *scales, const float *x, float *y) {
    ck_fp_gemv_f32_fmt(codes, nibbles, 0, 0, row_begin, row_count, cols, group_size, table, scales, x, y);
}

void ck_fp_gemv_f32_fmt(const uint8_t *codes, int nibbles, int exp_bits, int man_bits, size_t row_begin,
                        size_t row_count, size_t cols, size_t group_size, const float *table, const float *scales,
                        const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    // The AVX-512 paths follow the VNNI switch (ck_set_vnni_enabled), so tests reach both.
    if (ck_cpu_has_avx512vnni()) {
        if (nibbles && cols % 16 == 0 && group_size % 16 == 0) {
            float *xp = (float *)ck_thread_scratch(6, cols * sizeof(float));
            if (xp) {
                fp4_permute_x(x, cols, xp);
                fp4_gemv_avx512(codes, row_begin, row_count, cols, group_size, table, scales, xp, y);
                return;
            }
        }
        if (!nibbles && exp_bits >= 1 && man_bits >= 0 && exp_bits + man_bits <= 7 && exp_bits <= 7) {
            fp_bytes_gemv_avx512(codes, row_begin, row_count, cols, group_size, exp_bits, man_bits, table, scales, x, y);
            return;
        }
    }
    if (ck_cpu_has_avx2()) { fp_gemv_avx2(codes, nibbles, row_begin, row_count, cols, group_size, table, scales, x, y); return; }
#endif
    ck_fp_gemv_f32_ref(codes, nibbles, row_begin, row_count, cols, group_size, table, scales, x, y);
}

void ck_fp_decode_rows(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                       size_t group_size, const float *table, const float *scales, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (nibbles && ck_cpu_has_avx2()) {
        fp_decode_rows_avx2(codes, nibbles, row_begin, row_count, cols, group_size, table, scales, out);
        return;
    }
#endif
    ck_fp_decode_rows_ref(codes, nibbles, row_begin, row_count, cols, group_size, table, scales, out);
}

void ck_fp_quantize_error_block(const float *w, size_t rows, size_t ld, size_t width, const float *alpha,
                                int exp_bits, int man_bits, float *out) {
    for (size_t r = 0; r < rows; r++) {
        float *o = out + r * width;
        const float *src = w + r * ld;
        ck_fp_quantize_rows(src, 1, width, NULL, alpha[r], exp_bits, man_bits, o);
        for (size_t j = 0; j < width; j++) o[j] -= src[j];
    }
}

void ck_fp_quantize_rows_i8(const float *x, size_t rows, size_t cols, const float *channel_scale,
                            float alpha, int exp_bits, int man_bits, const float *factor, int8_t *codes) {
    const float maxv = fp_max_value(exp_bits, man_bits);
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            float t = x[i * cols + j];
            if (channel_scale) t = t / channel_scale[j];
            codes[i * cols + j] = (int8_t)(fp_round_to_grid(t / alpha, maxv, man_bits) * factor[j]);
        }
    }
}

void ck_fp_quantize_rows_i16_ref(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                                 int exp_bits, int man_bits, const float *factor, int16_t *codes, size_t ldc) {
    ck_fp_quantize_rows_i16x2_ref(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, factor, 0, codes, NULL, ldc);
}

void ck_fp_quantize_rows_i16(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                             int exp_bits, int man_bits, const float *factor, int16_t *codes, size_t ldc) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) {
        fp_quantize_rows_i16_avx2(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, factor, 0, codes, NULL, ldc);
        return;
    }
#endif
    ck_fp_quantize_rows_i16_ref(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, factor, codes, ldc);
}

void ck_fp_quantize_rows_i16x2_ref(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                                   int exp_bits, int man_bits, const float *factor, int shift, int16_t *lo,
                                   int16_t *hi, size_t ldc) {
    const float maxv = fp_max_value(exp_bits, man_bits);
    for (size_t i = 0; i < rows; i++) {
        for (size_t j = 0; j < cols; j++) {
            float t = x[i * cols + j];
            if (channel_scale) t = t / channel_scale[j];
            // The exact integer (|v| < 2^24), split with integer arithmetic: C's division truncates
            // toward zero, as the vector path's rounding does.
            // Without hi (ck_fp_quantize_rows_i16_ref) v is stored whole.
            const int32_t v = (int32_t)(fp_round_to_grid(t / alpha, maxv, man_bits) * factor[j]);
            const int32_t h = hi ? v / (1 << shift) : 0;
            if (hi) hi[i * ldc + j] = (int16_t)h;
            lo[i * ldc + j] = (int16_t)(v - h * (1 << shift));
        }
        for (size_t j = cols; j < ldc; j++) {
            lo[i * ldc + j] = 0;
            if (hi) hi[i * ldc + j] = 0;
        }
    }
}

void ck_fp_quantize_rows_i16x2(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                               int exp_bits, int man_bits, const float *factor, int shift, int16_t *lo, int16_t *hi,
                               size_t ldc) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) {
        fp_quantize_rows_i16_avx2(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, factor, shift, lo, hi, ldc);
        return;
    }
#endif
    ck_fp_quantize_rows_i16x2_ref(x, rows, cols, channel_scale, alpha, exp_bits, man_bits, factor, shift, lo, hi, ldc);
}
