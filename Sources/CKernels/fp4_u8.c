#include "ck_runtime.h"
#include "fp_kernels.h"
#include "x86_common.h"
#include <string.h>

// FP4 weights × byte-plane activations: the decode GEMV of the int16 FP path on int8 VNNI
// (see fp_kernels.h for the layouts and the exact result).
//
// Why: the int16 GEMV (fp4_i16.c) measured µop-bound at decode: per 32 weights two pshufb, two
// sign extensions to int16 and two vpdpwssd (16 products each on ymm), plus one horizontal sum
// per row and group. Here each activation integer v is split into signed bytes
// v = b0 + 256·b1 (+ 65536·b2), the weight integer t is offset to the unsigned byte u = t + c
// (c = the table's largest |t|), and vpdpbusd multiplies 64 u8 × s8 pairs per instruction:
//   sum_j t_j·v_j = sum_p 256^p · sum_j u_j·b_pj − c·sum_j v_j,
// the last term row-independent (one int32 per group, once per token). The weights are
// repacked once at load so that each int32 lane holds one weight row (16 rows per zmm, four
// columns per lane): the per-row group sums come out in lanes, with no horizontal sums, and the
// nibble→byte lookup is one vpshufb per 64 weights with no widening.
//
// Exactness: vpdpbusd adds four u8×s8 products (each < 2^15) to an int32 lane without
// saturation, i.e. modulo 2^32, and every later step (shifts by 8·p, the correction) is
// arithmetic modulo 2^32 too; the result is the exact sum whenever that sum lies in int32, which
// the caller proves at load (the same bound as for the int16 kernels). So each group's integer
// equals the int16 kernels' and the scalar twin's, and the float steps (convert, multiply by the
// group scale, add in group order) are the reference's: bit for bit ck_fp4_gemm_i16x2_ref.

enum { U8_ROWS = 16 };

static inline size_t u8_groups(size_t cols, size_t group_size) { return (cols + group_size - 1) / group_size; }

int ck_fp4_u8_shape_ok(size_t cols, size_t group_size) {
    if (group_size == 0 || group_size > cols) group_size = cols;
    return cols > 0 && cols % 8 == 0 && group_size % 8 == 0;
}

size_t ck_fp4_u8_packed_bytes(size_t rows, size_t cols) {
    return (rows + U8_ROWS - 1) / U8_ROWS * U8_ROWS * (cols / 2);
}

size_t ck_fp4_u8_packed_scales(size_t rows, size_t cols, size_t group_size) {
    if (group_size == 0 || group_size > cols) group_size = cols;
    return (rows + U8_ROWS - 1) / U8_ROWS * U8_ROWS * u8_groups(cols, group_size);
}

static inline unsigned u8_code(const uint8_t *codes, size_t stride, size_t o, size_t j) {
    const uint8_t byte = codes[o * stride + (j >> 1)];
    return (j & 1) ? (unsigned)(byte >> 4) : (unsigned)(byte & 0x0F);
}

void ck_fp4_u8_pack(const uint8_t *codes, size_t rows, size_t cols, size_t group_size, const float *wscale,
                    uint8_t *packed, float *pscale) {
    if (group_size == 0 || group_size > cols) group_size = cols;
    const size_t stride = (cols + 1) / 2, groups = u8_groups(cols, group_size);
    const size_t blocks = (rows + U8_ROWS - 1) / U8_ROWS, steps = cols / 8;
    for (size_t b = 0; b < blocks; b++) {
        uint8_t *pb = packed + b * steps * 64;
        for (size_t q = 0; q < steps; q++)
            for (size_t r = 0; r < U8_ROWS; r++)
                for (size_t i = 0; i < 4; i++) {
                    const size_t o = b * U8_ROWS + r;
                    // Padding rows get code 0; their outputs are never stored.
                    const unsigned lo = o < rows ? u8_code(codes, stride, o, 8 * q + i) : 0;
                    const unsigned hi = o < rows ? u8_code(codes, stride, o, 8 * q + 4 + i) : 0;
                    pb[q * 64 + 4 * r + i] = (uint8_t)(lo | hi << 4);
                }
        for (size_t g = 0; g < groups; g++)
            for (size_t r = 0; r < U8_ROWS; r++) {
                const size_t o = b * U8_ROWS + r;
                pscale[(b * groups + g) * U8_ROWS + r] = o < rows ? wscale[o * groups + g] : 0.0f;
            }
    }
}

// ---- activations --------------------------------------------------------------------------------

/// The whole activation integer at column j (the split form's lo + 2^shift·hi).
static inline int32_t u8_value(const int16_t *a, const int16_t *ahi, int shift, size_t j) {
    return (int32_t)a[j] + (ahi ? (int32_t)((uint32_t)(int32_t)ahi[j] << shift) : 0);
}

static void u8_activations_ref(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t group_size,
                               int planes, int offset, int8_t *out, int32_t *corr) {
    if (group_size == 0 || group_size > cols) group_size = cols;
    const size_t groups = u8_groups(cols, group_size);
    for (size_t g = 0; g < groups; g++) {
        const size_t j1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
        uint32_t sum = 0;
        for (size_t j = g * group_size; j < j1; j++) {
            int32_t v = u8_value(a, ahi, shift, j);
            sum += (uint32_t)v;
            for (int p = 0; p < planes; p++) {
                const int8_t byte = (int8_t)(uint8_t)(uint32_t)v;
                out[(size_t)p * cols + j] = byte;
                v = (v - byte) >> 8; // exact: v - byte is a multiple of 256
            }
        }
        // c·sum_j v_j modulo 2^32 (see the top of the file).
        corr[g] = (int32_t)((uint32_t)offset * sum);
    }
}

#if defined(__x86_64__)
#define CK_U8 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

CK_U8 static void u8_activations_512(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t group_size,
                                     int planes, int offset, int8_t *out, int32_t *corr) {
    const size_t groups = u8_groups(cols, group_size);
    const __m128i cnt = _mm_cvtsi32_si128(shift);
    for (size_t g = 0; g < groups; g++) {
        const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
        __m512i sum = _mm512_setzero_si512();
        size_t j = j0;
        for (; j + 16 <= j1; j += 16) {
            __m512i v = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(a + j)));
            if (ahi)
                v = _mm512_add_epi32(v, _mm512_sll_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(ahi + j))), cnt));
            sum = _mm512_add_epi32(sum, v);
            for (int p = 0; p < planes; p++) {
                const __m512i byte = _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24);
                _mm_storeu_si128((__m128i *)(out + (size_t)p * cols + j), _mm512_cvtepi32_epi8(byte));
                v = _mm512_srai_epi32(_mm512_sub_epi32(v, byte), 8);
            }
        }
        uint32_t s = (uint32_t)_mm512_reduce_add_epi32(sum);
        for (; j < j1; j++) {
            int32_t v = u8_value(a, ahi, shift, j);
            s += (uint32_t)v;
            for (int p = 0; p < planes; p++) {
                const int8_t byte = (int8_t)(uint8_t)(uint32_t)v;
                out[(size_t)p * cols + j] = byte;
                v = (v - byte) >> 8;
            }
        }
        corr[g] = (int32_t)((uint32_t)offset * s);
    }
}

// ---- GEMV ---------------------------------------------------------------------------------------
//
// One block of 16 rows: per group, per 8 columns one 64-byte load (low nibbles columns
// 8q..8q+3, high nibbles 8q+4..8q+7 of all 16 rows), two vpshufb into the offset table, and per
// activation plane two vpdpbusd against that plane's four bytes broadcast to every lane.
CK_INLINE CK_U8 void u8_block(const uint8_t *pb, const float *ps, size_t cols, size_t group_size, size_t groups,
                              __m512i table, const int8_t *act, const int32_t *corr, const int P, float *y,
                              __mmask16 store) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    const int8_t *p0 = act, *p1 = act + cols, *p2 = act + 2 * cols;
    __m512 acc = _mm512_setzero_ps();
    for (size_t g = 0; g < groups; g++) {
        const size_t j0 = g * group_size, j1 = j0 + group_size < cols ? j0 + group_size : cols;
        __m512i s0 = _mm512_set1_epi32(-corr[g]), s1 = _mm512_setzero_si512(), s2 = _mm512_setzero_si512();
        for (size_t j = j0; j < j1; j += 8) {
            const __m512i x = _mm512_loadu_si512((const void *)(pb + j * 8));
            const __m512i wl = _mm512_shuffle_epi8(table, _mm512_and_si512(x, low4));
            const __m512i wh = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(x, 4), low4));
            int32_t b;
            memcpy(&b, p0 + j, 4); s0 = _mm512_dpbusd_epi32(s0, wl, _mm512_set1_epi32(b));
            memcpy(&b, p0 + j + 4, 4); s0 = _mm512_dpbusd_epi32(s0, wh, _mm512_set1_epi32(b));
            memcpy(&b, p1 + j, 4); s1 = _mm512_dpbusd_epi32(s1, wl, _mm512_set1_epi32(b));
            memcpy(&b, p1 + j + 4, 4); s1 = _mm512_dpbusd_epi32(s1, wh, _mm512_set1_epi32(b));
            if (P > 2) {
                memcpy(&b, p2 + j, 4); s2 = _mm512_dpbusd_epi32(s2, wl, _mm512_set1_epi32(b));
                memcpy(&b, p2 + j + 4, 4); s2 = _mm512_dpbusd_epi32(s2, wh, _mm512_set1_epi32(b));
            }
        }
        __m512i s = _mm512_add_epi32(s0, _mm512_slli_epi32(s1, 8));
        if (P > 2) s = _mm512_add_epi32(s, _mm512_slli_epi32(s2, 16));
        // Separate multiply and add, as the reference.
        const __m512 term = _mm512_mul_ps(_mm512_loadu_ps(ps + g * U8_ROWS), _mm512_cvtepi32_ps(s));
        acc = _mm512_add_ps(acc, term);
    }
    _mm512_mask_storeu_ps(y, store, acc);
}

CK_U8 static void u8_gemv_512(const uint8_t *packed, const float *pscale, size_t block_begin, size_t block_count,
                              size_t rows, size_t cols, size_t group_size, const uint8_t *utable, const int8_t *act,
                              int planes, const int32_t *corr, float *y) {
    const size_t groups = u8_groups(cols, group_size);
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)utable));
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        const size_t o = b * U8_ROWS;
        const __mmask16 store = rows - o >= U8_ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << (rows - o)) - 1);
        const uint8_t *pb = packed + b * (cols / 8) * 64;
        const float *ps = pscale + b * groups * U8_ROWS;
        if (planes == 2) u8_block(pb, ps, cols, group_size, groups, table, act, corr, 2, y + o, store);
        else u8_block(pb, ps, cols, group_size, groups, table, act, corr, 3, y + o, store);
    }
}
#endif

int ck_fp4_gemv_u8_available(void) {
#if defined(__x86_64__)
    return ck_cpu_has_avx512vnni() && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

void ck_fp4_u8_activations(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t group_size,
                           int planes, int offset, int8_t *out, int32_t *corr) {
    if (group_size == 0 || group_size > cols) group_size = cols;
#if defined(__x86_64__)
    if (ck_fp4_gemv_u8_available()) {
        u8_activations_512(a, ahi, shift, cols, group_size, planes, offset, out, corr);
        return;
    }
#endif
    u8_activations_ref(a, ahi, shift, cols, group_size, planes, offset, out, corr);
}

void ck_fp4_u8_activations_ref(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t group_size,
                               int planes, int offset, int8_t *out, int32_t *corr) {
    u8_activations_ref(a, ahi, shift, cols, group_size, planes, offset, out, corr);
}

void ck_fp4_gemv_u8_ref(const uint8_t *packed, const float *pscale, size_t block_begin, size_t block_count,
                        size_t rows, size_t cols, size_t group_size, const uint8_t *utable, const int8_t *act,
                        int planes, const int32_t *corr, float *y) {
    if (group_size == 0 || group_size > cols) group_size = cols;
    const size_t groups = u8_groups(cols, group_size);
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        const uint8_t *pb = packed + b * (cols / 8) * 64;
        for (size_t r = 0; r < U8_ROWS && b * U8_ROWS + r < rows; r++) {
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                const size_t j1 = (g + 1) * group_size < cols ? (g + 1) * group_size : cols;
                int64_t sum = -(int64_t)corr[g];
                for (size_t j = g * group_size; j < j1; j++) {
                    const uint8_t byte = pb[(j / 8) * 64 + 4 * r + (j % 4)];
                    const int64_t u = utable[(j % 8) < 4 ? (byte & 0x0F) : (byte >> 4)];
                    for (int p = 0; p < planes; p++) sum += u * act[(size_t)p * cols + j] * ((int64_t)1 << (8 * p));
                }
                // The int32 the vector path holds (modulo 2^32).
                float term = pscale[(b * groups + g) * U8_ROWS + r] * (float)(int32_t)(uint32_t)(uint64_t)sum;
                acc = acc + term;
            }
            y[b * U8_ROWS + r] = acc;
        }
    }
}

void ck_fp4_gemv_u8(const uint8_t *packed, const float *pscale, size_t block_begin, size_t block_count, size_t rows,
                    size_t cols, size_t group_size, const uint8_t *utable, const int8_t *act, int planes,
                    const int32_t *corr, float *y) {
    if (group_size == 0 || group_size > cols) group_size = cols;
#if defined(__x86_64__)
    if (ck_fp4_gemv_u8_available() && (planes == 2 || planes == 3)) {
        u8_gemv_512(packed, pscale, block_begin, block_count, rows, cols, group_size, utable, act, planes, corr, y);
        return;
    }
#endif
    ck_fp4_gemv_u8_ref(packed, pscale, block_begin, block_count, rows, cols, group_size, utable, act, planes, corr, y);
}

// ---- float tiles from the layout (issue 13: one copy of the codes) ------------------------------
//
// Layers that keep the float path at prefill (the split-form layers, fp_kernels.h) decode their
// tiles from this layout too. Per row, run q's dword (byte 4·r + i of the run) holds column
// 8q + i at bit 8i and 8q + 4 + i at bit 8i + 4; two runs fill one vector of 16 codes, looked up
// in the 16 float values (vpermps) and multiplied by the group's scale: the reference's one
// product per weight.

void ck_fp4_u8_decode_rows_ref(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                               size_t cols, size_t group_size, const float *table, float *out) {
    if (group_size == 0 || group_size > cols) group_size = cols;
    const size_t groups = u8_groups(cols, group_size), steps = cols / 8;
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const size_t b = o / U8_ROWS, r = o % U8_ROWS;
        float *dst = out + (o - row_begin) * cols;
        for (size_t j = 0; j < cols; j++) {
            const uint8_t byte = packed[(b * steps + j / 8) * 64 + 4 * r + (j & 3)];
            const unsigned code = (j & 4) ? (unsigned)(byte >> 4) : (unsigned)(byte & 0x0F);
            dst[j] = pscale[(b * groups + j / group_size) * U8_ROWS + r] * table[code];
        }
    }
}

#if defined(__x86_64__)
CK_AVX512 static void u8_decode_rows_avx512(const uint8_t *packed, const float *pscale, size_t row_begin,
                                            size_t row_count, size_t cols, size_t group_size, const float *table,
                                            float *out) {
    const size_t groups = u8_groups(cols, group_size), steps = cols / 8;
    const __m512 values = _mm512_loadu_ps(table);
    const __m512i shifts = _mm512_setr_epi32(0, 8, 16, 24, 4, 12, 20, 28, 0, 8, 16, 24, 4, 12, 20, 28);
    const __m512i low4 = _mm512_set1_epi32(0x0F);
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const size_t b = o / U8_ROWS, r = o % U8_ROWS;
        const uint8_t *src = packed + b * steps * 64 + 4 * r;
        const float *sc = pscale + b * groups * U8_ROWS + r;
        float *dst = out + (o - row_begin) * cols;
        size_t q = 0;
        for (; q + 2 <= steps; q += 2) {
            uint32_t d0, d1;
            memcpy(&d0, src + q * 64, 4);
            memcpy(&d1, src + (q + 1) * 64, 4);
            const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int)d0)),
                                                 _mm256_set1_epi32((int)d1), 1);
            const __m512i code = _mm512_and_si512(_mm512_srlv_epi32(v, shifts), low4);
            // Groups are whole runs (multiples of 8 columns): one scale per half.
            const __m512 s = _mm512_castpd_ps(_mm512_insertf64x4(
                _mm512_castps_pd(_mm512_set1_ps(sc[(8 * q / group_size) * U8_ROWS])),
                _mm256_castps_pd(_mm256_set1_ps(sc[(8 * (q + 1) / group_size) * U8_ROWS])), 1));
            _mm512_storeu_ps(dst + 8 * q, _mm512_mul_ps(s, _mm512_permutexvar_ps(code, values)));
        }
        if (q < steps) {
            uint32_t d0;
            memcpy(&d0, src + q * 64, 4);
            const __m512i code = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)d0), shifts), low4);
            const __m512 s = _mm512_set1_ps(sc[(8 * q / group_size) * U8_ROWS]);
            _mm512_mask_storeu_ps(dst + 8 * q, 0x00FF, _mm512_mul_ps(s, _mm512_permutexvar_ps(code, values)));
        }
    }
}
#endif

void ck_fp4_u8_decode_rows(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                           size_t cols, size_t group_size, const float *table, float *out) {
    if (group_size == 0 || group_size > cols) group_size = cols;
#if defined(__x86_64__)
    if (ck_fp4_u8_shape_ok(cols, group_size) && __builtin_cpu_supports("avx512f")) {
        u8_decode_rows_avx512(packed, pscale, row_begin, row_count, cols, group_size, table, out);
        return;
    }
#endif
    ck_fp4_u8_decode_rows_ref(packed, pscale, row_begin, row_count, cols, group_size, table, out);
}
