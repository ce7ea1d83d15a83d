#ifndef CK_FP_KERNELS_H
#define CK_FP_KERNELS_H
#include <stdint.h>
#include <stddef.h>

// Minifloat (LLM-FP4) kernels (fp_kernels.c). A format has exp_bits exponent and man_bits
// mantissa bits; its grid at bias 0 is PTQCore.FloatingPointFormat: exponent code 0 holds
// 2*M/2^m, exponent code E >= 1 holds 2^E*(1 + M/2^m), the largest value 2^(2^e-1)*(2 - 2^-m).
//
// Weight codes: sign | exponent | mantissa. With nibbles != 0 they are packed two per byte
// (element 2i low nibble, 2i+1 high nibble, each row starting on a byte boundary: row stride
// (cols + 1) / 2); else one byte per code. table[code] is the code's value at bias 0 (16 or 256
// entries, sign-magnitude: table[c | signbit] = -table[c]). scales are [rows, G] row-major with
// G = ceil(cols / group_size); an element's value is scale[r, g] * table[code].

/// Activation fake quantization onto the minifloat grid, per element of x [rows, cols]:
/// t = x / channel_scale[j] (only when channel_scale is non-NULL), y = t / alpha,
/// q = grid rounding of y (clip at +-max, step 2^(max(floor(log2|y|), 1) - m), ties to even;
/// NaN gives 0), out = (q * alpha) * channel_scale[j]. Bit-identical between the AVX2 path and
/// the reference, and to FloatingPointFormat.roundToGrid in Swift.
void ck_fp_quantize_rows(const float *x, size_t rows, size_t cols, const float *channel_scale,
                         float alpha, int exp_bits, int man_bits, float *out);
void ck_fp_quantize_rows_ref(const float *x, size_t rows, size_t cols, const float *channel_scale,
                             float alpha, int exp_bits, int man_bits, float *out);

/// For o in [row_begin, row_begin + row_count): y[o] = sum_g scale[o,g] * sum_{j in g} table[c[o,j]] * x[j].
/// The AVX2 path looks the codes up in registers (FP4: one 8-lane permute of the magnitude table
/// plus the sign bit; bytes: a gather) and accumulates each group with FMAs; with AVX-512, nibble
/// codes (cols and group_size multiples of 16) take one 64-bit broadcast, one shift per 64-bit
/// lane and one 16-entry vpermps per 16 codes against x permuted to that lane order. The products
/// are exact in float, only the summation order differs from the reference.
void ck_fp_gemv_f32(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                    size_t group_size, const float *table, const float *scales, const float *x, float *y);
void ck_fp_gemv_f32_ref(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                        size_t group_size, const float *table, const float *scales, const float *x, float *y);
/// ck_fp_gemv_f32 for codes of a known format (exp_bits exponent and man_bits mantissa bits,
/// table = that format's code values): with AVX-512, one-byte codes are decoded in registers from
/// their bits (sign | E | M, exactly table[code]) instead of gathered from the table; nibble codes
/// (and exp_bits = 0, "format unknown") behave as ck_fp_gemv_f32. The AVX-512 nibble path needs
/// cols and group_size multiples of 16; other shapes take the AVX2 path.
void ck_fp_gemv_f32_fmt(const uint8_t *codes, int nibbles, int exp_bits, int man_bits, size_t row_begin,
                        size_t row_count, size_t cols, size_t group_size, const float *table, const float *scales,
                        const float *x, float *y);

/// out[(r - row_begin)*cols + j] = scale[r,g] * table[c[r,j]] for the row range (one multiply,
/// exactly FloatingPointWeight.value), for tiles multiplied by sgemm at prefill.
void ck_fp_decode_rows(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                       size_t group_size, const float *table, const float *scales, float *out);
void ck_fp_decode_rows_ref(const uint8_t *codes, int nibbles, size_t row_begin, size_t row_count, size_t cols,
                           size_t group_size, const float *table, const float *scales, float *out);

/// Rounding error of a block of weights for a search: for r < rows and j < width,
/// out[r*width + j] = Q(w[r*ld + j]) - w[r*ld + j] with Q(v) = grid(v / alpha[r]) * alpha[r],
/// the same float operations as ck_fp_quantize_rows (so the same values as the stored weights).
void ck_fp_quantize_error_block(const float *w, size_t rows, size_t ld, size_t width, const float *alpha,
                                int exp_bits, int man_bits, float *out);

/// Minifloat activations as int8 for the integer GEMM: per element, t = x / channel_scale[j]
/// (when non-NULL), q = grid rounding of t / alpha (as ck_fp_quantize_rows), and
/// codes[i, j] = q * factor[j] where factor[j] = 2^(K - k_j) / unit is chosen by the caller so
/// that the product is an integer in [-127, 127] (exact: q is a multiple of unit).
void ck_fp_quantize_rows_i8(const float *x, size_t rows, size_t cols, const float *channel_scale,
                            float alpha, int exp_bits, int man_bits, const float *factor, int8_t *codes);

// ---------------------------------------------------------------------------------------------
// FP4 weights × int16 activations (fp4_i16.c): the integer path for minifloat activations whose
// shifted grid integers do not fit int8 but fit int16 (FP8 E2M5 / E3M4 with small channel
// offsets, the W4A8 recipe). Exact int32 sums, the group scale applied after each group's sum.
//
// codes: FP4 nibbles as above (element 2i low nibble, 2i+1 high nibble, row stride (cols+1)/2).
// table: the 16 weight integers (code value / the format's smallest step, |t| <= 127).
// wscale: [rows, G] group scales, G = ceil(cols / group_size); group_size must be even or
// >= cols (a group then never splits a column pair). a: int16 activation rows [m, lda],
// lda >= cols rounded up to even, a[i, cols] = 0 when cols is odd. The caller guarantees that
// no group's exact sum leaves int32 (|t|·max|a|·group_size < 2^31).
//
// y[i*ldy + o] = sum_g wscale[o*G + g] * (float)(sum_{j in g} table[code(o, j)] * a[i, j]) for o in
// [row_begin, row_begin + row_count), the groups summed in order with a separate multiply and
// add, so every path is bit for bit the reference.

/// Activations as int16: per element t = x / channel_scale[j] (when non-NULL), q = grid rounding
/// of t / alpha (as ck_fp_quantize_rows), codes[i*ldc + j] = q * factor[j] (the caller picks
/// factor[j] = 2^(K - k_j) / unit so that the product is an integer with |value| <= 32767);
/// columns [cols, ldc) are set to 0.
void ck_fp_quantize_rows_i16(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                             int exp_bits, int man_bits, const float *factor, int16_t *codes, size_t ldc);
void ck_fp_quantize_rows_i16_ref(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                                 int exp_bits, int man_bits, const float *factor, int16_t *codes, size_t ldc);

/// Prefill GEMM: weight rows are expanded a panel at a time (nibbles looked up in the table in
/// registers, pairs of columns as int16 pairs, rows interleaved: 32 rows on AVX-512, 16 on AVX2)
/// into thread scratch and multiplied with vpdpwssd (AVX-512 VNNI, zmm) or vpmaddwd (AVX2), one
/// int32 lane per weight row, each activation column pair broadcast.
void ck_fp4_gemm_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const int8_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m, float *y,
                     size_t ldy);
/// Decode GEMV (few activation rows): codes read in place, 32 columns per step (pshufb lookups,
/// sign-extended to int16, vpdpwssd/vpmaddwd against the activations), one exact horizontal
/// sum per group for four rows at once.
void ck_fp4_gemv_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     const int8_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m, float *y,
                     size_t ldy);
/// Scalar twin of ck_fp4_gemm_i16 and ck_fp4_gemv_i16.
void ck_fp4_gemm_i16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         const int8_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m, float *y,
                         size_t ldy);

/// One-byte minifloat weight codes (FP5…FP8) through a 256-entry int16 table (code value /
/// smallest step, the FP8 W8A8 path) by the same panel GEMM. Exact int32 sums run over sum_len
/// columns (the group, or an even divisor of it: per-row scales over long rows whose whole-row
/// sum could leave int32), each scaled by its group's scale:
/// y[i*ldy + o] = sum over groups g, chunks c of sum_len columns in g, in order, of
/// wscale[o*G + g] * (float)(sum_{j in c} table[code(o, j)] * a[i, j]).
void ck_fp8_gemm_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a, size_t lda, size_t m,
                     float *y, size_t ldy);
void ck_fp8_gemm_i16_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                         size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a, size_t lda,
                         size_t m, float *y, size_t ldy);

// ---------------------------------------------------------------------------------------------
// The split form (issue 9): activations whose shifted grid integers exceed int16 (E3M4 with
// channel offsets K = 5…7: up to 31·2^(6+K) = 253,952). Every integer v is stored as two int16
// parts, v = lo + 2^shift·hi with |lo| < 2^shift (hi = v·2^-shift truncated toward zero, lo the
// remainder, both with v's sign), and the weight integer t meets lo as t and hi as t·2^shift in
// the same int32 sum: t·lo + (t·2^shift)·hi = t·v exactly. The caller picks shift so that
// |v|·2^-shift <= 32767 and |t|·2^shift <= 32767, and guarantees that no sum's exact value
// sum |t|·|v| over its columns reaches 2^31 (every partial sum is then bounded by it too).
// Results are the formulas above with a[i, j] the whole integer lo + 2^shift·hi; every kernel
// gives its scalar twin's bits. The AVX-512 panel GEMM also needs AVX-512 BW (16-bit shifts of
// zmm lanes), else the AVX2 panels run.

/// Activations as split int16 parts `lo`, `hi` (both [rows, ldc], zero in [cols, ldc)).
void ck_fp_quantize_rows_i16x2(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                               int exp_bits, int man_bits, const float *factor, int shift, int16_t *lo, int16_t *hi,
                               size_t ldc);
void ck_fp_quantize_rows_i16x2_ref(const float *x, size_t rows, size_t cols, const float *channel_scale, float alpha,
                                   int exp_bits, int man_bits, const float *factor, int shift, int16_t *lo,
                                   int16_t *hi, size_t ldc);
/// ck_fp4_gemm_i16 / ck_fp4_gemv_i16 / their twin with split activations (a = lo parts, ahi = hi
/// parts, same stride lda): two int16 multiply-adds per weight pair into the same int32 lanes.
void ck_fp4_gemm_i16x2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                       size_t lda, size_t m, float *y, size_t ldy);
void ck_fp4_gemv_i16x2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                       size_t lda, size_t m, float *y, size_t ldy);
void ck_fp4_gemm_i16x2_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                           const int8_t *table, const float *wscale, const int16_t *a, const int16_t *ahi, int shift,
                           size_t lda, size_t m, float *y, size_t ldy);
/// ck_fp8_gemm_i16 with split activations.
void ck_fp8_gemm_i16x2(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                       size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a, const int16_t *ahi,
                       int shift, size_t lda, size_t m, float *y, size_t ldy);
void ck_fp8_gemm_i16x2_ref(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                           size_t sum_len, const int16_t *table, const float *wscale, const int16_t *a,
                           const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy);

/// FP8 decode GEMV: one-byte codes (sign bit above mag_bits = exponent + mantissa bits <= 7
/// magnitude bits; table[c | 1 << mag_bits] = -table[c]) read in place. Where every |table[c]|
/// fits a byte (E2M5, E2M3) and the CPU has AVX-512 VBMI: the magnitudes looked up as unsigned
/// bytes (vpermt2b), the sign applied to the activation's signed byte planes (v and -v, built
/// once per call in scratch slot 26) and vpdpbusd, four rows per pass; otherwise (E3M4, or
/// PTQ_FP8_BYTE_GEMV=0) the weight integers looked up as int16 (two vpermt2w of 64 entries each)
/// and vpdpwssd against the int16 activations (a, optional split high parts ahi as above). Both
/// give ck_fp8_gemm_i16x2_ref's result bit for bit (exact int32 sums, the same float
/// operations), which it runs where ck_fp8_gemv_i16_available is 0 (no AVX-512 VNNI + BW:
/// callers keep the float GEMV there).
void ck_fp8_gemv_i16(const uint8_t *codes, size_t row_begin, size_t row_count, size_t cols, size_t group_size,
                     size_t sum_len, int mag_bits, const int16_t *table, const float *wscale, const int16_t *a,
                     const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy);
int ck_fp8_gemv_i16_available(int mag_bits);
/// Turns the magnitude-byte form of ck_fp8_gemv_i16 on or off (default on unless
/// PTQ_FP8_BYTE_GEMV=0): for tests and A/B runs; the result is the same either way.
void ck_set_fp8_byte_gemv_enabled(int enabled);
/// Whether ck_fp8_gemv_i16 runs its magnitude-byte form for this table (CPU, switch, |t| <= 255).
int ck_fp8_gemv_i16_bytes(int mag_bits, const int16_t *table);

// ---------------------------------------------------------------------------------------------
// FP4 decode GEMV on int8 VNNI (fp4_u8.c), the int16 path's decode kernel where AVX-512 VNNI + BW
// exist. Each activation integer v (whole, or the split form's lo + 2^shift·hi) becomes `planes`
// signed bytes, v = sum_p 256^p·b_p (planes = 2 holds -32768 <= v <= 32639, 3 holds |v| <=
// 8,355,711); the weight integers are offset to unsigned bytes u = t + c (utable[code] =
// table[code] + c, c = max |t|, so u <= 255 needs c <= 127), and
//   sum_j t_j·v_j = sum_p 256^p·sum_j u_j·b_pj − c·sum_j v_j,
// with corr[g] = c·sum_{j in g} v_j (modulo 2^32) once per activation row. Requires cols and
// the group size multiples of 8 (ck_fp4_u8_shape_ok), and, as the int16 kernels, that no group's
// exact sum leaves int32 (every step is then exact modulo 2^32).
//
// Packed layout (built once at load by ck_fp4_u8_pack; not a file format): rows in blocks of 16
// (the last padded with code 0), each block cols/8 runs of 64 bytes; byte 4r + i of run q holds
// row r's code for column 8q + i in its low nibble and for column 8q + 4 + i in its high
// nibble. Scales pscale[(block·G + g)·16 + r] (0 for padding rows).
//
// y[o] = sum_g pscale(o, g) * (float)(exact group sum), groups in order, a separate multiply and
// add: bit for bit ck_fp4_gemm_i16x2_ref on the original codes and activations.

int ck_fp4_u8_shape_ok(size_t cols, size_t group_size);
size_t ck_fp4_u8_packed_bytes(size_t rows, size_t cols);
size_t ck_fp4_u8_packed_scales(size_t rows, size_t cols, size_t group_size);
void ck_fp4_u8_pack(const uint8_t *codes, size_t rows, size_t cols, size_t group_size, const float *wscale,
                    uint8_t *packed, float *pscale);
/// One activation row (a, optional split high parts ahi << shift) → out[p·cols + j] = byte p of
/// v_j, corr[g] = offset·sum_{j in g} v_j modulo 2^32.
void ck_fp4_u8_activations(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t group_size,
                           int planes, int offset, int8_t *out, int32_t *corr);
void ck_fp4_u8_activations_ref(const int16_t *a, const int16_t *ahi, int shift, size_t cols, size_t group_size,
                               int planes, int offset, int8_t *out, int32_t *corr);
/// Rows of blocks [block_begin, block_begin + block_count) (rows past `rows` are not stored),
/// one activation row.
void ck_fp4_gemv_u8(const uint8_t *packed, const float *pscale, size_t block_begin, size_t block_count, size_t rows,
                    size_t cols, size_t group_size, const uint8_t *utable, const int8_t *act, int planes,
                    const int32_t *corr, float *y);
void ck_fp4_gemv_u8_ref(const uint8_t *packed, const float *pscale, size_t block_begin, size_t block_count,
                        size_t rows, size_t cols, size_t group_size, const uint8_t *utable, const int8_t *act,
                        int planes, const int32_t *corr, float *y);
/// AVX-512 VNNI + BW (elsewhere the int16 GEMV stays).
int ck_fp4_gemv_u8_available(void);

// Prefill on the byte-plane layout (issue 13): where the layout above exists it is the layer's
// only copy of the codes, and the prefill kernels read it. ck_fp4_gemm_i16x2_u8 is
// ck_fp4_gemm_i16x2 with its panels built from `packed` / `pscale` (table = the signed weight
// integers, not the offset ones): the same panel words, the same bits as ck_fp4_gemm_i16x2_ref on
// the nibble codes and row-major scales. row_begin should be a multiple of 16 (else the scalar
// twin runs). ck_fp4_u8_decode_rows writes float tiles out[(r - row_begin)·cols + j] =
// pscale(r, g) · table[code(r, j)] for any row range: ck_fp_decode_rows_ref's product, the same
// bits (AVX-512F; the _ref twins are scalar).
void ck_fp4_gemm_i16x2_u8(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                          size_t cols, size_t group_size, const int8_t *table, const int16_t *a, const int16_t *ahi,
                          int shift, size_t lda, size_t m, float *y, size_t ldy);
void ck_fp4_gemm_i16x2_u8_ref(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                              size_t cols, size_t group_size, const int8_t *table, const int16_t *a,
                              const int16_t *ahi, int shift, size_t lda, size_t m, float *y, size_t ldy);
void ck_fp4_u8_decode_rows(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                           size_t cols, size_t group_size, const float *table, float *out);
void ck_fp4_u8_decode_rows_ref(const uint8_t *packed, const float *pscale, size_t row_begin, size_t row_count,
                               size_t cols, size_t group_size, const float *table, float *out);

#endif
