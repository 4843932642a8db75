/*
 * Prints the OpenBLAS kernels bst asks for on this CPU (bst_kernels_for,
 * blas_load.h), the OPENBLAS_CORETYPE value the extension sets before it
 * loads OpenBLAS; nothing when bst leaves the choice to OpenBLAS.  The tests
 * link OpenBLAS, which chooses when it loads, so `make check` runs them with
 * this value (unless the environment sets one): the kernels the server runs,
 * not OpenBLAS's fallback on a CPU newer than the library (Prescott).
 */
#include <stdio.h>

#include "blas_load.h"

int main(void)
{
    const BstCpuFeatures cpu = bst_cpu_features();
    const BstKernelChoice k = bst_kernels_for(&cpu);
    if (k.coretype)
        printf("%s\n", k.coretype);
    return 0;
}
