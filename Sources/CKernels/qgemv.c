#include "ckernels.h"
#include "ck_runtime.h"
#include "x86_common.h"
#include <immintrin.h>
#include <stdlib.h>

// Weight-only kernels: unsigned codes (4-bit nibbles or bytes) with per-group scale and zero,
// float activations.
//
// GEMV: y[o] = sum_g s[o,g] * (sum_{j in g} x[j]*u[o,j]) - sum_g s[o,g] * z[o,g] * xsum[g] where
// xsum[g] = sum_{j in g} x[j] is computed once per call. The AVX2 path widens codes to int32
// lanes, converts them to float and FMAs them with x into 8-lane group accumulators; each
// group's vector is folded into a row accumulator with one FMA by the group's scale (two row
// accumulators, by group parity, for short groups), and the row is reduced horizontally once.
// Common group sizes (32, 64, 128) unroll completely. The u4 fast path permutes x per
// 16-column block (even elements, then odd) so a nibble pair needs only an AND and a shift;
// it needs groups that start on multiples of 16 and otherwise the general path re-interleaves
// nibbles. Columns short of a full vector block go through scalar code.
//
// Dequantization: tile[r, j] = s * ((float)u - z), the same two float operations as
// IntegerWeight.value, so the AVX2 path is exact.

size_t ck_u4_row_bytes(size_t cols) { return (cols + 1) / 2; }

static inline unsigned u4_at(const uint8_t *row, size_t j) {
    const uint8_t byte = row[j >> 1];
    return (j & 1) ? (unsigned)(byte >> 4) : (unsigned)(byte & 0x0F);
}

static inline size_t group_count(size_t cols, size_t group_size) {
    return (cols + group_size - 1) / group_size;
}

/// Per-group sums of x; uses `stack` when it is large enough, else the heap.
static float *group_sums(const float *x, size_t cols, size_t group_size, float *stack, size_t stack_count) {
    const size_t groups = group_count(cols, group_size);
    float *xs = groups <= stack_count ? stack : (float *)malloc(groups * sizeof(float));
    if (!xs) return NULL;
    for (size_t g = 0; g < groups; g++) {
        const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
        float s = 0;
        for (size_t j = j0; j < j1; j++) s += x[j];
        xs[g] = s;
    }
    return xs;
}

// ---- references ------------------------------------------------------------------------------

void ck_gemv_u4_f32_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros,
                        const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = group_count(cols, group_size), stride = ck_u4_row_bytes(cols);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        float y_o = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            float dot = 0, xs = 0;
            for (size_t j = j0; j < j1; j++) {
                dot += x[j] * (float)u4_at(row, j);
                xs += x[j];
            }
            y_o += scales[o * groups + g] * (dot - zeros[o * groups + g] * xs);
        }
        y[o] = y_o;
    }
}

void ck_gemv_u8_f32_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros,
                        const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = group_count(cols, group_size);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * cols;
        float y_o = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            float dot = 0, xs = 0;
            for (size_t j = j0; j < j1; j++) {
                dot += x[j] * (float)row[j];
                xs += x[j];
            }
            y_o += scales[o * groups + g] * (dot - zeros[o * groups + g] * xs);
        }
        y[o] = y_o;
    }
}

void ck_dequant_u4_rows_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                            size_t group_size, const float *scales, const float *zeros, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = group_count(cols, group_size), stride = ck_u4_row_bytes(cols);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = codes + o * stride;
        for (size_t j = 0; j < cols; j++) {
            const size_t g = j / group_size;
            float v = (float)u4_at(row, j) - zeros[o * groups + g];
            out[r * cols + j] = scales[o * groups + g] * v;
        }
    }
}

void ck_dequant_u8_rows_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                            size_t group_size, const float *scales, const float *zeros, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
    const size_t groups = group_count(cols, group_size);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = codes + o * cols;
        for (size_t j = 0; j < cols; j++) {
            const size_t g = j / group_size;
            float v = (float)row[j] - zeros[o * groups + g];
            out[r * cols + j] = scales[o * groups + g] * v;
        }
    }
}

// ---- AVX2 ------------------------------------------------------------------------------------

#if defined(__x86_64__)

/// 16 packed bytes → 32 codes in element order, as two 16-byte vectors.
CK_INLINE CK_AVX2 void unpack_u4x32(const uint8_t *p, __m128i *e0, __m128i *e1) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i bytes = _mm_loadu_si128((const __m128i *)p);
    const __m128i lo = _mm_and_si128(bytes, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    *e0 = _mm_unpacklo_epi8(lo, hi); // elements 0..15
    *e1 = _mm_unpackhi_epi8(lo, hi); // elements 16..31
}

CK_INLINE CK_AVX2 __m256 u8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }

/// sum_g s[g] * z[g] * xsum[g]: the zero-point part of one row.
CK_INLINE CK_AVX2 float zero_term(const float *s, const float *z, const float *xsum, size_t groups) {
    __m256 acc = _mm256_setzero_ps();
    size_t g = 0;
    for (; g + 8 <= groups; g += 8)
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(s + g), _mm256_loadu_ps(z + g)),
                              _mm256_loadu_ps(xsum + g), acc);
    float sum = ck_hsum_ps(acc);
    for (; g < groups; g++) sum += s[g] * z[g] * xsum[g];
    return sum;
}

/// GEMV rows of u4 codes against x (xsum holds the per-group sums of x). General layout:
/// 16 packed bytes are split into nibbles and re-interleaved into element order.
CK_AVX2 static void gemv_u4_rows_avx2(const uint8_t *codes, size_t row_begin, size_t row_count,
                                      size_t cols, size_t group_size, const float *scales,
                                      const float *zeros, const float *x, const float *xsum,
                                      float *y) {
    const size_t groups = group_count(cols, group_size), stride = ck_u4_row_bytes(cols);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        const float *s = scales + o * groups, *z = zeros + o * groups;
        __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
        float scalar_total = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            float dot = 0;
            size_t j = j0;
            if (j & 1) { dot += x[j] * (float)u4_at(row, j); j++; }
            for (; j + 32 <= j1; j += 32) {
                __m128i e0, e1;
                unpack_u4x32(row + (j >> 1), &e0, &e1);
                a0 = _mm256_fmadd_ps(u8x8_to_ps(e0), _mm256_loadu_ps(x + j), a0);
                a1 = _mm256_fmadd_ps(u8x8_to_ps(_mm_srli_si128(e0, 8)), _mm256_loadu_ps(x + j + 8), a1);
                a2 = _mm256_fmadd_ps(u8x8_to_ps(e1), _mm256_loadu_ps(x + j + 16), a2);
                a3 = _mm256_fmadd_ps(u8x8_to_ps(_mm_srli_si128(e1, 8)), _mm256_loadu_ps(x + j + 24), a3);
            }
            for (; j < j1; j++) dot += x[j] * (float)u4_at(row, j);
            const __m256 gsum = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            // Two row accumulators by group parity halve the FMA latency chain for small groups.
            if (g & 1) total1 = _mm256_fmadd_ps(gsum, _mm256_set1_ps(s[g]), total1);
            else total0 = _mm256_fmadd_ps(gsum, _mm256_set1_ps(s[g]), total0);
            if (dot != 0) scalar_total += s[g] * dot;
        }
        y[o] = ck_hsum_ps(_mm256_add_ps(total0, total1)) + scalar_total - zero_term(s, z, xsum, groups);
    }
}

/// Dot product of `blocks` 16-column blocks of packed u4 codes with the permuted x (see below),
/// as an 8-lane partial sum. Four accumulators hide the FMA latency; with a constant `blocks`
/// the loop unrolls completely.
CK_INLINE CK_AVX2 __m256 u4_blocks_dot(const uint8_t *p, const float *xg, size_t blocks) {
    const __m256i mask = _mm256_set1_epi32(0x0F);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    size_t b = 0;
    for (; b + 2 <= blocks; b += 2) {
        const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * b)));
        const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * b + 8)));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, mask)), _mm256_loadu_ps(xg + 16 * b), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), _mm256_loadu_ps(xg + 16 * b + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, mask)), _mm256_loadu_ps(xg + 16 * b + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), _mm256_loadu_ps(xg + 16 * b + 24), acc3);
    }
    if (b < blocks) {
        const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * b)));
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, mask)), _mm256_loadu_ps(xg + 16 * b), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), _mm256_loadu_ps(xg + 16 * b + 8), acc1);
    }
    return _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
}

/// Sum over the first `full` groups (all of group_size columns) of s[g] * (codes · x over g),
/// two groups per step into two row accumulators.
CK_INLINE CK_AVX2 __m256 u4_full_groups(const uint8_t *row, const float *xp, const float *s, size_t full,
                                        size_t group_size) {
    const size_t blocks = group_size / 16;
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
    size_t g = 0;
    for (; g + 2 <= full; g += 2) {
        const __m256 d0 = u4_blocks_dot(row + g * group_size / 2, xp + g * group_size, blocks);
        const __m256 d1 = u4_blocks_dot(row + (g + 1) * group_size / 2, xp + (g + 1) * group_size, blocks);
        total0 = _mm256_fmadd_ps(d0, _mm256_set1_ps(s[g]), total0);
        total1 = _mm256_fmadd_ps(d1, _mm256_set1_ps(s[g + 1]), total1);
    }
    if (g < full)
        total0 = _mm256_fmadd_ps(u4_blocks_dot(row + g * group_size / 2, xp + g * group_size, blocks),
                                 _mm256_set1_ps(s[g]), total0);
    return _mm256_add_ps(total0, total1);
}

/// Fast u4 GEMV when every group starts on a multiple of 16 columns. x is first permuted per
/// 16-column block into even elements then odd ones (xp), so 8 packed bytes widened to 8 int32
/// lanes give the even codes with one AND and the odd codes with one shift: no re-interleave.
/// Complete groups of the common sizes run fully unrolled; a ragged last group and the columns
/// past its last full 16-block (which use x and scalar code) follow.
CK_AVX2 static void gemv_u4_rows_avx2_even(const uint8_t *codes, size_t row_begin, size_t row_count,
                                           size_t cols, size_t group_size, const float *scales,
                                           const float *zeros, const float *x, const float *xp,
                                           const float *xsum, float *y) {
    const size_t groups = group_count(cols, group_size), stride = ck_u4_row_bytes(cols);
    // Group sizes that are not a multiple of 16 only come here as one group per row, which
    // then goes through the ragged-group code.
    const size_t full = group_size % 16 == 0 ? cols / group_size : 0;
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * stride;
        const float *s = scales + o * groups, *z = zeros + o * groups;
        __m256 total;
        switch (group_size) {
        case 32: total = u4_full_groups(row, xp, s, full, 32); break;
        case 64: total = u4_full_groups(row, xp, s, full, 64); break;
        case 128: total = u4_full_groups(row, xp, s, full, 128); break;
        default: total = u4_full_groups(row, xp, s, full, group_size); break;
        }
        float scalar_total = 0;
        if (full < groups) { // ragged last group
            const size_t j0 = full * group_size, blocks = (cols - j0) / 16;
            total = _mm256_fmadd_ps(u4_blocks_dot(row + j0 / 2, xp + j0, blocks), _mm256_set1_ps(s[full]), total);
            float dot = 0;
            for (size_t j = j0 + 16 * blocks; j < cols; j++) dot += x[j] * (float)u4_at(row, j);
            scalar_total = s[full] * dot;
        }
        y[o] = ck_hsum_ps(total) + scalar_total - zero_term(s, z, xsum, groups);
    }
}

/// Dot product of `blocks` 8-column blocks of u8 codes with x, as an 8-lane partial sum.
CK_INLINE CK_AVX2 __m256 u8_blocks_dot(const uint8_t *p, const float *xg, size_t blocks) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    size_t b = 0;
    for (; b + 4 <= blocks; b += 4) {
        acc0 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(p + 8 * b))), _mm256_loadu_ps(xg + 8 * b), acc0);
        acc1 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(p + 8 * b + 8))), _mm256_loadu_ps(xg + 8 * b + 8), acc1);
        acc2 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(p + 8 * b + 16))), _mm256_loadu_ps(xg + 8 * b + 16), acc2);
        acc3 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(p + 8 * b + 24))), _mm256_loadu_ps(xg + 8 * b + 24), acc3);
    }
    for (; b < blocks; b++)
        acc0 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(p + 8 * b))), _mm256_loadu_ps(xg + 8 * b), acc0);
    return _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
}

CK_INLINE CK_AVX2 __m256 u8_full_groups(const uint8_t *row, const float *x, const float *s, size_t full,
                                        size_t group_size) {
    const size_t blocks = group_size / 8;
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
    size_t g = 0;
    for (; g + 2 <= full; g += 2) {
        const __m256 d0 = u8_blocks_dot(row + g * group_size, x + g * group_size, blocks);
        const __m256 d1 = u8_blocks_dot(row + (g + 1) * group_size, x + (g + 1) * group_size, blocks);
        total0 = _mm256_fmadd_ps(d0, _mm256_set1_ps(s[g]), total0);
        total1 = _mm256_fmadd_ps(d1, _mm256_set1_ps(s[g + 1]), total1);
    }
    if (g < full)
        total0 = _mm256_fmadd_ps(u8_blocks_dot(row + g * group_size, x + g * group_size, blocks),
                                 _mm256_set1_ps(s[g]), total0);
    return _mm256_add_ps(total0, total1);
}

/// Fast u8 GEMV when group_size is a multiple of 8 or there is one group per row.
CK_AVX2 static void gemv_u8_rows_avx2_even(const uint8_t *codes, size_t row_begin, size_t row_count,
                                           size_t cols, size_t group_size, const float *scales,
                                           const float *zeros, const float *x, const float *xsum,
                                           float *y) {
    const size_t groups = group_count(cols, group_size);
    const size_t full = group_size % 8 == 0 ? cols / group_size : 0;
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * cols;
        const float *s = scales + o * groups, *z = zeros + o * groups;
        __m256 total;
        switch (group_size) {
        case 32: total = u8_full_groups(row, x, s, full, 32); break;
        case 64: total = u8_full_groups(row, x, s, full, 64); break;
        case 128: total = u8_full_groups(row, x, s, full, 128); break;
        default: total = u8_full_groups(row, x, s, full, group_size); break;
        }
        float scalar_total = 0;
        if (full < groups) { // ragged last group
            const size_t j0 = full * group_size, blocks = (cols - j0) / 8;
            total = _mm256_fmadd_ps(u8_blocks_dot(row + j0, x + j0, blocks), _mm256_set1_ps(s[full]), total);
            float dot = 0;
            for (size_t j = j0 + 8 * blocks; j < cols; j++) dot += x[j] * (float)row[j];
            scalar_total = s[full] * dot;
        }
        y[o] = ck_hsum_ps(total) + scalar_total - zero_term(s, z, xsum, groups);
    }
}

CK_AVX2 static void gemv_u8_rows_avx2(const uint8_t *codes, size_t row_begin, size_t row_count,
                                      size_t cols, size_t group_size, const float *scales,
                                      const float *zeros, const float *x, const float *xsum,
                                      float *y) {
    const size_t groups = group_count(cols, group_size);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const uint8_t *row = codes + o * cols;
        const float *s = scales + o * groups, *z = zeros + o * groups;
        __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
        float scalar_total = 0;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            float dot = 0;
            size_t j = j0;
            for (; j + 32 <= j1; j += 32) {
                a0 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(row + j))), _mm256_loadu_ps(x + j), a0);
                a1 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(row + j + 8))), _mm256_loadu_ps(x + j + 8), a1);
                a2 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(row + j + 16))), _mm256_loadu_ps(x + j + 16), a2);
                a3 = _mm256_fmadd_ps(u8x8_to_ps(_mm_loadl_epi64((const __m128i *)(row + j + 24))), _mm256_loadu_ps(x + j + 24), a3);
            }
            for (; j + 8 <= j1; j += 8) {
                const __m128i v = _mm_loadl_epi64((const __m128i *)(row + j));
                a0 = _mm256_fmadd_ps(u8x8_to_ps(v), _mm256_loadu_ps(x + j), a0);
            }
            for (; j < j1; j++) dot += x[j] * (float)row[j];
            const __m256 gsum = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            // Two row accumulators by group parity halve the FMA latency chain for small groups.
            if (g & 1) total1 = _mm256_fmadd_ps(gsum, _mm256_set1_ps(s[g]), total1);
            else total0 = _mm256_fmadd_ps(gsum, _mm256_set1_ps(s[g]), total0);
            if (dot != 0) scalar_total += s[g] * dot;
        }
        y[o] = ck_hsum_ps(_mm256_add_ps(total0, total1)) + scalar_total - zero_term(s, z, xsum, groups);
    }
}

CK_AVX2 static void dequant_u4_avx2(const uint8_t *codes, size_t row_begin, size_t row_count,
                                    size_t cols, size_t group_size, const float *scales,
                                    const float *zeros, float *out) {
    const size_t groups = group_count(cols, group_size), stride = ck_u4_row_bytes(cols);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = codes + o * stride;
        float *dst = out + r * cols;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            const float s = scales[o * groups + g], z = zeros[o * groups + g];
            const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
            size_t j = j0;
            if (j & 1) { dst[j] = s * ((float)u4_at(row, j) - z); j++; }
            for (; j + 32 <= j1; j += 32) {
                __m128i e0, e1;
                unpack_u4x32(row + (j >> 1), &e0, &e1);
                _mm256_storeu_ps(dst + j, _mm256_mul_ps(sv, _mm256_sub_ps(u8x8_to_ps(e0), zv)));
                _mm256_storeu_ps(dst + j + 8, _mm256_mul_ps(sv, _mm256_sub_ps(u8x8_to_ps(_mm_srli_si128(e0, 8)), zv)));
                _mm256_storeu_ps(dst + j + 16, _mm256_mul_ps(sv, _mm256_sub_ps(u8x8_to_ps(e1), zv)));
                _mm256_storeu_ps(dst + j + 24, _mm256_mul_ps(sv, _mm256_sub_ps(u8x8_to_ps(_mm_srli_si128(e1, 8)), zv)));
            }
            for (; j < j1; j++) dst[j] = s * ((float)u4_at(row, j) - z);
        }
    }
}

CK_AVX2 static void dequant_u8_avx2(const uint8_t *codes, size_t row_begin, size_t row_count,
                                    size_t cols, size_t group_size, const float *scales,
                                    const float *zeros, float *out) {
    const size_t groups = group_count(cols, group_size);
    for (size_t r = 0; r < row_count; r++) {
        const size_t o = row_begin + r;
        const uint8_t *row = codes + o * cols;
        float *dst = out + r * cols;
        for (size_t g = 0; g < groups; g++) {
            const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
            const float s = scales[o * groups + g], z = zeros[o * groups + g];
            const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
            size_t j = j0;
            for (; j + 8 <= j1; j += 8) {
                const __m128i v = _mm_loadl_epi64((const __m128i *)(row + j));
                _mm256_storeu_ps(dst + j, _mm256_mul_ps(sv, _mm256_sub_ps(u8x8_to_ps(v), zv)));
            }
            for (; j < j1; j++) dst[j] = s * ((float)row[j] - z);
        }
    }
}
#endif

// ---- dispatch --------------------------------------------------------------------------------

void ck_gemv_u4_f32(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                    size_t group_size, const float *scales, const float *zeros,
                    const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) {
        float stack[512];
        float *xs = group_sums(x, cols, group_size, stack, 512);
        if (xs) {
            float *xp = NULL;
            if ((group_size % 16 == 0 || group_size >= cols) && cols >= 16 &&
                (xp = (float *)ck_thread_scratch(4, (cols & ~(size_t)15) * sizeof(float)))) {
                // Per 16-column block: the 8 even elements, then the 8 odd ones.
                for (size_t b = 0; b + 16 <= cols; b += 16)
                    for (size_t t = 0; t < 8; t++) {
                        xp[b + t] = x[b + 2 * t];
                        xp[b + 8 + t] = x[b + 2 * t + 1];
                    }
                gemv_u4_rows_avx2_even(codes, row_begin, row_count, cols, group_size, scales, zeros, x, xp, xs, y);
            } else {
                gemv_u4_rows_avx2(codes, row_begin, row_count, cols, group_size, scales, zeros, x, xs, y);
            }
            if (xs != stack) free(xs);
            return;
        }
    }
#endif
    ck_gemv_u4_f32_ref(codes, row_begin, row_count, cols, group_size, scales, zeros, x, y);
}

void ck_gemv_u8_f32(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                    size_t group_size, const float *scales, const float *zeros,
                    const float *x, float *y) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) {
        float stack[512];
        float *xs = group_sums(x, cols, group_size, stack, 512);
        if (xs) {
            if (group_size % 8 == 0 || group_size >= cols)
                gemv_u8_rows_avx2_even(codes, row_begin, row_count, cols, group_size, scales, zeros, x, xs, y);
            else
                gemv_u8_rows_avx2(codes, row_begin, row_count, cols, group_size, scales, zeros, x, xs, y);
            if (xs != stack) free(xs);
            return;
        }
    }
#endif
    ck_gemv_u8_f32_ref(codes, row_begin, row_count, cols, group_size, scales, zeros, x, y);
}

void ck_dequant_u4_rows(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { dequant_u4_avx2(codes, row_begin, row_count, cols, group_size, scales, zeros, out); return; }
#endif
    ck_dequant_u4_rows_ref(codes, row_begin, row_count, cols, group_size, scales, zeros, out);
}

void ck_dequant_u8_rows(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *scales, const float *zeros, float *out) {
    if (group_size == 0) group_size = cols ? cols : 1;
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { dequant_u8_avx2(codes, row_begin, row_count, cols, group_size, scales, zeros, out); return; }
#endif
    ck_dequant_u8_rows_ref(codes, row_begin, row_count, cols, group_size, scales, zeros, out);
}
