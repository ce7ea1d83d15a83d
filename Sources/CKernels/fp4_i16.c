#include "ckernels.h"
#include "ck_runtime.h"
#include "fp_kernels.h"
#include "x86_common.h"
#include <stdlib.h>
#include <string.h>

// FP4 weight codes × int16 activations (see fp_kernels.h for the layouts and the exact result).
//
// Why int16: an FP8 activation on its grid is a small integer times the format's smallest step,
// and the per-channel offset 2^(-k_j) is a power of two, so with K = max k_j every activation is
// the integer q/unit·2^(K-k_j) times unit·2^(-K). For E2M5 that integer is at most 252·2^3, for
// E3M4 at most 1984·2^K: int16 for the formats and offsets the W4A8 recipe picks, not int8. The
// FP4 weight integers (|t| <= 12 for E2M1) sign-extend to int16, and vpmaddwd / vpdpwssd add two
// int16 products into an int32 lane exactly.

static inline size_t i16_groups(size_t cols, size_t group_size) { return (cols + group_size - 1) / group_size; }
static inline unsigned i16_code(const uint8_t *row, size_t j) {
    return (j & 1) ? (unsigned)(row[j >> 1] >> 4) : (unsigned)(row[j >> 1] & 0x0F);
}

// The split form (issue 9: E3M4 activations with channel offsets K = 5-7, whose shifted integers
// reach 31·2^13 and do not fit int16): every activation integer v is stored as lo + 2^shift·hi
// with |lo| < 2^shift and |hi| <= 32767 (ck_fp_quantize_rows_i16x2), and the weight integer t
// meets lo as t and hi as t·2^shift (|t|·2^shift <= 32767 by the caller's choice of shift):
// t·lo + (t·2^shift)·hi = t·v exactly, both products int16 × int16 into the same int32 sum. Every
// partial sum of |t·lo| and |t·2^shift·hi| terms is bounded by sum |t|·|v|, so the caller's bound
// on the exact sum (sum |t|·max|v| < 2^31 over a sum's columns) covers every intermediate value.
// The scalar twins sum in int64: the same integer whenever that bound holds.

/// Code (o, j) of the byte-plane layout (fp4_u8.c; see i16_panel_u8).
static inline unsigned u8_layout_code_ref(const uint8_t *packed, size_t cols, size_t o, size_t j) {
    const uint8_t byte = packed[((o / 16) * (cols / 8) + j / 8) * 64 + 4 * (o % 16) + (j & 3)];
    return (j & 4) ? (unsigned)(byte >> 4) : (unsigned)(byte & 0x0F);
}

static void i16_gemm_ref(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                         size_t group_size, size_t sum_len, const int8_t *table8, const int16_t *table16,
                         const float *wscale, const int16_t *a, const int16_t *ahi, int shift, size_t lda, size_t m,
                         float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
    if (sum_len == 0 || sum_len > group_size) sum_len = group_size;
    const size_t groups = i16_groups(cols, group_size), stride = nibbles ? (cols + 1) / 2 : cols;
    for (size_t i = 0; i < m; i++) {
        const int16_t *ai = a + i * lda, *hi = ahi ? ahi + i * lda : NULL;
        for (size_t o = row_begin; o < row_begin + row_count; o++) {
            const uint8_t *row = codes + o * stride;
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                const size_t g1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
                for (size_t j0 = g * group_size; j0 < g1; j0 += sum_len) {
                    const size_t j1 = j0 + sum_len < g1 ? j0 + sum_len : g1;
                    int64_t sum = 0;
                    for (size_t j = j0; j < j1; j++) {
                        const int64_t t = nibbles ? (int64_t)table8[i16_code(row, j)] : (int64_t)table16[row[j]];
                        sum += t * ai[j];
                        if (hi) sum += t * (int64_t)(1 << shift) * hi[j];
                    }
                    // Separate statements: no contraction into an FMA, as the vector paths.
                    float term = wscale[o * groups + g] * (float)(int32_t)sum;
                    acc = acc + term;
                }
            }
            y[i * ldy + o] = acc;
        }
    }
}

void ck_fp4_gemm_i16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         const int8_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m, float *y,
                         size_t ldy) {
    i16_gemm_ref(codes, 1, row_begin, row_count, cols, group_size, 0, table, NULL, wscale, a, NULL, 0, lda, m, y, ldy);
}

void ck_fp4_gemm_i16x2_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                           const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                           size_t lda, size_t m, float *y, size_t ldy) {
    i16_gemm_ref(codes, 1, row_begin, row_count, cols, group_size, 0, table, NULL, wscale, a, ahi, shift, lda, m, y,
                 ldy);
}

void ck_fp8_gemm_i16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a, size_t lda,
                         size_t m, float *y, size_t ldy) {
    i16_gemm_ref(codes, 0, row_begin, row_count, cols, group_size, sum_len, NULL, table, wscale, a, NULL, 0, lda, m,
                 y, ldy);
}

void ck_fp8_gemm_i16x2_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                           size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a,
                           const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy) {
    i16_gemm_ref(codes, 0, row_begin, row_count, cols, group_size, sum_len, NULL, table, wscale, a, ahi, shift, lda,
                 m, y, ldy);
}

static int fp8_u8_enabled = -1;

/// Whether the magnitude-byte kernel runs where it can (PTQ_FP8_BYTE_GEMV=0 turns it off, for A/B).
static int fp8_u8_on(void) {
    if (fp8_u8_enabled < 0) {
        const char *v = getenv("PTQ_FP8_BYTE_GEMV");
        fp8_u8_enabled = !(v && strcmp(v, "0") == 0);
    }
    return fp8_u8_enabled;
}

void ck_set_fp8_byte_gemv_enabled(int enabled) { fp8_u8_enabled = enabled != 0; }

#if defined(__x86_64__)
// avx512bw for the 16-bit shifts of the split form (checked at dispatch with the VNNI flag).
#define CK_VNNI512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/// 16 nibble bytes (32 columns from an even column) as two vectors of 16 int16 weight integers in
/// natural column order: pshufb of the low and high nibbles into the table, the two interleaved
/// bytewise (column 2p is the low nibble of byte p), then sign-extended.
CK_INLINE CK_AVX2 void i16_weights32(const uint8_t *p, __m128i table, __m256i *w0, __m256i *w1) {
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m128i x = _mm_loadu_si128((const __m128i *)p);
    const __m128i lo = _mm_shuffle_epi8(table, _mm_and_si128(x, low4));
    const __m128i hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(x, 4), low4));
    *w0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(lo, hi));
    *w1 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(lo, hi));
}

// ---- prefill GEMM --------------------------------------------------------------------------------
//
// Panel layout: PR weight rows (PR = 32 on AVX-512, 16 on AVX2); word [p·PR + r] holds row r's
// columns 2p and 2p+1 as an int16 pair (zero past the matrix). One vector load gives 16 (8) rows'
// pairs, and vpdpwssd / vpmaddwd against the activation pair (a[2p], a[2p+1]) broadcast to every
// lane adds each row's two products into its own int32 lane: no horizontal sums at all, and each
// group's sums of all rows come out as one vector for the scale multiply. The table lookups run
// in registers 16 bytes at a time; the transposition into the panel is scalar stores (the panel
// is built once per call and reused by every activation row, so it costs ~1/m of the products).

/// Expands rows [o0, o0 + rows) (rows <= PR) into the panel and gathers their group scales
/// ([g·PR + r], zero for padding rows).
CK_AVX2 static void i16_panel(const uint8_t *codes, size_t o0, size_t rows, size_t cols, size_t groups,
                              const int8_t *table, const float *wscale, size_t PR, int32_t *panel, float *scales) {
    const size_t stride = (cols + 1) / 2, pairs = stride;
    const __m128i t = _mm_loadu_si128((const __m128i *)table);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (size_t r = 0; r < PR; r++) {
        if (r >= rows) {
            for (size_t p = 0; p < pairs; p++) panel[p * PR + r] = 0;
            for (size_t g = 0; g < groups; g++) scales[g * PR + r] = 0;
            continue;
        }
        const uint8_t *row = codes + (o0 + r) * stride;
        size_t p = 0;
        for (; p + 16 <= pairs; p += 16) {
            const __m128i x = _mm_loadu_si128((const __m128i *)(row + p));
            const __m128i lo = _mm_shuffle_epi8(t, _mm_and_si128(x, low4));
            const __m128i hi = _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(x, 4), low4));
            int32_t words[16];
            _mm256_storeu_si256((__m256i *)words, _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(lo, hi)));
            _mm256_storeu_si256((__m256i *)(words + 8), _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(lo, hi)));
            for (int q = 0; q < 16; q++) panel[(p + q) * PR + r] = words[q];
        }
        for (; p < pairs; p++) {
            const int16_t w0 = table[row[p] & 0x0F];
            // A padding high nibble of an odd-width row meets a zero activation; zero it anyway.
            const int16_t w1 = 2 * p + 1 < cols ? table[row[p] >> 4] : 0;
            panel[p * PR + r] = (int32_t)(((uint32_t)(uint16_t)w1 << 16) | (uint16_t)w0);
        }
        for (size_t g = 0; g < groups; g++) scales[g * PR + r] = wscale[(o0 + r) * groups + g];
    }
}

/// i16_panel for one-byte codes through a 256-entry int16 table (FP8 weights): scalar lookups
/// (the panel is built once per call and reused by every activation row).
static void i16_panel_bytes(const uint8_t *codes, size_t o0, size_t rows, size_t cols, size_t groups,
                            const int16_t *table, const float *wscale, size_t PR, int32_t *panel, float *scales) {
    const size_t pairs = (cols + 1) / 2;
    for (size_t r = 0; r < PR; r++) {
        if (r >= rows) {
            for (size_t p = 0; p < pairs; p++) panel[p * PR + r] = 0;
            for (size_t g = 0; g < groups; g++) scales[g * PR + r] = 0;
            continue;
        }
        const uint8_t *row = codes + (o0 + r) * cols;
        for (size_t p = 0; p < pairs; p++) {
            const int16_t w0 = table[row[2 * p]], w1 = 2 * p + 1 < cols ? table[row[2 * p + 1]] : 0;
            panel[p * PR + r] = (int32_t)(((uint32_t)(uint16_t)w1 << 16) | (uint16_t)w0);
        }
        for (size_t g = 0; g < groups; g++) scales[g * PR + r] = wscale[(o0 + r) * groups + g];
    }
}

// ---- panels from the byte-plane layout (issue 13: one copy of the codes) ----------------------
//
// Where the FP4 decode GEMV's byte-plane layout exists (fp4_u8.c, ck_fp4_u8_pack: 16-row blocks,
// per 8 columns one 64-byte run whose byte 4·r + i holds row r's codes for columns 8q + i (low
// nibble) and 8q + 4 + i (high nibble); scales pscale[(block·G + g)·16 + r]) it is the layer's
// only copy of the codes, and the prefill panels are built from it. The panel words are the same
// as i16_panel's from the nibble codes, so the GEMM's results are the same bits.

/// i16_panel from the byte-plane layout (o0 a multiple of 16), scalar.
static void i16_panel_u8(const uint8_t *packed, const float *pscale, size_t o0, size_t rows, size_t cols,
                         size_t groups, const int8_t *table, size_t PR, int32_t *panel, float *scales) {
    const size_t pairs = cols / 2;
    for (size_t r = 0; r < PR; r++) {
        if (r >= rows) {
            for (size_t p = 0; p < pairs; p++) panel[p * PR + r] = 0;
            for (size_t g = 0; g < groups; g++) scales[g * PR + r] = 0;
            continue;
        }
        const size_t o = o0 + r;
        for (size_t p = 0; p < pairs; p++) {
            const int16_t w0 = table[u8_layout_code_ref(packed, cols, o, 2 * p)];
            const int16_t w1 = table[u8_layout_code_ref(packed, cols, o, 2 * p + 1)];
            panel[p * PR + r] = (int32_t)(((uint32_t)(uint16_t)w1 << 16) | (uint16_t)w0);
        }
        for (size_t g = 0; g < groups; g++) scales[g * PR + r] = pscale[((o / 16) * groups + g) * 16 + o % 16];
    }
}

/// i16_panel_u8 on AVX-512 BW: per 16-row block and 8-column run one 64-byte load, two pshufb
/// through the table (the low nibbles give columns 8q…8q+3, the high ones 8q+4…8q+7, one row per
/// dword lane), and the bytes sign-extended into int16 pairs with two shifts and a blend; each
/// pair vector is 16 rows' panel words for one column pair, stored as they are (no transpose).
CK_VNNI512 static void i16_panel_u8_512(const uint8_t *packed, const float *pscale, size_t o0, size_t rows,
                                        size_t cols, size_t groups, const int8_t *table, size_t PR, int32_t *panel,
                                        float *scales) {
    const size_t steps = cols / 8, pairs = cols / 2;
    const __m512i t = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)table));
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const __mmask32 odd = 0xAAAAAAAAu;
    for (size_t sb = 0; sb < PR / 16; sb++) {
        const size_t n = rows > 16 * sb ? (rows - 16 * sb < 16 ? rows - 16 * sb : 16) : 0;
        int32_t *pp = panel + 16 * sb;
        float *ps = scales + 16 * sb;
        if (n == 0) {
            for (size_t p = 0; p < pairs; p++) _mm512_storeu_si512((void *)(pp + p * PR), _mm512_setzero_si512());
            for (size_t g = 0; g < groups; g++) _mm512_storeu_ps(ps + g * PR, _mm512_setzero_ps());
            continue;
        }
        const __mmask16 valid = (__mmask16)(n == 16 ? 0xFFFFu : (1u << n) - 1);
        const size_t b = o0 / 16 + sb;
        const uint8_t *src = packed + b * steps * 64;
        for (size_t q = 0; q < steps; q++) {
            const __m512i x = _mm512_loadu_si512((const void *)(src + q * 64));
            const __m512i v[2] = {_mm512_shuffle_epi8(t, _mm512_and_si512(x, low4)),
                                  _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(x, 4), low4))};
            for (int h = 0; h < 2; h++) {
                // Dword lane = bytes (t0, t1, t2, t3) of one row: A = (t0, t2), B = (t1, t3) as int16.
                const __m512i lo = _mm512_srai_epi16(_mm512_slli_epi16(v[h], 8), 8), hi = _mm512_srai_epi16(v[h], 8);
                const __m512i p0 = _mm512_mask_blend_epi16(odd, lo, _mm512_slli_epi32(hi, 16));
                const __m512i p1 = _mm512_mask_blend_epi16(odd, _mm512_srli_epi32(lo, 16), hi);
                _mm512_storeu_si512((void *)(pp + (4 * q + 2 * h) * PR), _mm512_maskz_mov_epi32(valid, p0));
                _mm512_storeu_si512((void *)(pp + (4 * q + 2 * h + 1) * PR), _mm512_maskz_mov_epi32(valid, p1));
            }
        }
        for (size_t g = 0; g < groups; g++)
            _mm512_storeu_ps(ps + g * PR, _mm512_maskz_loadu_ps(valid, pscale + (b * groups + g) * 16));
    }
}

// MR activation rows × one panel. Per column pair: NV weight vectors, MR broadcasts, MR·NV
// multiply-adds. Float partial sums live in out[MR][PR] (L1), added once per group with a
// separate multiply and add (the reference's order).
#define I16_TILE(NAME, ATTR, VEC, NV, LANES, MAXMR, ZERO, LOAD, BCAST, MADD, SHL, CVT, LOADF, MULF, ADDF, STOREF)          \
    CK_INLINE ATTR void NAME(const int32_t *panel, const float *scales, size_t pairs, size_t gpairs, size_t cpairs, \
                             const int16_t *a, const int16_t *ahi, __m128i shift, size_t lda, float *out,           \
                             const int MR, const int SPLIT) {                                                       \
        const size_t PR = (NV) * (LANES);                                                                         \
        for (int i = 0; i < MR; i++)                                                                              \
            for (size_t r = 0; r < PR; r++) out[i * PR + r] = 0;                                                  \
        /* Exact int32 sums over cpairs column pairs (a group, or a part of one), each scaled by its group's */ \
        /* scale. */                                                                                              \
        for (size_t p0 = 0; p0 < pairs; p0 += cpairs) {                                                           \
            const size_t p1 = p0 + cpairs < pairs ? p0 + cpairs : pairs, g = p0 / gpairs;                         \
            VEC s[MAXMR][NV];                                                                                     \
            for (int i = 0; i < MR; i++)                                                                          \
                for (int v = 0; v < NV; v++) s[i][v] = ZERO;                                                      \
            for (size_t p = p0; p < p1; p++) {                                                                    \
                VEC w[NV], wh[NV];                                                                                \
                for (int v = 0; v < NV; v++) w[v] = LOAD(panel + p * PR + v * (LANES));                           \
                /* Split form: the weights that meet the high parts, t·2^shift (one shift per panel */           \
                /* vector, shared by all MR activation rows). */                                                  \
                if (SPLIT)                                                                                        \
                    for (int v = 0; v < NV; v++) wh[v] = SHL(w[v], shift);                                        \
                for (int i = 0; i < MR; i++) {                                                                    \
                    int32_t pair;                                                                                 \
                    memcpy(&pair, a + i * lda + 2 * p, 4);                                                        \
                    const VEC b = BCAST(pair);                                                                    \
                    for (int v = 0; v < NV; v++) s[i][v] = MADD(s[i][v], b, w[v]);                                \
                    if (SPLIT) {                                                                                  \
                        memcpy(&pair, ahi + i * lda + 2 * p, 4);                                                  \
                        const VEC bh = BCAST(pair);                                                               \
                        for (int v = 0; v < NV; v++) s[i][v] = MADD(s[i][v], bh, wh[v]);                          \
                    }                                                                                             \
                }                                                                                                 \
            }                                                                                                     \
            for (int v = 0; v < NV; v++) {                                                                        \
                const float *sc = scales + g * PR + v * (LANES);                                                  \
                for (int i = 0; i < MR; i++) {                                                                    \
                    float *dst = out + i * PR + v * (LANES);                                                      \
                    STOREF(dst, ADDF(LOADF(dst), MULF(LOADF(sc), CVT(s[i][v]))));                                 \
                }                                                                                                 \
            }                                                                                                     \
        }                                                                                                         \
    }

CK_INLINE CK_AVX2 __m256i i16_load256(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
CK_INLINE CK_AVX2 __m256i i16_madd256(__m256i acc, __m256i b, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(b, w));
}
CK_INLINE CK_VNNI512 __m512i i16_load512(const int32_t *p) { return _mm512_loadu_si512((const void *)p); }
CK_INLINE CK_VNNI512 __m512i i16_madd512(__m512i acc, __m512i b, __m512i w) { return _mm512_dpwssd_epi32(acc, b, w); }

I16_TILE(i16_tile_avx2, CK_AVX2, __m256i, 2, 8, 4, _mm256_setzero_si256(), i16_load256, _mm256_set1_epi32, i16_madd256,
         _mm256_sll_epi16, _mm256_cvtepi32_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_add_ps, _mm256_storeu_ps)
I16_TILE(i16_tile_512, CK_VNNI512, __m512i, 2, 16, 8, _mm512_setzero_si512(), i16_load512, _mm512_set1_epi32, i16_madd512,
         _mm512_sll_epi16, _mm512_cvtepi32_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_add_ps, _mm512_storeu_ps)

#define I16_CASE(TILE, N)                                                                                          \
    case N:                                                                                                        \
        if (ahi) TILE(panel, scales, pairs, gpairs, cpairs, ai, ahi + i * lda, cnt, lda, out, N, 1);               \
        else TILE(panel, scales, pairs, gpairs, cpairs, ai, NULL, cnt, lda, out, N, 0);                            \
        break;
#define I16_GEMM(NAME, ATTR, TILE, PR_, MR_, PANEL_U8)                                                                 \
    ATTR static int NAME(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size, \
                         size_t sum_len, const int8_t *table, const int16_t *table16, const float *wscale,         \
                         const int16_t *a, const int16_t *ahi, int shift, size_t lda, size_t m, float *y,          \
                         size_t ldy, const float *pscale) {                                                        \
        const size_t PR = (PR_), pairs = (cols + 1) / 2, groups = i16_groups(cols, group_size);                   \
        const size_t gpairs = group_size >= cols ? pairs : group_size / 2;                                        \
        const size_t cpairs = sum_len >= group_size ? gpairs : sum_len / 2;                                       \
        const __m128i cnt = _mm_cvtsi32_si128(shift);                                                             \
        int32_t *panel = (int32_t *)ck_thread_scratch(7, (pairs + groups) * PR * 4);                              \
        if (!panel) return 0;                                                                                     \
        float *scales = (float *)(panel + pairs * PR);                                                            \
        float out[(MR_) * (PR_)] __attribute__((aligned(64)));                                                    \
        const size_t end = row_begin + row_count;                                                                 \
        for (size_t o0 = row_begin; o0 < end; o0 += PR) {                                                         \
            const size_t rows = end - o0 < PR ? end - o0 : PR;                                                    \
            if (pscale) PANEL_U8(codes, pscale, o0, rows, cols, groups, table, PR, panel, scales);                \
            else if (table16) i16_panel_bytes(codes, o0, rows, cols, groups, table16, wscale, PR, panel, scales); \
            else i16_panel(codes, o0, rows, cols, groups, table, wscale, PR, panel, scales);                      \
            for (size_t i = 0; i < m; i += (MR_)) {                                                               \
                const size_t mr = m - i < (MR_) ? m - i : (MR_);                                                  \
                const int16_t *ai = a + i * lda;                                                                  \
                switch (mr) {                                                                                     \
                I16_CASE(TILE, 8) I16_CASE(TILE, 7) I16_CASE(TILE, 6) I16_CASE(TILE, 5)                           \
                I16_CASE(TILE, 4) I16_CASE(TILE, 3) I16_CASE(TILE, 2)                                             \
                default: I16_CASE(TILE, 1)                                                                        \
                }                                                                                                 \
                for (size_t r = 0; r < mr; r++) memcpy(y + (i + r) * ldy + o0, out + r * PR, rows * sizeof(float)); \
            }                                                                                                     \
        }                                                                                                         \
        return 1;                                                                                                 \
    }
I16_GEMM(i16_gemm_avx2, CK_AVX2, i16_tile_avx2, 16, 4, i16_panel_u8)
I16_GEMM(i16_gemm_512, CK_VNNI512, i16_tile_512, 32, 8, i16_panel_u8_512)

// ---- decode GEMV ---------------------------------------------------------------------------------
//
// Codes read in place: per 32 columns one 16-byte load, two pshufb, two sign extensions, and one
// int16 multiply-add per activation half (vpdpwssd on VNNI, vpmaddwd + add on AVX2). Four rows'
// group partials are reduced to exact int32 sums by one hadd tree; columns of a group past its
// last multiple of 32 are added by scalar code (as ints: the same sum).
#define I16_ROWS(NAME, ATTR, DOT)                                                                                  \
    CK_INLINE ATTR void NAME(const uint8_t *codes, size_t o, size_t cols, size_t group_size, size_t groups,        \
                             const int8_t *table8, const float *wscale, const int16_t *a, const int16_t *ahi,      \
                             int shift, float *y, const int R, const int SPLIT) {                                  \
        const size_t stride = (cols + 1) / 2;                                                                      \
        const __m128i table = _mm_loadu_si128((const __m128i *)table8), cnt = _mm_cvtsi32_si128(shift);             \
        __m128 acc = _mm_setzero_ps();                                                                             \
        for (size_t g = 0; g < groups; g++) {                                                                      \
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;                \
            __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),                \
                            _mm256_setzero_si256()};                                                               \
            size_t j = j0;                                                                                         \
            for (; j + 32 <= j1; j += 32) {                                                                        \
                const __m256i a0 = _mm256_loadu_si256((const __m256i *)(a + j));                                   \
                const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + j + 16));                              \
                __m256i h0 = a0, h1 = a1;                                                                          \
                if (SPLIT) {                                                                                       \
                    h0 = _mm256_loadu_si256((const __m256i *)(ahi + j));                                           \
                    h1 = _mm256_loadu_si256((const __m256i *)(ahi + j + 16));                                      \
                }                                                                                                  \
                for (int r = 0; r < R; r++) {                                                                      \
                    __m256i w0, w1;                                                                                \
                    i16_weights32(codes + (o + r) * stride + j / 2, table, &w0, &w1);                              \
                    s[r] = DOT(DOT(s[r], a0, w0), a1, w1);                                                         \
                    /* Split form: the high parts meet t·2^shift. */                                               \
                    if (SPLIT)                                                                                     \
                        s[r] = DOT(DOT(s[r], h0, _mm256_sll_epi16(w0, cnt)), h1, _mm256_sll_epi16(w1, cnt));      \
                }                                                                                                  \
            }                                                                                                      \
            __m128i sums = _mm_add_epi32(                                                                          \
                _mm256_castsi256_si128(_mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]))), \
                _mm256_extracti128_si256(_mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3])), 1)); \
            if (j < j1) {                                                                                          \
                int32_t tail[4] = {0, 0, 0, 0};                                                                    \
                for (int r = 0; r < R; r++) {                                                                      \
                    const uint8_t *row = codes + (o + r) * stride;                                                 \
                    for (size_t t = j; t < j1; t++) {                                                              \
                        const int32_t w = table8[i16_code(row, t)];                                                \
                        tail[r] += w * (int32_t)a[t];                                                              \
                        if (SPLIT) tail[r] += w * (1 << shift) * (int32_t)ahi[t];                                  \
                    }                                                                                              \
                }                                                                                                  \
                sums = _mm_add_epi32(sums, _mm_loadu_si128((const __m128i *)tail));                                \
            }                                                                                                      \
            acc = ck_add_scaled_rows4(acc, sums, wscale + o * groups + g, groups, R); \
        }                                                                                                          \
        ck_store_rows4(y + o, acc, R); \
    }

CK_INLINE CK_AVX2 __m256i i16_dot_avx2(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
}
CK_INLINE CK_VNNI __m256i i16_dot_vnni(__m256i acc, __m256i a, __m256i w) { return _mm256_dpwssd_epi32(acc, a, w); }
I16_ROWS(i16_rows_avx2, CK_AVX2, i16_dot_avx2)
I16_ROWS(i16_rows_vnni, CK_VNNI, i16_dot_vnni)

#define I16_GEMV(NAME, ATTR, ROWS)                                                                                 \
    ATTR static void NAME(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size, \
                          const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift, \
                          size_t lda, size_t m, float *y, size_t ldy) {                                            \
        const size_t groups = i16_groups(cols, group_size), end = row_begin + row_count;                           \
        for (size_t i = 0; i < m; i++) {                                                                           \
            const int16_t *ai = a + i * lda, *hi = ahi ? ahi + i * lda : NULL;                                     \
            float *yi = y + i * ldy;                                                                               \
            size_t o = row_begin;                                                                                  \
            if (hi) {                                                                                              \
                for (; o + 4 <= end; o += 4) ROWS(codes, o, cols, group_size, groups, table, wscale, ai, hi, shift, yi, 4, 1); \
                for (; o < end; o++) ROWS(codes, o, cols, group_size, groups, table, wscale, ai, hi, shift, yi, 1, 1); \
            } else {                                                                                               \
                for (; o + 4 <= end; o += 4) ROWS(codes, o, cols, group_size, groups, table, wscale, ai, NULL, 0, yi, 4, 0); \
                for (; o < end; o++) ROWS(codes, o, cols, group_size, groups, table, wscale, ai, NULL, 0, yi, 1, 0); \
            }                                                                                                      \
        }                                                                                                          \
    }
I16_GEMV(i16_gemv_avx2, CK_AVX2, i16_rows_avx2)
I16_GEMV(i16_gemv_vnni, CK_VNNI, i16_rows_vnni)

// ---- FP8 byte-code GEMV (decode) --------------------------------------------------------------
//
// One-byte codes sign | magnitude (mag_bits = exponent + mantissa bits <= 7): the magnitude's
// weight integer is looked up in registers, 32 codes at a time, from the first 2^mag_bits
// entries of the int16 table held in four zmm registers (two vpermt2w of 64 entries each and a
// blend on bit 6), negated where the sign bit is set (table[c | sign] = -table[c]), and
// multiplied with the int16 activations by vpdpwssd; each exact int32 sum of sum_len columns is
// reduced and scaled in the reference's order.
CK_VNNI512 static void i16_bytes_gemv_512(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                           size_t group_size, size_t sum_len, int mag_bits, const int16_t *table,
                                           const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                                           float *y) {
    int16_t mags[128] __attribute__((aligned(64)));
    const size_t n_mag = (size_t)1 << mag_bits;
    for (size_t c = 0; c < 128; c++) mags[c] = c < n_mag ? table[c] : 0;
    const __m512i t0 = _mm512_load_si512(mags), t1 = _mm512_load_si512(mags + 32);
    const __m512i t2 = _mm512_load_si512(mags + 64), t3 = _mm512_load_si512(mags + 96);
    const __m512i mag_mask = _mm512_set1_epi16((short)(n_mag - 1)), sign_bit = _mm512_set1_epi16((short)n_mag);
    const __m512i bit6 = _mm512_set1_epi16(64);
    const __m128i cnt = _mm_cvtsi32_si128(shift);
    const size_t groups = i16_groups(cols, group_size);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * cols;
        float acc = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t g1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
            for (size_t j0 = g * group_size; j0 < g1; j0 += sum_len) {
                const size_t j1 = j0 + sum_len < g1 ? j0 + sum_len : g1;
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
                size_t j = j0;
                for (; j + 32 <= j1; j += 32) {
                    const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(row + j)));
                    const __m512i idx = _mm512_and_si512(c, mag_mask);
                    const __m512i lo = _mm512_permutex2var_epi16(t0, idx, t1);
                    const __m512i hi = _mm512_permutex2var_epi16(t2, idx, t3);
                    __m512i w = _mm512_mask_blend_epi16(_mm512_test_epi16_mask(idx, bit6), lo, hi);
                    w = _mm512_mask_sub_epi16(w, _mm512_test_epi16_mask(c, sign_bit), _mm512_setzero_si512(), w);
                    s0 = i16_madd512(s0, _mm512_loadu_si512((const void *)(a + j)), w);
                    if (ahi) s1 = i16_madd512(s1, _mm512_loadu_si512((const void *)(ahi + j)), _mm512_sll_epi16(w, cnt));
                }
                int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
                for (; j < j1; j++) {
                    sum += (int32_t)table[row[j]] * a[j];
                    if (ahi) sum += (int32_t)table[row[j]] * (1 << shift) * ahi[j];
                }
                float term = wscale[o * groups + g] * (float)sum;
                acc = acc + term;
            }
        }
        y[o] = acc;
    }
}

// ---- FP8 byte GEMV on magnitude bytes and signed activation bytes (issue 13, tenth pass) ------
//
// Where every weight integer's magnitude fits a byte (E2M5: |t| <= 252; E2M3 and smaller), the
// int16 GEMV above spends about 10 instructions per 32 weights widening the codes to int16, two
// vpermt2w lookups, a blend and a masked negation before one vpdpwssd. Here the sign moves to the
// activation instead: per 64 codes one vpermt2b (VBMI) looks up the 64 magnitudes |t| as unsigned
// bytes straight from the code bytes (index bits 0-6; the sign bit is tested by one vptestmb),
// and each activation v = b0 + 2^8·b1 (+ 2^16·b2), held once per call as signed byte planes of v
// and of -v, is blended per byte by that sign mask, so one vpdpbusd per plane multiplies
// |t|·(±v's byte) for 64 weights: P + 3 instructions per 64 weights for P planes (2 for |v| <=
// 32639, 3 up to 8,355,711), against about 20. Each row's exact sum is reduced once per int32
// sum (sum_len columns), then scaled in the reference's order. One row per pass: four rows
// sharing the activation loads measured 38 against 30 GB/s with the head in cache, but on the
// row-major codes four streams 576 bytes apart ran at 7 GB/s from DRAM on the measured Zen 4
// (one row: memory speed); the 4-row form needs the head re-laid out with four rows' blocks
// interleaved (measured 18.5 GB/s from DRAM), a second 28 MB copy while the prefill GEMM reads
// the row-major codes (docs/RESULTS.md, tenth pass).
//
// Exactness: vpdpbusd and the plane combination s0 + 2^8·s1 + 2^16·s2 are integer arithmetic that
// wraps modulo 2^32; the true sum sum_j t_j·v_j is an int32 (the caller's bound, as for every
// kernel here), so the wrapped result is that integer even where a plane's partial sum leaves
// int32. Same integer, same float operations: bit for bit ck_fp8_gemm_i16x2_ref.
#define CK_FP8U8 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni,avx512vbmi")))

/// The 128-entry magnitude table of the codes' low 7 bits (|table[c mod 2^mag_bits]|), or 0 when
/// some magnitude exceeds a byte or the table is not sign | magnitude (table[c | 2^mag_bits] =
/// -table[c], table[c] >= 0 for c < 2^mag_bits).
static int u8_magnitudes(int mag_bits, const int16_t *table, uint8_t *mags) {
    const int n_mag = 1 << mag_bits;
    for (int c = 0; c < n_mag; c++) {
        if (table[c] < 0 || table[c] > 255 || table[c | n_mag] != -table[c]) return 0;
    }
    for (int c = 0; c < 128; c++) mags[c] = (uint8_t)table[c & (n_mag - 1)];
    return 1;
}

/// Activations v_j = a_j + 2^shift·ahi_j as signed byte planes v = b0 + 2^8·b1 (+ 2^16·b2): plane
/// p at out + p·cp, the planes of -v at out + (P + p)·cp, zero past cols. Returns P (2 when every
/// |v| <= 32639, 3 up to 8,355,711), or 0 when some |v| is larger (the caller falls back).
static int u8_activation_planes(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t cp, int8_t *out) {
    int32_t vmax = 0;
    for (size_t j = 0; j < cols; j++) {
        const int32_t v = (int32_t)a[j] + (ahi ? (int32_t)ahi[j] * (1 << shift) : 0);
        const int32_t m = v < 0 ? -v : v;
        if (m > vmax) vmax = m;
    }
    const int planes = vmax <= 32639 ? 2 : (vmax <= 8355711 ? 3 : 0);
    if (!planes) return 0;
    memset(out, 0, 2 * (size_t)planes * cp);
    for (size_t j = 0; j < cols; j++) {
        const int32_t v = (int32_t)a[j] + (ahi ? (int32_t)ahi[j] * (1 << shift) : 0);
        for (int neg = 0; neg < 2; neg++) {
            int32_t r = neg ? -v : v;
            for (int p = 0; p < planes; p++) {
                // The signed low byte, then the exact remainder / 256 (the top plane keeps the rest).
                const int32_t b = p + 1 < planes ? ((r + 128) & 255) - 128 : r;
                out[(size_t)(neg * planes + p) * cp + j] = (int8_t)b;
                r = (r - b) / 256;
            }
        }
    }
    return planes;
}

/// 64 columns from j (whole: all of them; else the columns of `live`, the others getting
/// magnitude 0) into the P plane sums. Masked byte loads are slow on the measured Zen 4: only a
/// row's last partial block takes one.
static inline __attribute__((always_inline)) CK_FP8U8 void u8_fp8_step(
    const uint8_t *row, size_t j, __mmask64 live, const int whole, const int inside, __m512i tlo, __m512i thi, __m512i sign,
    const int8_t *planes, size_t cp, const int P, __m512i *s) {
    // inside: the 64 bytes lie in the row (a sum's end before the row's end).
    const __m512i c = inside ? _mm512_loadu_si512((const void *)(row + j)) : _mm512_maskz_loadu_epi8(live, row + j);
    const __m512i mag = whole ? _mm512_permutex2var_epi8(tlo, c, thi) : _mm512_maskz_permutex2var_epi8(live, tlo, c, thi);
    const __mmask64 minus = _mm512_test_epi8_mask(c, sign);
    for (int p = 0; p < P; p++) {
        const __m512i pos = _mm512_loadu_si512((const void *)(planes + (size_t)p * cp + j));
        const __m512i neg = _mm512_loadu_si512((const void *)(planes + (size_t)(P + p) * cp + j));
        s[p] = _mm512_dpbusd_epi32(s[p], mag, _mm512_mask_blend_epi8(minus, pos, neg));
    }
}

/// Row o with P activation planes: see the section comment.
static inline __attribute__((always_inline)) CK_FP8U8 void u8_fp8_row(
    const uint8_t *codes, size_t o, size_t cols, size_t group_size, size_t sum_len, __m512i tlo, __m512i thi,
    __m512i sign, const int8_t *planes, size_t cp, const int P, const float *wscale, float *y) {
    const size_t groups = i16_groups(cols, group_size);
    const uint8_t *row = codes + o * cols;
    float acc = 0;
    for (size_t g = 0; g < groups; g++) {
        const size_t g1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
        for (size_t j0 = g * group_size; j0 < g1; j0 += sum_len) {
            const size_t j1 = j0 + sum_len < g1 ? j0 + sum_len : g1;
            __m512i s[3];
            for (int p = 0; p < P; p++) s[p] = _mm512_setzero_si512();
            size_t j = j0;
            for (; j + 64 <= j1; j += 64) u8_fp8_step(row, j, ~(__mmask64)0, 1, 1, tlo, thi, sign, planes, cp, P, s);
            if (j < j1) {
                const __mmask64 live = ((__mmask64)1 << (j1 - j)) - 1;
                if (j + 64 <= cols) u8_fp8_step(row, j, live, 0, 1, tlo, thi, sign, planes, cp, P, s);
                else u8_fp8_step(row, j, live, 0, 0, tlo, thi, sign, planes, cp, P, s);
            }
            __m512i t = s[P - 1];
            for (int p = P - 2; p >= 0; p--) t = _mm512_add_epi32(_mm512_slli_epi32(t, 8), s[p]);
            const int32_t sum = _mm512_reduce_add_epi32(t);
            // Separate statements, as the reference: no contraction into an FMA.
            float term = wscale[o * groups + g] * (float)sum;
            acc = acc + term;
        }
    }
    y[o] = acc;
}

CK_FP8U8 static void u8_fp8_gemv_512(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                     size_t group_size, size_t sum_len, int mag_bits, const uint8_t *mags,
                                     const int8_t *planes, size_t cp, int P, const float *wscale, float *y) {
    const __m512i tlo = _mm512_loadu_si512((const void *)mags), thi = _mm512_loadu_si512((const void *)(mags + 64));
    const __m512i sign = _mm512_set1_epi8((char)(1 << mag_bits));
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        if (P == 2) u8_fp8_row(codes, o, cols, group_size, sum_len, tlo, thi, sign, planes, cp, 2, wscale, y);
        else u8_fp8_row(codes, o, cols, group_size, sum_len, tlo, thi, sign, planes, cp, 3, wscale, y);
    }
}

/// Runs the magnitude-byte GEMV for one activation row if the CPU, table and activations allow it
/// (scratch slot 26 holds the planes); 0 otherwise.
static int u8_fp8_gemv(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       size_t sum_len, int mag_bits, const int16_t *table, const float *wscale, const int16_t *a,
                       const int16_t *ahi, int shift, float *y) {
    static int cpu = -1;
    if (cpu < 0) cpu = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
    if (!cpu || !ck_cpu_has_avx512vnni() || !fp8_u8_on() || mag_bits < 1 || mag_bits > 7) return 0;
    uint8_t mags[128];
    if (!u8_magnitudes(mag_bits, table, mags)) return 0;
    const size_t cp = (cols + 63) & ~(size_t)63;
    int8_t *planes = (int8_t *)ck_thread_scratch(26, 6 * cp);
    if (!planes) return 0;
    const int P = u8_activation_planes(a, ahi, shift, cols, cp, planes);
    if (!P) return 0;
    u8_fp8_gemv_512(codes, row_begin, row_count, cols, group_size, sum_len, mag_bits, mags, planes, cp, P, wscale, y);
    return 1;
}
#endif

/// AVX-512 VNNI kernels: the split form shifts int16 lanes of zmm vectors (AVX-512 BW).
static int i16_use_512(const int16_t *ahi) {
#if defined(__x86_64__)
    return ck_cpu_has_avx512vnni() && (!ahi || __builtin_cpu_supports("avx512bw"));
#else
    (void)ahi;
    return 0;
#endif
}

static void fp4_gemm_i16_any(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                             const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                             size_t lda, size_t m, float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    // A group must not split a column pair (fp_kernels.h); else the reference handles it.
    if (group_size % 2 == 0 || group_size >= cols) {
        if (i16_use_512(ahi) && i16_gemm_512(codes, row_begin, row_count, cols, group_size, group_size, table, NULL,
                                             wscale, a, ahi, shift, lda, m, y, ldy, NULL))
            return;
        if (ck_cpu_has_avx2() && i16_gemm_avx2(codes, row_begin, row_count, cols, group_size, group_size, table, NULL,
                                               wscale, a, ahi, shift, lda, m, y, ldy, NULL))
            return;
    }
#endif
    i16_gemm_ref(codes, 1, row_begin, row_count, cols, group_size, 0, table, NULL, wscale, a, ahi, shift, lda, m, y,
                 ldy);
}

static void fp4_gemv_i16_any(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                             const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                             size_t lda, size_t m, float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    // The 32-column steps start on a group boundary: an even column, so on a byte of the codes.
    if (group_size % 2 == 0 || group_size >= cols) {
        if (ck_cpu_has_avx512vnni()) {
            i16_gemv_vnni(codes, row_begin, row_count, cols, group_size, table, wscale, a, ahi, shift, lda, m, y, ldy);
            return;
        }
        if (ck_cpu_has_avx2()) {
            i16_gemv_avx2(codes, row_begin, row_count, cols, group_size, table, wscale, a, ahi, shift, lda, m, y, ldy);
            return;
        }
    }
#endif
    i16_gemm_ref(codes, 1, row_begin, row_count, cols, group_size, 0, table, NULL, wscale, a, ahi, shift, lda, m, y,
                 ldy);
}

static void fp8_gemm_i16_any(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                             size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a,
                             const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
    if (sum_len == 0 || sum_len > group_size) sum_len = group_size;
#if defined(__x86_64__)
    // Sums must not split a column pair and must tile their group exactly.
    const int sums_ok = sum_len == group_size || (sum_len % 2 == 0 && group_size % sum_len == 0);
    if ((group_size % 2 == 0 || group_size >= cols) && sums_ok) {
        if (i16_use_512(ahi) && i16_gemm_512(codes, row_begin, row_count, cols, group_size, sum_len, NULL, table,
                                             wscale, a, ahi, shift, lda, m, y, ldy, NULL))
            return;
        if (ck_cpu_has_avx2() && i16_gemm_avx2(codes, row_begin, row_count, cols, group_size, sum_len, NULL, table,
                                               wscale, a, ahi, shift, lda, m, y, ldy, NULL))
            return;
    }
#endif
    i16_gemm_ref(codes, 0, row_begin, row_count, cols, group_size, sum_len, NULL, table, wscale, a, ahi, shift, lda, m,
                 y, ldy);
}

void ck_fp4_gemm_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const int8_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m, float *y,
                     size_t ldy) {
    fp4_gemm_i16_any(codes, row_begin, row_count, cols, group_size, table, wscale, a, NULL, 0, lda, m, y, ldy);
}

void ck_fp4_gemv_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const int8_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m, float *y,
                     size_t ldy) {
    fp4_gemv_i16_any(codes, row_begin, row_count, cols, group_size, table, wscale, a, NULL, 0, lda, m, y, ldy);
}

void ck_fp8_gemm_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m,
                     float *y, size_t ldy) {
    fp8_gemm_i16_any(codes, row_begin, row_count, cols, group_size, sum_len, table, wscale, a, NULL, 0, lda, m, y, ldy);
}

void ck_fp4_gemm_i16x2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                       size_t lda, size_t m, float *y, size_t ldy) {
    fp4_gemm_i16_any(codes, row_begin, row_count, cols, group_size, table, wscale, a, ahi, shift, lda, m, y, ldy);
}

void ck_fp4_gemv_i16x2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                       size_t lda, size_t m, float *y, size_t ldy) {
    fp4_gemv_i16_any(codes, row_begin, row_count, cols, group_size, table, wscale, a, ahi, shift, lda, m, y, ldy);
}

void ck_fp8_gemm_i16x2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a, const int16_t *ahi,
                       int shift, size_t lda, size_t m, float *y, size_t ldy) {
    fp8_gemm_i16_any(codes, row_begin, row_count, cols, group_size, sum_len, table, wscale, a, ahi, shift, lda, m, y,
                     ldy);
}

int ck_fp8_gemv_i16_bytes(int mag_bits, const int16_t *table) {
#if defined(__x86_64__)
    uint8_t mags[128];
    return ck_fp8_gemv_i16_available(mag_bits) && __builtin_cpu_supports("avx512vbmi") && fp8_u8_on() &&
           u8_magnitudes(mag_bits, table, mags);
#else
    (void)mag_bits;
    (void)table;
    return 0;
#endif
}

int ck_fp8_gemv_i16_available(int mag_bits) {
#if defined(__x86_64__)
    return mag_bits >= 1 && mag_bits <= 7 && ck_cpu_has_avx512vnni() && __builtin_cpu_supports("avx512bw");
#else
    (void)mag_bits;
    return 0;
#endif
}

void ck_fp8_gemv_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     size_t sum_len, int mag_bits, const int16_t *table, const float *wscale, const int16_t *a,
                     const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
    if (sum_len == 0 || sum_len > group_size) sum_len = group_size;
#if defined(__x86_64__)
    if (ck_fp8_gemv_i16_available(mag_bits)) {
        for (size_t i = 0; i < m; i++)
            if (!u8_fp8_gemv(codes, row_begin, row_count, cols, group_size, sum_len, mag_bits, table, wscale,
                             a + i * lda, ahi ? ahi + i * lda : NULL, shift, y + i * ldy))
                i16_bytes_gemv_512(codes, row_begin, row_count, cols, group_size, sum_len, mag_bits, table, wscale,
                                   a + i * lda, ahi ? ahi + i * lda : NULL, shift, y + i * ldy);
        return;
    }
#endif
    i16_gemm_ref(codes, 0, row_begin, row_count, cols, group_size, sum_len, NULL, table, wscale, a, ahi, shift, lda, m,
                 y, ldy);
}

// ---- the prefill GEMM on the byte-plane layout (issue 13) -----------------------------------------

void ck_fp4_gemm_i16x2_u8_ref(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                              size_t cols, size_t group_size, const int8_t *table, const int16_t *a,
                              const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
    const size_t groups = i16_groups(cols, group_size), stride = (cols + 1) / 2;
    // One row at a time back to nibble codes and row-major scales, then the nibble reference.
    uint8_t *row = (uint8_t *)calloc(stride ? stride : 1, 1);
    float *scale = (float *)malloc((groups ? groups : 1) * sizeof(float));
    if (!row || !scale) {
        free(row);
        free(scale);
        return;
    }
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        for (size_t j = 0; j < cols; j += 2)
            row[j / 2] = (uint8_t)(u8_layout_code_ref(packed, cols, o, j) | u8_layout_code_ref(packed, cols, o, j + 1) << 4);
        for (size_t g = 0; g < groups; g++) scale[g] = pscale[((o / 16) * groups + g) * 16 + o % 16];
        i16_gemm_ref(row, 1, 0, 1, cols, group_size, 0, table, NULL, scale, a, ahi, shift, lda, m, y + o, ldy);
    }
    free(row);
    free(scale);
}

void ck_fp4_gemm_i16x2_u8(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                          size_t cols, size_t group_size, const int8_t *table, const int16_t *a, const int16_t *ahi,
                          int shift, size_t lda, size_t m, float *y, size_t ldy) {
    if (group_size == 0 || group_size > cols) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    // Whole 16-row blocks from a block start; the layout's shape (ck_fp4_u8_shape_ok).
    if (row_begin % 16 == 0 && ck_fp4_u8_shape_ok(cols, group_size)) {
        if (i16_use_512(ahi) && __builtin_cpu_supports("avx512bw") &&
            i16_gemm_512(packed, row_begin, row_count, cols, group_size, group_size, table, NULL, NULL, a, ahi, shift,
                         lda, m, y, ldy, pscale))
            return;
        if (ck_cpu_has_avx2() && i16_gemm_avx2(packed, row_begin, row_count, cols, group_size, group_size, table, NULL,
                                               NULL, a, ahi, shift, lda, m, y, ldy, pscale))
            return;
    }
#endif
    ck_fp4_gemm_i16x2_u8_ref(packed, pscale, row_begin, row_count, cols, group_size, table, a, ahi, shift, lda, m, y,
                             ldy);
}
