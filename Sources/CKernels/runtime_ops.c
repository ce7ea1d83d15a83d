#include "ck_runtime.h"
#include "ckernels.h"
#include "x86_common.h"
#include "attend_avx2.h"
#include <immintrin.h>
#include <math.h>

// Token-path kernels (see ck_runtime.h). AVX2 and AVX-512 VNNI bodies carry function-level
// target attributes and run only after the run-time checks (the package builds for baseline
// x86-64-v3-less targets too).

static int vnni_flag = -1;
static int vnni_enabled = 1;

int ck_cpu_has_avx512vnni(void) {
    if (vnni_flag < 0) {
#if defined(__x86_64__)
        __builtin_cpu_init();
        vnni_flag = ck_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
        vnni_flag = 0;
#endif
    }
    return vnni_flag && vnni_enabled;
}

void ck_set_vnni_enabled(int enabled) { vnni_enabled = enabled != 0; }

// ---- float GEMV ------------------------------------------------------------------------------

void ck_sgemv_f32_ref(const float *w, size_t row_begin, size_t row_count, size_t cols,
                      const float *x, float *y) {
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const float *row = w + o * cols;
        float s = 0;
        for (size_t j = 0; j < cols; j++) s += row[j] * x[j];
        y[o] = s;
    }
}

#if defined(__x86_64__)

// One row at a time, four independent 8-lane accumulators over 32 columns. Rows are read in
// address order, one sequential stream per thread: the former four-row blocks (four interleaved
// streams of 2.3 KB rows, x loaded once per four rows) reached ~27 GB/s on two cores where a plain
// streaming read of the same bytes reached ~37–49 GB/s; this loop reaches the streaming rate
// (docs/RESULTS.md, "seventh pass: decode fixed cost and FP32 GEMV"). x stays in L1 either way.
CK_AVX2 static void sgemv_avx2(const float *w, size_t row_begin, size_t row_count, size_t cols,
                               const float *x, float *y) {
    const size_t c32 = cols & ~(size_t)31, c8 = cols & ~(size_t)7;
    for (size_t o = row_begin; o < row_begin + row_count; o++) {
        const float *r = w + o * cols;
        __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
        size_t j = 0;
        for (; j < c32; j += 32) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(x + j), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 8), _mm256_loadu_ps(x + j + 8), b);
            c = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 16), _mm256_loadu_ps(x + j + 16), c);
            d = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 24), _mm256_loadu_ps(x + j + 24), d);
        }
        for (; j < c8; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(x + j), a);
        float s = ck_hsum_ps(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
        for (; j < cols; j++) s += r[j] * x[j];
        y[o] = s;
    }
}
#endif

void ck_sgemv_f32(const float *w, size_t row_begin, size_t row_count, size_t cols,
                  const float *x, float *y) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { sgemv_avx2(w, row_begin, row_count, cols, x, y); return; }
#endif
    ck_sgemv_f32_ref(w, row_begin, row_count, cols, x, y);
}

// ---- decode attention ------------------------------------------------------------------------

void ck_attend_one_ref(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                       size_t dim, float scale, float *scores, float *out) {
    for (size_t j = 0; j < count; j++) {
        float s = 0;
        for (size_t d = 0; d < dim; d++) s += q[d] * keys[j * stride + d];
        scores[j] = scale * s;
    }
    ck_softmax_f32_ref(scores, count);  // scalar expf, the same operations as Ops.softmax
    for (size_t d = 0; d < dim; d++) out[d] = 0;
    for (size_t j = 0; j < count; j++)
        for (size_t d = 0; d < dim; d++) out[d] += scores[j] * values[j * stride + d];
}

void ck_attend_group_ref(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                         size_t dim, size_t rows, float scale, float *scores, float *out) {
    for (size_t r = 0; r < rows; r++)
        ck_attend_one_ref(q + r * dim, keys, values, count, stride, dim, scale, scores + r * count, out + r * dim);
}

#if defined(__x86_64__)
// Decode attention over a float cache: the AVX2 body shared with the half cache (kv_half.c).
CK_DEFINE_ATTEND_AVX2(attend_group_avx2, float, _mm256_loadu_ps, (float))
#endif

void ck_attend_group(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                     size_t dim, size_t rows, float scale, float *scores, float *out) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { attend_group_avx2(q, keys, values, count, stride, dim, rows, scale, scores, out); return; }
#endif
    ck_attend_group_ref(q, keys, values, count, stride, dim, rows, scale, scores, out);
}

void ck_attend_one(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                   size_t dim, float scale, float *scores, float *out) {
    ck_attend_group(q, keys, values, count, stride, dim, 1, scale, scores, out);
}

// ---- FP4 nibble-table integer GEMV -----------------------------------------------------------

void ck_fp4_permute_i8(const int8_t *a, size_t rows, size_t cols, int8_t *out) {
    for (size_t i = 0; i < rows; i++) {
        const int8_t *src = a + i * cols;
        int8_t *dst = out + i * cols;
        for (size_t b = 0; b + 32 <= cols; b += 32)
            for (size_t t = 0; t < 16; t++) {
                dst[b + t] = src[b + 2 * t];
                dst[b + 16 + t] = src[b + 2 * t + 1];
            }
    }
}

void ck_fp4_expand_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                      const int8_t *table, int8_t *out) {
    const size_t stride = cols / 2;
    for (size_t r = 0; r < row_count; r++) {
        const uint8_t *row = codes + (row_begin + r) * stride;
        int8_t *dst = out + r * cols;
        for (size_t j = 0; j < stride; j++) {
            dst[2 * j] = table[row[j] & 0x0F];
            dst[2 * j + 1] = table[row[j] >> 4];
        }
    }
}

void ck_fp4_gemv_i8_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                        const int8_t *table, const float *wscale, const int8_t *a_perm, size_t m, float *y, size_t ldy) {
    const size_t stride = cols / 2, groups = cols / group_size;
    for (size_t i = 0; i < m; i++) {
        const int8_t *a = a_perm + i * cols;
        for (size_t o = row_begin; o < row_begin + row_count; o++) {
            const uint8_t *row = codes + o * stride;
            float acc = 0;
            for (size_t g = 0; g < groups; g++) {
                int32_t sum = 0;
                for (size_t j = g * group_size; j < (g + 1) * group_size; j++) {
                    // Column j sits at permuted position (j & ~31) + (j & 1) * 16 + (j & 31) / 2.
                    const size_t p = (j & ~(size_t)31) + (j & 1) * 16 + ((j & 31) >> 1);
                    const unsigned c = (j & 1) ? row[j >> 1] >> 4 : row[j >> 1] & 0x0F;
                    sum += (int32_t)table[c] * (int32_t)a[p];
                }
                // Separate statements: no contraction into an FMA, as ck_gemm_i8_grouped_ref.
                float term = wscale[o * groups + g] * (float)sum;
                acc = acc + term;
            }
            y[i * ldy + o] = acc;
        }
    }
}

#if defined(__x86_64__)
/// int8 weights of one 32-column block of a row: low nibbles (even columns) in the low lane,
/// high nibbles (odd columns) in the high lane, looked up in the 16-entry table.
CK_INLINE CK_AVX2 __m256i fp4_block(const uint8_t *p, __m256i table, __m256i low4) {
    const __m128i x = _mm_loadu_si128((const __m128i *)p);
    const __m256i idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), low4);
    return _mm256_shuffle_epi8(table, idx);
}

CK_INLINE CK_AVX2 __m128i hsum4_epi32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i u = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}

// R rows (1…4) × one activation row; DOT is the int8 dot-accumulate step (AVX2 or VNNI).
#define FP4_ROWS_BODY(DOT)                                                                        \
    const size_t stride = cols / 2, groups = cols / group_size, blocks = group_size / 32;        \
    const __m256i low4 = _mm256_set1_epi8(0x0F);                                                  \
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)table8)); \
    __m128 acc = _mm_setzero_ps();                                                                \
    for (size_t g = 0; g < groups; g++) {                                                         \
        __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),   \
                        _mm256_setzero_si256()};                                                  \
        for (size_t b = 0; b < blocks; b++) {                                                     \
            const size_t col = g * group_size + b * 32;                                           \
            const __m256i av = _mm256_loadu_si256((const __m256i *)(a + col));                    \
            for (int r = 0; r < R; r++) {                                                         \
                const __m256i w = fp4_block(codes + (o + r) * stride + col / 2, table, low4);     \
                const __m256i wa = _mm256_abs_epi8(w);                                            \
                const __m256i sa = _mm256_sign_epi8(av, w);                                       \
                s[r] = DOT(s[r], wa, sa);                                                         \
            }                                                                                     \
        }                                                                                         \
        const __m128i sums = hsum4_epi32(s[0], s[1], s[2], s[3]);                                 \
        acc = ck_add_scaled_rows4(acc, sums, wscale + o * groups + g, groups, R); \
    }                                                                                             \
    ck_store_rows4(y + o, acc, R);

CK_INLINE CK_AVX2 __m256i dot_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
CK_INLINE CK_VNNI __m256i dot_vnni(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(acc, u, s);
}

CK_INLINE CK_AVX2 void fp4_rows_avx2(const uint8_t *codes, size_t o, size_t cols, size_t group_size,
                                     const int8_t *table8, const float *wscale, const int8_t *a, float *y,
                                     const int R) {
    FP4_ROWS_BODY(dot_avx2)
}
CK_INLINE CK_VNNI void fp4_rows_vnni(const uint8_t *codes, size_t o, size_t cols, size_t group_size,
                                     const int8_t *table8, const float *wscale, const int8_t *a, float *y,
                                     const int R) {
    FP4_ROWS_BODY(dot_vnni)
}

CK_AVX2 static void fp4_gemv_avx2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                  size_t group_size, const int8_t *table, const float *wscale,
                                  const int8_t *a_perm, size_t m, float *y, size_t ldy) {
    for (size_t i = 0; i < m; i++) {
        const size_t end = row_begin + row_count;
        size_t o = row_begin;
        for (; o + 4 <= end; o += 4) fp4_rows_avx2(codes, o, cols, group_size, table, wscale, a_perm + i * cols, y + i * ldy, 4);
        for (; o < end; o++) fp4_rows_avx2(codes, o, cols, group_size, table, wscale, a_perm + i * cols, y + i * ldy, 1);
    }
}
CK_VNNI static void fp4_gemv_vnni(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                                  size_t group_size, const int8_t *table, const float *wscale,
                                  const int8_t *a_perm, size_t m, float *y, size_t ldy) {
    for (size_t i = 0; i < m; i++) {
        const size_t end = row_begin + row_count;
        size_t o = row_begin;
        for (; o + 4 <= end; o += 4) fp4_rows_vnni(codes, o, cols, group_size, table, wscale, a_perm + i * cols, y + i * ldy, 4);
        for (; o < end; o++) fp4_rows_vnni(codes, o, cols, group_size, table, wscale, a_perm + i * cols, y + i * ldy, 1);
    }
}
#endif

void ck_fp4_gemv_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                    const int8_t *table, const float *wscale, const int8_t *a_perm, size_t m, float *y, size_t ldy) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx512vnni()) {
        fp4_gemv_vnni(codes, row_begin, row_count, cols, group_size, table, wscale, a_perm, m, y, ldy);
        return;
    }
    if (ck_cpu_has_avx2()) {
        fp4_gemv_avx2(codes, row_begin, row_count, cols, group_size, table, wscale, a_perm, m, y, ldy);
        return;
    }
#endif
    ck_fp4_gemv_i8_ref(codes, row_begin, row_count, cols, group_size, table, wscale, a_perm, m, y, ldy);
}

// ---- streaming read (bandwidth probe for the benchmark) ---------------------------------------

#if defined(__x86_64__)
CK_AVX2 static float stream_sum_avx2(const float *p, size_t n) {
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
        b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
        c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 16));
        d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 24));
    }
    float s = ck_hsum_ps(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
    for (; i < n; i++) s += p[i];
    return s;
}
#endif

float ck_stream_sum(const float *p, size_t n) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) return stream_sum_avx2(p, n);
#endif
    float s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

// ---- per-thread scratch and the shared activation quantization -------------------------------

#include <stdlib.h>
#include <string.h>

// Slots 0…3 are the Swift callers'; 4…7 belong to C kernels that need a buffer per call; from 8 on
// they are the Swift callers' again, one owner each so that nested users never share one:
// 8 prefill attention scores, 9 the FP4 byte GEMV, 10…12 BinaryLinear's decode inputs,
// 13 and 14 the bf16 prefill GEMM's activations and packed tile (`LowBit.tiledProduct`),
// 15 and 16 the binary prefill tiles' unpacked sign words and salient codes (they run inside
// the tile decode closure of `tiledProduct`, so they must not share the GEMM's slots),
// 17 and 18 the PTQ1.61 int8 sign GEMV's gathered x̃ and its int8 codes (`BinaryKernels.gemvSignInt8`),
// 19 and 20 the bf16 decode GEMV's prepared activations and group sums (`LowBit.gemv`),
// 21 the PTQ1.61 bf16 salient GEMV's bf16 x_s (`BinaryKernels.gemvSalientBF16`),
// 22 the PTQ1.61 lookup-table sign GEMV's per-4-column tables (`BinaryKernels.gemvSignInt8`),
// 23 the SplitQuant bf16 decode GEMV's bf16 copy of x (`SplitKernels.gemv`),
// 24 the split decode attention's per-range partials (`TokenKernels.attend`, the caller's thread),
// 26 the FP8 decode GEMV's signed activation byte planes (fp4_i16.c, `ck_fp8_gemv_i16`).
#define CK_SCRATCH_SLOTS 27

typedef struct {
    void *data;
    size_t bytes;
} scratch_slot;

static _Thread_local scratch_slot scratch[CK_SCRATCH_SLOTS];

void *ck_thread_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= CK_SCRATCH_SLOTS) return NULL;
    scratch_slot *s = &scratch[slot];
    if (s->bytes < bytes || !s->data) {
        // Grow geometrically, 64-byte aligned; never shrinks (a few KB to a few MB per thread).
        size_t want = bytes < 4096 ? 4096 : bytes;
        if (want < 2 * s->bytes) want = 2 * s->bytes;
        want = (want + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, want);
        if (!p) return NULL;
        free(s->data);
        s->data = p;
        s->bytes = want;
    }
    return s->data;
}

// The last quantization on this thread: copies of its input and of its channel parameters (never
// the callers' pointers, which may be freed and their addresses reused), and its result.
typedef struct {
    float *x, *shift, *channel_scale;
    int8_t *codes;
    float *steps;
    size_t capacity, steps_capacity, rows, cols;
    int has_shift, has_channel_scale, max_code;
    float static_step;
    int valid;
} act_cache;

static _Thread_local act_cache cache;

static int same_optional(int had, const float *copy, const float *now, size_t n) {
    if (!had || !now) return !had && !now;
    return memcmp(copy, now, n * sizeof(float)) == 0;
}

static float *grow(float *p, size_t n) {
    free(p);
    return (float *)malloc(n * sizeof(float));
}

const int8_t *ck_quantize_rows_i8_shared(const float *x, size_t rows, size_t cols, const float *shift,
                                         const float *channel_scale, int max_code, float static_step,
                                         const float **row_steps) {
    const size_t n = rows * cols;
    act_cache *c = &cache;
    if (c->valid && c->rows == rows && c->cols == cols && c->max_code == max_code &&
        c->static_step == static_step && same_optional(c->has_shift, c->shift, shift, cols) &&
        same_optional(c->has_channel_scale, c->channel_scale, channel_scale, cols) &&
        memcmp(c->x, x, n * sizeof(float)) == 0) {
        *row_steps = c->steps;
        return c->codes;
    }
    c->valid = 0;
    if (c->capacity < n || !c->x || !c->codes || !c->shift || !c->channel_scale) {
        c->capacity = n < 1024 ? 1024 : n;
        c->x = grow(c->x, c->capacity);
        c->shift = grow(c->shift, c->capacity);          // ≥ cols
        c->channel_scale = grow(c->channel_scale, c->capacity);
        free(c->codes);
        c->codes = (int8_t *)malloc(c->capacity);
    }
    if (c->steps_capacity < rows || !c->steps) {
        c->steps_capacity = rows < 64 ? 64 : rows;
        c->steps = grow(c->steps, c->steps_capacity);
    }
    if (!c->x || !c->shift || !c->channel_scale || !c->codes || !c->steps) {
        c->capacity = 0;
        c->steps_capacity = 0;
        return NULL;
    }
    ck_quantize_rows_i8(x, rows, cols, shift, channel_scale, max_code, static_step, c->codes, c->steps);
    memcpy(c->x, x, n * sizeof(float));
    c->has_shift = shift != NULL;
    if (shift) memcpy(c->shift, shift, cols * sizeof(float));
    c->has_channel_scale = channel_scale != NULL;
    if (channel_scale) memcpy(c->channel_scale, channel_scale, cols * sizeof(float));
    c->rows = rows;
    c->cols = cols;
    c->max_code = max_code;
    c->static_step = static_step;
    c->valid = 1;
    *row_steps = c->steps;
    return c->codes;
}
