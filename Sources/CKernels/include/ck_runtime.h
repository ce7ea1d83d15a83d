#ifndef CK_RUNTIME_H
#define CK_RUNTIME_H
#include <stdint.h>
#include <stddef.h>

// Token-path kernels of the runtime (runtime_ops.c): float GEMV for the FP32 model and the
// LM head, decode attention for one head, and the FP4 nibble-table integer GEMV. Each fast
// path has a `_ref` scalar twin; the run-time checks pick AVX-512 VNNI (EVEX, 256-bit), then
// AVX2, then the reference.

/// 1 when the CPU has AVX-512 VNNI and VL (the EVEX `vpdpbusd` on ymm registers) besides AVX2.
int ck_cpu_has_avx512vnni(void);
/// Forces the AVX2 path even where VNNI exists (0 = allow VNNI): for tests and measurements.
void ck_set_vnni_enabled(int enabled);

/// y[o] = sum_j w[o*cols + j] * x[j] for o in [row_begin, row_begin + row_count) (float32 GEMV,
/// one row at a time in address order, four 8-lane FMA accumulators, one horizontal sum per row).
void ck_sgemv_f32(const float *w, size_t row_begin, size_t row_count, size_t cols,
                  const float *x, float *y);
/// Scalar twin of ck_sgemv_f32 (sequential sum per row).
void ck_sgemv_f32_ref(const float *w, size_t row_begin, size_t row_count, size_t cols,
                      const float *x, float *y);

/// Attention of one query row over `count` cached positions for one head:
/// s[j] = scale * dot(q, k_j) (k_j = keys + j*stride, dim values), p = softmax(s)
/// (max, expf, sum, times 1/sum, as Ops.softmax), out[d] = sum_j p[j] * v_j[d].
/// `scores` is scratch of `count` floats.
void ck_attend_one(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                   size_t dim, float scale, float *scores, float *out);
void ck_attend_one_ref(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                       size_t dim, float scale, float *scores, float *out);
/// ck_attend_one for the `rows` query rows q + r*dim that share one KV head (grouped-query
/// attention), into scores + r*count and out + r*dim (`scores` is rows*count floats): each key
/// and value row is read once per block of up to 2 rows instead of once per row. A row's result
/// is the same as ck_attend_one's on that row alone.
void ck_attend_group(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                     size_t dim, size_t rows, float scale, float *scores, float *out);
void ck_attend_group_ref(const float *q, const float *keys, const float *values, size_t count, size_t stride,
                         size_t dim, size_t rows, float scale, float *scores, float *out);

// ---- half-precision KV cache (kv_half.c) ----------------------------------------------------
// IEEE binary16, round to nearest even on store (F16C vcvtps2ph, imm 0); NaN stays a quiet NaN,
// magnitudes past 65504 (from 65520 up) become infinity. The scalar twins are bit-exact.

uint16_t ck_f32_to_f16_one(float f);
float ck_f16_to_f32_one(uint16_t h);
/// dst[i] = half(src[i]) (F16C 8 at a time, else the scalar twin).
void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void ck_f32_to_f16_ref(const float *src, uint16_t *dst, size_t n);
/// dst[i] = float(src[i]) (exact).
void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void ck_f16_to_f32_ref(const uint16_t *src, float *dst, size_t n);
/// Zeroed storage of at least `bytes` for a KV cache: 2 MB-aligned, whole 2 MB pages, advised
/// MADV_HUGEPAGE before the first touch (decode attention streams each layer's cache from DRAM;
/// on 4 KB pages every 4 KB of a stream costs a page walk and restarts the hardware
/// prefetcher; PTQ_KV_HUGEPAGES=0 skips the advice). NULL when the allocation fails. Free with
/// ck_kv_arena_free.
void *ck_kv_arena_alloc(size_t bytes);
void ck_kv_arena_free(void *arena);
/// Advises MADV_HUGEPAGE and collapses (MADV_COLLAPSE) the 2 MB-aligned interior of every private
/// anonymous read-write mapping (and the brk heap) of at least `min_bytes`, so a loaded model's
/// weights, which decode streams from DRAM once per token, sit on 2 MB pages (the machine's THP
/// mode "madvise" gives none otherwise). Bytes collapsed; 0 where unsupported or with
/// PTQ_WEIGHT_HUGEPAGES=0 in the environment.
size_t ck_collapse_anonymous_hugepages(size_t min_bytes);

/// ck_attend_one over half keys/values (`stride` halves per position), widened in registers:
/// AVX2+F16C, or the scalar twin.
void ck_attend_one_f16(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                       size_t dim, float scale, float *scores, float *out);
void ck_attend_one_f16_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                           size_t dim, float scale, float *scores, float *out);
/// ck_attend_group over a half cache.
void ck_attend_group_f16(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                         size_t dim, size_t rows, float scale, float *scores, float *out);
void ck_attend_group_f16_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t count,
                             size_t stride, size_t dim, size_t rows, float scale, float *scores, float *out);

// ---- split decode attention (attend_avx512.c) ------------------------------------------------
// Flash-decoding: the cached positions are cut into ranges, each range runs every query head
// and leaves per head (partial + h·(dim + 2)) its score maximum m, l = Σ e^(s − m) and the
// unnormalised o = Σ e^(s − m)·v (dim floats); ck_attend_merge weighs the ranges by e^(m − M).
// heads must be a multiple of kv_heads (both > 0; callers check, TokenKernels.attend does).
// Query head h reads KV head h / (heads / kv_heads) at keys + kv·kv_head_stride, position j at
// + j·stride; scores (scaled q·k, then e^(s − m)) go to scores + h·score_stride + j, so ranges of
// one call write disjoint scores. The AVX-512 path matches the `_ref` twin to 2e-5 of the
// output's largest magnitude (summation order and the vector exp's last bits; attend_avx512.c).

/// 1 (the default) when decode attention runs split by positions where ck_attend_part_fast
/// holds; PTQ_ATTEND_SPLIT=0 in the environment starts the process with 0 (the grouped kernels).
int ck_attend_split_enabled(void);
void ck_set_attend_split_enabled(int enabled);
/// 1 (the default) when the split decode attention cuts the KV heads' positions head-major
/// (`TokenKernels.attentionHeadMajor`); PTQ_ATTEND_HEAD_MAJOR=0 in the environment starts the
/// process with 0 (every range runs every head over a range of positions).
int ck_attend_head_major_enabled(void);
void ck_set_attend_head_major_enabled(int enabled);
/// 1 (the default) when the split kernels prefetch each range's values into L2 ahead of the pass
/// over them (and its first 4 KB while the exponentials run); PTQ_ATTEND_PREFETCH=0 in the
/// environment starts the process with it off. No result depends on it.
int ck_attend_prefetch_enabled(void);
void ck_set_attend_prefetch_enabled(int enabled);
/// 1 when ck_attend_part[_f16] runs the AVX-512 kernel for heads of `dim` values (else the twin).
int ck_attend_part_fast(size_t dim);
/// The range [begin, end) of decode attention over a float cache, for all heads.
void ck_attend_part(const float *q, const float *keys, const float *values, size_t begin, size_t end, size_t stride,
                    size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads, float scale, float *scores,
                    size_t score_stride, float *partial);
void ck_attend_part_ref(const float *q, const float *keys, const float *values, size_t begin, size_t end,
                        size_t stride, size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads, float scale,
                        float *scores, size_t score_stride, float *partial);
/// ck_attend_part over a half cache (IEEE binary16 bit patterns, widened in registers).
void ck_attend_part_f16(const float *q, const uint16_t *keys, const uint16_t *values, size_t begin, size_t end,
                        size_t stride, size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads, float scale,
                        float *scores, size_t score_stride, float *partial);
void ck_attend_part_f16_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t begin, size_t end,
                            size_t stride, size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads,
                            float scale, float *scores, size_t score_stride, float *partial);
/// 1 (the default) when a new half KV cache tiles its keys where the split kernel runs
/// (`TokenKernels.tilesHalfKeys`); PTQ_KV_TILED=0 in the environment starts the process with 0.
int ck_kv_tiled_enabled(void);
void ck_set_kv_tiled_enabled(int enabled);
/// ck_attend_part_f16 with the keys in tiles of 16 positions, dimension-major inside a tile: key
/// (j, d) of a KV head at keys + kv·kv_head_stride + (j − j mod 16)·dim + 16·d + j mod 16 (values
/// as ck_attend_part_f16, `stride` halves a position). kv_head_stride must cover whole tiles
/// (capacity rounded up to 16 positions); the tile of `end − 1` must be readable. The AVX-512
/// path sums each score over d in four FMA chains (d mod 4) added as (a0 + a1) + (a2 + a3) (the
/// twin: multiply and add over d in order), so it matches the twin to the same 2e-5 of the
/// output's largest magnitude.
void ck_attend_part_f16t(const float *q, const uint16_t *keys, const uint16_t *values, size_t begin, size_t end,
                         size_t stride, size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads, float scale,
                         float *scores, size_t score_stride, float *partial);
void ck_attend_part_f16t_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t begin, size_t end,
                             size_t stride, size_t kv_head_stride, size_t dim, size_t heads, size_t kv_heads,
                             float scale, float *scores, size_t score_stride, float *partial);
/// Rounds one position's `dim` floats into a tiled half key head (ck_attend_part_f16t's layout):
/// element d to head[(pos − pos mod 16)·dim + 16·d + pos mod 16], as ck_f32_to_f16 rounds.
void ck_f32_to_f16_tiled(const float *src, uint16_t *head, size_t pos, size_t dim);
/// Widens position `pos` of a tiled half key head into `dim` floats (exact).
void ck_f16_tiled_to_f32(const uint16_t *head, size_t pos, size_t dim, float *dst);
/// out[h] = Σ_p e^(m_p − M)·o_p / Σ_p e^(m_p − M)·l_p over the `parts` ranges' partials
/// (partial + (p·heads + h)·(dim + 2)), M the largest m of a non-empty range; 0 for a head no
/// range covered. One range: o / l.
void ck_attend_merge(const float *partial, size_t parts, size_t heads, size_t dim, float *out);

// ---------------------------------------------------------------------------------------------
// FP4 weights as 4-bit table indices with int8 activations (LLM-FP4 W4A8 integer path).
//
// codes: two 4-bit codes per byte (element 2i low nibble, 2i+1 high nibble), row stride cols/2.
// table: 16 int8 values, the code's value divided by the format's smallest step (an integer,
// |t| <= 127 so the sign trick stays exact). wscale: [rows, G] group scales, G = cols / group_size.
// Activations: int8 codes in [-127, 127] in the *block-permuted* order of ck_fp4_permute_i8
// (within every 32 columns, even columns first, then odd), so that the low nibbles of 16 bytes
// meet the first 16 activations and the high nibbles the next 16.
// Requires cols % 32 == 0 and group_size % 32 == 0.
//
// y[o] = sum_g wscale[o*G + g] * (float)(sum_{j in g} table[code(o, j)] * a[j]), the groups
// summed in order with a separate multiply and add: bit for bit ck_gemm_i8_grouped on the
// expanded codes.

/// Block-permutes `rows` rows of `cols` activation codes (cols % 32 == 0) into `out`.
void ck_fp4_permute_i8(const int8_t *a, size_t rows, size_t cols, int8_t *out);

/// For o in [row_begin, row_begin + row_count): y[i*ldy + o] for each activation row i < m
/// (a_perm [m, cols] block-permuted).
void ck_fp4_gemv_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                    const int8_t *table, const float *wscale, const int8_t *a_perm, size_t m, float *y, size_t ldy);
void ck_fp4_gemv_i8_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                        const int8_t *table, const float *wscale, const int8_t *a_perm, size_t m, float *y, size_t ldy);

/// Expands rows [row_begin, row_begin + row_count) into int8 codes out[(r - row_begin)*cols + j]
/// (natural column order), for tiles multiplied by ck_gemm_i8_grouped at prefill.
void ck_fp4_expand_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols,
                      const int8_t *table, int8_t *out);

// ---------------------------------------------------------------------------------------------
// Nibble-packed integer weights with int8 activations (W4A8 and narrower, q4_i8.c).
//
// codes: unsigned codes u in [0, 15] in the "q4x8" layout of ck_q4x8_pack (weight rows in
// blocks of 8, padded; per block 32-byte units of 8 columns × 8 rows, lane r = row r's columns
// 8w…8w+3 in the low nibbles and 8w+4…8w+7 in the high ones), ck_q4x8_bytes(rows, cols) bytes.
// The weight's integer value is u − mid (mid = 2^(bits−1): signed codes as in the int8-per-weight
// path, asymmetric zero points handled by the caller as there). wscale: group scales interleaved
// by ck_q4x8_scales ([block][group][8]), G = cols / group_size, or NULL for "every scale 1" (one
// group per row: the result is then the exact int32 sum as a float, for the per-channel epilogue).
// Activations: int8 codes in [-127, 127], natural column order, and group_sums[i*G + g] =
// Σ_{j∈g} a[i, j] (ck_group_sums_i8). Requires cols % 32 == 0, group_size % 32 == 0 and
// cols % group_size == 0.
//
// y[i*ldy + o] = Σ_g wscale(o, g) · (float)(Σ_{j∈g} (u[o, j] − mid) · a[i, j]), the groups summed
// in order with a separate multiply and add: bit for bit ck_gemm_i8_grouped on the expanded codes.

/// Bytes of the q4x8 layout of a rows × cols matrix (rows rounded up to 8).
size_t ck_q4x8_bytes(size_t rows, size_t cols);
/// Packs one-byte codes u [rows, cols] (each < 16) into the q4x8 layout (padding rows zero).
void ck_q4x8_pack(const uint8_t *u, size_t rows, size_t cols, uint8_t *out);
/// Interleaves group scales s [rows, groups] into [block][group][8] ((rows + 7) / 8 · 8 · groups
/// floats, padding zero).
void ck_q4x8_scales(const float *s, size_t rows, size_t groups, float *out);
/// group_sums[i*G + g] = Σ_{j∈g} a[i, j] (natural order), G = cols / group_size.
void ck_group_sums_i8(const int8_t *a, size_t rows, size_t cols, size_t group_size, int32_t *group_sums);

/// For o in [row_begin, row_begin + row_count) and each activation row i < m: decode (m = 1) and
/// prefill (m = prompt rows) alike. 8 weight rows per step with one int32 accumulator lane per
/// row (VNNI `vpdpbusd`, else AVX2 maddubs), up to 4 activation rows per pass over the block.
void ck_q4_gemv_i8(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                   int mid, const float *wscale, const int8_t *a, const int32_t *group_sums, size_t m,
                   float *y, size_t ldy);
/// Scalar twin of ck_q4_gemv_i8 (ignores group_sums: it sums (u − mid)·a directly).
void ck_q4_gemv_i8_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       int mid, const float *wscale, const int8_t *a, const int32_t *group_sums, size_t m,
                       float *y, size_t ldy);

// ---------------------------------------------------------------------------------------------
// int8 × int8 GEMV for decode (gemv_i8.c): a [m, k] activation codes (±127), b [n, k] weight
// codes (−128…127), c[i*ldc + o] = Σ_t a[i, t]·b[o, t] (exact int32) for o in [row_begin,
// row_begin + row_count). row_sums[o] = Σ_t b[o, t] (ck_row_sums_i8) lets the VNNI path use a + 128
// as the unsigned operand; NULL (or k % 32 ≠ 0) takes the AVX2 sign-trick path.

void ck_row_sums_i8(const int8_t *b, size_t n, size_t k, int32_t *sums);
/// ua[t] = a[t] + 128 as unsigned bytes (the biased activations of ck_gemm_i8_biased).
void ck_bias_i8(const int8_t *a, size_t count, uint8_t *out);
/// Prefill int8 GEMM, c[i*ldc + j] = Σ_t a[i, t]·b[j, t] (exact int32) from biased activations
/// ua = a + 128 [m, k] and row sums of b: one vpdpbusd per tile pair and 32 columns, no sign
/// step. Returns 0 without computing anything when it does not apply (no VNNI, k % 32 ≠ 0):
/// the caller then runs ck_gemm_i8.
int ck_gemm_i8_biased(const uint8_t *ua, size_t m, const int8_t *b, size_t n, size_t k, const int32_t *row_sums,
                      int32_t *c, size_t ldc);
void ck_gemv_i8(const int8_t *a, size_t m, const int8_t *b, size_t row_begin, size_t row_count, size_t k,
                const int32_t *row_sums, int32_t *c, size_t ldc);
void ck_gemv_i8_ref(const int8_t *a, size_t m, const int8_t *b, size_t row_begin, size_t row_count, size_t k,
                    const int32_t *row_sums, int32_t *c, size_t ldc);

// ---------------------------------------------------------------------------------------------
// Per-token elementwise kernels of the decoder (elementwise.c). The AVX2 paths use a vector expf
// (Cephes' degree-6 polynomial after n·ln2 range reduction, within 2 ulp of libm's expf; 0 below
// −87.34, +inf above 88.72, NaN kept) and sum in 8 lanes, so they differ from the `_ref` twins
// (libm expf, sequential sums) in the last bits only.

/// y[r, i] = x[r, i] · (1 / sqrt(Σ_i x[r, i]² / width + epsilon)) · weight[i] for `rows` rows.
void ck_rmsnorm_f32(const float *x, const float *weight, size_t rows, size_t width, float epsilon, float *y);
void ck_rmsnorm_f32_ref(const float *x, const float *weight, size_t rows, size_t width, float epsilon, float *y);
/// x += residual, then y = RMSNorm(x) in one pass over x (the decoder's residual add fused into
/// the next norm): x and y bit-identical to the add followed by ck_rmsnorm_f32 (same sum lanes and
/// order); the _ref twin is the add followed by ck_rmsnorm_f32_ref.
void ck_add_rmsnorm_f32(float *x, const float *residual, const float *weight, size_t rows, size_t width,
                        float epsilon, float *y);
void ck_add_rmsnorm_f32_ref(float *x, const float *residual, const float *weight, size_t rows, size_t width,
                            float epsilon, float *y);
/// gate[i] = gate[i] / (1 + e^(−gate[i])) · up[i] (SwiGLU), in place.
void ck_silu_mul_f32(float *gate, const float *up, size_t count);
void ck_silu_mul_f32_ref(float *gate, const float *up, size_t count);
/// In-place softmax: max, e^(x − max), sum, times 1 / sum.
void ck_softmax_f32(float *x, size_t count);
void ck_softmax_f32_ref(float *x, size_t count);
/// y[i] = e^(x[i]) with the AVX2 paths' vector expf (libm's expf without AVX2), for tests.
void ck_exp_f32(const float *x, size_t count, float *y);

/// Sum of n floats read once in order (a streaming-read probe: its speed is the memory
/// bandwidth one thread gets when n·4 bytes exceed the caches).
float ck_stream_sum(const float *p, size_t n);

// ---------------------------------------------------------------------------------------------
// Token-path memory: per-thread scratch and a per-thread memo of the last activation
// quantization, so the token path allocates nothing and layers reading the same input
// (q/k/v, gate/up) quantize it once.

/// A per-thread buffer of at least `bytes` bytes (64-byte aligned) for slot 0…3 (4…7 are used
/// inside the C kernels, 8 by the prefill attention's scores, 9 by the FP4 byte-plane GEMV's
/// activation planes), reused by
/// later calls on the same thread with the same slot (its contents are not kept when it grows).
/// NULL only when memory runs out.
void *ck_thread_scratch(int slot, size_t bytes);

/// ck_quantize_rows_i8 into per-thread buffers, remembering the last input: when this thread's
/// previous call had the same rows, columns, parameters (max_code, static_step, and shift and
/// channel scales equal in value) and an input equal in every element, its codes and steps are
/// returned without quantizing again. The result (codes [rows, cols]; *row_steps [rows]) stays
/// valid until this thread's next call. Returns NULL only when memory runs out.
const int8_t *ck_quantize_rows_i8_shared(const float *x, size_t rows, size_t cols, const float *shift,
                                         const float *channel_scale, int max_code, float static_step,
                                         const float **row_steps);

#endif
