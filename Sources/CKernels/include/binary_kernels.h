#ifndef CK_BINARY_KERNELS_H
#define CK_BINARY_KERNELS_H
#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Binarized-weight kernels (binary_gemv.c) for PTQ1.61 / PB-LLM-style / plain binarization.
//
// signs: row-major bit matrix, words_per_row 64-bit words per row; bit k of word w is column
// 64·w + k of the row (1 = +1, 0 = −1). mask (element masks only, else NULL): same layout,
// 1 = salient (excluded from the binarized part). x holds words_per_row·64 floats, zero-padded
// past the real columns, so the loops need no tail (padding bits multiply zeros).
//
// For o in [row_begin, row_begin + row_count):
//   mask == NULL: acc = Σ_k s_ok·x_k;                      y[o] = a[o]·acc + b[o]·x_sum
//   mask != NULL: acc = Σ_{k: m_ok = 0} s_ok·x_k, n = Σ_{k: m_ok = 0} x_k;
//                 y[o] = a[o]·acc + b[o]·n, and rest[o] = n when rest != NULL.
// The signs are applied with bit tricks (each bit shifted into the float sign position and
// xor-ed onto x), never unpacked to a float matrix.

void ck_binary_gemv(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                    size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                    float *y, float *rest);
/// Plain scalar twin of ck_binary_gemv.
void ck_binary_gemv_ref(const uint64_t *signs, const uint64_t *mask, size_t words_per_row, size_t row_begin,
                        size_t row_count, const float *x, float x_sum, const float *a, const float *b,
                        float *y, float *rest);

#endif
