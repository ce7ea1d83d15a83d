#include "ckernels.h"
#include "ck_runtime.h"
#include <immintrin.h>

/// Interleaved group scale of row o, group g ([block of 8 rows][group][8], ck_q4x8_scales).
#define CK_SC8(ws, groups, o, g) (ws)[((o) >> 3) * (groups) * 8 + (g) * 8 + ((o) & 7)]

// Nibble-packed integer weights × int8 activations (the W4A8 integer path): see ck_runtime.h.
//
// Layout "q4x8" (ggml's 8-row repack idea): weight rows in blocks of 8; within a block, 32-byte
// units of 8 columns × 8 rows. Lane r (bytes 4r…4r+3) of unit w holds row r's columns 8w…8w+3 in
// its low nibbles and 8w+4…8w+7 in its high nibbles. One AND (and one shift + AND) of a unit
// gives 8 rows × 4 columns as unsigned bytes, the unsigned operand of vpdpbusd / maddubs, against
// the 4 activation codes of those columns broadcast to every lane: each int32 lane accumulates
// its own row's dot product, so a group's 8 exact sums come out in one vector with no
// horizontal sum. The stored value is u − mid, so each group's exact sum is Σ u·a − mid·Σ a; Σ a
// per activation row and group is computed once per call (ck_group_sums_i8). Group scales are
// interleaved the same way ([block][group][8], ck_q4x8_scales), one vector load per group.

static inline unsigned q4x8_code(const uint8_t *codes, size_t cols, size_t o, size_t j) {
    const uint8_t byte = codes[((o >> 3) * (cols >> 3) + (j >> 3)) * 32 + (o & 7) * 4 + (j & 3)];
    return (j & 4) ? (unsigned)(byte >> 4) : (unsigned)(byte & 0x0F);
}

size_t ck_q4x8_bytes(size_t rows, size_t cols) { return ((rows + 7) / 8) * 8 * (cols / 2); }

void ck_q4x8_pack(const uint8_t *u, size_t rows, size_t cols, uint8_t *out) {
    const size_t units = cols / 8, blocks = (rows + 7) / 8;
    for (size_t b = 0; b < blocks; b++)
        for (size_t w = 0; w < units; w++) {
            uint8_t *unit = out + (b * units + w) * 32;
            for (size_t r = 0; r < 8; r++) {
                const size_t o = b * 8 + r;
                for (size_t t = 0; t < 4; t++) {
                    const uint8_t lo = o < rows ? u[o * cols + 8 * w + t] & 0x0F : 0;
                    const uint8_t hi = o < rows ? u[o * cols + 8 * w + 4 + t] & 0x0F : 0;
                    unit[r * 4 + t] = (uint8_t)(lo | (hi << 4));
                }
            }
        }
}

void ck_q4x8_scales(const float *s, size_t rows, size_t groups, float *out) {
    const size_t blocks = (rows + 7) / 8;
    for (size_t b = 0; b < blocks; b++)
        for (size_t g = 0; g < groups; g++)
            for (size_t r = 0; r < 8; r++) {
                const size_t o = b * 8 + r;
                out[(b * groups + g) * 8 + r] = o < rows ? s[o * groups + g] : 0;
            }
}

void ck_q4_gemv_i8_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       int mid, const float *wscale, const int8_t *a_rows, const int32_t *group_sums, size_t m,
                       float *y, size_t ldy) {
    (void)group_sums;  // recomputed from (u − mid)·a directly, which checks the fast path's Σ a term
    const size_t groups = cols / group_size;
    for (size_t i = 0; i < m; i++) {
        const int8_t *a = a_rows + i * cols;
        for (size_t o = row_begin; o < row_begin + row_count; o++) {
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                int32_t sum = 0;
                for (size_t j = g * group_size; j < (g + 1) * group_size; j++)
                    sum += ((int32_t)q4x8_code(codes, cols, o, j) - mid) * (int32_t)a[j];
                // Separate statements: no contraction into an FMA, as ck_gemm_i8_grouped_ref.
                float term = wscale ? CK_SC8(wscale, groups, o, g) * (float)sum : (float)sum;
                acc = acc + term;
            }
            y[i * ldy + o] = acc;
        }
    }
}

#if defined(__x86_64__)
#define CK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define CK_INLINE static inline __attribute__((always_inline))

static inline int32_t q4_load4(const int8_t *p) {
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

// One 8-row block (b) × MR ≤ 4 activation rows (a, stride cols) over every group; row i's 8
// results go to y[i*ldy + 0…7] (lane r = weight row 8·b + r). Per unit: one load, low and high
// nibbles, shared by the MR activation rows, each against the broadcast 4 activation codes of
// those columns. AVX2: u ≤ 15 and |a| ≤ 127 keep a maddubs pair sum ≤ 3810, so up to 8 maddubs
// results add in int16 (≤ 30480) before one madd.
#define Q4X8_BODY(UNIT_STEP, GROUP_SUM)                                                               \
    const size_t units = cols / 8, per_group = group_size / 8;                                     \
    const uint8_t *blk = codes + (b * units) * 32;                                                 \
    const float *wsb = wscale ? wscale + b * groups * 8 : NULL;                                    \
    const __m256i low4 = _mm256_set1_epi8(0x0F);                                                   \
    __m256 acc[4];                                                                                 \
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();                                      \
    for (size_t g = 0; g < groups; g++) {                                                          \
        const uint8_t *gp = blk + g * per_group * 32;                                              \
        const size_t c0 = g * group_size;                                                          \
        __m256i s0[4], s1[4];                                                                      \
        for (int r = 0; r < 4; r++) s0[r] = s1[r] = _mm256_setzero_si256();                        \
        for (size_t w = 0; w < per_group; w++) {                                                   \
            const __m256i v = _mm256_loadu_si256((const __m256i *)(gp + w * 32));                  \
            const __m256i lo = _mm256_and_si256(v, low4);                                          \
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);                    \
            for (int r = 0; r < MR; r++) {                                                         \
                const int8_t *ar = a + r * cols + c0 + 8 * w;                                      \
                UNIT_STEP                                                                          \
            }                                                                                      \
            GROUP_SUM                                                                              \
        }                                                                                          \
        const __m256 ws = wsb ? _mm256_loadu_ps(wsb + g * 8) : _mm256_set1_ps(1.0f);               \
        for (int r = 0; r < MR; r++) {                                                             \
            const __m256i s = _mm256_sub_epi32(_mm256_add_epi32(s0[r], s1[r]),                     \
                                               _mm256_set1_epi32(mid * gs[r * groups + g]));       \
            const __m256 term = _mm256_mul_ps(ws, _mm256_cvtepi32_ps(s));                          \
            acc[r] = _mm256_add_ps(acc[r], term);                                                  \
        }                                                                                          \
    }                                                                                              \
    for (int r = 0; r < MR; r++) _mm256_storeu_ps(y + r * ldy, acc[r]);

// VNNI: s0/s1 are the int32 sums of the low / high nibble columns.
#define Q4X8_STEP_VNNI                                                                             \
    s0[r] = _mm256_dpbusd_epi32(s0[r], lo, _mm256_set1_epi32(q4_load4(ar)));                       \
    s1[r] = _mm256_dpbusd_epi32(s1[r], hi, _mm256_set1_epi32(q4_load4(ar + 4)));
// AVX2: s1 collects int16 pair sums; every 4th unit (8 maddubs) and at the group's end they are
// widened into s0 and cleared.
#define Q4X8_STEP_AVX2                                                                             \
    s1[r] = _mm256_add_epi16(s1[r], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(q4_load4(ar))));    \
    s1[r] = _mm256_add_epi16(s1[r], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(q4_load4(ar + 4))));
#define Q4X8_FLUSH_AVX2                                                                            \
    if ((w & 3) == 3 || w + 1 == per_group)                                                        \
        for (int r = 0; r < MR; r++) {                                                             \
            s0[r] = _mm256_add_epi32(s0[r], _mm256_madd_epi16(s1[r], _mm256_set1_epi16(1)));       \
            s1[r] = _mm256_setzero_si256();                                                        \
        }

CK_INLINE CK_VNNI void q4x8_vnni(const uint8_t *codes, size_t b, size_t cols, size_t group_size, size_t groups,
                                 int mid, const float *wscale, const int8_t *a, const int32_t *gs, float *y,
                                 size_t ldy, const int MR) {
    Q4X8_BODY(Q4X8_STEP_VNNI, )
}
CK_INLINE CK_AVX2 void q4x8_avx2(const uint8_t *codes, size_t b, size_t cols, size_t group_size, size_t groups,
                                 int mid, const float *wscale, const int8_t *a, const int32_t *gs, float *y,
                                 size_t ldy, const int MR) {
    Q4X8_BODY(Q4X8_STEP_AVX2, Q4X8_FLUSH_AVX2)
}

// Row blocks covering [row_begin, end), activation rows 4 at a time inside each block (the
// block's codes stay in L1 for all of them). A block only partly inside the range computes
// all 8 lanes (the layout's padding rows are readable) into scratch and stores the rows inside.
// 1.0f · x is x exactly, so the ws = 1 lanes of a NULL wscale give (float)sum as the reference.
#define Q4_GEMV(NAME, BLOCK, ATTR)                                                                              \
    ATTR static void NAME(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,                 \
                          size_t group_size, int mid, const float *wscale, const int8_t *a_rows,                 \
                          const int32_t *group_sums, size_t m, float *y, size_t ldy) {                           \
        const size_t groups = cols / group_size, end = row_begin + row_count;                                    \
        for (size_t b = row_begin / 8; b * 8 < end; b++) {                                                       \
            const size_t o0 = b * 8, lo = o0 > row_begin ? o0 : row_begin, hi = o0 + 8 < end ? o0 + 8 : end;     \
            const int whole = lo == o0 && hi == o0 + 8;                                                          \
            for (size_t i = 0; i < m; i += 4) {                                                                  \
                const size_t mr = m - i < 4 ? m - i : 4;                                                         \
                float part[32];                                                                                  \
                float *yb = whole ? y + i * ldy + o0 : part;                                                     \
                const size_t ly = whole ? ldy : 8;                                                               \
                const int8_t *ai = a_rows + i * cols;                                                            \
                const int32_t *gi = group_sums + i * groups;                                                     \
                switch (mr) {                                                                                    \
                case 4: BLOCK(codes, b, cols, group_size, groups, mid, wscale, ai, gi, yb, ly, 4); break;         \
                case 3: BLOCK(codes, b, cols, group_size, groups, mid, wscale, ai, gi, yb, ly, 3); break;         \
                case 2: BLOCK(codes, b, cols, group_size, groups, mid, wscale, ai, gi, yb, ly, 2); break;         \
                default: BLOCK(codes, b, cols, group_size, groups, mid, wscale, ai, gi, yb, ly, 1); break;        \
                }                                                                                                \
                if (!whole)                                                                                      \
                    for (size_t r = 0; r < mr; r++)                                                              \
                        for (size_t o = lo; o < hi; o++) y[(i + r) * ldy + o] = part[r * 8 + o - o0];            \
            }                                                                                                    \
        }                                                                                                        \
    }
Q4_GEMV(q4_gemv_avx2, q4x8_avx2, CK_AVX2)
Q4_GEMV(q4_gemv_vnni, q4x8_vnni, CK_VNNI)
#endif

void ck_q4_gemv_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                   int mid, const float *wscale, const int8_t *a_rows, const int32_t *group_sums, size_t m,
                   float *y, size_t ldy) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) {
        q4_gemv_vnni(codes, row_begin, row_count, cols, group_size, mid, wscale, a_rows, group_sums, m, y, ldy);
        return;
    }
    if (ck_cpu_has_avx2()) {
        q4_gemv_avx2(codes, row_begin, row_count, cols, group_size, mid, wscale, a_rows, group_sums, m, y, ldy);
        return;
    }
#endif
    ck_q4_gemv_i8_ref(codes, row_begin, row_count, cols, group_size, mid, wscale, a_rows, group_sums, m, y, ldy);
}

// Σ a per activation row and group, the mid·Σ a term of every group (natural column order).
void ck_group_sums_i8(const int8_t *a, size_t rows, size_t cols, size_t group_size, int32_t *group_sums) {
    const size_t groups = cols / group_size;
    for (size_t i = 0; i < rows; i++)
        for (size_t g = 0; g < groups; g++) {
            int32_t s = 0;
            for (size_t j = g * group_size; j < (g + 1) * group_size; j++) s += a[i * cols + j];
            group_sums[i * groups + g] = s;
        }
}

