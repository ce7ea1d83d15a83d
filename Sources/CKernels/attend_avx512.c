#include "ck_runtime.h"
#include "ckernels.h"
#include "x86_common.h"
#include <math.h>

// Split decode attention (flash-decoding): ck_attend_part[_f16] runs every query head over one
// range of cached positions and leaves, per head, the range's score maximum m, its sum of
// e^(s − m) l and the unnormalised Σ e^(s − m)·v; ck_attend_merge combines the ranges with their
// log-sum-exp weights. A decode step runs one range per pool task (TokenKernels: by default the
// KV heads' positions cut head-major, so a range is whole KV heads plus at most two partial ones).
//
// Half caches keep their keys either position-major (ck_attend_part_f16) or in tiles of 16
// positions, dimension-major inside a tile (ck_attend_part_f16t, the model's default): there the
// 16 scores of a tile come out of one vector of FMAs (q[r][d] broadcast against the tile's row
// d) with no shuffle tree; values are position-major in both. Same tolerance against the twin.
//
// Fast path (AVX-512 F/BW/VL + F16C, behind the VNNI switch as the other AVX-512 kernels): the
// query heads of one KV head (up to 3 at a time) stay in registers, each key and value row is
// loaded (and widened from half) once for all of them; the dot products of 16 positions are
// summed together by one shuffle tree into one vector of 16 scores; e^x is attend_exp512 (Ops.softmax's
// vector exp on zmm, bit for bit ck_exp_f32, within 2 ulp of libm's expf), fused with the
// subtraction of the maximum and the sum. fp32 throughout. The values are prefetched into L2
// 4 KB ahead (ck_attend_prefetch_enabled), which does not change any result.
// It differs from the `_ref` twin (sequential sums, libm expf) only in summation order and the
// last bits of e^x: tests hold it to 2e-5 relative (of the output's largest magnitude) against
// the twin, and to the same bound against the unsplit grouped kernel ck_attend_group, which
// normalises the probabilities before P·V where this one divides the sum at the end.

#define ATTEND_PART_ROWS 3    // query heads per register block (3·4 q vectors + 12 accumulators at Dh 64)
#define ATTEND_PART_CHUNKS 16 // 16-lane chunks of a head: Dh ≤ 256 on the fast path

// ---- portable reference ---------------------------------------------------------------------

#define CK_DEFINE_ATTEND_PART_REF(NAME, ELEM, TOF, KEY)                                                    \
    void NAME(const float *q, const ELEM *keys, const ELEM *values, size_t begin, size_t end, size_t stride, \
              size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads, float scale, float *scores,  \
              size_t score_stride, float *partial) {                                                       \
        const size_t group = heads / (kv_heads ? kv_heads : 1);                                            \
        for (size_t h = 0; h < heads; h++) {                                                               \
            const size_t kv = h / group;                                                                   \
            const ELEM *K = keys + kv * kv_head_stride, *V = values + kv * kv_head_stride;                  \
            const float *qh = q + h * dim;                                                                 \
            float *s = scores + h * score_stride, *o = partial + h * (dim + 2);                            \
            float m = -INFINITY, l = 0;                                                                    \
            for (size_t j = begin; j < end; j++) {                                                         \
                float d = 0;                                                                               \
                for (size_t c = 0; c < dim; c++) d += qh[c] * TOF(K[KEY(j, c)]);                           \
                s[j] = scale * d;                                                                          \
                m = s[j] > m ? s[j] : m;                                                                   \
            }                                                                                              \
            for (size_t j = begin; j < end; j++) {                                                         \
                s[j] = expf(s[j] - m);                                                                     \
                l += s[j];                                                                                 \
            }                                                                                              \
            for (size_t c = 0; c < dim; c++) o[2 + c] = 0;                                                 \
            for (size_t j = begin; j < end; j++)                                                           \
                for (size_t c = 0; c < dim; c++) o[2 + c] += s[j] * TOF(V[j * stride + c]);                \
            o[0] = m;                                                                                      \
            o[1] = l;                                                                                      \
        }                                                                                                  \
    }

#define ATTEND_F32(x) (x)
#define ATTEND_ROW_KEY(j, c) ((j) * stride + (c))
#define ATTEND_TILE_KEY(j, c) (((j) & ~(size_t)15) * dim + 16 * (c) + ((j) & 15))
CK_DEFINE_ATTEND_PART_REF(ck_attend_part_ref, float, ATTEND_F32, ATTEND_ROW_KEY)
CK_DEFINE_ATTEND_PART_REF(ck_attend_part_f16_ref, uint16_t, ck_f16_to_f32_one, ATTEND_ROW_KEY)
CK_DEFINE_ATTEND_PART_REF(ck_attend_part_f16t_ref, uint16_t, ck_f16_to_f32_one, ATTEND_TILE_KEY)

void ck_attend_merge(const float *partial, size_t parts, size_t heads, size_t dim, float *out) {
    const size_t width = dim + 2;
    for (size_t h = 0; h < heads; h++) {
        float *o = out + h * dim;
        float m = -INFINITY, l = 0;
        for (size_t p = 0; p < parts; p++) {
            const float *part = partial + (p * heads + h) * width;
            if (part[1] > 0 && part[0] > m) m = part[0];
        }
        for (size_t c = 0; c < dim; c++) o[c] = 0;
        for (size_t p = 0; p < parts; p++) {
            const float *part = partial + (p * heads + h) * width;
            if (!(part[1] > 0)) continue;  // an empty range (or one that met no finite score)
            const float w = parts == 1 ? 1 : expf(part[0] - m);
            l += w * part[1];
            for (size_t c = 0; c < dim; c++) o[c] += w * part[2 + c];
        }
        if (l > 0) {
            const float inv = 1 / l;
            for (size_t c = 0; c < dim; c++) o[c] *= inv;
        }
    }
}

// ---- AVX-512 ---------------------------------------------------------------------------------

#if defined(__x86_64__)
#define CK_ATTEND512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl")))

/// Four accumulators → one vector whose 128-bit chunk i holds four partial sums of a_i.
CK_INLINE CK_ATTEND512 __m512 attend_reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    const __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, 0x88), _mm512_shuffle_f32x4(t01, t23, 0xDD));
}

/// Four attend_reduce4 results c_b → lane 4i + b = the sum of c_b's chunk i (a 4×4 transpose
/// and add inside every 128-bit chunk).
CK_INLINE CK_ATTEND512 __m512 attend_reduce16(__m512 c0, __m512 c1, __m512 c2, __m512 c3) {
    const __m512 x0 = _mm512_add_ps(_mm512_unpacklo_ps(c0, c1), _mm512_unpackhi_ps(c0, c1));
    const __m512 x1 = _mm512_add_ps(_mm512_unpacklo_ps(c2, c3), _mm512_unpackhi_ps(c2, c3));
    const __m512d y0 = _mm512_castps_pd(x0), y1 = _mm512_castps_pd(x1);
    return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(y0, y1)), _mm512_castpd_ps(_mm512_unpackhi_pd(y0, y1)));
}

/// Software prefetch distance of the value stream (bytes; into L2): in decode each range's values
/// start cold (the layer's GEMVs ran in between), and the pass over them carries 12 FMAs a position.
#define ATTEND_PREFETCH_BYTES 4096

/// e^x for 16 lanes: ck_exp_ps (x86_common.h, the vector exp of Ops.softmax and ck_exp_f32) on
/// each 8-lane half, so bit for bit what ck_exp_f32 gives (Zen 4 runs a zmm op as two ymm halves
/// anyway).
CK_INLINE CK_ATTEND512 __m512 attend_exp512(__m512 x) {
    const __m256 lo = ck_exp_ps(_mm512_castps512_ps256(x));
    const __m256 hi = ck_exp_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

/// Defines, for cache elements ELEM read 16 at a time as floats by LOAD16(p) (MLOAD16(mask, p)
/// for a head's last partial chunk), NAME##_rows: R ≤ 3 query rows of one KV head over the
/// positions [begin, end), NC chunks of 16 per head (the last one masked when TAIL). R, NC and
/// TAIL are constants after inlining.
#define CK_DEFINE_ATTEND_PART_AVX512(NAME, ELEM, LOAD16, MLOAD16)                                          \
    CK_INLINE CK_ATTEND512 __m512 NAME##_load(const ELEM *p, size_t c, size_t NC, int TAIL, __mmask16 tm) {  \
        return (TAIL && c == NC - 1) ? MLOAD16(tm, p + 16 * c) : LOAD16(p + 16 * c);                        \
    }                                                                                                      \
    /* s = scale·q·k of R rows over [begin, end) into scores, each row's maximum into m */                 \
    CK_INLINE CK_ATTEND512 void NAME##_qk(const size_t R, const size_t NC, const int TAIL, const float *q, \
                                          const ELEM *K, size_t begin, size_t end, size_t stride, size_t dim, \
                                          float scale, float *scores, size_t score_stride, float *m) {     \
        const __mmask16 tm = (__mmask16)((1u << (dim & 15)) - 1);                                          \
        const __m512 vscale = _mm512_set1_ps(scale);                                                       \
        __m512 qv[ATTEND_PART_ROWS][ATTEND_PART_CHUNKS], vmax[ATTEND_PART_ROWS];                           \
        for (size_t r = 0; r < R; r++) {                                                                   \
            for (size_t c = 0; c < NC; c++)                                                                \
                qv[r][c] = (TAIL && c == NC - 1) ? _mm512_maskz_loadu_ps(tm, q + r * dim + 16 * c)         \
                                                 : _mm512_loadu_ps(q + r * dim + 16 * c);                  \
            vmax[r] = _mm512_set1_ps(-INFINITY);                                                           \
        }                                                                                                  \
        /* s = scale·q·k: 16 positions a step, 4 blocks of 4 in address order (the hardware      \
           prefetcher lost track of a strided order); lane 4i + b of the reduction is position 4b + i */ \
        const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);        \
        size_t j = begin;                                                                                  \
        for (; j + 16 <= end; j += 16) {                                                                   \
            __m512 part[ATTEND_PART_ROWS][4];                                                              \
            for (size_t b = 0; b < 4; b++) {                                                               \
                __m512 acc[ATTEND_PART_ROWS][4];                                                           \
                for (size_t r = 0; r < R; r++)                                                             \
                    for (size_t p = 0; p < 4; p++) acc[r][p] = _mm512_setzero_ps();                        \
                for (size_t c = 0; c < NC; c++)                                                            \
                    for (size_t p = 0; p < 4; p++) {                                                       \
                        const __m512 k = NAME##_load(K + (j + 4 * b + p) * stride, c, NC, TAIL, tm);       \
                        for (size_t r = 0; r < R; r++) acc[r][p] = _mm512_fmadd_ps(qv[r][c], k, acc[r][p]); \
                    }                                                                                      \
                for (size_t r = 0; r < R; r++) part[r][b] = attend_reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]); \
            }                                                                                              \
            for (size_t r = 0; r < R; r++) {                                                               \
                const __m512 s = _mm512_mul_ps(vscale, _mm512_permutexvar_ps(order, attend_reduce16(part[r][0], part[r][1], part[r][2], part[r][3]))); \
                _mm512_storeu_ps(scores + r * score_stride + j, s);                                        \
                vmax[r] = _mm512_max_ps(vmax[r], s);                                                       \
            }                                                                                              \
        }                                                                                                  \
        for (size_t r = 0; r < R; r++) m[r] = _mm512_reduce_max_ps(vmax[r]);                               \
        for (; j < end; j++) {                                                                             \
            __m512 acc[ATTEND_PART_ROWS];                                                                  \
            for (size_t r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();                                   \
            for (size_t c = 0; c < NC; c++) {                                                              \
                const __m512 k = NAME##_load(K + j * stride, c, NC, TAIL, tm);                             \
                for (size_t r = 0; r < R; r++) acc[r] = _mm512_fmadd_ps(qv[r][c], k, acc[r]);              \
            }                                                                                              \
            for (size_t r = 0; r < R; r++) {                                                               \
                const float s = scale * _mm512_reduce_add_ps(acc[r]);                                      \
                scores[r * score_stride + j] = s;                                                          \
                m[r] = s > m[r] ? s : m[r];                                                                \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    /* p = e^(s − m) in place, l = Σ p, o = Σ p·v and the partials of R rows (m from NAME##_qk) */         \
    CK_INLINE CK_ATTEND512 void NAME##_pv(const size_t R, const size_t NC, const int TAIL, const ELEM *V,  \
                                          size_t begin, size_t end, size_t stride, size_t dim, float *scores, \
                                          size_t score_stride, const float *m, float *partial) {           \
        const __mmask16 tm = (__mmask16)((1u << (dim & 15)) - 1);                                          \
        /* The value stream starts while the exponentials run (see ck_attend_prefetch_enabled). */    \
        const int pf = ck_attend_prefetch_enabled();                                                         \
        const char *vbytes = (const char *)(V + begin * stride);                                           \
        const size_t row_bytes = stride * sizeof(ELEM), range_bytes = (end - begin) * row_bytes;           \
        if (pf)                                                                                            \
            for (size_t b = 0; b < ATTEND_PREFETCH_BYTES && b < range_bytes; b += 64)                      \
                _mm_prefetch(vbytes + b, _MM_HINT_T1);                                                     \
        /* p = e^(s − m) in place (attend_exp512: lane for lane Ops.softmax's vector exp), l = Σ p */ \
        float l[ATTEND_PART_ROWS];                                                                         \
        for (size_t r = 0; r < R; r++) {                                                                   \
            float *s = scores + r * score_stride;                                                          \
            const __m512 vm = _mm512_set1_ps(m[r]);                                                        \
            __m512 sum = _mm512_setzero_ps();                                                              \
            for (size_t i = begin; i < end; i += 16) {                                                     \
                const __mmask16 mk = end - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (end - i)) - 1); \
                const __m512 e = attend_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, s + i), vm));      \
                _mm512_mask_storeu_ps(s + i, mk, e);                                                       \
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mk, e));                                      \
            }                                                                                              \
            l[r] = _mm512_reduce_add_ps(sum);                                                              \
        }                                                                                                  \
        /* o = Σ p·v, each value row loaded once for the R rows */                                     \
        __m512 o[ATTEND_PART_ROWS][ATTEND_PART_CHUNKS];                                                    \
        for (size_t r = 0; r < R; r++)                                                                     \
            for (size_t c = 0; c < NC; c++) o[r][c] = _mm512_setzero_ps();                                 \
        for (size_t i = begin; i < end; i++) {                                                             \
            if (pf)                                                                                        \
                for (size_t b = 0; b < row_bytes; b += 64)                                                 \
                    _mm_prefetch(vbytes + (i - begin) * row_bytes + ATTEND_PREFETCH_BYTES + b, _MM_HINT_T1); \
            __m512 p[ATTEND_PART_ROWS];                                                                    \
            for (size_t r = 0; r < R; r++) p[r] = _mm512_set1_ps(scores[r * score_stride + i]);            \
            for (size_t c = 0; c < NC; c++) {                                                              \
                const __m512 v = NAME##_load(V + i * stride, c, NC, TAIL, tm);                             \
                for (size_t r = 0; r < R; r++) o[r][c] = _mm512_fmadd_ps(p[r], v, o[r][c]);                \
            }                                                                                              \
        }                                                                                                  \
        for (size_t r = 0; r < R; r++) {                                                                   \
            float *out = partial + r * (dim + 2);                                                          \
            out[0] = m[r];                                                                                 \
            out[1] = l[r];                                                                                 \
            for (size_t c = 0; c < NC; c++) {                                                              \
                if (TAIL && c == NC - 1) _mm512_mask_storeu_ps(out + 2 + 16 * c, tm, o[r][c]);             \
                else _mm512_storeu_ps(out + 2 + 16 * c, o[r][c]);                                          \
            }                                                                                              \
        }                                                                                                  \
    }

/// Defines NAME (the ck_attend_part entry of one cache layout) from QK (scores and maxima of R
/// rows, NAME##_qk's signature) and PV (NAME##_pv's): NAME##_rows runs one block of R rows.
#define CK_DEFINE_ATTEND_PART_DRIVER(NAME, ELEM, QK, PV)                                                   \
    CK_INLINE CK_ATTEND512 void NAME##_rows(const size_t R, const size_t NC, const int TAIL, const float *q, \
                                            const ELEM *K, const ELEM *V, size_t begin, size_t end,        \
                                            size_t stride, size_t dim, float scale, float *scores,         \
                                            size_t score_stride, float *partial) {                         \
        float m[ATTEND_PART_ROWS];                                                                         \
        QK(R, NC, TAIL, q, K, begin, end, stride, dim, scale, scores, score_stride, m);                    \
        PV(R, NC, TAIL, V, begin, end, stride, dim, scores, score_stride, m, partial);                     \
    }                                                                                                      \
    /* R rows with a constant chunk count for the common head sizes (32, 64, 128). */                  \
    CK_INLINE CK_ATTEND512 void NAME##_dims(const size_t R, const float *q, const ELEM *K, const ELEM *V,    \
                                            size_t begin, size_t end, size_t stride, size_t dim, float scale, \
                                            float *scores, size_t score_stride, float *partial) {           \
        switch (dim) {                                                                                     \
        case 32: NAME##_rows(R, 2, 0, q, K, V, begin, end, stride, dim, scale, scores, score_stride, partial); break; \
        case 64: NAME##_rows(R, 4, 0, q, K, V, begin, end, stride, dim, scale, scores, score_stride, partial); break; \
        case 128: NAME##_rows(R, 8, 0, q, K, V, begin, end, stride, dim, scale, scores, score_stride, partial); break; \
        default:                                                                                           \
            NAME##_rows(R, (dim + 15) / 16, (dim & 15) != 0, q, K, V, begin, end, stride, dim, scale, scores,  \
                        score_stride, partial);                                                            \
        }                                                                                                  \
    }                                                                                                      \
    CK_ATTEND512 static void NAME(const float *q, const ELEM *keys, const ELEM *values, size_t begin,         \
                                  size_t end, size_t stride, size_t kv_head_stride, size_t dim, size_t heads, \
                                  size_t kv_heads, float scale, float *scores, size_t score_stride,         \
                                  float *partial) {                                                        \
        const size_t group = heads / kv_heads;                                                             \
        for (size_t h = 0, rows; h < heads; h += rows) {                                                   \
            /* blocks of up to 3 rows that do not cross a KV head */                                   \
            const size_t kv = h / group, left = (kv + 1) * group - h;                                      \
            rows = left < ATTEND_PART_ROWS ? left : ATTEND_PART_ROWS;                                      \
            const ELEM *K = keys + kv * kv_head_stride, *V = values + kv * kv_head_stride;                  \
            const float *qh = q + h * dim;                                                                 \
            float *sh = scores + h * score_stride, *ph = partial + h * (dim + 2);                          \
            switch (rows) {                                                                                \
            case 1: NAME##_dims(1, qh, K, V, begin, end, stride, dim, scale, sh, score_stride, ph); break;   \
            case 2: NAME##_dims(2, qh, K, V, begin, end, stride, dim, scale, sh, score_stride, ph); break;   \
            default: NAME##_dims(3, qh, K, V, begin, end, stride, dim, scale, sh, score_stride, ph); break;  \
            }                                                                                              \
        }                                                                                                  \
    }

#define ATTEND_LOAD16_F32(p) _mm512_loadu_ps(p)
#define ATTEND_MLOAD16_F32(m, p) _mm512_maskz_loadu_ps(m, p)
#define ATTEND_LOAD16_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define ATTEND_MLOAD16_F16(m, p) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p))

CK_DEFINE_ATTEND_PART_AVX512(attend_part_avx512, float, ATTEND_LOAD16_F32, ATTEND_MLOAD16_F32)
CK_DEFINE_ATTEND_PART_AVX512(attend_part_f16_avx512, uint16_t, ATTEND_LOAD16_F16, ATTEND_MLOAD16_F16)
CK_DEFINE_ATTEND_PART_DRIVER(attend_part_avx512, float, attend_part_avx512_qk, attend_part_avx512_pv)
CK_DEFINE_ATTEND_PART_DRIVER(attend_part_f16_avx512, uint16_t, attend_part_f16_avx512_qk, attend_part_f16_avx512_pv)

/// Keys in tiles of 16 positions, dimension-major inside a tile (ck_attend_part_f16t): the scores
/// of a tile's 16 positions fill one vector, per dimension d one widened tile row (16 positions'
/// k[d]) and one FMA per query row with q[r][d] broadcast from memory, so no horizontal sums.
/// One tile at a time, read in address order (2–4 tiles interleaved, 2 KB apart, were 1.4–1.7×
/// slower from L3 than the row kernel: the streams defeat the prefetcher), with 4 accumulators
/// per row over d mod 4 (4R independent FMA chains), summed as (a0 + a1) + (a2 + a3): a score
/// does not depend on the range split. Lanes outside [begin, end) are computed from whatever the
/// tile holds there and masked out of the stores and the maximum. NAME##_qk's signature; D = dim
/// is a constant for 32/64/128 (dim a multiple of 4 here; ck_attend_part_f16t checks).
CK_INLINE CK_ATTEND512 void attend_part_f16t_qk(const size_t R, const size_t NC, const int TAIL, const float *q,
                                                const uint16_t *K, size_t begin, size_t end, size_t stride,
                                                size_t dim, float scale, float *scores, size_t score_stride,
                                                float *m) {
    (void)stride;
    const size_t D = TAIL ? dim : 16 * NC;
    const __m512 vscale = _mm512_set1_ps(scale);
    __m512 vmax[ATTEND_PART_ROWS];
    for (size_t r = 0; r < R; r++) vmax[r] = _mm512_set1_ps(-INFINITY);
    for (size_t t = begin >> 4, tend = (end + 15) >> 4; t < tend; t++) {
        const uint16_t *k = K + t * 16 * D;
        __m512 a[4][ATTEND_PART_ROWS];
        for (size_t u = 0; u < 4; u++)
            for (size_t r = 0; r < R; r++) a[u][r] = _mm512_setzero_ps();
        for (size_t d = 0; d < D; d += 4)
            for (size_t u = 0; u < 4; u++) {
                const __m512 x = ATTEND_LOAD16_F16(k + 16 * (d + u));
                for (size_t r = 0; r < R; r++)
                    a[u][r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * dim + d + u]), x, a[u][r]);
            }
        const size_t base = 16 * t, lo = begin > base ? begin - base : 0, hi = end - base < 16 ? end - base : 16;
        const __mmask16 mk = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
        for (size_t r = 0; r < R; r++) {
            const __m512 s = _mm512_mul_ps(
                vscale, _mm512_add_ps(_mm512_add_ps(a[0][r], a[1][r]), _mm512_add_ps(a[2][r], a[3][r])));
            _mm512_mask_storeu_ps(scores + r * score_stride + base, mk, s);
            vmax[r] = _mm512_mask_max_ps(vmax[r], mk, vmax[r], s);
        }
    }
    for (size_t r = 0; r < R; r++) m[r] = _mm512_reduce_max_ps(vmax[r]);
}

CK_DEFINE_ATTEND_PART_DRIVER(attend_part_f16t_avx512, uint16_t, attend_part_f16t_qk, attend_part_f16_avx512_pv)
#endif

#include <stdlib.h>
#include <string.h>

// Process-wide switches, -1 until first read: NAME=0 in the environment starts the process with
// the switch off.
static int env_switch(int *state, const char *name) {
    if (*state < 0) {
        const char *v = getenv(name);
        *state = !(v && strcmp(v, "0") == 0);
    }
    return *state;
}

static int split_enabled = -1;       // PTQ_ATTEND_SPLIT=0: the grouped kernels
static int tiled_enabled = -1;       // PTQ_KV_TILED=0: position-major half keys
static int head_major_enabled = -1;  // PTQ_ATTEND_HEAD_MAJOR=0: ranges cut by positions over every head
static int prefetch_enabled = -1;    // PTQ_ATTEND_PREFETCH=0: no software prefetch of the values

int ck_attend_split_enabled(void) { return env_switch(&split_enabled, "PTQ_ATTEND_SPLIT"); }
void ck_set_attend_split_enabled(int enabled) { split_enabled = enabled ? 1 : 0; }
int ck_kv_tiled_enabled(void) { return env_switch(&tiled_enabled, "PTQ_KV_TILED"); }
void ck_set_kv_tiled_enabled(int enabled) { tiled_enabled = enabled ? 1 : 0; }
int ck_attend_head_major_enabled(void) { return env_switch(&head_major_enabled, "PTQ_ATTEND_HEAD_MAJOR"); }
void ck_set_attend_head_major_enabled(int enabled) { head_major_enabled = enabled ? 1 : 0; }
int ck_attend_prefetch_enabled(void) { return env_switch(&prefetch_enabled, "PTQ_ATTEND_PREFETCH"); }
void ck_set_attend_prefetch_enabled(int enabled) { prefetch_enabled = enabled ? 1 : 0; }

int ck_attend_part_fast(size_t dim) {
#if defined(__x86_64__)
    return dim > 0 && dim <= 16 * ATTEND_PART_CHUNKS && ck_cpu_has_avx512vnni() && __builtin_cpu_supports("avx512bw");
#else
    (void)dim;
    return 0;
#endif
}

// The entry points: the AVX-512 kernel FAST where ck_attend_part_fast(dim) and COND hold, else
// the twin REF. (No fast kernel off x86-64: FAST is never named there.)
#if defined(__x86_64__)
#define ATTEND_PART_FAST(FAST, COND, ...) \
    if (ck_attend_part_fast(dim) && (COND)) { FAST(__VA_ARGS__); return; }
#else
#define ATTEND_PART_FAST(FAST, COND, ...)
#endif
#define CK_DEFINE_ATTEND_PART_ENTRY(NAME, ELEM, FAST, REF, COND)                                          \
    void NAME(const float *q, const ELEM *keys, const ELEM *values, size_t begin, size_t end, size_t stride, \
              size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads, float scale, float *scores,  \
              size_t score_stride, float *partial) {                                                       \
        if (heads == 0 || kv_heads == 0) return;                                                           \
        ATTEND_PART_FAST(FAST, COND, q, keys, values, begin, end, stride, kv_head_stride, dim, heads, kv_heads, \
                         scale, scores, score_stride, partial)                                             \
        REF(q, keys, values, begin, end, stride, kv_head_stride, dim, heads, kv_heads, scale, scores, score_stride, \
            partial);                                                                                      \
    }

CK_DEFINE_ATTEND_PART_ENTRY(ck_attend_part, float, attend_part_avx512, ck_attend_part_ref, 1)
CK_DEFINE_ATTEND_PART_ENTRY(ck_attend_part_f16, uint16_t, attend_part_f16_avx512, ck_attend_part_f16_ref, 1)
// The tiled q·K runs d in steps of 4.
CK_DEFINE_ATTEND_PART_ENTRY(ck_attend_part_f16t, uint16_t, attend_part_f16t_avx512, ck_attend_part_f16t_ref, dim % 4 == 0)
