/*
 * Instruction sets for the core's hand-written loops: attention, LayerNorm,
 * BatchNorm, the activations, dropout, the sequence and embedding layers'
 * sums and the optimizers' updates (the matrix products are OpenBLAS's).
 *
 * The build targets baseline x86-64 (SSE2), so that a package runs on any
 * x86-64 CPU.  Each of these loops is compiled three times, for the
 * baseline, for AVX2 with FMA and for AVX-512, and the copy to run is
 * chosen at run time from the CPU's features: the best it has, or the one
 * the environment variable BST_SIMD names (generic, avx2, avx512; as
 * OPENBLAS_CORETYPE does for OpenBLAS).  Every copy computes the same bits:
 * they differ only in vector width, the reductions' order is written out
 * (layers.c), and the build does not contract a * b + c into an FMA
 * (-ffp-contract=off; test/c/test_train.c, test_simd_copies), so a seed's
 * weights do not depend on the CPU, and a model stored by 1.0 predicts as
 * 1.0 did.
 *
 * A loop is written once, as name_generic, static and always inlined, and
 * BST_SIMD_DISPATCH(name, (params), (args)) defines name() calling the
 * copy for bst_simd().
 */
#ifndef BST_SIMD_H
#define BST_SIMD_H

typedef enum {
    BST_SIMD_GENERIC = 0,        /* baseline x86-64, or any other CPU */
    BST_SIMD_AVX2 = 1,           /* AVX2 and FMA */
    BST_SIMD_AVX512 = 2,         /* AVX-512 F, CD, BW, DQ, VL */
} BstSimd;

/* The copy in use: BST_SIMD's when the CPU has it, else the best it has;
 * resolved at the first call, or set by bst_simd_force. */
BstSimd bst_simd(void);
int bst_simd_available(BstSimd s);
/* Tests and the host: s from now on; -1 (nothing changed) when the CPU
 * lacks it.  Never while a parallel region runs. */
int bst_simd_force(BstSimd s);
/* "generic", "AVX2", "AVX-512" */
const char *bst_simd_name(BstSimd s);

#define BST_SIMD_INLINE static inline __attribute__((always_inline))

/* BST_NO_SIMD_KERNELS (the fuzzing build): the generic copy only. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(BST_NO_SIMD_KERNELS)
#define BST_SIMD_COPIES 1
/* The instruction sets of the copies: what bst_cpu_features' avx512 and
 * avx2_fma guarantee (blas.c). */
#define BST_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512cd,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define BST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define BST_SIMD_DISPATCH(name, params, args)                                           \
    BST_TARGET_AVX512 static void name##_avx512 params { name##_generic args; }         \
    BST_TARGET_AVX2 static void name##_avx2 params                                      \
    {                                                                                   \
        name##_generic args;                                                            \
    }                                                                                   \
    static void name params                                                             \
    {                                                                                   \
        switch (bst_simd()) {                                                           \
        case BST_SIMD_AVX512:                                                           \
            name##_avx512 args;                                                         \
            return;                                                                     \
        case BST_SIMD_AVX2:                                                             \
            name##_avx2 args;                                                           \
            return;                                                                     \
        default:                                                                        \
            name##_generic args;                                                        \
        }                                                                               \
    }
#else
#define BST_SIMD_COPIES 0
#define BST_SIMD_DISPATCH(name, params, args) \
    static void name params { name##_generic args; }
#endif

#endif
