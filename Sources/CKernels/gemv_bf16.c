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

size_t ck_bf16_gemv_x_count(size_t cols) { return ceil_div(cols ? cols : 1, 128) * 128; }

size_t ck_bf16_gemv_error_terms(size_t cols, size_t group_size) {
    return cols / 16 + ceil_div(cols, eff_group(cols, group_size)) + 12;
}

/// Columns per 64-byte block of codes: 128 nibbles (u4) or 64 bytes (u8).
static inline size_t block_cols(int u4) { return u4 ? 128 : 64; }

int ck_bf16_gemv_supported(int u4, size_t cols, size_t group_size) {
    const size_t g = eff_group(cols, group_size);
    return cols > 0 && ck_cpu_has_avx512bf16() && (g >= cols || g % block_cols(u4) == 0);
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

/// Where column c's x̃ sits in a prepared row: u4 per 128-column block the four streams of
/// columns 4k, 4k + 1, 4k + 2, 4k + 3 (k = 0…31); u8 per 64-column block the even then the odd
/// columns.
static inline size_t x_slot(int u4, size_t c) {
    return u4 ? (c & ~(size_t)127) + 32 * (c & 3) + ((c & 127) >> 2)
              : (c & ~(size_t)63) + ((c & 1) ? 32 : 0) + ((c & 63) >> 1);
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

/// One row of either format. A block of 64 code bytes starts at column j (its group's start +
/// a multiple of the block); its 16-bit word i (bytes 2i, 2i + 1) holds four nibbles, stream
/// st = 0…3 the one at bits 4·st: u4 column j + 4i + st; u8 column j + 2i + st/2, its low
/// (st even) or high nibble. Streams 0 and 2 go to accumulator 0, 1 and 3 to accumulator 1;
/// word i is element i of dword lane i/2. Lanes past the group's end have code 0 and x̃ 0, as
/// the kernel's masked loads and zero padding give. Supported shapes reproduce the kernel; the
/// others (which the kernel never runs) get the same well-defined sums.
static float gemv_row_ref(int u4, const uint8_t *row, size_t cols, size_t g, const float *s, const float *z,
                          const uint16_t *xb, const float *xsums) {
    const size_t groups = ceil_div(cols, g), block = block_cols(u4);
    float total[16] = {0};
    for (size_t grp = 0; grp < groups; grp++) {
        const size_t j0 = grp * g, j1 = j0 + g < cols ? j0 + g : cols;
        float acc[2][16] = {{0}};
        for (size_t j = j0; j < j1; j += block) {
            for (unsigned st = 0; st < 4; st++) {
                for (unsigned l = 0; l < 16; l++) {
                    float a = acc[st & 1][l];
                    for (int e = 1; e >= 0; e--) { // odd element first
                        const size_t i = 2 * l + (size_t)e, col = u4 ? j + 4 * i + st : j + 2 * i + st / 2;
                        unsigned n = 0;
                        uint16_t xe = 0;
                        if (col < j1) {
                            const unsigned q = u4 ? (row[col >> 1] >> (4 * (col & 1))) & 15u : row[col];
                            n = u4 ? q : (st & 1) ? (q >> 4) : (q & 15u);
                            xe = xb[x_slot(u4, col)];
                        }
                        a = dp_step(f32_of(xe), f32_of((uint16_t)(0x4300u | n)), a);
                    }
                    acc[st & 1][l] = a;
                }
            }
        }
        const float sg = s[grp];
        for (unsigned l = 0; l < 16; l++) {
            const float d = u4 ? acc[0][l] + acc[1][l] : fmaf(16.0f, acc[1][l], acc[0][l]);
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

/// hsum16 of four rows at once, each with the reference's tree: [hsum16(a), …, hsum16(d)].
CK_INLINE CK_BF16 __m128 hsum16x4(__m512 a, __m512 b, __m512 c, __m512 d) {
#define CK_T4(v)                                                                                              \
    ({                                                                                                        \
        const __m256 t8_ = _mm256_add_ps(_mm512_castps512_ps256(v),                                           \
                                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));  \
        _mm_add_ps(_mm256_castps256_ps128(t8_), _mm256_extractf128_ps(t8_, 1));                                \
    })
    const __m128 ta = CK_T4(a), tb = CK_T4(b), tc = CK_T4(c), td = CK_T4(d);
#undef CK_T4
    // t2 = [t4[0] + t4[2], t4[1] + t4[3]] of two rows side by side, then t2[0] + t2[1] per row.
    const __m128 ab = _mm_add_ps(_mm_castpd_ps(_mm_unpacklo_pd(_mm_castps_pd(ta), _mm_castps_pd(tb))),
                                 _mm_castpd_ps(_mm_unpackhi_pd(_mm_castps_pd(ta), _mm_castps_pd(tb))));
    const __m128 cd = _mm_add_ps(_mm_castpd_ps(_mm_unpacklo_pd(_mm_castps_pd(tc), _mm_castps_pd(td))),
                                 _mm_castpd_ps(_mm_unpackhi_pd(_mm_castps_pd(tc), _mm_castps_pd(td))));
    return _mm_hadd_ps(ab, cd);
}

/// The 16-bit lanes' bf16 values as floats: lanes 0…15 (`high` 0) or 16…31.
CK_INLINE CK_BF16 __m512 bf16_lanes_ps(__m512i v, int high) {
    const __m256i h = high ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

CK_BF16 static void prepare_avx512(int u4, const float *x, size_t cols, size_t group_size, uint16_t *xb,
                                   float *xsums) {
    const size_t n = ck_bf16_gemv_x_count(cols), g = eff_group(cols, group_size), groups = ceil_div(cols, g);
    // Even then odd elements of the 64 bf16 values (a, b).
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
    for (size_t j = 0; j < n; j += 128) {
        __m512i b[4]; // bf16 of columns j + 32t … j + 32t + 31
        for (int t = 0; t < 4; t++) {
            __m512 f[2];
            for (int h = 0; h < 2; h++) {
                const size_t at = j + 32 * (size_t)t + 16 * (size_t)h;
                const size_t cnt = at >= cols ? 0 : cols - at < 16 ? cols - at : 16;
                f[h] = _mm512_maskz_loadu_ps((__mmask16)((1u << cnt) - 1), x + at);
            }
            b[t] = (__m512i)_mm512_cvtne2ps_pbh(f[1], f[0]);
        }
        // Even and odd columns of each 64-column half: the u8 layout, and the u4 one's first step.
        const __m512i e0 = _mm512_permutex2var_epi16(b[0], even, b[1]), o0 = _mm512_permutex2var_epi16(b[0], odd, b[1]);
        const __m512i e1 = _mm512_permutex2var_epi16(b[2], even, b[3]), o1 = _mm512_permutex2var_epi16(b[2], odd, b[3]);
        if (u4) { // columns 4k, 4k + 1, 4k + 2, 4k + 3
            _mm512_storeu_si512((void *)(xb + j), _mm512_permutex2var_epi16(e0, even, e1));
            _mm512_storeu_si512((void *)(xb + j + 32), _mm512_permutex2var_epi16(o0, even, o1));
            _mm512_storeu_si512((void *)(xb + j + 64), _mm512_permutex2var_epi16(e0, odd, e1));
            _mm512_storeu_si512((void *)(xb + j + 96), _mm512_permutex2var_epi16(o0, odd, o1));
        } else {
            _mm512_storeu_si512((void *)(xb + j), e0);
            _mm512_storeu_si512((void *)(xb + j + 32), o0);
            _mm512_storeu_si512((void *)(xb + j + 64), e1);
            _mm512_storeu_si512((void *)(xb + j + 96), o1);
        }
        if (g % 16 != 0) continue; // lane sums below, per column
        for (int q = 0; q < 8; q++) {
            const size_t at = j + 16 * (size_t)q;
            if (at >= cols) break;
            lane = _mm512_add_ps(lane, bf16_lanes_ps(b[q >> 1], q & 1));
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

/// Prefetch distance in passes of four rows (measured: 1 as good for u8, 5 % worse for u4; 4 no
/// better; prefetcht1 instead of t0 lost most of the gain).
#define CK_GEMV_PF 2

/// R rows (1…4) from row o, sharing each block's x̃ loads. Per block and row: one 64-byte load,
/// four nibble streams (three shifts, four `vpternlogd`/OR: bf16(128 + n) = 0x4300 | n), four
/// VDPBF16PS into two accumulators; per group one FMA by the scale; per row one hsum.
CK_INLINE CK_BF16 void rows_bf16(const int u4, const int R, const uint8_t *codes, size_t o, size_t cols, size_t g,
                                 const float *scales, const float *zeros, const uint16_t *xb, const float *xsums,
                                 float *y) {
    const size_t groups = ceil_div(cols, g), block = block_cols(u4), stride = u4 ? (cols + 1) / 2 : cols;
    const __m512i m0f = _mm512_set1_epi16(0x0F), c4300 = _mm512_set1_epi16(0x4300);
    // x̃ of streams 0…3: u4 four runs of 32; u8 the even run (low and high nibble of the even
    // column's byte), then the odd one.
    const size_t xo1 = u4 ? 32 : 0, xo2 = u4 ? 64 : 32, xo3 = u4 ? 96 : 32;
    __m512 total[4];
    for (int r = 0; r < R; r++) total[r] = _mm512_setzero_ps();
    for (size_t grp = 0; grp < groups; grp++) {
        const size_t j0 = grp * g, j1 = j0 + g < cols ? j0 + g : cols;
        __m512 a0[4], a1[4];
        for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
        for (size_t j = j0; j < j1; j += block) {
            const __m512bh x0 = (__m512bh)_mm512_loadu_si512((const void *)(xb + j));
            const __m512bh x1 = (__m512bh)_mm512_loadu_si512((const void *)(xb + j + xo1));
            const __m512bh x2 = (__m512bh)_mm512_loadu_si512((const void *)(xb + j + xo2));
            const __m512bh x3 = (__m512bh)_mm512_loadu_si512((const void *)(xb + j + xo3));
            const size_t at = u4 ? j / 2 : j, left = j1 - j;
            // Four rows at once read four interleaved short runs, which the hardware prefetchers
            // do not follow (the u8 head ran at 8 GB/s without this): fetch the rows CK_GEMV_PF
            // passes ahead in address order, four lines a block, which covers a pass's codes.
            if (R == 4) {
                const char *pf = (const char *)(codes + (o + 4 * CK_GEMV_PF) * stride + 4 * at);
                for (int k = 0; k < 4; k++) _mm_prefetch(pf + 64 * k, _MM_HINT_T0);
            }
            const size_t bytes = left >= block ? 64 : u4 ? (left + 1) / 2 : left;
            if (bytes <= 32 && j == j0) { // a group's only, half-empty block (g128 on 576 columns):
                // 256 bits; the other lanes would add codes times x̃ = 0 to zero accumulators.
                const __m256i m0f8 = _mm512_castsi512_si256(m0f), c43008 = _mm512_castsi512_si256(c4300);
                for (int r = 0; r < R; r++) {
                    const __m256i w = _mm256_maskz_loadu_epi8((__mmask32)((1ull << bytes) - 1),
                                                              codes + (o + (size_t)r) * stride + at);
                    const __m256bh n0 = (__m256bh)_mm256_ternarylogic_epi32(w, m0f8, c43008, 0xEA);
                    const __m256bh n1 = (__m256bh)_mm256_ternarylogic_epi32(_mm256_srli_epi16(w, 4), m0f8, c43008, 0xEA);
                    const __m256bh n2 = (__m256bh)_mm256_ternarylogic_epi32(_mm256_srli_epi16(w, 8), m0f8, c43008, 0xEA);
                    const __m256bh n3 = (__m256bh)_mm256_or_si256(_mm256_srli_epi16(w, 12), c43008);
                    __m256 b0 = _mm256_dpbf16_ps(_mm256_setzero_ps(), (__m256bh)_mm512_castsi512_si256((__m512i)x0), n0);
                    __m256 b1 = _mm256_dpbf16_ps(_mm256_setzero_ps(), (__m256bh)_mm512_castsi512_si256((__m512i)x1), n1);
                    b0 = _mm256_dpbf16_ps(b0, (__m256bh)_mm512_castsi512_si256((__m512i)x2), n2);
                    b1 = _mm256_dpbf16_ps(b1, (__m256bh)_mm512_castsi512_si256((__m512i)x3), n3);
                    a0[r] = _mm512_zextps256_ps512(b0);
                    a1[r] = _mm512_zextps256_ps512(b1);
                }
                continue;
            }
            const __mmask64 mask = bytes == 64 ? ~(__mmask64)0 : (((__mmask64)1 << bytes) - 1);
            for (int r = 0; r < R; r++) {
                const uint8_t *p = codes + (o + (size_t)r) * stride + at;
                const __m512i w = bytes == 64 ? _mm512_loadu_si512((const void *)p) : _mm512_maskz_loadu_epi8(mask, p);
                const __m512bh n0 = (__m512bh)_mm512_ternarylogic_epi32(w, m0f, c4300, 0xEA); // (w & 15) | 0x4300
                const __m512bh n1 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), m0f, c4300, 0xEA);
                const __m512bh n2 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 8), m0f, c4300, 0xEA);
                const __m512bh n3 = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(w, 12), c4300);
                a0[r] = _mm512_dpbf16_ps(a0[r], x0, n0);
                a1[r] = _mm512_dpbf16_ps(a1[r], x1, n1);
                a0[r] = _mm512_dpbf16_ps(a0[r], x2, n2);
                a1[r] = _mm512_dpbf16_ps(a1[r], x3, n3);
            }
        }
        for (int r = 0; r < R; r++) {
            const __m512 d = u4 ? _mm512_add_ps(a0[r], a1[r]) : _mm512_fmadd_ps(_mm512_set1_ps(16.0f), a1[r], a0[r]);
            total[r] = _mm512_fmadd_ps(_mm512_set1_ps(scales[(o + (size_t)r) * groups + grp]), d, total[r]);
        }
    }
    if (R == 4) { // zero_term of the four rows in the lanes of one vector: the same operations
        const float *s = scales + o * groups, *z = zeros + o * groups;
        const __m128 c = _mm_set1_ps(code_offset(u4));
        __m128 zt = _mm_setzero_ps();
        for (size_t grp = 0; grp < groups; grp++) {
            const __m128 sv = _mm_setr_ps(s[grp], s[groups + grp], s[2 * groups + grp], s[3 * groups + grp]);
            const __m128 zv = _mm_setr_ps(z[grp], z[groups + grp], z[2 * groups + grp], z[3 * groups + grp]);
            zt = _mm_fmadd_ps(sv, _mm_mul_ps(_mm_add_ps(c, zv), _mm_set1_ps(xsums[grp])), zt);
        }
        _mm_storeu_ps(y + o, _mm_sub_ps(hsum16x4(total[0], total[1], total[2], total[3]), zt));
        return;
    }
    for (int r = 0; r < R; r++) {
        const size_t row = o + (size_t)r;
        y[row] = hsum16(total[r]) - zero_term(scales + row * groups, zeros + row * groups, xsums, groups, code_offset(u4));
    }
}

/// Bytes of a u4 row range's start fetched before its first pass (measured, one thread, 56 MB of
/// u4 g128 in the decode's chunks: 576 columns × 58 rows 13–17 → 19–22 GB/s CPU time; more
/// than ~2.5 KB slowed 1536-column chunks, whose first two passes are 6 KB).
#define CK_GEMV_START_PF 2560

/// The rows' in-loop prefetch reaches CK_GEMV_PF passes ahead, so the first passes of a row
/// range (a pool chunk, which may start anywhere) would wait on DRAM: fetch their lines first.
CK_INLINE CK_BF16 void prefetch_range_start(const uint8_t *codes, size_t row_begin, size_t row_count, size_t stride) {
    const size_t rows = 4 * CK_GEMV_PF < row_count ? 4 * CK_GEMV_PF : row_count;
    const size_t bytes = rows * stride < CK_GEMV_START_PF ? rows * stride : CK_GEMV_START_PF;
    const char *p0 = (const char *)(codes + row_begin * stride);
    for (const char *p = (const char *)((uintptr_t)p0 & ~(uintptr_t)63); p < p0 + bytes; p += 64)
        _mm_prefetch(p, _MM_HINT_T0);
}

CK_INLINE CK_BF16 void gemv_bf16_avx512(const int u4, const uint8_t *codes, size_t row_begin, size_t row_count,
                                        size_t cols, size_t group_size, const float *scales, const float *zeros,
                                        const uint16_t *xb, const float *xsums, float *y) {
    const size_t g = eff_group(cols, group_size), end = row_begin + row_count;
    size_t o = row_begin;
    if (u4) prefetch_range_start(codes, row_begin, row_count, (cols + 1) / 2); // the u8 head as measured before
    for (; o + 4 <= end; o += 4) rows_bf16(u4, 4, codes, o, cols, g, scales, zeros, xb, xsums, y);
    switch (end - o) {
    case 3: rows_bf16(u4, 3, codes, o, cols, g, scales, zeros, xb, xsums, y); break;
    case 2: rows_bf16(u4, 2, codes, o, cols, g, scales, zeros, xb, xsums, y); break;
    case 1: rows_bf16(u4, 1, codes, o, cols, g, scales, zeros, xb, xsums, y); break;
    default: break;
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
