// Decode float GEMV on SmolLM2's FP32 shapes (30 × q, k, v, o, gate, up, down, then the
// 49152 × 576 head) through the runtime's pool and `ck_sgemv_f32`, against a streaming read of
// the same bytes and the four-interleaved-row kernel it replaced (docs/RESULTS.md, "seventh
// pass"). One job per matrix, rows split in `TASKS` contiguous chunks; median of the passes.
//
//   clang -O2 -ISources/CKernels/include -ISources/CKernels -o /tmp/gemv-bench \
//       scripts/decode-gemv-bench.c Sources/CKernels/*.c -lpthread -lm
//   nice -n -5 /tmp/gemv-bench [threads=2] [passes=7]      (HUGE=1: matrices in 2 MiB pages)
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include "ck_pool.h"
#include "ck_runtime.h"

typedef void (*gemv_fn)(const float *, size_t, size_t, size_t, const float *, float *);
#define NMAT (30 * 7 + 1)
static float *W[NMAT], *X, *Y;
static size_t R[NMAT], C[NMAT];
static volatile float sink;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

__attribute__((target("avx2,fma"))) static float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// The kernel before the seventh pass: four interleaved rows, x loaded once per four rows.
__attribute__((target("avx2,fma"))) static void sgemv_rows4(const float *w, size_t rb, size_t rc, size_t cols,
                                                             const float *x, float *y) {
    size_t o = rb, end = rb + rc, c16 = cols & ~(size_t)15;
    for (; o + 4 <= end; o += 4) {
        const float *r0 = w + o * cols, *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (size_t j = 0; j < c16; j += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + j), x0, a0); a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + j), x0, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + j), x0, a2); a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + j), x0, a3);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + j + 8), x1, b0); b1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + j + 8), x1, b1);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + j + 8), x1, b2); b3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + j + 8), x1, b3);
        }
        y[o] = hsum(_mm256_add_ps(a0, b0)); y[o + 1] = hsum(_mm256_add_ps(a1, b1));
        y[o + 2] = hsum(_mm256_add_ps(a2, b2)); y[o + 3] = hsum(_mm256_add_ps(a3, b3));
    }
    if (o < end) ck_sgemv_f32_ref(w, o, end - o, cols, x, y);  // SmolLM2's row counts are multiples of 4
}

// Streaming read of the rows (four independent sums).
__attribute__((target("avx2,fma"))) static void stream_rows(const float *w, size_t rb, size_t rc, size_t cols,
                                                             const float *x, float *y) {
    (void)x;
    const float *p = w + rb * cols;
    const size_t n = rc * cols;
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(p + i)); b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
        c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 16)); d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 24));
    }
    y[rb] = hsum(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
}

typedef struct { gemv_fn f; int m; size_t tasks; } job_t;
static void task(void *ctx, size_t t) {
    const job_t *j = ctx;
    const size_t rows = R[j->m], chunk = ((rows + j->tasks - 1) / j->tasks + 3) & ~(size_t)3, b = t * chunk;
    if (b < rows) j->f(W[j->m], b, (b + chunk < rows ? chunk : rows - b), C[j->m], X, Y);
}

/// One token-pass: the 210 layers (head = 0) or the head alone (head = 1).
static double pass(gemv_fn f, size_t tasks, int head) {
    const double t0 = now();
    for (int m = head ? NMAT - 1 : 0; m < (head ? NMAT : NMAT - 1); m++) {
        job_t j = {f, m, tasks};
        ck_pool_run(tasks, task, &j);
    }
    return now() - t0;
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2, passes = argc > 2 ? atoi(argv[2]) : 7;
    ck_pool_set_threads(threads);
    const size_t shapes[7][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576}, {1536, 576}, {576, 1536}};
    double layerBytes = 0, headBytes = 0;
    for (int m = 0; m < NMAT; m++) {
        R[m] = m == NMAT - 1 ? 49152 : shapes[m % 7][0];
        C[m] = m == NMAT - 1 ? 576 : shapes[m % 7][1];
        const size_t bytes = R[m] * C[m] * 4, huge = 2u << 20;
        const size_t size = getenv("HUGE") ? (bytes + huge - 1) & ~(huge - 1) : (bytes + 63) & ~(size_t)63;
        W[m] = aligned_alloc(getenv("HUGE") ? huge : 64, size);
        if (getenv("HUGE")) madvise(W[m], size, MADV_HUGEPAGE);  // before the first touch
        for (size_t i = 0; i < R[m] * C[m]; i++) W[m][i] = (float)((i * 2654435761u) >> 20) / 4096.0f - 0.5f;
        *(m == NMAT - 1 ? &headBytes : &layerBytes) += (double)bytes;
    }
    X = aligned_alloc(64, 1536 * 4);
    Y = aligned_alloc(64, 49152 * 4);
    for (int i = 0; i < 1536; i++) X[i] = (float)i / 1536;
    const struct { const char *name; gemv_fn f; size_t tasks; } cases[] = {
        {"streaming read, 2 tasks", stream_rows, 2},
        {"four-row kernel (before), 16 tasks", sgemv_rows4, 16},
        {"ck_sgemv_f32, 2 tasks", ck_sgemv_f32, 2},
        {"ck_sgemv_f32, 4 tasks (the runtime's split)", ck_sgemv_f32, 4},
        {"ck_sgemv_f32, 16 tasks", ck_sgemv_f32, 16},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    double t[NC][2][64];
    for (int r = 0; r <= passes && r < 64; r++)  // pass 0 warms up
        for (int c = 0; c < NC; c++)
            for (int h = 0; h < 2; h++) t[c][h][r] = pass(cases[c].f, cases[c].tasks, h);
    printf("%d threads, median of %d passes; layers %.1f MB, head %.1f MB%s\n", threads, passes, layerBytes / 1e6,
           headBytes / 1e6, getenv("HUGE") ? ", 2 MiB pages" : "");
    for (int c = 0; c < NC; c++) {
        double med[2];
        for (int h = 0; h < 2; h++) { qsort(t[c][h] + 1, passes, sizeof(double), cmpd); med[h] = t[c][h][1 + passes / 2]; }
        printf("%-44s layers %7.2f ms (%5.1f GB/s)   head %6.2f ms (%5.1f GB/s)\n", cases[c].name, med[0] * 1e3,
               layerBytes / med[0] / 1e9, med[1] * 1e3, headBytes / med[1] / 1e9);
    }
    (void)sink;
    return 0;
}
