#include "ckernels.h"
#include "binary_kernels.h"
#include "x86_common.h"
#include <immintrin.h>
#include <math.h>
#include <string.h>

// Table-lookup (T-MAC-style, float tables) decode GEMV for u4 codes × float activations.
//
// A u4 code is q = Σ_p 2^p·b_p over its 4 bit planes. For every quad of 4 consecutive columns
// of a group, T[i] = Σ_{c: bit c of i} x_c (16 floats, T[0] = 0) is built once per call; the
// dot product of a row with those 4 columns is then Σ_p 2^p·T[plane-p bits of the 4 codes].
// Weights are re-laid out once, at load time, plane-major in blocks of 16 rows × 32 columns
// (a "chunk" of 8 quads): per (row block, chunk, plane) 64 bytes, byte 4·l + k holding row l's
// 4-bit table index for quad k (low nibble) and quad k + 4 (high nibble). An unaligned 64-byte
// load at byte offset k puts row l's quad-k index in the low 4 bits of dword lane l, and one
// `vpermps` does 16 lookups (it reads only the low 4 index bits, so no AND); one shift by 4 of
// the same vector gives quad k + 4. So 16 weights × 1 plane cost a permute, an add and half a
// shift: the byte offsets do the other shifts for free in the load unit. (Measured on this Zen 4
// machine, where a 512-bit permute and a 512-bit shift compete for the same two pipes: 39% more
// throughput than one 64-bit broadcast + variable shift per lookup, the layout first tried.)
//
// Per-group asymmetric dequantization keeps its structure:
//   y_r = Σ_g s_{r,g}·(Σ_{k∈g} q_k x_k − z_{r,g}·X_g),  X_g = Σ_{k∈g} x_k (once per call).
// Each group of a row block keeps 2 accumulators per plane (low-nibble quads, high-nibble
// quads); at the group end D = ((a_0 + 2a_1) + 4a_2) + 8a_3 (the 2^p products are exact), then
// total = fma(s, fma(−z, X_g, D), total). The scalar twin runs the same operations in the
// same order (explicit fmaf), so the two agree bit for bit.
//
// Layout (sizes from ck_u4_planes_words / ck_u4_planes_param_count):
//   chunks per group CG = ceil(G/32) (the last group ceil(its columns/32)); chunk c of group g
//   covers columns g·G + 32·(c mod CG) …; columns past the group's end have code 0 and x 0.
//   planes  [row blocks][chunks][4 planes][64 bytes] + 64 bytes of padding (the offset loads
//           read up to 3 bytes past a chunk).
//   scales, zeros float [row blocks][groups][16] (padded rows 0).
//   tables float [chunks][8 quads][16], xsums float [groups] (ck_u4_plane_tables, per call).

static inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

static inline size_t eff_group(size_t cols, size_t group_size) {
    return (group_size == 0 || group_size > cols) ? (cols ? cols : 1) : group_size;
}

/// Chunks (32 columns, 8 quads) of one row, every group padded to whole chunks.
static size_t chunk_count(size_t cols, size_t group_size) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g);
    if (cols == 0) return 0;
    return (groups - 1) * ceil_div(g, 32) + ceil_div(cols - (groups - 1) * g, 32);
}

size_t ck_u4_planes_quads(size_t cols, size_t group_size) { return 8 * chunk_count(cols, group_size); }

/// Words of an `nplanes`-plane layout: 64 bytes per (row block, chunk, plane) + 64 bytes of padding.
static size_t planes_words(size_t rows, size_t cols, size_t group_size, unsigned nplanes) {
    return ceil_div(rows, 16) * chunk_count(cols, group_size) * nplanes * 8 + 8;
}

size_t ck_u4_planes_words(size_t rows, size_t cols, size_t group_size) {
    return planes_words(rows, cols, group_size, 4);
}

size_t ck_u4_planes_param_count(size_t rows, size_t cols, size_t group_size) {
    return ceil_div(rows, 16) * 16 * ceil_div(cols, eff_group(cols, group_size));
}

/// The low `nplanes` bit planes of one-byte codes in the block layout above (4 for u4 codes, 1
/// for sign bits: ck_sign_planes_pack).
static void planes_pack(const uint8_t *codes, size_t rows, size_t cols, size_t group_size, unsigned nplanes,
                        uint64_t *planes) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), cg = ceil_div(g, 32);
    const size_t chunks = chunk_count(cols, group_size), blocks = ceil_div(rows, 16);
    // spread[c] has bit p of code c at bit 16·p: four codes shifted by their column and OR-ed
    // give plane p's 4-bit index at bits 16·p … 16·p + 3, without a branch per bit (random
    // bits would mispredict half the time and made loading 3× slower).
    uint64_t spread[16];
    for (unsigned c = 0; c < 16; c++) {
        spread[c] = 0;
        for (unsigned p = 0; p < 4; p++) spread[c] |= (uint64_t)((c >> p) & 1) << (16 * p);
    }
    uint8_t *bytes = (uint8_t *)planes;
    memset(bytes, 0, planes_words(rows, cols, group_size, nplanes) * sizeof(uint64_t));
    for (size_t b = 0; b < blocks; b++)
        for (size_t ch = 0; ch < chunks; ch++) {
            const size_t grp = ch / cg, j0 = grp * g + 32 * (ch % cg);
            const size_t gend = grp + 1 < groups ? (grp + 1) * g : cols;
            uint8_t *out = bytes + (b * chunks + ch) * nplanes * 64;
            for (unsigned l = 0; l < 16 && 16 * b + l < rows; l++) {
                const uint8_t *row = codes + (16 * b + l) * cols;
                for (unsigned quad = 0; quad < 8; quad++) {
                    uint64_t v = 0; // plane p's index of this quad at bits 16·p
                    for (unsigned c = 0; c < 4; c++) {
                        const size_t j = j0 + 4 * quad + c;
                        if (j < gend) v |= spread[row[j] & 0x0F] << c;
                    }
                    const unsigned at = 4 * l + (quad & 3), nibble = quad < 4 ? 0 : 4;
                    for (unsigned p = 0; p < nplanes; p++)
                        out[p * 64 + at] |= (uint8_t)(((v >> (16 * p)) & 0xF) << nibble);
                }
            }
        }
}

void ck_u4_planes_pack(const uint8_t *codes, size_t rows, size_t cols, size_t group_size, uint64_t *planes) {
    planes_pack(codes, rows, cols, group_size, 4, planes);
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

/// Column j0 + c for c < 4, 0 past the group's end.
static void load_quad(const float *x, size_t j0, size_t gend, float xq[4]) {
    for (unsigned c = 0; c < 4; c++) xq[c] = j0 + c < gend ? x[j0 + c] : 0.0f;
}

/// First column of padded quad q and the end of its group.
static inline void quad_span(size_t q, size_t cols, size_t g, size_t *j0, size_t *gend) {
    const size_t groups = ceil_div(cols, g), cg = ceil_div(g, 32), ch = q / 8, grp = ch / cg;
    *j0 = grp * g + 32 * (ch % cg) + 4 * (q % 8);
    *gend = grp + 1 < groups ? (grp + 1) * g : cols;
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
    const size_t g = eff_group(cols, group_size), quads = ck_u4_planes_quads(cols, group_size);
    for (size_t q = 0; q < quads; q++) {
        size_t j0, gend;
        quad_span(q, cols, g, &j0, &gend);
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
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), cg = ceil_div(g, 32);
    const size_t chunks = chunk_count(cols, group_size);
    const uint8_t *bytes = (const uint8_t *)planes;
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        for (unsigned l = 0; l < 16 && 16 * b + l < rows; l++) {
            float total = 0;
            for (size_t grp = 0; grp < groups; grp++) {
                const size_t c0 = grp * cg, c1 = grp + 1 < groups ? c0 + cg : chunks;
                float a[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
                for (size_t ch = c0; ch < c1; ch++) {
                    const uint8_t *w = bytes + (b * chunks + ch) * 4 * 64 + 4 * l;
                    const float *t = tables + 8 * 16 * ch;
                    for (unsigned k = 0; k < 4; k++)
                        for (unsigned p = 0; p < 4; p++) {
                            const unsigned byte = w[p * 64 + k];
                            a[p][0] += t[16 * k + (byte & 0x0F)];
                            a[p][1] += t[16 * (k + 4) + (byte >> 4)];
                        }
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
    const size_t g = eff_group(cols, group_size), quads = ck_u4_planes_quads(cols, group_size);
    for (size_t q = 0; q < quads; q++) {
        size_t j0, gend;
        quad_span(q, cols, g, &j0, &gend);
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

/// One 64-byte load of indices at `w` (byte offset k of a plane block): 16 rows' quad-k lookups
/// into `lo` added to *a0 and, after a shift by 4, their quad-(k + 4) lookups into `hi` added
/// to *a1. `vpermps` reads only the low 4 index bits, so no AND.
CK_INLINE CK_AVX512 void plane_lookup(const uint8_t *w, __m512 lo, __m512 hi, __m512 *a0, __m512 *a1) {
    const __m512i v = _mm512_loadu_si512((const void *)w);
    *a0 = _mm512_add_ps(*a0, _mm512_permutexvar_ps(v, lo));
    *a1 = _mm512_add_ps(*a1, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), hi));
}

/// One group of one row block: the plane accumulators over `n` chunks combined into D. With a
/// constant `n` the loop unrolls completely.
CK_INLINE CK_AVX512 __m512 plane_group_dot(const uint8_t *w, const float *t, size_t n) {
    __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps(), a10 = _mm512_setzero_ps(), a11 = _mm512_setzero_ps();
    __m512 a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps(), a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
    for (size_t ch = 0; ch < n; ch++, w += 4 * 64, t += 8 * 16) {
        for (unsigned k = 0; k < 4; k++) {
            const __m512 lo = _mm512_loadu_ps(t + 16 * k), hi = _mm512_loadu_ps(t + 16 * (k + 4));
            plane_lookup(w + 0 * 64 + k, lo, hi, &a00, &a01);
            plane_lookup(w + 1 * 64 + k, lo, hi, &a10, &a11);
            plane_lookup(w + 2 * 64 + k, lo, hi, &a20, &a21);
            plane_lookup(w + 3 * 64 + k, lo, hi, &a30, &a31);
        }
    }
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
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), cg = ceil_div(g, 32);
    const size_t chunks = chunk_count(cols, group_size);
    for (size_t b = block_begin; b < block_begin + block_count; b++) {
        const uint8_t *wb = (const uint8_t *)planes + b * chunks * 4 * 64;
        const float *sb = block_scales + b * groups * 16, *zb = block_zeros + b * groups * 16;
        __m512 total = _mm512_setzero_ps();
        for (size_t grp = 0; grp < groups; grp++) {
            const size_t c0 = grp * cg, n = (grp + 1 < groups ? c0 + cg : chunks) - c0;
            const uint8_t *w = wb + c0 * 4 * 64;
            const float *t = tables + c0 * 8 * 16;
            __m512 d;
            switch (n) { // group sizes 32, 64, 128 unroll completely
            case 1: d = plane_group_dot(w, t, 1); break;
            case 2: d = plane_group_dot(w, t, 2); break;
            case 4: d = plane_group_dot(w, t, 4); break;
            default: d = plane_group_dot(w, t, n); break;
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

// ---- one plane: sign bits (binary_kernels.h, ck_gemv_sign_planes) ----------------------------
//
// A sign row s ∈ {±1} is one bit plane (bit 1 = +1) over one group of `cols` columns, so the
// same tables give Σ_j s_j x_j = 2·D − X with D = Σ_j bit_j x_j = Σ over quads T[index] and X
// the tables' sum of x. Per (row block, chunk) 64 bytes: one offset load per quad pair k, one
// `vpermps` for quad k and one (after a shift by 4) for quad k + 4, 16 rows × 8 weights per
// lookup. Eight accumulators (quad k, low/high nibble) keep the adds independent; the scalar
// twin keeps the same eight and combines them in the same order, so both give the same bits:
//   D = ((a00 + a01) + (a10 + a11)) + ((a20 + a21) + (a30 + a31)),
//   y = fmaf(a, fmaf(2, D, −X), b·X).

size_t ck_sign_planes_words(size_t rows, size_t cols) { return planes_words(rows, cols, 0, 1); }

size_t ck_sign_planes_quads(size_t cols) { return ck_u4_planes_quads(cols, 0); }

void ck_sign_planes_pack(const uint8_t *bits, size_t rows, size_t cols, uint64_t *planes) {
    planes_pack(bits, rows, cols, 0, 1, planes);
}

void ck_gemv_sign_planes_ref(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows,
                             size_t cols, const float *tables, float x_sum, const float *a, const float *b,
                             float *y) {
    const size_t chunks = chunk_count(cols, 0);
    const uint8_t *bytes = (const uint8_t *)planes;
    for (size_t blk = block_begin; blk < block_begin + block_count; blk++)
        for (unsigned l = 0; l < 16 && 16 * blk + l < rows; l++) {
            float acc[4][2] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
            for (size_t ch = 0; ch < chunks; ch++) {
                const uint8_t *w = bytes + (blk * chunks + ch) * 64 + 4 * l;
                const float *t = tables + 8 * 16 * ch;
                for (unsigned k = 0; k < 4; k++) {
                    acc[k][0] += t[16 * k + (w[k] & 0x0F)];
                    acc[k][1] += t[16 * (k + 4) + (w[k] >> 4)];
                }
            }
            const float d = ((acc[0][0] + acc[0][1]) + (acc[1][0] + acc[1][1]))
                + ((acc[2][0] + acc[2][1]) + (acc[3][0] + acc[3][1]));
            const size_t o = 16 * blk + l;
            y[o] = fmaf(a[o], fmaf(2.0f, d, -x_sum), b[o] * x_sum);
        }
}

#if defined(__x86_64__)
CK_AVX512 static void gemv_sign_planes_avx512(const uint64_t *planes, size_t block_begin, size_t block_count,
                                              size_t rows, size_t cols, const float *tables, float x_sum,
                                              const float *a, const float *b, float *y) {
    const size_t chunks = chunk_count(cols, 0);
    const __m512 vx = _mm512_set1_ps(x_sum), two = _mm512_set1_ps(2.0f);
    for (size_t blk = block_begin; blk < block_begin + block_count; blk++) {
        const uint8_t *w = (const uint8_t *)planes + blk * chunks * 64;
        const float *t = tables;
        __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps(), a10 = _mm512_setzero_ps(), a11 = _mm512_setzero_ps();
        __m512 a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps(), a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
        for (size_t ch = 0; ch < chunks; ch++, w += 64, t += 8 * 16) {
            plane_lookup(w + 0, _mm512_loadu_ps(t + 0 * 16), _mm512_loadu_ps(t + 4 * 16), &a00, &a01);
            plane_lookup(w + 1, _mm512_loadu_ps(t + 1 * 16), _mm512_loadu_ps(t + 5 * 16), &a10, &a11);
            plane_lookup(w + 2, _mm512_loadu_ps(t + 2 * 16), _mm512_loadu_ps(t + 6 * 16), &a20, &a21);
            plane_lookup(w + 3, _mm512_loadu_ps(t + 3 * 16), _mm512_loadu_ps(t + 7 * 16), &a30, &a31);
        }
        const __m512 d = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a00, a01), _mm512_add_ps(a10, a11)),
                                       _mm512_add_ps(_mm512_add_ps(a20, a21), _mm512_add_ps(a30, a31)));
        const size_t r0 = 16 * blk, valid = rows - r0 < 16 ? rows - r0 : 16;
        const __mmask16 live = (__mmask16)((1u << valid) - 1);
        const __m512 va = _mm512_maskz_loadu_ps(live, a + r0), vb = _mm512_maskz_loadu_ps(live, b + r0);
        const __m512 out = _mm512_fmadd_ps(va, _mm512_fmsub_ps(two, d, vx), _mm512_mul_ps(vb, vx));
        _mm512_mask_storeu_ps(y + r0, live, out);
    }
}
#endif

void ck_gemv_sign_planes(const uint64_t *planes, size_t block_begin, size_t block_count, size_t rows, size_t cols,
                         const float *tables, float x_sum, const float *a, const float *b, float *y) {
#if defined(__x86_64__)
    if (ck_u4_planes_supported()) {
        gemv_sign_planes_avx512(planes, block_begin, block_count, rows, cols, tables, x_sum, a, b, y);
        return;
    }
#endif
    ck_gemv_sign_planes_ref(planes, block_begin, block_count, rows, cols, tables, x_sum, a, b, y);
}

// ---- prefill tiles from the planes (issue 13: one copy of the codes) -------------------------
//
// The prefill tile decoder of weight-only u4 layers reads the plane layout itself, so the
// runtime keeps no row-major nibble copy beside it. Row r of block b = r/16, lane l = r mod 16:
// per chunk, plane p's 32 bits of the row are the dword at byte 4·l of the (block, chunk, p)
// 64 bytes, byte k holding quad k (low nibble) and quad k + 4 (high nibble), bit c of a nibble
// column c of the quad. So column 16·h + i of the chunk (i < 16) is bit 8·(i/4) + 4·h + (i mod 4)
// of every plane's dword. The AVX-512 kernel rotates each broadcast dword so that bit lands at
// bit p, masks and ORs the four planes (16 codes per 8 µops), and looks the codes up in the
// group's 16 values s·(u − z) (vpermps): the same two float operations per code as the
// reference, so the same bits.

void ck_dequant_u4_planes_rows_ref(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                                   size_t cols, size_t group_size, const float *block_scales,
                                   const float *block_zeros, float *out) {
    (void)rows;
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), cg = ceil_div(g, 32);
    const size_t chunks = chunk_count(cols, group_size);
    const uint8_t *bytes = (const uint8_t *)planes;
    for (size_t r = row_begin; r < row_begin + row_count; r++) {
        const size_t b = r / 16, l = r % 16;
        float *dst = out + (r - row_begin) * cols;
        for (size_t ch = 0; ch < chunks; ch++) {
            const size_t grp = ch / cg, j0 = grp * g + 32 * (ch % cg);
            const size_t gend = grp + 1 < groups ? (grp + 1) * g : cols;
            const uint8_t *w = bytes + (b * chunks + ch) * 4 * 64;
            const float s = block_scales[(b * groups + grp) * 16 + l], z = block_zeros[(b * groups + grp) * 16 + l];
            for (size_t j = j0; j < gend && j < j0 + 32; j++) {
                const size_t c = j - j0, quad = c / 4, at = 4 * l + (quad & 3), shift = (quad < 4 ? 0 : 4) + c % 4;
                unsigned u = 0;
                for (unsigned p = 0; p < 4; p++) u |= ((unsigned)(w[p * 64 + at] >> shift) & 1u) << p;
                dst[j] = s * ((float)u - z);
            }
        }
    }
}

#if defined(__x86_64__)
CK_AVX512 static void dequant_u4_planes_rows_avx512(const uint64_t *planes, size_t row_begin, size_t row_count,
                                                    size_t cols, size_t group_size, const float *block_scales,
                                                    const float *block_zeros, float *out) {
    const size_t g = eff_group(cols, group_size), groups = ceil_div(cols, g), cg = ceil_div(g, 32);
    const size_t chunks = chunk_count(cols, group_size);
    const uint8_t *bytes = (const uint8_t *)planes;
    // Rotations putting column i's bit of plane p at bit p, for each half of a chunk.
    __m512i rot[2][4];
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i pos0 = _mm512_add_epi32(_mm512_slli_epi32(_mm512_srli_epi32(lane, 2), 3),
                                          _mm512_and_si512(lane, _mm512_set1_epi32(3)));
    for (int h = 0; h < 2; h++)
        for (int p = 0; p < 4; p++)
            rot[h][p] = _mm512_and_si512(_mm512_add_epi32(pos0, _mm512_set1_epi32(4 * h - p + 32)),
                                         _mm512_set1_epi32(31));
    const __m512 iota = _mm512_cvtepi32_ps(lane);
    for (size_t r = row_begin; r < row_begin + row_count; r++) {
        const size_t b = r / 16, l = r % 16;
        float *dst = out + (r - row_begin) * cols;
        for (size_t grp = 0; grp < groups; grp++) {
            const size_t i = (b * groups + grp) * 16 + l;
            const __m512 values = _mm512_mul_ps(_mm512_set1_ps(block_scales[i]),
                                                _mm512_sub_ps(iota, _mm512_set1_ps(block_zeros[i])));
            const size_t gend = grp + 1 < groups ? (grp + 1) * g : cols;
            const size_t nch = grp + 1 < groups ? cg : ceil_div(cols - grp * g, 32);
            for (size_t c = 0; c < nch; c++) {
                const size_t ch = grp * cg + c, j0 = grp * g + 32 * c;
                const uint8_t *w = bytes + ((b * chunks + ch) * 4 * 64) + 4 * l;
                __m512i v[4];
                for (int p = 0; p < 4; p++) {
                    uint32_t d;
                    memcpy(&d, w + p * 64, 4);
                    v[p] = _mm512_set1_epi32((int)d);
                }
                for (int h = 0; h < 2; h++) {
                    const size_t jh = j0 + 16 * (size_t)h;
                    if (jh >= gend) break;
                    __m512i u = _mm512_and_si512(_mm512_rorv_epi32(v[0], rot[h][0]), _mm512_set1_epi32(1));
                    // u | (rot & bit p): ternary logic 0xF8 = A | (B & C).
                    u = _mm512_ternarylogic_epi32(u, _mm512_rorv_epi32(v[1], rot[h][1]), _mm512_set1_epi32(2), 0xF8);
                    u = _mm512_ternarylogic_epi32(u, _mm512_rorv_epi32(v[2], rot[h][2]), _mm512_set1_epi32(4), 0xF8);
                    u = _mm512_ternarylogic_epi32(u, _mm512_rorv_epi32(v[3], rot[h][3]), _mm512_set1_epi32(8), 0xF8);
                    const __m512 f = _mm512_permutexvar_ps(u, values);
                    const size_t n = gend - jh < 16 ? gend - jh : 16;
                    if (n == 16) _mm512_storeu_ps(dst + jh, f);
                    else _mm512_mask_storeu_ps(dst + jh, (__mmask16)((1u << n) - 1), f);
                }
            }
        }
    }
}
#endif

void ck_dequant_u4_planes_rows(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                               size_t cols, size_t group_size, const float *block_scales, const float *block_zeros,
                               float *out) {
#if defined(__x86_64__)
    if (ck_u4_planes_supported()) {
        dequant_u4_planes_rows_avx512(planes, row_begin, row_count, cols, group_size, block_scales, block_zeros, out);
        return;
    }
#endif
    ck_dequant_u4_planes_rows_ref(planes, row_begin, row_count, rows, cols, group_size, block_scales, block_zeros,
                                  out);
}

// ---- row-major bits and nibbles back from the planes (issue 13: PTQ1.61 prefill tiles) --------
//
// The binary layers' prefill tile decoder (ck_binary_decode_rows) reads row-major sign words and
// salient nibbles. Where the sign planes and the salient planes exist they are the layer's only
// copy, and each tile's rows are unpacked from them into per-thread scratch first: an exact bit
// rearrangement. Plane p's dword of a row and chunk holds chunk columns 0…15 in its low nibbles
// (column 4k + c at bit 8k + c) and 16…31 in its high nibbles, so pext by 0x0F0F0F0F and by
// 0xF0F0F0F0 gives the 32 bits in column order; pdep by 0x1111… spreads them to nibble lanes.

void ck_sign_planes_unpack_words_ref(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                                     size_t cols, uint64_t *out, size_t words_per_row) {
    (void)rows;
    const size_t chunks = chunk_count(cols, 0);
    const uint8_t *bytes = (const uint8_t *)planes;
    for (size_t r = row_begin; r < row_begin + row_count; r++) {
        uint64_t *words = out + (r - row_begin) * words_per_row;
        for (size_t w = 0; w < words_per_row; w++) words[w] = 0;
        const size_t b = r / 16, l = r % 16;
        for (size_t ch = 0; ch < chunks; ch++) {
            const uint8_t *w = bytes + (b * chunks + ch) * 64 + 4 * l;
            for (size_t c = 0; c < 32 && 32 * ch + c < cols; c++) {
                const size_t quad = c / 4;
                const unsigned bit = (w[quad & 3] >> ((quad < 4 ? 0 : 4) + c % 4)) & 1u;
                const size_t j = 32 * ch + c;
                words[j >> 6] |= (uint64_t)bit << (j & 63);
            }
        }
    }
}

void ck_u4_planes_unpack_nibbles_ref(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows,
                                     size_t cols, uint8_t *out, size_t stride) {
    (void)rows;
    const size_t chunks = chunk_count(cols, cols);
    const uint8_t *bytes = (const uint8_t *)planes;
    for (size_t r = row_begin; r < row_begin + row_count; r++) {
        uint8_t *row = out + (r - row_begin) * stride;
        for (size_t i = 0; i < stride; i++) row[i] = 0;
        const size_t b = r / 16, l = r % 16;
        for (size_t ch = 0; ch < chunks; ch++) {
            const uint8_t *w = bytes + (b * chunks + ch) * 4 * 64 + 4 * l;
            for (size_t c = 0; c < 32 && 32 * ch + c < cols; c++) {
                const size_t quad = c / 4, j = 32 * ch + c;
                unsigned u = 0;
                for (unsigned p = 0; p < 4; p++) u |= ((unsigned)(w[p * 64 + (quad & 3)] >> ((quad < 4 ? 0 : 4) + c % 4)) & 1u) << p;
                row[j / 2] |= (uint8_t)(u << (4 * (j & 1)));
            }
        }
    }
}

#if defined(__x86_64__)
#define CK_BMI2 __attribute__((target("bmi,bmi2")))

/// The 32 bits of one plane dword in column order.
CK_INLINE CK_BMI2 uint32_t plane_bits(const uint8_t *w) {
    uint32_t d;
    memcpy(&d, w, 4);
    return (uint32_t)_pext_u32(d, 0x0F0F0F0Fu) | (uint32_t)_pext_u32(d, 0xF0F0F0F0u) << 16;
}

CK_BMI2 static void sign_planes_unpack_words_bmi2(const uint64_t *planes, size_t row_begin, size_t row_count,
                                                  size_t cols, uint64_t *out, size_t words_per_row) {
    const size_t chunks = chunk_count(cols, 0);
    const uint8_t *bytes = (const uint8_t *)planes;
    for (size_t r = row_begin; r < row_begin + row_count; r++) {
        uint64_t *words = out + (r - row_begin) * words_per_row;
        const size_t b = r / 16, l = r % 16;
        for (size_t w = 0; w < words_per_row; w++) {
            // Chunks 2w and 2w + 1 (columns past the row are zero bits in the planes).
            const uint64_t lo = 2 * w < chunks ? plane_bits(bytes + (b * chunks + 2 * w) * 64 + 4 * l) : 0;
            const uint64_t hi = 2 * w + 1 < chunks ? plane_bits(bytes + (b * chunks + 2 * w + 1) * 64 + 4 * l) : 0;
            words[w] = lo | hi << 32;
        }
    }
}

CK_BMI2 static void u4_planes_unpack_nibbles_bmi2(const uint64_t *planes, size_t row_begin, size_t row_count,
                                                  size_t cols, uint8_t *out, size_t stride) {
    const size_t chunks = chunk_count(cols, cols);
    const uint8_t *bytes = (const uint8_t *)planes;
    const uint64_t lanes = 0x1111111111111111ull;
    for (size_t r = row_begin; r < row_begin + row_count; r++) {
        uint8_t *row = out + (r - row_begin) * stride;
        const size_t b = r / 16, l = r % 16;
        for (size_t ch = 0; ch < chunks; ch++) {
            const uint8_t *w = bytes + (b * chunks + ch) * 4 * 64 + 4 * l;
            uint64_t n0 = 0, n1 = 0; // nibbles of columns 0…15 and 16…31 of the chunk
            for (unsigned p = 0; p < 4; p++) {
                const uint32_t bits = plane_bits(w + p * 64);
                n0 |= _pdep_u64(bits & 0xFFFFu, lanes) << p;
                n1 |= _pdep_u64(bits >> 16, lanes) << p;
            }
            // 16 bytes for the 32 columns; the last chunk writes only the row's bytes (its
            // padding codes are 0, as packNibbles leaves the odd column's high nibble).
            uint8_t tmp[16];
            memcpy(tmp, &n0, 8);
            memcpy(tmp + 8, &n1, 8);
            const size_t at = 16 * ch, n = stride - at < 16 ? stride - at : 16;
            memcpy(row + at, tmp, n);
        }
    }
}
#endif

void ck_sign_planes_unpack_words(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows, size_t cols,
                                 uint64_t *out, size_t words_per_row) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("bmi2")) {
        sign_planes_unpack_words_bmi2(planes, row_begin, row_count, cols, out, words_per_row);
        return;
    }
#endif
    ck_sign_planes_unpack_words_ref(planes, row_begin, row_count, rows, cols, out, words_per_row);
}

void ck_u4_planes_unpack_nibbles(const uint64_t *planes, size_t row_begin, size_t row_count, size_t rows, size_t cols,
                                 uint8_t *out, size_t stride) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("bmi2")) {
        u4_planes_unpack_nibbles_bmi2(planes, row_begin, row_count, cols, out, stride);
        return;
    }
#endif
    ck_u4_planes_unpack_nibbles_ref(planes, row_begin, row_count, rows, cols, out, stride);
}
