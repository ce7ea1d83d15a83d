#include "ckernels.h"
#include "x86_common.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

// Table-lookup (T-MAC-style, float tables) decode GEMV for u4 codes × float activations.
//
// A u4 code is q = Σ_p 2^p·b_p over its 4 bit planes. For every quad of 4 consecutive columns
// of a group, T[i] = Σ_{c: bit c of i} x_c (16 floats, T[0] = 0) is built once per call; the
// dot product of a row with those 4 columns is then Σ_p 2^p·T[plane-p bits of the 4 codes].
// Weights are re-laid out once, at load time, plane-major in blocks of 16 rows × 4 columns:
// one 64-bit word per (row block, quad, plane) holds the 16 rows' 4-bit table indices. A
// 64-bit broadcast + one per-lane variable shift puts row l's index in the low 4 bits of
// dword lane l and one `vpermps` does 16 lookups (it reads only the low 4 index bits, so no
// AND): 3 vector ops per 16 weights and plane instead of the nibble kernel's load, shift/AND,
// convert and FMA per 8 weights.
//
// Per-group asymmetric dequantization keeps its structure:
//   y_r = Σ_g s_{r,g}·(Σ_{k∈g} q_k x_k − z_{r,g}·X_g),  X_g = Σ_{k∈g} x_k (once per call).
// Each group of a row block keeps 2 accumulators per plane (even / odd quads, for latency);
// at the group end D = ((a_0 + 2a_1) + 4a_2) + 8a_3 (the 2^p products are exact), then
// total = fma(s, fma(−z, X_g, D), total). The scalar twin runs the same operations in the
// same order (explicit fmaf), so the two agree bit for bit.
//
// Layout (sizes from ck_u4_planes_words / ck_u4_planes_param_count):
//   quads per group QG = ceil(G/4); quad q covers columns g·G + 4·(q mod QG) … of group
//   g = q / QG (the last group may have fewer quads); padded columns have code 0 and x 0.
//   planes  uint64 [row blocks][quads][4]: bit 4·pos(l) + c of word p is bit p of the code of
//           row 16b + l, column c of the quad, pos(l) = 8·(l & 1) + l/2 (the dword lane that
//           a 64-bit broadcast gives row l: even lanes see the low half, odd lanes the high).
//   scales, zeros float [row blocks][groups][16] (padded rows 0).
//   tables float [quads][16], xsums float [groups] (ck_u4_plane_tables, per call).

static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

static inline size_t eff_group(size_t cols, size_t group_size) {
    return (group_size == 0 || group_size > cols) ? (cols ? cols : 1) : group_size;
}

size_t ck_u4_planes_quads(size_t cols, size_t group_size) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), qg = ceil_div(g, 4);
    if (cols == 0) return 0;
    return (groups - 1) * qg + ceil_div(cols - (groups - 1) * g, 4);
}

size_t ck_u4_planes_words(size_t rows, size_t cols, size_t group_size) {
    return ceil_div(rows, 16) * ck_u4_planes_quads(cols, group_size) * 4;
}

size_t ck_u4_planes_param_count(size_t rows, size_t cols, size_t group_size) {
    return ceil_div(rows, 16) * 16 * ceil_div(cols, eff_group(cols, group_size));
}

/// Row l of a block → its nibble slot in a plane word.
static inline unsigned lane_slot(unsigned l) { return 8 * (l & 1) + (l >> 1); }

void ck_u4_planes_pack(const uint8_t *codes, size_t rows, size_t cols, size_t group_size, uint64_t *planes) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), qg = ceil_div(g, 4);
    const size_t quads = ck_u4_planes_quads(cols, group_size), blocks = ceil_div(rows, 16);
    // spread[c] has bit p of code c at bit 16·p: four codes shifted by their column and OR-ed
    // give plane p's 4-bit index at bits 16·p … 16·p + 3, without a branch per bit (random
    // bits would mispredict half the time and made loading 3× slower).
    uint64_t spread[16];
    for (unsigned c = 0; c < 16; c++) {
        spread[c] = 0;
        for (unsigned p = 0; p < 4; p++) spread[c] |= (uint64_t)((c >> p) & 1) << (16 * p);
    }
    memset(planes, 0, blocks * quads * 4 * sizeof(uint64_t));
    for (size_t b = 0; b < blocks; b++)
        for (size_t q = 0; q < quads; q++) {
            const size_t grp = q / qg, j0 = grp * g + 4 * (q % qg);
            const size_t gend = grp + 1 < groups ? (grp + 1) * g : cols;
            const unsigned width = gend - j0 < 4 ? (unsigned)(gend - j0) : 4;
            uint64_t w0 = 0, w1 = 0, w2 = 0, w3 = 0;
            for (unsigned l = 0; l < 16 && 16 * b + l < rows; l++) {
                const uint8_t *c = codes + (16 * b + l) * cols + j0;
                uint64_t v = 0;
                for (unsigned k = 0; k < width; k++) v |= spread[c[k] & 0x0F] << k;
                const unsigned at = 4 * lane_slot(l);
                w0 |= (v & 0xF) << at;
                w1 |= ((v >> 16) & 0xF) << at;
                w2 |= ((v >> 32) & 0xF) << at;
                w3 |= ((v >> 48) & 0xF) << at;
            }
            uint64_t *w = planes + (b * quads + q) * 4;
            w[0] = w0; w[1] = w1; w[2] = w2; w[3] = w3;
        }
}

void ck_u4_planes_pack_params(const float *scales, const float *zeros, size_t rows, size_t cols,
                              size_t group_size, float *block_scales, float *block_zeros) {
    const size_t groups = ceil_div(cols, eff_group(cols, group_size)), blocks = ceil_div(rows, 16);
    for (size_t b = 0; b < blocks; b++)
        for (size_t grp = 0; grp < groups; grp++)
            for (size_t l = 0; l < 16; l++) {
                const size_t r = 16 * b + l, i = (b * groups + grp) * 16 + l;
                block_scales[i] = r < rows ? scales[r * groups + grp] : 0;
                block_zeros[i] = r < rows ? zeros[r * groups + grp] : 0;
            }
}

// ---- per-call tables -------------------------------------------------------------------------

/// The 16 entries of one quad's table from its (zero-padded) 4 activations, in the order the
/// masked vector adds use: start from bit 0's value or 0, then add x_c where bit c is set.
static void quad_table_ref(const float xq[4], float *t) {
    for (unsigned i = 0; i < 16; i++) {
        float v = (i & 1) ? xq[0] : 0.0f;
        if (i & 2) v += xq[1];
        if (i & 4) v += xq[2];
        if (i & 8) v += xq[3];
        t[i] = v;
    }
}

static void load_quad(const float *x, size_t j0, size_t gend, float xq[4]) {
    for (unsigned c = 0; c < 4; c++) xq[c] = j0 + c < gend ? x[j0 + c] : 0.0f;
}

static void group_xsums(const float *x, size_t cols, size_t g, float *xsums) {
    const size_t groups = ceil_div(cols, g);
    for (size_t grp = 0; grp < groups; grp++) {
        const size_t j1 = grp + 1 < groups ? (grp + 1) * g : cols;
        float s = 0;
        for (size_t j = grp * g; j < j1; j++) s += x[j];
        xsums[grp] = s;
    }
}

void ck_u4_plane_tables_ref(const float *x, size_t cols, size_t group_size, float *tables, float *xsums) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), qg = ceil_div(g, 4);
    const size_t quads = ck_u4_planes_quads(cols, group_size);
    for (size_t q = 0; q < quads; q++) {
        const size_t grp = q / qg, j0 = grp * g + 4 * (q % qg), gend = grp + 1 < groups ? (grp + 1) * g : cols;
        float xq[4];
        load_quad(x, j0, gend, xq);
        quad_table_ref(xq, tables + 16 * q);
    }
    group_xsums(x, cols, g, xsums);
}

// ---- GEMV, scalar twin -----------------------------------------------------------------------

void ck_gemv_u4_planes_ref(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows,
                           size_t cols, size_t group_size, const float *block_scales,
                           const float *block_zeros, const float *tables, const float *xsums, float *y) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), qg = ceil_div(g, 4);
    const size_t quads = ck_u4_planes_quads(cols, group_size);
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        for (unsigned l = 0; l < 16 && 16 * b + l < rows; l++) {
            const unsigned shift = 4 * lane_slot(l);
            float total = 0;
            for (size_t grp = 0; grp < groups; grp++) {
                const size_t q0 = grp * qg, q1 = grp + 1 < groups ? q0 + qg : quads;
                float a[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
                for (size_t q = q0; q < q1; q++) {
                    const uint64_t *w = planes + (b * quads + q) * 4;
                    const float *t = tables + 16 * q;
                    for (unsigned p = 0; p < 4; p++) a[p][(q - q0) & 1] += t[(w[p] >> shift) & 0x0F];
                }
                const float a0 = a[0][0] + a[0][1], a1 = a[1][0] + a[1][1];
                const float a2 = a[2][0] + a[2][1], a3 = a[3][0] + a[3][1];
                const float d = ((a0 + 2.0f * a1) + 4.0f * a2) + 8.0f * a3;
                const size_t i = (b * groups + grp) * 16 + l;
                total = fmaf(block_scales[i], fmaf(-block_zeros[i], xsums[grp], d), total);
            }
            y[16 * b + l] = total;
        }
    }
}

// ---- AVX-512 ---------------------------------------------------------------------------------

#if defined(__x86_64__)

CK_AVX512 static void plane_tables_avx512(const float *x, size_t cols, size_t group_size, float *tables, float *xsums) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), qg = ceil_div(g, 4);
    const size_t quads = ck_u4_planes_quads(cols, group_size);
    for (size_t q = 0; q < quads; q++) {
        const size_t grp = q / qg, j0 = grp * g + 4 * (q % qg), gend = grp + 1 < groups ? (grp + 1) * g : cols;
        float xq[4];
        if (j0 + 4 <= gend) memcpy(xq, x + j0, sizeof xq);
        else load_quad(x, j0, gend, xq);
        // Lanes whose index has bit c get x_c added, bit 0 first: quad_table_ref's order.
        __m512 t = _mm512_maskz_mov_ps(0xAAAA, _mm512_set1_ps(xq[0]));
        t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(xq[1]));
        t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(xq[2]));
        t = _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(xq[3]));
        _mm512_storeu_ps(tables + 16 * q, t);
    }
    group_xsums(x, cols, g, xsums);
}

/// One group of one row block: the plane accumulators over quads [q0, q1) combined into D.
CK_INLINE CK_AVX512 __m512 plane_group_dot(const uint64_t *w, const float *t, size_t n, __m512i shifts) {
    __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps(), a10 = _mm512_setzero_ps(), a11 = _mm512_setzero_ps();
    __m512 a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps(), a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
#define CK_PLANE(p) _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64((long long)w[4 * i + (p)]), shifts), T)
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        __m512 T = _mm512_loadu_ps(t + 16 * i);
        a00 = _mm512_add_ps(a00, CK_PLANE(0));
        a10 = _mm512_add_ps(a10, CK_PLANE(1));
        a20 = _mm512_add_ps(a20, CK_PLANE(2));
        a30 = _mm512_add_ps(a30, CK_PLANE(3));
        i++;
        T = _mm512_loadu_ps(t + 16 * i);
        a01 = _mm512_add_ps(a01, CK_PLANE(0));
        a11 = _mm512_add_ps(a11, CK_PLANE(1));
        a21 = _mm512_add_ps(a21, CK_PLANE(2));
        a31 = _mm512_add_ps(a31, CK_PLANE(3));
        i--;
    }
    if (i < n) {
        const __m512 T = _mm512_loadu_ps(t + 16 * i);
        a00 = _mm512_add_ps(a00, CK_PLANE(0));
        a10 = _mm512_add_ps(a10, CK_PLANE(1));
        a20 = _mm512_add_ps(a20, CK_PLANE(2));
        a30 = _mm512_add_ps(a30, CK_PLANE(3));
    }
#undef CK_PLANE
    const __m512 a0 = _mm512_add_ps(a00, a01), a1 = _mm512_add_ps(a10, a11);
    const __m512 a2 = _mm512_add_ps(a20, a21), a3 = _mm512_add_ps(a30, a31);
    __m512 d = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_set1_ps(2.0f), a1));
    d = _mm512_add_ps(d, _mm512_mul_ps(_mm512_set1_ps(4.0f), a2));
    return _mm512_add_ps(d, _mm512_mul_ps(_mm512_set1_ps(8.0f), a3));
}

CK_AVX512 static void gemv_u4_planes_avx512(const uint64_t *planes, size_t block_begin, size_t block_count,
                                            size_t rows, size_t cols, size_t group_size,
                                            const float *block_scales, const float *block_zeros,
                                            const float *tables, const float *xsums, float *y) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), qg = ceil_div(g, 4);
    const size_t quads = ck_u4_planes_quads(cols, group_size);
    // Dword lane l of a broadcast 64-bit word: the low half for even l, the high for odd l.
    const __m512i shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        const uint64_t *wb = planes + b * quads * 4;
        const float *sb = block_scales + b * groups * 16, *zb = block_zeros + b * groups * 16;
        __m512 total = _mm512_setzero_ps();
        for (size_t grp = 0; grp < groups; grp++) {
            const size_t q0 = grp * qg, n = (grp + 1 < groups ? q0 + qg : quads) - q0;
            __m512 d;
            switch (n) { // common group sizes unroll completely
            case 8: d = plane_group_dot(wb + 4 * q0, tables + 16 * q0, 8, shifts); break;
            case 16: d = plane_group_dot(wb + 4 * q0, tables + 16 * q0, 16, shifts); break;
            case 32: d = plane_group_dot(wb + 4 * q0, tables + 16 * q0, 32, shifts); break;
            default: d = plane_group_dot(wb + 4 * q0, tables + 16 * q0, n, shifts); break;
            }
            const __m512 u = _mm512_fnmadd_ps(_mm512_loadu_ps(zb + 16 * grp), _mm512_set1_ps(xsums[grp]), d);
            total = _mm512_fmadd_ps(_mm512_loadu_ps(sb + 16 * grp), u, total);
        }
        const size_t r0 = 16 * b, valid = rows - r0 < 16 ? rows - r0 : 16;
        _mm512_mask_storeu_ps(y + r0, (__mmask16)((1u << valid) - 1), total);
    }
}
#endif

// ---- dispatch --------------------------------------------------------------------------------

int ck_u4_planes_supported(void) {
#if defined(__x86_64__)
    static int flag = -1;
    if (flag < 0) {
        __builtin_cpu_init();
        flag = ck_cpu_has_avx2() && __builtin_cpu_supports("avx512f");
    }
    return flag;
#else
    return 0;
#endif
}

void ck_u4_plane_tables(const float *x, size_t cols, size_t group_size, float *tables, float *xsums) {
#if defined(__x86_64__)
    if (ck_u4_planes_supported()) { plane_tables_avx512(x, cols, group_size, tables, xsums); return; }
#endif
    ck_u4_plane_tables_ref(x, cols, group_size, tables, xsums);
}

void ck_gemv_u4_planes(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows,
                       size_t cols, size_t group_size, const float *block_scales, const float *block_zeros,
                       const float *tables, const float *xsums, float *y) {
#if defined(__x86_64__)
    if (ck_u4_planes_supported()) {
        gemv_u4_planes_avx512(planes, block_begin, block_count, rows, cols, group_size, block_scales,
                              block_zeros, tables, xsums, y);
        return;
    }
#endif
    ck_gemv_u4_planes_ref(planes, block_begin, block_count, rows, cols, group_size, block_scales,
                          block_zeros, tables, xsums, y);
}
