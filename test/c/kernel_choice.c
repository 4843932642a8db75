/*
 * Prints the OpenBLAS kernels bst asks for on this CPU (bst_kernels_for,
 * blas_load.h), the OPENBLAS_CORETYPE value the extension sets before it
 * loads OpenBLAS; nothing when bst leaves the choice to OpenBLAS.  The tests
 * and benchmarks link OpenBLAS, which chooses when it loads, so `make check`
 * and scripts/bench_threads.sh run them with this value (unless the
 * environment sets one): the kernels the server runs, not OpenBLAS's
 * fallback on a CPU newer than the library (Prescott).
 *
 *   ./kernel_choice            SkylakeX
 *   ./kernel_choice --reason   SkylakeX AVX-512   ("-" for no choice)
 */
#include <stdio.h>
#include <string.h>

#include "blas_load.h"

int main(int argc, char **argv)
{
    const BstCpuFeatures cpu = bst_cpu_features();
    const BstKernelChoice k = bst_kernels_for(&cpu);
    if (argc > 1 && strcmp(argv[1], "--reason") == 0)
        printf("%s %s\n", k.coretype ? k.coretype : "-", k.reason);
    else if (k.coretype)
        printf("%s\n", k.coretype);
    return 0;
}
