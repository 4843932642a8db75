#include "simd.h"

#include <stdlib.h>
#include <string.h>

#include "blas_load.h"

/* Mutable global state of the core, like the thread settings of parallel.c:
 * set by the host or at the first call, never from a parallel region. */
static int g_resolved;
static BstSimd g_simd;

int bst_simd_available(BstSimd s)
{
    if (s == BST_SIMD_GENERIC)
        return 1;
#if BST_SIMD_COPIES
    const BstCpuFeatures cpu = bst_cpu_features();
    if (s == BST_SIMD_AVX2)
        return cpu.avx2_fma;
    if (s == BST_SIMD_AVX512)
        return cpu.avx512;
#endif
    return 0;
}

static const char *const g_env_names[] = {"generic", "avx2", "avx512"};

BstSimd bst_simd(void)
{
    if (!g_resolved) {
        const char *env = getenv("BST_SIMD");
        g_simd = bst_simd_available(BST_SIMD_AVX512) ? BST_SIMD_AVX512
               : bst_simd_available(BST_SIMD_AVX2)   ? BST_SIMD_AVX2
                                                     : BST_SIMD_GENERIC;
        for (int s = BST_SIMD_GENERIC; env && s <= BST_SIMD_AVX512; s++)
            if (strcmp(env, g_env_names[s]) == 0 && bst_simd_available((BstSimd)s))
                g_simd = (BstSimd)s;
        g_resolved = 1;
    }
    return g_simd;
}

int bst_simd_force(BstSimd s)
{
    if (!bst_simd_available(s))
        return -1;
    g_simd = s;
    g_resolved = 1;
    return 0;
}

const char *bst_simd_name(BstSimd s)
{
    static const char *const names[] = {"generic", "AVX2", "AVX-512"};
    return s >= BST_SIMD_GENERIC && s <= BST_SIMD_AVX512 ? names[s] : "unknown";
}
