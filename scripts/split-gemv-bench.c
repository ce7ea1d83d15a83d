// SplitQuant packed GEMV (ck_split_gemv_p4) on one token's worth of SmolLM2's 210 linears, one thread,
// CPU time (CLOCK_THREAD_CPUTIME_ID: robust to other processes on a shared machine), best of N passes;
// random codes and clusters, g128. Build against any version of the kernel source, e.g. old vs new:
//   git show REV:Sources/CKernels/split_gemv.c > /tmp/old.c
//   clang -O2 -I Sources/CKernels/include -I Sources/CKernels -DKSRC='"/tmp/old.c"' scripts/split-gemv-bench.c -o /tmp/old -lm
//   clang -O2 -I Sources/CKernels/include -I Sources/CKernels -DKSRC='"split_gemv.c"' scripts/split-gemv-bench.c -o /tmp/new -lm
//   /tmp/old 30; /tmp/new 30   # 30 copies of each matrix: the codes stream from memory
//   /tmp/old 1;  /tmp/new 1    # one copy: cache-resident, the kernel's compute cost
// Also checks the kernel against its scalar twin (max relative difference printed).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int ck_cpu_has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
int ck_cpu_has_avx512vnni(void) {
    return ck_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
}
#ifndef KSRC
#define KSRC "split_gemv.c"
#endif
#include KSRC

static double cpu_now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static unsigned long long state = 88172645463325252ull;
static unsigned rnd(void) { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return (unsigned)(state >> 11); }

enum { MAX_COPIES = 64, LINEARS = 7, GROUP = 128 };
static const int shapes[LINEARS][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576}, {1536, 576}, {576, 1536}};
typedef struct { uint8_t *packed; float *s, *z; int n, k; } layer;
static layer layers[MAX_COPIES][LINEARS];

int main(int argc, char **argv) {
    const int copies = argc > 1 ? atoi(argv[1]) : 30, passes = copies > 1 ? 15 : 200;
    if (copies < 1 || copies > MAX_COPIES) { fprintf(stderr, "copies must be 1…%d\n", MAX_COPIES); return 1; }
    float *x = malloc(4 * 1536), *y = malloc(4 * 1536), *y_ref = malloc(4 * 1536);
    for (int j = 0; j < 1536; j++) x[j] = (rnd() % 100000) / 50000.0f - 1.0f;
    size_t bytes = 0, weights = 0;
    for (int c = 0; c < copies; c++)
        for (int i = 0; i < LINEARS; i++) {
            layer *l = &layers[c][i];
            l->n = shapes[i][0], l->k = shapes[i][1];
            uint8_t *cl = malloc((size_t)l->n * l->k), *q = malloc((size_t)l->n * l->k);
            for (size_t e = 0; e < (size_t)l->n * l->k; e++) cl[e] = rnd() % 3, q[e] = rnd() % 16;
            l->packed = malloc(ck_split_p4_row_bytes(l->k) * l->n);
            ck_split_pack_p4(cl, q, l->n, l->k, l->packed);
            const size_t ns = (size_t)l->n * ((l->k + GROUP - 1) / GROUP) * 3;
            l->s = malloc(4 * ns), l->z = malloc(4 * ns);
            for (size_t e = 0; e < ns; e++) l->s[e] = 0.01f + 0.001f * (rnd() % 100), l->z[e] = (rnd() % 1600) / 100.0f;
            bytes += ck_split_p4_row_bytes(l->k) * l->n + 8 * ns, weights += (size_t)l->n * l->k;
            free(cl), free(q);
        }
    double max_rel = 0;
    for (int i = 0; i < LINEARS; i++) {
        const layer *l = &layers[0][i];
        ck_split_gemv_p4(l->packed, 0, l->n, l->k, GROUP, 4, l->s, l->z, x, y);
        ck_split_gemv_p4_ref(l->packed, 0, l->n, l->k, GROUP, 4, l->s, l->z, x, y_ref);
        for (int o = 0; o < l->n; o++) {
            const double d = fabs(y[o] - y_ref[o]) / (fabs(y_ref[o]) + 1e-3);
            if (d > max_rel) max_rel = d;
        }
    }
    double best = 1e30;
    for (int p = 0; p < passes; p++) {
        const double t0 = cpu_now();
        for (int c = 0; c < copies; c++)
            for (int i = 0; i < LINEARS; i++) {
                const layer *l = &layers[c][i];
                ck_split_gemv_p4(l->packed, 0, l->n, l->k, GROUP, 4, l->s, l->z, x, y);
            }
        const double dt = cpu_now() - t0;
        if (dt < best) best = dt;
    }
    printf("%s, %d copies: %.3f ms CPU per pass, %.2f G weights/s, %.1f GB/s (%.1f MB); max rel. diff to the twin %.1e\n",
           KSRC, copies, best * 1e3, weights / best / 1e9, bytes / best / 1e9, bytes / 1e6, max_rel);
    return 0;
}
