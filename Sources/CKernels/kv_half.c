#include "ck_runtime.h"
#include "ckernels.h"
#include "x86_common.h"
#include "attend_avx2.h"
#include <string.h>

// Half-precision KV cache (see ck_runtime.h): float ↔ IEEE half conversion and decode
// attention reading half keys/values directly. The fast paths convert in registers (F16C
// vcvtph2ps / vcvtps2ph) on AVX2, else the reference.

// ---- scalar conversion (the portable twin of F16C) --------------------------------------------

uint16_t ck_f32_to_f16_one(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN: quiet, top payload kept (as vcvtps2ph)
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // ≥ 65520 (halfway past 65504) or inf → inf
    if (ax >= 0x38800000u) {                                    // normal half (≥ 2^-14)
        uint32_t h = (ax - 0x38000000u) >> 13;                  // rebias 127 → 15, drop 13 bits
        const uint32_t rest = ax & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;  // nearest, ties to even (may carry into the exponent)
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) return (uint16_t)sign;               // ≤ 2^-25: rounds to ±0 (the tie goes to even 0)
    // Subnormal half: value in units of 2^-24 is mant · 2^(e − 126), e < 113.
    const uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;         // 0x400 after rounding is the smallest normal: right bits
    return (uint16_t)(sign | h);
}

float ck_f16_to_f32_one(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1fu) x = sign | 0x7f800000u | (m << 13) | (m ? 0x00400000u : 0);  // NaN comes out quiet, as vcvtph2ps
    else if (e) x = sign | ((e + 112) << 23) | (m << 13);
    else if (m == 0) x = sign;
    else {  // subnormal: normalise
        e = 113;
        while (!(m & 0x400u)) { m <<= 1; e--; }
        x = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

void ck_f32_to_f16_ref(const float *src, uint16_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ck_f32_to_f16_one(src[i]);
}

void ck_f16_to_f32_ref(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = ck_f16_to_f32_one(src[i]);
}

#if defined(__x86_64__)
CK_AVX2 static void f32_to_f16_avx2(const float *src, uint16_t *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = (uint16_t)_cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

CK_AVX2 static void f16_to_f32_avx2(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}
#endif

void ck_f32_to_f16(const float *src, uint16_t *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { f32_to_f16_avx2(src, dst, n); return; }
#endif
    ck_f32_to_f16_ref(src, dst, n);
}

void ck_f16_to_f32(const uint16_t *src, float *dst, size_t n) {
#if defined(__x86_64__)
    if (ck_cpu_has_avx2()) { f16_to_f32_avx2(src, dst, n); return; }
#endif
    ck_f16_to_f32_ref(src, dst, n);
}

// ---- tiled key heads (ck_attend_part_f16t's layout) ----------------------------------------------

void ck_f32_to_f16_tiled(const float *src, uint16_t *head, size_t pos, size_t dim) {
    uint16_t *p = head + (pos & ~(size_t)15) * dim + (pos & 15);
    uint16_t row[16];
    for (size_t d0 = 0; d0 < dim; d0 += 16) {
        const size_t n = dim - d0 < 16 ? dim - d0 : 16;
        ck_f32_to_f16(src + d0, row, n);
        for (size_t i = 0; i < n; i++) p[16 * (d0 + i)] = row[i];
    }
}

void ck_f16_tiled_to_f32(const uint16_t *head, size_t pos, size_t dim, float *dst) {
    const uint16_t *p = head + (pos & ~(size_t)15) * dim + (pos & 15);
    uint16_t row[16];
    for (size_t d0 = 0; d0 < dim; d0 += 16) {
        const size_t n = dim - d0 < 16 ? dim - d0 : 16;
        for (size_t i = 0; i < n; i++) row[i] = p[16 * (d0 + i)];
        ck_f16_to_f32(row, dst + d0, n);
    }
}

// ---- decode attention over a half cache --------------------------------------------------------

void ck_attend_one_f16_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                           size_t dim, float scale, float *scores, float *out) {
    for (size_t j = 0; j < count; j++) {
        float s = 0;
        for (size_t d = 0; d < dim; d++) s += q[d] * ck_f16_to_f32_one(keys[j * stride + d]);
        scores[j] = scale * s;
    }
    ck_softmax_f32_ref(scores, count);
    for (size_t d = 0; d < dim; d++) out[d] = 0;
    for (size_t j = 0; j < count; j++)
        for (size_t d = 0; d < dim; d++) out[d] += scores[j] * ck_f16_to_f32_one(values[j * stride + d]);
}

void ck_attend_group_f16_ref(const float *q, const uint16_t *keys, const uint16_t *values, size_t count,
                             size_t stride, size_t dim, size_t rows, float scale, float *scores, float *out) {
    for (size_t r = 0; r < rows; r++)
        ck_attend_one_f16_ref(q + r * dim, keys, values, count, stride, dim, scale, scores + r * count, out + r * dim);
}

#if defined(__x86_64__)
#define LOADH8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

CK_DEFINE_ATTEND_AVX2(attend_group_f16_avx2, uint16_t, LOADH8, _cvtsh_ss)
#endif

void ck_attend_group_f16(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                         size_t dim, size_t rows, float scale, float *scores, float *out) {
#if defined(__x86_64__)
    // AVX2 only: an AVX-512 variant (16 halves per step) was 7–10 % slower on this Zen 4 machine,
    // at 1 and 2 threads, idle (RESULTS "KV cache precision").
    if (ck_cpu_has_avx2()) {
        attend_group_f16_avx2(q, keys, values, count, stride, dim, rows, scale, scores, out);
        return;
    }
#endif
    ck_attend_group_f16_ref(q, keys, values, count, stride, dim, rows, scale, scores, out);
}

void ck_attend_one_f16(const float *q, const uint16_t *keys, const uint16_t *values, size_t count, size_t stride,
                       size_t dim, float scale, float *scores, float *out) {
    ck_attend_group_f16(q, keys, values, count, stride, dim, 1, scale, scores, out);
}

// ---- cache storage on 2 MB pages ----------------------------------------------------------------

#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

void *ck_kv_arena_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    const size_t size = (bytes + huge - 1) & ~(huge - 1);
    void *p = NULL;
    if (size == 0 || posix_memalign(&p, huge, size) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Before the first touch, so that the faults below take 2 MB pages where the kernel has them
    // (THP "madvise" mode); the advice is only a hint: 4 KB pages work the same.
    // PTQ_KV_HUGEPAGES=0 in the environment leaves the arena on 4 KB pages (for A/B runs).
    const char *v = getenv("PTQ_KV_HUGEPAGES");
    if (!(v && strcmp(v, "0") == 0)) (void)madvise(p, size, MADV_HUGEPAGE);
#endif
    memset(p, 0, size);
    return p;
}

void ck_kv_arena_free(void *arena) { free(arena); }

// ---- model weights on 2 MB pages ----------------------------------------------------------------

#include <stdio.h>

size_t ck_collapse_anonymous_hugepages(size_t min_bytes) {
    size_t collapsed = 0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; older glibc headers lack the name
#endif
    const char *v = getenv("PTQ_WEIGHT_HUGEPAGES");
    if (v && strcmp(v, "0") == 0) return 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) return 0;
    const uintptr_t huge = (uintptr_t)2 << 20;
    char line[512];
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        char perms[5] = {0};
        int name = 0;
        if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %n", &lo, &hi, perms, &name) < 3) continue;
        // Private read-write anonymous memory only: no path, or the brk heap. Stacks, files and
        // the VM's special mappings are left alone.
        const char *path = name > 0 ? line + name : "";
        const int anonymous = path[0] == '\n' || path[0] == 0 || strncmp(path, "[heap]", 6) == 0;
        if (!anonymous || strcmp(perms, "rw-p") != 0) continue;
        const uintptr_t start = ((uintptr_t)lo + huge - 1) & ~(huge - 1), end = (uintptr_t)hi & ~(huge - 1);
        if (end <= start || end - start < min_bytes) continue;
        if (madvise((void *)start, end - start, MADV_HUGEPAGE) != 0) continue;
        // Collapse now (the pages are already faulted in); EINVAL on kernels before 6.1, where
        // khugepaged collapses them later instead.
        if (madvise((void *)start, end - start, MADV_COLLAPSE) == 0) collapsed += end - start;
    }
    fclose(maps);
#else
    (void)min_bytes;
#endif
    return collapsed;
}
