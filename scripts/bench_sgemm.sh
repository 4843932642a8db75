#!/usr/bin/env bash
# Single-threaded sgemm speed of each OpenBLAS kernel family on this CPU, at
# the shapes of the Keras example's model on ML-1M (batch 265, windows of 4,
# d = 62, MLP 256):
#   X W      265 x 256 x 248  (first MLP layer: rows x outputs x inputs)
#   dY W^T   265 x 248 x 256  (its input gradient)
#   X^T dY   248 x 256 x 265  (its weight gradient)
#   E W_qkv  1060 x 186 x 62  (the attention projections of all positions)
#   scripts/bench_sgemm.sh [KERNELS...]
# Default kernels: Prescott (OpenBLAS's generic x86-64), Haswell, Zen,
# SkylakeX, and OpenBLAS's own detection (OPENBLAS_CORETYPE unset).  Each
# figure is the best of 7 timings of 100 calls (GFLOP/s = 2 M N K / time);
# the core runs sgemm single-threaded on its own threads' blocks (parallel.h).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(Prescott Haswell Zen SkylakeX own)

probe=$(mktemp -d /tmp/bst-sgemm.XXXXXX)
trap 'rm -rf "$probe"' EXIT
cat >"$probe/sgemm.c" <<'EOF'
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best GFLOP/s of C[m x n] = op(A) op(B), inner dimension k, row-major. */
static double gflops(int ta, int tb, int m, int n, int k)
{
    float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n),
          *c = calloc((size_t)m * n, sizeof(float));
    for (int i = 0; i < m * k; i++)
        a[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < k * n; i++)
        b[i] = (float)(i % 5) * 0.1f;
    double best = 1e30;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        for (int i = 0; i < 100; i++)
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                        m, n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, 0.0f, c, n);
        double t = (now() - t0) / 100;
        best = t < best ? t : best;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * m * n * k / best * 1e-9;
}

int main(void)
{
    openblas_set_num_threads(1);
    printf("%-10s %8.1f %8.1f %8.1f %8.1f\n", openblas_get_corename(), gflops(0, 0, 265, 256, 248),
           gflops(0, 1, 265, 248, 256), gflops(1, 0, 248, 256, 265), gflops(0, 0, 1060, 186, 62));
    return 0;
}
EOF
gcc -O2 -o "$probe/sgemm" "$probe/sgemm.c" -lopenblas

echo "machine: $(machine_description)"
echo "sgemm GFLOP/s, 1 thread, best of 7 x 100 calls"
printf '%-24s %-10s %8s %8s %8s %8s\n' asked ran "X W" "dY W^T" "X^T dY" "E W_qkv"
for k in "${kernels[@]}"; do
    if [ "$k" = own ]; then
        printf '%-24s ' "OpenBLAS's own detection"
        env -u OPENBLAS_CORETYPE "$probe/sgemm"
    else
        printf '%-24s ' "$k"
        OPENBLAS_CORETYPE=$k "$probe/sgemm"
    fi
done
