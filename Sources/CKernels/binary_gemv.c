#include "ckernels.h"
#include "binary_kernels.h"
#include "ck_runtime.h"
#include "x86_common.h"
#include <math.h>
#include <stdlib.h>

// Binarized GEMV (see binary_kernels.h). The AVX2 path takes 32 sign bits at a time, broadcasts
// them, and for each group of 8 lanes shifts lane j's bit into bit 31 (vpsllvd by 31 − bit), so
// `andnot(shifted, 0x80000000)` is the float sign to xor onto x: S·x costs 4 integer/float ops per
// 8 weights with no table and no unpacking. The AVX-512 path does the same with the bits as a
// lane mask (one masked xor and one add per 16 weights) on 8 rows per pass, sharing each x load.
//
// All three paths sum in the same order, so they agree bit for bit: per row 16 float lanes,
// lane L (0…15) accumulating bits q ≡ L (mod 16) of each 32-bit half-word in column order (the
// AVX2 path's two 8-lane accumulators; the AVX-512 path's one 16-lane accumulator), then
// t_j = lane j + lane 8 + j, (t0 + t4 + t2 + t6) + (t1 + t5 + t3 + t7) as `ck_hsum_ps` adds them,
// and y = fmaf(a, acc, b·n) (written out, so no path depends on the compiler's FMA contraction).

/// The fixed 16-lane reduction of all paths (the AVX2 `ck_hsum_ps` of lanes 0…7 + 8…15).
static float binary_lanes_sum(const float *lane) {
    float t[8];
    for (int j = 0; j < 8; j++) t[j] = lane[j] + lane[8 + j];
    const float u0 = t[0] + t[4], u1 = t[1] + t[5], u2 = t[2] + t[6], u3 = t[3] + t[7];
    return (u0 + u2) + (u1 + u3);
}

void ck_binary_gemv_ref(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                        size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                        float *y, float *rest) {
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint64_t *s = signs + o * words_per_row;
        const uint64_t *m = mask ? mask + o * words_per_row : NULL;
        float acc[16] = {0}, n[16] = {0};
        for (size_t h = 0; h < 2 * words_per_row; h++) {
            // Half h: bits 32·(h mod 2)… of word h / 2 (the fast paths read it as a uint32 on x86).
            const uint32_t sw = (uint32_t)(s[h / 2] >> (32 * (h & 1)));
            const uint32_t mw = m ? (uint32_t)(m[h / 2] >> (32 * (h & 1))) : 0;
            for (unsigned q = 0; q < 32; q++) {
                // A masked element contributes +0 to n and ±0 to acc, as in the fast paths.
                const float v = ((mw >> q) & 1) ? 0.0f : x[32 * h + q];
                acc[q & 15] += ((sw >> q) & 1) ? v : -v;
                n[q & 15] += v;
            }
        }
        const float sum = binary_lanes_sum(acc);
        if (m) {
            const float ns = binary_lanes_sum(n);
            y[o] = fmaf(a[o], sum, b[o] * ns);
            if (rest) rest[o] = ns;
        } else {
            y[o] = fmaf(a[o], sum, b[o] * x_sum);
        }
    }
}

#if defined(__x86_64__)
CK_AVX2 static void binary_gemv_avx2(const uint64_t *signs, const uint64_t *mask, size_t words_per_row,
                                     size_t row_begin, size_t row_count, const float *x, float x_sum,
                                     const float *a, const float *b, float *y, float *rest) {
    // Shift counts that bring bit 8g + j of a 32-bit word to bit 31 in lane j.
    const __m256i sh0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i sh1 = _mm256_setr_epi32(23, 22, 21, 20, 19, 18, 17, 16);
    const __m256i sh2 = _mm256_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8);
    const __m256i sh3 = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256i high = _mm256_set1_epi32((int)0x80000000u);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint32_t *s = (const uint32_t *)(signs + o * words_per_row);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        const size_t halves = 2 * words_per_row;  // little-endian: half 2w is bits 0…31 of word w
        if (!mask) {
            for (size_t h = 0; h < halves; h++) {
                const __m256i v = _mm256_set1_epi32((int)s[h]);
                const float *xp = x + 32 * h;
#define BIN_STEP(SH, OFF, ACC)                                                                      \
                ACC = _mm256_add_ps(ACC, _mm256_xor_ps(_mm256_loadu_ps(xp + OFF),                   \
                    _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_sllv_epi32(v, SH), high))));
                BIN_STEP(sh0, 0, acc0) BIN_STEP(sh1, 8, acc1) BIN_STEP(sh2, 16, acc0) BIN_STEP(sh3, 24, acc1)
#undef BIN_STEP
            }
            y[o] = fmaf(a[o], ck_hsum_ps(_mm256_add_ps(acc0, acc1)), b[o] * x_sum);
        } else {
            const uint32_t *m = (const uint32_t *)(mask + o * words_per_row);
            __m256 n0 = _mm256_setzero_ps(), n1 = _mm256_setzero_ps();
            for (size_t h = 0; h < halves; h++) {
                const __m256i v = _mm256_set1_epi32((int)s[h]), mv = _mm256_set1_epi32((int)m[h]);
                const float *xp = x + 32 * h;
#define BIN_MSTEP(SH, OFF, ACC, N)                                                                  \
                {                                                                                   \
                    const __m256 keep = _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_sllv_epi32(mv, SH), 31)); \
                    const __m256 xv = _mm256_andnot_ps(keep, _mm256_loadu_ps(xp + OFF));            \
                    N = _mm256_add_ps(N, xv);                                                       \
                    ACC = _mm256_add_ps(ACC, _mm256_xor_ps(xv,                                      \
                        _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_sllv_epi32(v, SH), high)))); \
                }
                BIN_MSTEP(sh0, 0, acc0, n0) BIN_MSTEP(sh1, 8, acc1, n1)
                BIN_MSTEP(sh2, 16, acc0, n0) BIN_MSTEP(sh3, 24, acc1, n1)
#undef BIN_MSTEP
            }
            const float n = ck_hsum_ps(_mm256_add_ps(n0, n1));
            y[o] = fmaf(a[o], ck_hsum_ps(_mm256_add_ps(acc0, acc1)), b[o] * n);
            if (rest) rest[o] = n;
        }
    }
}

// `R` rows from `o` on (R ≤ 8): per 32-bit half-word, the two x vectors are loaded once for all
// rows; each row's bits, inverted, are the lanes whose sign flips (bit 0 = −1): one masked xor and
// one add per 16 weights into the row's own 16-lane accumulator. Lane L holds x[32h + L] then
// x[32h + 16 + L], the AVX2 path's acc0 (L < 8) and acc1 (L ≥ 8) lanes in the same order. The R
// rows are adjacent in memory, so the sign words stream sequentially.
CK_INLINE CK_AVX512 void binary_rows_avx512(const uint64_t *signs, const uint64_t *mask, size_t words_per_row,
                                             size_t o, const int R, const float *x, float x_sum, const float *a,
                                             const float *b, float *y, float *rest) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const size_t halves = 2 * words_per_row;
    const uint32_t *s = (const uint32_t *)(signs + o * words_per_row);
    // Fully unrolled (R is a constant after inlining) so the accumulators stay in registers.
    __m512 acc[8], n[8];
    _Pragma("clang loop unroll(full)") for (int r = 0; r < R; r++) acc[r] = n[r] = _mm512_setzero_ps();
    if (!mask) {
        // −x once per half-word for all rows; a set bit flips it back to x (−(−x) = x bit for bit),
        // so the sign words load straight into mask registers, no inversion in general registers.
        const __mmask16 *s16 = (const __mmask16 *)s;
        for (size_t h = 0; h < halves; h++) {
            const __m512i n0 = _mm512_xor_si512(_mm512_castps_si512(_mm512_loadu_ps(x + 32 * h)), sign);
            const __m512i n1 = _mm512_xor_si512(_mm512_castps_si512(_mm512_loadu_ps(x + 32 * h + 16)), sign);
            _Pragma("clang loop unroll(full)") for (int r = 0; r < R; r++) {
                const __mmask16 k0 = _load_mask16((__mmask16 *)(s16 + 2 * (r * halves + h)));
                const __mmask16 k1 = _load_mask16((__mmask16 *)(s16 + 2 * (r * halves + h) + 1));
                acc[r] = _mm512_add_ps(acc[r], _mm512_castsi512_ps(_mm512_mask_xor_epi32(n0, k0, n0, sign)));
                acc[r] = _mm512_add_ps(acc[r], _mm512_castsi512_ps(_mm512_mask_xor_epi32(n1, k1, n1, sign)));
            }
        }
    } else {
        const uint32_t *m = (const uint32_t *)(mask + o * words_per_row);
        for (size_t h = 0; h < halves; h++) {
            const __m512 x0 = _mm512_loadu_ps(x + 32 * h), x1 = _mm512_loadu_ps(x + 32 * h + 16);
            _Pragma("clang loop unroll(full)") for (int r = 0; r < R; r++) {
                const uint32_t flip = ~s[r * halves + h], keep = ~m[r * halves + h];
                // Masked lanes become +0 (the AVX2 path's andnot), then the sign flip as above.
                const __m512i v0 = _mm512_castps_si512(_mm512_maskz_mov_ps((__mmask16)keep, x0));
                const __m512i v1 = _mm512_castps_si512(_mm512_maskz_mov_ps((__mmask16)(keep >> 16), x1));
                n[r] = _mm512_add_ps(n[r], _mm512_castsi512_ps(v0));
                acc[r] = _mm512_add_ps(acc[r], _mm512_castsi512_ps(_mm512_mask_xor_epi32(v0, (__mmask16)flip, v0, sign)));
                n[r] = _mm512_add_ps(n[r], _mm512_castsi512_ps(v1));
                acc[r] = _mm512_add_ps(acc[r], _mm512_castsi512_ps(
                    _mm512_mask_xor_epi32(v1, (__mmask16)(flip >> 16), v1, sign)));
            }
        }
    }
    _Pragma("clang loop unroll(full)") for (int r = 0; r < R; r++) {
        // One reduction per row (not per block), in ck_hsum_ps's order.
        const float sum = ck_hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(acc[r]),
                                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r]), 1))));
        if (mask) {
            const float ns = ck_hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(n[r]),
                                                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(n[r]), 1))));
            y[o + r] = fmaf(a[o + r], sum, b[o + r] * ns);
            if (rest) rest[o + r] = ns;
        } else {
            y[o + r] = fmaf(a[o + r], sum, b[o + r] * x_sum);
        }
    }
}

CK_AVX512 static void binary_gemv_avx512(const uint64_t *signs, const uint64_t *mask, size_t words_per_row,
                                         size_t row_begin, size_t row_count, const float *x, float x_sum,
                                         const float *a, const float *b, float *y, float *rest) {
    const size_t end = row_begin + row_count;
    size_t o = row_begin;
    for (; o + 8 <= end; o += 8) binary_rows_avx512(signs, mask, words_per_row, o, 8, x, x_sum, a, b, y, rest);
    for (; o < end; o++) binary_rows_avx512(signs, mask, words_per_row, o, 1, x, x_sum, a, b, y, rest);
}
#endif

void ck_binary_gemv(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                    size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                    float *y, float *rest) {
#if defined(__x86_64__)
    // The AVX-512 path follows the VNNI switch (ck_set_vnni_enabled), so tests and
    // `ptq bench --kernels` reach both; both give the same bits.
    if (ck_cpu_has_avx512vnni()) {
        binary_gemv_avx512(signs, mask, words_per_row, row_begin, row_count, x, x_sum, a, b, y, rest);
        return;
    }
    if (ck_cpu_has_avx2()) {
        binary_gemv_avx2(signs, mask, words_per_row, row_begin, row_count, x, x_sum, a, b, y, rest);
        return;
    }
#endif
    ck_binary_gemv_ref(signs, mask, words_per_row, row_begin, row_count, x, x_sum, a, b, y, rest);
}

// ---- prefill tiles (column masks) -------------------------------------------------------------

static inline unsigned binary_code_at(const uint8_t *row, int nibbles, size_t s) {
    return nibbles ? (unsigned)((s & 1) ? row[s >> 1] >> 4 : row[s >> 1] & 0x0F) : (unsigned)row[s];
}

void ck_binary_decode_rows_ref(const uint64_t *signs, size_t words_per_row, const uint64_t *binary_mask,
                               const float *col_scale, const float *a, const float *b, const uint8_t *codes,
                               int nibbles, size_t code_stride, size_t ns, const float *d, const float *z,
                               size_t row_begin, size_t row_count, size_t cols, float *out) {
    (void)ns;
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint64_t *words = signs + o * words_per_row;
        const uint8_t *crow = codes ? codes + o * code_stride : NULL;
        const float plus = a[o] + b[o], minus = b[o] - a[o];
        float *row = out + r * cols;
        size_t c = 0, s = 0;
        for (size_t j = 0; j < cols; j++) {
            if ((binary_mask[j >> 6] >> (j & 63)) & 1) {
                const int bit = (int)((words[c >> 6] >> (c & 63)) & 1);
                row[j] = col_scale[j] * (bit ? plus : minus);
                c++;
            } else {
                row[j] = d[o] * ((float)binary_code_at(crow, nibbles, s) - z[o]);
                s++;
            }
        }
    }
}

#if defined(__x86_64__)
#define CK_AVX512_BMI2 __attribute__((target("avx2,fma,f16c,avx512f,bmi,bmi2,popcnt")))

/// The row's salient values d·(u − z) in salient order, 16 at a time (same operations as the
/// scalar twin: convert, subtract, multiply).
CK_INLINE CK_AVX512_BMI2 void binary_salient_row(const uint8_t *crow, int nibbles, size_t ns, float d, float z,
                                                 float *dst) {
    const __m512 vd = _mm512_set1_ps(d), vz = _mm512_set1_ps(z);
    size_t s = 0;
    for (; s + 16 <= ns; s += 16) {
        __m128i bytes;
        if (nibbles) {
            const __m128i packed = _mm_loadl_epi64((const __m128i *)(crow + s / 2));  // 16 nibbles
            const __m128i low4 = _mm_set1_epi8(0x0F);
            bytes = _mm_unpacklo_epi8(_mm_and_si128(packed, low4), _mm_and_si128(_mm_srli_epi16(packed, 4), low4));
        } else {
            bytes = _mm_loadu_si128((const __m128i *)(crow + s));
        }
        const __m512 u = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
        _mm512_storeu_ps(dst + s, _mm512_mul_ps(vd, _mm512_sub_ps(u, vz)));
    }
    for (; s < ns; s++) dst[s] = d * ((float)binary_code_at(crow, nibbles, s) - z);
}

/// Per 64 natural columns: the next popcount(mask) packed sign bits are spread onto the
/// binarized columns' positions with pdep; per 16 columns, one blend of the row's two values,
/// one multiply by the column scales, and one expand-load of the salient values into the
/// salient lanes.
CK_AVX512_BMI2 static void binary_decode_rows_avx512(const uint64_t *signs, size_t words_per_row,
                                                     const uint64_t *binary_mask, const float *col_scale,
                                                     const float *a, const float *b, const uint8_t *codes,
                                                     int nibbles, size_t code_stride, size_t ns, const float *d,
                                                     const float *z, size_t row_begin, size_t row_count,
                                                     size_t cols, float *out, float *salient) {
    const size_t natural_words = (cols + 63) / 64;
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint64_t *words = signs + o * words_per_row;
        if (ns) binary_salient_row(codes + o * code_stride, nibbles, ns, d[o], z[o], salient);
        const __m512 vplus = _mm512_set1_ps(a[o] + b[o]), vminus = _mm512_set1_ps(b[o] - a[o]);
        float *row = out + r * cols;
        size_t pos = 0;          // packed sign bits consumed
        const float *sp = salient;
        for (size_t w = 0; w < natural_words; w++) {
            const uint64_t m = binary_mask[w];
            const unsigned count = (unsigned)__builtin_popcountll(m);
            uint64_t field = 0;
            if (count) {
                const size_t wi = pos >> 6, sh = pos & 63;
                field = words[wi] >> sh;
                if (sh && sh + count > 64) field |= words[wi + 1] << (64 - sh);
            }
            const uint64_t spread = _pdep_u64(field, m);
            pos += count;
            for (unsigned q = 0; q < 4; q++) {
                const size_t j = w * 64 + q * 16;
                if (j >= cols) break;
                const __mmask16 valid = cols - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - j)) - 1);
                const __mmask16 bin = (__mmask16)(m >> (q * 16)) & valid;
                const __mmask16 sal = (__mmask16)~bin & valid;
                const __m512 sel = _mm512_mask_blend_ps((__mmask16)(spread >> (q * 16)), vminus, vplus);
                __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(bin, col_scale + j), sel);
                v = _mm512_mask_expandloadu_ps(v, sal, sp);
                sp += __builtin_popcount((unsigned)sal);
                _mm512_mask_storeu_ps(row + j, valid, v);
            }
        }
    }
}
#endif

void ck_binary_decode_rows(const uint64_t *signs, size_t words_per_row, const uint64_t *binary_mask,
                           const float *col_scale, const float *a, const float *b, const uint8_t *codes,
                           int nibbles, size_t code_stride, size_t ns, const float *d, const float *z,
                           size_t row_begin, size_t row_count, size_t cols, float *out) {
#if defined(__x86_64__)
    // Behind the AVX-512 switch as the GEMV (ck_set_vnni_enabled), so the tests reach both paths.
    if (ck_cpu_has_avx512vnni() && __builtin_cpu_supports("bmi2")) {
        float stack[512];
        float *salient = ns <= 512 ? stack : (float *)malloc(ns * sizeof(float));
        if (salient) {
            binary_decode_rows_avx512(signs, words_per_row, binary_mask, col_scale, a, b, codes, nibbles, code_stride,
                                      ns, d, z, row_begin, row_count, cols, out, salient);
            if (salient != stack) free(salient);
            return;
        }
    }
#endif
    ck_binary_decode_rows_ref(signs, words_per_row, binary_mask, col_scale, a, b, codes, nibbles, code_stride, ns, d,
                              z, row_begin, row_count, cols, out);
}
