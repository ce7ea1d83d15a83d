// bf16 decode GEMVs of weight-only u4/u8 layers; see ck_bf16_gemv.h for the numerics, the order
// of operations the `_ref` twins emulate, and the error bound. The fast path needs AVX512_BF16
// and is reached only after the run-time check (ck_bf16_gemv_supported).
#include "ck_bf16_gemv.h"
#include "ck_bf16.h"
#include "bf16_emul.h"
#include "x86_common.h"
#include <math.h>
#include <string.h>

static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

static inline size_t eff_group(size_t cols, size_t group_size) {
    return (group_size == 0 || group_size > cols) ? (cols ? cols : 1) : group_size;
}

size_t ck_bf16_gemv_x_count(size_t cols) { return ceil_div(cols ? cols : 1, 64) * 64; }

size_t ck_bf16_gemv_error_terms(size_t cols, size_t group_size) {
    return cols / 16 + ceil_div(cols, eff_group(cols, group_size)) + 12;
}

int ck_bf16_gemv_supported(int u4, size_t cols, size_t group_size) {
    const size_t g = eff_group(cols, group_size), block = u4 ? 64 : 32;
    return cols > 0 && ck_cpu_has_avx512bf16() && (g >= cols || g % block == 0);
}

/// The offset c of a code stream: 128 per nibble; u8 adds 16·128 for the high nibble.
static inline float code_offset(int u4) { return u4 ? 128.0f : 2176.0f; }

/// Z = Σ_g fma(s_g, (c + z_g)·X_g, Z) of one row (shared by both paths: same bits).
static inline float zero_term(const float *s, const float *z, const float *xsums, size_t groups, float c) {
    float acc = 0.0f;
    for (size_t g = 0; g < groups; g++) {
        const float t = (c + z[g]) * xsums[g];
        acc = fmaf(s[g], t, acc);
    }
    return acc;
}

/// The hsum16 tree of ck_bf16_gemv.h on 16 lanes.
static float hsum16_ref(const float v[16]) {
    float t8[8], t4[4], t2[2];
    for (int i = 0; i < 8; i++) t8[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) t4[i] = t8[i] + t8[i + 4];
    for (int i = 0; i < 2; i++) t2[i] = t4[i] + t4[i + 2];
    return t2[0] + t2[1];
}

// ---- scalar twins ----------------------------------------------------------------------------

/// Where column c's x̃ sits in a prepared row (u4: per 64-column block, even columns first).
static inline size_t x_slot(int u4, size_t c) {
    return u4 ? (c & ~(size_t)63) + ((c & 1) ? 32 : 0) + ((c & 63) >> 1) : c;
}


void ck_bf16_gemv_prepare_ref(int u4, const float *x, size_t cols, size_t group_size, uint16_t *xb, float *xsums) {
    const size_t n = ck_bf16_gemv_x_count(cols), g = eff_group(cols, group_size), groups = ceil_div(cols, g);
    for (size_t j = 0; j < n; j++) xb[j] = 0;
    for (size_t c = 0; c < cols; c++) xb[x_slot(u4, c)] = bf16_of(x[c]);
    for (size_t grp = 0; grp < groups; grp++) {
        const size_t j0 = grp * g, j1 = j0 + g < cols ? j0 + g : cols;
        float lane[16] = {0};
        for (size_t j = j0; j < j0 + 16 * ceil_div(j1 - j0, 16); j++)
            lane[(j - j0) & 15] += j < j1 ? f32_of(bf16_of(x[j])) : 0.0f;
        xsums[grp] = hsum16_ref(lane);
    }
}

/// One row of either format. A block starts at column j (its group's start + a multiple of the
/// block); its 16-bit lane i is byte i of the block's codes: u4 columns j + 2i (low-nibble
/// stream) and j + 2i + 1 (high), u8 column j + i (both streams). Lanes past the group's end
/// have code 0 and x̃ 0, as the kernel's masked loads and zero padding give. Supported shapes
/// reproduce the kernel; the others (which the kernel never runs) get the same well-defined sums.
static float gemv_row_ref(int u4, const uint8_t *row, size_t cols, size_t g, const float *s, const float *z,
                          const uint16_t *xb, const float *xsums) {
    const size_t groups = ceil_div(cols, g), block = u4 ? 64 : 32;
    float total[16] = {0};
    for (size_t grp = 0; grp < groups; grp++) {
        const size_t j0 = grp * g, j1 = j0 + g < cols ? j0 + g : cols, nb = ceil_div(j1 - j0, block);
        float acc[2][2][16] = {{{0}}}; // [stream][block parity][lane]
        for (size_t b = 0; b < nb; b++) {
            const size_t j = j0 + b * block;
            for (unsigned l = 0; l < 16; l++) {
                for (unsigned st = 0; st < 2; st++) {
                    float a = acc[st][b & 1][l];
                    for (int e = 1; e >= 0; e--) { // odd element first
                        const size_t i = 2 * l + (size_t)e, col = u4 ? j + 2 * i + st : j + i;
                        unsigned n = 0;
                        uint16_t xe = 0;
                        if (col < j1) {
                            const unsigned q = u4 ? (row[col >> 1] >> (4 * (col & 1))) & 15u : row[col];
                            n = u4 ? q : st == 0 ? (q & 15u) : (q >> 4);
                            xe = xb[x_slot(u4, col)];
                        }
                        a = dp_step(f32_of(xe), f32_of((uint16_t)(0x4300u | n)), a);
                    }
                    acc[st][b & 1][l] = a;
                }
            }
        }
        const float sg = s[grp];
        for (unsigned l = 0; l < 16; l++) {
            const float lo = acc[0][0][l] + acc[0][1][l], hi = acc[1][0][l] + acc[1][1][l];
            const float d = u4 ? lo + hi : fmaf(16.0f, hi, lo);
            total[l] = fmaf(sg, d, total[l]);
        }
    }
    return hsum16_ref(total) - zero_term(s, z, xsums, groups, code_offset(u4));
}

static void gemv_bf16_ref(int u4, const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                          size_t group_size, const float *scales, const float *zeros, const uint16_t *xb,
                          const float *xsums, float *y) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g);
    const size_t stride = u4 ? (cols + 1) / 2 : cols;
    for (size_t o = row_begin; o < row_begin + row_count; o++)
        y[o] = gemv_row_ref(u4, codes + o * stride, cols, g, scales + o * groups, zeros + o * groups, xb, xsums);
}

void ck_gemv_u4_bf16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y) {
    gemv_bf16_ref(1, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}

void ck_gemv_u8_bf16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y) {
    gemv_bf16_ref(0, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}

// ---- AVX512_BF16 -----------------------------------------------------------------------------

#if defined(__x86_64__)
#define CK_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512bf16")))

/// hsum16 with the reference's tree.
CK_INLINE CK_BF16 float hsum16(__m512 v) {
    const __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
}

/// The 16-bit lanes' bf16 values as floats: lanes 0…15 (`high` 0) or 16…31.
CK_INLINE CK_BF16 __m512 bf16_lanes_ps(__m512i v, int high) {
    const __m256i h = high ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

CK_BF16 static void prepare_avx512(int u4, const float *x, size_t cols, size_t group_size, uint16_t *xb,
                                   float *xsums) {
    const size_t n = ck_bf16_gemv_x_count(cols), g = eff_group(cols, group_size), groups = ceil_div(cols, g);
    // Even then odd elements of the 64 bf16 values (a, b): the u4 streams' x̃ order.
    __m512i even, odd;
    {
        uint16_t e[32], o[32];
        for (int i = 0; i < 32; i++) e[i] = (uint16_t)(2 * i), o[i] = (uint16_t)(2 * i + 1);
        even = _mm512_loadu_si512((const void *)e);
        odd = _mm512_loadu_si512((const void *)o);
    }
    // Groups start on multiples of 16 columns in every supported shape, but the lane sums must
    // follow any group size: a group's lanes restart at its first column.
    __m512 lane = _mm512_setzero_ps();
    size_t grp = 0, gend = g < cols ? g : cols;
    for (size_t j = 0; j < n; j += 64) {
        __m512 f[4];
        for (int q = 0; q < 4; q++) {
            const size_t at = j + 16 * (size_t)q;
            const size_t cnt = at >= cols ? 0 : cols - at < 16 ? cols - at : 16;
            f[q] = _mm512_maskz_loadu_ps((__mmask16)((1u << cnt) - 1), x + at);
        }
        const __m512i b0 = (__m512i)_mm512_cvtne2ps_pbh(f[1], f[0]), b1 = (__m512i)_mm512_cvtne2ps_pbh(f[3], f[2]);
        if (u4) {
            _mm512_storeu_si512((void *)(xb + j), _mm512_permutex2var_epi16(b0, even, b1));
            _mm512_storeu_si512((void *)(xb + j + 32), _mm512_permutex2var_epi16(b0, odd, b1));
        } else {
            _mm512_storeu_si512((void *)(xb + j), b0);
            _mm512_storeu_si512((void *)(xb + j + 32), b1);
        }
        if (g % 16 != 0) continue; // lane sums below, per column
        for (int q = 0; q < 4; q++) {
            const size_t at = j + 16 * (size_t)q;
            if (at >= cols) break;
            lane = _mm512_add_ps(lane, bf16_lanes_ps(q < 2 ? b0 : b1, q & 1));
            if (at + 16 >= gend) {
                xsums[grp++] = hsum16(lane);
                lane = _mm512_setzero_ps();
                gend = gend + g < cols ? gend + g : cols;
            }
        }
    }
    if (g % 16 != 0) { // one group per row of a width that is not a multiple of 16
        for (grp = 0; grp < groups; grp++) {
            const size_t j0 = grp * g, j1 = j0 + g < cols ? j0 + g : cols;
            float l[16] = {0};
            for (size_t j = j0; j < j0 + 16 * ceil_div(j1 - j0, 16); j++) l[(j - j0) & 15] += j < j1 ? f32_of(bf16_of(x[j])) : 0.0f;
            xsums[grp] = hsum16_ref(l);
        }
    }
}

/// One group of one row: `nb` blocks from column j0 (u4: 64 columns, u8: 32), `valid` columns.
CK_INLINE CK_BF16 __m512 group_dot(const int u4, const uint8_t *row, const uint16_t *xb, size_t j0, size_t nb,
                                   size_t valid) {
    const __m512i m0f = _mm512_set1_epi16(0x0F), c4300 = _mm512_set1_epi16(0x4300);
    __m512 lo0 = _mm512_setzero_ps(), lo1 = _mm512_setzero_ps(), hi0 = _mm512_setzero_ps(), hi1 = _mm512_setzero_ps();
    const size_t block = u4 ? 64 : 32;
    for (size_t b = 0; b < nb; b++) {
        const size_t j = j0 + b * block, at = u4 ? j / 2 : j;
        const size_t left = valid - b * block, bytes = left >= block ? 32 : u4 ? (left + 1) / 2 : left;
        const __m256i raw = bytes == 32 ? _mm256_loadu_si256((const __m256i *)(row + at))
                                        : _mm256_maskz_loadu_epi8((__mmask32)((1ull << bytes) - 1), row + at);
        const __m512i v = _mm512_cvtepu8_epi16(raw);
        // (v & 0x0F) | 0x4300 = bf16(128 + low nibble); v >> 4 | 0x4300 = bf16(128 + high nibble).
        const __m512bh lo = (__m512bh)_mm512_ternarylogic_epi32(v, m0f, c4300, 0xEA);
        const __m512bh hi = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(v, 4), c4300);
        const __m512bh xl = (__m512bh)_mm512_loadu_si512((const void *)(xb + j));
        const __m512bh xh = u4 ? (__m512bh)_mm512_loadu_si512((const void *)(xb + j + 32)) : xl;
        if (b & 1) {
            lo1 = _mm512_dpbf16_ps(lo1, xl, lo);
            hi1 = _mm512_dpbf16_ps(hi1, xh, hi);
        } else {
            lo0 = _mm512_dpbf16_ps(lo0, xl, lo);
            hi0 = _mm512_dpbf16_ps(hi0, xh, hi);
        }
    }
    const __m512 lo = _mm512_add_ps(lo0, lo1), hi = _mm512_add_ps(hi0, hi1);
    return u4 ? _mm512_add_ps(lo, hi) : _mm512_fmadd_ps(_mm512_set1_ps(16.0f), hi, lo);
}

CK_INLINE CK_BF16 void gemv_bf16_avx512(const int u4, const uint8_t *codes, size_t row_begin, size_t row_count,
                                        size_t cols, size_t group_size, const float *scales, const float *zeros,
                                        const uint16_t *xb, const float *xsums, float *y) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), block = u4 ? 64 : 32;
    const size_t stride = u4 ? (cols + 1) / 2 : cols, full = cols / g, nbf = g / block;
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        const float *s = scales + o * groups, *z = zeros + o * groups;
        __m512 total = _mm512_setzero_ps();
        size_t grp = 0;
        if (nbf == 2) { // g128 (u4) / g64 (u8): the group loop unrolls
            for (; grp < full; grp++)
                total = _mm512_fmadd_ps(_mm512_set1_ps(s[grp]), group_dot(u4, row, xb, grp * g, 2, g), total);
        } else if (nbf == 4) { // g256 / g128
            for (; grp < full; grp++)
                total = _mm512_fmadd_ps(_mm512_set1_ps(s[grp]), group_dot(u4, row, xb, grp * g, 4, g), total);
        }
        for (; grp < groups; grp++) {
            const size_t j0 = grp * g, valid = (j0 + g < cols ? j0 + g : cols) - j0;
            total = _mm512_fmadd_ps(_mm512_set1_ps(s[grp]), group_dot(u4, row, xb, j0, ceil_div(valid, block), valid),
                                    total);
        }
        y[o] = hsum16(total) - zero_term(s, z, xsums, groups, code_offset(u4));
    }
}

CK_BF16 static void gemv_u4_bf16_avx512(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                        size_t group_size, const float *scales, const float *zeros,
                                        const uint16_t *xb, const float *xsums, float *y) {
    gemv_bf16_avx512(1, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}

CK_BF16 static void gemv_u8_bf16_avx512(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                        size_t group_size, const float *scales, const float *zeros,
                                        const uint16_t *xb, const float *xsums, float *y) {
    gemv_bf16_avx512(0, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}
#endif

// ---- dispatch ----------------------------------------------------------------------------------

void ck_bf16_gemv_prepare(int u4, const float *x, size_t cols, size_t group_size, uint16_t *xb, float *xsums) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512bf16()) { prepare_avx512(u4, x, cols, group_size, xb, xsums); return; }
#endif
    ck_bf16_gemv_prepare_ref(u4, x, cols, group_size, xb, xsums);
}

/// The AVX512_BF16 kernel where it takes the shape, else the scalar twin (same bits).
static void gemv_bf16(int u4, const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                      size_t group_size, const float *scales, const float *zeros, const uint16_t *xb,
                      const float *xsums, float *y) {
#if defined(__x86_64__)
    if (ck_bf16_gemv_supported(u4, cols, group_size)) {
        (u4 ? gemv_u4_bf16_avx512 : gemv_u8_bf16_avx512)(codes, row_begin, row_count, cols, group_size, scales,
                                                         zeros, xb, xsums, y);
        return;
    }
#endif
    gemv_bf16_ref(u4, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}

void ck_gemv_u4_bf16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y) {
    gemv_bf16(1, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}

void ck_gemv_u8_bf16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const float *scales, const float *zeros, const uint16_t *xb, const float *xsums, float *y) {
    gemv_bf16(0, codes, row_begin, row_count, cols, group_size, scales, zeros, xb, xsums, y);
}
